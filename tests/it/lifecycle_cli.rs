//! `botdb purge`, `botdb erase-user` and serve's `BOTDB_PURGE_AFTER` (issue 15), run as
//! an operator runs them.

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cli::{run, stderr, stdout};
use crate::helpers::{TestDb, eventually};
use crate::serve::{client, spawn_serve_with};

/// `n` messages of user 1 soft-deleted 40 days ago, and 5 live ones written 60 days ago.
async fn aged(t: &TestDb, n: i64) {
    sqlx::raw_sql("INSERT INTO users (id) VALUES (1)")
        .execute(t.db.pool())
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO messages (id, user_id, role, content, content_length, created_at, deleted_at) \
         SELECT gen_random_uuid(), 1, 'user', 'old', 3, now() - interval '60 days', now() - interval '40 days' \
           FROM generate_series(1, $1::int8); \
         ",
    )
    .bind(n)
    .execute(t.db.pool())
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO messages (id, user_id, role, content, content_length, created_at) \
         SELECT gen_random_uuid(), 1, 'user', 'live', 4, now() - interval '60 days' FROM generate_series(1, 5)",
    )
    .execute(t.db.pool())
    .await
    .unwrap();
}

async fn left(t: &TestDb, content: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM messages WHERE content = $1")
        .bind(content)
        .fetch_one(&mut t.conn().await)
        .await
        .unwrap()
}

#[tokio::test]
async fn purge_stops_on_ctrl_c_between_batches_and_a_second_run_finishes() {
    let t = TestDb::new().await;
    aged(&t, 20_000).await;
    let child = tokio::process::Command::new(crate::helpers::botdb_bin())
        .args([
            "purge",
            "--deleted-before",
            "30d",
            "--batch",
            "100",
            "--pause",
            "20ms",
        ])
        .env("DATABASE_URL", t.url())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Once some batches are committed, Ctrl-C.
    assert!(
        eventually(Duration::from_secs(60), async || left(&t, "old").await < 20_000).await,
        "the purge started"
    );
    let pid = i32::try_from(child.id().unwrap()).unwrap();
    kill(Pid::from_raw(pid), Signal::SIGINT).unwrap();
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the purge stopped")
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("interrupted: purged"), "{text}");
    assert!(text.contains("run the same command again"), "{text}");
    let after_stop = left(&t, "old").await;
    assert!(
        after_stop > 0 && after_stop < 20_000,
        "stopped part way: {after_stop} left"
    );
    assert_eq!(after_stop % 100, 0, "whole batches only: {after_stop} left");

    // The same command again goes on from there and finishes.
    let o = run(&["purge", "--deleted-before", "30d", "--batch", "1000"], &t.env()).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("purged {after_stop} messages soft-deleted before")),
        "{}",
        stdout(&o)
    );
    assert_eq!((left(&t, "old").await, left(&t, "live").await), (0, 5));
}

#[tokio::test]
async fn purge_refuses_a_malformed_duration_and_removes_nothing() {
    let t = TestDb::new().await;
    aged(&t, 10).await;
    for bad in ["30x", "thirty", "0s", "-5d"] {
        let arg = format!("--deleted-before={bad}");
        let o = run(&["purge", &arg], &t.env()).await;
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", stdout(&o));
        assert!(
            stderr(&o).contains("--deleted-before") && stderr(&o).contains("expected a duration"),
            "{bad}: {}",
            stderr(&o)
        );
    }
    let o = run(&["purge"], &t.env()).await;
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(left(&t, "old").await, 10);
}

