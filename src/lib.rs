//! # botdb
//!
//! The persistence subsystem of AI chat bots built on actix: users, every message of
//! each user's dialogues with the model (one per user and chat; soft-deleted, never
//! physically removed), and per-user settings, in PostgreSQL through sqlx.
//!
//! It does what the reference design (async SQLAlchemy 2.0 + asyncpg + Alembic) does:
//! a pooled [`Database`] with a transactional [`Database::session`] scope and a graceful
//! [`Database::close`]; the reference's schema and migration history with reversible
//! migrations; the reference's operations as repository functions. On top, the
//! [`actors`]: each table behind a supervised actor that runs one user's requests in
//! order and different users' at once, drained by one `Shutdown` before the pool closes.
//!
//! ## Quick start: the actors from an actix-web handler
//!
//! `cargo add botdb` (the command, the server and the throwaway cluster come with the
//! default features; `default-features = false` for the library alone), then:
//!
//! ```no_run
//! use actix_web::{App, HttpResponse, HttpServer, web};
//! use botdb::actors::{AppendTurn, DbHandle, DbSystem, EnsureUser, GetHistory};
//! use botdb::model::PRIVATE_CHAT;
//! use botdb::{Config, Database};
//!
//! /// `POST /chat/{user_id}`: one turn of a dialogue, through botdb's actors.
//! async fn chat(db: web::Data<DbHandle>, user: web::Path<i64>, text: String) -> Result<HttpResponse, botdb::Error> {
//!     let user_id = user.into_inner();
//!     let settings = db.send(EnsureUser { user_id }).await?.settings;
//!     let limit = Some(i64::from(settings.max_history_messages));
//!     let history = db.send(GetHistory { user_id, chat_id: PRIVATE_CHAT, limit }).await?;
//!     let reply = format!("{} messages remembered", history.len()); // ask your model here
//!     db.send(AppendTurn { user_id, chat_id: PRIVATE_CHAT, user_text: text, reply_text: reply.clone(), key: None })
//!         .await?; // both messages, one transaction: Ok means committed
//!     Ok(HttpResponse::Ok().body(reply))
//! }
//!
//! #[actix_web::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let config = Config::from_env()?; // DATABASE_URL or DB_*, pool settings, .env
//!     let db = Database::connect(&config).await?;
//!     db.migrate().await?; // botdb's migrations (and BOTDB_APP_MIGRATIONS, yours)
//!     let actors = DbSystem::start(db, config.actors);
//!     let data = web::Data::new(actors.clone());
//!     HttpServer::new(move || App::new().app_data(data.clone()).route("/chat/{user_id}", web::post().to(chat)))
//!         .bind("127.0.0.1:8080")?
//!         .run()
//!         .await?; // until Ctrl-C
//!     let report = actors.shutdown().await; // every accepted request answered, then the pool closes
//!     println!("{report}");
//!     Ok(())
//! }
//! ```
//!
//! `botdb::Error` is an actix-web `ResponseError` (feature `server`): transient errors
//! answer 503 with `Retry-After`. Your own tables go behind the same actors
//! ([`actors::DbSystem::builder`], [`actors::Table`], [`actors::DbRequest`]) and your
//! migrations beside botdb's ([`migrate::Migrations`]); `examples/reminders` is a whole
//! bot with a fourth table.
//!
//! Without an actor, the same through the repositories:
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
//! ## Features
//! - `cli` (default): the `botdb` command and `botdb::telemetry` (the `tracing`
//!   subscriber); implies `server` and `embedded`.
//! - `server` (default): `botdb::server`, `botdb serve` on actix-web.
//! - `embedded` (default): `botdb::embedded`, a throwaway PostgreSQL cluster from the
//!   installed binaries.
//!
//! With none of them the library core (everything below but those three modules) needs
//! no CLI, HTTP server or cluster crates.
//!
//! ## Layout
//! Bottom to top: each module imports only those above it in this list, and no file
//! imports itself through others (`tests/it/house.rs` checks both; `docs/architecture.md`
//! is the map, with the path of a webhook update to its row).
//! - [`error`]: [`Error`], one `#[non_exhaustive]` enum of what a caller can act on
//!   (including [`Error::OutcomeUnknown`] when a COMMIT was cut); it imports nothing of
//!   botdb (a migration's description comes in as data).
//! - [`config`]: [`Config`] (`config::whole`, with the replicas' [`ReplicaConfig`]),
//!   from the environment (`config::env`, every variable in `config::vars`) or a
//!   builder (`config::builder`, every range check); the password is a secret that
//!   never prints, in whatever form it was given (`config::urls`); several hosts and
//!   `target_session_attrs` (`config::hosts`). [`shutdown`]: SIGINT / SIGTERM through
//!   ctrlc. `telemetry` (feature `cli`): the `tracing` subscriber.
//! - [`model`]: rows ([`model::User`], [`model::Message`], [`model::UserSettings`],
//!   [`model::Erasure`]), dialogues ([`model::Dialogue`]: a user in a chat) and the
//!   context's budget ([`model::Budget`]), request keys ([`model::RequestKey`]), and
//!   validated inputs ([`model::NewMessage`], [`model::Content`],
//!   [`model::SettingsPatch`]).
//! - [`llm`]: the language model ([`llm::Model`], [`llm::EchoModel`]); [`telegram`]:
//!   Telegram's updates and the webhook answer.
//! - [`db`]: [`Database`]: opening it (`db::open`), the pool (`db::pool`), the scopes a
//!   unit of work runs in and what a failure means (`db::scope`: session, autocommit,
//!   read, [`Database::read_replica`]), connections held between uses (`db::lease`),
//!   several hosts (`db::hosts`), replicas that show a user their own writes
//!   (`db::replicas`, [`Database::acting_for`]), botdb's own deadlines on the server's
//!   answers (`db::deadline`) and every socket's keepalives (`db::socket`).
//!   [`Database::migrate`] is defined up in `takeover`.
//! - [`repo`]: the SQL, one module per table, as functions over any executor
//!   (`repo::keys`: request keys, for requests that happen at most once;
//!   `repo::erasures`: erasing a user with a keyed-hash audit row; `repo::export`: a
//!   user's data as streamed JSON, bounded in time; `repo::messages::context`: the
//!   model's context within a character budget).
//! - [`migrate`]: `bookkeeping` (the embedded migrator [`migrate::MIGRATOR`],
//!   [`migrate::MigrationSet`], [`migrate::MigrationStatus`]), `connection` (the
//!   dedicated connection, its lock timeout and retries), `app` (the application's own
//!   set, bookkeeping `_app_migrations`), `migrations` ([`migrate::Migrations`]: the
//!   verbs on both sets), `verbs` (upgrade, downgrade, current, history, new on botdb's
//!   set alone).
//! - [`catalog`]: schema snapshots of the live catalog and their diff (`botdb check`).
//!   [`retention`]: soft-deleted messages purged after a period, in small batches no
//!   turn waits for, never sooner than the request keys' retention. `embedded` (feature
//!   `embedded`): a throwaway cluster (`cluster`), a standby beside it (`standby`), what
//!   they need of the machine (`host`), a TCP proxy that goes silent (`tcp_proxy`).
//! - [`takeover`]: `botdb migrate` on any database, the reference Python bot's taken
//!   over first: `reference`, `recognise` ([`takeover::inspect`]), `plan`
//!   ([`takeover::plan`], the `--dry-run` text), `carry_out`, and `database`
//!   ([`Database::migrate`], `migrate_with`). [`actors`]: [`actors::DbSystem`] starts
//!   one supervised [`actors::DbActor`] per registered table, botdb's and the
//!   application's (serial per user, concurrent across users, bounded with a fair share
//!   per user, group commit of what is ready at once); [`actors::DbHandle`] routes typed
//!   requests by table; [`actors::Shutdown`] drains them (`builder` starts, `handle`
//!   sends, `endpoints` and `gate` admit, `actor/` queues per user, batches and runs,
//!   `system` drains; the requests: `users`, `messages`, `turns`, `settings`,
//!   `commands`).
//! - [`bot`]: the chat bot over the actors: every update once under its key (a text:
//!   [`actors::BeginTurn`] then [`actors::AppendTurn`]; a command: [`actors::BeginCommand`]),
//!   commands and turns (the model's and Telegram's types re-exported from [`llm`] and
//!   [`telegram`]).
//! - `pipeline` (feature `server`): the turn pipeline of a bot that answers through
//!   Telegram's Bot API: `turns` (one turn at a time per dialogue, in update order,
//!   across instances, leases fenced), `sends` (each chat's messages in order, within
//!   Telegram's limits), `metrics`.
//! - `server` (feature `server`): `botdb serve` on actix-web: `webhook` (the secret
//!   before the body, the body bounded in size and time), `admin` and `health`
//!   (`/healthz` cached, `/metrics`, optionally on an admin address behind a token),
//!   `state`, `respond` (errors as HTTP), `background` (the retention purges), and the
//!   ordered shutdown (HTTP with a grace, actors, pool).
//!
//! The `botdb` binary (`src/main.rs`, `src/cli/`) wires these into commands.

#![warn(missing_docs)]

pub mod actors;
pub mod bot;
pub mod catalog;
pub mod config;
pub mod db;
#[cfg(feature = "embedded")]
pub mod embedded;
pub mod error;
pub mod llm;
pub mod migrate;
pub mod model;
#[cfg(feature = "server")]
pub mod pipeline;
pub mod repo;
pub mod retention;
#[cfg(feature = "server")]
pub mod server;
pub mod shutdown;
pub mod takeover;
pub mod telegram;
#[cfg(feature = "cli")]
pub mod telemetry;

pub use config::{ActorConfig, Config, Limits, MigrateConfig, PoolConfig, ReplicaConfig};

/// `true` in builds with the test-only `fault-injection` feature (botdb's own test
/// suite); `false` in every normal build.
pub const FAULT_INJECTION: bool = cfg!(feature = "fault-injection");
pub use db::{Database, PoolStatus, ReplicaReads};
pub use error::{Error, Result, TimeoutKind};
