//! [`DbActor`]: one table's actor. It owns a pool handle and runs requests serially per
//! user and concurrently across users.
//!
//! # How a request moves
//! 1. The caller's [`DbHandle`](crate::actors::DbHandle) admits it at the table's gate
//!    and puts it in the mailbox (unbounded: the gate bounds it).
//! 2. `handle` turns it into a job. If the user has no job running, the job starts at
//!    once; otherwise it waits in that user's queue (a lane). The mailbox is never
//!    blocked: `handle` only files the job.
//! 3. Running jobs live in one `FuturesUnordered` that the actor owns and drives as a
//!    stream of its context. A new job is first polled in the same turn of the actor
//!    that filed it, a wake-up polls only the jobs that are ready, and a finished job is
//!    handled right there (no message, no extra task). The set lives in the actor
//!    itself, not in the context, so a supervised restart (which clears the context)
//!    keeps running jobs; the restarted actor drives them on.
//! 4. A finished job answers its caller through actix's own reply channel; the actor
//!    releases the gate, starts the user's next job or drops the user's lane (an idle
//!    user costs no memory), and wakes a waiting drain.
//!
//! # Panics
//! actix has no `catch_unwind`: a panic in a handler would kill the actor for good. A
//! panic in `handle` or in a job is caught, answered with [`Error::Internal`] to that
//! request only, and the actor is stopped so its `Supervisor` restarts it; queued and
//! running requests of other users carry on.

use std::cell::{Cell, RefCell};
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use actix::dev::{MessageResponse, OneshotSender};
use actix::prelude::*;
use futures::FutureExt;
use futures::future::LocalBoxFuture;
use futures::stream::{FuturesUnordered, Stream, StreamExt};
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

/// A request filed by `handle`: its whole work as one future, built (not yet polled)
/// when the request arrived, in its final box.
struct Job {
    user: i64,
    work: LocalBoxFuture<'static, Finished>,
}

/// What a job needs from its actor to run.
struct Launch {
    db: Database,
    span: tracing::Span,
    accepted_at: Instant,
    #[cfg(feature = "fault-injection")]
    faults: Faults,
}

/// The running jobs, shared between the actor and the stream that drives them.
type Running = Rc<RefCell<FuturesUnordered<LocalBoxFuture<'static, Finished>>>>;

/// Drives the running jobs as a stream of the actor's context. An empty set is
/// `Pending`, not finished: the actor polls its items right after its mailbox, so a job
/// filed by a message is polled in the same turn.
struct RunningJobs(Running);

