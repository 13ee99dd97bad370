//! What the actor does with each message it receives: a request is filed in its user's
//! lane (never run here, so the mailbox is never blocked); [`Drain`] waits until every
//! admitted request was answered; [`Snapshot`] reports the actor's stats.
//!
//! A panic while filing a request (actix has no `catch_unwind`) is caught here,
//! answered with [`Error::Internal`](crate::Error::Internal) to that request only, and
//! the actor is restarted.

use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::time::Instant;

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::field::Empty;

use crate::actors::actor::DbActor;
use crate::actors::actor::answer::{Answer, Caller, ReplySlot};
use crate::actors::actor::lanes::Job;
use crate::actors::actor::work::{Request, panicked};
use crate::actors::request::{DbRequest, Table};
use crate::actors::stats::ActorStats;

/// Answers once every admitted request of this actor has been answered.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Drain;

/// This actor's stats.
#[derive(Message)]
#[rtype(result = "ActorStats")]
pub(crate) struct Snapshot;

impl<M> Handler<M> for DbActor<M::Table>
where
    M: DbRequest,
{
    type Result = Answer<M::Output>;

    fn handle(&mut self, msg: M, ctx: &mut Context<Self>) -> Self::Result {
        let user = msg.user_id();
        let slot: ReplySlot<M::Output> = Rc::new(Cell::new(None));
        let filed = std::panic::catch_unwind(AssertUnwindSafe(|| {
            #[cfg(feature = "fault-injection")]
            if self.env.faults.take_handler_panic(user) {
                panic!(
                    "injected panic in the {} actor's handler (user {user})",
                    M::Table::NAME
                );
            }
            let request = Request {
                msg,
                caller: Caller {
                    user,
                    reply: slot.clone(),
                    span: tracing::debug_span!(
                        "botdb.request",
                        actor = M::Table::NAME,
                        request = M::NAME,
                        user_id = user,
                        outcome = Empty,
                        ms = Empty,
                        split = Empty,
                        lock_retries = Empty,
                        timeout = Empty,
                    ),
                    accepted_at: Instant::now(),
                },
            };
            #[cfg(feature = "fault-injection")]
            let armed = self.env.faults.armed_for(user);
            #[cfg(not(feature = "fault-injection"))]
            let armed = false;
            let job = match M::batch_runner() {
                // A request armed with a test fault runs alone, so the fault hits it only.
                Some(runner) if self.config.batch_max > 1 && !armed => {
                    Job::Batchable(Box::new((request, runner)))
                }
                _ => Job::Alone(request.run_alone(&self.env)),
            };
            self.accept(user, job);
        }));
        match filed {
            Ok(()) => Answer::later(slot),
            Err(_) => {
                // Admitted but never filed: answer it here and give its place back.
                self.gate.release(user);
                self.stats.failed += 1;
                self.restart_after_panic(ctx);
                self.wake_drains();
                Answer::now(Err(panicked::<M>()))
            }
        }
    }
}

impl<T: Table> Handler<Drain> for DbActor<T> {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Drain, _: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.drain_waiters.push(tx);
        self.wake_drains();
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

impl<T: Table> Handler<Snapshot> for DbActor<T> {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _: Snapshot, _: &mut Context<Self>) -> Self::Result {
        let mut stats = self.stats.clone();
        stats.queued = self.lanes.queued() + self.pending.len();
        stats.in_flight = self.lanes.users();
        stats.active_users = self.lanes.users();
        stats.gate = self.gate.counts();
        stats.latency = self.latency.percentiles();
        stats.run_latency = self.run_latency.percentiles();
        MessageResult(stats)
    }
}
