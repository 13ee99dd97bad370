//! Configuration: one typed struct, loaded once.
//!
//! Sources, highest priority first: the process environment, a `.env` file in the
//! working directory (read, never written into the environment), then the reference
//! design's defaults. Code builds a [`Config`] with [`Config::builder`]. The password is
//! a [`SecretString`](secrecy::SecretString): it never appears in `Debug`, `Display`, logs or errors, whether it
//! came from `DB_PASSWORD`, the URL's user info or its `?password=` query.
//!
//! - `settings`: [`PoolConfig`], [`TimeoutConfig`], [`Limits`], [`ActorConfig`],
//!   [`MigrateConfig`];
//! - `env`: [`Config::from_env`]; `vars`: [`ENV_VARS`], every variable with its default;
//! - `builder`: [`ConfigBuilder`] and the range checks;
//! - `urls`: `DATABASE_URL` parsing and redaction, and the files a URL may name;
//! - `hosts`: libpq's host lists and `target_session_attrs`;
//! - `audit`: [`AuditKey`];
//! - `network`: [`NetworkConfig`], botdb's own deadlines on the network and the TCP
//!   keepalives and `TCP_USER_TIMEOUT` of every connection;
//! - `model`: [`ModelConfig`], the language model the bot asks (`BOTDB_MODEL_*`);
//! - `telegram`: [`TelegramConfig`], Telegram's Bot API (its token never printed);
//! - `whole`: [`Config`] itself and [`ReplicaConfig`] (`DATABASE_REPLICA_URL`).

mod audit;
mod builder;
mod env;
mod hosts;
mod model;
mod network;
mod settings;
mod telegram;
mod urls;
mod vars;
mod whole;

pub use audit::AuditKey;
pub use builder::ConfigBuilder;
pub use hosts::TargetSessionAttrs;
pub use model::{DEFAULT_MODEL_ATTEMPTS, DEFAULT_MODEL_MAX_BACKOFF, DEFAULT_MODEL_TIMEOUT, ModelConfig};
pub use network::NetworkConfig;
pub use settings::{
    APP_MIGRATIONS_SETTING, ActorConfig, DEFAULT_CONTEXT_MAX_CHARS, DEFAULT_EXPORT_TIMEOUT, Limits,
    MigrateConfig, PoolConfig, TimeoutConfig,
};
pub use telegram::{DEFAULT_TELEGRAM_API_URL, TelegramConfig};
pub use vars::ENV_VARS;
pub use whole::{Config, DEFAULT_REPLICA_MAX_LAG, DEFAULT_REPLICA_WAIT, ReplicaConfig, ServerPart};
