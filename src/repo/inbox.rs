//! `inbox`: updates recorded before the webhook's 200, until their turn is done.
//!
//! A dialogue (a user in a chat) runs one update at a time, in update order, on any
//! number of instances: [`claim`] takes, for each dialogue with nothing running under
//! a live lease, its first open update, and leases it to one owner; [`renew`] keeps
//! the leases of an owner alive while its turns run; [`finish`] ends one, only for the
//! owner and attempt that claimed it last (a fencing token: an owner that lost its
//! lease, paused past it, cannot finish what another took over). An owner that dies
//! leaves leases that expire, and the updates are claimed again.

use std::time::Duration;

use serde_json::Value;
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::error::Result;
use crate::model::RequestKey;

/// An update to record: its key (the bot's scope and the update id), its dialogue, and
/// what Telegram sent.
#[derive(Clone, Debug)]
pub struct NewUpdate<'a> {
    /// The update's request key (`tg:<bot>` / update id).
    pub key: &'a RequestKey,
    /// Telegram's update id (orders a dialogue's updates).
    pub update_id: i64,
    /// The sender.
    pub user_id: i64,
    /// The dialogue's chat, as stored ([`PRIVATE_CHAT`](crate::model::PRIVATE_CHAT) for
    /// the private chat).
    pub chat_id: i64,
    /// The update as Telegram sent it.
    pub payload: &'a Value,
}

/// What recording an update did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Recorded: it will run.
    New,
    /// A copy: the update is recorded already (waiting, running, or done): nothing to do.
    Copy,
    /// A copy of an update handled before its user was erased: nothing to do.
    Erased,
    /// Its key was recorded by another user's request: refused.
    OtherUser,
}

/// Records updates in ONE statement, unless recorded before: an update whose key is
/// recorded (its turn done, or its user erased) or that is in the inbox already is a
/// copy. Answers in input order.
///
/// # Errors
/// Database errors; on an error nothing is recorded.
pub async fn record_many<'e>(ex: impl PgExecutor<'e>, updates: &[NewUpdate<'_>]) -> Result<Vec<Recorded>> {
    let scopes: Vec<&str> = updates.iter().map(|u| u.key.scope()).collect();
    let keys: Vec<&str> = updates.iter().map(|u| u.key.key()).collect();
    let ids: Vec<i64> = updates.iter().map(|u| u.update_id).collect();
    let users: Vec<i64> = updates.iter().map(|u| u.user_id).collect();
    let chats: Vec<i64> = updates.iter().map(|u| u.chat_id).collect();
    let payloads: Vec<&Value> = updates.iter().map(|u| u.payload).collect();
    let rows: Vec<(i64, bool, Option<i64>, bool)> = sqlx::query_as(
        "WITH u AS MATERIALIZED ( \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::int8[], $6::jsonb[]) \
                    WITH ORDINALITY AS u(scope, key, update_id, user_id, chat_id, payload, ord)), \
         k AS MATERIALIZED ( \
             SELECT u.ord, r.user_id AS owner FROM u \
               JOIN request_keys r ON r.scope = u.scope AND r.key = u.key), \
         ins AS ( \
             INSERT INTO inbox (scope, update_id, user_id, chat_id, payload) \
             SELECT u.scope, u.update_id, u.user_id, u.chat_id, u.payload FROM u \
              WHERE NOT EXISTS (SELECT 1 FROM k WHERE k.ord = u.ord) \
              ORDER BY u.ord \
             ON CONFLICT (scope, update_id) DO NOTHING \
             RETURNING scope, update_id) \
         SELECT u.ord, k.ord IS NOT NULL, k.owner, \
                EXISTS (SELECT 1 FROM ins WHERE ins.scope = u.scope AND ins.update_id = u.update_id) \
           FROM u LEFT JOIN k ON k.ord = u.ord ORDER BY u.ord",
    )
    .bind(&scopes)
    .bind(&keys)
    .bind(&ids)
    .bind(&users)
    .bind(&chats)
    .bind(&payloads)
    .fetch_all(ex)
    .await?;
    Ok(rows
        .into_iter()
        .zip(updates)
        .map(|((_, known, owner, inserted), update)| match (known, owner) {
            (true, None) => Recorded::Erased,
            (true, Some(owner)) if owner != update.user_id => Recorded::OtherUser,
            (true, Some(_)) => Recorded::Copy,
            (false, _) if inserted => Recorded::New,
            (false, _) => Recorded::Copy,
        })
        .collect())
}

/// An update leased to an owner, to run.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Claimed {
    /// The row.
    pub id: i64,
    /// The update's key scope (`tg:<bot>`).
    pub scope: String,
    /// Telegram's update id.
    pub update_id: i64,
    /// The sender.
    pub user_id: i64,
    /// The dialogue's chat, as stored.
    pub chat_id: i64,
    /// The update as Telegram sent it.
    pub payload: Value,
    /// This claim's number: the fencing token [`finish`] checks.
    pub attempts: i32,
    /// `true` when an earlier owner's lease on it expired (its owner died or stalled):
    /// the turn may have been begun before.
    pub reclaimed: bool,
}

