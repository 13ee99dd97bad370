//! The reminders table of the example bot: its actor's requests, its commands, and the
//! update handler that puts them in front of botdb's bot. Shared by the example
//! (`main.rs`) and its test (`tests/it/reminders_example.rs`).

use botdb::actors::{DbRequest, TableHandle};
use botdb::bot::{Bot, BotError, Outcome, SendMessage, Update};
use botdb::{Database, Error, Result};
use chrono::{DateTime, Utc};
use sqlx::migrate::Migrator;

/// The example's migrations (`examples/reminders/migrations`), applied after botdb's.
pub static MIGRATIONS: Migrator = sqlx::migrate!("examples/reminders/migrations");

/// The `reminders` table: one actor, serial per user like botdb's own tables.
pub struct Reminders;

impl botdb::actors::Table for Reminders {
    const NAME: &'static str = "reminders";
}

/// The longest reminder text, in characters (the table's CHECK says the same).
pub const MAX_TEXT: usize = 500;
/// The furthest a reminder may be set, in seconds (a year).
pub const MAX_DELAY_SECS: i64 = 365 * 24 * 3600;

/// A stored reminder.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Reminder {
    /// Its id.
    pub id: i64,
    /// When it is due.
    pub due_at: DateTime<Utc>,
    /// What to remind of.
    pub text: String,
}

/// Stores a reminder due `delay_secs` from now (the database's clock); answers it.
#[derive(Clone, Debug)]
pub struct AddReminder {
    /// Whose.
    pub user_id: i64,
    /// The chat to remind in.
    pub chat_id: i64,
    /// Seconds from now, 1 to [`MAX_DELAY_SECS`].
    pub delay_secs: i64,
    /// 1 to [`MAX_TEXT`] characters, no NUL.
    pub text: String,
}

impl actix::Message for AddReminder {
    type Result = Result<Reminder>;
}

impl DbRequest for AddReminder {
    type Output = Reminder;
    type Table = Reminders;
    const NAME: &'static str = "AddReminder";

    fn user_id(&self) -> i64 {
        self.user_id
    }

    async fn run(self, db: Database) -> Result<Reminder> {
        if !(1..=MAX_DELAY_SECS).contains(&self.delay_secs) {
            return Err(Error::InvalidInput {
                field: "delay",
                reason: "expected 1 second to 365 days".into(),
            });
        }
        let chars = self.text.chars().count();
        if chars == 0 || chars > MAX_TEXT || self.text.contains('\0') {
            return Err(Error::InvalidInput {
                field: "text",
                reason: format!("expected 1 to {MAX_TEXT} characters, without NUL"),
            });
        }
        db.autocommit(async |c| {
            Ok(sqlx::query_as(
                "INSERT INTO reminders (user_id, chat_id, due_at, text)
                 VALUES ($1, $2, now() + make_interval(secs => $3), $4)
                 RETURNING id, due_at, text",
            )
            .bind(self.user_id)
            .bind(self.chat_id)
            .bind(self.delay_secs as f64)
            .bind(&self.text)
            .fetch_one(c)
            .await?)
        })
        .await
    }
}

/// The user's reminders not yet due in a chat, soonest first.
#[derive(Clone, Debug)]
pub struct ListReminders {
    /// Whose.
    pub user_id: i64,
    /// Which chat's.
    pub chat_id: i64,
}

impl actix::Message for ListReminders {
    type Result = Result<Vec<Reminder>>;
}

impl DbRequest for ListReminders {
    type Output = Vec<Reminder>;
    type Table = Reminders;
    const NAME: &'static str = "ListReminders";

    fn user_id(&self) -> i64 {
        self.user_id
    }

    async fn run(self, db: Database) -> Result<Vec<Reminder>> {
        db.read(async |c| {
            Ok(sqlx::query_as(
                "SELECT id, due_at, text FROM reminders
                  WHERE user_id = $1 AND chat_id = $2 AND due_at > now()
                  ORDER BY due_at, id LIMIT 50",
            )
            .bind(self.user_id)
            .bind(self.chat_id)
            .fetch_all(c)
            .await?)
        })
        .await
    }
}

