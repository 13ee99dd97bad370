//! Starting the actors ([`DbSystem::start`]) and the handle callers use ([`DbHandle`]).

use std::future::Future;
use std::sync::Arc;

use actix::prelude::*;

use crate::actors::actor::{DbActor, Env, LockRetry};
use crate::actors::gate::Gate;
use crate::actors::request::{DbRequest, Messages, Settings, Table, Users, sealed::Sealed};
use crate::actors::stats::SystemStats;
use crate::actors::system::{Shutdown, ShutdownReport, Stats, SystemActor};
use crate::config::ActorConfig;
use crate::db::Database;
use crate::error::{Error, Result};

#[cfg(feature = "fault-injection")]
use crate::actors::fault::Faults;

/// One table's actor and its admission gate.
#[doc(hidden)]
pub struct Endpoint<T: Table> {
    pub(crate) addr: Addr<DbActor<T>>,
    pub(crate) gate: Arc<Gate>,
}

/// The three table actors.
#[doc(hidden)]
pub struct Endpoints {
    pub(crate) users: Endpoint<Users>,
    pub(crate) messages: Endpoint<Messages>,
    pub(crate) settings: Endpoint<Settings>,
}

impl Endpoints {
    pub(crate) fn gates(&self) -> [&Arc<Gate>; 3] {
        [&self.users.gate, &self.messages.gate, &self.settings.gate]
    }
}

/// Starts botdb's actors.
#[derive(Debug)]
pub struct DbSystem;

impl DbSystem {
    /// Starts one supervised actor per table (users, messages, user_settings), each
    /// owning a clone of `db`'s pool, plus the system actor that handles
    /// [`Shutdown`] and [`Stats`], on the current actix arbiter. Must be called inside a
    /// running actix `System` (e.g. in `#[actix_web::main]` or `System::new().block_on`).
    pub fn start(db: Database, config: ActorConfig) -> DbHandle {
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
        fn endpoint<T: Table>(env: &Env, config: &ActorConfig) -> Endpoint<T> {
            let gate = Arc::new(Gate::new(
                T::NAME,
                config.max_pending,
                config.max_pending_per_user,
            ));
            let (env, actor_gate, config) = (env.clone(), gate.clone(), *config);
            let addr = Supervisor::start(move |_| DbActor::<T>::new(env, actor_gate, config));
            Endpoint { addr, gate }
        }
        let endpoints = Arc::new(Endpoints {
            users: endpoint(&env, &config),
            messages: endpoint(&env, &config),
            settings: endpoint(&env, &config),
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
    /// when the actor already holds its bound of pending requests; otherwise the
    /// request's own outcome ([`Error::Internal`] if its handler panicked).
    pub fn send<M: DbRequest>(&self, msg: M) -> impl Future<Output = Result<M::Output>> + Send + 'static {
        let endpoint = <M::Table as Sealed>::endpoint(&self.inner.endpoints);
        let request = endpoint
            .gate
            .admit(msg.user_id())
            .map(|()| endpoint.addr.send(msg));
        async move {
            match request?.await {
                Ok(answer) => answer,
                Err(MailboxError::Closed) => Err(Error::ShuttingDown),
                Err(MailboxError::Timeout) => Err(Error::Internal("the actor did not answer".into())),
            }
        }
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
        self.inner.endpoints.users.gate.is_closed()
    }

    /// The fault switches (test builds only).
    #[cfg(feature = "fault-injection")]
    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }
}
