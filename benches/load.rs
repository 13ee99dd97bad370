//! The bot-turn load benchmark: `cargo bench --bench load [-- --help]`.
//!
//! One turn = upsert the user, get their settings, append their message (200 chars),
//! read the last 20 live messages, append the reply (400 chars): the workload of
//! `benches/workload/turn.pgbench`, on 10,000 users with 20 messages each
//! (`populate.sql`). Workers use disjoint users. Every mode runs in this one process,
//! interleaved (round 1: every concurrency x every mode, then round 2, ...), and each
//! cell reports its best round, so the ratios compare like with like on a noisy machine.
//!
//! Modes:
//! - `raw`: the pgbench statements on a plain sqlx `PgPool` (15 connections, sqlx's
//!   defaults), each statement its own transaction;
//! - `raw-tx`: the same, one transaction per turn;
//! - `session`: botdb's repositories in one `Database::session` per turn, no actors;
//! - `actors`: botdb's actors, five requests per turn (`UpsertUser`, `GetSettings`,
//!   `AppendMessage`, `GetHistory`, `AppendMessage`), each its own transaction, as
//!   `raw`'s statements are;
//! - `direct`: the same five requests run directly (`DbRequest::run`), no actors: the
//!   difference to `actors` is the actor layer's cost, to `raw` botdb's SQL's.
//!
//! The server is `BOTDB_BENCH_DATABASE_URL` if set, else a throwaway local cluster.
//! A scratch database is created, populated and dropped.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use botdb::actors::{AppendMessage, DbHandle, DbRequest, DbSystem, GetHistory, GetSettings, UpsertUser};
use botdb::embedded::EmbeddedPostgres;
use botdb::model::Role;
use botdb::{Config, Database, repo};
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
    /// Interleaved rounds; each cell reports its best.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Concurrency levels (workers), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 16, 64])]
    concurrency: Vec<usize>,
    /// Modes to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [Mode::Actors, Mode::Raw, Mode::Session])]
    modes: Vec<Mode>,
    /// Client runtime threads: 1 runs everything (workers, actors, sqlx) on the actix
    /// system thread; more puts the workers on a tokio pool of that many threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
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
    Direct,
    Raw,
    RawTx,
    Session,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Raw => "raw",
            Mode::RawTx => "raw-tx",
            Mode::Session => "session",
            Mode::Actors => "actors",
            Mode::Direct => "direct",
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
        [Mode::Actors, Mode::Direct, Mode::Raw, Mode::RawTx, Mode::Session]
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("unknown mode {s:?} (actors, direct, raw, raw-tx, session)"))
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
    /// This process's CPU time (user + system) per turn, in microseconds: the client's
    /// cost, which on a shared machine is taken from PostgreSQL.
    client_cpu_us_per_turn: f64,
    /// Context switches of this process per turn (voluntary + involuntary).
    client_switches_per_turn: f64,
}

/// CPU time used by this process so far, and its context switches.
fn process_usage() -> (Duration, i64) {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|u| {
            let tv = |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
            (
                tv(u.user_time()) + tv(u.system_time()),
                u.voluntary_context_switches() + u.involuntary_context_switches(),
            )
        })
        .unwrap_or_default()
}

/// What every worker of every mode needs.
struct Target {
    raw: PgPool,
    db: Database,
    actors: DbHandle,
    users: i64,
    user_text: Arc<str>,
    reply_text: Arc<str>,
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
    let (admin, _cluster) = match std::env::var("BOTDB_BENCH_DATABASE_URL") {
        Ok(url) => (
            Config::builder().url(url).build()?.with_database("postgres"),
            None,
        ),
        Err(_) => {
            let pg = tokio::task::spawn_blocking(EmbeddedPostgres::start).await??;
            (pg.config("postgres"), Some(pg))
        }
    };
    let name = format!("botdb_bench_{}", uuid::Uuid::new_v4().simple());
    let mut conn = admin.connect_options()?.connect().await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await?;
    let result = bench(&args, &admin.with_database(&name)).await;
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

async fn bench(args: &Args, config: &Config) -> anyhow::Result<()> {
    let db = Database::connect(config).await?;
    db.migrate().await?;
    eprintln!("populating {} users x 20 messages ...", args.users);
    let setup = Instant::now();
    run_script(db.pool(), include_str!("workload/populate.sql")).await?;
    eprintln!("populated in {:.1} s", setup.elapsed().as_secs_f64());
    // The plain sqlx pool, the same size as botdb's (pool_size + max_overflow).
    let raw = PgPoolOptions::new()
        .max_connections(config.pool.max_connections())
        .connect_with(config.connect_options()?)
        .await?;
    let actors = DbSystem::start(db.clone(), botdb::ActorConfig::default());
    let target = Arc::new(Target {
        raw,
        actors,
        db,
        users: args.users,
        user_text: "u".repeat(200).into(),
        reply_text: "a".repeat(400).into(),
    });
    let mut best: Vec<Sample> = Vec::new();
    for round in 1..=args.rounds {
        for &c in &args.concurrency {
            for &mode in &args.modes {
                run_script(&target.raw, include_str!("workload/reset.sql")).await?;
                let s = measure(&target, mode, c, Duration::from_secs_f64(args.seconds)).await;
                eprintln!(
                    "round {round} {:<8} C={c:<3} {:>8.0} turns/s  p50 {:>6.2} ms  p99 {:>7.2} ms  client cpu {:>5.0} us/turn  {:>5.1} switches/turn  errors {}",
                    s.mode,
                    s.turns_per_sec,
                    s.p50_ms,
                    s.p99_ms,
                    s.client_cpu_us_per_turn,
                    s.client_switches_per_turn,
                    s.errors
                );
                match best.iter_mut().find(|b| b.mode == s.mode && b.concurrency == c) {
                    Some(b) if b.turns_per_sec >= s.turns_per_sec => {}
                    Some(b) => *b = s,
                    None => best.push(s),
                }
            }
        }
    }
    print_table(&best, &args.concurrency, &args.modes);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&best)?)?;
        eprintln!("wrote {}", path.display());
    }
    let report = target.actors.shutdown().await;
    eprintln!("actors: {report}");
    target.raw.close().await;
    Ok(())
}

