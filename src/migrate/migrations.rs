//! [`Migrations`]: botdb's set and, when given, the application's, and the verbs on
//! both.
//!
//! Two sets, each with its own bookkeeping table, so that their version numbers never
//! clash. The verbs here keep them in one order: botdb's pending migrations first, then
//! the application's (which may reference botdb's tables, never the reverse), and the
//! application's only once botdb's set is at its head; a rollback reverts the newest
//! applied migrations of either set, newest first. Within a set, a pending migration
//! older than the newest applied one is refused (out of order). The takeover plans and
//! runs through the same `verify`, `to_apply` and `upgrade_locked`, so that a database
//! botdb did not make ends the way any other does.

use std::collections::HashSet;
use std::path::Path;

use serde::Serialize;
use sqlx::PgConnection;
use sqlx::migrate::{Migrate, MigrateError, Migrator};

use super::app::AppSet;
use super::bookkeeping::{
    APP_TABLE, MIGRATOR, MigrationSet, MigrationStatus, describe_version, dirty, head, recorded,
};
use super::connection::{lock, retry_after, unlock};
use crate::config::{APP_MIGRATIONS_SETTING as APP_SETTING, MigrateConfig};
use crate::error::{Error, Result};

/// The newest applied migration of each set ([`Migrations::current`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Current {
    /// botdb's newest applied migration.
    pub botdb: Option<MigrationStatus>,
    /// The application's newest applied migration.
    pub app: Option<MigrationStatus>,
}

/// The migrations the verbs work on: botdb's ([`MIGRATOR`]), always, and the
/// application's, when given.
///
/// ```no_run
/// # async fn f(db: botdb::Database) -> botdb::Result<()> {
/// use botdb::migrate::Migrations;
/// // At run time, from a directory of sqlx migration files:
/// let migrations = Migrations::botdb().with_app_dir("app_migrations").await?;
/// // Or embedded at compile time, by the application's own macro call:
/// // static APP: sqlx::migrate::Migrator = sqlx::migrate!("./app_migrations");
/// // let migrations = Migrations::botdb().with_app(&APP)?;
/// db.migrate_with(&migrations).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct Migrations {
    app: Option<AppSet>,
}

impl Migrations {
    /// botdb's migrations alone.
    pub fn botdb() -> Self {
        Migrations { app: None }
    }

    /// The migrations `config` names: botdb's, and the application's directory when
    /// [`Config::app_migrations`](crate::Config::app_migrations) is set
    /// (`BOTDB_APP_MIGRATIONS`).
    ///
    /// # Errors
    /// As [`with_app_dir`](Self::with_app_dir).
    pub async fn from_config(config: &crate::Config) -> Result<Self> {
        match &config.app_migrations {
            Some(dir) => Migrations::botdb().with_app_dir(dir).await,
            None => Ok(Migrations::botdb()),
        }
    }

    /// Adds the application's migrations, read now from `dir`: sqlx's files,
    /// `<VERSION>_<DESCRIPTION>.up.sql` with its `.down.sql` (reversible), or
    /// `<VERSION>_<DESCRIPTION>.sql` (irreversible), any numbering (`0001`, or
    /// sqlx-cli's timestamps).
    ///
    /// # Errors
    /// [`Error::Config`] naming `BOTDB_APP_MIGRATIONS` when `dir` is not a readable
    /// directory, or holds a malformed set: a `.sql` file whose name does not start
    /// with a positive whole-number version and `_`, two migrations of one version, an
    /// up script without its down script or the reverse.
    pub async fn with_app_dir(mut self, dir: impl AsRef<Path>) -> Result<Self> {
        self.app = Some(AppSet::read_dir(dir.as_ref()).await?);
        Ok(self)
    }

    /// Adds the application's migrations from its own migrator, typically its
    /// `sqlx::migrate!()` static: they are copied, and their bookkeeping is
    /// [`APP_TABLE`] whatever table `migrator` names.
    ///
    /// # Errors
    /// [`Error::Migration`] for a malformed set: two migrations of one version, an up
    /// script without its down script or the reverse.
    pub fn with_app(mut self, migrator: &Migrator) -> Result<Self> {
        self.app = Some(AppSet::copy_of(migrator)?);
        Ok(self)
    }

    /// The application's migrations, when given (their table is [`APP_TABLE`]).
    pub fn app(&self) -> Option<&Migrator> {
        self.app.as_ref().map(|a| &a.migrator)
    }

    /// The directory the application's migrations were read from, if they were.
    pub fn app_dir(&self) -> Option<&Path> {
        self.app.as_ref().and_then(AppSet::dir)
    }

