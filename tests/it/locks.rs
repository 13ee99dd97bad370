//! One user's trouble stays that user's: rows locked by another transaction (an
//! operator's session, a data fix, another instance) delay only the requests that
//! need them, within bounded waits, and never the batch they were in, nor the pool.

use std::time::Duration;

use botdb::actors::{AppendMessage, AppendTurn, DbHandle, DbSystem, EnsureUser, RegisterUser, UpsertUser};
use botdb::model::{PRIVATE_CHAT, Role};
use botdb::{Error, TimeoutKind};
use futures::future::join_all;
use sqlx::{Connection, PgConnection};

use crate::helpers::TestDb;

fn append(user_id: i64, content: String) -> AppendMessage {
    AppendMessage {
        user_id,
        chat_id: PRIVATE_CHAT,
        role: Role::User,
        content,
        key: None,
    }
}

async fn register_all(h: &DbHandle, users: impl IntoIterator<Item = i64>) {
    let sent: Vec<_> = users
        .into_iter()
        .map(|user_id| {
            h.send(RegisterUser {
                user_id,
                max_history_messages: None,
                system_prompt: None,
            })
        })
        .collect();
    for r in join_all(sent).await {
        r.unwrap();
    }
}

/// Another session that takes `users`' rows `FOR UPDATE` and keeps its transaction
/// open until [`Blocker::release`].
struct Blocker {
    conn: PgConnection,
}

impl Blocker {
    async fn hold(t: &TestDb, users: &[i64]) -> Blocker {
        let mut conn = t.conn().await;
        sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
        let locked: Vec<i64> = sqlx::query_scalar("SELECT id FROM users WHERE id = ANY($1) FOR UPDATE")
            .bind(users)
            .fetch_all(&mut conn)
            .await
            .unwrap();
        assert_eq!(locked.len(), users.len());
        Blocker { conn }
    }

    /// `true` while the transaction is still open (the rows still locked).
    async fn holding(&mut self) -> bool {
        let state: String = sqlx::query_scalar(
            "SELECT CASE WHEN txid_current_if_assigned() IS NULL THEN 'none' ELSE 'open' END",
        )
        .fetch_one(&mut self.conn)
        .await
        .unwrap();
        state == "open"
    }

    async fn release(mut self) {
        sqlx::query("COMMIT").execute(&mut self.conn).await.unwrap();
        let _ = self.conn.close().await;
    }
}

async fn stored(t: &TestDb, user_id: i64) -> Vec<String> {
    sqlx::query_scalar("SELECT content FROM messages WHERE user_id = $1 ORDER BY created_at, seq")
        .bind(user_id)
        .fetch_all(&mut t.conn().await)
        .await
        .unwrap()
}

async fn actor_stat(h: &DbHandle, actor: &str, f: fn(&botdb::actors::ActorStats) -> u64) -> u64 {
    let stats = h.stats().await.unwrap();
    f(stats.actors.iter().find(|a| a.actor == actor).unwrap())
}

