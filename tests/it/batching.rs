//! Group commit and batched reads: requests of different users that are ready at the
//! same moment run as one statement, and nothing about that is visible to a caller:
//! per-user order, one answer per request, a bad row failing alone, every Ok committed.

use botdb::model::PRIVATE_CHAT;
use std::collections::HashMap;

use botdb::actors::{
    AppendMessage, AppendTurn, DbHandle, DbSystem, EnsureUser, GetHistory, GetSettings, RegisterUser,
    UpsertUser,
};
use botdb::model::Role;
use botdb::{ActorConfig, Error};
use futures::future::join_all;

use crate::helpers::TestDb;

fn append(user_id: i64, content: impl Into<String>) -> AppendMessage {
    AppendMessage {
        user_id,
        chat_id: PRIVATE_CHAT,
        role: Role::User,
        content: content.into(),
        key: None,
    }
}

async fn register_all(h: &DbHandle, users: impl IntoIterator<Item = i64>) {
    let sent: Vec<_> = users
        .into_iter()
        .map(|user_id| {
            h.send(RegisterUser {
                user_id,
                max_history_messages: Some(1000),
                system_prompt: None,
            })
        })
        .collect();
    for r in join_all(sent).await {
        r.unwrap();
    }
}

async fn batch_stats(h: &DbHandle, actor: &str) -> (u64, u64, usize) {
    let stats = h.stats().await.unwrap();
    let a = stats.actors.iter().find(|a| a.actor == actor).unwrap();
    (a.batches, a.batched_requests, a.largest_batch)
}

async fn stored(t: &TestDb, user_id: i64) -> Vec<String> {
    sqlx::query_scalar("SELECT content FROM messages WHERE user_id = $1 ORDER BY created_at, seq")
        .bind(user_id)
        .fetch_all(&mut t.conn().await)
        .await
        .unwrap()
}

#[actix_rt::test]
async fn appends_of_many_users_go_in_batches_and_keep_each_users_order() {
    let t = TestDb::new().await;
    let h = DbSystem::start(t.db.clone(), ActorConfig::default());
    register_all(&h, 1..=50).await;
    let mut sent = Vec::new();
    for i in 0..20 {
        for u in 1..=50 {
            sent.push(h.send(append(u, format!("u{u}-{i:02}"))));
        }
    }
    assert!(join_all(sent).await.iter().all(Result::is_ok));
    let (batches, batched, largest) = batch_stats(&h, "messages").await;
    assert!(
        batches > 0 && largest > 1,
        "appends were batched: {batches} batches, largest {largest}"
    );
    assert!(batched >= 2 * batches);
    for u in 1..=50 {
        let expected: Vec<String> = (0..20).map(|i| format!("u{u}-{i:02}")).collect();
        assert_eq!(stored(&t, u).await, expected, "user {u}");
    }
    // Turns too: both messages of each, in order.
    let turns: Vec<_> = (1..=50)
        .map(|u| {
            h.send(AppendTurn {
                user_id: u,
                chat_id: PRIVATE_CHAT,
                user_text: format!("q{u}"),
                reply_text: format!("a{u}"),
                key: None,
            })
        })
        .collect();
    for (u, turn) in (1..=50).zip(join_all(turns).await) {
        let turn = turn.unwrap();
        assert_eq!(
            (turn.user.content, turn.reply.content),
            (format!("q{u}"), format!("a{u}"))
        );
        assert!(turn.reply.seq > turn.user.seq);
        let all = stored(&t, u).await;
        assert_eq!(&all[all.len() - 2..], [format!("q{u}"), format!("a{u}")]);
    }
}

