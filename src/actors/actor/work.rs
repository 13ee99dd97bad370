//! Running work: what a unit of work is ([`Work`]: one request, or a batch), what it
//! runs with ([`Env`]), and a request run on its own ([`Request::run_alone`],
//! [`alone`]): inside its span, its panic caught, again after lock timeouts, its caller
//! answered when it ends.
//!
//! The work is a plain future: the engine polls it, and it hands back what the actor
//! must account for ([`Completed`]). Batches build on [`alone`] for the requests they
//! split out (`batching`).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::time::Instant;

use futures::FutureExt;
use futures::future::LocalBoxFuture;
use tracing::Instrument;

use crate::actors::actor::answer::{Caller, Finished, Outcome};
use crate::actors::actor::retry::LockRetry;
use crate::actors::request::{DbRequest, Table};
use crate::db::Database;
use crate::error::{Error, Result};

#[cfg(feature = "fault-injection")]
use crate::actors::fault::Faults;

/// What the work of an actor runs with: the database, the lock retry policy, and (in
/// test builds) the fault switches.
#[derive(Clone)]
pub(crate) struct Env {
    pub(crate) db: Database,
    pub(crate) retry: LockRetry,
    #[cfg(feature = "fault-injection")]
    pub(crate) faults: Faults,
}

/// A unit of running work: one request, or a batch.
pub(super) type Work = LocalBoxFuture<'static, Completed>;

/// What a unit of running work hands back: one request, or a batch of them and the
/// work of its requests that go on alone (split out of the batch).
pub(super) enum Completed {
    One(Finished),
    Many { done: Vec<Finished>, split: Vec<Work> },
}

/// One filed request, with everything needed to run and answer it.
pub(super) struct Request<M: DbRequest> {
    pub(super) msg: M,
    pub(super) caller: Caller<M::Output>,
}

impl<M: DbRequest> Request<M> {
    /// Runs it alone (catching a panic, retrying on lock timeouts).
    pub(super) fn run_alone(self, env: &Env) -> Work {
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
pub(super) fn acting_for<M: DbRequest>(db: &Database, users: &[i64]) -> Database {
    if !db.has_replicas() {
        return db.clone();
    }
    let tables: Vec<&'static str> = std::iter::once(M::Table::NAME)
        .chain(M::ALSO_WRITES.iter().copied())
        .collect();
    db.acting_for(users, &tables)
}

/// One try of a request that runs alone: a fresh future each time it is called.
pub(super) type Attempt<T> = Rc<dyn Fn() -> LocalBoxFuture<'static, Result<T>>>;

/// The work of a request running on its own: `prelude` (test faults), then `attempt`,
/// again after lock timeouts; a panic anywhere answers `panicked()`.
pub(super) fn alone<T: 'static>(
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

/// The answer of an `M` request whose handler or work panicked.
pub(super) fn panicked<M: DbRequest>() -> Error {
    Error::Internal(format!(
        "the {} actor panicked while handling {}; it was restarted and this request was not carried out",
        M::Table::NAME,
        M::NAME
    ))
}
