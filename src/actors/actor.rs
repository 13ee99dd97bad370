//! [`DbActor`]: one table's actor. It owns a pool handle and runs requests serially per
//! user and concurrently across users, batching what it can.
//!
//! # How a request moves
//! 1. The caller's [`DbHandle`](crate::actors::DbHandle) admits it at the table's gate
//!    and puts it in the mailbox (unbounded: the gate bounds it).
//! 2. `handle` turns it into a job. If the user has no job running, the job is ready at
//!    once; otherwise it waits in that user's queue (a lane). The mailbox is never
//!    blocked: `handle` only files the job.
//! 3. A ready job of a batchable request ([`DbRequest::batch_runner`]) joins the
//!    actor's pending batch of its type; others start at once. At the end of the
//!    actor's turn (after the mailbox was emptied, before anything waits), each pending
//!    batch is launched as one unit of work: appends of many users in one multi-row
//!    INSERT (one commit, one WAL flush), history of many users in one query. Only
//!    what is already queued is batched, so an idle system adds no latency; a batch of
//!    one runs as the single request. While `batch_in_flight` batches of a type run,
//!    new ready requests of that type gather for the next batch, which goes as soon as
//!    one of them finishes (group commit: the busier, the larger the batches).
//! 4. Running work lives in one `FuturesUnordered` that the actor owns, driven by an
//!    engine future in the actor's context with direct access to the actor: work is
//!    first polled in the turn it was launched, a wake-up polls only what is ready, and
//!    completions update the actor right there (no message, no extra task). The work
//!    lives in the actor, not the context, so a supervised restart (which clears the
//!    context) keeps it; the restarted actor's new engine drives it on.
//! 5. Finished work answers each caller through actix's own reply channel; the actor
//!    releases the gate, readies each user's next job or drops the user's lane (an idle
//!    user costs no memory), and wakes a waiting drain.
//!
//! # Panics
//! actix has no `catch_unwind`: a panic in a handler would kill the actor for good. A
//! panic in `handle` or in a request is caught, answered with [`Error::Internal`] to
//! that request only (requests armed with a test fault run alone), and the actor is
//! stopped so its `Supervisor` restarts it; queued and running requests of other users
//! carry on.

use std::any::{Any, TypeId};
use std::cell::Cell;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use actix::dev::{MessageResponse, OneshotSender};
use actix::fut::ActorFuture;
use actix::prelude::*;
use futures::FutureExt;
use futures::future::LocalBoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::oneshot;
use tracing::Instrument;
use tracing::field::Empty;

use crate::actors::batch::Ran;
use crate::actors::gate::Gate;
use crate::actors::request::{BatchRunner, DbRequest, Table};
use crate::actors::stats::{ActorStats, Latency};
use crate::config::ActorConfig;
use crate::db::Database;
use crate::error::{Error, Result, TimeoutKind};

#[cfg(feature = "fault-injection")]
use crate::actors::fault::Faults;

/// Completions the engine handles before it lets other work of the thread run.
const ENGINE_BUDGET: usize = 128;

/// How a request ended.
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

    fn of<T>(result: &Result<T>) -> Self {
        if result.is_ok() { Outcome::Ok } else { Outcome::Err }
    }
}

/// A request that ended.
pub(crate) struct Finished {
    user: i64,
    outcome: Outcome,
    accepted_at: Instant,
    started_at: Instant,
    /// Tries repeated after a lock timeout.
    lock_retries: u32,
    /// The time limit its final error reached, if any.
    timeout: Option<TimeoutKind>,
}

/// What a unit of running work hands back: one request, or a batch of them and the
/// work of its requests that go on alone (split out of the batch).
enum Completed {
    One(Finished),
    Many { done: Vec<Finished>, split: Vec<Work> },
}

/// Retries after a lock timeout: how long a request may keep trying, and the permits
/// (shared by every actor of a system) that bound how many retries hold a connection
/// at once, so users whose rows another transaction holds cannot take the pool.
#[derive(Clone, Debug)]
pub(crate) struct LockRetry {
    wait: Duration,
    permits: Arc<tokio::sync::Semaphore>,
}

