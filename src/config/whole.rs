//! The whole configuration, [`Config`]: where the server is (a URL or the reference's
//! `DB_*` fields, one host or several), the replicas' server beside it
//! ([`ReplicaConfig`], `DATABASE_REPLICA_URL`: a `Config` of its own, so the two live
//! here together), the setting groups, and what is derived from them (the driver's
//! connect options, the redacted URL, errors that name the setting used).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgSslMode};

use crate::config::audit::AuditKey;
use crate::config::hosts::{self, TargetSessionAttrs};
use crate::config::model::ModelConfig;
use crate::config::network::NetworkConfig;
use crate::config::settings::{
    ActorConfig, DEFAULT_EXPORT_TIMEOUT, Limits, MigrateConfig, PoolConfig, TimeoutConfig,
};
use crate::config::telegram::TelegramConfig;
use crate::config::urls;
use crate::error::{Error, Result};

/// Where the server is: a URL, or the reference's separate fields.
#[derive(Clone)]
pub(super) enum Server {
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
        ssl_mode: Option<PgSslMode>,
        ssl_root_cert: Option<PathBuf>,
    },
}

/// botdb's configuration. Build it with [`Config::from_env`] or [`Config::builder`].
#[derive(Clone)]
pub struct Config {
    pub(super) server: Server,
    /// Every host with its port, in the order they are tried (one for a single host).
    pub(super) hosts: Vec<(String, u16)>,
    /// What a server must be to keep a connection to it.
    pub(super) target_session_attrs: TargetSessionAttrs,
    /// `true` when a server was configured (`DATABASE_URL`, any `DB_*` server setting,
    /// or a builder setter): botdb then never substitutes a throwaway server for it.
    pub(super) server_configured: bool,
    /// Pool settings.
    pub pool: PoolConfig,
    /// Server-side limits on waiting, set on every connection.
    pub timeouts: TimeoutConfig,
    /// botdb's own limits on waiting for the server, and every socket's keepalives.
    pub network: NetworkConfig,
    /// Log every SQL statement through `tracing` (`echo`).
    pub echo: bool,
    /// Text size limits.
    pub limits: Limits,
    /// Actor layer settings.
    pub actors: ActorConfig,
    /// How migrations take their locks.
    pub migrate: MigrateConfig,
    /// `application_name` reported to PostgreSQL (visible in `pg_stat_activity`).
    pub application_name: String,
    /// The application's own migrations directory (`BOTDB_APP_MIGRATIONS`), applied,
    /// rolled back, listed and checked with botdb's (see
    /// [`migrate::Migrations`](crate::migrate::Migrations)); `None`: botdb's alone.
    pub app_migrations: Option<PathBuf>,
    /// The key of erasures' audit rows (`BOTDB_AUDIT_KEY`); `None`: users cannot be
    /// erased (an erasure must leave a proof, and the proof needs the key).
    pub audit_key: Option<AuditKey>,
    /// Replica reads (`DATABASE_REPLICA_URL`, `DB_REPLICA_MAX_LAG`, `DB_REPLICA_WAIT`).
    pub replicas: ReplicaConfig,
    /// The longest a user's export may take, its snapshot transaction and the writing
    /// of its output together (`BOTDB_EXPORT_TIMEOUT`, default
    /// [`DEFAULT_EXPORT_TIMEOUT`]): a reader that stops reading would otherwise hold
    /// the export's snapshot, and with it VACUUM, for as long as it stalls.
    pub export_timeout: Duration,
    /// The language model the bot asks (`BOTDB_MODEL_*`); no URL: the echo model.
    pub model: ModelConfig,
    /// Telegram's Bot API: the bot's token, the API's address, the sending limits
    /// (`TELEGRAM_BOT_TOKEN`, `TELEGRAM_API_URL`, `BOTDB_TELEGRAM_TIMEOUT`,
    /// `BOTDB_SEND_*`).
    pub telegram: TelegramConfig,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("server", &self.redacted_url())
            .field("pool", &self.pool)
            .field("timeouts", &self.timeouts)
            .field("network", &self.network)
            .field("echo", &self.echo)
            .field("limits", &self.limits)
            .field("actors", &self.actors)
            .field("migrate", &self.migrate)
            .field("application_name", &self.application_name)
            .field("app_migrations", &self.app_migrations)
            .field("audit_key", &self.audit_key)
            .field("replicas", &self.replicas)
            .field("export_timeout", &self.export_timeout)
            .field("model", &self.model)
            .field("telegram", &self.telegram)
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
                ssl_mode: None,
                ssl_root_cert: None,
            },
            hosts: vec![("localhost".into(), 5432)],
            target_session_attrs: TargetSessionAttrs::Any,
            server_configured: false,
            pool: PoolConfig::default(),
            timeouts: TimeoutConfig::default(),
            network: NetworkConfig::default(),
            echo: false,
            limits: Limits::default(),
            actors: ActorConfig::default(),
            migrate: MigrateConfig::default(),
            application_name: "botdb".into(),
            app_migrations: None,
            audit_key: None,
            replicas: ReplicaConfig::default(),
            export_timeout: DEFAULT_EXPORT_TIMEOUT,
            model: ModelConfig::default(),
            telegram: TelegramConfig::default(),
        }
    }
}

