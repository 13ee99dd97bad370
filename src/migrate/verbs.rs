//! The operator verbs on botdb's set alone, as the reference's Alembic has them:
//! `history`, `current`, `upgrade head` / `upgrade <rev>`, `downgrade -N`, `revision`
//! ([`new_migration`]).
//!
//! They are what a deployment without migrations of its own needs, and what the tests
//! walk migration by migration; each is `Migrations::botdb()` under the hood (with the
//! same lock timeout and retries), so there is one implementation of each verb.

use std::path::{Path, PathBuf};

use sqlx::PgConnection;

use super::bookkeeping::{MIGRATOR, MigrationSet, MigrationStatus, recorded};
use super::migrations::Migrations;
use crate::config::MigrateConfig;
use crate::error::{Error, Result};

/// Every migration of botdb's, applied or pending, in version order, plus any applied
/// version this build does not know. (The application's: [`Migrations::history`].)
///
/// # Errors
/// [`Error::Unavailable`] and friends when the database cannot be read.
pub async fn history(conn: &mut PgConnection) -> Result<Vec<MigrationStatus>> {
    recorded(conn, MigrationSet::Botdb, Some(&MIGRATOR)).await
}

/// botdb's newest applied migration, or `None` on an empty database.
///
/// # Errors
/// As [`history`].
pub async fn current(conn: &mut PgConnection) -> Result<Option<MigrationStatus>> {
    Ok(history(conn)
        .await?
        .into_iter()
        .rfind(MigrationStatus::is_applied))
}

/// Applies every pending migration of botdb's (`alembic upgrade head`), with the
/// default lock policy ([`MigrateConfig::default`]). Returns the versions applied by
/// this call: empty when another process had already done the work.
///
/// # Errors
/// [`Error::Migration`] when an applied migration was edited (naming it), when the
/// database has a version this build does not know, when a pending migration is older
/// than the newest applied one, or when a migration fails (its transaction is rolled
/// back), also when it could not take its locks in time.
pub async fn upgrade(conn: &mut PgConnection) -> Result<Vec<MigrationStatus>> {
    upgrade_with(conn, None, &MigrateConfig::default()).await
}

/// Applies botdb's pending migrations up to and including `target` (all of them for
/// `None`), like `alembic upgrade <rev>`, with the default lock policy.
///
/// # Errors
/// As [`upgrade`].
pub async fn upgrade_to(conn: &mut PgConnection, target: Option<i64>) -> Result<Vec<MigrationStatus>> {
    upgrade_with(conn, target, &MigrateConfig::default()).await
}

/// Applies botdb's pending migrations up to `target` (all for `None`) under `policy`:
/// each migration's statements wait at most `policy.lock_timeout` for a lock, so
/// traffic queued behind a DDL's lock request on a live database waits at most that
/// long; a migration that timed out is rolled back and tried again (up to
/// `policy.attempts` times in all, backing off in between).
///
/// # Errors
/// As [`upgrade`].
pub async fn upgrade_with(
    conn: &mut PgConnection,
    target: Option<i64>,
    policy: &MigrateConfig,
) -> Result<Vec<MigrationStatus>> {
    Migrations::botdb().upgrade(conn, target, policy).await
}

/// Reverts the newest `steps` applied migrations (`alembic downgrade -N`) of botdb's.
/// Returns the versions reverted, newest first.
///
/// # Errors
/// As [`upgrade`]; also when an applied migration is unknown to this build (its down
/// script is not available), and when one of the application's migrations was applied
/// after one of those (roll back with [`Migrations::downgrade`] given them).
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
    Migrations::botdb().downgrade(conn, steps, policy).await
}

/// Reverts every applied migration of botdb's (down to an empty schema).
///
/// # Errors
/// As [`downgrade`].
pub async fn downgrade_all(conn: &mut PgConnection) -> Result<Vec<MigrationStatus>> {
    downgrade(conn, usize::MAX).await
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
