//! The bot-turn load benchmark: `cargo bench --bench load [-- --help]`.
//!
//! One turn = upsert the user, get their settings, append their message (200 chars),
//! read the last 20 live messages, append the reply (400 chars): the workload of
//! `benches/workload/turn.pgbench`, on 10,000 users with 20 messages each
//! (`populate.sql`). Workers use disjoint users. Every mode runs in this one process,
//! interleaved (round 1: every concurrency x every mode, then round 2, ...), and each
//! cell reports its best round, so ratios compare like with like on a noisy machine.
//! The data is reset between cells (`reset.sql`).
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
//! - `http` (not run by default): the bot end to end, `botdb serve` on the same database
//!   driven over keep-alive HTTP with Telegram updates (`load_http.rs`); printed beside
//!   `batched`, with the server's CPU per turn and memory (`--memory-users`).
//!
//! The server is `BOTDB_BENCH_DATABASE_URL` if set, else a throwaway local cluster.
//! A scratch database is created, populated and dropped.

#[path = "load_http.rs"]
mod http;

use botdb::model::PRIVATE_CHAT;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use botdb::actors::{
    AppendMessage, DbHandle, DbRequest, DbSystem, GetContext, GetHistory, GetSettings, UpsertUser,
};
use botdb::embedded::EmbeddedPostgres;
use botdb::model::{RequestKey, Role};
use botdb::{ActorConfig, Config, Database, repo};
use clap::Parser;
use hdrhistogram::Histogram;
use sqlx::postgres::PgPoolOptions;
use sqlx::{ConnectOptions, Connection, PgPool};

