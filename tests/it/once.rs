//! Requests that happen at most once under a key (Telegram's update ids, idempotency
//! keys): however many copies, on however many processes, one effect, and every copy
//! answered with it.

use std::time::Duration;

use botdb::actors::{AppendTurn, ClearHistory, DbHandle, DbSystem, RegisterUser, Turn, UpdateSettings};
use botdb::model::{PRIVATE_CHAT, RequestKey};
use botdb::{Database, Error, repo};
use futures::future::join_all;

use crate::helpers::TestDb;

fn key(k: i64) -> RequestKey {
    RequestKey::telegram_update("test", k).unwrap()
}

fn turn(user_id: i64, k: i64, reply: &str) -> AppendTurn {
    AppendTurn {
        user_id,
        chat_id: PRIVATE_CHAT,
        user_text: format!("question {k}"),
        reply_text: reply.into(),
        key: Some(key(k)),
    }
}

async fn register_all(h: &DbHandle, users: impl IntoIterator<Item = i64>) {
    for r in join_all(users.into_iter().map(|user_id| {
        h.send(RegisterUser {
            user_id,
            max_history_messages: None,
            system_prompt: None,
        })
    }))
    .await
    {
        r.unwrap();
    }
}

/// (user messages, all messages) stored for `user_id`.
async fn stored(t: &TestDb, user_id: i64) -> Vec<(String, String)> {
    sqlx::query_as("SELECT role, content FROM messages WHERE user_id = $1 ORDER BY created_at, seq")
        .bind(user_id)
        .fetch_all(&mut t.conn().await)
        .await
        .unwrap()
}

#[actix_rt::test]
async fn a_keyed_turn_is_stored_once_and_every_copy_gets_it() {
    let t = TestDb::new().await;
    let h = DbSystem::start(t.db.clone(), t.config.actors);
    register_all(&h, 1..=50).await;
    // Every user's turn 1 sent three times at once, each copy with its own model reply
    // (a model is not deterministic): they go in batches together with other users'.
    let copies: Vec<_> = (1..=50)
        .flat_map(|u| {
            ["first", "second", "third"]
                .into_iter()
                .map(|reply| h.send(turn(u, 1000 + u, reply)))
                .collect::<Vec<_>>()
        })
        .collect();
    let answers = join_all(copies).await;
    for (u, answers) in (1..=50).zip(answers.chunks(3)) {
        let turns: Vec<&Turn> = answers.iter().map(|a| a.as_ref().unwrap()).collect();
        assert!(
            turns.iter().all(|t| *t == turns[0]),
            "user {u}: every copy answers with the one stored turn"
        );
        assert_eq!(
            turns[0].reply.content, "first",
            "the first copy's turn is the one stored"
        );
        assert_eq!(
            stored(&t, u).await,
            [
                ("user".to_string(), format!("question {}", 1000 + u)),
                ("assistant".to_string(), "first".to_string())
            ],
            "user {u}: one turn"
        );
    }
    // A copy long after (a redelivery hours later) is still answered, and writes nothing.
    let late = h.send(turn(7, 1007, "late")).await.unwrap();
    assert_eq!(late.reply.content, "first");
    assert_eq!(stored(&t, 7).await.len(), 2);
}

#[actix_rt::test]
async fn copies_on_two_processes_at_once_make_one_turn() {
    // Two "instances": two pools, two actor systems, one database.
    let t = TestDb::new().await;
    let other = Database::connect(&t.config).await.unwrap();
    let (a, b) = (
        DbSystem::start(t.db.clone(), t.config.actors),
        DbSystem::start(other, t.config.actors),
    );
    register_all(&a, 1..=20).await;
    let mut sent = Vec::new();
    for round in 0..10 {
        for u in 1..=20 {
            let k = u * 100 + round;
            sent.push(a.send(turn(u, k, "from a")));
            sent.push(b.send(turn(u, k, "from b")));
        }
    }
    let answers = join_all(sent).await;
    for pair in answers.chunks(2) {
        let (x, y) = (pair[0].as_ref().unwrap(), pair[1].as_ref().unwrap());
        assert_eq!(x, y, "both copies answer with the same stored turn");
    }
    for u in 1..=20 {
        let rows = stored(&t, u).await;
        assert_eq!(rows.len(), 20, "user {u}: 10 turns, each once: {rows:?}");
    }
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM request_keys")
        .fetch_one(&mut t.conn().await)
        .await
        .unwrap();
    assert_eq!(keys, 200);
}

