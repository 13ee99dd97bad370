//! The load simulation: many users talking to the bot at once, through the actors.
//!
//! Each simulated user sends Telegram updates to the same [`Bot`] that `botdb serve`
//! runs (minus HTTP): `/start`, then text turns (history, model, both messages stored in
//! one transaction); every tenth sets `/limit 6`, every seventh sends `/reset` half-way,
//! and with `--redeliver` some updates come twice at once (and some a third time
//! later), as Telegram delivers them when a 200 is late. `--concurrency` workers take
//! the users one after the other. Every acknowledged turn is logged ([`Log`]) for the
//! verification; a signal or `--duration` stops new turns, and the actors are drained
//! before the result is handed back ([`Simulated`]).
//!
//! With `--standby`, an update that fails as `serve` would answer 503 (a transient
//! error, or one of unknown outcome, while the primary is gone) is delivered again with
//! the same update id until answered, as Telegram redelivers.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use botdb::actors::{DbSystem, ShutdownReport};
use botdb::bot::telegram::{TgChat, TgMessage, TgUser};
use botdb::bot::{Bot, BotError, EchoModel, Outcome, Update};
use botdb::shutdown::Signals;
use botdb::{Config, Database};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

use super::args::DemoArgs;
use super::standby::{Failover, Pair};

/// Demo users get ids from here up, far from real Telegram ids.
pub(super) const FIRST_USER: i64 = 9_000_000_000_000;

/// How long a turn that failed transiently is redelivered before it counts as failed
/// (Telegram goes on for a day; a demo has to end).
const REDELIVER_FOR: Duration = Duration::from_secs(120);
/// The first wait before a redelivery; it doubles up to [`REDELIVER_MAX_WAIT`].
const REDELIVER_FIRST_WAIT: Duration = Duration::from_millis(50);
const REDELIVER_MAX_WAIT: Duration = Duration::from_secs(1);

/// What one user did that the bot acknowledged, in order.
#[derive(Default)]
pub(super) struct Log {
    /// (text, reply) of each acknowledged turn.
    pub(super) turns: Vec<(String, String)>,
    /// How many of `turns` came before an acknowledged `/reset`.
    pub(super) reset_after: Option<usize>,
}

/// What the simulated users share; they all run on the actix system thread.
struct Shared {
    bot: Bot,
    stop: Arc<AtomicBool>,
    turn_latency: RefCell<Histogram<u64>>,
    logs: RefCell<HashMap<i64, Log>>,
    failures: RefCell<Vec<String>>,
    progress: ProgressBar,
    /// Percent of turns redelivered.
    redeliver: f64,
    /// Copies delivered (beyond the first), and copies answered with the first reply.
    copies: std::cell::Cell<(u64, u64)>,
    /// Text turns acknowledged so far.
    acknowledged: Cell<u64>,
    /// With `--standby`: the failover, and transient failures are redelivered.
    failover: Option<Rc<Failover>>,
}

/// A text update from `user_id` in their private chat.
fn update(user_id: i64, update_id: i64, text: &str) -> Update {
    Update {
        update_id,
        message: Some(TgMessage {
            message_id: update_id,
            from: Some(TgUser {
                id: user_id,
                is_bot: false,
            }),
            chat: TgChat { id: user_id },
            text: Some(text.to_string()),
        }),
    }
}

/// The update id of a user's `n`-th update: unique per bot, as Telegram's are.
fn update_id(user_id: i64, n: i64) -> i64 {
    (user_id - FIRST_USER) * 100_000 + n
}

async fn say(shared: &Shared, user_id: i64, n: &mut i64, text: &str) -> Option<String> {
    *n += 1;
    deliver(shared, user_id, update_id(user_id, *n), text).await
}

