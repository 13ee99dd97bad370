//! [`DbActor`]: one table's actor. It owns a pool handle and runs requests serially per
//! user and concurrently across users, batching what it can.
//!
//! # How a request moves
//! 1. The caller's [`DbHandle`](crate::actors::DbHandle) admits it at the table's gate
//!    and puts it in the mailbox (unbounded: the gate bounds it).
//! 2. `handle` (`mailbox.rs`) turns it into a job. If the user has no job running, the
//!    job is ready at once; otherwise it waits in that user's queue (a lane,
//!    `lanes.rs`). The mailbox is never blocked: `handle` only files the job.
//! 3. A ready job of a batchable request ([`DbRequest::batch_runner`]) joins the
//!    actor's pending batch of its type (`batching.rs`); others start at once
//!    (`work.rs`). At the end of the actor's turn (after the mailbox was emptied, before
//!    anything waits), each pending batch is launched as one unit of work: appends of
//!    many users in one multi-row INSERT (one commit, one WAL flush), history of many
//!    users in one query. Only what is already queued is batched, so an idle system
//!    adds no latency; a batch of one runs as the single request. While
//!    `batch_in_flight` batches of a type run, new ready requests of that type gather
//!    for the next batch, which goes as soon as one of them finishes (group commit: the
//!    busier, the larger the batches).
//! 4. Running work lives in one `FuturesUnordered` that the actor owns, driven by an
//!    engine future in the actor's context with direct access to the actor
//!    (`engine.rs`): work is first polled in the turn it was launched, a wake-up polls
//!    only what is ready, and completions update the actor right there (no message, no
//!    extra task). The work lives in the actor, not the context, so a supervised
//!    restart (which clears the context) keeps it; the restarted actor's new engine
//!    drives it on. A request that waited too long for a lock runs again after a
//!    back-off (`retry.rs`).
//! 5. Finished work answers each caller through actix's own reply channel
//!    (`answer.rs`); the actor releases the gate, readies each user's next job or drops
//!    the user's lane (an idle user costs no memory), and wakes a waiting drain.
//!
//! # Panics
//! actix has no `catch_unwind`: a panic in a handler would kill the actor for good. A
//! panic in `handle` or in a request is caught, answered with [`Error::Internal`] to
//! that request only (requests armed with a test fault run alone), and the actor is
//! stopped so its `Supervisor` restarts it; queued and running requests of other users
//! carry on.
//!
//! # Layout
//! This file holds the actor's state and its bookkeeping (a job filed, readied,
//! finished). The other files hold one part each and do not depend on this one, except
//! `engine` and `mailbox`, the actor's own impls, which nothing here depends on:
//! - `answer`: the caller, the reply slot, the handler's [`Answer`], a request's end;
//! - `retry`: retries after a lock timeout, one policy for a system's actors;
//! - `work`: a unit of running work, and a request run alone;
//! - `batching`: pending batches by type, launched when due;
//! - `lanes`: each user's waiting jobs, in order;
//! - `engine`: the [`Actor`] and [`Supervised`] impls and the engine driving the work;
//! - `mailbox`: the handlers: a request filed, [`Drain`](mailbox::Drain),
//!   [`Snapshot`](mailbox::Snapshot).
//!
//! [`DbRequest::batch_runner`]: crate::actors::DbRequest::batch_runner
//! [`Error::Internal`]: crate::Error::Internal

mod answer;
mod batching;
mod engine;
mod lanes;
pub(super) mod mailbox;
pub(super) mod retry;
pub(super) mod work;

use std::marker::PhantomData;
use std::sync::Arc;
use std::task::Context as TaskContext;
use std::time::Instant;

use actix::prelude::*;
use futures::stream::FuturesUnordered;
use tokio::sync::oneshot;

pub use crate::actors::actor::answer::Answer;
use crate::actors::actor::answer::{Finished, Outcome};
use crate::actors::actor::batching::Pending;
use crate::actors::actor::lanes::{Job, Lanes};
use crate::actors::actor::work::{Env, Work};
use crate::actors::gate::Gate;
use crate::actors::request::Table;
use crate::actors::stats::{ActorStats, Latency};
use crate::config::ActorConfig;
use crate::error::TimeoutKind;

