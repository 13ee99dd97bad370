//! The session scope: commit on Ok, rollback on Err, on panic, on a dropped future.

use std::time::Duration;

use botdb::{Error, repo};

use crate::helpers::TestDb;

async fn user_exists(t: &TestDb, id: i64) -> bool {
    repo::users::get(&mut t.conn().await, id).await.unwrap().is_some()
}

/// A pool of exactly one connection: what one session leaves behind on it, the next
/// session sees.
async fn single_connection_db() -> TestDb {
    TestDb::with(|b| b.pool_size(1).max_overflow(0)).await
}

#[tokio::test]
async fn commits_when_the_body_returns_ok() {
    let t = TestDb::new().await;
    let user =
        t.db.session(async |tx| repo::users::create(tx, 1).await)
            .await
            .unwrap();
    assert_eq!(user.id, 1);
    assert!(user_exists(&t, 1).await);
}

#[tokio::test]
async fn rolls_back_when_the_body_returns_err() {
    let t = TestDb::new().await;
    let result: botdb::Result<()> =
        t.db.session(async |tx| {
            repo::users::create(&mut *tx, 1).await?;
            repo::users::create(&mut *tx, 2).await?;
            Err(Error::invalid("test", "abort after two writes"))
        })
        .await;
    assert!(matches!(result, Err(Error::InvalidInput { field: "test", .. })));
    assert!(!user_exists(&t, 1).await);
    assert!(!user_exists(&t, 2).await);
}

#[tokio::test]
async fn rolls_back_when_the_body_panics_and_the_connection_is_clean_after() {
    let t = single_connection_db().await;
    let db = t.db.clone();
    let task = tokio::spawn(async move {
        db.session(async |tx| {
            repo::users::create(tx, 1).await?;
            panic!("injected panic inside a session");
            #[allow(unreachable_code)]
            Ok(())
        })
        .await
    });
    let joined = task.await;
    assert!(
        joined.unwrap_err().is_panic(),
        "the panic is resumed to the caller"
    );
    // The same (only) connection serves the next session: the panicked transaction must
    // be gone, or this commit would carry user 1 with it.
    t.db.session(async |tx| repo::users::create(tx, 2).await)
        .await
        .unwrap();
    assert!(!user_exists(&t, 1).await);
    assert!(user_exists(&t, 2).await);
}

#[tokio::test]
async fn rolls_back_when_the_future_is_dropped_mid_way() {
    let t = single_connection_db().await;
    let (written_tx, written_rx) = tokio::sync::oneshot::channel();
    let db = t.db.clone();
    let task = tokio::spawn(async move {
        db.session(async |tx| {
            repo::users::create(tx, 1).await?;
            let _ = written_tx.send(());
            // Never finishes: the caller gives up on us.
            std::future::pending::<()>().await;
            Ok(())
        })
        .await
    });
    written_rx.await.expect("the session wrote its row");
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    tokio::time::timeout(
        Duration::from_secs(30),
        t.db.session(async |tx| repo::users::create(tx, 2).await),
    )
    .await
    .expect("the connection came back to the pool")
    .unwrap();
    assert!(
        !user_exists(&t, 1).await,
        "the dropped session's write must be rolled back"
    );
    assert!(user_exists(&t, 2).await);
}

#[tokio::test]
async fn session_futures_are_send() {
    // A session can run on any tokio worker (actix-web handlers, spawned tasks).
    let t = TestDb::new().await;
    let db = t.db.clone();
    let n = tokio::spawn(async move { db.session(async |tx| repo::messages::count(tx, 5).await).await })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n.live, 0);
}

/// Waits until a backend of database `name` is running a statement that starts with
/// `query`, and terminates it; returns its pid.
async fn terminate_while_running(t: &TestDb, query: &str) -> i32 {
    let mut observer = t.conn().await;
    let mut pid = None;
    let found = crate::helpers::eventually(Duration::from_secs(20), async || {
        pid = sqlx::query_scalar::<_, i32>(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND state = 'active' \
               AND query LIKE $2 AND pid <> pg_backend_pid()",
        )
        .bind(&t.name)
        .bind(format!("{query}%"))
        .fetch_optional(&mut observer)
        .await
        .unwrap();
        pid.is_some()
    })
    .await;
    assert!(found, "no backend ran {query}");
    let pid = pid.unwrap();
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&mut observer)
        .await
        .unwrap();
    assert!(killed);
    pid
}

#[tokio::test]
async fn a_connection_lost_during_commit_is_reported_as_outcome_unknown() {
    let t = TestDb::new().await;
    // A deferred constraint trigger runs at COMMIT: this one sleeps there, which gives
    // the test the moment to cut the connection while COMMIT is under way.
    sqlx::raw_sql(
        "CREATE TABLE slow_commit (id int);
         CREATE FUNCTION sleep_at_commit() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN PERFORM pg_sleep(30); RETURN NULL; END $$;
         CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON slow_commit
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION sleep_at_commit();",
    )
    .execute(&mut t.conn().await)
    .await
    .unwrap();
    let db = t.db.clone();
    let session = tokio::spawn(async move {
        db.session(async |tx| {
            repo::users::create(&mut *tx, 1).await?;
            sqlx::query("INSERT INTO slow_commit VALUES (1)")
                .execute(&mut *tx)
                .await?;
            Ok(())
        })
        .await
    });
    terminate_while_running(&t, "COMMIT").await;
    let answer = tokio::time::timeout(Duration::from_secs(20), session)
        .await
        .expect("answered")
        .unwrap();
    assert!(
        matches!(answer, Err(Error::OutcomeUnknown { .. })),
        "COMMIT was under way: the outcome is unknown, not 'nothing written': {answer:?}"
    );
    assert!(
        !answer.as_ref().unwrap_err().is_transient(),
        "not safe to retry blindly"
    );

    // A single-statement write (autocommit) cut while it runs: unknown too.
    let db = t.db.clone();
    let write = tokio::spawn(async move {
        db.autocommit(async |c| {
            Ok(sqlx::query(
                "WITH u AS (INSERT INTO users (id) VALUES (2) RETURNING id) SELECT pg_sleep(30) FROM u",
            )
            .execute(c)
            .await?)
        })
        .await
    });
    terminate_while_running(&t, "WITH u AS").await;
    let answer = write.await.unwrap();
    assert!(matches!(answer, Err(Error::OutcomeUnknown { .. })), "{answer:?}");

    // A read cut while it runs: nothing to commit, so plainly Unavailable.
    let db = t.db.clone();
    let read = tokio::spawn(async move {
        db.read(async |c| Ok(sqlx::query("SELECT pg_sleep(30)").execute(c).await?))
            .await
    });
    terminate_while_running(&t, "SELECT pg_sleep").await;
    let answer = read.await.unwrap();
    assert!(matches!(answer, Err(Error::Unavailable { .. })), "{answer:?}");

    // A session cut before COMMIT was sent: known not to be committed.
    let db = t.db.clone();
    let early = tokio::spawn(async move {
        db.session(async |tx| {
            repo::users::create(&mut *tx, 3).await?;
            sqlx::query("SELECT pg_sleep(30)").execute(&mut *tx).await?;
            Ok(())
        })
        .await
    });
    terminate_while_running(&t, "SELECT pg_sleep").await;
    let answer = early.await.unwrap();
    assert!(matches!(answer, Err(Error::Unavailable { .. })), "{answer:?}");
    assert!(answer.unwrap_err().is_transient());
    assert!(!user_exists(&t, 3).await);
}
