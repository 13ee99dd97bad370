//! Requests that happen at most once under a [`RequestKey`]: the key is claimed in the
//! request's own transaction, before its work, so a copy (a retry, a redelivered
//! Telegram update, on this process or another) either waits for the first and then
//! finds its outcome, or finds it already recorded; it answers with that outcome and
//! does nothing.

use serde_json::Value;
use sqlx::PgConnection;

use crate::db::Database;
use crate::error::{Error, Result};
use crate::model::{Dialogue, Message, RequestKey};
use crate::repo;

/// Runs `work` once under `key` (or plainly, as one transaction, without a key):
/// claims the key, then either decodes the outcome a copy recorded (`replay`) or does
/// `work` and records `encode` of its output, all in one transaction.
pub(crate) async fn once<T>(
    db: &Database,
    key: Option<&RequestKey>,
    user_id: i64,
    work: impl AsyncFnOnce(&mut PgConnection) -> Result<T>,
    encode: impl FnOnce(&T) -> Value,
    replay: impl AsyncFnOnce(&mut PgConnection, Value) -> Result<T>,
) -> Result<T> {
    let Some(key) = key else {
        return db.session(work).await;
    };
    db.session(async |tx| {
        if let Some(recorded) = repo::keys::claim(tx, key, user_id, &Value::Null).await? {
            return replay(tx, recorded).await;
        }
        let output = work(&mut *tx).await?;
        repo::keys::set_outcome(&mut *tx, key, &encode(&output)).await?;
        Ok(output)
    })
    .await
}

/// A recorded outcome that is not what this request records: the key was used for
/// another kind of request.
pub(crate) fn mismatch(key_outcome: &Value) -> Error {
    Error::Conflict(format!(
        "the request key was used for another kind of request (recorded outcome: {})",
        match key_outcome {
            Value::Object(o) => o.keys().cloned().collect::<Vec<_>>().join(", "),
            other => other.to_string(),
        }
    ))
}

/// Refuses to answer a request in `asked` with what was recorded in `recorded`, another
/// dialogue: a copy is answered only into the chat of the first (a key reused for
/// another chat is another request, or another bot's update under the same scope).
pub(crate) fn same_dialogue(recorded: Dialogue, asked: Dialogue) -> Result<()> {
    if recorded == asked {
        return Ok(());
    }
    Err(Error::Conflict(
        "the request key was recorded for another chat: a copy is answered only in the chat of the first \
         (bots sharing a database need names of their own, BOTDB_BOT_NAME)"
            .into(),
    ))
}

/// [`same_dialogue`] for an outcome that records its chat (`"chat"`); one recorded
/// before outcomes did (botdb's migrations up to 0007) is taken as asked.
pub(crate) fn same_chat(recorded: &Value, asked: Dialogue) -> Result<()> {
    match recorded.get("chat").and_then(Value::as_i64) {
        Some(chat_id) => same_dialogue(Dialogue { chat_id, ..asked }, asked),
        None => Ok(()),
    }
}

/// The messages a recorded outcome names (`{"messages": [id, ...]}`), in order.
pub(crate) async fn messages(conn: &mut PgConnection, outcome: &Value) -> Result<Vec<Message>> {
    let ids: Vec<uuid::Uuid> = outcome
        .get("messages")
        .and_then(|ids| serde_json::from_value(ids.clone()).ok())
        .ok_or_else(|| mismatch(outcome))?;
    repo::messages::by_ids(conn, &ids)
        .await?
        .into_iter()
        .zip(&ids)
        .map(|(m, id)| m.ok_or_else(|| Error::not_found("message of a recorded request", id)))
        .collect()
}

/// The outcome that names `messages`.
pub(crate) fn messages_outcome<'a>(messages: impl IntoIterator<Item = &'a Message>) -> Value {
    messages_outcome_of_ids(messages.into_iter().map(|m| m.id))
}

/// The outcome that names the messages with these ids.
pub(crate) fn messages_outcome_of_ids(ids: impl IntoIterator<Item = uuid::Uuid>) -> Value {
    serde_json::json!({ "messages": ids.into_iter().collect::<Vec<_>>() })
}
