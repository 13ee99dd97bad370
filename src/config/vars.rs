//! Every environment variable botdb reads, with its default and meaning: the one table
//! that `botdb --help`, docs/configuration.md and the reading in `env` go by.

/// Every environment variable botdb reads, with its default (for docs and `--help`).
pub const ENV_VARS: &[(&str, &str, &str)] = &[
    (
        "DATABASE_URL",
        "(unset)",
        "postgres://user:password@host:port/dbname; wins over DB_*",
    ),
    (
        "DB_HOST",
        "localhost",
        "server host; several separated by commas (h1,h2), tried in order",
    ),
    (
        "DB_PORT",
        "5432",
        "server port; one per host of DB_HOST separated by commas, or one for all",
    ),
    (
        "DB_TARGET_SESSION_ATTRS",
        "any",
        "what a server must be to keep a connection: any, read-write, read-only, primary, standby or prefer-standby (a URL's ?target_session_attrs= wins)",
    ),
    (
        "DATABASE_REPLICA_URL",
        "(unset)",
        "replicas for history, settings and context reads (one host or several: postgres://u:p@r1,r2/db); unset: the primary only",
    ),
    (
        "DB_REPLICA_MAX_LAG",
        "2",
        "seconds a replica may lag before reads skip it",
    ),
    (
        "DB_REPLICA_WAIT",
        "0.05",
        "seconds a read waits for a replica to replay the user's own last write before reading from the primary",
    ),
    ("DB_NAME", "ai_tg_bot", "database name"),
    ("DB_USER", "postgres", "user name"),
    ("DB_PASSWORD", "(empty)", "password (never printed)"),
    (
        "DB_SSLMODE",
        "(driver default: prefer)",
        "disable, allow, prefer, require, verify-ca or verify-full",
    ),
    (
        "DB_SSLROOTCERT",
        "(unset)",
        "CA certificate (PEM) for verify-ca / verify-full",
    ),
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
        "DB_STATEMENT_TIMEOUT",
        "10",
        "seconds one statement may run (statement_timeout; 0: no limit)",
    ),
    (
        "DB_LOCK_TIMEOUT",
        "0.5",
        "seconds one statement may wait for a lock (lock_timeout; 0: no limit)",
    ),
    (
        "DB_IDLE_IN_TRANSACTION_TIMEOUT",
        "30",
        "seconds a session may sit idle in a transaction (0: no limit)",
    ),
    (
        "DB_NETWORK_TIMEOUT",
        "5",
        "seconds botdb waits for the server beyond its own limits (BEGIN, ping: this; statements and COMMIT: DB_STATEMENT_TIMEOUT + this); a connection that misses it is closed",
    ),
    (
        "DB_KEEPALIVES",
        "true",
        "TCP keepalives on every connection (libpq's keepalives in DATABASE_URL)",
    ),
    (
        "DB_KEEPALIVES_IDLE",
        "5",
        "seconds idle before the first keepalive probe (keepalives_idle)",
    ),
    (
        "DB_KEEPALIVES_INTERVAL",
        "2",
        "seconds between keepalive probes (keepalives_interval)",
    ),
    (
        "DB_KEEPALIVES_COUNT",
        "3",
        "probes unanswered before the connection is dropped (keepalives_count)",
    ),
    (
        "DB_TCP_USER_TIMEOUT",
        "10",
        "seconds data may stay unacknowledged before the connection is dropped (TCP_USER_TIMEOUT; libpq's tcp_user_timeout is in ms; 0: the system's)",
    ),
    (
        "DB_MAX_CONTENT_CHARS",
        "65536",
        "longest message content accepted, in characters",
    ),
    (
        "DB_MAX_HISTORY_BYTES",
        "1048576",
        "most bytes of content one user's history read returns",
    ),
    (
        "DB_CONTEXT_MAX_CHARS",
        "200000",
        "the model's context budget: characters of history a turn gives the model",
    ),
    (
        "BOTDB_MAX_PENDING",
        "10000",
        "requests an actor holds (queued + running) before Overloaded",
    ),
    (
        "BOTDB_MAX_PENDING_PER_USER",
        "100",
        "requests one user may hold in one actor before Overloaded",
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
    (
        "BOTDB_LOCK_WAIT",
        "10",
        "seconds a request retries on a row another transaction holds",
    ),
    (
        "BOTDB_LOCK_RETRY_CONNECTIONS",
        "0",
        "connections lock retries may hold at once (0: a quarter of the pool)",
    ),
    (
        "BOTDB_MIGRATE_LOCK_TIMEOUT",
        "2",
        "seconds a migration waits for a lock before it backs off and retries",
    ),
    (
        "BOTDB_MIGRATE_ATTEMPTS",
        "10",
        "tries of a migration that timed out on a lock",
    ),
    (
        "BOTDB_APP_MIGRATIONS",
        "(unset)",
        "the application's own migrations directory, applied after botdb's (table _app_migrations)",
    ),
    (
        "BOTDB_EXPORT_TIMEOUT",
        "600",
        "seconds a user's export may take in all (its snapshot held, its output written) before it stops with an error",
    ),
    (
        "BOTDB_AUDIT_KEY",
        "(unset)",
        "secret (16+ bytes) of erasures' audit rows; unset: users cannot be erased",
    ),
    (
        "BOTDB_MODEL_URL",
        "(unset)",
        "base URL of an OpenAI-compatible chat completions API (http://127.0.0.1:8000/v1); unset: the echo model",
    ),
    (
        "BOTDB_MODEL_NAME",
        "(unset)",
        "the model's name as the API knows it (gpt-4o-mini); needed with BOTDB_MODEL_URL",
    ),
    (
        "BOTDB_MODEL_API_KEY",
        "(unset)",
        "bearer token of the model's API (never printed)",
    ),
    (
        "BOTDB_MODEL_TIMEOUT",
        "120",
        "seconds one attempt to ask the model may take (1 to 3600)",
    ),
    (
        "BOTDB_MODEL_ATTEMPTS",
        "3",
        "times a question is asked on a transient failure (1 to 10)",
    ),
    (
        "TELEGRAM_BOT_TOKEN",
        "(unset)",
        "the bot's token from @BotFather (123456:ABC-...; never printed); unset: the bot cannot send",
    ),
    (
        "TELEGRAM_API_URL",
        "https://api.telegram.org",
        "the Bot API server (http or https, no path): a local Bot API server or a test double",
    ),
    (
        "BOTDB_TELEGRAM_TIMEOUT",
        "10",
        "seconds one Bot API call may take, connecting included",
    ),
    (
        "BOTDB_SEND_PER_SECOND",
        "30",
        "messages sent a second at most, all chats together (1 to 1000)",
    ),
    (
        "BOTDB_SEND_CHAT_INTERVAL",
        "1",
        "seconds between two messages to one chat at least (fractions allowed; 0: none)",
    ),
    (
        "BOTDB_SEND_ATTEMPTS",
        "5",
        "tries of a send that failed for a reason that may pass (5xx, timeout, lost connection)",
    ),
];

/// The `DB_*` variables that name the server: setting any of them means "this server",
/// never a throwaway one.
pub(super) const SERVER_VARS: &[&str] = &[
    "DATABASE_URL",
    "DB_HOST",
    "DB_PORT",
    "DB_NAME",
    "DB_USER",
    "DB_PASSWORD",
    "DB_SSLMODE",
    "DB_SSLROOTCERT",
];
