//! Typed rows and validated inputs.
//!
//! Rows ([`User`], [`Message`], [`UserSettings`]) are what the repositories return.
//! Inputs ([`NewMessage`], [`Content`], [`SettingsPatch`]) are checked when they are
//! built, so a value of these types is known to be storable: no NUL byte, not longer
//! than the configured limit, settings in range.

use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::Limits;
use crate::error::{Error, Result};

/// The range the schema allows for `user_settings.max_history_messages`
/// (CHECK constraint `ck_user_settings_max_history_messages`).
pub const MAX_HISTORY_RANGE: RangeInclusive<i32> = 1..=1000;

/// `max_history_messages` for a user registered without an explicit value.
pub const DEFAULT_MAX_HISTORY: i32 = 20;

/// Checks a Telegram user id: positive, as Telegram assigns them.
///
/// # Errors
/// [`Error::InvalidInput`] for zero or a negative id.
pub fn check_user_id(user_id: i64) -> Result<i64> {
    if user_id > 0 {
        Ok(user_id)
    } else {
        Err(Error::invalid(
            "user_id",
            format!("expected a positive Telegram user id, got {user_id}"),
        ))
    }
}

/// Checks a `max_history_messages` value or a history limit against [`MAX_HISTORY_RANGE`].
///
/// # Errors
/// [`Error::InvalidInput`] naming `field` when the value is out of range.
pub fn check_history_limit(field: &'static str, value: i64) -> Result<i32> {
    i32::try_from(value)
        .ok()
        .filter(|v| MAX_HISTORY_RANGE.contains(v))
        .ok_or_else(|| {
            Error::invalid(
                field,
                format!(
                    "expected {} to {}, got {value}",
                    MAX_HISTORY_RANGE.start(),
                    MAX_HISTORY_RANGE.end()
                ),
            )
        })
}

/// Parses a duration as people write it (`30d`, `12h`, `90m`, `1w 2d`, `45s`), through
/// humantime's grammar.
///
/// # Errors
/// [`Error::InvalidInput`] naming `field` for text that is not such a duration, or a
/// zero one.
pub fn parse_duration(field: &'static str, text: &str) -> Result<std::time::Duration> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(Error::invalid(field, "expected a duration longer than 0")),
        Err(e) => Err(Error::invalid(
            field,
            format!(
                "expected a duration such as 30d, 12h, 90m or 1w 2d, got {:?} ({e})",
                text.chars().take(40).collect::<String>()
            ),
        )),
    }
}

/// The audit row of one erasure: when, and how many rows of each kind went. It names
/// nobody: its subject is a keyed hash of the user id
/// ([`repo::erasures::subject`](crate::repo::erasures::subject)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Erasure {
    /// The audit row's id.
    pub id: i64,
    /// When the erasure committed (its transaction's time).
    pub erased_at: DateTime<Utc>,
    /// Messages removed, live and soft-deleted, in all chats.
    pub messages: i64,
    /// Settings rows removed (0 or 1).
    pub settings: i64,
    /// Request keys removed (the user's handled updates and idempotency keys).
    pub request_keys: i64,
}

/// The most characters a context budget may ask for (a hundred million: far past any
/// model's window).
pub const MAX_CONTEXT_CHARS: i64 = 100_000_000;

/// How much of a dialogue's history a model's context takes: the newest live messages,
/// as many as fit in `max_chars` characters (the sum of their `content_length`) and at
/// most `max_messages` (`None`: the user's `max_history_messages`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Characters, 0 to [`MAX_CONTEXT_CHARS`].
    pub max_chars: i64,
    /// Messages, 1 to 1000; `None`: the user's setting.
    pub max_messages: Option<i32>,
}

impl Budget {
    /// A checked budget.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for `max_chars` outside 0 to [`MAX_CONTEXT_CHARS`], or
    /// `max_messages` outside [`MAX_HISTORY_RANGE`].
    pub fn new(max_chars: i64, max_messages: Option<i64>) -> Result<Self> {
        if !(0..=MAX_CONTEXT_CHARS).contains(&max_chars) {
            return Err(Error::invalid(
                "max_chars",
                format!("expected 0 to {MAX_CONTEXT_CHARS}, got {max_chars}"),
            ));
        }
        let max_messages = max_messages
            .map(|n| check_history_limit("max_messages", n))
            .transpose()?;
        Ok(Budget {
            max_chars,
            max_messages,
        })
    }
}

