//! `botdb serve`'s HTTP hardening, driven over raw TCP: the webhook's secret is checked
//! before a byte of the body is read, bodies are bounded in size and in time, idle
//! connections are closed, connections per worker are bounded, `/healthz` asks the
//! database at most once per cache period, and health and metrics can move to an admin
//! address behind a bearer token.
//!
//! Every wait is bounded with `tokio::time::timeout` on the thing awaited; a timeout is
//! a failure unless the test expects one.

use std::io::ErrorKind;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use botdb::embedded::{EmbeddedPostgres, StopMode};
use secrecy::ExposeSecret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::TestDb;
use crate::serve::{SECRET, client, post_raw, spawn_serve_with, text_update};

/// `host:port` of a `http://host:port` base.
fn host(base: &str) -> &str {
    base.strip_prefix("http://").expect("an http:// base")
}

async fn connect(base: &str) -> TcpStream {
    tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(host(base)))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// A webhook request head with `extra` header lines (each ending in CRLF).
fn webhook_head(base: &str, content_length: usize, extra: &str) -> String {
    format!(
        "POST /telegram/webhook HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {content_length}\r\n{extra}\r\n",
        host(base)
    )
}

fn secret_header(secret: &str) -> String {
    format!("X-Telegram-Bot-Api-Secret-Token: {secret}\r\n")
}

/// Reads into `buf` until it holds a whole response head. Cancellation safe: bytes are
/// appended only once a read completed, so a timed-out call can be resumed.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<String> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(String::from_utf8_lossy(&buf[..end + 4]).into_owned());
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                format!("closed before a whole head: {:?}", String::from_utf8_lossy(buf)),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The response head on `stream` within `wait`; panics on a timeout or a close.
async fn response_within(stream: &mut TcpStream, wait: Duration, what: &str) -> String {
    let mut buf = Vec::new();
    tokio::time::timeout(wait, read_head(stream, &mut buf))
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {wait:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// How a connection ended: the bytes it delivered, and whether by EOF (`true`) or a
/// reset (`false`).
async fn read_until_closed(stream: &mut TcpStream) -> std::io::Result<(Vec<u8>, bool)> {
    let mut all = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) => return Ok((all, true)),
            Ok(n) => all.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok((all, false)),
            Err(e) => return Err(e),
        }
    }
}

