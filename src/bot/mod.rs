//! A Telegram-style chat bot on botdb's actors: what `botdb serve` runs behind its
//! webhook, and the reference for embedding botdb in a bot of your own.
//!
//! Every update belongs to a dialogue: the sender (`from.id`) in the chat it was sent
//! in (`chat.id`). A user's private chat and each group they talk in are separate
//! dialogues, with separate histories; settings are the user's, in every chat.
//!
//! Every update is handled once under its key (the bot's name and the update id):
//! Telegram redelivers an update whenever its 200 was late or lost, possibly to another
//! instance, and a copy answers as the first did and writes nothing. An update begins
//! with one request that looks its key up and, the first time, makes sure the user
//! exists (default settings for one never seen): [`BeginTurn`] for a text, which also
//! reads the context (the newest messages that fit in the character budget
//! `DB_CONTEXT_MAX_CHARS` and the user's `max_history_messages`, the new one included);
//! [`BeginCommand`] for a command (`/start`, `/reset`, `/history`, `/settings`,
//! `/limit N`, `/prompt TEXT`, `/help`). A turn then asks the [`Model`] and stores the
//! user's message and the reply together ([`AppendTurn`], one transaction), so a turn
//! is never half-written, whatever happens in between. `/forget yes` erases the user
//! ([`EraseUser`]) without registering them first; a copy of any update handled before
//! an erasure registers nobody.

pub mod command;
/// Telegram's updates and the webhook answer (moved to [`crate::telegram`]; kept here
/// for the paths botdb 0.1 published).
pub mod telegram {
    pub use crate::telegram::update::*;
}

use std::sync::Arc;

use crate::actors::{
    AppendTurn, BeginCommand, BeginTurn, Begun, ClearHistory, DbHandle, EraseUser, GetContext,
    SetSystemPrompt, UpdateSettings, budget_for,
};
use crate::error::Error;
use crate::model::{
    Dialogue, MAX_HISTORY_RANGE, Message, RequestKey, Role, UserSettings, check_history_limit, check_user_id,
};

pub use crate::llm::{ChatMessage, EchoModel, Model, ModelError, ModelInput};
pub use crate::telegram::{SendMessage, Update};
pub use command::Command;

const HELP: &str = "Commands:\n\
/start: register\n\
/reset: forget our conversation (it is kept, hidden)\n\
/history: show what I remember (what the model is given)\n\
/settings: show your settings\n\
/limit N: remember the last N messages (1 to 1000)\n\
/prompt TEXT: set your own system prompt (/prompt alone clears it)\n\
/forget: erase everything I store about you, for good (asks to confirm)\n\
Anything else is a message for the model.";

/// What the bot makes of an update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answer with this `sendMessage`.
    Reply(SendMessage),
    /// Nothing to answer (not a message, no text sender, a bot); why, for metrics.
    Ignored(&'static str),
}

/// What the bot made of an update, the reply in full: the webhook's answer cuts it to
/// Telegram's limit ([`Outcome`]); the turn pipeline sends it in as many messages as it
/// takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Send `text` to `chat_id`.
    Text {
        /// Telegram's chat.
        chat_id: i64,
        /// The whole reply.
        text: String,
    },
    /// Nothing to answer; why.
    Ignored(&'static str),
}

/// The model call an update's turn made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelCall {
    /// How long the model took (its retries included).
    pub latency: std::time::Duration,
    /// How it failed ([`ModelError::kind`]), if it did: the user was told, nothing of
    /// the turn stored.
    pub failure: Option<&'static str>,
}

/// An update handled: the answer, and the model call it made, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handled {
    /// What to send.
    pub answer: Answer,
    /// The model call.
    pub model: Option<ModelCall>,
}

/// Whose dialogue an update is ([`Bot::route`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// The sender in the chat it was sent in.
    Dialogue {
        /// The sender (`from.id`).
        user_id: i64,
        /// The chat (`chat.id`).
        chat_id: i64,
    },
    /// The bot ignores it; why.
    Ignore(&'static str),
}