#[derive(Debug, Parser)]
#[command(about = "botdb bot-turn load benchmark")]
struct Args {
    /// Users in the data set.
    #[arg(long, default_value_t = 10_000)]
    users: i64,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Interleaved rounds; each cell reports its best. (The data reset between cells,
    /// with its CHECKPOINT, takes about as long as a cell: one round keeps the default
    /// run under two minutes.)
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
    Http,
}

const MODES: [Mode; 12] = [
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
    Mode::Http,
];

impl Mode {
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

/// One measured cell.
#[derive(Clone, Debug, serde::Serialize)]
struct Sample {
    mode: &'static str,
    concurrency: usize,
    turns: u64,
    errors: u64,
    turns_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// The client's CPU time (user + system) per turn, in microseconds: on a shared
    /// machine it is taken from PostgreSQL. For pgbench, its own CPU.
    client_cpu_us_per_turn: f64,
    /// Mode `http`: `botdb serve`'s CPU time per turn (µs) and largest resident memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    server_cpu_us_per_turn: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_rss_max_kib: Option<u64>,
}

/// What every worker of every mode needs.
struct Target {
    raw: PgPool,
    db: Database,
    per_message: DbHandle,
    batched: DbHandle,
    /// `batched` over a Database that reads from a standby (mode `replica`).
    replica: Option<(DbHandle, Database)>,
    users: i64,
    user_text: Arc<str>,
    reply_text: Arc<str>,
    /// For pgbench: where and as whom to connect.
    pg: Option<PgbenchTarget>,
}

struct PgbenchTarget {
    host: String,
    port: u16,
    user: String,
    database: String,
    password: Option<String>,
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
    let name = format!("botdb_bench_{}", uuid::Uuid::new_v4().simple());
    let mut conn = admin.connect_options()?.connect().await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await?;
    let mut url = url::Url::parse(&url)?;
    url.set_path(&name);
    let result = bench(&args, &admin.with_database(&name), &url, _cluster.as_ref()).await;
    if let Err(e) = &result {
        eprintln!("benchmark failed: {e:#}");
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)")))
        .execute(&mut conn)
        .await?;
    let _ = conn.close().await;
    result
}

/// Runs every `;`-terminated statement of `script` on its own (VACUUM refuses to run in
/// the implicit transaction of a multi-statement query).
async fn run_script(pool: &PgPool, script: &'static str) -> anyhow::Result<()> {
    for statement in script.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let sql: String = statement
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        if !sql.trim().is_empty() {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(pool).await?;
        }
    }
    Ok(())
}

fn pgbench_available() -> bool {
    std::process::Command::new("pgbench")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

async fn bench(
    args: &Args,
    config: &Config,
    url: &url::Url,
    cluster: Option<&EmbeddedPostgres>,
) -> anyhow::Result<()> {
    let db = Database::connect(config).await?;
    db.migrate().await?;
    // Mode `replica`: an asynchronous standby of the throwaway cluster, and a Database
    // that reads from it.
    let mut standby = None;
    let mut replica = None;
    if args.modes.contains(&Mode::Replica) {
        match cluster {
            Some(pg) => {
                let s = pg
                    .start_standby(botdb::embedded::Replication::Asynchronous)
                    .await?;
                let mut at = url.clone();
                at.set_port(Some(s.port()))
                    .map_err(|()| anyhow::anyhow!("cannot set the standby's port"))?;
                let with_replica = Config::builder()
                    .url(url.to_string())
                    .replica_url(at.to_string())
                    .build()?;
                let rdb = Database::connect(&with_replica).await?;
                replica = Some((DbSystem::start(rdb.clone(), config.actors), rdb));
                standby = Some(s);
            }
            None => eprintln!(
                "mode replica needs the throwaway cluster (BOTDB_BENCH_DATABASE_URL is set): skipped"
            ),
        }
    }
    eprintln!("populating {} users x 20 messages ...", args.users);
    let setup = Instant::now();
    run_script(db.pool(), include_str!("workload/populate.sql")).await?;
    eprintln!("populated in {:.1} s", setup.elapsed().as_secs_f64());
    // The plain sqlx pool: the same size as botdb's, sqlx's default options
    // (test_before_acquire: a ping on every checkout).
    let raw = PgPoolOptions::new()
        .max_connections(config.pool.max_connections())
        .connect_with(config.connect_options()?)
        .await?;
    let pg = Some(PgbenchTarget {
        host: url.host_str().unwrap_or("127.0.0.1").to_string(),
        port: url.port().unwrap_or(5432),
        user: url.username().to_string(),
        database: url.path().trim_start_matches('/').to_string(),
        password: url.password().map(str::to_string),
    });
    let target = Arc::new(Target {
        per_message: DbSystem::start(
            db.clone(),
            ActorConfig {
                batch_max: 1,
                ..config.actors
            },
        ),
        batched: DbSystem::start(db.clone(), config.actors),
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
                run_script(&target.raw, include_str!("workload/reset.sql")).await?;
                sqlx::query("DELETE FROM request_keys")
                    .execute(&target.raw)
                    .await?;
                let duration = Duration::from_secs_f64(args.seconds);
                let s = match mode {
                    Mode::Pgbench | Mode::PgbenchTx => pgbench(&target, mode, c, duration).await?,
                    Mode::Http => match &served {
                        Some(served) => http::measure(served, target.users, c, duration).await?,
                        None => anyhow::bail!("mode http without a server"),
                    },
                    _ => measure(&target, mode, c, duration).await,
                };
                eprintln!(
                    "round {round} {:<10} C={c:<3} {:>8.0} turns/s  p50 {:>6.2} ms  p99 {:>7.2} ms  client cpu {:>5.0} us/turn  errors {}",
                    s.mode, s.turns_per_sec, s.p50_ms, s.p99_ms, s.client_cpu_us_per_turn, s.errors
                );
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
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&best)?)?;
        eprintln!("wrote {}", path.display());
    }
    for (name, handle) in [("actors", &target.per_message), ("batched", &target.batched)] {
        let report = handle.shutdown().await;
        let stats = handle.stats().await?;
        let (batches, batched): (u64, u64) = stats
            .actors
            .iter()
            .fold((0, 0), |(b, r), a| (b + a.batches, r + a.batched_requests));
        eprintln!("{name}: {report}; {batches} batches carried {batched} requests");
    }
    if let Some((handle, rdb)) = &target.replica {
        let report = handle.shutdown().await;
        let reads = rdb.replica_reads();
        eprintln!(
            "replica: {report}; reads on the standby {}, on the primary: behind {}, lagging {}, down {}",
            reads.on_replica, reads.behind, reads.lagging, reads.down
        );
    }
    drop(standby);
    target.raw.close().await;
    Ok(())
}

fn print_table(best: &[Sample], concurrency: &[usize], modes: &[Mode]) {
    let get = |m: Mode, c: usize| best.iter().find(|s| s.mode == m.name() && s.concurrency == c);
    println!();
    println!("| mode | C | turns/s | p50 ms | p99 ms | client CPU µs/turn | vs raw | vs pgbench |");
    println!("|---|---|---|---|---|---|---|---|");
    for &c in concurrency {
        for &m in modes {
            if let Some(s) = get(m, c) {
                let ratio = |base: Mode| {
                    get(base, c).map_or("-".to_string(), |r| {
                        format!("{:.2}x", s.turns_per_sec / r.turns_per_sec)
                    })
                };
                println!(
                    "| {} | {c} | {:.0} | {:.2} | {:.2} | {:.0} | {} | {} |",
                    s.mode,
                    s.turns_per_sec,
                    s.p50_ms,
                    s.p99_ms,
                    s.client_cpu_us_per_turn,
                    ratio(Mode::Raw),
                    ratio(Mode::Pgbench)
                );
            }
        }
    }
}

/// This process's CPU time (user + system), and its waited-for children's.
fn cpu_times() -> (Duration, Duration) {
    use nix::sys::resource::{UsageWho, getrusage};
    let total = |who| {
        getrusage(who)
            .map(|u| {
                let tv =
                    |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
                tv(u.user_time()) + tv(u.system_time())
            })
            .unwrap_or_default()
    };
    (total(UsageWho::RUSAGE_SELF), total(UsageWho::RUSAGE_CHILDREN))
}

fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("constant histogram bounds")
}

