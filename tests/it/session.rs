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
