//! The actor layer's scenarios, written once for any table: per-user order, concurrency
//! across users, overload and each user's share, Shutdown under load, panics. botdb's
//! `messages` table runs them (`tests/it/actors.rs`), and so does a table defined in a
//! test file with its own migration (`tests/it/own_tables.rs`): whatever table a bot
//! registers gets the same guarantees.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use botdb::actors::{ActorStats, DbHandle, DbRequest, RegisterUser, Shutdown};
use botdb::{ActorConfig, Error};
use futures::future::join_all;

use crate::helpers::TestDb;

/// What a scenario needs of a table.
pub trait Subject: 'static {
    /// The request that stores one entry (`content`) for a user.
    type Append: DbRequest;
    /// A fresh database with the table (and botdb's) migrated.
    async fn database() -> TestDb;
    /// Starts a system that serves the table, under `config`.
    fn start(t: &TestDb, config: ActorConfig) -> DbHandle;
    /// The request storing `content` for `user`.
    fn append(user: i64, content: String) -> Self::Append;
    /// The user's entries, oldest first, read straight from the table.
    async fn stored(t: &TestDb, user: i64) -> Vec<String>;
    /// `true` when the table batches its appends (group commit).
    const BATCHED: bool;
}

/// Registers `user` through botdb's users actor (every table's rows belong to a user).
pub async fn register(h: &DbHandle, user_id: i64) {
    h.send(RegisterUser {
        user_id,
        max_history_messages: Some(1000),
        system_prompt: None,
    })
    .await
    .unwrap();
}

/// The stats of the subject's actor.
async fn actor_stats<S: Subject>(h: &DbHandle) -> ActorStats {
    let stats = h.stats().await.unwrap();
    let name = <<S::Append as DbRequest>::Table as botdb::actors::Table>::NAME;
    stats
        .actors
        .into_iter()
        .find(|a| a.actor == name)
        .expect("the subject's actor reports stats")
}

/// 1,000 requests of one user, sent one after the other without awaiting each, awaited
/// together: stored in send order. Returns the database and the running system (user
/// 7 holds the 1,000 entries) for the caller's own checks.
pub async fn a_thousand_requests_of_one_user_run_in_send_order<S: Subject>() -> (TestDb, DbHandle) {
    let t = S::database().await;
    let h = S::start(
        &t,
        ActorConfig {
            max_pending_per_user: 1000,
            ..ActorConfig::default()
        },
    );
    register(&h, 7).await;
    let pending: Vec<_> = (0..1000)
        .map(|i| h.send(S::append(7, format!("m{i:04}"))))
        .collect();
    let acked = join_all(pending).await;
    assert!(acked.iter().all(Result::is_ok));
    let expected: Vec<String> = (0..1000).map(|i| format!("m{i:04}")).collect();
    assert_eq!(S::stored(&t, 7).await, expected);
    (t, h)
}

/// 64 users x 50 requests: each user's order kept, several users in flight at once,
/// nothing held once idle.
pub async fn many_users_keep_their_own_order_and_run_concurrently<S: Subject>() {
    let t = S::database().await;
    let h = S::start(&t, ActorConfig::default());
    let users: Vec<i64> = (1..=64).collect();
    join_all(users.iter().map(|&u| register(&h, u))).await;
    let mut pending = Vec::new();
    for i in 0..50 {
        for &u in &users {
            pending.push(h.send(S::append(u, format!("u{u}-{i:02}"))));
        }
    }
    assert!(join_all(pending).await.iter().all(Result::is_ok));
    for &u in &users {
        let expected: Vec<String> = (0..50).map(|i| format!("u{u}-{i:02}")).collect();
        assert_eq!(S::stored(&t, u).await, expected, "user {u}");
    }
    let m = actor_stats::<S>(&h).await;
    assert!(m.peak_users_in_flight > 1, "{m:?}");
    assert_eq!(m.completed, 64 * 50);
    assert_eq!(
        (m.in_flight, m.queued, m.active_users),
        (0, 0, 0),
        "idle users hold nothing"
    );
}

