//! The HTTP client of Telegram's Bot API: `sendMessage` and `sendChatAction`, one
//! attempt per call, and what each answer means for the caller ([`SendError`]).
//!
//! One attempt, because the caller's outbox decides when to try again and records what
//! happened each time; this client only says which of four cases a failure is: wait
//! what Telegram asks (429), try again later (a 5xx, no connection), maybe sent already
//! (the request went but no answer came back: trying again may show the message twice),
//! or never (400, 401, 403, 404). Each call is bounded by the configured timeout; the
//! connection, TLS included, by half of it, so that a timeout while connecting (nothing
//! sent) is told apart from one while waiting for the answer (maybe sent).
//!
//! The bot's token is in every Bot API URL (`{api}/bot{token}/sendMessage`), and
//! reqwest's errors name their URL: no URL is ever put in a [`SendError`] or a log, and
//! every text that reaches one (reqwest's error, Telegram's description) is scrubbed of
//! the token besides.

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::TelegramConfig;
use crate::error::{Error, Result};

/// The most of an answer read: Telegram's are a few hundred bytes; a larger one is not
/// the Bot API's, and is not read whole into memory.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The longest description of Telegram's kept in an error.
const MAX_DESCRIPTION_CHARS: usize = 500;

/// Why a Bot API call failed, and so what the caller may do about it. Neither the
/// `Display` nor the `Debug` of one ever holds a URL or the bot's token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// 429 Too Many Requests: Telegram asks to wait this long (its
    /// `parameters.retry_after`) before the next call. Nothing was sent.
    #[error("Telegram asks to wait {} s before sending again (429 Too Many Requests)", .0.as_secs_f64())]
    RetryAfter(Duration),
    /// Nothing was sent, or Telegram answered with a server error (5xx): the same call
    /// may succeed later. Try again after [`backoff`].
    #[error("the Bot API call failed and may be tried again: {0}")]
    Transient(String),
    /// The request went (or may have), but no answer came back: a timeout while waiting
    /// for it, a connection lost after sending, an answer cut short. Telegram may have
    /// the message: sending it again may show it twice.
    #[error("the Bot API call's outcome is unknown (Telegram may have the message): {0}")]
    Unknown(String),
    /// Telegram refused the call (400 Bad Request, 401 Unauthorized, 403 Forbidden:
    /// the user blocked the bot, 404): the same call will never succeed.
    #[error("Telegram refused the call ({code}): {description}")]
    Refused {
        /// Telegram's `error_code` (the HTTP status when the answer has none; 0 when
        /// the request could not even be made, so was never sent).
        code: u16,
        /// Telegram's `description`.
        description: String,
    },
}

impl SendError {
    /// A label for metrics: `retry_after`, `transient`, `unknown` or `refused`.
    pub fn kind(&self) -> &'static str {
        match self {
            SendError::RetryAfter(_) => "retry_after",
            SendError::Transient(_) => "transient",
            SendError::Unknown(_) => "unknown",
            SendError::Refused { .. } => "refused",
        }
    }
}

/// The wait before try number `attempt + 1` of a call that failed with
/// [`SendError::Transient`] `attempt` times (1 after the first failure): 0.5 s doubled
/// at each failure, at most `max`, of which a random part (up to half) so that senders
/// that failed together do not all come back together.
pub fn backoff(attempt: u32, max: Duration) -> Duration {
    let doublings = attempt.saturating_sub(1).min(31);
    let ceiling = Duration::from_millis(500)
        .saturating_mul(1_u32 << doublings)
        .min(max);
    let half = ceiling / 2;
    // Each RandomState is seeded anew: random enough to spread retries, no dependency.
    let random = RandomState::new().hash_one(attempt);
    let fraction = random as f64 / u64::MAX as f64;
    half + (ceiling - half).mul_f64(fraction)
}

/// The client of Telegram's Bot API: one connection pool, each call one attempt.
pub struct BotApi {
    client: reqwest::Client,
    /// `{api_url}bot{token}/`: a secret, since it holds the token.
    base: SecretString,
    token: SecretString,
    /// The API's origin, all of its address that may be shown.
    origin: String,
    timeout: Duration,
}

impl fmt::Debug for BotApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BotApi")
            .field("api", &self.origin)
            .field("token", &"***")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The part of a Bot API answer botdb reads.
#[derive(Deserialize)]
struct Answer {
    ok: bool,
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    error_code: Option<u16>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Parameters>,
}

#[derive(Deserialize)]
struct Parameters {
    #[serde(default)]
    retry_after: Option<u64>,
}