#[actix_rt::test]
async fn a_bad_row_fails_alone_and_the_rest_of_its_batch_is_committed() {
    let t = TestDb::new().await;
    let h = DbSystem::start(t.db.clone(), ActorConfig::default());
    register_all(&h, 1..=8).await;
    let before = batch_stats(&h, "messages").await.0;
    // Sent together: they are ready at the same moment and go as one batch.
    let mut sent: Vec<_> = (1..=8).map(|u| h.send(append(u, format!("good {u}")))).collect();
    sent.push(h.send(append(404, "for nobody")));
    sent.push(h.send(append(5_000, "has a \0 byte")));
    let answers = join_all(sent).await;
    for (i, a) in answers.iter().take(8).enumerate() {
        assert!(a.is_ok(), "good row {i}: {a:?}");
    }
    assert!(
        matches!(answers[8], Err(Error::NotFound { entity: "user", .. })),
        "{:?}",
        answers[8]
    );
    assert!(
        matches!(answers[9], Err(Error::InvalidInput { .. })),
        "{:?}",
        answers[9]
    );
    assert!(
        batch_stats(&h, "messages").await.0 > before,
        "they went as a batch"
    );
    for u in 1..=8 {
        assert_eq!(stored(&t, u).await, [format!("good {u}")]);
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&mut t.conn().await)
        .await
        .unwrap();
    assert_eq!(n, 8);
}

#[actix_rt::test]
async fn a_batch_that_fails_as_a_whole_falls_back_to_single_rows() {
    let t = TestDb::new().await;
    // A row the database refuses for a reason botdb cannot check beforehand.
    sqlx::raw_sql(
        "CREATE FUNCTION test_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.content = 'poison' THEN RAISE EXCEPTION 'poisoned row'; END IF; RETURN NEW; END $$;
         CREATE TRIGGER test_poison BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION test_poison();",
    )
    .execute(&mut t.conn().await)
    .await
    .unwrap();
    let h = DbSystem::start(t.db.clone(), ActorConfig::default());
    register_all(&h, 1..=10).await;
    let sent: Vec<_> = (1..=10)
        .map(|u| {
            h.send(append(
                u,
                if u == 6 {
                    "poison".to_string()
                } else {
                    format!("fine {u}")
                },
            ))
        })
        .collect();
    let answers = join_all(sent).await;
    for (u, a) in (1..=10).zip(&answers) {
        if u == 6 {
            assert!(
                matches!(a, Err(Error::Database(_))),
                "the poisoned row fails: {a:?}"
            );
        } else {
            assert!(a.is_ok(), "user {u}: {a:?}");
        }
    }
    for u in 1..=10 {
        let expected: Vec<String> = if u == 6 { vec![] } else { vec![format!("fine {u}")] };
        assert_eq!(stored(&t, u).await, expected);
    }
}

#[actix_rt::test]
async fn batched_reads_and_upserts_answer_each_user_with_their_own_rows() {
    let t = TestDb::new().await;
    let h = DbSystem::start(t.db.clone(), ActorConfig::default());
    // EnsureUser in a batch: created for new users only.
    register_all(&h, [1, 2]).await;
    let ensured = join_all((1..=6).map(|u| h.send(EnsureUser { user_id: u }))).await;
    for (u, r) in (1..=6).zip(ensured) {
        let r = r.unwrap();
        assert_eq!(r.user.id, u);
        assert_eq!(r.settings.user_id, u);
        assert_eq!(r.created, u > 2, "user {u}");
    }
    let upserted = join_all((1..=8).map(|u| h.send(UpsertUser { user_id: u }))).await;
    for (u, r) in (1..=8).zip(upserted) {
        assert_eq!(r.unwrap().id, u);
    }
    for u in 1..=6 {
        for i in 0..u {
            h.send(append(u, format!("u{u}-{i}"))).await.unwrap();
        }
    }
    let settings = join_all((1..=8).map(|u| h.send(GetSettings { user_id: u }))).await;
    for (u, s) in (1..=8).zip(settings) {
        let s = s.unwrap();
        assert_eq!(s.map(|s| s.user_id), (u <= 6).then_some(u), "user {u}");
    }
    let limits: HashMap<i64, Option<i64>> = (1..=6)
        .map(|u| (u, if u % 2 == 0 { Some(2) } else { None }))
        .collect();
    let histories = join_all((1..=6).map(|u| {
        h.send(GetHistory {
            user_id: u,
            chat_id: PRIVATE_CHAT,
            limit: limits[&u],
        })
    }))
    .await;
    for (u, history) in (1..=6).zip(histories) {
        let got: Vec<String> = history.unwrap().into_iter().map(|m| m.content).collect();
        let take = limits[&u].map_or(u as usize, |l| l as usize);
        let expected: Vec<String> = (0..u).rev().take(take).map(|i| format!("u{u}-{i}")).collect();
        assert_eq!(got, expected, "user {u}");
    }
    let stats = h.stats().await.unwrap();
    assert!(
        stats
            .actors
            .iter()
            .filter(|a| ["users", "messages", "user_settings"].contains(&a.actor))
            .all(|a| a.batches > 0),
        "every actor batched something: {stats:?}"
    );
    // Invalid requests in a batch get their own error.
    let mixed = join_all([
        h.send(GetHistory {
            user_id: 1,
            chat_id: PRIVATE_CHAT,
            limit: Some(0),
        }),
        h.send(GetHistory {
            user_id: 2,
            chat_id: PRIVATE_CHAT,
            limit: None,
        }),
    ])
    .await;
    assert!(matches!(mixed[0], Err(Error::InvalidInput { .. })));
    assert!(mixed[1].is_ok());
}

