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
//!
//! Layout, from the bottom up (each file imports only those above it in this list):
//! - `bookkeeping`: botdb's embedded set ([`MIGRATOR`], [`describe_version`],
//!   [`head`]), [`MigrationSet`], [`MigrationStatus`], and the reads of a bookkeeping
//!   table;
//! - `connection`: the dedicated connection ([`connect_to`]), the migrator's lock with
//!   a bounded `lock_timeout`, and the retry of a migration that timed out on a lock;
//! - `app`: the application's set: its directory scanned and checked, or its own
//!   migrator copied, bookkeeping in [`APP_TABLE`];
//! - `migrations`: [`Migrations`], both sets and the verbs on both;
//! - `verbs`: the verbs on botdb's set alone, and [`new_migration`].
//!
//! The schema layer above (`catalog`, `takeover`) imports this module; this module
//! imports only `config`, `error` and `db::hosts` (to reach the host that takes
//! writes), never `db` itself.

mod app;
mod bookkeeping;
mod connection;
mod migrations;
mod verbs;

pub use bookkeeping::{APP_TABLE, MIGRATOR, MigrationSet, MigrationStatus, describe_version, head};
pub use connection::connect_to;
pub(crate) use connection::{connect, lock, unlock};
pub use migrations::{Current, Migrations};
pub use verbs::{
    current, downgrade, downgrade_all, downgrade_with, history, new_migration, upgrade, upgrade_to,
    upgrade_with,
};

/// The setting that names the application's migrations directory (the configuration's
/// [`APP_MIGRATIONS_SETTING`](crate::config::APP_MIGRATIONS_SETTING), here too because
/// the migrations' errors name it).
#[doc(inline)]
pub use crate::config::APP_MIGRATIONS_SETTING as APP_SETTING;
