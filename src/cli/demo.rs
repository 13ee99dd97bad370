//! `botdb demo`: many users talking to the bot at once, through the actors, then a
//! summary and a verification pass against what the database holds.
//!
//! Each simulated user sends Telegram updates to the same [`Bot`] that `botdb serve`
//! runs (minus HTTP): `/start`, then text turns (history, model, both messages stored in
//! one transaction); some change their history limit, some `/reset` half-way. Every
//! acknowledged turn is recorded, and after the Shutdown drain the database must hold
//! exactly those messages, in order, with the reset ones hidden.

use std::cell::RefCell;
use std::collections::HashMap;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use botdb::actors::{DbSystem, ShutdownReport};
use botdb::bot::telegram::{TgChat, TgMessage, TgUser};
use botdb::bot::{Bot, EchoModel, Outcome, Update};
use botdb::shutdown::Signals;
use botdb::{Config, Database};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use sqlx::Connection;

/// Demo users get ids from here up, far from real Telegram ids.
const FIRST_USER: i64 = 9_000_000_000_000;

/// `demo`'s options.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Simulated users.
    #[arg(long, default_value_t = 1000)]
    users: i64,
    /// Text turns per user (each stores two messages).
    #[arg(long, default_value_t = 20)]
    turns: u32,
    /// Users talking at the same moment.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Stop starting new turns after this many seconds (the run then drains and verifies).
    #[arg(long)]
    duration: Option<f64>,
    /// Percent of turns delivered twice at once, as Telegram does when a 200 is late;
    /// half of those are delivered a third time after the user's next turn. Every copy
    /// must get the first one's reply, and no turn may be stored twice.
    #[arg(long, default_value_t = 0.0, value_parser = percent)]
    redeliver: f64,
}

fn percent(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("expected a percentage from 0 to 100, got {v:?}")),
    }
}

/// What one user did that the bot acknowledged, in order.
#[derive(Default)]
struct Log {
    /// (text, reply) of each acknowledged turn.
    turns: Vec<(String, String)>,
    /// How many of `turns` came before an acknowledged `/reset`.
    reset_after: Option<usize>,
}

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
}

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

