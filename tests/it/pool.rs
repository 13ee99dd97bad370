//! Pool behaviour: size + overflow, the 16th caller, idle overflow closed, pre-ping,
//! recycle, echo, close.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use botdb::Error;

use crate::helpers::{Capture, TestDb, eventually, server_connections};

#[tokio::test]
async fn fifteen_checkouts_use_fifteen_connections_and_the_sixteenth_waits_then_times_out() {
    let t = TestDb::with(|b| {
        b.pool_size(5)
            .max_overflow(10)
            .pool_timeout(Duration::from_secs(1))
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..15 {
        held.push(t.db.pool().acquire().await.expect("one of the 15"));
    }
    let mut observer = t.conn().await;
    assert_eq!(server_connections(&mut observer, &t.name).await, 15);
    assert_eq!(t.db.pool_status().in_use, 15);

    let err = botdb::Error::from(
        t.db.pool()
            .acquire()
            .await
            .expect_err("the 16th must not get a 16th connection"),
    );
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert_eq!(
        server_connections(&mut observer, &t.name).await,
        15,
        "no 16th server connection"
    );
}

#[tokio::test]
async fn the_sixteenth_caller_gets_a_connection_once_one_is_returned() {
    let t = TestDb::with(|b| {
        b.pool_size(5)
            .max_overflow(10)
            .pool_timeout(Duration::from_secs(30))
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..15 {
        held.push(t.db.pool().acquire().await.unwrap());
    }
    let pool = t.db.pool().clone();
    let mut sixteenth = tokio::spawn(async move { pool.acquire().await.map(|_| ()) });
    // Still waiting while all 15 are out.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut sixteenth)
            .await
            .is_err()
    );
    held.pop();
    sixteenth
        .await
        .unwrap()
        .expect("the 16th caller got the returned connection");
    let mut observer = t.conn().await;
    assert!(server_connections(&mut observer, &t.name).await <= 15);
}

#[tokio::test]
async fn overflow_connections_are_closed_after_the_idle_timeout() {
    let t = TestDb::with(|b| {
        b.pool_size(5)
            .max_overflow(10)
            .idle_timeout(Duration::from_millis(500))
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..15 {
        held.push(t.db.pool().acquire().await.unwrap());
    }
    drop(held);
    assert!(t.db.pool_status().size >= 5);
    let db = t.db.clone();
    let shrunk = eventually(Duration::from_secs(20), async || {
        let s = db.pool_status();
        s.size == 5
    })
    .await;
    assert!(shrunk, "pool still holds {:?}", t.db.pool_status());
    let mut observer = t.conn().await;
    let name = t.name.clone();
    // The server sees a closed connection's backend go a moment later (longer on a
    // loaded machine). At most the permanent five remain (sqlx may also retire one of
    // those when idle and open it again on demand).
    let mut seen = 0;
    let closed = eventually(Duration::from_secs(30), async || {
        seen = server_connections(&mut observer, &name).await;
        seen <= 5
    })
    .await;
    assert!(closed, "the server still has {seen} connections of the pool");
}

async fn backend_pid(db: &botdb::Database) -> botdb::Result<i32> {
    Ok(sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(db.pool())
        .await?)
}

async fn terminate(t: &TestDb, pid: i32) {
    let mut admin = t.conn().await;
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(killed);
    let gone = eventually(Duration::from_secs(10), async || {
        sqlx::query_scalar::<_, bool>("SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
            .bind(pid)
            .fetch_one(&mut admin)
            .await
            .unwrap()
    })
    .await;
    assert!(gone);
}

#[tokio::test]
async fn pre_ping_on_every_checkout_replaces_a_killed_connection_without_an_error() {
    // The reference's mode: DB_POOL_PRE_PING_IDLE=0 pings every checkout.
    let t = TestDb::with(|b| b.pool_size(1).max_overflow(0).pre_ping_idle(Duration::ZERO)).await;
    let pid = backend_pid(&t.db).await.unwrap();
    terminate(&t, pid).await;
    let new_pid = backend_pid(&t.db)
        .await
        .expect("pre-ping hides the dead connection");
    assert_ne!(new_pid, pid);
}

#[tokio::test]
async fn default_pre_ping_checks_a_connection_that_sat_idle_and_replaces_it() {
    // The default pings connections idle at least 500 ms: a connection killed while it
    // sat in the pool is replaced without an error to the caller.
    let t = TestDb::with(|b| b.pool_size(1).max_overflow(0)).await;
    assert_eq!(t.config.pool.pre_ping_idle, Duration::from_millis(500));
    let pid = backend_pid(&t.db).await.unwrap();
    terminate(&t, pid).await;
    // The condition under test is "idle longer than the threshold": let that much time
    // pass (not a synchronisation; nothing else is awaited).
    tokio::time::sleep(t.config.pool.pre_ping_idle + Duration::from_millis(100)).await;
    let new_pid = backend_pid(&t.db)
        .await
        .expect("pre-ping hides the dead connection");
    assert_ne!(new_pid, pid);
}

#[tokio::test]
async fn without_pre_ping_the_killed_connection_reaches_the_caller() {
    // The control for the test above: it shows that the kill is real.
    let t = TestDb::with(|b| b.pool_size(1).max_overflow(0).pre_ping(false)).await;
    let pid = backend_pid(&t.db).await.unwrap();
    terminate(&t, pid).await;
    let err = backend_pid(&t.db)
        .await
        .expect_err("a dead connection was handed out");
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
}

#[tokio::test]
async fn pre_ping_with_an_idle_threshold_still_catches_a_killed_idle_connection() {
    let t = TestDb::with(|b| {
        b.pool_size(1)
            .max_overflow(0)
            .pre_ping_idle(Duration::from_millis(1))
    })
    .await;
    let pid = backend_pid(&t.db).await.unwrap();
    terminate(&t, pid).await;
    assert_ne!(backend_pid(&t.db).await.unwrap(), pid);
}

#[tokio::test]
async fn recycle_replaces_connections_older_than_the_limit() {
    let t = TestDb::with(|b| {
        b.pool_size(1)
            .max_overflow(0)
            .recycle(Some(Duration::from_millis(300)))
    })
    .await;
    let first = backend_pid(&t.db).await.unwrap();
    let db = t.db.clone();
    let replaced = eventually(Duration::from_secs(20), async || {
        backend_pid(&db).await.unwrap() != first
    })
    .await;
    assert!(replaced, "the connection was never recycled");
}

#[tokio::test]
async fn close_waits_for_a_running_query_and_does_not_cut_it() {
    let t = TestDb::new().await;
    let finished_at = Arc::new(Mutex::new(None));
    let pool = t.db.pool().clone();
    let done = finished_at.clone();
    let query = tokio::spawn(async move {
        let mut conn = pool.acquire().await?;
        sqlx::query("SELECT pg_sleep(1)").execute(&mut *conn).await?;
        *done.lock().unwrap() = Some(Instant::now());
        drop(conn);
        Ok::<_, sqlx::Error>(())
    });
    // Wait until the server is actually running it.
    let mut observer = t.conn().await;
    let name = t.name.clone();
    let running = eventually(Duration::from_secs(10), async || {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = $1 AND state = 'active' \
             AND query LIKE 'SELECT pg_sleep%')",
        )
        .bind(&name)
        .fetch_one(&mut observer)
        .await
        .unwrap()
    })
    .await;
    assert!(running);
    t.db.close().await;
    let closed_at = Instant::now();
    let query_finished = finished_at
        .lock()
        .unwrap()
        .expect("close returned before the query finished");
    assert!(query_finished <= closed_at);
    query.await.unwrap().expect("the running query succeeded");
    assert!(t.db.is_closed());
    let err = botdb::Error::from(t.db.pool().acquire().await.unwrap_err());
    assert!(matches!(err, Error::ShuttingDown), "{err:?}");
    // Closed on our side; the server's backends exit when they see the sockets close,
    // a moment later.
    let gone = eventually(Duration::from_secs(10), async || {
        server_connections(&mut observer, &t.name).await == 0
    })
    .await;
    assert!(gone, "connections left open after close");
}

#[cfg(feature = "cli")]
async fn statements_logged(echo: bool) -> String {
    let t = TestDb::with(|b| b.echo(echo)).await;
    let capture = Capture::default();
    let subscriber = botdb::telemetry::subscriber("sqlx=trace", capture.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    sqlx::query("SELECT 42 AS echo_marker")
        .execute(t.db.pool())
        .await
        .unwrap();
    capture.text()
}

#[cfg(feature = "cli")]
#[tokio::test]
async fn echo_logs_every_statement_through_tracing() {
    assert!(statements_logged(true).await.contains("SELECT 42 AS echo_marker"));
    assert!(!statements_logged(false).await.contains("echo_marker"));
}

async fn autocommit_pid(db: &botdb::Database) -> botdb::Result<i32> {
    db.autocommit(async |c| Ok(sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(c).await?))
        .await
}

#[tokio::test]
async fn connections_are_reused_between_uses_without_going_through_the_pool() {
    let t = TestDb::with(|b| b.pool_size(1).max_overflow(4)).await;
    let first = autocommit_pid(&t.db).await.unwrap();
    for _ in 0..20 {
        assert_eq!(
            autocommit_pid(&t.db).await.unwrap(),
            first,
            "the same connection, held between uses"
        );
    }
    assert!(
        t.db.pool().num_idle() < t.db.pool_status().idle as usize,
        "held by botdb, not in sqlx's idle queue"
    );
}

#[tokio::test]
async fn a_held_connection_killed_while_idle_is_replaced_without_an_error() {
    let t = TestDb::with(|b| b.pool_size(1).max_overflow(0)).await;
    let pid = autocommit_pid(&t.db).await.unwrap();
    terminate(&t, pid).await;
    // Idle past the pre-ping threshold (the condition under test, not a synchronisation).
    tokio::time::sleep(t.config.pool.pre_ping_idle + Duration::from_millis(100)).await;
    let new_pid = autocommit_pid(&t.db).await.expect("checked before use, replaced");
    assert_ne!(new_pid, pid);
}

#[tokio::test]
async fn held_connections_go_back_to_the_pool_when_idle_and_at_close() {
    let t = TestDb::with(|b| b.pool_size(2).max_overflow(3)).await;
    let busy: Vec<_> = (0..5).map(|_| autocommit_pid(&t.db)).collect();
    for r in futures::future::join_all(busy).await {
        r.unwrap();
    }
    let db = t.db.clone();
    let returned = eventually(Duration::from_secs(10), async || {
        let s = db.pool_status();
        db.pool().num_idle() as u32 == s.idle && s.in_use == 0
    })
    .await;
    assert!(
        returned,
        "idle held connections went back to sqlx's pool: {:?}",
        t.db.pool_status()
    );
    autocommit_pid(&t.db).await.unwrap();
    t.db.close().await;
    let s = t.db.pool_status();
    assert_eq!(
        (s.size, s.closed),
        (0, true),
        "close returned and closed the held ones too"
    );
}

#[tokio::test]
async fn the_reference_mode_pings_every_checkout_and_holds_nothing() {
    let t = TestDb::with(|b| b.pool_size(1).max_overflow(0).pre_ping_idle(Duration::ZERO)).await;
    let pid = autocommit_pid(&t.db).await.unwrap();
    terminate(&t, pid).await;
    assert_ne!(autocommit_pid(&t.db).await.expect("pinged at checkout"), pid);
}

/// Every TCP connection botdb opens to the server has `TCP_NODELAY`: without it, a
/// statement sent in more than one write (a batch larger than one TLS record) waits for
/// the server's delayed ACK, 20-40 ms (sqlx 0.9.0 dropped it; 0.9.1, which botdb
/// requires, sets it again). Linux: the sockets are found in /proc/self/fd.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn every_connection_to_the_server_has_tcp_nodelay() {
    use nix::sys::socket::{SockaddrStorage, getpeername, getsockopt, sockopt};
    use std::os::fd::BorrowedFd;

    let t = TestDb::with(|b| b.pool_size(3).max_overflow(0)).await;
    let port = t.db.pool().connect_options().get_port();
    // Three pooled connections, held, and one of the migrator's own.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(t.db.pool().acquire().await.unwrap());
    }
    let own = botdb::migrate::connect_to(&t.config).await.unwrap();
    let (mut checked, mut without) = (0, Vec::new());
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let is_socket =
            std::fs::read_link(entry.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:"));
        let Some(raw) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if !is_socket {
            continue;
        }
        // SAFETY: the descriptor is this process's and stays open for the two calls
        // (the connections are held; another test's socket closing meanwhile only makes
        // a call fail, which is skipped).
        let fd = unsafe { BorrowedFd::borrow_raw(raw) };
        let Ok(peer) = getpeername::<SockaddrStorage>(raw) else {
            continue;
        };
        let peer_port = peer
            .as_sockaddr_in()
            .map(|a| a.port())
            .or_else(|| peer.as_sockaddr_in6().map(|a| a.port()));
        if peer_port != Some(port) {
            continue;
        }
        match getsockopt(&fd, sockopt::TcpNoDelay) {
            Ok(true) => checked += 1,
            Ok(false) => without.push(raw),
            Err(_) => {}
        }
    }
    assert!(
        checked >= 4,
        "found {checked} connections to port {port} with TCP_NODELAY"
    );
    assert!(without.is_empty(), "connections without TCP_NODELAY: {without:?}");
    drop(own);
    drop(held);
}
