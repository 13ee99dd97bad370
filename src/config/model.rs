//! [`ModelConfig`]: which language model the bot asks, and how patiently
//! (`BOTDB_MODEL_*`). No URL means the local echo model, which needs no network.

use std::fmt;
use std::time::Duration;

use secrecy::SecretString;

use crate::error::{Error, Result};

/// Default [`ModelConfig::timeout`]: a long answer of a large model takes a minute.
pub const DEFAULT_MODEL_TIMEOUT: Duration = Duration::from_secs(120);

/// Default [`ModelConfig::attempts`].
pub const DEFAULT_MODEL_ATTEMPTS: u32 = 3;

/// Default [`ModelConfig::max_backoff`].
pub const DEFAULT_MODEL_MAX_BACKOFF: Duration = Duration::from_secs(8);

/// The language model: an OpenAI-compatible chat completions API (OpenAI, vLLM,
/// llama.cpp, Ollama), or none (the echo model).
#[derive(Clone)]
pub struct ModelConfig {
    /// The API's base URL, the part before `/chat/completions`
    /// (`http://127.0.0.1:8000/v1`, `https://api.openai.com/v1`; `BOTDB_MODEL_URL`);
    /// `None`: the local echo model.
    pub url: Option<url::Url>,
    /// The model's name as the API knows it (`gpt-4o-mini`, `llama3.1`;
    /// `BOTDB_MODEL_NAME`). Needed with a URL.
    pub name: String,
    /// The bearer token the API expects (`BOTDB_MODEL_API_KEY`); never printed.
    pub api_key: Option<SecretString>,
    /// How long one attempt may take, connecting to the last byte of the answer
    /// (`BOTDB_MODEL_TIMEOUT`, seconds).
    pub timeout: Duration,
    /// How many times one question is asked before giving up on a transient failure
    /// (`BOTDB_MODEL_ATTEMPTS`; 1: never retried).
    pub attempts: u32,
    /// The longest wait between two attempts, a 429's `Retry-After` included.
    pub max_backoff: Duration,
}

impl Default for ModelConfig {
    /// No URL (the echo model), no name, no key, 120 s per attempt, 3 attempts, waits
    /// of at most 8 s.
    fn default() -> Self {
        ModelConfig {
            url: None,
            name: String::new(),
            api_key: None,
            timeout: DEFAULT_MODEL_TIMEOUT,
            attempts: DEFAULT_MODEL_ATTEMPTS,
            max_backoff: DEFAULT_MODEL_MAX_BACKOFF,
        }
    }
}

impl fmt::Debug for ModelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL has no user info or query (`check`), so it holds no secret.
        f.debug_struct("ModelConfig")
            .field("url", &self.url.as_ref().map(url::Url::as_str))
            .field("name", &self.name)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("timeout", &self.timeout)
            .field("attempts", &self.attempts)
            .field("max_backoff", &self.max_backoff)
            .finish()
    }
}

impl ModelConfig {
    /// The chat completions endpoint, `{url}/chat/completions`; `None` without a URL.
    pub fn completions_url(&self) -> Option<url::Url> {
        let mut url = self.url.clone()?;
        let path = format!("{}/chat/completions", url.path().trim_end_matches('/'));
        url.set_path(&path);
        Some(url)
    }

