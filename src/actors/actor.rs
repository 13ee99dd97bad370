//! [`DbActor`]: one table's actor. It owns a pool handle and runs requests serially per
//! user and concurrently across users.
//!
//! # How a request moves
//! 1. The caller's [`DbHandle`](crate::actors::DbHandle) admits it at the table's gate
//!    and puts it in the mailbox (unbounded: the gate bounds it).
//! 2. `handle` turns it into a job. If the user has no job running, the job starts at
//!    once; otherwise it waits in that user's queue (a lane). The mailbox is never
//!    blocked: `handle` only files the job.
//! 3. A job runs as a task of its own on the actor's arbiter (not inside the actor's
//!    context: a restart or stop of the actor never drops running work, and the
//!    context is not re-polled for every job). It answers the caller, then tells the
//!    actor with a [`Done`] message.
//! 4. On `Done` the actor releases the gate, starts the user's next job or drops the
//!    user's lane (an idle user costs no memory), and wakes a waiting drain.
//!
//! # Panics
//! actix has no `catch_unwind`: a panic in a handler would kill the actor for good. A
//! panic in `handle` or in a job is caught, answered with [`Error::Internal`] to that
//! request only, and the actor is stopped so its `Supervisor` restarts it; queued and
//! running requests of other users carry on.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use futures::FutureExt;
use futures::future::LocalBoxFuture;
use tokio::sync::oneshot;
use tracing::Instrument;
use tracing::field::Empty;

use crate::actors::gate::Gate;
use crate::actors::request::{DbRequest, Table};
use crate::actors::stats::{ActorStats, Latency};
use crate::db::Database;
use crate::error::{Error, Result};

#[cfg(feature = "fault-injection")]
use crate::actors::fault::Faults;

/// How a job ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    Err,
    Panicked,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Err => "error",
            Outcome::Panicked => "panic",
        }
    }
}

/// A request filed by `handle`, ready to run.
struct Job {
    user: i64,
    name: &'static str,
    accepted_at: Instant,
    run: Box<dyn FnOnce(Database) -> LocalBoxFuture<'static, Outcome>>,
}

/// A job finished (sent by the job's task to its actor).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Done {
    user: i64,
    outcome: Outcome,
    accepted_at: Instant,
    started_at: Instant,
}

/// Answers once every admitted request of this actor has been answered.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Drain;

/// This actor's stats.
#[derive(Message)]
#[rtype(result = "ActorStats")]
pub(crate) struct Snapshot;

/// The actor serving table `T`.
pub struct DbActor<T: Table> {
    db: Database,
    gate: Arc<Gate>,
    /// One entry per user with a job running; the deque holds that user's waiting jobs.
    lanes: HashMap<i64, VecDeque<Job>>,
    queued: usize,
    drain_waiters: Vec<oneshot::Sender<()>>,
    stats: ActorStats,
    latency: Latency,
    run_latency: Latency,
    #[cfg(feature = "fault-injection")]
    faults: Faults,
    _table: PhantomData<T>,
}

impl<T: Table> DbActor<T> {
    pub(crate) fn new(
        db: Database,
        gate: Arc<Gate>,
        #[cfg(feature = "fault-injection")] faults: Faults,
    ) -> Self {
        DbActor {
            db,
            gate,
            lanes: HashMap::new(),
            queued: 0,
            drain_waiters: Vec::new(),
            stats: ActorStats {
                actor: T::NAME,
                ..ActorStats::default()
            },
            latency: Latency::default(),
            run_latency: Latency::default(),
            #[cfg(feature = "fault-injection")]
            faults,
            _table: PhantomData,
        }
    }

    /// Files a job: runs it now if its user is idle, else queues it behind the user's
    /// running job.
    fn accept(&mut self, job: Job, ctx: &mut Context<Self>) {
        match self.lanes.entry(job.user) {
            Entry::Occupied(mut lane) => {
                lane.get_mut().push_back(job);
                self.queued += 1;
            }
            Entry::Vacant(lane) => {
                lane.insert(VecDeque::new());
                self.start(job, ctx);
            }
        }
        self.stats.peak_users_in_flight = self.stats.peak_users_in_flight.max(self.lanes.len());
        self.stats.peak_pending = self.stats.peak_pending.max(self.lanes.len() + self.queued);
    }

    /// Runs a job as a task of its own; it reports back with [`Done`].
    fn start(&mut self, job: Job, ctx: &mut Context<Self>) {
        let addr = ctx.address();
        let db = self.db.clone();
        let span = tracing::debug_span!(
            "botdb.request",
            actor = T::NAME,
            request = job.name,
            user_id = job.user,
            outcome = Empty,
            ms = Empty,
        );
        let Job {
            user,
            accepted_at,
            run,
            ..
        } = job;
        actix_rt::spawn(async move {
            let started_at = Instant::now();
            let outcome = run(db).instrument(span.clone()).await;
            span.record("outcome", outcome.as_str());
            span.record("ms", started_at.elapsed().as_secs_f64() * 1000.0);
            addr.do_send(Done {
                user,
                outcome,
                accepted_at,
                started_at,
            });
        });
    }

