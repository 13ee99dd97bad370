//! Erasing a user (issue 15): everything of theirs gone in one transaction, serialised
//! with their turns, and an audit row that proves it without naming them.

use std::sync::Arc;
use std::time::Duration;

use botdb::actors::{AppendTurn, DbHandle, DbSystem, EnsureUser, EraseUser, UpdateSettings};
use botdb::bot::{Bot, EchoModel, Outcome, Update};
use botdb::config::{ActorConfig, AuditKey};
use botdb::model::{NewMessage, RequestKey, Role};
use botdb::{Error, repo};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::helpers::{TestDb, eventually};

const KEY: &str = "test-audit-key-0123456789";

async fn with_key() -> TestDb {
    TestDb::with(|b| {
        b.audit_key(AuditKey::new(KEY).unwrap())
            .lock_timeout(Some(Duration::from_secs(30)))
    })
    .await
}

fn hmac(key: &str, user: i64) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(user.to_string().as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Rows of each table that belong to `user`.
async fn rows_of(t: &TestDb, user: i64) -> [i64; 4] {
    let mut conn = t.conn().await;
    let mut out = [0; 4];
    for (i, sql) in [
        "SELECT count(*) FROM users WHERE id = $1",
        "SELECT count(*) FROM messages WHERE user_id = $1",
        "SELECT count(*) FROM user_settings WHERE user_id = $1",
        "SELECT count(*) FROM request_keys WHERE user_id = $1",
    ]
    .into_iter()
    .enumerate()
    {
        out[i] = sqlx::query_scalar(sql)
            .bind(user)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    }
    out
}

/// A user with settings (and a prompt), messages in two chats (some soft-deleted) and
/// request keys.
async fn populate(t: &TestDb, h: &DbHandle, user: i64) {
    h.send(EnsureUser { user_id: user }).await.unwrap();
    for (i, chat) in [0, -100, 0, -100].into_iter().enumerate() {
        h.send(AppendTurn {
            user_id: user,
            chat_id: chat,
            user_text: format!("secret {i} of {user}"),
            reply_text: "noted".into(),
            key: Some(RequestKey::new("test", format!("{user}-{i}")).unwrap()),
        })
        .await
        .unwrap();
    }
    h.send(UpdateSettings {
        user_id: user,
        max_history_messages: Some(50),
        system_prompt: Some(Some("You know my secrets.".into())),
        key: None,
    })
    .await
    .unwrap();
    repo::messages::clear_history(t.db.pool(), user).await.unwrap();
}

#[actix_rt::test]
async fn an_erasure_removes_every_row_of_the_user_and_leaves_an_audit_row_naming_nobody() {
    let t = with_key().await;
    let h = DbSystem::start(t.db.clone(), ActorConfig::default());
    populate(&t, &h, 5).await;
    populate(&t, &h, 6).await;
    assert_eq!(rows_of(&t, 5).await, [1, 8, 1, 4]);
    let before_6 = rows_of(&t, 6).await;

    let erasure = h
        .send(EraseUser {
            user_id: 5,
            key: None,
        })
        .await
        .unwrap();
    assert_eq!(
        (erasure.messages, erasure.settings, erasure.request_keys),
        (8, 1, 4),
        "live and soft-deleted, both chats"
    );
    assert_eq!(rows_of(&t, 5).await, [0, 0, 0, 0]);
    assert_eq!(rows_of(&t, 6).await, before_6, "another user is untouched");
    assert_eq!(t.db.counters().snapshot().erased_users, 1);
    assert_eq!(t.db.counters().snapshot().erased_messages, 8);

    // The audit row: when, how many, and a keyed hash; no id, no content.
    let mut conn = t.conn().await;
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns WHERE table_name = 'erasures' ORDER BY ordinal_position",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        columns,
        [
            "id",
            "subject",
            "erased_at",
            "messages",
            "settings",
            "request_keys"
        ]
    );
    let (subject, as_text): (Vec<u8>, String) = sqlx::query_as("SELECT subject, e::text FROM erasures e")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(subject, hmac(KEY, 5), "HMAC-SHA256(key, \"5\")");
    assert_ne!(subject, Sha256::digest(b"5").to_vec(), "not a plain hash");
    assert_ne!(subject, hmac("another-key-0123456789", 5));
    assert!(!as_text.contains("secret"), "{as_text}");
    // Found by whoever holds the key and the id; not with another key.
    let key = AuditKey::new(KEY).unwrap();
    assert_eq!(
        repo::erasures::find(&mut conn, &key, 5).await.unwrap(),
        vec![erasure.clone()]
    );
    assert!(repo::erasures::find(&mut conn, &key, 6).await.unwrap().is_empty());
    let other = AuditKey::new("another-key-0123456789").unwrap();
    assert!(
        repo::erasures::find(&mut conn, &other, 5)
            .await
            .unwrap()
            .is_empty()
    );

    // The user may come back: a new life, not the old one.
    let back = h.send(EnsureUser { user_id: 5 }).await.unwrap();
    assert!(back.created);
    assert_eq!(rows_of(&t, 5).await, [1, 0, 1, 0]);
    h.shutdown().await;
}

