//! [`TelegramConfig`]: how botdb reaches Telegram's Bot API: the bot's token, the API's
//! address, the time one call may take, the sending limits, and how often a failed
//! send is tried.
//!
//! The token is a secret twice over: it is the bot's password, and it is part of every
//! Bot API URL (`{api}/bot{token}/sendMessage`). So neither the token nor any URL
//! made with it is ever shown: `Debug` prints the API's origin only, and no error here
//! repeats a value it refuses.

use std::fmt;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::error::{Error, Result};

/// Telegram's own Bot API server.
pub const DEFAULT_TELEGRAM_API_URL: &str = "https://api.telegram.org";

/// How Telegram's Bot API is reached (`TELEGRAM_*`, `BOTDB_TELEGRAM_TIMEOUT`,
/// `BOTDB_SEND_*`).
#[derive(Clone)]
pub struct TelegramConfig {
    /// The bot's token from @BotFather (`TELEGRAM_BOT_TOKEN`, `123456:ABC-...`); `None`:
    /// the bot cannot send (the Bot API client refuses to start).
    pub token: Option<SecretString>,
    /// The Bot API server (`TELEGRAM_API_URL`, default [`DEFAULT_TELEGRAM_API_URL`]): a
    /// local Bot API server, or a test double.
    pub api_url: Url,
    /// The longest one call may take, connecting included (`BOTDB_TELEGRAM_TIMEOUT`,
    /// default 10 s).
    pub timeout: Duration,
    /// Messages a second at most, all chats together (`BOTDB_SEND_PER_SECOND`, default
    /// 30, Telegram's limit).
    pub per_second: u32,
    /// One message to a chat per this interval at most (`BOTDB_SEND_CHAT_INTERVAL`,
    /// default 1 s, Telegram's limit; 0: none).
    pub per_chat_interval: Duration,
    /// Tries of a send that failed for a reason that may pass (a 5xx, a timeout, a lost
    /// connection) (`BOTDB_SEND_ATTEMPTS`, default 5).
    pub attempts: u32,
    /// The longest wait between two tries (default 30 s).
    pub max_backoff: Duration,
}

impl Default for TelegramConfig {
    fn default() -> Self {
        TelegramConfig {
            token: None,
            api_url: default_api_url(),
            timeout: Duration::from_secs(10),
            per_second: 30,
            per_chat_interval: Duration::from_secs(1),
            attempts: 5,
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// The parsed [`DEFAULT_TELEGRAM_API_URL`].
fn default_api_url() -> Url {
    // A constant: nothing a caller does can make it fail.
    Url::parse(DEFAULT_TELEGRAM_API_URL).expect("the default Bot API URL parses")
}

impl fmt::Debug for TelegramConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TelegramConfig")
            .field("token", &self.token.as_ref().map(|_| "***"))
            // The origin alone: a path, a user or a query could hold a secret.
            .field("api_url", &self.api_url.origin().ascii_serialization())
            .field("timeout", &self.timeout)
            .field("per_second", &self.per_second)
            .field("per_chat_interval", &self.per_chat_interval)
            .field("attempts", &self.attempts)
            .field("max_backoff", &self.max_backoff)
            .finish()
    }
}

impl TelegramConfig {
    /// The token as given, for the Bot API client only.
    pub fn token(&self) -> Option<&str> {
        self.token.as_ref().map(ExposeSecret::expose_secret)
    }

    /// Parses `TELEGRAM_API_URL`: `http` or `https`, a host, nothing after the `/` (the
    /// client adds `bot{token}/{method}`), no user, query or fragment.
    ///
    /// # Errors
    /// [`Error::Config`] on `TELEGRAM_API_URL` saying what is wrong, without repeating
    /// the value (it may hold a secret).
    pub fn parse_api_url(value: &str) -> Result<Url> {
        let url = Url::parse(value.trim()).map_err(|e| {
            Error::config(
                "TELEGRAM_API_URL",
                format!("expected a URL such as {DEFAULT_TELEGRAM_API_URL} ({e})"),
            )
        })?;
        check_api_url(&url)?;
        Ok(url)
    }

