//! `botdb serve`: the bot on actix-web, showing the intended embedding.
//!
//! Routes: `POST /telegram/webhook` (Telegram Update JSON in, a `sendMessage` body out,
//! as a Telegram webhook answer), `GET /healthz`, `GET /metrics` (Prometheus text).
//!
//! - `webhook`: the secret token (before the body is read), the body bounded in size
//!   and time, the bot;
//! - `admin`: `/healthz` (cached, single flight) and `/metrics`, optionally behind a
//!   bearer token and on a listener of their own;
//! - `metrics`: the Prometheus text.
//!
//! Connections are bounded per worker, and a client must send its request head within
//! `header_timeout`; idle keep-alive connections close after `keep_alive`.
//!
//! Shutdown order, with one owner of the signals (botdb's, through ctrlc; actix-web's
//! own handling is disabled): stop the HTTP server gracefully (no new connections;
//! in-flight requests finish, and with them the actor requests they wait on; every
//! answer from then on carries `Connection: close`, so keep-alive clients go away
//! instead of having a later request cut), then shut the actors down (every accepted
//! request drains), then the pool closes, then the admin listener stops.

mod admin;
mod background;
mod health;
pub mod metrics;
mod respond;
mod state;
mod webhook;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use actix_web::dev::{Server, Service};
use actix_web::{App, HttpServer, web};
use futures::FutureExt;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use crate::actors::{DbHandle, DbSystem, ShutdownReport};
use crate::bot::{Bot, Model};
use crate::config::ActorConfig;
use crate::db::Database;
use crate::error::{Error, Result};
use crate::pipeline::Pipeline;
use background::{purge_keys, purge_messages};
use health::HealthCache;
use metrics::WebhookMetrics;
use state::{AppState, Limits};

pub use webhook::SECRET_HEADER;

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
    /// How long a client may take to send the body once its headers are in (then 408).
    pub body_timeout: Duration,
    /// How long a new connection may take to send its request head (then it is closed).
    pub header_timeout: Duration,
    /// How long an idle keep-alive connection stays open.
    pub keep_alive: Duration,
    /// Connections one HTTP worker serves at once; past it new ones wait in the
    /// listen backlog.
    pub max_connections: usize,
    /// HTTP worker threads.
    pub workers: usize,
    /// How long the HTTP server waits for in-flight requests at shutdown.
    pub http_shutdown_timeout: Duration,
    /// At shutdown, how long keep-alive connections stay open (no new ones accepted,
    /// every answer closing its connection) before idle ones are closed: a request
    /// already on its way on an idle connection is answered, not cut.
    pub shutdown_grace: Duration,
    /// Serve `/healthz` and `/metrics` on this address only (not on `bind`).
    pub admin_bind: Option<String>,
    /// Require `Authorization: Bearer <token>` on `/healthz` and `/metrics`.
    pub admin_token: Option<SecretString>,
    /// How long a `/healthz` answer is reused before the database is asked again.
    pub health_cache: Duration,
    /// The bot's name: the scope of its update ids (bots sharing a database need
    /// names of their own).
    pub bot_name: String,
    /// How long handled update ids are kept (Telegram does not redeliver an update after
    /// 24 hours); older ones are removed in the background, in small batches.
    pub key_retention: Duration,
    /// Messages soft-deleted longer ago than this are purged (removed for good) every
    /// hour in the background, in small batches that never make a turn wait
    /// (`BOTDB_PURGE_AFTER`); `None`: never (the default: soft-deleted rows are kept).
    /// At least `key_retention`, or [`start`] refuses it
    /// ([`check_purge_period`](crate::retention::check_purge_period)).
    pub purge_after: Option<Duration>,
    /// Telegram's Bot API (`TELEGRAM_BOT_TOKEN`, ...): with a token, the webhook only
    /// records each update and answers 200 at once, and the turn pipeline runs the
    /// updates and sends the replies through the Bot API; without one, each reply rides
    /// on its webhook answer.
    pub telegram: crate::config::TelegramConfig,
    /// The pipeline's bounds and leases (with a token).
    pub pipeline: crate::pipeline::PipelineConfig,
    /// At shutdown, how long the pipeline's running turns may take to finish (then
    /// they are given back for another instance to run).
    pub pipeline_grace: Duration,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("bind", &self.bind)
            .field("webhook_secret", &self.webhook_secret.as_ref().map(|_| "***"))
            .field("insecure_no_secret", &self.insecure_no_secret)
            .field("body_limit", &self.body_limit)
            .field("body_timeout", &self.body_timeout)
            .field("header_timeout", &self.header_timeout)
            .field("keep_alive", &self.keep_alive)
            .field("max_connections", &self.max_connections)
            .field("workers", &self.workers)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("admin_bind", &self.admin_bind)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "***"))
            .field("health_cache", &self.health_cache)
            .field("bot_name", &self.bot_name)
            .field("key_retention", &self.key_retention)
            .field("purge_after", &self.purge_after)
            .field("telegram", &self.telegram)
            .field("pipeline", &self.pipeline)
            .field("pipeline_grace", &self.pipeline_grace)
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
            body_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(30),
            max_connections: 256,
            workers: 2,
            http_shutdown_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(1),
            admin_bind: None,
            admin_token: None,
            health_cache: Duration::from_secs(1),
            bot_name: "bot".into(),
            key_retention: crate::retention::DEFAULT_KEY_RETENTION,
            purge_after: None,
            telegram: crate::config::TelegramConfig::default(),
            pipeline: crate::pipeline::PipelineConfig::default(),
            pipeline_grace: Duration::from_secs(20),
        }
    }
}