fn sample(
    mode: Mode,
    concurrency: usize,
    hist: &Histogram<u64>,
    errors: u64,
    elapsed: f64,
    cpu: Duration,
) -> Sample {
    Sample {
        mode: mode.name(),
        concurrency,
        turns: hist.len(),
        errors,
        turns_per_sec: hist.len() as f64 / elapsed,
        p50_ms: hist.value_at_quantile(0.50) as f64 / 1000.0,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
        client_cpu_us_per_turn: cpu.as_secs_f64() * 1e6 / hist.len().max(1) as f64,
        server_cpu_us_per_turn: None,
        server_rss_max_kib: None,
    }
}

async fn measure(target: &Arc<Target>, mode: Mode, concurrency: usize, duration: Duration) -> Sample {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let (cpu_before, _) = cpu_times();
    let workers: Vec<_> = (0..concurrency)
        .map(|k| {
            let target = target.clone();
            spawn(async move { worker(&target, mode, k, concurrency, deadline).await })
        })
        .collect();
    let mut hist = histogram();
    let mut errors = 0;
    for w in workers {
        if let Ok((h, e)) = w.await {
            let _ = hist.add(&h);
            errors += e;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (cpu_after, _) = cpu_times();
    sample(mode, concurrency, &hist, errors, elapsed, cpu_after - cpu_before)
}

/// Runs pgbench for one cell; turns/s is its tps (one script run = one turn), the
/// latencies come from its per-transaction log.
async fn pgbench(target: &Target, mode: Mode, c: usize, duration: Duration) -> anyhow::Result<Sample> {
    let pg = target
        .pg
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no pgbench target"))?;
    let script = match mode {
        Mode::PgbenchTx => concat!(env!("CARGO_MANIFEST_DIR"), "/benches/workload/turn_tx.pgbench"),
        _ => concat!(env!("CARGO_MANIFEST_DIR"), "/benches/workload/turn.pgbench"),
    };
    let logs = tempfile::tempdir()?;
    let prefix = logs.path().join("pgbench_log");
    let mut cmd = tokio::process::Command::new("pgbench");
    cmd.args(["-n", "-M", "prepared", "-l"])
        .arg(format!("--log-prefix={}", prefix.display()))
        .args(["-c", &c.to_string(), "-j", &c.min(2).to_string()])
        .args(["-T", &duration.as_secs().max(1).to_string()])
        .args(["-f", script])
        .args([
            "-D",
            &format!("nclients={c}"),
            "-D",
            &format!("users={}", target.users),
        ])
        .args(["-D", &format!("ucontent={}", target.user_text)])
        .args(["-D", &format!("acontent={}", target.reply_text)])
        .args([
            "-h",
            &pg.host,
            "-p",
            &pg.port.to_string(),
            "-U",
            &pg.user,
            &pg.database,
        ])
        .current_dir(logs.path())
        .kill_on_drop(true);
    if let Some(password) = &pg.password {
        // In the environment, not on the command line.
        cmd.env("PGPASSWORD", password);
    }
    let (_, children_before) = cpu_times();
    let out = cmd.output().await?;
    let (_, children_after) = cpu_times();
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "pgbench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tps: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no tps in pgbench's output:\n{text}"))?;
    let hist = pgbench_latencies(logs.path())?;
    let failed: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("number of failed transactions: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut s = sample(mode, c, &hist, failed, 1.0, children_after - children_before);
    s.turns_per_sec = tps;
    Ok(s)
}

/// Per-transaction latencies (µs, third column) from pgbench's log files.
fn pgbench_latencies(dir: &Path) -> anyhow::Result<Histogram<u64>> {
    let mut hist = histogram();
    for entry in std::fs::read_dir(dir)? {
        let text = std::fs::read_to_string(entry?.path())?;
        for line in text.lines() {
            if let Some(us) = line.split_whitespace().nth(2).and_then(|v| v.parse::<u64>().ok()) {
                let _ = hist.record(us.max(1));
            }
        }
    }
    Ok(hist)
}

/// Spawns on the tokio pool when there is one, else on the actix system thread.
fn spawn<F>(fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => actix_rt::spawn(fut),
        _ => tokio::spawn(fut),
    }
}

