//! [`LocalBotApi`]: a small Bot API server on 127.0.0.1 that plays Telegram for the
//! tests and `botdb demo`: it takes `sendMessage` and `sendChatAction` as Telegram does
//! (JSON, form or query parameters; Telegram's answers and error bodies), records what
//! it was sent, and fails on demand: scripted faults ([`Fault`]), a user who blocked the
//! bot ([`LocalBotApi::block`]), Telegram's per-chat limit
//! ([`LocalBotApi::enforce_limits`]).
//!
//! It runs actix-web on a thread and actix system of its own, so it works from any
//! runtime (a `#[tokio::test]`, an actix system, plain threads), and stops when dropped
//! (connections left hanging are dropped with it). Nothing here is Telegram's code: the
//! answers are shaped after Telegram's documented ones.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use actix_web::http::header::CONTENT_TYPE;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Map, Value, json};
use url::Url;

use crate::telegram::split::{MAX_MESSAGE_UTF16, utf16_len};

/// A scripted failure of the next call ([`LocalBotApi::script`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `429 Too Many Requests` with Telegram's body and `parameters.retry_after`.
    TooManyRequests {
        /// Seconds to wait, as Telegram says them.
        retry_after: u64,
    },
    /// This HTTP status: JSON as Telegram's for a 4xx or 500, nginx's page for 502,
    /// 503 and 504 (as Telegram's front end answers them).
    Status(u16),
    /// No answer, ever: the message is not recorded.
    Hang,
    /// The message is recorded and answered 200, but the connection is closed before
    /// the answer's body: the client cannot tell it was sent.
    Drop,
    /// The message is recorded, then no answer, ever: the client times out though the
    /// message was sent (the duplicate case).
    HangAfterRecording,
}

/// A message the server took, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentMessage {
    /// The chat it was sent to.
    pub chat_id: i64,
    /// The id the server gave it (increasing per chat, from 1).
    pub message_id: i64,
    /// Its text.
    pub text: String,
}

/// A local Bot API server (see the module docs). Stops when dropped.
pub struct LocalBotApi {
    url: Url,
    state: Arc<Mutex<State>>,
    server: ServerHandle,
}

impl std::fmt::Debug for LocalBotApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Its token is a test token, but a token all the same: not shown.
        f.debug_struct("LocalBotApi")
            .field("url", &self.url.as_str())
            .finish()
    }
}

struct State {
    token: String,
    messages: Vec<SentMessage>,
    actions: Vec<(i64, String)>,
    next_id: HashMap<i64, i64>,
    sends: usize,
    faults: VecDeque<Fault>,
    /// Faults for `sendMessage` calls only (chat actions pass them by).
    message_faults: VecDeque<Fault>,
    blocked: HashSet<i64>,
    per_chat_interval: Option<Duration>,
    last_accepted: HashMap<i64, Instant>,
}

/// What the handler does with a call, decided under the lock.
enum Reply {
    Answer(StatusCode, Value),
    Page(StatusCode),
    Hang,
    Drop,
}

impl LocalBotApi {
    /// Starts a server that accepts `token` on a free port of 127.0.0.1.
    ///
    /// # Errors
    /// The port could not be bound or the server's thread not started.
    pub fn start(token: &str) -> io::Result<Self> {
        let state = Arc::new(Mutex::new(State {
            token: token.to_string(),
            messages: Vec::new(),
            actions: Vec::new(),
            next_id: HashMap::new(),
            sends: 0,
            faults: VecDeque::new(),
            message_faults: VecDeque::new(),
            blocked: HashSet::new(),
            per_chat_interval: None,
            last_accepted: HashMap::new(),
        }));
        let data = web::Data::from(state.clone());
        let (started, ready) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("local-bot-api".into())
            .spawn(move || {
                actix_rt::System::new().block_on(async move {
                    let bound = HttpServer::new(move || {
                        App::new()
                            .app_data(data.clone())
                            // Bodies as large as a client may send: the length check is ours.
                            .app_data(web::PayloadConfig::new(1 << 20))
                            .route("/bot{token}/{method}", web::route().to(call))
                            .default_service(web::to(not_found))
                    })
                    .workers(1)
                    .disable_signals()
                    .shutdown_timeout(0)
                    .bind(("127.0.0.1", 0));
                    let server = match bound {
                        Ok(server) => server,
                        Err(e) => {
                            let _ = started.send(Err(e));
                            return;
                        }
                    };
                    let addrs = server.addrs();
                    let server = server.run();
                    if started.send(Ok((addrs, server.handle()))).is_ok() {
                        // Until stopped: `LocalBotApi`'s drop.
                        let _ = server.await;
                    }
                });
            })?;
        let (addrs, server) = ready
            .recv()
            .map_err(|_| io::Error::other("the local Bot API's thread ended before listening"))??;
        let addr = addrs
            .first()
            .ok_or_else(|| io::Error::other("the local Bot API listens nowhere"))?;
        let url = Url::parse(&format!("http://{addr}/")).map_err(io::Error::other)?;
        Ok(LocalBotApi { url, state, server })
    }

