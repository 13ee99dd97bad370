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
//! as it was at the snapshot, or absent), and the export writes nothing. Messages come
//! through a cursor, a few hundred per `FETCH`, and are serialised one by one as the
//! rows arrive: memory does not grow with the number of messages.
//!
//! The whole export is bounded ([`Config::export_timeout`](crate::Config::export_timeout),
//! `BOTDB_EXPORT_TIMEOUT`): the snapshot is held while the output is written, and a
//! reader that stops reading would otherwise hold it, and with it VACUUM's horizon, for
//! as long as it stalls. Past the bound the export stops wherever it waits, rolls its
//! transaction back and fails [`Error::Timeout`] (kind [`TimeoutKind::Export`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::Serialize;
use sqlx::{Connection, PgConnection};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout, timeout_at};
use uuid::Uuid;

use crate::error::{Error, Result, TimeoutKind};
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

/// An update recorded and not yet run (the turn pipeline's inbox), as Telegram sent it.
#[derive(Serialize, sqlx::FromRow)]
struct PendingOut {
    update_id: i64,
    chat_id: i64,
    received_at: DateTime<Utc>,
    payload: serde_json::Value,
}

/// A message the bot sends, or sent, through the Bot API (the outbox): its text, where,
/// and what Telegram answered.
#[derive(Serialize, sqlx::FromRow)]
struct OutboxOut {
    chat_id: i64,
    text: String,
    state: String,
    created_at: DateTime<Utc>,
    sent_at: Option<DateTime<Utc>>,
    tg_message_id: Option<i64>,
}

#[derive(Serialize)]
struct SummaryOut {
    messages: u64,
    deleted: u64,
}

/// Output gathered into chunks before it is handed to the writer: one write per
/// chunk instead of several per message.
const CHUNK: usize = 64 * 1024;

/// How long the rollback after a failure may take. It waits for the rest of one `FETCH`
/// (a few hundred rows the server is sending) and one round trip; past this the
/// connection is stuck in the network, and the server's own limits, set to the export's
/// bound, end the session.
const ROLLBACK_GRACE: Duration = Duration::from_secs(5);

/// The document on its way to `out`: serialised into a chunk, written a chunk at a
/// time, the bytes written counted.
struct Output<'w, W: ?Sized> {
    out: &'w mut W,
    chunk: Vec<u8>,
    bytes: u64,
}

impl<W: AsyncWrite + Unpin + ?Sized> Output<'_, W> {
    fn put(&mut self, bytes: &[u8]) {
        self.chunk.extend_from_slice(bytes);
    }

    fn json(&mut self, value: &impl Serialize) -> Result<()> {
        serde_json::to_writer(&mut self.chunk, value)
            .map_err(|e| Error::Internal(format!("serialising the export failed: {e}")))
    }

    /// Hands the chunk to the writer once it is full.
    async fn send_if_full(&mut self) -> Result<()> {
        if self.chunk.len() >= CHUNK {
            self.send().await?;
        }
        Ok(())
    }

    async fn send(&mut self) -> Result<()> {
        self.out
            .write_all(&self.chunk)
            .await
            .map_err(|e| write_error(&e, self.bytes))?;
        self.bytes += self.chunk.len() as u64;
        self.chunk.clear();
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        self.send().await?;
        self.out.flush().await.map_err(|e| write_error(&e, self.bytes))
    }
}

fn write_error(e: &std::io::Error, bytes: u64) -> Error {
    Error::Internal(format!("writing the export failed after {bytes} bytes: {e}"))
}

fn timed_out(user_id: i64, limit: Duration) -> Error {
    Error::Timeout {
        kind: TimeoutKind::Export,
        reason: format!(
            "the export of user {user_id} did not finish within {} (BOTDB_EXPORT_TIMEOUT; its \
             reader stalled or was too slow, or the server was); its snapshot was released, and \
             what was written is not a whole document",
            humantime::format_duration(limit)
        ),
    }
}

