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

/// Appends many messages (of different users, or a user's messages in order) in ONE
/// statement: one round trip and one commit for all. Rows keep the order of `msgs`
/// (their `seq` follows it). A message whose user does not exist (as of the statement's
/// snapshot) is not written: its slot in the result is `None`, the others are written.
///
/// # Errors
/// Database errors; on an error nothing is written.
pub async fn append_many<'e>(ex: impl PgExecutor<'e>, msgs: &[&NewMessage]) -> Result<Vec<Option<Message>>> {
    let ids: Vec<Uuid> = msgs.iter().map(|m| m.id).collect();
    let users: Vec<i64> = msgs.iter().map(|m| m.user_id).collect();
    let roles: Vec<&str> = msgs.iter().map(|m| m.role.as_str()).collect();
    let contents: Vec<&str> = msgs.iter().map(|m| m.content.as_str()).collect();
    let lengths: Vec<i32> = msgs
        .iter()
        .map(|m| i32::try_from(m.content.char_len()).unwrap_or(i32::MAX))
        .collect();
    let rows: Vec<(Uuid, i32, chrono::DateTime<chrono::Utc>, i64)> = sqlx::query_as(
        "INSERT INTO messages (id, user_id, role, content, content_length) \
         SELECT r.id, r.user_id, r.role, r.content, r.content_length \
           FROM UNNEST($1::uuid[], $2::int8[], $3::text[], $4::text[], $5::int4[]) WITH ORDINALITY \
                AS r(id, user_id, role, content, content_length, ord) \
          WHERE EXISTS (SELECT 1 FROM users u WHERE u.id = r.user_id) \
          ORDER BY r.ord \
         RETURNING id, content_length, created_at, seq",
    )
    .bind(&ids)
    .bind(&users)
    .bind(&roles)
    .bind(&contents)
    .bind(&lengths)
    .fetch_all(ex)
    .await?;
    let mut written: std::collections::HashMap<Uuid, (i32, chrono::DateTime<chrono::Utc>, i64)> = rows
        .into_iter()
        .map(|(id, len, at, seq)| (id, (len, at, seq)))
        .collect();
    Ok(msgs
        .iter()
        .map(|m| {
            written
                .remove(&m.id)
                .map(|(content_length, created_at, seq)| Message {
                    id: m.id,
                    user_id: m.user_id,
                    role: m.role,
                    content: m.content.as_str().to_owned(),
                    content_length,
                    created_at,
                    deleted_at: None,
                    seq,
                })
        })
        .collect())
}

#[derive(sqlx::FromRow)]
struct Ranked {
    ord: i64,
    #[sqlx(flatten)]
    message: Message,
}

/// The live history of several users in ONE query: for each `(user_id, limit)`, that
/// user's messages newest first, at most `limit` (`None`: the user's
/// `max_history_messages`). Limits must already be checked.
///
/// # Errors
/// Database errors.
pub async fn history_many<'e>(
    ex: impl PgExecutor<'e>,
    requests: &[(i64, Option<i32>)],
) -> Result<Vec<Vec<Message>>> {
    let users: Vec<i64> = requests.iter().map(|r| r.0).collect();
    let limits: Vec<Option<i64>> = requests.iter().map(|r| r.1.map(i64::from)).collect();
    let rows: Vec<Ranked> = sqlx::query_as(
        "SELECT q.ord, m.id, m.user_id, m.role, m.content, m.content_length, m.created_at, m.deleted_at, m.seq \
           FROM UNNEST($1::int8[], $2::int8[]) WITH ORDINALITY AS q(user_id, lim, ord) \
           CROSS JOIN LATERAL ( \
                SELECT * FROM messages h \
                 WHERE h.user_id = q.user_id AND h.deleted_at IS NULL \
                 ORDER BY h.created_at DESC, h.seq DESC \
                 LIMIT COALESCE(q.lim, \
                       (SELECT s.max_history_messages FROM user_settings s WHERE s.user_id = q.user_id), $3) \
           ) m \
          ORDER BY q.ord, m.created_at DESC, m.seq DESC",
    )
    .bind(&users)
    .bind(&limits)
    .bind(i64::from(crate::model::DEFAULT_MAX_HISTORY))
    .fetch_all(ex)
    .await?;
    let mut out: Vec<Vec<Message>> = requests.iter().map(|_| Vec::new()).collect();
    for row in rows {
        if let Some(slot) = usize::try_from(row.ord - 1).ok().and_then(|i| out.get_mut(i)) {
            slot.push(row.message);
        }
    }
    Ok(out)
}
