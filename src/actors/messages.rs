//! A dialogue's messages, served by the `messages` actor: one appended
//! ([`AppendMessage`]), read back ([`GetHistory`], [`GetContext`]), hidden
//! ([`ClearHistory`]) or counted ([`CountMessages`]). A bot's turn, both messages in
//! one request, is in `turns`.

use actix::Message as ActixMessage;
use serde_json::Value;

use crate::actors::batch;
use crate::actors::once;
use crate::actors::request::{BatchRunner, DbRequest, Messages, Settings, Table, user_request};
use crate::db::Database;
use crate::error::Result;
use crate::model::{
    Budget, Dialogue, Message, MessageCounts, NewMessage, RequestKey, Role, check_history_limit,
};
use crate::repo;
use crate::repo::messages::RowKey;

/// Append one message to a dialogue (a user in a chat). The content is checked against
/// the configured limits ([`InvalidInput`](crate::Error::InvalidInput)); an unknown user
/// is [`NotFound`](crate::Error::NotFound). With a `key`, at most once: a copy with the
/// same key answers with the message the first one wrote.
#[derive(Clone, ActixMessage)]
#[rtype(result = "crate::Result<Message>")]
pub struct AppendMessage {
    /// The user.
    pub user_id: i64,
    /// The chat: [`PRIVATE_CHAT`](crate::model::PRIVATE_CHAT) (or the user's own id) for the private chat.
    pub chat_id: i64,
    /// Who wrote it.
    pub role: Role,
    /// The text.
    pub content: String,
    /// Makes the request happen at most once (an idempotency key).
    pub key: Option<RequestKey>,
}

impl std::fmt::Debug for AppendMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendMessage")
            .field("user_id", &self.user_id)
            .field("chat_id", &self.chat_id)
            .field("role", &self.role)
            .field("content_bytes", &self.content.len())
            .field("key", &self.key)
            .finish()
    }
}

impl DbRequest for AppendMessage {
    type Output = Message;
    type Table = Messages;
    const NAME: &'static str = "AppendMessage";
    fn user_id(&self) -> i64 {
        self.user_id
    }
    async fn run(self, db: Database) -> Result<Message> {
        let msg =
            db.limits()
                .message_in(Dialogue::new(self.user_id, self.chat_id), self.role, self.content)?;
        append_once(&db, msg, self.key).await
    }

    /// Group commit: the appends of many users in one multi-row INSERT.
    fn batch_runner() -> Option<BatchRunner<Self>> {
        Some(|requests, db| {
            Box::pin(async move {
                let limits = *db.limits();
                let prepared = requests
                    .into_iter()
                    .map(|r| {
                        let msg =
                            limits.message_in(Dialogue::new(r.user_id, r.chat_id), r.role, r.content)?;
                        let outcome = once::messages_outcome_of_ids([msg.id]);
                        Ok((msg, r.key, outcome))
                    })
                    .collect();
                let alone = db.clone();
                batch::run(
                    prepared,
                    async |msgs: &[&(NewMessage, Option<RequestKey>, Value)]| {
                        let rows: Vec<&NewMessage> = msgs.iter().map(|(m, ..)| m).collect();
                        let keys: Vec<Option<RowKey>> = msgs
                            .iter()
                            .map(|(_, key, outcome)| key.as_ref().map(|key| RowKey { key, outcome }))
                            .collect();
                        db.autocommit(async |c| repo::messages::append_many(c, &rows, &keys).await)
                            .await
                    },
                    move |(msg, key, _): &(NewMessage, Option<RequestKey>, Value)| {
                        let (db, msg, key) = (alone.clone(), msg.clone(), key.clone());
                        Box::pin(async move { append_once(&db, msg, key).await })
                    },
                )
                .await
            })
        })
    }
}

/// One message, once under `key`: one statement in the common case (the key claimed in
/// it); the transaction that replays a copy, or waits for a locked row, otherwise.
async fn append_once(db: &Database, msg: NewMessage, key: Option<RequestKey>) -> Result<Message> {
    let Some(k) = &key else {
        return db
            .autocommit(async |c| repo::messages::append(c, &msg).await)
            .await;
    };
    let outcome = once::messages_outcome_of_ids([msg.id]);
    let row_key = Some(RowKey {
        key: k,
        outcome: &outcome,
    });
    let written = db
        .autocommit(async |c| repo::messages::append_many(c, &[&msg], &[row_key]).await)
        .await?;
    if let Some(Some(done)) = written.into_iter().next() {
        return Ok(done);
    }
    once::once(
        db,
        key.as_ref(),
        msg.user_id,
        async |tx| repo::messages::append(tx, &msg).await,
        |m| once::messages_outcome([m]),
        async |tx, recorded| {
            let found = once::messages(tx, &recorded)
                .await?
                .pop()
                .ok_or_else(|| once::mismatch(&recorded))?;
            once::same_dialogue(Dialogue::new(found.user_id, found.chat_id), msg.dialogue())?;
            Ok(found)
        },
    )
    .await
}