impl Config {
    /// `true` when a server was configured: `DATABASE_URL`, any of `DB_HOST`,
    /// `DB_PORT`, `DB_NAME`, `DB_USER`, `DB_PASSWORD`, `DB_SSLMODE`, `DB_SSLROOTCERT`, or a
    /// builder setter for one of them. `false` means "the reference's defaults, nobody
    /// said anything": only then may a command offer a throwaway server, and `serve`
    /// only when asked explicitly.
    pub fn server_configured(&self) -> bool {
        self.server_configured
    }

    /// The server's URL with every password replaced by `***` (safe to print).
    pub fn redacted_url(&self) -> String {
        match &self.server {
            Server::Url { display, .. } => display.clone(),
            Server::Parts {
                host,
                port,
                name,
                user,
                password,
                ssl_mode,
                ..
            } => {
                let pw = if password.expose_secret().is_empty() {
                    ""
                } else {
                    ":***"
                };
                let mut query: Vec<String> = ssl_mode
                    .map(|m| format!("sslmode={}", ssl_mode_name(m)))
                    .into_iter()
                    .collect();
                if self.target_session_attrs != TargetSessionAttrs::Any {
                    query.push(format!("target_session_attrs={}", self.target_session_attrs));
                }
                let query = if query.is_empty() {
                    String::new()
                } else {
                    format!("?{}", query.join("&"))
                };
                let hosts = if self.hosts.len() > 1 {
                    self.hosts
                        .iter()
                        .map(|(h, p)| format!("{h}:{p}"))
                        .collect::<Vec<_>>()
                        .join(",")
                } else {
                    format!("{host}:{port}")
                };
                format!("postgres://{user}{pw}@{hosts}/{name}{query}")
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
                    *display = hosts::map_single(display, |shown| match url::Url::parse(shown) {
                        Ok(mut shown) => {
                            shown.set_path(database);
                            shown.to_string()
                        }
                        Err(_) => shown.to_string(),
                    });
                }
            }
            Server::Parts { name, .. } => *name = database.to_string(),
        }
        config
    }

    /// A copy of this configuration with the server part of `other` (URL or host, port,
    /// name, user, password, TLS) and this one's pool and limits.
    pub fn with_server_of(&self, other: &Config) -> Config {
        Config {
            server: other.server.clone(),
            hosts: other.hosts.clone(),
            target_session_attrs: other.target_session_attrs,
            server_configured: other.server_configured,
            ..self.clone()
        }
    }

    /// The replicas' configuration: their server (`DATABASE_REPLICA_URL`, one host or
    /// several) with this configuration's pool, timeouts and limits; `None` when no
    /// replica is configured.
    pub fn replica(&self) -> Option<Config> {
        let server = self.replicas.server.as_deref()?;
        let mut replica = self.with_server_of(server);
        replica.replicas.server = None;
        Some(replica)
    }

    /// Every host with its port, in the order botdb tries them (one entry for a single
    /// host): the host list of `DATABASE_URL` (`postgres://u@h1:5432,h2:5433/db`) or
    /// `DB_HOST` / `DB_PORT`.
    pub fn hosts(&self) -> &[(String, u16)] {
        &self.hosts
    }

    /// What a server must be for botdb to keep a connection to it
    /// (`?target_session_attrs=` of the URL, or `DB_TARGET_SESSION_ATTRS`; `any` by
    /// default).
    pub fn target_session_attrs(&self) -> TargetSessionAttrs {
        self.target_session_attrs
    }

    /// `true` when botdb must choose among hosts: more than one host, or an attribute
    /// other than `any`.
    pub fn chooses_hosts(&self) -> bool {
        self.hosts.len() > 1 || self.target_session_attrs != TargetSessionAttrs::Any
    }

    /// The driver's connect options of every host, in order: those of
    /// [`connect_options`](Self::connect_options) (credentials, TLS, timeouts) with each
    /// host and port in turn.
    ///
    /// # Errors
    /// As [`connect_options`](Self::connect_options).
    pub fn host_options(&self) -> Result<Vec<PgConnectOptions>> {
        let base = self.connect_options()?;
        Ok(self
            .hosts
            .iter()
            .map(|(host, port)| {
                // An IPv6 address is written in brackets in a URL, not to the driver.
                let host = host
                    .strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .unwrap_or(host);
                base.clone().host(host).port(*port)
            })
            .collect())
    }

    /// The name of the setting that holds `part` of the server's address, as the user
    /// gave it: `DATABASE_URL` when the URL was used, else `DB_NAME`, `DB_USER`, ...
    pub fn setting_for(&self, part: ServerPart) -> &'static str {
        match (&self.server, part) {
            (Server::Url { .. }, _) => "DATABASE_URL",
            (Server::Parts { .. }, ServerPart::Address) => "DB_HOST / DB_PORT",
            (Server::Parts { .. }, ServerPart::Database) => "DB_NAME",
            (Server::Parts { .. }, ServerPart::Credentials) => "DB_USER / DB_PASSWORD",
            (Server::Parts { .. }, ServerPart::Tls) => "DB_SSLMODE / DB_SSLROOTCERT",
        }
    }

    /// `err` made to speak of this configuration: a configuration error about the
    /// server names the setting the user actually used (`DATABASE_URL` rather than
    /// `DB_NAME`), and no message carries a password in any form.
    pub fn explain(&self, err: Error) -> Error {
        let secrets = self.secrets();
        match err {
            Error::Config { key, message } => {
                let key = match key.as_ref() {
                    "DB_NAME" => self.setting_for(ServerPart::Database).into(),
                    "DB_USER / DB_PASSWORD" => self.setting_for(ServerPart::Credentials).into(),
                    "DB_SSLMODE" => self.setting_for(ServerPart::Tls).into(),
                    _ => key,
                };
                Error::Config {
                    key,
                    message: urls::scrub(&message, &secrets),
                }
            }
            Error::Unavailable { reason, source } => Error::Unavailable {
                reason: urls::scrub(&reason, &secrets),
                source,
            },
            other => other,
        }
    }

    /// Every secret this configuration holds, in every form it may be written.
    fn secrets(&self) -> Vec<SecretString> {
        match &self.server {
            Server::Url { url, .. } => urls::secrets_in(url.expose_secret())
                .into_iter()
                .map(SecretString::from)
                .collect(),
            Server::Parts { password, .. } => vec![password.clone()],
        }
    }

    /// The driver's connect options of the first host (host, credentials, TLS, the
    /// server-side timeouts as startup options, statement logging); see
    /// [`host_options`](Self::host_options) for every host.
    ///
    /// # Errors
    /// [`Error::Config`] when the URL cannot be parsed; the message never contains it.
    pub fn connect_options(&self) -> Result<PgConnectOptions> {
        let options = match &self.server {
            Server::Url { url, .. } => urls::parse_url(url.expose_secret())?,
            Server::Parts {
                host,
                port,
                name,
                user,
                password,
                ssl_mode,
                ssl_root_cert,
            } => {
                let mut o = PgConnectOptions::new_without_pgpass()
                    .host(host)
                    .port(*port)
                    .username(user)
                    .database(name);
                if !password.expose_secret().is_empty() {
                    o = o.password(password.expose_secret());
                }
                if let Some(mode) = ssl_mode {
                    // As libpq: `require` with a root certificate verifies the CA.
                    o = o.ssl_mode(match (mode, ssl_root_cert) {
                        (PgSslMode::Require, Some(_)) => PgSslMode::VerifyCa,
                        (mode, _) => *mode,
                    });
                }
                if let Some(cert) = ssl_root_cert {
                    o = o.ssl_root_cert(cert);
                }
                o
            }
        };
        let mut options = options.application_name(&self.application_name);
        let t = &self.timeouts;
        for (name, limit) in [
            ("statement_timeout", t.statement),
            ("lock_timeout", t.lock),
            ("idle_in_transaction_session_timeout", t.idle_in_transaction),
        ] {
            let millis = limit.map_or(0, |d| d.as_millis().max(1));
            options = options.options([(name, format!("{millis}ms"))]);
        }
        Ok(if self.echo {
            options.log_statements(log::LevelFilter::Info)
        } else {
            options
                .log_statements(log::LevelFilter::Off)
                .log_slow_statements(log::LevelFilter::Warn, Duration::from_secs(1))
        })
    }
}

