//! [`OpenAiModel`]: a [`Model`] that asks any OpenAI-compatible chat completions API
//! (OpenAI, vLLM, llama.cpp's server, Ollama) over HTTP, and [`from_config`], the model
//! a [`ModelConfig`] names.
//!
//! One call is `POST {url}/chat/completions` with `{"model", "messages"}`: the user's
//! own system prompt first when they set one, then the context, oldest first. The
//! answer is `choices[0].message.content`. Each attempt is bounded by the configured
//! timeout; what may pass (a connection refused or reset, a timeout, 408, 429, 5xx) is
//! asked again after a backoff (`backoff`), what will not (another 4xx, an answer that
//! is not a chat completion) fails at once. Neither the key nor the conversation ever
//! appears in an error or a log line.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::llm::backoff;
use crate::llm::{EchoModel, Model, ModelError, ModelInput};

/// The largest answer read: a chat completion is kilobytes; a server streaming without
/// end must not fill the bot's memory.
const MAX_ANSWER_BYTES: usize = 8 << 20;

/// The most of an error body read, for its message.
const MAX_ERROR_BYTES: usize = 64 << 10;

/// The longest server message kept in an error.
const MAX_REASON_CHARS: usize = 300;

/// The longest wait for a TCP connection, when the per-attempt timeout is longer: a
/// host that never answers is retried sooner, while a slow answer keeps its full time.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The model `cfg` names: the local [`EchoModel`] without a URL, else an
/// [`OpenAiModel`].
///
/// # Errors
/// As [`ModelConfig::check`] and [`OpenAiModel::new`].
pub fn from_config(cfg: &ModelConfig) -> Result<Arc<dyn Model>> {
    cfg.check()?;
    Ok(match cfg.url {
        None => Arc::new(EchoModel),
        Some(_) => Arc::new(OpenAiModel::new(cfg)?),
    })
}

/// A client of an OpenAI-compatible chat completions API. Cheap to share: one
/// connection pool (keep-alive connections reused across calls) behind an `Arc`.
pub struct OpenAiModel {
    client: reqwest::Client,
    endpoint: url::Url,
    name: String,
    /// `Bearer <key>`, marked sensitive (never shown by `HeaderValue`'s `Debug`).
    authorization: Option<HeaderValue>,
    /// The key itself, to scrub it from what a server says back.
    api_key: Option<SecretString>,
    timeout: Duration,
    attempts: u32,
    max_backoff: Duration,
}

impl fmt::Debug for OpenAiModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiModel")
            .field("endpoint", &self.endpoint.as_str())
            .field("name", &self.name)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("timeout", &self.timeout)
            .field("attempts", &self.attempts)
            .field("max_backoff", &self.max_backoff)
            .finish()
    }
}

impl OpenAiModel {
    /// A client of the API at `cfg.url`.
    ///
    /// # Errors
    /// [`Error::Config`] when `cfg` does not pass [`ModelConfig::check`], has no URL, or
    /// its key cannot travel in an HTTP header (the key is not repeated);
    /// [`Error::Internal`] when the HTTP client cannot be built (its TLS roots).
    pub fn new(cfg: &ModelConfig) -> Result<Self> {
        cfg.check()?;
        let endpoint = cfg.completions_url().ok_or_else(|| {
            Error::config(
                "BOTDB_MODEL_URL",
                "the model client needs the API's base URL (e.g. http://127.0.0.1:8000/v1)",
            )
        })?;
        let authorization = cfg
            .api_key
            .as_ref()
            .map(|key| {
                let mut value =
                    HeaderValue::from_str(&format!("Bearer {}", key.expose_secret())).map_err(|_| {
                        Error::config(
                            "BOTDB_MODEL_API_KEY",
                            "the key holds characters an HTTP header cannot carry",
                        )
                    })?;
                value.set_sensitive(true);
                Ok::<_, Error>(value)
            })
            .transpose()?;
        let client = reqwest::Client::builder()
            .connect_timeout(cfg.timeout.min(MAX_CONNECT_TIMEOUT))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_keepalive(Duration::from_secs(30))
            .tcp_nodelay(true)
            // A redirect is a wrong base URL; following it could carry the key elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("botdb/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Internal(format!("the model's HTTP client could not be built: {e}")))?;
        Ok(OpenAiModel {
            client,
            endpoint,
            name: cfg.name.clone(),
            authorization,
            api_key: cfg.api_key.clone(),
            timeout: cfg.timeout,
            attempts: cfg.attempts,
            max_backoff: cfg.max_backoff,
        })
    }

