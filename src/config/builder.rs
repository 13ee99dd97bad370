//! [`ConfigBuilder`]: a [`Config`] built in code, and the range checks every source of
//! settings goes through.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use sqlx::postgres::PgSslMode;

use crate::config::audit::AuditKey;
use crate::config::hosts::{self, TargetSessionAttrs};
use crate::config::model::ModelConfig;
use crate::config::network::NetworkConfig;
use crate::config::settings::APP_MIGRATIONS_SETTING;
use crate::config::telegram::TelegramConfig;
use crate::config::urls::{self, readable_file};
use crate::config::whole::{Config, Server};
use crate::error::{Error, Result};

/// The largest `pool_size + max_overflow` botdb accepts.
const MAX_POOL_CONNECTIONS: u32 = 1_000;

/// Builds a [`Config`] in code; unset fields keep the reference's defaults.
#[derive(Clone)]
pub struct ConfigBuilder {
    config: Config,
    url: Option<String>,
    /// One port per host of a `DB_HOST` list (`DB_PORT=5432,5433`).
    ports: Option<Vec<u16>>,
    /// `target_session_attrs` set in code or by `DB_TARGET_SESSION_ATTRS`.
    attrs: Option<TargetSessionAttrs>,
    /// The replicas' URL (`DATABASE_REPLICA_URL`).
    replica_url: Option<String>,
}

impl Config {
    /// Starts a [`ConfigBuilder`] from the defaults.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::new()
    }
}

impl fmt::Debug for ConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigBuilder")
            .field("config", &self.config)
            .field("url", &self.url.as_ref().map(|_| "***"))
            .field("ports", &self.ports)
            .field("target_session_attrs", &self.attrs)
            .field("replica_url", &self.replica_url.as_ref().map(|_| "***"))
            .finish()
    }
}

/// A setter of one of the separate server fields (`DB_*`).
macro_rules! part_setter {
    ($(#[$doc:meta])* $name:ident, $field:ident, $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, value: impl Into<$ty>) -> Self {
            if let Server::Parts { $field, .. } = &mut self.config.server {
                *$field = value.into();
            }
            self.config.server_configured = true;
            self
        }
    };
}

/// A setter of a plain field.
macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty => $($path:ident).+) => {
        $(#[$doc])*
        pub fn $name(mut self, value: $ty) -> Self {
            self.config.$($path).+ = value;
            self
        }
    };
}

impl ConfigBuilder {
    pub(super) fn new() -> Self {
        ConfigBuilder {
            config: Config::default(),
            url: None,
            ports: None,
            attrs: None,
            replica_url: None,
        }
    }

    part_setter!(
        /// Server host (`DB_HOST`); several, tried in order, separated by commas
        /// (`h1,h2`).
        host, host, String
    );
    part_setter!(
        /// Server port (`DB_PORT`), of every host.
        port, port, u16
    );

    /// One port per host of a [`host`](Self::host) list, in the same order
    /// (`DB_PORT=5432,5433`); a single port is the port of every host.
    pub fn ports(mut self, ports: impl Into<Vec<u16>>) -> Self {
        let ports = ports.into();
        if let (Some(first), Server::Parts { port, .. }) = (ports.first(), &mut self.config.server) {
            *port = *first;
        }
        self.ports = Some(ports);
        self.config.server_configured = true;
        self
    }

    /// What a server must be for botdb to keep a connection to it
    /// (`DB_TARGET_SESSION_ATTRS`); a URL's `?target_session_attrs=` wins.
    pub fn target_session_attrs(mut self, attrs: TargetSessionAttrs) -> Self {
        self.attrs = Some(attrs);
        self
    }
    part_setter!(
        /// Database name (`DB_NAME`).
        database, name, String
    );
    part_setter!(
        /// User name (`DB_USER`).
        user, user, String
    );

    /// Password (`DB_PASSWORD`).
    pub fn password(mut self, value: impl Into<String>) -> Self {
        if let Server::Parts { password, .. } = &mut self.config.server {
            *password = SecretString::from(value.into());
        }
        self.config.server_configured = true;
        self
    }

