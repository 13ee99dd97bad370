//! Validated inputs: a value of these types is known to be storable (no NUL byte, not
//! longer than the configured limit, settings in range), checked when it is built
//! ([`Limits::message`], [`Limits::system_prompt`]).

use std::fmt;

use serde::Serialize;
use uuid::Uuid;

use crate::config::Limits;
use crate::error::{Error, Result};
use crate::model::checks::check_history_limit;
use crate::model::dialogue::Dialogue;
use crate::model::rows::Role;

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
    /// The chat ([`PRIVATE_CHAT`](crate::model::PRIVATE_CHAT): the user's private chat).
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
    /// New `max_history_messages`, checked against [`MAX_HISTORY_RANGE`](crate::model::MAX_HISTORY_RANGE).
    pub max_history_messages: Option<i32>,
    /// New system prompt: `Some(None)` clears it, `Some(Some(p))` sets it.
    pub system_prompt: Option<Option<Content>>,
}

impl SettingsPatch {
    /// A patch that changes only `max_history_messages`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `n` is outside [`MAX_HISTORY_RANGE`](crate::model::MAX_HISTORY_RANGE).
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
    fn debug_hides_text() {
        let m = NewMessage::new(1, Role::User, "secret words").unwrap();
        assert!(!format!("{m:?}").contains("secret"));
    }
}
