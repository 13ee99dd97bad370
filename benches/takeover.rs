//! What taking over a large reference database costs, and what it blocks:
//! `cargo bench --bench takeover [-- --help]`.
//!
//! Builds the reference Python bot's database on a throwaway cluster (the DDL its
//! models and Alembic emit, `tests/it/reference_schema.rs`) with `--messages` messages,
//! then runs `botdb migrate`'s takeover ([`botdb::takeover::migrate`]) on it while
//! - a probe does what the reference bot does, sequentially, every `--probe-ms`: one
//!   INSERT of a message, one read of a user's history, each timed (a blocked write
//!   shows as one long latency);
//! - a monitor samples `pg_locks` every 2 ms for a lock on `messages` that blocks writes
//!   (SHARE or stronger), granted to the takeover, and records each interval it is held.
//!
//! Reported: the load time, each phase of the takeover (repairs, normalisation, every
//! migration applied after), the longest and total write-blocking lock, and the
//! probe's latencies.

#[path = "../tests/it/reference_schema.rs"]
#[allow(dead_code)]
mod reference_schema;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use botdb::embedded::EmbeddedPostgres;
use botdb::takeover::{self, Found};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use sqlx::{ConnectOptions, Connection, PgConnection};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum State {
    /// Revision 2 and the reference's content_length migration: every length NULL.
    Nullable,
    /// Revision 1: naive datetimes, no content_length, no history index.
    Rev1,
    /// The models' create_all at head: lengths set.
    CreateAll,
}

#[derive(Debug, Parser)]
#[command(about = "botdb: the takeover of a large reference database")]
struct Args {
    /// Messages in the reference database.
    #[arg(long, default_value_t = 1_000_000)]
    messages: i64,
    /// Users they belong to.
    #[arg(long, default_value_t = 10_000)]
    users: i64,
    /// The reference database's state.
    #[arg(long, value_enum, default_value_t = State::Nullable)]
    state: State,
    /// Milliseconds between the probe's operations.
    #[arg(long, default_value_t = 5)]
    probe_ms: u64,
    /// cargo bench passes --bench; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

async fn connect(pg: &EmbeddedPostgres) -> PgConnection {
    pg.config("takeover")
        .connect_options()
        .expect("options")
        .connect()
        .await
        .expect("connect")
}

async fn load(conn: &mut PgConnection, args: &Args) {
    use reference_schema::*;
    sqlx::raw_sql("SET statement_timeout = 0; SET lock_timeout = 0")
        .execute(&mut *conn)
        .await
        .expect("set");
    let ddl = match args.state {
        State::Nullable => format!(
            "{REV1} {ALEMBIC} INSERT INTO alembic_version VALUES ('e9844b552bfa'); {TO_REV2} {CONTENT_LENGTH}"
        ),
        State::Rev1 => format!("{REV1} {ALEMBIC} INSERT INTO alembic_version VALUES ('e9844b552bfa');"),
        State::CreateAll => {
            format!("{CREATE_ALL} {ALEMBIC} INSERT INTO alembic_version VALUES ('b03417887b93');")
        }
    };
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
        .execute(&mut *conn)
        .await
        .expect("schema");
    let length = if args.state == State::CreateAll {
        ", char_length('message ' || g || ' ' || repeat('x', g % 200))"
    } else {
        ""
    };
    let column = if length.is_empty() { "" } else { ", content_length" };
    let (users, messages) = (args.users, args.messages);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO users (id) SELECT g FROM generate_series(1, {users}) g;
         INSERT INTO user_settings (user_id, max_history_messages, system_prompt)
              SELECT g, 20, 'prompt ' || g FROM generate_series(1, {users}, 3) g;
         INSERT INTO messages (id, user_id, role, content{column}, created_at, deleted_at)
              SELECT gen_random_uuid(), 1 + g % {users}, CASE g % 2 WHEN 0 THEN 'user' ELSE 'assistant' END,
                     'message ' || g || ' ' || repeat('x', g % 200){length},
                     now() - make_interval(secs => {messages} - g),
                     CASE WHEN g % 10 = 0 THEN now() END
                FROM generate_series(1, {messages}) g;"
    )))
    .execute(&mut *conn)
    .await
    .expect("data");
    sqlx::raw_sql("VACUUM ANALYZE")
        .execute(&mut *conn)
        .await
        .expect("vacuum");
}