/// Past the actor's bound requests are refused at once, and one user flooding gets
/// exactly their share while 39 others are all served; acknowledged = stored.
pub async fn past_the_bound_requests_are_overloaded_and_one_user_cannot_take_the_bound<S: Subject>() {
    let t = S::database().await;
    let (bound, share) = (64, 8);
    let h = S::start(
        &t,
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
        .map(|i| h.send(S::append(1, format!("flood{i}"))))
        .collect();
    // 39 other users, one request each: the flood must not have taken their places.
    let others: Vec<_> = (2..=40)
        .map(|u| h.send(S::append(u, format!("hello{u}"))))
        .collect();
    // 40 more users, past the global bound: 8 + 39 + 17 = 64 admitted, 23 refused.
    let late: Vec<_> = (41..=80)
        .map(|u| h.send(S::append(u, format!("late{u}"))))
        .collect();
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
            "{:?}",
            answer.as_ref().err()
        );
    }
    for (u, answer) in (2..=40).zip(&others) {
        assert!(
            answer.is_ok(),
            "user {u} was refused because of user 1's flood: {:?}",
            answer.as_ref().err()
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
            "{:?}",
            answer.as_ref().err()
        );
    }
    assert_eq!(
        S::stored(&t, 1).await,
        (0..share).map(|i| format!("flood{i}")).collect::<Vec<_>>()
    );
    for u in 2..=40 {
        assert_eq!(S::stored(&t, u).await, [format!("hello{u}")], "user {u}");
    }
    for (u, answer) in (41..=80).zip(&late) {
        let expected: Vec<String> = answer.iter().map(|_| format!("late{u}")).collect();
        assert_eq!(S::stored(&t, u).await, expected, "user {u}");
    }
    let m = actor_stats::<S>(&h).await;
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
    h.send(S::append(1, "later".into())).await.unwrap();
}

/// Shutdown while 64 users keep sending: every accepted request is answered and
/// committed, every later one refused with `ShuttingDown`, the counts add up, the pool
/// closes last.
pub async fn shutdown_under_load_drains_every_accepted_request_then_closes_the_pool<S: Subject>() {
    let t = S::database().await;
    let h = S::start(&t, ActorConfig::default());
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
                        .map(|k| (i * 4 + k, h.send(S::append(u, format!("u{u}-{:05}", i * 4 + k)))))
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
    if S::BATCHED {
        let m = actor_stats::<S>(&h).await;
        assert!(
            m.batches > 0 && m.largest_batch > 1,
            "batches were in flight under the load: {m:?}"
        );
    }
    // After the drain: refused at once.
    assert!(matches!(
        h.send(S::append(1, "late".into())).await,
        Err(Error::ShuttingDown)
    ));
    assert!(h.is_shutting_down());
    assert_eq!(
        h.shutdown().await.accepted,
        report.accepted,
        "a second Shutdown returns the same report"
    );
    // Every acknowledged entry is in the database, in order, and nothing else is.
    for (u, acked) in acked_by_user {
        assert_eq!(S::stored(&t, u).await, acked, "user {u}");
    }
}

/// A panic in the actor's handler (user 3) and in a request (user 4): only those two
/// requests fail, the actor is restarted twice, everyone else's requests are stored in
/// order, and the restarted actor serves everyone.
#[cfg(feature = "fault-injection")]
pub async fn a_panic_costs_its_request_and_the_actor_is_restarted<S: Subject>() {
    let t = S::database().await;
    let h = S::start(&t, ActorConfig::default());
    for u in 1..=5 {
        register(&h, u).await;
    }
    h.faults().panic_in_handler_once(3);
    h.faults().panic_in_run_once(4);
    let mut sent = Vec::new();
    for i in 0..5 {
        for u in 1..=5 {
            sent.push((u, i, h.send(S::append(u, format!("u{u}-{i}")))));
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
        assert_eq!(
            S::stored(&t, u).await,
            expected,
            "user {u}: acknowledged = stored"
        );
    }
    let m = actor_stats::<S>(&h).await;
    assert_eq!((m.restarts, m.panicked, m.failed), (2, 2, 2), "{m:?}");
    // The restarted actor serves everyone, users 3 and 4 included.
    h.send(S::append(3, "after".into())).await.unwrap();
    h.send(S::append(4, "after".into())).await.unwrap();
}