#[tokio::test]
async fn erase_user_needs_the_audit_key_names_unknown_users_and_erases() {
    let t = TestDb::new().await;
    aged(&t, 3).await;
    let o = run(&["erase-user", "1"], &t.env()).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("BOTDB_AUDIT_KEY is not set"),
        "{}",
        stderr(&o)
    );
    assert_eq!(left(&t, "live").await, 5);

    let mut env = t.env();
    env.push(("BOTDB_AUDIT_KEY", "short".into()));
    let o = run(&["erase-user", "1"], &env).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("BOTDB_AUDIT_KEY"), "{}", stderr(&o));
    assert!(
        !stderr(&o).contains("short"),
        "the key is never shown: {}",
        stderr(&o)
    );

    let mut env = t.env();
    env.push(("BOTDB_AUDIT_KEY", "a-test-audit-key-of-some-length".into()));
    let o = run(&["erase-user", "404"], &env).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("user 404 not found"), "{}", stderr(&o));
    let o = run(&["erase-user", "abc"], &env).await;
    assert_eq!(o.status.code(), Some(2));

    let o = run(&["erase-user", "1"], &env).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o)
            .starts_with("erased user 1: 8 messages, 0 settings row(s), 0 request key(s); audit row 1 at "),
        "{}",
        stdout(&o)
    );
    assert_eq!(left(&t, "old").await + left(&t, "live").await, 0);
}

#[actix_rt::test]
async fn serve_purges_past_botdb_purge_after_and_counts_it_in_metrics() {
    let t = TestDb::new().await;
    aged(&t, 2_500).await;
    let served = spawn_serve_with(&t.url(), &[], &[("BOTDB_PURGE_AFTER", "30d")]).await;
    assert!(
        eventually(Duration::from_secs(60), async || left(&t, "old").await == 0).await,
        "serve purged in the background"
    );
    assert_eq!(left(&t, "live").await, 5);
    let c = client();
    let text = String::from_utf8(
        c.get(format!("{}/metrics", served.base))
            .send()
            .await
            .unwrap()
            .body()
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    assert!(text.contains("botdb_messages_purged_total 2500"), "{text}");
    assert!(text.contains("botdb_users_erased_total 0"), "{text}");

    // A malformed setting stops serve before it starts.
    let o = run(&["serve", "--bind", "127.0.0.1:0"], &{
        let mut env = t.env();
        env.push(("BOTDB_PURGE_AFTER", "soon".into()));
        env.push(("BOTDB_WEBHOOK_SECRET", "s3cret-token".into()));
        env
    })
    .await;
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("BOTDB_PURGE_AFTER"), "{}", stderr(&o));
}

/// One message of user 1, `recent`, soft-deleted 2 hours ago.
async fn deleted_two_hours_ago(t: &TestDb) {
    sqlx::raw_sql(
        "INSERT INTO users (id) VALUES (1); \
         INSERT INTO messages (id, user_id, role, content, content_length, created_at, deleted_at) \
         VALUES (gen_random_uuid(), 1, 'user', 'recent', 6, now() - interval '3 hours', now() - interval '2 hours')",
    )
    .execute(t.db.pool())
    .await
    .unwrap();
}

#[tokio::test]
async fn purge_shorter_than_the_key_retention_is_refused_and_removes_nothing() {
    let t = TestDb::new().await;
    deleted_two_hours_ago(&t).await;
    // Shorter than the default key retention (24 h): a copy of an update handled 2 hours
    // ago must still find the messages its key names.
    let o = run(&["purge", "--deleted-before", "1h"], &t.env()).await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{}{err}", stdout(&o));
    assert!(
        err.contains("--deleted-before") && err.contains("BOTDB_KEY_RETENTION_HOURS=24"),
        "{err}"
    );
    assert_eq!(left(&t, "recent").await, 1, "a refused purge removed a message");
    // The same with the key retention set shorter than the period still refuses.
    let mut env = t.env();
    env.push(("BOTDB_KEY_RETENTION_HOURS", "1.5".into()));
    let o = run(&["purge", "--deleted-before", "1h"], &env).await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("BOTDB_KEY_RETENTION_HOURS=1.5"),
        "{}",
        stderr(&o)
    );
    assert_eq!(left(&t, "recent").await, 1);

    // At the key retention, a purge runs: 24h keeps what was deleted 2 hours ago...
    let o = run(&["purge", "--deleted-before", "24h"], &t.env()).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("purged 0 messages"), "{}", stdout(&o));
    assert_eq!(left(&t, "recent").await, 1);
    // ...and with the keys kept 1 hour, a 1-hour purge removes it.
    let mut env = t.env();
    env.push(("BOTDB_KEY_RETENTION_HOURS", "1".into()));
    let o = run(&["purge", "--deleted-before", "1h"], &env).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("purged 1 messages"), "{}", stdout(&o));
    assert_eq!(left(&t, "recent").await, 0);

    // A malformed key retention is refused as serve refuses it.
    for bad in ["0", "soon", "-3"] {
        let mut env = t.env();
        env.push(("BOTDB_KEY_RETENTION_HOURS", bad.into()));
        let o = run(&["purge", "--deleted-before", "30d"], &env).await;
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", stdout(&o));
        assert!(
            stderr(&o).contains("expected a number of hours more than 0"),
            "{bad}: {}",
            stderr(&o)
        );
    }
}

