//! Reading a [`Config`] from the environment and a `.env` file.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgSslMode;

use crate::config::audit::AuditKey;
use crate::config::builder::ConfigBuilder;
use crate::config::model::ModelConfig;
use crate::config::telegram::TelegramConfig;
use crate::config::vars::SERVER_VARS;
use crate::config::whole::Config;
use crate::error::{Error, Result};

impl Config {
    /// Reads the configuration from the environment and, for variables not set there,
    /// from a `.env` file in the working directory if one exists.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first variable whose value is malformed, with the
    /// form expected. A malformed `.env` file is an error too.
    pub fn from_env() -> Result<Self> {
        Self::from_env_with(&[])
    }

    /// [`Config::from_env`], with `overrides` (variable, value) winning over the
    /// environment and `.env`: what the command line's flags say
    /// (`--app-migrations DIR` is `BOTDB_APP_MIGRATIONS`).
    ///
    /// # Errors
    /// As [`Config::from_env`].
    pub fn from_env_with(overrides: &[(&str, String)]) -> Result<Self> {
        let dotenv = read_dotenv()?;
        Self::from_lookup(|key| {
            overrides
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.clone())
                .or_else(|| std::env::var(key).ok())
                .or_else(|| dotenv.get(key).cloned())
        })
    }

    /// Reads the configuration from `lookup` (a variable name to its value), the way
    /// [`Config::from_env`] reads the environment. Tests use it with a map.
    ///
    /// # Errors
    /// As [`Config::from_env`].
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |key: &str| lookup(key).filter(|v| !v.trim().is_empty());
        let read = |key: &'static str, expected: &str, parse: &dyn Fn(&str) -> Option<u64>| {
            get(key).map(|v| parse_env(key, &v, expected, parse)).transpose()
        };
        let secs = |key: &'static str, expected: &str, allow_zero: bool| {
            get(key)
                .map(|v| {
                    parse_env(key, &v, expected, |v| {
                        parse_secs(v).filter(|d| allow_zero || !d.is_zero())
                    })
                })
                .transpose()
        };
        let whole = |v: &str| v.parse::<u64>().ok();
        let mut b = Config::builder();
        if let Some(url) = get("DATABASE_URL") {
            b = b.url(url);
        } else {
            if let Some(host) = get("DB_HOST") {
                b = b.host(host);
            }
            if let Some(ports) = get("DB_PORT") {
                let ports = parse_env(
                    "DB_PORT",
                    &ports,
                    "a port number from 1 to 65535, or one per host of DB_HOST separated by commas",
                    |v| {
                        v.split(',')
                            .map(|p| p.trim().parse::<u16>().ok().filter(|p| *p > 0))
                            .collect::<Option<Vec<u16>>>()
                    },
                )?;
                b = b.ports(ports);
            }
            if let Some(name) = get("DB_NAME") {
                b = b.database(name);
            }
            if let Some(user) = get("DB_USER") {
                b = b.user(user);
            }
            if let Some(password) = lookup("DB_PASSWORD") {
                b = b.password(password);
            }
            if let Some(mode) = get("DB_SSLMODE") {
                b = b.ssl_mode(parse_env(
                    "DB_SSLMODE",
                    &mode,
                    "disable, allow, prefer, require, verify-ca or verify-full",
                    |v| PgSslMode::from_str(v).ok(),
                )?);
            }
            if let Some(cert) = get("DB_SSLROOTCERT") {
                b = b.ssl_root_cert(cert);
            }
        }
        if let Some(url) = get("DATABASE_REPLICA_URL") {
            b = b.replica_url(url);
        }
        if let Some(d) = secs("DB_REPLICA_MAX_LAG", "seconds (0 or more)", true)? {
            b = b.replica_max_lag(d);
        }
        if let Some(d) = secs("DB_REPLICA_WAIT", "seconds (0 or more)", true)? {
            b = b.replica_wait(d);
        }
        if let Some(attrs) = get("DB_TARGET_SESSION_ATTRS") {
            b = b.target_session_attrs(super::TargetSessionAttrs::parse_for(
                "DB_TARGET_SESSION_ATTRS",
                &attrs,
            )?);
        }
        let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        let to_u32 = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        if let Some(n) = read("DB_POOL_SIZE", "a whole number from 1 to 1000", &whole)? {
            b = b.pool_size(to_u32(n));
        }
        if let Some(n) = read("DB_MAX_OVERFLOW", "a whole number from 0 to 999", &whole)? {
            b = b.max_overflow(to_u32(n));
        }
        if let Some(v) = get("DB_POOL_PRE_PING") {
            b = b.pre_ping(parse_env("DB_POOL_PRE_PING", &v, "true or false", parse_bool)?);
        }
        if let Some(d) = secs("DB_POOL_PRE_PING_IDLE", "seconds (0 or more)", true)? {
            b = b.pre_ping_idle(d);
        }
        if let Some(v) = get("DB_POOL_RECYCLE") {
            let recycle = parse_env(
                "DB_POOL_RECYCLE",
                &v,
                "seconds (a positive number, or -1 for never)",
                |v| match v.trim() {
                    "-1" => Some(None),
                    other => parse_secs(other).filter(|d| !d.is_zero()).map(Some),
                },
            )?;
            b = b.recycle(recycle);
        }
        if let Some(d) = secs("DB_POOL_TIMEOUT", "seconds (more than 0)", false)? {
            b = b.pool_timeout(d);
        }
        if let Some(d) = secs("DB_POOL_IDLE_TIMEOUT", "seconds (more than 0)", false)? {
            b = b.idle_timeout(d);
        }
        for (key, set) in [
            (
                "DB_STATEMENT_TIMEOUT",
                ConfigBuilder::statement_timeout as fn(_, _) -> _,
            ),
            ("DB_LOCK_TIMEOUT", ConfigBuilder::lock_timeout),
            (
                "DB_IDLE_IN_TRANSACTION_TIMEOUT",
                ConfigBuilder::idle_in_transaction_timeout,
            ),
        ] {
            if let Some(d) = secs(key, "seconds (0 for no limit)", true)? {
                b = set(b, (!d.is_zero()).then_some(d));
            }
        }
        let mut network = crate::config::NetworkConfig::default();
        if let Some(d) = secs("DB_NETWORK_TIMEOUT", "seconds (more than 0)", false)? {
            network.timeout = d;
        }
        if let Some(v) = get("DB_KEEPALIVES") {
            network.keepalives = parse_env("DB_KEEPALIVES", &v, "true or false", parse_bool)?;
        }
        if let Some(d) = secs("DB_KEEPALIVES_IDLE", "seconds (more than 0)", false)? {
            network.keepalives_idle = d;
        }
        if let Some(d) = secs("DB_KEEPALIVES_INTERVAL", "seconds (more than 0)", false)? {
            network.keepalives_interval = d;
        }
        if let Some(n) = read("DB_KEEPALIVES_COUNT", "a whole number from 1 to 127", &whole)? {
            network.keepalives_count = to_u32(n);
        }
        if let Some(d) = secs("DB_TCP_USER_TIMEOUT", "seconds (0: the system's)", true)? {
            network.tcp_user_timeout = (!d.is_zero()).then_some(d);
        }
        b = b.network(network);
        if let Some(v) = get("DB_ECHO") {
            b = b.echo(parse_env("DB_ECHO", &v, "true or false", parse_bool)?);
        }
        if let Some(n) = read(
            "DB_MAX_CONTENT_CHARS",
            "a whole number of characters from 1 to 10000000",
            &whole,
        )? {
            b = b.max_content_chars(to_usize(n));
        }
        if let Some(n) = read(
            "DB_MAX_HISTORY_BYTES",
            "a whole number of bytes from 1024 to 1073741824",
            &whole,
        )? {
            b = b.max_history_bytes(to_usize(n));
        }
        if let Some(n) = read(
            "DB_CONTEXT_MAX_CHARS",
            "a whole number of characters from 1 to 100000000",
            &whole,
        )? {
            b = b.context_max_chars(to_usize(n));
        }
        if let Some(n) = read(
            "BOTDB_MAX_PENDING",
            "a whole number of requests from 1 to 10000000",
            &whole,
        )? {
            b = b.max_pending(to_usize(n));
        }
        if let Some(n) = read(
            "BOTDB_MAX_PENDING_PER_USER",
            "a whole number of requests from 1 to BOTDB_MAX_PENDING",
            &whole,
        )? {
            b = b.max_pending_per_user(to_usize(n));
        }
        if let Some(n) = read("BOTDB_BATCH_MAX", "a whole number from 1 to 10000", &whole)? {
            b = b.batch_max(to_usize(n));
        }
        if let Some(n) = read("BOTDB_BATCH_IN_FLIGHT", "a whole number from 1 to 1000", &|v| {
            whole(v).filter(|n| (1..=1000).contains(n))
        })? {
            b = b.batch_in_flight(to_usize(n));
        }
        if let Some(ms) = read("BOTDB_BATCH_WAIT_MS", "milliseconds from 0 to 1000", &|v| {
            whole(v).filter(|ms| *ms <= 1000)
        })? {
            b = b.batch_wait(Duration::from_millis(ms));
        }
        if let Some(d) = secs("BOTDB_DRAIN_TIMEOUT", "seconds (more than 0)", false)? {
            b = b.drain_timeout(d);
        }
        if let Some(d) = secs("BOTDB_LOCK_WAIT", "seconds (0 or more)", true)? {
            b = b.lock_wait(d);
        }
        if let Some(n) = read(
            "BOTDB_LOCK_RETRY_CONNECTIONS",
            "a whole number of connections (0: a quarter of the pool)",
            &whole,
        )? {
            b = b.lock_retry_connections(to_usize(n));
        }
        if let Some(d) = secs("BOTDB_EXPORT_TIMEOUT", "seconds (more than 0)", false)? {
            b = b.export_timeout(d);
        }
        if let Some(d) = secs("BOTDB_MIGRATE_LOCK_TIMEOUT", "seconds (more than 0)", false)? {
            b = b.migrate_lock_timeout(d);
        }
        if let Some(n) = read("BOTDB_MIGRATE_ATTEMPTS", "a whole number from 1 to 1000", &whole)? {
            b = b.migrate_attempts(to_u32(n));
        }
        if let Some(dir) = get("BOTDB_APP_MIGRATIONS") {
            b = b.app_migrations(dir);
        }
        if let Some(key) = get("BOTDB_AUDIT_KEY") {
            b = b.audit_key(AuditKey::new(key)?);
        }
        // The language model (BOTDB_MODEL_*); `build` checks the values' ranges.
        let mut model = ModelConfig::default();
        if let Some(url) = get("BOTDB_MODEL_URL") {
            // Not echoed: a URL may carry a key in its user info or query.
            let url = url::Url::parse(url.trim()).map_err(|e| {
                Error::config(
                    "BOTDB_MODEL_URL",
                    format!("expected the API's base URL (e.g. http://127.0.0.1:8000/v1): {e}"),
                )
            })?;
            model.url = Some(url);
        }
        if let Some(name) = get("BOTDB_MODEL_NAME") {
            model.name = name.trim().to_string();
        }
        model.api_key = get("BOTDB_MODEL_API_KEY").map(|key| key.trim().to_string().into());
        if let Some(d) = secs("BOTDB_MODEL_TIMEOUT", "seconds from 1 to 3600", false)? {
            model.timeout = d;
        }
        if let Some(n) = read("BOTDB_MODEL_ATTEMPTS", "a whole number from 1 to 10", &whole)? {
            model.attempts = to_u32(n);
        }
        b = b.model(model);
        // Telegram's Bot API (config/telegram.rs; `build` checks the values).
        let mut telegram = TelegramConfig::default();
        if let Some(token) = get("TELEGRAM_BOT_TOKEN") {
            telegram.token = Some(token.trim().to_string().into());
        }
        if let Some(url) = get("TELEGRAM_API_URL") {
            telegram.api_url = TelegramConfig::parse_api_url(&url)?;
        }
        if let Some(d) = secs("BOTDB_TELEGRAM_TIMEOUT", "seconds (more than 0)", false)? {
            telegram.timeout = d;
        }
        if let Some(n) = read("BOTDB_SEND_PER_SECOND", "a whole number from 1 to 1000", &whole)? {
            telegram.per_second = to_u32(n);
        }
        if let Some(d) = secs("BOTDB_SEND_CHAT_INTERVAL", "seconds (0 or more)", true)? {
            telegram.per_chat_interval = d;
        }
        if let Some(n) = read("BOTDB_SEND_ATTEMPTS", "a whole number from 1 to 100", &whole)? {
            telegram.attempts = to_u32(n);
        }
        b = b.telegram(telegram);
        let mut config = b.build()?;
        // A DB_* variable set with DATABASE_URL (which wins) still says "a real server".
        config.server_configured = SERVER_VARS.iter().any(|k| get(k).is_some());
        Ok(config)
    }
}

