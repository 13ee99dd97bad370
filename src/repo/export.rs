//! Export of everything stored about one user (GDPR Art. 20, data portability): the
//! user row, the settings, and every message of every chat, soft-deleted ones included,
//! as ONE JSON document, streamed.
//!
//! The document (format `botdb.export.v1`):
//!
//! ```text
//! {"format":"botdb.export.v1","exported_at":"2026-11-27T06:00:00.123456Z",
//! "user":{"id":42,"created_at":"..","updated_at":".."},
//! "settings":{"max_history_messages":20,"system_prompt":"..","created_at":"..","updated_at":".."},
//! "messages":[
//! {"id":"..","chat_id":0,"role":"user","content":"hi","content_length":2,"created_at":"..","deleted_at":null,"seq":1},
//! ...
//! ],
//! "summary":{"messages":2,"deleted":1}}
//! ```
//!
//! `settings` is `null` for a user without a settings row. Messages are in `(chat_id,
//! created_at, seq)` order, one per line (JSON escapes every line break inside a string,
//! so a line holds exactly one message). Timestamps are RFC 3339 in UTC; `exported_at`
//! is the time of the snapshot the export reads.
//!
//! Everything is read in ONE `REPEATABLE READ READ ONLY` transaction: the document is a
//! consistent snapshot (a message written or deleted meanwhile is either wholly in it,
//! as it was at the snapshot, or absent), and the export writes nothing. Messages are
//! serialised one by one as the rows arrive from the server: memory does not grow with
//! the number of messages.

use std::io::Write;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::Serialize;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::model::{Message, Role, User, UserSettings, check_user_id};

/// The value of the document's `format` field.
pub const FORMAT: &str = "botdb.export.v1";

/// What [`export_user`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ExportSummary {
    /// The user exported.
    pub user_id: i64,
    /// Messages exported, soft-deleted ones included.
    pub messages: u64,
    /// Of these, the soft-deleted ones (`deleted_at` set).
    pub deleted: u64,
    /// Bytes written to the output (the whole document).
    pub bytes: u64,
}

/// `settings` as exported: the row without its key (the document is about one user).
#[derive(Serialize)]
struct SettingsOut<'a> {
    max_history_messages: i32,
    system_prompt: Option<&'a str>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl<'a> From<&'a UserSettings> for SettingsOut<'a> {
    fn from(s: &'a UserSettings) -> Self {
        SettingsOut {
            max_history_messages: s.max_history_messages,
            system_prompt: s.system_prompt.as_deref(),
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

/// One message as exported: the row without `user_id`.
#[derive(Serialize)]
struct MessageOut<'a> {
    id: Uuid,
    chat_id: i64,
    role: Role,
    content: &'a str,
    content_length: i32,
    created_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
    seq: i64,
}

impl<'a> From<&'a Message> for MessageOut<'a> {
    fn from(m: &'a Message) -> Self {
        MessageOut {
            id: m.id,
            chat_id: m.chat_id,
            role: m.role,
            content: &m.content,
            content_length: m.content_length,
            created_at: m.created_at,
            deleted_at: m.deleted_at,
            seq: m.seq,
        }
    }
}

#[derive(Serialize)]
struct SummaryOut {
    messages: u64,
    deleted: u64,
}

/// `out`, counting the bytes written and keeping the first I/O error (serde_json
/// reports it as its own error type, which loses the kind).
struct Counted<'w, W: Write> {
    inner: &'w mut W,
    bytes: u64,
}

impl<W: Write> Counted<'_, W> {
    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.write_all(bytes).map_err(|e| write_error(&e, self.bytes))
    }

    fn json(&mut self, value: &impl Serialize) -> Result<()> {
        let before = self.bytes;
        serde_json::to_writer(&mut *self, value).map_err(|e| {
            if e.is_io() {
                Error::Internal(format!("writing the export failed after {before} bytes: {e}"))
            } else {
                Error::Internal(format!("serialising the export failed: {e}"))
            }
        })
    }
}

impl<W: Write> Write for Counted<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn write_error(e: &std::io::Error, bytes: u64) -> Error {
    Error::Internal(format!("writing the export failed after {bytes} bytes: {e}"))
}

