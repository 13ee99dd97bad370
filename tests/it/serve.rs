//! `botdb serve` over real HTTP: a whole dialogue, hostile requests, health and metrics,
//! and SIGTERM under load.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::helpers::TestDb;

pub const SECRET: &str = "test-secret_0123456789";

/// A running `botdb serve` on a test database.
pub struct Served {
    pub child: Child,
    /// `http://host:port` of the webhook.
    pub base: String,
    /// `http://host:port` of `/healthz` and `/metrics` when they have their own address.
    pub admin: Option<String>,
    /// What it printed on stdout up to its addresses.
    pub startup: Vec<String>,
}

/// Starts `botdb serve --bind 127.0.0.1:0` on `t` with the test secret and waits for it
/// to listen.
pub async fn spawn_serve(t: &TestDb, extra_args: &[&str]) -> Served {
    spawn_serve_on(&t.url(), extra_args).await
}

/// Starts `botdb serve --bind 127.0.0.1:0` on the database at `url`.
pub async fn spawn_serve_on(url: &str, extra_args: &[&str]) -> Served {
    spawn_serve_with(url, extra_args, &[]).await
}

/// Starts `botdb serve --bind 127.0.0.1:0` on the database at `url`, with extra
/// arguments and environment variables.
pub async fn spawn_serve_with(url: &str, extra_args: &[&str], env: &[(&str, &str)]) -> Served {
    let mut cmd = Command::new(crate::helpers::botdb_bin());
    cmd.args(["serve", "--bind", "127.0.0.1:0", "--migrate"])
        .args(extra_args)
        .current_dir(std::env::temp_dir())
        .env_remove("BOTDB_BIND")
        .env("BOTDB_WEBHOOK_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    cmd.env("DATABASE_URL", url);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("botdb serve starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let admin_expected =
        extra_args.contains(&"--admin-bind") || env.iter().any(|(k, _)| *k == "BOTDB_ADMIN_BIND");
    let mut startup = Vec::new();
    let (base, admin) = tokio::time::timeout(Duration::from_secs(60), async {
        let (mut base, mut admin) = (None, None);
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("serve printed its address");
            startup.push(line.clone());
            if let Some(addr) = line.strip_prefix("listening on ") {
                base = Some(addr.to_string());
            }
            if let Some(addr) = line.strip_prefix("admin (/healthz, /metrics) on ") {
                admin = Some(addr.to_string());
            }
            if let Some(base) = &base
                && (admin.is_some() || !admin_expected)
            {
                return (base.clone(), admin);
            }
        }
    })
    .await
    .expect("serve listens");
    // Keep draining stdout so the child never blocks on a full pipe.
    actix_rt::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Served {
        child,
        base,
        admin,
        startup,
    }
}

pub fn text_update(update_id: i64, user_id: i64, text: &str) -> Value {
    json!({
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "from": {"id": user_id, "is_bot": false, "first_name": "T"},
            "chat": {"id": user_id, "type": "private"},
            "date": 1_700_000_000,
            "text": text
        }
    })
}

pub fn client() -> awc::Client {
    awc::Client::builder().timeout(Duration::from_secs(60)).finish()
}

/// POSTs a body to the webhook; returns the status and the body.
pub async fn post_raw(
    c: &awc::Client,
    base: &str,
    body: Vec<u8>,
    content_type: &str,
    token: Option<&str>,
) -> (u16, Vec<u8>) {
    let mut req = c
        .post(format!("{base}/telegram/webhook"))
        .insert_header(("Content-Type", content_type));
    if let Some(token) = token {
        req = req.insert_header(("X-Telegram-Bot-Api-Secret-Token", token));
    }
    let mut resp = req.send_body(body).await.expect("an HTTP answer");
    let status = resp.status().as_u16();
    let body = resp
        .body()
        .limit(1 << 22)
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    (status, body)
}

