//! botdb's embedded migrations and what a bookkeeping table says about a set.
//!
//! [`MIGRATOR`] is botdb's set, compiled in: [`describe_version`] and [`head`] read it,
//! and no database is needed to name one of its migrations. [`MigrationSet`] tells the
//! two sets apart, each with its own bookkeeping table, and [`MigrationStatus`] is one
//! migration of either as its bookkeeping table and its files together show it. The
//! reads of those tables (`recorded`, `dirty`) are here because every verb, on one set
//! or both, starts from them; nothing in this file changes a database.

use std::collections::HashMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use sqlx::migrate::Migrator;

use crate::error::Result;

/// The migrations in `migrations/`, embedded at compile time.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// botdb's bookkeeping table (sqlx's default).
const BOTDB_TABLE: &str = "_sqlx_migrations";

/// The bookkeeping table of the application's migrations: its own, so that its
/// versions never clash with botdb's (`_sqlx_migrations`). sqlx-cli uses it too with
/// `[migrate] table-name = "_app_migrations"` in `sqlx.toml`.
pub const APP_TABLE: &str = "_app_migrations";

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

/// Whose migration it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationSet {
    /// botdb's own (embedded; bookkeeping in `_sqlx_migrations`).
    Botdb,
    /// The application's (its directory or `sqlx::migrate!()`; bookkeeping in
    /// [`APP_TABLE`]).
    App,
}

impl MigrationSet {
    /// Its bookkeeping table.
    pub fn table(self) -> &'static str {
        match self {
            MigrationSet::Botdb => BOTDB_TABLE,
            MigrationSet::App => APP_TABLE,
        }
    }
}

impl fmt::Display for MigrationSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MigrationSet::Botdb => "botdb",
            MigrationSet::App => "app",
        })
    }
}

/// One migration as `botdb history` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MigrationStatus {
    /// Whose migration it is: botdb's or the application's.
    pub set: MigrationSet,
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
    /// `true` when the database has it but this build does not know it (for the
    /// application's set: the migrations given do not have it, or none were given).
    pub unknown_to_this_build: bool,
}

impl MigrationStatus {
    /// `true` once applied.
    pub fn is_applied(&self) -> bool {
        self.installed_on.is_some()
    }

    /// `0006 request keys` for botdb's, `app 0001 reminders` for the application's.
    pub fn label(&self) -> String {
        match self.set {
            MigrationSet::Botdb => format!("{:04} {}", self.version, self.description),
            MigrationSet::App => format!("app {:04} {}", self.version, self.description),
        }
    }
}

/// Every migration of `set`, applied or pending, as its bookkeeping table and
/// `migrator` (the set's files; `None` when they were not given) show them together.
pub(super) async fn recorded(
    conn: &mut PgConnection,
    set: MigrationSet,
    migrator: Option<&Migrator>,
) -> Result<Vec<MigrationStatus>> {
    let applied = applied(conn, set.table()).await?;
    Ok(statuses(set, migrator, applied))
}

#[derive(sqlx::FromRow)]
struct AppliedRow {
    version: i64,
    description: String,
    installed_on: DateTime<Utc>,
    checksum: Vec<u8>,
    execution_time: i64,
}

/// The applied migrations recorded in `table` (a constant: botdb's or the
/// application's bookkeeping), none when it does not exist.
async fn applied(conn: &mut PgConnection, table: &'static str) -> Result<Vec<AppliedRow>> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_as::<_, AppliedRow>(sqlx::AssertSqlSafe(format!(
        "SELECT version, description, installed_on, checksum, execution_time \
         FROM {table} WHERE success ORDER BY version"
    )))
    .fetch_all(&mut *conn)
    .await?)
}

/// The lowest version `table` records as partially applied, if any.
pub(super) async fn dirty(conn: &mut PgConnection, table: &'static str) -> Result<Option<i64>> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        return Ok(None);
    }
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT version FROM {table} WHERE NOT success ORDER BY version LIMIT 1"
    )))
    .fetch_optional(&mut *conn)
    .await?)
}

/// The statuses of one set: each of `migrator`'s migrations (none for `None`), applied
/// or pending, plus the applied versions it does not know, in version order.
fn statuses(
    set: MigrationSet,
    migrator: Option<&Migrator>,
    applied: Vec<AppliedRow>,
) -> Vec<MigrationStatus> {
    let applied: HashMap<i64, AppliedRow> = applied.into_iter().map(|r| (r.version, r)).collect();
    let known = |version: i64| migrator.is_some_and(|m| m.version_exists(version));
    let mut out: Vec<MigrationStatus> = migrator
        .into_iter()
        .flat_map(|m| m.iter())
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| {
            let row = applied.get(&m.version);
            MigrationStatus {
                set,
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
        if !known(row.version) {
            out.push(MigrationStatus {
                set,
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
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_migrations_are_reversible_and_numbered() {
        let ups: Vec<i64> = up_migrations().map(|m| m.version).collect();
        assert_eq!(ups, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        for v in ups {
            assert!(
                MIGRATOR
                    .iter()
                    .any(|m| m.version == v && m.migration_type.is_down_migration()),
                "migration {v} has no down script"
            );
        }
        assert_eq!(head(), Some(10));
        assert!(describe_version(3).contains("content length and history index"));
    }
}