impl LockRetry {
    pub(crate) fn new(wait: Duration, connections: usize) -> Self {
        LockRetry {
            wait,
            permits: Arc::new(tokio::sync::Semaphore::new(connections.max(1))),
        }
    }

    /// Runs `attempt` again while it fails on a lock timeout (nothing of it committed),
    /// backing off without a connection in between, until it succeeds, fails otherwise,
    /// or `wait` is spent. Returns the last result and how many retries it took.
    async fn run<T>(&self, attempt: &dyn Fn() -> LocalBoxFuture<'static, Result<T>>) -> (Result<T>, u32) {
        let started = Instant::now();
        let mut result = attempt().await;
        let mut retries = 0;
        while let Err(Error::Timeout {
            kind: TimeoutKind::Lock,
            ..
        }) = &result
        {
            // 50 ms, doubling, at most 1 s, with a little jitter so that the users a
            // lock released do not all come back in the same millisecond.
            let jitter = Duration::from_micros(u64::from(started.elapsed().subsec_nanos() % 20_000));
            let backoff = Duration::from_millis(50 << retries.min(4)).min(Duration::from_secs(1)) + jitter;
            let Some(left) = self.wait.checked_sub(started.elapsed() + backoff) else {
                break;
            };
            tokio::time::sleep(backoff).await;
            let Ok(Ok(_permit)) = tokio::time::timeout(left, self.permits.acquire()).await else {
                break;
            };
            retries += 1;
            result = attempt().await;
        }
        (result, retries)
    }
}

type Work = LocalBoxFuture<'static, Completed>;

/// Where the answer goes. actix hands the caller's reply channel to [`Answer`] right
/// after `handle` returns, before any work can run (it runs on this same thread,
/// later), so the work always finds it here.
type ReplySlot<T> = Rc<Cell<Option<OneshotSender<Result<T>>>>>;

/// A handler's answer: now (the request could not be filed), or later, from the work,
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

/// Who is waiting for a request, and the request's span.
struct Caller<T> {
    user: i64,
    reply: ReplySlot<T>,
    span: tracing::Span,
    accepted_at: Instant,
}

impl<T> Caller<T> {
    /// Answers the caller and closes the request's span.
    fn answer(self, result: Result<T>, outcome: Outcome, started_at: Instant) -> Finished {
        self.span.record("outcome", outcome.as_str());
        self.span
            .record("ms", started_at.elapsed().as_secs_f64() * 1000.0);
        if let Some(tx) = self.reply.take() {
            let _ = tx.send(result);
        }
        Finished {
            user: self.user,
            outcome,
            accepted_at: self.accepted_at,
            started_at,
            lock_retries: 0,
            timeout: None,
        }
    }
}

/// What the work of an actor runs with: the database, the lock retry policy, and (in
/// test builds) the fault switches.
#[derive(Clone)]
pub(crate) struct Env {
    pub(crate) db: Database,
    pub(crate) retry: LockRetry,
    #[cfg(feature = "fault-injection")]
    pub(crate) faults: Faults,
}

/// One filed request, with everything needed to run and answer it.
struct Request<M: DbRequest> {
    msg: M,
    caller: Caller<M::Output>,
}

impl<M: DbRequest> Request<M> {
    /// Runs it alone (catching a panic, retrying on lock timeouts).
    fn run_alone(self, env: &Env) -> Work {
        let Request { msg, caller } = self;
        // Its writes are recorded for its user's reads on replicas.
        let db = acting_for::<M>(&env.db, &[caller.user]);
        #[cfg(feature = "fault-injection")]
        let prelude = {
            let (db, user, faults) = (db.clone(), caller.user, env.faults.clone());
            async move {
                if let Some(secs) = faults.sleep_for(user) {
                    sqlx::query("SELECT pg_sleep($1)")
                        .bind(secs)
                        .execute(db.pool())
                        .await?;
                }
                if faults.take_run_panic(user) {
                    panic!("injected panic in a {} request (user {user})", M::NAME);
                }
                Ok(())
            }
        };
        #[cfg(not(feature = "fault-injection"))]
        let prelude = async { Ok(()) };
        let attempt: Attempt<M::Output> = Rc::new(move || Box::pin(msg.clone().run(db.clone())));
        alone(caller, prelude, attempt, env.retry.clone(), panicked::<M>)
    }
}

