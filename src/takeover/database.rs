//! [`Database::migrate`] and [`Database::migrate_with`]: `botdb migrate` from the
//! library, on a dedicated connection to the pool's server.
//!
//! An inherent impl of `Database` outside `db`: these two methods are the takeover's
//! `migrate_with`, and `db` sits below the schema layer (it imports neither `migrate`
//! nor `takeover`), so they live up here, beside what they run. What they read of the
//! handle (the lock policy, the application's directory, the replica floor) `db` gives
//! through `pub(crate)` accessors.

use sqlx::Connection;

use super::carry_out::migrate_with;
use crate::db::Database;
use crate::error::Result;
use crate::migrate::{self, MigrationStatus, Migrations};

impl Database {
    /// Applies every pending migration (`upgrade head`) on a dedicated connection and
    /// returns the ones this call applied (none when another process did it first):
    /// botdb's, then the application's from the directory the configuration names
    /// ([`Config::app_migrations`](crate::Config::app_migrations),
    /// `BOTDB_APP_MIGRATIONS`), if any.
    /// Each migration waits at most the configured lock timeout for its locks and is
    /// retried (see [`migrate::upgrade_with`]), so a live bot is delayed by at most that.
    /// A database the reference Python bot made is taken over first
    /// ([`takeover::migrate`](crate::takeover::migrate())).
    ///
    /// # Errors
    /// See [`migrate::upgrade`] and [`takeover::plan`](crate::takeover::plan) (a schema
    /// botdb does not know is refused, untouched); [`Error::Config`](crate::Error::Config) naming
    /// `BOTDB_APP_MIGRATIONS` when the application's directory cannot be read or holds
    /// malformed files.
    pub async fn migrate(&self) -> Result<Vec<MigrationStatus>> {
        let migrations = match self.app_migrations_dir() {
            Some(dir) => Migrations::botdb().with_app_dir(dir).await?,
            None => Migrations::botdb(),
        };
        self.migrate_with(&migrations).await
    }

    /// [`migrate`](Self::migrate) with `migrations`: botdb's, and the application's as
    /// it gives them, e.g. embedded with its own `sqlx::migrate!()`
    /// ([`Migrations::with_app`]). The configuration's directory is not looked at.
    ///
    /// ```no_run
    /// # async fn f(db: botdb::Database) -> botdb::Result<()> {
    /// static APP: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
    /// let migrations = botdb::migrate::Migrations::botdb().with_app(&APP)?;
    /// db.migrate_with(&migrations).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`migrate`](Self::migrate) and [`Migrations::upgrade`].
    pub async fn migrate_with(&self, migrations: &Migrations) -> Result<Vec<MigrationStatus>> {
        let mut conn = migrate::connect(&self.pool().connect_options()).await?;
        let result = migrate_with(&mut conn, migrations, None, self.migrate_config())
            .await
            .map(|done| done.applied);
        // Closing the connection also releases the advisory lock if `upgrade` failed.
        let _ = conn.close().await;
        // A read that needs only the floor must not reach a replica without the new
        // schema (or a data migration's rows).
        self.raise_floor().await;
        result
    }
}
