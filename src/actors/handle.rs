//! The callers' handles on a started system: [`DbHandle`] (every table, routed by the
//! request's [`DbRequest::Table`] type; Shutdown and stats) and [`TableHandle`] (one
//! table, checked at compile time).
//!
//! Starting the actors is [`DbSystem`](crate::actors::DbSystem)'s; this file only
//! sends through what was started: a request is admitted at its table's gate and put
//! in its actor's mailbox (`endpoints`), Shutdown and stats go to the system actor.

use std::future::Future;
use std::sync::Arc;

use actix::prelude::*;

use crate::actors::endpoints::{Endpoint, Endpoints};
use crate::actors::request::{DbRequest, Table};
use crate::actors::stats::SystemStats;
use crate::actors::system::{Shutdown, ShutdownReport, Stats, SystemActor};
use crate::db::Database;
use crate::error::{Error, Result};

#[cfg(feature = "fault-injection")]
use crate::actors::fault::Faults;

/// What every clone of a [`DbHandle`] shares.
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
    /// The handle on a started system (`DbSystemBuilder::start`).
    pub(crate) fn new(
        db: Database,
        endpoints: Arc<Endpoints>,
        system: Addr<SystemActor>,
        #[cfg(feature = "fault-injection")] faults: Faults,
    ) -> Self {
        DbHandle {
            inner: Arc::new(Inner {
                db,
                endpoints,
                system,
                #[cfg(feature = "fault-injection")]
                faults,
            }),
        }
    }

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
