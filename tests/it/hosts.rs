//! Several hosts, libpq's way (issue 16): `postgres://u:pw@h1:p1,h2:p2/db?target_session_attrs=..`
//! against a real primary and a real streaming standby from the installed binaries.

use std::time::{Duration, Instant};

use botdb::embedded::{EmbeddedPostgres, Replication, StopMode};
use botdb::{Config, Database, Error, repo};
use secrecy::ExposeSecret;
use sqlx::Connection;

async fn primary() -> EmbeddedPostgres {
    let pg = tokio::task::spawn_blocking(EmbeddedPostgres::start)
        .await
        .unwrap()
        .unwrap();
    pg.create_database("bot").await.unwrap();
    pg
}

/// A primary with database `bot` (migrated) and its standby.
async fn pair(mode: Replication) -> (EmbeddedPostgres, EmbeddedPostgres) {
    let pg = primary().await;
    let db = Database::connect(&pg.config("bot")).await.unwrap();
    db.migrate().await.unwrap();
    db.close().await;
    let standby = pg.start_standby(mode).await.unwrap();
    (pg, standby)
}

/// A configuration naming `ports` on 127.0.0.1, in that order, with `attrs`.
fn list(pg: &EmbeddedPostgres, ports: &[u16], attrs: &str, timeout: Duration) -> Config {
    let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    Config::builder()
        .url(format!(
            "postgres://postgres:{}@{}/bot?target_session_attrs={attrs}",
            pg.password().expose_secret(),
            hosts.join(",")
        ))
        .pool_size(2)
        .max_overflow(2)
        .pool_timeout(timeout)
        .build()
        .unwrap()
}

/// `pg_is_in_recovery()` on every connection the pool holds at once (all of them:
/// pool size + overflow).
async fn in_recovery_everywhere(db: &Database) -> Vec<bool> {
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(db.pool().acquire().await.unwrap());
    }
    let mut out = Vec::new();
    for conn in &mut conns {
        out.push(in_recovery(conn).await);
    }
    out
}

