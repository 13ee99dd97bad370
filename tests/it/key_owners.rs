//! Whose a request key is: a key is stored for the one user whose request took it, even
//! when two users' requests carry it in one batch; no key ever names a user who no
//! longer exists, however an erasure and a keyed write interleave; and an outcome keeps
//! no content (a system prompt never outlives the user's change or erasure in
//! `request_keys`).

use std::time::{Duration, Instant};

use botdb::actors::{
    AppendMessage, AppendTurn, BeginCommand, ClearHistory, DbHandle, DbSystem, EraseUser, RegisterUser,
    SetSystemPrompt, UpdateSettings,
};
use botdb::config::AuditKey;
use botdb::model::{PRIVATE_CHAT, RequestKey, Role};
use botdb::{ActorConfig, Error, migrate};
use futures::future::join_all;
use sqlx::PgConnection;

use crate::helpers::TestDb;

fn key(k: &str) -> RequestKey {
    RequestKey::new("test", k).unwrap()
}

async fn register(h: &DbHandle, user_id: i64) {
    h.send(RegisterUser {
        user_id,
        max_history_messages: None,
        system_prompt: None,
    })
    .await
    .unwrap();
}

async fn messages_of(c: &mut PgConnection, user_id: i64) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM messages WHERE user_id = $1")
        .bind(user_id)
        .fetch_one(c)
        .await
        .unwrap()
}

async fn owner_of(c: &mut PgConnection, k: &RequestKey) -> Option<Option<i64>> {
    sqlx::query_scalar("SELECT user_id FROM request_keys WHERE scope = $1 AND key = $2")
        .bind(k.scope())
        .bind(k.key())
        .fetch_optional(c)
        .await
        .unwrap()
}

/// The messages actor's batch counters.
async fn batches(h: &DbHandle) -> (u64, u64) {
    let stats = h.stats().await.unwrap();
    let a = stats.actors.iter().find(|a| a.actor == "messages").unwrap();
    (a.batches, a.batched_requests)
}

/// Eight pairs of users, each pair sending the same fresh key at once, all sixteen
/// requests in ONE batch (the group-commit statement that claims keys with their
/// rows): the first of each pair takes its key and is stored; the second is stored for
/// nobody and answered `Conflict` (a key belongs to one user's request). Turns and
/// single messages, both batch runners that claim keys.
#[actix_rt::test]
async fn a_key_shared_by_two_users_in_one_batch_is_stored_for_one_of_them_only() {
    let t = TestDb::new().await;
    let h = DbSystem::start(t.db.clone(), ActorConfig::default());
    const PAIRS: i64 = 8;
    for u in 1..=2 * PAIRS {
        register(&h, u).await;
    }
    let mut c = t.conn().await;
    for (round, turns) in [("turn", true), ("message", false)] {
        let pair_key = |p: i64| key(&format!("{round}-{p}"));
        let before = batches(&h).await;
        // Sent together: ready at the same moment, they go as one batch (below 64, the
        // batch bound).
        let sent = (1..=2 * PAIRS).map(|u| {
            let k = Some(pair_key((u + 1) / 2));
            let h = h.clone();
            async move {
                if turns {
                    h.send(AppendTurn {
                        user_id: u,
                        chat_id: PRIVATE_CHAT,
                        user_text: format!("q{u}"),
                        reply_text: format!("a{u}"),
                        key: k,
                    })
                    .await
                    .map(|_| ())
                } else {
                    h.send(AppendMessage {
                        user_id: u,
                        chat_id: PRIVATE_CHAT,
                        role: Role::User,
                        content: format!("m{u}"),
                        key: k,
                    })
                    .await
                    .map(|_| ())
                }
            }
        });
        let answers = join_all(sent).await;
        let after = batches(&h).await;
        assert_eq!(
            (after.0 - before.0, after.1 - before.1),
            (1, 2 * PAIRS as u64),
            "{round}s: all {} requests in one batch",
            2 * PAIRS
        );
        let per_request = if turns { 2 } else { 1 };
        for p in 1..=PAIRS {
            let (first, second) = (2 * p - 1, 2 * p);
            let (a, b) = (&answers[(first - 1) as usize], &answers[(second - 1) as usize]);
            assert!(a.is_ok(), "{round} pair {p}: the first takes the key: {a:?}");
            assert!(
                matches!(b, Err(Error::Conflict(_))),
                "{round} pair {p}: the second is refused: {b:?}"
            );
            assert_eq!(owner_of(&mut c, &pair_key(p)).await, Some(Some(first)));
        }
        for u in 1..=2 * PAIRS {
            let expected = if u % 2 == 1 { per_request } else { 0 };
            let expected = if turns {
                expected
            } else {
                expected + if u % 2 == 1 { 2 } else { 0 }
            };
            assert_eq!(messages_of(&mut c, u).await, expected, "{round}s: user {u}");
        }
    }
    h.shutdown().await;
}

