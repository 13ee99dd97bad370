//! `botdb demo`: many users talking to the bot at once, through the actors, then a
//! summary and a verification pass against what the database holds.
//!
//! Each simulated user sends Telegram updates to the same [`Bot`] that `botdb serve`
//! runs (minus HTTP): `/start`, then text turns (history, model, both messages stored in
//! one transaction); some change their history limit, some `/reset` half-way. Every
//! acknowledged turn is recorded, and after the Shutdown drain the database must hold
//! exactly those messages, in order, with the reset ones hidden.
//!
//! With `--standby` (the throwaway cluster only), the cluster gets a synchronous
//! standby and the demo both servers, `target_session_attrs=read-write`; when
//! `--failover-at` of the turns are acknowledged, the primary is stopped hard and the
//! standby promoted. Turns that fail meanwhile with a transient error (or one of unknown
//! outcome) are redelivered as Telegram redelivers after a 503, the same update id, until
//! answered; the verification then reads the promoted standby.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use botdb::actors::{DbSystem, ShutdownReport};
use botdb::bot::telegram::{TgChat, TgMessage, TgUser};
use botdb::bot::{Bot, BotError, EchoModel, Outcome, Update};
use botdb::config::TargetSessionAttrs;
use botdb::embedded::{EmbeddedPostgres, Replication, StopMode};
use botdb::shutdown::Signals;
use botdb::{Config, Database};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use secrecy::ExposeSecret;

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
    /// Give the throwaway PostgreSQL a synchronous standby and fail over to it during the
    /// run (see --failover-at): the demo is given both servers, read-write. Only with the
    /// throwaway cluster (no DATABASE_URL / DB_HOST).
    #[arg(long)]
    standby: bool,
    /// With --standby: once this share of the turns is acknowledged (`50%` or `0.5`),
    /// stop the primary hard (pg_ctl stop -m immediate) and promote the standby; turns
    /// failing meanwhile are redelivered until answered [default: 50%].
    #[arg(long, value_name = "SHARE", requires = "standby", value_parser = share)]
    failover_at: Option<f64>,
}

impl DemoArgs {
    /// The share of the turns after which to fail over, when there is a standby.
    fn failover_share(&self) -> Option<f64> {
        self.standby.then_some(self.failover_at.unwrap_or(0.5))
    }
}

/// A share of a whole: `50%` or `0.5`.
fn share(v: &str) -> Result<f64, String> {
    let parsed = match v.trim().strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0),
        None => v.trim().parse::<f64>(),
    };
    match parsed {
        Ok(s) if (0.0..=1.0).contains(&s) => Ok(s),
        _ => Err(format!("expected a share from 0% to 100% (or 0 to 1), got {v:?}")),
    }
}

/// How long a turn that failed transiently is redelivered before it counts as failed
/// (Telegram goes on for a day; a demo has to end).
const REDELIVER_FOR: Duration = Duration::from_secs(120);
/// The first wait before a redelivery; it doubles up to [`REDELIVER_MAX_WAIT`].
const REDELIVER_FIRST_WAIT: Duration = Duration::from_millis(50);
const REDELIVER_MAX_WAIT: Duration = Duration::from_secs(1);

/// The demo's own throwaway cluster, and its standby with `--standby`. The standby
/// comes first: fields are dropped in order, and the standby's server (whose files live
/// in the primary's directory) must stop before the primary's watcher removes that
/// directory.
struct Pair {
    standby: Option<Arc<EmbeddedPostgres>>,
    primary: Arc<EmbeddedPostgres>,
}

impl Pair {
    fn alone(primary: EmbeddedPostgres) -> Pair {
        Pair {
            standby: None,
            primary: Arc::new(primary),
        }
    }

    /// Starts a synchronous standby of `primary` (the databases are copied with it), and
    /// returns `config` pointed at both, read-write.
    async fn start(config: &Config, primary: EmbeddedPostgres) -> anyhow::Result<(Config, Pair)> {
        let standby = primary.start_standby(Replication::Synchronous).await?;
        let both = Config::builder()
            .host("127.0.0.1,127.0.0.1")
            .ports(vec![primary.port(), standby.port()])
            .user("postgres")
            .password(primary.password().expose_secret())
            .database(config.database_name())
            .target_session_attrs(TargetSessionAttrs::ReadWrite)
            .build()?;
        println!(
            "standby:      synchronous, on port {} (primary on port {})",
            standby.port(),
            primary.port()
        );
        Ok((
            config.with_server_of(&both),
            Pair {
                standby: Some(Arc::new(standby)),
                primary: Arc::new(primary),
            },
        ))
    }
}

/// The failover of a `--standby` run: when, and what was seen of it.
struct Failover {
    standby: Arc<EmbeddedPostgres>,
    primary: Arc<EmbeddedPostgres>,
    /// Acknowledged turns after which the primary is stopped.
    at: u64,
    /// The stop and the promotion, once started.
    task: RefCell<Option<actix_rt::task::JoinHandle<anyhow::Result<()>>>>,
    /// When the primary stop began, and when it was gone.
    stopping: Cell<Option<Instant>>,
    gone: Cell<Option<Instant>>,
    /// How long `pg_ctl promote` took.
    promote: Cell<Option<Duration>>,
    /// The first acknowledged turn once the primary was gone.
    first_write: Cell<Option<Instant>>,
    /// Deliveries beyond the first of updates that failed transiently.
    redelivered: Cell<u64>,
}

