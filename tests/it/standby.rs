//! A streaming standby beside the throwaway cluster (issue 16, first step): built with
//! the installed binaries, synchronous or not, promoted after the primary's loss.

use botdb::embedded::{EmbeddedPostgres, Replication, StopMode};
use botdb::{Database, repo};
use sqlx::Connection;

async fn primary() -> EmbeddedPostgres {
    let pg = tokio::task::spawn_blocking(EmbeddedPostgres::start)
        .await
        .unwrap()
        .unwrap();
    pg.create_database("bot").await.unwrap();
    pg
}

#[tokio::test]
async fn a_synchronous_standby_has_every_acknowledged_message_after_the_primary_is_lost() {
    let pg = primary().await;
    let standby = pg.start_standby(Replication::Synchronous).await.unwrap();
    let db = Database::connect(&pg.config("bot")).await.unwrap();
    db.migrate().await.unwrap();
    repo::users::create(db.pool(), 1).await.unwrap();
    // Every write acknowledged by the primary (each its own commit).
    let mut acked = Vec::new();
    for i in 0..200 {
        let msg = db
            .limits()
            .message(1, botdb::model::Role::User, format!("m{i}"))
            .unwrap();
        acked.push(repo::messages::append(db.pool(), &msg).await.unwrap().id);
    }
    // The standby is readable meanwhile, and refuses writes.
    let mut on_standby = sqlx::PgConnection::connect_with(&standby.config("bot").connect_options().unwrap())
        .await
        .unwrap();
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(&mut on_standby)
        .await
        .unwrap();
    assert!(in_recovery);
    let refused = sqlx::query("INSERT INTO users (id) VALUES (2)")
        .execute(&mut on_standby)
        .await;
    assert!(refused.is_err(), "a standby is read-only");
    let _ = on_standby.close().await;

    // The primary dies at once (no shutdown checkpoint, nothing flushed on the way out).
    db.close().await;
    pg.stop(StopMode::Immediate).unwrap();
    standby.promote().unwrap();
    let promoted = Database::connect(&standby.config("bot")).await.unwrap();
    let found = repo::messages::by_ids(promoted.pool(), &acked).await.unwrap();
    let lost = found.iter().filter(|m| m.is_none()).count();
    println!(
        "synchronous standby: acknowledged {}, found {}, lost {lost}",
        acked.len(),
        acked.len() - lost
    );
    assert_eq!(lost, 0, "every acknowledged message is on the promoted standby");
    // And it takes writes now.
    let msg = promoted
        .limits()
        .message(1, botdb::model::Role::User, "after")
        .unwrap();
    repo::messages::append(promoted.pool(), &msg).await.unwrap();
    promoted.close().await;
}

#[tokio::test]
async fn an_asynchronous_standby_streams_and_promotes() {
    let pg = primary().await;
    let standby = pg.start_standby(Replication::Asynchronous).await.unwrap();
    let db = Database::connect(&pg.config("bot")).await.unwrap();
    db.migrate().await.unwrap();
    repo::users::create(db.pool(), 7).await.unwrap();
    // Replayed on the standby once it has caught up with the primary's WAL.
    let lsn: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(db.pool())
        .await
        .unwrap();
    let mut on_standby = sqlx::PgConnection::connect_with(&standby.config("bot").connect_options().unwrap())
        .await
        .unwrap();
    assert!(
        crate::helpers::eventually(std::time::Duration::from_secs(30), async || {
            sqlx::query_scalar::<_, bool>("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn")
                .bind(&lsn)
                .fetch_one(&mut on_standby)
                .await
                .unwrap()
        })
        .await,
        "the standby replays the primary's WAL"
    );
    let user: Option<i64> = sqlx::query_scalar("SELECT id FROM users WHERE id = 7")
        .fetch_optional(&mut on_standby)
        .await
        .unwrap();
    assert_eq!(user, Some(7));
    let _ = on_standby.close().await;
    db.close().await;
    pg.stop(StopMode::Fast).unwrap();
    standby.promote().unwrap();
    let promoted = Database::connect(&standby.config("bot")).await.unwrap();
    repo::users::create(promoted.pool(), 8).await.unwrap();
    promoted.close().await;
}
