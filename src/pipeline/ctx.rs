//! What the pipeline's loops share: the context, the stop signal, backoff, and the
//! renewal of the leases an instance holds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use uuid::Uuid;

use crate::actors::{Leased, RenewLeases};
use crate::bot::Bot;
use crate::config::TelegramConfig;
use crate::pipeline::config::PipelineConfig;
use crate::pipeline::metrics::PipelineMetrics;
use crate::telegram::limits::RateLimits;
use crate::telegram::send::BotApi;

/// What the pipeline's loops share.
pub(super) struct Ctx {
    pub(super) bot: Bot,
    pub(super) api: BotApi,
    pub(super) limits: RateLimits,
    pub(super) telegram: TelegramConfig,
    pub(super) config: PipelineConfig,
    /// This instance, as the owner of its leases.
    pub(super) owner: Uuid,
    pub(super) metrics: Arc<PipelineMetrics>,
    pub(super) wake_turns: Notify,
    pub(super) wake_sends: Notify,
    /// `Some(deadline)` once stopping: claim nothing more, finish what runs by then.
    pub(super) stop: watch::Receiver<Option<Instant>>,
    /// Set when the turn loop has ended: no more replies will be queued here.
    pub(super) turns_stopped: std::sync::atomic::AtomicBool,
    /// `typing` actions sent in the current second, and when it began.
    pub(super) typing: std::sync::Mutex<(Instant, u32)>,
}

impl Ctx {
    /// Whether one more `typing` action fits in this second's budget (the sending
    /// limit's, `per_second`): thousands of turns at once must not become thousands of
    /// actions a second.
    pub(super) fn typing_allowed(&self) -> bool {
        let Ok(mut budget) = self.typing.lock() else {
            return false;
        };
        if budget.0.elapsed() >= Duration::from_secs(1) {
            *budget = (Instant::now(), 0);
        }
        budget.1 += 1;
        budget.1 <= self.telegram.per_second
    }
}

/// `Some(deadline)` once the pipeline is stopping.
pub(super) fn stopping(ctx: &Ctx) -> Option<Instant> {
    *ctx.stop.borrow()
}

/// An exponential backoff with jitter: about `base` x 2^`attempt`, at most `max`.
pub(super) fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(16));
    let capped = exp.min(max);
    // Up to a quarter off, so that many waiting together do not come back together.
    let jitter = (Uuid::new_v4().as_u128() % 1000) as f64 / 4000.0;
    capped.mul_f64(1.0 - jitter)
}

/// The rows (updates or messages) an instance is working on, by id: the only leases it
/// renews (a row it gave up on is not renewed, and its lease expires).
pub(super) type Active = Arc<std::sync::Mutex<std::collections::BTreeSet<i64>>>;

/// Keeps the leases of the rows `active` holds alive.
pub(super) async fn renew(ctx: &Ctx, what: Leased, active: &Active) {
    let ids: Vec<i64> = lock(active).iter().copied().collect();
    if ids.is_empty() {
        return;
    }
    let renew = RenewLeases {
        owner: ctx.owner,
        what,
        ids,
        lease: ctx.config.lease,
    };
    if let Err(e) = ctx.bot.db().send(renew).await {
        tracing::warn!(error = %e, ?what, "renewing leases failed");
    }
}

/// A poisoned lock still holds a consistent set (each change is one insert or remove).
pub(super) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