/// `messages.chat_id` of a user's private chat with the bot. Telegram gives a private
/// chat the user's own id; botdb stores it as 0 (so rows written before chats were
/// told apart, and rows the reference's code writes, are private), and
/// [`Dialogue::new`] turns a chat id equal to the user id into it.
pub const PRIVATE_CHAT: i64 = 0;

/// One dialogue: a user in a chat. Each has its own history: what a user says in
/// private never appears in, nor feeds the model in, a group, and the reverse. Settings
/// (history length, system prompt) are the user's, the same in every chat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Dialogue {
    /// The user (Telegram `from.id`).
    pub user_id: i64,
    /// The chat ([`PRIVATE_CHAT`] for the user's private chat with the bot).
    pub chat_id: i64,
}

impl Dialogue {
    /// The user's private chat with the bot.
    pub fn private(user_id: i64) -> Self {
        Dialogue {
            user_id,
            chat_id: PRIVATE_CHAT,
        }
    }

    /// The user in chat `chat_id` (Telegram `chat.id`); a chat id equal to the user's own
    /// id is their private chat.
    pub fn new(user_id: i64, chat_id: i64) -> Self {
        Dialogue {
            user_id,
            chat_id: if chat_id == user_id { PRIVATE_CHAT } else { chat_id },
        }
    }

    /// `true` for the user's private chat.
    pub fn is_private(&self) -> bool {
        self.chat_id == PRIVATE_CHAT
    }

    /// This dialogue with its user id checked and its chat id in stored form.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a non-positive user id.
    pub fn checked(self) -> Result<Self> {
        Ok(Dialogue::new(check_user_id(self.user_id)?, self.chat_id))
    }
}

impl From<i64> for Dialogue {
    /// A user id alone means the user's private chat.
    fn from(user_id: i64) -> Self {
        Dialogue::private(user_id)
    }
}

/// A key that makes a request happen at most once (an idempotency key): the request is
/// recorded with it, in the same transaction as what it did, and a copy sent with the
/// same key answers with what the first did instead of doing it again, whichever
/// process sends it and however many times.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestKey {
    scope: String,
    key: String,
}

impl RequestKey {
    /// A key `key` in namespace `scope` (1 to 100 and 1 to 200 characters, no NUL).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an empty, oversize or NUL-bearing part.
    pub fn new(scope: impl Into<String>, key: impl Into<String>) -> Result<Self> {
        let (scope, key) = (scope.into(), key.into());
        for (field, value, max) in [("key scope", &scope, 100), ("key", &key, 200)] {
            if value.is_empty() || value.contains('\0') || value.chars().nth(max).is_some() {
                return Err(Error::invalid(
                    field,
                    format!("expected 1 to {max} characters without NUL"),
                ));
            }
        }
        Ok(RequestKey { scope, key })
    }

    /// The key of Telegram update `update_id` of bot `bot` (scope `tg:<bot>`): Telegram's
    /// update ids are unique per bot.
    ///
    /// # Errors
    /// As [`new`](Self::new), for a bot name of more than 97 characters.
    pub fn telegram_update(bot: &str, update_id: i64) -> Result<Self> {
        RequestKey::new(format!("tg:{bot}"), update_id.to_string())
    }

    /// The namespace.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// The key within it.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A system prompt.
    System,
    /// The human.
    User,
    /// The model.
    Assistant,
}

impl Role {
    /// The value stored in `messages.role`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "system" => Ok(Role::System),
            "user" => Ok(Role::User),
            "assistant" => Ok(Role::Assistant),
            other => Err(Error::invalid(
                "role",
                format!("expected system, user or assistant, got {other:?}"),
            )),
        }
    }
}

impl TryFrom<String> for Role {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

/// A row of `users`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct User {
    /// The Telegram user id.
    pub id: i64,
    /// When the user was first stored.
    pub created_at: DateTime<Utc>,
    /// Refreshed by the database on every UPDATE.
    pub updated_at: DateTime<Utc>,
}

