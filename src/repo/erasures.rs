//! Erasing a user (GDPR Art. 17): their messages, settings, request keys and user row
//! removed in one transaction, and an audit row in `erasures` that proves it happened
//! without keeping what went or whose it was.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use sqlx::{PgConnection, PgExecutor};

use crate::config::AuditKey;
use crate::error::{Error, Result};
use crate::model::{Erasure, check_user_id};

/// The audit subject of `user_id`: HMAC-SHA256 under the audit key of the id written
/// in decimal. Whoever holds the key and an id can find that user's erasures; without
/// the key, the subject says nothing (a plain hash would not do: Telegram's ids are
/// few enough to hash them all).
pub fn subject(key: &AuditKey, user_id: i64) -> [u8; 32] {
    // HMAC takes a key of any length: `new_from_slice` cannot fail for it.
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(key.expose()) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    };
    mac.update(user_id.to_string().as_bytes());
    mac.finalize().into_bytes().into()
}

/// Erases `user_id`, inside the caller's transaction: takes the user's row `FOR
/// UPDATE` first (so a concurrent turn of the user, which needs that row to insert,
/// either committed before, and its messages go too, or waits and then finds no user),
/// deletes their messages (live and soft-deleted, every chat), settings, the turn
/// pipeline's inbox and outbox rows and user row,
/// scrubs their request keys (kept until the key retention, so that a copy of an
/// update handled before the erasure does not run again, but owned by
/// nobody (`user_id` NULL) with no outcome: nothing names the user), and
/// writes the audit row. Returns it.
///
/// # Errors
/// [`Error::InvalidInput`] for a bad id; [`Error::NotFound`] for an unknown user
/// (nothing is written, no audit row); database errors (the caller's transaction rolls
/// everything back).
pub async fn erase(conn: &mut PgConnection, key: &AuditKey, user_id: i64) -> Result<Erasure> {
    check_user_id(user_id)?;
    let found: Option<i64> = sqlx::query_scalar("SELECT id FROM users WHERE id = $1 FOR UPDATE")
        .bind(user_id)
        .fetch_optional(&mut *conn)
        .await?;
    if found.is_none() {
        return Err(Error::not_found("user", user_id));
    }
    let messages = sqlx::query("DELETE FROM messages WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    let settings = sqlx::query("DELETE FROM user_settings WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    // Every key committed before this transaction took the user's row: a claim holds
    // that row `FOR KEY SHARE` (the foreign key's check) until it commits, so none is
    // still on its way.
    let request_keys = sqlx::query(
        "UPDATE request_keys SET user_id = NULL, outcome = '{\"erased\": true}' WHERE user_id = $1",
    )
    .bind(user_id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    // With the Bot API: what they sent that has not run, and the messages to or sent to
    // them (the reply to an erasure itself is written after it, owned by nobody).
    for table in [
        "DELETE FROM inbox WHERE user_id = $1",
        "DELETE FROM outbox WHERE user_id = $1",
    ] {
        sqlx::query(table).bind(user_id).execute(&mut *conn).await?;
    }
    sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    Ok(sqlx::query_as(
        "INSERT INTO erasures (subject, messages, settings, request_keys) VALUES ($1, $2, $3, $4) \
         RETURNING id, erased_at, messages, settings, request_keys",
    )
    .bind(subject(key, user_id).as_slice())
    .bind(count(messages))
    .bind(count(settings))
    .bind(count(request_keys))
    .fetch_one(&mut *conn)
    .await?)
}

/// The erasures of `user_id` (found by their subject under `key`), oldest first.
///
/// # Errors
/// [`Error::InvalidInput`] for a bad id; database errors.
pub async fn find<'e>(ex: impl PgExecutor<'e>, key: &AuditKey, user_id: i64) -> Result<Vec<Erasure>> {
    check_user_id(user_id)?;
    Ok(sqlx::query_as(
        "SELECT id, erased_at, messages, settings, request_keys FROM erasures \
          WHERE subject = $1 ORDER BY id",
    )
    .bind(subject(key, user_id).as_slice())
    .fetch_all(ex)
    .await?)
}