/// `pg_is_in_recovery()` on `conn`: a standby's.
async fn in_recovery(conn: &mut sqlx::PgConnection) -> bool {
    sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(conn)
        .await
        .unwrap()
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

async fn users_on(pg: &EmbeddedPostgres, ids: &[i64]) -> i64 {
    let mut conn = sqlx::PgConnection::connect_with(&pg.config("bot").connect_options().unwrap())
        .await
        .unwrap();
    let n = sqlx::query_scalar("SELECT count(*) FROM users WHERE id = ANY($1)")
        .bind(ids)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let _ = conn.close().await;
    n
}

#[tokio::test]
async fn a_standby_first_in_the_list_read_write_goes_to_the_primary() {
    let (pg, standby) = pair(Replication::Asynchronous).await;
    let config = list(
        &pg,
        &[standby.port(), pg.port()],
        "read-write",
        Duration::from_secs(10),
    );
    assert!(!config.redacted_url().contains(pg.password().expose_secret()));
    let db = Database::connect(&config).await.unwrap();
    assert_eq!(db.pool().connect_options().get_port(), pg.port());
    db.migrate().await.unwrap();
    // Through the pool, through a session, through autocommit.
    repo::users::create(db.pool(), 1).await.unwrap();
    db.session(async |tx| repo::users::create(&mut *tx, 2).await.map(|_| ()))
        .await
        .unwrap();
    db.autocommit(async |c| repo::users::create(&mut *c, 3).await.map(|_| ()))
        .await
        .unwrap();
    assert_eq!(in_recovery_everywhere(&db).await, vec![false; 4]);
    assert_eq!(users_on(&pg, &[1, 2, 3]).await, 3, "the rows are on the primary");
    db.close().await;
}

#[tokio::test]
async fn the_migrators_own_connection_goes_to_the_primary_when_a_standby_is_listed_first() {
    // `botdb migrate`, `rollback`, `current`, `history` and `check` use this connection.
    let (pg, standby) = pair(Replication::Asynchronous).await;
    let config = list(
        &pg,
        &[standby.port(), pg.port()],
        "read-write",
        Duration::from_secs(10),
    );
    let mut conn = botdb::migrate::connect_to(&config).await.unwrap();
    assert!(
        !in_recovery(&mut conn).await,
        "the migrator's connection reached the standby"
    );
    // And the whole upgrade path runs there (already at head: nothing to do, no error).
    let migrations = botdb::migrate::Migrations::from_config(&config).await.unwrap();
    botdb::takeover::migrate_with(&mut conn, &migrations, None, &config.migrate)
        .await
        .unwrap();
    let _ = conn.close().await;
    // `any` keeps libpq's meaning: the first host that answers, the standby here.
    let any = list(&pg, &[standby.port(), pg.port()], "any", Duration::from_secs(10));
    let mut conn = botdb::migrate::connect_to(&any).await.unwrap();
    assert!(in_recovery(&mut conn).await);
    let _ = conn.close().await;
}

#[tokio::test]
async fn read_only_standby_and_prefer_standby_reach_the_standby() {
    let (pg, standby) = pair(Replication::Asynchronous).await;
    let timeout = Duration::from_secs(10);
    for attrs in ["read-only", "standby", "prefer-standby"] {
        let db = Database::connect(&list(&pg, &[pg.port(), standby.port()], attrs, timeout))
            .await
            .unwrap();
        assert_eq!(in_recovery_everywhere(&db).await, vec![true; 4], "{attrs}");
        db.close().await;
    }
    // `primary` skips a standby listed first; `any` takes the first host, whatever it is.
    for (attrs, expected) in [("primary", false), ("any", true)] {
        let db = Database::connect(&list(&pg, &[standby.port(), pg.port()], attrs, timeout))
            .await
            .unwrap();
        assert_eq!(in_recovery_everywhere(&db).await, vec![expected; 4], "{attrs}");
        db.close().await;
    }
    // prefer-standby with no standby in the list: the primary will do.
    let db = Database::connect(&list(&pg, &[closed_port(), pg.port()], "prefer-standby", timeout))
        .await
        .unwrap();
    assert_eq!(in_recovery_everywhere(&db).await, vec![false; 4]);
    db.close().await;
}

#[tokio::test]
async fn the_first_host_down_connects_to_the_second() {
    let pg = primary().await;
    let down = closed_port();
    let db = Database::connect(&list(&pg, &[down, pg.port()], "any", Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(db.pool().connect_options().get_port(), pg.port());
    assert_eq!(in_recovery_everywhere(&db).await, vec![false; 4]);
    db.close().await;
    // The same with DB_HOST / DB_PORT lists.
    let vars = [
        ("DB_HOST", "127.0.0.1,127.0.0.1".to_string()),
        ("DB_PORT", format!("{down},{}", pg.port())),
        ("DB_NAME", "bot".to_string()),
        ("DB_USER", "postgres".to_string()),
        ("DB_PASSWORD", pg.password().expose_secret().to_string()),
        ("DB_POOL_SIZE", "1".to_string()),
    ];
    let config = Config::from_lookup(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())).unwrap();
    let db = Database::connect(&config).await.unwrap();
    let port: i32 = sqlx::query_scalar("SELECT current_setting('port')::int")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(port, i32::from(pg.port()));
    db.close().await;
}

#[tokio::test]
async fn after_a_failover_new_connections_reach_the_promoted_standby() {
    let (pg, standby) = pair(Replication::Synchronous).await;
    let config = list(
        &pg,
        &[pg.port(), standby.port()],
        "read-write",
        Duration::from_secs(5),
    );
    let db = Database::connect(&config).await.unwrap();
    repo::users::create(db.pool(), 1).await.unwrap();
    db.autocommit(async |c| repo::users::create(&mut *c, 2).await.map(|_| ()))
        .await
        .unwrap();

    pg.stop(StopMode::Immediate).unwrap();
    standby.promote().unwrap();
    let stopped = Instant::now();
    // Requests meanwhile fail typed and transient; then they go to the promoted standby.
    let mut next = 10;
    let mut failures = Vec::new();
    let reached = crate::helpers::eventually(Duration::from_secs(60), async || {
        next += 1;
        match db
            .autocommit(async |c| repo::users::create(&mut *c, next).await.map(|_| ()))
            .await
        {
            Ok(()) => true,
            Err(e) => {
                failures.push(e);
                false
            }
        }
    })
    .await;
    println!(
        "failover: writes back after {:?}, {} failed meanwhile",
        stopped.elapsed(),
        failures.len()
    );
    assert!(reached, "writes reach the promoted standby: {failures:?}");
    for e in &failures {
        assert!(e.is_transient() || e.is_outcome_unknown(), "{e:?}");
        assert!(!e.to_string().contains(pg.password().expose_secret()), "{e}");
    }
    assert_eq!(db.pool().connect_options().get_port(), standby.port());
    assert_eq!(in_recovery_everywhere(&db).await, vec![false; 4]);
    assert_eq!(users_on(&standby, &[1, 2, next]).await, 3);
    db.close().await;
}

#[tokio::test]
async fn no_host_satisfying_the_attribute_is_a_typed_error_naming_the_hosts() {
    let (pg, standby) = pair(Replication::Asynchronous).await;
    let down = closed_port();
    let timeout = Duration::from_secs(2);
    let config = list(&pg, &[down, standby.port()], "read-write", timeout);
    let started = Instant::now();
    let err = Database::connect(&config).await.unwrap_err();
    let took = started.elapsed();
    assert!(took < timeout + Duration::from_secs(3), "{took:?}");
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(err.is_transient());
    let text = format!("{err} {err:?}");
    println!("{err}");
    assert!(!text.contains(pg.password().expose_secret()), "{text}");
    for port in [down, standby.port()] {
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    }
    assert!(text.contains("read-write") && text.contains("standby"), "{text}");
}

#[tokio::test]
async fn a_write_refused_as_read_only_is_transient_and_the_connection_is_not_reused() {
    let pg = primary().await;
    let config = list(&pg, &[pg.port()], "read-write", Duration::from_secs(5));
    let db = Database::connect(&config).await.unwrap();
    db.migrate().await.unwrap();
    // The session turns read-only under botdb's feet (as a demoted server would).
    let err = db
        .autocommit(async |c| {
            sqlx::query("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
                .execute(&mut *c)
                .await?;
            repo::users::create(&mut *c, 5).await.map(|_| ())
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(err.is_transient() && !err.is_outcome_unknown(), "{err:?}");
    assert_eq!(err.sqlstate().as_deref(), Some("25006"));
    // That connection is gone: no connection of the pool is read-only, and every
    // write succeeds, one after another and all at once.
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(db.pool().acquire().await.unwrap());
    }
    for conn in &mut conns {
        let read_only: String = sqlx::query_scalar("SELECT current_setting('transaction_read_only')")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        assert_eq!(read_only, "off");
    }
    drop(conns);
    for id in 6..20 {
        db.autocommit(async |c| repo::users::create(&mut *c, id).await.map(|_| ()))
            .await
            .unwrap();
    }
    let all = futures::future::join_all((20..40).map(|id| {
        let db = db.clone();
        async move {
            db.autocommit(async |c| repo::users::create(&mut *c, id).await.map(|_| ()))
                .await
        }
    }))
    .await;
    assert!(all.iter().all(Result::is_ok), "{all:?}");
    db.close().await;
}
