//! Replica reads with read-your-writes (issue 16): `DATABASE_REPLICA_URL` against a real
//! primary and a real streaming standby from the installed binaries. `GetHistory`,
//! `GetSettings` and `GetContext` go to the replica only once it has replayed the
//! reading user's own last write; a lagging replica is skipped, a dead one falls back to
//! the primary. Batched, several users' reads are one read: on the replica when it has
//! every one of their writes, else on the primary.

use std::time::{Duration, Instant};

use botdb::actors::{
    AppendTurn, DbHandle, DbSystem, EnsureUser, GetContext, GetHistory, GetSettings, UpdateSettings,
};
use botdb::embedded::{EmbeddedPostgres, Replication, StopMode};
use botdb::model::PRIVATE_CHAT;
use botdb::{Config, Database, ReplicaReads};
use secrecy::ExposeSecret;
use sqlx::Connection;

/// A migrated primary (database `bot`) and its asynchronous standby.
async fn pair() -> (EmbeddedPostgres, EmbeddedPostgres) {
    pair_with(Replication::Asynchronous).await
}

async fn pair_with(mode: Replication) -> (EmbeddedPostgres, EmbeddedPostgres) {
    let pg = tokio::task::spawn_blocking(EmbeddedPostgres::start)
        .await
        .unwrap()
        .unwrap();
    pg.create_database("bot").await.unwrap();
    let db = Database::connect(&pg.config("bot")).await.unwrap();
    db.migrate().await.unwrap();
    db.close().await;
    let standby = pg.start_standby(mode).await.unwrap();
    (pg, standby)
}

