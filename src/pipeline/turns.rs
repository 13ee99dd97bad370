//! The turn loop: claims updates (each dialogue's next, when nothing of it runs), runs
//! each through the bot, and finishes it with its reply queued, fenced by its lease.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::actors::{ClaimTurns, FinishTurn, Finished, Leased, ReleaseLeases, Reply};
use crate::bot::{Answer, BotError, Command, Handled, Update};
use crate::error::Error;
use crate::pipeline::ctx::{Active, Ctx, backoff, lock, renew, stopping};
use crate::pipeline::metrics::PipelineMetrics;
use crate::repo::inbox::Claimed;
use crate::telegram::split::{MAX_MESSAGE_UTF16, split_message};

/// How often `typing` is shown while the model runs (Telegram shows it for 5 s).
const TYPING_EVERY: Duration = Duration::from_millis(4500);

/// How many times a turn is tried again after a transient database failure before it
/// is given back (another instance, or this one later, takes it).
const DB_ATTEMPTS: u32 = 5;

/// Runs until the pipeline stops: claims while there is room, drives the running
/// turns, renews their leases; at the stop, finishes what it can within the grace and
/// gives the rest back.
pub(super) async fn run(ctx: Arc<Ctx>) {
    let active: Active = Arc::default();
    let mut running = FuturesUnordered::new();
    let mut last_claim: Option<Instant> = None;
    let mut last_renewal = Instant::now();
    let mut failures = 0u32;
    loop {
        if let Some(deadline) = stopping(&ctx) {
            drain(&ctx, &active, running, deadline).await;
            ctx.turns_stopped
                .store(true, std::sync::atomic::Ordering::Release);
            ctx.wake_sends.notify_one();
            return;
        }
        let room = ctx.config.turns_in_flight.saturating_sub(running.len());
        let since_claim = last_claim.map_or(Duration::MAX, |t| t.elapsed());
        // Every wake-up is a reason to look (a turn ended, an update came, the poll),
        // but not more often than `claim_every`.
        if room > 0 && since_claim >= ctx.config.claim_every {
            last_claim = Some(Instant::now());
            let claim = ClaimTurns {
                owner: ctx.owner,
                limit: i64::try_from(room).unwrap_or(i64::MAX),
                lease: ctx.config.lease,
            };
            match ctx.bot.db().send(claim).await {
                Ok(claimed) => {
                    failures = 0;
                    for update in claimed {
                        if update.reclaimed {
                            PipelineMetrics::count(&ctx.metrics.turns_reclaimed);
                        }
                        lock(&active).insert(update.id);
                        running.push(one(ctx.clone(), active.clone(), update));
                    }
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, "claiming updates failed; trying again");
                }
            }
        }
        if last_renewal.elapsed() >= ctx.config.lease / 3 {
            last_renewal = Instant::now();
            renew(&ctx, Leased::Turns, &active).await;
        }
        // Wait for a turn to end, a new update, the next claim or poll, or the stop.
        let wait = if failures > 0 {
            backoff(failures, Duration::from_millis(100), Duration::from_secs(5))
        } else if room > 0 && since_claim < ctx.config.claim_every {
            // Woken too soon after a claim: the rest of the interval.
            ctx.config.claim_every - since_claim
        } else {
            ctx.config.poll.min(ctx.config.lease / 3)
        };
        let mut stop = ctx.stop.clone();
        tokio::select! {
            Some(()) = running.next(), if !running.is_empty() => {}
            _ = ctx.wake_turns.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
    }
}

/// At the stop: the running turns get until `deadline`; what is still running then is
/// given back.
async fn drain(
    ctx: &Ctx,
    active: &Active,
    mut running: FuturesUnordered<impl Future<Output = ()>>,
    deadline: Instant,
) {
    let finished =
        tokio::time::timeout_at(deadline.into(), async { while running.next().await.is_some() {} }).await;
    drop(running);
    if finished.is_err() || !lock(active).is_empty() {
        let release = ReleaseLeases {
            owner: ctx.owner,
            what: Leased::Turns,
            only: None,
        };
        match ctx.bot.db().send(release).await {
            Ok(n) => tracing::info!(given_back = n, "stopped with turns unfinished: given back"),
            Err(e) => tracing::warn!(error = %e, "giving turns back failed: their leases will expire"),
        }
    }
}