/// Reads `.env` from the working directory into a map, without touching the process
/// environment (setting variables is unsound once threads run).
fn read_dotenv() -> Result<HashMap<String, String>> {
    match dotenvy::dotenv_iter() {
        Ok(iter) => iter
            .map(|item| {
                item.map_err(|e| {
                    Error::config(
                        ".env",
                        format!("the file could not be parsed: {}", redact_dotenv_error(&e)),
                    )
                })
            })
            .collect(),
        Err(e) if e.not_found() => Ok(HashMap::new()),
        Err(e) => Err(Error::config(
            ".env",
            format!("the file could not be read: {}", redact_dotenv_error(&e)),
        )),
    }
}

/// dotenvy's parse errors quote the offending line, which may hold a password.
fn redact_dotenv_error(e: &dotenvy::Error) -> String {
    match e {
        dotenvy::Error::LineParse(_, index) => format!("syntax error at byte {index} of a line"),
        dotenvy::Error::Io(io) => io.kind().to_string(),
        _ => "invalid file".to_string(),
    }
}

fn parse_env<T>(
    key: &'static str,
    value: &str,
    expected: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<T> {
    parse(value.trim()).ok_or_else(|| Error::config(key, format!("expected {expected}, got {value:?}")))
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn parse_secs(v: &str) -> Option<Duration> {
    let secs: f64 = v.parse().ok()?;
    (0.0..1e9).contains(&secs).then(|| Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::vars::ENV_VARS;
    use crate::config::{PoolConfig, ServerPart};

    fn from(vars: &[(&str, &str)]) -> Result<Config> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_are_the_references() {
        let c = from(&[]).unwrap();
        assert_eq!(c.redacted_url(), "postgres://postgres@localhost:5432/ai_tg_bot");
        assert_eq!(c.pool, PoolConfig::default());
        assert_eq!(
            (c.pool.size, c.pool.max_overflow, c.pool.max_connections()),
            (5, 10, 15)
        );
        assert!(c.pool.pre_ping);
        assert_eq!(c.pool.recycle, Some(Duration::from_secs(3600)));
        assert!(!c.echo);
        assert!(!c.server_configured());
        // Every wait is bounded by default.
        assert_eq!(c.timeouts.statement, Some(Duration::from_secs(10)));
        assert_eq!(c.timeouts.lock, Some(Duration::from_millis(500)));
        assert_eq!(c.timeouts.idle_in_transaction, Some(Duration::from_secs(30)));
        assert_eq!(c.actors.lock_wait, Duration::from_secs(10));
        assert_eq!(c.export_timeout, Duration::from_secs(600));
        let c = from(&[("BOTDB_EXPORT_TIMEOUT", "2.5")]).unwrap();
        assert_eq!(c.export_timeout, Duration::from_millis(2500));
    }

    #[test]
    fn the_app_migrations_directory_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap();
        let c = from(&[("BOTDB_APP_MIGRATIONS", path)]).unwrap();
        assert_eq!(c.app_migrations.as_deref(), Some(dir.path()));
        assert!(!c.server_configured(), "not a server setting");
        assert_eq!(from(&[]).unwrap().app_migrations, None);
        let err = from(&[("BOTDB_APP_MIGRATIONS", "/nonexistent/app")]).unwrap_err();
        assert!(
            matches!(&err, Error::Config { key, .. } if key == "BOTDB_APP_MIGRATIONS"),
            "{err:?}"
        );
        assert!(err.to_string().contains("/nonexistent/app"), "{err}");
        assert!(ENV_VARS.iter().any(|(k, ..)| *k == "BOTDB_APP_MIGRATIONS"));
    }

    #[test]
    fn any_server_variable_means_a_configured_server() {
        let ca = tempfile::NamedTempFile::new().unwrap();
        for key in SERVER_VARS {
            let value = match *key {
                "DATABASE_URL" => "postgres://u@h/db",
                "DB_PORT" => "5433",
                "DB_SSLMODE" => "require",
                "DB_SSLROOTCERT" => ca.path().to_str().unwrap(),
                _ => "x",
            };
            let c = from(&[(key, value)]).unwrap();
            assert!(c.server_configured(), "{key} alone configures the server");
        }
        // The data-loss trap of issue 10: DB_NAME + credentials, no DB_HOST.
        let c = from(&[
            ("DB_NAME", "prod_bot"),
            ("DB_USER", "postgres"),
            ("DB_PASSWORD", "pw"),
        ])
        .unwrap();
        assert!(c.server_configured());
        assert_eq!(
            c.redacted_url(),
            "postgres://postgres:***@localhost:5432/prod_bot"
        );
        assert!(!from(&[("DB_POOL_SIZE", "3")]).unwrap().server_configured());
    }

    #[test]
    fn parts_and_pool_settings_are_read() {
        let ca = tempfile::NamedTempFile::new().unwrap();
        let ca_path = ca.path().to_str().unwrap().to_string();
        let c = from(&[
            ("DB_HOST", "db.internal"),
            ("DB_PORT", "6543"),
            ("DB_NAME", "bot"),
            ("DB_USER", "app"),
            ("DB_PASSWORD", "s3cret-pw"),
            ("DB_SSLMODE", "verify-full"),
            ("DB_SSLROOTCERT", &ca_path),
            ("DB_POOL_SIZE", "7"),
            ("DB_MAX_OVERFLOW", "3"),
            ("DB_POOL_PRE_PING", "off"),
            ("DB_POOL_RECYCLE", "-1"),
            ("DB_POOL_TIMEOUT", "2.5"),
            ("DB_ECHO", "yes"),
            ("BOTDB_MAX_PENDING_PER_USER", "7"),
            ("DB_MAX_HISTORY_BYTES", "4096"),
            ("BOTDB_MIGRATE_LOCK_TIMEOUT", "0.5"),
        ])
        .unwrap();
        assert_eq!(
            c.redacted_url(),
            "postgres://app:***@db.internal:6543/bot?sslmode=verify-full"
        );
        assert_eq!(c.pool.max_connections(), 10);
        assert!(!c.pool.pre_ping);
        assert_eq!(c.pool.recycle, None);
        assert_eq!(c.pool.timeout, Duration::from_millis(2500));
        assert!(c.echo);
        assert_eq!(c.actors.max_pending_per_user, 7);
        assert_eq!(c.limits.max_history_bytes, 4096);
        assert_eq!(c.migrate.lock_timeout, Duration::from_millis(500));
        assert!(c.server_configured());
        let o = c.connect_options().unwrap();
        assert!(matches!(o.get_ssl_mode(), PgSslMode::VerifyFull));
        // As libpq: `require` with a root certificate verifies the CA.
        let c = from(&[("DB_SSLMODE", "require"), ("DB_SSLROOTCERT", &ca_path)]).unwrap();
        assert!(matches!(
            c.connect_options().unwrap().get_ssl_mode(),
            PgSslMode::VerifyCa
        ));
        let c = from(&[("DB_SSLMODE", "require")]).unwrap();
        assert!(matches!(
            c.connect_options().unwrap().get_ssl_mode(),
            PgSslMode::Require
        ));
        let url = format!("postgres://u@h/db?sslmode=require&sslrootcert={ca_path}");
        let c = from(&[("DATABASE_URL", &url)]).unwrap();
        assert!(matches!(
            c.connect_options().unwrap().get_ssl_mode(),
            PgSslMode::VerifyCa
        ));
        // A root certificate that cannot be read is refused when the settings are read.
        let err = from(&[("DB_SSLROOTCERT", "/no/such/ca.pem")]).unwrap_err();
        assert!(err.to_string().contains("DB_SSLROOTCERT") && err.to_string().contains("/no/such/ca.pem"));
    }

    #[test]
    fn url_wins_and_reference_scheme_is_accepted() {
        let c = from(&[
            ("DATABASE_URL", "postgresql+asyncpg://bot:pw-xyz@h:5433/chat"),
            ("DB_HOST", "ignored"),
        ])
        .unwrap();
        assert_eq!(c.redacted_url(), "postgresql://bot:***@h:5433/chat");
        assert_eq!(c.database_name(), "chat");
        let o = c.connect_options().unwrap();
        assert_eq!((o.get_host(), o.get_port(), o.get_username()), ("h", 5433, "bot"));
    }

    #[test]
    fn bad_values_name_the_variable_and_the_form() {
        let cases: &[(&str, &str, &str)] = &[
            ("DB_POOL_SIZE", "abc", "whole number"),
            ("DB_POOL_SIZE", "0", "from 1 to"),
            ("DB_MAX_OVERFLOW", "-2", "whole number"),
            ("DB_PORT", "70000", "port number"),
            ("DB_POOL_PRE_PING", "maybe", "true or false"),
            ("DB_POOL_RECYCLE", "0", "-1 for never"),
            ("DB_POOL_TIMEOUT", "0", "more than 0"),
            ("DB_ECHO", "2", "true or false"),
            ("DB_MAX_CONTENT_CHARS", "0", "characters"),
            ("DB_MAX_HISTORY_BYTES", "10", "bytes"),
            ("DB_SSLMODE", "sometimes", "verify-full"),
            ("BOTDB_MAX_PENDING", "0", "requests"),
            ("BOTDB_MAX_PENDING_PER_USER", "20000", "requests"),
            ("BOTDB_DRAIN_TIMEOUT", "never", "seconds"),
            ("BOTDB_MIGRATE_LOCK_TIMEOUT", "0", "more than 0"),
            ("BOTDB_EXPORT_TIMEOUT", "0", "more than 0"),
            ("BOTDB_EXPORT_TIMEOUT", "3000000", "2073600"),
            (
                "DATABASE_URL",
                "not a url",
                "postgres://user:password@host:port/dbname",
            ),
            ("DATABASE_URL", "mysql://u:p@h/db", "unsupported scheme"),
            ("DATABASE_REPLICA_URL", "mysql://u:p@h/db", "unsupported scheme"),
            (
                "DATABASE_REPLICA_URL",
                "postgres://u@h:99999/db",
                "DATABASE_REPLICA_URL",
            ),
            ("DB_REPLICA_MAX_LAG", "soon", "seconds"),
            ("DB_REPLICA_MAX_LAG", "100000", "86400"),
            ("DB_REPLICA_WAIT", "-1", "seconds"),
            ("DB_REPLICA_WAIT", "61", "60 seconds"),
        ];
        for (key, value, expected) in cases {
            let err = from(&[(key, value)]).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, Error::Config { .. }), "{key}={value}: {err:?}");
            assert!(text.contains(key), "{key}={value}: {text}");
            assert!(text.contains(expected), "{key}={value}: {text}");
        }
    }

    #[test]
    fn replicas_are_read_with_their_hosts_and_settings() {
        let c = from(&[]).unwrap();
        assert!(c.replica().is_none(), "no replicas by default");
        assert_eq!(c.replicas.max_lag, Duration::from_secs(2));
        assert_eq!(c.replicas.wait, Duration::from_millis(50));
        let c = from(&[
            ("DATABASE_URL", "postgres://bot:pw@primary:5432/chat"),
            (
                "DATABASE_REPLICA_URL",
                "postgres://reader:secret-r@r1:5433,r2/chat",
            ),
            ("DB_REPLICA_MAX_LAG", "0.5"),
            ("DB_REPLICA_WAIT", "0"),
            ("DB_POOL_SIZE", "7"),
        ])
        .unwrap();
        let replica = c.replica().unwrap();
        assert_eq!(
            replica.hosts(),
            &[("r1".to_string(), 5433), ("r2".to_string(), 5432)]
        );
        assert_eq!(
            replica.pool.size, 7,
            "the replicas' pools are sized like the primary's"
        );
        assert!(replica.replica().is_none());
        assert_eq!(c.replicas.max_lag, Duration::from_millis(500));
        assert_eq!(c.replicas.wait, Duration::ZERO);
        assert_eq!(c.hosts(), &[("primary".to_string(), 5432)]);
        for text in [format!("{c:?}"), replica.redacted_url(), format!("{replica:?}")] {
            assert!(!text.contains("secret-r"), "{text}");
        }
        assert!(format!("{c:?}").contains("@r1:5433,r2/chat"), "{c:?}");
    }

    #[test]
    fn password_never_printed() {
        let secret = "Pa55-never-print-me";
        let a = from(&[("DB_PASSWORD", secret)]).unwrap();
        let b = from(&[("DATABASE_URL", &format!("postgres://u:{secret}@h/db"))]).unwrap();
        let q = from(&[(
            "DATABASE_URL",
            &format!("postgres://u@h/db?sslmode=disable&password={secret}"),
        )])
        .unwrap();
        let builder = Config::builder().url(format!("postgres://u:{secret}@h:1/db"));
        for text in [
            format!("{a:?}"),
            format!("{a}"),
            format!("{b:?}"),
            format!("{b}"),
            format!("{q:?}"),
            format!("{q}"),
            format!("{builder:?}"),
            a.redacted_url(),
            b.with_database("other").redacted_url(),
            q.with_database("other").redacted_url(),
        ] {
            assert!(!text.contains(secret), "{text}");
        }
        // A URL broken after the password must not echo it either, in any form.
        for url in [
            format!("postgres://u:{secret}@h:notaport/db"),
            format!("postgres://u@h/db?password={secret}&sslmode=sometimes"),
            format!("postgres://u@h/db?password={secret}&port=notaport"),
        ] {
            let err = from(&[("DATABASE_URL", &url)]).unwrap_err();
            assert!(!format!("{err} {err:?}").contains(secret), "{err}");
        }
    }

    #[test]
    fn errors_name_the_setting_actually_used() {
        let by_url = from(&[("DATABASE_URL", "postgres://u:pw@h/db?password=qpw")]).unwrap();
        let by_parts = from(&[("DB_NAME", "x")]).unwrap();
        let missing = || Error::config("DB_NAME", "the database does not exist");
        let rejected = || Error::config("DB_USER / DB_PASSWORD", "password authentication failed (qpw)");
        assert!(matches!(by_url.explain(missing()), Error::Config { key, .. } if key == "DATABASE_URL"));
        assert!(matches!(by_parts.explain(missing()), Error::Config { key, .. } if key == "DB_NAME"));
        let explained = by_url.explain(rejected());
        assert!(matches!(&explained, Error::Config { key, .. } if key == "DATABASE_URL"));
        assert!(!explained.to_string().contains("qpw"), "{explained}");
        assert_eq!(
            by_parts.setting_for(ServerPart::Tls),
            "DB_SSLMODE / DB_SSLROOTCERT"
        );
    }

    #[test]
    fn with_database_keeps_credentials() {
        let c = from(&[("DATABASE_URL", "postgres://u:pw@h:1/one")]).unwrap();
        assert_eq!(c.with_database("two").database_name(), "two");
        let c = from(&[("DB_NAME", "one")]).unwrap();
        assert_eq!(c.with_database("two").database_name(), "two");
    }
}