/// The primary, with `replicas` (URL host lists) for reads.
fn config(pg: &EmbeddedPostgres, replica_ports: &[u16], max_lag: Duration) -> Config {
    let hosts: Vec<String> = replica_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    Config::builder()
        .url(pg.url("bot").expose_secret().to_string())
        .replica_url(format!(
            "postgres://postgres:{}@{}/bot",
            pg.password().expose_secret(),
            hosts.join(",")
        ))
        .replica_max_lag(max_lag)
        .replica_wait(Duration::from_millis(20))
        .pool_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn connect(server: &EmbeddedPostgres) -> sqlx::PgConnection {
    sqlx::PgConnection::connect_with(&server.config("bot").connect_options().unwrap())
        .await
        .unwrap()
}

async fn lsn(conn: &mut sqlx::PgConnection, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(conn).await.unwrap()
}

const PRIMARY_LSN: &str = "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint";
const REPLAYED_LSN: &str = "SELECT (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint";

/// Waits (bounded) until the standby has replayed everything the primary wrote so far.
async fn caught_up(pg: &EmbeddedPostgres, standby: &EmbeddedPostgres) {
    let target = lsn(&mut connect(pg).await, PRIMARY_LSN).await;
    let mut conn = connect(standby).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while lsn(&mut conn, REPLAYED_LSN).await < target {
        assert!(
            Instant::now() < deadline,
            "the standby did not catch up within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn turn(h: &DbHandle, user_id: i64, text: &str) {
    h.send(AppendTurn {
        user_id,
        chat_id: PRIVATE_CHAT,
        user_text: text.to_string(),
        reply_text: format!("re: {text}"),
        key: None,
    })
    .await
    .unwrap();
}

async fn history(h: &DbHandle, user_id: i64) -> Vec<String> {
    h.send(GetHistory {
        user_id,
        chat_id: PRIVATE_CHAT,
        limit: Some(1000),
    })
    .await
    .unwrap()
    .into_iter()
    .map(|m| m.content)
    .collect()
}

async fn context(h: &DbHandle, user_id: i64) -> Vec<String> {
    h.send(GetContext {
        user_id,
        chat_id: PRIVATE_CHAT,
        max_chars: None,
        max_messages: Some(1000),
    })
    .await
    .unwrap()
    .into_iter()
    .map(|m| m.content)
    .collect()
}

/// Actors over the primary with `standby` as replica (lag limit `max_lag`), and
/// `reader`'s first turn, replayed there and read from there.
async fn reading_from_the_replica(
    pg: &EmbeddedPostgres,
    standby: &EmbeddedPostgres,
    max_lag: Duration,
    reader: i64,
) -> (Database, DbHandle) {
    let db = Database::connect(&config(pg, &[standby.port()], max_lag))
        .await
        .unwrap();
    let h = DbSystem::start(db.clone(), Default::default());
    h.send(EnsureUser { user_id: reader }).await.unwrap();
    turn(&h, reader, "hello").await;
    caught_up(pg, standby).await;
    let before = db.replica_reads();
    assert_eq!(history(&h, reader).await.len(), 2);
    assert_eq!(delta(db.replica_reads(), before).on_replica, 1);
    (db, h)
}

/// Reads `reader`'s history (its first turn) until one read is sent to the primary for
/// the replica's lag (bounded: 30 s; a replica's state is trusted for 250 ms, so reads
/// meanwhile may still use it).
async fn until_skipped_for_lag(db: &Database, h: &DbHandle, reader: i64, never: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let before = db.replica_reads();
        assert_eq!(history(h, reader).await.len(), 2);
        let reads = delta(db.replica_reads(), before);
        if reads.lagging == 1 {
            return;
        }
        assert!(Instant::now() < deadline, "{never}: {reads:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn delta(after: ReplicaReads, before: ReplicaReads) -> ReplicaReads {
    ReplicaReads {
        on_replica: after.on_replica - before.on_replica,
        behind: after.behind - before.behind,
        lagging: after.lagging - before.lagging,
        down: after.down - before.down,
    }
}

#[actix_rt::test]
async fn a_reader_never_misses_its_own_write_while_the_replica_is_paused() {
    let (pg, standby) = pair().await;
    let db = Database::connect(&config(&pg, &[standby.port()], Duration::from_secs(600)))
        .await
        .unwrap();
    let h = DbSystem::start(db.clone(), Default::default());
    let (writer, other) = (1_001, 1_002);
    for user in [writer, other] {
        h.send(EnsureUser { user_id: user }).await.unwrap();
        turn(&h, user, "before the pause").await;
    }
    caught_up(&pg, &standby).await;

    // Replayed: both users' reads are the replica's.
    let before = db.replica_reads();
    assert_eq!(history(&h, writer).await.len(), 2);
    assert_eq!(history(&h, other).await.len(), 2);
    let served = delta(db.replica_reads(), before);
    assert_eq!(
        served.on_replica, 2,
        "a replica that has the user's writes serves the reads: {served:?}"
    );

    // Replay paused: the standby keeps receiving WAL but applies none of it.
    let mut on_standby = connect(&standby).await;
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&mut on_standby)
        .await
        .unwrap();
    let before = db.replica_reads();
    let rounds = 20;
    for i in 0..rounds {
        let text = format!("sent while paused {i}");
        turn(&h, writer, &text).await;
        let seen = history(&h, writer).await;
        assert_eq!(seen.len(), 2 * (i + 2), "history after turn {i}");
        assert!(
            seen.contains(&text),
            "the reader's own write is in its history: {seen:?}"
        );
        assert!(context(&h, writer).await.contains(&text), "and in its context");
        h.send(UpdateSettings {
            user_id: writer,
            max_history_messages: Some(10 + i as i64),
            ..Default::default()
        })
        .await
        .unwrap();
        let settings = h.send(GetSettings { user_id: writer }).await.unwrap().unwrap();
        assert_eq!(
            settings.max_history_messages,
            10 + i as i32,
            "its own settings change"
        );
        // The other user wrote nothing since the replica's position: the replica serves it.
        assert_eq!(history(&h, other).await.len(), 2);
    }
    let during = delta(db.replica_reads(), before);
    // The standby really was behind the writer all along.
    let replayed = lsn(&mut on_standby, REPLAYED_LSN).await;
    let written = lsn(&mut connect(&pg).await, PRIMARY_LSN).await;
    println!(
        "paused replica: {rounds} turns, their reads: {} on the primary (replica behind), {} on the replica \
         (the other user's); replica {} bytes of WAL behind",
        during.behind,
        during.on_replica,
        written - replayed
    );
    assert!(replayed < written, "replay was paused");
    assert_eq!(
        during.behind,
        3 * rounds as u64,
        "every read of the writer went to the primary: {during:?}"
    );
    assert_eq!(
        during.on_replica, rounds as u64,
        "every read of the other user went to the replica: {during:?}"
    );

    // Positions are kept per table: a bot turn's `EnsureUser` (users, settings) does not
    // hold up its context read (messages only, with an explicit limit), while a settings
    // read after it waits for the replica or goes to the primary.
    let before = db.replica_reads();
    h.send(EnsureUser { user_id: other }).await.unwrap();
    assert_eq!(context(&h, other).await.len(), 2);
    assert!(h.send(GetSettings { user_id: other }).await.unwrap().is_some());
    let after_ensure = delta(db.replica_reads(), before);
    assert_eq!(
        after_ensure.on_replica, 1,
        "the context read went to the replica: {after_ensure:?}"
    );
    assert_eq!(
        after_ensure.behind, 1,
        "the settings read did not: {after_ensure:?}"
    );

    // Replay resumed: once caught up, the writer's reads are the replica's again.
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&mut on_standby)
        .await
        .unwrap();
    caught_up(&pg, &standby).await;
    let before = db.replica_reads();
    assert_eq!(history(&h, writer).await.len(), 2 * (rounds + 1));
    assert_eq!(delta(db.replica_reads(), before).on_replica, 1);
    // Users whose writes every replica replayed are forgotten (the floor covers them).
    assert!(db.replica_tracked() <= 1, "tracked: {}", db.replica_tracked());

    // The bot's turn with replicas: `BeginTurn` reads no context on the primary, the
    // turn's `GetContext` is a routed read (the replica's or, behind, the primary's).
    let bot = botdb::bot::Bot::new(h.clone(), std::sync::Arc::new(botdb::bot::EchoModel));
    let update = serde_json::from_value(serde_json::json!({
        "update_id": 9_001,
        "message": {"from": {"id": other}, "chat": {"id": other}, "text": "again"}
    }))
    .unwrap();
    let before = db.replica_reads();
    let Ok(botdb::bot::Outcome::Reply(reply)) = bot.handle(update).await else {
        panic!("no reply")
    };
    assert!(reply.text.contains("context: 3 messages"), "{}", reply.text);
    let routed = delta(db.replica_reads(), before);
    assert_eq!(
        routed.on_replica + routed.behind + routed.lagging + routed.down,
        1,
        "the bot's context read was routed: {routed:?}"
    );
    let _ = on_standby.close().await;
    h.shutdown().await;
    // Closed is closed, replicas too.
    let after = db
        .read_replica(&[other], &["messages"], async |c| {
            botdb::repo::messages::history(&mut *c, other, 10).await
        })
        .await;
    assert!(matches!(after, Err(botdb::Error::ShuttingDown)), "{after:?}");
}

#[actix_rt::test]
async fn a_replica_lagging_more_than_the_limit_is_skipped() {
    let (pg, standby) = pair().await;
    let reader = 2_001;
    let (db, h) = reading_from_the_replica(&pg, &standby, Duration::from_millis(200), reader).await;

    // Paused with WAL waiting (another user writes): the lag grows past 200 ms.
    let mut on_standby = connect(&standby).await;
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&mut on_standby)
        .await
        .unwrap();
    h.send(EnsureUser { user_id: 2_002 }).await.unwrap();
    turn(&h, 2_002, "keeps the primary moving").await;
    // The reader wrote nothing since: only the lag can send its read to the primary.
    until_skipped_for_lag(&db, &h, reader, "a paused replica was never skipped for its lag").await;
    let _ = on_standby.close().await;
    h.shutdown().await;
}

#[actix_rt::test]
async fn a_replica_that_stopped_streaming_is_skipped_though_it_looks_idle() {
    // A standby whose primary is gone (or that cannot follow a promoted one) has
    // received exactly what it replayed: by PostgreSQL's usual measure its lag is 0,
    // while it is frozen. botdb uses a replica only while its WAL receiver streams.
    let (pg, standby) = pair().await;
    let reader = 4_001;
    let (db, h) = reading_from_the_replica(&pg, &standby, Duration::from_secs(600), reader).await;

    // The standby stops streaming: no primary to follow.
    let mut on_standby = connect(&standby).await;
    sqlx::query("ALTER SYSTEM SET primary_conninfo = ''")
        .execute(&mut on_standby)
        .await
        .unwrap();
    sqlx::query("SELECT pg_reload_conf()")
        .execute(&mut on_standby)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let streaming: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_wal_receiver)")
            .fetch_one(&mut on_standby)
            .await
            .unwrap();
        if !streaming {
            break;
        }
        assert!(Instant::now() < deadline, "the WAL receiver did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let idle: bool =
        sqlx::query_scalar("SELECT pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn()")
            .fetch_one(&mut on_standby)
            .await
            .unwrap();
    assert!(
        idle,
        "the frozen standby looks idle: everything received is replayed"
    );
    // The reader wrote nothing since: the replica has its writes, but is not used.
    until_skipped_for_lag(&db, &h, reader, "a replica that stopped streaming was still used").await;
    let _ = on_standby.close().await;
    h.shutdown().await;
}

#[actix_rt::test]
async fn with_a_replica_down_reads_fall_back_to_the_primary_and_a_live_one_is_used() {
    let (pg, standby) = pair().await;
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    // Two replicas, one of them never up: every read is answered, by the live one.
    let db = Database::connect(&config(&pg, &[dead, standby.port()], Duration::from_secs(600)))
        .await
        .unwrap();
    let h = DbSystem::start(db.clone(), Default::default());
    let user = 3_001;
    h.send(EnsureUser { user_id: user }).await.unwrap();
    turn(&h, user, "hello").await;
    caught_up(&pg, &standby).await;
    let before = db.replica_reads();
    for _ in 0..10 {
        assert_eq!(history(&h, user).await.len(), 2);
    }
    let reads = delta(db.replica_reads(), before);
    assert_eq!(
        reads.on_replica, 10,
        "the live replica answers every read: {reads:?}"
    );

    // Now the live one goes too: reads come from the primary, still right.
    standby.stop(StopMode::Immediate).unwrap();
    turn(&h, user, "after the replicas are gone").await;
    let before = db.replica_reads();
    for _ in 0..10 {
        let seen = history(&h, user).await;
        assert_eq!(seen.len(), 4);
        assert!(seen.contains(&"after the replicas are gone".to_string()));
    }
    let reads = delta(db.replica_reads(), before);
    println!("replicas down: 10 reads, {reads:?}");
    assert_eq!(reads.on_replica, 0);
    assert_eq!(
        reads.down + reads.behind,
        10,
        "every read fell back to the primary: {reads:?}"
    );
    assert!(
        reads.down >= 1,
        "a replica that cannot be reached is counted as down: {reads:?}"
    );
    h.shutdown().await;
}

#[actix_rt::test]
async fn after_a_failover_positions_of_the_old_primary_are_forgotten_and_the_promoted_replica_not_read() {
    let (pg, standby) = pair_with(Replication::Synchronous).await;
    // Writes to whichever of the two takes them; reads may go to the standby.
    let config = Config::builder()
        .url(format!(
            "postgres://postgres:{}@127.0.0.1:{},127.0.0.1:{}/bot?target_session_attrs=read-write",
            pg.password().expose_secret(),
            pg.port(),
            standby.port()
        ))
        .replica_url(standby.url("bot").expose_secret().to_string())
        .replica_max_lag(Duration::from_secs(600))
        .pool_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let db = Database::connect(&config).await.unwrap();
    let h = DbSystem::start(db.clone(), Default::default());
    let (before_failover, after_failover) = (5_001, 5_002);
    h.send(EnsureUser {
        user_id: before_failover,
    })
    .await
    .unwrap();
    turn(&h, before_failover, "on the first primary").await;
    // EnsureUser: users and user_settings; the turn: messages.
    assert_eq!(db.replica_tracked(), 3);

    pg.stop(StopMode::Immediate).unwrap();
    standby.promote().unwrap();
    // The pool finds the promoted standby (requests in flight may fail, typed, meanwhile).
    let deadline = Instant::now() + Duration::from_secs(60);
    while h
        .send(EnsureUser {
            user_id: after_failover,
        })
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "no write reached the promoted standby");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    turn(&h, after_failover, "on the promoted standby").await;
    // The old primary's positions are gone: only what was written on the new one.
    assert_eq!(db.replica_tracked(), 3, "positions of the old primary were kept");
    // The replica is the primary now (not in recovery): reads go to the primary, and see it all.
    let before = db.replica_reads();
    assert_eq!(history(&h, before_failover).await.len(), 2);
    assert_eq!(history(&h, after_failover).await.len(), 2);
    let reads = delta(db.replica_reads(), before);
    assert_eq!(reads.on_replica, 0, "{reads:?}");
    h.shutdown().await;
}

