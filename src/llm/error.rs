//! [`ModelError`]: how asking the model failed, as decisions a caller can take: try
//! again later (the model is down or slow), fix the deployment (a bad key, an unknown
//! model), or give up on this answer (garbage, nothing said).
//!
//! No message carries the API key or the content of the conversation: a caller may log
//! them, count them by [`kind`](ModelError::kind), or show them to an operator.

use std::time::Duration;

/// The model gave no usable answer; the bot tells the user and stores nothing of the
/// turn.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The model could not be reached or said it could not answer now (connection
    /// refused or reset, 5xx, 429, 408), on every attempt. Asking again later may work.
    #[error("the model is unavailable ({attempts} attempt(s)): {reason}")]
    Unavailable {
        /// What the last attempt met, in words (a status, a connection error).
        reason: String,
        /// How many times it was asked.
        attempts: u32,
    },

    /// The last attempt got no complete answer within the per-attempt timeout
    /// (`BOTDB_MODEL_TIMEOUT`). Asking again later may work.
    #[error("the model did not answer in time ({attempts} attempt(s), {after:?} in all)")]
    Timeout {
        /// How long the call took in all, every attempt and the waits between them.
        after: Duration,
        /// How many times it was asked.
        attempts: u32,
    },

    /// The answer is not a chat completion (not JSON, or JSON of another shape).
    /// Not retried: a server that answers garbage once usually does so every time.
    #[error("the model's answer is not a chat completion: {0}")]
    BadAnswer(String),

    /// The answer is a chat completion without text (no choice, or empty content).
    #[error("the model's answer has no text")]
    Empty,

    /// The model's server refused the request (a 4xx other than 408 and 429: a bad API
    /// key, an unknown model, a malformed request; or a redirect). Never retried:
    /// asking again gets the same answer until the configuration changes.
    #[error("the model refused the request (HTTP {status}): {reason}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// What the server said, shortened, without the key.
        reason: String,
    },
}

impl ModelError {
    /// A short, stable name of the variant, for metrics labels and logs:
    /// `unavailable`, `timeout`, `bad_answer`, `empty` or `refused`.
    pub fn kind(&self) -> &'static str {
        match self {
            ModelError::Unavailable { .. } => "unavailable",
            ModelError::Timeout { .. } => "timeout",
            ModelError::BadAnswer(_) => "bad_answer",
            ModelError::Empty => "empty",
            ModelError::Refused { .. } => "refused",
        }
    }

    /// `true` when the same question may get an answer if asked again later
    /// ([`Unavailable`](ModelError::Unavailable), [`Timeout`](ModelError::Timeout));
    /// the client has already retried within its own budget.
    pub fn is_transient(&self) -> bool {
        matches!(self, ModelError::Unavailable { .. } | ModelError::Timeout { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_transience() {
        let cases = [
            (
                ModelError::Unavailable {
                    reason: "HTTP 503".into(),
                    attempts: 3,
                },
                "unavailable",
                true,
            ),
            (
                ModelError::Timeout {
                    after: Duration::from_secs(3),
                    attempts: 3,
                },
                "timeout",
                true,
            ),
            (ModelError::BadAnswer("not JSON".into()), "bad_answer", false),
            (ModelError::Empty, "empty", false),
            (
                ModelError::Refused {
                    status: 401,
                    reason: "bad key".into(),
                },
                "refused",
                false,
            ),
        ];
        for (error, kind, transient) in cases {
            assert_eq!(error.kind(), kind, "{error}");
            assert_eq!(error.is_transient(), transient, "{error}");
        }
    }
}
