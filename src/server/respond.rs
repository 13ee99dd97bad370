//! How the server answers what it refuses: a JSON error body, a connection closed
//! after the answer, and botdb's [`Error`] as an HTTP status (`ResponseError`, so that
//! handlers of an embedding application can use `?`).

use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderValue, RETRY_AFTER};
use actix_web::{HttpResponse, ResponseError};

use crate::error::Error;

pub(crate) fn json_error(status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({ "error": message }))
}

/// `response`, closing its connection after it is sent.
pub(crate) fn closing(mut response: HttpResponse) -> HttpResponse {
    response
        .head_mut()
        .set_connection_type(actix_web::http::ConnectionType::Close);
    response
}

/// botdb errors as HTTP answers, so handlers can use `?`: client errors say what was
/// wrong; server errors say nothing of the internals (they are logged).
impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        match self {
            Error::InvalidInput { .. } => StatusCode::BAD_REQUEST,
            Error::NotFound { .. } => StatusCode::NOT_FOUND,
            Error::Conflict(_) => StatusCode::CONFLICT,
            // OutcomeUnknown too: Telegram redelivers, which is safe once the update's id
            // is recorded with its turn; until then a redelivery may repeat the turn, which
            // is better than losing it.
            Error::Unavailable { .. }
            | Error::OutcomeUnknown { .. }
            | Error::Timeout { .. }
            | Error::Overloaded { .. }
            | Error::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let mut response = if status.is_server_error() {
            tracing::warn!(error = %self, "request failed");
            let message = if status == StatusCode::SERVICE_UNAVAILABLE {
                "temporarily unavailable; retry later"
            } else {
                "internal error"
            };
            json_error(status, message)
        } else {
            json_error(status, &self.to_string())
        };
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::TimeoutKind;

    #[test]
    fn transient_and_unknown_outcomes_ask_telegram_to_retry() {
        for e in [
            Error::Timeout {
                kind: TimeoutKind::Lock,
                reason: "lock".into(),
            },
            Error::Timeout {
                kind: TimeoutKind::Statement,
                reason: "statement".into(),
            },
            Error::Unavailable {
                reason: "down".into(),
                source: None,
            },
            Error::OutcomeUnknown {
                reason: "cut".into(),
                source: None,
            },
            Error::ShuttingDown,
        ] {
            let response = e.error_response();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{e}");
            assert!(response.headers().contains_key(RETRY_AFTER), "{e}");
        }
    }
}
