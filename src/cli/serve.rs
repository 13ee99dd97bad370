//! `botdb serve`: the bot on actix-web until SIGINT / SIGTERM.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use botdb::pipeline::PipelineConfig;
use botdb::server::{self, ServeOptions};
use botdb::shutdown::Signals;
use botdb::{Config, Database, migrate};
use secrecy::SecretString;

/// `serve`'s options.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, env = "BOTDB_BIND", default_value = "127.0.0.1:8080")]
    bind: String,
    /// Apply pending migrations before serving (always done with --throwaway-db).
    #[arg(long)]
    migrate: bool,
    /// Serve from a throwaway PostgreSQL started from the installed binaries and
    /// DELETED, with every user's data, when serve exits. For a local try-out only;
    /// refused when DATABASE_URL or any DB_* is set.
    #[arg(long)]
    pub throwaway_db: bool,
    /// Serve the webhook without a secret token. For a local test only.
    #[arg(long)]
    insecure_no_secret: bool,
    /// HTTP worker threads.
    #[arg(long, env = "BOTDB_HTTP_WORKERS", default_value_t = 2)]
    workers: usize,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "BOTDB_BODY_LIMIT", default_value_t = 256 * 1024)]
    body_limit: usize,
    /// Seconds a client may take to send a body once its headers are in (then 408).
    #[arg(long, env = "BOTDB_BODY_TIMEOUT", default_value = "10", value_parser = seconds)]
    body_timeout: Duration,
    /// Seconds a new connection may take to send its request head (then it is closed).
    #[arg(long, env = "BOTDB_HEADER_TIMEOUT", default_value = "5", value_parser = seconds)]
    header_timeout: Duration,
    /// Seconds an idle keep-alive connection stays open.
    #[arg(long, env = "BOTDB_KEEP_ALIVE", default_value = "30", value_parser = seconds)]
    keep_alive: Duration,
    /// Connections each HTTP worker serves at once (more wait in the listen backlog).
    #[arg(long, env = "BOTDB_HTTP_MAX_CONNECTIONS", default_value_t = 256)]
    max_connections: usize,
    /// Serve /healthz and /metrics on this address only, not on --bind.
    #[arg(long, env = "BOTDB_ADMIN_BIND")]
    admin_bind: Option<String>,
    /// Seconds, at shutdown, that open connections stay before idle ones are closed (a
    /// request already on its way is answered, not cut).
    #[arg(long, env = "BOTDB_SHUTDOWN_GRACE", default_value = "1", value_parser = seconds)]
    shutdown_grace: Duration,
    /// The bot's name: the scope of its Telegram update ids (set one per bot when
    /// several bots share a database).
    #[arg(long, env = "BOTDB_BOT_NAME", default_value = "bot")]
    bot_name: String,
    #[command(flatten)]
    key_retention: super::purge::KeyRetentionArg,
    /// Purge messages soft-deleted longer ago than this (30d, 12h), every hour; at least
    /// the key retention; unset: soft-deleted messages are kept.
    #[arg(long, env = "BOTDB_PURGE_AFTER", value_name = "DURATION", value_parser = purge_after)]
    purge_after: Option<Duration>,
    /// Seconds a /healthz answer is reused before the database is asked again.
    #[arg(long, env = "BOTDB_HEALTH_CACHE", default_value = "1", value_parser = seconds)]
    health_cache: Duration,
    /// With TELEGRAM_BOT_TOKEN: turns this instance runs at once (model calls in flight).
    #[arg(long, env = "BOTDB_TURNS_IN_FLIGHT", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    turns_in_flight: u32,
    /// With TELEGRAM_BOT_TOKEN: seconds a claimed update or message stays this
    /// instance's without renewal (an instance that dies gives its work over after at
    /// most this long).
    #[arg(long, env = "BOTDB_LEASE", default_value = "30", value_parser = seconds)]
    lease: Duration,
    /// With TELEGRAM_BOT_TOKEN: seconds, at shutdown, the running turns get to finish
    /// before they are given back to another instance.
    #[arg(long, env = "BOTDB_TURN_GRACE", default_value = "20", value_parser = seconds)]
    turn_grace: Duration,
}

