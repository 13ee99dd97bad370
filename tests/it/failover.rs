//! Failover under load (issue 16): a primary with a synchronous standby, botdb given
//! both hosts with `target_session_attrs=read-write`; the primary is killed
//! (`pg_ctl stop -m immediate`) half-way through a load and the standby promoted. Every
//! turn the actors acknowledged must be on the promoted standby, every failure meanwhile
//! typed and transient, and the webhook answers 503 (Telegram redelivers) until the
//! promoted standby takes the redelivered update, once.
//!
//! Figures are printed as the fault tests print theirs: sent / acknowledged / found /
//! lost, the failures by kind, and the time without writes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use botdb::actors::{AppendTurn, DbHandle, DbSystem, RegisterUser};
use botdb::embedded::{EmbeddedPostgres, Replication, StopMode};
use botdb::model::PRIVATE_CHAT;
use botdb::{ActorConfig, Config, Database, Error};
use secrecy::ExposeSecret;
use sqlx::{ConnectOptions, PgConnection};
use tokio::sync::watch;

/// A primary (database `botdb`, migrated) and its synchronous standby, each shared with
/// the blocking tasks that stop and promote them.
pub async fn pair() -> (Arc<EmbeddedPostgres>, Arc<EmbeddedPostgres>) {
    let pg = tokio::task::spawn_blocking(EmbeddedPostgres::start)
        .await
        .unwrap()
        .unwrap();
    pg.create_database("botdb").await.unwrap();
    let db = Database::connect(&pg.config("botdb")).await.unwrap();
    db.migrate().await.unwrap();
    db.close().await;
    let standby = pg.start_standby(Replication::Synchronous).await.unwrap();
    (Arc::new(pg), Arc::new(standby))
}

/// `postgres://postgres:PW@127.0.0.1:PRIMARY,127.0.0.1:STANDBY/botdb?target_session_attrs=read-write`:
/// a secret (it holds the password), for the configuration or a child's environment.
pub fn two_host_url(pg: &EmbeddedPostgres, standby: &EmbeddedPostgres) -> String {
    format!(
        "postgres://postgres:{}@127.0.0.1:{},127.0.0.1:{}/botdb?target_session_attrs=read-write",
        pg.password().expose_secret(),
        pg.port(),
        standby.port()
    )
}

pub async fn stop(pg: &Arc<EmbeddedPostgres>) {
    let pg = pg.clone();
    tokio::task::spawn_blocking(move || pg.stop(StopMode::Immediate))
        .await
        .unwrap()
        .unwrap();
}

pub async fn promote(standby: &Arc<EmbeddedPostgres>) {
    let standby = standby.clone();
    tokio::task::spawn_blocking(move || standby.promote())
        .await
        .unwrap()
        .unwrap();
}