/// Delivers an update; with `--standby`, redelivers it while it fails as `serve` would
/// answer 503 (bounded backoff, at most [`REDELIVER_FOR`]). `None` when it was not
/// answered (counted as a failure unless the run is stopping).
async fn deliver(shared: &Shared, user_id: i64, update_id: i64, text: &str) -> Option<String> {
    let first = Instant::now();
    let mut wait = REDELIVER_FIRST_WAIT;
    loop {
        match shared.bot.handle(update(user_id, update_id, text)).await {
            Ok(Outcome::Reply(reply)) => return Some(reply.text),
            Ok(Outcome::Ignored(why)) => {
                shared
                    .failures
                    .borrow_mut()
                    .push(format!("user {user_id}: ignored ({why})"));
                return None;
            }
            // With a standby, a failure `serve` answers 503 is redelivered, as Telegram
            // does: the same update id, so a turn that was stored is not stored again.
            Err(BotError::Db(e))
                if (e.is_transient() || e.is_outcome_unknown())
                    && !shared.stop.load(Ordering::Relaxed)
                    && first.elapsed() < REDELIVER_FOR
                    && let Some(failover) = &shared.failover =>
            {
                failover.redelivered.set(failover.redelivered.get() + 1);
                actix_rt::time::sleep(wait).await;
                wait = (wait * 2).min(REDELIVER_MAX_WAIT);
            }
            Err(e) => {
                if !shared.stop.load(Ordering::Relaxed) {
                    shared.failures.borrow_mut().push(format!("user {user_id}: {e}"));
                }
                return None;
            }
        }
    }
}

