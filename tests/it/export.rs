//! `botdb export-user` and `repo::export::export_user`: the whole of a user's data
//! (soft-deleted messages included), one consistent snapshot, streamed in flat memory.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::task::{Context, Poll};
use std::time::Duration;

use botdb::error::TimeoutKind;
use botdb::model::{Dialogue, Message, Role};
use botdb::{Error, repo};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde::de::IgnoredAny;
use sqlx::{Connection, PgConnection};
use tokio::io::AsyncWrite;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::cli::{run, stderr, stdout};
use crate::helpers::{TestDb, botdb_bin, eventually};

/// The document, as a reader sees it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Export {
    format: String,
    exported_at: DateTime<Utc>,
    user: ExportedUser,
    settings: Option<ExportedSettings>,
    messages: Vec<ExportedMessage>,
    pending_updates: Vec<serde_json::Value>,
    outbox: Vec<serde_json::Value>,
    summary: Summary,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct ExportedUser {
    id: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportedSettings {
    max_history_messages: i32,
    system_prompt: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// No `user_id`: the document is about one user (deny_unknown_fields checks it).
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct ExportedMessage {
    id: Uuid,
    chat_id: i64,
    role: String,
    content: String,
    content_length: i32,
    created_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
    seq: i64,
}

impl ExportedMessage {
    /// What a stored message should be exported as.
    fn of(m: &Message, deleted_at: Option<DateTime<Utc>>) -> Self {
        ExportedMessage {
            id: m.id,
            chat_id: m.chat_id,
            role: m.role.as_str().to_string(),
            content: m.content.clone(),
            content_length: m.content_length,
            created_at: m.created_at,
            deleted_at,
            seq: m.seq,
        }
    }
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Summary {
    messages: u64,
    deleted: u64,
}

/// The bound of exports that are not about the bound.
const LIMIT: Duration = Duration::from_secs(60);

const ALICE: i64 = 7;
const BOB: i64 = 8;
const GROUP: i64 = -100_123;

/// Alice: settings with a system prompt; in her private chat 3 soft-deleted messages and
/// 1 live one; in a group 1 soft-deleted and 1 live. Bob: a message of his own.
/// Returns Alice's messages as they must be exported, in export order.
async fn alice_and_bob(t: &TestDb) -> Vec<ExportedMessage> {
    let limits = *t.db.limits();
    let prompt = limits.system_prompt("You are a pirate. Say \"arr\".").unwrap();
    t.db.session(async |tx| repo::users::register(tx, ALICE, 50, Some(&prompt)).await)
        .await
        .unwrap();
    t.db.session(async |tx| repo::users::upsert(tx, BOB).await)
        .await
        .unwrap();
    let append = async |d: Dialogue, role: Role, text: &str| {
        let m = limits.message_in(d, role, text).unwrap();
        t.db.session(async |tx| repo::messages::append(tx, &m).await)
            .await
            .unwrap()
    };
    let private = Dialogue::private(ALICE);
    let group = Dialogue::new(ALICE, GROUP);
    let p1 = append(private, Role::User, "hello").await;
    let p2 = append(
        private,
        Role::Assistant,
        "line one\nline two \"quoted\" ünïcode 🎉",
    )
    .await;
    let p3 = append(private, Role::User, "forget this").await;
    let g1 = append(group, Role::User, "in the group").await;
    assert_eq!(
        repo::messages::clear_history(t.db.pool(), private).await.unwrap(),
        3
    );
    assert_eq!(
        repo::messages::clear_history(t.db.pool(), group).await.unwrap(),
        1
    );
    let p4 = append(private, Role::User, "after the clear").await;
    let g2 = append(group, Role::Assistant, "group reply").await;
    append(Dialogue::private(BOB), Role::User, "bob's secret").await;

    let deleted_at = |id: Uuid| async move {
        sqlx::query_scalar::<_, Option<DateTime<Utc>>>("SELECT deleted_at FROM messages WHERE id = $1")
            .bind(id)
            .fetch_one(t.db.pool())
            .await
            .unwrap()
    };
    let mut expected = Vec::new();
    // chat_id order: the group (negative id) before the private chat (0).
    for m in [&g1, &g2, &p1, &p2, &p3, &p4] {
        expected.push(ExportedMessage::of(m, deleted_at(m.id).await));
    }
    expected
}

#[tokio::test]
async fn export_user_writes_every_message_soft_deleted_included_and_the_settings() {
    let t = TestDb::new().await;
    let expected = alice_and_bob(&t).await;
    let o = run(&["export-user", &ALICE.to_string()], &t.env()).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stderr(&o).trim(),
        "exported user 7: 6 messages (4 soft-deleted)",
        "{}",
        stderr(&o)
    );
    let doc: Export = serde_json::from_slice(&o.stdout).expect("stdout is one JSON document");

    assert_eq!(doc.format, "botdb.export.v1");
    // Without the Bot API nothing waits in the inbox or the outbox.
    assert!(doc.pending_updates.is_empty() && doc.outbox.is_empty());
    let user = repo::users::get(t.db.pool(), ALICE).await.unwrap().unwrap();
    assert_eq!(
        doc.user,
        ExportedUser {
            id: ALICE,
            created_at: user.created_at,
            updated_at: user.updated_at
        }
    );
    assert!(doc.exported_at >= user.updated_at);
    let settings = doc.settings.expect("settings exported");
    let stored = repo::settings::get(t.db.pool(), ALICE).await.unwrap().unwrap();
    assert_eq!(settings.max_history_messages, 50);
    assert_eq!(
        settings.system_prompt.as_deref(),
        Some("You are a pirate. Say \"arr\".")
    );
    assert_eq!(
        (settings.created_at, settings.updated_at),
        (stored.created_at, stored.updated_at)
    );

    // Every message, in (chat_id, created_at, seq) order, deleted_at exactly on the 4
    // soft-deleted ones, nothing of Bob's.
    assert_eq!(doc.messages, expected);
    let deleted: Vec<&str> = doc
        .messages
        .iter()
        .filter(|m| m.deleted_at.is_some())
        .map(|m| m.content.as_str())
        .collect();
    assert_eq!(
        deleted,
        [
            "in the group",
            "hello",
            "line one\nline two \"quoted\" ünïcode 🎉",
            "forget this"
        ]
    );
    assert_eq!(
        doc.messages.iter().map(|m| m.role.as_str()).collect::<Vec<_>>(),
        ["user", "assistant", "user", "assistant", "user", "user"]
    );
    assert!(
        doc.messages.iter().all(|m| !m.content.contains("bob")),
        "another user's message leaked"
    );
    assert_eq!(
        doc.summary,
        Summary {
            messages: 6,
            deleted: 4
        }
    );
    // One message per line: a line-oriented reader can count them.
    let text = stdout(&o);
    assert_eq!(
        text.lines().filter(|l| l.starts_with("{\"id\":")).count(),
        6,
        "{text}"
    );
}

#[tokio::test]
async fn export_user_of_an_unknown_user_exits_2_and_writes_nothing() {
    let t = TestDb::new().await;
    let o = run(&["export-user", "424242"], &t.env()).await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(stderr(&o).trim(), "error: user 424242 not found");
    assert!(o.stdout.is_empty(), "{}", stdout(&o));
}

#[tokio::test]
async fn export_user_refuses_a_malformed_id_and_writes_nothing() {
    let t = TestDb::new().await;
    for (arg, says) in [
        ("abc", "invalid value 'abc'"),
        ("-5", "expected a positive Telegram user id, got -5"),
        ("0", "expected a positive Telegram user id, got 0"),
    ] {
        let o = run(&["export-user", arg], &t.env()).await;
        assert_eq!(o.status.code(), Some(2), "{arg}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{arg}: {}", stderr(&o));
        assert!(o.stdout.is_empty(), "{arg}: {}", stdout(&o));
    }
}

#[tokio::test]
async fn export_user_into_a_closed_pipe_fails_cleanly() {
    let t = TestDb::new().await;
    t.db.session(async |tx| repo::users::upsert(tx, ALICE).await)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO messages (user_id, role, content, content_length) \
         SELECT $1, 'user', repeat('y', 1000), 1000 FROM generate_series(1, 2000)",
    )
    .bind(ALICE)
    .execute(t.db.pool())
    .await
    .unwrap();
    // The reader closes its end before the first byte (`| head -c0`): 2 MB cannot fit
    // in a pipe's buffer, so the export meets EPIPE whatever the timing.
    let mut child = Command::new(botdb_bin())
        .args(["export-user", &ALICE.to_string()])
        .current_dir(std::env::temp_dir())
        .env_clear()
        .envs(t.env())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("broken pipe") && !err.contains("panicked"), "{err}");
}

