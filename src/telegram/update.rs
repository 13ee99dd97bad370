//! The parts of the Telegram Bot API a webhook bot needs: the incoming `Update`, and
//! the `sendMessage` call returned as the webhook's answer.

use serde::{Deserialize, Serialize};

/// The longest text of a webhook answer ([`SendMessage`]), in characters (Rust
/// `char`s), where [`SendMessage::new`] cuts it. Messages sent through the Bot API are
/// measured as Telegram measures them, in UTF-16 code units, and split rather than cut:
/// [`MAX_MESSAGE_UTF16`](crate::telegram::split::MAX_MESSAGE_UTF16).
pub const MAX_TEXT_CHARS: usize = 4096;

/// An incoming update. Only `message` is used; other kinds (edited messages, callback
/// queries, ...) are accepted and ignored.
#[derive(Clone, Debug, Deserialize)]
pub struct Update {
    /// Telegram's id of the update.
    pub update_id: i64,
    /// A new message, when the update is one.
    #[serde(default)]
    pub message: Option<TgMessage>,
}

/// A message in an update.
#[derive(Clone, Debug, Deserialize)]
pub struct TgMessage {
    /// Id within the chat.
    #[serde(default)]
    pub message_id: i64,
    /// Sender; absent for channel posts.
    #[serde(default)]
    pub from: Option<TgUser>,
    /// The chat it was sent in.
    pub chat: TgChat,
    /// Text, for text messages.
    #[serde(default)]
    pub text: Option<String>,
}

/// A Telegram user.
#[derive(Clone, Debug, Deserialize)]
pub struct TgUser {
    /// The user id (botdb's `users.id`).
    pub id: i64,
    /// Bots never get answers.
    #[serde(default)]
    pub is_bot: bool,
}

/// A Telegram chat.
#[derive(Clone, Debug, Deserialize)]
pub struct TgChat {
    /// Where to answer.
    pub id: i64,
}

/// The `sendMessage` method, as a webhook answer's JSON body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendMessage {
    /// Always `"sendMessage"`.
    pub method: String,
    /// Chat to answer in.
    pub chat_id: i64,
    /// The text, at most [`MAX_TEXT_CHARS`] characters.
    pub text: String,
}

impl SendMessage {
    /// A `sendMessage` to `chat_id`, cut to Telegram's limit.
    pub fn new(chat_id: i64, text: impl Into<String>) -> Self {
        SendMessage {
            method: "sendMessage".into(),
            chat_id,
            text: truncate_chars(&text.into(), MAX_TEXT_CHARS),
        }
    }
}

/// Why a webhook body is not an update.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UpdateError {
    /// JSON is UTF-8; this body is not.
    #[error("the body is not UTF-8 (JSON must be)")]
    NotUtf8,
    /// Not JSON, or not shaped like a Telegram update.
    #[error("not a Telegram update: {0}")]
    NotAnUpdate(String),
}

/// Parses a webhook body. Never panics, whatever the bytes (fuzzed in
/// `tests/it/fuzz.rs`); nesting deeper than serde_json's recursion limit is an error.
///
/// # Errors
/// [`UpdateError`] saying what is wrong with the body.
pub fn parse_update(body: &[u8]) -> Result<Update, UpdateError> {
    let text = std::str::from_utf8(body).map_err(|_| UpdateError::NotUtf8)?;
    serde_json::from_str(text).map_err(|e| UpdateError::NotAnUpdate(e.to_string()))
}

/// `text` cut to `max` characters, with an ellipsis when cut.
pub fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max.saturating_sub(1)) {
        Some((cut, _)) if text[cut..].chars().nth(1).is_some() => format!("{}…", &text[..cut]),
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_text_update_and_ignores_unknown_fields() {
        let u: Update = serde_json::from_str(
            r#"{"update_id":1,"message":{"message_id":5,"from":{"id":42,"is_bot":false,"first_name":"A"},
                "chat":{"id":42,"type":"private"},"date":1700000000,"text":"hi"},"extra":true}"#,
        )
        .unwrap();
        let m = u.message.unwrap();
        assert_eq!(
            (m.from.unwrap().id, m.chat.id, m.text.as_deref()),
            (42, 42, Some("hi"))
        );
        let other: Update = serde_json::from_str(r#"{"update_id":2,"edited_message":{}}"#).unwrap();
        assert!(other.message.is_none());
    }

    #[test]
    fn truncation_counts_characters() {
        assert_eq!(truncate_chars("héllo", 5), "héllo");
        assert_eq!(truncate_chars("héllo!", 5), "héll…");
        assert_eq!(
            SendMessage::new(1, "x".repeat(5000)).text.chars().count(),
            MAX_TEXT_CHARS
        );
    }
}
