//! Configuration: one typed struct, loaded once.
//!
//! Sources, highest priority first: the process environment, a `.env` file in the
//! working directory (read, never written into the environment), then the reference
//! design's defaults. Code builds a [`Config`] with [`Config::builder`]. The password is
//! a [`SecretString`]: it never appears in `Debug`, `Display`, logs or errors.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;

use crate::error::{Error, Result};

/// The largest `pool_size + max_overflow` botdb accepts.
const MAX_POOL_CONNECTIONS: u32 = 1_000;

/// Every environment variable botdb reads, with its default (for docs and `--help`).
pub const ENV_VARS: &[(&str, &str, &str)] = &[
    (
        "DATABASE_URL",
        "(unset)",
        "postgres://user:password@host:port/dbname; wins over DB_*",
    ),
    ("DB_HOST", "localhost", "server host"),
    ("DB_PORT", "5432", "server port"),
    ("DB_NAME", "ai_tg_bot", "database name"),
    ("DB_USER", "postgres", "user name"),
    ("DB_PASSWORD", "(empty)", "password (never printed)"),
    ("DB_POOL_SIZE", "5", "connections kept open"),
    ("DB_MAX_OVERFLOW", "10", "extra connections under load"),
    (
        "DB_POOL_PRE_PING",
        "true",
        "check a connection before handing it out",
    ),
    (
        "DB_POOL_PRE_PING_IDLE",
        "0.5",
        "only ping connections idle at least this many seconds (0: every checkout)",
    ),
    (
        "DB_POOL_RECYCLE",
        "3600",
        "replace connections older than this many seconds (-1: never)",
    ),
    (
        "DB_POOL_TIMEOUT",
        "30",
        "seconds to wait for a connection before Unavailable",
    ),
    (
        "DB_POOL_IDLE_TIMEOUT",
        "60",
        "close overflow connections idle this many seconds",
    ),
    (
        "DB_ECHO",
        "false",
        "log every SQL statement (tracing target sqlx::query)",
    ),
    (
        "DB_MAX_CONTENT_CHARS",
        "65536",
        "longest message content accepted, in characters",
    ),
    (
        "BOTDB_MAX_PENDING",
        "10000",
        "requests an actor holds (queued + running) before Overloaded",
    ),
    (
        "BOTDB_DRAIN_TIMEOUT",
        "30",
        "seconds Shutdown waits for accepted requests to finish",
    ),
    (
        "BOTDB_BATCH_MAX",
        "64",
        "requests of different users run as one statement (group commit); 1: off",
    ),
    (
        "BOTDB_BATCH_IN_FLIGHT",
        "2",
        "batches of one request type running at once per actor",
    ),
    (
        "BOTDB_BATCH_WAIT_MS",
        "0",
        "wait this long for a batch to fill (0: batch only what is already queued)",
    ),
];

/// Settings of the actor layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActorConfig {
    /// Requests one table actor holds at most (waiting in its per-user queues plus
    /// running); past it a request fails at once with
    /// [`Error::Overloaded`](crate::Error::Overloaded).
    pub max_pending: usize,
    /// How long Shutdown waits for accepted requests to finish before it closes the pool
    /// anyway (and reports the stragglers).
    pub drain_timeout: Duration,
    /// At most this many ready requests of one type (different users) run as one
    /// statement or transaction: group commit for appends, one round trip for reads.
    /// 1 turns batching off.
    pub batch_max: usize,
    /// How long a batch may wait to fill. Zero (the default): batch only what is
    /// already queued, so an idle system adds no latency.
    pub batch_wait: Duration,
    /// At most this many batches of one request type run at once per actor; ready
    /// requests of that type gather for the next batch meanwhile.
    pub batch_in_flight: usize,
}

impl Default for ActorConfig {
    fn default() -> Self {
        ActorConfig {
            max_pending: 10_000,
            drain_timeout: Duration::from_secs(30),
            batch_max: 64,
            batch_wait: Duration::ZERO,
            batch_in_flight: 2,
        }
    }
}

