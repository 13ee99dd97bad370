//! The bad-input corpus: hostile inputs through the library, the actors and the
//! webhook. Each gets its typed error or its HTTP 4xx (or the 200-and-ignore Telegram
//! expects); nothing is half-written; the process survives (it answers afterwards).

use botdb::actors::{
    AppendMessage, AppendTurn, DbSystem, GetHistory, RegisterUser, SetSystemPrompt, UpdateSettings,
};
use botdb::model::PRIVATE_CHAT;
use botdb::model::{NewMessage, Role, SettingsPatch};
use botdb::{Config, Error, repo};
use serde_json::{Value, json};

use crate::helpers::TestDb;
use crate::serve::{SECRET, client, post_raw, spawn_serve};

/// What a case must produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Invalid,
    NotFound,
    Conflict,
    Config,
}

fn kind(result: &Result<(), Error>) -> Option<Expect> {
    match result {
        Err(Error::InvalidInput { .. }) => Some(Expect::Invalid),
        Err(Error::NotFound { .. }) => Some(Expect::NotFound),
        Err(Error::Conflict(_)) => Some(Expect::Conflict),
        Err(Error::Config { .. }) => Some(Expect::Config),
        _ => None,
    }
}

async fn counts(t: &TestDb) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM messages), (SELECT count(*) FROM user_settings)",
    )
    .fetch_one(&mut t.conn().await)
    .await
    .unwrap()
}

const TEN_MB: usize = 10 * 1024 * 1024;

/// Forgets a success value, so cases of every type fit in one table.
fn ok<T>(_: T) {}
const SQL: &str = "'; DROP TABLE messages; -- \" OR 1=1; $1 $$ \\x00";

