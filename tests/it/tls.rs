//! TLS against a real server: `DB_SSLMODE` and `DB_SSLROOTCERT` (the separate `DB_*`
//! server fields) reach the driver. The test runs a throwaway cluster of its own, gives
//! it a certificate signed by a CA made here, turns `ssl` on, and connects through
//! [`Config::from_lookup`] and [`Database::connect`] the way a deployment would.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use botdb::embedded::EmbeddedPostgres;
use botdb::{Config, Database, Error};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use secrecy::ExposeSecret;
use sqlx::Connection;

use crate::helpers::eventually;

/// A CA made for this test: its certificate (PEM) and what signs with it.
struct TestCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn new_ca(name: &str) -> TestCa {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("CA key");
    let cert = params.self_signed(&key).expect("self-signing the CA");
    TestCa {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A server certificate for 127.0.0.1 and `localhost`, signed by `ca`: (cert PEM, key PEM).
fn server_cert(ca: &TestCa) -> (String, String) {
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("server certificate parameters");
    params
        .distinguished_name
        .push(DnType::CommonName, "botdb test server");
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().expect("server key");
    let cert = params
        .signed_by(&key, &ca.issuer)
        .expect("signing the server certificate");
    (cert.pem(), key.serialize_pem())
}

/// Writes `contents` into the cluster's data directory with `mode`, owned by the OS user
/// the server runs as (`postgres` when the tests run as root).
fn write_server_file(data_dir: &Path, name: &str, contents: &str, mode: u32) {
    let path = data_dir.join(name);
    std::fs::write(&path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
    if nix::unistd::geteuid().is_root() {
        let user = nix::unistd::User::from_name("postgres")
            .expect("looking up OS user postgres")
            .expect("running as root, the server runs as OS user postgres, which must exist");
        std::os::unix::fs::chown(&path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
            .unwrap_or_else(|e| panic!("chown {} to postgres: {e}", path.display()));
    }
}

/// The last lines of the cluster's server log, for failure messages.
fn server_log(pg: &EmbeddedPostgres) -> String {
    let log = std::fs::read_to_string(pg.dir().join("postgres.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// The settings a deployment would put in its environment for this cluster, plus `extra`.
fn env_config(pg: &EmbeddedPostgres, password: &str, extra: &[(&str, &str)]) -> Result<Config, Error> {
    let mut vars: HashMap<String, String> = [
        ("DB_HOST", "127.0.0.1".to_string()),
        ("DB_PORT", pg.port().to_string()),
        ("DB_USER", "postgres".to_string()),
        ("DB_PASSWORD", password.to_string()),
        ("DB_NAME", "postgres".to_string()),
        ("DB_POOL_SIZE", "1".to_string()),
        ("DB_MAX_OVERFLOW", "0".to_string()),
        ("DB_POOL_TIMEOUT", "5".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in extra {
        vars.insert((*k).to_string(), (*v).to_string());
    }
    Config::from_lookup(|k| vars.get(k).cloned())
}

/// Connects through botdb with `extra` settings; bounded so a hang fails the test.
async fn connect(pg: &EmbeddedPostgres, password: &str, extra: &[(&str, &str)]) -> Result<Database, Error> {
    let config = env_config(pg, password, extra).expect("the DB_* settings are well-formed");
    assert!(
        !format!("{config:?} {config}").contains(password),
        "the configuration printed the password"
    );
    tokio::time::timeout(Duration::from_secs(30), Database::connect(&config))
        .await
        .expect("Database::connect must give up within DB_POOL_TIMEOUT, not hang")
}

/// Whether this session's own connection runs over TLS, as the server sees it.
async fn session_uses_tls(db: &Database) -> bool {
    sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(db.pool())
        .await
        .expect("querying pg_stat_ssl")
}

fn variant(err: &Error) -> &'static str {
    match err {
        Error::InvalidInput { .. } => "InvalidInput",
        Error::NotFound { .. } => "NotFound",
        Error::Conflict(_) => "Conflict",
        Error::Unavailable { .. } => "Unavailable",
        Error::OutcomeUnknown { .. } => "OutcomeUnknown",
        Error::Overloaded { .. } => "Overloaded",
        Error::ShuttingDown => "ShuttingDown",
        Error::Migration(_) => "Migration",
        Error::Config { .. } => "Config",
        Error::Internal(_) => "Internal",
        Error::Database(_) => "Database",
        _ => "(other)",
    }
}

/// A connection attempt that must fail: with a botdb error whose text, debug form and
/// source chain never show the password. Returns the error's text.
fn expect_refused(case: &str, result: Result<Database, Error>, password: &str) -> String {
    let err = match result {
        Ok(_) => panic!("{case}: connecting succeeded, it must fail"),
        Err(e) => e,
    };
    let mut text = format!("{err} | {err:?}");
    let mut chain = String::new();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        text.push_str(&format!(" | {s} | {s:?}"));
        chain.push_str(&format!("\n    caused by: {s}"));
        source = s.source();
    }
    println!("{case}: refused with Error::{}: {err}{chain}", variant(&err));
    // A TLS refusal is a setting to fix, not an outage to wait out: a configuration
    // error naming the TLS settings, not transient.
    assert!(
        matches!(&err, Error::Config { key, .. } if key.contains("DB_SSLMODE")),
        "{case}: a TLS refusal must be a configuration error naming DB_SSLMODE: {err:?}"
    );
    assert!(!err.is_transient(), "{case}");
    assert!(
        !text.contains(password),
        "{case}: the error shows the password: {text}"
    );
    text
}

#[tokio::test]
async fn db_sslmode_and_root_cert_are_honoured_against_a_tls_server() {
    let pg = tokio::task::spawn_blocking(EmbeddedPostgres::start)
        .await
        .expect("the blocking start task")
        .expect("starting a throwaway PostgreSQL cluster for the TLS test");
    let password = url::Url::parse(pg.url("postgres").expose_secret())
        .expect("the cluster's URL")
        .password()
        .expect("the cluster has a password")
        .to_string();
    assert!(!password.is_empty());
    let mut admin = botdb::migrate::connect_to(&pg.config("postgres"))
        .await
        .expect("superuser connection");
    let ssl: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&mut admin)
        .await
        .expect("SHOW ssl");
    assert_eq!(ssl, "off", "a fresh cluster starts without TLS");

    // `require` against a server without TLS: refused, typed, password-free.
    let plain = connect(&pg, &password, &[("DB_SSLMODE", "require")]).await;
    let text = expect_refused("DB_SSLMODE=require, server without TLS", plain, &password);
    assert!(text.to_lowercase().contains("tls"), "{text}");

    // Certificates: a CA, a server certificate it signed, and a CA that signed nothing.
    let ca = new_ca("botdb test CA");
    let other_ca = new_ca("botdb unrelated CA");
    let (cert_pem, key_pem) = server_cert(&ca);
    let data_dir = pg.dir().join("data");
    write_server_file(&data_dir, "server.crt", &cert_pem, 0o644);
    write_server_file(&data_dir, "server.key", &key_pem, 0o600);
    let client_dir = tempfile::tempdir().expect("a temporary directory for the CA files");
    let ca_file = client_dir.path().join("ca.pem");
    let other_ca_file = client_dir.path().join("other-ca.pem");
    std::fs::write(&ca_file, &ca.pem).expect("writing the CA file");
    std::fs::write(&other_ca_file, &other_ca.pem).expect("writing the second CA file");
    let ca_path = ca_file.to_str().expect("UTF-8 temp path").to_string();
    let other_ca_path = other_ca_file.to_str().expect("UTF-8 temp path").to_string();

    for sql in [
        "ALTER SYSTEM SET ssl_cert_file = 'server.crt'",
        "ALTER SYSTEM SET ssl_key_file = 'server.key'",
        "ALTER SYSTEM SET ssl = on",
        "SELECT pg_reload_conf()",
    ] {
        sqlx::query(sql)
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let _ = admin.close().await;

    // The postmaster reloads in the background: wait until a new session has TLS on
    // (SHOW ssl alone could say on while the certificate failed to load).
    let tls_admin = Config::builder()
        .host("127.0.0.1")
        .port(pg.port())
        .user("postgres")
        .password(password.clone())
        .database("postgres")
        .ssl_mode(sqlx::postgres::PgSslMode::Require)
        .build()
        .expect("TLS admin settings");
    let ready = eventually(Duration::from_secs(30), async || {
        let Ok(mut conn) = botdb::migrate::connect_to(&tls_admin).await else {
            return false;
        };
        let on = sqlx::query_scalar::<_, String>("SHOW ssl")
            .fetch_one(&mut conn)
            .await
            .is_ok_and(|s| s == "on");
        let tls = sqlx::query_scalar::<_, bool>("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut conn)
            .await
            .unwrap_or(false);
        let _ = conn.close().await;
        on && tls
    })
    .await;
    assert!(
        ready,
        "the server did not turn TLS on within 30 s; server log:\n{}",
        server_log(&pg)
    );

    // verify-full with the CA that signed the server's certificate: TLS, verified.
    let db = connect(
        &pg,
        &password,
        &[("DB_SSLMODE", "verify-full"), ("DB_SSLROOTCERT", &ca_path)],
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "DB_SSLMODE=verify-full with the right CA must connect: {e}\nserver log:\n{}",
            server_log(&pg)
        )
    });
    assert!(
        session_uses_tls(&db).await,
        "DB_SSLMODE=verify-full connected without TLS"
    );
    println!("DB_SSLMODE=verify-full + DB_SSLROOTCERT=<the signing CA>: connected, pg_stat_ssl.ssl = true");
    db.close().await;

    // disable: plain TCP, though the server offers TLS.
    let db = connect(&pg, &password, &[("DB_SSLMODE", "disable")])
        .await
        .expect("DB_SSLMODE=disable must connect over plain TCP");
    assert!(
        !session_uses_tls(&db).await,
        "DB_SSLMODE=disable connected over TLS"
    );
    println!("DB_SSLMODE=disable: connected, pg_stat_ssl.ssl = false");
    db.close().await;

    // verify-full with a CA that did not sign the server's certificate: refused.
    let wrong = connect(
        &pg,
        &password,
        &[("DB_SSLMODE", "verify-full"), ("DB_SSLROOTCERT", &other_ca_path)],
    )
    .await;
    let text = expect_refused("DB_SSLMODE=verify-full with an unrelated CA", wrong, &password);
    assert!(text.to_lowercase().contains("certificate"), "{text}");

    // verify-full with no DB_SSLROOTCERT: the test CA is in no default trust store.
    let untrusted = connect(&pg, &password, &[("DB_SSLMODE", "verify-full")]).await;
    let text = expect_refused(
        "DB_SSLMODE=verify-full without DB_SSLROOTCERT",
        untrusted,
        &password,
    );
    assert!(text.to_lowercase().contains("certificate"), "{text}");

    tokio::task::spawn_blocking(move || drop(pg))
        .await
        .expect("stopping the cluster");
}
