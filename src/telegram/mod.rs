//! Telegram's Bot API as botdb's bot speaks it: the updates it receives and the
//! webhook answer it gives (`update`).

pub mod update;

pub use update::{
    MAX_TEXT_CHARS, SendMessage, TgChat, TgMessage, TgUser, Update, UpdateError, parse_update, truncate_chars,
};
