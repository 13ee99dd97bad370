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
//!   driven over keep-alive HTTP with Telegram updates (`load_http.rs`); printed beside
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
    /// The whole machine's busy CPU time per turn (µs, every process: PostgreSQL, the
    /// bench, `serve`) and its idle share (%) over the cell, from `/proc/stat`: a cell
    /// whose machine is not idle is limited by CPU, one with idle cores by waiting.
    #[serde(skip_serializing_if = "Option::is_none")]
    machine_cpu_us_per_turn: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    machine_idle_pct: Option<f64>,
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
    /// Mode `bot`: the bot `serve` runs (echo model), over `batched`, in this process.
    bot: botdb::bot::Bot,
    /// The text of a `bot` or `http` update (200 characters).
    update_text: Arc<str>,
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
    anyhow::ensure!(args.users >= 1, "--users must be at least 1");
    let keep = match &args.keep_data {
        None => None,
        Some(_) if _cluster.is_some() => {
            anyhow::bail!("--keep-data needs a server that outlives the run: set BOTDB_BENCH_DATABASE_URL")
        }
        Some(n) if n.is_empty() => Some(format!("botdb_bench_data_{}", args.users)),
        Some(n) => Some(n.clone()),
    };
    let mut conn = admin.connect_options()?.connect().await?;
    let name = match &keep {
        Some(name) => {
            // A database name cannot be a bound parameter: only plain identifiers.
            anyhow::ensure!(
                !name.is_empty()
                    && name.len() <= 63
                    && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "--keep-data: {name:?} is not a plain database name ([a-z_][a-z0-9_]*)"
            );
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                    .bind(name)
                    .fetch_one(&mut conn)
                    .await?;
            if !exists {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await?;
            }
            name.clone()
        }
        None => {
            let name = format!("botdb_bench_{}", uuid::Uuid::new_v4().simple());
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut conn)
                .await?;
            name
        }
    };
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
        for sql in [
            format!("DROP DATABASE {name} WITH (FORCE)"),
            format!("CREATE DATABASE {name}"),
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await?;
        }
        result = bench(&args, &admin.with_database(&name), &url, _cluster.as_ref(), true).await;
    }
    if let Err(e) = &result {
        eprintln!("benchmark failed: {e:#}");
    }
    if keep.is_none() {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)")))
            .execute(&mut conn)
            .await?;
    }
    let _ = conn.close().await;
    result
}

/// A kept database holds something else than the data set asked for.
#[derive(Debug)]
struct Rebuild;

impl std::fmt::Display for Rebuild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the kept database holds another data set")
    }
}

impl std::error::Error for Rebuild {}

/// Users per chunk of the populate (x 20 messages per statement).
const CHUNK_USERS: i64 = 25_000;

/// What marks a kept database as complete (set once its build finished).
fn data_set_comment(users: i64) -> String {
    format!("botdb bench data set: {users} users x 20 messages, complete")
}

/// The data set's bounds, for the reset: the largest populated `seq`.
struct DataSet {
    max_seq: i64,
}