/// Pool settings, named as in the reference (SQLAlchemy's `create_async_engine`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Connections kept open permanently (`pool_size`, sqlx's `min_connections`).
    pub size: u32,
    /// Extra connections opened under load and closed again when idle (`max_overflow`).
    pub max_overflow: u32,
    /// Check a pooled connection for life before handing it out (`pool_pre_ping`).
    pub pre_ping: bool,
    /// With `pre_ping`, only connections idle at least this long are pinged; zero pings
    /// every checkout, as the reference does. The default, 500 ms (HikariCP's
    /// `aliveBypassWindowMs`), checks every connection that sat idle, and none of those
    /// a busy system hands from one request to the next: under load the check costs no
    /// round trip.
    pub pre_ping_idle: Duration,
    /// Replace connections older than this (`pool_recycle`); `None` never recycles.
    pub recycle: Option<Duration>,
    /// How long a caller waits for a connection before [`Error::Unavailable`]
    /// (`pool_timeout`). Also bounds connecting to a server that is down.
    pub timeout: Duration,
    /// How long an idle connection beyond `size` stays open.
    pub idle_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            size: 5,
            max_overflow: 10,
            pre_ping: true,
            pre_ping_idle: Duration::from_millis(500),
            recycle: Some(Duration::from_secs(3600)),
            timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

impl PoolConfig {
    /// The most connections the pool opens: `size + max_overflow`.
    pub fn max_connections(&self) -> u32 {
        self.size + self.max_overflow
    }
}

/// Size limits applied to text before it reaches the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest message content accepted, in characters (Unicode scalar values, the unit
    /// of `content_length`).
    pub max_content_chars: usize,
    /// Longest system prompt accepted, in characters.
    pub max_system_prompt_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_content_chars: 65_536,
            max_system_prompt_chars: 16_384,
        }
    }
}

/// Where the server is: a URL, or the reference's separate fields.
#[derive(Clone)]
enum Server {
    Url {
        url: SecretString,
        display: String,
    },
    Parts {
        host: String,
        port: u16,
        name: String,
        user: String,
        password: SecretString,
    },
}

/// botdb's configuration. Build it with [`Config::from_env`] or [`Config::builder`].
#[derive(Clone)]
pub struct Config {
    server: Server,
    /// `true` when neither `DATABASE_URL` nor `DB_HOST` was given: the commands that can
    /// run on a throwaway embedded server (`demo`, `serve`) then start one.
    server_is_default: bool,
    /// Pool settings.
    pub pool: PoolConfig,
    /// Log every SQL statement through `tracing` (`echo`).
    pub echo: bool,
    /// Text size limits.
    pub limits: Limits,
    /// Actor layer settings.
    pub actors: ActorConfig,
    /// `application_name` reported to PostgreSQL (visible in `pg_stat_activity`).
    pub application_name: String,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("server", &self.redacted_url())
            .field("pool", &self.pool)
            .field("echo", &self.echo)
            .field("limits", &self.limits)
            .field("actors", &self.actors)
            .field("application_name", &self.application_name)
            .finish()
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (pool {}+{}, pre_ping {}, recycle {}, timeout {:?})",
            self.redacted_url(),
            self.pool.size,
            self.pool.max_overflow,
            self.pool.pre_ping,
            self.pool
                .recycle
                .map_or_else(|| "never".to_string(), |d| format!("{}s", d.as_secs())),
            self.pool.timeout
        )
    }
}

impl Default for Config {
    /// The reference's defaults: `postgres@localhost:5432/ai_tg_bot`, pool 5 + 10.
    fn default() -> Self {
        Config {
            server: Server::Parts {
                host: "localhost".into(),
                port: 5432,
                name: "ai_tg_bot".into(),
                user: "postgres".into(),
                password: SecretString::from(String::new()),
            },
            server_is_default: true,
            pool: PoolConfig::default(),
            echo: false,
            limits: Limits::default(),
            actors: ActorConfig::default(),
            application_name: "botdb".into(),
        }
    }
}

