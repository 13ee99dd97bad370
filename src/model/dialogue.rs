//! A dialogue (a user in a chat: each has its own history) and the budget of the
//! model's context read from it.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::checks::{check_history_limit, check_user_id};

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
    /// `max_messages` outside [`MAX_HISTORY_RANGE`](crate::model::MAX_HISTORY_RANGE).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets() {
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
}