/// The handle an `M` request (or batch) of `users` runs with: its writes are recorded
/// for those users and the tables `M` may write, for their reads on replicas.
fn acting_for<M: DbRequest>(db: &Database, users: &[i64]) -> Database {
    if !db.has_replicas() {
        return db.clone();
    }
    let tables: Vec<&'static str> = std::iter::once(M::Table::NAME)
        .chain(M::ALSO_WRITES.iter().copied())
        .collect();
    db.acting_for(users, &tables)
}

/// One try of a request that runs alone: a fresh future each time it is called.
type Attempt<T> = Rc<dyn Fn() -> LocalBoxFuture<'static, Result<T>>>;

/// The work of a request running on its own: `prelude` (test faults), then `attempt`,
/// again after lock timeouts; a panic anywhere answers `panicked()`.
fn alone<T: 'static>(
    caller: Caller<T>,
    prelude: impl Future<Output = Result<()>> + 'static,
    attempt: Attempt<T>,
    retry: LockRetry,
    panicked: fn() -> Error,
) -> Work {
    Box::pin(async move {
        let started_at = Instant::now();
        let work = async move {
            match prelude.await {
                Ok(()) => retry.run(&*attempt).await,
                Err(e) => (Err(e), 0),
            }
        };
        let ran = AssertUnwindSafe(work)
            .catch_unwind()
            .instrument(caller.span.clone())
            .await;
        Completed::One(match ran {
            Ok((result, retries)) => {
                let timeout = match &result {
                    Err(Error::Timeout { kind, .. }) => Some(*kind),
                    _ => None,
                };
                if retries > 0 {
                    caller.span.record("lock_retries", retries);
                }
                if let Some(kind) = timeout {
                    caller.span.record("timeout", tracing::field::display(kind));
                }
                let outcome = Outcome::of(&result);
                Finished {
                    lock_retries: retries,
                    timeout,
                    ..caller.answer(result, outcome, started_at)
                }
            }
            Err(_) => caller.answer(Err(panicked()), Outcome::Panicked, started_at),
        })
    })
}

/// A filed request of a batchable type, its type erased so that one actor can hold
/// pending batches of several request types.
trait Batchable {
    fn kind(&self) -> TypeId;
    fn open_batch(&self) -> Box<dyn PendingBatch>;
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

impl<M: DbRequest> Batchable for (Request<M>, BatchRunner<M>) {
    fn kind(&self) -> TypeId {
        TypeId::of::<M>()
    }