/// Asserts the server closes `stream` (EOF or reset) within `wait`.
async fn closed_within(stream: &mut TcpStream, wait: Duration, what: &str) {
    let started = Instant::now();
    let (_, eof) = tokio::time::timeout(wait, read_until_closed(stream))
        .await
        .unwrap_or_else(|_| panic!("{what}: the connection was not closed within {wait:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let how = if eof { "EOF" } else { "reset" };
    println!("{what}: closed ({how}) {:?} after the answer", started.elapsed());
}

/// Raises the soft open-files limit to `want` (at most the hard limit).
fn raise_nofile(want: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < want {
        setrlimit(Resource::RLIMIT_NOFILE, want.min(hard), hard).expect("setrlimit");
    }
}

#[actix_rt::test]
async fn the_secret_is_checked_before_the_body_is_read() {
    let t = TestDb::empty().await;
    let served = spawn_serve_with(&t.url(), &[], &[]).await;
    let base = served.base.as_str();
    for (what, extra) in [
        ("no secret", String::new()),
        ("wrong secret", secret_header("wrong-secret_0123456789")),
    ] {
        let mut s = connect(base).await;
        // 200,000 bytes declared (under the 256 KiB limit), 10 sent, then nothing.
        s.write_all(webhook_head(base, 200_000, &extra).as_bytes())
            .await
            .unwrap();
        s.write_all(b"{\"update_i").await.unwrap();
        s.flush().await.unwrap();
        let started = Instant::now();
        let head = response_within(&mut s, Duration::from_secs(10), what).await;
        println!(
            "{what}: {:?} after {:?}",
            head.lines().next().unwrap_or(""),
            started.elapsed()
        );
        assert!(head.starts_with("HTTP/1.1 401"), "{what}: {head}");
        assert!(
            head.to_ascii_lowercase().contains("connection: close"),
            "{what}: the refusal closes the connection: {head}"
        );
        closed_within(&mut s, Duration::from_secs(10), what).await;
    }
}

#[actix_rt::test]
async fn a_declared_oversize_body_is_refused_before_it_is_read() {
    let t = TestDb::empty().await;
    let served = spawn_serve_with(&t.url(), &[], &[]).await;
    let base = served.base.as_str();
    // The right secret, 10 MB declared, no body sent.
    let mut s = connect(base).await;
    s.write_all(webhook_head(base, 10_000_000, &secret_header(SECRET)).as_bytes())
        .await
        .unwrap();
    let head = response_within(&mut s, Duration::from_secs(10), "oversize").await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    closed_within(&mut s, Duration::from_secs(10), "oversize").await;
    // Without the secret, the same request is a 401: the secret comes before the size
    // (a body extractor would have answered 413 before the handler saw the headers).
    let mut s = connect(base).await;
    s.write_all(webhook_head(base, 10_000_000, "").as_bytes())
        .await
        .unwrap();
    let head = response_within(&mut s, Duration::from_secs(10), "oversize, no secret").await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
}

#[actix_rt::test]
async fn a_body_that_trickles_in_gets_408_within_the_body_timeout() {
    let t = TestDb::empty().await;
    let served = spawn_serve_with(&t.url(), &[], &[("BOTDB_BODY_TIMEOUT", "1")]).await;
    let base = served.base.as_str();
    let mut s = connect(base).await;
    s.write_all(webhook_head(base, 1000, &secret_header(SECRET)).as_bytes())
        .await
        .unwrap();
    s.write_all(b"{\"update_i").await.unwrap();
    s.flush().await.unwrap();
    let started = Instant::now();
    let head = response_within(&mut s, Duration::from_secs(10), "trickle").await;
    let waited = started.elapsed();
    println!(
        "trickle: {:?} after {waited:?}",
        head.lines().next().unwrap_or("")
    );
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(
        waited >= Duration::from_millis(900),
        "408 only once the body timeout (1 s) passed: {waited:?}"
    );
    closed_within(&mut s, Duration::from_secs(10), "trickle").await;
    // A normal update on a new connection is still answered.
    let body = serde_json::to_vec(&text_update(1, 31, "hello")).unwrap();
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(30),
        post_raw(&client(), base, body, "application/json", Some(SECRET)),
    )
    .await
    .expect("the update is answered in time");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

/// How one idle connection ended.
struct IdleEnd {
    /// Seconds from the test's start.
    at: f64,
    eof: bool,
    /// The server said 408 before closing.
    said_408: bool,
}

#[actix_rt::test]
async fn idle_connections_are_closed_and_updates_are_still_answered() {
    const IDLE: usize = 1000;
    raise_nofile(8192);
    let t = TestDb::empty().await;
    let served = spawn_serve_with(&t.url(), &[], &[("BOTDB_HEADER_TIMEOUT", "1")]).await;
    let base = served.base.clone();
    let started = Instant::now();
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(connect(&base).await);
    }
    let opened = started.elapsed();
    let readers: Vec<_> = idle
        .into_iter()
        .map(|mut s| {
            actix_rt::spawn(async move {
                let end = tokio::time::timeout(Duration::from_secs(30), read_until_closed(&mut s)).await;
                match end {
                    Ok(Ok((bytes, eof))) => Some(IdleEnd {
                        at: started.elapsed().as_secs_f64(),
                        eof,
                        said_408: bytes.starts_with(b"HTTP/1.1 408"),
                    }),
                    Ok(Err(e)) => panic!("an idle connection failed: {e}"),
                    Err(_) => None,
                }
            })
        })
        .collect();
    // While they are open, a real update is answered.
    let body = serde_json::to_vec(&text_update(1, 41, "through the crowd")).unwrap();
    let sent = Instant::now();
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(30),
        post_raw(&client(), &base, body, "application/json", Some(SECRET)),
    )
    .await
    .expect("the update is answered while idle connections are open");
    let answered_after = sent.elapsed();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let mut ends = Vec::with_capacity(IDLE);
    let mut still_open = 0;
    for r in readers {
        match r.await.unwrap() {
            Some(end) => ends.push(end),
            None => still_open += 1,
        }
    }
    let mut at: Vec<f64> = ends.iter().map(|e| e.at).collect();
    at.sort_by(f64::total_cmp);
    let eofs = ends.iter().filter(|e| e.eof).count();
    let said_408 = ends.iter().filter(|e| e.said_408).count();
    println!(
        "idle: {IDLE} opened in {opened:?}; update answered 200 after {answered_after:?}; \
         closed {} ({eofs} EOF, {} reset, {said_408} with a 408 first), still open {still_open}; \
         closed at first {:.2} s, median {:.2} s, last {:.2} s",
        ends.len(),
        ends.len() - eofs,
        at.first().copied().unwrap_or(f64::NAN),
        at.get(at.len() / 2).copied().unwrap_or(f64::NAN),
        at.last().copied().unwrap_or(f64::NAN),
    );
    assert_eq!(still_open, 0, "every idle connection is closed");
    assert_eq!(ends.len(), IDLE);
    // With a 1 s header timeout, most are closed before actix's default (5 s) could.
    assert!(at[IDLE / 2] < 4.0, "median close at {:.2} s", at[IDLE / 2]);
}