#[actix_rt::test]
async fn unknown_users_bad_ids_and_a_missing_key_are_typed_errors_that_write_nothing() {
    let t = with_key().await;
    let h = DbSystem::start(t.db.clone(), ActorConfig::default());
    let err = h
        .send(EraseUser {
            user_id: 77,
            key: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { entity: "user", .. }), "{err}");
    let err = h
        .send(EraseUser {
            user_id: -3,
            key: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    h.shutdown().await;

    let without = TestDb::new().await;
    let h = DbSystem::start(without.db.clone(), ActorConfig::default());
    populate(&without, &h, 9).await;
    let err = h
        .send(EraseUser {
            user_id: 9,
            key: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Config { key, .. } if key == "BOTDB_AUDIT_KEY"),
        "{err}"
    );
    assert_eq!(rows_of(&without, 9).await, [1, 8, 1, 4], "nothing erased");
    h.shutdown().await;
    for t in [&t, &without] {
        let audits: i64 = sqlx::query_scalar("SELECT count(*) FROM erasures")
            .fetch_one(&mut t.conn().await)
            .await
            .unwrap();
        assert_eq!(audits, 0, "no audit row for what did not happen");
    }
}

#[actix_rt::test]
async fn an_erasure_racing_turns_of_the_same_user_leaves_nothing_half_way() {
    let t = with_key().await;
    let h = DbSystem::start(t.db.clone(), ActorConfig::default());
    populate(&t, &h, 11).await;
    let mut blocker = t.conn().await;
    // A turn in flight on another connection: it holds the lock an insert's foreign key
    // takes on the user's row, and has written its two messages, not yet committed.
    sqlx::raw_sql("BEGIN; SELECT 1 FROM users WHERE id = 11 FOR KEY SHARE")
        .execute(&mut blocker)
        .await
        .unwrap();
    for text in ["in flight", "its reply"] {
        let m = NewMessage::new(11, Role::User, text).unwrap();
        repo::messages::append(&mut blocker, &m).await.unwrap();
    }
    let erase = actix_rt::spawn({
        let h = h.clone();
        async move {
            h.send(EraseUser {
                user_id: 11,
                key: None,
            })
            .await
        }
    });
    // The erasure waits for the turn in flight.
    let mut observer = t.conn().await;
    assert!(
        eventually(Duration::from_secs(20), async || {
            sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() \
                   AND wait_event_type = 'Lock' AND query LIKE 'SELECT id FROM users WHERE id = $1 FOR UPDATE%')",
            )
            .fetch_one(&mut observer)
            .await
            .unwrap()
        })
        .await,
        "the erasure waits for the turn's lock"
    );
    // More turns of the same user arrive meanwhile, through the actors.
    let turns: Vec<_> = (0..20)
        .map(|i| {
            let h = h.clone();
            actix_rt::spawn(async move {
                h.send(AppendTurn {
                    user_id: 11,
                    chat_id: 0,
                    user_text: format!("racing {i}"),
                    reply_text: "ok".into(),
                    key: None,
                })
                .await
            })
        })
        .collect();
    sqlx::query("COMMIT").execute(&mut blocker).await.unwrap();
    let erasure = erase.await.unwrap().unwrap();
    let mut stored = 0;
    for turn in turns {
        match turn.await.unwrap() {
            Ok(_) => stored += 1,
            Err(Error::NotFound { entity: "user", .. }) => {}
            Err(e) => panic!("a racing turn failed otherwise: {e}"),
        }
    }
    // Every turn either committed before the erasure (and was erased with the rest) or
    // found no user: nothing of the user is left, and the audit counts what was there.
    assert_eq!(rows_of(&t, 11).await, [0, 0, 0, 0]);
    assert_eq!(
        erasure.messages,
        8 + 2 + 2 * stored,
        "{stored} racing turns were stored first"
    );
    println!(
        "racing turns: {stored} stored before the erasure, {} found no user",
        20 - stored
    );
    h.shutdown().await;
}

