//! Fault tests: break things on purpose, check that no caller hangs and nothing
//! acknowledged is lost. Each test runs its own throwaway PostgreSQL cluster (so it can
//! stop and start it), talks over loopback only, and prints its figures:
//! sent / acknowledged / found / lost.

use botdb::model::PRIVATE_CHAT;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use botdb::actors::{AppendMessage, DbHandle, DbSystem, RegisterUser};
use botdb::embedded::{EmbeddedPostgres, StopMode};
use botdb::model::Role;
use botdb::{ActorConfig, Config, Database, Error, repo};
use secrecy::ExposeSecret;
use sqlx::{ConnectOptions, PgConnection};

use crate::helpers::eventually;
use crate::serve::{sigterm, spawn_serve_on, verify_turns, webhook_load};

/// A cluster of the test's own, with a migrated database `botdb`.
struct Cluster {
    pg: Arc<EmbeddedPostgres>,
    config: Config,
}

impl Cluster {
    async fn start(pool_timeout: Duration) -> Cluster {
        let pg = Arc::new(
            tokio::task::spawn_blocking(EmbeddedPostgres::start)
                .await
                .unwrap()
                .unwrap(),
        );
        pg.create_database("botdb").await.unwrap();
        let base = Config::builder()
            .pool_size(5)
            .max_overflow(10)
            .pool_timeout(pool_timeout)
            .build()
            .unwrap();
        let config = pg.config_from(&base, "botdb");
        let db = Database::connect(&config).await.unwrap();
        db.migrate().await.unwrap();
        db.close().await;
        Cluster { pg, config }
    }

    fn url(&self) -> String {
        self.pg.url("botdb").expose_secret().to_string()
    }

    async fn stop(&self, mode: StopMode) {
        let pg = self.pg.clone();
        tokio::task::spawn_blocking(move || pg.stop(mode))
            .await
            .unwrap()
            .unwrap();
    }

    async fn restart(&self) {
        let pg = self.pg.clone();
        tokio::task::spawn_blocking(move || pg.restart())
            .await
            .unwrap()
            .unwrap();
    }

    async fn conn(&self) -> PgConnection {
        self.config.connect_options().unwrap().connect().await.unwrap()
    }
}

fn figures(test: &str, sent: usize, acked: usize, found: usize) {
    eprintln!(
        "FAULT {test}: sent {sent}, acknowledged {acked}, found {found}, lost {}",
        acked - found.min(acked)
    );
}

/// What an actor load run saw.
#[derive(Default)]
struct ActorLoad {
    sent: usize,
    acked: HashMap<i64, Vec<String>>,
    errors: HashMap<&'static str, usize>,
    slowest: Duration,
}

/// `users` send `AppendMessage`s one after the other, as fast as answered, until `stop`.
async fn actor_load(h: &DbHandle, users: std::ops::RangeInclusive<i64>, stop: Arc<AtomicBool>) -> ActorLoad {
    let tasks: Vec<_> = users
        .map(|u| {
            let (h, stop) = (h.clone(), stop.clone());
            actix_rt::spawn(async move {
                let mut run = ActorLoad::default();
                for i in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let content = format!("u{u}-{i}");
                    run.sent += 1;
                    let started = Instant::now();
                    let answer = h
                        .send(AppendMessage {
                            user_id: u,
                            chat_id: PRIVATE_CHAT,
                            role: Role::User,
                            content: content.clone(),
                            key: None,
                        })
                        .await;
                    run.slowest = run.slowest.max(started.elapsed());
                    let kind = match answer {
                        Ok(_) => {
                            run.acked.entry(u).or_default().push(content);
                            continue;
                        }
                        Err(Error::Unavailable { .. }) => "unavailable",
                        Err(Error::OutcomeUnknown { .. }) => "outcome unknown",
                        Err(Error::Internal(_)) => "internal",
                        Err(e) => panic!("user {u}: an untyped or unexpected error: {e:?}"),
                    };
                    *run.errors.entry(kind).or_default() += 1;
                    // Do not spin while the server is down.
                    actix_rt::time::sleep(Duration::from_millis(10)).await;
                }
                run
            })
        })
        .collect();
    let mut total = ActorLoad::default();
    for t in tasks {
        let run = t.await.unwrap();
        total.sent += run.sent;
        total.slowest = total.slowest.max(run.slowest);
        total.acked.extend(run.acked);
        for (k, v) in run.errors {
            *total.errors.entry(k).or_default() += v;
        }
    }
    total
}