#[actix_rt::test]
async fn hostile_inputs_through_the_library_and_the_actors() {
    let t = TestDb::new().await;
    let pool = t.db.pool();
    repo::users::create(pool, 1).await.unwrap();
    repo::settings::upsert(pool, 1, 20, None).await.unwrap();
    let limits = *t.db.limits();
    let h = DbSystem::start(t.db.clone(), Default::default());
    let big = "x".repeat(TEN_MB);
    let before = counts(&t).await;

    let cases: Vec<(&str, Result<(), Error>, Expect)> = vec![
        // The library.
        (
            "NUL in content",
            limits.message(1, Role::User, "a\0b").map(ok),
            Expect::Invalid,
        ),
        (
            "empty content",
            limits.message(1, Role::User, "").map(ok),
            Expect::Invalid,
        ),
        (
            "10 MB content",
            limits.message(1, Role::User, big.clone()).map(ok),
            Expect::Invalid,
        ),
        (
            "one character over the limit, multi-byte",
            limits
                .message(1, Role::User, "é".repeat(limits.max_content_chars + 1))
                .map(ok),
            Expect::Invalid,
        ),
        (
            "NUL in system prompt",
            limits.system_prompt("be\0nice").map(ok),
            Expect::Invalid,
        ),
        (
            "oversize system prompt",
            limits
                .system_prompt("p".repeat(limits.max_system_prompt_chars + 1))
                .map(ok),
            Expect::Invalid,
        ),
        (
            "user id 0",
            NewMessage::new(0, Role::User, "x").map(ok),
            Expect::Invalid,
        ),
        (
            "negative user id",
            repo::users::get(pool, -42).await.map(ok),
            Expect::Invalid,
        ),
        (
            "i64::MIN user id",
            repo::users::create(pool, i64::MIN).await.map(ok),
            Expect::Invalid,
        ),
        (
            "history limit 0",
            repo::messages::history(pool, 1, 0).await.map(ok),
            Expect::Invalid,
        ),
        (
            "history limit -1",
            repo::messages::history(pool, 1, -1).await.map(ok),
            Expect::Invalid,
        ),
        (
            "history limit 1001",
            repo::messages::history(pool, 1, 1001).await.map(ok),
            Expect::Invalid,
        ),
        (
            "history limit i64::MAX",
            repo::messages::history(pool, 1, i64::MAX).await.map(ok),
            Expect::Invalid,
        ),
        (
            "max_history i64::MAX",
            SettingsPatch::max_history(i64::MAX).map(ok),
            Expect::Invalid,
        ),
        (
            "max_history 0 set by hand",
            repo::settings::update(
                pool,
                1,
                &SettingsPatch {
                    max_history_messages: Some(0),
                    system_prompt: None,
                },
            )
            .await
            .map(ok),
            Expect::Invalid,
        ),
        (
            "append for an unknown user",
            repo::messages::append(pool, &limits.message(404, Role::User, "hi").unwrap())
                .await
                .map(ok),
            Expect::NotFound,
        ),
        (
            "settings of a user without any",
            repo::settings::set_max_history(pool, 404, 5).await.map(ok),
            Expect::NotFound,
        ),
        (
            "creating a user twice",
            repo::users::create(pool, 1).await.map(ok),
            Expect::Conflict,
        ),
        (
            "register with max_history 5000",
            t.db.session(async |tx| repo::users::register(tx, 2, 5000, None).await)
                .await
                .map(ok),
            Expect::Invalid,
        ),
        (
            "malformed DATABASE_URL",
            Config::builder().url("postgres://u:p@h:port/db").build().map(ok),
            Expect::Config,
        ),
        (
            "pool size 0",
            Config::builder().pool_size(0).build().map(ok),
            Expect::Config,
        ),
        // The actors.
        (
            "actors: NUL in content",
            h.send(AppendMessage {
                user_id: 1,
                chat_id: PRIVATE_CHAT,
                role: Role::User,
                content: "\0".into(),
                key: None,
            })
            .await
            .map(ok),
            Expect::Invalid,
        ),
        (
            "actors: 10 MB content",
            h.send(AppendMessage {
                user_id: 1,
                chat_id: PRIVATE_CHAT,
                role: Role::User,
                content: big.clone(),
                key: None,
            })
            .await
            .map(ok),
            Expect::Invalid,
        ),
        (
            "actors: negative history limit",
            h.send(UpdateSettings {
                user_id: 1,
                max_history_messages: Some(-5),
                system_prompt: None,
                key: None,
            })
            .await
            .map(ok),
            Expect::Invalid,
        ),
        (
            "actors: history limit 0",
            h.send(GetHistory {
                user_id: 1,
                chat_id: PRIVATE_CHAT,
                limit: Some(0),
            })
            .await
            .map(ok),
            Expect::Invalid,
        ),
        (
            "actors: turn with an empty reply",
            h.send(AppendTurn {
                user_id: 1,
                chat_id: PRIVATE_CHAT,
                user_text: "fine".into(),
                reply_text: String::new(),
                key: None,
            })
            .await
            .map(ok),
            Expect::Invalid,
        ),
        (
            "actors: turn with a 10 MB reply",
            h.send(AppendTurn {
                user_id: 1,
                chat_id: PRIVATE_CHAT,
                user_text: "fine".into(),
                reply_text: big.clone(),
                key: None,
            })
            .await
            .map(ok),
            Expect::Invalid,
        ),
        (
            "actors: register a negative id",
            h.send(RegisterUser {
                user_id: -1,
                max_history_messages: None,
                system_prompt: None,
            })
            .await
            .map(ok),
            Expect::Invalid,
        ),
        (
            "actors: register an id twice",
            h.send(RegisterUser {
                user_id: 1,
                max_history_messages: None,
                system_prompt: None,
            })
            .await
            .map(ok),
            Expect::Conflict,
        ),
        (
            "actors: append for an unknown user",
            h.send(AppendMessage {
                user_id: 404,
                chat_id: PRIVATE_CHAT,
                role: Role::User,
                content: "hi".into(),
                key: None,
            })
            .await
            .map(ok),
            Expect::NotFound,
        ),
        (
            "actors: NUL in system prompt",
            h.send(SetSystemPrompt {
                user_id: 1,
                prompt: Some("\0".into()),
                key: None,
            })
            .await
            .map(ok),
            Expect::Invalid,
        ),
    ];
    assert!(cases.len() >= 30);
    for (what, result, expected) in &cases {
        assert_eq!(kind(result), Some(*expected), "{what}: {result:?}");
    }
    assert_eq!(counts(&t).await, before, "nothing written by any of them");

    // SQL-looking text and odd Unicode are data: stored and read back verbatim.
    for text in [SQL, "مرحبا 👋🏽 e\u{301} \u{202e}txet", "\u{feff}\t\r\n  "] {
        let stored = h
            .send(AppendMessage {
                user_id: 1,
                chat_id: PRIVATE_CHAT,
                role: Role::User,
                content: text.into(),
                key: None,
            })
            .await
            .unwrap();
        assert_eq!(stored.content, text);
        assert_eq!(stored.content_length as usize, text.chars().count());
    }
    let history = h
        .send(GetHistory {
            user_id: 1,
            chat_id: PRIVATE_CHAT,
            limit: Some(3),
        })
        .await
        .unwrap();
    assert_eq!(history[2].content, SQL);
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        .fetch_one(&mut t.conn().await)
        .await
        .unwrap();
    assert_eq!(
        tables, 8,
        "the seven tables and the migrations table are all still there"
    );
    // The actors survived every one of them.
    let stats = h.stats().await.unwrap();
    assert!(stats.actors.iter().all(|a| a.restarts == 0 && a.panicked == 0));
}