    /// Asks until an answer, a failure not worth repeating, or the last attempt.
    async fn ask(&self, body: Vec<u8>) -> Result<String, ModelError> {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let failure = match self.attempt(&body).await {
                Ok(answer) => return answer,
                Err(failure) => failure,
            };
            if attempt >= self.attempts {
                return Err(if failure.timed_out {
                    ModelError::Timeout {
                        after: started.elapsed(),
                        attempts: attempt,
                    }
                } else {
                    ModelError::Unavailable {
                        reason: failure.reason,
                        attempts: attempt,
                    }
                });
            }
            let wait = backoff::wait_before(attempt, self.max_backoff, failure.retry_after);
            tracing::debug!(
                attempt,
                attempts = self.attempts,
                status = failure.status,
                timed_out = failure.timed_out,
                wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                reason = %failure.reason,
                "the model call failed; retrying"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// One request: `Ok` with the call's outcome (an answer, or a failure that asking
    /// again would not change), `Err` with a failure worth another attempt.
    async fn attempt(&self, body: &[u8]) -> Result<Result<String, ModelError>, Transient> {
        let mut request = self
            .client
            .post(self.endpoint.clone())
            .timeout(self.timeout)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .body(body.to_vec());
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        let response = request.send().await.map_err(|e| self.transport(&e))?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let limit = if status.is_success() {
            MAX_ANSWER_BYTES
        } else {
            MAX_ERROR_BYTES
        };
        let (bytes, whole) = read_prefix(response, limit)
            .await
            .map_err(|e| self.transport(&e))?;
        if status.is_success() {
            if !whole {
                return Ok(Err(ModelError::BadAnswer(format!(
                    "the answer is larger than {MAX_ANSWER_BYTES} bytes"
                ))));
            }
            return Ok(self.parse_answer(&bytes));
        }
        let reason = self.reason(status, &bytes);
        if status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
            || status.is_server_error()
        {
            return Err(Transient {
                status: Some(status.as_u16()),
                reason,
                timed_out: false,
                retry_after,
            });
        }
        Ok(Err(ModelError::Refused {
            status: status.as_u16(),
            reason,
        }))
    }

    /// A failure of the connection or of the wait, as a transient failure.
    fn transport(&self, e: &reqwest::Error) -> Transient {
        let timed_out = e.is_timeout();
        let reason = if timed_out {
            format!("no answer within {:?}", self.timeout)
        } else {
            // reqwest's own text says little ("error sending request"): its causes say
            // what happened (connection refused, reset by peer).
            let mut reason = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                reason.push_str(": ");
                reason.push_str(&cause.to_string());
                source = cause.source();
            }
            self.scrub(&reason)
        };
        Transient {
            status: None,
            reason,
            timed_out,
            retry_after: None,
        }
    }

    /// `choices[0].message.content` of a chat completion. The messages never quote the
    /// body: it may hold the conversation.
    fn parse_answer(&self, body: &[u8]) -> Result<String, ModelError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| ModelError::BadAnswer(format!("not JSON ({} bytes): {e}", body.len())))?;
        let Some(choices) = value.get("choices").and_then(Value::as_array) else {
            return Err(ModelError::BadAnswer(match error_message(&value) {
                Some(message) => format!("an error instead of choices: {}", self.scrub(&message)),
                None => "JSON without a choices array".into(),
            }));
        };
        let Some(first) = choices.first() else {
            return Err(ModelError::Empty);
        };
        let Some(message) = first.get("message").filter(|m| m.is_object()) else {
            return Err(ModelError::BadAnswer("choices[0] has no message object".into()));
        };
        match message.get("content") {
            Some(Value::String(text)) if !text.trim().is_empty() => Ok(text.clone()),
            Some(Value::String(_) | Value::Null) | None => Err(ModelError::Empty),
            Some(_) => Err(ModelError::BadAnswer(
                "choices[0].message.content is not a string".into(),
            )),
        }
    }

    /// What a failed request's body says, shortened and without the key; only the
    /// server's own message field is kept (a body may echo the request).
    fn reason(&self, status: StatusCode, body: &[u8]) -> String {
        let message = serde_json::from_slice::<Value>(body)
            .ok()
            .as_ref()
            .and_then(error_message)
            .map(|m| self.scrub(&m));
        let status = format!(
            "HTTP {} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        match message {
            Some(message) => format!("{}: {message}", status.trim_end()),
            None => status.trim_end().to_string(),
        }
    }

    /// `text` without the API key: the key itself, and any word that begins as it
    /// does (OpenAI quotes a wrong key half masked, `sk-abc***wxyz`).
    fn scrub(&self, text: &str) -> String {
        let Some(key) = self.api_key.as_ref().map(|k| k.expose_secret()) else {
            return text.to_string();
        };
        if key.is_empty() {
            return text.to_string();
        }
        let text = text.replace(key, "***");
        let prefix: String = key.chars().take(6).collect();
        if key.chars().count() < 8 {
            return text;
        }
        text.split(' ')
            .map(|word| {
                let bare = word.trim_start_matches(|c: char| !c.is_alphanumeric());
                if bare.starts_with(&prefix) { "***" } else { word }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl Model for OpenAiModel {
    fn reply<'a>(&'a self, input: ModelInput<'a>) -> BoxFuture<'a, Result<String, ModelError>> {
        let body = request_body(&self.name, &input);
        Box::pin(async move { self.ask(body?).await })
    }
}

/// A failure another attempt may get past.
struct Transient {
    status: Option<u16>,
    reason: String,
    timed_out: bool,
    retry_after: Option<Duration>,
}

/// The request's JSON: the model, the user's own system prompt, then the context.
fn request_body(name: &str, input: &ModelInput<'_>) -> Result<Vec<u8>, ModelError> {
    #[derive(serde::Serialize)]
    struct Message<'a> {
        role: &'static str,
        content: &'a str,
    }
    #[derive(serde::Serialize)]
    struct Request<'a> {
        model: &'a str,
        messages: Vec<Message<'a>>,
    }
    let system = input.system_prompt.map(|content| Message {
        role: "system",
        content,
    });
    let context = input.context.iter().map(|m| Message {
        role: m.role.as_str(),
        content: &m.content,
    });
    let request = Request {
        model: name,
        messages: system.into_iter().chain(context).collect(),
    };
    // Strings and string keys only: serde_json cannot fail on this; were it to, the
    // model was never asked.
    serde_json::to_vec(&request).map_err(|e| ModelError::Unavailable {
        reason: format!("the request could not be encoded: {e}"),
        attempts: 0,
    })
}

/// The server's message in an error body, as OpenAI (`{"error": {"message"}}`), Ollama
/// (`{"error": "..."}`) and vLLM (`{"message"}`) write it, shortened.
fn error_message(body: &Value) -> Option<String> {
    let message = match body.get("error") {
        Some(Value::Object(error)) => error.get("message").and_then(Value::as_str),
        Some(Value::String(error)) => Some(error.as_str()),
        _ => body.get("message").and_then(Value::as_str),
    }?;
    let mut message: String = message.split_whitespace().collect::<Vec<_>>().join(" ");
    if message.chars().count() > MAX_REASON_CHARS {
        message = message.chars().take(MAX_REASON_CHARS).collect::<String>() + "...";
    }
    (!message.is_empty()).then_some(message)
}

/// A `Retry-After` in seconds (fractions accepted); an HTTP date is ignored and the
/// backoff's own wait used.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: f64 = headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)))
}

