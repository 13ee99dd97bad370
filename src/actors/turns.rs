//! A bot's turn: a user's message and the model's reply, stored together ([`Turn`]).
//! [`BeginTurn`] is what a bot needs before it calls the model, in one request and one
//! transaction (the update's stored turn, or the user made sure of and their context);
//! [`AppendTurn`] stores the turn after it (both messages in one transaction, at most
//! once under the update's key); [`TurnOf`] finds the turn a key stored.
//!
//! One file although two actors serve them (`BeginTurn` the `users` actor, the others
//! the `messages` actor): they share the stored turn and the one way a copy of an update
//! is answered with it ([`replay_turn`]: only in the dialogue of the first).

use actix::Message as ActixMessage;
use serde::Serialize;
use serde_json::Value;

use crate::actors::batch;
use crate::actors::once;
use crate::actors::request::{BatchRunner, DbRequest, Messages, Settings, Table, Users};
use crate::actors::users::{Registered, ensure, ensure_many};
use crate::config::Limits;
use crate::db::Database;
use crate::error::Result;
use crate::model::{Budget, Dialogue, Message, NewMessage, RequestKey, Role, UserSettings};
use crate::repo;
use crate::repo::messages::RowKey;

/// What a turn starts from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Begun {
    /// A turn is already stored under the key (a copy of the update): its two messages.
    /// Nothing was done: the user was not registered (nor again), no context was read.
    Stored(Turn),
    /// The first time: the user and their settings (created if absent), and the context
    /// for the new message when one was asked for.
    New {
        /// The user and settings, as [`EnsureUser`](crate::actors::EnsureUser) answers.
        registered: Registered,
        /// The dialogue's newest live messages, newest first, that fit beside the new
        /// message (see [`BeginTurn::context_for`]); `None` when none was asked for.
        context: Option<Vec<Message>>,
    },
}

/// Start a bot's turn: [`TurnOf`], then
/// [`EnsureUser`](crate::actors::EnsureUser), then
/// [`GetContext`](crate::actors::GetContext), as ONE request in ONE transaction on the
/// primary (the `users` actor, serialised with the user's other user requests).
/// Batched: the requests of many users ready together run as one transaction of five
/// statements (keys, users, default settings, settings, contexts), where the three
/// requests took three round trips through the actors and a statement of their own for
/// the key.
///
/// A key already recorded answers [`Begun::Stored`] and changes nothing (a copy of an
/// erased user's update is [`NotFound`](crate::Error::NotFound), entity
/// [`ERASED_ENTITY`](crate::repo::keys::ERASED_ENTITY), as `TurnOf`). The key is not
/// claimed here: [`AppendTurn`] with the same key stores
/// the turn once, whichever copy gets there first.
#[derive(Clone, Debug, ActixMessage)]
#[rtype(result = "crate::Result<Begun>")]
pub struct BeginTurn {
    /// The user.
    pub user_id: i64,
    /// The chat: [`PRIVATE_CHAT`](crate::model::PRIVATE_CHAT) (or the user's own id) for the private chat.
    pub chat_id: i64,
    /// The update's key, under which `AppendTurn` stores the turn.
    pub key: RequestKey,
    /// Read the context for a new message of this many characters: the dialogue's
    /// newest live messages within the configured budget (`DB_CONTEXT_MAX_CHARS`) less
    /// these characters, and within the user's `max_history_messages` less one (the new
    /// message takes a place); none when either leaves no room. `None`: no context is
    /// read (read it with `GetContext`, which a replica can serve).
    pub context_for: Option<i64>,
}

impl BeginTurn {
    fn prepare(&self) -> Result<(Dialogue, RequestKey, Option<i64>)> {
        let dialogue = Dialogue::new(self.user_id, self.chat_id).checked()?;
        Ok((dialogue, self.key.clone(), self.context_for))
    }
}

/// The budget of the context beside a new message of `new_chars` characters (the
/// configured characters less the message's, the user's limit less one), or `None`
/// when it leaves no room. The bot's rule, whichever request reads the context.
pub(crate) fn budget_for(limits: &Limits, settings: &UserSettings, new_chars: i64) -> Result<Option<Budget>> {
    let configured = i64::try_from(limits.context_max_chars).unwrap_or(i64::MAX);
    let chars = configured.saturating_sub(new_chars.max(0));
    let earlier = i64::from(settings.max_history_messages) - 1;
    if chars <= 0 || earlier <= 0 {
        return Ok(None);
    }
    Budget::new(chars, Some(earlier)).map(Some)
}