/// A server that is bound and running; [`RunningServer::run_until`] drives it to the
/// end.
pub struct RunningServer {
    addrs: Vec<SocketAddr>,
    admin_addrs: Vec<SocketAddr>,
    server: Server,
    admin: Option<Server>,
    closing: Arc<AtomicBool>,
    actors: DbHandle,
    http_shutdown_timeout: Duration,
    shutdown_grace: Duration,
    key_retention: Duration,
    purge_after: Option<Duration>,
    pipeline_grace: Duration,
    state: web::Data<AppState>,
}

/// How a server ended.
#[derive(Clone, Debug, Serialize)]
pub struct ServeReport {
    /// The actors' drain.
    pub shutdown: ShutdownReport,
}

impl RunningServer {
    /// Where the webhook listens (and `/healthz`, `/metrics` without an admin address).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Where `/healthz` and `/metrics` listen when they have an address of their own.
    pub fn admin_addrs(&self) -> &[SocketAddr] {
        &self.admin_addrs
    }

    /// The actors behind it.
    pub fn actors(&self) -> &DbHandle {
        &self.actors
    }

    /// Serves until `shutdown` resolves (or the server fails), then stops in order: HTTP
    /// (gracefully), actors (drained), pool (closed), admin listener.
    ///
    /// # Errors
    /// [`Error::Internal`] if the HTTP server failed on its own.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<ServeReport> {
        let handle = self.server.handle();
        // The servers must keep being polled while they stop: tasks of their own.
        let mut server = actix_rt::spawn(self.server);
        let admin = self.admin.map(|admin| {
            let handle = admin.handle();
            (handle, actix_rt::spawn(admin))
        });
        let purge = actix_rt::spawn(purge_keys(
            self.actors.database().clone(),
            self.key_retention,
            self.state.clone(),
        ));
        let messages_purge = self.purge_after.map(|after| {
            actix_rt::spawn(purge_messages(
                self.actors.database().clone(),
                after,
                self.key_retention,
            ))
        });
        let failed = tokio::select! {
            result = &mut server => Some(result),
            () = shutdown => None,
        };
        if failed.is_none() {
            tracing::info!("shutdown: stopping HTTP (in-flight requests finish)");
            // From now on every answer closes its connection: a keep-alive client does
            // not send a next request into a server that is going away.
            self.closing.store(true, Ordering::Release);
            // No new connections; the open ones stay a moment. Stopping at once would
            // close idle keep-alive connections, cutting a request already on its way on
            // one (sent before the signal, not yet read): during the grace it is read
            // and answered, with `Connection: close`.
            handle.pause().await;
            tokio::time::sleep(self.shutdown_grace).await;
            // Graceful: let in-flight requests complete (bounded by the server's
            // shutdown timeout), close idle connections, then the workers stop.
            handle.stop(true).await;
            let _ = tokio::time::timeout(self.http_shutdown_timeout, &mut server).await;
        }
        if let Some(pipeline) = &self.state.pipeline {
            // No update comes in any more: the running turns get the grace, their
            // replies are sent, and what is left goes back for another instance.
            tracing::info!("shutdown: HTTP stopped; stopping the turn pipeline");
            pipeline.stop(self.pipeline_grace).await;
        }
        tracing::info!("shutdown: HTTP stopped; draining actors");
        // The purge works on the pool directly: it stops before the pool closes.
        purge.abort();
        let _ = purge.await;
        if let Some(task) = messages_purge {
            // Between statements or in one: an aborted batch rolls back, whole.
            task.abort();
            let _ = task.await;
        }
        let report = self.actors.shutdown().await;
        if let Some((handle, task)) = admin {
            handle.stop(true).await;
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        match failed {
            Some(Ok(Err(e))) => Err(Error::Internal(format!("HTTP server failed: {e}"))),
            Some(Err(e)) => Err(Error::Internal(format!("HTTP server task failed: {e}"))),
            _ => Ok(ServeReport { shutdown: report }),
        }
    }
}

/// Which routes a listener serves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Routes {
    /// Webhook, health and metrics.
    All,
    /// The webhook only (health and metrics have a listener of their own).
    Webhook,
    /// Health and metrics only.
    Admin,
}