fn purge_after(v: &str) -> Result<Duration, String> {
    botdb::model::parse_duration("BOTDB_PURGE_AFTER", v).map_err(|e| e.to_string())
}

/// A number of seconds (fractions allowed), more than 0.
fn seconds(v: &str) -> Result<Duration, String> {
    match v.trim().parse::<f64>() {
        Ok(s) if s > 0.0 && s < 1e9 => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!("expected a number of seconds more than 0, got {v:?}")),
    }
}

pub async fn run(config: &Config, embedded: bool, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let key_retention = args.key_retention.key_retention;
    if let Some(after) = args.purge_after {
        // Before connecting (`server::start` checks it again, for embedders).
        botdb::retention::check_purge_period("BOTDB_PURGE_AFTER", after, key_retention)?;
    }
    let mut signals = Signals::install()?;
    let db = Database::connect(config).await?;
    if embedded || args.migrate {
        let applied = db.migrate().await?;
        tracing::info!(applied = applied.len(), "migrations applied");
    } else {
        let mut conn = botdb::migrate::connect_to(config).await?;
        let current = migrate::current(&mut conn).await?.map(|s| s.version);
        if current != migrate::head() {
            anyhow::bail!(
                "{} is at migration {:?}, this build needs {:?}: run `botdb migrate` (or pass --migrate)",
                config.redacted_url(),
                current,
                migrate::head()
            );
        }
    }
    let secret_var = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|s| !s.is_empty())
            .map(SecretString::from)
    };
    let options = ServeOptions {
        bind: args.bind,
        webhook_secret: secret_var("BOTDB_WEBHOOK_SECRET"),
        insecure_no_secret: args.insecure_no_secret,
        body_limit: args.body_limit,
        body_timeout: args.body_timeout,
        header_timeout: args.header_timeout,
        keep_alive: args.keep_alive,
        max_connections: args.max_connections,
        workers: args.workers,
        http_shutdown_timeout: Duration::from_secs(30),
        shutdown_grace: args.shutdown_grace,
        admin_bind: args.admin_bind,
        admin_token: secret_var("BOTDB_ADMIN_TOKEN"),
        health_cache: args.health_cache,
        bot_name: args.bot_name.clone(),
        key_retention,
        purge_after: args.purge_after,
        telegram: config.telegram.clone(),
        pipeline: PipelineConfig {
            turns_in_flight: args.turns_in_flight as usize,
            lease: args.lease,
            ..PipelineConfig::default()
        },
        pipeline_grace: args.turn_grace,
    };
    // The configured model (BOTDB_MODEL_URL), or the echo model without one.
    let model = botdb::llm::from_config(&config.model)?;
    let replies = match &config.telegram.token {
        Some(_) => format!(
            "through the Bot API at {} (TELEGRAM_BOT_TOKEN set): the webhook records each update and answers 200",
            config.telegram.api_url
        ),
        None => "in each webhook answer (no TELEGRAM_BOT_TOKEN)".into(),
    };
    let asks = match &config.model.url {
        Some(url) => format!("{} at {}", config.model.name, url),
        None => "the echo model (no BOTDB_MODEL_URL)".into(),
    };
    println!("replies: {replies}\nmodel: {asks}");
    let running = server::start(db, config.actors, options, model)?;
    // Telegram's update ids are unique per bot only: two bots on one database under one
    // name would take each other's updates for copies.
    println!(
        "bot name: {} (its update ids are recorded under this name: every bot sharing this database needs \
         its own BOTDB_BOT_NAME)",
        args.bot_name
    );
    for addr in running.addrs() {
        println!("listening on http://{addr}");
    }
    for addr in running.admin_addrs() {
        println!("admin (/healthz, /metrics) on http://{addr}");
    }
    let report = running.run_until(signals.recv()).await.context("serving")?;
    println!("shutdown: {}", report.shutdown);
    Ok(ExitCode::SUCCESS)
}
