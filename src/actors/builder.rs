//! Starting the actors: [`DbSystem::start`] (botdb's tables) and
//! [`DbSystem::builder`] (any registered tables, the application's too).
//!
//! Every table, botdb's and the application's, is registered the same way: the builder
//! starts one supervised [`DbActor`] per table, each with its admission [`Gate`], then
//! the [`SystemActor`] over all of them, and returns the [`DbHandle`] that routes a
//! request to its table's actor by the request's [`DbRequest::Table`] type.
//!
//! [`DbRequest::Table`]: crate::actors::DbRequest::Table

use std::any::TypeId;
use std::sync::Arc;

use actix::prelude::*;

use crate::actors::actor::DbActor;
use crate::actors::actor::retry::LockRetry;
use crate::actors::actor::work::Env;
use crate::actors::endpoints::{AnyEndpoint, Endpoint, Endpoints};
use crate::actors::gate::Gate;
use crate::actors::handle::DbHandle;
use crate::actors::request::{Inbox, Messages, Outbox, Settings, Table, Users};
use crate::actors::system::SystemActor;
use crate::config::ActorConfig;
use crate::db::Database;

#[cfg(feature = "fault-injection")]
use crate::actors::fault::Faults;

/// Starts botdb's actors.
#[derive(Debug)]
pub struct DbSystem;

impl DbSystem {
    /// Starts one supervised actor per botdb table (users, messages, user_settings),
    /// each owning a clone of `db`'s pool, plus the system actor that handles
    /// [`Shutdown`] and [`Stats`], on the current actix arbiter. Must be called inside a
    /// running actix `System` (e.g. in `#[actix_web::main]` or `System::new().block_on`).
    ///
    /// The same as `DbSystem::builder(db, config).botdb_tables().start()`; see
    /// [`DbSystem::builder`] to add the application's own tables.
    ///
    /// [`Shutdown`]: crate::actors::Shutdown
    /// [`Stats`]: crate::actors::Stats
    pub fn start(db: Database, config: ActorConfig) -> DbHandle {
        Self::builder(db, config).botdb_tables().start()
    }

    /// A system with the tables you register: botdb's ([`DbSystemBuilder::botdb_tables`])
    /// and your own ([`DbSystemBuilder::table`]), all served the same way (serial per
    /// user, concurrent across users, bounded admission, restart after a panic, spans,
    /// stats, optional batching, drained by one [`Shutdown`] before the pool closes).
    ///
    /// ```no_run
    /// # use botdb::actors::{DbSystem, Table};
    /// # struct Reminders;
    /// # impl Table for Reminders { const NAME: &'static str = "reminders"; }
    /// # fn f(db: botdb::Database) {
    /// let handle = DbSystem::builder(db, Default::default())
    ///     .botdb_tables()
    ///     .table::<Reminders>()
    ///     .start();
    /// # }
    /// ```
    ///
    /// [`Shutdown`]: crate::actors::Shutdown
    pub fn builder(db: Database, config: ActorConfig) -> DbSystemBuilder {
        DbSystemBuilder {
            db,
            config,
            tables: Vec::new(),
        }
    }
}

type Starter = Box<dyn FnOnce(&Env) -> Box<dyn AnyEndpoint>>;

/// Registers the tables a [`DbHandle`] serves ([`DbSystem::builder`]).
#[must_use = "nothing starts until `start` is called"]
pub struct DbSystemBuilder {
    db: Database,
    config: ActorConfig,
    tables: Vec<(TypeId, &'static str, Starter)>,
}

impl std::fmt::Debug for DbSystemBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbSystemBuilder")
            .field("config", &self.config)
            .field(
                "tables",
                &self.tables.iter().map(|(_, name, _)| name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl DbSystemBuilder {
    /// Registers table `T`, served under the system's [`ActorConfig`]. Registering a
    /// table again replaces the earlier registration.
    pub fn table<T: Table>(self) -> Self {
        let config = self.config;
        self.table_with::<T>(config)
    }

    /// Registers table `T` with its own bounds, batching and drain settings.
    pub fn table_with<T: Table>(mut self, config: ActorConfig) -> Self {
        self.tables.retain(|(id, _, _)| *id != TypeId::of::<T>());
        let start: Starter = Box::new(move |env: &Env| {
            let gate = Arc::new(Gate::new(
                T::NAME,
                config.max_pending,
                config.max_pending_per_user,
            ));
            let (env, actor_gate) = (env.clone(), gate.clone());
            let addr = Supervisor::start(move |_| DbActor::<T>::new(env, actor_gate, config));
            Box::new(Endpoint::<T> { addr, gate })
        });
        self.tables.push((TypeId::of::<T>(), T::NAME, start));
        self
    }

    /// Registers botdb's tables: [`Users`], [`Messages`], [`Settings`], and the turn
    /// pipeline's [`Inbox`] and [`Outbox`] (idle unless a bot answers through Telegram's
    /// Bot API).
    pub fn botdb_tables(self) -> Self {
        self.table::<Users>()
            .table::<Messages>()
            .table::<Settings>()
            .table::<Inbox>()
            .table::<Outbox>()
    }

    /// Starts the registered tables' actors and the system actor, on the current actix
    /// arbiter (inside a running actix `System`).
    pub fn start(self) -> DbHandle {
        let DbSystemBuilder { db, config, tables } = self;
        // Retries after a lock timeout share one budget of connections across the
        // actors: a quarter of the pool unless configured.
        let retry_connections = match config.lock_retry_connections {
            0 => (db.pool().options().get_max_connections() as usize / 4).max(1),
            n => n,
        };
        let env = Env {
            db: db.clone(),
            retry: LockRetry::new(config.lock_wait, retry_connections),
            #[cfg(feature = "fault-injection")]
            faults: Faults::default(),
        };
        let endpoints = Arc::new(Endpoints::new(
            tables
                .into_iter()
                .map(|(id, _, start)| (id, start(&env)))
                .collect(),
        ));
        let system = {
            let (db, endpoints) = (db.clone(), endpoints.clone());
            Supervisor::start(move |_| SystemActor::new(db, endpoints, config.drain_timeout))
        };
        DbHandle::new(
            db,
            endpoints,
            system,
            #[cfg(feature = "fault-injection")]
            env.faults,
        )
    }
}