#[actix_rt::test]
async fn connections_past_the_limit_wait_for_a_free_slot() {
    let t = TestDb::empty().await;
    let served = spawn_serve_with(
        &t.url(),
        &[
            "--workers",
            "1",
            "--max-connections",
            "4",
            "--header-timeout",
            "30",
        ],
        &[],
    )
    .await;
    let base = served.base.as_str();
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(connect(base).await);
    }
    let body = serde_json::to_vec(&text_update(1, 51, "fifth")).unwrap();
    let mut fifth = connect(base).await;
    let head = webhook_head(
        base,
        body.len(),
        &format!("{}Connection: close\r\n", secret_header(SECRET)),
    );
    fifth.write_all(head.as_bytes()).await.unwrap();
    fifth.write_all(&body).await.unwrap();
    fifth.flush().await.unwrap();
    let mut buf = Vec::new();
    let early = tokio::time::timeout(Duration::from_secs(2), read_head(&mut fifth, &mut buf)).await;
    assert!(
        early.is_err(),
        "the 5th connection was served while 4 were open: {early:?}"
    );
    // A slot frees: the 5th is accepted and answered.
    let freed = Instant::now();
    drop(idle.pop());
    let head = tokio::time::timeout(Duration::from_secs(15), read_head(&mut fifth, &mut buf))
        .await
        .expect("the 5th is answered once a slot is free")
        .expect("an answer");
    println!("limit: 5th answered {:?} after a slot was freed", freed.elapsed());
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

/// The value of `name` (`metric{labels}`) in Prometheus text.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// A cluster of the flood's own whose server counts every statement it runs
/// (`pg_stat_statements`, loaded at start), with the database `healthz` for `serve`.
/// The count is the server's, so no bookkeeping of botdb's can make it look right.
async fn counting_cluster() -> EmbeddedPostgres {
    let pg = tokio::task::spawn_blocking(EmbeddedPostgres::start)
        .await
        .unwrap()
        .expect("a cluster of the test's own");
    let mut admin = botdb::migrate::connect_to(&pg.config("postgres")).await.unwrap();
    sqlx::raw_sql("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        .execute(&mut admin)
        .await
        .unwrap();
    drop(admin);
    let pg = tokio::task::spawn_blocking(move || {
        pg.stop(StopMode::Fast)?;
        pg.restart()?;
        Ok::<_, botdb::Error>(pg)
    })
    .await
    .unwrap()
    .expect("restarted with pg_stat_statements (PostgreSQL's contrib modules are needed)");
    let mut admin = botdb::migrate::connect_to(&pg.config("postgres")).await.unwrap();
    sqlx::raw_sql("CREATE EXTENSION pg_stat_statements")
        .execute(&mut admin)
        .await
        .unwrap();
    pg.create_database("healthz").await.unwrap();
    pg
}

/// How many times the server ran `/healthz`'s statement (`SELECT 1`, which the server
/// records as `SELECT $1`) in the database `healthz`, read from the `postgres` database
/// so that this reading is not among them.
async fn server_health_queries(admin: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(sum(s.calls), 0)::int8 FROM pg_stat_statements s \
         JOIN pg_database d ON d.oid = s.dbid \
         WHERE d.datname = 'healthz' AND s.query = 'SELECT $1'",
    )
    .fetch_one(admin)
    .await
    .unwrap()
}

/// `botdb_health_checks_total{source="database"}` and `{source="cache"}` from /metrics.
async fn health_metrics(base: &str) -> (f64, f64) {
    let mut resp = client().get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let text = String::from_utf8(resp.body().await.unwrap().to_vec()).unwrap();
    (
        sample(&text, "botdb_health_checks_total{source=\"database\"}"),
        sample(&text, "botdb_health_checks_total{source=\"cache\"}"),
    )
}