/// Why an update could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum BotError {
    /// The update cannot come from Telegram (a user id out of range, ...): 400.
    #[error("bad update: {0}")]
    BadUpdate(String),
    /// The database layer failed (503 for transient errors, else 500).
    #[error(transparent)]
    Db(#[from] Error),
}

/// The bot: botdb's actors, a model, and the bot's name (the scope of its update ids).
#[derive(Clone)]
pub struct Bot {
    db: DbHandle,
    model: Arc<dyn Model>,
    name: String,
}

impl std::fmt::Debug for Bot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bot")
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

impl Bot {
    /// A bot answering with `model`, storing through `db`, named `bot`.
    pub fn new(db: DbHandle, model: Arc<dyn Model>) -> Self {
        Bot {
            db,
            model,
            name: "bot".into(),
        }
    }

    /// The same bot under another name. Telegram's update ids are unique per bot: bots
    /// that share a database need names of their own (`BOTDB_BOT_NAME`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an empty name, or one over 90 characters.
    pub fn with_name(mut self, name: impl Into<String>) -> Result<Self, Error> {
        let name = name.into();
        RequestKey::telegram_update(&name, 0)?;
        if name.chars().nth(90).is_some() {
            return Err(Error::invalid("bot name", "expected at most 90 characters"));
        }
        self.name = name;
        Ok(self)
    }

    /// The actors' handle.
    pub fn db(&self) -> &DbHandle {
        &self.db
    }

    /// Handles one update; the reply is cut to Telegram's limit (a webhook's answer).
    ///
    /// # Errors
    /// [`BotError::BadUpdate`] for an update Telegram cannot have sent;
    /// [`BotError::Db`] when the database layer failed (nothing of the turn is stored).
    pub async fn handle(&self, update: Update) -> Result<Outcome, BotError> {
        Ok(match self.handle_traced(update).await?.answer {
            Answer::Text { chat_id, text } => Outcome::Reply(SendMessage::new(chat_id, text)),
            Answer::Ignored(why) => Outcome::Ignored(why),
        })
    }

    /// Handles one update: the whole reply, and the model call its turn made.
    ///
    /// # Errors
    /// As [`handle`](Self::handle).
    pub async fn handle_traced(&self, update: Update) -> Result<Handled, BotError> {
        let mut model = None;
        let answer = match self.handle_once(update, &mut model).await {
            // A copy of an update handled before its user was erased: answered, and
            // nothing done (the erasure keeps the keys, owned by nobody).
            Err(BotError::Db(Error::NotFound { entity, .. }))
                if entity == crate::repo::keys::ERASED_ENTITY =>
            {
                Answer::Ignored("sent before its user was erased")
            }
            other => other?,
        };
        Ok(Handled { answer, model })
    }

    /// Whose dialogue an update belongs to, or why the bot ignores it (not a message, no
    /// sender, a bot): the same rule [`handle`](Self::handle) applies, without the
    /// database.
    ///
    /// # Errors
    /// [`BotError::BadUpdate`] for a sender id Telegram cannot have sent.
    pub fn route(update: &Update) -> Result<Route, BotError> {
        let Some(message) = &update.message else {
            return Ok(Route::Ignore("not a message"));
        };
        let Some(from) = &message.from else {
            return Ok(Route::Ignore("no sender"));
        };
        if from.is_bot {
            return Ok(Route::Ignore("sent by a bot"));
        }
        let user_id = check_user_id(from.id).map_err(|e| BotError::BadUpdate(e.to_string()))?;
        Ok(Route::Dialogue {
            user_id,
            chat_id: message.chat.id,
        })
    }

    /// The update's key: the bot's name and the update id.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an update id a key cannot hold.
    pub fn key_of(&self, update: &Update) -> Result<RequestKey, Error> {
        RequestKey::telegram_update(&self.name, update.update_id)
    }

