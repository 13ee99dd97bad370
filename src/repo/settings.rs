//! `user_settings`: get, insert, upsert, partial update.

use std::collections::HashMap;

use sqlx::PgExecutor;

use crate::error::{Error, Result};
use crate::model::{Content, SettingsPatch, UserSettings, check_history_limit, check_user_id};
use crate::repo::user_fk;

/// A user's settings, or `None` when the user has none.
///
/// # Errors
/// [`Error::InvalidInput`] for a bad id; database errors.
pub async fn get<'e>(ex: impl PgExecutor<'e>, user_id: i64) -> Result<Option<UserSettings>> {
    check_user_id(user_id)?;
    Ok(sqlx::query_as::<_, UserSettings>(
        "SELECT user_id, max_history_messages, system_prompt, created_at, updated_at \
         FROM user_settings WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(ex)
    .await?)
}

/// Creates a user's settings row.
///
/// # Errors
/// [`Error::NotFound`] for an unknown user, [`Error::Conflict`] when the row exists,
/// [`Error::InvalidInput`] for a value out of range.
pub async fn insert<'e>(
    ex: impl PgExecutor<'e>,
    user_id: i64,
    max_history_messages: i32,
    system_prompt: Option<&Content>,
) -> Result<UserSettings> {
    check_user_id(user_id)?;
    check_history_limit("max_history_messages", i64::from(max_history_messages))?;
    sqlx::query_as::<_, UserSettings>(
        "INSERT INTO user_settings (user_id, max_history_messages, system_prompt) VALUES ($1, $2, $3) \
         RETURNING user_id, max_history_messages, system_prompt, created_at, updated_at",
    )
    .bind(user_id)
    .bind(max_history_messages)
    .bind(system_prompt.map(Content::as_str))
    .fetch_one(ex)
    .await
    .map_err(|e| match user_fk(user_id)(e) {
        Error::Conflict(_) => Error::Conflict(format!("settings of user {user_id} already exist")),
        other => other,
    })
}

/// Creates the user's settings with these values unless a row exists; returns the row
/// that is there afterwards and whether this call created it.
///
/// # Errors
/// [`Error::NotFound`] for an unknown user; [`Error::InvalidInput`] for a value out of
/// range.
pub async fn insert_if_absent(
    conn: &mut sqlx::PgConnection,
    user_id: i64,
    max_history_messages: i32,
    system_prompt: Option<&Content>,
) -> Result<(UserSettings, bool)> {
    check_user_id(user_id)?;
    check_history_limit("max_history_messages", i64::from(max_history_messages))?;
    let created = sqlx::query_as::<_, UserSettings>(
        "INSERT INTO user_settings (user_id, max_history_messages, system_prompt) VALUES ($1, $2, $3) \
         ON CONFLICT (user_id) DO NOTHING \
         RETURNING user_id, max_history_messages, system_prompt, created_at, updated_at",
    )
    .bind(user_id)
    .bind(max_history_messages)
    .bind(system_prompt.map(Content::as_str))
    .fetch_optional(&mut *conn)
    .await
    .map_err(user_fk(user_id))?;
    match created {
        Some(row) => Ok((row, true)),
        None => get(&mut *conn, user_id)
            .await?
            .map(|row| (row, false))
            .ok_or_else(|| Error::not_found("user_settings", user_id)),
    }
}

/// Creates or replaces a user's settings.
///
/// # Errors
/// [`Error::NotFound`] for an unknown user; [`Error::InvalidInput`] for a value out of
/// range.
pub async fn upsert<'e>(
    ex: impl PgExecutor<'e>,
    user_id: i64,
    max_history_messages: i32,
    system_prompt: Option<&Content>,
) -> Result<UserSettings> {
    check_user_id(user_id)?;
    check_history_limit("max_history_messages", i64::from(max_history_messages))?;
    sqlx::query_as::<_, UserSettings>(
        "INSERT INTO user_settings (user_id, max_history_messages, system_prompt) VALUES ($1, $2, $3) \
         ON CONFLICT (user_id) DO UPDATE \
            SET max_history_messages = EXCLUDED.max_history_messages, system_prompt = EXCLUDED.system_prompt \
         RETURNING user_id, max_history_messages, system_prompt, created_at, updated_at",
    )
    .bind(user_id)
    .bind(max_history_messages)
    .bind(system_prompt.map(Content::as_str))
    .fetch_one(ex)
    .await
    .map_err(user_fk(user_id))
}