impl BotApi {
    /// A client of the Bot API `config` names.
    ///
    /// # Errors
    /// [`Error::Config`] on `TELEGRAM_BOT_TOKEN` without a token, or when `config` does
    /// not pass [`TelegramConfig::check`].
    pub fn new(config: &TelegramConfig) -> Result<Self> {
        let Some(token) = config.token() else {
            return Err(Error::config(
                "TELEGRAM_BOT_TOKEN",
                "the bot's token is needed to call the Bot API: set TELEGRAM_BOT_TOKEN",
            ));
        };
        config.check()?;
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout / 2)
            // The Bot API never redirects; following one would send the token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            // One attempt: the caller's outbox decides about the next and records each.
            .retry(reqwest::retry::never())
            .user_agent(concat!("botdb/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                Error::config(
                    "TELEGRAM_API_URL",
                    format!("the HTTP client could not start: {}", e.without_url()),
                )
            })?;
        // `check` made sure the URL has no path: it ends with its root's `/`.
        let base = format!("{}bot{token}/", config.api_url);
        Ok(BotApi {
            client,
            base: SecretString::from(base),
            token: SecretString::from(token.to_string()),
            origin: config.api_url.origin().ascii_serialization(),
            timeout: config.timeout,
        })
    }

    /// Sends `text` to `chat_id` as it is (no `parse_mode`): one attempt.
    ///
    /// # Errors
    /// [`SendError`], which says whether and when to try again.
    pub async fn send_message(&self, chat_id: i64, text: &str) -> Result<i64, SendError> {
        let result = self
            .call("sendMessage", &json!({ "chat_id": chat_id, "text": text }))
            .await?;
        result
            .get("message_id")
            .and_then(Value::as_i64)
            .ok_or_else(|| SendError::Unknown("Telegram answered ok without a message_id".to_string()))
    }

    /// Shows `action` (`typing`, `upload_photo`, ...) in `chat_id` for a few seconds:
    /// one attempt.
    ///
    /// # Errors
    /// [`SendError`], which says whether and when to try again.
    pub async fn send_chat_action(&self, chat_id: i64, action: &str) -> Result<(), SendError> {
        self.call("sendChatAction", &json!({ "chat_id": chat_id, "action": action }))
            .await
            .map(drop)
    }

    /// Calls `method` with `body` once; Telegram's `result` when it answers ok.
    async fn call(&self, method: &str, body: &Value) -> Result<Value, SendError> {
        let url = format!("{}{method}", self.base.expose_secret());
        let mut response = self
            .client
            .post(url)
            .json(body)
            .send()
            .await
            .map_err(|e| self.request_failed(e))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        // The status came, the body may still be cut: read it within bounds.
        let mut bytes = Vec::new();
        let mut cut = None;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) if bytes.len() + chunk.len() <= MAX_ANSWER_BYTES => {
                    bytes.extend_from_slice(&chunk);
                }
                Ok(Some(_)) => {
                    cut = Some("an answer too long to be the Bot API's".to_string());
                    break;
                }
                Ok(None) => break,
                Err(e) => {
                    cut = Some(format!("the answer was cut: {}", self.describe(e)));
                    break;
                }
            }
        }
        let answer = match cut {
            None => serde_json::from_slice::<Answer>(&bytes).ok(),
            Some(_) => None,
        };
        interpret(status, retry_after, answer, cut).map_err(|e| self.scrubbed(e))
    }

    /// What a call that got no answer means: nothing sent when no connection was made,
    /// else maybe sent.
    fn request_failed(&self, err: reqwest::Error) -> SendError {
        let (connect, timeout, builder) = (err.is_connect(), err.is_timeout(), err.is_builder());
        let detail = self.describe(err);
        if connect {
            SendError::Transient(format!("no connection to the Bot API: {detail}"))
        } else if builder {
            SendError::Refused {
                code: 0,
                description: format!("the request could not be made: {detail}"),
            }
        } else if timeout {
            SendError::Unknown(format!(
                "no answer within {:?} after the request went: {detail}",
                self.timeout
            ))
        } else {
            SendError::Unknown(format!("the connection failed after the request went: {detail}"))
        }
    }

    /// reqwest's error without its URL, with its causes, scrubbed of the token.
    fn describe(&self, err: reqwest::Error) -> String {
        let err = err.without_url();
        let mut text = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        self.scrub(&text)
    }

    fn scrub(&self, text: &str) -> String {
        text.replace(self.token.expose_secret(), "***")
    }

    fn scrubbed(&self, err: SendError) -> SendError {
        match err {
            SendError::Transient(s) => SendError::Transient(self.scrub(&s)),
            SendError::Unknown(s) => SendError::Unknown(self.scrub(&s)),
            SendError::Refused { code, description } => SendError::Refused {
                code,
                description: self.scrub(&description),
            },
            other => other,
        }
    }
}

