//! The bot-turn load benchmark: `cargo bench --bench load [-- --help]`.
//!
//! One turn = upsert the user, get their settings, append their message (200 chars),
//! read the last 20 live messages, append the reply (400 chars): the workload of
//! `benches/workload/turn.pgbench`, on `--users` users (10,000 by default) with 20
//! messages each (`populate.sql`, run for chunks of users on two connections; see
//! `--keep-data` to build a large set once and reuse it). Workers use disjoint users. Every mode runs in this one process,
//! interleaved (round 1: every concurrency x every mode, then round 2, ...), and each
//! cell reports its best round, so ratios compare like with like on a noisy machine.
//! The data is reset between cells (`reset.sql`: what the cell wrote, found through the
//! users it touched). After the cells, the plan of botdb's history read for random
//! users is printed (`EXPLAIN (ANALYZE, BUFFERS)`: scan type, buffers per read).
//!
//! Modes:
//! - `actors`: botdb's actors, five requests per turn (`UpsertUser`, `GetSettings`,
//!   `AppendMessage`, `GetHistory`, `AppendMessage`), each its own transaction, no
//!   batching (per-message transactions);
//! - `batched`: the same five requests with botdb's defaults: requests of different
//!   users that are ready at the same moment run together (group commit of appends,
//!   one query for many histories);
//! - `keyed`: `batched` with idempotency on: both appends carry a request key, recorded
//!   in the same statement (what the webhook's writes do);
//! - `context`: `batched` with the model's context read (`GetContext`, the budget query:
//!   the newest messages within 200,000 characters and the user's limit) in place of
//!   `GetHistory`;
//! - `replica`: `batched` with `DATABASE_REPLICA_URL` naming an asynchronous streaming
//!   standby of the throwaway cluster (started for this mode; not with
//!   `BOTDB_BENCH_DATABASE_URL`): `GetSettings` and `GetHistory` go to the standby once
//!   it has replayed the user's own last write (waiting up to 50 ms), else to the
//!   primary; every write records its WAL position. Where the reads went is printed at
//!   the end;
//! - `direct`: the five requests run without the actors (`DbRequest::run`);
//! - `session`: botdb's repositories in one `Database::session` per turn, no actors;
//! - `raw`: the pgbench statements, verbatim, on a plain sqlx `PgPool` of the same size
//!   with sqlx's default options, each statement its own transaction;
//! - `raw-tx`: the same in one transaction per turn;
//! - `pgbench`, `pgbench-tx`: pgbench itself (`-M prepared`) on `turn.pgbench` /
//!   `turn_tx.pgbench`, run as a child process when `pgbench` is on PATH;
//! - `bot` (not run by default): the webhook's turn in this process: the Telegram update
//!   `http` sends, parsed and handled by `Bot::handle` (echo model) over the `batched`
//!   actors: `BeginTurn`, then `AppendTurn` with the update's key; what `http` costs
//!   without HTTP;
//! - `http` (not run by default): the bot end to end, `botdb serve` on the same database
//!   driven over keep-alive HTTP with Telegram updates (`http.rs`); printed beside
//!   `bot` and `batched`, with the server's CPU per turn and memory (`--memory-users`).
//!
//! Every cell also reports the whole machine's busy CPU per turn (PostgreSQL, the
//! bench, `serve`: `/proc/stat`) and its idle share: a cell whose machine is idle
//! waited (commits, locks); one whose machine is busy is CPU-bound, and then CPU per
//! turn is its cost.
//!
//! The server is `BOTDB_BENCH_DATABASE_URL` if set, else a throwaway local cluster.
//! A scratch database is created, populated and dropped; with `--keep-data`, a named
//! database on `BOTDB_BENCH_DATABASE_URL`'s server is reused when it holds the data set
//! asked for (built otherwise) and kept.
//!
//! # Layout
//!
//! This file holds the options, the modes' names and the driver: the run's database,
//! then rounds x concurrencies x modes, each cell measured, printed and kept if best.
//! - `data.rs`: the data set (`--users`, `--keep-data`): the database that holds it,
//!   its build, and the reset between cells;
//! - `workers.rs`: an in-process cell: C workers on disjoint users until the deadline;
//! - `actors.rs`: the turns of botdb's modes (`actors` to `direct`, `session`);
//! - `replica.rs`: mode `replica`'s standby and where its reads went;
//! - `baselines.rs`: `raw`, `raw-tx`, and pgbench as a child process;
//! - `bot.rs`: mode `bot`, and the update text `bot` and `http` send;
//! - `http.rs`: mode `http`, `botdb serve` driven over HTTP, and its memory step;
//! - `stats.rs`: what a cell measures (the `Sample`, histograms, CPU, WAL and buffers);
//! - `report.rs`: the line per cell and the table of the best rounds;
//! - `explain.rs`: the plan of the history read, after the cells;
//! - `../shared/serve.rs` (shared with the `healthz` bench): `botdb serve` as a child
//!   process, and the Telegram update posted to it.

