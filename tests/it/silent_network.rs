//! A network that goes silent between botdb and PostgreSQL (issue 26): no FIN, no RST,
//! no bytes, as behind a moved address or a dropped route. Staged with a real TCP proxy
//! ([`TcpProxy`]) in front of the real server; `serve` runs as a process, as deployed.
//!
//! What must hold: every webhook request is answered (200 or 503) within the bound
//! docs/serve.md states, turns are served again within seconds of a server answering at
//! the address, nothing acknowledged is lost, and SIGTERM ends `serve` in bounded time.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use botdb::embedded::TcpProxy;
use serde_json::Value;

use crate::helpers::TestDb;
use crate::serve::{LoadRun, SECRET, client, sigterm, spawn_serve_with, text_update, verify_turns};

/// The settings the test runs `serve` with: short, so that the test is short.
const STATEMENT: u64 = 2;
const NETWORK: u64 = 1;
const POOL: u64 = 3;

/// The bound docs/serve.md states for one webhook request: a connection within
/// `DB_POOL_TIMEOUT`, then BEGIN within `DB_NETWORK_TIMEOUT`, the unit of work and its
/// COMMIT each within `DB_STATEMENT_TIMEOUT + DB_NETWORK_TIMEOUT`.
fn bound() -> Duration {
    Duration::from_secs(POOL + NETWORK + 2 * (STATEMENT + NETWORK))
}

/// `t`'s URL with its port replaced by the proxy's.
fn through(t: &TestDb, proxy: &TcpProxy) -> String {
    let mut url = url::Url::parse(&t.url()).unwrap();
    url.set_host(Some("127.0.0.1")).unwrap();
    url.set_port(Some(proxy.addr().port())).unwrap();
    url.to_string()
}

/// The real server's address.
fn server_addr(t: &TestDb) -> std::net::SocketAddr {
    let url = url::Url::parse(&t.url()).unwrap();
    let host = url.host_str().unwrap();
    let host = if host == "localhost" { "127.0.0.1" } else { host };
    format!("{host}:{}", url.port().unwrap_or(5432)).parse().unwrap()
}

/// One answer: when it was sent, how long it took, and its status (0: no answer).
struct Answer {
    user: i64,
    sent: Instant,
    took: Duration,
    status: u16,
}

/// `users` users each sending text updates one after the other (each waits for its
/// answer, as Telegram does per chat) until `stop`.
/// When each user last sent a request that was answered 200.
type LastServed = Arc<std::sync::Mutex<HashMap<i64, Instant>>>;

fn load(
    base: Arc<String>,
    users: std::ops::RangeInclusive<i64>,
    stop: Arc<AtomicBool>,
    last_served: LastServed,
) -> actix_rt::task::JoinHandle<(Vec<Answer>, LoadRun)> {
    let clients: Vec<_> = users
        .map(|user| {
            let (base, stop, last_served) = (base.clone(), stop.clone(), last_served.clone());
            actix_rt::spawn(async move {
                let c = client();
                let mut answers = Vec::new();
                let mut acked = Vec::new();
                for i in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let text = format!("u{user}-m{i}");
                    let body = serde_json::to_vec(&text_update(user * 1_000_000 + i, user, &text)).unwrap();
                    let sent = Instant::now();
                    // Far longer than any bound: a request that waits this long is a
                    // request nothing on botdb's side bounded.
                    let answer = c
                        .post(format!("{base}/telegram/webhook"))
                        .insert_header(("Content-Type", "application/json"))
                        .insert_header(("X-Telegram-Bot-Api-Secret-Token", SECRET))
                        .timeout(Duration::from_secs(120))
                        .send_body(body)
                        .await;
                    let status = match answer {
                        Ok(mut resp) => {
                            let status = resp.status().as_u16();
                            if status == 200 {
                                let reply: Value = resp.json().await.unwrap();
                                assert!(
                                    reply["text"]
                                        .as_str()
                                        .unwrap()
                                        .starts_with(&format!("You said: {text}"))
                                );
                                acked.push(text);
                                if let Ok(mut last) = last_served.lock() {
                                    last.insert(user, sent);
                                }
                            }
                            status
                        }
                        // serve has exited (after SIGTERM): this user is done.
                        Err(awc::error::SendRequestError::Connect(awc::error::ConnectError::Io(e)))
                            if e.kind() == std::io::ErrorKind::ConnectionRefused =>
                        {
                            break;
                        }
                        // Sent, and no answer came.
                        Err(e) => {
                            eprintln!("      user {user}: no answer: {e:?}");
                            0
                        }
                    };
                    answers.push(Answer {
                        user,
                        sent,
                        took: sent.elapsed(),
                        status,
                    });
                    if status == 0 {
                        break;
                    }
                }
                (answers, (user, acked))
            })
        })
        .collect();
    actix_rt::spawn(async move {
        let mut all = Vec::new();
        let mut run = LoadRun::default();
        for c in clients {
            let (answers, acked) = c.await.unwrap();
            all.extend(answers);
            run.acked.push(acked);
        }
        (all, run)
    })
}

