//! The turn pipeline of a bot that answers through Telegram's Bot API: the webhook
//! records each update and answers 200 at once ([`RecordUpdate`]); this runs the
//! updates and sends the replies, on any number of instances.
//!
//! - `turns`: claims the next update of each dialogue with nothing running (one turn
//!   at a time per dialogue, in update order, across instances), runs it through the
//!   [`Bot`] (the model is asked, both messages stored once under the update's key),
//!   and finishes it: the update leaves the inbox and its reply, split into Telegram's
//!   4,096-character messages, enters the outbox, in one transaction, only if this
//!   instance still holds the update's lease.
//! - `sends`: claims each chat's next unsent message and sends it, within Telegram's
//!   limits (30 messages a second overall, one a second per chat, a 429's
//!   `retry_after`), recording what Telegram answered; 5xx and timeouts are retried
//!   with backoff, 400 and 403 are recorded and not retried.
//! - `metrics`: what both count.
//!
//! Durable from the 200 on: an instance that dies leaves leases that expire, and any
//! instance takes its updates and messages over. A message can reach a chat twice only
//! when its sender died (or timed out) between Telegram's answer and recording it:
//! counted as `resent_after_unknown`.
//!
//! [`RecordUpdate`]: crate::actors::RecordUpdate

mod metrics;
mod sends;
mod turns;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use uuid::Uuid;

use crate::actors::{Leased, RenewLeases};
use crate::bot::Bot;
use crate::config::TelegramConfig;
use crate::telegram::limits::RateLimits;
use crate::telegram::send::BotApi;

pub use metrics::{LATENCY_BUCKETS, MetricsSnapshot, PipelineMetrics};

/// How much the pipeline does at once, and how it keeps its leases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PipelineConfig {
    /// Turns this instance runs at once (`BOTDB_TURNS_IN_FLIGHT`): the model calls in
    /// flight.
    pub turns_in_flight: usize,
    /// Messages this instance sends at once.
    pub sends_in_flight: usize,
    /// How long a claim holds without renewal: an instance that dies gives its work
    /// over after at most this long (`BOTDB_LEASE`).
    pub lease: Duration,
    /// How often it looks for work nobody woke it for (another instance's updates,
    /// expired leases, messages due again).
    pub poll: Duration,
    /// The least time between two claims (each a statement over the open updates).
    pub claim_every: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            turns_in_flight: 256,
            sends_in_flight: 64,
            lease: Duration::from_secs(30),
            poll: Duration::from_millis(250),
            claim_every: Duration::from_millis(20),
        }
    }
}

/// What the pipeline's loops share.
struct Ctx {
    bot: Bot,
    api: BotApi,
    limits: RateLimits,
    telegram: TelegramConfig,
    config: PipelineConfig,
    /// This instance, as the owner of its leases.
    owner: Uuid,
    metrics: Arc<PipelineMetrics>,
    wake_turns: Notify,
    wake_sends: Notify,
    /// `Some(deadline)` once stopping: claim nothing more, finish what runs by then.
    stop: watch::Receiver<Option<Instant>>,
    /// Set when the turn loop has ended: no more replies will be queued here.
    turns_stopped: std::sync::atomic::AtomicBool,
    /// `typing` actions sent in the current second, and when it began.
    typing: std::sync::Mutex<(Instant, u32)>,
}

impl Ctx {
    /// Whether one more `typing` action fits in this second's budget (the sending
    /// limit's, `per_second`): thousands of turns at once must not become thousands of
    /// actions a second.
    fn typing_allowed(&self) -> bool {
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

/// A running pipeline (on the current actix arbiter), until [`Pipeline::stop`].
pub struct Pipeline {
    ctx: Arc<Ctx>,
    stop: watch::Sender<Option<Instant>>,
    loops: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("owner", &self.ctx.owner)
            .field("config", &self.ctx.config)
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// Starts the turn, send and lease loops on the current actix arbiter (inside a
    /// running actix `System`).
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) without a usable Telegram configuration
    /// (no token).
    pub fn start(bot: Bot, telegram: &TelegramConfig, config: PipelineConfig) -> crate::Result<Pipeline> {
        let api = BotApi::new(telegram)?;
        let (stop, stopping) = watch::channel(None);
        let ctx = Arc::new(Ctx {
            bot,
            api,
            limits: RateLimits::new(telegram.per_second, telegram.per_chat_interval),
            telegram: telegram.clone(),
            config,
            owner: Uuid::new_v4(),
            metrics: Arc::default(),
            wake_turns: Notify::new(),
            wake_sends: Notify::new(),
            stop: stopping,
            turns_stopped: std::sync::atomic::AtomicBool::new(false),
            typing: std::sync::Mutex::new((Instant::now(), 0)),
        });
        let loops = vec![
            actix_rt::spawn(turns::run(ctx.clone())),
            actix_rt::spawn(sends::run(ctx.clone())),
        ];
        tracing::info!(owner = %ctx.owner, ?config, "turn pipeline started");
        Ok(Pipeline {
            ctx,
            stop,
            loops: std::sync::Mutex::new(loops),
        })
    }

    /// A new update was recorded: look for work now.
    pub fn wake(&self) {
        self.ctx.wake_turns.notify_one();
    }

    /// The pipeline's counters.
    pub fn metrics(&self) -> &Arc<PipelineMetrics> {
        &self.ctx.metrics
    }

    /// This instance's id as the owner of its leases.
    pub fn owner(&self) -> Uuid {
        self.ctx.owner
    }

    /// Stops claiming, lets what runs finish within `grace` (turns, then the messages
    /// they queued), then gives back what is left for another instance to take at once.
    /// A second call returns at once.
    pub async fn stop(&self, grace: Duration) {
        let _ = self.stop.send(Some(Instant::now() + grace));
        self.ctx.wake_turns.notify_one();
        self.ctx.wake_sends.notify_one();
        let loops: Vec<_> = self
            .loops
            .lock()
            .map(|mut loops| loops.drain(..).collect())
            .unwrap_or_default();
        for handle in loops {
            let _ = handle.await;
        }
        tracing::info!(owner = %self.ctx.owner, "turn pipeline stopped");
    }
}

/// `Some(deadline)` once the pipeline is stopping.
fn stopping(ctx: &Ctx) -> Option<Instant> {
    *ctx.stop.borrow()
}

/// An exponential backoff with jitter: about `base` x 2^`attempt`, at most `max`.
fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(16));
    let capped = exp.min(max);
    // Up to a quarter off, so that many waiting together do not come back together.
    let jitter = (Uuid::new_v4().as_u128() % 1000) as f64 / 4000.0;
    capped.mul_f64(1.0 - jitter)
}

/// The rows (updates or messages) an instance is working on, by id: the only leases it
/// renews (a row it gave up on is not renewed, and its lease expires).
type Active = Arc<std::sync::Mutex<std::collections::BTreeSet<i64>>>;

/// Keeps the leases of the rows `active` holds alive.
async fn renew(ctx: &Ctx, what: Leased, active: &Active) {
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
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
