//! The actor layer: ordering per user, concurrency across users, slow users, overload,
//! shutdown under load, panics, PostgreSQL going away, tracing, stats.

use botdb::model::PRIVATE_CHAT;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use botdb::actors::{
    AppendMessage, AppendTurn, ClearHistory, CountMessages, DbHandle, DbSystem, EnsureUser, GetHistory,
    GetSettings, GetUser, RegisterUser, SetSystemPrompt, Shutdown, TouchUser, UpdateSettings, UpsertUser,
};
use botdb::model::Role;
use botdb::{ActorConfig, Error};
use futures::future::join_all;

use crate::helpers::{Capture, TestDb, eventually};

fn start(t: &TestDb) -> DbHandle {
    DbSystem::start(t.db.clone(), ActorConfig::default())
}

fn append(user_id: i64, content: String) -> AppendMessage {
    AppendMessage {
        user_id,
        chat_id: PRIVATE_CHAT,
        role: Role::User,
        content,
        key: None,
    }
}

async fn register(h: &DbHandle, user_id: i64) {
    h.send(RegisterUser {
        user_id,
        max_history_messages: Some(1000),
        system_prompt: None,
    })
    .await
    .unwrap();
}

/// Contents of the user's live history, oldest first, read straight from the table.
async fn stored(t: &TestDb, user_id: i64) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT content FROM messages WHERE user_id = $1 AND deleted_at IS NULL ORDER BY created_at, seq",
    )
    .bind(user_id)
    .fetch_all(&mut t.conn().await)
    .await
    .unwrap()
}

#[actix_rt::test]
async fn every_request_type_round_trips() {
    let t = TestDb::new().await;
    let h = start(&t);
    assert_eq!(h.send(GetUser { user_id: 1 }).await.unwrap(), None);
    let r = h.send(EnsureUser { user_id: 1 }).await.unwrap();
    assert!(r.created);
    assert_eq!(r.settings.max_history_messages, botdb::model::DEFAULT_MAX_HISTORY);
    assert!(!h.send(EnsureUser { user_id: 1 }).await.unwrap().created);
    h.send(UpsertUser { user_id: 1 }).await.unwrap();
    h.send(TouchUser { user_id: 1 }).await.unwrap();
    let turn = h
        .send(AppendTurn {
            user_id: 1,
            chat_id: PRIVATE_CHAT,
            user_text: "question".into(),
            reply_text: "answer".into(),
            key: None,
        })
        .await
        .unwrap();
    assert_eq!((turn.user.role, turn.reply.role), (Role::User, Role::Assistant));
    let s = h
        .send(UpdateSettings {
            user_id: 1,
            max_history_messages: Some(1),
            system_prompt: Some(Some("terse".into())),
            key: None,
        })
        .await
        .unwrap();
    assert_eq!(
        (s.max_history_messages, s.system_prompt.as_deref()),
        (1, Some("terse"))
    );
    // The default limit follows the setting: one message, the newest.
    let history = h
        .send(GetHistory {
            user_id: 1,
            chat_id: PRIVATE_CHAT,
            limit: None,
        })
        .await
        .unwrap();
    assert_eq!(
        history.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(),
        ["answer"]
    );
    assert_eq!(
        h.send(GetHistory {
            user_id: 1,
            chat_id: PRIVATE_CHAT,
            limit: Some(10)
        })
        .await
        .unwrap()
        .len(),
        2
    );
    let s = h
        .send(SetSystemPrompt {
            user_id: 1,
            prompt: None,
            key: None,
        })
        .await
        .unwrap();
    assert_eq!(s.system_prompt, None);
    assert_eq!(
        h.send(GetSettings { user_id: 1 })
            .await
            .unwrap()
            .unwrap()
            .max_history_messages,
        1
    );
    assert_eq!(
        h.send(ClearHistory {
            user_id: 1,
            chat_id: PRIVATE_CHAT,
            key: None,
        })
        .await
        .unwrap(),
        2
    );
    let counts = h.send(CountMessages { user_id: 1 }).await.unwrap();
    assert_eq!((counts.live, counts.deleted), (0, 2));
    assert!(matches!(
        h.send(append(2, "who?".into())).await,
        Err(Error::NotFound { entity: "user", .. })
    ));
    assert!(matches!(
        h.send(append(1, "a\0b".into())).await,
        Err(Error::InvalidInput { .. })
    ));
    assert!(matches!(
        h.send(UpdateSettings {
            user_id: 1,
            max_history_messages: Some(0),
            ..Default::default()
        })
        .await,
        Err(Error::InvalidInput { .. })
    ));
    // A bad turn writes neither message.
    let bad = AppendTurn {
        user_id: 1,
        chat_id: PRIVATE_CHAT,
        user_text: "fine".into(),
        reply_text: String::new(),
        key: None,
    };
    assert!(matches!(h.send(bad).await, Err(Error::InvalidInput { .. })));
    assert_eq!(h.send(CountMessages { user_id: 1 }).await.unwrap().live, 0);
}

