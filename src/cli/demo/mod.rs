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
//! This file holds the options and the entry point, [`run`]; the rest is a module per
//! step: `simulation` (the users and the drain), `standby` (the cluster pair and the
//! failover), `summary` (what is printed of the run), `verify` (the read-back).

mod simulation;
mod standby;
mod summary;
mod verify;

use std::process::ExitCode;

use botdb::embedded::EmbeddedPostgres;
use botdb::shutdown::Signals;
use botdb::{Config, Database};

/// `demo`'s options.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Simulated users.
    #[arg(long, default_value_t = 1000)]
    users: i64,
    /// Text turns per user (each stores two messages).
    #[arg(long, default_value_t = 20)]
    turns: u32,
    /// Users talking at the same moment.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Stop starting new turns after this many seconds (the run then drains and verifies).
    #[arg(long)]
    duration: Option<f64>,
    /// Percent of turns delivered twice at once, as Telegram does when a 200 is late;
    /// half of those are delivered a third time after the user's next turn. Every copy
    /// must get the first one's reply, and no turn may be stored twice.
    #[arg(long, default_value_t = 0.0, value_parser = percent)]
    redeliver: f64,
    /// Give the throwaway PostgreSQL a synchronous standby and fail over to it during the
    /// run (see --failover-at): the demo is given both servers, read-write. Only with the
    /// throwaway cluster (no DATABASE_URL / DB_HOST).
    #[arg(long)]
    standby: bool,
    /// With --standby: once this share of the turns is acknowledged (`50%` or `0.5`),
    /// stop the primary hard (pg_ctl stop -m immediate) and promote the standby; turns
    /// failing meanwhile are redelivered until answered [default: 50%].
    #[arg(long, value_name = "SHARE", requires = "standby", value_parser = share)]
    failover_at: Option<f64>,
}

impl DemoArgs {
    /// The share of the turns after which to fail over, when there is a standby.
    fn failover_share(&self) -> Option<f64> {
        self.standby.then_some(self.failover_at.unwrap_or(0.5))
    }
}

/// A share of a whole: `50%` or `0.5`.
fn share(v: &str) -> Result<f64, String> {
    let parsed = match v.trim().strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0),
        None => v.trim().parse::<f64>(),
    };
    match parsed {
        Ok(s) if (0.0..=1.0).contains(&s) => Ok(s),
        _ => Err(format!("expected a share from 0% to 100% (or 0 to 1), got {v:?}")),
    }
}

/// A percentage: 0 to 100.
fn percent(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("expected a percentage from 0 to 100, got {v:?}")),
    }
}

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
    let ran = simulation::simulate(&db, config, &args, pair.as_ref(), signals).await?;
    summary::print(&ran, args.redeliver);
    let verified = verify::verify(config, &ran.logs, args.users, run_started).await?;
    println!("{verified}");
    let ok = verified.ok() && ran.ok();
    println!("{}", if ok { "demo OK" } else { "demo FAILED" });
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