/// Sends a text as `user_id`; returns the bot's reply text (asserting a 200 sendMessage).
async fn say(c: &awc::Client, base: &str, update_id: i64, user_id: i64, text: &str) -> String {
    let body = serde_json::to_vec(&text_update(update_id, user_id, text)).unwrap();
    let (status, body) = post_raw(c, base, body, "application/json", Some(SECRET)).await;
    assert_eq!(status, 200, "{text}: {}", String::from_utf8_lossy(&body));
    let reply: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(reply["method"], "sendMessage");
    assert_eq!(reply["chat_id"], user_id);
    reply["text"].as_str().unwrap().to_string()
}

#[actix_rt::test]
async fn a_whole_dialogue_through_the_webhook() {
    let t = TestDb::empty().await;
    let served = spawn_serve(&t, &[]).await;
    let (c, base) = (client(), served.base.as_str());
    let user = 4242;
    assert!(say(&c, base, 1, user, "/start").await.starts_with("Welcome!"));
    for (i, text) in ["first", "second", "third"].iter().enumerate() {
        let reply = say(&c, base, 2 + i as i64, user, text).await;
        assert!(reply.starts_with(&format!("You said: {text}")), "{reply}");
        // The default limit (20) covers the whole dialogue so far.
        assert!(
            reply.contains(&format!("context: {} messages", 2 * i + 1)),
            "{reply}"
        );
    }
    let history = say(&c, base, 5, user, "/history").await;
    assert!(history.starts_with("I remember 6 messages"), "{history}");
    for text in ["you: first", "you: second", "you: third"] {
        assert!(history.contains(text), "{history}");
    }
    assert_eq!(
        say(&c, base, 6, user, "/limit 2").await,
        "I will remember the last 2 messages."
    );
    let reply = say(&c, base, 7, user, "fourth").await;
    assert!(
        reply.contains("context: 2 messages"),
        "the model sees only 2: {reply}"
    );
    let history = say(&c, base, 8, user, "/history").await;
    assert!(
        history.starts_with("I remember 2 messages") && history.contains("fourth"),
        "{history}"
    );
    assert!(
        say(&c, base, 9, user, "/limit 0")
            .await
            .contains("from 1 to 1000")
    );
    assert!(
        say(&c, base, 10, user, "/prompt Talk like a pirate.")
            .await
            .contains("set")
    );
    assert!(
        say(&c, base, 11, user, "/settings")
            .await
            .contains("Talk like a pirate.")
    );
    assert!(
        say(&c, base, 12, user, "fifth")
            .await
            .contains("system prompt: Talk like a pirate.")
    );
    assert_eq!(
        say(&c, base, 13, user, "/reset").await,
        "History cleared: 10 messages forgotten."
    );
    assert!(
        say(&c, base, 14, user, "/history")
            .await
            .starts_with("I remember nothing")
    );
    // The database keeps the soft-deleted rows.
    let (live, deleted): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE deleted_at IS NULL), count(*) FILTER (WHERE deleted_at IS NOT NULL) \
         FROM messages WHERE user_id = $1",
    )
    .bind(user)
    .fetch_one(&mut t.conn().await)
    .await
    .unwrap();
    assert_eq!((live, deleted), (0, 10));
    // A user never seen is registered first, with default settings.
    let reply = say(&c, base, 15, 777, "hello without /start").await;
    assert!(reply.contains("context: 1 messages"));
    let limit: i32 = sqlx::query_scalar("SELECT max_history_messages FROM user_settings WHERE user_id = 777")
        .fetch_one(&mut t.conn().await)
        .await
        .unwrap();
    assert_eq!(limit, botdb::model::DEFAULT_MAX_HISTORY);
}