/// The keyed writes an erasure must never leave a key behind for.
#[derive(Clone, Copy, Debug)]
enum Keyed {
    Message,
    Turn,
    Reset,
    Limit,
    Prompt,
    Command,
}

impl Keyed {
    const ALL: [Keyed; 6] = [
        Keyed::Message,
        Keyed::Turn,
        Keyed::Reset,
        Keyed::Limit,
        Keyed::Prompt,
        Keyed::Command,
    ];

    async fn send(self, h: &DbHandle, user_id: i64, k: RequestKey) -> Result<(), Error> {
        let key = Some(k.clone());
        match self {
            Keyed::Message => h
                .send(AppendMessage {
                    user_id,
                    chat_id: PRIVATE_CHAT,
                    role: Role::User,
                    content: "hello".into(),
                    key,
                })
                .await
                .map(drop),
            Keyed::Turn => h
                .send(AppendTurn {
                    user_id,
                    chat_id: PRIVATE_CHAT,
                    user_text: "q".into(),
                    reply_text: "a".into(),
                    key,
                })
                .await
                .map(drop),
            Keyed::Reset => h
                .send(ClearHistory {
                    user_id,
                    chat_id: PRIVATE_CHAT,
                    key,
                })
                .await
                .map(drop),
            Keyed::Limit => h
                .send(UpdateSettings {
                    user_id,
                    max_history_messages: Some(30),
                    system_prompt: None,
                    key,
                })
                .await
                .map(drop),
            Keyed::Prompt => h
                .send(SetSystemPrompt {
                    user_id,
                    prompt: Some("a private prompt".into()),
                    key,
                })
                .await
                .map(drop),
            Keyed::Command => h
                .send(BeginCommand {
                    user_id,
                    chat_id: PRIVATE_CHAT,
                    key: k,
                    record: true,
                })
                .await
                .map(drop),
        }
    }
}

/// Polls `query` (a count) on `c` until it is positive, or `done` says the awaited
/// thing happened another way; panics after 30 s.
async fn until(c: &mut PgConnection, query: &'static str, db: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 = sqlx::query_scalar(query)
            .bind(db)
            .fetch_one(&mut *c)
            .await
            .unwrap();
        if n > 0 || done() {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {query}");
        tokio::task::yield_now().await;
    }
}