/// The actor serving table `T`.
pub struct DbActor<T: Table> {
    env: Env,
    gate: Arc<Gate>,
    config: ActorConfig,
    /// Each user's waiting jobs, for users with a request running or batching.
    lanes: Lanes,
    /// Work in progress (single requests and batches).
    running: FuturesUnordered<Work>,
    /// Ready requests of batchable types, by type, until they are launched.
    pending: Pending,
    drain_waiters: Vec<oneshot::Sender<()>>,
    stats: ActorStats,
    latency: Latency,
    run_latency: Latency,
    _table: PhantomData<T>,
}

impl<T: Table> DbActor<T> {
    pub(crate) fn new(env: Env, gate: Arc<Gate>, config: ActorConfig) -> Self {
        DbActor {
            env,
            gate,
            config,
            lanes: Lanes::default(),
            running: FuturesUnordered::new(),
            pending: Pending::new(&config),
            drain_waiters: Vec::new(),
            stats: ActorStats {
                actor: T::NAME,
                ..ActorStats::default()
            },
            latency: Latency::default(),
            run_latency: Latency::default(),
            _table: PhantomData,
        }
    }

    /// Files a job: ready now if its user is idle, else queued behind the user's
    /// running request.
    fn accept(&mut self, user: i64, job: Job) {
        if let Some(job) = self.lanes.file(user, job) {
            self.ready(job);
        }
        self.stats.peak_users_in_flight = self.stats.peak_users_in_flight.max(self.lanes.users());
        self.stats.peak_pending = self
            .stats
            .peak_pending
            .max(self.lanes.users() + self.lanes.queued());
    }

    /// A job whose user has nothing else running: start it, or add it to its batch.
    fn ready(&mut self, job: Job) {
        match job {
            Job::Alone(work) => self.running.push(work),
            Job::Batchable(request) => self.pending.push(request),
        }
    }

    /// Launches the pending batches that are due (see [`Pending::flush`]), counting
    /// those of more than one request.
    fn flush(&mut self, task: &mut TaskContext<'_>) {
        let draining = self.gate.is_closed();
        let (stats, running) = (&mut self.stats, &mut self.running);
        self.pending
            .flush(draining, T::NAME, &self.env, task, |work, size| {
                if size > 1 {
                    stats.batches += 1;
                    stats.batched_requests += size as u64;
                    stats.largest_batch = stats.largest_batch.max(size);
                }
                running.push(work);
            });
    }

    /// A request ended: account for it, ready its user's next job or drop the lane.
    /// Returns `true` when it panicked (the caller restarts the actor).
    fn finished(&mut self, done: Finished) -> bool {
        self.gate.release(done.user);
        let now = Instant::now();
        self.latency.record(now - done.accepted_at);
        self.run_latency.record(now - done.started_at);
        match done.outcome {
            Outcome::Ok => self.stats.completed += 1,
            Outcome::Err | Outcome::Panicked => self.stats.failed += 1,
        }
        self.stats.lock_retries += u64::from(done.lock_retries);
        match done.timeout {
            Some(TimeoutKind::Lock) => self.stats.lock_timeouts += 1,
            Some(TimeoutKind::Statement) => self.stats.statement_timeouts += 1,
            Some(_) => self.stats.idle_in_transaction_timeouts += 1,
            None => {}
        }
        if let Some(next) = self.lanes.next(done.user) {
            self.ready(next);
        }
        done.outcome == Outcome::Panicked
    }

    /// Answers waiting drains once nothing admitted is left unanswered.
    fn wake_drains(&mut self) {
        if self.gate.pending() == 0 {
            for waiter in self.drain_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }

    /// Counts a panic and has the supervisor restart the actor. Running work and
    /// queued jobs live in `self`, which the restart keeps: only the request that
    /// panicked fails.
    fn restart_after_panic(&mut self, ctx: &mut Context<Self>) {
        self.stats.panicked += 1;
        tracing::error!(actor = T::NAME, "a request panicked; restarting the actor");
        ctx.stop();
    }
}