#[actix_rt::test]
async fn a_replayed_reset_or_limit_changes_nothing_again() {
    let t = TestDb::new().await;
    let h = DbSystem::start(t.db.clone(), t.config.actors);
    register_all(&h, [1]).await;
    h.send(turn(1, 1, "a")).await.unwrap();
    let reset = || ClearHistory {
        user_id: 1,
        chat_id: PRIVATE_CHAT,
        key: Some(key(2)),
    };
    assert_eq!(h.send(reset()).await.unwrap(), 2);
    h.send(turn(1, 3, "b")).await.unwrap();
    // /reset redelivered after a later turn: the same answer, and turn 3 stays live.
    assert_eq!(h.send(reset()).await.unwrap(), 2, "answered as the first time");
    let live: i64 =
        sqlx::query_scalar("SELECT count(*) FROM messages WHERE user_id = 1 AND deleted_at IS NULL")
            .fetch_one(&mut t.conn().await)
            .await
            .unwrap();
    assert_eq!(live, 2, "the later turn was not cleared by the copy");
    // /limit 5, then /limit 7, then the /limit 5 update again: it changes nothing, and
    // answers with the settings as they are (its outcome keeps no settings: they may
    // hold a system prompt), so the setting stays 7.
    let limit = |n: i64, k: i64| UpdateSettings {
        user_id: 1,
        max_history_messages: Some(n),
        system_prompt: None,
        key: Some(key(k)),
    };
    assert_eq!(h.send(limit(5, 4)).await.unwrap().max_history_messages, 5);
    assert_eq!(h.send(limit(7, 5)).await.unwrap().max_history_messages, 7);
    assert_eq!(h.send(limit(5, 4)).await.unwrap().max_history_messages, 7);
    let now = repo::settings::get(t.db.pool(), 1).await.unwrap().unwrap();
    assert_eq!(now.max_history_messages, 7);
}

#[actix_rt::test]
async fn a_key_is_never_answered_to_another_user() {
    let t = TestDb::new().await;
    let h = DbSystem::start(t.db.clone(), t.config.actors);
    register_all(&h, [1, 2]).await;
    h.send(turn(1, 9, "for user 1")).await.unwrap();
    let err = h.send(turn(2, 9, "for user 2")).await.unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err:?}");
    assert!(stored(&t, 2).await.is_empty(), "nothing written for user 2");
}