impl DbRequest for BeginTurn {
    type Output = Begun;
    type Table = Users;
    const NAME: &'static str = "BeginTurn";
    const ALSO_WRITES: &'static [&'static str] = &[Settings::NAME];
    fn user_id(&self) -> i64 {
        self.user_id
    }

    async fn run(self, db: Database) -> Result<Begun> {
        let (dialogue, key, context_for) = self.prepare()?;
        let limits = *db.limits();
        db.session(async |tx| {
            if let Some(recorded) = repo::keys::outcome_of(&mut *tx, &key, dialogue.user_id).await? {
                return replay_turn(tx, &recorded, dialogue).await.map(Begun::Stored);
            }
            let registered = ensure(tx, dialogue.user_id).await?;
            let context = match context_for {
                None => None,
                Some(chars) => Some(match budget_for(&limits, &registered.settings, chars)? {
                    None => Vec::new(),
                    Some(budget) => repo::messages::context_many(
                        &mut *tx,
                        &[(dialogue, budget)],
                        limits.max_history_bytes,
                    )
                    .await?
                    .pop()
                    .unwrap_or_default(),
                }),
            };
            Ok(Begun::New { registered, context })
        })
        .await
    }

    /// Many turns begun in one transaction: the keys in one statement; users whose key
    /// is recorded (copies, rare), whose row another transaction holds, or whose budget
    /// is refused go on alone; the rest are registered (three statements, as
    /// `EnsureUser`'s batch) and their contexts read in one query.
    fn batch_runner() -> Option<BatchRunner<Self>> {
        Some(|requests, db| {
            Box::pin(async move {
                let limits = *db.limits();
                let prepared = requests.iter().map(BeginTurn::prepare).collect();
                batch::run(
                    prepared,
                    async |wanted: &[&(Dialogue, RequestKey, Option<i64>)]| {
                        db.session(async |tx| {
                            let keys: Vec<(&RequestKey, i64)> =
                                wanted.iter().map(|(d, key, _)| (key, d.user_id)).collect();
                            let recorded = repo::keys::outcomes_of_many(&mut *tx, &keys).await?;
                            // A recorded key (or one that is an error) goes on alone.
                            let fresh: Vec<i64> = wanted
                                .iter()
                                .zip(&recorded)
                                .filter(|(_, r)| matches!(r, Ok(None)))
                                .map(|(w, _)| w.0.user_id)
                                .collect();
                            let mut registered = ensure_many(tx, &fresh).await?.into_iter();
                            // Those to answer together, in input order: their registration,
                            // and the context's budget when one was asked for.
                            let mut begun = Vec::with_capacity(wanted.len());
                            let mut reads = Vec::new();
                            for ((dialogue, _, context_for), recorded) in wanted.iter().zip(&recorded) {
                                // `fresh` is the inputs whose key is unrecorded, in order.
                                let mut ready = match recorded {
                                    Ok(None) => registered.next().flatten(),
                                    _ => None,
                                };
                                let budget = match (&ready, context_for) {
                                    (Some(r), Some(chars)) => {
                                        match budget_for(&limits, &r.settings, *chars) {
                                            Ok(budget) => Some(budget),
                                            // Its own error, alone; the others go on.
                                            Err(_) => {
                                                ready = None;
                                                None
                                            }
                                        }
                                    }
                                    _ => None,
                                };
                                if let Some(Some(budget)) = budget {
                                    reads.push((*dialogue, budget));
                                }
                                begun.push((ready, budget));
                            }
                            let mut found = if reads.is_empty() {
                                Vec::new()
                            } else {
                                repo::messages::context_many(&mut *tx, &reads, limits.max_history_bytes)
                                    .await?
                            }
                            .into_iter();
                            Ok(begun
                                .into_iter()
                                .map(|(ready, budget)| {
                                    let context = match budget {
                                        None => None,
                                        Some(None) => Some(Vec::new()),
                                        Some(Some(_)) => Some(found.next().unwrap_or_default()),
                                    };
                                    ready.map(|registered| Begun::New { registered, context })
                                })
                                .collect())
                        })
                        .await
                    },
                    {
                        let db = db.clone();
                        move |(dialogue, key, context_for): &(Dialogue, RequestKey, Option<i64>)| {
                            let request = BeginTurn {
                                user_id: dialogue.user_id,
                                chat_id: dialogue.chat_id,
                                key: key.clone(),
                                context_for: *context_for,
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

/// The two messages of one exchange.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Turn {
    /// The user's message.
    pub user: Message,
    /// The model's reply.
    pub reply: Message,
}

/// Append the user's message and the model's reply to a dialogue in one transaction:
/// both or neither. With a `key` (a Telegram update's, say), at most once: a copy with
/// the same key answers with the turn the first one stored, whatever reply it brings.
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
    /// Makes the turn happen at most once (an idempotency key).
    pub key: Option<RequestKey>,
}

impl std::fmt::Debug for AppendTurn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendTurn")
            .field("user_id", &self.user_id)
            .field("chat_id", &self.chat_id)
            .field("user_bytes", &self.user_text.len())
            .field("reply_bytes", &self.reply_text.len())
            .field("key", &self.key)
            .finish()
    }
}

/// A turn ready to write: both messages, its key, and the outcome the key records.
type PreparedTurn = (NewMessage, NewMessage, Option<RequestKey>, Value);

impl AppendTurn {
    fn prepare(self, limits: &Limits) -> Result<PreparedTurn> {
        let dialogue = Dialogue::new(self.user_id, self.chat_id);
        let user = limits.message_in(dialogue, Role::User, self.user_text)?;
        let reply = limits.message_in(dialogue, Role::Assistant, self.reply_text)?;
        let outcome = once::messages_outcome_of_ids([user.id, reply.id]);
        Ok((user, reply, self.key, outcome))
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
        let turn = self.prepare(db.limits())?;
        append_turn(&db, turn).await
    }

    /// Group commit: the turns of many users, both messages each (and their keys), in
    /// one INSERT.
    fn batch_runner() -> Option<BatchRunner<Self>> {
        Some(|requests, db| {
            Box::pin(async move {
                let limits = *db.limits();
                let prepared = requests.into_iter().map(|r| r.prepare(&limits)).collect();
                let alone = db.clone();
                batch::run(
                    prepared,
                    async |turns: &[&PreparedTurn]| {
                        let rows: Vec<&NewMessage> = turns.iter().flat_map(|(u, r, ..)| [u, r]).collect();
                        let keys: Vec<Option<RowKey>> = turns
                            .iter()
                            .flat_map(|(_, _, key, outcome)| {
                                let key = key.as_ref().map(|key| RowKey { key, outcome });
                                [key, key]
                            })
                            .collect();
                        let written = db
                            .autocommit(async |c| repo::messages::append_many(c, &rows, &keys).await)
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
                    move |turn: &PreparedTurn| {
                        let (db, turn) = (alone.clone(), turn.clone());
                        Box::pin(async move { append_turn(&db, turn).await })
                    },
                )
                .await
            })
        })
    }
}

/// One turn, both messages in one statement (with its key, when it has one); when that
/// statement leaves it out (a copy took the key, the user's row is locked or unknown),
/// the transaction that replays the copy, waits for the lock or says what is missing.
async fn append_turn(db: &Database, (user, reply, key, outcome): PreparedTurn) -> Result<Turn> {
    let row_key = key.as_ref().map(|key| RowKey {
        key,
        outcome: &outcome,
    });
    let written = db
        .autocommit(async |c| repo::messages::append_many(c, &[&user, &reply], &[row_key, row_key]).await)
        .await?;
    if let [Some(u), Some(r)] = written.as_slice() {
        return Ok(Turn {
            user: u.clone(),
            reply: r.clone(),
        });
    }
    once::once(
        db,
        key.as_ref(),
        user.user_id,
        async |tx| {
            Ok(Turn {
                user: repo::messages::append(&mut *tx, &user).await?,
                reply: repo::messages::append(&mut *tx, &reply).await?,
            })
        },
        |turn| once::messages_outcome([&turn.user, &turn.reply]),
        async |tx, recorded| replay_turn(tx, &recorded, user.dialogue()).await,
    )
    .await
}

/// The turn a recorded outcome names, whatever its dialogue.
async fn recorded_turn(tx: &mut sqlx::PgConnection, recorded: &Value) -> Result<Turn> {
    match <[Message; 2]>::try_from(once::messages(tx, recorded).await?) {
        Ok([user, reply]) => Ok(Turn { user, reply }),
        Err(_) => Err(once::mismatch(recorded)),
    }
}

/// The turn a recorded outcome names, to answer a copy in `dialogue`: a turn of another
/// dialogue is [`Conflict`](crate::Error::Conflict), never replayed into this chat.
async fn replay_turn(tx: &mut sqlx::PgConnection, recorded: &Value, dialogue: Dialogue) -> Result<Turn> {
    let turn = recorded_turn(tx, recorded).await?;
    once::same_dialogue(Dialogue::new(turn.user.user_id, turn.user.chat_id), dialogue)?;
    Ok(turn)
}

/// The turn stored under `key`, if a request with that key already stored one: a bot
/// asks before calling the model for a redelivered update, and answers with it.
#[derive(Clone, Debug, ActixMessage)]
#[rtype(result = "crate::Result<Option<Turn>>")]
pub struct TurnOf {
    /// The user (the request is serialised with their others).
    pub user_id: i64,
    /// The key the turn was stored with.
    pub key: RequestKey,
}

impl DbRequest for TurnOf {
    type Output = Option<Turn>;
    type Table = Messages;
    const NAME: &'static str = "TurnOf";
    fn user_id(&self) -> i64 {
        self.user_id
    }
    async fn run(self, db: Database) -> Result<Option<Turn>> {
        db.read(
            async |c| match repo::keys::outcome_of(&mut *c, &self.key, self.user_id).await? {
                Some(recorded) => recorded_turn(c, &recorded).await.map(Some),
                None => Ok(None),
            },
        )
        .await
    }
}