mod actors;
mod baselines;
mod bot;
mod data;
mod explain;
mod http;
mod replica;
mod report;
#[path = "../shared/serve.rs"]
mod serve;
mod stats;
mod workers;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use botdb::actors::DbSystem;
use botdb::embedded::EmbeddedPostgres;
use botdb::{ActorConfig, Config, Database};
use clap::Parser;
use sqlx::postgres::PgPoolOptions;
use sqlx::{ConnectOptions, Connection};

use crate::baselines::{PgbenchTarget, pgbench, pgbench_available};
use crate::data::{Rebuild, populate, reset};
use crate::report::{print_cell, print_table};
use crate::stats::{Io, MachineCpu, Sample};
use crate::workers::{Target, measure};

#[derive(Debug, Parser)]
#[command(about = "botdb bot-turn load benchmark")]
struct Args {
    /// Users in the data set (each with 20 messages and a settings row).
    #[arg(long, default_value_t = 10_000)]
    users: i64,
    /// Keep the data set in a database of this name (default
    /// `botdb_bench_data_<users>`) on `BOTDB_BENCH_DATABASE_URL`'s server: reused when it
    /// holds exactly `--users` users x 20 messages, built (again) otherwise, never
    /// dropped. The cells' writes are undone before the run ends.
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "NAME")]
    keep_data: Option<String>,
    /// History reads explained after the run (random populated users).
    #[arg(long, default_value_t = 50)]
    explain: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Interleaved rounds; each cell reports its best. (One round keeps the default run
    /// near a minute: each cell is followed by a reset of what it wrote and a
    /// CHECKPOINT.)
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Concurrency levels (workers), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 16, 64])]
    concurrency: Vec<usize>,
    /// Modes to run, comma-separated (pgbench modes are skipped when pgbench is not on
    /// PATH).
    #[arg(long, value_delimiter = ',', default_values_t = [Mode::Actors, Mode::Batched, Mode::Raw, Mode::Session, Mode::Pgbench])]
    modes: Vec<Mode>,
    /// Client runtime threads: 1 runs everything (workers, actors, sqlx) on the actix
    /// system thread; more puts the workers on a tokio pool of that many threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Mode `http`: afterwards, this many users never seen before send one turn each
    /// (100 connections), and `serve`'s resident memory is read (0: skip).
    #[arg(long, default_value_t = 0)]
    memory_users: i64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// cargo bench passes --bench; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// What the turns of a cell run (the list above); `--modes` takes their names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Mode {
    Actors,
    Batched,
    Keyed,
    Context,
    Replica,
    Direct,
    Session,
    Raw,
    RawTx,
    Pgbench,
    PgbenchTx,
    Bot,
    Http,
}

const MODES: [Mode; 13] = [
    Mode::Actors,
    Mode::Batched,
    Mode::Keyed,
    Mode::Context,
    Mode::Replica,
    Mode::Direct,
    Mode::Session,
    Mode::Raw,
    Mode::RawTx,
    Mode::Pgbench,
    Mode::PgbenchTx,
    Mode::Bot,
    Mode::Http,
];

impl Mode {
    /// The mode's name, as `--modes` takes it and the report prints it.
    fn name(self) -> &'static str {
        match self {
            Mode::Actors => "actors",
            Mode::Batched => "batched",
            Mode::Keyed => "keyed",
            Mode::Context => "context",
            Mode::Replica => "replica",
            Mode::Direct => "direct",
            Mode::Session => "session",
            Mode::Raw => "raw",
            Mode::RawTx => "raw-tx",
            Mode::Pgbench => "pgbench",
            Mode::PgbenchTx => "pgbench-tx",
            Mode::Bot => "bot",
            Mode::Http => "http",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        MODES
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("unknown mode {s:?}; one of {MODES:?}"))
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let threads = args.threads;
    let system = if threads <= 1 {
        actix::System::new()
    } else {
        actix::System::with_tokio_rt(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .build()
                .expect("tokio runtime")
        })
    };
    system.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let (admin, url, _cluster) = match std::env::var("BOTDB_BENCH_DATABASE_URL") {
        Ok(url) => (
            Config::builder()
                .url(url.clone())
                .build()?
                .with_database("postgres"),
            url,
            None,
        ),
        Err(_) => {
            let pg = tokio::task::spawn_blocking(EmbeddedPostgres::start).await??;
            let url = secrecy::ExposeSecret::expose_secret(&pg.url("postgres")).to_string();
            (pg.config("postgres"), url, Some(pg))
        }
    };
    anyhow::ensure!(args.users >= 1, "--users must be at least 1");
    let keep = data::kept_name(args.keep_data.as_deref(), args.users, _cluster.is_some())?;
    let mut conn = admin.connect_options()?.connect().await?;
    let name = data::create_database(&mut conn, keep.as_deref()).await?;
    let mut url = url::Url::parse(&url)?;
    url.set_path(&name);
    let mut result = bench(
        &args,
        &admin.with_database(&name),
        &url,
        _cluster.as_ref(),
        keep.is_some(),
    )
    .await;
    if matches!(&result, Err(e) if e.is::<Rebuild>()) {
        // A kept database that does not hold the data set asked for (another size, or
        // a build or run that was interrupted): built again from scratch.
        eprintln!(
            "{name} does not hold {} users x 20 messages: building it again",
            args.users
        );
        data::recreate_database(&mut conn, &name).await?;
        result = bench(&args, &admin.with_database(&name), &url, _cluster.as_ref(), true).await;
    }
    if let Err(e) = &result {
        eprintln!("benchmark failed: {e:#}");
    }
    if keep.is_none() {
        data::drop_database(&mut conn, &name).await?;
    }
    let _ = conn.close().await;
    result
}