impl Config {
    /// Starts a [`ConfigBuilder`] from the defaults.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder {
            config: Config::default(),
            url: None,
        }
    }

    /// Reads the configuration from the environment and, for variables not set there,
    /// from a `.env` file in the working directory if one exists.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first variable whose value is malformed, with the
    /// form expected. A malformed `.env` file is an error too.
    pub fn from_env() -> Result<Self> {
        let dotenv = read_dotenv()?;
        Self::from_lookup(|key| std::env::var(key).ok().or_else(|| dotenv.get(key).cloned()))
    }

    /// Reads the configuration from `lookup` (a variable name to its value), the way
    /// [`Config::from_env`] reads the environment. Tests use it with a map.
    ///
    /// # Errors
    /// As [`Config::from_env`].
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |key: &str| lookup(key).filter(|v| !v.trim().is_empty());
        let mut b = Config::builder();
        if let Some(url) = get("DATABASE_URL") {
            b = b.url(url);
        } else {
            if let Some(host) = get("DB_HOST") {
                b = b.host(host);
            }
            if let Some(port) = get("DB_PORT") {
                b = b.port(parse_env(
                    "DB_PORT",
                    &port,
                    "a port number from 1 to 65535",
                    |v| v.parse::<u16>().ok().filter(|p| *p > 0),
                )?);
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
        }
        let explicit = get("DATABASE_URL").is_some() || get("DB_HOST").is_some();
        if let Some(v) = get("DB_POOL_SIZE") {
            b = b.pool_size(parse_env(
                "DB_POOL_SIZE",
                &v,
                "a whole number from 1 to 1000",
                |v| v.parse().ok(),
            )?);
        }
        if let Some(v) = get("DB_MAX_OVERFLOW") {
            b = b.max_overflow(parse_env(
                "DB_MAX_OVERFLOW",
                &v,
                "a whole number from 0 to 999",
                |v| v.parse().ok(),
            )?);
        }
        if let Some(v) = get("DB_POOL_PRE_PING") {
            b = b.pre_ping(parse_env("DB_POOL_PRE_PING", &v, "true or false", parse_bool)?);
        }
        if let Some(v) = get("DB_POOL_PRE_PING_IDLE") {
            b = b.pre_ping_idle(parse_env(
                "DB_POOL_PRE_PING_IDLE",
                &v,
                "seconds (0 or more)",
                parse_secs,
            )?);
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
        if let Some(v) = get("DB_POOL_TIMEOUT") {
            b = b.pool_timeout(parse_env("DB_POOL_TIMEOUT", &v, "seconds (more than 0)", |v| {
                parse_secs(v).filter(|d| !d.is_zero())
            })?);
        }
        if let Some(v) = get("DB_POOL_IDLE_TIMEOUT") {
            b = b.idle_timeout(parse_env(
                "DB_POOL_IDLE_TIMEOUT",
                &v,
                "seconds (more than 0)",
                |v| parse_secs(v).filter(|d| !d.is_zero()),
            )?);
        }
        if let Some(v) = get("DB_ECHO") {
            b = b.echo(parse_env("DB_ECHO", &v, "true or false", parse_bool)?);
        }
        if let Some(v) = get("DB_MAX_CONTENT_CHARS") {
            b = b.max_content_chars(parse_env(
                "DB_MAX_CONTENT_CHARS",
                &v,
                "a whole number of characters from 1 to 10000000",
                |v| v.parse().ok(),
            )?);
        }
        if let Some(v) = get("BOTDB_MAX_PENDING") {
            b = b.max_pending(parse_env(
                "BOTDB_MAX_PENDING",
                &v,
                "a whole number of requests from 1 to 10000000",
                |v| v.parse().ok(),
            )?);
        }
        if let Some(v) = get("BOTDB_BATCH_MAX") {
            b = b.batch_max(parse_env(
                "BOTDB_BATCH_MAX",
                &v,
                "a whole number from 1 to 10000",
                |v| v.parse().ok(),
            )?);
        }
        if let Some(v) = get("BOTDB_BATCH_IN_FLIGHT") {
            b = b.batch_in_flight(parse_env(
                "BOTDB_BATCH_IN_FLIGHT",
                &v,
                "a whole number from 1 to 1000",
                |v| v.parse().ok().filter(|n| (1..=1000).contains(n)),
            )?);
        }
        if let Some(v) = get("BOTDB_BATCH_WAIT_MS") {
            b = b.batch_wait(parse_env(
                "BOTDB_BATCH_WAIT_MS",
                &v,
                "milliseconds from 0 to 1000",
                |v| {
                    v.parse::<u64>()
                        .ok()
                        .filter(|ms| *ms <= 1000)
                        .map(Duration::from_millis)
                },
            )?);
        }
        if let Some(v) = get("BOTDB_DRAIN_TIMEOUT") {
            b = b.drain_timeout(parse_env(
                "BOTDB_DRAIN_TIMEOUT",
                &v,
                "seconds (more than 0)",
                |v| parse_secs(v).filter(|d| !d.is_zero()),
            )?);
        }
        let mut config = b.build()?;
        config.server_is_default = !explicit;
        Ok(config)
    }

    /// `true` when neither `DATABASE_URL` nor `DB_HOST` was set.
    pub fn server_is_default(&self) -> bool {
        self.server_is_default
    }

    /// The server's URL with the password replaced by `***` (safe to print).
    pub fn redacted_url(&self) -> String {
        match &self.server {
            Server::Url { display, .. } => display.clone(),
            Server::Parts {
                host,
                port,
                name,
                user,
                password,
            } => {
                let pw = if password.expose_secret().is_empty() {
                    ""
                } else {
                    ":***"
                };
                format!("postgres://{user}{pw}@{host}:{port}/{name}")
            }
        }
    }

    /// The database name this configuration points at.
    pub fn database_name(&self) -> String {
        match &self.server {
            Server::Url { .. } => self
                .connect_options()
                .ok()
                .and_then(|o| o.get_database().map(str::to_owned))
                .unwrap_or_default(),
            Server::Parts { name, .. } => name.clone(),
        }
    }

    /// A copy of this configuration pointing at another database on the same server
    /// (tests and `botdb check` use it for scratch databases).
    pub fn with_database(&self, database: &str) -> Config {
        let mut config = self.clone();
        match &mut config.server {
            Server::Url { url, display } => {
                if let Ok(mut parsed) = url::Url::parse(url.expose_secret()) {
                    parsed.set_path(database);
                    *url = SecretString::from(parsed.to_string());
                    if let Ok(mut shown) = url::Url::parse(display) {
                        shown.set_path(database);
                        *display = shown.to_string();
                    }
                }
            }
            Server::Parts { name, .. } => *name = database.to_string(),
        }
        config
    }

    /// A copy of this configuration with the server part of `other` (URL or host, port,
    /// name, user, password) and this one's pool and limits.
    pub fn with_server_of(&self, other: &Config) -> Config {
        Config {
            server: other.server.clone(),
            server_is_default: other.server_is_default,
            ..self.clone()
        }
    }

    /// The driver's connect options (host, credentials, statement logging).
    ///
    /// # Errors
    /// [`Error::Config`] when the URL cannot be parsed; the message never contains it.
    pub fn connect_options(&self) -> Result<PgConnectOptions> {
        let options = match &self.server {
            Server::Url { url, .. } => parse_url(url.expose_secret())?,
            Server::Parts {
                host,
                port,
                name,
                user,
                password,
            } => {
                let mut o = PgConnectOptions::new_without_pgpass()
                    .host(host)
                    .port(*port)
                    .username(user)
                    .database(name);
                if !password.expose_secret().is_empty() {
                    o = o.password(password.expose_secret());
                }
                o
            }
        };
        let options = options.application_name(&self.application_name);
        Ok(if self.echo {
            options.log_statements(log::LevelFilter::Info)
        } else {
            options
                .log_statements(log::LevelFilter::Off)
                .log_slow_statements(log::LevelFilter::Warn, Duration::from_secs(1))
        })
    }
}