/// A part of the server's address, for [`Config::setting_for`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerPart {
    /// Host and port.
    Address,
    /// The database name.
    Database,
    /// User and password.
    Credentials,
    /// TLS mode and root certificate.
    Tls,
}

/// libpq's name of an `sslmode`.
fn ssl_mode_name(mode: PgSslMode) -> &'static str {
    match mode {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
}

/// Default [`ReplicaConfig::max_lag`].
pub const DEFAULT_REPLICA_MAX_LAG: Duration = Duration::from_secs(2);

/// Default [`ReplicaConfig::wait`].
pub const DEFAULT_REPLICA_WAIT: Duration = Duration::from_millis(50);

/// Where reads may go besides the primary, and on what terms.
#[derive(Clone)]
pub struct ReplicaConfig {
    /// The replicas' server (one host or several), with this configuration's pool
    /// settings; `None`: every read goes to the primary.
    pub(super) server: Option<Box<Config>>,
    /// A replica whose replay lags more than this behind its primary is skipped
    /// (`DB_REPLICA_MAX_LAG`). Lag is PostgreSQL's usual measure: zero when the replica
    /// has replayed all the WAL it received, else the time since the last transaction
    /// it replayed committed.
    pub max_lag: Duration,
    /// How long a read waits for a replica to replay the user's own last write before
    /// it goes to the primary instead (`DB_REPLICA_WAIT`).
    pub wait: Duration,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            server: None,
            max_lag: DEFAULT_REPLICA_MAX_LAG,
            wait: DEFAULT_REPLICA_WAIT,
        }
    }
}

impl fmt::Debug for ReplicaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaConfig")
            .field("server", &self.server.as_ref().map(|c| c.redacted_url()))
            .field("max_lag", &self.max_lag)
            .field("wait", &self.wait)
            .finish()
    }
}
