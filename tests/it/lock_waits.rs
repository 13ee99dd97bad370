//! The server's own record of lock waits, for tests that promise "nobody waited for X".
//!
//! PostgreSQL 15 counts lock waits nowhere: `pg_locks` and `pg_stat_activity` show an
//! instant, and sampling them misses every wait shorter than the sampling period (a
//! purge batch holds its locks for milliseconds). What the server does record, with
//! `log_lock_waits = on`, is every wait longer than `deadlock_timeout`: the waiting
//! backend logs `process N still waiting for LOCK after T ms`, with `Process holding the
//! lock: M. Wait queue: ...` in its DETAIL. [`LockWaits::watch`] turns that on for one
//! test database with `deadlock_timeout = 1ms` (its smallest value: every wait longer
//! than a millisecond is logged), proves in the same run that such a wait reaches the
//! log and is read back (a wait it makes on purpose), and then reads the waits of that
//! database from the cluster's log.
//!
//! It needs the server's log, so it runs on [`logged_server`](crate::helpers::logged_server)
//! (the embedded cluster; with `BOTDB_TEST_DATABASE_URL`, one started for it), and it
//! needs the `embedded` feature: without it (`cargo test --no-default-features`, whose
//! server is always an external one) the tests that use it are not compiled, rather
//! than passing without having looked.

use std::time::Duration;

use botdb::Database;
use sqlx::{Connection, PgConnection};

use crate::helpers::{TestDb, eventually};

/// One wait the server logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wait {
    /// The backend that waited.
    pub waiter: i32,
    /// What it waited for (`ShareLock on transaction 1234`, ...).
    pub lock: String,
    /// The backends that held the lock when the wait was logged.
    pub holders: Vec<i32>,
}

/// The lock-wait record of one test database.
pub struct LockWaits {
    log: std::path::PathBuf,
    database: String,
    /// Where in the log this test's record starts (after the proof).
    from: u64,
}

impl LockWaits {
    /// Turns the record on for `t`'s database (connections opened from now on: make the
    /// pools of the workload under test after this) and proves, with a wait made on
    /// purpose, that a wait of this database reaches the log and is read back.
    pub async fn watch(t: &TestDb) -> Self {
        let pg = t
            .server
            .embedded
            .as_ref()
            .expect("the lock-wait record is the server's log: make the database with TestDb::new_on(logged_server())");
        let mut admin = t.conn().await;
        for setting in ["log_lock_waits = on", "deadlock_timeout = '1ms'"] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "ALTER DATABASE \"{}\" SET {setting}",
                t.name
            )))
            .execute(&mut admin)
            .await
            .unwrap();
        }
        let _ = admin.close().await;
        let mut record = LockWaits {
            log: pg.log_path(),
            database: t.name.clone(),
            from: 0,
        };
        // The proof: `holder` takes an advisory lock, `waiter` asks for it and waits
        // until the server has logged the wait.
        let (mut holder, mut waiter) = (t.conn().await, t.conn().await);
        let holder_pid = pid(&mut holder).await;
        let waiter_pid = pid(&mut waiter).await;
        let mut held = holder.begin().await.unwrap();
        sqlx::query("SELECT pg_advisory_xact_lock(23)")
            .execute(&mut *held)
            .await
            .unwrap();
        let waiting = tokio::spawn(async move {
            sqlx::query("SELECT pg_advisory_xact_lock(23)")
                .execute(&mut waiter)
                .await
                .unwrap();
            waiter
        });
        let logged = eventually(Duration::from_secs(30), async || {
            record
                .waits()
                .iter()
                .any(|w| w.waiter == waiter_pid && w.holders == [holder_pid])
        })
        .await;
        held.commit().await.unwrap();
        let _ = waiting.await.unwrap().close().await;
        let _ = holder.close().await;
        assert!(
            logged,
            "a wait made on purpose (backend {waiter_pid} for {holder_pid}) never reached the server's log {}",
            record.log.display()
        );
        record.from = std::fs::metadata(&record.log).unwrap().len();
        record
    }

    /// Checks that `db`'s connections carry the record's settings (they were opened
    /// after [`watch`](Self::watch)).
    pub async fn assert_recorded(db: &Database) {
        let timeout: String = db
            .read(async |c| Ok(sqlx::query_scalar("SHOW deadlock_timeout").fetch_one(c).await?))
            .await
            .unwrap();
        let on: String = db
            .read(async |c| Ok(sqlx::query_scalar("SHOW log_lock_waits").fetch_one(c).await?))
            .await
            .unwrap();
        assert_eq!((timeout.as_str(), on.as_str()), ("1ms", "on"));
    }

    /// Every wait of this database the server logged since [`watch`](Self::watch)
    /// proved the record.
    pub fn waits(&self) -> Vec<Wait> {
        let bytes = std::fs::read(&self.log).unwrap();
        let text = String::from_utf8_lossy(&bytes[(self.from as usize).min(bytes.len())..]);
        let tag = format!("@{} ", self.database);
        let mut waits = Vec::new();
        // A wait's DETAIL comes on its own line, after the message, from the same pid.
        let mut open: std::collections::HashMap<i32, Wait> = std::collections::HashMap::new();
        for line in text.lines() {
            let Some((pid, message)) = parse(line, &tag) else {
                continue;
            };
            if let Some(rest) = message.strip_prefix("LOG:  process ")
                && let Some((_, lock)) = rest.split_once(" still waiting for ")
            {
                let lock = lock.rsplit_once(" after ").map_or(lock, |(l, _)| l);
                if let Some(unfinished) = open.remove(&pid) {
                    waits.push(unfinished);
                }
                open.insert(
                    pid,
                    Wait {
                        waiter: pid,
                        lock: lock.to_string(),
                        holders: Vec::new(),
                    },
                );
            } else if let Some(detail) = message.strip_prefix("DETAIL:  ")
                && let Some((_, holders)) = detail.split_once(" holding the lock: ")
                && let Some(mut wait) = open.remove(&pid)
            {
                let holders = holders.split(". Wait queue").next().unwrap_or("");
                wait.holders = holders
                    .split(", ")
                    .filter_map(|h| h.trim().parse().ok())
                    .collect();
                waits.push(wait);
            }
        }
        waits.extend(open.into_values());
        waits
    }
}

/// `(pid, message)` of a log line of the database `tag` names (`@name `), whose prefix
/// is `TIME [PID] USER@DATABASE `.
fn parse<'a>(line: &'a str, tag: &str) -> Option<(i32, &'a str)> {
    let (_, after) = line.split_once(" [")?;
    let (pid, rest) = after.split_once("] ")?;
    let (_, message) = rest.split_once(tag)?;
    Some((pid.parse().ok()?, message))
}

/// The backend process id of `conn`.
pub async fn pid(conn: &mut PgConnection) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await
        .unwrap()
}