impl Stream for RunningJobs {
    type Item = Finished;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Finished>> {
        match self.0.borrow_mut().poll_next_unpin(cx) {
            Poll::Ready(Some(finished)) => Poll::Ready(Some(finished)),
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}

/// Where the answer goes. actix hands the caller's reply channel to [`Answer`] right
/// after `handle` returns, before any job task can run (they run on this same thread,
/// later), so the job always finds it here.
type ReplySlot<T> = Rc<Cell<Option<OneshotSender<Result<T>>>>>;

/// A handler's answer: now (the request could not be filed), or later, from the job,
/// straight into actix's reply channel (no extra task or channel per request).
pub struct Answer<T>(AnswerKind<T>);

enum AnswerKind<T> {
    Now(Result<T>),
    Later(ReplySlot<T>),
}

impl<A, M, T> MessageResponse<A, M> for Answer<T>
where
    A: Actor,
    M: actix::Message<Result = Result<T>>,
    T: 'static,
{
    fn handle(self, _: &mut A::Context, tx: Option<OneshotSender<Result<T>>>) {
        match self.0 {
            AnswerKind::Now(result) => {
                if let Some(tx) = tx {
                    let _ = tx.send(result);
                }
            }
            AnswerKind::Later(slot) => slot.set(tx),
        }
    }
}

/// A job finished.
pub(crate) struct Finished {
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
    running: Running,
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
            running: Rc::new(RefCell::new(FuturesUnordered::new())),
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
    fn accept(&mut self, job: Job) {
        match self.lanes.entry(job.user) {
            Entry::Occupied(mut lane) => {
                lane.get_mut().push_back(job);
                self.queued += 1;
            }
            Entry::Vacant(lane) => {
                lane.insert(VecDeque::new());
                self.start(job);
            }
        }
        self.stats.peak_users_in_flight = self.stats.peak_users_in_flight.max(self.lanes.len());
        self.stats.peak_pending = self.stats.peak_pending.max(self.lanes.len() + self.queued);
    }

    /// Puts a job among the running ones; the actor polls it in this same turn.
    fn start(&mut self, job: Job) {
        self.running.borrow_mut().push(job.work);
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
        // Also after a restart, which dropped the context's previous stream: the jobs
        // themselves are in `self.running` and carry on.
        ctx.add_stream(RunningJobs(self.running.clone()));
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
    type Result = Answer<M::Output>;

    fn handle(&mut self, msg: M, ctx: &mut Context<Self>) -> Self::Result {
        let user = msg.user_id();
        let slot: ReplySlot<M::Output> = Rc::new(Cell::new(None));
        let filed = std::panic::catch_unwind(AssertUnwindSafe(|| {
            #[cfg(feature = "fault-injection")]
            if self.faults.take_handler_panic(user) {
                panic!(
                    "injected panic in the {} actor's handler (user {user})",
                    M::Table::NAME
                );
            }
            let launch = Launch {
                db: self.db.clone(),
                span: tracing::debug_span!(
                    "botdb.request",
                    actor = M::Table::NAME,
                    request = M::NAME,
                    user_id = user,
                    outcome = Empty,
                    ms = Empty,
                ),
                accepted_at: Instant::now(),
                #[cfg(feature = "fault-injection")]
                faults: self.faults.clone(),
            };
            self.accept(Job {
                user,
                work: run_job(msg, slot.clone(), launch).boxed_local(),
            });
        }));
        match filed {
            Ok(()) => Answer(AnswerKind::Later(slot)),
            Err(_) => {
                // Admitted but never filed: answer it here and give its place back.
                self.gate.release();
                self.stats.failed += 1;
                self.restart_after_panic(ctx);
                self.wake_drains();
                Answer(AnswerKind::Now(Err(panicked::<M>())))
            }
        }
    }
}

fn panicked<M: DbRequest>() -> Error {
    Error::Internal(format!(
        "the {} actor panicked while handling {}; it was restarted and this request was not carried out",
        M::Table::NAME,
        M::NAME
    ))
}

/// A request's work: run it (catching a panic), answer the caller, report how it went.
async fn run_job<M: DbRequest>(msg: M, reply: ReplySlot<M::Output>, launch: Launch) -> Finished {
    let Launch {
        db,
        span,
        accepted_at,
        #[cfg(feature = "fault-injection")]
        faults,
    } = launch;
    let user = msg.user_id();
    let started_at = Instant::now();
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
    let (outcome, result) = match AssertUnwindSafe(work)
        .catch_unwind()
        .instrument(span.clone())
        .await
    {
        Ok(Ok(value)) => (Outcome::Ok, Ok(value)),
        Ok(Err(err)) => (Outcome::Err, Err(err)),
        Err(_) => (Outcome::Panicked, Err(panicked::<M>())),
    };
    span.record("outcome", outcome.as_str());
    span.record("ms", started_at.elapsed().as_secs_f64() * 1000.0);
    if let Some(tx) = reply.take() {
        let _ = tx.send(result);
    }
    Finished {
        user,
        outcome,
        accepted_at,
        started_at,
    }
}

impl<T: Table> StreamHandler<Finished> for DbActor<T> {
    fn handle(&mut self, done: Finished, ctx: &mut Context<Self>) {
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
                    self.start(next);
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