/// Builds `users` users x 20 messages (or, with `keep`, finds them already built):
/// chunks of `populate.sql` on two connections, with the secondary indexes and the
/// primary key of `messages` built once at the end rather than maintained row by row,
/// triggers (the content-length trigger, the foreign-key checks) off where the role may
/// (the rows are made consistent), then `VACUUM (ANALYZE)` so that the visibility map is
/// set and the planner knows the sizes.
async fn populate(config: &Config, users: i64, keep: bool) -> anyhow::Result<DataSet> {
    let setup = Instant::now();
    // Connections of its own (no statement timeout: on 1,000,000 users a count, an
    // index or a VACUUM takes minutes).
    let opts = config.connect_options()?;
    let mut admin = opts.clone().connect().await?;
    sqlx::raw_sql("SET statement_timeout = 0")
        .execute(&mut admin)
        .await?;
    if keep {
        let (comment, n_users, n_settings, n_messages, max_id): (Option<String>, i64, i64, i64, i64) =
            sqlx::query_as(
                "SELECT shobj_description((SELECT oid FROM pg_database WHERE datname = current_database()), 'pg_database'), \
                        (SELECT count(*) FROM users), (SELECT count(*) FROM user_settings), \
                        (SELECT count(*) FROM messages), (SELECT COALESCE(max(id), 0) FROM users)",
            )
            .fetch_one(&mut admin)
            .await?;
        if comment.as_deref() == Some(data_set_comment(users).as_str())
            && n_users == users
            && n_settings == users
            && n_messages == users * 20
            && max_id == users
        {
            eprintln!(
                "reusing the data set: {users} users x 20 messages (checked in {:.1} s)",
                setup.elapsed().as_secs_f64()
            );
            return Ok(DataSet { max_seq: users * 20 });
        }
        if n_users + n_messages > 0 {
            return Err(Rebuild.into());
        }
    }
    eprintln!("populating {users} users x 20 messages ...");
    // Two loaders.
    let mut conns = Vec::new();
    for _ in 0..2 {
        let mut c = opts.clone().connect().await?;
        sqlx::raw_sql(
            "SET statement_timeout = 0; SET maintenance_work_mem = '512MB'; SET synchronous_commit = off; \
                       SET max_parallel_maintenance_workers = 0",
        )
        .execute(&mut c)
        .await?;
        // Triggers off (superuser only): the rows are consistent by construction.
        if sqlx::raw_sql("SET session_replication_role = replica")
            .execute(&mut c)
            .await
            .is_err()
        {
            eprintln!("(not a superuser: the populate runs with triggers, slower)");
        }
        conns.push(c);
    }
    // The indexes of messages, built at the end (one pass, sorted) instead of row by row.
    let indexes: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid), c.conname::text \
           FROM pg_index i LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.contype = 'p' \
          WHERE i.indrelid = 'messages'::regclass AND (NOT i.indisunique OR i.indisprimary)",
    )
    .fetch_all(&mut admin)
    .await?;
    sqlx::raw_sql("ALTER TABLE messages ALTER COLUMN seq RESTART WITH 1")
        .execute(&mut admin)
        .await?;
    for (index, _, constraint) in &indexes {
        let sql = match constraint {
            Some(c) => format!("ALTER TABLE messages DROP CONSTRAINT {c}"),
            None => format!("DROP INDEX {index}"),
        };
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await?;
    }
    let statements: Vec<String> = sql_statements(include_str!("workload/populate.sql"));
    let next = Arc::new(std::sync::atomic::AtomicI64::new(1));
    let loaders = conns.into_iter().map(|mut c| {
        let (next, statements) = (next.clone(), statements.clone());
        async move {
            loop {
                let lo = next.fetch_add(CHUNK_USERS, std::sync::atomic::Ordering::Relaxed);
                if lo > users {
                    return anyhow::Ok(c);
                }
                let hi = (lo + CHUNK_USERS - 1).min(users);
                for sql in &statements {
                    sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                        .bind(lo)
                        .bind(hi)
                        .execute(&mut c)
                        .await?;
                }
            }
        }
    });
    let conns = futures::future::try_join_all(loaders).await?;
    let loaded = setup.elapsed().as_secs_f64();
    // The indexes, two at a time; a primary key as a unique index, then attached.
    let jobs = Arc::new(std::sync::Mutex::new(indexes));
    let builders = conns.into_iter().map(|mut c| {
        let jobs = jobs.clone();
        async move {
            loop {
                let job = jobs.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.pop();
                let Some((index, def, constraint)) = job else {
                    return anyhow::Ok(c);
                };
                match constraint {
                    Some(con) => {
                        let cols = def
                            .split_once(" USING btree ")
                            .map(|(_, cols)| cols.to_string())
                            .ok_or_else(|| anyhow::anyhow!("unexpected index definition {def}"))?;
                        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                            "CREATE UNIQUE INDEX {index} ON messages USING btree {cols}"
                        )))
                        .execute(&mut c)
                        .await?;
                        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                            "ALTER TABLE messages ADD CONSTRAINT {con} PRIMARY KEY USING INDEX {index}"
                        )))
                        .execute(&mut c)
                        .await?;
                    }
                    None => {
                        sqlx::raw_sql(sqlx::AssertSqlSafe(def)).execute(&mut c).await?;
                    }
                }
            }
        }
    });
    let conns = futures::future::try_join_all(builders).await?;
    let indexed = setup.elapsed().as_secs_f64();
    for c in conns {
        let _ = c.close().await;
    }
    for table in ["messages", "users", "user_settings"] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("VACUUM (ANALYZE) {table}")))
            .execute(&mut admin)
            .await?;
    }
    if keep {
        let name: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&mut admin)
            .await?;
        let comment = data_set_comment(users);
        // COMMENT takes no parameters: the text is ours (digits and words), quoted.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "COMMENT ON DATABASE \"{name}\" IS '{}'",
            comment.replace('\'', "''")
        )))
        .execute(&mut admin)
        .await?;
    }
    let _ = admin.close().await;
    // The identity restarted at 1 for the build: the data set's seqs are 1 to 20 x users.
    let max_seq = users * 20;
    eprintln!(
        "populated {users} users x 20 messages in {:.1} s (rows {loaded:.1} s, indexes {:.1} s, vacuum {:.1} s)",
        setup.elapsed().as_secs_f64(),
        indexed - loaded,
        setup.elapsed().as_secs_f64() - indexed,
    );
    Ok(DataSet { max_seq })
}