/// The tables a history or context read reads: `messages`, and `user_settings` when
/// the user's own limit applies.
fn reads(with_settings: bool) -> &'static [&'static str] {
    if with_settings {
        &[Messages::NAME, Settings::NAME]
    } else {
        &[Messages::NAME]
    }
}

/// A dialogue's live history, newest first: at most `limit` messages (the user's
/// `max_history_messages` when `None`) and at most `DB_MAX_HISTORY_BYTES` of content.
#[derive(Clone, Debug, ActixMessage)]
#[rtype(result = "crate::Result<Vec<Message>>")]
pub struct GetHistory {
    /// The user.
    pub user_id: i64,
    /// The chat: [`PRIVATE_CHAT`](crate::model::PRIVATE_CHAT) (or the user's own id) for the private chat.
    pub chat_id: i64,
    /// At most this many (1 to 1000); `None`: the user's setting.
    pub limit: Option<i64>,
}

impl DbRequest for GetHistory {
    type Output = Vec<Message>;
    type Table = Messages;
    const NAME: &'static str = "GetHistory";
    fn user_id(&self) -> i64 {
        self.user_id
    }
    async fn run(self, db: Database) -> Result<Vec<Message>> {
        let dialogue = Dialogue::new(self.user_id, self.chat_id);
        let max_bytes = db.limits().max_history_bytes;
        db.read_replica(
            &[self.user_id],
            reads(self.limit.is_none()),
            async |c| match self.limit {
                Some(limit) => repo::messages::history_within(c, dialogue, limit, max_bytes).await,
                None => repo::messages::history_per_settings(c, dialogue, max_bytes).await,
            },
        )
        .await
    }

    /// The histories of many users in one query.
    fn batch_runner() -> Option<BatchRunner<Self>> {
        Some(|requests, db| {
            Box::pin(async move {
                let prepared = requests
                    .into_iter()
                    .map(|r| {
                        let limit = r.limit.map(|l| check_history_limit("limit", l)).transpose()?;
                        Ok((Dialogue::new(r.user_id, r.chat_id).checked()?, limit))
                    })
                    .collect();
                let max_bytes = db.limits().max_history_bytes;
                batch::run(
                    prepared,
                    async |wanted: &[&(Dialogue, Option<i32>)]| {
                        let wanted: Vec<(Dialogue, Option<i32>)> = wanted.iter().map(|w| **w).collect();
                        let users: Vec<i64> = wanted.iter().map(|(d, _)| d.user_id).collect();
                        let tables = reads(wanted.iter().any(|(_, limit)| limit.is_none()));
                        let found = db
                            .read_replica(&users, tables, async |c| {
                                repo::messages::history_many(c, &wanted, max_bytes).await
                            })
                            .await?;
                        Ok(found.into_iter().map(Some).collect())
                    },
                    {
                        let db = db.clone();
                        move |&(dialogue, limit): &(Dialogue, Option<i32>)| {
                            let request = GetHistory {
                                user_id: dialogue.user_id,
                                chat_id: dialogue.chat_id,
                                limit: limit.map(i64::from),
                            };
                            Box::pin(request.run(db.clone()))
                        }
                    },
                )
                .await
            })
        })
    }
}

/// A dialogue's context for the model, newest first: its newest live messages that fit
/// together in `max_chars` characters (`DB_CONTEXT_MAX_CHARS` when `None`) and number
/// at most `max_messages` (the user's `max_history_messages` when `None`), within
/// `DB_MAX_HISTORY_BYTES` of content. A message that does not fit ends the context (a
/// newest message longer than the budget gives an empty one). One indexed query that
/// reads the rows it returns and at most one more; many users' at once when batched.
#[derive(Clone, Debug, ActixMessage)]
#[rtype(result = "crate::Result<Vec<Message>>")]
pub struct GetContext {
    /// The user.
    pub user_id: i64,
    /// The chat: [`PRIVATE_CHAT`](crate::model::PRIVATE_CHAT) (or the user's own id) for the private chat.
    pub chat_id: i64,
    /// The budget in characters, 0 to [`MAX_CONTEXT_CHARS`](crate::model::MAX_CONTEXT_CHARS); `None`: the configured one.
    pub max_chars: Option<i64>,
    /// At most this many messages (1 to 1000); `None`: the user's setting.
    pub max_messages: Option<i64>,
}