    async fn handle_once(&self, update: Update, model: &mut Option<ModelCall>) -> Result<Answer, BotError> {
        let (user_id, chat_id) = match Self::route(&update)? {
            Route::Ignore(why) => return Ok(Answer::Ignored(why)),
            Route::Dialogue { user_id, chat_id } => (user_id, chat_id),
        };
        let Some(message) = update.message else {
            return Ok(Answer::Ignored("not a message"));
        };
        // Whatever an update changes is recorded with its id, in the same transaction:
        // a copy (Telegram redelivers when a 200 is late or lost, possibly to another
        // instance) is answered as the first was and changes nothing.
        let key = RequestKey::telegram_update(&self.name, update.update_id)?;
        let text = message.text;
        // The dialogue is the user's in THIS chat: a group never sees, nor feeds the
        // model with, what the user said in private, and the reverse.
        let dialogue = Dialogue::new(user_id, chat_id);
        let reply = |text: String| Ok(Answer::Text { chat_id, text });
        let Some(text) = text else {
            return reply("I only understand text messages.".into());
        };
        let command = Command::parse(&text);
        match command {
            // Erasing must not register the user first (nor again, for a copy).
            Command::Forget(true) => return reply(self.forget(user_id, key).await?),
            // Asks to confirm, and writes nothing: no key to record, no user to register.
            Command::Forget(false) => {
                return reply(
                    "This erases everything I store about you (our conversations in every chat, \
                     your settings), for good. Send /forget yes to confirm."
                        .into(),
                );
            }
            _ => {}
        }
        let limits = *self.db.database().limits();
        // A text that cannot be stored, or a system prompt that cannot be used, is
        // refused once its user is registered (as any command registers them); no
        // context is read for such a text, and the refusal is recorded under the key.
        let refused = match &command {
            Command::Text(text) => limits.message_in(dialogue, Role::User, text).err(),
            Command::Prompt(Some(prompt)) => limits.system_prompt(prompt.as_str()).err(),
            _ => None,
        }
        .map(|e| match e {
            Error::InvalidInput { reason, .. } => reason,
            other => other.to_string(),
        });
        // Every update begins with its key: a copy of one handled before answers as the
        // first did and writes nothing (after an erasure: registers nobody); the first
        // delivery registers the user in the same transaction.
        let (registered, context) = match &command {
            // One request: a copy of an update whose turn is stored gets the same
            // answer, no model call; else the user is made sure of and (without
            // replicas, which serve it otherwise) the context for the new message read,
            // in one transaction.
            Command::Text(text) if refused.is_none() => {
                let begun = self
                    .db
                    .send(BeginTurn {
                        user_id,
                        chat_id: dialogue.chat_id,
                        key: key.clone(),
                        context_for: (!self.db.database().has_replicas()).then(|| chars(text)),
                    })
                    .await?;
                match begun {
                    Begun::Stored(done) => return reply(done.reply.content),
                    Begun::New { registered, context } => (registered, context),
                }
            }
            // The key is recorded by the keyed write that follows, or here when none does
            // (a refused text included: its copy is refused again, and registers nobody
            // after an erasure).
            _ => {
                let begin = BeginCommand {
                    user_id,
                    chat_id: dialogue.chat_id,
                    key: key.clone(),
                    record: !writes_under_key(&command, refused.is_some()),
                };
                (self.db.send(begin).await?, None)
            }
        };
        let answer = match command {
            Command::Forget(_) => HELP.into(),
            Command::Start if registered.created => format!("Welcome! You are registered.\n\n{HELP}"),
            Command::Start => format!("Welcome back!\n\n{HELP}"),
            Command::Help => HELP.into(),
            Command::Reset => {
                let clear = ClearHistory {
                    user_id,
                    chat_id: dialogue.chat_id,
                    key: Some(key),
                };
                match self.db.send(clear).await {
                    Ok(hidden) => format!("History cleared: {hidden} messages forgotten."),
                    Err(e) => erased_meanwhile(e)?,
                }
            }
            Command::History => self.history(dialogue).await?,
            // Settings are the user's, in every chat; their own system prompt is shown
            // only in their private chat, never to a group.
            Command::Settings => describe(&registered.settings, dialogue.is_private()),
            Command::Limit(Err(why)) => format!("Usage: /limit N ({why})"),
            Command::Limit(Ok(n)) if check_history_limit("max_history_messages", n).is_err() => format!(
                "The limit must be from {} to {}.",
                MAX_HISTORY_RANGE.start(),
                MAX_HISTORY_RANGE.end()
            ),
            Command::Limit(Ok(n)) => {
                let update = UpdateSettings {
                    user_id,
                    max_history_messages: Some(n),
                    system_prompt: None,
                    key: Some(key),
                };
                match self.db.send(update).await {
                    Ok(s) => format!("I will remember the last {} messages.", s.max_history_messages),
                    Err(e) => erased_meanwhile(e)?,
                }
            }
            Command::Prompt(Some(_)) if refused.is_some() => {
                format!("I cannot use that prompt: {}.", refused.unwrap_or_default())
            }
            Command::Prompt(prompt) => {
                let set = prompt.is_some();
                let change = SetSystemPrompt {
                    user_id,
                    prompt,
                    key: Some(key),
                };
                match self.db.send(change).await {
                    Ok(_) if set => "System prompt set.".into(),
                    Ok(_) => "System prompt cleared.".into(),
                    Err(e) => erased_meanwhile(e)?,
                }
            }
            Command::Text(text) => {
                return match refused {
                    Some(reason) => reply(format!("Sorry, I cannot store that message: {reason}.")),
                    None => {
                        self.turn(dialogue, &registered.settings, text, key, context, model)
                            .await
                    }
                };
            }
        };
        reply(answer)
    }