/// The `;`-terminated statements of `script`, comment lines left out.
fn sql_statements(script: &str) -> Vec<String> {
    script
        .split(';')
        .map(|statement| {
            statement
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .filter(|s| !s.trim().is_empty())
        .collect()
}

/// Undoes what the cells since `since` wrote (`reset.sql`); `since` becomes now.
async fn reset(
    pool: &PgPool,
    since: &mut chrono::DateTime<chrono::Utc>,
    data: &DataSet,
) -> anyhow::Result<()> {
    let now: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()").fetch_one(pool).await?;
    for sql in sql_statements(include_str!("workload/reset.sql")) {
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
        if sql.contains("$1") {
            q = q.bind(*since).bind(data.max_seq);
        }
        q.execute(pool).await?;
    }
    *since = now;
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
    keep: bool,
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
    let data = populate(config, args.users, keep).await?;
    let mut since: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT now()").fetch_one(db.pool()).await?;
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
        update_text: http::text().into(),
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
                eprintln!(
                    "round {round} {:<10} C={c:<3} {:>8.0} turns/s  p50 {:>6.2} ms  p99 {:>7.2} ms  client cpu {:>5.0} us/turn  machine cpu {:>5.0} us/turn, idle {:>3.0}%  errors {}",
                    s.mode,
                    s.turns_per_sec,
                    s.p50_ms,
                    s.p99_ms,
                    s.client_cpu_us_per_turn,
                    s.machine_cpu_us_per_turn.unwrap_or(f64::NAN),
                    s.machine_idle_pct.unwrap_or(f64::NAN),
                    s.errors
                );
                eprintln!("        {io}");
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
    explain_history(&target.raw, args.users, args.explain).await?;
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

/// The best sample of mode `m` at concurrency `c`.
fn cell(best: &[Sample], m: Mode, c: usize) -> Option<&Sample> {
    best.iter().find(|s| s.mode == m.name() && s.concurrency == c)
}

fn print_table(best: &[Sample], concurrency: &[usize], modes: &[Mode]) {
    let get = |m: Mode, c: usize| cell(best, m, c);
    println!();
    println!(
        "| mode | C | turns/s | p50 ms | p99 ms | client CPU µs/turn | machine CPU µs/turn | machine idle | vs raw | vs pgbench |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &c in concurrency {
        for &m in modes {
            if let Some(s) = get(m, c) {
                let ratio = |base: Mode| {
                    get(base, c).map_or("-".to_string(), |r| {
                        format!("{:.2}x", s.turns_per_sec / r.turns_per_sec)
                    })
                };
                let or_dash =
                    |v: Option<f64>, unit: &str| v.map_or("-".to_string(), |v| format!("{v:.0}{unit}"));
                println!(
                    "| {} | {c} | {:.0} | {:.2} | {:.2} | {:.0} | {} | {} | {} | {} |",
                    s.mode,
                    s.turns_per_sec,
                    s.p50_ms,
                    s.p99_ms,
                    s.client_cpu_us_per_turn,
                    or_dash(s.machine_cpu_us_per_turn, ""),
                    or_dash(s.machine_idle_pct, " %"),
                    ratio(Mode::Raw),
                    ratio(Mode::Pgbench)
                );
            }
        }
    }
}

/// The whole machine's CPU time, busy and idle, summed over its cores (`/proc/stat`'s
/// `cpu` line, in clock ticks); `None` where there is no `/proc/stat`.
#[derive(Clone, Copy)]
struct MachineCpu {
    busy: u64,
    idle: u64,
}

impl MachineCpu {
    fn read() -> Option<MachineCpu> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let ticks: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .take(8) // user nice system idle iowait irq softirq steal (guest is in user)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let idle = ticks.get(3)? + ticks.get(4)?;
        Some(MachineCpu {
            busy: ticks.iter().sum::<u64>() - idle,
            idle,
        })
    }

    /// Busy CPU time since `before` in µs, and the idle share in %.
    fn since(&self, before: &MachineCpu) -> (f64, f64) {
        let tick_us = 1e6
            / nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
                .ok()
                .flatten()
                .map_or(100.0, |t| t as f64);
        let busy = self.busy.saturating_sub(before.busy) as f64;
        let idle = self.idle.saturating_sub(before.idle) as f64;
        (busy * tick_us, 100.0 * idle / (busy + idle).max(1.0))
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

/// The workers' latency histograms merged, and their errors summed (a worker that
/// panicked counts nothing).
async fn merged<E>(
    workers: Vec<impl Future<Output = Result<(Histogram<u64>, u64), E>>>,
) -> (Histogram<u64>, u64) {
    let mut hist = histogram();
    let mut errors = 0;
    for w in workers {
        if let Ok((h, e)) = w.await {
            let _ = hist.add(&h);
            errors += e;
        }
    }
    (hist, errors)
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
        machine_cpu_us_per_turn: None,
        machine_idle_pct: None,
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
    let (hist, errors) = merged(workers).await;
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
            Mode::Bot => bot_turn(target, uid).await,
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

/// The bot's text turn in this process: the update `http` sends, parsed and handled by
/// `Bot::handle` (what `serve`'s webhook does, without HTTP); `true` for a reply.
async fn bot_turn(t: &Target, uid: i64) -> bool {
    let update_id = http::UPDATE_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let Ok(update) = serde_json::from_slice(&http::update(update_id, uid, &t.update_text)) else {
        return false;
    };
    matches!(t.bot.handle(update).await, Ok(botdb::bot::Outcome::Reply(_)))
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

/// What a cell cost the server beyond time: WAL written (exact: the insert position),
/// and shared buffers hit and read in the database (approximate: backends report their
/// counts about once a second).
struct Io {
    lsn: i64,
    hit: i64,
    read: i64,
}

struct IoPerTurn {
    wal_bytes: f64,
    hit: f64,
    read: f64,
}

impl Io {
    async fn read(pool: &PgPool) -> anyhow::Result<Io> {
        let (lsn, hit, read): (i64, i64, i64) = sqlx::query_as(
            "SELECT (pg_current_wal_insert_lsn() - '0/0')::int8, blks_hit, blks_read \
               FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(pool)
        .await?;
        Ok(Io { lsn, hit, read })
    }

    fn since(&self, before: &Io, turns: u64) -> IoPerTurn {
        let per = |a: i64, b: i64| (a - b) as f64 / turns.max(1) as f64;
        IoPerTurn {
            wal_bytes: per(self.lsn, before.lsn),
            hit: per(self.hit, before.hit),
            read: per(self.read, before.read),
        }
    }
}

impl std::fmt::Display for IoPerTurn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "per turn: WAL {:.0} bytes, shared buffers hit {:.1} read {:.1} (approx.)",
            self.wal_bytes, self.hit, self.read
        )
    }
}

/// `EXPLAIN (ANALYZE, BUFFERS)` of botdb's history reads (`repo::messages::HISTORY_SQL`,
/// one dialogue, the user's own limit; `HISTORY_MANY_SQL`, a batch of 16) for random
/// populated users: how `messages` is scanned, and the buffers one history costs.
async fn explain_history(pool: &PgPool, users: i64, samples: usize) -> anyhow::Result<()> {
    if samples == 0 {
        return Ok(());
    }
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let max_bytes = botdb::Limits::default().max_history_bytes as i64;
    let default_limit = i64::from(botdb::model::DEFAULT_MAX_HISTORY);
    for batch in [1usize, 16] {
        let (mut hit, mut read, mut ms, mut rows) = (0.0, 0.0, 0.0, 0.0);
        let mut scan = String::new();
        for _ in 0..samples {
            let ids: Vec<i64> = (0..batch).map(|_| 1 + rng.below(users as u64) as i64).collect();
            let q = if batch == 1 {
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {}",
                    repo::messages::HISTORY_SQL
                )))
                .bind(ids[0])
                .bind(PRIVATE_CHAT)
                .bind(None::<i64>)
            } else {
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {}",
                    repo::messages::HISTORY_MANY_SQL
                )))
                .bind(ids.clone())
                .bind(vec![PRIVATE_CHAT; batch])
                .bind(vec![None::<i64>; batch])
            };
            let plan: serde_json::Value = q.bind(default_limit).bind(max_bytes).fetch_one(pool).await?;
            let top = &plan[0]["Plan"];
            hit += top["Shared Hit Blocks"].as_f64().unwrap_or(0.0) / batch as f64;
            read += top["Shared Read Blocks"].as_f64().unwrap_or(0.0) / batch as f64;
            rows += top["Actual Rows"].as_f64().unwrap_or(0.0) / batch as f64;
            ms += plan[0]["Execution Time"].as_f64().unwrap_or(0.0);
            if scan.is_empty() {
                scan = messages_scan(top).unwrap_or_else(|| "no scan of messages found".into());
            }
        }
        let n = samples as f64;
        eprintln!(
            "history read ({}) at {users} users: {scan}; per history: {:.1} rows, shared buffers hit {:.1} read {:.1}; {:.3} ms per statement (mean of {samples})",
            if batch == 1 {
                "HISTORY_SQL, one user"
            } else {
                "HISTORY_MANY_SQL, 16 users"
            },
            rows / n,
            hit / n,
            read / n,
            ms / n,
        );
    }
    Ok(())
}

/// The node that reads `messages` in a JSON plan: its type, index and heap fetches.
fn messages_scan(node: &serde_json::Value) -> Option<String> {
    if node["Relation Name"].as_str() == Some("messages") {
        let mut s = node["Node Type"].as_str().unwrap_or("?").to_string();
        if let Some(index) = node["Index Name"].as_str() {
            s += &format!(" using {index}");
        }
        if let Some(fetches) = node["Heap Fetches"].as_f64() {
            s += &format!(" (heap fetches {fetches})");
        }
        return Some(s);
    }
    node["Plans"].as_array()?.iter().find_map(messages_scan)
}