    /// The newest version of the application's migrations (`None` without any).
    pub fn app_head(&self) -> Option<i64> {
        self.app()?
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
            .map(|m| m.version)
            .max()
    }

    /// A migration as the messages name it: `0003 (content length and history index,
    /// file migrations/0003_content_length_and_history_index.up.sql)`, `app 0001
    /// (reminders, file app_migrations/0001_reminders.up.sql)`.
    pub fn describe(&self, set: MigrationSet, version: i64) -> String {
        match (set, &self.app) {
            (MigrationSet::Botdb, _) => describe_version(version),
            (MigrationSet::App, Some(app)) => app.describe(version),
            (MigrationSet::App, None) => format!("app {version:04}"),
        }
    }

    /// Where the application's migrations are, for the messages.
    fn app_source(&self) -> String {
        match self.app_dir() {
            Some(dir) => format!("the application's migrations directory {}", dir.display()),
            None => "the application's migrations".into(),
        }
    }

    /// `err`, from the migrator of `set`, as botdb's error, naming the migration with
    /// its description and file (which `Error`'s own conversion cannot know).
    fn error(&self, set: MigrationSet, err: MigrateError) -> Error {
        match err {
            MigrateError::VersionMismatch(v) => Error::migration_edited(&self.describe(set, v), set.table()),
            MigrateError::Dirty(v) => Error::migration_dirty(&self.describe(set, v), set.table()),
            other if set == MigrationSet::Botdb => other.into(),
            MigrateError::VersionMissing(v) => self.unknown_app(v),
            MigrateError::ExecuteMigration(e, v) => Error::Migration(format!(
                "migration {} failed (rolled back): {e}",
                self.describe(set, v)
            )),
            other => other.into(),
        }
    }

    fn unknown_app(&self, version: i64) -> Error {
        Error::Migration(format!(
            "the database has app migration {version:04} applied, which {} lacks: restore its \
             files (to roll it back, its down script), or use the directory that applied it",
            self.app_source()
        ))
    }

    /// Every migration of both sets, applied or pending: botdb's in version order, then
    /// the application's, each with any applied version the migrations given do not
    /// know (all of the application's applied ones when none were given).
    ///
    /// # Errors
    /// [`Error::Unavailable`] and friends when the database cannot be read.
    pub async fn history(&self, conn: &mut PgConnection) -> Result<Vec<MigrationStatus>> {
        let mut out = recorded(conn, MigrationSet::Botdb, Some(&MIGRATOR)).await?;
        out.extend(recorded(conn, MigrationSet::App, self.app()).await?);
        Ok(out)
    }

    /// The newest applied migration of each set.
    ///
    /// # Errors
    /// As [`history`](Self::history).
    pub async fn current(&self, conn: &mut PgConnection) -> Result<Current> {
        let history = self.history(conn).await?;
        let newest = |set| {
            history
                .iter()
                .filter(|s| s.set == set)
                .rfind(|s| s.is_applied())
                .cloned()
        };
        Ok(Current {
            botdb: newest(MigrationSet::Botdb),
            app: newest(MigrationSet::App),
        })
    }

    /// Applies botdb's pending migrations up to `target` (all for `None`), then, when
    /// that brings botdb's set to its head, every pending migration of the
    /// application's; under the migrator's lock and `policy` (see
    /// [`upgrade_with`](super::upgrade_with)). Returns the migrations this call applied,
    /// botdb's first.
    ///
    /// # Errors
    /// As [`upgrade`](super::upgrade), for either set; [`Error::Migration`] naming a
    /// pending migration older than the newest applied one of its set (out of order:
    /// nothing is applied), or an applied one of the application's that the migrations
    /// given lack.
    pub async fn upgrade(
        &self,
        conn: &mut PgConnection,
        target: Option<i64>,
        policy: &MigrateConfig,
    ) -> Result<Vec<MigrationStatus>> {
        lock(conn, policy).await?;
        let result = self.upgrade_locked(conn, target, policy).await;
        unlock(conn, result).await
    }

    /// `true` when a run up to `target` takes the application's migrations too: botdb's
    /// set then ends at its head.
    fn reaches_app(&self, target: Option<i64>) -> bool {
        self.app.is_some() && target.is_none_or(|t| head().is_none_or(|h| t >= h))
    }