    fn open_batch(&self) -> Box<dyn PendingBatch> {
        Box::new(Batch::<M> {
            requests: Vec::new(),
            runner: self.1,
            oldest: None,
            in_flight: Rc::new(Cell::new(0)),
        })
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// The ready requests of one type waiting for the end of the actor's turn.
trait PendingBatch {
    fn push(&mut self, request: Box<dyn Any>);
    fn len(&self) -> usize;
    fn oldest(&self) -> Option<Instant>;
    /// Batches of this type running now.
    fn in_flight(&self) -> usize;
    /// Takes up to `max` requests and returns their work.
    fn launch(&mut self, max: usize, actor: &'static str, env: &Env) -> Work;
}

struct Batch<M: DbRequest> {
    requests: Vec<Request<M>>,
    runner: BatchRunner<M>,
    oldest: Option<Instant>,
    in_flight: Rc<Cell<usize>>,
}

impl<M: DbRequest> PendingBatch for Batch<M> {
    fn push(&mut self, request: Box<dyn Any>) {
        if let Ok(request) = request.downcast::<(Request<M>, BatchRunner<M>)>() {
            self.oldest.get_or_insert(request.0.caller.accepted_at);
            self.requests.push(request.0);
        }
    }

    fn len(&self) -> usize {
        self.requests.len()
    }

    fn oldest(&self) -> Option<Instant> {
        self.oldest
    }

    fn in_flight(&self) -> usize {
        self.in_flight.get()
    }

    fn launch(&mut self, max: usize, actor: &'static str, env: &Env) -> Work {
        let rest = self.requests.split_off(self.requests.len().min(max));
        let requests = std::mem::replace(&mut self.requests, rest);
        self.oldest = self.requests.iter().map(|r| r.caller.accepted_at).min();
        if requests.len() == 1 {
            // A batch of one is the plain request: no batch SQL, no extra cost.
            return match requests.into_iter().next() {
                Some(request) => request.run_alone(env),
                None => Box::pin(async {
                    Completed::Many {
                        done: Vec::new(),
                        split: Vec::new(),
                    }
                }),
            };
        }
        let runner = self.runner;
        let env = env.clone();
        let in_flight = self.in_flight.clone();
        in_flight.set(in_flight.get() + 1);
        Box::pin(async move {
            let started_at = Instant::now();
            let span = tracing::debug_span!("botdb.batch", actor, request = M::NAME, size = requests.len());
            let (msgs, callers): (Vec<M>, Vec<Caller<M::Output>>) =
                requests.into_iter().map(|r| (r.msg, r.caller)).unzip();
            let n = callers.len();
            #[cfg(feature = "fault-injection")]
            let poisoned = env.faults.take_batch_panic(callers.iter().map(|c| c.user));
            let users: Vec<i64> = callers.iter().map(|c| c.user).collect();
            let db = acting_for::<M>(&env.db, &users);
            let run = async move {
                #[cfg(feature = "fault-injection")]
                if poisoned {
                    panic!("injected panic in a batch of {n} {}", M::NAME);
                }
                runner(msgs, db).await
            };
            let results = AssertUnwindSafe(run).catch_unwind().instrument(span).await;
            let mut split = Vec::new();
            let done = match results {
                Ok(results) if results.len() == n => {
                    let mut done = Vec::with_capacity(n);
                    for (caller, ran) in callers.into_iter().zip(results) {
                        match ran {
                            Ran::Done(result) => {
                                let outcome = Outcome::of(&result);
                                done.push(caller.answer(result, outcome, started_at));
                            }
                            // Not done with the others (its row locked by another
                            // transaction, its user unknown): its own work, answered
                            // when it ends, while the rest is answered now.
                            Ran::Alone(attempt) => {
                                caller.span.record("split", true);
                                split.push(alone(
                                    caller,
                                    async { Ok(()) },
                                    attempt,
                                    env.retry.clone(),
                                    panicked::<M>,
                                ));
                            }
                        }
                    }
                    done
                }
                Ok(results) => {
                    let got = results.len();
                    callers
                        .into_iter()
                        .map(|caller| {
                            let e = Error::Internal(format!("a batch of {n} {} gave {got} answers", M::NAME));
                            caller.answer(Err(e), Outcome::Err, started_at)
                        })
                        .collect()
                }
                // The runner panicked: where is unknown (before its statement, or after it
                // committed), so every request of the batch fails, and says so.
                Err(_) => callers
                    .into_iter()
                    .map(|caller| {
                        let e = Error::Internal(format!(
                            "the {actor} actor panicked while running a batch of {n} {}; it was restarted, \
                             and whether this request was carried out is unknown",
                            M::NAME
                        ));
                        caller.answer(Err(e), Outcome::Panicked, started_at)
                    })
                    .collect(),
            };
            in_flight.set(in_flight.get().saturating_sub(1));
            Completed::Many { done, split }
        })
    }
}

/// A filed request, ready to run or waiting behind its user's running one.
enum Job {
    /// Runs on its own.
    Alone(Work),
    /// Joins the pending batch of its type when ready.
    Batchable(Box<dyn Batchable>),
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
    env: Env,
    gate: Arc<Gate>,
    config: ActorConfig,
    /// One entry per user with a request running or batching; the deque holds that
    /// user's waiting jobs.
    lanes: HashMap<i64, VecDeque<Job>>,
    queued: usize,
    /// Work in progress (single requests and batches).
    running: FuturesUnordered<Work>,
    /// Ready requests of batchable types, by type, until the end of the turn.
    pending: HashMap<TypeId, Box<dyn PendingBatch>>,
    /// Wakes the engine when a waiting batch is due (`batch_wait` > 0).
    batch_timer: Option<Pin<Box<tokio::time::Sleep>>>,
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
            lanes: HashMap::new(),
            queued: 0,
            running: FuturesUnordered::new(),
            pending: HashMap::new(),
            batch_timer: None,
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
        match self.lanes.entry(user) {
            Entry::Occupied(mut lane) => {
                lane.get_mut().push_back(job);
                self.queued += 1;
            }
            Entry::Vacant(lane) => {
                lane.insert(VecDeque::new());
                self.ready(job);
            }
        }
        self.stats.peak_users_in_flight = self.stats.peak_users_in_flight.max(self.lanes.len());
        self.stats.peak_pending = self.stats.peak_pending.max(self.lanes.len() + self.queued);
    }

    /// A job whose user has nothing else running: start it, or add it to its batch.
    fn ready(&mut self, job: Job) {
        match job {
            Job::Alone(work) => self.running.push(work),
            Job::Batchable(request) => {
                let batch = self
                    .pending
                    .entry(request.kind())
                    .or_insert_with(|| request.open_batch());
                batch.push(request.into_any());
            }
        }
    }

    /// Launches the pending batches that are due: all of them at the end of a turn
    /// (or during a drain), else those full or older than `batch_wait`.
    fn flush(&mut self, task: &mut TaskContext<'_>) {
        let (max, wait) = (self.config.batch_max.max(1), self.config.batch_wait);
        let in_flight_limit = self.config.batch_in_flight.max(1);
        let draining = self.gate.is_closed();
        let mut next_due: Option<Instant> = None;
        for batch in self.pending.values_mut() {
            while batch.len() > 0 {
                // Group commit: while enough batches of this type run, ready requests
                // gather for the next one (it goes as soon as one finishes). An idle
                // actor launches at once.
                if batch.len() < max && batch.in_flight() >= in_flight_limit && !draining {
                    break;
                }
                let due = wait.is_zero()
                    || draining
                    || batch.len() >= max
                    || batch.oldest().is_some_and(|t| t.elapsed() >= wait);
                if !due {
                    let at = batch.oldest().map_or_else(Instant::now, |t| t + wait);
                    next_due = Some(next_due.map_or(at, |d| d.min(at)));
                    break;
                }
                let size = batch.len().min(max);
                if size > 1 {
                    self.stats.batches += 1;
                    self.stats.batched_requests += size as u64;
                    self.stats.largest_batch = self.stats.largest_batch.max(size);
                }
                self.running.push(batch.launch(max, T::NAME, &self.env));
            }
        }
        self.batch_timer = next_due.map(|at| Box::pin(tokio::time::sleep_until(at.into())));
        if let Some(timer) = self.batch_timer.as_mut() {
            // Registers the wake-up; if already due, flush again on the next poll.
            if timer.as_mut().poll(task).is_ready() {
                task.waker().wake_by_ref();
            }
        }
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
        if let Entry::Occupied(mut lane) = self.lanes.entry(done.user) {
            match lane.get_mut().pop_front() {
                Some(next) => {
                    self.queued -= 1;
                    self.ready(next);
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
            Ok(()) => Answer(AnswerKind::Later(slot)),
            Err(_) => {
                // Admitted but never filed: answer it here and give its place back.
                self.gate.release(user);
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
        stats.queued = self.queued + self.pending.values().map(|b| b.len()).sum::<usize>();
        stats.in_flight = self.lanes.len();
        stats.active_users = self.lanes.len();
        stats.gate = self.gate.counts();
        stats.latency = self.latency.percentiles();
        stats.run_latency = self.run_latency.percentiles();
        MessageResult(stats)
    }
}
