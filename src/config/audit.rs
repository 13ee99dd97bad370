//! The audit key: the secret that turns a user id into the `subject` of an erasure's
//! audit row (a keyed hash), so the audit proves an erasure without naming whose.

use std::fmt;

use secrecy::{ExposeSecret, SecretBox};

use crate::error::{Error, Result};

/// `BOTDB_AUDIT_KEY`: at least 16 bytes of secret. Never shown by `Debug`.
#[derive(Clone)]
pub struct AuditKey(std::sync::Arc<SecretBox<Vec<u8>>>);

impl AuditKey {
    /// Fewest bytes accepted: a key shorter than this could be guessed.
    pub const MIN_BYTES: usize = 16;

    /// A key from its text (as set in `BOTDB_AUDIT_KEY`).
    ///
    /// # Errors
    /// [`Error::Config`] for a key shorter than [`AuditKey::MIN_BYTES`].
    pub fn new(key: impl Into<Vec<u8>>) -> Result<Self> {
        let key = key.into();
        if key.len() < Self::MIN_BYTES {
            return Err(Error::config(
                "BOTDB_AUDIT_KEY",
                format!("expected at least {} bytes of secret", Self::MIN_BYTES),
            ));
        }
        Ok(AuditKey(std::sync::Arc::new(SecretBox::new(Box::new(key)))))
    }

    /// The secret bytes (for the keyed hash).
    pub fn expose(&self) -> &[u8] {
        self.0.expose_secret()
    }
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditKey([redacted])")
    }
}

impl PartialEq for AuditKey {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keys_are_refused_and_debug_hides_the_key() {
        assert!(matches!(AuditKey::new("short"), Err(Error::Config { .. })));
        let key = AuditKey::new("0123456789abcdef-secret").unwrap();
        assert_eq!(format!("{key:?}"), "AuditKey([redacted])");
        assert_eq!(key.expose(), b"0123456789abcdef-secret");
    }
}
