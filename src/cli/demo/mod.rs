//! `botdb demo`: many users talking to the bot at once, through the actors, then a
//! summary and a verification pass against what the database holds.
//!
//! Each simulated user sends Telegram updates to the same `Bot` that `botdb serve`
//! runs (minus HTTP): `/start`, then text turns (history, model, both messages stored in
//! one transaction); some change their history limit, some `/reset` half-way. Every
//! acknowledged turn is recorded, and after the Shutdown drain the database must hold
//! exactly those messages, in order, with the reset ones hidden.
//!
//! With `--standby` (the throwaway cluster only), the cluster gets a synchronous
//! standby and the demo both servers, `target_session_attrs=read-write`; when
//! `--failover-at` of the turns are acknowledged, the primary is stopped hard and the
//! standby promoted. Turns that fail meanwhile with a transient error (or one of unknown
//! outcome) are redelivered as Telegram redelivers after a 503, the same update id, until
//! answered; the verification then reads the promoted standby.
//!
//! This file holds the entry point, [`run`]; the rest is a module per step: `args` (the
//! options), `simulation` (the users and the drain), `standby` (the cluster pair and the
//! failover), `summary` (what is printed of the run), `verify` (the read-back).

mod args;
mod pipeline;
mod simulation;
mod standby;
mod summary;
mod verify;

use std::process::ExitCode;

use botdb::embedded::EmbeddedPostgres;
use botdb::shutdown::Signals;
use botdb::{Config, Database};

pub use args::DemoArgs;

/// Runs the demo on `config`; `server` is the throwaway cluster it points at, if any
/// (kept until the end, and given a standby with `--standby`).
pub async fn run(
    config: &Config,
    args: DemoArgs,
    server: Option<EmbeddedPostgres>,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.users >= 1 && args.concurrency >= 1,
        "--users and --concurrency must be at least 1"
    );
    // The cluster (and its standby) must outlive the run: `pair` is kept to the end.
    let (config, pair) = standby::for_run(config, args.standby, server).await?;
    let config = &config;
    let signals = Signals::install()?;
    println!("database: {}", config.redacted_url());
    let db = Database::connect(config).await?;
    let applied = db.migrate().await?;
    println!("migrations applied: {}", applied.len());
    // On a persistent database demo users may exist from an earlier run: only what this
    // run writes is verified.
    let run_started: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(db.pool())
        .await?;
    if let Some(latency) = args.model_latency {
        let ok = pipeline::run(config, db, &args, latency, run_started).await?;
        println!("{}", if ok { "demo OK" } else { "demo FAILED" });
        return Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) });
    }
    let ran = simulation::simulate(&db, config, &args, pair.as_ref(), signals).await?;
    summary::print(&ran, args.redeliver);
    let verified = verify::verify(config, &ran.logs, args.users, run_started).await?;
    println!("{verified}");
    let ok = verified.ok() && ran.ok();
    println!("{}", if ok { "demo OK" } else { "demo FAILED" });
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