#[actix_rt::test]
async fn a_locked_user_never_holds_up_the_batch_of_others() {
    // The scenario, with the defaults (group commit on), and a lock wait long
    // enough that user 1 is still retrying when the lock goes.
    let t = TestDb::with(|b| b.lock_wait(Duration::from_secs(60))).await;
    let h = DbSystem::start(t.db.clone(), t.config.actors);
    register_all(&h, 1..=65).await;
    let mut blocker = Blocker::hold(&t, &[1]).await;
    // A first wave, all sent before any of it runs, so that it goes in batches: a turn,
    // an upsert and an ensure of every user, user 1's (all needing the locked row)
    // first, in the same batches as everyone else's.
    let turn = |u: i64| AppendTurn {
        user_id: u,
        chat_id: PRIVATE_CHAT,
        user_text: format!("u{u}-first"),
        reply_text: format!("u{u}-first-reply"),
        key: None,
    };
    let locked_turn = h.send(turn(1));
    let locked_upsert = h.send(UpsertUser { user_id: 1 });
    let locked_ensure = h.send(EnsureUser { user_id: 1 });
    let first_wave: Vec<_> = (2..=65)
        .map(|u| {
            let (t, up, en) = (
                h.send(turn(u)),
                h.send(UpsertUser { user_id: u }),
                h.send(EnsureUser { user_id: u }),
            );
            async move { (t.await, up.await, en.await) }
        })
        .collect();
    for (u, (t, up, en)) in (2..=65).zip(join_all(first_wave).await) {
        assert!(
            t.is_ok() && up.is_ok() && en.is_ok(),
            "user {u}: {t:?} {up:?} {en:?}"
        );
    }
    // Then users 2..65 go on, 20 requests each, one after the other, every kind that is
    // batched.
    let others: Vec<_> = (2..=65)
        .map(|u| {
            let h = h.clone();
            actix_rt::spawn(async move {
                let mut acked = vec![format!("u{u}-first"), format!("u{u}-first-reply")];
                for i in 0..5 {
                    h.send(UpsertUser { user_id: u }).await?;
                    h.send(EnsureUser { user_id: u }).await?;
                    let text = format!("u{u}-m{i}");
                    h.send(append(u, text.clone())).await?;
                    acked.push(text.clone());
                    let turn = h
                        .send(AppendTurn {
                            user_id: u,
                            chat_id: PRIVATE_CHAT,
                            user_text: format!("{text}-turn"),
                            reply_text: format!("{text}-reply"),
                            key: None,
                        })
                        .await?;
                    acked.push(turn.user.content);
                    acked.push(turn.reply.content);
                }
                Ok::<_, Error>((u, acked))
            })
        })
        .collect();
    // They all finish while user 1's row is still locked.
    let done = tokio::time::timeout(Duration::from_secs(60), join_all(others))
        .await
        .expect("users 2..65 were held up by user 1's lock");
    assert!(
        blocker.holding().await,
        "the lock was still held while they finished"
    );
    for r in done {
        let (u, acked) = r
            .unwrap()
            .unwrap_or_else(|e| panic!("a free user's request failed: {e:?}"));
        assert_eq!(
            stored(&t, u).await,
            acked,
            "user {u}: acknowledged = committed, in order"
        );
    }
    assert!(stored(&t, 1).await.is_empty(), "user 1 waits for its lock");
    // User 1's turn and upsert were split out of their batches (the ensure waited
    // behind the upsert, in user 1's lane).
    let splits = actor_stat(&h, "messages", |a| a.batch_splits).await
        + actor_stat(&h, "users", |a| a.batch_splits).await;
    assert_eq!(
        splits, 2,
        "user 1's turn and upsert were split out of their batches"
    );
    // The lock goes: user 1's requests go through, in order, stored once.
    blocker.release().await;
    let turn = locked_turn.await.unwrap();
    assert_eq!(
        (turn.user.content.as_str(), turn.reply.content.as_str()),
        ("u1-first", "u1-first-reply")
    );
    locked_upsert.await.unwrap();
    assert!(!locked_ensure.await.unwrap().created, "user 1 existed");
    assert_eq!(stored(&t, 1).await, ["u1-first", "u1-first-reply"]);
    let retries = actor_stat(&h, "messages", |a| a.lock_retries).await;
    assert!(
        retries >= 1,
        "user 1 waited for the lock without its connection, retrying"
    );
    eprintln!("locked user: {splits} requests split out of batches, {retries} lock retries of the turn");
}

#[actix_rt::test]
async fn a_lock_held_past_the_lock_wait_fails_typed_and_stores_nothing() {
    let t = TestDb::with(|b| b.lock_wait(Duration::from_secs(1))).await;
    let h = DbSystem::start(t.db.clone(), t.config.actors);
    register_all(&h, [1, 2]).await;
    let blocker = Blocker::hold(&t, &[1]).await;
    let (blocked, free) = futures::join!(
        h.send(append(1, "never".into())),
        h.send(append(2, "free".into()))
    );
    assert!(free.is_ok());
    let err = blocked.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                kind: TimeoutKind::Lock,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_transient(), "a lock timeout is worth retrying later");
    assert!(stored(&t, 1).await.is_empty(), "nothing of it committed");
    assert_eq!(actor_stat(&h, "messages", |a| a.lock_timeouts).await, 1);
    blocker.release().await;
    // The same request later succeeds.
    h.send(append(1, "later".into())).await.unwrap();
    assert_eq!(stored(&t, 1).await, ["later"]);
}

