//! Starting the actors ([`DbSystem::start`], [`DbSystem::builder`]) and the handles
//! callers use ([`DbHandle`], [`TableHandle`]).
//!
//! Every table, botdb's and the application's, is registered the same way: the builder
//! starts one supervised [`DbActor`] per table, each with its admission [`Gate`], and
//! the handle routes a request to its table's actor by the request's
//! [`DbRequest::Table`] type.

use std::any::{Any, TypeId};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix::prelude::*;
use futures::FutureExt;
use futures::future::LocalBoxFuture;

use crate::actors::actor::DbActor;
use crate::actors::actor::mailbox::{Drain, Snapshot};
use crate::actors::actor::retry::LockRetry;
use crate::actors::actor::work::Env;
use crate::actors::gate::Gate;
use crate::actors::request::{DbRequest, Messages, Settings, Table, Users};
use crate::actors::stats::{ActorStats, SystemStats};
use crate::actors::system::{Shutdown, ShutdownReport, Stats, SystemActor};
use crate::config::ActorConfig;
use crate::db::Database;
use crate::error::{Error, Result};

#[cfg(feature = "fault-injection")]
use crate::actors::fault::Faults;

/// One table's actor and its admission gate.
pub(crate) struct Endpoint<T: Table> {
    pub(crate) addr: Addr<DbActor<T>>,
    pub(crate) gate: Arc<Gate>,
}

impl<T: Table> Clone for Endpoint<T> {
    fn clone(&self) -> Self {
        Endpoint {
            addr: self.addr.clone(),
            gate: self.gate.clone(),
        }
    }
}

impl<T: Table> Endpoint<T> {
    /// Admits `msg` at the gate and puts it in the mailbox now; the future answers it.
    fn send<M: DbRequest<Table = T>>(
        &self,
        msg: M,
    ) -> impl Future<Output = Result<M::Output>> + Send + 'static {
        let request = self.gate.admit(msg.user_id()).map(|()| self.addr.send(msg));
        async move {
            match request?.await {
                Ok(answer) => answer,
                Err(MailboxError::Closed) => Err(Error::ShuttingDown),
                Err(MailboxError::Timeout) => Err(Error::Internal("the actor did not answer".into())),
            }
        }
    }
}

/// What the system actor needs of any table's endpoint, whatever its table type.
pub(crate) trait AnyEndpoint: Send + Sync + 'static {
    fn gate(&self) -> &Arc<Gate>;
    /// Answers once every request the actor admitted has been answered.
    fn drain(&self) -> LocalBoxFuture<'static, ()>;
    /// The actor's stats (`None` if it is gone).
    fn snapshot(&self) -> LocalBoxFuture<'static, Option<ActorStats>>;
    fn as_any(&self) -> &dyn Any;
}

impl<T: Table> AnyEndpoint for Endpoint<T> {
    fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    fn drain(&self) -> LocalBoxFuture<'static, ()> {
        self.addr.send(Drain).map(|_| ()).boxed_local()
    }

    fn snapshot(&self) -> LocalBoxFuture<'static, Option<ActorStats>> {
        self.addr.send(Snapshot).map(Result::ok).boxed_local()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The started tables' endpoints, in registration order, and the shutdown switch.
pub(crate) struct Endpoints {
    tables: Vec<(TypeId, Box<dyn AnyEndpoint>)>,
    closed: AtomicBool,
}

impl Endpoints {
    /// The endpoint of table `T`, if it was registered. A linear scan: a system has a
    /// handful of tables, fewer than a hash would pay for.
    fn get<T: Table>(&self) -> Option<&Endpoint<T>> {
        let wanted = TypeId::of::<T>();
        self.tables
            .iter()
            .find(|(id, _)| *id == wanted)
            .and_then(|(_, e)| e.as_any().downcast_ref::<Endpoint<T>>())
    }

    pub(crate) fn all(&self) -> impl Iterator<Item = &dyn AnyEndpoint> {
        self.tables.iter().map(|(_, e)| &**e)
    }

    /// Refuses every later request, on every table.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        for e in self.all() {
            e.gate().close();
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

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

    /// Registers botdb's three tables: [`Users`], [`Messages`], [`Settings`].
    pub fn botdb_tables(self) -> Self {
        self.table::<Users>().table::<Messages>().table::<Settings>()
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
        let endpoints = Arc::new(Endpoints {
            tables: tables
                .into_iter()
                .map(|(id, _, start)| (id, start(&env)))
                .collect(),
            closed: AtomicBool::new(false),
        });
        let system = {
            let (db, endpoints) = (db.clone(), endpoints.clone());
            Supervisor::start(move |_| SystemActor::new(db, endpoints, config.drain_timeout))
        };
        DbHandle {
            inner: Arc::new(Inner {
                db,
                endpoints,
                system,
                #[cfg(feature = "fault-injection")]
                faults: env.faults,
            }),
        }
    }
}

struct Inner {
    db: Database,
    endpoints: Arc<Endpoints>,
    system: Addr<SystemActor>,
    #[cfg(feature = "fault-injection")]
    faults: Faults,
}