impl GetContext {
    fn prepare(&self, limits: &crate::config::Limits) -> Result<(Dialogue, Budget)> {
        let max_chars = self
            .max_chars
            .unwrap_or_else(|| i64::try_from(limits.context_max_chars).unwrap_or(i64::MAX));
        Ok((
            Dialogue::new(self.user_id, self.chat_id).checked()?,
            Budget::new(max_chars, self.max_messages)?,
        ))
    }
}

impl DbRequest for GetContext {
    type Output = Vec<Message>;
    type Table = Messages;
    const NAME: &'static str = "GetContext";
    fn user_id(&self) -> i64 {
        self.user_id
    }
    async fn run(self, db: Database) -> Result<Vec<Message>> {
        let wanted = self.prepare(db.limits())?;
        let max_bytes = db.limits().max_history_bytes;
        let tables = reads(self.max_messages.is_none());
        let mut found = db
            .read_replica(&[self.user_id], tables, async |c| {
                repo::messages::context_many(c, &[wanted], max_bytes).await
            })
            .await?;
        Ok(found.pop().unwrap_or_default())
    }

    /// The contexts of many users in one query.
    fn batch_runner() -> Option<BatchRunner<Self>> {
        Some(|requests, db| {
            Box::pin(async move {
                let limits = *db.limits();
                let prepared = requests.iter().map(|r| r.prepare(&limits)).collect();
                batch::run(
                    prepared,
                    async |wanted: &[&(Dialogue, Budget)]| {
                        let wanted: Vec<(Dialogue, Budget)> = wanted.iter().map(|w| **w).collect();
                        let users: Vec<i64> = wanted.iter().map(|(d, _)| d.user_id).collect();
                        let tables = reads(wanted.iter().any(|(_, budget)| budget.max_messages.is_none()));
                        let found = db
                            .read_replica(&users, tables, async |c| {
                                repo::messages::context_many(c, &wanted, limits.max_history_bytes).await
                            })
                            .await?;
                        Ok(found.into_iter().map(Some).collect())
                    },
                    {
                        let db = db.clone();
                        move |&(dialogue, budget): &(Dialogue, Budget)| {
                            let request = GetContext {
                                user_id: dialogue.user_id,
                                chat_id: dialogue.chat_id,
                                max_chars: Some(budget.max_chars),
                                max_messages: budget.max_messages.map(i64::from),
                            };
                            Box::pin(request.run(db.clone()))
                        }
                    },
                )
                .await
            })
        })
    }
}

/// Soft-delete a dialogue's whole live history; returns how many messages were hidden.
/// The user's dialogues in other chats are untouched. With a `key`, at most once: a
/// copy answers with the first one's count and hides nothing written since.
#[derive(Clone, Debug, ActixMessage)]
#[rtype(result = "crate::Result<u64>")]
pub struct ClearHistory {
    /// The user.
    pub user_id: i64,
    /// The chat: [`PRIVATE_CHAT`](crate::model::PRIVATE_CHAT) (or the user's own id) for the private chat.
    pub chat_id: i64,
    /// Makes the request happen at most once (an idempotency key).
    pub key: Option<RequestKey>,
}

impl DbRequest for ClearHistory {
    type Output = u64;
    type Table = Messages;
    const NAME: &'static str = "ClearHistory";
    fn user_id(&self) -> i64 {
        self.user_id
    }
    async fn run(self, db: Database) -> Result<u64> {
        let dialogue = Dialogue::new(self.user_id, self.chat_id);
        if self.key.is_none() {
            return db
                .autocommit(async |c| repo::messages::clear_history(c, dialogue).await)
                .await;
        }
        // The outcome records the chat: a copy is answered only in the dialogue of the
        // first.
        once::once(
            &db,
            self.key.as_ref(),
            self.user_id,
            async |tx| repo::messages::clear_history(tx, dialogue).await,
            |hidden| serde_json::json!({ "cleared": hidden, "chat": dialogue.chat_id }),
            async |_, recorded| {
                let hidden = recorded
                    .get("cleared")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| once::mismatch(&recorded))?;
                once::same_chat(&recorded, dialogue)?;
                Ok(hidden)
            },
        )
        .await
    }
}

user_request!(
    /// Count a user's live and soft-deleted messages, in all their chats.
    CountMessages, Messages, MessageCounts, read repo::messages::count
);
