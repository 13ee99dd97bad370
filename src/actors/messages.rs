//! Requests served by the `messages` actor.

use actix::Message as ActixMessage;
use serde::Serialize;

use crate::actors::batch;
use crate::actors::request::{BatchRunner, DbRequest, Messages, user_request};
use crate::db::Database;
use crate::error::Result;
use crate::model::{Message, MessageCounts, NewMessage, Role, check_history_limit, check_user_id};
use crate::repo;

/// Append one message to a user's dialogue. The content is checked against the
/// configured limits ([`InvalidInput`](crate::Error::InvalidInput)); an unknown user is
/// [`NotFound`](crate::Error::NotFound).
#[derive(Clone, ActixMessage)]
#[rtype(result = "crate::Result<Message>")]
pub struct AppendMessage {
    /// The user.
    pub user_id: i64,
    /// Who wrote it.
    pub role: Role,
    /// The text.
    pub content: String,
}

impl std::fmt::Debug for AppendMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendMessage")
            .field("user_id", &self.user_id)
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
        let msg = db.limits().message(self.user_id, self.role, self.content)?;
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
                    .map(|r| limits.message(r.user_id, r.role, r.content))
                    .collect();
                batch::run(
                    prepared,
                    async |msgs: &[&NewMessage]| {
                        db.autocommit(async |c| repo::messages::append_many(c, msgs).await)
                            .await
                    },
                    async |msg: &NewMessage| repo::messages::append(db.pool(), msg).await,
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

/// Append the user's message and the model's reply in one transaction: both or neither.
#[derive(Clone, ActixMessage)]
#[rtype(result = "crate::Result<Turn>")]
pub struct AppendTurn {
    /// The user.
    pub user_id: i64,
    /// What the user wrote.
    pub user_text: String,
    /// What the model answered.
    pub reply_text: String,
}

impl std::fmt::Debug for AppendTurn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendTurn")
            .field("user_id", &self.user_id)
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
        let user = limits.message(self.user_id, Role::User, self.user_text)?;
        let reply = limits.message(self.user_id, Role::Assistant, self.reply_text)?;
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
                        Ok((
                            limits.message(r.user_id, Role::User, r.user_text)?,
                            limits.message(r.user_id, Role::Assistant, r.reply_text)?,
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
                    async |turn: &(NewMessage, NewMessage)| append_turn(&db, turn).await,
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

/// A user's live history, newest first. `limit` defaults to the user's
/// `max_history_messages`.
#[derive(Clone, Debug, ActixMessage)]
#[rtype(result = "crate::Result<Vec<Message>>")]
pub struct GetHistory {
    /// The user.
    pub user_id: i64,
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
        db.autocommit(async |c| match self.limit {
            Some(limit) => repo::messages::history(c, self.user_id, limit).await,
            None => repo::messages::history_per_settings(c, self.user_id).await,
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
                        Ok((check_user_id(r.user_id)?, limit))
                    })
                    .collect();
                batch::run(
                    prepared,
                    async |wanted: &[&(i64, Option<i32>)]| {
                        let wanted: Vec<(i64, Option<i32>)> = wanted.iter().map(|w| **w).collect();
                        let found = db
                            .autocommit(async |c| repo::messages::history_many(c, &wanted).await)
                            .await?;
                        Ok(found.into_iter().map(Some).collect())
                    },
                    async |&(user_id, limit): &(i64, Option<i32>)| {
                        GetHistory {
                            user_id,
                            limit: limit.map(i64::from),
                        }
                        .run(db.clone())
                        .await
                    },
                )
                .await
            })
        })
    }
}

user_request!(
    /// Soft-delete a user's whole live history; returns how many messages were hidden.
    ClearHistory, Messages, u64, repo::messages::clear_history
);

user_request!(
    /// Count a user's live and soft-deleted messages.
    CountMessages, Messages, MessageCounts, repo::messages::count
);