/// Writes everything stored about user `user_id` to `out` as one JSON document (format
/// [`FORMAT`], described in the [module documentation](self)): the user row, the
/// settings (or `null`), and every message of every chat, soft-deleted ones included,
/// in `(chat_id, created_at, seq)` order, then a summary. Request keys are not
/// exported: they record which updates were handled, not what the user stored.
///
/// It reads in one `REPEATABLE READ READ ONLY` transaction on `conn` (a consistent
/// snapshot; nothing is written) and streams: each message is serialised to `out` as
/// its row arrives, so memory stays flat however many messages there are. `out` is
/// written to synchronously, in small pieces: give it a buffered writer, and flush it
/// afterwards (this function does not). The transaction lifts `statement_timeout` for
/// itself only (`SET LOCAL`): its one SELECT lasts as long as `out` takes to accept the
/// messages, which for a large history and a slow reader exceeds any limit sized for a
/// bot's statements.
///
/// `conn` must not be inside a transaction (the snapshot must begin with the export).
///
/// # Errors
/// [`Error::InvalidInput`] for a non-positive id, or a `conn` already inside a
/// transaction; [`Error::NotFound`] (`user N not found`) for an unknown user, and then
/// NOTHING was written to `out`; [`Error::Internal`] when writing to `out` failed (the
/// document is then incomplete: a reader fails to parse it); database errors.
pub async fn export_user(
    conn: &mut PgConnection,
    user_id: i64,
    out: &mut (impl Write + Send),
) -> Result<ExportSummary> {
    check_user_id(user_id)?;
    if conn.is_in_transaction() {
        return Err(Error::invalid(
            "connection",
            "export_user begins its own snapshot transaction: pass a connection outside any transaction",
        ));
    }
    let mut tx = conn
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    sqlx::query("SET LOCAL statement_timeout = 0")
        .execute(&mut *tx)
        .await?;
    // Every read below sees the one snapshot of this transaction.
    let user = sqlx::query_as::<_, User>("SELECT id, created_at, updated_at FROM users WHERE id = $1")
        .bind(user_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| Error::not_found("user", user_id))?;
    let (exported_at,): (DateTime<Utc>,) = sqlx::query_as("SELECT now()").fetch_one(&mut *tx).await?;
    let settings = sqlx::query_as::<_, UserSettings>(
        "SELECT user_id, max_history_messages, system_prompt, created_at, updated_at \
         FROM user_settings WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(&mut *tx)
    .await?;

    // The user exists: from here on the document is written.
    let mut w = Counted { inner: out, bytes: 0 };
    w.put(b"{\"format\":")?;
    w.json(&FORMAT)?;
    w.put(b",\"exported_at\":")?;
    w.json(&exported_at)?;
    w.put(b",\n\"user\":")?;
    w.json(&user)?;
    w.put(b",\n\"settings\":")?;
    w.json(&settings.as_ref().map(SettingsOut::from))?;
    w.put(b",\n\"messages\":[")?;

    let (mut messages, mut deleted) = (0_u64, 0_u64);
    {
        let mut rows = sqlx::query_as::<_, Message>(
            "SELECT id, user_id, chat_id, role, content, content_length, created_at, deleted_at, seq \
             FROM messages WHERE user_id = $1 \
             ORDER BY chat_id, created_at, seq",
        )
        .bind(user_id)
        .fetch(&mut *tx);
        while let Some(message) = rows.try_next().await? {
            w.put(if messages == 0 { b"\n" } else { b",\n" })?;
            w.json(&MessageOut::from(&message))?;
            messages += 1;
            if message.deleted_at.is_some() {
                deleted += 1;
            }
        }
    }
    w.put(if messages == 0 { b"],\n" } else { b"\n],\n" })?;
    w.put(b"\"summary\":")?;
    w.json(&SummaryOut { messages, deleted })?;
    w.put(b"}\n")?;
    let bytes = w.bytes;
    // Read-only: COMMIT and ROLLBACK end it alike; COMMIT says it ended cleanly.
    tx.commit().await?;
    Ok(ExportSummary {
        user_id,
        messages,
        deleted,
        bytes,
    })
}
