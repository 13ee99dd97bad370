//! Running several requests of one type together, safely: the shared part of every
//! [`BatchRunner`](crate::actors::DbRequest::batch_runner).

use std::rc::Rc;

use futures::future::LocalBoxFuture;

use crate::error::{Error, Result};

/// What became of one request of a batch.
pub enum Ran<T> {
    /// Carried out (or failed) with the batch: its answer.
    Done(Result<T>),
    /// Not done with the batch (its user's row is locked by another transaction, or the
    /// user does not exist as of the batch's snapshot): it runs on its own instead, as
    /// often as the lock retries need. The actor runs it as a separate unit of work, so
    /// the rest of the batch is answered at once instead of waiting for it.
    Alone(Rc<dyn Fn() -> LocalBoxFuture<'static, Result<T>>>),
}

impl<T> Ran<T> {
    /// The answer, when the batch gave one.
    pub fn done(self) -> Option<Result<T>> {
        match self {
            Ran::Done(result) => Some(result),
            Ran::Alone(_) => None,
        }
    }
}

/// The safe core of a [`BatchRunner`](crate::actors::BatchRunner), for botdb's tables and
/// yours (re-exported as `botdb::actors::run_batch`).
///
/// Runs the valid `prepared` inputs together with `all`, and merges the outcomes back
/// into input order:
/// - an input that failed to prepare (validation) keeps its error, and is not sent;
/// - `all` returns one `Option` per input it got: `None` means "not done together"
///   (its user's row was locked by another transaction, or the user does not exist as
///   of the statement's snapshot), and that input is handed back to run alone with
///   `one`, which gives it its own answer without holding up the rest;
/// - when `all` fails as a whole for a transient reason (the server is down, shutting
///   down), every input gets that error: nothing of the batch was committed; but when
///   it timed out (a lock, a statement), every input runs alone instead;
/// - when its outcome is unknown (the connection broke while the statement ran), every
///   input gets [`Error::OutcomeUnknown`]: retrying alone could write them twice;
/// - when it fails for any other reason (a constraint, a concurrent delete), every
///   input runs alone, so one bad row never fails the others.
pub async fn run<P: 'static, T: 'static>(
    prepared: Vec<Result<P>>,
    all: impl AsyncFnOnce(&[&P]) -> Result<Vec<Option<T>>>,
    one: impl Fn(&P) -> LocalBoxFuture<'static, Result<T>> + 'static,
) -> Vec<Ran<T>> {
    let valid: Vec<&P> = prepared.iter().filter_map(|p| p.as_ref().ok()).collect();
    let n = valid.len();
    let together = if n == 0 { Ok(Vec::new()) } else { all(&valid).await };
    // Ok(results): in order of the valid inputs. Err(Some(e)): all failed with e.
    // Err(None): run each alone.
    let mut together = match together {
        Ok(results) if results.len() == n => Ok(results.into_iter()),
        Ok(_) => Err(None),
        // The statement waited too long (for a key a copy of one of its requests holds,
        // say) and was cancelled: nothing of it is committed, and each request alone
        // waits, retries or fails for itself.
        Err(Error::Timeout { .. }) => Err(None),
        Err(e) if e.is_transient() || e.is_outcome_unknown() || matches!(e, Error::ShuttingDown) => {
            Err(Some(e))
        }
        Err(e) => {
            tracing::debug!(error = %e, size = n, "batch failed as a whole; running its requests alone");
            Err(None)
        }
    };
    let one = Rc::new(one);
    let alone = |input: P| -> Ran<T> {
        let (one, input) = (one.clone(), Rc::new(input));
        Ran::Alone(Rc::new(move || one(&input)))
    };
    let mut out = Vec::with_capacity(prepared.len());
    for p in prepared {
        out.push(match p {
            Err(e) => Ran::Done(Err(e)),
            Ok(input) => match &mut together {
                Ok(results) => match results.next().flatten() {
                    Some(done) => Ran::Done(Ok(done)),
                    None => alone(input),
                },
                Err(Some(e)) => Ran::Done(Err(e.replica())),
                Err(None) => alone(input),
            },
        });
    }
    out
}
