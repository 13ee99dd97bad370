//! The turn pipeline (`TELEGRAM_BOT_TOKEN` set): the webhook records each update and
//! answers 200 at once; the pipeline runs one turn at a time per dialogue, in update
//! order, asks the model, and sends the reply through the Bot API. Against a local
//! model server and a local Bot API server the tests start (real HTTP, their protocols
//! and their errors), and `botdb serve` in this process.

use std::time::{Duration, Instant};

use botdb::ActorConfig;
use botdb::config::{ModelConfig, TelegramConfig};
use botdb::embedded::{LocalBotApi, LocalModelServer, ModelBehaviour};
use botdb::pipeline::PipelineConfig;
use botdb::server::{self, SECRET_HEADER, ServeOptions};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::helpers::TestDb;

pub const TOKEN: &str = "123456:AAEexampleTOKENfor_the_local-BotAPI0123";
const SECRET: &str = "pipeline-secret_0123";

/// `botdb serve` in this process with the pipeline on, beside a local model and a
/// local Bot API.
pub struct Rig {
    pub base: String,
    pub model: LocalModelServer,
    pub telegram: LocalBotApi,
    stop: Option<oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<botdb::Result<server::ServeReport>>>,
}

impl Rig {
    pub async fn start(
        t: &TestDb,
        behaviour: ModelBehaviour,
        tune: impl FnOnce(&mut ServeOptions, &mut ModelConfig),
    ) -> Rig {
        let model = LocalModelServer::start(behaviour).expect("the local model server starts");
        let telegram = LocalBotApi::start(TOKEN).expect("the local Bot API starts");
        let mut model_config = ModelConfig {
            url: Some(model.url()),
            name: "local".into(),
            timeout: Duration::from_secs(30),
            ..ModelConfig::default()
        };
        let mut options = ServeOptions {
            bind: "127.0.0.1:0".into(),
            webhook_secret: Some(SECRET.to_string().into()),
            telegram: TelegramConfig {
                token: Some(TOKEN.to_string().into()),
                api_url: telegram.url(),
                ..TelegramConfig::default()
            },
            pipeline: PipelineConfig {
                lease: Duration::from_secs(5),
                poll: Duration::from_millis(50),
                ..PipelineConfig::default()
            },
            shutdown_grace: Duration::from_millis(10),
            ..ServeOptions::default()
        };
        tune(&mut options, &mut model_config);
        let llm = botdb::llm::from_config(&model_config).expect("the model client");
        let running =
            server::start(t.db.clone(), ActorConfig::default(), options, llm).expect("serve starts");
        let base = format!("http://{}", running.addrs()[0]);
        let (stop, stopped) = oneshot::channel();
        let served = actix_rt::spawn(running.run_until(async move {
            let _ = stopped.await;
        }));
        Rig {
            base,
            model,
            telegram,
            stop: Some(stop),
            served: Some(served),
        }
    }

    /// Posts an update to the webhook; its status and the time the answer came.
    pub async fn post(&self, update: &Value) -> (u16, Instant) {
        let response = awc::Client::builder()
            .timeout(Duration::from_secs(30))
            .finish()
            .post(format!("{}/telegram/webhook", self.base))
            .insert_header((SECRET_HEADER, SECRET))
            .send_json(update)
            .await
            .expect("the webhook answers");
        (response.status().as_u16(), Instant::now())
    }

    /// Waits (30 s at most) until `chat_id` has `n` messages, and returns them.
    pub async fn messages(&self, chat_id: i64, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.telegram.messages(chat_id);
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "chat {chat_id}: {} of {n} messages: {got:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A sample of `/metrics` (`name{labels}`), 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let mut response = awc::Client::default()
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("/metrics answers");
        let body = response.body().limit(1 << 20).await.expect("the metrics body");
        let text = String::from_utf8_lossy(&body).into_owned();
        text.lines()
            .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Stops serve (the pipeline first, then the actors) and returns its report.
    pub async fn stop(mut self) -> server::ServeReport {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let served = self.served.take().expect("running");
        served.await.expect("serve's task").expect("serve ends cleanly")
    }
}

/// A text message from `user` in their private chat.
pub fn text(update_id: i64, user: i64, text: &str) -> Value {
    json!({
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "from": {"id": user, "is_bot": false, "first_name": "Ann"},
            "chat": {"id": user, "type": "private", "first_name": "Ann"},
            "date": 1_733_300_000,
            "text": text
        }
    })
}