async fn bench(
    args: &Args,
    config: &Config,
    url: &url::Url,
    cluster: Option<&EmbeddedPostgres>,
    keep: bool,
) -> anyhow::Result<()> {
    let db = Database::connect(config).await?;
    db.migrate().await?;
    // Mode `replica`: an asynchronous standby of the throwaway cluster, and a Database
    // that reads from it.
    let (standby, replica) = if args.modes.contains(&Mode::Replica) {
        replica::start(cluster, url, config).await?.unzip()
    } else {
        (None, None)
    };
    let data = populate(config, args.users, keep).await?;
    let mut since: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT now()").fetch_one(db.pool()).await?;
    // The plain sqlx pool: the same size as botdb's, sqlx's default options
    // (test_before_acquire: a ping on every checkout).
    let raw = PgPoolOptions::new()
        .max_connections(config.pool.max_connections())
        .connect_with(config.connect_options()?)
        .await?;
    let pg = Some(PgbenchTarget::of(url));
    let batched = DbSystem::start(db.clone(), config.actors);
    let target = Arc::new(Target {
        per_message: DbSystem::start(
            db.clone(),
            ActorConfig {
                batch_max: 1,
                ..config.actors
            },
        ),
        bot: botdb::bot::Bot::new(batched.clone(), Arc::new(botdb::bot::EchoModel)),
        update_text: bot::text().into(),
        batched,
        replica,
        raw,
        db,
        users: args.users,
        user_text: "u".repeat(200).into(),
        reply_text: "a".repeat(400).into(),
        pg,
    });
    let has_pgbench = pgbench_available();
    let modes: Vec<Mode> = args
        .modes
        .iter()
        .copied()
        .filter(|m| has_pgbench || !matches!(m, Mode::Pgbench | Mode::PgbenchTx))
        .filter(|m| *m != Mode::Replica || target.replica.is_some())
        .collect();
    if modes.len() < args.modes.len() {
        eprintln!("pgbench is not on PATH: its modes are skipped");
    }
    let served = if modes.contains(&Mode::Http) {
        Some(http::Served::start(url, config).await?)
    } else {
        None
    };
    let mut best: Vec<Sample> = Vec::new();
    for round in 1..=args.rounds {
        for &c in &args.concurrency {
            for &mode in &modes {
                reset(&target.raw, &mut since, &data).await?;
                let duration = Duration::from_secs_f64(args.seconds);
                let io = Io::read(&target.raw).await?;
                let machine = MachineCpu::read();
                let mut s = match mode {
                    Mode::Pgbench | Mode::PgbenchTx => pgbench(&target, mode, c, duration).await?,
                    Mode::Http => match &served {
                        Some(served) => http::measure(served, target.users, c, duration).await?,
                        None => anyhow::bail!("mode http without a server"),
                    },
                    _ => measure(&target, mode, c, duration).await,
                };
                if let (Some(before), Some(after)) = (machine, MachineCpu::read()) {
                    let (busy_us, idle_pct) = after.since(&before);
                    s.machine_cpu_us_per_turn = Some(busy_us / s.turns.max(1) as f64);
                    s.machine_idle_pct = Some(idle_pct);
                }
                let io = Io::read(&target.raw).await?.since(&io, s.turns);
                print_cell(round, c, &s, &io);
                match best.iter_mut().find(|b| b.mode == s.mode && b.concurrency == c) {
                    Some(b) if b.turns_per_sec >= s.turns_per_sec => {}
                    Some(b) => *b = s,
                    None => best.push(s),
                }
            }
        }
    }
    print_table(&best, &args.concurrency, &modes);
    if let Some(served) = served {
        http::print_vs(&best, &args.concurrency);
        if args.memory_users > 0 {
            http::memory(&served, args.memory_users, &best).await?;
        }
        served.stop().await?;
    }
    // Leave the data set as it was built (a kept one is reused as is).
    reset(&target.raw, &mut since, &data).await?;
    explain::explain_history(&target.raw, args.users, args.explain).await?;
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&best)?)?;
        eprintln!("wrote {}", path.display());
    }
    for (name, handle) in [("actors", &target.per_message), ("batched", &target.batched)] {
        actors::report(name, handle).await?;
    }
    if let Some((handle, rdb)) = &target.replica {
        replica::report(handle, rdb).await;
    }
    drop(standby);
    target.raw.close().await;
    Ok(())
}