    /// The migrations a run up to `target` would apply, in order, from `history`
    /// (botdb's above `after`, a version the takeover records rather than applies).
    pub(crate) fn to_apply(
        &self,
        history: &[MigrationStatus],
        target: Option<i64>,
        after: i64,
    ) -> Vec<MigrationStatus> {
        let app = self.reaches_app(target);
        history
            .iter()
            .filter(|s| !s.is_applied() && !s.unknown_to_this_build)
            .filter(|s| match s.set {
                MigrationSet::Botdb => s.version > after && target.is_none_or(|t| s.version <= t),
                MigrationSet::App => app,
            })
            .cloned()
            .collect()
    }

    /// Refuses to work on a database whose bookkeeping disagrees with the migrations:
    /// an applied migration edited since, unknown to this build (botdb's; the
    /// application's when given), or a pending one older than the newest applied one
    /// of its set.
    pub(crate) fn verify(&self, history: &[MigrationStatus]) -> Result<()> {
        let in_scope = |s: &&MigrationStatus| s.set == MigrationSet::Botdb || self.app.is_some();
        if let Some(s) = history.iter().filter(in_scope).find(|s| !s.checksum_matches) {
            return Err(self.error(s.set, MigrateError::VersionMismatch(s.version)));
        }
        if let Some(s) = history.iter().filter(in_scope).find(|s| s.unknown_to_this_build) {
            return Err(self.error(s.set, MigrateError::VersionMissing(s.version)));
        }
        for set in [MigrationSet::Botdb, MigrationSet::App] {
            let of_set = || history.iter().filter(move |s| s.set == set);
            let Some(newest) = of_set().filter(|s| s.is_applied()).map(|s| s.version).max() else {
                continue;
            };
            if let Some(s) = of_set().find(|s| !s.is_applied() && s.version < newest) {
                return Err(Error::Migration(format!(
                    "migration {} is pending, but {} {newest:04} is already applied: applying it \
                     now would apply {} migrations out of order. Give it a newer version than \
                     {newest:04} (rename its files; `botdb new` numbers after the highest); \
                     nothing was applied",
                    self.describe(set, s.version),
                    match set {
                        MigrationSet::Botdb => "the newer",
                        MigrationSet::App => "the application's newer",
                    },
                    match set {
                        MigrationSet::Botdb => "botdb's",
                        MigrationSet::App => "the application's",
                    },
                )));
            }
        }
        Ok(())
    }

    /// [`upgrade`](Self::upgrade)'s work, with the migrator's lock held (see [`lock`]).
    pub(crate) async fn upgrade_locked(
        &self,
        conn: &mut PgConnection,
        target: Option<i64>,
        policy: &MigrateConfig,
    ) -> Result<Vec<MigrationStatus>> {
        let before = self.history(conn).await?;
        self.verify(&before)?;
        refuse_foreign_schema(conn, &before).await?;
        // sqlx takes the same advisory lock again (it is re-entrant per session), for
        // either set: the lock is the database's.
        self.run(conn, MigrationSet::Botdb, &MIGRATOR, target, policy)
            .await?;
        if let Some(app) = &self.app
            && self.reaches_app(target)
        {
            self.run(conn, MigrationSet::App, &app.migrator, None, policy)
                .await?;
        }
        let after = self.history(conn).await?;
        Ok(newly_applied(&before, &after))
    }

    /// Runs `migrator` up to `target`, again after a lock timeout.
    async fn run(
        &self,
        conn: &mut PgConnection,
        set: MigrationSet,
        migrator: &Migrator,
        target: Option<i64>,
        policy: &MigrateConfig,
    ) -> Result<()> {
        let mut attempt = 1;
        while let Err(e) = migrator.run_direct(target, &mut *conn, false).await {
            tokio::time::sleep(retry_after(policy, attempt, e, |e| self.error(set, e))?).await;
            attempt += 1;
        }
        Ok(())
    }

    /// Reverts the newest `steps` applied migrations of both sets, newest applied first
    /// (`installed_on`; the application's first on a tie; within a set, the highest
    /// version first), each with its own set's down script, under `policy` (see
    /// [`upgrade_with`](super::upgrade_with)). Returns the migrations reverted, in the
    /// order they were.
    ///
    /// # Errors
    /// As [`downgrade`](super::downgrade); [`Error::Migration`], before anything is
    /// reverted, when one of them is the application's and its migrations were not given
    /// or lack it (or its down script).
    pub async fn downgrade(
        &self,
        conn: &mut PgConnection,
        steps: usize,
        policy: &MigrateConfig,
    ) -> Result<Vec<MigrationStatus>> {
        lock(conn, policy).await?;
        let result = self.downgrade_locked(conn, steps, policy).await;
        unlock(conn, result).await
    }