/// How many acknowledged messages are stored, user by user in the order they were
/// acknowledged (a missing or misplaced one stops the count for its user). Messages
/// stored without an acknowledgment (their answer was an error of unknown outcome) may
/// sit between them.
async fn found_in_order(conn: &mut PgConnection, load: &ActorLoad) -> usize {
    let mut found = 0;
    for (u, acked) in &load.acked {
        let stored: Vec<String> =
            sqlx::query_scalar("SELECT content FROM messages WHERE user_id = $1 ORDER BY created_at, seq")
                .bind(u)
                .fetch_all(&mut *conn)
                .await
                .unwrap();
        let mut rest = stored.iter();
        found += acked.iter().take_while(|text| rest.any(|s| s == *text)).count();
    }
    found
}

/// Actors on the cluster's database, `users` registered, and an [`actor_load`] running
/// until the returned flag is set.
async fn actors_under_load(
    c: &Cluster,
    users: std::ops::RangeInclusive<i64>,
) -> (DbHandle, Arc<AtomicBool>, actix_rt::task::JoinHandle<ActorLoad>) {
    let db = Database::connect(&c.config).await.unwrap();
    let h = DbSystem::start(db, ActorConfig::default());
    for u in users.clone() {
        h.send(RegisterUser {
            user_id: u,
            max_history_messages: None,
            system_prompt: None,
        })
        .await
        .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (h, stop) = (h.clone(), stop.clone());
        actix_rt::spawn(async move { actor_load(&h, users, stop).await })
    };
    (h, stop, load)
}

/// Requests the actors have completed so far.
async fn completed(h: &DbHandle) -> u64 {
    h.stats().await.unwrap().actors.iter().map(|a| a.completed).sum()
}

/// Waits (bounded) until `more` requests completed from now; `false` if they did not.
async fn progressed(h: &DbHandle, more: u64) -> bool {
    let base = completed(h).await;
    eventually(Duration::from_secs(60), async || {
        completed(h).await >= base + more
    })
    .await
}

#[actix_rt::test]
async fn postgres_killed_and_restarted_under_a_64_user_load() {
    let pool_timeout = Duration::from_secs(3);
    let c = Cluster::start(pool_timeout).await;
    let (h, stop, load) = actors_under_load(&c, 1..=64).await;
    assert!(progressed(&h, 500).await, "load running");
    c.stop(StopMode::Immediate).await;
    let failing = eventually(Duration::from_secs(60), async || {
        h.stats()
            .await
            .unwrap()
            .actors
            .iter()
            .map(|a| a.failed)
            .sum::<u64>()
            >= 64
    })
    .await;
    assert!(failing, "requests fail while the server is down");
    c.restart().await;
    assert!(
        progressed(&h, 500).await,
        "the system recovered without a restart"
    );
    stop.store(true, Ordering::SeqCst);
    let load = load.await.unwrap();
    let batches: u64 = h.stats().await.unwrap().actors.iter().map(|a| a.batches).sum();
    assert!(batches > 0, "the load ran in batches (group commit)");
    let report = h.shutdown().await;
    assert!(report.drained, "{report}");

    // Every caller got an answer (Ok or a typed error) within the pool timeout, plus the
    // time PostgreSQL takes to refuse or reset a connection.
    assert!(
        load.slowest <= pool_timeout + Duration::from_secs(5),
        "slowest answer {:?}",
        load.slowest
    );
    // Requests cut with the server fail typed: OutcomeUnknown when they went out on a
    // connection the crash broke, Unavailable when no connection could be had.
    assert!(
        !load.errors.is_empty(),
        "requests failed while the server was down"
    );
    assert!(
        load.errors
            .keys()
            .all(|k| ["unavailable", "outcome unknown"].contains(k)),
        "{:?}",
        load.errors
    );
    let acked: usize = load.acked.values().map(Vec::len).sum();
    let failed: usize = load.errors.values().sum();
    assert_eq!(load.sent, acked + failed, "every request answered, Ok or typed");
    let found = found_in_order(&mut c.conn().await, &load).await;
    figures("pg_ctl stop -m immediate under 64 users", load.sent, acked, found);
    eprintln!(
        "      errors: {:?}; slowest answer {:?}",
        load.errors, load.slowest
    );
    assert_eq!(found, acked);
}

