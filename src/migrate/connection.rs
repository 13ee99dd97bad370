//! The dedicated connection a migration runs on, and how it waits for locks.
//!
//! Every operation runs on a dedicated connection, not a pooled one: sqlx's migrator
//! holds a session-level advisory lock while it works, and a connection that is closed
//! afterwards can never hand a still-held lock back to the pool. Two `migrate` calls at
//! once: the second waits on the lock, then finds nothing to do.
//!
//! Here are the opening of that connection ([`connect_to`]: with several hosts, the
//! one that takes writes), the session settings around a run (`lock` / `unlock`: no
//! statement limit, a bounded `lock_timeout`), and the one retry rule (`retry_after`:
//! a migration that timed out on a lock is rolled back and tried again): the verbs on
//! one set or both, and the takeover, share them.

use std::time::Duration;

use sqlx::migrate::{Migrate, MigrateError};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgConnection};

use crate::config::MigrateConfig;
use crate::db::hosts::Hosts;
use crate::error::{Error, Result};

/// Opens the dedicated migration connection.
pub(crate) async fn connect(options: &PgConnectOptions) -> Result<PgConnection> {
    Ok(options.connect().await?)
}

/// Opens a dedicated connection (not pooled) to the database `config` points at, for
/// the functions of [`migrate`](crate::migrate): with several hosts, to the first that
/// satisfies `target_session_attrs` (a migration must reach the primary, never a
/// standby listed first).
///
/// # Errors
/// As [`Database::connect`](crate::Database::connect).
pub async fn connect_to(config: &crate::Config) -> Result<PgConnection> {
    let options = Hosts::chosen_options(config).await?;
    connect(&options).await.map_err(|e| config.explain(e))
}

/// Takes the migrator's advisory lock, so that what a verb reads before and after
/// migrating is not changed by a concurrent migrator, then sets `lock_timeout` for the
/// migrations' own statements (after the advisory lock is held: a second migrator
/// waits for the first as long as it takes). Pair with [`unlock`].
pub(crate) async fn lock(conn: &mut PgConnection, policy: &MigrateConfig) -> Result<()> {
    // A migration may rightly run for minutes (a backfill): the statement and idle
    // limits botdb sets on every connection do not apply to it, and the advisory lock
    // is waited for as long as the other migrator takes.
    sqlx::raw_sql(
        "SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0; SET lock_timeout = 0",
    )
    .execute(&mut *conn)
    .await?;
    conn.lock().await?;
    // Its lock waits on the tables, though, are bounded.
    let millis = policy.lock_timeout.as_millis().max(1);
    let set = sqlx::query("SELECT set_config('lock_timeout', $1, false)")
        .bind(format!("{millis}ms"))
        .execute(&mut *conn)
        .await;
    match set {
        Ok(_) => Ok(()),
        Err(e) => unlock(conn, Err(e.into())).await,
    }
}

/// Resets `lock_timeout` and releases the advisory lock; on failure every advisory lock
/// of the session is released, so the connection can be reused safely.
pub(crate) async fn unlock<T>(conn: &mut PgConnection, result: Result<T>) -> Result<T> {
    let _ = sqlx::raw_sql(
        "RESET lock_timeout; RESET statement_timeout; RESET idle_in_transaction_session_timeout",
    )
    .execute(&mut *conn)
    .await;
    let released = match &result {
        Ok(_) => conn.unlock().await.map_err(Error::from),
        Err(_) => sqlx::query("SELECT pg_advisory_unlock_all()")
            .execute(&mut *conn)
            .await
            .map(|_| ())
            .map_err(Error::from),
    };
    let value = result?;
    released?;
    Ok(value)
}

/// `true` when a migration failed because a statement of it could not get a lock
/// within `lock_timeout` (SQLSTATE 55P03), or was chosen as a deadlock's victim (40P01:
/// it waited for a table a bot transaction held while that one waited for a table the
/// migration held): it was rolled back and may be tried again.
fn is_lock_timeout(err: &MigrateError) -> bool {
    let source = match err {
        MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _) => e,
        _ => return false,
    };
    source
        .as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "55P03" || c == "40P01")
}

/// After pass `attempt` of the migrator failed with `err`: how long to back off
/// before the next pass, or the error to give up with (`explain` turns a migrator's
/// error into botdb's). Only a lock timeout is retried: each migration is one
/// transaction, so a timed-out one left nothing behind (the ones before it stay
/// applied), and backing off lets the traffic it was queued in front of drain.
pub(super) fn retry_after(
    policy: &MigrateConfig,
    attempt: u32,
    err: MigrateError,
    explain: impl FnOnce(MigrateError) -> Error,
) -> Result<Duration> {
    if !is_lock_timeout(&err) {
        return Err(explain(err));
    }
    if attempt >= policy.attempts {
        return Err(Error::Migration(format!(
            "a migration could not take its locks within {:?} in {} attempts: a long-running \
             transaction holds them (see pg_stat_activity / pg_locks); it was rolled back, \
             nothing of it is applied; run `botdb migrate` again when the table is free, or \
             raise BOTDB_MIGRATE_LOCK_TIMEOUT / BOTDB_MIGRATE_ATTEMPTS ({err})",
            policy.lock_timeout, policy.attempts
        )));
    }
    let backoff = Duration::from_millis(100 << attempt.min(6)).min(Duration::from_secs(5));
    tracing::warn!(
        attempt,
        attempts = policy.attempts,
        lock_timeout = ?policy.lock_timeout,
        ?backoff,
        "a migration could not take its locks in time (a long transaction holds them); rolled back, retrying"
    );
    Ok(backoff)
}