/// What one kind of batched read answered, user by user, and where its reads went.
struct Batched<T> {
    answers: Vec<T>,
    reads: ReplicaReads,
}

/// Sends `requests` (one per user, different users) together and asserts the `actor`
/// ran them as ONE batch of all of them: its stats count exactly one more batch, of
/// exactly this many requests.
async fn one_batch<M>(db: &Database, h: &DbHandle, actor: &str, requests: Vec<M>) -> Batched<M::Output>
where
    M: botdb::actors::DbRequest,
{
    let n = requests.len();
    let counts = async || {
        let stats = h.stats().await.unwrap();
        let a = stats.actors.into_iter().find(|a| a.actor == actor).unwrap();
        (a.batches, a.batched_requests, a.largest_batch)
    };
    let (batches, batched, _) = counts().await;
    let before = db.replica_reads();
    let answers: Vec<M::Output> = futures::future::join_all(requests.into_iter().map(|r| h.send(r)))
        .await
        .into_iter()
        .map(|a| a.unwrap())
        .collect();
    let reads = delta(db.replica_reads(), before);
    let (batches_after, batched_after, largest) = counts().await;
    assert_eq!(
        (batches_after - batches, batched_after - batched),
        (1, n as u64),
        "{actor}: the {n} requests ran as one batch (batches, requests in batches)"
    );
    assert!(largest >= n, "{actor}: largest batch {largest}");
    Batched { answers, reads }
}

