//! Running several requests of one type together, safely: the shared part of every
//! [`BatchRunner`](crate::actors::DbRequest::batch_runner).

use crate::error::{Error, Result};

/// Runs the valid `prepared` inputs together with `all`, and merges the outcomes back
/// into input order:
/// - an input that failed to prepare (validation) keeps its error, and is not sent;
/// - `all` returns one `Option` per input it got: `None` means "not done together"
///   (e.g. its user does not exist as of the statement's snapshot), and that input is
///   retried alone with `one`, which gives it its own answer;
/// - when `all` fails as a whole for a transient reason (the server is down, shutting
///   down), every input gets that error: nothing of the batch was committed;
/// - when its outcome is unknown (the connection broke while the statement ran), every
///   input gets [`Error::OutcomeUnknown`]: retrying alone could write them twice;
/// - when it fails for any other reason (a constraint, a concurrent delete), every
///   input is retried alone, so one bad row never fails the others.
pub(crate) async fn run<P, T>(
    prepared: Vec<Result<P>>,
    all: impl AsyncFnOnce(&[&P]) -> Result<Vec<Option<T>>>,
    one: impl AsyncFn(&P) -> Result<T>,
) -> Vec<Result<T>> {
    let valid: Vec<&P> = prepared.iter().filter_map(|p| p.as_ref().ok()).collect();
    let n = valid.len();
    let together = if n == 0 { Ok(Vec::new()) } else { all(&valid).await };
    // Ok(results): in order of the valid inputs. Err(Some(e)): all failed with e.
    // Err(None): run each alone.
    let mut together = match together {
        Ok(results) if results.len() == n => Ok(results.into_iter()),
        Ok(_) => Err(None),
        Err(e) if e.is_transient() || e.is_outcome_unknown() || matches!(e, Error::ShuttingDown) => {
            Err(Some(e))
        }
        Err(e) => {
            tracing::debug!(error = %e, size = n, "batch failed as a whole; running its requests alone");
            Err(None)
        }
    };
    let mut out = Vec::with_capacity(prepared.len());
    for p in prepared {
        out.push(match p {
            Err(e) => Err(e),
            Ok(input) => match &mut together {
                Ok(results) => match results.next().flatten() {
                    Some(done) => Ok(done),
                    None => one(&input).await,
                },
                Err(Some(e)) => Err(e.replica()),
                Err(None) => one(&input).await,
            },
        });
    }
    out
}