/// Runs one claimed update to its end.
async fn one(ctx: Arc<Ctx>, active: Active, update: Claimed) {
    let finished = run_one(&ctx, &update).await;
    lock(&active).remove(&update.id);
    match finished {
        Ok(Finished::Done) => PipelineMetrics::count(&ctx.metrics.turns_done),
        Ok(Finished::Erased) => PipelineMetrics::count(&ctx.metrics.turns_erased),
        Ok(Finished::Fenced) => PipelineMetrics::count(&ctx.metrics.turns_fenced),
        Err(e) => {
            // Given back: whoever claims it next runs it again (its turn, if stored,
            // comes back from its key: the model is not asked twice).
            tracing::warn!(update_id = update.update_id, error = %e, "a turn failed; giving it back");
            let release = ReleaseLeases {
                owner: ctx.owner,
                what: Leased::Turns,
                only: Some((update.id, update.attempts)),
            };
            let _ = ctx.bot.db().send(release).await;
        }
    }
    ctx.wake_sends.notify_one();
}

async fn run_one(ctx: &Ctx, claimed: &Claimed) -> Result<Finished, Error> {
    let update: Option<Update> = serde_json::from_value(claimed.payload.clone()).ok();
    let handled = match &update {
        Some(update) => handle(ctx, update).await?,
        None => None,
    };
    let reply = handled.and_then(|handled| {
        let note = match handled.model {
            Some(call) => {
                ctx.metrics.model_call(call.latency, call.failure);
                match call.failure {
                    Some(kind) => format!("model failed: {kind}"),
                    None => "reply".into(),
                }
            }
            None => "command".into(),
        };
        match handled.answer {
            Answer::Text { chat_id, text } => Some(Reply {
                chat_id,
                parts: split_message(&text, MAX_MESSAGE_UTF16),
                note,
            }),
            Answer::Ignored(_) => None,
        }
    });
    let key = crate::model::RequestKey::new(claimed.scope.clone(), claimed.update_id.to_string())?;
    let finish = FinishTurn {
        id: claimed.id,
        user_id: claimed.user_id,
        chat_id: claimed.chat_id,
        owner: ctx.owner,
        attempt: claimed.attempts,
        key,
        reply,
    };
    with_retries(async || ctx.bot.db().send(finish.clone()).await).await
}

/// The bot's answer to the update (`None`: dropped, an update the bot refuses), with
/// `typing` shown while a model turn runs.
async fn handle(ctx: &Ctx, update: &Update) -> Result<Option<Handled>, Error> {
    let turn = async {
        let handled = with_retries(async || match ctx.bot.handle_traced(update.clone()).await {
            Ok(handled) => Ok(Some(handled)),
            Err(BotError::BadUpdate(why)) => {
                tracing::warn!(
                    update_id = update.update_id,
                    why,
                    "an update the bot refuses: dropped"
                );
                PipelineMetrics::count(&ctx.metrics.turns_dropped);
                Ok(None)
            }
            Err(BotError::Db(e)) => Err(e),
        })
        .await;
        match handled {
            // Refused for good (a copy naming another chat, an input the database
            // refuses): dropped, so that it does not come back for ever.
            Err(e) if !e.is_transient() && !matches!(e, Error::OutcomeUnknown { .. }) => {
                tracing::warn!(update_id = update.update_id, error = %e, "an update failed for good: dropped");
                PipelineMetrics::count(&ctx.metrics.turns_dropped);
                Ok(None)
            }
            other => other,
        }
    };
    let Some(chat_id) = model_turn_chat(update) else {
        return turn.await;
    };
    // `typing` until the turn ends (best effort: a failure is only logged, and past
    // `BOTDB_SEND_PER_SECOND` actions a second the action is skipped rather than let it
    // crowd out the replies).
    let typing = async {
        loop {
            if ctx.typing_allowed()
                && let Err(e) = ctx.api.send_chat_action(chat_id, "typing").await
            {
                tracing::debug!(error = %e, "sendChatAction failed");
            }
            tokio::time::sleep(TYPING_EVERY).await;
        }
    };
    tokio::select! {
        result = turn => result,
        _ = typing => Ok(None),
    }
}

/// The chat of an update the model will answer (a text that is not a command).
fn model_turn_chat(update: &Update) -> Option<i64> {
    let message = update.message.as_ref()?;
    match Command::parse(message.text.as_deref()?) {
        Command::Text(_) => Some(message.chat.id),
        _ => None,
    }
}

/// `attempt` again after a transient failure (the database failing over, a pool
/// timeout), with backoff, up to [`DB_ATTEMPTS`] times.
async fn with_retries<T>(mut attempt: impl AsyncFnMut() -> Result<T, Error>) -> Result<T, Error> {
    let mut tries = 0;
    loop {
        match attempt().await {
            Err(e)
                if (e.is_transient() || matches!(e, Error::OutcomeUnknown { .. }))
                    && tries + 1 < DB_ATTEMPTS =>
            {
                tries += 1;
                tokio::time::sleep(backoff(tries, Duration::from_millis(200), Duration::from_secs(5))).await;
            }
            other => return other,
        }
    }
}