/// One user's conversation.
async fn converse(shared: Rc<Shared>, user_id: i64, turns: u32) {
    let mut n = 0;
    if say(&shared, user_id, &mut n, "/start").await.is_none() {
        return;
    }
    if user_id % 10 == 0 && say(&shared, user_id, &mut n, "/limit 6").await.is_none() {
        return;
    }
    let filler = "lorem ipsum dolor sit amet, consectetur adipiscing elit ".repeat(3);
    // A copy to deliver again after the next turn: (update id, text, first reply).
    let mut pending_copy: Option<(i64, String, Option<String>)> = None;
    for t in 0..turns {
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        if user_id % 7 == 0 && t == turns / 2 {
            if say(&shared, user_id, &mut n, "/reset").await.is_none() {
                return;
            }
            let mut logs = shared.logs.borrow_mut();
            let log = logs.entry(user_id).or_default();
            log.reset_after = Some(log.turns.len());
        }
        let text = format!("user {user_id} turn {t}: {filler}");
        let started = Instant::now();
        // Some updates come twice at once (a 200 that was late), the same update id.
        let roll = (user_id.rem_euclid(101) * 37 + i64::from(t) * 53) % 100;
        let twice = (roll as f64) < shared.redeliver;
        let reply = if twice {
            n += 1;
            let id = update_id(user_id, n);
            let (a, b) = futures::join!(
                deliver(&shared, user_id, id, &text),
                deliver(&shared, user_id, id, &text)
            );
            shared.count_copy(&a, &b);
            // Half of them once more, after the user's next turn.
            if roll % 2 == 0 {
                pending_copy = Some((id, text.clone(), a.clone()));
            }
            a
        } else {
            say(&shared, user_id, &mut n, &text).await
        };
        let Some(reply) = reply else {
            return;
        };
        let _ = shared
            .turn_latency
            .borrow_mut()
            .record(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
        shared
            .logs
            .borrow_mut()
            .entry(user_id)
            .or_default()
            .turns
            .push((text, reply));
        shared.progress.inc(1);
        let acknowledged = shared.acknowledged.get() + 1;
        shared.acknowledged.set(acknowledged);
        if let Some(failover) = &shared.failover {
            failover.acknowledged(acknowledged);
        }
        if let Some((id, text, first)) = pending_copy.take_if(|(id, ..)| *id != update_id(user_id, n)) {
            let again = deliver(&shared, user_id, id, &text).await;
            shared.count_copy(&first, &again);
        }
    }
}

impl Shared {
    /// Counts a copy of an update and whether it got the first one's reply.
    fn count_copy(&self, first: &Option<String>, copy: &Option<String>) {
        let (copies, same) = self.copies.get();
        let matched = first.is_some() && first == copy;
        if !matched && first.is_some() && copy.is_some() {
            self.failures
                .borrow_mut()
                .push("a redelivered update got a different reply".to_string());
        }
        self.copies.set((copies + 1, same + u64::from(matched)));
    }
}

/// What a simulation did, once every worker is done and the actors are drained.
pub(super) struct Simulated {
    /// From the first turn to the last worker's end.
    pub(super) elapsed: Duration,
    /// Stopped early, by a signal or `--duration`.
    pub(super) interrupted: bool,
    /// The acknowledged text turns' latencies, in µs.
    pub(super) latency: Histogram<u64>,
    /// Each user's acknowledged turns.
    pub(super) logs: HashMap<i64, Log>,
    /// Turns that were not answered as they should have been.
    pub(super) failures: Vec<String>,
    /// Copies of updates delivered again, and those answered with the first reply.
    pub(super) copies: (u64, u64),
    /// The actors' drain.
    pub(super) report: ShutdownReport,
    /// With `--standby`: the failover.
    pub(super) failover: Option<Rc<Failover>>,
}

impl Simulated {
    /// No failed turn, a clean drain, and every copy of an update answered as the first.
    pub(super) fn ok(&self) -> bool {
        let (copies, same) = self.copies;
        self.failures.is_empty() && clean(&self.report) && same == copies
    }
}

fn clean(report: &ShutdownReport) -> bool {
    report.drained && report.pool_closed && report.unfinished == 0
}

/// Runs `args.users` simulated users on `db`'s actors (started here with `config`'s
/// settings, drained at the end), failing over within `pair` when asked; a signal
/// from `signals` stops new turns.
///
/// # Errors
///
/// The bot's name, the failover, or a simulated user that is still running.
pub(super) async fn simulate(
    db: &Database,
    config: &Config,
    args: &DemoArgs,
    pair: Option<&Pair>,
    mut signals: Signals,
) -> anyhow::Result<Simulated> {
    let handle = DbSystem::start(db.clone(), config.actors);
    let stop = Arc::new(AtomicBool::new(false));
    let total = u64::try_from(args.users).unwrap_or(0) * u64::from(args.turns);
    let progress = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} turns  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    // A bot name of this run's own: on a database kept between runs, an earlier run's
    // update ids are another bot's.
    let bot = Bot::new(handle.clone(), Arc::new(EchoModel))
        .with_name(format!("demo-{}", uuid::Uuid::new_v4().simple()))?;
    let failover = Failover::of(pair, args.failover_share(), total);
    let shared = Rc::new(Shared {
        bot,
        stop: stop.clone(),
        turn_latency: RefCell::new(Histogram::new_with_bounds(1, 3_600_000_000, 3)?),
        logs: RefCell::new(HashMap::new()),
        failures: RefCell::new(Vec::new()),
        progress: progress.clone(),
        redeliver: args.redeliver,
        copies: std::cell::Cell::new((0, 0)),
        acknowledged: Cell::new(0),
        failover: failover.clone(),
    });
    println!(
        "simulating {} users x {} turns, {} at a time, through the actors",
        args.users, args.turns, args.concurrency
    );

    // Ctrl-C (or --duration): stop starting turns, drain, verify what was acknowledged.
    let stopper = stop.clone();
    let duration = args.duration.map(Duration::from_secs_f64);
    actix_rt::spawn(async move {
        match duration {
            Some(d) => {
                tokio::select! {
                    () = signals.recv() => {}
                    () = tokio::time::sleep(d) => {}
                }
            }
            None => signals.recv().await,
        }
        stopper.store(true, Ordering::Relaxed);
    });

    let started = Instant::now();
    let next_user = Rc::new(RefCell::new(0i64));
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (shared, next_user, users, turns) =
                (shared.clone(), next_user.clone(), args.users, args.turns);
            actix_rt::spawn(async move {
                loop {
                    let i = {
                        let mut next = next_user.borrow_mut();
                        let i = *next;
                        *next += 1;
                        i
                    };
                    if i >= users || shared.stop.load(Ordering::Relaxed) {
                        break;
                    }
                    converse(shared.clone(), FIRST_USER + i, turns).await;
                }
            })
        })
        .collect();
    futures::future::join_all(workers).await;
    let elapsed = started.elapsed();
    progress.finish_and_clear();
    // A failover started by the last turns: done before the drain and the verification.
    let failed_over = match &failover {
        Some(failover) => failover.finish().await,
        None => Ok(()),
    };
    let interrupted = stop.load(Ordering::Relaxed);
    // Drained whatever the failover did.
    let report = handle.shutdown().await;
    failed_over?;
    // Every worker is done: the state is ours alone now.
    let Shared {
        turn_latency,
        logs,
        failures,
        copies,
        ..
    } = Rc::try_unwrap(shared).map_err(|_| anyhow::anyhow!("a simulated user is still running"))?;
    Ok(Simulated {
        elapsed,
        interrupted,
        latency: turn_latency.into_inner(),
        logs: logs.into_inner(),
        failures: failures.into_inner(),
        copies: copies.get(),
        report,
        failover,
    })
}