#[actix_rt::test]
async fn twenty_locked_users_never_take_the_pool_from_everyone_else() {
    // Pool 5 + 10 and a pool timeout of 3 s: if the locked users held connections, the
    // others would time out waiting for one (Unavailable).
    let t = TestDb::with(|b| {
        b.pool_size(5)
            .max_overflow(10)
            .pool_timeout(Duration::from_secs(3))
            .lock_wait(Duration::from_secs(5))
    })
    .await;
    let h = DbSystem::start(t.db.clone(), t.config.actors);
    register_all(&h, 1..=64).await;
    let locked: Vec<i64> = (1..=20).collect();
    let blocker = Blocker::hold(&t, &locked).await;
    let waiting: Vec<_> = locked
        .iter()
        .map(|&u| h.send(append(u, format!("locked{u}"))))
        .collect();
    let others: Vec<_> = (21..=64)
        .map(|u| {
            let h = h.clone();
            actix_rt::spawn(async move {
                let mut answers = Vec::new();
                for i in 0..20 {
                    answers.push(h.send(append(u, format!("u{u}-{i}"))).await);
                }
                (u, answers)
            })
        })
        .collect();
    for r in join_all(others).await {
        let (u, answers) = r.unwrap();
        for a in &answers {
            assert!(
                a.is_ok(),
                "user {u}: {a:?} (the pool was taken by the locked users?)"
            );
        }
        assert_eq!(stored(&t, u).await.len(), 20);
    }
    // The locked users, still locked past their lock wait: a typed timeout each.
    for (u, answer) in locked.iter().zip(join_all(waiting).await) {
        assert!(
            matches!(
                answer,
                Err(Error::Timeout {
                    kind: TimeoutKind::Lock,
                    ..
                })
            ),
            "user {u}: {answer:?}"
        );
        assert!(stored(&t, *u).await.is_empty());
    }
    let stats = h.stats().await.unwrap();
    let m = stats.actors.iter().find(|a| a.actor == "messages").unwrap();
    assert_eq!(m.lock_timeouts, 20, "{m:?}");
    eprintln!(
        "20 users locked for longer than their lock wait: 880 appends of 44 other users all served; \
         {} lock retries, {} batch splits, {} lock timeouts",
        m.lock_retries, m.batch_splits, m.lock_timeouts
    );
    blocker.release().await;
}

#[actix_rt::test]
async fn a_statement_past_its_timeout_gives_a_typed_error_and_rolls_back() {
    let t = TestDb::with(|b| b.statement_timeout(Some(Duration::from_millis(300)))).await;
    botdb::repo::users::create(t.db.pool(), 1).await.unwrap();
    let msg = t.db.limits().message(1, Role::User, "inside").unwrap();
    let err =
        t.db.session(async |tx| {
            botdb::repo::messages::append(&mut *tx, &msg).await?;
            sqlx::query("SELECT pg_sleep(5)").execute(&mut *tx).await?;
            Ok(())
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                kind: TimeoutKind::Statement,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert!(stored(&t, 1).await.is_empty(), "the transaction was rolled back");
    // Through the actors (a test-only request that sleeps in the database first).
    let h = DbSystem::start(t.db.clone(), t.config.actors);
    h.faults().sleep_in_database(1, 5.0);
    let err = h
        .send(append(1, "after a slow statement".into()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                kind: TimeoutKind::Statement,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(stored(&t, 1).await.is_empty());
    assert_eq!(actor_stat(&h, "messages", |a| a.statement_timeouts).await, 1);
}

#[actix_rt::test]
async fn an_idle_transaction_is_ended_by_the_server_and_nothing_is_committed() {
    let t = TestDb::with(|b| b.idle_in_transaction_timeout(Some(Duration::from_millis(300)))).await;
    botdb::repo::users::create(t.db.pool(), 1).await.unwrap();
    let msg = t.db.limits().message(1, Role::User, "left idle").unwrap();
    let err =
        t.db.session(async |tx| {
            botdb::repo::messages::append(&mut *tx, &msg).await?;
            // Something slow that is not the database, inside the transaction (the
            // scenario under test, not a synchronisation).
            tokio::time::sleep(Duration::from_secs(2)).await;
            sqlx::query("SELECT 1").execute(&mut *tx).await?;
            Ok(())
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                kind: TimeoutKind::IdleInTransaction,
                ..
            } | Error::Unavailable { .. }
        ),
        "the server ended the session: {err:?}"
    );
    assert!(stored(&t, 1).await.is_empty(), "nothing of it committed");
    // Every connection botdb opens carries the three limits.
    let (statement, lock, idle): (String, String, String) = sqlx::query_as(
        "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'), \
                current_setting('idle_in_transaction_session_timeout')",
    )
    .fetch_one(t.db.pool())
    .await
    .unwrap();
    assert_eq!(
        (statement.as_str(), lock.as_str(), idle.as_str()),
        ("10s", "500ms", "300ms")
    );
}
