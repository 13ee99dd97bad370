//! `botdb demo --model-latency 2s`: the bot as it runs with a real model and Telegram's
//! Bot API, on this machine: a local OpenAI-compatible model that takes that long, a
//! local Bot API server, and `botdb serve`'s turn pipeline between them. Each user
//! sends all their messages at once to the webhook (which records them and answers 200);
//! the pipeline runs one turn at a time per dialogue and sends each reply. Then every
//! update must have got its whole reply exactly once, in order, made from a context
//! holding every earlier message of its dialogue that fits the user's limit.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use botdb::config::{ModelConfig, TelegramConfig};
use botdb::embedded::{LocalBotApi, LocalModelServer, ModelBehaviour};
use botdb::model::DEFAULT_MAX_HISTORY;
use botdb::pipeline::PipelineConfig;
use botdb::server::{self, SECRET_HEADER, ServeOptions};
use botdb::{ActorConfig, Config, Database};
use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;

use super::args::DemoArgs;

/// The local Bot API's token and the webhook's secret: the demo's own, never a real one.
const TOKEN: &str = "123456:DEMOtokenOFtheLocalBotApiServer_only";
const SECRET: &str = "demo-webhook-secret";

/// What the run did, for the summary and the verdict.
pub(super) struct Ran {
    /// The webhook's answer time per update, in microseconds.
    webhook: Histogram<u64>,
    posted: usize,
    /// From the first update posted to the last reply sent.
    elapsed: Duration,
    model_calls: usize,
    sent: usize,
    problems: Vec<String>,
}

/// Runs the demo on `db` through the pipeline; prints what it did and verifies it.
pub(super) async fn run(
    config: &Config,
    db: Database,
    args: &DemoArgs,
    latency: Duration,
    run_started: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<bool> {
    let model = LocalModelServer::start(ModelBehaviour {
        latency,
        ..ModelBehaviour::default()
    })
    .context("starting the local model server")?;
    let telegram = LocalBotApi::start(TOKEN).context("starting the local Bot API")?;
    let users = usize::try_from(args.users).unwrap_or(usize::MAX);
    let options = ServeOptions {
        bind: "127.0.0.1:0".into(),
        webhook_secret: Some(SECRET.to_string().into()),
        telegram: TelegramConfig {
            token: Some(TOKEN.to_string().into()),
            api_url: telegram.url(),
            // A local Bot API takes any rate: Telegram's 30 a second would only make
            // the demo wait. Each dialogue still sends one message at a time, in order.
            per_second: 1000,
            per_chat_interval: Duration::ZERO,
            ..config.telegram.clone()
        },
        pipeline: PipelineConfig {
            // Every dialogue at once: the model's latency is the turn's.
            turns_in_flight: users.clamp(1, 10_000),
            ..PipelineConfig::default()
        },
        shutdown_grace: Duration::from_millis(10),
        ..ServeOptions::default()
    };
    let model_config = ModelConfig {
        url: Some(model.url()),
        name: "local".into(),
        ..ModelConfig::default()
    };
    println!(
        "pipeline: {} users x {} messages each, sent at once; a local model taking {latency:?}, a local Bot API",
        args.users, args.turns
    );
    let running = server::start(
        db.clone(),
        ActorConfig::default(),
        options,
        botdb::llm::from_config(&model_config)?,
    )?;
    let base = format!("http://{}", running.addrs()[0]);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = actix_rt::spawn(running.run_until(async move {
        let _ = stopped.await;
    }));

    let mut ran = drive(&base, args, &telegram, &model).await?;
    let _ = stop.send(());
    let report = served.await.context("serve's task")??;
    // Each turn stored once: both messages of every update this run sent.
    let stored: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT user_id, count(*) FROM messages WHERE created_at >= $1 AND user_id BETWEEN 1 AND $2 GROUP BY user_id",
    )
    .bind(run_started)
    .bind(args.users)
    .fetch_all(&Database::connect(config).await?.pool().clone())
    .await?;
    let want = 2 * i64::from(args.turns);
    for (user, n) in &stored {
        if *n != want {
            ran.problems
                .push(format!("user {user}: {n} messages stored, not {want}"));
        }
    }
    if stored.len() as i64 != args.users {
        ran.problems.push(format!(
            "{} of {} users have their turns stored",
            stored.len(),
            args.users
        ));
    }
    let ms = |q: f64| ran.webhook.value_at_quantile(q) as f64 / 1000.0;
    println!();
    println!(
        "webhook:      {} updates answered 200 (recorded): p50 {:.2} ms   p99 {:.2} ms",
        ran.posted,
        ms(0.50),
        ms(0.99)
    );
    println!(
        "turns:        {} in {:.2} s = {:.1} turns/s (a model of {latency:?}, one turn at a time per dialogue)",
        ran.posted,
        ran.elapsed.as_secs_f64(),
        ran.posted as f64 / ran.elapsed.as_secs_f64()
    );
    println!(
        "model:        {} calls, {:.2} per update",
        ran.model_calls,
        ran.model_calls as f64 / ran.posted.max(1) as f64
    );
    println!("replies:      {} messages sent through the Bot API", ran.sent);
    println!("shutdown:     {}", report.shutdown);
    if ran.problems.is_empty() {
        println!(
            "verification: OK: every update answered once, in order, each reply made from its dialogue's \
             complete context"
        );
    } else {
        println!("verification: FAILED: {} problems", ran.problems.len());
        for problem in ran.problems.iter().take(10) {
            println!("              {problem}");
        }
    }
    Ok(ran.problems.is_empty())
}

