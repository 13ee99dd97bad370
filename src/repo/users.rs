//! `users`: get, create, register (user + settings in one transaction), upsert, touch.

use sqlx::{Acquire, PgConnection, PgExecutor, Postgres};

use crate::error::{Error, Result};
use crate::model::{Content, User, UserSettings, check_history_limit, check_user_id};
use crate::repo::settings;

/// The user with this id, or `None`.
///
/// # Errors
/// [`Error::InvalidInput`] for a non-positive id; database errors.
pub async fn get<'e>(ex: impl PgExecutor<'e>, id: i64) -> Result<Option<User>> {
    check_user_id(id)?;
    Ok(
        sqlx::query_as::<_, User>("SELECT id, created_at, updated_at FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(ex)
            .await?,
    )
}

/// Creates a user.
///
/// # Errors
/// [`Error::Conflict`] when the user exists; [`Error::InvalidInput`] for a bad id.
pub async fn create<'e>(ex: impl PgExecutor<'e>, id: i64) -> Result<User> {
    check_user_id(id)?;
    sqlx::query_as::<_, User>("INSERT INTO users (id) VALUES ($1) RETURNING id, created_at, updated_at")
        .bind(id)
        .fetch_one(ex)
        .await
        .map_err(|e| match Error::from(e) {
            Error::Conflict(_) => Error::Conflict(format!("user {id} already exists")),
            other => other,
        })
}

/// Creates the user if absent, otherwise refreshes its `updated_at`: what a bot does on
/// every update it receives.
///
/// # Errors
/// [`Error::InvalidInput`] for a bad id; database errors.
pub async fn upsert<'e>(ex: impl PgExecutor<'e>, id: i64) -> Result<User> {
    check_user_id(id)?;
    Ok(sqlx::query_as::<_, User>(
        "INSERT INTO users (id) VALUES ($1) \
         ON CONFLICT (id) DO UPDATE SET updated_at = now() \
         RETURNING id, created_at, updated_at",
    )
    .bind(id)
    .fetch_one(ex)
    .await?)
}

/// Refreshes `updated_at` (the database sets it to the transaction time).
///
/// # Errors
/// [`Error::NotFound`] when the user does not exist.
pub async fn touch<'e>(ex: impl PgExecutor<'e>, id: i64) -> Result<User> {
    check_user_id(id)?;
    sqlx::query_as::<_, User>(
        "UPDATE users SET updated_at = now() WHERE id = $1 RETURNING id, created_at, updated_at",
    )
    .bind(id)
    .fetch_optional(ex)
    .await?
    .ok_or_else(|| Error::not_found("user", id))
}

/// Creates a user together with its settings, in ONE transaction (a savepoint when `conn`
/// is already inside one): both rows or neither.
///
/// # Errors
/// [`Error::Conflict`] when the user exists; [`Error::InvalidInput`] for a bad id or
/// `max_history_messages` out of range.
pub async fn register(
    conn: &mut PgConnection,
    id: i64,
    max_history_messages: i32,
    system_prompt: Option<&Content>,
) -> Result<(User, UserSettings)> {
    check_user_id(id)?;
    check_history_limit("max_history_messages", i64::from(max_history_messages))?;
    let mut tx = Acquire::<'_>::begin(&mut *conn).await?;
    let user = create(&mut *tx, id).await?;
    let settings = settings::insert(&mut *tx, id, max_history_messages, system_prompt).await?;
    tx.commit().await?;
    Ok((user, settings))
}

/// Deletes a user who has no messages (their settings go with them, ON DELETE CASCADE).
/// Returns `false` when there was no such user.
///
/// # Errors
/// [`Error::Conflict`] when the user has messages: history is never physically removed,
/// so the foreign key refuses (ON DELETE RESTRICT).
pub async fn delete<'e>(ex: impl PgExecutor<'e>, id: i64) -> Result<bool> {
    check_user_id(id)?;
    match sqlx::query::<Postgres>("DELETE FROM users WHERE id = $1")
        .bind(id)
        .execute(ex)
        .await
    {
        Ok(done) => Ok(done.rows_affected() == 1),
        Err(e) => Err(match Error::from(e) {
            Error::NotFound { .. } => {
                Error::Conflict(format!("user {id} has messages; history is never deleted"))
            }
            other => other,
        }),
    }
}

/// [`upsert`] for many users in ONE statement; one `User` per id, in the order given,
/// `None` for a user whose existing row another transaction holds locked (it is
/// skipped, not waited for: upsert it on its own). Rows are locked in id order, so
/// concurrent batches cannot deadlock.
///
/// # Errors
/// [`Error::InvalidInput`] for a non-positive id (nothing written); database errors.
pub async fn upsert_many<'e>(ex: impl PgExecutor<'e>, ids: &[i64]) -> Result<Vec<Option<User>>> {
    for id in ids {
        check_user_id(*id)?;
    }
    // Existing rows are locked first, in id order, skipping those another transaction
    // holds: their users are left out (`None`) instead of making everyone wait.
    let rows: Vec<User> = sqlx::query_as::<_, User>(
        "WITH free AS MATERIALIZED ( \
             SELECT u.id FROM users u WHERE u.id = ANY($1::int8[]) \
              ORDER BY u.id FOR NO KEY UPDATE SKIP LOCKED) \
         INSERT INTO users (id) \
         SELECT w FROM UNNEST($1::int8[]) AS w \
          WHERE w IN (SELECT id FROM free) OR NOT EXISTS (SELECT 1 FROM users x WHERE x.id = w) \
          ORDER BY w \
         ON CONFLICT (id) DO UPDATE SET updated_at = now() \
         RETURNING id, created_at, updated_at",
    )
    .bind(ids)
    .fetch_all(ex)
    .await?;
    let mut by_id: std::collections::HashMap<i64, User> = rows.into_iter().map(|u| (u.id, u)).collect();
    Ok(ids.iter().map(|id| by_id.remove(id)).collect())
}