/// Waits (up to a minute) until serve's `/metrics` counts `at_least` replies in all.
async fn served_since(base: &str, at_least: f64) -> bool {
    crate::helpers::eventually(Duration::from_secs(60), async || {
        let Ok(mut resp) = client().get(format!("{base}/metrics")).send().await else {
            return false;
        };
        let Ok(body) = resp.body().await else {
            return false;
        };
        let text = String::from_utf8_lossy(&body).to_string();
        turns_total(&text) >= at_least
    })
    .await
}

/// `botdb_webhook_updates_total{result="replied"}` in a `/metrics` text.
fn turns_total(metrics: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with("botdb_webhook_updates_total{result=\"replied\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Ends every session of `t`'s database but the caller's: the server behind the
/// address is "another one" after the heal, holding none of the silenced sessions' locks
/// (a promoted standby has none of them either).
async fn replace_the_server(t: &TestDb) {
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
          WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .execute(&mut t.conn().await)
    .await
    .unwrap();
}

#[actix_rt::test]
async fn a_silent_network_answers_every_webhook_within_its_bound_and_turns_resume_within_seconds_of_the_heal()
{
    let t = TestDb::new().await;
    let proxy = TcpProxy::start(server_addr(&t)).await.unwrap();
    let (statement, network, pool) = (STATEMENT.to_string(), NETWORK.to_string(), POOL.to_string());
    let mut served = spawn_serve_with(
        &through(&t, &proxy),
        &[],
        &[
            ("DB_STATEMENT_TIMEOUT", &statement),
            ("DB_NETWORK_TIMEOUT", &network),
            ("DB_POOL_TIMEOUT", &pool),
        ],
    )
    .await;
    let base = Arc::new(served.base.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let last_served = LastServed::default();
    let running = load(base.clone(), 1..=32, stop.clone(), last_served.clone());
    assert!(
        served_since(&base, 500.0).await,
        "turns served before the silence"
    );

    let silenced_at = Instant::now();
    proxy.silence();
    // The server stays silent for 10 s; then one answers at the same address.
    let outage = Duration::from_secs(10);
    actix_rt::time::sleep_until((silenced_at + outage).into()).await;
    replace_the_server(&t).await;
    proxy.heal();
    let healed_at = Instant::now();
    // Until every user has had a request sent after the heal answered 200 (the test's
    // own limit, far past the bound; the figure is below).
    let all_back = crate::helpers::eventually(Duration::from_secs(60), async || {
        last_served
            .lock()
            .map(|last| last.len() == 32 && last.values().all(|sent| *sent >= healed_at))
            .unwrap_or(false)
    })
    .await;
    assert!(all_back, "every user served again after the heal");
    stop.store(true, Ordering::SeqCst);
    let (answers, run) = running.await.unwrap();

    // Every request answered, 200 or 503, within the bound.
    let unanswered = answers.iter().filter(|a| a.status == 0).count();
    assert_eq!(unanswered, 0, "requests with no answer");
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    for a in &answers {
        *statuses.entry(a.status).or_default() += 1;
    }
    assert!(statuses.keys().all(|s| [200, 503].contains(s)), "{statuses:?}");
    assert!(
        statuses.get(&503).copied().unwrap_or(0) > 0,
        "the silence was felt: {statuses:?}"
    );
    let longest = answers.iter().map(|a| a.took).max().unwrap();
    // A little room for the machine's scheduling on top of the stated bound.
    assert!(
        longest <= bound() + Duration::from_secs(2),
        "longest wait {longest:?}, bound {:?}",
        bound()
    );
    // Every user served again within seconds of the heal: the first 200 each user got
    // for a request sent after the heal.
    let mut back: HashMap<i64, Duration> = HashMap::new();
    for a in answers.iter().filter(|a| a.status == 200 && a.sent >= healed_at) {
        let at = (a.sent + a.took) - healed_at;
        back.entry(a.user).and_modify(|d| *d = (*d).min(at)).or_insert(at);
    }
    assert_eq!(back.len(), 32, "every user served after the heal");
    let recovered = back.values().max().copied().unwrap();
    assert!(
        recovered <= Duration::from_secs(10),
        "the last user was served again {recovered:?} after the heal"
    );

    // Nothing acknowledged is lost.
    let found = verify_turns(&mut t.conn().await, &run).await;
    assert_eq!(
        found.in_order,
        run.acked(),
        "every acknowledged turn stored, in order"
    );

    let metrics = String::from_utf8(
        client()
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .body()
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    let misses: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("botdb_db_deadline_misses_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(misses >= 1.0, "the misses are counted: {metrics}");
    let before = answers
        .iter()
        .filter(|a| a.status == 200 && a.sent < silenced_at)
        .count();
    eprintln!(
        "      silent network: {} requests ({statuses:?}), {before} turns before the silence; \
         longest wait {longest:?} (bound {:?}); every user served again within {recovered:?} of the heal",
        answers.len(),
        bound()
    );
    let exited = Instant::now();
    let status = sigterm(&mut served.child).await;
    assert!(status.success(), "{status:?}");
    eprintln!("      SIGTERM to exit: {:?}", exited.elapsed());
}

#[actix_rt::test]
async fn sigterm_while_the_network_is_silent_ends_serve_within_its_bound() {
    let t = TestDb::new().await;
    let proxy = TcpProxy::start(server_addr(&t)).await.unwrap();
    let (statement, network, pool) = (STATEMENT.to_string(), NETWORK.to_string(), POOL.to_string());
    let mut served = spawn_serve_with(
        &through(&t, &proxy),
        &[],
        &[
            ("DB_STATEMENT_TIMEOUT", &statement),
            ("DB_NETWORK_TIMEOUT", &network),
            ("DB_POOL_TIMEOUT", &pool),
        ],
    )
    .await;
    let base = Arc::new(served.base.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(base.clone(), 1..=32, stop.clone(), LastServed::default());
    assert!(
        served_since(&base, 200.0).await,
        "turns served before the silence"
    );
    proxy.silence();
    let signalled = Instant::now();
    let status = sigterm(&mut served.child).await;
    let took = signalled.elapsed();
    stop.store(true, Ordering::SeqCst);
    let (answers, run) = running.await.unwrap();
    // The in-flight requests end within their bound, then the drain: well within the
    // 30 s docs/serve.md gives a shutdown (HTTP's grace and BOTDB_DRAIN_TIMEOUT).
    assert!(
        took <= bound() + Duration::from_secs(10),
        "SIGTERM to exit: {took:?}"
    );
    eprintln!(
        "      SIGTERM while silent to exit: {took:?} ({} requests; {status:?})",
        answers.len()
    );
    drop(proxy);
    // What was acknowledged before the silence is stored.
    let found = verify_turns(&mut t.conn().await, &run).await;
    assert_eq!(found.in_order, run.acked());
}

/// The TCP sockets of this process connected to `peer`, with their keepalive settings:
/// (SO_KEEPALIVE, TCP_KEEPIDLE s, TCP_KEEPINTVL s, TCP_KEEPCNT, TCP_USER_TIMEOUT ms).
fn sockets_to(peer: std::net::SocketAddr) -> Vec<(bool, u32, u32, u32, u32)> {
    use nix::sys::socket::{SockaddrStorage, getpeername, getsockopt, sockopt};
    use std::os::fd::BorrowedFd;
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: duplicated at once; a descriptor closed meanwhile fails to duplicate,
        // and a reused number is checked (its peer) before it is read.
        let Ok(owned) = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned() else {
            continue;
        };
        let Ok(addr) = getpeername::<SockaddrStorage>(std::os::fd::AsRawFd::as_raw_fd(&owned)) else {
            continue;
        };
        let Some(v4) = addr.as_sockaddr_in() else { continue };
        if std::net::SocketAddr::V4((*v4).into()) != peer {
            continue;
        }
        out.push((
            getsockopt(&owned, sockopt::KeepAlive).unwrap(),
            getsockopt(&owned, sockopt::TcpKeepIdle).unwrap(),
            getsockopt(&owned, sockopt::TcpKeepInterval).unwrap(),
            getsockopt(&owned, sockopt::TcpKeepCount).unwrap(),
            getsockopt(&owned, sockopt::TcpUserTimeout).unwrap(),
        ));
    }
    out
}

#[actix_rt::test]
async fn every_database_connection_has_the_configured_keepalives_and_tcp_user_timeout() {
    let t = TestDb::new().await;
    // Through a proxy of its own: no other test's connection has this peer address.
    let proxy = TcpProxy::start(server_addr(&t)).await.unwrap();
    // libpq's names in the URL, as a libpq user writes them.
    let url = format!(
        "{}?keepalives_idle=7&keepalives_interval=3&keepalives_count=4&tcp_user_timeout=4321",
        through(&t, &proxy)
    );
    let config = botdb::Config::builder().url(url).pool_size(3).build().unwrap();
    assert_eq!(config.network.keepalives_idle, Duration::from_secs(7));
    let db = botdb::Database::connect(&config).await.unwrap();
    // The pool's three permanent connections, opened in the background.
    let all_open = crate::helpers::eventually(Duration::from_secs(30), async || {
        sockets_to(proxy.addr()).len() >= 3
    })
    .await;
    assert!(all_open, "{:?}", sockets_to(proxy.addr()));
    let sockets = sockets_to(proxy.addr());
    assert!(sockets.iter().all(|s| *s == (true, 7, 3, 4, 4321)), "{sockets:?}");
    db.close().await;
}