/// Writes everything stored about user `user_id` to `out` as one JSON document (format
/// [`FORMAT`], described in the [module documentation](self)): the user row, the
/// settings (or `null`), and every message of every chat, soft-deleted ones included,
/// in `(chat_id, created_at, seq)` order, then a summary. Request keys are not
/// exported: they record which updates were handled, not what the user stored.
///
/// It reads in one `REPEATABLE READ READ ONLY` transaction on `conn` (a consistent
/// snapshot; nothing is written) and streams: each message is serialised as its row
/// arrives and written to `out` in chunks of 64 KiB, so memory stays flat however many
/// messages there are; `out` is flushed at the end.
///
/// `limit` bounds the whole export (pass
/// [`Config::export_timeout`](crate::Config::export_timeout)): the transaction, every
/// statement in it and every write to `out`, which waits as long as its reader does.
/// Past it the export stops where it waits (in a write that `out` does not complete, or
/// a `FETCH`), rolls back and fails; the snapshot is released and `conn` is usable
/// again, outside any transaction. Its statements run under `limit` rather than the
/// connection's `statement_timeout`, and the server ends the session when it sits
/// idle in the transaction past `limit`: the bound holds even if this future is
/// dropped or stops being polled.
///
/// `conn` must not be inside a transaction (the snapshot must begin with the export).
///
/// # Errors
/// [`Error::InvalidInput`] for a non-positive id, or a `conn` already inside a
/// transaction; [`Error::NotFound`] (`user N not found`) for an unknown user, and then
/// NOTHING was written to `out`; [`Error::Timeout`] of kind [`TimeoutKind::Export`]
/// past `limit`; [`Error::Internal`] when writing to `out` failed. After either of the
/// last two, what was written is not a whole document (a reader fails to parse it).
/// Database errors.
pub async fn export_user<W>(
    conn: &mut PgConnection,
    user_id: i64,
    out: &mut W,
    limit: Duration,
) -> Result<ExportSummary>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    check_user_id(user_id)?;
    if conn.is_in_transaction() {
        return Err(Error::invalid(
            "connection",
            "export_user begins its own snapshot transaction: pass a connection outside any transaction",
        ));
    }
    let deadline = Instant::now() + limit;
    let mut tx = timeout_at(
        deadline,
        conn.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"),
    )
    .await
    .map_err(|_| timed_out(user_id, limit))??;
    match timeout_at(deadline, write_document(&mut tx, user_id, out, limit)).await {
        Ok(Ok(summary)) => {
            // Read-only: COMMIT and ROLLBACK end it alike; COMMIT says it ended cleanly.
            tx.commit().await?;
            Ok(summary)
        }
        failed => {
            // Stopped in a write or a FETCH: the rollback first reads what the server
            // still sends of that FETCH, then ends the transaction and its snapshot.
            let _ = timeout(ROLLBACK_GRACE, tx.rollback()).await;
            Err(match failed {
                Ok(Err(e)) => e,
                _ => timed_out(user_id, limit),
            })
        }
    }
}

/// The document, read in `tx`'s snapshot and written to `out`.
async fn write_document<W>(
    tx: &mut PgConnection,
    user_id: i64,
    out: &mut W,
    limit: Duration,
) -> Result<ExportSummary>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    // The server's own limits for this transaction: no statement and no idle gap
    // (while the client writes) longer than the whole export may take. The client stops
    // itself at the bound; these end the session should the client stop being polled.
    let millis = limit.as_millis().min(i32::MAX as u128).max(1).to_string();
    sqlx::query(
        "SELECT set_config('statement_timeout', $1, true), \
                set_config('idle_in_transaction_session_timeout', $1, true)",
    )
    .bind(&millis)
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
    let mut w = Output {
        out,
        chunk: Vec::with_capacity(CHUNK),
        bytes: 0,
    };
    w.put(b"{\"format\":");
    w.json(&FORMAT)?;
    w.put(b",\"exported_at\":");
    w.json(&exported_at)?;
    w.put(b",\n\"user\":");
    w.json(&user)?;
    w.put(b",\n\"settings\":");
    w.json(&settings.as_ref().map(SettingsOut::from))?;
    w.put(b",\n\"messages\":[");
    // The reader has the head of the document before the messages are read.
    w.send().await?;

    // A cursor, not one SELECT: between two FETCHes the server only waits, so stopping
    // mid-way (a stalled reader) costs the rest of one FETCH, not of the whole history,
    // and no statement lasts as long as the reader takes.
    sqlx::query(
        "DECLARE botdb_export NO SCROLL CURSOR FOR \
         SELECT id, user_id, chat_id, role, content, content_length, created_at, deleted_at, seq \
           FROM messages WHERE user_id = $1 \
          ORDER BY chat_id, created_at, seq",
    )
    .bind(user_id)
    .execute(&mut *tx)
    .await?;
    let (mut messages, mut deleted) = (0_u64, 0_u64);
    loop {
        let before = messages;
        // Not a prepared statement kept on the connection: it names this transaction's
        // cursor.
        let mut rows = sqlx::query_as::<_, Message>("FETCH FORWARD 500 FROM botdb_export")
            .persistent(false)
            .fetch(&mut *tx);
        while let Some(message) = rows.try_next().await? {
            w.put(if messages == 0 { b"\n" } else { b",\n" });
            w.json(&MessageOut::from(&message))?;
            messages += 1;
            if message.deleted_at.is_some() {
                deleted += 1;
            }
            w.send_if_full().await?;
        }
        if messages == before {
            break;
        }
    }
    w.put(if messages == 0 { b"],\n" } else { b"\n],\n" });
    // With the Bot API: what the user sent that has not run yet, and the messages sent
    // or to send them (few: the inbox and the outbox hold a day at most).
    let pending: Vec<PendingOut> = sqlx::query_as(
        "SELECT update_id, chat_id, received_at, payload FROM inbox WHERE user_id = $1 ORDER BY update_id",
    )
    .bind(user_id)
    .fetch_all(&mut *tx)
    .await?;
    w.put(b"\"pending_updates\":");
    w.json(&pending)?;
    let outbox: Vec<OutboxOut> = sqlx::query_as(
        "SELECT chat_id, text, state, created_at, sent_at, tg_message_id FROM outbox \
          WHERE user_id = $1 ORDER BY id",
    )
    .bind(user_id)
    .fetch_all(&mut *tx)
    .await?;
    w.put(b",\n\"outbox\":");
    w.json(&outbox)?;
    w.put(b",\n\"summary\":");
    w.json(&SummaryOut { messages, deleted })?;
    w.put(b"}\n");
    w.finish().await?;
    Ok(ExportSummary {
        user_id,
        messages,
        deleted,
        bytes: w.bytes,
    })
}