fn histories(users: &[i64]) -> Vec<GetHistory> {
    users
        .iter()
        .map(|&user_id| GetHistory {
            user_id,
            chat_id: PRIVATE_CHAT,
            limit: Some(1000),
        })
        .collect()
}

fn contexts(users: &[i64]) -> Vec<GetContext> {
    users
        .iter()
        .map(|&user_id| GetContext {
            user_id,
            chat_id: PRIVATE_CHAT,
            max_chars: None,
            max_messages: Some(1000),
        })
        .collect()
}

fn contents(messages: &[botdb::model::Message]) -> Vec<String> {
    messages.iter().map(|m| m.content.clone()).collect()
}

/// A user's messages newest first, as a history read returns them, from the list of
/// what was written oldest first.
fn newest_first(written: &[String]) -> Vec<String> {
    written.iter().rev().cloned().collect()
}

/// The three batched reads of `users` (histories, contexts, settings), each as one
/// batch; every user's answer is checked against `expected` (messages oldest first,
/// history length) and each batch's read against `route`.
async fn check_batched_reads(
    db: &Database,
    h: &DbHandle,
    users: &[i64],
    expected: &dyn Fn(usize) -> (Vec<String>, i32),
    route: ReplicaReads,
    when: &str,
) {
    let history = one_batch(db, h, "messages", histories(users)).await;
    let context = one_batch(db, h, "messages", contexts(users)).await;
    let settings = one_batch(
        db,
        h,
        "user_settings",
        users.iter().map(|&user_id| GetSettings { user_id }).collect(),
    )
    .await;
    // Every user's answers, so that a failure shows all who got what was not theirs.
    let mut wrong = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let (messages, limit) = expected(i);
        let messages = newest_first(&messages);
        for (what, got) in [
            ("history", contents(&history.answers[i])),
            ("context", contents(&context.answers[i])),
        ] {
            if got != messages {
                wrong.push(format!("user {user}'s {what}: {got:?}, not {messages:?}"));
            }
        }
        let got = settings.answers[i]
            .as_ref()
            .map(|s| (s.user_id, s.max_history_messages));
        if got != Some((*user, limit)) {
            wrong.push(format!(
                "user {user}'s settings: {got:?}, not {:?}",
                Some((*user, limit))
            ));
        }
    }
    assert!(wrong.is_empty(), "{when}:\n{}", wrong.join("\n"));
    for (what, reads) in [
        ("history", history.reads),
        ("context", context.reads),
        ("settings", settings.reads),
    ] {
        assert_eq!(reads, route, "{when}: where the batched {what} read went");
    }
}