#[actix_rt::test]
async fn a_thousand_appends_for_one_user_are_stored_in_send_order() {
    let t = TestDb::new().await;
    let h = DbSystem::start(
        t.db.clone(),
        ActorConfig {
            max_pending_per_user: 1000,
            ..ActorConfig::default()
        },
    );
    register(&h, 7).await;
    // Sent one after the other without awaiting each; awaited together.
    let pending: Vec<_> = (0..1000).map(|i| h.send(append(7, format!("m{i:04}")))).collect();
    let acked = join_all(pending).await;
    assert!(acked.iter().all(Result::is_ok));
    let expected: Vec<String> = (0..1000).map(|i| format!("m{i:04}")).collect();
    assert_eq!(stored(&t, 7).await, expected);
    let history = h
        .send(GetHistory {
            user_id: 7,
            chat_id: PRIVATE_CHAT,
            limit: Some(1000),
        })
        .await
        .unwrap();
    let newest_first: Vec<String> = history.into_iter().map(|m| m.content).collect();
    assert_eq!(newest_first, expected.into_iter().rev().collect::<Vec<_>>());
}

#[actix_rt::test]
async fn many_users_keep_their_own_order_and_run_concurrently() {
    let t = TestDb::new().await;
    let h = start(&t);
    let users: Vec<i64> = (1..=64).collect();
    join_all(users.iter().map(|&u| register(&h, u))).await;
    let mut pending = Vec::new();
    for i in 0..50 {
        for &u in &users {
            pending.push(h.send(append(u, format!("u{u}-{i:02}"))));
        }
    }
    assert!(join_all(pending).await.iter().all(Result::is_ok));
    for &u in &users {
        let expected: Vec<String> = (0..50).map(|i| format!("u{u}-{i:02}")).collect();
        assert_eq!(stored(&t, u).await, expected, "user {u}");
    }
    let stats = h.stats().await.unwrap();
    let messages = stats.actors.iter().find(|a| a.actor == "messages").unwrap();
    assert!(messages.peak_users_in_flight > 1, "{messages:?}");
    assert_eq!(messages.completed, 64 * 50);
    assert_eq!(
        (messages.in_flight, messages.queued, messages.active_users),
        (0, 0, 0),
        "idle users hold nothing"
    );
}

#[cfg(feature = "fault-injection")]
#[actix_rt::test]
async fn a_user_sleeping_in_the_database_does_not_delay_another() {
    let t = TestDb::new().await;
    let h = start(&t);
    register(&h, 1).await;
    register(&h, 2).await;
    h.faults().sleep_in_database(1, 3.0);
    let slow = actix_rt::spawn(h.send(append(1, "slow".into())));
    h.send(append(2, "fast".into())).await.expect("user 2 answered");
    assert!(
        !slow.is_finished(),
        "user 2 was answered only after user 1's sleep"
    );
    slow.await.unwrap().unwrap();
}