#[actix_rt::test]
async fn batching_can_be_turned_off() {
    let t = TestDb::new().await;
    let h = DbSystem::start(
        t.db.clone(),
        ActorConfig {
            batch_max: 1,
            ..ActorConfig::default()
        },
    );
    register_all(&h, 1..=20).await;
    let sent: Vec<_> = (1..=20).map(|u| h.send(append(u, "solo"))).collect();
    assert!(join_all(sent).await.iter().all(Result::is_ok));
    assert_eq!(batch_stats(&h, "messages").await, (0, 0, 0));
}

#[actix_rt::test]
async fn an_offered_load_far_past_the_bound_stays_within_it() {
    let t = TestDb::new().await;
    let bound = 256;
    let h = DbSystem::start(
        t.db.clone(),
        ActorConfig {
            max_pending: bound,
            ..ActorConfig::default()
        },
    );
    register_all(&h, 1..=100).await;
    // 20,000 requests offered at once: the bound admits what it can hold, refuses the
    // rest at once, and never holds more, batches included.
    let sent: Vec<_> = (0..20_000)
        .map(|i| h.send(append(1 + i % 100, format!("m{i}"))))
        .collect();
    let answers = join_all(sent).await;
    let admitted = answers.iter().filter(|a| a.is_ok()).count();
    let refused = answers
        .iter()
        .filter(|a| matches!(a, Err(Error::Overloaded { .. })))
        .count();
    assert_eq!(
        admitted + refused,
        20_000,
        "every request answered Ok or Overloaded"
    );
    assert_eq!(
        admitted, bound,
        "exactly the bound was admitted (all were sent before any finished)"
    );
    let stats = h.stats().await.unwrap();
    let m = stats.actors.iter().find(|a| a.actor == "messages").unwrap();
    assert!(m.peak_pending <= bound && m.gate.pending == 0, "{m:?}");
    assert!(m.largest_batch <= ActorConfig::default().batch_max);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&mut t.conn().await)
        .await
        .unwrap();
    assert_eq!(n as usize, admitted, "acknowledged = committed");
}