#[actix_rt::test]
async fn hostile_requests_get_clear_4xx_answers_and_touch_nothing() {
    let t = TestDb::empty().await;
    let served = spawn_serve(&t, &[]).await;
    let (c, base) = (client(), served.base.as_str());
    let good = |id: i64, text: &str| serde_json::to_vec(&text_update(id, 5, text)).unwrap();
    let json = "application/json";
    /// What, body, content type, token, expected status.
    type Case<'a> = (&'a str, Vec<u8>, &'a str, Option<&'a str>, u16);
    let cases: Vec<Case> = vec![
        ("no token", good(1, "hi"), json, None, 401),
        ("wrong token", good(2, "hi"), json, Some("wrong-secret"), 401),
        (
            "token with a different length",
            good(3, "hi"),
            json,
            Some("x"),
            401,
        ),
        (
            "malformed JSON",
            b"{\"update_id\": 1, \"message\": ".to_vec(),
            json,
            Some(SECRET),
            400,
        ),
        ("not JSON at all", b"hello".to_vec(), json, Some(SECRET), 400),
        ("empty body", Vec::new(), json, Some(SECRET), 400),
        (
            "invalid UTF-8",
            b"{\"update_id\": 1, \"x\": \"\xff\xfe\"}".to_vec(),
            json,
            Some(SECRET),
            400,
        ),
        (
            "wrong content type",
            good(4, "hi"),
            "text/plain",
            Some(SECRET),
            415,
        ),
        (
            "body over the limit",
            vec![b' '; 300 * 1024],
            json,
            Some(SECRET),
            413,
        ),
        (
            "user id out of range",
            serde_json::to_vec(&text_update(5, -7, "hi")).unwrap(),
            json,
            Some(SECRET),
            400,
        ),
        (
            "missing message (ignored)",
            br#"{"update_id": 6}"#.to_vec(),
            json,
            Some(SECRET),
            200,
        ),
        (
            "unknown update type (ignored)",
            br#"{"update_id": 7, "callback_query": {"id": "1"}}"#.to_vec(),
            json,
            Some(SECRET),
            200,
        ),
    ];
    for (what, body, content_type, token, expected) in cases {
        let (status, body) = post_raw(&c, base, body, content_type, token).await;
        assert_eq!(status, expected, "{what}: {}", String::from_utf8_lossy(&body));
        if status == 200 {
            assert!(body.is_empty(), "{what}: ignored updates get an empty 200");
        }
    }
    // A text over the content limit: a clear answer, nothing stored.
    let (status, body) = post_raw(&c, base, good(8, &"x".repeat(70_000)), json, Some(SECRET)).await;
    assert_eq!(status, 200);
    let reply: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        reply["text"].as_str().unwrap().contains("longer than the limit"),
        "{reply}"
    );
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&mut t.conn().await)
        .await
        .unwrap();
    assert_eq!(n, 0, "nothing stored by any of them");
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&mut t.conn().await)
        .await
        .unwrap();
    assert!(users <= 1, "only the over-long text's sender may be registered");
}

#[actix_rt::test]
async fn health_and_metrics() {
    let t = TestDb::empty().await;
    let served = spawn_serve(&t, &[]).await;
    let (c, base) = (client(), served.base.as_str());
    say(&c, base, 1, 9, "/start").await;
    let mut health = c.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let body: Value = health.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    let mut metrics = c.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status().as_u16(), 200);
    let text = String::from_utf8(metrics.body().await.unwrap().to_vec()).unwrap();
    for line in [
        "# TYPE botdb_actor_queued gauge",
        "botdb_actor_queued{actor=\"messages\"} 0",
        "botdb_actor_requests_total{actor=\"users\",outcome=\"ok\"} 1",
        "botdb_actor_latency_seconds{actor=\"users\",quantile=\"0.99\"}",
        "botdb_pool_connections{state=\"idle\"}",
        "botdb_pool_connections{state=\"in_use\"}",
        "botdb_webhook_updates_total{result=\"replied\"} 1",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
}

#[actix_rt::test]
async fn serve_refuses_to_start_without_a_secret() {
    let t = TestDb::empty().await;
    let mut cmd = Command::new(crate::helpers::botdb_bin());
    cmd.args(["serve", "--bind", "127.0.0.1:0", "--migrate"])
        .current_dir(std::env::temp_dir())
        .env_remove("BOTDB_WEBHOOK_SECRET");
    for (k, v) in t.env() {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("BOTDB_WEBHOOK_SECRET"));
}