/// The large test's messages: what is checked of each.
#[derive(Deserialize)]
struct Big {
    content: String,
    content_length: i32,
    deleted_at: Option<IgnoredAny>,
}

/// What the large test reads of the document.
#[derive(Debug, Default)]
struct Streamed {
    /// The document without its message lines (`"messages":[\n],`): still JSON.
    skeleton: String,
    count: u64,
    deleted: u64,
    content_bytes: u64,
}

/// Reads the export line by line (one message per line), parsing each message and
/// keeping none: the test's own memory stays flat too.
fn read_streamed(out: impl BufRead, mut every_thousand: impl FnMut()) -> Result<Streamed, String> {
    let mut s = Streamed::default();
    let mut lines = out.lines().peekable();
    while let Some(line) = lines.next() {
        let line = line.map_err(|e| e.to_string())?;
        if !line.starts_with("{\"id\":") {
            s.skeleton.push_str(&line);
            s.skeleton.push('\n');
            continue;
        }
        // Messages are separated by commas; the last has none.
        let last = lines
            .peek()
            .is_none_or(|next| next.as_ref().is_ok_and(|n| !n.starts_with("{\"id\":")));
        let json = match line.strip_suffix(',') {
            Some(json) if !last => json,
            None if last => line.as_str(),
            _ => return Err(format!("message {}: bad separator", s.count + 1)),
        };
        let m: Big = serde_json::from_str(json).map_err(|e| format!("message {}: {e}", s.count + 1))?;
        s.count += 1;
        if s.count % 1000 == 0 {
            every_thousand();
        }
        // Row i ends with i on 10 digits: all there, in insertion order.
        let want = format!("{:010}", s.count);
        if m.content.len() != 4000 || !m.content.ends_with(&want) || m.content_length != 4000 {
            return Err(format!("message {} is not row {want}", s.count));
        }
        s.deleted += u64::from(m.deleted_at.is_some());
        s.content_bytes += m.content.len() as u64;
    }
    Ok(s)
}

