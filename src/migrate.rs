//! Migrations: botdb's embedded migrator, the application's own migrations beside it,
//! shared by the CLI, the library and the tests, and the reference's operator verbs
//! (upgrade head, downgrade, current, history, revision).
//!
//! Two sets, each with its own bookkeeping table, so that their version numbers never
//! clash: botdb's ([`MIGRATOR`], `_sqlx_migrations`) and, optionally, the application's
//! (a directory of sqlx migration files, or its own `sqlx::migrate!()`; [`APP_TABLE`]).
//! [`Migrations`] holds both and runs the verbs on both: botdb's pending migrations
//! first, then the application's (which may reference botdb's tables, never the
//! reverse), and the application's only once botdb's set is at its head; a rollback
//! reverts the newest applied migrations of either set, newest first. Within a set,
//! a pending migration older than the newest applied one is refused (out of order).
//! The free functions ([`upgrade`], [`downgrade`], [`history`], ...) work on botdb's set
//! alone.
//!
//! Every operation runs on a dedicated connection, not a pooled one: sqlx's migrator
//! holds a session-level advisory lock while it works, and a connection that is closed
//! afterwards can never hand a still-held lock back to the pool. Two `migrate` calls at
//! once: the second waits on the lock, then finds nothing to do.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::time::Duration;

use sqlx::migrate::{Migrate, MigrateError, Migration, Migrator};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgConnection};

use crate::config::MigrateConfig;
use crate::error::{Error, Result};

/// The migrations in `migrations/`, embedded at compile time.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// botdb's bookkeeping table (sqlx's default).
const BOTDB_TABLE: &str = "_sqlx_migrations";

/// The bookkeeping table of the application's migrations: its own, so that its
/// versions never clash with botdb's (`_sqlx_migrations`). sqlx-cli uses it too with
/// `[migrate] table-name = "_app_migrations"` in `sqlx.toml`.
pub const APP_TABLE: &str = "_app_migrations";

/// The setting that names the application's migrations directory (the configuration's
/// [`APP_MIGRATIONS_SETTING`](crate::config::APP_MIGRATIONS_SETTING), here too because
/// the migrations' errors name it).
pub use crate::config::APP_MIGRATIONS_SETTING as APP_SETTING;

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

/// The newest applied migration of each set ([`Migrations::current`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Current {
    /// botdb's newest applied migration.
    pub botdb: Option<MigrationStatus>,
    /// The application's newest applied migration.
    pub app: Option<MigrationStatus>,
}

