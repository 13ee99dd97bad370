//! Migrations: one embedded migrator shared by the CLI, the library and the tests, and
//! the reference's operator verbs (upgrade head, downgrade, current, history, revision).
//!
//! Every operation runs on a dedicated connection, not a pooled one: sqlx's migrator
//! holds a session-level advisory lock while it works, and a connection that is closed
//! afterwards can never hand a still-held lock back to the pool. Two `migrate` calls at
//! once: the second waits on the lock, then finds nothing to do.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::time::Duration;

use sqlx::migrate::{Migrate, MigrateError, Migrator};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgConnection};

use crate::config::MigrateConfig;
use crate::error::{Error, Result};

/// The migrations in `migrations/`, embedded at compile time.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Formats a version as the file names do, with its description when known:
/// `0003 (content length and history index)`.
pub fn describe_version(version: i64) -> String {
    match MIGRATOR.iter().find(|m| m.version == version) {
        Some(m) => format!(
            "{version:04} ({}, file {})",
            m.description,
            file_stem(version, &m.description)
        ),
        None => format!("{version:04}"),
    }
}

fn file_stem(version: i64, description: &str) -> String {
    format!("migrations/{version:04}_{}.up.sql", description.replace(' ', "_"))
}

/// The newest version the embedded migrations define (the "head").
pub fn head() -> Option<i64> {
    up_migrations().map(|m| m.version).max()
}

fn up_migrations() -> impl Iterator<Item = &'static sqlx::migrate::Migration> {
    MIGRATOR.iter().filter(|m| !m.migration_type.is_down_migration())
}

/// One migration as `botdb history` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MigrationStatus {
    /// Version number (the file name's prefix).
    pub version: i64,
    /// Description (the file name's rest).
    pub description: String,
    /// When it was applied; `None` while pending.
    pub installed_on: Option<DateTime<Utc>>,
    /// How long applying it took, in milliseconds (`None` while pending).
    pub execution_ms: Option<f64>,
    /// `false` when the applied file differs from the embedded one (tampered).
    pub checksum_matches: bool,
    /// `true` when the database has it but this build does not know it.
    pub unknown_to_this_build: bool,
}

impl MigrationStatus {
    /// `true` once applied.
    pub fn is_applied(&self) -> bool {
        self.installed_on.is_some()
    }
}

/// Opens the dedicated migration connection.
pub(crate) async fn connect(options: &PgConnectOptions) -> Result<PgConnection> {
    Ok(options.connect().await?)
}

/// Opens a dedicated connection (not pooled) to the database `config` points at, for
/// the functions of this module.
///
/// # Errors
/// As [`Database::connect`](crate::Database::connect).
pub async fn connect_to(config: &crate::Config) -> Result<PgConnection> {
    connect(&config.connect_options()?)
        .await
        .map_err(|e| config.explain(e))
}

#[derive(sqlx::FromRow)]
struct AppliedRow {
    version: i64,
    description: String,
    installed_on: DateTime<Utc>,
    checksum: Vec<u8>,
    execution_time: i64,
}

async fn applied(conn: &mut PgConnection) -> Result<Vec<AppliedRow>> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_as::<_, AppliedRow>(
        "SELECT version, description, installed_on, checksum, execution_time \
         FROM _sqlx_migrations WHERE success ORDER BY version",
    )
    .fetch_all(&mut *conn)
    .await?)
}

/// Every migration, applied or pending, in version order, plus any applied version this
/// build does not know.
///
/// # Errors
/// [`Error::Unavailable`] and friends when the database cannot be read.
pub async fn history(conn: &mut PgConnection) -> Result<Vec<MigrationStatus>> {
    let applied: HashMap<i64, AppliedRow> =
        applied(conn).await?.into_iter().map(|r| (r.version, r)).collect();
    let mut out: Vec<MigrationStatus> = up_migrations()
        .map(|m| {
            let row = applied.get(&m.version);
            MigrationStatus {
                version: m.version,
                description: m.description.to_string(),
                installed_on: row.map(|r| r.installed_on),
                execution_ms: row.map(|r| r.execution_time as f64 / 1e6),
                checksum_matches: row.is_none_or(|r| r.checksum == *m.checksum),
                unknown_to_this_build: false,
            }
        })
        .collect();
    for row in applied.values() {
        if !MIGRATOR.version_exists(row.version) {
            out.push(MigrationStatus {
                version: row.version,
                description: row.description.clone(),
                installed_on: Some(row.installed_on),
                execution_ms: Some(row.execution_time as f64 / 1e6),
                checksum_matches: true,
                unknown_to_this_build: true,
            });
        }
    }
    out.sort_by_key(|s| s.version);
    Ok(out)
}

/// The newest applied migration, or `None` on an empty database.
///
/// # Errors
/// As [`history`].
pub async fn current(conn: &mut PgConnection) -> Result<Option<MigrationStatus>> {
    Ok(history(conn)
        .await?
        .into_iter()
        .rfind(MigrationStatus::is_applied))
}