#[actix_rt::test]
async fn a_healthz_flood_asks_the_database_at_most_once_per_cache_period() {
    const CALLS: usize = 2000;
    const TASKS: usize = 32;
    // Short, so that the flood spans many periods: every expiry is a moment where 32
    // callers find the answer stale at once, which single flight must turn into one
    // query.
    const PERIOD: Duration = Duration::from_millis(50);
    let pg = counting_cluster().await;
    let url = pg.url("healthz").expose_secret().to_string();
    let period = PERIOD.as_secs_f64().to_string();
    let served = spawn_serve_with(&url, &["--health-cache", &period], &[]).await;
    let base = Arc::new(served.base.clone());
    let mut admin = botdb::migrate::connect_to(&pg.config("postgres")).await.unwrap();
    let (metric_before, _) = health_metrics(&base).await;
    let server_before = server_health_queries(&mut admin).await;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (base, next) = (base.clone(), next.clone());
            actix_rt::spawn(async move {
                let c = client();
                let mut ok = 0;
                while next.fetch_add(1, Ordering::Relaxed) < CALLS {
                    let resp = c.get(format!("{base}/healthz")).send().await.expect("an answer");
                    assert_eq!(resp.status().as_u16(), 200);
                    ok += 1;
                }
                ok
            })
        })
        .collect();
    let ok: usize = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(tasks))
        .await
        .expect("the flood is answered in time")
        .into_iter()
        .map(|r| r.unwrap())
        .sum();
    let elapsed = started.elapsed();
    assert_eq!(ok, CALLS);
    let asked = server_health_queries(&mut admin).await - server_before;
    let (metric_after, cached) = health_metrics(&base).await;
    // Each query starts at least a period after the previous one ended, and every one
    // was asked for by a call of the flood: within `elapsed`, at most this many.
    let allowed = (elapsed.as_secs_f64() / PERIOD.as_secs_f64()).floor() as i64 + 1;
    println!(
        "healthz flood: {CALLS} calls from {TASKS} tasks in {:.3} s, cache period {PERIOD:?}: \
         the server ran the health query {asked} times (at most {allowed} allowed); \
         botdb's metric says {} database checks, {cached} cached answers in all",
        elapsed.as_secs_f64(),
        metric_after - metric_before,
    );
    assert!(
        elapsed >= PERIOD * 4,
        "the flood spans several cache periods: {elapsed:?}"
    );
    assert!(
        asked <= allowed,
        "the server ran the health query {asked} times in {elapsed:?}, at most {allowed} allowed"
    );
    assert!(
        asked >= 2,
        "the cache expired during the flood and was refreshed: {asked}"
    );
    assert_eq!(
        metric_after - metric_before,
        asked as f64,
        "/metrics counts the database checks the server ran"
    );
}

#[actix_rt::test]
async fn health_and_metrics_can_move_to_an_admin_address_behind_a_token() {
    const TOKEN: &str = "admin-token_123";
    let t = TestDb::empty().await;
    let served = spawn_serve_with(
        &t.url(),
        &["--admin-bind", "127.0.0.1:0"],
        &[("BOTDB_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    let c = client();
    let base = served.base.as_str();
    let admin = served.admin.as_deref().expect("an admin address");
    assert_ne!(base, admin);
    let bearer = format!("Bearer {TOKEN}");
    let get = async |url: String, auth: Option<&str>| {
        let mut req = c.get(url);
        if let Some(auth) = auth {
            req = req.insert_header(("Authorization", auth));
        }
        let mut resp = tokio::time::timeout(Duration::from_secs(30), req.send())
            .await
            .expect("answered in time")
            .expect("an answer");
        let body = resp.body().await.unwrap_or_default().to_vec();
        (
            resp.status().as_u16(),
            String::from_utf8_lossy(&body).into_owned(),
        )
    };
    for path in ["/healthz", "/metrics"] {
        for auth in [None, Some(bearer.as_str())] {
            let (status, _) = get(format!("{base}{path}"), auth).await;
            assert_eq!(status, 404, "public {path} (token: {})", auth.is_some());
        }
        let (status, _) = get(format!("{admin}{path}"), None).await;
        assert_eq!(status, 401, "admin {path} without the token");
        let (status, _) = get(format!("{admin}{path}"), Some("Bearer wrong-token")).await;
        assert_eq!(status, 401, "admin {path} with a wrong token");
        let (status, body) = get(format!("{admin}{path}"), Some(&bearer)).await;
        assert_eq!(status, 200, "admin {path} with the token: {body}");
        if path == "/metrics" {
            assert!(
                body.contains("# TYPE botdb_health_checks_total counter"),
                "{body}"
            );
            assert!(body.contains("botdb_actor_queued{actor="), "{body}");
        }
    }
    let update = |id| serde_json::to_vec(&text_update(id, 61, "hi")).unwrap();
    let (status, _) = post_raw(&c, admin, update(1), "application/json", Some(SECRET)).await;
    assert_eq!(status, 404, "no webhook on the admin address");
    let (status, body) = post_raw(&c, base, update(2), "application/json", Some(SECRET)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}