/// For each keyed write: the write has claimed its key (its INSERT done, not yet
/// committed: a trigger the test adds holds it on an advisory lock) when an erasure of
/// the same user starts on another instance. The erasure must wait for the claim and
/// scrub it, or the claim must find no user: either way no key names the erased user,
/// and the key keeps no outcome. (Before keys had a foreign key to `users`, the erasure
/// ran through, could not see the uncommitted key, and the claim then committed a key
/// naming a user who no longer existed.)
#[actix_rt::test]
async fn an_erasure_racing_each_keyed_write_leaves_no_key_naming_the_user() {
    let t = TestDb::with(|b| b.audit_key(AuditKey::new("test-audit-key-0123456789").unwrap())).await;
    let h = DbSystem::start(t.db.clone(), ActorConfig::default());
    // The erasure comes from another instance: a second pool and actor system.
    let other = DbSystem::start(
        botdb::Database::connect(&t.config).await.unwrap(),
        ActorConfig::default(),
    );
    let mut c = t.conn().await;
    sqlx::raw_sql(
        "CREATE FUNCTION pause_key_claim() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN PERFORM pg_advisory_xact_lock_shared(4242); RETURN NEW; END $$; \
         CREATE TRIGGER zz_pause_key_claim AFTER INSERT ON request_keys \
             FOR EACH ROW EXECUTE FUNCTION pause_key_claim();",
    )
    .execute(&mut c)
    .await
    .unwrap();
    let mut hold = t.conn().await;
    for (i, keyed) in Keyed::ALL.into_iter().enumerate() {
        let user_id = 100 + i as i64;
        register(&h, user_id).await;
        h.send(AppendTurn {
            user_id,
            chat_id: PRIVATE_CHAT,
            user_text: "earlier".into(),
            reply_text: "reply".into(),
            key: None,
        })
        .await
        .unwrap();
        let k = key(&format!("race-{keyed:?}"));
        sqlx::query("SELECT pg_advisory_lock(4242)")
            .execute(&mut hold)
            .await
            .unwrap();
        let write = actix_rt::spawn({
            let (h, k) = (h.clone(), k.clone());
            async move { keyed.send(&h, user_id, k).await }
        });
        // The write's key is inserted, and the write held by the trigger.
        until(
            &mut c,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event = 'advisory'",
            &t.name,
            || false,
        )
        .await;
        let erase = actix_rt::spawn({
            let other = other.clone();
            async move { other.send(EraseUser { user_id, key: None }).await }
        });
        // The erasure waits for the user's row, or (without the foreign key) is done.
        until(
            &mut c,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock' \
               AND wait_event <> 'advisory'",
            &t.name,
            || erase.is_finished(),
        )
        .await;
        sqlx::query("SELECT pg_advisory_unlock(4242)")
            .execute(&mut hold)
            .await
            .unwrap();
        let written = write.await.unwrap();
        let erased = erase.await.unwrap();
        assert!(erased.is_ok(), "{keyed:?}: the erasure: {erased:?}");
        assert!(
            written.is_ok() || matches!(written, Err(Error::NotFound { entity: "user", .. })),
            "{keyed:?}: the write committed before the erasure, or found no user: {written:?}"
        );
        let naming: i64 = sqlx::query_scalar("SELECT count(*) FROM request_keys WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert_eq!(naming, 0, "{keyed:?}: a key names the erased user");
        let outcome: Option<serde_json::Value> =
            sqlx::query_scalar("SELECT outcome FROM request_keys WHERE scope = $1 AND key = $2")
                .bind(k.scope())
                .bind(k.key())
                .fetch_optional(&mut c)
                .await
                .unwrap();
        if let Some(outcome) = outcome {
            assert_eq!(
                outcome,
                serde_json::json!({"erased": true}),
                "{keyed:?}: the key's outcome"
            );
        }
        let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_one(&mut c)
            .await
            .unwrap();
        assert_eq!(users, 0, "{keyed:?}");
    }
    other.shutdown().await;
    h.shutdown().await;
}

/// A settings change under a key records that it happened, not what the settings
/// became: the user's system prompt is in `user_settings` only, and a copy answers
/// with the settings as they are now.
#[actix_rt::test]
async fn a_settings_outcome_keeps_no_system_prompt_and_a_copy_answers_the_settings_as_they_are() {
    let t = TestDb::new().await;
    let h = DbSystem::start(t.db.clone(), ActorConfig::default());
    register(&h, 1).await;
    let secret = "You are the private assistant of Jane Doe, 12 Elm Street.";
    let set = || SetSystemPrompt {
        user_id: 1,
        prompt: Some(secret.into()),
        key: Some(key("prompt")),
    };
    assert_eq!(
        h.send(set()).await.unwrap().system_prompt.as_deref(),
        Some(secret)
    );
    let limit = || UpdateSettings {
        user_id: 1,
        max_history_messages: Some(30),
        system_prompt: Some(Some(format!("{secret} Again."))),
        key: Some(key("limit")),
    };
    h.send(limit()).await.unwrap();
    let outcomes: Vec<String> = sqlx::query_scalar("SELECT outcome::text FROM request_keys")
        .fetch_all(&mut t.conn().await)
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 2);
    for outcome in &outcomes {
        assert!(
            !outcome.contains("Jane"),
            "an outcome keeps the prompt: {outcome}"
        );
    }
    // The user clears the prompt; copies of both earlier changes change nothing and
    // answer with what is stored now.
    h.send(SetSystemPrompt {
        user_id: 1,
        prompt: None,
        key: None,
    })
    .await
    .unwrap();
    for copy in [h.send(set()).await.unwrap(), h.send(limit()).await.unwrap()] {
        assert_eq!(copy.system_prompt, None);
        assert_eq!(copy.max_history_messages, 30);
    }
    h.shutdown().await;
}