#[actix_rt::test]
async fn copies_of_requests_from_before_an_erasure_do_nothing_and_name_nobody() {
    let t = with_key().await;
    let h = DbSystem::start(t.db.clone(), ActorConfig::default());
    populate(&t, &h, 21).await;
    let key = RequestKey::telegram_update("bot", 9001).unwrap();
    let first = h
        .send(EraseUser {
            user_id: 21,
            key: Some(key.clone()),
        })
        .await
        .unwrap();
    assert_eq!(first.request_keys, 5, "the four turns' keys and its own");
    // The keys stay (until the key retention), owned by nobody, with no outcome.
    let mut conn = t.conn().await;
    let kept: Vec<(Option<i64>, serde_json::Value)> =
        sqlx::query_as("SELECT user_id, outcome FROM request_keys ORDER BY key")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(kept.len(), 5);
    assert!(
        kept.iter()
            .all(|(owner, outcome)| owner.is_none() && *outcome == serde_json::json!({"erased": true})),
        "{kept:?}"
    );

    // The user talks again; then copies of requests from before the erasure arrive: a
    // turn, and the erasure itself. Each is NotFound (erased) and does nothing.
    h.send(EnsureUser { user_id: 21 }).await.unwrap();
    let copy = h
        .send(EraseUser {
            user_id: 21,
            key: Some(key),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&copy, Error::NotFound { entity, .. } if *entity == repo::keys::ERASED_ENTITY),
        "{copy}"
    );
    let turn_copy = h
        .send(AppendTurn {
            user_id: 21,
            chat_id: 0,
            user_text: "secret 0 of 21".into(),
            reply_text: "noted".into(),
            key: Some(RequestKey::new("test", "21-0").unwrap()),
        })
        .await
        .unwrap_err();
    assert!(matches!(turn_copy, Error::NotFound { .. }), "{turn_copy}");
    assert_eq!(
        rows_of(&t, 21).await,
        [1, 0, 1, 0],
        "the user who came back is not erased, nor given old messages"
    );
    let audits: i64 = sqlx::query_scalar("SELECT count(*) FROM erasures")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(audits, 1);
    h.shutdown().await;
}

fn update(update_id: i64, user: i64, text: &str) -> Update {
    serde_json::from_value(serde_json::json!({
        "update_id": update_id,
        "message": {"from": {"id": user}, "chat": {"id": user}, "text": text}
    }))
    .unwrap()
}

fn text(outcome: Outcome) -> String {
    match outcome {
        Outcome::Reply(m) => m.text,
        Outcome::Ignored(why) => panic!("ignored: {why}"),
    }
}

#[actix_rt::test]
async fn the_bot_asks_to_confirm_forget_then_erases_once() {
    let t = with_key().await;
    let h = DbSystem::start(t.db.clone(), ActorConfig::default());
    let bot = Bot::new(h.clone(), Arc::new(EchoModel));
    text(bot.handle(update(1, 31, "hello")).await.unwrap());
    text(bot.handle(update(2, 31, "my secret is X")).await.unwrap());
    assert_eq!(rows_of(&t, 31).await[1], 4);

    let asked = text(bot.handle(update(3, 31, "/forget")).await.unwrap());
    assert!(asked.contains("/forget yes"), "{asked}");
    assert_eq!(
        rows_of(&t, 31).await[1],
        4,
        "nothing erased without the confirmation"
    );

    let done = text(bot.handle(update(4, 31, "/forget yes")).await.unwrap());
    assert!(done.contains("erased 4 messages"), "{done}");
    assert_eq!(rows_of(&t, 31).await[..3], [0, 0, 0]);
    // Telegram redelivers the confirmation, and a turn from before it: answered (a 200),
    // nothing done, no user registered again.
    let again = text(bot.handle(update(4, 31, "/forget yes")).await.unwrap());
    assert!(again.contains("nothing"), "{again}");
    assert_eq!(
        bot.handle(update(2, 31, "my secret is X")).await.unwrap(),
        Outcome::Ignored("sent before its user was erased")
    );
    assert_eq!(rows_of(&t, 31).await[..3], [0, 0, 0]);
    // A new confirmation for someone with nothing stored.
    let nothing = text(bot.handle(update(5, 32, "/forget yes")).await.unwrap());
    assert!(nothing.contains("nothing"), "{nothing}");
    h.shutdown().await;
}