#[actix_rt::test]
async fn past_the_bound_requests_are_overloaded_at_once_and_one_user_cannot_take_the_bound() {
    let t = TestDb::new().await;
    let (bound, share) = (64, 8);
    let h = DbSystem::start(
        t.db.clone(),
        ActorConfig {
            max_pending: bound,
            max_pending_per_user: share,
            ..Default::default()
        },
    );
    for u in 1..=80 {
        register(&h, u).await;
    }
    // Everything below is sent before any of it can run (`send` admits at once), so
    // what is admitted is exactly determined. User 1 floods: 2,000 requests.
    let flood: Vec<_> = (0..2000)
        .map(|i| h.send(append(1, format!("flood{i}"))))
        .collect();
    // 39 other users, one request each: the flood must not have taken their places.
    let others: Vec<_> = (2..=40).map(|u| h.send(append(u, format!("hello{u}")))).collect();
    // 40 more users, past the global bound: 8 + 39 + 17 = 64 admitted, 23 refused.
    let late: Vec<_> = (41..=80).map(|u| h.send(append(u, format!("late{u}")))).collect();
    let (flood, others, late) = (
        join_all(flood).await,
        join_all(others).await,
        join_all(late).await,
    );

    let flood_ok = flood.iter().filter(|a| a.is_ok()).count();
    assert_eq!(flood_ok, share, "the flooding user got exactly their share");
    for answer in flood.iter().filter(|a| a.is_err()) {
        assert!(
            matches!(
                answer,
                Err(Error::Overloaded {
                    limit: 8,
                    user_id: Some(1),
                    ..
                })
            ),
            "{answer:?}"
        );
    }
    for (u, answer) in (2..=40).zip(&others) {
        assert!(
            answer.is_ok(),
            "user {u} was refused because of user 1's flood: {answer:?}"
        );
    }
    let late_ok = late.iter().filter(|a| a.is_ok()).count();
    assert_eq!(late_ok, bound - share - 39, "the global bound still holds");
    for answer in late.iter().filter(|a| a.is_err()) {
        assert!(
            matches!(
                answer,
                Err(Error::Overloaded {
                    limit: 64,
                    user_id: None,
                    ..
                })
            ),
            "{answer:?}"
        );
    }
    // Acknowledged = committed, user by user; memory stayed within the bound.
    assert_eq!(
        stored(&t, 1).await,
        (0..share).map(|i| format!("flood{i}")).collect::<Vec<_>>()
    );
    for u in 2..=40 {
        assert_eq!(stored(&t, u).await, [format!("hello{u}")], "user {u}");
    }
    for (u, answer) in (41..=80).zip(&late) {
        let expected: Vec<String> = answer.iter().map(|_| format!("late{u}")).collect();
        assert_eq!(stored(&t, u).await, expected, "user {u}");
    }
    let stats = h.stats().await.unwrap();
    let m = stats.actors.iter().find(|a| a.actor == "messages").unwrap();
    assert!(m.peak_pending <= bound, "{m:?}");
    assert_eq!(
        (
            m.gate.accepted,
            m.gate.rejected_user_overloaded,
            m.gate.rejected_overloaded
        ),
        (64, 1992, 23)
    );
    // The bound frees up as requests finish.
    h.send(append(1, "later".into())).await.unwrap();
}