/// Builds a [`Config`] in code; unset fields keep the reference's defaults.
#[derive(Clone)]
pub struct ConfigBuilder {
    config: Config,
    url: Option<String>,
}

impl fmt::Debug for ConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigBuilder")
            .field("config", &self.config)
            .field("url", &self.url.as_ref().map(|_| "***"))
            .finish()
    }
}

macro_rules! part_setter {
    ($(#[$doc:meta])* $name:ident, $field:ident, $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, value: impl Into<$ty>) -> Self {
            if let Server::Parts { $field, .. } = &mut self.config.server {
                *$field = value.into();
            }
            self.config.server_is_default = false;
            self
        }
    };
}

impl ConfigBuilder {
    part_setter!(
        /// Server host (`DB_HOST`).
        host, host, String
    );
    part_setter!(
        /// Server port (`DB_PORT`).
        port, port, u16
    );
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
        self
    }

    /// A full URL (`DATABASE_URL`), which wins over the separate fields. The reference's
    /// `postgresql+asyncpg://` scheme is accepted too.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self.config.server_is_default = false;
        self
    }

    /// Connections kept open (`DB_POOL_SIZE`).
    pub fn pool_size(mut self, size: u32) -> Self {
        self.config.pool.size = size;
        self
    }

    /// Extra connections under load (`DB_MAX_OVERFLOW`).
    pub fn max_overflow(mut self, overflow: u32) -> Self {
        self.config.pool.max_overflow = overflow;
        self
    }

    /// Pre-ping on checkout (`DB_POOL_PRE_PING`).
    pub fn pre_ping(mut self, on: bool) -> Self {
        self.config.pool.pre_ping = on;
        self
    }

    /// Only pre-ping connections idle at least this long (`DB_POOL_PRE_PING_IDLE`).
    pub fn pre_ping_idle(mut self, idle: Duration) -> Self {
        self.config.pool.pre_ping_idle = idle;
        self
    }

    /// Connection recycle age (`DB_POOL_RECYCLE`); `None` never recycles.
    pub fn recycle(mut self, age: Option<Duration>) -> Self {
        self.config.pool.recycle = age;
        self
    }

    /// Wait for a connection at most this long (`DB_POOL_TIMEOUT`).
    pub fn pool_timeout(mut self, timeout: Duration) -> Self {
        self.config.pool.timeout = timeout;
        self
    }

    /// Close overflow connections idle this long (`DB_POOL_IDLE_TIMEOUT`).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.pool.idle_timeout = timeout;
        self
    }

    /// Log every statement (`DB_ECHO`).
    pub fn echo(mut self, on: bool) -> Self {
        self.config.echo = on;
        self
    }

    /// Longest message content, in characters (`DB_MAX_CONTENT_CHARS`).
    pub fn max_content_chars(mut self, chars: usize) -> Self {
        self.config.limits.max_content_chars = chars;
        self
    }

    /// Longest system prompt, in characters.
    pub fn max_system_prompt_chars(mut self, chars: usize) -> Self {
        self.config.limits.max_system_prompt_chars = chars;
        self
    }

    /// Requests one actor holds at most before Overloaded (`BOTDB_MAX_PENDING`).
    pub fn max_pending(mut self, n: usize) -> Self {
        self.config.actors.max_pending = n;
        self
    }

    /// Largest batch of ready requests run as one statement (`BOTDB_BATCH_MAX`; 1: off).
    pub fn batch_max(mut self, n: usize) -> Self {
        self.config.actors.batch_max = n;
        self
    }

    /// Batches of one request type running at once per actor (`BOTDB_BATCH_IN_FLIGHT`).
    pub fn batch_in_flight(mut self, n: usize) -> Self {
        self.config.actors.batch_in_flight = n;
        self
    }

    /// How long a batch may wait to fill (`BOTDB_BATCH_WAIT_MS`).
    pub fn batch_wait(mut self, wait: Duration) -> Self {
        self.config.actors.batch_wait = wait;
        self
    }

    /// How long Shutdown waits for accepted requests (`BOTDB_DRAIN_TIMEOUT`).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.config.actors.drain_timeout = timeout;
        self
    }

    /// `application_name` reported to the server.
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.config.application_name = name.into();
        self
    }

    /// Checks every value and returns the [`Config`].
    ///
    /// # Errors
    /// [`Error::Config`] naming the setting that is out of range or the URL that does
    /// not parse (the URL itself is never repeated in the message).
    pub fn build(self) -> Result<Config> {
        let mut config = self.config;
        if let Some(url) = self.url {
            let url = normalize_scheme(&url);
            // Parse now so that a broken URL fails at configuration time.
            let _ = parse_url(&url)?;
            let display = redact_url(&url);
            config.server = Server::Url {
                url: SecretString::from(url),
                display,
            };
        }
        let pool = &config.pool;
        if pool.size == 0 || pool.size > MAX_POOL_CONNECTIONS {
            return Err(Error::config(
                "DB_POOL_SIZE",
                format!(
                    "expected a whole number from 1 to {MAX_POOL_CONNECTIONS}, got {}",
                    pool.size
                ),
            ));
        }
        if pool.max_connections() > MAX_POOL_CONNECTIONS {
            return Err(Error::config(
                "DB_MAX_OVERFLOW",
                format!(
                    "expected DB_POOL_SIZE + DB_MAX_OVERFLOW <= {MAX_POOL_CONNECTIONS}, got {}",
                    pool.max_connections()
                ),
            ));
        }
        if pool.timeout.is_zero() {
            return Err(Error::config("DB_POOL_TIMEOUT", "expected more than 0 seconds"));
        }
        if pool.idle_timeout.is_zero() {
            return Err(Error::config(
                "DB_POOL_IDLE_TIMEOUT",
                "expected more than 0 seconds",
            ));
        }
        if pool.recycle.is_some_and(|d| d.is_zero()) {
            return Err(Error::config(
                "DB_POOL_RECYCLE",
                "expected more than 0 seconds, or never",
            ));
        }
        let limits = &config.limits;
        if limits.max_content_chars == 0 || limits.max_content_chars > 10_000_000 {
            return Err(Error::config(
                "DB_MAX_CONTENT_CHARS",
                format!(
                    "expected 1 to 10000000 characters, got {}",
                    limits.max_content_chars
                ),
            ));
        }
        if limits.max_system_prompt_chars == 0 {
            return Err(Error::config(
                "max_system_prompt_chars",
                "expected at least 1 character",
            ));
        }
        if config.actors.max_pending == 0 || config.actors.max_pending > 10_000_000 {
            return Err(Error::config(
                "BOTDB_MAX_PENDING",
                format!(
                    "expected 1 to 10000000 requests, got {}",
                    config.actors.max_pending
                ),
            ));
        }
        if config.actors.batch_max == 0 || config.actors.batch_max > 10_000 {
            return Err(Error::config(
                "BOTDB_BATCH_MAX",
                format!(
                    "expected a whole number from 1 to 10000, got {}",
                    config.actors.batch_max
                ),
            ));
        }
        if config.actors.batch_in_flight == 0 || config.actors.batch_in_flight > 1000 {
            return Err(Error::config(
                "BOTDB_BATCH_IN_FLIGHT",
                format!(
                    "expected a whole number from 1 to 1000, got {}",
                    config.actors.batch_in_flight
                ),
            ));
        }
        if config.actors.drain_timeout.is_zero() {
            return Err(Error::config(
                "BOTDB_DRAIN_TIMEOUT",
                "expected more than 0 seconds",
            ));
        }
        if let Server::Parts { port: 0, .. } = config.server {
            return Err(Error::config(
                "DB_PORT",
                "expected a port number from 1 to 65535, got 0",
            ));
        }
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

/// Accepts the reference's SQLAlchemy scheme (`postgresql+asyncpg://`) as `postgresql://`.
fn normalize_scheme(url: &str) -> String {
    for prefix in [
        "postgresql+asyncpg://",
        "postgresql+psycopg://",
        "postgresql+psycopg2://",
    ] {
        if let Some(rest) = url.strip_prefix(prefix) {
            return format!("postgresql://{rest}");
        }
    }
    url.to_string()
}

const URL_FORM: &str = "postgres://user:password@host:port/dbname";

fn parse_url(url: &str) -> Result<PgConnectOptions> {
    let parsed = url::Url::parse(url)
        .map_err(|e| Error::config("DATABASE_URL", format!("expected {URL_FORM}: {e}")))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(Error::config(
            "DATABASE_URL",
            format!("expected {URL_FORM}: unsupported scheme {:?}", parsed.scheme()),
        ));
    }
    PgConnectOptions::from_str(url).map_err(|e| {
        let mut message = e.to_string();
        if let Some(pw) = parsed.password().filter(|p| !p.is_empty()) {
            message = message.replace(pw, "***");
        }
        Error::config("DATABASE_URL", format!("expected {URL_FORM}: {message}"))
    })
}

fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "(unparsable URL)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(c.server_is_default());
    }

    #[test]
    fn parts_and_pool_settings_are_read() {
        let c = from(&[
            ("DB_HOST", "db.internal"),
            ("DB_PORT", "6543"),
            ("DB_NAME", "bot"),
            ("DB_USER", "app"),
            ("DB_PASSWORD", "s3cret-pw"),
            ("DB_POOL_SIZE", "7"),
            ("DB_MAX_OVERFLOW", "3"),
            ("DB_POOL_PRE_PING", "off"),
            ("DB_POOL_RECYCLE", "-1"),
            ("DB_POOL_TIMEOUT", "2.5"),
            ("DB_ECHO", "yes"),
        ])
        .unwrap();
        assert_eq!(c.redacted_url(), "postgres://app:***@db.internal:6543/bot");
        assert_eq!(c.pool.max_connections(), 10);
        assert!(!c.pool.pre_ping);
        assert_eq!(c.pool.recycle, None);
        assert_eq!(c.pool.timeout, Duration::from_millis(2500));
        assert!(c.echo);
        assert!(!c.server_is_default());
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
            ("BOTDB_MAX_PENDING", "0", "requests"),
            ("BOTDB_DRAIN_TIMEOUT", "never", "seconds"),
            (
                "DATABASE_URL",
                "not a url",
                "postgres://user:password@host:port/dbname",
            ),
            ("DATABASE_URL", "mysql://u:p@h/db", "unsupported scheme"),
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
    fn password_never_printed() {
        let secret = "Pa55-never-print-me";
        let a = from(&[("DB_PASSWORD", secret)]).unwrap();
        let b = from(&[("DATABASE_URL", &format!("postgres://u:{secret}@h/db"))]).unwrap();
        let builder = Config::builder().url(format!("postgres://u:{secret}@h:1/db"));
        for text in [
            format!("{a:?}"),
            format!("{a}"),
            format!("{b:?}"),
            format!("{b}"),
            format!("{builder:?}"),
            a.redacted_url(),
            b.with_database("other").redacted_url(),
        ] {
            assert!(!text.contains(secret), "{text}");
        }
        // A URL broken after the password must not echo it either.
        let err = from(&[("DATABASE_URL", &format!("postgres://u:{secret}@h:notaport/db"))]).unwrap_err();
        assert!(!format!("{err} {err:?}").contains(secret));
    }

    #[test]
    fn with_database_keeps_credentials() {
        let c = from(&[("DATABASE_URL", "postgres://u:pw@h:1/one")]).unwrap();
        assert_eq!(c.with_database("two").database_name(), "two");
        let c = from(&[("DB_NAME", "one")]).unwrap();
        assert_eq!(c.with_database("two").database_name(), "two");
    }
}