/// A row of `messages`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Message {
    /// Primary key (generated by botdb: a UUIDv7, time-ordered, so that appends go to
    /// the right edge of `messages_pkey` instead of a random leaf of it).
    pub id: Uuid,
    /// The user whose dialogue this message belongs to.
    pub user_id: i64,
    /// The chat of that dialogue ([`PRIVATE_CHAT`]: the user's private chat).
    pub chat_id: i64,
    /// Who wrote it.
    #[sqlx(try_from = "String")]
    pub role: Role,
    /// The text.
    pub content: String,
    /// `content`'s length in characters, kept equal by the database.
    pub content_length: i32,
    /// Transaction time of the insert.
    pub created_at: DateTime<Utc>,
    /// Set when the history was cleared (soft delete); `None` for live messages.
    pub deleted_at: Option<DateTime<Utc>>,
    /// Insertion order, the tie-breaker between messages written in one transaction.
    pub seq: i64,
}

impl fmt::Debug for Message {
    /// Leaves the content out: message text does not belong in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .field("chat_id", &self.chat_id)
            .field("role", &self.role)
            .field("content_length", &self.content_length)
            .field("created_at", &self.created_at)
            .field("deleted_at", &self.deleted_at)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

/// A row of `user_settings`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct UserSettings {
    /// The user.
    pub user_id: i64,
    /// How many past messages the bot sends to the model.
    pub max_history_messages: i32,
    /// The user's own system prompt.
    pub system_prompt: Option<String>,
    /// When the row was created.
    pub created_at: DateTime<Utc>,
    /// Refreshed by the database on every UPDATE.
    pub updated_at: DateTime<Utc>,
}

/// How many messages a user has, live and soft-deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageCounts {
    /// Messages not deleted (the history the model may see).
    pub live: i64,
    /// Soft-deleted messages (kept, hidden).
    pub deleted: i64,
}

/// Text that may be stored: no NUL byte, not empty, within a character limit.
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Content(String);

impl Content {
    /// Checks `text` against `max_chars`, reporting failures under `field`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `text` is empty, holds a NUL character (PostgreSQL
    /// cannot store one in `text`), or is longer than `max_chars` characters.
    pub fn parse(field: &'static str, text: impl Into<String>, max_chars: usize) -> Result<Self> {
        let text = text.into();
        if text.is_empty() {
            return Err(Error::invalid(field, "must not be empty"));
        }
        if text.contains('\0') {
            return Err(Error::invalid(
                field,
                "contains a NUL character, which PostgreSQL cannot store",
            ));
        }
        // Count characters only as far as needed: a 10 MB string is refused quickly.
        if text.len() > max_chars && text.chars().nth(max_chars).is_some() {
            return Err(Error::invalid(
                field,
                format!("longer than the limit of {max_chars} characters"),
            ));
        }
        Ok(Content(text))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its length in characters (what `content_length` stores).
    pub fn char_len(&self) -> usize {
        self.0.chars().count()
    }

    /// The owned text.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Content({} bytes)", self.0.len())
    }
}

impl AsRef<str> for Content {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A message to append: built through [`NewMessage::new`] or [`Limits::message`], so it is
/// valid by construction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMessage {
    /// The id it will have (a UUIDv7, generated here; the reference generates uuid4).
    pub id: Uuid,
    /// The user (must exist).
    pub user_id: i64,
    /// The chat ([`PRIVATE_CHAT`]: the user's private chat).
    pub chat_id: i64,
    /// Who wrote it.
    pub role: Role,
    /// The checked text.
    pub content: Content,
}

impl NewMessage {
    /// The dialogue it belongs to.
    pub fn dialogue(&self) -> Dialogue {
        Dialogue {
            user_id: self.user_id,
            chat_id: self.chat_id,
        }
    }
}

impl NewMessage {
    /// A message checked against the default [`Limits`].
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a non-positive user id or bad content.
    pub fn new(user_id: i64, role: Role, content: impl Into<String>) -> Result<Self> {
        Limits::default().message(user_id, role, content)
    }
}

impl Limits {
    /// A [`NewMessage`] of the user's private dialogue, checked against these limits.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a non-positive user id, empty content, a NUL
    /// character, or content longer than `max_content_chars`.
    pub fn message(&self, user_id: i64, role: Role, content: impl Into<String>) -> Result<NewMessage> {
        self.message_in(Dialogue::private(user_id), role, content)
    }

