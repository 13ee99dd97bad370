//! `botdb serve`: the bot on actix-web, showing the intended embedding.
//!
//! Routes: `POST /telegram/webhook` (Telegram Update JSON in, a `sendMessage` body out,
//! as a Telegram webhook answer), `GET /healthz`, `GET /metrics` (Prometheus text).
//!
//! The webhook requires Telegram's secret token header
//! (`X-Telegram-Bot-Api-Secret-Token`, compared in constant time); a missing or wrong
//! token gets 401 and touches nothing. Bodies are limited in size.
//!
//! Shutdown order, with one owner of the signals (botdb's, through ctrlc; actix-web's
//! own handling is disabled): stop the HTTP server gracefully (no new connections;
//! in-flight requests finish, and with them the actor requests they wait on), then shut
//! the actors down (every accepted request drains), then the pool closes.

pub mod metrics;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, ResponseError, web};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use subtle::ConstantTimeEq;

use crate::actors::{DbHandle, DbSystem, ShutdownReport};
use crate::bot::telegram::parse_update;
use crate::bot::{Bot, BotError, Model, Outcome};
use crate::config::ActorConfig;
use crate::db::Database;
use crate::error::{Error, Result};
use metrics::WebhookMetrics;

/// The header Telegram puts its secret token in.
pub const SECRET_HEADER: &str = "X-Telegram-Bot-Api-Secret-Token";

/// How `botdb serve` runs.
#[derive(Clone)]
pub struct ServeOptions {
    /// Address to listen on (`BOTDB_BIND`, default `127.0.0.1:8080`; port 0 picks one).
    pub bind: String,
    /// The webhook's secret token (`BOTDB_WEBHOOK_SECRET`), as given to Telegram's
    /// `setWebhook`.
    pub webhook_secret: Option<SecretString>,
    /// Accept webhook calls without a token: for a local test only, never in production.
    pub insecure_no_secret: bool,
    /// Largest request body accepted, in bytes (larger: 413).
    pub body_limit: usize,
    /// HTTP worker threads.
    pub workers: usize,
    /// How long the HTTP server waits for in-flight requests at shutdown.
    pub http_shutdown_timeout: Duration,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("bind", &self.bind)
            .field("webhook_secret", &self.webhook_secret.as_ref().map(|_| "***"))
            .field("insecure_no_secret", &self.insecure_no_secret)
            .field("body_limit", &self.body_limit)
            .field("workers", &self.workers)
            .finish()
    }
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            bind: "127.0.0.1:8080".into(),
            webhook_secret: None,
            insecure_no_secret: false,
            body_limit: 256 * 1024,
            workers: 2,
            http_shutdown_timeout: Duration::from_secs(30),
        }
    }
}

/// What the handlers share.
struct AppState {
    bot: Bot,
    secret: Option<SecretString>,
    webhook: WebhookMetrics,
}

/// A server that is bound and running; [`RunningServer::run_until`] drives it to the
/// end.
pub struct RunningServer {
    addrs: Vec<SocketAddr>,
    server: actix_web::dev::Server,
    actors: DbHandle,
    http_shutdown_timeout: Duration,
}

/// How a server ended.
#[derive(Clone, Debug, Serialize)]
pub struct ServeReport {
    /// The actors' drain.
    pub shutdown: ShutdownReport,
}

impl RunningServer {
    /// Where it listens.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The actors behind it.
    pub fn actors(&self) -> &DbHandle {
        &self.actors
    }

    /// Serves until `shutdown` resolves (or the server fails), then stops in order: HTTP
    /// (gracefully), actors (drained), pool (closed).
    ///
    /// # Errors
    /// [`Error::Internal`] if the HTTP server failed on its own.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<ServeReport> {
        let handle = self.server.handle();
        // The server must keep being polled while it stops: it is a task of its own.
        let mut server = actix_rt::spawn(self.server);
        let failed = tokio::select! {
            result = &mut server => Some(result),
            () = shutdown => None,
        };
        if failed.is_none() {
            tracing::info!("shutdown: stopping HTTP (in-flight requests finish)");
            // Graceful: stop accepting, let in-flight requests complete (bounded by the
            // server's shutdown timeout), then the workers stop.
            handle.stop(true).await;
            let _ = tokio::time::timeout(self.http_shutdown_timeout, &mut server).await;
        }
        tracing::info!("shutdown: HTTP stopped; draining actors");
        let report = self.actors.shutdown().await;
        match failed {
            Some(Ok(Err(e))) => Err(Error::Internal(format!("HTTP server failed: {e}"))),
            Some(Err(e)) => Err(Error::Internal(format!("HTTP server task failed: {e}"))),
            _ => Ok(ServeReport { shutdown: report }),
        }
    }
}

