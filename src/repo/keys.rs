//! `request_keys`: what was done under a request key (an idempotency key, a Telegram
//! update id), recorded in the same transaction as the work.
//!
//! The protocol, inside the request's transaction: [`claim`] the key first (its row
//! lock makes a concurrent copy wait for this transaction, then find the key); if it
//! was already taken, answer with the stored outcome and do nothing; else do the work
//! and, when its outcome is only known afterwards, [`set_outcome`]. Batched inserts
//! claim their keys in the same statement as their rows
//! ([`append_many`](crate::repo::messages::append_many)).
//!
//! A key names its user, who must exist (a foreign key): inserting one takes the user's
//! row `FOR KEY SHARE`, so a claim and an erasure of the same user (which takes the row
//! `FOR UPDATE`) never overlap: the erasure scrubs every key committed before it, and a
//! claim after it finds no user ([`Error::NotFound`]). An outcome holds no content (ids,
//! counts, flags): what a copy answers with is read from the rows it names.

use std::time::Duration;

use serde_json::Value;
use sqlx::PgExecutor;

use crate::error::{Error, Result};
use crate::model::RequestKey;
use crate::repo::user_fk;

/// The entity of the [`Error::NotFound`] a copy of an erased user's request gets: it is
/// answered, and does nothing. (An erased user's keys stay until the key retention,
/// owned by nobody: `user_id` NULL.)
pub const ERASED_ENTITY: &str = "user (erased)";

/// Claims `key` for `user_id` with `outcome`. Returns `None` when this call took it
/// (the caller does the work), or the outcome recorded by whoever took it before (a
/// copy of this request; if that copy is still in its transaction, this waits for it,
/// bounded by the lock timeout). Holds the user's row `FOR KEY SHARE` until the
/// caller's transaction ends (the foreign key's check): an erasure of the user waits.
///
/// # Errors
/// [`Error::NotFound`] (entity `user`) when the user does not exist (or was erased
/// while this waited for their row); as [`outcome_of`] for a key recorded before;
/// database errors.
pub async fn claim(
    conn: &mut sqlx::PgConnection,
    key: &RequestKey,
    user_id: i64,
    outcome: &Value,
) -> Result<Option<Value>> {
    let taken: Option<i32> = sqlx::query_scalar(
        "INSERT INTO request_keys (scope, key, user_id, outcome) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (scope, key) DO NOTHING RETURNING 1",
    )
    .bind(key.scope())
    .bind(key.key())
    .bind(user_id)
    .bind(outcome)
    .fetch_optional(&mut *conn)
    .await
    .map_err(user_fk(user_id))?;
    if taken.is_some() {
        return Ok(None);
    }
    outcome_of(&mut *conn, key, user_id).await
}

/// Replaces the outcome of a key this transaction claimed (when the outcome is known
/// only after the work, like the number of messages a reset hid).
///
/// # Errors
/// Database errors.
pub async fn set_outcome<'e>(ex: impl PgExecutor<'e>, key: &RequestKey, outcome: &Value) -> Result<()> {
    sqlx::query("UPDATE request_keys SET outcome = $3 WHERE scope = $1 AND key = $2")
        .bind(key.scope())
        .bind(key.key())
        .bind(outcome)
        .execute(ex)
        .await?;
    Ok(())
}

/// The outcome recorded under `key` by a request of `user_id`, if any.
///
/// # Errors
/// [`Error::Conflict`] when the key was recorded by another user's request (a key is
/// never answered across users); [`Error::NotFound`] (entity [`ERASED_ENTITY`]) when
/// the user was erased since; database errors.
pub async fn outcome_of<'e>(
    ex: impl PgExecutor<'e>,
    key: &RequestKey,
    user_id: i64,
) -> Result<Option<Value>> {
    let recorded: Option<(Option<i64>, Value)> =
        sqlx::query_as("SELECT user_id, outcome FROM request_keys WHERE scope = $1 AND key = $2")
            .bind(key.scope())
            .bind(key.key())
            .fetch_optional(ex)
            .await?;
    judge(recorded, key, user_id)
}

/// Which of `keys` are recorded, in ONE statement: for each `(key, user_id)`, what
/// [`outcome_of`] would answer, in input order.
///
/// # Errors
/// Database errors (the per-key errors of [`outcome_of`] are in the vector).
pub async fn outcomes_of_many<'e>(
    ex: impl PgExecutor<'e>,
    keys: &[(&RequestKey, i64)],
) -> Result<Vec<Result<Option<Value>>>> {
    let scopes: Vec<&str> = keys.iter().map(|(k, _)| k.scope()).collect();
    let names: Vec<&str> = keys.iter().map(|(k, _)| k.key()).collect();
    // One primary-key probe per key (the LIMIT keeps the subquery from being flattened
    // into a join, which a table growing faster than its statistics would get as a
    // sequential scan).
    let rows: Vec<(i64, Option<i64>, Value)> = sqlx::query_as(
        "SELECT w.i, r.user_id, r.outcome \
         FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS w(scope, key, i) \
         CROSS JOIN LATERAL (SELECT k.user_id, k.outcome FROM request_keys k \
                             WHERE k.scope = w.scope AND k.key = w.key LIMIT 1) r",
    )
    .bind(&scopes)
    .bind(&names)
    .fetch_all(ex)
    .await?;
    let mut recorded: Vec<Option<(Option<i64>, Value)>> = vec![None; keys.len()];
    for (i, owner, outcome) in rows {
        if let Some(slot) = usize::try_from(i - 1).ok().and_then(|i| recorded.get_mut(i)) {
            *slot = Some((owner, outcome));
        }
    }
    Ok(recorded
        .into_iter()
        .zip(keys)
        .map(|(found, (key, user_id))| judge(found, key, *user_id))
        .collect())
}

/// What a key's recorded row (its owner, NULL once erased, and outcome), if any, means
/// for a request of `user_id`.
fn judge(recorded: Option<(Option<i64>, Value)>, key: &RequestKey, user_id: i64) -> Result<Option<Value>> {
    match recorded {
        Some((None, _)) => Err(Error::not_found(ERASED_ENTITY, user_id)),
        Some((Some(owner), _)) if owner != user_id => Err(Error::Conflict(format!(
            "request key {}/{} belongs to another user's request",
            key.scope(),
            key.key()
        ))),
        Some((_, outcome)) => Ok(Some(outcome)),
        None => Ok(None),
    }
}

/// Deletes at most `batch` keys recorded more than `age` ago, oldest first, in one short
/// statement; returns how many. Call it in a loop (each call its own transaction) until
/// it returns less than `batch`: the rows it locks are old keys nobody else touches, and
/// each call holds them for one small delete.
///
/// # Errors
/// Database errors.
pub async fn purge_older_than<'e>(ex: impl PgExecutor<'e>, age: Duration, batch: i64) -> Result<u64> {
    let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
    Ok(sqlx::query(
        "DELETE FROM request_keys WHERE ctid = ANY (ARRAY( \
             SELECT ctid FROM request_keys \
              WHERE created_at < now() - make_interval(secs => $1::float8 / 1000) \
              ORDER BY created_at LIMIT $2 \
              FOR UPDATE SKIP LOCKED))",
    )
    .bind(age_ms)
    .bind(batch)
    .execute(ex)
    .await?
    .rows_affected())
}