/// xorshift64*: enough randomness to pick users, no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

async fn worker(target: &Target, mode: Mode, k: usize, c: usize, deadline: Instant) -> (Histogram<u64>, u64) {
    let mut hist = histogram();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (k as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9));
    let (k, c) = (k as i64, c as i64);
    let slots = (target.users - 1 - k) / c + 1;
    let mut errors = 0;
    while Instant::now() < deadline {
        let uid = 1 + k + rng.below(slots as u64) as i64 * c;
        let start = Instant::now();
        let ok = match mode {
            Mode::Raw => raw_turn(target, uid, false).await.is_ok(),
            Mode::RawTx => raw_turn(target, uid, true).await.is_ok(),
            Mode::Session => session_turn(target, uid).await.is_ok(),
            Mode::Actors => five_requests(target, &target.per_message, uid, None)
                .await
                .is_ok(),
            Mode::Batched => five_requests(target, &target.batched, uid, None).await.is_ok(),
            Mode::Context => five_requests_reading(target, &target.batched, uid, None, Read::Context)
                .await
                .is_ok(),
            Mode::Replica => match &target.replica {
                Some((handle, _)) => five_requests(target, handle, uid, None).await.is_ok(),
                None => false,
            },
            Mode::Keyed => {
                let turn = KEYS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                five_requests(target, &target.batched, uid, Some(turn))
                    .await
                    .is_ok()
            }
            Mode::Direct => five_requests(target, &target.db, uid, None).await.is_ok(),
            Mode::Pgbench | Mode::PgbenchTx | Mode::Http => false,
        };
        if ok {
            let _ = hist.record(start.elapsed().as_micros() as u64);
        } else {
            errors += 1;
        }
    }
    (hist, errors)
}

/// The pgbench script's five statements, verbatim, on executor `$ex` (re-evaluated for
/// each statement: `&pool` checks out a connection per statement, `&mut *tx` reuses one).
macro_rules! pgbench_turn {
    ($ex:expr, $t:expr, $uid:expr) => {{
        sqlx::query("INSERT INTO users(id) VALUES ($1) ON CONFLICT (id) DO UPDATE SET updated_at = now()")
            .bind($uid)
            .execute($ex)
            .await?;
        let _: Option<(i32, Option<String>)> = sqlx::query_as(
            "SELECT max_history_messages, system_prompt FROM user_settings WHERE user_id = $1",
        )
        .bind($uid)
        .fetch_optional($ex)
        .await?;
        sqlx::query(
            "INSERT INTO messages(id, user_id, role, content, content_length) \
             VALUES (gen_random_uuid(), $1, 'user', $2, 200)",
        )
        .bind($uid)
        .bind(&*$t.user_text)
        .execute($ex)
        .await?;
        let _: Vec<(String, String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
            "SELECT role, content, created_at FROM messages WHERE user_id = $1 AND deleted_at IS NULL \
             ORDER BY created_at DESC LIMIT 20",
        )
        .bind($uid)
        .fetch_all($ex)
        .await?;
        sqlx::query(
            "INSERT INTO messages(id, user_id, role, content, content_length) \
             VALUES (gen_random_uuid(), $1, 'assistant', $2, 400)",
        )
        .bind($uid)
        .bind(&*$t.reply_text)
        .execute($ex)
        .await?;
    }};
}

