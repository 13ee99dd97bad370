//! What each actor reports about itself: queue depths, counts, latency percentiles.

use std::time::Duration;

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

/// Sub-buckets per power of two: percentiles are within 1/16 (6.25 %) of the truth.
const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
/// Microseconds are clamped to 2^36 (19 hours).
const MAX_EXPONENT: u32 = 36;
const BUCKETS: usize = ((MAX_EXPONENT - SUB_BITS + 2) as usize) * SUB as usize;

/// A latency recorder: a log-linear histogram of microseconds (16 buckets per power of
/// two), a fixed 4.4 KiB, exact counts and maximum. Small and dependency-free, so the
/// library core does without an HDR histogram crate.
#[derive(Clone, Debug)]
pub(crate) struct Latency {
    counts: Box<[u64]>,
    total: u64,
    max_us: u64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            max_us: 0,
        }
    }
}

/// The bucket of `us` microseconds (clamped to the range).
fn bucket(us: u64) -> usize {
    let us = us.min((1 << (MAX_EXPONENT + 1)) - 1);
    if us < SUB {
        return us as usize;
    }
    let exponent = 63 - us.leading_zeros();
    let sub = (us >> (exponent - SUB_BITS)) - SUB;
    ((exponent - SUB_BITS + 1) as u64 * SUB + sub) as usize
}

/// The largest value bucket `index` holds.
fn upper_bound(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB {
        return index;
    }
    let exponent = index / SUB + u64::from(SUB_BITS) - 1;
    let sub = index % SUB;
    let width = 1u64 << (exponent - u64::from(SUB_BITS));
    ((SUB + sub) << (exponent - u64::from(SUB_BITS))) + width - 1
}

impl Latency {
    pub(crate) fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        self.counts[bucket(us)] += 1;
        self.total += 1;
        self.max_us = self.max_us.max(us);
    }

    /// The smallest recorded value at or above quantile `q`, within 1/16, never above the
    /// maximum.
    fn value_at_quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (index, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return upper_bound(index).min(self.max_us);
            }
        }
        self.max_us
    }

    pub(crate) fn percentiles(&self) -> Percentiles {
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: self.total,
            p50_ms: ms(self.value_at_quantile(0.50)),
            p95_ms: ms(self.value_at_quantile(0.95)),
            p99_ms: ms(self.value_at_quantile(0.99)),
            max_ms: ms(self.max_us),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_the_range_in_order_and_hold_their_values() {
        let mut last = 0;
        for us in (1..100_000u64).chain([1 << 20, 1 << 30, (1 << 37) - 1, u64::MAX]) {
            let b = bucket(us);
            assert!(b >= last, "{us}");
            assert!(b < BUCKETS);
            last = b;
            if us < 1 << 37 {
                assert!(
                    upper_bound(b) >= us,
                    "{us} in bucket {b} up to {}",
                    upper_bound(b)
                );
                assert!(b == 0 || upper_bound(b - 1) < us, "{us}");
            }
        }
    }

    #[test]
    fn percentiles_are_within_a_sixteenth_of_the_exact_ones() {
        let mut l = Latency::default();
        // 1 ms .. 10 s, uneven.
        let values: Vec<u64> = (1..=10_000u64).map(|i| i * i / 10 + 1000).collect();
        for &v in &values {
            l.record(Duration::from_micros(v));
        }
        let mut sorted = values.clone();
        sorted.sort_unstable();
        for q in [0.5, 0.95, 0.99] {
            let exact = sorted[((q * sorted.len() as f64).ceil() as usize) - 1] as f64;
            let got = l.value_at_quantile(q) as f64;
            assert!(
                got >= exact && got <= exact * (1.0 + 1.0 / 16.0),
                "q {q}: {got} vs {exact}"
            );
        }
        let p = l.percentiles();
        assert_eq!(p.count, 10_000);
        assert_eq!(p.max_ms, (10_000u64 * 10_000 / 10 + 1000) as f64 / 1000.0);
        assert_eq!(Latency::default().percentiles(), Percentiles::default());
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
