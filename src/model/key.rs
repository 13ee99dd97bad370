//! Request keys: what makes a request happen at most once.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

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
