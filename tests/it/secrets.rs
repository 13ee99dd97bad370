//! Secrets never reach the logs: everything botdb prints at TRACE level during a full
//! demo run, and during `serve` handling good and bad webhook calls, is searched for
//! the database password and the webhook secret.

use std::process::Stdio;
use std::time::Duration;

use botdb::embedded::EmbeddedPostgres;
use secrecy::ExposeSecret;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

use crate::serve::{SECRET, client, post_raw, sigterm, text_update};

/// A cluster of this test's own: its password is random and known to this test only.
async fn cluster() -> (EmbeddedPostgres, String, String) {
    let pg = tokio::task::spawn_blocking(EmbeddedPostgres::start)
        .await
        .unwrap()
        .unwrap();
    pg.create_database("botdb").await.unwrap();
    let url = pg.url("botdb").expose_secret().to_string();
    let password = url::Url::parse(&url).unwrap().password().unwrap().to_string();
    assert!(password.len() >= 16);
    (pg, url, password)
}

fn occurrences(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[actix_rt::test]
async fn a_trace_level_demo_run_never_prints_the_password() {
    let (_pg, url, password) = cluster().await;
    let out = tokio::time::timeout(
        Duration::from_secs(180),
        Command::new(env!("CARGO_BIN_EXE_botdb"))
            .args(["demo", "--users", "40", "--turns", "3"])
            .current_dir(std::env::temp_dir())
            .env("DATABASE_URL", &url)
            .env("RUST_LOG", "trace")
            .env("DB_ECHO", "true")
            .env("NO_COLOR", "1")
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{}", &all[all.len().saturating_sub(3000)..]);
    assert!(
        all.lines().count() > 300,
        "TRACE logging was on: {} lines",
        all.lines().count()
    );
    assert!(
        all.contains("botdb.request") && all.contains("INSERT INTO messages"),
        "request spans and statements logged"
    );
    assert!(
        all.contains("postgres://postgres:***@"),
        "the URL is shown, redacted"
    );
    eprintln!(
        "demo at TRACE: {} lines, {} bytes, password found {} times",
        all.lines().count(),
        all.len(),
        occurrences(&all, &password)
    );
    assert_eq!(occurrences(&all, &password), 0);
}

#[actix_rt::test]
async fn a_trace_level_serve_never_prints_the_webhook_secret_or_the_password() {
    let (_pg, url, password) = cluster().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_botdb"))
        .args(["serve", "--bind", "127.0.0.1:0", "--migrate"])
        .current_dir(std::env::temp_dir())
        .env("DATABASE_URL", &url)
        .env("BOTDB_WEBHOOK_SECRET", SECRET)
        .env("RUST_LOG", "trace")
        .env("DB_ECHO", "true")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = child.stderr.take().unwrap();
    let errors = actix_rt::spawn(async move {
        let mut all = String::new();
        let _ = stderr.read_to_string(&mut all).await;
        all
    });
    let mut printed = String::new();
    let base = loop {
        let line = stdout.next_line().await.unwrap().expect("serve listens");
        printed.push_str(&line);
        printed.push('\n');
        if let Some(addr) = line.strip_prefix("listening on ") {
            break addr.to_string();
        }
    };
    let c = client();
    for (i, token) in [Some(SECRET), Some("wrong-token"), None, Some(SECRET)]
        .into_iter()
        .enumerate()
    {
        let body = serde_json::to_vec(&text_update(i as i64, 31, "hello")).unwrap();
        let (status, _) = post_raw(&c, &base, body, "application/json", token).await;
        assert_eq!(status, if token == Some(SECRET) { 200 } else { 401 });
    }
    let status = sigterm(&mut child).await;
    assert_eq!(status.code(), Some(0));
    while let Ok(Some(line)) = stdout.next_line().await {
        printed.push_str(&line);
        printed.push('\n');
    }
    let all = printed + &errors.await.unwrap();
    assert!(
        all.lines().count() > 100,
        "TRACE logging was on: {} lines",
        all.lines().count()
    );
    assert!(all.contains("botdb.request"), "request spans logged");
    eprintln!(
        "serve at TRACE: {} lines, secret found {} times, password found {} times",
        all.lines().count(),
        occurrences(&all, SECRET),
        occurrences(&all, &password)
    );
    assert_eq!(occurrences(&all, SECRET), 0);
    assert_eq!(occurrences(&all, &password), 0);
}

/// `botdb ARGS` with only `DATABASE_URL` (and a quiet log) set; stdout + stderr and the
/// exit code.
async fn botdb_with_url(args: &[&str], url: &str) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_botdb"));
    cmd.args(args)
        .current_dir(std::env::temp_dir())
        .env("DATABASE_URL", url)
        .env("DB_POOL_TIMEOUT", "3")
        .env("RUST_LOG", "trace")
        .env("NO_COLOR", "1");
    for var in ["DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD"] {
        cmd.env_remove(var);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), all)
}

