//! `botdb serve`: the bot on actix-web until SIGINT / SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
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
    /// Apply pending migrations before serving (always done on the embedded default).
    #[arg(long)]
    migrate: bool,
    /// Serve the webhook without a secret token. For a local test only.
    #[arg(long)]
    insecure_no_secret: bool,
    /// HTTP worker threads.
    #[arg(long, env = "BOTDB_HTTP_WORKERS", default_value_t = 2)]
    workers: usize,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "BOTDB_BODY_LIMIT", default_value_t = 256 * 1024)]
    body_limit: usize,
}

pub async fn run(config: &Config, embedded: bool, args: ServeArgs) -> anyhow::Result<ExitCode> {
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
    let secret = std::env::var("BOTDB_WEBHOOK_SECRET")
        .ok()
        .filter(|s| !s.is_empty())
        .map(SecretString::from);
    let options = ServeOptions {
        bind: args.bind,
        webhook_secret: secret,
        insecure_no_secret: args.insecure_no_secret,
        body_limit: args.body_limit,
        workers: args.workers,
        http_shutdown_timeout: Duration::from_secs(30),
    };
    let running = server::start(db, config.actors, options, Arc::new(botdb::bot::EchoModel))?;
    for addr in running.addrs() {
        println!("listening on http://{addr}");
    }
    let report = running.run_until(signals.recv()).await.context("serving")?;
    println!("shutdown: {}", report.shutdown);
    Ok(ExitCode::SUCCESS)
}