/// Fails with a clear error naming the first applied migration whose file changed.
fn verify_checksums(status: &[MigrationStatus]) -> Result<()> {
    match status.iter().find(|s| !s.checksum_matches) {
        Some(s) => Err(sqlx::migrate::MigrateError::VersionMismatch(s.version).into()),
        None => Ok(()),
    }
}

/// Applies every pending migration (`alembic upgrade head`), with the default lock
/// policy ([`MigrateConfig::default`]). Returns the versions applied by this call:
/// empty when another process had already done the work.
///
/// # Errors
/// [`Error::Migration`] when an applied migration was edited (naming it), when the
/// database has a version this build does not know, or when a migration fails (its
/// transaction is rolled back), also when it could not take its locks in time.
pub async fn upgrade(conn: &mut PgConnection) -> Result<Vec<MigrationStatus>> {
    upgrade_with(conn, None, &MigrateConfig::default()).await
}

/// Applies pending migrations up to and including `target` (all of them for `None`),
/// like `alembic upgrade <rev>`, with the default lock policy.
///
/// # Errors
/// As [`upgrade`].
pub async fn upgrade_to(conn: &mut PgConnection, target: Option<i64>) -> Result<Vec<MigrationStatus>> {
    upgrade_with(conn, target, &MigrateConfig::default()).await
}

/// Applies pending migrations up to `target` (all for `None`) under `policy`: each
/// migration's statements wait at most `policy.lock_timeout` for a lock, so traffic
/// queued behind a DDL's lock request on a live database waits at most that long; a
/// migration that timed out is rolled back and tried again (up to `policy.attempts`
/// times in all, backing off in between).
///
/// # Errors
/// As [`upgrade`].
pub async fn upgrade_with(
    conn: &mut PgConnection,
    target: Option<i64>,
    policy: &MigrateConfig,
) -> Result<Vec<MigrationStatus>> {
    lock(conn, policy).await?;
    let result = upgrade_locked(conn, target, policy).await;
    unlock(conn, result).await
}

/// [`upgrade_with`]'s work, with the migrator's lock held (see [`lock`]).
pub(crate) async fn upgrade_locked(
    conn: &mut PgConnection,
    target: Option<i64>,
    policy: &MigrateConfig,
) -> Result<Vec<MigrationStatus>> {
    let before = history(conn).await?;
    verify_checksums(&before)?;
    refuse_foreign_schema(conn, &before).await?;
    // sqlx takes the same advisory lock again (it is re-entrant per session).
    let mut attempt = 1;
    while let Err(e) = MIGRATOR.run_direct(target, &mut *conn, false).await {
        tokio::time::sleep(retry_after(policy, attempt, e)?).await;
        attempt += 1;
    }
    let after = history(conn).await?;
    Ok(newly_changed(&before, &after, true))
}

/// botdb's tables with no botdb migration recorded: a database botdb did not make (the
/// reference bot's, most likely). The migrator would fail half-way on `CREATE TABLE
/// users`; say what to do instead.
async fn refuse_foreign_schema(conn: &mut PgConnection, history: &[MigrationStatus]) -> Result<()> {
    if history.iter().any(MigrationStatus::is_applied) {
        return Ok(());
    }
    let foreign: bool = sqlx::query_scalar(
        "SELECT to_regclass('public.users') IS NOT NULL OR to_regclass('public.messages') IS NOT NULL",
    )
    .fetch_one(&mut *conn)
    .await?;
    if foreign {
        return Err(Error::Migration(
            "this database already has a users / messages table but no botdb migration recorded: \
             it was not made by botdb (the reference Python bot's database?). Take it over with \
             `botdb migrate` (botdb::takeover::migrate, Database::migrate), which recognises the \
             reference's schema; `botdb migrate --dry-run` shows what it would do"
                .into(),
        ));
    }
    Ok(())
}

/// Reverts the newest `steps` applied migrations (`alembic downgrade -N`). Returns the
/// versions reverted, newest first.
///
/// # Errors
/// As [`upgrade`]; also when an applied migration is unknown to this build (its down
/// script is not available).
pub async fn downgrade(conn: &mut PgConnection, steps: usize) -> Result<Vec<MigrationStatus>> {
    downgrade_with(conn, steps, &MigrateConfig::default()).await
}