#[actix_rt::test]
async fn a_backend_terminated_mid_transaction_fails_its_caller_and_nothing_is_visible() {
    let c = Cluster::start(Duration::from_secs(5)).await;
    let db = Database::connect(&c.config).await.unwrap();
    repo::users::create(db.pool(), 1).await.unwrap();
    let (mut sent, mut acked) = (0, Vec::new());
    let msg = db
        .limits()
        .message(1, Role::User, "inside the doomed transaction")
        .unwrap();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let doomed = {
        let db = db.clone();
        actix_rt::spawn(async move {
            db.session(async |tx| {
                repo::messages::append(&mut *tx, &msg).await?;
                let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                    .fetch_one(&mut *tx)
                    .await?;
                let _ = started_tx.send(pid);
                sqlx::query("SELECT pg_sleep(30)").execute(&mut *tx).await?;
                Ok(())
            })
            .await
        })
    };
    sent += 1;
    let pid = started_rx.await.unwrap();
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&mut c.conn().await)
        .await
        .unwrap();
    assert!(killed);
    let answer = tokio::time::timeout(Duration::from_secs(10), doomed)
        .await
        .expect("no hang")
        .unwrap();
    // COMMIT was never sent: known not committed, so Unavailable (retry is safe).
    assert!(matches!(answer, Err(Error::Unavailable { .. })), "{answer:?}");
    let visible: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&mut c.conn().await)
        .await
        .unwrap();
    assert_eq!(visible, 0, "nothing of the killed transaction is visible");
    // The next requests succeed, directly and through the actors.
    let next = db.limits().message(1, Role::User, "after, directly").unwrap();
    sent += 1;
    repo::messages::append(db.pool(), &next).await.unwrap();
    acked.push("after, directly".to_string());
    let h = DbSystem::start(db.clone(), ActorConfig::default());
    sent += 1;
    h.send(AppendMessage {
        user_id: 1,
        chat_id: PRIVATE_CHAT,
        role: Role::User,
        content: "after, via the actors".into(),
        key: None,
    })
    .await
    .unwrap();
    acked.push("after, via the actors".to_string());
    h.shutdown().await;
    let stored: Vec<String> = sqlx::query_scalar("SELECT content FROM messages ORDER BY created_at, seq")
        .fetch_all(&mut c.conn().await)
        .await
        .unwrap();
    let found = acked.iter().filter(|a| stored.contains(a)).count();
    figures("pg_terminate_backend mid-transaction", sent, acked.len(), found);
    assert_eq!(stored, acked, "exactly the acknowledged writes, in order");
}

/// SIGTERM to `served` while `run` loads it: exit 0; then the run's figures.
async fn sigterm_under_load(c: &Cluster, users: std::ops::Range<i64>, threshold: usize, what: &str) {
    let mut served = spawn_serve_on(&c.url(), &[]).await;
    let (stop, signalled) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let enough = Arc::new(tokio::sync::Notify::new());
    let load = webhook_load(
        Arc::new(served.base.clone()),
        users,
        stop.clone(),
        signalled.clone(),
        enough.clone(),
        threshold,
    );
    enough.notified().await;
    signalled.store(true, Ordering::SeqCst);
    let status = sigterm(&mut served.child).await;
    stop.store(true, Ordering::SeqCst);
    assert_eq!(status.code(), Some(0), "{what}");
    let run = load.await.unwrap();
    let found = verify_turns(&mut c.conn().await, &run).await;
    figures(what, run.sent(), run.acked(), found.in_order);
    eprintln!(
        "      not acknowledged: {} answered 503 while draining, {} refused at connect (never reached serve), \
         {} cut (sent before the signal on a served connection: {}, as a new connection's first request: {}); \
         stored without an answer: {}",
        run.unavailable,
        run.refused,
        run.cut(),
        run.cut_before_signal,
        run.cut_before_signal_unaccepted,
        found.unacknowledged
    );
    assert_eq!(
        run.cut_before_signal, 0,
        "{what}: a request sent before SIGTERM was cut: {:?}",
        run.cut_errors
    );
    assert_eq!(found.in_order, run.acked(), "{what}");
    assert!(found.unacknowledged <= run.cut(), "{what}: {found:?}");
}

#[actix_rt::test]
async fn sigterm_to_serve_at_load_repeatedly_loses_nothing() {
    let c = Cluster::start(Duration::from_secs(5)).await;
    for round in 1..=3 {
        // New users each round, so every round's turns are checked on their own.
        let users = round * 100..round * 100 + 16;
        sigterm_under_load(
            &c,
            users,
            200,
            &format!("SIGTERM to serve under 16 clients, round {round}"),
        )
        .await;
    }
}

