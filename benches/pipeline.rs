//! The turn pipeline under load: `cargo bench --bench pipeline [-- --help]`.
//!
//! `botdb serve` (a child process, `TELEGRAM_BOT_TOKEN` set) on a throwaway cluster,
//! between a local OpenAI-compatible model that takes `--model-latency` and a local Bot
//! API, both in this process (`botdb::embedded`). `--users` users each send `--burst`
//! messages at once to the webhook; the run ends when every reply has arrived.
//!
//! Reported, from what was counted:
//! - the webhook's answer time, p50 / p99 (it records the update and answers 200; the
//!   model is not waited for);
//! - completed turns a second, from the first update to the last reply;
//! - model calls per update (1.00 unless a turn was cut);
//! - forked contexts: replies whose context missed an earlier message of their dialogue
//!   (from what the model was sent: it says so in each reply);
//! - duplicate sends: messages beyond one per update, and what serve counted as resent
//!   after an unknown outcome;
//! - serve's peak memory (`VmHWM`) and its memory at the end (`VmRSS`).
//!
//! `--kill-after N`: SIGKILL `serve` once N replies have arrived, start it again, and
//! count what the restart sends twice.
//!
//! The local Bot API takes any rate: the bench sets `BOTDB_SEND_PER_SECOND=1000` and
//! `BOTDB_SEND_CHAT_INTERVAL=0` (Telegram's limits would measure Telegram).

#[path = "shared/serve.rs"]
mod serve;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use botdb::embedded::{EmbeddedPostgres, LocalBotApi, LocalModelServer, ModelBehaviour};
use clap::Parser;
use futures::StreamExt;
use hdrhistogram::Histogram;
use secrecy::ExposeSecret;
use tokio::process::{Child, Command};

const SECRET: &str = "bench-secret_0123456789";
const TOKEN: &str = "123456:BENCHtokenOFtheLocalBotApiServer_x";