    async fn downgrade_locked(
        &self,
        conn: &mut PgConnection,
        steps: usize,
        policy: &MigrateConfig,
    ) -> Result<Vec<MigrationStatus>> {
        let before = self.history(conn).await?;
        let in_scope = |s: &&MigrationStatus| s.set == MigrationSet::Botdb || self.app.is_some();
        if let Some(s) = before.iter().filter(in_scope).find(|s| !s.checksum_matches) {
            return Err(self.error(s.set, MigrateError::VersionMismatch(s.version)));
        }
        if let Some(s) = before.iter().filter(in_scope).find(|s| s.unknown_to_this_build) {
            return Err(match s.set {
                MigrationSet::Botdb => Error::Migration(format!(
                    "the database has migration {:04} applied, which this build does not know; \
                     roll it back with the build that applied it",
                    s.version
                )),
                MigrationSet::App => self.unknown_app(s.version),
            });
        }
        for set in [MigrationSet::Botdb, MigrationSet::App] {
            if let Some(v) = dirty(conn, set.table()).await? {
                return Err(self.error(set, MigrateError::Dirty(v)));
            }
        }
        // Each set's applied migrations, highest version last.
        let stack = |set| -> Vec<&MigrationStatus> {
            before.iter().filter(|s| s.set == set && s.is_applied()).collect()
        };
        let (mut botdb, mut app) = (stack(MigrationSet::Botdb), stack(MigrationSet::App));
        let mut picks: Vec<MigrationStatus> = Vec::new();
        while picks.len() < steps {
            let from_app = match (botdb.last(), app.last()) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(b), Some(a)) => a.installed_on >= b.installed_on,
            };
            let next = if from_app { app.pop() } else { botdb.pop() };
            picks.extend(next.cloned());
        }
        // Every down script first: nothing is reverted unless all of them can be.
        let mut downs = Vec::with_capacity(picks.len());
        for s in &picks {
            let migrator = match (s.set, &self.app) {
                (MigrationSet::Botdb, _) => &MIGRATOR,
                (MigrationSet::App, Some(app)) => &app.migrator,
                (MigrationSet::App, None) => {
                    return Err(Error::Migration(format!(
                        "the newest applied migration to roll back is the application's ({}, in \
                         {APP_TABLE}): give the application's migrations directory (--app-migrations \
                         DIR or {APP_SETTING}) so that it is rolled back with its own down script \
                         before botdb's; nothing was rolled back",
                        s.label()
                    )));
                }
            };
            let down = migrator
                .iter()
                .find(|m| m.version == s.version && m.migration_type.is_down_migration())
                .ok_or_else(|| {
                    Error::Migration(format!(
                        "migration {} has no down script: it cannot be rolled back; nothing was \
                         rolled back",
                        self.describe(s.set, s.version)
                    ))
                })?;
            downs.push((s.set, down));
        }
        for (set, down) in downs {
            let mut attempt = 1;
            while let Err(e) = conn.revert(set.table(), down).await {
                tokio::time::sleep(retry_after(policy, attempt, e, |e| self.error(set, e))?).await;
                attempt += 1;
            }
        }
        Ok(picks)
    }
}

/// botdb's tables with no botdb migration recorded: a database botdb did not make (the
/// reference bot's, most likely). The migrator would fail half-way on `CREATE TABLE
/// users`; say what to do instead.
async fn refuse_foreign_schema(conn: &mut PgConnection, history: &[MigrationStatus]) -> Result<()> {
    if history
        .iter()
        .any(|s| s.set == MigrationSet::Botdb && s.is_applied())
    {
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

/// The migrations applied between two histories, as `after` has them.
fn newly_applied(before: &[MigrationStatus], after: &[MigrationStatus]) -> Vec<MigrationStatus> {
    let was: HashSet<(MigrationSet, i64)> = before
        .iter()
        .filter(|s| s.is_applied())
        .map(|s| (s.set, s.version))
        .collect();
    after
        .iter()
        .filter(|s| s.is_applied() && !was.contains(&(s.set, s.version)))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_a_botdb_migration_with_its_description_and_file() {
        let migrations = Migrations::botdb();
        let edited = migrations
            .error(MigrationSet::Botdb, MigrateError::VersionMismatch(3))
            .to_string();
        assert!(edited.contains("content length and history index"), "{edited}");
        assert!(edited.contains("recorded in _sqlx_migrations"), "{edited}");
        let dirty = migrations
            .error(MigrationSet::Botdb, MigrateError::Dirty(2))
            .to_string();
        assert!(dirty.contains("file migrations/0002_"), "{dirty}");
    }
}