/// Changes the fields set in `patch`, leaving the others as they are.
///
/// # Errors
/// [`Error::NotFound`] when the user has no settings row; [`Error::InvalidInput`] for
/// a value out of range.
pub async fn update<'e>(
    ex: impl PgExecutor<'e>,
    user_id: i64,
    patch: &SettingsPatch,
) -> Result<UserSettings> {
    check_user_id(user_id)?;
    patch.validate()?;
    let (set_prompt, prompt) = match &patch.system_prompt {
        None => (false, None),
        Some(p) => (true, p.as_ref().map(Content::as_str)),
    };
    sqlx::query_as::<_, UserSettings>(
        "UPDATE user_settings \
            SET max_history_messages = COALESCE($2, max_history_messages), \
                system_prompt = CASE WHEN $3 THEN $4 ELSE system_prompt END \
          WHERE user_id = $1 \
         RETURNING user_id, max_history_messages, system_prompt, created_at, updated_at",
    )
    .bind(user_id)
    .bind(patch.max_history_messages)
    .bind(set_prompt)
    .bind(prompt)
    .fetch_optional(ex)
    .await?
    .ok_or_else(|| Error::not_found("user_settings", user_id))
}

/// Changes `max_history_messages` (e.g. 50 -> 100).
///
/// # Errors
/// As [`update`].
pub async fn set_max_history<'e>(ex: impl PgExecutor<'e>, user_id: i64, n: i64) -> Result<UserSettings> {
    update(ex, user_id, &SettingsPatch::max_history(n)?).await
}

/// Sets (`Some`) or clears (`None`) the user's system prompt.
///
/// # Errors
/// As [`update`].
pub async fn set_system_prompt<'e>(
    ex: impl PgExecutor<'e>,
    user_id: i64,
    prompt: Option<Content>,
) -> Result<UserSettings> {
    update(ex, user_id, &SettingsPatch::system_prompt(prompt)).await
}

/// The settings of several users in ONE query, by user id (absent ones are missing).
///
/// # Errors
/// Database errors.
pub async fn get_many<'e>(ex: impl PgExecutor<'e>, user_ids: &[i64]) -> Result<HashMap<i64, UserSettings>> {
    let rows = sqlx::query_as::<_, UserSettings>(
        "SELECT user_id, max_history_messages, system_prompt, created_at, updated_at \
         FROM user_settings WHERE user_id = ANY($1)",
    )
    .bind(user_ids)
    .fetch_all(ex)
    .await?;
    Ok(rows.into_iter().map(|s| (s.user_id, s)).collect())
}

/// Creates default settings (`max_history_messages`, no prompt) for each user that has
/// none, in ONE statement, locking in id order; returns the ids it created rows for.
///
/// # Errors
/// [`Error::NotFound`]-like database errors for unknown users; others.
pub async fn insert_defaults_many<'e>(
    ex: impl PgExecutor<'e>,
    user_ids: &[i64],
    max_history_messages: i32,
) -> Result<std::collections::HashSet<i64>> {
    check_history_limit("max_history_messages", i64::from(max_history_messages))?;
    let created: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO user_settings (user_id, max_history_messages) \
         SELECT u, $2 FROM UNNEST($1::int8[]) AS u ORDER BY u \
         ON CONFLICT (user_id) DO NOTHING RETURNING user_id",
    )
    .bind(user_ids)
    .bind(max_history_messages)
    .fetch_all(ex)
    .await?;
    Ok(created.into_iter().collect())
}