    /// TLS mode for the separate fields (`DB_SSLMODE`: `disable`, `allow`, `prefer`,
    /// `require`, `verify-ca`, `verify-full`). A URL carries its own (`?sslmode=`).
    pub fn ssl_mode(mut self, mode: PgSslMode) -> Self {
        if let Server::Parts { ssl_mode, .. } = &mut self.config.server {
            *ssl_mode = Some(mode);
        }
        self.config.server_configured = true;
        self
    }

    /// The CA certificate (PEM file) that `verify-ca` / `verify-full` check the server
    /// against (`DB_SSLROOTCERT`).
    pub fn ssl_root_cert(mut self, path: impl Into<PathBuf>) -> Self {
        if let Server::Parts { ssl_root_cert, .. } = &mut self.config.server {
            *ssl_root_cert = Some(path.into());
        }
        self.config.server_configured = true;
        self
    }

    /// A full URL (`DATABASE_URL`), which wins over the separate fields. The reference's
    /// `postgresql+asyncpg://` scheme is accepted too.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self.config.server_configured = true;
        self
    }

    setter!(
        /// Connections kept open (`DB_POOL_SIZE`).
        pool_size: u32 => pool.size
    );
    setter!(
        /// Extra connections under load (`DB_MAX_OVERFLOW`).
        max_overflow: u32 => pool.max_overflow
    );
    setter!(
        /// Pre-ping on checkout (`DB_POOL_PRE_PING`).
        pre_ping: bool => pool.pre_ping
    );
    setter!(
        /// Only pre-ping connections idle at least this long (`DB_POOL_PRE_PING_IDLE`).
        pre_ping_idle: Duration => pool.pre_ping_idle
    );
    setter!(
        /// Connection recycle age (`DB_POOL_RECYCLE`); `None` never recycles.
        recycle: Option<Duration> => pool.recycle
    );
    setter!(
        /// Wait for a connection at most this long (`DB_POOL_TIMEOUT`).
        pool_timeout: Duration => pool.timeout
    );
    setter!(
        /// Close overflow connections idle this long (`DB_POOL_IDLE_TIMEOUT`).
        idle_timeout: Duration => pool.idle_timeout
    );
    setter!(
        /// `statement_timeout` of every connection (`DB_STATEMENT_TIMEOUT`); `None`: off.
        statement_timeout: Option<Duration> => timeouts.statement
    );
    setter!(
        /// `lock_timeout` of every connection (`DB_LOCK_TIMEOUT`); `None`: off.
        lock_timeout: Option<Duration> => timeouts.lock
    );
    setter!(
        /// `idle_in_transaction_session_timeout` of every connection
        /// (`DB_IDLE_IN_TRANSACTION_TIMEOUT`); `None`: off.
        idle_in_transaction_timeout: Option<Duration> => timeouts.idle_in_transaction
    );
    setter!(
        /// How long botdb waits for the server beyond the server's own limits
        /// (`DB_NETWORK_TIMEOUT`, see [`NetworkConfig::timeout`]).
        network_timeout: Duration => network.timeout
    );
    setter!(
        /// TCP keepalives and `TCP_USER_TIMEOUT` of every connection (`DB_KEEPALIVES*`,
        /// `DB_TCP_USER_TIMEOUT`; libpq's names in `DATABASE_URL` win over these).
        network: NetworkConfig => network
    );
    setter!(
        /// The longest a user's export may take (`BOTDB_EXPORT_TIMEOUT`).
        export_timeout: Duration => export_timeout
    );
    setter!(
        /// How long a request retries on locked rows (`BOTDB_LOCK_WAIT`).
        lock_wait: Duration => actors.lock_wait
    );
    setter!(
        /// Connections lock retries may hold at once (`BOTDB_LOCK_RETRY_CONNECTIONS`; 0: a
        /// quarter of the pool).
        lock_retry_connections: usize => actors.lock_retry_connections
    );
    setter!(
        /// Log every statement (`DB_ECHO`).
        echo: bool => echo
    );
    setter!(
        /// Longest message content, in characters (`DB_MAX_CONTENT_CHARS`).
        max_content_chars: usize => limits.max_content_chars
    );
    setter!(
        /// Longest system prompt, in characters.
        max_system_prompt_chars: usize => limits.max_system_prompt_chars
    );
    setter!(
        /// Most bytes of content one user's history read returns (`DB_MAX_HISTORY_BYTES`).
        max_history_bytes: usize => limits.max_history_bytes
    );
    setter!(
        /// The model's context budget in characters (`DB_CONTEXT_MAX_CHARS`).
        context_max_chars: usize => limits.context_max_chars
    );
    setter!(
        /// Requests one actor holds at most before Overloaded (`BOTDB_MAX_PENDING`).
        max_pending: usize => actors.max_pending
    );
    setter!(
        /// Requests one user may hold in one actor (`BOTDB_MAX_PENDING_PER_USER`).
        max_pending_per_user: usize => actors.max_pending_per_user
    );
    setter!(
        /// Largest batch of ready requests run as one statement (`BOTDB_BATCH_MAX`; 1: off).
        batch_max: usize => actors.batch_max
    );
    setter!(
        /// Batches of one request type running at once per actor (`BOTDB_BATCH_IN_FLIGHT`).
        batch_in_flight: usize => actors.batch_in_flight
    );
    setter!(
        /// How long a batch may wait to fill (`BOTDB_BATCH_WAIT_MS`).
        batch_wait: Duration => actors.batch_wait
    );
    setter!(
        /// How long Shutdown waits for accepted requests (`BOTDB_DRAIN_TIMEOUT`).
        drain_timeout: Duration => actors.drain_timeout
    );
    setter!(
        /// `lock_timeout` of each migration (`BOTDB_MIGRATE_LOCK_TIMEOUT`).
        migrate_lock_timeout: Duration => migrate.lock_timeout
    );
    setter!(
        /// Tries of a migration that timed out on a lock (`BOTDB_MIGRATE_ATTEMPTS`).
        migrate_attempts: u32 => migrate.attempts
    );

    /// The application's own migrations directory (`BOTDB_APP_MIGRATIONS`): sqlx
    /// migration files, applied after botdb's by [`Database::migrate`](crate::Database::migrate)
    /// and the `botdb` verbs, recorded in their own table (`_app_migrations`).
    pub fn app_migrations(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.app_migrations = Some(dir.into());
        self
    }

    /// The key of erasures' audit rows (`BOTDB_AUDIT_KEY`); without one, users cannot
    /// be erased.
    pub fn audit_key(mut self, key: AuditKey) -> Self {
        self.config.audit_key = Some(key);
        self
    }

    /// The language model the bot asks (`BOTDB_MODEL_*`), checked by
    /// [`build`](Self::build) ([`ModelConfig::check`]).
    pub fn model(mut self, model: ModelConfig) -> Self {
        self.config.model = model;
        self
    }

    /// `application_name` reported to the server.
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.config.application_name = name.into();
        self
    }

    /// The replicas that `GetHistory`, `GetSettings` and `GetContext` may read from
    /// (`DATABASE_REPLICA_URL`): one host or several in libpq's form
    /// (`postgres://user:pw@replica1:5432,replica2:5432/db`). Each is used only once it
    /// has replayed the reading user's own last write and while it lags at most
    /// [`replica_max_lag`](Self::replica_max_lag).
    pub fn replica_url(mut self, url: impl Into<String>) -> Self {
        self.replica_url = Some(url.into());
        self
    }

    setter!(
        /// A replica lagging more than this is skipped (`DB_REPLICA_MAX_LAG`).
        replica_max_lag: Duration => replicas.max_lag
    );
    setter!(
        /// How long a read waits for a replica to replay the user's own last write
        /// before reading from the primary (`DB_REPLICA_WAIT`).
        replica_wait: Duration => replicas.wait
    );

    /// How Telegram's Bot API is reached (`TELEGRAM_BOT_TOKEN`, `TELEGRAM_API_URL`,
    /// `BOTDB_TELEGRAM_TIMEOUT`, `BOTDB_SEND_*`); checked by [`build`](Self::build).
    pub fn telegram(mut self, telegram: TelegramConfig) -> Self {
        self.config.telegram = telegram;
        self
    }

    /// Checks every value and returns the [`Config`].
    ///
    /// # Errors
    /// [`Error::Config`] naming the setting that is out of range or the URL that does
    /// not parse (the URL itself is never repeated in the message).
    pub fn build(self) -> Result<Config> {
        let mut config = self.config;
        config.target_session_attrs = self.attrs.unwrap_or_default();
        if let Some(url) = self.url {
            let url = urls::normalize_scheme(&url);
            // The host list is taken out first: the url crate cannot parse it.
            let split = hosts::split_url(&url)?;
            // Parse now so that a broken URL fails at configuration time.
            let options = urls::parse_url(&split.first)?;
            for (key, value) in urls::network_params(&split.first) {
                config
                    .network
                    .apply_url_param(&key, &value)
                    .map_err(|message| Error::config("DATABASE_URL", message))?;
            }
            config.hosts = if split.hosts.is_empty() {
                vec![(options.get_host().to_string(), options.get_port())]
            } else {
                split.hosts
            };
            if let Some(attrs) = split.attrs {
                config.target_session_attrs = attrs;
            }
            let display = hosts::map_single(&url, urls::redact_url);
            config.server = Server::Url {
                url: SecretString::from(split.first),
                display,
            };
        } else if let Server::Parts { host, port, .. } = &mut config.server {
            let ports = self.ports.unwrap_or_else(|| vec![*port]);
            let list = hosts::parse_parts(host, &ports)?;
            if let Some((first, first_port)) = list.first() {
                *host = first.clone();
                *port = *first_port;
            }
            config.hosts = list;
        }
        if let Some(url) = self.replica_url {
            // Parsed like DATABASE_URL; its errors name the replicas' setting.
            let replica = Config::builder().url(url).build().map_err(|e| match e {
                Error::Config { message, .. } => Error::config("DATABASE_REPLICA_URL", message),
                other => other,
            })?;
            config.replicas.server = Some(Box::new(replica));
        }
        check(&config)?;
        config.telegram.check()?;
        Ok(config)
    }
}