/// Posts every user's messages (at most `--concurrency` requests at once), waits for
/// every reply, and checks them.
async fn drive(
    base: &str,
    args: &DemoArgs,
    telegram: &LocalBotApi,
    model: &LocalModelServer,
) -> anyhow::Result<Ran> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .context("an HTTP client")?;
    let url = Arc::<str>::from(format!("{base}/telegram/webhook"));
    let turns = i64::from(args.turns);
    // Each user's messages in order, users interleaved: every user's burst arrives
    // while its first turn is at the model.
    let updates: Vec<(i64, i64)> = (0..turns)
        .flat_map(|k| (1..=args.users).map(move |user| (user, k)))
        .collect();
    let started = Instant::now();
    let answered: Vec<anyhow::Result<Duration>> = futures::stream::iter(updates)
        .map(|(user, k)| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let update = json!({
                    "update_id": k * 1_000_000 + user,
                    "message": {
                        "message_id": k + 1,
                        "from": {"id": user, "is_bot": false, "first_name": "Demo"},
                        "chat": {"id": user, "type": "private"},
                        "date": 1_733_300_000,
                        "text": format!("m{k}"),
                    }
                });
                let sent = Instant::now();
                let response = client
                    .post(&*url)
                    .header(SECRET_HEADER, SECRET)
                    .json(&update)
                    .send()
                    .await?;
                anyhow::ensure!(
                    response.status().is_success(),
                    "the webhook answered {}",
                    response.status()
                );
                Ok(sent.elapsed())
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    let mut webhook = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let mut problems = Vec::new();
    for answer in answered {
        match answer {
            Ok(took) => webhook.record(u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1))?,
            Err(e) => problems.push(format!("posting an update: {e}")),
        }
    }
    let expected = usize::try_from(args.users * turns).unwrap_or(usize::MAX);
    let deadline = Instant::now() + Duration::from_secs(600);
    while telegram.all_messages().len() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    let mut by_chat: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for message in telegram.all_messages() {
        by_chat.entry(message.chat_id).or_default().push(message.text);
    }
    for user in 1..=args.users {
        let replies = by_chat.remove(&user).unwrap_or_default();
        check_dialogue(user, turns, &replies, &mut problems);
    }
    Ok(Ran {
        webhook,
        posted: expected,
        elapsed,
        model_calls: model.calls(),
        sent: telegram.all_messages().len(),
        problems,
    })
}

/// One user's replies: exactly one per message, in order, each made from the dialogue's
/// newest earlier messages that fit the default limit (20 messages: the new one and 19
/// earlier, of which the user's own are at most 9 beside the model's 10).
fn check_dialogue(user: i64, turns: i64, replies: &[String], problems: &mut Vec<String>) {
    if replies.len() as i64 != turns {
        problems.push(format!(
            "user {user}: {} replies to {turns} messages",
            replies.len()
        ));
        return;
    }
    let earlier_fit = i64::from(DEFAULT_MAX_HISTORY - 1) / 2;
    for (k, reply) in (0..turns).zip(replies) {
        if !reply.starts_with(&format!("You said: m{k}\n")) {
            problems.push(format!("user {user}: reply {k} out of order: {reply:?}"));
            continue;
        }
        let first = (k - earlier_fit).max(0);
        let earlier: Vec<String> = (first..k).map(|i| format!("m{i}")).collect();
        if !reply.contains(&format!("earlier user messages: {})", earlier.join(" | "))) {
            problems.push(format!(
                "user {user}: reply {k} saw an incomplete context: {reply:?}"
            ));
        }
    }
}
