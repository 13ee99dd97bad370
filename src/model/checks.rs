//! Checks of the scalar inputs every layer takes: user ids, history limits, and
//! human durations (`30d`), each a typed [`Error::InvalidInput`] when refused.

use std::ops::RangeInclusive;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
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
    }

    #[test]
    fn history_range() {
        assert_eq!(check_history_limit("limit", 1).unwrap(), 1);
        assert_eq!(check_history_limit("limit", 1000).unwrap(), 1000);
        for bad in [0, -1, 1001, i64::MAX, i64::MIN] {
            assert!(check_history_limit("limit", bad).is_err(), "{bad}");
        }
    }
}
