//! What the pipeline counts, for `/metrics`: turns by how they ended, the model's
//! latency and failures, messages by what Telegram answered, and the resends that may
//! have duplicated a message.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The upper bounds (seconds) of the model latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 11] = [0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0];

/// The pipeline's counters, shared by its loops and read by `/metrics`.
#[derive(Debug, Default)]
pub struct PipelineMetrics {
    /// Updates whose turn ended and whose reply went to the outbox.
    pub turns_done: AtomicU64,
    /// Updates whose user was erased while they ran (the reply tells them so).
    pub turns_erased: AtomicU64,
    /// Updates this instance began but another finished (its lease had expired).
    pub turns_fenced: AtomicU64,
    /// Updates this instance took over from an owner whose lease expired.
    pub turns_reclaimed: AtomicU64,
    /// Updates that failed with an error that trying again does not mend (dropped).
    pub turns_dropped: AtomicU64,
    /// Model calls, and their latency.
    model: Mutex<Latency>,
    /// Model failures by kind.
    model_failures: Mutex<Vec<(&'static str, u64)>>,
    /// Messages by what sending them did.
    sends: Mutex<Vec<(&'static str, u64)>>,
    /// Messages sent again after an attempt whose outcome is unknown (a timeout after
    /// the request left, or an owner that died between sending and recording): each may
    /// have reached the chat twice.
    pub resent_after_unknown: AtomicU64,
}

#[derive(Debug, Default)]
struct Latency {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// A copy of the counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsSnapshot {
    /// See [`PipelineMetrics::turns_done`].
    pub turns_done: u64,
    /// See [`PipelineMetrics::turns_erased`].
    pub turns_erased: u64,
    /// See [`PipelineMetrics::turns_fenced`].
    pub turns_fenced: u64,
    /// See [`PipelineMetrics::turns_reclaimed`].
    pub turns_reclaimed: u64,
    /// See [`PipelineMetrics::turns_dropped`].
    pub turns_dropped: u64,
    /// Cumulative counts of model calls at most each of [`LATENCY_BUCKETS`] seconds.
    pub model_buckets: Vec<(f64, u64)>,
    /// Model calls.
    pub model_calls: u64,
    /// Their total seconds.
    pub model_seconds: f64,
    /// Model failures by kind.
    pub model_failures: Vec<(&'static str, u64)>,
    /// Messages by outcome.
    pub sends: Vec<(&'static str, u64)>,
    /// See [`PipelineMetrics::resent_after_unknown`].
    pub resent_after_unknown: u64,
}

impl PipelineMetrics {
    /// Adds one to `counter`.
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A model call that took `latency` and failed as `failure`, if it did.
    pub fn model_call(&self, latency: Duration, failure: Option<&'static str>) {
        let secs = latency.as_secs_f64();
        if let Ok(mut l) = self.model.lock() {
            l.count += 1;
            l.sum += secs;
            for (bucket, bound) in l.buckets.iter_mut().zip(LATENCY_BUCKETS) {
                if secs <= bound {
                    *bucket += 1;
                }
            }
        }
        if let Some(kind) = failure {
            bump(&self.model_failures, kind);
        }
    }

    /// A message sent, or not, as `outcome` (`delivered`, `retry_after`, `transient`,
    /// `unknown`, `refused`, `gave_up`).
    pub fn send(&self, outcome: &'static str) {
        bump(&self.sends, outcome);
    }

    /// The counters now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (model_buckets, model_calls, model_seconds) = match self.model.lock() {
            Ok(l) => (
                LATENCY_BUCKETS.iter().copied().zip(l.buckets).collect(),
                l.count,
                l.sum,
            ),
            Err(_) => (Vec::new(), 0, 0.0),
        };
        MetricsSnapshot {
            turns_done: load(&self.turns_done),
            turns_erased: load(&self.turns_erased),
            turns_fenced: load(&self.turns_fenced),
            turns_reclaimed: load(&self.turns_reclaimed),
            turns_dropped: load(&self.turns_dropped),
            model_buckets,
            model_calls,
            model_seconds,
            model_failures: self.model_failures.lock().map(|v| v.clone()).unwrap_or_default(),
            sends: self.sends.lock().map(|v| v.clone()).unwrap_or_default(),
            resent_after_unknown: load(&self.resent_after_unknown),
        }
    }
}

fn bump(counts: &Mutex<Vec<(&'static str, u64)>>, label: &'static str) {
    if let Ok(mut counts) = counts.lock() {
        match counts.iter_mut().find(|(l, _)| *l == label) {
            Some((_, n)) => *n += 1,
            None => counts.push((label, 1)),
        }
    }
}