fn print_table(best: &[Sample], concurrency: &[usize], modes: &[Mode]) {
    let get = |m: Mode, c: usize| best.iter().find(|s| s.mode == m.name() && s.concurrency == c);
    println!();
    println!("| mode | C | turns/s | p50 ms | p99 ms | client CPU µs/turn | vs raw |");
    println!("|---|---|---|---|---|---|---|");
    for &c in concurrency {
        for &m in modes {
            if let Some(s) = get(m, c) {
                let ratio = get(Mode::Raw, c).map_or("-".to_string(), |r| {
                    format!("{:.2}x", s.turns_per_sec / r.turns_per_sec)
                });
                println!(
                    "| {} | {c} | {:.0} | {:.2} | {:.2} | {:.0} | {ratio} |",
                    s.mode, s.turns_per_sec, s.p50_ms, s.p99_ms, s.client_cpu_us_per_turn
                );
            }
        }
    }
}

async fn measure(target: &Arc<Target>, mode: Mode, concurrency: usize, duration: Duration) -> Sample {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let (cpu_before, switches_before) = process_usage();
    let workers: Vec<_> = (0..concurrency)
        .map(|k| {
            let target = target.clone();
            spawn(async move { worker(&target, mode, k, concurrency, deadline).await })
        })
        .collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let mut errors = 0;
    for w in workers {
        if let Ok((h, e)) = w.await {
            let _ = hist.add(&h);
            errors += e;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (cpu_after, switches_after) = process_usage();
    let cpu = (cpu_after - cpu_before).as_secs_f64();
    Sample {
        client_switches_per_turn: (switches_after - switches_before) as f64 / hist.len().max(1) as f64,
        client_cpu_us_per_turn: cpu * 1e6 / hist.len().max(1) as f64,
        mode: mode.name(),
        concurrency,
        turns: hist.len(),
        errors,
        turns_per_sec: hist.len() as f64 / elapsed,
        p50_ms: hist.value_at_quantile(0.50) as f64 / 1000.0,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
    }
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
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
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
            Mode::Actors => actors_turn(target, uid).await.is_ok(),
            Mode::Direct => direct_turn(target, uid).await.is_ok(),
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

/// The same turn through botdb's actors: five requests, each its own transaction.
async fn actors_turn(t: &Target, uid: i64) -> botdb::Result<()> {
    let h = &t.actors;
    h.send(UpsertUser { user_id: uid }).await?;
    let settings = h.send(GetSettings { user_id: uid }).await?;
    h.send(AppendMessage {
        user_id: uid,
        role: Role::User,
        content: t.user_text.to_string(),
    })
    .await?;
    let limit = settings.map_or(20, |s| i64::from(s.max_history_messages));
    h.send(GetHistory {
        user_id: uid,
        limit: Some(limit),
    })
    .await?;
    h.send(AppendMessage {
        user_id: uid,
        role: Role::Assistant,
        content: t.reply_text.to_string(),
    })
    .await?;
    Ok(())
}

/// The five requests of `actors_turn`, run without the actors.
async fn direct_turn(t: &Target, uid: i64) -> botdb::Result<()> {
    let db = &t.db;
    UpsertUser { user_id: uid }.run(db.clone()).await?;
    let settings = GetSettings { user_id: uid }.run(db.clone()).await?;
    AppendMessage {
        user_id: uid,
        role: Role::User,
        content: t.user_text.to_string(),
    }
    .run(db.clone())
    .await?;
    let limit = settings.map_or(20, |s| i64::from(s.max_history_messages));
    GetHistory {
        user_id: uid,
        limit: Some(limit),
    }
    .run(db.clone())
    .await?;
    AppendMessage {
        user_id: uid,
        role: Role::Assistant,
        content: t.reply_text.to_string(),
    }
    .run(db.clone())
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