#[actix_rt::test]
async fn shutdown_under_load_drains_every_accepted_request_then_closes_the_pool() {
    let t = TestDb::new().await;
    let h = start(&t);
    let users: Vec<i64> = (1..=64).collect();
    join_all(users.iter().map(|&u| register(&h, u))).await;
    let acked_total = Arc::new(AtomicU64::new(0));
    let enough = Arc::new(tokio::sync::Notify::new());
    let senders: Vec<_> = users
        .iter()
        .map(|&u| {
            let (h, acked_total, enough) = (h.clone(), acked_total.clone(), enough.clone());
            actix_rt::spawn(async move {
                let mut acked = Vec::new();
                let mut shutting_down = 0u64;
                for i in 0.. {
                    // Keep several requests of this user in the pipe at once.
                    let batch: Vec<_> = (0..4)
                        .map(|k| (i * 4 + k, h.send(append(u, format!("u{u}-{:05}", i * 4 + k)))))
                        .collect();
                    let mut stop = false;
                    for (n, answer) in batch {
                        match answer.await {
                            Ok(_) => {
                                acked.push(format!("u{u}-{n:05}"));
                                if acked_total.fetch_add(1, Ordering::SeqCst) + 1 == 2000 {
                                    enough.notify_one();
                                }
                            }
                            Err(Error::ShuttingDown) => {
                                shutting_down += 1;
                                stop = true;
                            }
                            Err(e) => panic!("user {u}: unexpected {e:?}"),
                        }
                    }
                    if stop {
                        break;
                    }
                }
                (u, acked, shutting_down)
            })
        })
        .collect();
    enough.notified().await;
    let report = h.system().send(Shutdown).await.unwrap();
    let results = tokio::time::timeout(Duration::from_secs(60), join_all(senders))
        .await
        .expect("no caller waits forever");

    assert!(report.drained && report.pool_closed, "{report}");
    assert!(t.db.is_closed());
    assert_eq!(report.unfinished, 0);
    // Nothing accepted was cut by the closing pool: all accepted requests succeeded.
    assert_eq!(report.failed, 0, "{report}");
    assert_eq!(
        report.accepted,
        report.completed + report.failed + report.unfinished
    );
    let mut acked_by_user = HashMap::new();
    let mut refused = 0;
    for r in results {
        let (u, acked, shutting_down) = r.unwrap();
        refused += shutting_down;
        acked_by_user.insert(u, acked);
    }
    let registrations = 64;
    let acked: u64 = acked_by_user.values().map(|v| v.len() as u64).sum();
    assert_eq!(report.completed, acked + registrations, "{report}");
    assert_eq!(report.rejected_shutting_down, refused);
    let stats = h.stats().await.unwrap();
    let m = stats.actors.iter().find(|a| a.actor == "messages").unwrap();
    assert!(
        m.batches > 0 && m.largest_batch > 1,
        "batches were in flight under the load: {m:?}"
    );
    // After the drain: refused at once.
    assert!(matches!(
        h.send(append(1, "late".into())).await,
        Err(Error::ShuttingDown)
    ));
    assert_eq!(
        h.shutdown().await.accepted,
        report.accepted,
        "a second Shutdown returns the same report"
    );
    // Every acknowledged message is in the database, in order, and nothing else is.
    for (u, acked) in acked_by_user {
        assert_eq!(stored(&t, u).await, acked, "user {u}");
    }
}

