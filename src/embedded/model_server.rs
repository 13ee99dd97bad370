//! [`LocalModelServer`]: a small OpenAI-compatible chat completions server on
//! 127.0.0.1, for the tests and `botdb demo`: a model that needs no network, answers
//! deterministically, says what it was given, and fails on demand.
//!
//! It speaks the real protocol (`POST /v1/chat/completions`, a `chat.completion`
//! answer, OpenAI's error bodies), so that a client tested against it works against
//! OpenAI, vLLM, llama.cpp or Ollama. It runs on a thread of its own with its own actix
//! system, so it works from any runtime (or none), and stops when dropped. It shares no
//! code with botdb's client (`llm::openai`): the two sides read the protocol each on
//! their own, so that one's mistake is not hidden by the other's.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};

/// The largest request body accepted: a context of 200,000 characters, escaped.
const MAX_REQUEST_BYTES: usize = 16 << 20;

/// How the server answers when no failure is scripted.
#[derive(Clone, Debug, Default)]
pub struct ModelBehaviour {
    /// How long each answer takes (a model's thinking time).
    pub latency: Duration,
    /// What it answers.
    pub reply: ReplyStyle,
}

/// What the server answers.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum ReplyStyle {
    /// What the model was given:
    /// `You said: {last user message}\n(model: {n} messages in context; earlier user
    /// messages: {the user messages before the last, joined with " | "})`, `n` counting
    /// every message of the request, a system prompt included. A test or the demo
    /// checks with it that a turn saw every earlier message.
    #[default]
    Describe,
    /// Always this text.
    Fixed(String),
}

/// How one call fails ([`LocalModelServer::script`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// This HTTP status, with OpenAI's JSON error body (an invalid code answers 500).
    Status(u16),
    /// 429 with `Retry-After: {retry_after_secs}` and OpenAI's rate limit error body.
    RateLimited {
        /// The seconds `Retry-After` asks for.
        retry_after_secs: u64,
    },
    /// 200 with a body that is not JSON (though labelled so).
    Garbage,
    /// 200, a chat completion whose content is `""`.
    Empty,
    /// Never answers: only the client's timeout ends the call.
    Hang,
    /// Answers normally after this long (on top of the behaviour's latency).
    Slow(Duration),
}

/// A request's messages, `(role, content)` each.
type Messages = Vec<(String, String)>;

/// What the handlers share with the [`LocalModelServer`] that owns them.
#[derive(Default)]
struct Shared {
    behaviour: ModelBehaviour,
    api_key: Option<String>,
    script: Mutex<VecDeque<Failure>>,
    /// Each call's arrival and messages, in arrival order.
    log: Mutex<Vec<(Instant, Messages)>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    completions: AtomicUsize,
    /// TCP connections accepted: fewer than calls when a client keeps them alive.
    connections: AtomicUsize,
}

/// Counts a call in flight for as long as its handler runs.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> Self {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A local OpenAI-compatible chat completions server; stopped when dropped.
pub struct LocalModelServer {
    addr: SocketAddr,
    url: url::Url,
    shared: Arc<Shared>,
    handle: ServerHandle,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl std::fmt::Debug for LocalModelServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalModelServer")
            .field("addr", &self.addr)
            .field("behaviour", &self.shared.behaviour)
            .field("api_key", &self.shared.api_key.as_ref().map(|_| "***"))
            .finish()
    }
}

impl LocalModelServer {
    /// Starts a server on a free port of 127.0.0.1 that accepts any (or no) key.
    ///
    /// # Errors
    /// When no port can be bound or the server's thread cannot start.
    pub fn start(behaviour: ModelBehaviour) -> std::io::Result<Self> {
        Self::serve(Shared {
            behaviour,
            ..Shared::default()
        })
    }