#[actix_rt::test]
async fn sigkill_to_serve_at_load_keeps_every_acknowledged_update() {
    let c = Cluster::start(Duration::from_secs(5)).await;
    let mut served = spawn_serve_on(&c.url(), &[]).await;
    let (stop, signalled) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let enough = Arc::new(tokio::sync::Notify::new());
    let load = webhook_load(
        Arc::new(served.base.clone()),
        500..516,
        stop.clone(),
        signalled.clone(),
        enough.clone(),
        300,
    );
    enough.notified().await;
    signalled.store(true, Ordering::SeqCst);
    served.child.start_kill().unwrap();
    let status = served.child.wait().await.unwrap();
    stop.store(true, Ordering::SeqCst);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9));
    let run = load.await.unwrap();
    // After a restart, every update answered 200 before the kill is there, whole.
    let served = spawn_serve_on(&c.url(), &[]).await;
    let found = verify_turns(&mut c.conn().await, &run).await;
    figures(
        "SIGKILL to serve under 16 clients",
        run.sent(),
        run.acked(),
        found.in_order,
    );
    eprintln!(
        "      not acknowledged: {} answered 503, {} refused, {} cut by the kill; stored without an answer: {}",
        run.unavailable,
        run.refused,
        run.cut(),
        found.unacknowledged
    );
    assert_eq!(found.in_order, run.acked());
    // A killed process cuts what it was doing: at most one request per client.
    assert!(run.cut() <= 16 && found.unacknowledged <= run.cut(), "{found:?}");
    let body = serde_json::to_vec(&crate::serve::text_update(1, 500, "after the restart")).unwrap();
    let (status, _) = crate::serve::post_raw(
        &crate::serve::client(),
        &served.base,
        body,
        "application/json",
        Some(crate::serve::SECRET),
    )
    .await;
    assert_eq!(status, 200);
}

#[actix_rt::test]
async fn actor_panics_during_load_fail_only_their_requests() {
    let c = Cluster::start(Duration::from_secs(5)).await;
    let (h, stop, load) = actors_under_load(&c, 1..=32).await;
    // Panics while the load runs: in handlers and inside requests, for several users.
    for (i, u) in [3, 9, 17, 25, 31].into_iter().enumerate() {
        assert!(progressed(&h, 200).await, "load running before panic {i}");
        if i % 2 == 0 {
            h.faults().panic_in_handler_once(u);
        } else {
            h.faults().panic_in_run_once(u);
        }
    }
    let h2 = h.clone();
    let all_fired = eventually(Duration::from_secs(30), async || {
        h2.stats()
            .await
            .unwrap()
            .actors
            .iter()
            .map(|a| a.panicked)
            .sum::<u64>()
            == 5
    })
    .await;
    assert!(all_fired);
    stop.store(true, Ordering::SeqCst);
    let load = load.await.unwrap();
    let stats = h.stats().await.unwrap();
    let messages = stats.actors.iter().find(|a| a.actor == "messages").unwrap();
    assert_eq!((messages.restarts, messages.panicked), (5, 5), "{messages:?}");
    assert_eq!(
        load.errors.get("internal").copied(),
        Some(5),
        "only the 5 panicking requests failed: {:?}",
        load.errors
    );
    assert_eq!(load.errors.len(), 1, "{:?}", load.errors);
    let report = h.shutdown().await;
    assert!(report.drained && report.unfinished == 0, "{report}");
    let acked: usize = load.acked.values().map(Vec::len).sum();
    let found = found_in_order(&mut c.conn().await, &load).await;
    figures("actor panics (5) under 32 users", load.sent, acked, found);
    assert_eq!(found, acked);
}