    /// Answers waiting drains once nothing admitted is left unanswered.
    fn wake_drains(&mut self) {
        if self.gate.pending() == 0 {
            for waiter in self.drain_waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }

    /// Counts a panic and has the supervisor restart the actor. Running jobs are tasks
    /// of their own and queued ones live in `self`, which the restart keeps: only the
    /// request that panicked fails.
    fn restart_after_panic(&mut self, ctx: &mut Context<Self>) {
        self.stats.panicked += 1;
        tracing::error!(actor = T::NAME, "a request panicked; restarting the actor");
        ctx.stop();
    }
}

impl<T: Table> Actor for DbActor<T> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // The gate bounds what is in the mailbox; the mailbox itself must never make a
        // sender wait (actix's default of 16 would).
        ctx.set_mailbox_capacity(0);
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

impl<M> Handler<M> for DbActor<M::Table>
where
    M: DbRequest,
{
    type Result = ResponseFuture<Result<M::Output>>;

    fn handle(&mut self, msg: M, ctx: &mut Context<Self>) -> Self::Result {
        let (reply, answer) = oneshot::channel::<Result<M::Output>>();
        let user = msg.user_id();
        let filed = std::panic::catch_unwind(AssertUnwindSafe(|| {
            #[cfg(feature = "fault-injection")]
            if self.faults.take_handler_panic(user) {
                panic!(
                    "injected panic in the {} actor's handler (user {user})",
                    M::Table::NAME
                );
            }
            let job = Job {
                user,
                name: M::NAME,
                accepted_at: Instant::now(),
                run: job_body(
                    msg,
                    reply,
                    #[cfg(feature = "fault-injection")]
                    self.faults.clone(),
                ),
            };
            self.accept(job, ctx);
        }));
        if filed.is_err() {
            // This request was admitted but will never run: answer it (its reply sender
            // was dropped with the panic) and give its place back.
            self.gate.release();
            self.stats.failed += 1;
            self.restart_after_panic(ctx);
            self.wake_drains();
        }
        Box::pin(async move {
            answer.await.unwrap_or_else(|_| {
                Err(Error::Internal(format!(
                    "the {} actor panicked while handling {}; it was restarted and this request was not carried out",
                    M::Table::NAME,
                    M::NAME
                )))
            })
        })
    }
}

/// The job's future: run the request, catch a panic, answer the caller.
fn job_body<M: DbRequest>(
    msg: M,
    reply: oneshot::Sender<Result<M::Output>>,
    #[cfg(feature = "fault-injection")] faults: Faults,
) -> Box<dyn FnOnce(Database) -> LocalBoxFuture<'static, Outcome>> {
    Box::new(move |db: Database| {
        Box::pin(async move {
            #[cfg(feature = "fault-injection")]
            let user = msg.user_id();
            let work = async move {
                #[cfg(feature = "fault-injection")]
                {
                    if let Some(secs) = faults.sleep_for(user) {
                        sqlx::query("SELECT pg_sleep($1)")
                            .bind(secs)
                            .execute(db.pool())
                            .await?;
                    }
                    if faults.take_run_panic(user) {
                        panic!("injected panic in a {} request (user {user})", M::NAME);
                    }
                }
                msg.run(db).await
            };
            match AssertUnwindSafe(work).catch_unwind().await {
                Ok(result) => {
                    let outcome = if result.is_ok() { Outcome::Ok } else { Outcome::Err };
                    let _ = reply.send(result);
                    outcome
                }
                // `reply` was dropped with the panic: the caller gets Error::Internal.
                Err(_) => Outcome::Panicked,
            }
        })
    })
}

impl<T: Table> Handler<Done> for DbActor<T> {
    type Result = ();

    fn handle(&mut self, done: Done, ctx: &mut Context<Self>) {
        self.gate.release();
        let now = Instant::now();
        self.latency.record(now - done.accepted_at);
        self.run_latency.record(now - done.started_at);
        match done.outcome {
            Outcome::Ok => self.stats.completed += 1,
            Outcome::Err | Outcome::Panicked => self.stats.failed += 1,
        }
        if let Entry::Occupied(mut lane) = self.lanes.entry(done.user) {
            match lane.get_mut().pop_front() {
                Some(next) => {
                    self.queued -= 1;
                    self.start(next, ctx);
                }
                None => {
                    lane.remove();
                    // Give memory back after a burst of many users.
                    if self.lanes.capacity() > 1024 && self.lanes.len() < self.lanes.capacity() / 4 {
                        self.lanes.shrink_to_fit();
                    }
                }
            }
        }
        if done.outcome == Outcome::Panicked {
            self.restart_after_panic(ctx);
        }
        self.wake_drains();
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
        stats.queued = self.queued;
        stats.in_flight = self.lanes.len();
        stats.active_users = self.lanes.len();
        stats.gate = self.gate.counts();
        stats.latency = self.latency.percentiles();
        stats.run_latency = self.run_latency.percentiles();
        MessageResult(stats)
    }
}
