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
//! - `ctx`: what both loops share (the lease renewal, backoff, the stop signal);
//!   `config`: how much runs at once; `metrics`: what both count.
//!
//! Durable from the 200 on: an instance that dies leaves leases that expire, and any
//! instance takes its updates and messages over. A message can reach a chat twice only
//! when its sender died (or timed out) between Telegram's answer and recording it:
//! counted as `resent_after_unknown`.
//!
//! [`RecordUpdate`]: crate::actors::RecordUpdate

mod config;
mod ctx;
mod metrics;
mod sends;
mod turns;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use uuid::Uuid;

use crate::bot::Bot;
use crate::config::TelegramConfig;
use crate::telegram::limits::RateLimits;
use crate::telegram::send::BotApi;

pub use config::PipelineConfig;
use ctx::Ctx;
pub use metrics::{LATENCY_BUCKETS, MetricsSnapshot, PipelineMetrics};

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