    /// Starts a server that answers only requests carrying `Authorization: Bearer
    /// {key}`, and others 401 as OpenAI does. Its 401 quotes the key it was given,
    /// unmasked (OpenAI masks most of it): a client must keep it out of its errors.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn with_api_key(behaviour: ModelBehaviour, key: impl Into<String>) -> std::io::Result<Self> {
        Self::serve(Shared {
            behaviour,
            api_key: Some(key.into()),
            ..Shared::default()
        })
    }

    fn serve(shared: Shared) -> std::io::Result<Self> {
        let shared = Arc::new(shared);
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let addr = listener.local_addr()?;
        let url = url::Url::parse(&format!("http://{addr}/v1")).map_err(std::io::Error::other)?;
        let data = web::Data::from(shared.clone());
        let counted = shared.clone();
        let (started, handle) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("local-model-server".into())
            .spawn(move || {
                actix_rt::System::new().block_on(async move {
                    let server = HttpServer::new(move || {
                        App::new()
                            .app_data(data.clone())
                            .app_data(web::PayloadConfig::new(MAX_REQUEST_BYTES))
                            .route("/v1/chat/completions", web::post().to(completions))
                            .default_service(web::to(not_found))
                    })
                    .on_connect(move |_, _| {
                        counted.connections.fetch_add(1, Ordering::SeqCst);
                    })
                    .workers(1)
                    .disable_signals()
                    .shutdown_timeout(0)
                    .listen(listener)?
                    .run();
                    // The receiver is gone only if `serve` failed already.
                    let _ = started.send(server.handle());
                    server.await
                })
            })?;
        let Ok(handle) = handle.recv() else {
            // The server failed before it listened: its thread says why.
            let error = match thread.join() {
                Ok(Err(e)) => e,
                _ => std::io::Error::other("the local model server's thread stopped"),
            };
            return Err(error);
        };
        Ok(LocalModelServer {
            addr,
            url,
            shared,
            handle,
            thread: Some(thread),
        })
    }

    /// The API's base URL, `http://127.0.0.1:PORT/v1` (what `BOTDB_MODEL_URL` takes).
    pub fn url(&self) -> url::Url {
        self.url.clone()
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many chat completions were asked (refused ones included).
    pub fn calls(&self) -> usize {
        self.shared.completions.load(Ordering::SeqCst)
    }

    /// Each call's messages as `(role, content)`, in arrival order (empty for a body
    /// that was not a chat completion request).
    pub fn requests(&self) -> Vec<Vec<(String, String)>> {
        lock(&self.shared.log).iter().map(|(_, m)| m.clone()).collect()
    }

    /// When each call arrived, in order: the waits a client left between its attempts.
    pub fn arrivals(&self) -> Vec<Instant> {
        lock(&self.shared.log).iter().map(|(at, _)| *at).collect()
    }

    /// How many TCP connections it accepted: a client that keeps its connections alive
    /// makes sequential calls on one.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// The most calls that were in the server at once.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Makes the next calls fail as `failures` say, in order (after any scripted
    /// before); calls after them are answered normally.
    pub fn script(&self, failures: Vec<Failure>) {
        lock(&self.shared.script).extend(failures);
    }
}

impl Drop for LocalModelServer {
    fn drop(&mut self) {
        // Not graceful: a hanging call must not hold the stop. The command is sent at
        // once; the future only waits for it to be done, and the join does that.
        drop(self.handle.stop(false));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A lock that a panicking handler left behind still guards plain data.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn completions(request: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let messages = parsed.as_ref().and_then(messages_of);
    shared.completions.fetch_add(1, Ordering::SeqCst);
    lock(&shared.log).push((Instant::now(), messages.clone().unwrap_or_default()));
    let _in_flight = InFlight::enter(&shared);
    if let Some(key) = &shared.api_key {
        let given = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            let message = match given {
                Some(given) => format!(
                    "Incorrect API key provided: {given}. You can find your API key at https://platform.openai.com/account/api-keys."
                ),
                None => "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).".into(),
            };
            return error(
                StatusCode::UNAUTHORIZED,
                &message,
                "invalid_request_error",
                "invalid_api_key",
            );
        }
    }
    let model = parsed
        .as_ref()
        .and_then(|p| p.get("model"))
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty());
    let (Some(model), Some(messages)) = (model, messages) else {
        return error(
            StatusCode::BAD_REQUEST,
            "We could not parse the JSON body of your request: it needs a model and messages.",
            "invalid_request_error",
            "invalid_request",
        );
    };
    let failure = lock(&shared.script).pop_front();
    let content = match failure {
        Some(Failure::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return status_error(status, model);
        }
        Some(Failure::RateLimited { retry_after_secs }) => {
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("Rate limit reached for {model}. Please try again in {retry_after_secs}s."),
                "requests",
                "rate_limit_exceeded",
            );
            if let Ok(value) = retry_after_secs.to_string().parse() {
                response
                    .headers_mut()
                    .insert(actix_web::http::header::RETRY_AFTER, value);
            }
            return response;
        }
        Some(Failure::Garbage) => {
            return HttpResponse::Ok()
                .content_type("application/json")
                .body("<html><body>502 Bad Gateway</body></html> {\"choices\": [");
        }
        Some(Failure::Hang) => {
            futures::future::pending::<()>().await;
            return HttpResponse::InternalServerError().finish();
        }
        Some(Failure::Empty) => String::new(),
        Some(Failure::Slow(extra)) => {
            actix_rt::time::sleep(extra).await;
            reply(&shared.behaviour.reply, &messages)
        }
        None => reply(&shared.behaviour.reply, &messages),
    };
    if !shared.behaviour.latency.is_zero() {
        actix_rt::time::sleep(shared.behaviour.latency).await;
    }
    completion(model, &messages, content)
}