#[derive(Debug, Parser)]
#[command(about = "botdb: the turn pipeline (webhook, model, Bot API) under load")]
struct Args {
    /// Users, each sending --burst messages at once.
    #[arg(long, default_value_t = 1000)]
    users: i64,
    /// Messages each user sends at once.
    #[arg(long, default_value_t = 3)]
    burst: i64,
    /// How long the model takes to answer (`2s`, `10s`).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    model_latency: Duration,
    /// BOTDB_TURNS_IN_FLIGHT of serve.
    #[arg(long, default_value_t = 2000)]
    in_flight: usize,
    /// Webhook requests in flight at once (Telegram holds at most 100 per bot).
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// SIGKILL serve once this many replies have arrived, then start it again.
    #[arg(long)]
    kill_after: Option<usize>,
    /// cargo bench passes --bench; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[actix_rt::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pg = tokio::task::spawn_blocking(EmbeddedPostgres::start).await??;
    pg.create_database("bench").await?;
    let url = pg.url("bench").expose_secret().to_string();
    let model = LocalModelServer::start(ModelBehaviour {
        latency: args.model_latency,
        ..ModelBehaviour::default()
    })?;
    let telegram = LocalBotApi::start(TOKEN)?;
    let env = Env {
        database: url,
        model: model.url().to_string(),
        telegram: telegram.url().to_string(),
        in_flight: args.in_flight.to_string(),
    };
    let (mut child, base) = env.serve().await?;
    let pid = child.id().unwrap_or(0);
    let updates = args.users * args.burst;
    println!(
        "pipeline: {} users x {} messages at once, a model of {:?}, {} turns in flight, {} webhook connections",
        args.users, args.burst, args.model_latency, args.in_flight, args.connections
    );
    let client = awc::Client::builder().timeout(Duration::from_secs(60)).finish();
    // Each user's burst in order, users interleaved; `connections` requests at once.
    let posts: Vec<(i64, i64)> = (0..args.burst)
        .flat_map(|k| (1..=args.users).map(move |user| (user, k)))
        .collect();
    let started = Instant::now();
    let mut webhook = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut failed = 0;
    let answers: Vec<Option<Duration>> = futures::stream::iter(posts)
        .map(|(user, k)| {
            let (client, base) = (client.clone(), base.clone());
            async move {
                let sent = Instant::now();
                serve::send(
                    &client,
                    &base,
                    SECRET,
                    k * 10_000_000 + user,
                    user,
                    &format!("m{k}"),
                )
                .await
                .then(|| sent.elapsed())
            }
        })
        .buffer_unordered(args.connections.max(1))
        .collect()
        .await;
    for answer in answers {
        match answer {
            Some(took) => webhook.record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1))?,
            None => failed += 1,
        }
    }
    let posted_in = started.elapsed();
    let mut peak_rss = 0;
    let mut killed = None;
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let got = telegram.all_messages().len();
        peak_rss = peak_rss.max(memory(pid, "VmRSS"));
        if let Some(after) = args.kill_after
            && killed.is_none()
            && got >= after
        {
            child.start_kill()?;
            let _ = child.wait().await;
            let (restarted, _) = env.serve().await?;
            child = restarted;
            killed = Some(got);
        }
        if got >= updates as usize || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    let serve_pid = child.id().unwrap_or(0);
    let (hwm, rss) = (memory(serve_pid, "VmHWM"), memory(serve_pid, "VmRSS"));

    // What the model was given, through its replies: forked contexts and order.
    let mut by_chat: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for message in telegram.all_messages() {
        by_chat.entry(message.chat_id).or_default().push(message.text);
    }
    let (mut forked, mut out_of_order) = (0, 0);
    for replies in by_chat.values() {
        let mut seen = Vec::new();
        for reply in replies {
            let said = reply
                .strip_prefix("You said: ")
                .and_then(|r| r.split('\n').next())
                .unwrap_or("");
            // A duplicate of the previous reply is not a new turn.
            if seen.last().map(String::as_str) == Some(said) {
                continue;
            }
            if said != format!("m{}", seen.len()) {
                out_of_order += 1;
            }
            let earlier = seen
                .iter()
                .rev()
                .take(9)
                .rev()
                .cloned()
                .collect::<Vec<_>>()
                .join(" | ");
            if !reply.contains(&format!("earlier user messages: {earlier})")) {
                forked += 1;
            }
            seen.push(said.to_string());
        }
    }
    let sent = telegram.all_messages().len() as i64;
    let ms = |q: f64| webhook.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "webhook:   {} answered 200 in {:.2} s ({failed} failed): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        webhook.len(),
        posted_in.as_secs_f64(),
        ms(0.5),
        ms(0.99),
        webhook.max() as f64 / 1000.0
    );
    println!(
        "turns:     {updates} in {:.2} s = {:.1} turns/s (bound: {} in flight / {:?} = {:.0}/s)",
        elapsed.as_secs_f64(),
        updates as f64 / elapsed.as_secs_f64(),
        args.in_flight,
        args.model_latency,
        args.in_flight as f64 / args.model_latency.as_secs_f64()
    );
    println!(
        "model:     {} calls, {:.3} per update",
        model.calls(),
        model.calls() as f64 / updates as f64
    );
    println!("contexts:  {forked} forked (a reply missing an earlier message), {out_of_order} out of order");
    println!(
        "sends:     {sent} messages for {updates} updates: {} beyond one each{}",
        sent - updates,
        match killed {
            Some(at) => format!(" (serve SIGKILLed after {at} replies and started again)"),
            None => String::new(),
        }
    );
    println!(
        "memory:    serve peak {:.1} MiB (VmRSS sampled during the run: {:.1} MiB; at the end {:.1} MiB)",
        hwm as f64 / 1024.0,
        peak_rss as f64 / 1024.0,
        rss as f64 / 1024.0
    );
    drop(child);
    drop(pg);
    Ok(())
}

/// What serve is started with.
struct Env {
    database: String,
    model: String,
    telegram: String,
    in_flight: String,
}

impl Env {
    async fn serve(&self) -> anyhow::Result<(Child, String)> {
        serve::start(
            Command::new(env!("CARGO_BIN_EXE_botdb"))
                .args(["serve", "--bind", "127.0.0.1:0", "--migrate"])
                .env("DATABASE_URL", &self.database)
                .env("BOTDB_WEBHOOK_SECRET", SECRET)
                .env("TELEGRAM_BOT_TOKEN", TOKEN)
                .env("TELEGRAM_API_URL", &self.telegram)
                .env("BOTDB_MODEL_URL", &self.model)
                .env("BOTDB_MODEL_NAME", "local")
                .env("BOTDB_TURNS_IN_FLIGHT", &self.in_flight)
                .env("BOTDB_SEND_PER_SECOND", "1000")
                .env("BOTDB_SEND_CHAT_INTERVAL", "0")
                .env("BOTDB_LEASE", "5")
                .env("RUST_LOG", "warn"),
        )
        .await
    }
}

/// A `/proc/<pid>/status` field, in KiB (0 when unknown).
fn memory(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix(field)?
                    .trim_start_matches(':')
                    .trim()
                    .trim_end_matches(" kB")
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}
