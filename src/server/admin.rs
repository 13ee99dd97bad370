//! `GET /healthz` and `GET /metrics`: cheap enough to be called often, and closed to
//! strangers when asked.
//!
//! Health costs at most one database round trip per cache period, whatever the rate of
//! calls ([`HealthCache`](crate::server::health::HealthCache)). A flood of `/healthz`
//! therefore never takes pool connections from the actors. Both routes can
//! require `Authorization: Bearer <BOTDB_ADMIN_TOKEN>` (constant-time comparison), and
//! both can live on their own listener (`--admin-bind`), off the public address.

use actix_web::http::StatusCode;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{HttpRequest, HttpResponse, web};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use crate::actors::PipelineDepth;
use crate::server::metrics;
use crate::server::respond::json_error;
use crate::server::state::AppState;

/// `true` when the request may see the admin routes.
fn authorized(req: &HttpRequest, token: &Option<SecretString>) -> bool {
    let Some(token) = token else { return true };
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) => bool::from(given.as_bytes().ct_eq(token.expose_secret().as_bytes())),
        None => false,
    }
}

fn unauthorized() -> HttpResponse {
    let mut response = json_error(StatusCode::UNAUTHORIZED, "missing or wrong admin token");
    response.headers_mut().insert(
        actix_web::http::header::WWW_AUTHENTICATE,
        actix_web::http::header::HeaderValue::from_static("Bearer"),
    );
    response
}

pub(crate) async fn healthz(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if !authorized(&req, &state.admin_token) {
        return unauthorized();
    }
    let actors = state.bot.db();
    if actors.is_shutting_down() {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    let db = actors.database();
    if state.health.database_ok(db, state.limits.health_cache).await {
        HttpResponse::Ok().json(serde_json::json!({ "status": "ok", "pool": db.pool_status() }))
    } else {
        json_error(StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
    }
}

pub(crate) async fn metrics(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if !authorized(&req, &state.admin_token) {
        return unauthorized();
    }
    let actors = state.bot.db();
    // With the Bot API, the inbox's and outbox's depth: one read (best effort: the
    // families are left out when the database does not answer).
    let pipeline = match &state.pipeline {
        Some(pipeline) => Some((
            pipeline.metrics().snapshot(),
            actors.send(PipelineDepth).await.ok(),
        )),
        None => None,
    };
    match actors.stats().await {
        Ok(stats) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4; charset=utf-8")
            .body(metrics::render(&metrics::Scrape {
                stats: &stats,
                webhook: &state.webhook,
                health: &state.health,
                keys_purged: state.keys_purged.load(std::sync::atomic::Ordering::Relaxed),
                outbox_purged: state.outbox_purged.load(std::sync::atomic::Ordering::Relaxed),
                deadline_misses: actors.database().deadline_misses(),
                removed: actors.database().counters().snapshot(),
                replica_reads: actors.database().replica_reads(),
                shutting_down: actors.is_shutting_down(),
                pipeline: pipeline.as_ref().map(|(counts, depth)| (counts, *depth)),
            })),
        Err(_) => json_error(StatusCode::SERVICE_UNAVAILABLE, "actors unavailable"),
    }
}