    /// Its address, `http://127.0.0.1:PORT/`: what `TELEGRAM_API_URL` should be.
    pub fn url(&self) -> Url {
        self.url.clone()
    }

    /// The texts sent to `chat_id`, in the order they arrived.
    pub fn messages(&self, chat_id: i64) -> Vec<String> {
        self.lock()
            .messages
            .iter()
            .filter(|m| m.chat_id == chat_id)
            .map(|m| m.text.clone())
            .collect()
    }

    /// Every message taken, in the order they arrived.
    pub fn all_messages(&self) -> Vec<SentMessage> {
        self.lock().messages.clone()
    }

    /// The chat actions sent to `chat_id` (`typing`, ...), in the order they arrived.
    pub fn chat_actions(&self, chat_id: i64) -> Vec<String> {
        self.lock()
            .actions
            .iter()
            .filter(|(chat, _)| *chat == chat_id)
            .map(|(_, action)| action.clone())
            .collect()
    }

    /// The `sendMessage` calls that reached the server, whatever it answered (a wrong
    /// token, a fault, a refusal included).
    pub fn sends(&self) -> usize {
        self.lock().sends
    }

    /// The next calls (with the right token, of either method) fail as `faults` say,
    /// one each, in order, after those already scripted.
    pub fn script(&self, faults: Vec<Fault>) {
        self.lock().faults.extend(faults);
    }

    /// The next `sendMessage` calls fail as `faults` say, in order (`sendChatAction`
    /// calls, a bot's `typing`, pass them by), then the calls work again.
    pub fn script_messages(&self, faults: Vec<Fault>) {
        self.lock().message_faults.extend(faults);
    }

    /// Calls to `chat_id` are answered `403 Forbidden: bot was blocked by the user`.
    pub fn block(&self, chat_id: i64) {
        self.lock().blocked.insert(chat_id);
    }