/// The body's first `limit` bytes, and whether that was all of it.
async fn read_prefix(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if bytes.len() + chunk.len() > limit {
            let room = limit - bytes.len();
            bytes.extend_from_slice(&chunk[..room]);
            return Ok((bytes, false));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok((bytes, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::ChatMessage;
    use crate::model::Role;

    fn client(key: Option<&str>) -> OpenAiModel {
        OpenAiModel::new(&ModelConfig {
            url: Some(url::Url::parse("http://127.0.0.1:9/v1").unwrap()),
            name: "m".into(),
            api_key: key.map(|k| SecretString::from(k.to_string())),
            ..ModelConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn the_request_is_the_system_prompt_then_the_context() {
        let context = [
            ChatMessage {
                role: Role::User,
                content: "hi".into(),
            },
            ChatMessage {
                role: Role::Assistant,
                content: "hello".into(),
            },
        ];
        let input = ModelInput {
            user_id: 1,
            system_prompt: Some("be brief"),
            context: &context,
        };
        let body: Value = serde_json::from_slice(&request_body("gpt", &input).unwrap()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"model": "gpt", "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
            ]})
        );
    }

    #[test]
    fn answers_are_read_or_classified() {
        let m = client(None);
        let ok = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"yes"}}]}"#;
        assert_eq!(m.parse_answer(ok), Ok("yes".into()));
        for empty in [
            &br#"{"choices":[]}"#[..],
            br#"{"choices":[{"message":{"role":"assistant","content":"  \n"}}]}"#,
            br#"{"choices":[{"message":{"role":"assistant","content":null}}]}"#,
        ] {
            assert_eq!(m.parse_answer(empty), Err(ModelError::Empty));
        }
        for bad in [
            &b"<html>oops</html>"[..],
            br#"{"id":"x"}"#,
            br#"{"choices":[{"text":"legacy"}]}"#,
            br#"{"choices":[{"message":{"content":42}}]}"#,
        ] {
            assert!(
                matches!(m.parse_answer(bad), Err(ModelError::BadAnswer(_))),
                "{bad:?}"
            );
        }
        // The body's text is never quoted.
        let Err(e) = m.parse_answer(b"private words") else {
            panic!()
        };
        assert!(!e.to_string().contains("private"), "{e}");
    }

    #[test]
    fn the_key_is_scrubbed_from_what_servers_say() {
        let key = "sk-proj-abcdef0123456789";
        let m = client(Some(key));
        let said = format!("Incorrect API key provided: {key}. Or sk-proj-***6789, (sk-proj-ab..89).");
        let scrubbed = m.scrub(&said);
        assert!(!scrubbed.contains("abcdef"), "{scrubbed}");
        assert!(!scrubbed.contains("sk-pro"), "{scrubbed}");
        assert!(scrubbed.starts_with("Incorrect API key provided: "), "{scrubbed}");
        assert!(!format!("{m:?}").contains("sk-proj"));
    }

    #[test]
    fn retry_after_in_seconds() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("0.5"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(500)));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
    }
}