    /// A dialogue turn (`text` is storable): history + the new message to the model; both
    /// messages stored in one transaction once the model answered. `context`: the
    /// history `BeginTurn` read (newest first), or `None` to read it here.
    async fn turn(
        &self,
        dialogue: Dialogue,
        settings: &UserSettings,
        text: String,
        key: RequestKey,
        context: Option<Vec<Message>>,
        call: &mut Option<ModelCall>,
    ) -> Result<Answer, BotError> {
        let limits = *self.db.database().limits();
        let user_id = dialogue.user_id;
        // Telegram's id of the chat: a private chat's is the user's own.
        let chat_id = if dialogue.is_private() {
            user_id
        } else {
            dialogue.chat_id
        };
        // The new message takes its share of both budgets; the history gets the rest.
        let newest_first = match context {
            Some(read) => read,
            None => match budget_for(&limits, settings, chars(&text))? {
                Some(budget) => {
                    self.db
                        .send(GetContext {
                            user_id,
                            chat_id: dialogue.chat_id,
                            max_chars: Some(budget.max_chars),
                            max_messages: budget.max_messages.map(i64::from),
                        })
                        .await?
                }
                None => Vec::new(),
            },
        };
        let mut context: Vec<ChatMessage> = newest_first
            .into_iter()
            .rev()
            .map(|m| ChatMessage {
                role: m.role,
                content: m.content,
            })
            .collect();
        context.push(ChatMessage {
            role: Role::User,
            content: text.clone(),
        });
        let input = ModelInput {
            user_id,
            system_prompt: settings.system_prompt.as_deref(),
            context: &context,
        };
        let asked = std::time::Instant::now();
        let answered = self.model.reply(input).await;
        *call = Some(ModelCall {
            latency: asked.elapsed(),
            failure: answered.as_ref().err().map(ModelError::kind),
        });
        let answer = match answered {
            Ok(answer) => storable(&answer, limits.max_content_chars),
            Err(e) => {
                tracing::warn!(user_id, error = %e, "the model failed; nothing stored");
                return Ok(Answer::Text {
                    chat_id,
                    text: "The model is not available right now; please try again.".into(),
                });
            }
        };
        // Stored once: if a copy of this update stored its turn meanwhile, that turn
        // comes back, and its reply is the answer (the same one the copy gave).
        let stored = self
            .db
            .send(AppendTurn {
                user_id,
                chat_id: dialogue.chat_id,
                user_text: text,
                reply_text: answer,
                key: Some(key),
            })
            .await;
        match stored {
            Ok(turn) => Ok(Answer::Text {
                chat_id,
                text: turn.reply.content,
            }),
            // The user was erased while the model answered (`/forget yes` from another
            // chat, an operator): the turn is not stored, and answered so (a 200:
            // Telegram does not redeliver it, which would register the user again).
            Err(Error::NotFound { entity: "user", .. }) => Ok(Answer::Text {
                chat_id,
                text: "Your data was erased while I was answering; this message was not stored.".into(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// `/forget yes`: the user erased, once per update.
    async fn forget(&self, user_id: i64, key: RequestKey) -> Result<String, BotError> {
        match self
            .db
            .send(EraseUser {
                user_id,
                key: Some(key),
            })
            .await
        {
            Ok(done) => Ok(format!(
                "Done: I erased {} messages and your settings. I remember nothing about you now.",
                done.messages
            )),
            Err(Error::NotFound { .. }) => Ok("I store nothing about you.".into()),
            Err(Error::Config { .. }) => {
                Ok("Erasure is not enabled on this bot; please contact its operator.".into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// `/history`: what the bot remembers, oldest first: the newest messages within the
    /// user's limit and the character budget (a turn gives the model the newest of them
    /// that leave room, in both, for its new message).
    async fn history(&self, dialogue: Dialogue) -> Result<String, BotError> {
        let newest_first = self
            .db
            .send(GetContext {
                user_id: dialogue.user_id,
                chat_id: dialogue.chat_id,
                max_chars: None,
                max_messages: None,
            })
            .await?;
        if newest_first.is_empty() {
            return Ok("I remember nothing of our conversation yet.".into());
        }
        let mut out = format!("I remember {} messages:\n", newest_first.len());
        for m in newest_first.iter().rev() {
            let who = if m.role == Role::User { "you" } else { "me" };
            out.push_str(&format!("{who}: {}\n", telegram::truncate_chars(&m.content, 300)));
        }
        Ok(out)
    }
}

/// A text's length in characters, as the context budget counts it.
fn chars(text: &str) -> i64 {
    i64::try_from(text.chars().count()).unwrap_or(i64::MAX)
}

/// `/settings`: the user's settings; their own system prompt only in their private
/// chat (in a group it would be read by everyone there).
fn describe(s: &UserSettings, private: bool) -> String {
    let prompt = match (&s.system_prompt, private) {
        (None, _) => "(default)",
        (Some(prompt), true) => prompt.as_str(),
        (Some(_), false) => "(your own; shown only in our private chat)",
    };
    format!(
        "max_history_messages: {}\nsystem prompt: {prompt}",
        s.max_history_messages
    )
}

/// Whether the command writes under its update's key after [`BeginCommand`] (which then
/// leaves the key to it): a reset, or a settings change whose argument is valid
/// (`refused`: the prompt is not). The others, a refused argument and a refused text,
/// have BeginCommand record the key.
fn writes_under_key(command: &Command, refused: bool) -> bool {
    match command {
        Command::Reset | Command::Prompt(None) => true,
        Command::Limit(Ok(n)) => check_history_limit("max_history_messages", *n).is_ok(),
        Command::Prompt(Some(_)) => !refused,
        _ => false,
    }
}

/// The answer to a command whose keyed write found its user gone: erased (by
/// `/forget yes` in another chat, an operator) between the update's start and the write.
/// Nothing was written: the key claim needs the user's row (a foreign key).
fn erased_meanwhile(e: Error) -> Result<String, BotError> {
    match e {
        Error::NotFound { entity: "user", .. } => {
            Ok("Your data was erased meanwhile; nothing was changed.".into())
        }
        e => Err(e.into()),
    }
}

/// A model reply made storable: no NUL, not empty, within the content limit.
fn storable(answer: &str, max_chars: usize) -> String {
    let cleaned: String = answer.chars().filter(|c| *c != '\0').take(max_chars).collect();
    if cleaned.trim().is_empty() {
        "(no answer)".to_string()
    } else {
        cleaned
    }
}
