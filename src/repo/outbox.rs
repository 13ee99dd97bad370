//! `outbox`: messages to send through Telegram's Bot API, written in the transaction
//! that decided them, sent in order per chat, with what Telegram answered recorded.
//!
//! [`claim`] leases, for each chat, its first unsent message (so a chat's messages go
//! one after the other, in `id` order); the sender records the outcome with
//! [`record`], for the owner and attempt that claimed it (a fencing token). A lease
//! that expires while a message was being sent (its owner died between sending and
//! recording) is claimed again, and marked: that message may reach the chat twice.

use std::time::Duration;

use sqlx::PgExecutor;
use uuid::Uuid;

use crate::error::Result;

/// Adds `parts` (one reply's messages, in order) for `chat_id`, owned by `user_id`
/// (`None`: a user erased since, whose confirmation this is). `note` says why they are
/// sent (`reply`, `command`, `model failed: timeout`, ...), without content.
///
/// # Errors
/// Database errors (a part longer than 4,096 characters or empty breaks a CHECK).
pub async fn enqueue<'e>(
    ex: impl PgExecutor<'e>,
    user_id: Option<i64>,
    chat_id: i64,
    parts: &[String],
    note: &str,
) -> Result<u64> {
    Ok(sqlx::query(
        "INSERT INTO outbox (user_id, chat_id, text, note) \
         SELECT $1, $2, t.text, $4 FROM UNNEST($3::text[]) WITH ORDINALITY AS t(text, ord) ORDER BY t.ord",
    )
    .bind(user_id)
    .bind(chat_id)
    .bind(parts)
    .bind(note)
    .execute(ex)
    .await?
    .rows_affected())
}

/// A message leased to a sender.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Claimed {
    /// The row.
    pub id: i64,
    /// Its user, `None` once erased.
    pub user_id: Option<i64>,
    /// Telegram's chat to send it to.
    pub chat_id: i64,
    /// The text.
    pub text: String,
    /// This claim's number: the fencing token [`record`] checks.
    pub attempts: i32,
    /// `true` when an earlier sender's lease expired while it was sending: Telegram may
    /// have it already (a resend may duplicate it).
    pub reclaimed: bool,
}

/// Leases to `owner`, for `lease`, at most `limit` messages: each chat's first unsent
/// one, when it is due (`not_before`) or its sender's lease expired. One statement.
///
/// # Errors
/// Database errors.
pub async fn claim<'e>(
    ex: impl PgExecutor<'e>,
    owner: Uuid,
    limit: i64,
    lease: Duration,
) -> Result<Vec<Claimed>> {
    Ok(sqlx::query_as(
        "WITH heads AS ( \
             SELECT DISTINCT ON (chat_id) id, state, lease_until, not_before \
               FROM outbox WHERE state IN ('pending', 'sending') ORDER BY chat_id, id), \
         ready AS ( \
             SELECT h.id, h.state = 'sending' AS reclaimed FROM heads h \
              WHERE (h.state = 'pending' AND h.not_before <= now()) \
                 OR (h.state = 'sending' AND h.lease_until < now()) \
              ORDER BY h.id LIMIT $2) \
         UPDATE outbox o SET state = 'sending', attempts = o.attempts + 1, lease_owner = $1, \
                lease_until = now() + make_interval(secs => $3) \
           FROM ready \
          WHERE o.id = ready.id \
            AND ((o.state = 'pending' AND o.not_before <= now()) OR (o.state = 'sending' AND o.lease_until < now())) \
         RETURNING o.id, o.user_id, o.chat_id, o.text, o.attempts, ready.reclaimed",
    )
    .bind(owner)
    .bind(limit)
    .bind(lease.as_secs_f64())
    .fetch_all(ex)
    .await?)
}

/// What became of one attempt to send a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sent {
    /// Telegram took it, as this message id.
    Delivered(i64),
    /// Send it again, not before this long from now; why (no content).
    Retry(Duration, String),
    /// Telegram refused it for good (blocked, chat not found, ...); why.
    Failed(String),
}