async fn deliver(shared: &Shared, user_id: i64, update_id: i64, text: &str) -> Option<String> {
    match shared.bot.handle(update(user_id, update_id, text)).await {
        Ok(Outcome::Reply(reply)) => Some(reply.text),
        Ok(Outcome::Ignored(why)) => {
            shared
                .failures
                .borrow_mut()
                .push(format!("user {user_id}: ignored ({why})"));
            None
        }
        Err(e) => {
            if !shared.stop.load(Ordering::Relaxed) {
                shared.failures.borrow_mut().push(format!("user {user_id}: {e}"));
            }
            None
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

pub async fn run(config: &Config, args: DemoArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.users >= 1 && args.concurrency >= 1,
        "--users and --concurrency must be at least 1"
    );
    let mut signals = Signals::install()?;
    println!("database: {}", config.redacted_url());
    let db = Database::connect(config).await?;
    let applied = db.migrate().await?;
    println!("migrations applied: {}", applied.len());
    // On a persistent database demo users may exist from an earlier run: only what this
    // run writes is verified.
    let run_started: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(db.pool())
        .await?;

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
    let shared = Rc::new(Shared {
        bot,
        stop: stop.clone(),
        turn_latency: RefCell::new(Histogram::new_with_bounds(1, 3_600_000_000, 3)?),
        logs: RefCell::new(HashMap::new()),
        failures: RefCell::new(Vec::new()),
        progress: progress.clone(),
        redeliver: args.redeliver,
        copies: std::cell::Cell::new((0, 0)),
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
    let interrupted = stop.load(Ordering::Relaxed);
    let report = handle.shutdown().await;
    // Every worker is done: the state is ours alone now.
    let Shared {
        turn_latency,
        logs,
        failures,
        copies,
        ..
    } = Rc::try_unwrap(shared).map_err(|_| anyhow::anyhow!("a simulated user is still running"))?;
    let (hist, logs, failures) = (
        turn_latency.into_inner(),
        logs.into_inner(),
        failures.into_inner(),
    );
    let turns = hist.len();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!();
    if interrupted {
        println!("stopped early (signal or --duration): summary of what was done");
    }
    println!(
        "turns:        {turns} in {:.2} s = {:.0} turns/s",
        elapsed.as_secs_f64(),
        turns as f64 / elapsed.as_secs_f64()
    );
    println!(
        "per turn:     p50 {:.2} ms   p95 {:.2} ms   p99 {:.2} ms",
        ms(0.50),
        ms(0.95),
        ms(0.99)
    );
    println!("failures:     {}", failures.len());
    for f in failures.iter().take(5) {
        println!("              {f}");
    }
    let (copies, same) = copies.get();
    if args.redeliver > 0.0 {
        println!(
            "redelivered:  {copies} copies of updates ({:.0}% of turns twice at once, half of those again later); \
             {same} answered with the first reply",
            args.redeliver
        );
    }
    println!("shutdown:     {report}");
    let verified = verify(config, &logs, args.users, run_started).await?;
    println!("{verified}");
    let ok = verified.ok() && failures.is_empty() && clean(&report) && same == copies;
    println!("{}", if ok { "demo OK" } else { "demo FAILED" });
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn clean(report: &ShutdownReport) -> bool {
    report.drained && report.pool_closed && report.unfinished == 0
}

/// What the verification pass found.
#[derive(Default)]
struct Verification {
    users: usize,
    acknowledged: usize,
    stored: usize,
    live: usize,
    hidden: usize,
    problems: Vec<String>,
}

impl Verification {
    fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl std::fmt::Display for Verification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "stored:       {} messages ({} live, {} soft-deleted)",
            self.stored, self.live, self.hidden
        )?;
        if self.ok() {
            write!(
                f,
                "verification: OK: all {} acknowledged messages present, each once; order intact for {} users; \
                 the {} soft-deleted ones hidden from history",
                self.acknowledged, self.users, self.hidden
            )
        } else {
            write!(f, "verification: FAILED, {} problems", self.problems.len())?;
            for p in self.problems.iter().take(10) {
                write!(f, "\n              {p}")?;
            }
            Ok(())
        }
    }
}

/// Compares the database with the acknowledged log: every acknowledged message present,
/// each user's messages in the order they were acknowledged, nothing else, messages from
/// before a reset hidden and the others live. Reads after the drain, on a connection of
/// its own (the actors' pool is closed).
async fn verify(
    config: &Config,
    logs: &HashMap<i64, Log>,
    users: i64,
    since: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<Verification> {
    let mut conn = botdb::migrate::connect_to(config).await?;
    let rows: Vec<(i64, String, String, bool)> = sqlx::query_as(
        "SELECT user_id, role, content, deleted_at IS NOT NULL FROM messages \
         WHERE user_id >= $1 AND user_id < $2 AND created_at >= $3 ORDER BY user_id, created_at, seq",
    )
    .bind(FIRST_USER)
    .bind(FIRST_USER + users)
    .bind(since)
    .fetch_all(&mut conn)
    .await?;
    let _ = conn.close().await;
    let mut by_user: HashMap<i64, Vec<(String, String, bool)>> = HashMap::new();
    let mut v = Verification::default();
    for (user, role, content, deleted) in rows {
        v.stored += 1;
        if deleted {
            v.hidden += 1;
        } else {
            v.live += 1;
        }
        by_user.entry(user).or_default().push((role, content, deleted));
    }
    for (user, log) in logs {
        v.users += 1;
        v.acknowledged += log.turns.len() * 2;
        let stored = by_user.remove(user).unwrap_or_default();
        let expected: Vec<(String, String, bool)> = log
            .turns
            .iter()
            .enumerate()
            .flat_map(|(i, (text, reply))| {
                let hidden = log.reset_after.is_some_and(|r| i < r);
                [
                    ("user".to_string(), text.clone(), hidden),
                    ("assistant".to_string(), reply.clone(), hidden),
                ]
            })
            .collect();
        if stored != expected {
            let at = stored
                .iter()
                .zip(&expected)
                .position(|(a, b)| a != b)
                .unwrap_or(stored.len().min(expected.len()));
            v.problems.push(format!(
                "user {user}: {} stored vs {} acknowledged messages; first difference at #{at}",
                stored.len(),
                expected.len()
            ));
        }
    }
    for (user, stored) in by_user {
        v.problems.push(format!(
            "user {user}: {} messages stored that were never acknowledged",
            stored.len()
        ));
    }
    Ok(v)
}