/// What a webhook load run saw. Every request sent is counted in exactly one bucket:
/// answered 200 (`acked`, per user in send order), answered 503, refused at connect
/// (the listener was gone: it never reached serve), or cut after it was sent (no
/// answer). A cut request is counted by when it was sent: before the signal on a
/// connection serve had already answered on (serve was reading it: must never happen),
/// before the signal as the first request of a new connection (the connection may still
/// have been in the listen queue, which closing the listener drops: Telegram retries
/// such an update), or after the signal.
#[derive(Default)]
pub struct LoadRun {
    pub unavailable: usize,
    pub refused: usize,
    pub cut_before_signal: usize,
    pub cut_before_signal_unaccepted: usize,
    pub cut_after_signal: usize,
    pub acked: Vec<(i64, Vec<String>)>,
    /// How each cut request failed (for the failure message).
    pub cut_errors: Vec<String>,
}

impl LoadRun {
    /// Requests answered 200.
    pub fn acked(&self) -> usize {
        self.acked.iter().map(|(_, a)| a.len()).sum()
    }

    /// Requests sent and not answered.
    pub fn cut(&self) -> usize {
        self.cut_before_signal + self.cut_before_signal_unaccepted + self.cut_after_signal
    }

    /// Every request sent.
    pub fn sent(&self) -> usize {
        self.acked() + self.unavailable + self.refused + self.cut()
    }
}

/// `clients` users send text updates to `base` as fast as they are answered, each
/// waiting for its answer, until `stop` is set or the server refuses a connection.
/// `after` is notified once `threshold` updates were answered 200. A request is counted
/// as sent before the signal when `signalled` was still false as it was sent. Answers
/// other than 200 must be 503.
pub fn webhook_load(
    base: Arc<String>,
    users: std::ops::Range<i64>,
    stop: Arc<AtomicBool>,
    signalled: Arc<AtomicBool>,
    after: Arc<tokio::sync::Notify>,
    threshold: usize,
) -> actix_rt::task::JoinHandle<LoadRun> {
    let acked_count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = users
        .map(|user| {
            let (base, stop, signalled, after, acked_count) = (
                base.clone(),
                stop.clone(),
                signalled.clone(),
                after.clone(),
                acked_count.clone(),
            );
            actix_rt::spawn(async move {
                let c = client();
                let mut run = LoadRun::default();
                let mut acked = Vec::new();
                // Whether serve has answered on this client's connection yet.
                let mut connected = false;
                let count_cut = |run: &mut LoadRun, before_signal: bool, connected: bool, what: String| {
                    run.cut_errors
                        .push(format!("{what} (sent before the signal: {before_signal}, on a connection already answered on: {connected})"));
                    match (before_signal, connected) {
                        (true, true) => run.cut_before_signal += 1,
                        (true, false) => run.cut_before_signal_unaccepted += 1,
                        (false, _) => run.cut_after_signal += 1,
                    }
                };
                for i in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let text = format!("u{user}-m{i}");
                    // Update ids are unique per bot, as Telegram's are.
                    let body = serde_json::to_vec(&text_update(user * 1_000_000 + i, user, &text)).unwrap();
                    let before_signal = !signalled.load(Ordering::SeqCst);
                    let answer = c
                        .post(format!("{base}/telegram/webhook"))
                        .insert_header(("Content-Type", "application/json"))
                        .insert_header(("X-Telegram-Bot-Api-Secret-Token", SECRET))
                        .timeout(Duration::from_secs(30))
                        .send_body(body)
                        .await;
                    let was_connected = connected;
                    connected |= answer.is_ok();
                    match answer {
                        Ok(mut resp) if resp.status().as_u16() == 200 => match resp.json::<Value>().await {
                            Ok(reply) => {
                                assert!(
                                    reply["text"]
                                        .as_str()
                                        .unwrap()
                                        .starts_with(&format!("You said: {text}"))
                                );
                                acked.push(text);
                                if acked_count.fetch_add(1, Ordering::SeqCst) + 1 == threshold {
                                    after.notify_one();
                                }
                            }
                            // The head said 200 but the body never came: cut.
                            Err(e) => count_cut(&mut run, before_signal, true, format!("the body of a 200: {e}")),
                        },
                        Ok(resp) => {
                            assert_eq!(resp.status().as_u16(), 503, "unexpected status");
                            run.unavailable += 1;
                        }
                        // No connection: the server had stopped listening. This client
                        // is done. (awc reports a connection closed after the request
                        // was sent and before an answer as `Connect(Disconnected)`: that
                        // one was cut, below.)
                        Err(awc::error::SendRequestError::Connect(e))
                            if !matches!(e, awc::error::ConnectError::Disconnected) =>
                        {
                            run.refused += 1;
                            break;
                        }
                        // Sent, and no answer came.
                        Err(e) => {
                            count_cut(&mut run, before_signal, was_connected, format!("{e:?}"));
                            break;
                        }
                    }
                }
                run.acked.push((user, acked));
                run
            })
        })
        .collect();
    actix_rt::spawn(async move {
        let mut total = LoadRun::default();
        for c in clients {
            let run = c.await.unwrap();
            total.unavailable += run.unavailable;
            total.refused += run.refused;
            total.cut_before_signal += run.cut_before_signal;
            total.cut_before_signal_unaccepted += run.cut_before_signal_unaccepted;
            total.cut_after_signal += run.cut_after_signal;
            total.cut_errors.extend(run.cut_errors);
            total.acked.extend(run.acked);
        }
        total
    })
}