/// Three messages sent at once to a bot whose model takes 500 ms: the webhook answers
/// each before the model does, and three replies arrive, in order, each made from a
/// context holding every earlier message (one turn at a time in the dialogue: the
/// second waits for the first's reply to be stored).
#[actix_rt::test]
async fn three_rapid_messages_get_three_answers_each_seeing_the_ones_before() {
    let t = TestDb::new().await;
    let rig = Rig::start(
        &t,
        ModelBehaviour {
            latency: Duration::from_millis(500),
            ..ModelBehaviour::default()
        },
        |_, _| {},
    )
    .await;
    let user = 501;
    for (i, words) in ["one", "two", "three"].into_iter().enumerate() {
        let (status, _) = rig.post(&text(10 + i as i64, user, words)).await;
        assert_eq!(status, 200, "{words}");
    }
    // Every webhook answer came before the first reply could be sent (the model takes
    // 500 ms): the webhook does not wait for the turn.
    assert!(
        rig.telegram.messages(user).is_empty(),
        "a reply before the third 200"
    );
    let replies = rig.messages(user, 3).await;
    assert_eq!(replies.len(), 3, "{replies:?}");
    assert!(replies[0].starts_with("You said: one\n"), "{}", replies[0]);
    assert!(replies[0].contains("earlier user messages: )"), "{}", replies[0]);
    assert!(replies[1].starts_with("You said: two\n"), "{}", replies[1]);
    assert!(
        replies[1].contains("earlier user messages: one)"),
        "{}",
        replies[1]
    );
    assert!(replies[2].starts_with("You said: three\n"), "{}", replies[2]);
    assert!(
        replies[2].contains("earlier user messages: one | two)"),
        "{}",
        replies[2]
    );
    assert_eq!(rig.model.calls(), 3, "one model call per update");
    assert_eq!(rig.model.max_in_flight(), 1, "one turn at a time in the dialogue");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE user_id = $1")
        .bind(user)
        .fetch_one(&mut t.conn().await)
        .await
        .unwrap();
    assert_eq!(stored, 6);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
        .fetch_one(&mut t.conn().await)
        .await
        .unwrap();
    assert_eq!(left, 0, "every update done");
    rig.stop().await;
}

/// Rows of `user` in a table.
async fn rows(t: &TestDb, table: &str, user: i64) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {table} WHERE user_id = $1"
    )))
    .bind(user)
    .fetch_one(&mut t.conn().await)
    .await
    .unwrap()
}

/// Waits (30 s at most) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A copy of an update that arrives while the model answers it, and one after its
/// reply went: both answered 200, neither asks the model again nor sends a second
/// reply.
#[actix_rt::test]
async fn a_copy_during_the_model_call_or_after_asks_the_model_once_and_is_answered_once() {
    let t = TestDb::new().await;
    let rig = Rig::start(
        &t,
        ModelBehaviour {
            latency: Duration::from_millis(800),
            ..ModelBehaviour::default()
        },
        |_, _| {},
    )
    .await;
    let update = text(7, 502, "hello");
    assert_eq!(rig.post(&update).await.0, 200);
    let model = &rig.model;
    until("the model to be asked", || model.calls() == 1).await;
    assert_eq!(rig.post(&update).await.0, 200, "a copy during the model call");
    let replies = rig.messages(502, 1).await;
    assert_eq!(rig.post(&update).await.0, 200, "a copy after the reply");
    // The pipeline has nothing left: no update waits, no message is unsent.
    let left: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM inbox) + (SELECT count(*) FROM outbox WHERE state <> 'sent')",
    )
    .fetch_one(&mut t.conn().await)
    .await
    .unwrap();
    assert_eq!(left, 0);
    assert_eq!(
        rig.model.calls(),
        1,
        "one model call for the update and its copies"
    );
    assert_eq!(rig.telegram.messages(502), replies, "one reply");
    assert_eq!(
        rig.metric("botdb_webhook_updates_total{result=\"copy\"}").await,
        2.0
    );
    rig.stop().await;
}

