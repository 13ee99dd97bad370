//! The in-process cells: C workers, each on its own share of the users, running turns
//! of one mode back to back until the deadline, each turn timed.
//!
//! Worker `k` of C takes the users `k + 1, k + 1 + C, k + 1 + 2C, ...` (picked at random
//! among those), so no two workers touch the same user and the cells measure
//! concurrency across users, not waits on one user's lock. [`Target`] is what every
//! worker of every mode needs, built once for the run; what a turn of each mode does is
//! in that mode's file ([`crate::actors`], [`crate::baselines`], [`crate::bot`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use botdb::Database;
use botdb::actors::DbHandle;
use hdrhistogram::Histogram;
use sqlx::PgPool;

use crate::Mode;
use crate::actors::{KEYS, Read, five_requests, five_requests_reading, session_turn};
use crate::baselines::{PgbenchTarget, raw_turn};
use crate::bot::bot_turn;
use crate::stats::{Sample, cpu_times, histogram, merged, sample};

/// What every worker of every mode needs.
pub struct Target {
    /// Modes `raw`, `raw-tx`: a plain sqlx pool, sqlx's default options; also the
    /// bench's own connections (reset, counters, explain).
    pub raw: PgPool,
    /// Modes `direct`, `session`: botdb's `Database`, no actors.
    pub db: Database,
    /// Mode `actors`: the actors with batching off (`batch_max` 1).
    pub per_message: DbHandle,
    /// Modes `batched`, `keyed`, `context` (and `bot` through it): botdb's defaults.
    pub batched: DbHandle,
    /// `batched` over a Database that reads from a standby (mode `replica`).
    pub replica: Option<(DbHandle, Database)>,
    /// Users in the data set (ids 1 to `users`).
    pub users: i64,
    /// The user's message (200 characters) and the reply (400) of every turn.
    pub user_text: Arc<str>,
    pub reply_text: Arc<str>,
    /// For pgbench: where and as whom to connect.
    pub pg: Option<PgbenchTarget>,
    /// Mode `bot`: the bot `serve` runs (echo model), over `batched`, in this process.
    pub bot: botdb::bot::Bot,
    /// The text of a `bot` or `http` update (200 characters).
    pub update_text: Arc<str>,
}

/// One cell of an in-process mode: `concurrency` workers for `duration`.
pub async fn measure(target: &Arc<Target>, mode: Mode, concurrency: usize, duration: Duration) -> Sample {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let (cpu_before, _) = cpu_times();
    let workers: Vec<_> = (0..concurrency)
        .map(|k| {
            let target = target.clone();
            spawn(async move { worker(&target, mode, k, concurrency, deadline).await })
        })
        .collect();
    let (hist, errors) = merged(workers).await;
    let elapsed = started.elapsed().as_secs_f64();
    let (cpu_after, _) = cpu_times();
    sample(mode, concurrency, &hist, errors, elapsed, cpu_after - cpu_before)
}

/// Spawns on the tokio pool when there is one, else on the actix system thread.
fn spawn<F>(fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => actix_rt::spawn(fut),
        _ => tokio::spawn(fut),
    }
}

/// xorshift64*: enough randomness to pick users, no dependency.
pub struct Rng(pub u64);

impl Rng {
    /// A number from 0 to `n` - 1.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

/// Worker `k` of `c`: turns of `mode` on its users until `deadline`; their latencies
/// and the turns that failed.
async fn worker(target: &Target, mode: Mode, k: usize, c: usize, deadline: Instant) -> (Histogram<u64>, u64) {
    let mut hist = histogram();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (k as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9));
    let (k, c) = (k as i64, c as i64);
    let slots = (target.users - 1 - k) / c + 1;
    let mut errors = 0;
    while Instant::now() < deadline {
        let uid = 1 + k + rng.below(slots as u64) as i64 * c;
        let start = Instant::now();
        let ok = match mode {
            Mode::Raw => raw_turn(target, uid, false).await.is_ok(),
            Mode::RawTx => raw_turn(target, uid, true).await.is_ok(),
            Mode::Session => session_turn(target, uid).await.is_ok(),
            Mode::Actors => five_requests(target, &target.per_message, uid, None)
                .await
                .is_ok(),
            Mode::Batched => five_requests(target, &target.batched, uid, None).await.is_ok(),
            Mode::Context => five_requests_reading(target, &target.batched, uid, None, Read::Context)
                .await
                .is_ok(),
            Mode::Replica => match &target.replica {
                Some((handle, _)) => five_requests(target, handle, uid, None).await.is_ok(),
                None => false,
            },
            Mode::Keyed => {
                let turn = KEYS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                five_requests(target, &target.batched, uid, Some(turn))
                    .await
                    .is_ok()
            }
            Mode::Direct => five_requests(target, &target.db, uid, None).await.is_ok(),
            Mode::Bot => bot_turn(target, uid).await,
            Mode::Pgbench | Mode::PgbenchTx | Mode::Http => false,
        };
        if ok {
            let _ = hist.record(start.elapsed().as_micros() as u64);
        } else {
            errors += 1;
        }
    }
    (hist, errors)
}