#[cfg(feature = "fault-injection")]
#[actix_rt::test]
async fn a_panicking_handler_is_restarted_and_only_its_request_fails() {
    let t = TestDb::new().await;
    let h = start(&t);
    for u in 1..=5 {
        register(&h, u).await;
    }
    h.faults().panic_in_handler_once(3);
    h.faults().panic_in_run_once(4);
    let mut sent = Vec::new();
    for i in 0..5 {
        for u in 1..=5 {
            sent.push((u, i, h.send(append(u, format!("u{u}-{i}")))));
        }
    }
    let mut acked: HashMap<i64, Vec<String>> = HashMap::new();
    for (u, i, answer) in sent {
        match answer.await {
            Ok(_) => acked.entry(u).or_default().push(format!("u{u}-{i}")),
            Err(Error::Internal(msg)) => {
                assert!(
                    (u == 3 || u == 4) && i == 0,
                    "only the first request of users 3 and 4 fails: {msg}"
                );
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    for u in 1..=5 {
        let expected: Vec<String> = (0..5)
            .filter(|&i| !((u == 3 || u == 4) && i == 0))
            .map(|i| format!("u{u}-{i}"))
            .collect();
        assert_eq!(acked[&u], expected, "user {u}");
        assert_eq!(stored(&t, u).await, expected, "user {u}: acknowledged = stored");
    }
    let stats = h.stats().await.unwrap();
    let m = stats.actors.iter().find(|a| a.actor == "messages").unwrap();
    assert_eq!((m.restarts, m.panicked, m.failed), (2, 2, 2), "{m:?}");
    // The restarted actor serves everyone, users 3 and 4 included.
    h.send(append(3, "after".into())).await.unwrap();
    h.send(append(4, "after".into())).await.unwrap();
}

#[actix_rt::test]
async fn messages_are_traced_in_spans_without_content_or_password() {
    let t = TestDb::new().await;
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_env_filter("trace")
            .with_writer(capture.clone())
            .with_ansi(false)
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
            .finish(),
    );
    let h = start(&t);
    register(&h, 5).await;
    h.send(append(5, "TOP-SECRET-CONTENT".into())).await.unwrap();
    h.send(append(99, "NEVER-LOGGED".into())).await.unwrap_err();
    h.shutdown().await;
    let logs = capture.text();
    assert!(logs.contains("botdb.request"), "{logs}");
    assert!(
        logs.contains("actor=\"messages\"") && logs.contains("request=\"AppendMessage\""),
        "{logs}"
    );
    assert!(
        logs.contains("user_id=5") && logs.contains("outcome=\"ok\"") && logs.contains("outcome=\"error\"")
    );
    assert!(!logs.contains("TOP-SECRET-CONTENT") && !logs.contains("NEVER-LOGGED"));
    let password = crate::helpers::server_password();
    assert!(password.is_empty() || !logs.contains(&password));
}

#[actix_rt::test]
async fn postgres_going_away_gives_typed_errors_in_time_and_work_resumes_when_it_is_back() {
    use botdb::embedded::{EmbeddedPostgres, StopMode};
    let pg = Arc::new(
        tokio::task::spawn_blocking(EmbeddedPostgres::start)
            .await
            .unwrap()
            .unwrap(),
    );
    let config = botdb::Config::builder()
        .pool_size(2)
        .max_overflow(6)
        .pool_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let config = pg.config_from(&config, "postgres");
    let db = botdb::Database::connect(&config).await.unwrap();
    db.migrate().await.unwrap();
    let h = DbSystem::start(db.clone(), ActorConfig::default());
    for u in 1..=8 {
        register(&h, u).await;
    }
    let mut acked: Vec<(i64, String)> = Vec::new();
    for i in 0..20 {
        for u in 1..=8 {
            h.send(append(u, format!("before-{i}"))).await.unwrap();
            acked.push((u, format!("before-{i}")));
        }
    }
    let stopper = pg.clone();
    tokio::task::spawn_blocking(move || stopper.stop(StopMode::Immediate))
        .await
        .unwrap()
        .unwrap();

    // Down: every request is answered within the pool timeout (plus slack for the
    // server's refusal to arrive), with Unavailable, or OutcomeUnknown when it went out
    // on a connection held from before the crash (the client cannot tell whether the
    // server got it).
    for u in 1..=8 {
        let answer = tokio::time::timeout(Duration::from_secs(20), h.send(append(u, "while-down".into())))
            .await
            .expect("answered, not hung");
        assert!(
            matches!(
                answer,
                Err(Error::Unavailable { .. } | Error::OutcomeUnknown { .. })
            ),
            "{answer:?}"
        );
    }
    assert!(h.stats().await.is_ok(), "actors alive");

    let starter = pg.clone();
    tokio::task::spawn_blocking(move || starter.restart())
        .await
        .unwrap()
        .unwrap();
    let h2 = h.clone();
    let back = eventually(Duration::from_secs(60), async || {
        h2.send(append(1, "probe".into())).await.is_ok()
    })
    .await;
    assert!(back, "work did not resume after PostgreSQL came back");
    acked.push((1, "probe".into()));
    for u in 1..=8 {
        h.send(append(u, "after".into())).await.unwrap();
        acked.push((u, "after".into()));
    }
    // No acknowledged write lost across the crash.
    let mut conn = {
        use sqlx::ConnectOptions;
        config.connect_options().unwrap().connect().await.unwrap()
    };
    for u in 1..=8 {
        let stored: Vec<String> =
            sqlx::query_scalar("SELECT content FROM messages WHERE user_id = $1 ORDER BY created_at, seq")
                .bind(u)
                .fetch_all(&mut conn)
                .await
                .unwrap();
        let expected: Vec<String> = acked
            .iter()
            .filter(|(user, _)| *user == u)
            .map(|(_, c)| c.clone())
            .collect();
        let stored_acked: Vec<String> = stored.into_iter().filter(|c| c != "while-down").collect();
        assert_eq!(stored_acked, expected, "user {u}");
    }
    h.shutdown().await;
}
