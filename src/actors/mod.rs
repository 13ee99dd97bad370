//! The actor layer: one supervised [`DbActor`] per table, each owning a clone of the
//! pool handle, running typed requests serially per user and concurrently across
//! users; a system-level [`Shutdown`] that drains them before the pool closes.
//!
//! ```no_run
//! # async fn f(db: botdb::Database) -> botdb::Result<()> {
//! use botdb::actors::{AppendMessage, DbSystem, GetHistory};
//! use botdb::model::{PRIVATE_CHAT, RequestKey, Role};
//!
//! let handle = DbSystem::start(db, Default::default()); // inside an actix System
//! let (user_id, chat_id) = (42, PRIVATE_CHAT); // a user in their private chat
//! // At most once under its key: a copy of this request answers what the first did.
//! let key = Some(RequestKey::new("my-app", "message-7f3a")?);
//! handle.send(AppendMessage { user_id, chat_id, role: Role::User, content: "hi".into(), key }).await?;
//! let history = handle.send(GetHistory { user_id, chat_id, limit: None }).await?;
//! let report = handle.shutdown().await; // drain, then close the pool
//! # Ok(()) }
//! ```
//!
//! | actor | requests |
//! |---|---|
//! | `users` | [`GetUser`], [`CreateUser`], [`UpsertUser`], [`TouchUser`], [`RegisterUser`], [`EnsureUser`], [`BeginTurn`], [`BeginCommand`], [`EraseUser`] |
//! | `messages` | [`AppendMessage`], [`AppendTurn`], [`TurnOf`], [`GetHistory`], [`GetContext`], [`ClearHistory`], [`CountMessages`] |
//! | `user_settings` | [`GetSettings`], [`UpdateSettings`], [`SetSystemPrompt`] |
//! | `inbox` | [`RecordUpdate`], [`ClaimTurns`], [`FinishTurn`], [`RenewLeases`], [`ReleaseLeases`], [`PipelineDepth`] |
//! | `outbox` | [`ClaimSends`], [`RecordSend`] |
//! | system | [`Shutdown`], [`Stats`] |
//!
//! # Layout
//! One concept per file; the dependencies run one way (`builder` -> `handle` ->
//! `system` -> `endpoints` -> `actor` -> `gate`, `request`).
//! - `builder`: [`DbSystem`] and [`DbSystemBuilder`]: register tables, start one
//!   supervised actor per table and the system actor, hand back the handle.
//! - `handle`: what callers send through: [`DbHandle`] (routes by the request's
//!   table) and [`TableHandle`] (one table, checked at compile time).
//! - `endpoints`: each started table's actor address and gate, and the switch that
//!   closes them all; the handle sends through it, the system actor drains through it.
//! - `gate`: admission: the bound on an actor's pending requests, each user's share of
//!   it, and the shutdown switch ([`GateCounts`]).
//! - `actor/`: the per-table [`DbActor`]: its module doc walks a request from the
//!   mailbox to its transaction and back (lanes, batching, the engine, running work,
//!   answers, restart after a panic).
//! - `request`: what a request is ([`DbRequest`], [`Table`], [`BatchRunner`]); `batch`:
//!   running a batch safely ([`run_batch`], [`Ran`]); `once`: a request at most once
//!   under its key.
//! - the typed requests: `users`, `messages` (a dialogue's messages), `turns` (a bot's
//!   turn: [`BeginTurn`], [`AppendTurn`], [`TurnOf`]), `settings`, `commands`
//!   ([`BeginCommand`]).
//! - `system`: the [`SystemActor`]: [`Shutdown`] (drain, then close the pool) and
//!   [`Stats`]; `stats`: what each actor reports.
//! - `fault`: fault injection, test builds only.

mod actor;
mod batch;
mod builder;
mod commands;
mod endpoints;
#[cfg(feature = "fault-injection")]
pub mod fault;
mod gate;
mod handle;
mod messages;
mod once;
mod pipeline;
mod request;
mod settings;
mod stats;
mod system;
mod turns;
mod users;

pub use actor::{Answer, DbActor};
pub use batch::run as run_batch;
pub use builder::{DbSystem, DbSystemBuilder};
pub use commands::BeginCommand;
pub use gate::GateCounts;
pub use handle::{DbHandle, TableHandle};
pub use messages::{AppendMessage, ClearHistory, CountMessages, GetContext, GetHistory};
pub use pipeline::{
    ClaimSends, ClaimTurns, Depth, FinishTurn, Finished, Leased, PipelineDepth, RecordSend, RecordUpdate,
    ReleaseLeases, RenewLeases, Reply,
};
pub use request::{BatchRunner, DbRequest, Inbox, Messages, Outbox, Ran, Settings, Table, Users};
pub use settings::{GetSettings, SetSystemPrompt, UpdateSettings};
pub use stats::{ActorStats, Percentiles, SystemStats};
pub use system::{Shutdown, ShutdownReport, Stats, SystemActor};
pub(crate) use turns::budget_for;
pub use turns::{AppendTurn, BeginTurn, Begun, Turn, TurnOf};
pub use users::{
    CreateUser, EnsureUser, EraseUser, GetUser, RegisterUser, Registered, TouchUser, UpsertUser,
};