#[actix_rt::test]
async fn a_batched_history_read_stays_within_the_byte_bound_per_user() {
    let t = TestDb::with(|b| b.max_history_bytes(20_000)).await;
    let h = DbSystem::start(t.db.clone(), ActorConfig::default());
    let users: Vec<i64> = (1..=16).collect();
    register_all(&h, users.clone()).await;
    for round in 0..30 {
        let sent: Vec<_> = users
            .iter()
            .map(|&u| h.send(append(u, format!("{round:03}{}", "x".repeat(997)))))
            .collect();
        assert!(join_all(sent).await.iter().all(Result::is_ok));
    }
    // /limit 1000 for everyone, and a history read of all of them at once.
    let (batches_before, ..) = batch_stats(&h, "messages").await;
    let reads: Vec<_> = users
        .iter()
        .map(|&user_id| {
            h.send(GetHistory {
                user_id,
                chat_id: PRIVATE_CHAT,
                limit: None,
            })
        })
        .collect();
    let answers = join_all(reads).await;
    let (batches_after, ..) = batch_stats(&h, "messages").await;
    assert!(batches_after > batches_before, "the reads ran batched");
    for (u, answer) in users.iter().zip(answers) {
        let history = answer.unwrap();
        let bytes: usize = history.iter().map(|m| m.content.len()).sum();
        assert_eq!(history.len(), 20, "user {u}");
        assert!(bytes <= 20_000, "user {u}: {bytes} bytes");
        assert!(history[0].content.starts_with("029"), "user {u}: newest first");
    }
}

#[cfg(feature = "fault-injection")]
#[actix_rt::test]
async fn a_panic_inside_a_batch_fails_that_batch_only_and_writes_none_of_it() {
    let t = TestDb::new().await;
    let h = DbSystem::start(t.db.clone(), ActorConfig::default());
    let users: Vec<i64> = (1..=32).collect();
    register_all(&h, users.clone()).await;
    // The next batch that holds a turn of user 5 panics inside its runner. The fault does
    // not make user 5's requests run alone: it hits a real batch of several users.
    h.faults().panic_in_batch_once(5);
    let tasks: Vec<_> = users
        .iter()
        .map(|&u| {
            let h = h.clone();
            actix_rt::spawn(async move {
                let mut log = Vec::new();
                for i in 0..10 {
                    let text = format!("u{u}-t{i}");
                    let answer = h
                        .send(AppendTurn {
                            user_id: u,
                            chat_id: PRIVATE_CHAT,
                            user_text: text.clone(),
                            reply_text: format!("re {text}"),
                            key: None,
                        })
                        .await;
                    log.push((text, answer));
                }
                (u, log)
            })
        })
        .collect();
    let mut failed = Vec::new();
    let mut acked = 0;
    for task in tasks {
        let (u, log) = task.await.unwrap();
        let mut ok_texts = Vec::new();
        for (text, answer) in log {
            match answer {
                Ok(turn) => {
                    assert_eq!(turn.user.content, text);
                    ok_texts.push(text);
                }
                Err(Error::Internal(why)) => {
                    assert!(why.contains("batch") && why.contains("unknown"), "{why}");
                    failed.push((u, text));
                }
                Err(e) => panic!("user {u}: unexpected {e:?}"),
            }
        }
        acked += ok_texts.len();
        // Stored: exactly the acknowledged turns, in order, each whole.
        let rows = stored(&t, u).await;
        let expected: Vec<String> = ok_texts
            .iter()
            .flat_map(|text| [text.clone(), format!("re {text}")])
            .collect();
        assert_eq!(rows, expected, "user {u}");
    }
    let stats = h.stats().await.unwrap();
    let m = stats.actors.iter().find(|a| a.actor == "messages").unwrap();
    assert_eq!((m.panicked, m.restarts), (1, 1), "one panic, one restart: {m:?}");
    // Which requests failed: user 5's, and the others that shared its batch (one turn
    // each); every other turn of the load succeeded.
    assert!(failed.iter().any(|(u, _)| *u == 5), "{failed:?}");
    let mut failed_users: Vec<i64> = failed.iter().map(|(u, _)| *u).collect();
    failed_users.dedup();
    failed_users.sort();
    failed_users.dedup();
    assert_eq!(
        failed_users.len(),
        failed.len(),
        "one request per user in the batch: {failed:?}"
    );
    assert!(
        failed.len() > 1,
        "the panic hit a batch of several users: {failed:?}"
    );
    assert_eq!(acked + failed.len(), 320);
    eprintln!(
        "panic in a batch: {} of 320 turns failed (the batch's), {acked} acknowledged and stored whole",
        failed.len()
    );
}