/// The example's own commands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `/remind 10m text`.
    Remind {
        /// Seconds from now.
        delay_secs: i64,
        /// What to remind of.
        text: String,
    },
    /// `/remind` with something it cannot read: answer the usage.
    RemindUsage,
    /// `/reminders`.
    List,
}

/// How to use `/remind`.
pub const USAGE: &str = "Usage: /remind <delay> <text>, delay as 30s, 10m, 2h or 3d (at most 365d)";

impl Command {
    /// The example's command in `text`, or `None` for anything botdb's bot handles.
    pub fn parse(text: &str) -> Option<Command> {
        let text = text.trim();
        let (head, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
        match head {
            "/reminders" => Some(Command::List),
            "/remind" => {
                let rest = rest.trim();
                let (delay, what) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                match (parse_delay(delay), what.trim()) {
                    (Some(delay_secs), what) if !what.is_empty() => Some(Command::Remind {
                        delay_secs,
                        text: what.to_string(),
                    }),
                    _ => Some(Command::RemindUsage),
                }
            }
            _ => None,
        }
    }
}

/// `30s`, `10m`, `2h`, `3d` in seconds (at most [`MAX_DELAY_SECS`]).
pub fn parse_delay(s: &str) -> Option<i64> {
    let unit = match s.chars().last()? {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return None,
    };
    let n: i64 = s[..s.len() - 1].parse().ok()?;
    let secs = n.checked_mul(unit)?;
    (1..=MAX_DELAY_SECS).contains(&secs).then_some(secs)
}

/// "2h 5m" for a number of seconds.
fn human(secs: i64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    let parts: Vec<String> = [(d, "d"), (h, "h"), (m, "m"), (s, "s")]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, u)| format!("{n}{u}"))
        .collect();
    if parts.is_empty() {
        "now".into()
    } else {
        parts.join(" ")
    }
}

/// Handles an update: the example's commands through the reminders actor, everything
/// else through botdb's bot (which also registers the user the reminders belong to).
///
/// # Errors
/// As [`Bot::handle`].
pub async fn handle(
    bot: &Bot,
    reminders: &TableHandle<Reminders>,
    update: Update,
) -> Result<Outcome, BotError> {
    let command = update
        .message
        .as_ref()
        .and_then(|m| m.text.as_deref())
        .and_then(Command::parse);
    let (Some(command), Some(message)) = (command, update.message.as_ref()) else {
        return bot.handle(update).await;
    };
    let Some(from) = message.from.as_ref().filter(|f| !f.is_bot) else {
        return bot.handle(update).await;
    };
    let (user_id, chat_id) = (from.id, message.chat.id);
    let reply = |text: String| Ok(Outcome::Reply(SendMessage::new(chat_id, text)));
    // The reminders reference their user: make sure botdb knows them.
    bot.db().send(botdb::actors::EnsureUser { user_id }).await?;
    match command {
        Command::RemindUsage => reply(USAGE.into()),
        Command::Remind { delay_secs, text } => {
            let added = reminders
                .send(AddReminder {
                    user_id,
                    chat_id,
                    delay_secs,
                    text,
                })
                .await;
            match added {
                Ok(r) => reply(format!("OK, in {}: {}", human(delay_secs), r.text)),
                Err(Error::InvalidInput { reason, .. }) => reply(format!("Cannot: {reason}")),
                Err(e) => Err(e.into()),
            }
        }
        Command::List => {
            let list = reminders.send(ListReminders { user_id, chat_id }).await?;
            if list.is_empty() {
                return reply("No reminders.".into());
            }
            let now = Utc::now();
            let lines: Vec<String> = list
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    format!(
                        "{}. in {}: {}",
                        i + 1,
                        human((r.due_at - now).num_seconds().max(0)),
                        r.text
                    )
                })
                .collect();
            reply(lines.join("\n"))
        }
    }
}
