//! Retries after a lock timeout ([`LockRetry`]): a request whose statement waited
//! `DB_LOCK_TIMEOUT` for a row another transaction holds committed nothing, so it runs
//! again after a back-off, within `BOTDB_LOCK_WAIT`.
//!
//! Its own file because the policy is shared: one [`LockRetry`] (and its permits) for
//! every actor of a system, built by the system's builder and used by every request
//! that runs alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::LocalBoxFuture;

use crate::error::{Error, Result, TimeoutKind};

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
    pub(super) async fn run<T>(
        &self,
        attempt: &dyn Fn() -> LocalBoxFuture<'static, Result<T>>,
    ) -> (Result<T>, u32) {
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
