//! The send loop: claims each chat's next unsent message, sends it within Telegram's
//! limits, and records what Telegram answered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::actors::{ClaimSends, Leased, RecordSend, ReleaseLeases};
use crate::pipeline::ctx::{Active, Ctx, backoff, lock, renew, stopping};
use crate::pipeline::metrics::PipelineMetrics;
use crate::repo::outbox::{Claimed, Sent};
use crate::telegram::send::SendError;

/// Runs until the pipeline stops and the turn loop has queued its last replies (or the
/// grace is over).
pub(super) async fn run(ctx: Arc<Ctx>) {
    let active: Active = Arc::default();
    let mut sending = FuturesUnordered::new();
    let mut last_renewal = Instant::now();
    // The last claim found nothing to send.
    let mut idle = false;
    let mut failures = 0u32;
    loop {
        let stop = stopping(&ctx);
        // At the stop: on until the turn loop has queued its last replies and they are
        // sent, or the grace is over.
        let turns_stopped = ctx.turns_stopped.load(std::sync::atomic::Ordering::Acquire);
        if let Some(deadline) = stop
            && (Instant::now() >= deadline || (turns_stopped && sending.is_empty() && idle))
        {
            break;
        }
        let room = ctx.config.sends_in_flight.saturating_sub(sending.len());
        if room > 0 {
            let claim = ClaimSends {
                owner: ctx.owner,
                limit: i64::try_from(room).unwrap_or(i64::MAX),
                lease: ctx.config.lease,
            };
            match ctx.bot.db().send(claim).await {
                Ok(claimed) => {
                    failures = 0;
                    idle = claimed.is_empty();
                    for message in claimed {
                        lock(&active).insert(message.id);
                        sending.push(one(ctx.clone(), active.clone(), message));
                    }
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, "claiming messages to send failed; trying again");
                }
            }
        }
        if last_renewal.elapsed() >= ctx.config.lease / 3 {
            last_renewal = Instant::now();
            renew(&ctx, Leased::Sends, &active).await;
        }
        let wait = match (failures, stop) {
            (0, None) => ctx.config.poll.min(ctx.config.lease / 3),
            (0, Some(deadline)) => deadline.saturating_duration_since(Instant::now()),
            (n, _) => backoff(n, Duration::from_millis(100), Duration::from_secs(5)),
        };
        let mut stop_changed = ctx.stop.clone();
        tokio::select! {
            Some(()) = sending.next(), if !sending.is_empty() => {}
            _ = ctx.wake_sends.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stop_changed.changed() => {}
        }
    }
    drop(sending);
    if !lock(&active).is_empty() {
        let release = ReleaseLeases {
            owner: ctx.owner,
            what: Leased::Sends,
            only: None,
        };
        if let Err(e) = ctx.bot.db().send(release).await {
            tracing::warn!(error = %e, "giving unsent messages back failed: their leases will expire");
        }
    }
}

/// Sends one message and records what Telegram answered.
async fn one(ctx: Arc<Ctx>, active: Active, message: Claimed) {
    if message.reclaimed {
        // Its earlier sender died (or stalled past its lease) between claiming and
        // recording: Telegram may have it already.
        PipelineMetrics::count(&ctx.metrics.resent_after_unknown);
    }
    ctx.limits.wait(message.chat_id).await;
    let attempt = u32::try_from(message.attempts).unwrap_or(u32::MAX);
    let gave_up = attempt >= ctx.telegram.attempts;
    let (outcome, sent) = match ctx.api.send_message(message.chat_id, &message.text).await {
        Ok(message_id) => ("delivered", Sent::Delivered(message_id)),
        Err(SendError::RetryAfter(after)) => {
            // Telegram's own flood control: this chat (and, to be safe, everyone) waits.
            ctx.limits.pause(Some(message.chat_id), after);
            ("retry_after", Sent::Retry(after, "429 Too Many Requests".into()))
        }
        Err(SendError::Refused { code, description }) => {
            ("refused", Sent::Failed(format!("{code}: {description}")))
        }
        Err(e) if gave_up => {
            tracing::warn!(chat_id = message.chat_id, attempts = attempt, error = %e, "giving up on a message");
            (
                "gave_up",
                Sent::Failed(format!("gave up after {attempt} attempts: {}", e.kind())),
            )
        }
        Err(e) => {
            if matches!(e, SendError::Unknown(_)) {
                // The request may have reached Telegram: sending again may duplicate.
                PipelineMetrics::count(&ctx.metrics.resent_after_unknown);
            }
            let wait = backoff(attempt, Duration::from_millis(500), ctx.telegram.max_backoff);
            (e.kind(), Sent::Retry(wait, e.kind().into()))
        }
    };
    ctx.metrics.send(outcome);
    let record = RecordSend {
        id: message.id,
        chat_id: message.chat_id,
        owner: ctx.owner,
        attempt: message.attempts,
        sent,
    };
    let mut tries = 0;
    loop {
        match ctx.bot.db().send(record.clone()).await {
            Ok(_) => break,
            Err(e) if tries < 5 => {
                tries += 1;
                tracing::warn!(error = %e, "recording a send failed; trying again");
                tokio::time::sleep(backoff(tries, Duration::from_millis(200), Duration::from_secs(5))).await;
            }
            // Its lease expires and it is sent again: counted as a resend then.
            Err(e) => {
                tracing::warn!(error = %e, "recording a send failed for good");
                break;
            }
        }
    }
    lock(&active).remove(&message.id);
}
