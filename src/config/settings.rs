//! The groups of settings inside a [`Config`](super::Config): pool, text limits, actor
//! layer, migrations. Each has the reference's (or botdb's) defaults.

use std::time::Duration;

/// How long PostgreSQL lets one of botdb's sessions wait, set on every connection botdb
/// opens (its startup options). `None` turns a limit off (PostgreSQL's 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeoutConfig {
    /// `statement_timeout`: the longest one statement may run. botdb's statements take
    /// milliseconds; one that runs for seconds is stuck (a lock it does not see, a plan
    /// gone wrong) and holds a connection others need. Default 10 s.
    pub statement: Option<Duration>,
    /// `lock_timeout`: the longest one statement may wait for a lock. botdb's own
    /// requests never wait on each other for long (one user's requests run one at a
    /// time); a longer wait is another transaction (an operator's session, a data fix,
    /// another instance) holding the row, and the request gives up, frees its
    /// connection and retries (see [`ActorConfig::lock_wait`]). Default 0.5 s.
    pub lock: Option<Duration>,
    /// `idle_in_transaction_session_timeout`: a session left idle inside a transaction
    /// (a `Database::session` body awaiting something slow that is not the database)
    /// is ended by the server, its locks released. Default 30 s.
    pub idle_in_transaction: Option<Duration>,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        TimeoutConfig {
            statement: Some(Duration::from_secs(10)),
            lock: Some(Duration::from_millis(500)),
            idle_in_transaction: Some(Duration::from_secs(30)),
        }
    }
}

/// Settings of the actor layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActorConfig {
    /// Requests one table actor holds at most (waiting in its per-user queues plus
    /// running); past it a request fails at once with
    /// [`Error::Overloaded`](crate::Error::Overloaded).
    pub max_pending: usize,
    /// Requests ONE user may hold in one table actor (queued + running); past it that
    /// user's requests fail at once with [`Error::Overloaded`](crate::Error::Overloaded)
    /// (`per_user`), while other users keep being admitted. Keeps one user's flood from
    /// taking the whole `max_pending`.
    pub max_pending_per_user: usize,
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
    /// How long a request keeps trying when a row it needs is locked by another
    /// transaction: each try waits at most the `lock_timeout`, then gives its connection
    /// back and backs off before the next (at most `lock_retry_connections` tries hold
    /// a connection at once); past this, [`Error::Timeout`](crate::Error::Timeout).
    pub lock_wait: Duration,
    /// Connections that retries after a lock timeout may hold at once, in all the
    /// actors together: the rest of the pool stays with the users whose rows are free.
    /// 0: a quarter of the pool (at least one).
    pub lock_retry_connections: usize,
}

impl Default for ActorConfig {
    fn default() -> Self {
        ActorConfig {
            max_pending: 10_000,
            max_pending_per_user: 100,
            drain_timeout: Duration::from_secs(30),
            batch_max: 64,
            batch_wait: Duration::ZERO,
            batch_in_flight: 2,
            lock_wait: Duration::from_secs(10),
            lock_retry_connections: 0,
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
    ///
    /// [`Error::Unavailable`]: crate::Error::Unavailable
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

/// Size limits applied to text before it reaches the database, and to what one read
/// brings back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest message content accepted, in characters (Unicode scalar values, the unit
    /// of `content_length`).
    pub max_content_chars: usize,
    /// Longest system prompt accepted, in characters.
    pub max_system_prompt_chars: usize,
    /// Most bytes of message content one user's history read returns (the newest
    /// message always comes back, whatever its size). Enforced in the query, so a batched
    /// read of many users stays within `users x max_history_bytes`.
    pub max_history_bytes: usize,
    /// The model's context budget, in characters (`content_length`): how much of a
    /// dialogue's history a turn gives the model, its new message included.
    pub context_max_chars: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_content_chars: 65_536,
            max_system_prompt_chars: 16_384,
            max_history_bytes: 1024 * 1024,
            context_max_chars: DEFAULT_CONTEXT_MAX_CHARS,
        }
    }
}

/// The default context budget: 200,000 characters. A 128k-token model reads about 2
/// characters per token in the least favourable scripts (Cyrillic, CJK, code), 4 in
/// English: 200,000 characters stay under about 100k tokens in the worst case,
/// leaving a quarter of the window for the system prompt and the reply.
pub const DEFAULT_CONTEXT_MAX_CHARS: usize = 200_000;

/// The default of [`Config::export_timeout`](super::Config::export_timeout)
/// (`BOTDB_EXPORT_TIMEOUT`): ten minutes, enough for a history of hundreds of megabytes
/// read over a slow link, short enough that a stalled reader does not hold back
/// VACUUM for long.
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(600);

/// How migrations take their locks on a live database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MigrateConfig {
    /// `lock_timeout` of each migration: a DDL statement that cannot get its lock within
    /// this gives up (and is retried), so the traffic queued behind its lock request
    /// waits at most this long.
    pub lock_timeout: Duration,
    /// How many times a migration that timed out on a lock is tried in all.
    pub attempts: u32,
}

impl Default for MigrateConfig {
    fn default() -> Self {
        MigrateConfig {
            lock_timeout: Duration::from_secs(2),
            attempts: 10,
        }
    }
}

/// The setting that names the application's migrations directory
/// ([`Config::app_migrations`](super::Config::app_migrations)). Its name is the
/// configuration's: the range checks and the migrations' own errors name it alike
/// (`botdb::migrate::APP_SETTING` is this).
pub const APP_MIGRATIONS_SETTING: &str = "BOTDB_APP_MIGRATIONS";