fn routes(cfg: &mut web::ServiceConfig, which: Routes) {
    if which != Routes::Admin {
        cfg.route("/telegram/webhook", web::post().to(webhook::webhook));
    }
    if which != Routes::Webhook {
        cfg.route("/healthz", web::get().to(admin::healthz))
            .route("/metrics", web::get().to(admin::metrics));
    }
}

/// Starts the actors on `db` and binds the HTTP server(s); call
/// [`RunningServer::run_until`] to serve.
///
/// # Errors
/// [`Error::Config`] when there is no webhook secret and `insecure_no_secret` is not
/// set, a secret or token is malformed, `purge_after` is shorter than `key_retention`,
/// or an address cannot be bound.
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
        check_token("BOTDB_WEBHOOK_SECRET", secret)?;
    }
    if let Some(token) = &options.admin_token {
        check_token("BOTDB_ADMIN_TOKEN", token)?;
    }
    if let Some(after) = options.purge_after {
        crate::retention::check_purge_period("BOTDB_PURGE_AFTER", after, options.key_retention)?;
    }
    let handle = DbSystem::start(db, actors);
    let bot = Bot::new(handle.clone(), model)
        .with_name(options.bot_name.clone())
        .map_err(|e| Error::config("BOTDB_BOT_NAME", e.to_string()))?;
    let pipeline = match options.telegram.token {
        Some(_) => Some(Arc::new(Pipeline::start(
            bot.clone(),
            &options.telegram,
            options.pipeline,
        )?)),
        None => None,
    };
    let state = web::Data::new(AppState {
        bot,
        secret: options.webhook_secret.clone(),
        admin_token: options.admin_token.clone(),
        limits: Limits {
            body_limit: options.body_limit,
            body_timeout: options.body_timeout,
            health_cache: options.health_cache,
        },
        webhook: WebhookMetrics::default(),
        health: HealthCache::default(),
        keys_purged: AtomicU64::new(0),
        outbox_purged: AtomicU64::new(0),
        pipeline,
    });
    let closing = Arc::new(AtomicBool::new(false));
    let public_routes = if options.admin_bind.is_some() {
        Routes::Webhook
    } else {
        Routes::All
    };
    let (server, addrs) = http_server(
        &state,
        &closing,
        &options,
        public_routes,
        &options.bind,
        "BOTDB_BIND",
    )?;
    let (admin, admin_addrs) = match &options.admin_bind {
        Some(bind) => {
            let admin_options = ServeOptions {
                workers: 1,
                max_connections: 64,
                ..options.clone()
            };
            let (admin, addrs) = http_server(
                &state,
                &Arc::new(AtomicBool::new(false)),
                &admin_options,
                Routes::Admin,
                bind,
                "BOTDB_ADMIN_BIND",
            )?;
            (Some(admin), addrs)
        }
        None => (None, Vec::new()),
    };
    Ok(RunningServer {
        addrs,
        admin_addrs,
        server,
        admin,
        closing,
        actors: handle,
        http_shutdown_timeout: options.http_shutdown_timeout,
        shutdown_grace: options.shutdown_grace,
        key_retention: options.key_retention,
        purge_after: options.purge_after,
        pipeline_grace: options.pipeline_grace,
        state,
    })
}

/// One bound HTTP server serving `which` routes on `bind`.
fn http_server(
    state: &web::Data<AppState>,
    closing: &Arc<AtomicBool>,
    options: &ServeOptions,
    which: Routes,
    bind: &str,
    setting: &'static str,
) -> Result<(Server, Vec<SocketAddr>)> {
    let (state, closing_flag) = (state.clone(), closing.clone());
    let server = HttpServer::new(move || {
        let closing = closing_flag.clone();
        App::new()
            .app_data(state.clone())
            .wrap_fn(move |req, srv| {
                let closing = closing.clone();
                srv.call(req).map(move |res| {
                    res.map(|mut res| {
                        if closing.load(Ordering::Acquire) {
                            res.response_mut()
                                .head_mut()
                                .set_connection_type(actix_web::http::ConnectionType::Close);
                        }
                        res
                    })
                })
            })
            .configure(|cfg| routes(cfg, which))
    })
    // botdb owns SIGINT/SIGTERM (see the module docs).
    .disable_signals()
    .shutdown_timeout(options.http_shutdown_timeout.as_secs())
    .workers(options.workers.max(1))
    .max_connections(options.max_connections.max(1))
    .client_request_timeout(options.header_timeout)
    .keep_alive(options.keep_alive)
    .bind(bind)
    .map_err(|e| Error::config(setting, format!("cannot listen on {bind}: {e}")))?;
    let addrs = server.addrs();
    Ok((server.run(), addrs))
}

/// Telegram's `secret_token` alphabet, which the admin token follows too.
fn check_token(setting: &'static str, token: &SecretString) -> Result<()> {
    let s = token.expose_secret();
    if s.is_empty()
        || s.len() > 256
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(Error::config(
            setting,
            "expected 1 to 256 characters A-Z, a-z, 0-9, _ and - (Telegram's secret_token alphabet)",
        ));
    }
    Ok(())
}