/// `value` within `range`, else an error naming `key`.
fn within<T: PartialOrd + fmt::Display + Copy>(
    key: &'static str,
    value: T,
    range: std::ops::RangeInclusive<T>,
    unit: &str,
) -> Result<()> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(Error::config(
            key,
            format!(
                "expected from {} to {} {unit}, got {value}",
                range.start(),
                range.end()
            ),
        ))
    }
}

fn positive(key: &'static str, value: Duration) -> Result<()> {
    if value.is_zero() {
        Err(Error::config(key, "expected more than 0 seconds"))
    } else {
        Ok(())
    }
}

fn check(config: &Config) -> Result<()> {
    let pool = &config.pool;
    within("DB_POOL_SIZE", pool.size, 1..=MAX_POOL_CONNECTIONS, "connections")?;
    within(
        "DB_MAX_OVERFLOW",
        pool.max_connections(),
        1..=MAX_POOL_CONNECTIONS,
        "connections (DB_POOL_SIZE + DB_MAX_OVERFLOW)",
    )?;
    positive("DB_POOL_TIMEOUT", pool.timeout)?;
    positive("DB_NETWORK_TIMEOUT", config.network.timeout)?;
    let net = &config.network;
    positive("DB_KEEPALIVES_IDLE", net.keepalives_idle)?;
    positive("DB_KEEPALIVES_INTERVAL", net.keepalives_interval)?;
    within("DB_KEEPALIVES_COUNT", net.keepalives_count, 1..=127, "probes")?;
    positive("DB_POOL_IDLE_TIMEOUT", pool.idle_timeout)?;
    if pool.recycle.is_some_and(|d| d.is_zero()) {
        return Err(Error::config(
            "DB_POOL_RECYCLE",
            "expected more than 0 seconds, or never",
        ));
    }
    let limits = &config.limits;
    within(
        "DB_MAX_CONTENT_CHARS",
        limits.max_content_chars,
        1..=10_000_000,
        "characters",
    )?;
    within(
        "max_system_prompt_chars",
        limits.max_system_prompt_chars,
        1..=10_000_000,
        "characters",
    )?;
    within(
        "DB_MAX_HISTORY_BYTES",
        limits.max_history_bytes,
        1024..=1 << 30,
        "bytes",
    )?;
    within(
        "DB_CONTEXT_MAX_CHARS",
        limits.context_max_chars,
        1..=100_000_000,
        "characters",
    )?;
    for (key, limit) in [
        ("DB_STATEMENT_TIMEOUT", config.timeouts.statement),
        ("DB_LOCK_TIMEOUT", config.timeouts.lock),
        (
            "DB_IDLE_IN_TRANSACTION_TIMEOUT",
            config.timeouts.idle_in_transaction,
        ),
    ] {
        if limit.is_some_and(|d| d < Duration::from_millis(1) || d > Duration::from_secs(86_400 * 24)) {
            return Err(Error::config(
                key,
                "expected from 0.001 to 2073600 seconds, or 0 for no limit",
            ));
        }
    }
    // The export hands it to PostgreSQL as its own statement and idle limits (whole
    // milliseconds, at most 2^31 - 1).
    if config.export_timeout < Duration::from_millis(1)
        || config.export_timeout > Duration::from_secs(86_400 * 24)
    {
        return Err(Error::config(
            "BOTDB_EXPORT_TIMEOUT",
            "expected from 0.001 to 2073600 seconds",
        ));
    }
    let replicas = &config.replicas;
    if replicas.max_lag > Duration::from_secs(86_400) {
        return Err(Error::config(
            "DB_REPLICA_MAX_LAG",
            "expected from 0 to 86400 seconds",
        ));
    }
    if replicas.wait > Duration::from_secs(60) {
        return Err(Error::config("DB_REPLICA_WAIT", "expected from 0 to 60 seconds"));
    }
    let actors = &config.actors;
    within(
        "BOTDB_MAX_PENDING",
        actors.max_pending,
        1..=10_000_000,
        "requests",
    )?;
    within(
        "BOTDB_MAX_PENDING_PER_USER",
        actors.max_pending_per_user,
        1..=actors.max_pending,
        "requests (at most BOTDB_MAX_PENDING)",
    )?;
    within("BOTDB_BATCH_MAX", actors.batch_max, 1..=10_000, "requests")?;
    within(
        "BOTDB_BATCH_IN_FLIGHT",
        actors.batch_in_flight,
        1..=1000,
        "batches",
    )?;
    positive("BOTDB_DRAIN_TIMEOUT", actors.drain_timeout)?;
    within(
        "BOTDB_LOCK_RETRY_CONNECTIONS",
        actors.lock_retry_connections,
        0..=pool.max_connections() as usize,
        "connections (0: a quarter of the pool, at most DB_POOL_SIZE + DB_MAX_OVERFLOW)",
    )?;
    if config.migrate.lock_timeout < Duration::from_millis(1) {
        return Err(Error::config(
            "BOTDB_MIGRATE_LOCK_TIMEOUT",
            "expected at least 0.001 seconds (0 would wait forever)",
        ));
    }
    within(
        "BOTDB_MIGRATE_ATTEMPTS",
        config.migrate.attempts,
        1..=1000,
        "attempts",
    )?;
    if let Server::Parts {
        ssl_root_cert: Some(cert),
        ..
    } = &config.server
    {
        readable_file("DB_SSLROOTCERT", "the CA certificate", cert)?;
    }
    if let Some(dir) = &config.app_migrations
        && !dir.is_dir()
    {
        return Err(Error::config(
            APP_MIGRATIONS_SETTING,
            format!(
                "the application's migrations directory {} does not exist or is not a directory",
                dir.display()
            ),
        ));
    }
    config.model.check()?;
    if let Server::Parts { .. } = config.server
        && config.hosts.iter().any(|(_, port)| *port == 0)
    {
        return Err(Error::config(
            "DB_PORT",
            "expected a port number from 1 to 65535, got 0",
        ));
    }
    Ok(())
}