/// The model down (500s past the retries), slower than its timeout, answering garbage
/// or nothing: each user is told once that the model is not available, nothing of the
/// turn is stored, the failure is counted by kind, and the next message works.
#[actix_rt::test]
async fn a_model_down_slow_garbage_or_empty_tells_the_user_once_and_stores_nothing() {
    use botdb::embedded::Failure;
    let t = TestDb::new().await;
    let rig = Rig::start(&t, ModelBehaviour::default(), |_, model| {
        model.timeout = Duration::from_secs(1);
        model.attempts = 2;
        model.max_backoff = Duration::from_millis(100);
    })
    .await;
    let cases: [(i64, Vec<Failure>, &str); 4] = [
        (
            601,
            vec![Failure::Status(500), Failure::Status(503)],
            "unavailable",
        ),
        (602, vec![Failure::Hang, Failure::Hang], "timeout"),
        (603, vec![Failure::Garbage], "bad_answer"),
        (604, vec![Failure::Empty], "empty"),
    ];
    for (user, failures, kind) in cases {
        rig.model.script(failures);
        assert_eq!(rig.post(&text(user * 10, user, "are you there?")).await.0, 200);
        let told = rig.messages(user, 1).await;
        assert_eq!(
            told,
            ["The model is not available right now; please try again."],
            "{kind}"
        );
        assert_eq!(rows(&t, "messages", user).await, 0, "{kind}: nothing stored");
        let counted = rig
            .metric(&format!("botdb_model_failures_total{{kind=\"{kind}\"}}"))
            .await;
        assert_eq!(counted, 1.0, "{kind}");
        // The next message is answered.
        assert_eq!(rig.post(&text(user * 10 + 1, user, "and now?")).await.0, 200);
        let replies = rig.messages(user, 2).await;
        assert!(
            replies[1].starts_with("You said: and now?"),
            "{kind}: {replies:?}"
        );
        assert_eq!(rig.telegram.messages(user).len(), 2, "{kind}: told once");
    }
    rig.stop().await;
}