#[derive(Deserialize)]
struct Skeleton {
    format: String,
    messages: Vec<IgnoredAny>,
    summary: Summary,
}

/// What one measured export gave.
struct Measured {
    read: Result<Streamed, String>,
    status: std::process::ExitStatus,
    stderr: String,
    /// The child's peak resident memory, in bytes.
    peak: u64,
}

/// `botdb export-user USER` with `env`, its output read as it streams. The peak is
/// `VmHWM` (the process's high-water mark of resident memory since its exec), read from
/// /proc every 1,000 messages while the child runs: a peak between two reads is not
/// missed, and the test process's own memory is not counted (unlike `ru_maxrss` of
/// children).
fn export_measured(env: Vec<(&'static str, String)>, user: i64) -> Measured {
    let mut child = Command::new(botdb_bin())
        .args(["export-user", &user.to_string()])
        .current_dir(std::env::temp_dir())
        .env_clear()
        .envs(env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut peak_kib = 0_u64;
    let read = read_streamed(
        BufReader::with_capacity(1 << 20, child.stdout.take().unwrap()),
        || {
            if let Some(kib) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|status| {
                    status
                        .lines()
                        .find_map(|l| l.strip_prefix("VmHWM:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                })
            {
                peak_kib = peak_kib.max(kib);
            }
        },
    );
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let status = child.wait().unwrap();
    Measured {
        read,
        status,
        stderr,
        peak: peak_kib * 1024,
    }
}

#[tokio::test]
async fn export_user_memory_does_not_grow_from_50_to_200_mb() {
    // Alice 12,500 messages of 4,000 characters (50 MB), Bob 50,000 (200 MB); each
    // message ends with its row number, every tenth is soft-deleted.
    let sizes = [(ALICE, 12_500_u64), (BOB, 50_000_u64)];
    let t = TestDb::new().await;
    let mut conn = t.conn().await;
    for (user, rows) in sizes {
        repo::users::upsert(&mut conn, user).await.unwrap();
        sqlx::query(
            "INSERT INTO messages (user_id, chat_id, role, content, content_length, deleted_at) \
             SELECT $1, 0, CASE WHEN i % 2 = 1 THEN 'user' ELSE 'assistant' END, \
                    repeat('x', 3990) || lpad(i::text, 10, '0'), 4000, \
                    CASE WHEN i % 10 = 0 THEN now() END \
               FROM generate_series(1, $2::bigint) AS i",
        )
        .bind(user)
        .bind(rows as i64)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    let _ = conn.close().await;

    let mut peaks = Vec::new();
    for (user, rows) in sizes {
        let env = t.env();
        let m = tokio::task::spawn_blocking(move || export_measured(env, user))
            .await
            .unwrap();
        let err = &m.stderr;
        assert!(m.status.success(), "status {}: {err}", m.status);
        let read = m.read.expect("stdout is the export, one message per line");
        let doc: Skeleton = serde_json::from_str(&read.skeleton).expect("the rest is JSON");
        assert_eq!(doc.format, "botdb.export.v1");
        assert!(doc.messages.is_empty());
        assert_eq!(read.count, rows);
        assert_eq!(read.deleted, rows / 10);
        assert_eq!(
            doc.summary,
            Summary {
                messages: rows,
                deleted: rows / 10
            }
        );
        // (Before it, sqlx may warn of a slow FETCH: it counts the time the rows wait
        // for the reader.)
        assert_eq!(
            err.lines().last(),
            Some(
                format!(
                    "exported user {user}: {rows} messages ({} soft-deleted)",
                    rows / 10
                )
                .as_str()
            ),
            "{err}"
        );
        assert_eq!(read.content_bytes, rows * 4000);
        assert!(m.peak > 0, "the child's memory was sampled");
        println!(
            "export-user: {} content bytes exported, peak RSS {} bytes ({:.1} MiB)",
            read.content_bytes,
            m.peak,
            m.peak as f64 / (1 << 20) as f64
        );
        peaks.push(m.peak);
    }
    // An export that kept its content would need at least 150 MB more for the larger
    // history. A streaming one needs the same for both: what differs between two runs
    // of the same binary is the allocator's and the runtime's slack (under 0.2 MiB in
    // runs on the development machine, both peaks 20.6 to 20.8 MiB). 8 MiB is forty
    // times that noise, and a twentieth of what keeping the difference would add.
    const MARGIN: u64 = 8 << 20;
    let (small, large) = (peaks[0], peaks[1]);
    assert!(
        large <= small + MARGIN,
        "peak RSS grew from {small} bytes (50 MB exported) to {large} bytes (200 MB): more than \
         {MARGIN} bytes, so the export keeps what it exports in memory"
    );
}

#[tokio::test]
async fn the_library_writes_nothing_for_an_unknown_user_and_a_parsable_document_otherwise() {
    let t = TestDb::new().await;
    let mut conn = t.db.pool().acquire().await.unwrap();
    let mut out = Vec::new();
    let unknown = repo::export::export_user(&mut conn, 99, &mut out, LIMIT).await;
    assert!(
        matches!(&unknown, Err(Error::NotFound { entity: "user", id }) if id == "99"),
        "{unknown:?}"
    );
    assert_eq!(unknown.unwrap_err().to_string(), "user 99 not found");
    assert!(out.is_empty());
    for bad in [0, -5] {
        let refused = repo::export::export_user(&mut conn, bad, &mut out, LIMIT).await;
        assert!(
            matches!(refused, Err(Error::InvalidInput { field: "user_id", .. })),
            "{refused:?}"
        );
        assert!(out.is_empty());
    }

    // A user without settings nor messages: settings null, messages empty.
    t.db.session(async |tx| repo::users::upsert(tx, BOB).await)
        .await
        .unwrap();
    let summary = repo::export::export_user(&mut conn, BOB, &mut out, LIMIT)
        .await
        .unwrap();
    assert_eq!((summary.user_id, summary.messages, summary.deleted), (BOB, 0, 0));
    assert_eq!(summary.bytes, out.len() as u64);
    let doc: Export = serde_json::from_slice(&out).unwrap();
    assert_eq!(doc.user.id, BOB);
    assert!(doc.settings.is_none() && doc.messages.is_empty());
    assert_eq!(
        doc.summary,
        Summary {
            messages: 0,
            deleted: 0
        }
    );

    // Alice's whole export through the library, the same as through the command.
    let expected = alice_and_bob(&t).await;
    out.clear();
    let summary = repo::export::export_user(&mut conn, ALICE, &mut out, LIMIT)
        .await
        .unwrap();
    assert_eq!((summary.messages, summary.deleted), (6, 4));
    let doc: Export = serde_json::from_slice(&out).unwrap();
    assert_eq!(doc.messages, expected);

    // The connection is usable afterwards, outside any transaction.
    assert!(!conn.is_in_transaction());
    let mut tx = conn.begin().await.unwrap();
    let refused = repo::export::export_user(&mut tx, ALICE, &mut Vec::new(), LIMIT).await;
    assert!(
        matches!(
            refused,
            Err(Error::InvalidInput {
                field: "connection",
                ..
            })
        ),
        "{refused:?}"
    );
}

/// Runs `f` once, on the first write, then passes everything through.
struct OnFirstWrite<F: FnMut() + Unpin> {
    f: Option<F>,
    out: Vec<u8>,
}

impl<F: FnMut() + Unpin> AsyncWrite for OnFirstWrite<F> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if let Some(mut f) = this.f.take() {
            f();
        }
        this.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn the_export_is_one_snapshot_writes_committed_while_it_runs_are_not_in_it() {
    let t = TestDb::new().await;
    let expected = alice_and_bob(&t).await;
    let options = t.config.connect_options().unwrap();
    // The first byte is written after the user and settings were read and before the
    // messages are: commit changes to all three then, from another connection (on a
    // thread of its own: the export's task is blocked in this write until it is done).
    let concurrent = move || {
        let options = options.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let mut other = PgConnection::connect_with(&options).await.unwrap();
                    sqlx::raw_sql(
                        "UPDATE users SET updated_at = now() + interval '1 hour' WHERE id = 7; \
                         UPDATE user_settings SET system_prompt = 'changed' WHERE user_id = 7; \
                         INSERT INTO messages (user_id, role, content, content_length) \
                             VALUES (7, 'user', 'written during the export', 25); \
                         UPDATE messages SET deleted_at = now() WHERE user_id = 7 AND deleted_at IS NULL;",
                    )
                    .execute(&mut other)
                    .await
                    .unwrap();
                    let _ = other.close().await;
                })
        })
        .join()
        .unwrap();
    };
    let mut out = OnFirstWrite {
        f: Some(concurrent),
        out: Vec::new(),
    };
    let mut conn = t.db.pool().acquire().await.unwrap();
    let summary = repo::export::export_user(&mut conn, ALICE, &mut out, LIMIT)
        .await
        .unwrap();
    assert!(out.f.is_none(), "the concurrent writes ran");
    let doc: Export = serde_json::from_slice(&out.out).unwrap();
    assert_eq!(
        doc.messages, expected,
        "the export saw writes committed after its snapshot"
    );
    assert_eq!(summary.messages, 6);
    assert_eq!(
        doc.settings.unwrap().system_prompt.as_deref(),
        Some("You are a pirate. Say \"arr\".")
    );
    // They were committed: a new export sees them.
    let mut after = Vec::new();
    let summary = repo::export::export_user(&mut conn, ALICE, &mut after, LIMIT)
        .await
        .unwrap();
    assert_eq!((summary.messages, summary.deleted), (7, 7));
    let ids: HashSet<Uuid> = expected.iter().map(|m| m.id).collect();
    let doc: Export = serde_json::from_slice(&after).unwrap();
    assert_eq!(doc.messages.iter().filter(|m| !ids.contains(&m.id)).count(), 1);
    assert_eq!(doc.settings.unwrap().system_prompt.as_deref(), Some("changed"));
}

/// Backends of database `name` other than `conn`'s own inside a transaction or holding
/// a snapshot: what would hold back VACUUM.
async fn transactions_open(conn: &mut PgConnection, name: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
          WHERE datname = $1 AND pid <> pg_backend_pid() \
            AND (xact_start IS NOT NULL OR backend_xmin IS NOT NULL)",
    )
    .bind(name)
    .fetch_one(conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn export_user_whose_reader_stalls_stops_at_botdb_export_timeout_and_releases_its_snapshot() {
    let t = TestDb::new().await;
    t.db.session(async |tx| repo::users::upsert(tx, ALICE).await)
        .await
        .unwrap();
    // 2 MB: far more than a pipe's buffer and botdb's own.
    sqlx::query(
        "INSERT INTO messages (user_id, role, content, content_length) \
         SELECT $1, 'user', repeat('y', 1000), 1000 FROM generate_series(1, 2000)",
    )
    .bind(ALICE)
    .execute(t.db.pool())
    .await
    .unwrap();
    let mut env = t.env();
    env.push(("BOTDB_EXPORT_TIMEOUT", "2".into()));
    let mut child = crate::cli::botdb(&["export-user", &ALICE.to_string()], &env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Nobody reads stdout, and it stays open: the export's writes block.
    let stalled_stdout = child.stdout.take();
    let mut observer = t.conn().await;
    assert!(
        eventually(Duration::from_secs(30), async || {
            transactions_open(&mut observer, &t.name).await == 1
        })
        .await,
        "the export's transaction began"
    );
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("export-user still running 60 s after its reader stalled, with BOTDB_EXPORT_TIMEOUT=2")
        .unwrap();
    let mut err = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().unwrap(), &mut err)
        .await
        .unwrap();
    println!("export-user with a stalled reader: {status}, {err}");
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("timed out (export)")
            && err.contains("BOTDB_EXPORT_TIMEOUT")
            && !err.contains("panicked"),
        "{err}"
    );
    assert!(
        eventually(Duration::from_secs(10), async || {
            transactions_open(&mut observer, &t.name).await == 0
        })
        .await,
        "a backend of the export still holds a transaction"
    );
    drop(stalled_stdout);
}

/// A writer that takes `budget` bytes, then never completes a write (nor wakes its
/// task): a reader that stopped reading. Says so on `stalled` the first time.
struct Stalls {
    budget: usize,
    stalled: Option<oneshot::Sender<()>>,
}

impl AsyncWrite for Stalls {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.budget == 0 {
            if let Some(stalled) = this.stalled.take() {
                let _ = stalled.send(());
            }
            return Poll::Pending;
        }
        let n = this.budget.min(buf.len());
        this.budget -= n;
        Poll::Ready(Ok(n))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Backend `pid` as `pg_stat_activity` shows it: (state, in a transaction, holding a
/// snapshot).
async fn backend(conn: &mut PgConnection, pid: i32) -> (Option<String>, bool, bool) {
    sqlx::query_as(
        "SELECT state, xact_start IS NOT NULL, backend_xmin IS NOT NULL \
           FROM pg_stat_activity WHERE pid = $1",
    )
    .bind(pid)
    .fetch_one(conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn an_export_whose_writer_stalls_fails_at_its_bound_and_releases_the_snapshot() {
    let t = TestDb::new().await;
    t.db.session(async |tx| repo::users::upsert(tx, ALICE).await)
        .await
        .unwrap();
    // 3 MB: several FETCHes, and more than the socket buffers hold at once.
    sqlx::query(
        "INSERT INTO messages (user_id, role, content, content_length) \
         SELECT $1, 'user', repeat('y', 1000), 1000 FROM generate_series(1, 3000)",
    )
    .bind(ALICE)
    .execute(t.db.pool())
    .await
    .unwrap();
    let mut conn = t.db.pool().acquire().await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    let mut observer = t.conn().await;
    let limit = Duration::from_secs(2);
    // Stalled before the first byte (the head of the document), and half-way through the
    // messages (a FETCH under way).
    for budget in [0, 1 << 20] {
        let (stalled, is_stalled) = oneshot::channel();
        let mut out = Stalls {
            budget,
            stalled: Some(stalled),
        };
        let started = tokio::time::Instant::now();
        let (result, while_stalled) = tokio::join!(
            repo::export::export_user(&mut conn, ALICE, &mut out, limit),
            async {
                is_stalled.await.expect("the writer stalled");
                backend(&mut observer, pid).await
            }
        );
        let took = started.elapsed();
        let (_, in_transaction, snapshot) = while_stalled;
        assert!(
            in_transaction && snapshot,
            "budget {budget}: the export held its snapshot while its writer stalled"
        );
        let err = result.expect_err("a stalled export fails");
        assert!(
            matches!(
                err,
                Error::Timeout {
                    kind: TimeoutKind::Export,
                    ..
                }
            ),
            "budget {budget}: {err:?}"
        );
        let text = err.to_string();
        assert!(
            text.starts_with("timed out (export): the export of user 7 did not finish within 2s")
                && text.contains("BOTDB_EXPORT_TIMEOUT"),
            "{text}"
        );
        assert!(
            took >= limit && took < limit + Duration::from_secs(10),
            "budget {budget}: failed after {took:?}"
        );
        // Released at once, by the export itself: the backend is still connected, and in
        // no transaction.
        assert_eq!(
            backend(&mut observer, pid).await,
            (Some("idle".to_string()), false, false),
            "budget {budget}"
        );
        assert!(!conn.is_in_transaction());
    }
    // The same connection exports the whole history afterwards.
    let mut out = Vec::new();
    let summary = repo::export::export_user(&mut conn, ALICE, &mut out, LIMIT)
        .await
        .unwrap();
    assert_eq!(summary.messages, 3000);
    assert_eq!(summary.bytes, out.len() as u64);
}
