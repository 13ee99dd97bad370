//! Batching: the ready requests of one type gathered until the end of the actor's turn
//! ([`Pending`]), then launched as one unit of work ([`PendingBatch::launch`]): appends
//! of many users in one multi-row INSERT (one commit, one WAL flush), histories of many
//! users in one query.
//!
//! Only what is already queued is batched, so an idle system adds no latency, and a
//! batch of one runs as the single request. While `batch_in_flight` batches of a type
//! run, new ready requests of that type gather for the next batch, which goes as soon
//! as one of them finishes (group commit: the busier, the larger the batches). A batch
//! holds at most one request per user (the head of its lane), so per-user order holds.
//!
//! A request the batch leaves out ([`Ran::Alone`]: its row locked, its user unknown)
//! comes back as work of its own ([`alone`]), answered when it ends; a panic in the
//! runner fails every request of the batch, and says that whether it was carried out
//! is unknown.

use std::any::{Any, TypeId};
use std::cell::Cell;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Context as TaskContext;
use std::time::{Duration, Instant};

use futures::FutureExt;
use tracing::Instrument;

use crate::actors::actor::answer::{Caller, Outcome};
use crate::actors::actor::work::{Completed, Env, Request, Work, acting_for, alone, panicked};
use crate::actors::batch::Ran;
use crate::actors::request::{BatchRunner, DbRequest};
use crate::config::ActorConfig;
use crate::error::Error;

/// A filed request of a batchable type, its type erased so that one actor can hold
/// pending batches of several request types.
pub(super) trait Batchable {
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
pub(super) trait PendingBatch {
    fn push(&mut self, request: Box<dyn Any>);
    fn len(&self) -> usize;
    fn oldest(&self) -> Option<Instant>;
    /// Batches of this type running now.
    fn in_flight(&self) -> usize;
    /// Takes up to `max` requests and returns their work.
    fn launch(&mut self, max: usize, actor: &'static str, env: &Env) -> Work;
}

/// The pending batch of `M` requests, its runner, and how many of its launched
/// batches still run (shared with their work, which counts itself out).
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

/// An actor's pending batches, one per batchable request type, and when the next one
/// that waits (`batch_wait` > 0) is due.
pub(super) struct Pending {
    batches: HashMap<TypeId, Box<dyn PendingBatch>>,
    /// Wakes the engine when a waiting batch is due (`batch_wait` > 0).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// At most this many requests in one batch.
    max: usize,
    /// How long a batch may wait to grow (zero: launched at the end of the turn).
    wait: Duration,
    /// Batches of one type running at once before the next one waits for one of them.
    in_flight_limit: usize,
}

impl Pending {
    pub(super) fn new(config: &ActorConfig) -> Self {
        Pending {
            batches: HashMap::new(),
            timer: None,
            max: config.batch_max.max(1),
            wait: config.batch_wait,
            in_flight_limit: config.batch_in_flight.max(1),
        }
    }

    /// Adds a ready request to the pending batch of its type.
    pub(super) fn push(&mut self, request: Box<dyn Batchable>) {
        let batch = self
            .batches
            .entry(request.kind())
            .or_insert_with(|| request.open_batch());
        batch.push(request.into_any());
    }

    /// Requests waiting in pending batches.
    pub(super) fn len(&self) -> usize {
        self.batches.values().map(|b| b.len()).sum()
    }

    /// Launches the pending batches that are due: all of them at the end of a turn
    /// (or when `draining`), else those full or older than `batch_wait`. Each launched
    /// batch goes to `launched` with its size; `task` is woken when a waiting one is
    /// due.
    pub(super) fn flush(
        &mut self,
        draining: bool,
        actor: &'static str,
        env: &Env,
        task: &mut TaskContext<'_>,
        mut launched: impl FnMut(Work, usize),
    ) {
        let (max, wait, in_flight_limit) = (self.max, self.wait, self.in_flight_limit);
        let mut next_due: Option<Instant> = None;
        for batch in self.batches.values_mut() {
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
                launched(batch.launch(max, actor, env), size);
            }
        }
        self.timer = next_due.map(|at| Box::pin(tokio::time::sleep_until(at.into())));
        if let Some(timer) = self.timer.as_mut() {
            // Registers the wake-up; if already due, flush again on the next poll.
            if timer.as_mut().poll(task).is_ready() {
                task.waker().wake_by_ref();
            }
        }
    }
}
