//! `POST /telegram/webhook`: Telegram's secret token first, then a body read bounded in
//! size and in time, then the bot.
//!
//! Order matters against clients that do not hold the secret: the token is checked on
//! the headers alone, before a byte of the body is read, so such a client costs a
//! header parse and a 401, never a 256 KiB buffer or a socket held open while it
//! trickles a body in. A declared `Content-Length` over the limit is refused before
//! reading too; a body that does not arrive within the body timeout gets 408. Every
//! early refusal closes the connection (the unread body is not drained).

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use crate::actors::RecordUpdate;
use crate::bot::{Bot, BotError, Outcome, Route, Update};
use crate::error::Error;
use crate::pipeline::Pipeline;
use crate::repo::inbox::Recorded;
use crate::server::metrics::WebhookMetrics;
use crate::server::respond::{closing, json_error};
use crate::server::state::AppState;
use crate::telegram::parse_update;

/// The header Telegram puts its secret token in.
pub const SECRET_HEADER: &str = "X-Telegram-Bot-Api-Secret-Token";

/// `true` when `given` holds `secret` (or no secret is required). Constant time.
pub(crate) fn token_ok(given: Option<&[u8]>, secret: &Option<SecretString>) -> bool {
    let Some(secret) = secret else { return true };
    match given {
        Some(given) => bool::from(given.ct_eq(secret.expose_secret().as_bytes())),
        None => false,
    }
}

/// Why a body was not read.
enum BodyError {
    TooLarge,
    TooSlow,
    Broken,
}

/// Reads at most `limit` bytes of body within `deadline`.
async fn read_body(payload: web::Payload, limit: usize, deadline: Duration) -> Result<web::Bytes, BodyError> {
    match tokio::time::timeout(deadline, payload.to_bytes_limited(limit)).await {
        Err(_) => Err(BodyError::TooSlow),
        Ok(Err(_)) => Err(BodyError::TooLarge),
        Ok(Ok(Err(_))) => Err(BodyError::Broken),
        Ok(Ok(Ok(body))) => Ok(body),
    }
}

pub(crate) async fn webhook(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let rejected = || WebhookMetrics::count(&state.webhook.rejected);
    let given = req.headers().get(SECRET_HEADER).map(|v| v.as_bytes());
    if !token_ok(given, &state.secret) {
        rejected();
        return closing(json_error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong secret token",
        ));
    }
    let is_json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("application/json"));
    if !is_json {
        rejected();
        return closing(json_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected Content-Type: application/json",
        ));
    }
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let too_large = || {
        closing(json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body is over the limit of {} bytes", state.limits.body_limit),
        ))
    };
    if declared.is_some_and(|n| n > state.limits.body_limit as u64) {
        rejected();
        return too_large();
    }
    let body = match read_body(payload, state.limits.body_limit, state.limits.body_timeout).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            rejected();
            return too_large();
        }
        Err(BodyError::TooSlow) => {
            rejected();
            return closing(json_error(
                StatusCode::REQUEST_TIMEOUT,
                "the body did not arrive in time",
            ));
        }
        Err(BodyError::Broken) => {
            rejected();
            return closing(json_error(StatusCode::BAD_REQUEST, "the body could not be read"));
        }
    };
    let update = match parse_update(&body) {
        Ok(update) => update,
        Err(e) => {
            rejected();
            return json_error(StatusCode::BAD_REQUEST, &e.to_string());
        }
    };
    if let Some(pipeline) = &state.pipeline {
        return record(&state, pipeline, update, &body).await;
    }
    match state.bot.handle(update).await {
        Ok(Outcome::Reply(message)) => {
            WebhookMetrics::count(&state.webhook.replied);
            HttpResponse::Ok().json(message)
        }
        Ok(Outcome::Ignored(_)) => {
            WebhookMetrics::count(&state.webhook.ignored);
            HttpResponse::Ok().finish()
        }
        Err(BotError::BadUpdate(why)) => {
            rejected();
            json_error(StatusCode::BAD_REQUEST, &why)
        }
        Err(BotError::Db(e)) => {
            WebhookMetrics::count(&state.webhook.failed);
            e.error_response()
        }
    }
}

/// With the Bot API (`TELEGRAM_BOT_TOKEN`): the update recorded, then 200 at once; the
/// pipeline runs it and sends the reply. A copy (recorded before, running, done, or its
/// user erased) is answered 200 and does nothing: it attaches to the first.
async fn record(state: &AppState, pipeline: &Pipeline, update: Update, body: &[u8]) -> HttpResponse {
    let (user_id, chat_id) = match Bot::route(&update) {
        Ok(Route::Dialogue { user_id, chat_id }) => (user_id, chat_id),
        Ok(Route::Ignore(_)) => {
            WebhookMetrics::count(&state.webhook.ignored);
            return HttpResponse::Ok().finish();
        }
        Err(e) => {
            WebhookMetrics::count(&state.webhook.rejected);
            return json_error(StatusCode::BAD_REQUEST, &e.to_string());
        }
    };
    // What Telegram sent, kept whole: the pipeline hands it to the bot as it came.
    let payload = match (serde_json::from_slice(body), state.bot.key_of(&update)) {
        (Ok(payload), Ok(key)) => (payload, key),
        (Err(e), _) => {
            WebhookMetrics::count(&state.webhook.rejected);
            return json_error(StatusCode::BAD_REQUEST, &e.to_string());
        }
        (_, Err(e)) => {
            WebhookMetrics::count(&state.webhook.rejected);
            return json_error(StatusCode::BAD_REQUEST, &e.to_string());
        }
    };
    let (payload, key) = payload;
    let recorded = state
        .bot
        .db()
        .send(RecordUpdate {
            user_id,
            chat_id,
            update_id: update.update_id,
            key,
            payload,
        })
        .await;
    match recorded {
        Ok(Recorded::New) => {
            WebhookMetrics::count(&state.webhook.recorded);
            pipeline.wake();
            HttpResponse::Ok().finish()
        }
        Ok(Recorded::Copy | Recorded::Erased) => {
            WebhookMetrics::count(&state.webhook.copies);
            HttpResponse::Ok().finish()
        }
        Ok(Recorded::OtherUser) => {
            WebhookMetrics::count(&state.webhook.failed);
            Error::Conflict("the update's key was recorded by another user's request".into()).error_response()
        }
        Err(e) => {
            WebhookMetrics::count(&state.webhook.failed);
            e.error_response()
        }
    }
}
