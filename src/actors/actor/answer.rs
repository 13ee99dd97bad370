//! How a request is answered: its caller ([`Caller`]: the reply slot and the request's
//! span), the handler's [`Answer`] that hands actix's reply channel to that slot, and
//! what the actor learns when a request ends ([`Finished`]).
//!
//! The answer goes straight from the work into actix's own reply channel: no task or
//! channel of botdb's per request.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use actix::dev::{MessageResponse, OneshotSender};
use actix::prelude::*;

use crate::error::{Result, TimeoutKind};

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
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

    pub(super) fn of<T>(result: &Result<T>) -> Self {
        if result.is_ok() { Outcome::Ok } else { Outcome::Err }
    }
}

/// A request that ended.
pub(super) struct Finished {
    pub(super) user: i64,
    pub(super) outcome: Outcome,
    pub(super) accepted_at: Instant,
    pub(super) started_at: Instant,
    /// Tries repeated after a lock timeout.
    pub(super) lock_retries: u32,
    /// The time limit its final error reached, if any.
    pub(super) timeout: Option<TimeoutKind>,
}

/// Where the answer goes. actix hands the caller's reply channel to [`Answer`] right
/// after `handle` returns, before any work can run (it runs on this same thread,
/// later), so the work always finds it here.
pub(super) type ReplySlot<T> = Rc<Cell<Option<OneshotSender<Result<T>>>>>;

/// A handler's answer: now (the request could not be filed), or later, from the work,
/// straight into actix's reply channel (no extra task or channel per request).
pub struct Answer<T>(AnswerKind<T>);

enum AnswerKind<T> {
    Now(Result<T>),
    Later(ReplySlot<T>),
}

impl<T> Answer<T> {
    /// The answer is `result`, given at once.
    pub(super) fn now(result: Result<T>) -> Self {
        Answer(AnswerKind::Now(result))
    }

    /// The work will answer through `slot`.
    pub(super) fn later(slot: ReplySlot<T>) -> Self {
        Answer(AnswerKind::Later(slot))
    }
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
pub(super) struct Caller<T> {
    pub(super) user: i64,
    pub(super) reply: ReplySlot<T>,
    pub(super) span: tracing::Span,
    pub(super) accepted_at: Instant,
}

impl<T> Caller<T> {
    /// Answers the caller and closes the request's span.
    pub(super) fn answer(self, result: Result<T>, outcome: Outcome, started_at: Instant) -> Finished {
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
