//! Retention (issue 15): soft-deleted messages removed for good after a period, in small
//! batches that never make a turn wait and never touch a live message.

use std::time::Duration;

use botdb::actors::{AppendTurn, ClearHistory, DbSystem, EnsureUser};
use botdb::config::ActorConfig;
use botdb::retention::{self, PurgeOptions};
use botdb::{Database, Error, repo};

use crate::helpers::TestDb;

/// `users` users, each with `old_deleted` messages soft-deleted 40 days ago (written 60
/// days ago), 5 live messages written 60 days ago, and 3 soft-deleted yesterday.
async fn aged(t: &TestDb, users: i64, old_deleted: i64) {
    sqlx::query(
        "INSERT INTO users (id) SELECT generate_series(1, $1::int8);
         ",
    )
    .bind(users)
    .execute(t.db.pool())
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO messages (id, user_id, role, content, content_length, created_at, deleted_at) \
         SELECT gen_random_uuid(), u, 'user', kind || ' ' || i, length(kind || ' ' || i), \
                now() - interval '60 days', \
                CASE kind WHEN 'old' THEN now() - interval '40 days' \
                          WHEN 'recent' THEN now() - interval '1 day' END \
           FROM generate_series(1, $1::int8) u, \
                LATERAL (SELECT 'old' AS kind, generate_series(1, $2::int8) AS i \
                         UNION ALL SELECT 'live', generate_series(1, 5) \
                         UNION ALL SELECT 'recent', generate_series(1, 3)) k",
    )
    .bind(users)
    .bind(old_deleted)
    .execute(t.db.pool())
    .await
    .unwrap();
}

async fn count(t: &TestDb, kind: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM messages WHERE content LIKE $1 || ' %'")
        .bind(kind)
        .fetch_one(&mut t.conn().await)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_purge_removes_only_messages_soft_deleted_before_the_period() {
    let t = TestDb::new().await;
    aged(&t, 4, 25).await;
    let mut seen = Vec::new();
    let options = PurgeOptions {
        batch: 7,
        ..PurgeOptions::new(Duration::from_secs(30 * 86_400))
    };
    let report = retention::purge(&t.db, options, |r| seen.push(r.purged), std::future::pending())
        .await
        .unwrap();
    assert_eq!((report.due, report.purged), (100, 100));
    assert!(report.finished);
    assert_eq!(
        report.batches, 16,
        "100 rows, 7 per transaction: 14 full batches, one short, one that found none"
    );
    assert_eq!(seen.last(), Some(&100));
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "progress only grows: {seen:?}"
    );
    assert_eq!(count(&t, "old").await, 0);
    assert_eq!(count(&t, "live").await, 20, "live messages, however old, stay");
    assert_eq!(count(&t, "recent").await, 12, "deleted within the period stay");
    assert_eq!(t.db.counters().snapshot().purged_messages, 100);

    // Nothing left: a second run has nothing to do.
    let again = retention::purge(
        &t.db,
        PurgeOptions::new(Duration::from_secs(30 * 86_400)),
        |_| {},
        std::future::pending(),
    )
    .await
    .unwrap();
    assert_eq!((again.due, again.purged, again.finished), (0, 0, true));
    // A shorter period (with keys kept no longer) reaches the recent ones too, never the
    // live ones.
    let hour = Duration::from_secs(3600);
    retention::purge(
        &t.db,
        PurgeOptions {
            key_retention: hour,
            ..PurgeOptions::new(hour)
        },
        |_| {},
        std::future::pending(),
    )
    .await
    .unwrap();
    assert_eq!((count(&t, "recent").await, count(&t, "live").await), (0, 20));
}

#[tokio::test]
async fn bad_purge_settings_are_typed_errors() {
    let t = TestDb::new().await;
    for batch in [0, 100_001] {
        let options = PurgeOptions {
            batch,
            ..PurgeOptions::new(Duration::from_secs(86_400))
        };
        let err = retention::purge(&t.db, options, |_| {}, std::future::pending())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidInput { field: "batch", .. }), "{err}");
    }
    let err = retention::purge(
        &t.db,
        PurgeOptions::new(Duration::from_secs(200 * 365 * 86_400)),
        |_| {},
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
    let err = botdb::model::parse_duration("deleted-before", "30 dayz").unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidInput {
                field: "deleted-before",
                ..
            }
        ),
        "{err}"
    );
}