#[actix_rt::test]
async fn hostile_webhook_requests() {
    let t = TestDb::empty().await;
    let served = spawn_serve(&t, &[]).await;
    let (c, base) = (client(), served.base.as_str());
    let json_ct = "application/json";
    let body = |v: Value| serde_json::to_vec(&v).unwrap();
    // Each a new update (an update id is recorded once handled: a second one with the
    // same id would be a copy).
    let next_id = std::cell::Cell::new(0);
    let with_text = |text: Value| {
        next_id.set(next_id.get() + 1);
        json!({"update_id": next_id.get(), "message": {"message_id": 1, "from": {"id": 77, "is_bot": false}, "chat": {"id": 77}, "text": text}})
    };
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes();
    /// (what, body, content type, expected status)
    type Case = (&'static str, Vec<u8>, &'static str, u16);
    let cases: Vec<Case> = vec![
        ("invalid UTF-8", b"{\"update_id\": 1, \"x\": \"\xc3\x28\"}".to_vec(), json_ct, 400),
        ("10 MB text (over the body limit)", body(with_text(json!("x".repeat(TEN_MB)))), json_ct, 413),
        ("deeply nested JSON", deep, json_ct, 400),
        ("empty body", Vec::new(), json_ct, 400),
        ("wrong content type", body(with_text(json!("hi"))), "application/x-www-form-urlencoded", 415),
        ("no content type", body(with_text(json!("hi"))), "", 415),
        (
            "user id beyond i64",
            br#"{"update_id":1,"message":{"message_id":1,"from":{"id":100000000000000000000},"chat":{"id":1},"text":"hi"}}"#
                .to_vec(),
            json_ct,
            400,
        ),
        (
            "user id as a string",
            body(json!({"update_id":1,"message":{"message_id":1,"from":{"id":"77"},"chat":{"id":77},"text":"hi"}})),
            json_ct,
            400,
        ),
        ("text as a number", body(with_text(json!(12345))), json_ct, 400),
        (
            "negative user id",
            body(json!({"update_id":1,"message":{"message_id":1,"from":{"id":-5},"chat":{"id":-5},"text":"hi"}})),
            json_ct,
            400,
        ),
        (
            "missing chat",
            body(json!({"update_id":1,"message":{"message_id":1,"from":{"id":77},"text":"hi"}})),
            json_ct,
            400,
        ),
        (
            "duplicate fields",
            br#"{"update_id":1,"update_id":2,"message":null}"#.to_vec(),
            json_ct,
            400,
        ),
        ("a JSON array", b"[1,2,3]".to_vec(), json_ct, 400),
        ("a JSON string", b"\"update\"".to_vec(), json_ct, 400),
        ("missing update_id", body(json!({"message": null})), json_ct, 400),
        ("message null (ignored)", body(json!({"update_id": 1, "message": null})), json_ct, 200),
        (
            "a channel post without sender (ignored)",
            body(json!({"update_id":1,"message":{"message_id":1,"chat":{"id":-100},"text":"hi"}})),
            json_ct,
            200,
        ),
        (
            "sent by a bot (ignored)",
            body(json!({"update_id":1,"message":{"message_id":1,"from":{"id":77,"is_bot":true},"chat":{"id":77},"text":"hi"}})),
            json_ct,
            200,
        ),
    ];
    for (what, payload, content_type, expected) in cases {
        let (status, answer) = post_raw(&c, base, payload, content_type, Some(SECRET)).await;
        assert_eq!(status, expected, "{what}: {}", String::from_utf8_lossy(&answer));
        assert!(status < 500, "{what}");
    }
    assert_eq!(counts(&t).await, (0, 0, 0), "nothing stored by the rejected ones");

    // Texts that reach the bot: a clear answer, and only well-formed turns stored.
    let replies: Vec<(&str, Value, &str)> = vec![
        (
            "NUL in text",
            json!("before\u{0}after"),
            "cannot store that message",
        ),
        (
            "text over the content limit",
            json!("y".repeat(70_000)),
            "longer than the limit",
        ),
        (
            "/limit huge",
            json!("/limit 99999999999999999999"),
            "Usage: /limit N",
        ),
        ("/limit negative", json!("/limit -5"), "from 1 to 1000"),
        ("/limit 1001", json!("/limit 1001"), "from 1 to 1000"),
        (
            "/prompt with NUL",
            json!("/prompt a\u{0}b"),
            "cannot use that prompt",
        ),
        ("unknown command", json!("/rm -rf /"), "Commands:"),
        ("empty text", json!(""), "cannot store that message"),
    ];
    for (what, text, expected) in replies {
        let (status, answer) = post_raw(&c, base, body(with_text(text)), json_ct, Some(SECRET)).await;
        assert_eq!(status, 200, "{what}");
        let reply: Value = serde_json::from_slice(&answer).unwrap();
        assert!(
            reply["text"].as_str().unwrap().contains(expected),
            "{what}: {reply}"
        );
    }
    let (users, messages, settings) = counts(&t).await;
    assert_eq!((users, settings), (1, 1), "the sender was registered once");
    assert_eq!(messages, 0, "no turn stored from any of them");

    // SQL-looking text is stored verbatim, as a whole turn.
    let (status, _) = post_raw(&c, base, body(with_text(json!(SQL))), json_ct, Some(SECRET)).await;
    assert_eq!(status, 200);
    let stored: String = sqlx::query_scalar("SELECT content FROM messages WHERE role = 'user'")
        .fetch_one(&mut t.conn().await)
        .await
        .unwrap();
    assert_eq!(stored, SQL);
    // The process survived all of it.
    let health = c.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
}
