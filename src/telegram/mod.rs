//! Telegram's Bot API as botdb's bot speaks it: the updates it receives and the
//! webhook answer it gives (`update`); a long reply as several messages (`split`);
//! Telegram's sending limits, kept on this side (`limits`); and, with the feature
//! `server`, the HTTP client of `sendMessage` and `sendChatAction` and what its
//! failures mean (`send`).

pub mod limits;
#[cfg(feature = "server")]
pub mod send;
pub mod split;
pub mod update;

pub use limits::RateLimits;
#[cfg(feature = "server")]
pub use send::{BotApi, SendError, backoff};
pub use split::{MAX_MESSAGE_UTF16, split_message, utf16_len};
pub use update::{
    MAX_TEXT_CHARS, SendMessage, TgChat, TgMessage, TgUser, Update, UpdateError, parse_update, truncate_chars,
};