/// The application's set: its migrations (bookkeeping in [`APP_TABLE`]) and where they
/// came from, for the messages.
#[derive(Debug)]
struct AppSet {
    migrator: Migrator,
    /// The directory, when read from one.
    dir: Option<PathBuf>,
    /// Version to the file name of its up (or simple) script, when read from a directory.
    files: HashMap<i64, String>,
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

/// Kinds of migration file, from the name's end.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Up,
    Down,
    Simple,
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
        let dir = dir.as_ref().to_path_buf();
        let files = scan_app_dir(&dir)?;
        let mut migrator = Migrator::new(dir.clone())
            .await
            .map_err(|e| bad_dir(&dir, format!("its migrations could not be read: {e}")))?;
        migrator.dangerous_set_table_name(APP_TABLE);
        self.app = Some(AppSet {
            migrator,
            dir: Some(dir),
            files,
        });
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
        let mut ups: HashMap<i64, &Migration> = HashMap::new();
        let mut downs = HashSet::new();
        for m in migrator.iter() {
            let fresh = if m.migration_type.is_down_migration() {
                downs.insert(m.version)
            } else {
                ups.insert(m.version, m).is_none()
            };
            if !fresh {
                return Err(Error::Migration(format!(
                    "the application's migrations have two of version {:04}; give one a newer version",
                    m.version
                )));
            }
        }
        for (version, m) in &ups {
            if m.migration_type == sqlx::migrate::MigrationType::ReversibleUp && !downs.contains(version) {
                return Err(Error::Migration(format!(
                    "the application's migration {version:04} ({}) has an up script and no down script",
                    m.description
                )));
            }
        }
        if let Some(v) = downs.iter().find(|v| !ups.contains_key(v)) {
            return Err(Error::Migration(format!(
                "the application's migration {v:04} has a down script and no up script"
            )));
        }
        let mut copy = Migrator::with_migrations(migrator.iter().cloned().collect());
        copy.dangerous_set_table_name(APP_TABLE);
        self.app = Some(AppSet {
            migrator: copy,
            dir: None,
            files: HashMap::new(),
        });
        Ok(self)
    }

    /// The application's migrations, when given (their table is [`APP_TABLE`]).
    pub fn app(&self) -> Option<&Migrator> {
        self.app.as_ref().map(|a| &a.migrator)
    }

    /// The directory the application's migrations were read from, if they were.
    pub fn app_dir(&self) -> Option<&Path> {
        self.app.as_ref().and_then(|a| a.dir.as_deref())
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
        if set == MigrationSet::Botdb {
            return describe_version(version);
        }
        let Some(app) = &self.app else {
            return format!("app {version:04}");
        };
        let up = app
            .migrator
            .iter()
            .find(|m| m.version == version && !m.migration_type.is_down_migration());
        match (up, app.files.get(&version), &app.dir) {
            (Some(m), Some(file), Some(dir)) => format!(
                "app {version:04} ({}, file {})",
                m.description,
                dir.join(file).display()
            ),
            (Some(m), ..) => format!("app {version:04} ({})", m.description),
            (None, ..) => format!("app {version:04}"),
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
        let mut out = history(conn).await?;
        let applied = applied(conn, APP_TABLE).await?;
        out.extend(statuses(MigrationSet::App, self.app(), applied));
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
    /// application's; under the migrator's lock and `policy` (see [`upgrade_with`]).
    /// Returns the migrations this call applied, botdb's first.
    ///
    /// # Errors
    /// As [`upgrade`], for either set; [`Error::Migration`] naming a pending migration
    /// older than the newest applied one of its set (out of order: nothing is applied),
    /// or an applied one of the application's that the migrations given lack.
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
    /// [`upgrade_with`]). Returns the migrations reverted, in the order they were.
    ///
    /// # Errors
    /// As [`downgrade`]; [`Error::Migration`], before anything is reverted, when one of
    /// them is the application's and its migrations were not given or lack it (or its
    /// down script).
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

/// An [`Error::Config`] about the application's migrations directory.
fn bad_dir(dir: &Path, message: String) -> Error {
    Error::config(
        APP_SETTING,
        format!(
            "the application's migrations directory {}: {message}",
            dir.display()
        ),
    )
}

/// Checks the names of the migration files in `dir` as sqlx reads them, and returns
/// each version's up (or simple) file name.
fn scan_app_dir(dir: &Path) -> Result<HashMap<i64, String>> {
    let meta = std::fs::metadata(dir).map_err(|e| bad_dir(dir, format!("cannot be read: {e}")))?;
    if !meta.is_dir() {
        return Err(bad_dir(dir, "is not a directory".into()));
    }
    let entries = std::fs::read_dir(dir).map_err(|e| bad_dir(dir, format!("cannot be read: {e}")))?;
    let mut ups: HashMap<i64, (String, FileKind)> = HashMap::new();
    let mut downs: HashMap<i64, String> = HashMap::new();
    for entry in entries {
        let entry = entry.map_err(|e| bad_dir(dir, format!("cannot be read: {e}")))?;
        let path = entry.path();
        if !std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        // sqlx's rule: `<VERSION>_<DESCRIPTION>.sql`; other files are ignored.
        let Some((prefix, rest)) = name.split_once('_') else {
            continue;
        };
        if !rest.ends_with(".sql") {
            continue;
        }
        let version = prefix.parse::<i64>().ok().filter(|v| *v > 0).ok_or_else(|| {
            bad_dir(
                dir,
                format!(
                    "file {name}: a migration's name starts with a positive whole-number version, \
                     then `_` and a description (e.g. 0001_reminders.up.sql)"
                ),
            )
        })?;
        let kind = if rest.ends_with(".up.sql") {
            FileKind::Up
        } else if rest.ends_with(".down.sql") {
            FileKind::Down
        } else {
            FileKind::Simple
        };
        let previous = if kind == FileKind::Down {
            downs.insert(version, name.clone())
        } else {
            ups.insert(version, (name.clone(), kind)).map(|(n, _)| n)
        };
        if let Some(previous) = previous {
            return Err(bad_dir(
                dir,
                format!(
                    "files {previous} and {name} have the same version {version}; give one a newer version"
                ),
            ));
        }
    }
    for (version, (name, kind)) in &ups {
        if *kind == FileKind::Up && !downs.contains_key(version) {
            return Err(bad_dir(
                dir,
                format!(
                    "file {name} has no down script beside it ({}); reversible migrations come in \
                     pairs (`botdb new` and `sqlx migrate add -r` make both)",
                    name.replace(".up.sql", ".down.sql")
                ),
            ));
        }
    }
    for (version, name) in &downs {
        match ups.get(version) {
            Some((_, FileKind::Up)) => {}
            _ => {
                return Err(bad_dir(
                    dir,
                    format!(
                        "file {name} has no up script beside it ({})",
                        name.replace(".down.sql", ".up.sql")
                    ),
                ));
            }
        }
    }
    Ok(ups.into_iter().map(|(v, (name, _))| (v, name)).collect())
}

/// Opens the dedicated migration connection.
pub(crate) async fn connect(options: &PgConnectOptions) -> Result<PgConnection> {
    Ok(options.connect().await?)
}

/// Opens a dedicated connection (not pooled) to the database `config` points at, for
/// the functions of this module: with several hosts, to the first that satisfies
/// `target_session_attrs` (a migration must reach the primary, never a standby listed
/// first).
///
/// # Errors
/// As [`Database::connect`](crate::Database::connect).
pub async fn connect_to(config: &crate::Config) -> Result<PgConnection> {
    let options = crate::db::hosts::Hosts::chosen_options(config).await?;
    connect(&options).await.map_err(|e| config.explain(e))
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
async fn dirty(conn: &mut PgConnection, table: &'static str) -> Result<Option<i64>> {
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

/// Every migration of botdb's, applied or pending, in version order, plus any applied
/// version this build does not know. (The application's: [`Migrations::history`].)
///
/// # Errors
/// [`Error::Unavailable`] and friends when the database cannot be read.
pub async fn history(conn: &mut PgConnection) -> Result<Vec<MigrationStatus>> {
    let applied = applied(conn, BOTDB_TABLE).await?;
    Ok(statuses(MigrationSet::Botdb, Some(&MIGRATOR), applied))
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
fn retry_after(
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

/// Reverts every applied migration of botdb's (down to an empty schema).
///
/// # Errors
/// As [`downgrade`].
pub async fn downgrade_all(conn: &mut PgConnection) -> Result<Vec<MigrationStatus>> {
    downgrade(conn, usize::MAX).await
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
        assert_eq!(ups, vec![1, 2, 3, 4, 5, 6, 7, 8, 9]);
        for v in ups {
            assert!(
                MIGRATOR
                    .iter()
                    .any(|m| m.version == v && m.migration_type.is_down_migration()),
                "migration {v} has no down script"
            );
        }
        assert_eq!(head(), Some(9));
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