    /// A message to a chat less than `per_chat_interval` after the last one it took is
    /// answered 429 with the seconds left as `retry_after` (at least 1), as Telegram
    /// answers a bot over its limit.
    pub fn enforce_limits(&self, per_chat_interval: Duration) {
        self.lock().per_chat_interval = Some(per_chat_interval);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

impl Drop for LocalBotApi {
    fn drop(&mut self) {
        // Not graceful: hanging calls are never going to finish. The stop is sent at
        // once; its completion is not awaited (no runtime is needed to drop this).
        drop(self.server.stop(false));
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A test's assertion may panic while another thread reads: the records stay usable.
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn call(req: HttpRequest, body: web::Bytes, state: web::Data<Mutex<State>>) -> HttpResponse {
    let token = req.match_info().get("token").unwrap_or_default();
    let method = req.match_info().get("method").unwrap_or_default();
    let params = params(&req, &body);
    let reply = lock(&state).reply(token, method, &params);
    match reply {
        Reply::Answer(status, body) => HttpResponse::build(status).json(body),
        Reply::Page(status) => HttpResponse::build(status)
            .content_type("text/html")
            .body(format!(
                "<html>\r\n<head><title>{status}</title></head>\r\n<body>\r\n<center><h1>{status}</h1></center>\r\n<hr><center>nginx/1.18.0</center>\r\n</body>\r\n</html>\r\n"
            )),
        Reply::Hang => std::future::pending().await,
        // The head is sent; the body fails, and actix closes the connection.
        Reply::Drop => HttpResponse::Ok()
            .content_type("application/json")
            .streaming(futures::stream::once(async {
                Err::<web::Bytes, io::Error>(io::Error::other("the local Bot API drops this answer"))
            })),
    }
}

async fn not_found() -> HttpResponse {
    HttpResponse::NotFound().json(error(404, "Not Found"))
}

/// The call's parameters: the query's, then the body's (JSON or form), as Telegram
/// takes them.
fn params(req: &HttpRequest, body: &[u8]) -> Map<String, Value> {
    let form = |bytes: &[u8]| -> Map<String, Value> {
        url::form_urlencoded::parse(bytes)
            .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
            .collect()
    };
    let mut params = form(req.query_string().as_bytes());
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let from_body = if content_type.starts_with("application/json") {
        serde_json::from_slice::<Map<String, Value>>(body).unwrap_or_default()
    } else if content_type.starts_with("application/x-www-form-urlencoded") {
        form(body)
    } else {
        Map::new()
    };
    params.extend(from_body);
    params
}

fn error(code: u16, description: &str) -> Value {
    json!({ "ok": false, "error_code": code, "description": description })
}

fn bad_request(description: &str) -> Reply {
    Reply::Answer(StatusCode::BAD_REQUEST, error(400, description))
}

impl State {
    fn reply(&mut self, token: &str, method: &str, params: &Map<String, Value>) -> Reply {
        // Telegram's method names are case-insensitive.
        let method = method.to_ascii_lowercase();
        if method == "sendmessage" {
            self.sends += 1;
        }
        if token != self.token {
            return Reply::Answer(StatusCode::UNAUTHORIZED, error(401, "Unauthorized"));
        }
        if method != "sendmessage" && method != "sendchataction" {
            return Reply::Answer(StatusCode::NOT_FOUND, error(404, "Not Found: method not found"));
        }
        let scripted = match method.as_str() {
            "sendmessage" => self.message_faults.pop_front(),
            _ => None,
        };
        let after = match scripted.or_else(|| self.faults.pop_front()) {
            Some(Fault::TooManyRequests { retry_after }) => return too_many(retry_after),
            Some(Fault::Status(code)) => return status(code),
            Some(Fault::Hang) => return Reply::Hang,
            Some(Fault::Drop) => Some(Reply::Drop),
            Some(Fault::HangAfterRecording) => Some(Reply::Hang),
            None => None,
        };
        let chat_id = match params.get("chat_id") {
            None => return bad_request("Bad Request: chat_id is empty"),
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::String(s)) => s.trim().parse().ok(),
            Some(_) => None,
        };
        let Some(chat_id) = chat_id else {
            return bad_request("Bad Request: chat not found");
        };
        if self.blocked.contains(&chat_id) {
            return Reply::Answer(
                StatusCode::FORBIDDEN,
                error(403, "Forbidden: bot was blocked by the user"),
            );
        }
        let answer = if method == "sendmessage" {
            match self.take_message(chat_id, params.get("text")) {
                Ok(answer) => answer,
                Err(refused) => return refused,
            }
        } else {
            let action = params.get("action").and_then(Value::as_str).unwrap_or_default();
            if action.is_empty() {
                return bad_request("Bad Request: action is empty");
            }
            if !ACTIONS.contains(&action) {
                return bad_request("Bad Request: wrong parameter action in request");
            }
            self.actions.push((chat_id, action.to_string()));
            json!({ "ok": true, "result": true })
        };
        after.unwrap_or(Reply::Answer(StatusCode::OK, answer))
    }

    /// Checks and records a message; Telegram's answer to it.
    fn take_message(&mut self, chat_id: i64, text: Option<&Value>) -> Result<Value, Reply> {
        let text = text.and_then(Value::as_str).unwrap_or_default();
        if text.trim().is_empty() {
            return Err(bad_request("Bad Request: message text is empty"));
        }
        if utf16_len(text) > MAX_MESSAGE_UTF16 {
            return Err(bad_request("Bad Request: message is too long"));
        }
        let now = Instant::now();
        if let (Some(interval), Some(last)) = (self.per_chat_interval, self.last_accepted.get(&chat_id)) {
            let next = *last + interval;
            if now < next {
                let left = (next - now).as_secs_f64().ceil().max(1.0);
                return Err(too_many(left as u64));
            }
        }
        self.last_accepted.insert(chat_id, now);
        let id = self.next_id.entry(chat_id).or_insert(0);
        *id += 1;
        let message_id = *id;
        self.messages.push(SentMessage {
            chat_id,
            message_id,
            text: text.to_string(),
        });
        let date = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(json!({
            "ok": true,
            "result": {
                "message_id": message_id,
                "from": { "id": 1, "is_bot": true, "first_name": "botdb" },
                "chat": { "id": chat_id, "type": "private" },
                "date": date,
                "text": text,
            }
        }))
    }
}

/// Telegram's chat actions.
const ACTIONS: &[&str] = &[
    "typing",
    "upload_photo",
    "record_video",
    "upload_video",
    "record_voice",
    "upload_voice",
    "upload_document",
    "choose_sticker",
    "find_location",
    "record_video_note",
    "upload_video_note",
];

fn too_many(retry_after: u64) -> Reply {
    Reply::Answer(
        StatusCode::TOO_MANY_REQUESTS,
        json!({
            "ok": false,
            "error_code": 429,
            "description": format!("Too Many Requests: retry after {retry_after}"),
            "parameters": { "retry_after": retry_after },
        }),
    )
}

fn status(code: u16) -> Reply {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if matches!(code, 502..=504) {
        return Reply::Page(status);
    }
    let reason = status.canonical_reason().unwrap_or("Error");
    Reply::Answer(status, error(status.as_u16(), reason))
}