/// What an answer means: `answer` is the body parsed as the Bot API's (`None`: it is
/// not, or was `cut` short), `retry_after` the `Retry-After` header.
fn interpret(
    status: StatusCode,
    retry_after: Option<u64>,
    answer: Option<Answer>,
    cut: Option<String>,
) -> Result<Value, SendError> {
    if let Some(answer) = &answer
        && answer.ok
        && status.is_success()
    {
        return Ok(answer.result.clone().unwrap_or(Value::Null));
    }
    let code = answer
        .as_ref()
        .and_then(|a| a.error_code)
        .unwrap_or(status.as_u16());
    let description = answer
        .as_ref()
        .and_then(|a| a.description.as_deref())
        .map(|d| d.chars().take(MAX_DESCRIPTION_CHARS).collect::<String>())
        .or(cut)
        .unwrap_or_else(|| format!("HTTP {status}, not a Bot API answer"));
    if code == 429 {
        let secs = answer
            .as_ref()
            .and_then(|a| a.parameters.as_ref())
            .and_then(|p| p.retry_after)
            .or(retry_after)
            .unwrap_or(1)
            .max(1);
        return Err(SendError::RetryAfter(Duration::from_secs(secs)));
    }
    if status.is_success() {
        // Telegram took the request and its answer is unreadable: it may have sent.
        return Err(SendError::Unknown(format!(
            "HTTP {status} without a Bot API answer: {description}"
        )));
    }
    if (500..600).contains(&code) || status.is_server_error() {
        return Err(SendError::Transient(format!(
            "Telegram answered {code}: {description}"
        )));
    }
    Err(SendError::Refused { code, description })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(body: &str) -> Option<Answer> {
        serde_json::from_str(body).ok()
    }

    #[test]
    fn telegrams_answers_are_read_as_telegram_writes_them() {
        let ok = interpret(
            StatusCode::OK,
            None,
            answer(r#"{"ok":true,"result":{"message_id":42,"chat":{"id":1}}}"#),
            None,
        );
        assert_eq!(ok.unwrap()["message_id"], 42);
        let flood = interpret(
            StatusCode::TOO_MANY_REQUESTS,
            Some(9),
            answer(
                r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 5","parameters":{"retry_after":5}}"#,
            ),
            None,
        );
        assert_eq!(flood.unwrap_err(), SendError::RetryAfter(Duration::from_secs(5)));
        // Without parameters, the header; without either, a second.
        let header = interpret(StatusCode::TOO_MANY_REQUESTS, Some(7), None, None);
        assert_eq!(header.unwrap_err(), SendError::RetryAfter(Duration::from_secs(7)));
        let bare = interpret(StatusCode::TOO_MANY_REQUESTS, None, None, None);
        assert_eq!(bare.unwrap_err(), SendError::RetryAfter(Duration::from_secs(1)));
        let blocked = interpret(
            StatusCode::FORBIDDEN,
            None,
            answer(r#"{"ok":false,"error_code":403,"description":"Forbidden: bot was blocked by the user"}"#),
            None,
        );
        assert_eq!(
            blocked.unwrap_err(),
            SendError::Refused {
                code: 403,
                description: "Forbidden: bot was blocked by the user".into()
            }
        );
        // nginx's 502 page is not JSON: transient all the same.
        let gateway = interpret(StatusCode::BAD_GATEWAY, None, None, None).unwrap_err();
        assert_eq!(gateway.kind(), "transient");
        let cut = interpret(StatusCode::OK, None, None, Some("the answer was cut".into())).unwrap_err();
        assert_eq!(cut.kind(), "unknown");
        let not_found = interpret(StatusCode::NOT_FOUND, None, None, None).unwrap_err();
        assert!(matches!(not_found, SendError::Refused { code: 404, .. }));
    }

    #[test]
    fn backoff_doubles_within_its_bounds_and_varies() {
        let max = Duration::from_secs(30);
        for attempt in 0..40_u32 {
            let ceiling = Duration::from_millis(500)
                .saturating_mul(1 << attempt.saturating_sub(1).min(31))
                .min(max);
            let wait = backoff(attempt, max);
            assert!(wait >= ceiling / 2 && wait <= ceiling, "{attempt}: {wait:?}");
        }
        assert!(backoff(u32::MAX, max) <= max);
        let waits: std::collections::HashSet<Duration> = (0..20).map(|_| backoff(5, max)).collect();
        assert!(waits.len() > 1, "jitter");
    }

    #[test]
    fn a_description_that_echoes_the_token_is_scrubbed() {
        let token = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsawQ";
        let config = TelegramConfig {
            token: Some(SecretString::from(token.to_string())),
            ..TelegramConfig::default()
        };
        let api = BotApi::new(&config).unwrap();
        let echoed = format!("Bad Request: no such bot{token}/sendMessage");
        for err in [
            SendError::Refused {
                code: 400,
                description: echoed.clone(),
            },
            SendError::Transient(echoed.clone()),
            SendError::Unknown(echoed),
        ] {
            let scrubbed = api.scrubbed(err);
            assert!(!format!("{scrubbed} {scrubbed:?}").contains(token), "{scrubbed}");
        }
        assert!(!format!("{api:?}").contains(token));
    }

    #[test]
    fn kinds_are_the_metrics_labels() {
        let all = [
            SendError::RetryAfter(Duration::from_secs(1)),
            SendError::Transient(String::new()),
            SendError::Unknown(String::new()),
            SendError::Refused {
                code: 400,
                description: String::new(),
            },
        ];
        let kinds: Vec<&str> = all.iter().map(SendError::kind).collect();
        assert_eq!(kinds, ["retry_after", "transient", "unknown", "refused"]);
    }
}