/// Telegram's answers, through the outbox: a 429 waits its `retry_after`, a 502 is
/// tried again, a message Telegram took but never answered is sent again and counted
/// as a possible duplicate, and a user who blocked the bot (403) is recorded and never
/// tried again; other chats go on.
#[actix_rt::test]
async fn telegrams_429_502_lost_answers_and_403_are_each_handled_and_counted() {
    use botdb::embedded::Fault;
    let t = TestDb::new().await;
    let rig = Rig::start(&t, ModelBehaviour::default(), |options, _| {
        options.telegram.timeout = Duration::from_millis(500);
        options.telegram.max_backoff = Duration::from_millis(200);
    })
    .await;
    // 429, then 502, then a message recorded whose answer never comes.
    rig.telegram.script_messages(vec![
        Fault::TooManyRequests { retry_after: 1 },
        Fault::Status(502),
        Fault::HangAfterRecording,
    ]);
    assert_eq!(rig.post(&text(701, 701, "hi")).await.0, 200);
    let delivered = rig.messages(701, 2).await;
    // The lost answer: Telegram has the message twice (the retry), counted as such.
    assert_eq!(delivered.len(), 2, "{delivered:?}");
    assert_eq!(delivered[0], delivered[1]);
    // Then a user who blocked the bot.
    rig.telegram.block(704);
    assert_eq!(rig.post(&text(704, 704, "hi")).await.0, 200);
    let pending = || async {
        sqlx::query_as::<_, (String, Option<String>)>("SELECT state, outcome FROM outbox ORDER BY id")
            .fetch_all(&mut t.conn().await)
            .await
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let states = loop {
        let states = pending().await;
        if states.iter().all(|(s, _)| s == "sent" || s == "failed") {
            break states;
        }
        assert!(Instant::now() < deadline, "{states:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(states.len(), 2, "{states:?}");
    let blocked = states
        .iter()
        .find(|(s, _)| s == "failed")
        .expect("the blocked chat's message failed");
    assert!(
        blocked.1.as_deref().unwrap_or("").starts_with("403"),
        "{blocked:?}"
    );
    assert!(rig.telegram.messages(704).is_empty());
    assert_eq!(
        rig.metric("botdb_sends_total{outcome=\"retry_after\"}").await,
        1.0
    );
    assert_eq!(rig.metric("botdb_sends_total{outcome=\"transient\"}").await, 1.0);
    assert_eq!(rig.metric("botdb_sends_total{outcome=\"unknown\"}").await, 1.0);
    assert_eq!(rig.metric("botdb_sends_total{outcome=\"refused\"}").await, 1.0);
    assert_eq!(rig.metric("botdb_sends_resent_after_unknown_total").await, 1.0);
    rig.stop().await;
}

/// A 20,000-character reply arrives as messages of at most 4,096 characters, in order,
/// whole.
#[actix_rt::test]
async fn a_20000_character_reply_arrives_in_parts_in_order() {
    use botdb::embedded::ReplyStyle;
    let t = TestDb::new().await;
    let words: Vec<String> = (0..2500).map(|i| format!("w{i:05}")).collect();
    let long = words.join(" ");
    assert!(long.chars().count() > 17_000);
    let rig = Rig::start(
        &t,
        ModelBehaviour {
            reply: ReplyStyle::Fixed(long.clone()),
            ..ModelBehaviour::default()
        },
        |_, _| {},
    )
    .await;
    assert_eq!(rig.post(&text(1, 801, "tell me everything")).await.0, 200);
    let parts = rig.messages(801, 5).await;
    assert!(
        parts.iter().all(|p| p.encode_utf16().count() <= 4096),
        "a part too long"
    );
    assert_eq!(
        parts.join(" ").split_whitespace().collect::<Vec<_>>(),
        words,
        "whole and in order"
    );
    rig.stop().await;
}

/// Commands go through the pipeline too, in update order with the turns: a `/reset`
/// sent right after a text clears that text's turn (it waits for it), and `/limit`
/// applies to the next turn.
#[actix_rt::test]
async fn commands_run_in_update_order_with_the_turns() {
    let t = TestDb::new().await;
    let rig = Rig::start(
        &t,
        ModelBehaviour {
            latency: Duration::from_millis(300),
            ..ModelBehaviour::default()
        },
        |_, _| {},
    )
    .await;
    let user = 901;
    for (i, words) in ["first", "/reset", "second", "/limit 2", "third"]
        .into_iter()
        .enumerate()
    {
        assert_eq!(rig.post(&text(i as i64 + 1, user, words)).await.0, 200);
    }
    let replies = rig.messages(user, 5).await;
    assert!(replies[0].starts_with("You said: first"), "{replies:?}");
    assert_eq!(replies[1], "History cleared: 2 messages forgotten.");
    assert!(
        replies[2].contains("earlier user messages: )"),
        "the reset came before: {replies:?}"
    );
    assert_eq!(replies[3], "I will remember the last 2 messages.");
    // Two messages of memory: the new one and one before it.
    assert!(
        replies[4].contains("(model: 2 messages in context"),
        "{replies:?}"
    );
    rig.stop().await;
}

/// Two `botdb serve` processes on one database, 200 dialogues mid-turn (the model takes
/// 2 s), one process killed with SIGKILL, then started again: every update gets its
/// whole reply, each turn is stored once, and what the survivor took over is counted.
#[actix_rt::test]
async fn sigkill_of_one_of_two_instances_mid_turn_loses_nothing() {
    let t = TestDb::new().await;
    let model = LocalModelServer::start(ModelBehaviour {
        latency: Duration::from_secs(2),
        ..ModelBehaviour::default()
    })
    .unwrap();
    let telegram = LocalBotApi::start(TOKEN).unwrap();
    let (model_url, api_url) = (model.url().to_string(), telegram.url().to_string());
    let env = [
        ("TELEGRAM_BOT_TOKEN", TOKEN),
        ("TELEGRAM_API_URL", api_url.as_str()),
        ("BOTDB_MODEL_URL", model_url.as_str()),
        ("BOTDB_MODEL_NAME", "local"),
        ("BOTDB_LEASE", "2"),
        ("BOTDB_SEND_CHAT_INTERVAL", "0"),
        ("BOTDB_SEND_PER_SECOND", "1000"),
    ];
    let mut a = crate::serve::spawn_serve_with(&t.url(), &[], &env).await;
    let b = crate::serve::spawn_serve_with(&t.url(), &[], &env).await;
    const USERS: i64 = 200;
    let client = awc::Client::builder().timeout(Duration::from_secs(30)).finish();
    for user in 1..=USERS {
        let base = if user % 2 == 0 { &a.base } else { &b.base };
        let status = client
            .post(format!("{base}/telegram/webhook"))
            .insert_header((SECRET_HEADER, crate::serve::SECRET))
            .send_json(&text(1000 + user, user, &format!("question {user}")))
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "user {user}");
    }
    // Mid-turn: the model is answering, no reply has gone yet.
    let m = &model;
    until("the turns to be at the model", || m.calls() >= 150).await;
    assert!(telegram.all_messages().len() < USERS as usize);
    a.child.start_kill().unwrap();
    let _ = a.child.wait().await;
    // B takes A's updates over once their leases expire; then A comes back.
    let tg = &telegram;
    until("every user's reply", || {
        let got: std::collections::BTreeSet<i64> = tg.all_messages().iter().map(|m| m.chat_id).collect();
        got.len() == USERS as usize
    })
    .await;
    let a2 = crate::serve::spawn_serve_with(&t.url(), &[], &env).await;
    let mut c = t.conn().await;
    let left: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM inbox) + (SELECT count(*) FROM outbox WHERE state <> 'sent')",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(left, 0, "nothing left to run or send");
    for user in 1..=USERS {
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE user_id = $1")
            .bind(user)
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert_eq!(stored, 2, "user {user}: the turn stored once");
        let replies = telegram.messages(user);
        assert!(
            replies
                .iter()
                .all(|r| r.starts_with(&format!("You said: question {user}\n"))),
            "user {user}: {replies:?}"
        );
    }
    // Each update one reply, except those a dead sender may have sent before recording
    // it: counted by the survivor.
    let sent = telegram.all_messages().len() as i64;
    let client = awc::Client::default();
    let metrics = client
        .get(format!("{}/metrics", b.base))
        .send()
        .await
        .unwrap()
        .body()
        .await
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    let sample = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let resent = sample("botdb_sends_resent_after_unknown_total") as i64;
    assert!(
        sent - USERS <= resent,
        "{sent} messages for {USERS} updates, {resent} counted as possible resends"
    );
    let reclaimed = sample("botdb_turns_reclaimed_total");
    assert!(
        reclaimed > 0.0,
        "the survivor took updates over from the killed instance"
    );
    // The model was asked again only for turns the kill cut.
    assert!(
        model.calls() as i64 <= USERS + reclaimed as i64,
        "{} calls",
        model.calls()
    );
    eprintln!(
        "SIGKILL mid-turn: {USERS} updates, {sent} messages sent, {resent} counted possible resends, \
         {reclaimed} turns taken over, {} model calls",
        model.calls()
    );
    drop(a2);
    drop(b);
}

/// The database fails over while 40 dialogues are at the model: the primary killed, its
/// synchronous standby promoted. Updates recorded before (every 200 was a commit the
/// standby had) run on the promoted one; every user gets their reply, each turn stored
/// once; `serve` rides it out through its retries.
#[actix_rt::test]
async fn a_failover_mid_turn_loses_no_recorded_update() {
    use crate::failover::{conn_to, pair, promote, stop, two_host_url};
    let (pg, standby) = pair().await;
    let model = LocalModelServer::start(ModelBehaviour {
        latency: Duration::from_secs(1),
        ..ModelBehaviour::default()
    })
    .unwrap();
    let telegram = LocalBotApi::start(TOKEN).unwrap();
    let (model_url, api_url) = (model.url().to_string(), telegram.url().to_string());
    let env = [
        ("TELEGRAM_BOT_TOKEN", TOKEN),
        ("TELEGRAM_API_URL", api_url.as_str()),
        ("BOTDB_MODEL_URL", model_url.as_str()),
        ("BOTDB_MODEL_NAME", "local"),
        ("BOTDB_SEND_CHAT_INTERVAL", "0"),
    ];
    let served = crate::serve::spawn_serve_with(&two_host_url(&pg, &standby), &[], &env).await;
    const USERS: i64 = 40;
    let client = awc::Client::builder().timeout(Duration::from_secs(30)).finish();
    for user in 1..=USERS {
        let status = client
            .post(format!("{}/telegram/webhook", served.base))
            .insert_header((SECRET_HEADER, crate::serve::SECRET))
            .send_json(&text(user, user, &format!("before the failover {user}")))
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
    }
    let m = &model;
    until("the turns to be at the model", || m.calls() >= 1).await;
    stop(&pg).await;
    promote(&standby).await;
    let tg = &telegram;
    until("every user's reply", || {
        let got: std::collections::BTreeSet<i64> = tg.all_messages().iter().map(|m| m.chat_id).collect();
        got.len() == USERS as usize
    })
    .await;
    let mut c = conn_to(&standby).await;
    for user in 1..=USERS {
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE user_id = $1")
            .bind(user)
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert_eq!(stored, 2, "user {user}: the turn on the promoted standby, once");
    }
    drop(served);
}

/// What the pipeline holds of a user (an update not yet run: what they sent; the
/// messages to them, sent or not) is in their export, and goes with their erasure.
#[actix_rt::test]
async fn the_export_has_and_the_erasure_takes_the_users_inbox_and_outbox_rows() {
    use botdb::actors::{DbSystem, EraseUser, RecordUpdate, RegisterUser};
    use botdb::config::AuditKey;
    use botdb::model::RequestKey;
    let t = TestDb::with(|b| b.audit_key(AuditKey::new("test-audit-key-0123456789").unwrap())).await;
    let h = DbSystem::start(t.db.clone(), ActorConfig::default());
    h.send(RegisterUser {
        user_id: 42,
        max_history_messages: None,
        system_prompt: None,
    })
    .await
    .unwrap();
    let update = text(77, 42, "a secret not yet answered");
    let recorded = h
        .send(RecordUpdate {
            user_id: 42,
            chat_id: 42,
            update_id: 77,
            key: RequestKey::telegram_update("bot", 77).unwrap(),
            payload: update.clone(),
        })
        .await
        .unwrap();
    assert_eq!(recorded, botdb::repo::inbox::Recorded::New);
    let mut c = t.conn().await;
    botdb::repo::outbox::enqueue(&mut c, Some(42), 42, &["a reply on its way".to_string()], "reply")
        .await
        .unwrap();
    let mut out = Vec::new();
    botdb::repo::export::export_user(&mut c, 42, &mut out, Duration::from_secs(60))
        .await
        .unwrap();
    let document: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(document["pending_updates"][0]["payload"], update);
    assert_eq!(document["outbox"][0]["text"], "a reply on its way");
    h.send(EraseUser {
        user_id: 42,
        key: None,
    })
    .await
    .unwrap();
    assert_eq!(
        (rows(&t, "inbox", 42).await, rows(&t, "outbox", 42).await),
        (0, 0)
    );
    h.shutdown().await;
}