    /// Checks every value.
    ///
    /// # Errors
    /// [`Error::Config`] naming the variable at fault: a URL that is not http or https
    /// with a host, or that carries user info, a query or a fragment (the key goes in
    /// `BOTDB_MODEL_API_KEY`, where it is kept secret); no name, or one over 200
    /// characters, with a URL; a timeout outside 1 s to 1 h; attempts outside 1 to 10;
    /// a longest wait over 1 h. No message repeats the URL or the key.
    pub fn check(&self) -> Result<()> {
        if let Some(url) = &self.url {
            const KEY: &str = "BOTDB_MODEL_URL";
            if !matches!(url.scheme(), "http" | "https") {
                return Err(Error::config(
                    KEY,
                    format!("expected an http or https URL, got the scheme {:?}", url.scheme()),
                ));
            }
            if url.host_str().is_none_or(str::is_empty) {
                return Err(Error::config(KEY, "expected a URL with a host"));
            }
            if !url.username().is_empty() || url.password().is_some() {
                return Err(Error::config(
                    KEY,
                    "the URL carries user info: give the key in BOTDB_MODEL_API_KEY instead",
                ));
            }
            if url.query().is_some() || url.fragment().is_some() {
                return Err(Error::config(
                    KEY,
                    "expected the API's base URL without a query or fragment (e.g. http://127.0.0.1:8000/v1)",
                ));
            }
            let chars = self.name.chars().count();
            if !(1..=200).contains(&chars) || self.name.trim().is_empty() {
                return Err(Error::config(
                    "BOTDB_MODEL_NAME",
                    format!(
                        "expected the model's name (1 to 200 characters) with BOTDB_MODEL_URL, got {chars} characters"
                    ),
                ));
            }
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&self.timeout) {
            return Err(Error::config(
                "BOTDB_MODEL_TIMEOUT",
                format!("expected from 1 to 3600 seconds, got {:?}", self.timeout),
            ));
        }
        if !(1..=10).contains(&self.attempts) {
            return Err(Error::config(
                "BOTDB_MODEL_ATTEMPTS",
                format!("expected from 1 to 10 attempts, got {}", self.attempts),
            ));
        }
        if self.max_backoff > Duration::from_secs(3600) {
            return Err(Error::config(
                "max_backoff",
                format!("expected at most 3600 seconds, got {:?}", self.max_backoff),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_url(url: &str) -> ModelConfig {
        ModelConfig {
            url: Some(url::Url::parse(url).unwrap()),
            name: "gpt-4o-mini".into(),
            ..ModelConfig::default()
        }
    }

    fn key_of(err: Error) -> String {
        match err {
            Error::Config { key, .. } => key.into_owned(),
            other => panic!("not a configuration error: {other:?}"),
        }
    }

    #[test]
    fn the_default_is_the_echo_model_and_valid() {
        let c = ModelConfig::default();
        assert!(c.url.is_none());
        assert_eq!(
            (c.timeout, c.attempts, c.max_backoff),
            (DEFAULT_MODEL_TIMEOUT, 3, DEFAULT_MODEL_MAX_BACKOFF)
        );
        c.check().unwrap();
        assert_eq!(c.completions_url(), None);
    }

    #[test]
    fn the_endpoint_is_under_the_base() {
        for base in ["http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1/"] {
            let c = with_url(base);
            c.check().unwrap();
            assert_eq!(
                c.completions_url().unwrap().as_str(),
                "http://127.0.0.1:8000/v1/chat/completions"
            );
        }
        let c = with_url("https://api.openai.com");
        assert_eq!(
            c.completions_url().unwrap().as_str(),
            "https://api.openai.com/chat/completions"
        );
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (url, fragment) in [
            ("ftp://example.com/v1", "scheme"),
            ("https://user:sk-secret-key@example.com/v1", "user info"),
            ("https://example.com/v1?key=sk-secret-key", "query"),
            ("https://example.com/v1#x", "query"),
        ] {
            let err = with_url(url).check().unwrap_err();
            let text = err.to_string();
            assert!(text.contains(fragment), "{url}: {text}");
            assert!(!text.contains("sk-secret-key"), "{text}");
            assert_eq!(key_of(err), "BOTDB_MODEL_URL");
        }
        let mut c = with_url("http://127.0.0.1:8000/v1");
        c.name = String::new();
        assert_eq!(key_of(c.check().unwrap_err()), "BOTDB_MODEL_NAME");
        c.name = "x".repeat(201);
        assert_eq!(key_of(c.check().unwrap_err()), "BOTDB_MODEL_NAME");
        c.name = "x".repeat(200);
        c.check().unwrap();
        for timeout in [Duration::from_millis(999), Duration::from_secs(3601)] {
            let c = ModelConfig {
                timeout,
                ..ModelConfig::default()
            };
            assert_eq!(key_of(c.check().unwrap_err()), "BOTDB_MODEL_TIMEOUT");
        }
        for attempts in [0, 11] {
            let c = ModelConfig {
                attempts,
                ..ModelConfig::default()
            };
            assert_eq!(key_of(c.check().unwrap_err()), "BOTDB_MODEL_ATTEMPTS");
        }
        // No URL, no name needed.
        ModelConfig {
            name: String::new(),
            ..ModelConfig::default()
        }
        .check()
        .unwrap();
    }

    #[test]
    fn debug_never_shows_the_key() {
        let c = ModelConfig {
            api_key: Some(SecretString::from("sk-live-0123456789")),
            ..with_url("https://api.openai.com/v1")
        };
        let debug = format!("{c:?}");
        assert!(!debug.contains("sk-live"), "{debug}");
        assert!(debug.contains("api_key: Some(\"***\")"), "{debug}");
        assert!(debug.contains("https://api.openai.com/v1"), "{debug}");
    }

    #[test]
    fn the_environment_sets_it() {
        use std::collections::HashMap;
        let from = |vars: &[(&str, &str)]| {
            let map: HashMap<String, String> =
                vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            crate::config::Config::from_lookup(|k| map.get(k).cloned())
        };
        let c = from(&[]).unwrap();
        assert!(c.model.url.is_none());
        let c = from(&[
            ("BOTDB_MODEL_URL", "http://127.0.0.1:8000/v1"),
            ("BOTDB_MODEL_NAME", "llama3.1"),
            ("BOTDB_MODEL_API_KEY", "sk-env-0123456789"),
            ("BOTDB_MODEL_TIMEOUT", "2.5"),
            ("BOTDB_MODEL_ATTEMPTS", "5"),
        ])
        .unwrap();
        let m = &c.model;
        assert_eq!(
            m.url.as_ref().map(url::Url::as_str),
            Some("http://127.0.0.1:8000/v1")
        );
        assert_eq!(m.name, "llama3.1");
        assert_eq!(
            m.api_key
                .as_ref()
                .map(|k| secrecy::ExposeSecret::expose_secret(k).to_string()),
            Some("sk-env-0123456789".to_string())
        );
        assert_eq!((m.timeout, m.attempts), (Duration::from_millis(2500), 5));
        assert!(!format!("{c:?}").contains("sk-env"), "{c:?}");
        for (vars, key) in [
            (&[("BOTDB_MODEL_URL", "not a url")][..], "BOTDB_MODEL_URL"),
            (&[("BOTDB_MODEL_URL", "http://h/v1")][..], "BOTDB_MODEL_NAME"),
            (&[("BOTDB_MODEL_TIMEOUT", "0.5")][..], "BOTDB_MODEL_TIMEOUT"),
            (&[("BOTDB_MODEL_TIMEOUT", "soon")][..], "BOTDB_MODEL_TIMEOUT"),
            (&[("BOTDB_MODEL_ATTEMPTS", "0")][..], "BOTDB_MODEL_ATTEMPTS"),
            (&[("BOTDB_MODEL_ATTEMPTS", "11")][..], "BOTDB_MODEL_ATTEMPTS"),
        ] {
            assert_eq!(key_of(from(vars).unwrap_err()), key, "{vars:?}");
        }
        // A key in the URL is refused, and not repeated.
        let err = from(&[
            ("BOTDB_MODEL_URL", "https://u:sk-in-url-123@h/v1"),
            ("BOTDB_MODEL_NAME", "m"),
        ])
        .unwrap_err();
        assert!(!format!("{err} {err:?}").contains("sk-in-url"), "{err}");
        for name in [
            "BOTDB_MODEL_URL",
            "BOTDB_MODEL_NAME",
            "BOTDB_MODEL_API_KEY",
            "BOTDB_MODEL_TIMEOUT",
            "BOTDB_MODEL_ATTEMPTS",
        ] {
            assert!(
                crate::config::ENV_VARS.iter().any(|(k, ..)| *k == name),
                "{name} not in ENV_VARS"
            );
        }
    }
}
