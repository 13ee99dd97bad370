//! Requests served by the `messages` actor.

use actix::Message as ActixMessage;
use serde::Serialize;

use crate::actors::batch;
use crate::actors::request::{BatchRunner, DbRequest, Messages, user_request};
use crate::db::Database;
use crate::error::Result;
use crate::model::{Dialogue, Message, MessageCounts, NewMessage, Role, check_history_limit};
use crate::repo;

/// Append one message to a dialogue (a user in a chat). The content is checked against
/// the configured limits ([`InvalidInput`](crate::Error::InvalidInput)); an unknown user
/// is [`NotFound`](crate::Error::NotFound).
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
}

impl std::fmt::Debug for AppendMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendMessage")
            .field("user_id", &self.user_id)
            .field("chat_id", &self.chat_id)
            .field("role", &self.role)
            .field("content_bytes", &self.content.len())
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
        db.autocommit(async |c| repo::messages::append(c, &msg).await)
            .await
    }

    /// Group commit: the appends of many users in one multi-row INSERT.
    fn batch_runner() -> Option<BatchRunner<Self>> {
        Some(|requests, db| {
            Box::pin(async move {
                let limits = *db.limits();
                let prepared = requests
                    .into_iter()
                    .map(|r| limits.message_in(Dialogue::new(r.user_id, r.chat_id), r.role, r.content))
                    .collect();
                let alone = db.clone();
                batch::run(
                    prepared,
                    async |msgs: &[&NewMessage]| {
                        db.autocommit(async |c| repo::messages::append_many(c, msgs).await)
                            .await
                    },
                    move |msg: &NewMessage| {
                        let (db, msg) = (alone.clone(), msg.clone());
                        Box::pin(async move {
                            db.autocommit(async |c| repo::messages::append(c, &msg).await)
                                .await
                        })
                    },
                )
                .await
            })
        })
    }
}

/// The two messages of one exchange.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Turn {
    /// The user's message.
    pub user: Message,
    /// The model's reply.
    pub reply: Message,
}

/// Append the user's message and the model's reply to a dialogue in one transaction:
/// both or neither.
#[derive(Clone, ActixMessage)]
#[rtype(result = "crate::Result<Turn>")]
pub struct AppendTurn {
    /// The user.
    pub user_id: i64,
    /// The chat: [`PRIVATE_CHAT`](crate::model::PRIVATE_CHAT) (or the user's own id) for the private chat.
    pub chat_id: i64,
    /// What the user wrote.
    pub user_text: String,
    /// What the model answered.
    pub reply_text: String,
}

impl std::fmt::Debug for AppendTurn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendTurn")
            .field("user_id", &self.user_id)
            .field("chat_id", &self.chat_id)
            .field("user_bytes", &self.user_text.len())
            .field("reply_bytes", &self.reply_text.len())
            .finish()
    }
}

impl DbRequest for AppendTurn {
    type Output = Turn;
    type Table = Messages;
    const NAME: &'static str = "AppendTurn";
    fn user_id(&self) -> i64 {
        self.user_id
    }
    async fn run(self, db: Database) -> Result<Turn> {
        let limits = db.limits();
        let dialogue = Dialogue::new(self.user_id, self.chat_id);
        let user = limits.message_in(dialogue, Role::User, self.user_text)?;
        let reply = limits.message_in(dialogue, Role::Assistant, self.reply_text)?;
        append_turn(&db, &(user, reply)).await
    }

    /// Group commit: the turns of many users, both messages each, in one INSERT.
    fn batch_runner() -> Option<BatchRunner<Self>> {
        Some(|requests, db| {
            Box::pin(async move {
                let limits = *db.limits();
                let prepared = requests
                    .into_iter()
                    .map(|r| {
                        let dialogue = Dialogue::new(r.user_id, r.chat_id);
                        Ok((
                            limits.message_in(dialogue, Role::User, r.user_text)?,
                            limits.message_in(dialogue, Role::Assistant, r.reply_text)?,
                        ))
                    })
                    .collect();
                batch::run(
                    prepared,
                    async |turns: &[&(NewMessage, NewMessage)]| {
                        let rows: Vec<&NewMessage> = turns.iter().flat_map(|(u, r)| [u, r]).collect();
                        let written = db
                            .autocommit(async |c| repo::messages::append_many(c, &rows).await)
                            .await?;
                        Ok(written
                            .chunks(2)
                            .map(|pair| match pair {
                                [Some(user), Some(reply)] => Some(Turn {
                                    user: user.clone(),
                                    reply: reply.clone(),
                                }),
                                _ => None,
                            })
                            .collect())
                    },
                    {
                        let db = db.clone();
                        move |turn: &(NewMessage, NewMessage)| {
                            let (db, turn) = (db.clone(), turn.clone());
                            Box::pin(async move { append_turn(&db, &turn).await })
                        }
                    },
                )
                .await
            })
        })
    }
}

/// One turn, both messages in one transaction.
async fn append_turn(db: &Database, (user, reply): &(NewMessage, NewMessage)) -> Result<Turn> {
    db.session(async |tx| {
        Ok(Turn {
            user: repo::messages::append(&mut *tx, user).await?,
            reply: repo::messages::append(&mut *tx, reply).await?,
        })
    })
    .await
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
        db.read(async |c| match self.limit {
            Some(limit) => repo::messages::history_within(c, dialogue, limit, max_bytes).await,
            None => repo::messages::history_per_settings(c, dialogue, max_bytes).await,
        })
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
                        let found = db
                            .read(async |c| repo::messages::history_many(c, &wanted, max_bytes).await)
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

/// Soft-delete a dialogue's whole live history; returns how many messages were hidden.
/// The user's dialogues in other chats are untouched.
#[derive(Clone, Debug, ActixMessage)]
#[rtype(result = "crate::Result<u64>")]
pub struct ClearHistory {
    /// The user.
    pub user_id: i64,
    /// The chat: [`PRIVATE_CHAT`](crate::model::PRIVATE_CHAT) (or the user's own id) for the private chat.
    pub chat_id: i64,
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
        db.autocommit(async |c| repo::messages::clear_history(c, dialogue).await)
            .await
    }
}

user_request!(
    /// Count a user's live and soft-deleted messages, in all their chats.
    CountMessages, Messages, MessageCounts, read repo::messages::count
);