/// What the database holds for a load run.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// Acknowledged updates stored, in the order they were acknowledged (a missing one
    /// or one out of order stops the count for its user).
    pub in_order: usize,
    /// Turns stored that were not acknowledged (their answer was lost or was an error).
    pub unacknowledged: usize,
}

/// Reads back a load run: every stored turn must be whole (the user's message, then its
/// reply; asserted, as a half-written turn is a failure of its own); counts how many
/// acknowledged turns are stored in order, and how many stored turns were not
/// acknowledged. Compare the counts with the run's.
pub async fn verify_turns(conn: &mut sqlx::PgConnection, run: &LoadRun) -> Found {
    let mut found = Found::default();
    for (user, acked) in &run.acked {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT role, content FROM messages WHERE user_id = $1 ORDER BY created_at, seq")
                .bind(user)
                .fetch_all(&mut *conn)
                .await
                .unwrap();
        assert_eq!(rows.len() % 2, 0, "user {user}: a half-written turn");
        let stored: Vec<String> = rows
            .chunks(2)
            .map(|pair| {
                assert_eq!(
                    (pair[0].0.as_str(), pair[1].0.as_str()),
                    ("user", "assistant"),
                    "user {user}"
                );
                assert!(pair[1].1.starts_with(&format!("You said: {}", pair[0].1)));
                pair[0].1.clone()
            })
            .collect();
        let mut rest = stored.iter();
        let in_order = acked.iter().take_while(|text| rest.any(|s| s == *text)).count();
        found.in_order += in_order;
        found.unacknowledged += stored.len().saturating_sub(in_order);
    }
    found
}

pub async fn sigterm(child: &mut Child) -> std::process::ExitStatus {
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("serve exits")
        .unwrap()
}

#[actix_rt::test]
async fn sigterm_under_load_answers_everything_sent_before_it_and_loses_nothing() {
    let t = TestDb::empty().await;
    let mut served = spawn_serve(&t, &[]).await;
    let (stop, signalled) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let enough = Arc::new(tokio::sync::Notify::new());
    let load = webhook_load(
        Arc::new(served.base.clone()),
        1000..1016,
        stop.clone(),
        signalled.clone(),
        enough.clone(),
        300,
    );
    enough.notified().await;
    signalled.store(true, Ordering::SeqCst);
    let status = sigterm(&mut served.child).await;
    stop.store(true, Ordering::SeqCst);
    assert_eq!(status.code(), Some(0), "graceful shutdown exits 0");
    let run = load.await.unwrap();
    let found = verify_turns(&mut t.conn().await, &run).await;
    eprintln!(
        "SIGTERM under 16 clients: sent {}, acknowledged {}, found in order {}, 503 {}, refused {}, \
         cut before the signal {} (+ {} first requests of new connections), cut after {}",
        run.sent(),
        run.acked(),
        found.in_order,
        run.unavailable,
        run.refused,
        run.cut_before_signal,
        run.cut_before_signal_unaccepted,
        run.cut_after_signal
    );
    assert_eq!(
        run.cut_before_signal, 0,
        "a request sent before SIGTERM went unanswered: {:?}",
        run.cut_errors
    );
    assert_eq!(
        found.in_order,
        run.acked(),
        "every acknowledged turn stored, in order"
    );
    assert!(
        found.unacknowledged <= run.cut(),
        "only a request whose answer was lost may be stored unacknowledged: {found:?}"
    );
}