/// Anything but the completions endpoint: 404 as OpenAI words it.
async fn not_found(request: HttpRequest) -> HttpResponse {
    error(
        StatusCode::NOT_FOUND,
        &format!("Invalid URL ({} {})", request.method(), request.path()),
        "invalid_request_error",
        "unknown_url",
    )
}

/// A request's messages as `(role, content)`; `None` when it has none. A content given
/// as parts (`[{"type": "text", "text": ...}]`) is their text, joined.
fn messages_of(request: &Value) -> Option<Vec<(String, String)>> {
    let messages = request.get("messages")?.as_array()?;
    messages
        .iter()
        .map(|m| {
            let role = m.get("role")?.as_str()?.to_string();
            let content = match m.get("content")? {
                Value::String(text) => text.clone(),
                Value::Array(parts) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(""),
                _ => return None,
            };
            Some((role, content))
        })
        .collect()
}

/// The answer's text in `style`.
fn reply(style: &ReplyStyle, messages: &[(String, String)]) -> String {
    match style {
        ReplyStyle::Fixed(text) => text.clone(),
        ReplyStyle::Describe => {
            let users: Vec<&str> = messages
                .iter()
                .filter(|(role, _)| role == "user")
                .map(|(_, content)| content.as_str())
                .collect();
            let (last, earlier) = users.split_last().map_or(("", &[][..]), |(l, e)| (*l, e));
            format!(
                "You said: {last}\n(model: {} messages in context; earlier user messages: {})",
                messages.len(),
                earlier.join(" | ")
            )
        }
    }
}

/// A `chat.completion` with `content`; token counts are words, near enough.
fn completion(model: &str, messages: &[(String, String)], content: String) -> HttpResponse {
    static ID: AtomicUsize = AtomicUsize::new(0);
    let words = |text: &str| text.split_whitespace().count();
    let prompt_tokens: usize = messages.iter().map(|(_, c)| words(c) + 4).sum();
    let completion_tokens = words(&content);
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    HttpResponse::Ok().json(json!({
        "id": format!("chatcmpl-local-{}", ID.fetch_add(1, Ordering::Relaxed)),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "logprobs": null,
            "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }))
}

/// The error OpenAI answers with `status`.
fn status_error(status: StatusCode, model: &str) -> HttpResponse {
    match status.as_u16() {
        400 => error(
            status,
            "Invalid request.",
            "invalid_request_error",
            "invalid_request",
        ),
        401 => error(
            status,
            "Incorrect API key provided.",
            "invalid_request_error",
            "invalid_api_key",
        ),
        403 => error(
            status,
            "You are not allowed to sample from this model.",
            "invalid_request_error",
            "forbidden",
        ),
        404 => error(
            status,
            &format!("The model `{model}` does not exist or you do not have access to it."),
            "invalid_request_error",
            "model_not_found",
        ),
        429 => error(status, "Rate limit reached.", "requests", "rate_limit_exceeded"),
        503 => error(
            status,
            "The engine is currently overloaded, please try again later.",
            "server_error",
            "overloaded",
        ),
        _ => error(
            status,
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            "server_error",
        ),
    }
}

/// OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`.
fn error(status: StatusCode, message: &str, kind: &str, code: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({
        "error": {"message": message, "type": kind, "param": null, "code": code}
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(r, c)| (r.to_string(), c.to_string())).collect()
    }

    #[test]
    fn the_default_reply_says_what_the_model_was_given() {
        let messages = pairs(&[
            ("system", "be brief"),
            ("user", "one"),
            ("assistant", "ok"),
            ("user", "two"),
            ("assistant", "ok"),
            ("user", "three"),
        ]);
        assert_eq!(
            reply(&ReplyStyle::Describe, &messages),
            "You said: three\n(model: 6 messages in context; earlier user messages: one | two)"
        );
        assert_eq!(
            reply(&ReplyStyle::Describe, &pairs(&[("user", "hi")])),
            "You said: hi\n(model: 1 messages in context; earlier user messages: )"
        );
        assert_eq!(reply(&ReplyStyle::Fixed("x".into()), &messages), "x");
    }

    #[test]
    fn messages_are_read_from_strings_and_parts() {
        let request = json!({"model": "m", "messages": [
            {"role": "user", "content": "a"},
            {"role": "user", "content": [{"type": "text", "text": "b"}, {"type": "text", "text": "c"}]},
        ]});
        assert_eq!(
            messages_of(&request),
            Some(pairs(&[("user", "a"), ("user", "bc")]))
        );
        assert_eq!(messages_of(&json!({"model": "m"})), None);
        assert_eq!(messages_of(&json!({"messages": [{"role": "user"}]})), None);
    }
}