/// Records what sending message `id` did, for the owner and attempt that claimed it;
/// `false` when they no longer hold it.
///
/// # Errors
/// Database errors.
pub async fn record<'e>(
    ex: impl PgExecutor<'e>,
    id: i64,
    owner: Uuid,
    attempt: i32,
    sent: &Sent,
) -> Result<bool> {
    let (state, message_id, retry_in, outcome): (&str, Option<i64>, f64, Option<&str>) = match sent {
        Sent::Delivered(message_id) => ("sent", Some(*message_id), 0.0, None),
        Sent::Retry(after, why) => ("pending", None, after.as_secs_f64(), Some(why.as_str())),
        Sent::Failed(why) => ("failed", None, 0.0, Some(why.as_str())),
    };
    Ok(sqlx::query(
        "UPDATE outbox SET state = $4, lease_owner = NULL, lease_until = NULL, \
                tg_message_id = COALESCE($5, tg_message_id), \
                sent_at = CASE WHEN $4 = 'sent' THEN now() ELSE sent_at END, \
                not_before = now() + make_interval(secs => $6), outcome = $7 \
          WHERE id = $1 AND lease_owner = $2 AND attempts = $3 AND state = 'sending'",
    )
    .bind(id)
    .bind(owner)
    .bind(attempt)
    .bind(state)
    .bind(message_id)
    .bind(retry_in)
    .bind(outcome)
    .execute(ex)
    .await?
    .rows_affected()
        == 1)
}

/// Extends the leases `owner` holds on the rows `ids` to `lease` from now; returns how
/// many.
///
/// # Errors
/// Database errors.
pub async fn renew<'e>(ex: impl PgExecutor<'e>, owner: Uuid, ids: &[i64], lease: Duration) -> Result<u64> {
    Ok(sqlx::query(
        "UPDATE outbox SET lease_until = now() + make_interval(secs => $2) \
          WHERE lease_owner = $1 AND state = 'sending' AND id = ANY($3)",
    )
    .bind(owner)
    .bind(lease.as_secs_f64())
    .bind(ids)
    .execute(ex)
    .await?
    .rows_affected())
}

/// Gives back the messages `owner` holds and has not sent (`only`: one, as claimed by
/// that attempt). Returns how many.
///
/// # Errors
/// Database errors.
pub async fn release<'e>(ex: impl PgExecutor<'e>, owner: Uuid, only: Option<(i64, i32)>) -> Result<u64> {
    Ok(sqlx::query(
        "UPDATE outbox SET state = 'pending', lease_owner = NULL, lease_until = NULL \
          WHERE lease_owner = $1 AND state = 'sending' \
            AND ($2::int8 IS NULL OR (id = $2 AND attempts = $3))",
    )
    .bind(owner)
    .bind(only.map(|(id, _)| id))
    .bind(only.map(|(_, attempt)| attempt))
    .execute(ex)
    .await?
    .rows_affected())
}

/// How many messages are unsent, and how long the oldest has waited.
///
/// # Errors
/// Database errors.
pub async fn depth<'e>(ex: impl PgExecutor<'e>) -> Result<(i64, Option<Duration>)> {
    let (open, oldest): (i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*), extract(epoch FROM now() - min(created_at))::float8 \
           FROM outbox WHERE state IN ('pending', 'sending')",
    )
    .fetch_one(ex)
    .await?;
    Ok((open, oldest.map(|s| Duration::from_secs_f64(s.max(0.0)))))
}

/// Deletes at most `batch` sent or failed messages older than `age`, oldest first;
/// returns how many. Call it in a loop until it returns less than `batch`.
///
/// # Errors
/// Database errors.
pub async fn purge_done<'e>(ex: impl PgExecutor<'e>, age: Duration, batch: i64) -> Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM outbox WHERE id = ANY (ARRAY( \
             SELECT id FROM outbox \
              WHERE state IN ('sent', 'failed') AND created_at < now() - make_interval(secs => $1) \
              ORDER BY created_at LIMIT $2))",
    )
    .bind(age.as_secs_f64())
    .bind(batch)
    .execute(ex)
    .await?
    .rows_affected())
}
