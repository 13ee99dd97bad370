//! The actor layer: ordering per user, concurrency across users, slow users, overload,
//! shutdown under load, panics, PostgreSQL going away, tracing, stats.

use botdb::model::PRIVATE_CHAT;
use std::sync::Arc;
use std::time::Duration;

use botdb::actors::{
    AppendMessage, AppendTurn, ClearHistory, CountMessages, DbHandle, DbSystem, EnsureUser, GetHistory,
    GetSettings, GetUser, SetSystemPrompt, TouchUser, UpdateSettings, UpsertUser,
};
use botdb::model::Role;
use botdb::{ActorConfig, Error};

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

use crate::scenarios::{self, Subject, register};

/// botdb's `messages` table, for the shared scenarios.
struct BotdbMessages;

impl Subject for BotdbMessages {
    type Append = AppendMessage;
    const BATCHED: bool = true;

    async fn database() -> TestDb {
        TestDb::new().await
    }

    fn start(t: &TestDb, config: ActorConfig) -> DbHandle {
        DbSystem::start(t.db.clone(), config)
    }

    fn append(user: i64, content: String) -> AppendMessage {
        append(user, content)
    }

    async fn stored(t: &TestDb, user: i64) -> Vec<String> {
        stored(t, user).await
    }
}

#[actix_rt::test]
async fn a_thousand_appends_for_one_user_are_stored_in_send_order() {
    let (_t, h) = scenarios::a_thousand_requests_of_one_user_run_in_send_order::<BotdbMessages>().await;
    // And history returns them in the exact reverse order.
    let history = h
        .send(GetHistory {
            user_id: 7,
            chat_id: PRIVATE_CHAT,
            limit: Some(1000),
        })
        .await
        .unwrap();
    let newest_first: Vec<String> = history.into_iter().map(|m| m.content).collect();
    let expected: Vec<String> = (0..1000).rev().map(|i| format!("m{i:04}")).collect();
    assert_eq!(newest_first, expected);
}

#[actix_rt::test]
async fn many_users_keep_their_own_order_and_run_concurrently() {
    scenarios::many_users_keep_their_own_order_and_run_concurrently::<BotdbMessages>().await;
}

#[actix_rt::test]
async fn past_the_bound_requests_are_overloaded_at_once_and_one_user_cannot_take_the_bound() {
    scenarios::past_the_bound_requests_are_overloaded_and_one_user_cannot_take_the_bound::<BotdbMessages>()
        .await;
}

#[actix_rt::test]
async fn shutdown_under_load_drains_every_accepted_request_then_closes_the_pool() {
    scenarios::shutdown_under_load_drains_every_accepted_request_then_closes_the_pool::<BotdbMessages>()
        .await;
}

#[cfg(feature = "fault-injection")]
#[actix_rt::test]
async fn a_panicking_handler_is_restarted_and_only_its_request_fails() {
    scenarios::a_panic_costs_its_request_and_the_actor_is_restarted::<BotdbMessages>().await;
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

#[cfg(feature = "embedded")]
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
