//! The started tables: each table's actor address and admission [`Gate`] (an
//! [`Endpoint`]), and the set of them a system serves ([`Endpoints`]), with the switch
//! that closes every gate at once.
//!
//! Its own file because both sides of a system use it and neither owns it: the
//! [`DbHandle`](crate::actors::DbHandle) routes requests through it, and the
//! [`SystemActor`](crate::actors::SystemActor) drains and counts through it. Kept apart
//! from both, the dependencies run one way: the handle on the system actor, both on
//! this file, and this file on neither (when it lived in the handle's file, the handle
//! and the system actor each needed the other).

use std::any::{Any, TypeId};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use actix::prelude::*;
use futures::FutureExt;
use futures::future::LocalBoxFuture;

use crate::actors::actor::DbActor;
use crate::actors::actor::mailbox::{Drain, Snapshot};
use crate::actors::gate::Gate;
use crate::actors::request::{DbRequest, Table};
use crate::actors::stats::ActorStats;
use crate::error::{Error, Result};

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
    pub(crate) fn send<M: DbRequest<Table = T>>(
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
    /// The endpoints of a system's tables, by table type, none of them closed.
    pub(crate) fn new(tables: Vec<(TypeId, Box<dyn AnyEndpoint>)>) -> Self {
        Endpoints {
            tables,
            closed: AtomicBool::new(false),
        }
    }

    /// The endpoint of table `T`, if it was registered. A linear scan: a system has a
    /// handful of tables, fewer than a hash would pay for.
    pub(crate) fn get<T: Table>(&self) -> Option<&Endpoint<T>> {
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

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}