impl Failover {
    /// Stops the primary (immediate) and promotes the standby, in the background.
    fn start(self: &Rc<Self>) {
        let me = self.clone();
        let task = actix_rt::spawn(async move {
            me.stopping.set(Some(Instant::now()));
            let primary = me.primary.clone();
            tokio::task::spawn_blocking(move || primary.stop(StopMode::Immediate)).await??;
            let gone = Instant::now();
            me.gone.set(Some(gone));
            let standby = me.standby.clone();
            tokio::task::spawn_blocking(move || standby.promote()).await??;
            me.promote.set(Some(gone.elapsed()));
            Ok(())
        });
        *self.task.borrow_mut() = Some(task);
    }

    /// An acknowledged turn, the `n`-th: the failover starts at `at`; the first one
    /// after the primary is gone is the first write on the new primary.
    fn acknowledged(self: &Rc<Self>, n: u64) {
        if n == self.at && self.task.borrow().is_none() {
            self.start();
        }
        if self.first_write.get().is_none() && self.gone.get().is_some() {
            self.first_write.set(Some(Instant::now()));
        }
    }

    /// Waits for the stop and the promotion (when they were started).
    async fn finish(&self) -> anyhow::Result<()> {
        let task = self.task.borrow_mut().take();
        if let Some(task) = task {
            task.await??;
        }
        Ok(())
    }

    fn summary(&self) -> String {
        match (self.stopping.get(), self.promote.get()) {
            (Some(stopping), Some(promote)) => format!(
                "failover:     primary stopped at turn {}, standby promoted in {:.2} s; first write on the new \
                 primary after {}",
                self.at,
                promote.as_secs_f64(),
                self.first_write.get().map_or("none".to_string(), |w| format!(
                    "{:.2} s",
                    (w - stopping).as_secs_f64()
                ))
            ),
            _ => format!("failover:     not reached (set for turn {})", self.at),
        }
    }
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
    /// Text turns acknowledged so far.
    acknowledged: Cell<u64>,
    /// With `--standby`: the failover, and transient failures are redelivered.
    failover: Option<Rc<Failover>>,
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

/// Runs the demo on `config`; `server` is the throwaway cluster it points at, if any
/// (kept until the end, and given a standby with `--standby`).
pub async fn run(
    config: &Config,
    args: DemoArgs,
    server: Option<EmbeddedPostgres>,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.users >= 1 && args.concurrency >= 1,
        "--users and --concurrency must be at least 1"
    );
    let (config, pair) = match (args.standby, server) {
        (true, Some(primary)) => {
            let (config, pair) = Pair::start(config, primary).await?;
            (config, Some(pair))
        }
        (true, None) => anyhow::bail!(
            "--standby adds a standby to the demo's own throwaway PostgreSQL, but a server is configured ({}); \
             the demo cannot add one to it: unset DATABASE_URL and DB_* to use the throwaway cluster, or drop --standby",
            config.redacted_url()
        ),
        // Without a standby the cluster only has to outlive the run.
        (false, server) => (config.clone(), server.map(Pair::alone)),
    };
    let config = &config;
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
    let failover = match (&pair, args.failover_share()) {
        (
            Some(Pair {
                standby: Some(standby),
                primary,
            }),
            Some(share),
        ) => Some(Rc::new(Failover {
            standby: standby.clone(),
            primary: primary.clone(),
            at: ((total as f64 * share).ceil() as u64).max(1),
            task: RefCell::new(None),
            stopping: Cell::new(None),
            gone: Cell::new(None),
            promote: Cell::new(None),
            first_write: Cell::new(None),
            redelivered: Cell::new(0),
        })),
        _ => None,
    };
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
    if let Some(failover) = &failover {
        println!("{}", failover.summary());
        println!(
            "redelivered after failover: {} (deliveries of updates answered 503, as Telegram redelivers)",
            failover.redelivered.get()
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
/// before a reset hidden and the others live. Reads after the drain, on a pool of its own
/// (the actors' is closed), which finds the server `config` wants among its hosts (the
/// promoted standby after a failover).
async fn verify(
    config: &Config,
    logs: &HashMap<i64, Log>,
    users: i64,
    since: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<Verification> {
    let db = Database::connect(config).await?;
    let rows: Result<Vec<(i64, String, String, bool)>, _> = sqlx::query_as(
        "SELECT user_id, role, content, deleted_at IS NOT NULL FROM messages \
         WHERE user_id >= $1 AND user_id < $2 AND created_at >= $3 ORDER BY user_id, created_at, seq",
    )
    .bind(FIRST_USER)
    .bind(FIRST_USER + users)
    .bind(since)
    .fetch_all(db.pool())
    .await;
    db.close().await;
    let rows = rows?;
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
