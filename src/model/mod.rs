//! Typed rows and validated inputs, the vocabulary every layer above `config` speaks.
//!
//! Rows ([`User`], [`Message`], [`UserSettings`]) are what the repositories return.
//! Inputs ([`NewMessage`], [`Content`], [`SettingsPatch`]) are checked when they are
//! built, so a value of these types is known to be storable: no NUL byte, not longer
//! than the configured limit, settings in range.
//!
//! - `checks`: user ids, history limits, durations;
//! - `rows`: [`User`], [`Message`], [`UserSettings`], [`MessageCounts`], [`Erasure`], [`Role`];
//! - `dialogue`: [`Dialogue`] (a user in a chat), [`Budget`] (the context's bounds);
//! - `key`: [`RequestKey`];
//! - `inputs`: [`Content`], [`NewMessage`], [`SettingsPatch`], and the checks on
//!   [`Limits`](crate::config::Limits) that build them.

mod checks;
mod dialogue;
mod inputs;
mod key;
mod rows;

pub use checks::{
    DEFAULT_MAX_HISTORY, MAX_HISTORY_RANGE, check_history_limit, check_user_id, parse_duration,
};
pub use dialogue::{Budget, Dialogue, MAX_CONTEXT_CHARS, PRIVATE_CHAT};
pub use inputs::{Content, NewMessage, SettingsPatch};
pub use key::RequestKey;
pub use rows::{Erasure, Message, MessageCounts, Role, User, UserSettings};
