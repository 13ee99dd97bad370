//! Supervision and the engine: the [`Actor`] and [`Supervised`] impls of [`DbActor`],
//! and the engine future they spawn in the actor's context to drive its running work.
//!
//! The engine is polled right after the mailbox on every turn, with the actor at hand:
//! work is first polled in the turn it was launched, a wake-up polls only what is
//! ready, and completions update the actor right there (no message, no extra task).
//! The work lives in the actor, not the context, so a supervised restart (which clears
//! the context and drops the engine) keeps it; `started` spawns a new engine that
//! drives it on.

use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use actix::fut::ActorFuture;
use actix::prelude::*;
use futures::stream::StreamExt;

use crate::actors::actor::DbActor;
use crate::actors::actor::work::Completed;
use crate::actors::request::Table;

/// Completions the engine handles before it lets other work of the thread run.
const ENGINE_BUDGET: usize = 128;

/// Drives an actor's running work, inside the actor's context: polled right after the
/// mailbox on every turn, with the actor at hand.
struct Engine<T: Table>(PhantomData<T>);

impl<T: Table> ActorFuture<DbActor<T>> for Engine<T> {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut DbActor<T>,
        ctx: &mut Context<DbActor<T>>,
        task: &mut TaskContext<'_>,
    ) -> Poll<()> {
        for _ in 0..ENGINE_BUDGET {
            act.flush(task);
            match act.running.poll_next_unpin(task) {
                Poll::Ready(Some(Completed::One(done))) => {
                    if act.finished(done) {
                        act.restart_after_panic(ctx);
                    }
                }
                Poll::Ready(Some(Completed::Many { done, split })) => {
                    // One panic per batch, however many requests it failed.
                    let mut panicked = false;
                    for done in done {
                        panicked |= act.finished(done);
                    }
                    act.stats.batch_splits += split.len() as u64;
                    for work in split {
                        act.running.push(work);
                    }
                    if panicked {
                        act.restart_after_panic(ctx);
                    }
                }
                // Nothing ready (or nothing running): the work's wakers, the mailbox or
                // the batch timer wake the actor again.
                Poll::Ready(None) | Poll::Pending => {
                    act.wake_drains();
                    return Poll::Pending;
                }
            }
            act.wake_drains();
        }
        // Let the rest of the thread run; come back at once.
        task.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<T: Table> Actor for DbActor<T> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // The gate bounds what is in the mailbox; the mailbox itself must never make a
        // sender wait (actix's default of 16 would).
        ctx.set_mailbox_capacity(0);
        // Also after a restart, which dropped the previous engine with the context: the
        // work itself is in `self` and carries on.
        ctx.spawn(Engine::<T>(PhantomData));
    }
}

impl<T: Table> Supervised for DbActor<T> {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.stats.restarts += 1;
        tracing::warn!(
            actor = T::NAME,
            restarts = self.stats.restarts,
            "actor restarted by its supervisor"
        );
    }
}