/// Starts the actors on `db` and binds the HTTP server; call
/// [`RunningServer::run_until`] to serve.
///
/// # Errors
/// [`Error::Config`] when there is no webhook secret and `insecure_no_secret` is not
/// set, or the address cannot be bound.
pub fn start(
    db: Database,
    actors: ActorConfig,
    options: ServeOptions,
    model: Arc<dyn Model>,
) -> Result<RunningServer> {
    if options.webhook_secret.is_none() && !options.insecure_no_secret {
        return Err(Error::config(
            "BOTDB_WEBHOOK_SECRET",
            "serve needs the webhook secret token Telegram sends (setWebhook's secret_token); \
             for a local test only, pass --insecure-no-secret",
        ));
    }
    if let Some(secret) = &options.webhook_secret {
        let s = secret.expose_secret();
        if s.is_empty()
            || s.len() > 256
            || !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(Error::config(
                "BOTDB_WEBHOOK_SECRET",
                "expected 1 to 256 characters A-Z, a-z, 0-9, _ and - (Telegram's secret_token alphabet)",
            ));
        }
    }
    let handle = DbSystem::start(db, actors);
    let state = web::Data::new(AppState {
        bot: Bot::new(handle.clone(), model),
        secret: options.webhook_secret.clone(),
        webhook: WebhookMetrics::default(),
    });
    let body_limit = options.body_limit;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(web::PayloadConfig::new(body_limit))
            .configure(routes)
    })
    // botdb owns SIGINT/SIGTERM (see the module docs).
    .disable_signals()
    .shutdown_timeout(options.http_shutdown_timeout.as_secs())
    .workers(options.workers.max(1))
    .bind(&options.bind)
    .map_err(|e| Error::config("BOTDB_BIND", format!("cannot listen on {}: {e}", options.bind)))?;
    let addrs = server.addrs();
    Ok(RunningServer {
        addrs,
        server: server.run(),
        actors: handle,
        http_shutdown_timeout: options.http_shutdown_timeout,
    })
}

/// The bot's routes, for an `App` of your own.
fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/telegram/webhook", web::post().to(webhook))
        .route("/healthz", web::get().to(healthz))
        .route("/metrics", web::get().to(metrics));
}

fn json_error(status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({ "error": message }))
}

fn token_ok(req: &HttpRequest, secret: &Option<SecretString>) -> bool {
    let Some(secret) = secret else { return true };
    match req.headers().get(SECRET_HEADER) {
        Some(given) => bool::from(given.as_bytes().ct_eq(secret.expose_secret().as_bytes())),
        None => false,
    }
}

async fn webhook(req: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> HttpResponse {
    let rejected = || WebhookMetrics::count(&state.webhook.rejected);
    if !token_ok(&req, &state.secret) {
        rejected();
        return json_error(StatusCode::UNAUTHORIZED, "missing or wrong secret token");
    }
    let is_json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("application/json"));
    if !is_json {
        rejected();
        return json_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected Content-Type: application/json",
        );
    }
    let update = match parse_update(&body) {
        Ok(update) => update,
        Err(e) => {
            rejected();
            return json_error(StatusCode::BAD_REQUEST, &e.to_string());
        }
    };
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

async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    let actors = state.bot.db();
    if actors.is_shutting_down() {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    let db = actors.database();
    let ping = tokio::time::timeout(
        Duration::from_secs(2),
        db.autocommit(async |c| Ok(sqlx::query("SELECT 1").execute(c).await?)),
    )
    .await;
    match ping {
        Ok(Ok(_)) => HttpResponse::Ok().json(serde_json::json!({ "status": "ok", "pool": db.pool_status() })),
        _ => json_error(StatusCode::SERVICE_UNAVAILABLE, "database unavailable"),
    }
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let actors = state.bot.db();
    match actors.stats().await {
        Ok(stats) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4; charset=utf-8")
            .body(metrics::render(&stats, &state.webhook, actors.is_shutting_down())),
        Err(_) => json_error(StatusCode::SERVICE_UNAVAILABLE, "actors unavailable"),
    }
}

/// botdb errors as HTTP answers, so handlers can use `?`: client errors say what was
/// wrong; server errors say nothing of the internals (they are logged).
impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        match self {
            Error::InvalidInput { .. } => StatusCode::BAD_REQUEST,
            Error::NotFound { .. } => StatusCode::NOT_FOUND,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Unavailable { .. } | Error::Overloaded { .. } | Error::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
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
