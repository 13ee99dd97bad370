//! # botdb
//!
//! The persistence subsystem of AI chat bots built on actix: users, every message of
//! each user's dialogues with the model (one per user and chat; soft-deleted, never
//! physically removed), and per-user settings, in PostgreSQL through sqlx.
//!
//! It does what the reference design (async SQLAlchemy 2.0 + asyncpg + Alembic) does:
//! a pooled [`Database`] with a transactional [`Database::session`] scope and a graceful
//! [`Database::close`]; the reference's schema and migration history with reversible
//! migrations; the reference's operations as repository functions.
//!
//! ```no_run
//! # async fn f() -> botdb::Result<()> {
//! use botdb::{Config, Database, model::Role, repo};
//!
//! let db = Database::connect(&Config::from_env()?).await?;
//! db.migrate().await?;
//! let hello = db.limits().message(42, Role::User, "hello")?;
//! let history = db
//!     .session(async |tx| {
//!         repo::users::upsert(&mut *tx, 42).await?;
//!         repo::messages::append(&mut *tx, &hello).await?;
//!         repo::messages::history(&mut *tx, 42, 20).await
//!     })
//!     .await?;
//! db.close().await;
//! # Ok(()) }
//! ```
//!
//! ## Layout
//! - [`config`]: [`Config`], from the environment (`DATABASE_URL` or `DB_*`, pool
//!   settings, `.env`) or a builder; the password is a secret that never prints, in
//!   whatever form it was given (`config::env`, `config::builder`, `config::settings`,
//!   `config::urls`).
//! - [`db`]: [`Database`]: the pool, the session scope, autocommit, read, close,
//!   migrate (botdb's migrations and the application's);
//!   connections held between uses (sqlx's pool pings every connection it gets back).
//! - [`error`]: [`Error`], one `#[non_exhaustive]` enum of what a caller can act on
//!   (including [`Error::OutcomeUnknown`] when a COMMIT was cut).
//! - [`model`]: rows ([`model::User`], [`model::Message`], [`model::UserSettings`]),
//!   dialogues ([`model::Dialogue`]: a user in a chat) and validated inputs
//!   ([`model::NewMessage`], [`model::Content`], [`model::SettingsPatch`]).
//! - [`repo`]: the SQL, one module per table, as functions over any executor
//!   (`repo::keys`: request keys, for requests that happen at most once).
//! - [`migrate`]: the embedded migrator ([`migrate::MIGRATOR`]), the application's own
//!   migrations beside it ([`migrate::Migrations`], bookkeeping `_app_migrations`), and
//!   the operator verbs (upgrade, downgrade, current, history, new) on both sets, with a
//!   lock timeout and retries.
//! - [`catalog`]: schema snapshots of the live catalog and their diff (`botdb check`,
//!   both sets of migrations).
//! - [`takeover`]: what `botdb migrate` finds and plans (`--dry-run`), and the takeover
//!   of the reference Python bot's database (recognised, repaired, recorded, upgraded).
//! - [`embedded`]: a throwaway PostgreSQL cluster from the installed binaries (demo,
//!   tests).
//! - [`actors`]: the actor layer: [`actors::DbSystem`] starts one supervised
//!   [`actors::DbActor`] per table (serial per user, concurrent across users, bounded
//!   with a fair share per user, group commit of what is ready at once),
//!   [`actors::DbHandle`] sends typed requests, [`actors::Shutdown`] drains them.
//! - [`shutdown`]: SIGINT / SIGTERM through ctrlc, one owner, second signal exits.
//! - [`bot`]: the chat bot over the actors (commands, turns, the [`bot::Model`] trait and
//!   its local [`bot::EchoModel`], Telegram's Update and sendMessage).
//! - [`server`]: `botdb serve` on actix-web: the webhook (secret token before the body,
//!   body bounded in size and time), `/healthz` (cached) and `/metrics` (optionally on
//!   an admin address behind a token), connection limits, and the ordered shutdown
//!   (HTTP with a grace, actors, pool).
//! - [`telemetry`]: the `tracing` subscriber.
//!
//! The `botdb` binary (`src/main.rs`, `src/cli/`) wires these into commands.

pub mod actors;
pub mod bot;
pub mod catalog;
pub mod config;
pub mod db;
#[cfg(feature = "embedded")]
pub mod embedded;
pub mod error;
pub mod migrate;
pub mod model;
pub mod repo;
#[cfg(feature = "server")]
pub mod server;
pub mod shutdown;
pub mod takeover;
#[cfg(feature = "cli")]
pub mod telemetry;

pub use config::{ActorConfig, Config, Limits, MigrateConfig, PoolConfig};

/// `true` in builds with the test-only `fault-injection` feature (botdb's own test
/// suite); `false` in every normal build.
pub const FAULT_INJECTION: bool = cfg!(feature = "fault-injection");
pub use db::{Database, PoolStatus};
pub use error::{Error, Result, TimeoutKind};