#[actix_rt::test]
async fn a_purge_under_a_turn_load_never_makes_a_turn_wait_and_keeps_every_acknowledged_message() {
    let t = TestDb::new().await;
    aged(&t, 64, 400).await; // 25,600 rows to purge
    // The purge has its own pool, named, so that a turn blocked by it would show.
    let mut purge_config = t.config.clone();
    purge_config.application_name = "botdb-purge-test".into();
    let purge_db = Database::connect(&purge_config).await.unwrap();

    let h = DbSystem::start(t.db.clone(), ActorConfig::default());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // 64 users keep talking (and now and then clearing their history) during the purge.
    let load: Vec<_> = (1..=64_i64)
        .map(|user| {
            let (h, stop) = (h.clone(), stop.clone());
            actix_rt::spawn(async move {
                let mut acked = Vec::new();
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    h.send(EnsureUser { user_id: user }).await.unwrap();
                    let started = std::time::Instant::now();
                    let turn = h
                        .send(AppendTurn {
                            user_id: user,
                            chat_id: 0,
                            user_text: format!("turn {i}"),
                            reply_text: "ok".into(),
                            key: None,
                        })
                        .await
                        .unwrap();
                    acked.push((turn.user.id, turn.reply.id, started.elapsed()));
                    i += 1;
                    if i % 25 == 0 {
                        h.send(ClearHistory {
                            user_id: user,
                            chat_id: 0,
                            key: None,
                        })
                        .await
                        .unwrap();
                    }
                }
                acked
            })
        })
        .collect();
    // Sample, until the purge is done, every backend of this database that waits for a
    // lock held by the purge.
    let sampler = actix_rt::spawn({
        let mut conn = t.conn().await;
        let stop = stop.clone();
        async move {
            let (mut samples, mut blocked) = (0_u64, 0_i64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity a \
                      WHERE a.datname = current_database() AND EXISTS ( \
                            SELECT 1 FROM pg_stat_activity b \
                             WHERE b.pid = ANY (pg_blocking_pids(a.pid)) \
                               AND b.application_name = 'botdb-purge-test')",
                )
                .fetch_one(&mut conn)
                .await
                .unwrap();
                samples += 1;
                blocked += n;
                tokio::task::yield_now().await;
            }
            (samples, blocked)
        }
    });
    let options = PurgeOptions {
        batch: 500,
        ..PurgeOptions::new(Duration::from_secs(30 * 86_400))
    };
    let report = retention::purge(&purge_db, options, |_| {}, std::future::pending())
        .await
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (samples, blocked) = sampler.await.unwrap();
    let mut acked = Vec::new();
    for task in load {
        acked.extend(task.await.unwrap());
    }
    assert_eq!((report.due, report.purged), (25_600, 25_600));
    assert_eq!(count(&t, "old").await, 0);
    // Every acknowledged message is there, soft-deleted or not.
    let ids: Vec<uuid::Uuid> = acked.iter().flat_map(|(u, r, _)| [*u, *r]).collect();
    let found = repo::messages::by_ids(t.db.pool(), &ids).await.unwrap();
    assert!(
        found.iter().all(Option::is_some),
        "an acknowledged message is missing"
    );
    assert_eq!(
        (count(&t, "live").await, count(&t, "recent").await),
        (64 * 5, 64 * 3)
    );
    let mut latencies: Vec<Duration> = acked.iter().map(|a| a.2).collect();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!(
        "purge: {} rows in {} transactions (the longest {:.1} ms) beside {} turns \
         (p50 {:?}, p99 {:?}, max {:?}); lock samples {samples}, turns blocked by the purge {blocked}",
        report.purged,
        report.batches,
        report.longest_batch.as_secs_f64() * 1000.0,
        acked.len(),
        pct(0.5),
        pct(0.99),
        latencies.last().copied().unwrap_or_default(),
    );
    assert!(samples > 0 && !acked.is_empty());
    assert_eq!(blocked, 0, "a turn waited for a lock the purge held");
    h.shutdown().await;
    purge_db.close().await;
}

#[tokio::test]
async fn a_purge_shorter_than_the_key_retention_is_a_config_error_and_removes_nothing() {
    let t = TestDb::new().await;
    aged(&t, 2, 3).await;
    // The default key retention is 24 hours; 'recent' was deleted a day ago.
    let refused = retention::purge(
        &t.db,
        PurgeOptions::new(Duration::from_secs(3600)),
        |_| {},
        std::future::pending(),
    )
    .await;
    let err = match refused {
        Err(e) => e,
        Ok(r) => panic!(
            "a 1-hour purge ran under the 24-hour key retention: {} purged",
            r.purged
        ),
    };
    assert!(matches!(&err, Error::Config { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("BOTDB_KEY_RETENTION_HOURS=24") && text.contains("shorter than"),
        "{text}"
    );
    assert_eq!(
        (count(&t, "old").await, count(&t, "recent").await),
        (6, 6),
        "nothing removed"
    );
    assert_eq!(t.db.counters().snapshot().purged_messages, 0);

    // Keys kept 1 hour: the same period purges, the recent ones included.
    let hour = Duration::from_secs(3600);
    let report = retention::purge(
        &t.db,
        PurgeOptions {
            key_retention: hour,
            ..PurgeOptions::new(hour)
        },
        |_| {},
        std::future::pending(),
    )
    .await
    .unwrap();
    assert_eq!(report.purged, 12);
    assert_eq!(count(&t, "recent").await, 0);
}

/// An application that embeds the server gets the same check.
#[cfg(feature = "server")]
#[actix_rt::test]
async fn the_server_refuses_a_purge_period_shorter_than_its_key_retention() {
    let t = TestDb::new().await;
    let options = botdb::server::ServeOptions {
        bind: "127.0.0.1:0".into(),
        insecure_no_secret: true,
        purge_after: Some(Duration::from_secs(12 * 3600)),
        ..Default::default()
    };
    let refused = botdb::server::start(
        t.db.clone(),
        ActorConfig::default(),
        options,
        std::sync::Arc::new(botdb::bot::EchoModel),
    );
    let err = match refused {
        Err(e) => e,
        Ok(_) => panic!("the server started with a 12-hour purge and 24-hour keys"),
    };
    assert!(
        matches!(&err, Error::Config { key, .. } if key == "BOTDB_PURGE_AFTER"),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("12h is shorter than the request keys' retention, BOTDB_KEY_RETENTION_HOURS=24"),
        "{err}"
    );
}