    /// Checks every value.
    ///
    /// # Errors
    /// [`Error::Config`] naming the variable whose value is out of range or malformed;
    /// never repeating the token or the URL.
    pub fn check(&self) -> Result<()> {
        if let Some(token) = self.token() {
            check_token(token)?;
        }
        check_api_url(&self.api_url)?;
        within(
            "BOTDB_TELEGRAM_TIMEOUT",
            self.timeout,
            Duration::from_millis(1)..=Duration::from_secs(600),
        )?;
        if !(1..=1000).contains(&self.per_second) {
            return Err(Error::config(
                "BOTDB_SEND_PER_SECOND",
                format!("expected from 1 to 1000 messages, got {}", self.per_second),
            ));
        }
        within(
            "BOTDB_SEND_CHAT_INTERVAL",
            self.per_chat_interval,
            Duration::ZERO..=Duration::from_secs(3600),
        )?;
        if !(1..=100).contains(&self.attempts) {
            return Err(Error::config(
                "BOTDB_SEND_ATTEMPTS",
                format!("expected from 1 to 100 tries, got {}", self.attempts),
            ));
        }
        within(
            "max_backoff",
            self.max_backoff,
            Duration::from_millis(1)..=Duration::from_secs(3600),
        )
    }
}

/// A token as @BotFather gives them: the bot's id (digits), a colon, then at least 30
/// of `A-Z a-z 0-9 _ -`. The message never repeats it.
fn check_token(token: &str) -> Result<()> {
    let shaped = token.split_once(':').is_some_and(|(id, secret)| {
        (1..=20).contains(&id.len())
            && id.bytes().all(|b| b.is_ascii_digit())
            && (30..=200).contains(&secret.len())
            && secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    });
    if shaped {
        Ok(())
    } else {
        Err(Error::config(
            "TELEGRAM_BOT_TOKEN",
            "expected a bot token from @BotFather: the bot's id (digits), a colon, then 30 or more \
             of A-Z a-z 0-9 _ - (the value is not shown)",
        ))
    }
}

fn check_api_url(url: &Url) -> Result<()> {
    let problem = if !matches!(url.scheme(), "http" | "https") {
        Some("expected http:// or https://")
    } else if url.host_str().is_none_or(str::is_empty) {
        Some("expected a host")
    } else if !url.username().is_empty() || url.password().is_some() {
        Some("expected no user or password in the URL")
    } else if url.path() != "/" && !url.path().is_empty() {
        Some("expected no path: the client adds /bot<token>/<method>")
    } else if url.query().is_some() || url.fragment().is_some() {
        Some("expected no query or fragment")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(Error::config(
            "TELEGRAM_API_URL",
            format!("{problem}, such as {DEFAULT_TELEGRAM_API_URL} (the value is not shown)"),
        )),
        None => Ok(()),
    }
}

fn within(key: &'static str, value: Duration, range: std::ops::RangeInclusive<Duration>) -> Result<()> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(Error::config(
            key,
            format!(
                "expected from {} to {} seconds, got {}",
                range.start().as_secs_f64(),
                range.end().as_secs_f64(),
                value.as_secs_f64()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw-xyz";

    fn with_token(token: &str) -> TelegramConfig {
        TelegramConfig {
            token: Some(SecretString::from(token.to_string())),
            ..TelegramConfig::default()
        }
    }

    #[test]
    fn defaults_are_telegrams() {
        let c = TelegramConfig::default();
        assert_eq!(c.api_url.as_str(), "https://api.telegram.org/");
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert_eq!((c.per_second, c.attempts), (30, 5));
        assert_eq!(c.per_chat_interval, Duration::from_secs(1));
        assert_eq!(c.max_backoff, Duration::from_secs(30));
        assert!(c.token.is_none());
        c.check().unwrap();
    }

    #[test]
    fn only_token_shaped_tokens_pass_and_none_is_repeated() {
        with_token(TOKEN).check().unwrap();
        for bad in [
            "",
            "123456",
            "abc:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw",
            "123456:short",
            "123456:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw!",
            ":AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw",
            "123456:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw:again",
        ] {
            let err = with_token(bad).check().unwrap_err();
            assert!(matches!(&err, Error::Config { key, .. } if key == "TELEGRAM_BOT_TOKEN"));
            if !bad.is_empty() {
                assert!(!format!("{err} {err:?}").contains(bad), "{err}");
            }
        }
    }

    #[test]
    fn the_token_never_shows() {
        let c = with_token(TOKEN);
        assert!(!format!("{c:?}").contains(TOKEN));
        assert!(!format!("{c:?}").contains("AAHdqTcvCH1v"));
        assert!(format!("{c:?}").contains("***"));
        // Nor a secret someone wrote into the URL, which Debug reduces to its origin.
        let c = TelegramConfig {
            api_url: Url::parse(&format!("https://u:pw@proxy.example/bot{TOKEN}/")).unwrap(),
            ..c
        };
        assert!(!format!("{c:?}").contains(TOKEN) && !format!("{c:?}").contains("pw"));
        let err = c.check().unwrap_err();
        assert!(!format!("{err} {err:?}").contains(TOKEN));
    }

    #[test]
    fn api_urls_are_bare_http_origins() {
        for good in [
            "https://api.telegram.org",
            "http://127.0.0.1:8081/",
            "http://[::1]:9000",
        ] {
            TelegramConfig::parse_api_url(good).unwrap();
        }
        for (bad, expected) in [
            ("ftp://api.telegram.org", "http://"),
            ("unix:/run/bot", "http://"),
            ("https://api.telegram.org/bot", "no path"),
            (&format!("https://api.telegram.org/bot{TOKEN}/"), "no path"),
            ("https://user:secret-pw@proxy", "no user"),
            ("https://api.telegram.org/?token=x", "no query"),
            ("not a url", "expected a URL"),
        ] {
            let err = TelegramConfig::parse_api_url(bad).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("TELEGRAM_API_URL") && text.contains(expected),
                "{bad}: {text}"
            );
            assert!(!text.contains(TOKEN) && !text.contains("secret-pw"), "{text}");
        }
    }

    #[test]
    fn ranges_are_checked() {
        let cases: [(TelegramConfig, &str); 6] = [
            (
                TelegramConfig {
                    timeout: Duration::ZERO,
                    ..Default::default()
                },
                "BOTDB_TELEGRAM_TIMEOUT",
            ),
            (
                TelegramConfig {
                    per_second: 0,
                    ..Default::default()
                },
                "BOTDB_SEND_PER_SECOND",
            ),
            (
                TelegramConfig {
                    per_second: 1001,
                    ..Default::default()
                },
                "BOTDB_SEND_PER_SECOND",
            ),
            (
                TelegramConfig {
                    per_chat_interval: Duration::from_secs(3601),
                    ..Default::default()
                },
                "BOTDB_SEND_CHAT_INTERVAL",
            ),
            (
                TelegramConfig {
                    attempts: 0,
                    ..Default::default()
                },
                "BOTDB_SEND_ATTEMPTS",
            ),
            (
                TelegramConfig {
                    max_backoff: Duration::ZERO,
                    ..Default::default()
                },
                "max_backoff",
            ),
        ];
        for (config, key) in cases {
            let err = config.check().unwrap_err();
            assert!(
                matches!(&err, Error::Config { key: k, .. } if k == key),
                "{key}: {err}"
            );
        }
    }

    fn from_env(vars: &[(&str, &str)]) -> Result<crate::config::Config> {
        crate::config::Config::from_lookup(|k| {
            vars.iter().find(|(key, _)| *key == k).map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn read_from_the_environment() {
        let c = from_env(&[
            ("TELEGRAM_BOT_TOKEN", TOKEN),
            ("TELEGRAM_API_URL", "http://127.0.0.1:8081"),
            ("BOTDB_TELEGRAM_TIMEOUT", "2.5"),
            ("BOTDB_SEND_PER_SECOND", "20"),
            ("BOTDB_SEND_CHAT_INTERVAL", "0.5"),
            ("BOTDB_SEND_ATTEMPTS", "3"),
        ])
        .unwrap();
        let t = &c.telegram;
        assert_eq!(t.token(), Some(TOKEN));
        assert_eq!(t.api_url.as_str(), "http://127.0.0.1:8081/");
        assert_eq!(t.timeout, Duration::from_millis(2500));
        assert_eq!((t.per_second, t.attempts), (20, 3));
        assert_eq!(t.per_chat_interval, Duration::from_millis(500));
        assert!(!format!("{c:?}").contains(TOKEN), "{c:?}");
        assert_eq!(from_env(&[]).unwrap().telegram.token(), None);
        for key in [
            "TELEGRAM_BOT_TOKEN",
            "TELEGRAM_API_URL",
            "BOTDB_TELEGRAM_TIMEOUT",
            "BOTDB_SEND_PER_SECOND",
            "BOTDB_SEND_CHAT_INTERVAL",
            "BOTDB_SEND_ATTEMPTS",
        ] {
            assert!(crate::config::ENV_VARS.iter().any(|(k, ..)| *k == key), "{key}");
        }
    }

    #[test]
    fn bad_values_name_the_variable_and_never_the_token() {
        let malformed = format!("{TOKEN}!");
        for (key, value, expected) in [
            ("TELEGRAM_BOT_TOKEN", malformed.as_str(), "bot token"),
            ("TELEGRAM_API_URL", "https://api.telegram.org/bot1:x/", "no path"),
            ("BOTDB_TELEGRAM_TIMEOUT", "0", "more than 0"),
            ("BOTDB_TELEGRAM_TIMEOUT", "601", "600"),
            ("BOTDB_SEND_PER_SECOND", "many", "whole number"),
            ("BOTDB_SEND_PER_SECOND", "0", "from 1 to 1000"),
            ("BOTDB_SEND_CHAT_INTERVAL", "-1", "seconds"),
            ("BOTDB_SEND_ATTEMPTS", "1000", "from 1 to 100"),
        ] {
            let err = from_env(&[(key, value)]).unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(
                matches!(&err, Error::Config { key: k, .. } if k == key),
                "{key}: {text}"
            );
            assert!(text.contains(expected), "{key}={value}: {text}");
            assert!(!text.contains(TOKEN), "{text}");
        }
    }
}