pub async fn conn_to(pg: &EmbeddedPostgres) -> PgConnection {
    pg.config("botdb")
        .connect_options()
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// How one turn was answered, and when.
enum Answer {
    Acked(Instant),
    Failed(Instant, Error),
}

/// One turn sent by a user: its texts are `u{user}-{i}` and `r{user}-{i}`.
struct Sent {
    user: i64,
    i: u64,
    answer: Answer,
}

fn texts(user: i64, i: u64) -> (String, String) {
    (format!("u{user}-{i}"), format!("r{user}-{i}"))
}

/// `users` send `AppendTurn`s one after the other, as fast as answered, until `stop`;
/// `acked` counts the acknowledged ones as they come.
fn turn_load(
    h: &DbHandle,
    users: std::ops::RangeInclusive<i64>,
    stop: Arc<AtomicBool>,
    acked: Arc<watch::Sender<usize>>,
) -> Vec<actix_rt::task::JoinHandle<Vec<Sent>>> {
    users
        .map(|user| {
            let (h, stop, acked) = (h.clone(), stop.clone(), acked.clone());
            actix_rt::spawn(async move {
                let mut sent = Vec::new();
                for i in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let (user_text, reply_text) = texts(user, i);
                    let answer = h
                        .send(AppendTurn {
                            user_id: user,
                            chat_id: PRIVATE_CHAT,
                            user_text,
                            reply_text,
                            key: None,
                        })
                        .await;
                    let answer = match answer {
                        Ok(_) => {
                            acked.send_modify(|n| *n += 1);
                            Answer::Acked(Instant::now())
                        }
                        Err(e) => Answer::Failed(Instant::now(), e),
                    };
                    let failed = matches!(answer, Answer::Failed(..));
                    sent.push(Sent { user, i, answer });
                    if failed {
                        // Back off a little instead of spinning while no server takes
                        // writes (as a bot would before its next try).
                        actix_rt::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                sent
            })
        })
        .collect()
}

/// Waits until `acked` reaches `n`, at most a minute.
async fn acked_reach(acked: &mut watch::Receiver<usize>, n: usize, what: &str) {
    tokio::time::timeout(Duration::from_secs(60), acked.wait_for(|a| *a >= n))
        .await
        .unwrap_or_else(|_| panic!("{what}: {n} turns not acknowledged within 60 s"))
        .unwrap();
}

#[actix_rt::test]
async fn a_synchronous_standby_takes_over_under_a_64_user_load_with_nothing_acknowledged_lost() {
    const BEFORE: usize = 1_500;
    const AFTER: usize = 1_500;
    let (pg, standby) = pair().await;
    let config = Config::builder()
        .url(two_host_url(&pg, &standby))
        .pool_size(5)
        .max_overflow(10)
        .pool_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let db = Database::connect(&config).await.unwrap();
    assert_eq!(db.pool().connect_options().get_port(), pg.port());
    let h = DbSystem::start(db, ActorConfig::default());
    let users = 1..=64i64;
    for user in users.clone() {
        h.send(RegisterUser {
            user_id: user,
            max_history_messages: None,
            system_prompt: None,
        })
        .await
        .unwrap();
    }
    let stop_load = Arc::new(AtomicBool::new(false));
    let (acked_tx, mut acked) = watch::channel(0usize);
    let tasks = turn_load(&h, users, stop_load.clone(), Arc::new(acked_tx));

    acked_reach(&mut acked, BEFORE, "before the failover").await;
    let stopping = Instant::now();
    stop(&pg).await;
    let stopped = Instant::now();
    promote(&standby).await;
    let promoted = Instant::now();
    let at_promotion = *acked.borrow();
    acked_reach(&mut acked, at_promotion + AFTER, "after the promotion").await;
    stop_load.store(true, Ordering::SeqCst);
    let mut sent = Vec::new();
    for t in tasks {
        sent.extend(t.await.unwrap());
    }
    let report = h.shutdown().await;
    assert!(report.drained && report.unfinished == 0, "{report}");

    // What the promoted standby holds: each message once, each a message some turn sent.
    let stored: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT user_id, role, content FROM messages ORDER BY user_id, created_at, seq")
            .fetch_all(&mut conn_to(&standby).await)
            .await
            .unwrap();
    let mut stored_set = HashSet::new();
    for (user, role, content) in &stored {
        assert!(
            stored_set.insert((*user, role.as_str(), content.as_str())),
            "{content} stored twice"
        );
    }
    let sent_texts: HashSet<(i64, String)> = sent
        .iter()
        .flat_map(|s| {
            let (u, r) = texts(s.user, s.i);
            [(s.user, u), (s.user, r)]
        })
        .collect();
    let never_sent: Vec<_> = stored
        .iter()
        .filter(|(user, _, content)| !sent_texts.contains(&(*user, content.clone())))
        .collect();
    assert!(never_sent.is_empty(), "stored, never sent: {never_sent:?}");
    let present = |s: &Sent| {
        let (u, r) = texts(s.user, s.i);
        let (user, reply) = (
            stored_set.contains(&(s.user, "user", u.as_str())),
            stored_set.contains(&(s.user, "assistant", r.as_str())),
        );
        assert_eq!(user, reply, "turn {u}: half of it stored");
        user
    };

    let (mut acks, mut found) = (0, 0);
    let (mut last_before, mut first_after) = (None::<Instant>, None::<Instant>);
    let mut kinds: HashMap<&'static str, usize> = HashMap::new();
    let (mut unknown_present, mut unavailable_present) = (0, 0);
    let mut failed_after_first_write = 0;
    let mut untyped = Vec::new();
    for s in &sent {
        match &s.answer {
            Answer::Acked(at) => {
                acks += 1;
                found += usize::from(present(s));
                if *at < stopped {
                    last_before = last_before.max(Some(*at));
                } else {
                    first_after = Some(first_after.map_or(*at, |f| f.min(*at)));
                }
            }
            Answer::Failed(at, e) => {
                assert!(
                    *at >= stopping,
                    "a turn failed before the primary was stopped: {e:?}"
                );
                let kind = match e {
                    Error::Unavailable { .. } => "unavailable",
                    Error::OutcomeUnknown { .. } => "outcome unknown",
                    _ => {
                        untyped.push(format!("{e:?}"));
                        "other"
                    }
                };
                *kinds.entry(kind).or_default() += 1;
                if e.is_outcome_unknown() {
                    unknown_present += usize::from(present(s));
                } else {
                    // Unavailable: nothing of it was committed.
                    unavailable_present += usize::from(present(s));
                }
            }
        }
    }
    for s in &sent {
        if let (Answer::Failed(at, _), Some(first)) = (&s.answer, first_after)
            && *at > first
        {
            failed_after_first_write += 1;
        }
    }
    let failed = sent.len() - acks;
    let (last_before, first_after) = (last_before.unwrap(), first_after.unwrap());
    let without_writes = first_after - last_before;
    eprintln!(
        "FAILOVER synchronous standby promoted under 64 users: sent {}, acknowledged {acks}, found {found}, lost {}",
        sent.len(),
        acks - found
    );
    eprintln!(
        "      failed (typed): {failed} {kinds:?}, of which {failed_after_first_write} after the first write on the \
         promoted standby; outcome unknown and stored anyway: {unknown_present}"
    );
    eprintln!(
        "      pg_ctl stop -m immediate {:.2} s, pg_ctl promote {:.2} s; time without writes (last ack before the \
         primary was gone to the first ack after) {:.2} s",
        (stopped - stopping).as_secs_f64(),
        (promoted - stopped).as_secs_f64(),
        without_writes.as_secs_f64()
    );
    assert!(untyped.is_empty(), "untyped failures: {untyped:?}");
    assert!(failed > 0, "the stop made some turns fail");
    for s in &sent {
        if let Answer::Failed(_, e) = &s.answer {
            assert!(e.is_transient() || e.is_outcome_unknown(), "{e:?}");
        }
    }
    assert_eq!(unavailable_present, 0, "a turn answered Unavailable was stored");
    assert_eq!(
        failed_after_first_write, 0,
        "a turn failed after writes had resumed on the promoted standby"
    );
    assert_eq!(found, acks, "every acknowledged turn is on the promoted standby");
    assert!(acks >= BEFORE + AFTER);
}

/// POSTs `update` to the webhook: the status and the `Retry-After` header.
async fn post(base: &str, update: &serde_json::Value) -> (u16, Option<String>, serde_json::Value) {
    let mut resp = crate::serve::client()
        .post(format!("{base}/telegram/webhook"))
        .insert_header(("Content-Type", "application/json"))
        .insert_header(("X-Telegram-Bot-Api-Secret-Token", crate::serve::SECRET))
        .send_body(serde_json::to_vec(update).unwrap())
        .await
        .expect("an HTTP answer");
    let retry_after = resp
        .headers()
        .get("Retry-After")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp.body().await.unwrap_or_default();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (resp.status().as_u16(), retry_after, json)
}

/// The text of the update whose turn commits but whose answer is lost.
const LOST: &str = "committed, its answer lost";

/// Polls `conn`'s server until `query` (binding `bind`) finds a backend; returns its pid.
async fn backend(conn: &mut PgConnection, query: &str, bind: i32, what: &str) -> i32 {
    let mut pid = None;
    let found = crate::helpers::eventually(Duration::from_secs(60), async || {
        pid = sqlx::query_scalar::<_, i32>(sqlx::AssertSqlSafe(query))
            .bind(bind)
            .fetch_optional(&mut *conn)
            .await
            .unwrap();
        pid.is_some()
    })
    .await;
    assert!(found, "no backend {what}");
    pid.unwrap()
}

/// Delivers `update` as Telegram does until it gets a 200 (here without its wait
/// between tries): how many deliveries it took, counting the one before, and the reply.
async fn redeliver(base: &str, update: &serde_json::Value) -> (usize, serde_json::Value) {
    let mut deliveries = 1;
    loop {
        deliveries += 1;
        assert!(deliveries <= 200, "the redelivered update was never answered");
        match post(base, update).await {
            (200, _, reply) => return (deliveries, reply),
            (503, _, _) => actix_rt::time::sleep(Duration::from_millis(50)).await,
            (status, _, body) => panic!("{status}: {body}"),
        }
    }
}

async fn stop_fast(pg: &Arc<EmbeddedPostgres>) {
    let pg = pg.clone();
    tokio::task::spawn_blocking(move || pg.stop(StopMode::Fast))
        .await
        .unwrap()
        .unwrap();
}

async fn restart(pg: &Arc<EmbeddedPostgres>) {
    let pg = pg.clone();
    tokio::task::spawn_blocking(move || pg.restart())
        .await
        .unwrap()
        .unwrap();
}

#[actix_rt::test]
async fn the_webhook_answers_503_while_no_primary_and_the_redelivered_update_is_stored_once() {
    let (pg, standby) = pair().await;
    let url = two_host_url(&pg, &standby);
    let mut served = crate::serve::spawn_serve_with(&url, &[], &[("DB_POOL_TIMEOUT", "2")]).await;
    let base = served.base.clone();
    let user = 4242;
    let before = crate::serve::text_update(1, user, "before the failover");
    let (status, _, reply) = post(&base, &before).await;
    assert_eq!(status, 200, "{reply}");

    // An update whose turn commits on the primary but whose answer is lost. Its commit
    // is held (a deferred trigger on its message, run at commit, polls until the test
    // lets go of an advisory lock: polls, because a lock wait would end at the bot's
    // lock timeout) while the synchronous standby is stopped; released, the primary
    // commits the turn and waits for the standby's acknowledgement, and the test
    // terminates the backend there: committed, the connection gone before the answer.
    let mut primary = conn_to(&pg).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE FUNCTION hold_commit() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN
                WHILE NOT pg_try_advisory_xact_lock(23) LOOP PERFORM pg_sleep(0.005); END LOOP;
                RETURN NULL;
             END $$;
         CREATE CONSTRAINT TRIGGER hold_commit AFTER INSERT ON messages
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
             WHEN (NEW.content = '{LOST}') EXECUTE FUNCTION hold_commit();
         SELECT pg_advisory_lock(23);"
    )))
    .execute(&mut primary)
    .await
    .unwrap();
    let lost = crate::serve::text_update(2, user, LOST);
    let delivery = actix_rt::spawn({
        let (base, lost) = (base.clone(), lost.clone());
        async move { post(&base, &lost).await }
    });
    let pid = backend(
        &mut primary,
        "SELECT pid FROM pg_stat_activity WHERE datname = 'botdb' AND wait_event = 'PgSleep' \
            AND pid <> $1",
        0,
        "held at its commit",
    )
    .await;
    stop_fast(&standby).await;
    sqlx::query("SELECT pg_advisory_unlock(23)")
        .execute(&mut primary)
        .await
        .unwrap();
    backend(
        &mut primary,
        "SELECT pid FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'SyncRep'",
        pid,
        "waiting for the standby's acknowledgement",
    )
    .await;
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&mut primary)
        .await
        .unwrap();
    assert!(terminated);
    let (status, retry_after, body) = delivery.await.unwrap();
    assert_eq!(status, 503, "the outcome is unknown: {body}");
    assert!(retry_after.is_some(), "503 without Retry-After");
    // It committed: both of its messages are on the primary (visible once the
    // terminated backend has finished its commit).
    let committed = crate::helpers::eventually(Duration::from_secs(60), async || {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE user_id = $1")
            .bind(user)
            .fetch_one(&mut primary)
            .await
            .unwrap();
        n == 4
    })
    .await;
    assert!(committed, "the turn whose answer was lost is not on the primary");
    // The standby back; dropping the trigger commits once the standby has everything
    // before it, the lost answer's turn included.
    restart(&standby).await;
    tokio::time::timeout(
        Duration::from_secs(60),
        sqlx::raw_sql("DROP TRIGGER hold_commit ON messages; DROP FUNCTION hold_commit()")
            .execute(&mut primary),
    )
    .await
    .expect("the standby acknowledges again")
    .unwrap();
    drop(primary);

    stop(&pg).await;
    // No primary: the update is refused with 503 and Retry-After, so Telegram redelivers.
    let during = crate::serve::text_update(3, user, "sent while no server takes writes");
    let (status, retry_after, body) = post(&base, &during).await;
    assert_eq!(status, 503, "{body}");
    assert!(retry_after.is_some(), "503 without Retry-After");
    assert!(!body.to_string().contains(pg.password().expose_secret()));

    promote(&standby).await;
    let mut conn = conn_to(&standby).await;
    let stored = async |conn: &mut PgConnection| -> Vec<(String, String)> {
        sqlx::query_as("SELECT role, content FROM messages WHERE user_id = $1 ORDER BY created_at, seq")
            .bind(user)
            .fetch_all(conn)
            .await
            .unwrap()
    };
    // Telegram redelivers the update whose answer was lost: answered with the turn
    // stored the first time, nothing stored again.
    let (lost_deliveries, lost_reply) = redeliver(&base, &lost).await;
    let turns = stored(&mut conn).await;
    assert_eq!(turns.len(), 4, "{turns:?}");
    assert_eq!((turns[2].0.as_str(), turns[2].1.as_str()), ("user", LOST));
    assert_eq!(turns[3].0, "assistant");
    assert_eq!(
        lost_reply["text"].as_str(),
        Some(turns[3].1.as_str()),
        "the copy is answered with the stored turn's reply"
    );
    // And the one refused while no primary took writes, until it gets a 200.
    let (deliveries, reply) = redeliver(&base, &during).await;
    // A later copy (a 200 Telegram did not get in time) gets the same reply.
    let (status, _, again) = post(&base, &during).await;
    assert_eq!((status, &again), (200, &reply));

    let turns = stored(&mut conn).await;
    let said: Vec<&str> = turns
        .iter()
        .filter(|(role, _)| role == "user")
        .map(|(_, content)| content.as_str())
        .collect();
    assert_eq!(
        said,
        ["before the failover", LOST, "sent while no server takes writes"],
        "every turn on the promoted standby, each redelivered one once"
    );
    assert_eq!(turns.len(), 6, "a reply each: {turns:?}");
    eprintln!(
        "FAILOVER webhook: a turn committed on the primary with its answer lost (its commit cut while waiting for \
         the standby): 503, its copy after the promotion answered at delivery {lost_deliveries} with the stored \
         reply; 503 with Retry-After while no primary, after the promotion answered 200 at delivery \
         {deliveries}, a later copy with the same reply; each stored once"
    );
    let status = crate::serve::sigterm(&mut served.child).await;
    assert_eq!(status.code(), Some(0));
}