/// Leases to `owner`, for `lease`, at most `limit` updates: for each dialogue whose
/// updates are not running under a live lease, its first (lowest update id) open
/// update, oldest received first. One statement; two owners never get the same update,
/// nor two updates of one dialogue.
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
             SELECT DISTINCT ON (user_id, chat_id) id, user_id, chat_id, state, lease_until, received_at \
               FROM inbox ORDER BY user_id, chat_id, update_id), \
         ready AS ( \
             SELECT h.id, h.state = 'running' AS reclaimed FROM heads h \
              WHERE (h.state = 'pending' OR h.lease_until < now()) \
                AND NOT EXISTS (SELECT 1 FROM inbox r \
                                 WHERE r.user_id = h.user_id AND r.chat_id = h.chat_id AND r.id <> h.id \
                                   AND r.state = 'running' AND r.lease_until >= now()) \
              ORDER BY h.received_at LIMIT $2) \
         UPDATE inbox i SET state = 'running', attempts = i.attempts + 1, lease_owner = $1, \
                lease_until = now() + make_interval(secs => $3), started_at = now() \
           FROM ready \
          WHERE i.id = ready.id AND (i.state = 'pending' OR i.lease_until < now()) \
         RETURNING i.id, i.scope, i.update_id, i.user_id, i.chat_id, i.payload, i.attempts, ready.reclaimed",
    )
    .bind(owner)
    .bind(limit)
    .bind(lease.as_secs_f64())
    .fetch_all(ex)
    .await?)
}

/// Extends the leases `owner` holds on the rows `ids` to `lease` from now; returns how
/// many.
///
/// # Errors
/// Database errors.
pub async fn renew<'e>(ex: impl PgExecutor<'e>, owner: Uuid, ids: &[i64], lease: Duration) -> Result<u64> {
    Ok(sqlx::query(
        "UPDATE inbox SET lease_until = now() + make_interval(secs => $2) \
          WHERE lease_owner = $1 AND state = 'running' AND id = ANY($3)",
    )
    .bind(owner)
    .bind(lease.as_secs_f64())
    .bind(ids)
    .execute(ex)
    .await?
    .rows_affected())
}

/// Gives back the updates `owner` holds (`only`: one, as claimed by that attempt), at a
/// shutdown that leaves them unfinished or after a failure: another instance claims
/// them at once instead of after the lease. Returns how many.
///
/// # Errors
/// Database errors.
pub async fn release<'e>(ex: impl PgExecutor<'e>, owner: Uuid, only: Option<(i64, i32)>) -> Result<u64> {
    Ok(sqlx::query(
        "UPDATE inbox SET state = 'pending', lease_owner = NULL, lease_until = NULL \
          WHERE lease_owner = $1 AND state = 'running' \
            AND ($2::int8 IS NULL OR (id = $2 AND attempts = $3))",
    )
    .bind(owner)
    .bind(only.map(|(id, _)| id))
    .bind(only.map(|(_, attempt)| attempt))
    .execute(ex)
    .await?
    .rows_affected())
}

/// Ends update `id` for the owner and attempt that claimed it last: the row goes.
/// Returns `false` when they no longer hold it (the lease expired and another owner
/// took it over, or it is gone: finished by another, or its user erased).
///
/// # Errors
/// Database errors.
pub async fn finish<'e>(ex: impl PgExecutor<'e>, id: i64, owner: Uuid, attempt: i32) -> Result<bool> {
    Ok(sqlx::query(
        "DELETE FROM inbox WHERE id = $1 AND lease_owner = $2 AND attempts = $3 AND state = 'running'",
    )
    .bind(id)
    .bind(owner)
    .bind(attempt)
    .execute(ex)
    .await?
    .rows_affected()
        == 1)
}

/// Whether update `id` is still in the inbox.
///
/// # Errors
/// Database errors.
pub async fn exists<'e>(ex: impl PgExecutor<'e>, id: i64) -> Result<bool> {
    Ok(sqlx::query_scalar::<_, i64>("SELECT 1 FROM inbox WHERE id = $1")
        .bind(id)
        .fetch_optional(ex)
        .await?
        .is_some())
}

/// How many updates are open, and how long the oldest waiting (not running) one has
/// waited.
///
/// # Errors
/// Database errors.
pub async fn depth<'e>(ex: impl PgExecutor<'e>) -> Result<(i64, i64, Option<Duration>)> {
    let (open, running, oldest): (i64, i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE state = 'running'), \
                extract(epoch FROM now() - min(received_at) FILTER (WHERE state = 'pending'))::float8 \
           FROM inbox",
    )
    .fetch_one(ex)
    .await?;
    Ok((open, running, oldest.map(|s| Duration::from_secs_f64(s.max(0.0)))))
}