/// A turn is delayed by the purge when it waits for a lock the purge holds: that is what
/// this test asserts never happens, from the server's own record of lock waits (every
/// wait over 1 ms, `tests/it/lock_waits.rs`). A wall-clock limit on the slowest turn
/// would measure the machine (two cores shared with the server and other tests), not
/// the purge; the figures are printed. Reading the server's log needs the embedded
/// cluster: without the `embedded` feature (the core's run against an external server)
/// this test is not compiled rather than passing unproven.
#[cfg(feature = "embedded")]
#[actix_rt::test]
async fn old_keys_are_purged_in_small_batches_without_delaying_turns() {
    use crate::lock_waits::LockWaits;

    let t = TestDb::new_on(crate::helpers::logged_server()).await;
    let mut conn = t.conn().await;
    // 100,000 keys from two days ago, 1,000 from now.
    sqlx::raw_sql(
        "INSERT INTO users (id) VALUES (1);
         INSERT INTO request_keys (scope, key, user_id, outcome, created_at)
              SELECT 'tg:test', g::text, 1,
                     jsonb_build_object('messages', jsonb_build_array(gen_random_uuid(), gen_random_uuid())),
                     now() - interval '2 days'
                FROM generate_series(1, 100000) g;
         INSERT INTO request_keys (scope, key, user_id, outcome)
              SELECT 'tg:test', 'recent-' || g, 1,
                     jsonb_build_object('messages', jsonb_build_array(gen_random_uuid(), gen_random_uuid()))
                FROM generate_series(1, 1000) g;
         ANALYZE request_keys;",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let bytes: i64 = sqlx::query_scalar("SELECT pg_total_relation_size('request_keys')")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let record = LockWaits::watch(&t).await;
    // Pools opened after the record was turned on; the purge on one connection of its
    // own, whose backend is the one a delayed turn would have waited for.
    let load_db = Database::connect(&t.config).await.unwrap();
    let purge_db = Database::connect(
        &botdb::Config::builder()
            .pool_size(1)
            .max_overflow(0)
            .build()
            .unwrap()
            .with_server_of(&t.config),
    )
    .await
    .unwrap();
    LockWaits::assert_recorded(&load_db).await;
    LockWaits::assert_recorded(&purge_db).await;
    let backend = async || -> i32 {
        purge_db
            .read(async |c| Ok(sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(c).await?))
            .await
            .unwrap()
    };
    let purge_pid = backend().await;
    // A concurrent user keeps taking turns (keyed, like the webhook's, the keys in the
    // table the purge empties, under the user whose keys it removes) while the purge
    // runs; how long each took is recorded.
    let h = DbSystem::start(load_db, t.config.actors);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let turns = {
        let (h, stop) = (h.clone(), stop.clone());
        actix_rt::spawn(async move {
            let mut slowest = Duration::ZERO;
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let started = std::time::Instant::now();
                h.send(turn(1, 1_000_000 + n, "during the purge")).await.unwrap();
                slowest = slowest.max(started.elapsed());
                n += 1;
            }
            (n, slowest)
        })
    };
    let started = std::time::Instant::now();
    let (mut purged, mut batches) = (0, 0);
    loop {
        let n = purge_db
            .autocommit(async |c| repo::keys::purge_older_than(c, Duration::from_secs(24 * 3600), 1000).await)
            .await
            .unwrap();
        purged += n;
        batches += 1;
        if n < 1000 {
            break;
        }
    }
    let took = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (turns_done, slowest) = turns.await.unwrap();
    h.shutdown().await;
    assert_eq!(
        backend().await,
        purge_pid,
        "the purge ran on one backend throughout"
    );
    purge_db.close().await;
    let waits = record.waits();
    let on_purge: Vec<_> = waits.iter().filter(|w| w.holders.contains(&purge_pid)).collect();
    eprintln!(
        "purge: 100,000 keys in {batches} batches in {:.2} s; {turns_done} concurrent keyed turns, \
         slowest {:.1} ms; lock waits over 1 ms in the server's log: {} in all, {} on the purge; \
         table + indexes: {} bytes for 101,000 keys ({:.0} bytes per key, about {:.0} MB per million)",
        took.as_secs_f64(),
        slowest.as_secs_f64() * 1000.0,
        waits.len(),
        on_purge.len(),
        bytes,
        bytes as f64 / 101_000.0,
        bytes as f64 / 101_000.0
    );
    assert!(turns_done > 0, "turns went on during the purge");
    assert!(
        on_purge.is_empty(),
        "turns were delayed by the purge (the slowest took {slowest:?}): they waited for its locks: {on_purge:?}"
    );
    assert_eq!(purged, 100_000, "every old key removed");
    assert_eq!(
        batches, 101,
        "1,000 keys per transaction: 100 full batches, then one that found none"
    );
    let left: Vec<i64> = sqlx::query_scalar(
        "SELECT count(*) FROM request_keys WHERE key LIKE 'recent-%' UNION ALL \
         SELECT count(*) FROM request_keys WHERE created_at < now() - interval '1 day'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(left, [1000, 0], "recent keys kept, old ones gone");
}
