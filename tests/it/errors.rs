//! Bad input gets a typed error and writes nothing; connection failures are typed and
//! never show the password.

use std::time::Duration;

use botdb::model::{NewMessage, Role, SettingsPatch};
use botdb::{Config, Database, Error, repo};

use crate::helpers::{TestDb, server};

#[tokio::test]
async fn content_with_a_nul_byte_is_invalid_input() {
    let err = NewMessage::new(1, Role::User, "a\0b").unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput { field: "content", .. }),
        "{err:?}"
    );
    let err = botdb::Limits::default().system_prompt("x\0").unwrap_err();
    assert!(matches!(
        err,
        Error::InvalidInput {
            field: "system_prompt",
            ..
        }
    ));
}

#[tokio::test]
async fn content_longer_than_the_configured_maximum_is_invalid_input() {
    let t = TestDb::with(|b| b.max_content_chars(10)).await;
    assert!(t.db.limits().message(1, Role::User, "0123456789").is_ok());
    let err = t.db.limits().message(1, Role::User, "0123456789x").unwrap_err();
    assert!(matches!(err, Error::InvalidInput { field: "content", .. }));
    assert!(err.to_string().contains("10 characters"), "{err}");
}

#[tokio::test]
async fn max_history_out_of_range_is_invalid_input_and_nothing_is_written() {
    let t = TestDb::new().await;
    let pool = t.db.pool();
    for n in [0, -5, 1001, i64::from(i32::MAX) + 1] {
        assert!(
            matches!(SettingsPatch::max_history(n), Err(Error::InvalidInput { .. })),
            "{n}"
        );
    }
    let err =
        t.db.session(async |tx| repo::users::register(tx, 1, 5000, None).await)
            .await
            .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidInput {
                field: "max_history_messages",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(repo::users::get(pool, 1).await.unwrap(), None);

    repo::users::create(pool, 2).await.unwrap();
    repo::settings::upsert(pool, 2, 20, None).await.unwrap();
    let patch = SettingsPatch {
        max_history_messages: Some(0),
        system_prompt: None,
    };
    assert!(matches!(
        repo::settings::update(pool, 2, &patch).await,
        Err(Error::InvalidInput { .. })
    ));
    assert_eq!(
        repo::settings::get(pool, 2)
            .await
            .unwrap()
            .unwrap()
            .max_history_messages,
        20
    );
    // The database refuses too, whoever writes.
    let err = Error::from(
        sqlx::query("UPDATE user_settings SET max_history_messages = 0 WHERE user_id = 2")
            .execute(pool)
            .await
            .unwrap_err(),
    );
    assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
    assert!(repo::messages::history(pool, 2, 0).await.is_err());
    assert!(repo::messages::history(pool, 2, 1001).await.is_err());
}

#[tokio::test]
async fn appending_for_an_unknown_user_is_not_found_and_writes_nothing() {
    let t = TestDb::new().await;
    let m = t.db.limits().message(404, Role::User, "hello?").unwrap();
    let err = repo::messages::append(t.db.pool(), &m).await.unwrap_err();
    assert!(
        matches!(err, Error::NotFound { entity: "user", ref id } if id == "404"),
        "{err:?}"
    );
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(t.db.pool())
        .await
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn non_positive_user_ids_are_invalid_input() {
    let t = TestDb::new().await;
    for id in [0, -1, i64::MIN] {
        assert!(matches!(
            repo::users::get(t.db.pool(), id).await,
            Err(Error::InvalidInput { field: "user_id", .. })
        ));
        assert!(NewMessage::new(id, Role::User, "x").is_err());
    }
}

#[tokio::test]
async fn a_role_outside_the_three_is_refused_by_the_database() {
    let t = TestDb::new().await;
    repo::users::create(t.db.pool(), 1).await.unwrap();
    let err = Error::from(
        sqlx::query("INSERT INTO messages (id, user_id, role, content, content_length) VALUES (gen_random_uuid(), 1, 'admin', 'x', 1)")
            .execute(t.db.pool())
            .await
            .unwrap_err(),
    );
    assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
}

const SECRET: &str = "Wr0ng-Pa55word-do-not-print";

fn assert_secret_absent(err: &Error) {
    let text = format!("{err} | {err:?} | {:?}", std::error::Error::source(err));
    assert!(!text.contains(SECRET), "password leaked: {text}");
}

#[tokio::test]
async fn a_malformed_url_is_a_config_error_without_the_password() {
    for url in [
        format!("postgres://u:{SECRET}@host:notaport/db"),
        format!("postgres://u:{SECRET}@/db?sslmode=bogus"),
        format!("http://u:{SECRET}@host/db"),
        "::::".to_string(),
    ] {
        let err = Config::builder().url(url.clone()).build().unwrap_err();
        assert!(
            matches!(err, Error::Config { ref key, .. } if key == "DATABASE_URL"),
            "{url}: {err:?}"
        );
        assert_secret_absent(&err);
    }
}

/// A server that checks passwords: the shared embedded cluster, or (when the tests use
/// an external server, which may trust everyone) a cluster of this test's own.
#[cfg(feature = "embedded")]
fn password_checking_server() -> (Config, Option<botdb::embedded::EmbeddedPostgres>) {
    match &server().embedded {
        Some(pg) => (pg.config("postgres"), None),
        None => {
            let pg = botdb::embedded::EmbeddedPostgres::start().unwrap();
            (pg.config("postgres"), Some(pg))
        }
    }
}

#[cfg(feature = "embedded")]
#[tokio::test]
async fn a_wrong_password_is_a_config_error_without_the_password() {
    let (good, _own) = tokio::task::spawn_blocking(password_checking_server)
        .await
        .unwrap();
    let o = good.connect_options().unwrap();
    let config = Config::builder()
        .host(o.get_host())
        .port(o.get_port())
        .user("postgres")
        .password(SECRET)
        .database("postgres")
        .pool_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    assert!(!format!("{config:?} {config}").contains(SECRET));
    let err = tokio::time::timeout(Duration::from_secs(30), Database::connect(&config))
        .await
        .expect("no hang")
        .unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err:?}");
    assert!(err.to_string().contains("rejected the credentials"), "{err}");
    assert_secret_absent(&err);
}

#[tokio::test]
async fn a_server_that_is_down_is_unavailable_within_the_pool_timeout() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = Config::builder()
        .host("127.0.0.1")
        .port(port)
        .password(SECRET)
        .pool_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(20), Database::connect(&config))
        .await
        .expect("connect must give up at the pool timeout, not hang")
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(err.to_string().contains(&format!("127.0.0.1:{port}")), "{err}");
    assert_secret_absent(&err);
}
