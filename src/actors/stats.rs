//! What each actor reports about itself: queue depths, counts, latency percentiles.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::actors::gate::GateCounts;
use crate::db::PoolStatus;

/// Latency percentiles, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Requests measured.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

/// A latency recorder with microsecond resolution from 1 µs to 1 hour.
#[derive(Clone, Debug)]
pub(crate) struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        // 3 significant digits over 1 µs .. 1 h: a fixed ~30 KiB. Constant, valid bounds:
        // this cannot fail whatever a caller or the database does.
        Latency(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid"))
    }
}

impl Latency {
    pub(crate) fn record(&mut self, d: Duration) {
        self.0
            .saturating_record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1));
    }

    pub(crate) fn percentiles(&self) -> Percentiles {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: self.0.len(),
            p50_ms: ms(self.0.value_at_quantile(0.50)),
            p95_ms: ms(self.0.value_at_quantile(0.95)),
            p99_ms: ms(self.0.value_at_quantile(0.99)),
            max_ms: ms(self.0.max()),
        }
    }
}

/// One table actor's counters, as its `Stats` message returns them.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ActorStats {
    /// The actor (`users`, `messages`, `user_settings`).
    pub actor: &'static str,
    /// Requests waiting behind an earlier request of the same user.
    pub queued: usize,
    /// Requests running (at most one per user).
    pub in_flight: usize,
    /// Users with a request queued or running (the per-user queues held in memory).
    pub active_users: usize,
    /// The most users that had a request running at the same moment.
    pub peak_users_in_flight: usize,
    /// The most requests held at once (queued + running).
    pub peak_pending: usize,
    /// Requests answered `Ok`.
    pub completed: u64,
    /// Requests answered with an error (including those that panicked).
    pub failed: u64,
    /// Requests whose handler panicked.
    pub panicked: u64,
    /// Times the supervisor restarted the actor.
    pub restarts: u64,
    /// Batches of two or more requests run as one unit.
    pub batches: u64,
    /// Requests that ran in those batches.
    pub batched_requests: u64,
    /// The largest batch.
    pub largest_batch: usize,
    /// Requests split out of a batch to run alone (their user's row locked by another
    /// transaction, or their user unknown), so the rest of the batch did not wait.
    pub batch_splits: u64,
    /// Tries repeated after a lock timeout (each after giving the connection back).
    pub lock_retries: u64,
    /// Requests that failed because a row stayed locked past `BOTDB_LOCK_WAIT`.
    pub lock_timeouts: u64,
    /// Requests that failed because a statement ran past `DB_STATEMENT_TIMEOUT`.
    pub statement_timeouts: u64,
    /// Requests whose session the server ended, idle in a transaction too long.
    pub idle_in_transaction_timeouts: u64,
    /// Admission counters (accepted, rejected, pending in mailbox and actor).
    pub gate: GateCounts,
    /// Time from acceptance to answer (queueing + running).
    pub latency: Percentiles,
    /// Time running only.
    pub run_latency: Percentiles,
}

/// Every actor's stats and the pool's, as [`DbHandle::stats`](crate::actors::DbHandle::stats)
/// returns them.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SystemStats {
    /// One entry per table actor.
    pub actors: Vec<ActorStats>,
    /// The connection pool.
    pub pool: Option<PoolStatus>,
}