#[tokio::test]
async fn serve_refuses_botdb_purge_after_shorter_than_the_key_retention() {
    let t = TestDb::new().await;
    deleted_two_hours_ago(&t).await;
    let mut env = t.env();
    env.push(("BOTDB_PURGE_AFTER", "1h".into()));
    env.push(("BOTDB_WEBHOOK_SECRET", "s3cret-token".into()));
    let o = run(&["serve", "--bind", "127.0.0.1:0"], &env).await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("BOTDB_PURGE_AFTER") && err.contains("BOTDB_KEY_RETENTION_HOURS=24"),
        "{err}"
    );
    assert_eq!(left(&t, "recent").await, 1, "serve purged before refusing");
}

/// The turn pipeline's outbox: 1,500 messages sent two days ago, one failed as long ago,
/// one sent an hour ago and one still waiting for two days (Telegram down).
async fn outbox_rows(t: &TestDb) {
    sqlx::raw_sql(
        "INSERT INTO outbox (user_id, chat_id, text, state, created_at, sent_at, tg_message_id) \
         SELECT 1, 1, 'old', 'sent', now() - interval '2 days', now() - interval '2 days', g \
           FROM generate_series(1, 1500) g; \
         INSERT INTO outbox (user_id, chat_id, text, state, created_at, outcome) \
         VALUES (1, 1, 'old', 'failed', now() - interval '2 days', '403 Forbidden: bot was blocked by the user'); \
         INSERT INTO outbox (user_id, chat_id, text, state, created_at, sent_at, tg_message_id) \
         VALUES (1, 1, 'recent', 'sent', now() - interval '1 hour', now() - interval '1 hour', 2000); \
         INSERT INTO outbox (user_id, chat_id, text, created_at) \
         VALUES (1, 1, 'waiting', now() - interval '2 days')",
    )
    .execute(t.db.pool())
    .await
    .unwrap();
}

async fn outbox_left(t: &TestDb, text: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE text = $1")
        .bind(text)
        .fetch_one(t.db.pool())
        .await
        .unwrap()
}

#[actix_rt::test]
async fn serve_purges_sent_and_failed_outbox_messages_past_the_key_retention_and_keeps_the_rest() {
    let t = TestDb::new().await;
    outbox_rows(&t).await;
    let served = spawn_serve_with(&t.url(), &[], &[]).await;
    assert!(
        eventually(Duration::from_secs(60), async || outbox_left(&t, "old").await
            == 0)
        .await,
        "serve purged the settled outbox messages in the background"
    );
    assert_eq!(
        outbox_left(&t, "recent").await,
        1,
        "sent within the retention: kept"
    );
    assert_eq!(outbox_left(&t, "waiting").await, 1, "not sent yet: never purged");
    let text = String::from_utf8(
        client()
            .get(format!("{}/metrics", served.base))
            .send()
            .await
            .unwrap()
            .body()
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    assert!(text.contains("botdb_outbox_purged_total 1501"), "{text}");
}