/// Migration 0008 makes a key's owner a user who exists or nobody: erased users' keys
/// (owner 0) become NULL, settings outcomes lose their content; 0009 scrubs keys of
/// users who no longer exist and validates the foreign key; both roll back.
#[tokio::test]
async fn migrating_request_keys_scrubs_owners_that_do_not_exist_and_outcomes_with_content() {
    let t = TestDb::empty().await;
    let mut c = t.conn().await;
    migrate::upgrade_to(&mut c, Some(7)).await.unwrap();
    sqlx::raw_sql(
        "INSERT INTO users (id) VALUES (1); \
         INSERT INTO request_keys (scope, key, user_id, outcome) VALUES \
           ('t', 'mine', 1, '{\"cleared\": 2}'), \
           ('t', 'erased', 0, '{\"erased\": true}'), \
           ('t', 'orphan', 99, '{\"cleared\": 1}'), \
           ('t', 'settings', 1, '{\"settings\": {\"system_prompt\": \"secret prompt\"}}');",
    )
    .execute(&mut c)
    .await
    .unwrap();
    migrate::upgrade(&mut c).await.unwrap();
    let rows: Vec<(String, Option<i64>, String)> =
        sqlx::query_as("SELECT key, user_id, outcome::text FROM request_keys ORDER BY key")
            .fetch_all(&mut c)
            .await
            .unwrap();
    assert_eq!(
        rows,
        vec![
            ("erased".into(), None, r#"{"erased": true}"#.into()),
            ("mine".into(), Some(1), r#"{"cleared": 2}"#.into()),
            ("orphan".into(), None, r#"{"erased": true}"#.into()),
            ("settings".into(), Some(1), r#"{"settings": true}"#.into()),
        ]
    );
    let validated: bool = sqlx::query_scalar(
        "SELECT convalidated FROM pg_constraint WHERE conname = 'request_keys_user_id_fkey'",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert!(validated);
    // A key for a user who does not exist is refused by the database itself.
    let refused =
        sqlx::query("INSERT INTO request_keys (scope, key, user_id, outcome) VALUES ('t', 'x', 98, '{}')")
            .execute(&mut c)
            .await
            .unwrap_err();
    assert_eq!(
        refused.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("23503")
    );
    // Back to 0007: nobody is 0 again.
    migrate::downgrade(&mut c, 3).await.unwrap();
    let erased: Vec<String> =
        sqlx::query_scalar("SELECT key FROM request_keys WHERE user_id = 0 ORDER BY key")
            .fetch_all(&mut c)
            .await
            .unwrap();
    assert_eq!(erased, vec!["erased".to_string(), "orphan".to_string()]);
}
