//! [`BeginCommand`]: what a bot does first for an update that carries a command, in one
//! request and one transaction (the update's key looked up; the first time, the user
//! made sure of, and the key recorded when nothing else will record it).

use actix::Message as ActixMessage;
use serde_json::{Value, json};

use crate::actors::once;
use crate::actors::request::{DbRequest, Settings, Table, Users};
use crate::actors::users::{Registered, ensure};
use crate::db::Database;
use crate::error::{Error, Result};
use crate::model::{Dialogue, RequestKey};
use crate::repo;

/// Start a bot's command (`/start`, `/settings`, `/reset`, ...) under its update's key,
/// in ONE transaction on the primary (the `users` actor, serialised with the user's
/// other user requests):
///
/// - the key not yet recorded (the first delivery): the user and their settings made
///   sure of, as [`EnsureUser`](crate::actors::EnsureUser); with `record`, the key
///   recorded too, with an outcome that holds no content (the command's chat, whether
///   this created the user). Without `record`, a keyed request that follows records it
///   ([`ClearHistory`](crate::actors::ClearHistory),
///   [`UpdateSettings`](crate::actors::UpdateSettings),
///   [`SetSystemPrompt`](crate::actors::SetSystemPrompt) with the same key);
/// - the key recorded (a copy): nothing is written; the answer is the user and their
///   settings as they are now, `created` as the first delivery recorded it;
/// - the key recorded for an erased user: [`NotFound`](crate::Error::NotFound), entity
///   [`ERASED_ENTITY`](crate::repo::keys::ERASED_ENTITY): a copy of a command handled
///   before an erasure registers nobody;
/// - the key recorded in another chat (or by another user):
///   [`Conflict`](crate::Error::Conflict), nothing written.
#[derive(Clone, Debug, ActixMessage)]
#[rtype(result = "crate::Result<Registered>")]
pub struct BeginCommand {
    /// The user.
    pub user_id: i64,
    /// The chat the command was sent in ([`PRIVATE_CHAT`](crate::model::PRIVATE_CHAT), or
    /// the user's own id, for the private chat).
    pub chat_id: i64,
    /// The update's key.
    pub key: RequestKey,
    /// Record the key here: `true` for a command that writes nothing else (`/start`,
    /// `/help`, `/settings`, `/history`, a refused argument), `false` when a keyed
    /// request follows and records it.
    pub record: bool,
}

impl DbRequest for BeginCommand {
    type Output = Registered;
    type Table = Users;
    const NAME: &'static str = "BeginCommand";
    const ALSO_WRITES: &'static [&'static str] = &[Settings::NAME];
    fn user_id(&self) -> i64 {
        self.user_id
    }

    async fn run(self, db: Database) -> Result<Registered> {
        let dialogue = Dialogue::new(self.user_id, self.chat_id).checked()?;
        let (key, record) = (self.key, self.record);
        db.session(async |tx| {
            let recorded = match repo::keys::outcome_of(&mut *tx, &key, dialogue.user_id).await? {
                Some(recorded) => recorded,
                None => {
                    let registered = ensure(&mut *tx, dialogue.user_id).await?;
                    if !record {
                        return Ok(registered);
                    }
                    let outcome = json!({
                        "command": true,
                        "chat": dialogue.chat_id,
                        "created": registered.created,
                    });
                    // A copy that got here first (on another instance) wins: this one
                    // waited for it, and answers as a copy.
                    match repo::keys::claim(tx, &key, dialogue.user_id, &outcome).await? {
                        None => return Ok(registered),
                        Some(recorded) => recorded,
                    }
                }
            };
            replay(tx, &recorded, dialogue, record).await
        })
        .await
    }
}

/// A copy's answer: the recorded outcome checked against this command and its chat,
/// then the user and settings as they are (nothing written).
async fn replay(
    tx: &mut sqlx::PgConnection,
    recorded: &Value,
    dialogue: Dialogue,
    record: bool,
) -> Result<Registered> {
    // With `record` the outcome must be this request's; without, the request that
    // follows checks its own (and a chat, where it records one, is checked here too).
    if record && recorded.get("command").is_none() {
        return Err(once::mismatch(recorded));
    }
    once::same_chat(recorded, dialogue)?;
    // The key names the user, so the user exists (a foreign key; an erased user's keys
    // name nobody, and `outcome_of` said so).
    let user = repo::users::get(&mut *tx, dialogue.user_id)
        .await?
        .ok_or_else(|| Error::not_found("user", dialogue.user_id))?;
    let settings = repo::settings::get(&mut *tx, dialogue.user_id)
        .await?
        .ok_or_else(|| Error::not_found("user_settings", dialogue.user_id))?;
    let created = recorded.get("created").and_then(Value::as_bool).unwrap_or(false);
    Ok(Registered {
        user,
        settings,
        created,
    })
}