/// The pgbench turn on the plain sqlx pool: each statement its own transaction (as
/// pgbench's autocommit statements), or one transaction for the turn.
async fn raw_turn(t: &Target, uid: i64, one_tx: bool) -> Result<(), sqlx::Error> {
    if one_tx {
        let mut tx = t.raw.begin().await?;
        pgbench_turn!(&mut *tx, t, uid);
        tx.commit().await
    } else {
        pgbench_turn!(&t.raw, t, uid);
        Ok(())
    }
}

/// Where a turn's requests go: through the actors, or run directly.
trait Runs {
    async fn exec<M: DbRequest>(&self, request: M) -> botdb::Result<M::Output>;
}

impl Runs for DbHandle {
    async fn exec<M: DbRequest>(&self, request: M) -> botdb::Result<M::Output> {
        self.send(request).await
    }
}

impl Runs for Database {
    async fn exec<M: DbRequest>(&self, request: M) -> botdb::Result<M::Output> {
        request.run(self.clone()).await
    }
}

/// Numbers the turns of the `keyed` mode, so that each append has a key of its own.
static KEYS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The turn as five requests, each its own transaction (or batch). With `turn`, both
/// appends carry request keys (idempotency on, as the webhook's writes do).
/// What a turn reads between its two appends.
#[derive(Clone, Copy)]
enum Read {
    /// `GetHistory`: the user's last messages.
    History,
    /// `GetContext`: the model's context, the newest messages within the default budget
    /// (200,000 characters) and the user's limit, what the bot reads for a turn.
    Context,
}

async fn five_requests(t: &Target, to: &impl Runs, uid: i64, turn: Option<u64>) -> botdb::Result<()> {
    five_requests_reading(t, to, uid, turn, Read::History).await
}

async fn five_requests_reading(
    t: &Target,
    to: &impl Runs,
    uid: i64,
    turn: Option<u64>,
    read: Read,
) -> botdb::Result<()> {
    let key = |side: &str| {
        turn.map(|n| RequestKey::new("bench", format!("{n}-{side}")))
            .transpose()
    };
    to.exec(UpsertUser { user_id: uid }).await?;
    let settings = to.exec(GetSettings { user_id: uid }).await?;
    to.exec(AppendMessage {
        user_id: uid,
        chat_id: PRIVATE_CHAT,
        role: Role::User,
        content: t.user_text.to_string(),
        key: key("user")?,
    })
    .await?;
    let limit = settings.map_or(20, |s| i64::from(s.max_history_messages));
    match read {
        Read::History => {
            to.exec(GetHistory {
                user_id: uid,
                chat_id: PRIVATE_CHAT,
                limit: Some(limit),
            })
            .await?;
        }
        Read::Context => {
            to.exec(GetContext {
                user_id: uid,
                chat_id: PRIVATE_CHAT,
                max_chars: None,
                max_messages: Some(limit),
            })
            .await?;
        }
    }
    to.exec(AppendMessage {
        user_id: uid,
        chat_id: PRIVATE_CHAT,
        role: Role::Assistant,
        content: t.reply_text.to_string(),
        key: key("reply")?,
    })
    .await?;
    Ok(())
}

/// The same turn through botdb's repositories, one session.
async fn session_turn(t: &Target, uid: i64) -> botdb::Result<()> {
    let limits = *t.db.limits();
    let user_msg = limits.message(uid, Role::User, &*t.user_text)?;
    let reply = limits.message(uid, Role::Assistant, &*t.reply_text)?;
    t.db.session(async |tx| {
        repo::users::upsert(&mut *tx, uid).await?;
        let settings = repo::settings::get(&mut *tx, uid).await?;
        repo::messages::append(&mut *tx, &user_msg).await?;
        let limit = settings.map_or(20, |s| i64::from(s.max_history_messages));
        repo::messages::history(&mut *tx, uid, limit).await?;
        repo::messages::append(&mut *tx, &reply).await?;
        Ok(())
    })
    .await
}