/// Posts `update` to one of `bases` (starting with `first`) until an instance answers
/// 200, as Telegram does (it redelivers whatever got no 200); returns the reply text
/// and how many deliveries it took.
async fn deliver_until_answered(
    bases: &std::sync::Mutex<Vec<String>>,
    first: usize,
    update: &serde_json::Value,
) -> (String, usize) {
    let c = crate::serve::client();
    let body = serde_json::to_vec(update).unwrap();
    for attempt in 0..200 {
        let base = {
            let bases = bases.lock().unwrap();
            bases[(first + attempt) % bases.len()].clone()
        };
        let answer = c
            .post(format!("{base}/telegram/webhook"))
            .insert_header(("Content-Type", "application/json"))
            .insert_header(("X-Telegram-Bot-Api-Secret-Token", crate::serve::SECRET))
            .send_body(body.clone())
            .await;
        if let Ok(mut resp) = answer
            && resp.status().as_u16() == 200
            && let Ok(reply) = resp.json::<serde_json::Value>().await
        {
            return (reply["text"].as_str().unwrap().to_string(), attempt + 1);
        }
        // Telegram waits before redelivering; so does this client.
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("update {update} never answered");
}

#[actix_rt::test]
async fn copies_of_every_update_over_two_instances_one_killed_make_exactly_one_turn_each() {
    let c = Cluster::start(Duration::from_secs(5)).await;
    let mut a = spawn_serve_on(&c.url(), &[]).await;
    let b = spawn_serve_on(&c.url(), &[]).await;
    let bases = Arc::new(std::sync::Mutex::new(vec![a.base.clone(), b.base.clone()]));
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let halfway = Arc::new(tokio::sync::Notify::new());
    // 50 users x 3 updates, each delivered 3 times at once: two copies to instance A,
    // one to B (then to whichever answers).
    let users: Vec<_> = (1..=50i64)
        .map(|user| {
            let (bases, answered, halfway) = (bases.clone(), answered.clone(), halfway.clone());
            actix_rt::spawn(async move {
                let mut log = Vec::new();
                for n in 0..3 {
                    let id = 10_000 + user * 10 + n;
                    let update = crate::serve::text_update(id, user, &format!("u{user}-n{n}"));
                    let (x, y, z) = futures::join!(
                        deliver_until_answered(&bases, 0, &update),
                        deliver_until_answered(&bases, 0, &update),
                        deliver_until_answered(&bases, 1, &update)
                    );
                    if answered.fetch_add(1, Ordering::SeqCst) + 1 == 60 {
                        halfway.notify_one();
                    }
                    log.push((update, [x, y, z]));
                }
                log
            })
        })
        .collect();
    // Halfway, instance A is killed (SIGKILL) and started again (on a new port).
    halfway.notified().await;
    a.child.start_kill().unwrap();
    a.child.wait().await.unwrap();
    let restarted = spawn_serve_on(&c.url(), &[]).await;
    bases.lock().unwrap()[0] = restarted.base.clone();
    let mut logs = Vec::new();
    for u in users {
        logs.extend(u.await.unwrap());
    }
    // Ten of them once more, later, to both instances.
    for (update, replies) in logs.iter().step_by(15).take(10) {
        for first in [0, 1] {
            let (again, _) = deliver_until_answered(&bases, first, update).await;
            assert_eq!(again, replies[0].0, "a later copy of {update} got another reply");
        }
    }
    // Every update is exactly one turn; every copy was answered with that turn's reply.
    let rows: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT user_id, role, content FROM messages ORDER BY user_id, created_at, seq")
            .fetch_all(&mut c.conn().await)
            .await
            .unwrap();
    assert_eq!(rows.len(), 300, "150 updates, 150 turns, 300 messages");
    let deliveries: usize = logs
        .iter()
        .map(|(_, r)| r.iter().map(|(_, n)| n).sum::<usize>())
        .sum();
    for (update, replies) in &logs {
        let text = update["message"]["text"].as_str().unwrap();
        let user = update["message"]["from"]["id"].as_i64().unwrap();
        let turn: Vec<&(i64, String, String)> = rows
            .iter()
            .skip_while(|(u, role, content)| !(*u == user && role == "user" && content == text))
            .take(2)
            .collect();
        assert_eq!(turn.len(), 2, "{text}: stored");
        assert_eq!(
            rows.iter()
                .filter(|(u, _, content)| *u == user && content == text)
                .count(),
            1,
            "{text}: stored once"
        );
        for (reply, _) in replies {
            assert_eq!(
                reply, &turn[1].2,
                "{text}: every copy answered with the stored turn's reply"
            );
        }
    }
    eprintln!(
        "FAULT exactly once over 2 instances, one SIGKILLed and restarted: 150 updates, 450 copies \
         in {deliveries} deliveries (retries after the kill included) + 20 later copies; \
         150 turns stored, each once; every 200 carried its stored turn's reply"
    );
    drop(restarted);
    drop(b);
}