#[actix_rt::test]
async fn passwords_in_every_url_form_are_redacted_everywhere() {
    let (pg, _, _) = cluster().await;
    // A role whose password needs percent-encoding in a URL.
    let password = "Pq@7 w/rd%!x";
    let encoded = "Pq%407%20w%2Frd%25%21x";
    let mut admin = botdb::migrate::connect_to(&pg.config("postgres")).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE tester LOGIN SUPERUSER PASSWORD '{password}'"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    let port = pg.port();
    let wrong = "Wr0ng-pw_%3Fsecret";
    let forms = |pw: &str, db: &str, port: u16| {
        vec![
            format!("postgres://tester:{pw}@127.0.0.1:{port}/{db}"),
            format!("postgres://tester@127.0.0.1:{port}/{db}?password={pw}"),
            format!("postgres://tester@127.0.0.1:{port}/{db}?sslmode=disable&password={pw}"),
            format!(
                "postgresql+asyncpg://tester:{pw}@127.0.0.1:{port}/{db}?application_name=x&password={pw}"
            ),
        ]
    };
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let leaks = |text: &str, pws: &[&str]| -> Vec<String> {
        pws.iter()
            .flat_map(|pw| [pw.to_string(), pw.replace("%3F", "?")])
            .filter(|pw| text.contains(pw.as_str()))
            .collect()
    };
    let mut checked = 0;
    // Rejected credentials: typed, naming the setting used (DATABASE_URL), no password.
    for url in forms(wrong, "botdb", port) {
        let (code, all) = botdb_with_url(&["migrate"], &url).await;
        assert_eq!(code, Some(2), "{all}");
        assert!(all.contains("configuration error in DATABASE_URL"), "{all}");
        assert!(leaks(&all, &[wrong]).is_empty(), "{url}: {all}");
        checked += 1;
    }
    // A database that does not exist: DATABASE_URL named, not DB_NAME.
    for url in forms(encoded, "no_such_db", port) {
        let (code, all) = botdb_with_url(&["migrate"], &url).await;
        assert_eq!(code, Some(2), "{all}");
        assert!(all.contains("DATABASE_URL") && !all.contains("DB_NAME"), "{all}");
        assert!(leaks(&all, &[password, encoded]).is_empty(), "{url}: {all}");
        checked += 1;
    }
    // A server that is down.
    for url in forms(encoded, "botdb", down) {
        let (code, all) = botdb_with_url(&["migrate"], &url).await;
        assert_eq!(code, Some(2), "{all}");
        assert!(leaks(&all, &[password, encoded]).is_empty(), "{url}: {all}");
        checked += 1;
    }
    // And every form works, at TRACE level, without printing the password.
    for url in forms(encoded, "botdb", port) {
        let (code, all) = botdb_with_url(&["current"], &url).await;
        assert_eq!(code, Some(0), "{all}");
        assert!(leaks(&all, &[password, encoded]).is_empty(), "{url}: {all}");
        let config = botdb::Config::builder().url(url.clone()).build().unwrap();
        for shown in [format!("{config:?}"), format!("{config}"), config.redacted_url()] {
            assert!(leaks(&shown, &[password, encoded]).is_empty(), "{shown}");
            assert!(shown.contains("***"), "{shown}");
        }
        checked += 1;
    }
    eprintln!("password forms checked: {checked} runs of botdb, password found 0 times");
    assert_eq!(checked, 16);
}
