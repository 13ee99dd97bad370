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
use sqlx::migrate::{Migrate, Migrator};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgConnection};

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
    connect(&config.connect_options()?).await
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

/// Applies every pending migration (`alembic upgrade head`). Returns the versions applied
/// by this call: empty when another process had already done the work.
///
/// # Errors
/// [`Error::Migration`] when an applied migration was edited (naming it), when the
/// database has a version this build does not know, or when a migration fails (its
/// transaction is rolled back).
pub async fn upgrade(conn: &mut PgConnection) -> Result<Vec<MigrationStatus>> {
    upgrade_to(conn, None).await
}

/// Applies pending migrations up to and including `target` (all of them for `None`),
/// like `alembic upgrade <rev>`.
///
/// # Errors
/// As [`upgrade`].
pub async fn upgrade_to(conn: &mut PgConnection, target: Option<i64>) -> Result<Vec<MigrationStatus>> {
    locked(conn, async |conn| {
        let before = history(conn).await?;
        verify_checksums(&before)?;
        // sqlx takes the same advisory lock again (it is re-entrant per session).
        MIGRATOR.run_direct(target, conn, false).await?;
        let after = history(conn).await?;
        Ok(newly_changed(&before, &after, true))
    })
    .await
}

/// Reverts the newest `steps` applied migrations (`alembic downgrade -N`). Returns the
/// versions reverted, newest first.
///
/// # Errors
/// As [`upgrade`]; also when an applied migration is unknown to this build (its down
/// script is not available).
pub async fn downgrade(conn: &mut PgConnection, steps: usize) -> Result<Vec<MigrationStatus>> {
    locked(conn, async |conn| {
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
        MIGRATOR.undo(&mut *conn, target).await?;
        let after = history(conn).await?;
        let mut reverted = newly_changed(&before, &after, false);
        reverted.reverse();
        Ok(reverted)
    })
    .await
}

/// Runs `body` holding the migrator's advisory lock, so that what it reads before and
/// after migrating is not changed by a concurrent migrator. On failure every advisory
/// lock of the session is released, so the connection can be reused safely.
async fn locked<T>(
    conn: &mut PgConnection,
    body: impl AsyncFnOnce(&mut PgConnection) -> Result<T>,
) -> Result<T> {
    conn.lock().await?;
    let result = body(&mut *conn).await;
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
        assert_eq!(ups, vec![1, 2, 3, 4]);
        for v in ups {
            assert!(
                MIGRATOR
                    .iter()
                    .any(|m| m.version == v && m.migration_type.is_down_migration()),
                "migration {v} has no down script"
            );
        }
        assert_eq!(head(), Some(4));
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