/// A text update from `user_id` in chat `chat_id` (a group when negative).
pub fn chat_update(update_id: i64, user_id: i64, chat_id: i64, text: &str) -> Value {
    let kind = if chat_id == user_id {
        "private"
    } else {
        "supergroup"
    };
    json!({
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "from": {"id": user_id, "is_bot": false, "first_name": "T"},
            "chat": {"id": chat_id, "type": kind},
            "date": 1_700_000_000,
            "text": text
        }
    })
}

/// Sends `text` as `user_id` in `chat_id`; returns the reply, asserting it goes to
/// that chat.
async fn say_in(
    c: &awc::Client,
    base: &str,
    update_id: i64,
    user_id: i64,
    chat_id: i64,
    text: &str,
) -> String {
    let body = serde_json::to_vec(&chat_update(update_id, user_id, chat_id, text)).unwrap();
    let (status, body) = post_raw(c, base, body, "application/json", Some(SECRET)).await;
    assert_eq!(status, 200, "{text}: {}", String::from_utf8_lossy(&body));
    let reply: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        reply["chat_id"], chat_id,
        "the reply goes where the message came from"
    );
    reply["text"].as_str().unwrap().to_string()
}

#[actix_rt::test]
async fn a_users_private_dialogue_never_reaches_a_group_and_the_reverse() {
    let t = TestDb::empty().await;
    let served = spawn_serve(&t, &[]).await;
    let (c, base) = (client(), served.base.as_str());
    let (user, group) = (5150, -1_001_234_567_890);
    say_in(&c, base, 1, user, user, "my private diagnosis is X").await;
    // In the group, the same user asks for "their" history: the group's dialogue only.
    let history = say_in(&c, base, 2, user, group, "/history@botdb_bot").await;
    assert!(
        !history.contains("diagnosis"),
        "private text leaked into the group: {history}"
    );
    assert!(history.starts_with("I remember nothing"), "{history}");
    // A group turn: the model sees only the group's dialogue (the new message alone).
    let reply = say_in(&c, base, 3, user, group, "hello group").await;
    assert!(
        reply.contains("context: 1 messages"),
        "the model saw more: {reply}"
    );
    assert!(!reply.contains("diagnosis"), "{reply}");
    // And the reverse: the private dialogue does not contain the group's messages.
    let history = say_in(&c, base, 4, user, user, "/history").await;
    assert!(history.starts_with("I remember 2 messages"), "{history}");
    assert!(
        history.contains("diagnosis") && !history.contains("hello group"),
        "{history}"
    );
    let reply = say_in(&c, base, 5, user, user, "and in private again").await;
    assert!(reply.contains("context: 3 messages"), "{reply}");
    // /reset in the group clears the group's dialogue only.
    assert_eq!(
        say_in(&c, base, 6, user, group, "/reset").await,
        "History cleared: 2 messages forgotten."
    );
    let history = say_in(&c, base, 7, user, user, "/history").await;
    assert!(history.starts_with("I remember 4 messages"), "{history}");
    // Stored: the private dialogue as chat 0 (the reference's rows too), the group by its id.
    let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT chat_id, count(*) FILTER (WHERE deleted_at IS NULL), count(*) FILTER (WHERE deleted_at IS NOT NULL) \
           FROM messages WHERE user_id = $1 GROUP BY chat_id ORDER BY chat_id",
    )
    .bind(user)
    .fetch_all(&mut t.conn().await)
    .await
    .unwrap();
    assert_eq!(rows, vec![(group, 0, 2), (botdb::model::PRIVATE_CHAT, 4, 0)]);
}