/// The callers' handle on botdb's actors. Cheap to clone (one `Arc`), `Send + Sync`:
/// keep it in `web::Data` for actix-web handlers, or in a field of your own actors.
#[derive(Clone)]
pub struct DbHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DbHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbHandle")
            .field("db", &self.inner.db)
            .finish_non_exhaustive()
    }
}

impl DbHandle {
    /// Sends a request to its table's actor and returns its answer.
    ///
    /// The request is admitted and put in the actor's mailbox when `send` is called, not
    /// when the returned future is first polled: requests of one user sent one after the
    /// other run in that order even if their futures are awaited together.
    ///
    /// # Errors
    /// [`Error::ShuttingDown`] at once after Shutdown began; [`Error::Overloaded`] at once
    /// when the actor already holds its bound of pending requests;
    /// [`Error::TableNotRegistered`] when the request's table has no actor (a
    /// [`TableHandle`] checks that once, up front); otherwise the request's own outcome
    /// ([`Error::Internal`] if its handler panicked).
    pub fn send<M: DbRequest>(&self, msg: M) -> impl Future<Output = Result<M::Output>> + Send + 'static {
        let request = match self.inner.endpoints.get::<M::Table>() {
            Some(endpoint) => Ok(endpoint.send(msg)),
            None => Err(Error::TableNotRegistered {
                table: <M::Table as Table>::NAME,
            }),
        };
        async move { request?.await }
    }

    /// A handle on table `T` alone: its `send` accepts only `T`'s requests (another
    /// table's is a compile error), and never fails for want of an actor.
    ///
    /// # Errors
    /// [`Error::TableNotRegistered`] when `T` was not registered.
    pub fn table<T: Table>(&self) -> Result<TableHandle<T>> {
        match self.inner.endpoints.get::<T>() {
            Some(endpoint) => Ok(TableHandle {
                endpoint: endpoint.clone(),
                handle: self.clone(),
            }),
            None => Err(Error::TableNotRegistered { table: T::NAME }),
        }
    }

    /// `true` when table `T` has an actor in this system.
    pub fn serves<T: Table>(&self) -> bool {
        self.inner.endpoints.get::<T>().is_some()
    }

    /// Shuts the actors down (the system-level [`Shutdown`] message): refuses every later
    /// request, waits for every accepted one to be answered (at most the drain timeout),
    /// then closes the pool. Calling it again returns the same report.
    pub async fn shutdown(&self) -> ShutdownReport {
        match self.inner.system.send(Shutdown).await {
            Ok(report) => report,
            Err(_) => ShutdownReport::system_gone(),
        }
    }

    /// Every actor's counters and the pool's state (the [`Stats`] message).
    ///
    /// # Errors
    /// [`Error::Internal`] if the system actor is gone (its actix `System` stopped).
    pub async fn stats(&self) -> Result<SystemStats> {
        self.inner
            .system
            .send(Stats)
            .await
            .map_err(|e| Error::Internal(format!("system actor: {e}")))
    }

    /// The system actor, for sending [`Shutdown`] or [`Stats`] from other actors.
    pub fn system(&self) -> Addr<SystemActor> {
        self.inner.system.clone()
    }

    /// The database the actors use.
    pub fn database(&self) -> &Database {
        &self.inner.db
    }

    /// `true` once Shutdown began.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.endpoints.is_closed()
    }

    /// The fault switches (test builds only).
    #[cfg(feature = "fault-injection")]
    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }
}

/// A [`DbHandle`] narrowed to one table `T` ([`DbHandle::table`]): sending another
/// table's request through it does not compile.
///
/// ```compile_fail
/// # async fn f(h: botdb::actors::DbHandle) -> botdb::Result<()> {
/// use botdb::actors::{GetUser, Messages};
/// let messages = h.table::<Messages>()?;
/// messages.send(GetUser { user_id: 1 }).await?; // GetUser is the users table's
/// # Ok(()) }
/// ```
pub struct TableHandle<T: Table> {
    endpoint: Endpoint<T>,
    handle: DbHandle,
}

impl<T: Table> Clone for TableHandle<T> {
    fn clone(&self) -> Self {
        TableHandle {
            endpoint: self.endpoint.clone(),
            handle: self.handle.clone(),
        }
    }
}

impl<T: Table> std::fmt::Debug for TableHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableHandle")
            .field("table", &T::NAME)
            .finish_non_exhaustive()
    }
}

impl<T: Table> TableHandle<T> {
    /// Sends a request of table `T` to its actor; as [`DbHandle::send`].
    ///
    /// # Errors
    /// As [`DbHandle::send`], never [`Error::TableNotRegistered`].
    pub fn send<M: DbRequest<Table = T>>(
        &self,
        msg: M,
    ) -> impl Future<Output = Result<M::Output>> + Send + 'static {
        self.endpoint.send(msg)
    }

    /// The whole system's handle (other tables, Shutdown, stats).
    pub fn system(&self) -> &DbHandle {
        &self.handle
    }
}