#[actix_rt::test]
async fn batched_reads_of_several_users_are_one_replica_read_that_honours_each_users_writes() {
    let (pg, standby) = pair().await;
    let db = Database::connect(&config(&pg, &[standby.port()], Duration::from_secs(600)))
        .await
        .unwrap();
    let h = DbSystem::start(db.clone(), Default::default());
    let users: Vec<i64> = (6_001..=6_008).collect();
    let outsider = 6_100;
    // What each user wrote, oldest first: user i has i + 1 turns (so that answers handed
    // to the wrong user differ) and a history length of its own.
    let mut written: Vec<Vec<String>> = vec![Vec::new(); users.len()];
    let limit = |i: usize| 10 + i as i32;
    for (i, &user) in users.iter().enumerate() {
        h.send(EnsureUser { user_id: user }).await.unwrap();
        h.send(UpdateSettings {
            user_id: user,
            max_history_messages: Some(i64::from(limit(i))),
            ..Default::default()
        })
        .await
        .unwrap();
        for k in 0..=i {
            let text = format!("user {user} turn {k}");
            turn(&h, user, &text).await;
            written[i].extend([text.clone(), format!("re: {text}")]);
        }
    }
    h.send(EnsureUser { user_id: outsider }).await.unwrap();
    caught_up(&pg, &standby).await;

    // Replay paused. Then, on the primary behind botdb's back (so no position of
    // botdb's says the replica lacks them), one message and another history length for
    // each user: what a read shows of them tells which server answered. And a write of
    // another user through the actors, which the replica does not have either.
    let mut on_standby = connect(&standby).await;
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&mut on_standby)
        .await
        .unwrap();
    let mut on_primary = connect(&pg).await;
    let marker = |user: i64| format!("written on the primary alone for {user}");
    let marked_limit = |i: usize| 500 + i as i32;
    for (i, &user) in users.iter().enumerate() {
        let message = botdb::model::NewMessage::new(user, botdb::model::Role::User, marker(user)).unwrap();
        botdb::repo::messages::append(&mut on_primary, &message)
            .await
            .unwrap();
        botdb::repo::settings::set_max_history(&mut on_primary, user, i64::from(marked_limit(i)))
            .await
            .unwrap();
    }
    turn(&h, outsider, "the outsider's write, not replayed").await;
    let unreplayed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM messages WHERE content LIKE 'written on the primary alone%'",
    )
    .fetch_one(&mut on_standby)
    .await
    .unwrap();
    assert_eq!(
        unreplayed, 0,
        "the paused replica lacks what the primary alone has"
    );

    // 1. Each user's last write through botdb is replayed; another user's is not, which
    // concerns none of them: each batch is one read, on the replica, and shows none of
    // what the primary alone has.
    let on_replica = ReplicaReads {
        on_replica: 1,
        ..Default::default()
    };
    check_batched_reads(
        &db,
        &h,
        &users,
        &|i| (written[i].clone(), limit(i)),
        on_replica,
        "replayed, another user's write not",
    )
    .await;

    // 2. One user of the batch writes (history and settings), the replica still
    // paused: the batch must not miss it, so it reads from the primary, where each user
    // also sees what the primary alone has.
    let (writer, writer_text) = (2, "the writer's latest");
    turn(&h, users[writer], writer_text).await;
    h.send(UpdateSettings {
        user_id: users[writer],
        max_history_messages: Some(900),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut on_the_primary = written.clone();
    for (i, &user) in users.iter().enumerate() {
        on_the_primary[i].push(marker(user));
    }
    on_the_primary[writer].extend([writer_text.to_string(), format!("re: {writer_text}")]);
    let primary_limit = |i: usize| if i == writer { 900 } else { marked_limit(i) };
    let behind = ReplicaReads {
        behind: 1,
        ..Default::default()
    };
    check_batched_reads(
        &db,
        &h,
        &users,
        &|i| (on_the_primary[i].clone(), primary_limit(i)),
        behind,
        "one user's write not replayed",
    )
    .await;

    // 3. Replay resumed and caught up: one read on the replica again, the writer's
    // latest write in it.
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&mut on_standby)
        .await
        .unwrap();
    caught_up(&pg, &standby).await;
    check_batched_reads(
        &db,
        &h,
        &users,
        &|i| (on_the_primary[i].clone(), primary_limit(i)),
        on_replica,
        "replayed again",
    )
    .await;
    let _ = on_standby.close().await;
    let _ = on_primary.close().await;
    h.shutdown().await;
}