/// Intervals during which the takeover held a write-blocking lock on `messages`:
/// (start since `t0`, length).
async fn monitor(mut conn: PgConnection, stop: Arc<AtomicBool>, t0: Instant) -> Vec<(Duration, Duration)> {
    let mut out = Vec::new();
    let mut since: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let held: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
                             WHERE c.relname = 'messages' AND l.granted AND l.pid <> pg_backend_pid()
                               AND l.mode IN ('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock'))",
        )
        .fetch_one(&mut conn)
        .await
        .expect("pg_locks");
        let now = Instant::now();
        match (held, since) {
            (true, None) => since = Some(now),
            (false, Some(start)) => {
                out.push((start - t0, now - start));
                since = None;
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    if let Some(start) = since {
        out.push((start - t0, start.elapsed()));
    }
    let _ = conn.close().await;
    out
}

/// The reference bot's traffic: a write and a read, timed, every `every`. Unnamed
/// statements: a statement prepared before the takeover changed `role`'s type would
/// fail once with "cached plan must not change result type" (asyncpg's cache does the
/// same to the Python bot: see docs/takeover.md).
async fn probe(
    mut conn: PgConnection,
    stop: Arc<AtomicBool>,
    users: i64,
    every: Duration,
) -> (Histogram<u64>, Histogram<u64>) {
    // Microseconds, up to ten minutes.
    let mut writes = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram");
    let mut reads = writes.clone();
    // The reference's connections wait for locks as long as it takes.
    sqlx::raw_sql("SET lock_timeout = 0; SET statement_timeout = 0")
        .execute(&mut conn)
        .await
        .expect("set");
    let mut i = 0i64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let user = 1 + (i * 7919) % users;
        let content = format!("probe {i}");
        let t = Instant::now();
        sqlx::query("INSERT INTO messages (id, user_id, role, content, content_length) VALUES ($1, $2, 'user', $3, $4)")
            .bind(uuid::Uuid::new_v4())
            .bind(user)
            .bind(&content)
            .bind(content.chars().count() as i32)
            .persistent(false)
            .execute(&mut conn)
            .await
            .expect("the reference's insert");
        writes.saturating_record(t.elapsed().as_micros() as u64);
        let t = Instant::now();
        let _: Vec<(String, String)> = sqlx::query_as(
            "SELECT role, content FROM messages WHERE user_id = $1 AND deleted_at IS NULL ORDER BY created_at DESC LIMIT 20",
        )
        .bind(user)
        .persistent(false)
        .fetch_all(&mut conn)
        .await
        .expect("the reference's read");
        reads.saturating_record(t.elapsed().as_micros() as u64);
        tokio::time::sleep(every).await;
    }
    let _ = conn.close().await;
    (writes, reads)
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let pg = tokio::task::spawn_blocking(EmbeddedPostgres::start)
        .await
        .expect("join")
        .expect("a throwaway PostgreSQL");
    pg.create_database("takeover").await.expect("create database");
    let mut conn = connect(&pg).await;
    let t = Instant::now();
    load(&mut conn, &args).await;
    println!(
        "reference database ({:?}): {} messages of {} users, loaded in {:.1} s",
        args.state,
        args.messages,
        args.users,
        t.elapsed().as_secs_f64()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let locks = tokio::spawn(monitor(connect(&pg).await, stop.clone(), t0));
    let traffic = tokio::spawn(probe(
        connect(&pg).await,
        stop.clone(),
        args.users,
        Duration::from_millis(args.probe_ms),
    ));
    let started = Instant::now();
    let done = takeover::migrate(&mut conn, None, &botdb::MigrateConfig::default())
        .await
        .expect("the takeover");
    let total = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let locks = locks.await.expect("monitor");
    let (writes, reads) = traffic.await.expect("probe");
    let _ = conn.close().await;

    let Found::Reference(found) = &done.plan.found else {
        panic!("not recognised: {:?}", done.plan.found);
    };
    println!("found: {found}");
    println!("takeover, all of it: {:.2} s", total.as_secs_f64());
    println!(
        "  repairs ({} rows, {} rows per transaction) and concurrent index builds: {:.2} s",
        done.repaired,
        takeover::REPAIR_BATCH,
        done.repair_time.as_secs_f64()
    );
    println!(
        "  normalisation + record of 0001..{:04} (one transaction): {:.2} s",
        takeover::TAKEN_OVER_AT,
        done.normalise_time.as_secs_f64()
    );
    for m in &done.applied {
        println!(
            "  {:04} {} (one transaction): {:.2} s",
            m.version,
            m.description,
            m.execution_ms.unwrap_or(0.0) / 1000.0
        );
    }
    let longest = locks.iter().map(|(_, d)| *d).max().unwrap_or_default();
    let held: Duration = locks.iter().map(|(_, d)| *d).sum();
    println!(
        "write-blocking locks on messages (sampled every 2 ms): {} intervals, longest {:.2} s, total {:.2} s",
        locks.len(),
        longest.as_secs_f64(),
        held.as_secs_f64()
    );
    let mut sorted = locks.clone();
    sorted.sort_by_key(|(_, d)| std::cmp::Reverse(*d));
    for (at, d) in sorted.iter().take(5) {
        println!("  at {:>7.2} s for {:.3} s", at.as_secs_f64(), d.as_secs_f64());
    }
    for (name, h) in [("writes", &writes), ("reads", &reads)] {
        println!(
            "the reference bot's {name} meanwhile: {}, p50 {:.1} ms, p99 {:.1} ms, max {:.0} ms",
            h.len(),
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max())
        );
    }
}
