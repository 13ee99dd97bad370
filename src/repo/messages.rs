//! `messages`: append, live history (newest first), soft delete, count.

use sqlx::PgExecutor;
use uuid::Uuid;

use crate::error::Result;
use crate::model::{Message, MessageCounts, NewMessage, check_history_limit, check_user_id};
use crate::repo::user_fk;

/// Appends one message. `content_length` is computed (characters) by the database.
///
/// # Errors
/// [`Error::NotFound`](crate::Error::NotFound) when the user does not exist; nothing is
/// written.
pub async fn append<'e>(ex: impl PgExecutor<'e>, msg: &NewMessage) -> Result<Message> {
    let (id, content_length, created_at, seq): (Uuid, i32, chrono::DateTime<chrono::Utc>, i64) =
        sqlx::query_as(
            "INSERT INTO messages (id, user_id, role, content, content_length) VALUES ($1, $2, $3, $4, $5) \
         RETURNING id, content_length, created_at, seq",
        )
        .bind(msg.id)
        .bind(msg.user_id)
        .bind(msg.role.as_str())
        .bind(msg.content.as_str())
        .bind(i32::try_from(msg.content.char_len()).unwrap_or(i32::MAX))
        .fetch_one(ex)
        .await
        .map_err(user_fk(msg.user_id))?;
    Ok(Message {
        id,
        user_id: msg.user_id,
        role: msg.role,
        content: msg.content.as_str().to_owned(),
        content_length,
        created_at,
        deleted_at: None,
        seq,
    })
}

/// The user's live (not deleted) messages, newest first, at most `limit`
/// (1 to [`MAX_HISTORY_RANGE`](crate::model::MAX_HISTORY_RANGE)'s end). Messages written
/// in one transaction come back in the reverse of the order they were written.
///
/// # Errors
/// [`Error::InvalidInput`](crate::Error::InvalidInput) for a bad id or limit.
pub async fn history<'e>(ex: impl PgExecutor<'e>, user_id: i64, limit: i64) -> Result<Vec<Message>> {
    check_user_id(user_id)?;
    let limit = check_history_limit("limit", limit)?;
    Ok(sqlx::query_as::<_, Message>(
        "SELECT id, user_id, role, content, content_length, created_at, deleted_at, seq \
           FROM messages \
          WHERE user_id = $1 AND deleted_at IS NULL \
          ORDER BY created_at DESC, seq DESC \
          LIMIT $2",
    )
    .bind(user_id)
    .bind(i64::from(limit))
    .fetch_all(ex)
    .await?)
}

/// The user's live messages, newest first, as many as their `max_history_messages`
/// setting says ([`DEFAULT_MAX_HISTORY`](crate::model::DEFAULT_MAX_HISTORY) when they have
/// no settings row). One statement.
///
/// # Errors
/// [`Error::InvalidInput`](crate::Error::InvalidInput) for a bad id.
pub async fn history_per_settings<'e>(ex: impl PgExecutor<'e>, user_id: i64) -> Result<Vec<Message>> {
    check_user_id(user_id)?;
    Ok(sqlx::query_as::<_, Message>(
        "SELECT id, user_id, role, content, content_length, created_at, deleted_at, seq \
           FROM messages \
          WHERE user_id = $1 AND deleted_at IS NULL \
          ORDER BY created_at DESC, seq DESC \
          LIMIT COALESCE((SELECT max_history_messages FROM user_settings WHERE user_id = $1), $2)",
    )
    .bind(user_id)
    .bind(i64::from(crate::model::DEFAULT_MAX_HISTORY))
    .fetch_all(ex)
    .await?)
}

/// Soft-deletes the user's whole live history (`deleted_at = now()`); rows are kept.
/// Returns how many messages were hidden.
///
/// # Errors
/// [`Error::InvalidInput`](crate::Error::InvalidInput) for a bad id.
pub async fn clear_history<'e>(ex: impl PgExecutor<'e>, user_id: i64) -> Result<u64> {
    check_user_id(user_id)?;
    Ok(
        sqlx::query("UPDATE messages SET deleted_at = now() WHERE user_id = $1 AND deleted_at IS NULL")
            .bind(user_id)
            .execute(ex)
            .await?
            .rows_affected(),
    )
}

/// How many live and soft-deleted messages the user has.
///
/// # Errors
/// [`Error::InvalidInput`](crate::Error::InvalidInput) for a bad id.
pub async fn count<'e>(ex: impl PgExecutor<'e>, user_id: i64) -> Result<MessageCounts> {
    check_user_id(user_id)?;
    let (live, deleted): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE deleted_at IS NULL), count(*) FILTER (WHERE deleted_at IS NOT NULL) \
           FROM messages WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_one(ex)
    .await?;
    Ok(MessageCounts { live, deleted })
}