    /// A [`NewMessage`] of `dialogue`, checked against these limits.
    ///
    /// # Errors
    /// As [`message`](Self::message).
    pub fn message_in(
        &self,
        dialogue: Dialogue,
        role: Role,
        content: impl Into<String>,
    ) -> Result<NewMessage> {
        let dialogue = dialogue.checked()?;
        Ok(NewMessage {
            id: Uuid::now_v7(),
            user_id: dialogue.user_id,
            chat_id: dialogue.chat_id,
            role,
            content: Content::parse("content", content, self.max_content_chars)?,
        })
    }

    /// A system prompt checked against these limits.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an empty prompt, a NUL character, or a prompt longer
    /// than `max_system_prompt_chars`.
    pub fn system_prompt(&self, text: impl Into<String>) -> Result<Content> {
        Content::parse("system_prompt", text, self.max_system_prompt_chars)
    }
}

/// A partial update of a user's settings: `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SettingsPatch {
    /// New `max_history_messages`, checked against [`MAX_HISTORY_RANGE`].
    pub max_history_messages: Option<i32>,
    /// New system prompt: `Some(None)` clears it, `Some(Some(p))` sets it.
    pub system_prompt: Option<Option<Content>>,
}

impl SettingsPatch {
    /// A patch that changes only `max_history_messages`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `n` is outside [`MAX_HISTORY_RANGE`].
    pub fn max_history(n: i64) -> Result<Self> {
        Ok(SettingsPatch {
            max_history_messages: Some(check_history_limit("max_history_messages", n)?),
            system_prompt: None,
        })
    }

    /// A patch that sets or clears only the system prompt.
    pub fn system_prompt(prompt: Option<Content>) -> Self {
        SettingsPatch {
            max_history_messages: None,
            system_prompt: Some(prompt),
        }
    }

    /// Checks the fields a caller may have filled in by hand.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `max_history_messages` is out of range.
    pub fn validate(&self) -> Result<()> {
        if let Some(n) = self.max_history_messages {
            check_history_limit("max_history_messages", i64::from(n))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_budgets() {
        let day = std::time::Duration::from_secs(86_400);
        assert_eq!(parse_duration("d", "30d").unwrap(), day * 30);
        assert_eq!(parse_duration("d", " 1w 2d ").unwrap(), day * 9);
        assert_eq!(parse_duration("d", "90m").unwrap().as_secs(), 5400);
        for bad in ["", "30", "thirty days", "-1d", "0s", "30x"] {
            let err = parse_duration("deleted-before", bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidInput {
                        field: "deleted-before",
                        ..
                    }
                ),
                "{bad:?}: {err}"
            );
        }
        assert!(Budget::new(0, None).is_ok());
        assert!(Budget::new(MAX_CONTEXT_CHARS, Some(1000)).is_ok());
        for (chars, messages) in [
            (-1, None),
            (MAX_CONTEXT_CHARS + 1, None),
            (10, Some(0)),
            (10, Some(1001)),
        ] {
            assert!(
                matches!(Budget::new(chars, messages), Err(Error::InvalidInput { .. })),
                "{chars} {messages:?}"
            );
        }
    }

    #[test]
    fn content_rules() {
        assert!(Content::parse("content", "hello", 5).is_ok());
        assert!(
            Content::parse("content", "héllo", 5).is_ok(),
            "limit counts characters, not bytes"
        );
        for bad in ["", "a\0b", "toolong"] {
            let err = Content::parse("content", bad, 5).unwrap_err();
            assert!(
                matches!(err, Error::InvalidInput { field: "content", .. }),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn history_range() {
        assert_eq!(check_history_limit("limit", 1).unwrap(), 1);
        assert_eq!(check_history_limit("limit", 1000).unwrap(), 1000);
        for bad in [0, -1, 1001, i64::MAX, i64::MIN] {
            assert!(check_history_limit("limit", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn role_round_trip() {
        for role in [Role::System, Role::User, Role::Assistant] {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
        assert!("admin".parse::<Role>().is_err());
    }

    #[test]
    fn debug_hides_text() {
        let m = NewMessage::new(1, Role::User, "secret words").unwrap();
        assert!(!format!("{m:?}").contains("secret"));
    }
}
