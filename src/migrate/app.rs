//! The application's set of migrations: what it is made of, and the checks that run
//! before any of it is applied.
//!
//! botdb's set is compiled in and known good; the application's is read at run time,
//! from a directory an operator edits (`BOTDB_APP_MIGRATIONS`), or copied from the
//! application's own `sqlx::migrate!()`. So its files are checked name by name here
//! (a malformed set is refused as a whole, naming the file and the setting), and kept
//! by version so that every message can name the file at fault. Its bookkeeping is its
//! own table ([`APP_TABLE`]) whatever the migrator names. `Migrations` holds one of
//! these beside botdb's set.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use sqlx::migrate::{Migration, Migrator};

use super::bookkeeping::APP_TABLE;
use crate::config::APP_MIGRATIONS_SETTING;
use crate::error::{Error, Result};

/// The application's set: its migrations (bookkeeping in [`APP_TABLE`]) and where they
/// came from, for the messages.
#[derive(Debug)]
pub(super) struct AppSet {
    /// Its migrations, their table set to [`APP_TABLE`].
    pub(super) migrator: Migrator,
    /// The directory, when read from one.
    dir: Option<PathBuf>,
    /// Version to the file name of its up (or simple) script, when read from a directory.
    files: HashMap<i64, String>,
}

/// Kinds of migration file, from the name's end.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Up,
    Down,
    Simple,
}

impl AppSet {
    /// Reads the set from `dir` now (see `Migrations::with_app_dir`).
    pub(super) async fn read_dir(dir: &Path) -> Result<AppSet> {
        let dir = dir.to_path_buf();
        let files = scan_app_dir(&dir)?;
        let mut migrator = Migrator::new(dir.clone())
            .await
            .map_err(|e| bad_dir(&dir, format!("its migrations could not be read: {e}")))?;
        migrator.dangerous_set_table_name(APP_TABLE);
        Ok(AppSet {
            migrator,
            dir: Some(dir),
            files,
        })
    }

    /// Copies the set from the application's own migrator (see `Migrations::with_app`).
    pub(super) fn copy_of(migrator: &Migrator) -> Result<AppSet> {
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
        Ok(AppSet {
            migrator: copy,
            dir: None,
            files: HashMap::new(),
        })
    }

    /// The directory the set was read from, if it was.
    pub(super) fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// One of its migrations as the messages name it: `app 0001 (reminders, file
    /// app_migrations/0001_reminders.up.sql)`, without the file when the set was not
    /// read from a directory.
    pub(super) fn describe(&self, version: i64) -> String {
        let up = self
            .migrator
            .iter()
            .find(|m| m.version == version && !m.migration_type.is_down_migration());
        match (up, self.files.get(&version), &self.dir) {
            (Some(m), Some(file), Some(dir)) => format!(
                "app {version:04} ({}, file {})",
                m.description,
                dir.join(file).display()
            ),
            (Some(m), ..) => format!("app {version:04} ({})", m.description),
            (None, ..) => format!("app {version:04}"),
        }
    }
}

/// An [`Error::Config`] about the application's migrations directory.
fn bad_dir(dir: &Path, message: String) -> Error {
    Error::config(
        APP_MIGRATIONS_SETTING,
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