/// [`downgrade`] under `policy` (see [`upgrade_with`]).
///
/// # Errors
/// As [`downgrade`].
pub async fn downgrade_with(
    conn: &mut PgConnection,
    steps: usize,
    policy: &MigrateConfig,
) -> Result<Vec<MigrationStatus>> {
    lock(conn, policy).await?;
    let result = async {
        let before = history(conn).await?;
        verify_checksums(&before)?;
        if let Some(unknown) = before.iter().find(|s| s.unknown_to_this_build) {
            return Err(Error::Migration(format!(
                "the database has migration {:04} applied, which this build does not know; \
                 roll it back with the build that applied it",
                unknown.version
            )));
        }
        let applied: Vec<i64> = before
            .iter()
            .filter(|s| s.is_applied())
            .map(|s| s.version)
            .collect();
        if steps == 0 || applied.is_empty() {
            return Ok(Vec::new());
        }
        let target = if steps >= applied.len() {
            0
        } else {
            applied[applied.len() - steps - 1]
        };
        let mut attempt = 1;
        while let Err(e) = MIGRATOR.undo(&mut *conn, target).await {
            tokio::time::sleep(retry_after(policy, attempt, e)?).await;
            attempt += 1;
        }
        let after = history(conn).await?;
        let mut reverted = newly_changed(&before, &after, false);
        reverted.reverse();
        Ok(reverted)
    }
    .await;
    unlock(conn, result).await
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
/// before the next pass, or the error to give up with. Only a lock timeout is retried:
/// each migration is one transaction, so a timed-out one left nothing behind (the ones
/// before it stay applied), and backing off lets the traffic it was queued in front of
/// drain.
fn retry_after(policy: &MigrateConfig, attempt: u32, err: MigrateError) -> Result<Duration> {
    if !is_lock_timeout(&err) {
        return Err(err.into());
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

/// Reverts every applied migration (down to an empty schema).
///
/// # Errors
/// As [`downgrade`].
pub async fn downgrade_all(conn: &mut PgConnection) -> Result<Vec<MigrationStatus>> {
    downgrade(conn, usize::MAX).await
}

/// The migrations applied (`applied = true`) or reverted between two histories.
fn newly_changed(
    before: &[MigrationStatus],
    after: &[MigrationStatus],
    applied: bool,
) -> Vec<MigrationStatus> {
    let applied_in = |list: &[MigrationStatus]| -> HashSet<i64> {
        list.iter()
            .filter(|s| s.is_applied())
            .map(|s| s.version)
            .collect()
    };
    let (was, is) = (applied_in(before), applied_in(after));
    let (source, gained, lost) = if applied {
        (after, &is, &was)
    } else {
        (before, &was, &is)
    };
    source
        .iter()
        .filter(|s| gained.contains(&s.version) && !lost.contains(&s.version))
        .cloned()
        .collect()
}

/// Creates the next reversible migration pair in `dir` (`alembic revision -m NAME`):
/// `NNNN_name.up.sql` and `NNNN_name.down.sql`, numbered after the highest version found
/// in `dir`. The new files are embedded at the next build.
///
/// # Errors
/// [`Error::InvalidInput`] for a name that is empty or not made of letters, digits,
/// spaces, `-` and `_`; [`Error::Migration`] when `dir` cannot be read or written.
pub fn new_migration(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
    let slug: String = name
        .trim()
        .to_lowercase()
        .chars()
        .map(|c| if c == ' ' || c == '-' { '_' } else { c })
        .collect();
    if slug.is_empty() || slug.len() > 100 || !slug.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(Error::invalid(
            "name",
            "expected 1 to 100 letters, digits, spaces, '-' or '_' (e.g. add_user_language)",
        ));
    }
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Error::Migration(format!("cannot read migrations directory {}: {e}", dir.display())))?;
    let mut highest = 0i64;
    for entry in entries.flatten() {
        let file = entry.file_name();
        let file = file.to_string_lossy();
        if let Some((prefix, rest)) = file.split_once('_')
            && rest.ends_with(".sql")
            && let Ok(v) = prefix.parse::<i64>()
        {
            highest = highest.max(v);
        }
    }
    let version = highest + 1;
    let up = dir.join(format!("{version:04}_{slug}.up.sql"));
    let down = dir.join(format!("{version:04}_{slug}.down.sql"));
    let write = |path: &Path, body: String| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, body.as_bytes()))
            .map_err(|e| Error::Migration(format!("cannot create {}: {e}", path.display())))
    };
    write(
        &up,
        format!(
            "-- {version:04} {name}: upgrade.\n-- Runs in one transaction; `botdb check` compares the result.\n"
        ),
    )?;
    write(
        &down,
        format!(
            "-- {version:04} {name}: downgrade. Must restore the schema exactly as it was before the upgrade.\n"
        ),
    )?;
    Ok((up, down))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_migrations_are_reversible_and_numbered() {
        let ups: Vec<i64> = up_migrations().map(|m| m.version).collect();
        assert_eq!(ups, vec![1, 2, 3, 4, 5, 6]);
        for v in ups {
            assert!(
                MIGRATOR
                    .iter()
                    .any(|m| m.version == v && m.migration_type.is_down_migration()),
                "migration {v} has no down script"
            );
        }
        assert_eq!(head(), Some(6));
        assert!(describe_version(3).contains("content length and history index"));
    }

    #[test]
    fn new_migration_numbers_after_the_highest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("0007_old.up.sql"), "").unwrap();
        let (up, down) = new_migration(dir.path(), "Add user language").unwrap();
        assert!(up.ends_with("0008_add_user_language.up.sql"), "{up:?}");
        assert!(down.ends_with("0008_add_user_language.down.sql"));
        assert!(new_migration(dir.path(), "bad;name").is_err());
        assert!(new_migration(dir.path(), "").is_err());
    }
}
