//! The one error type of botdb.
//!
//! Every fallible function in the crate returns [`Result<T>`](Result). The variants are
//! the decisions a caller can take: fix the input ([`Error::InvalidInput`]), treat the row
//! as absent ([`Error::NotFound`]), retry later ([`Error::Unavailable`],
//! [`Error::Overloaded`]), stop sending ([`Error::ShuttingDown`]), or fix the deployment
//! ([`Error::Config`], [`Error::Migration`]). Nothing in a message ever contains a password
//! or the content of a chat message.
//!
//! It is the bottom of the crate: it imports nothing of botdb, so that every module may
//! use it without a circle. What a message needs from above comes in as data (the
//! migrate layer names a migration with its description and file, see
//! `Error::migration_edited`).

use std::borrow::Cow;

/// `Result` with botdb's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in botdb.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The caller passed a value botdb refuses to store (NUL byte, oversize text, a
    /// setting out of range, a non-positive user id). Nothing was written.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// The name of the offending field (`content`, `max_history_messages`, ...).
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },

    /// The row the request needs does not exist (for example, a message for a user botdb
    /// has never seen). Nothing was written.
    #[error("{entity} {id} not found")]
    NotFound {
        /// What was looked for (`user`, `user_settings`, ...).
        entity: &'static str,
        /// Its key, as text.
        id: String,
    },

    /// The write collides with existing data (a unique key, a serialization failure).
    #[error("conflict: {0}")]
    Conflict(String),

    /// PostgreSQL cannot be reached or refused the connection for a transient reason:
    /// the server is down, the network broke, no pooled connection came free within the
    /// pool timeout. Retrying later may succeed; nothing of the failed call was committed.
    #[error("database unavailable: {reason}")]
    Unavailable {
        /// What failed, in words.
        reason: String,
        /// The driver's error, when there is one.
        #[source]
        source: Option<sqlx::Error>,
    },

    /// The connection broke after the request's last statement, or its COMMIT, was
    /// sent: the server may have committed it or not, and nobody can tell from here.
    /// Retrying may apply it twice: retry only a request that is idempotent (one that
    /// carries an idempotency key, or a read), or read first to find out. Never
    /// reported for a failure before anything was sent (that is
    /// [`Unavailable`](Error::Unavailable): nothing was written).
    #[error("outcome unknown: {reason}; it may or may not have been committed")]
    OutcomeUnknown {
        /// What failed, in words.
        reason: String,
        /// The driver's error, when there is one.
        #[source]
        source: Option<sqlx::Error>,
    },

    /// The request ran out of time in the database: a statement ran past
    /// `statement_timeout` (`DB_STATEMENT_TIMEOUT`), a row it needed stayed locked by
    /// another transaction past the lock timeout and botdb's retries (`DB_LOCK_TIMEOUT`,
    /// `BOTDB_LOCK_WAIT`), or a session sat idle inside a transaction past
    /// `idle_in_transaction_session_timeout` and the server ended it, or a user's export
    /// ran past `BOTDB_EXPORT_TIMEOUT` (its reader too slow, or stalled). Nothing of the
    /// request was committed; retrying later may succeed (`is_transient()`).
    #[error("timed out ({kind}): {reason}")]
    Timeout {
        /// Which limit was reached.
        kind: TimeoutKind,
        /// What the server said.
        reason: String,
    },

    /// A bounded queue is full: the request was refused at once, not queued. With
    /// `user_id`, it is that user's share of the queue that is full (other users are
    /// still admitted); without, the whole queue.
    #[error("overloaded: {what} already holds {limit} pending requests{}", user_id.map(|u| format!(" of user {u}")).unwrap_or_default())]
    Overloaded {
        /// The queue that is full (an actor's name).
        what: &'static str,
        /// Its bound (the per-user share when `user_id` is set).
        limit: usize,
        /// The user whose share is full, when that is the reason.
        user_id: Option<i64>,
    },

    /// A request was sent for a table whose actor was not started: register the table
    /// with `actors::DbSystemBuilder::table` (or get an `actors::TableHandle`, which
    /// checks it once).
    #[error("no actor serves the table {table}: register it with DbSystem::builder(..).table::<..>()")]
    TableNotRegistered {
        /// The table's name (`actors::Table::NAME`).
        table: &'static str,
    },

    /// The system is shutting down (or the pool was closed) and accepts no new work.
    #[error("botdb is shutting down; the request was not accepted")]
    ShuttingDown,

    /// Applying, reverting or validating migrations failed.
    #[error("migration error: {0}")]
    Migration(String),

    /// A configuration value is missing or malformed, or the server rejected the
    /// credentials. `key` names the setting to fix.
    #[error("configuration error in {key}: {message}")]
    Config {
        /// The variable or setting at fault (`DB_POOL_SIZE`, `DATABASE_URL`, ...).
        key: Cow<'static, str>,
        /// What was expected.
        message: String,
    },

    /// A failure inside botdb that is not the caller's fault (a worker panicked, a
    /// reply channel was dropped). The request was not acknowledged.
    #[error("internal error: {0}")]
    Internal(String),

    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
}

/// Which time limit a request reached ([`Error::Timeout`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[non_exhaustive]
pub enum TimeoutKind {
    /// A row or table stayed locked by another transaction (`lock_timeout`).
    Lock,
    /// A statement ran too long (`statement_timeout`).
    Statement,
    /// A transaction sat idle too long (`idle_in_transaction_session_timeout`).
    IdleInTransaction,
    /// A user's export, snapshot and output together, took longer than its bound
    /// (`BOTDB_EXPORT_TIMEOUT`).
    Export,
}

impl std::fmt::Display for TimeoutKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TimeoutKind::Lock => "lock wait",
            TimeoutKind::Statement => "statement",
            TimeoutKind::IdleInTransaction => "idle in transaction",
            TimeoutKind::Export => "export",
        })
    }
}

impl Error {
    /// Shorthand for [`Error::InvalidInput`].
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            field,
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::NotFound`].
    pub fn not_found(entity: &'static str, id: impl ToString) -> Self {
        Error::NotFound {
            entity,
            id: id.to_string(),
        }
    }

    /// Shorthand for [`Error::Config`].
    pub fn config(key: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Error::Config {
            key: key.into(),
            message: message.into(),
        }
    }

    /// An applied migration whose file changed since: its checksum no longer matches
    /// the one recorded in `table`. `migration` names it as the caller can (the migrate
    /// layer, which knows the sets, gives its description and file), so that this
    /// module needs nothing of the migrations.
    pub(crate) fn migration_edited(migration: &str, table: &str) -> Self {
        Error::Migration(format!(
            "migration {migration} was edited after it was applied: its checksum no longer \
             matches the one recorded in {table} (restore the original file, or add a new \
             migration instead of changing an applied one)"
        ))
    }

    /// A migration `table` records as partially applied (see
    /// [`migration_edited`](Self::migration_edited) for `migration`).
    pub(crate) fn migration_dirty(migration: &str, table: &str) -> Self {
        Error::Migration(format!(
            "migration {migration} is marked as partially applied; fix it by hand and delete \
             its row from {table}"
        ))
    }

    /// `true` when the write may or may not have been committed
    /// ([`OutcomeUnknown`](Error::OutcomeUnknown)).
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, Error::OutcomeUnknown { .. })
    }

    /// This error as seen after a statement was sent on a connection that then broke:
    /// a lost connection means the statement's outcome is unknown. Errors that happen
    /// before anything is sent (no connection within the pool timeout) stay as they are.
    pub(crate) fn after_send(self) -> Error {
        if self.is_read_only() {
            // The server refused the statement: nothing was written.
            return self;
        }
        match self {
            Error::Unavailable {
                source: Some(sqlx::Error::PoolTimedOut),
                ..
            } => self,
            Error::Unavailable { reason, source } => Error::OutcomeUnknown { reason, source },
            other => other,
        }
    }

    /// `true` when the same request may succeed if retried later, and nothing of it
    /// was committed ([`Unavailable`](Error::Unavailable),
    /// [`Overloaded`](Error::Overloaded), and serialization conflicts).
    /// [`OutcomeUnknown`](Error::OutcomeUnknown) is not: see [`is_outcome_unknown`](Self::is_outcome_unknown).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unavailable { .. } | Error::Overloaded { .. } | Error::Timeout { .. } => true,
            Error::Conflict(msg) => msg.starts_with("serialization"),
            _ => false,
        }
    }

    /// An equivalent error without its driver source (which cannot be cloned), to give
    /// every request of a batch that failed as a whole.
    pub(crate) fn replica(&self) -> Error {
        match self {
            Error::Unavailable { reason, .. } => Error::Unavailable {
                reason: reason.clone(),
                source: None,
            },
            Error::OutcomeUnknown { reason, .. } => Error::OutcomeUnknown {
                reason: reason.clone(),
                source: None,
            },
            Error::Timeout { kind, reason } => Error::Timeout {
                kind: *kind,
                reason: reason.clone(),
            },
            Error::Overloaded { what, limit, user_id } => Error::Overloaded {
                what,
                limit: *limit,
                user_id: *user_id,
            },
            Error::ShuttingDown => Error::ShuttingDown,
            Error::TableNotRegistered { table } => Error::TableNotRegistered { table },
            Error::Conflict(m) => Error::Conflict(m.clone()),
            Error::InvalidInput { field, reason } => Error::InvalidInput {
                field,
                reason: reason.clone(),
            },
            Error::NotFound { entity, id } => Error::NotFound {
                entity,
                id: id.clone(),
            },
            other => Error::Internal(other.to_string()),
        }
    }

    /// `true` when a write was refused because the server does not take writes
    /// (SQLSTATE 25006, `read_only_sql_transaction`): the connection is on a standby
    /// or a read-only server and must not be used for writes again.
    pub(crate) fn is_read_only(&self) -> bool {
        self.sqlstate().as_deref() == Some(READ_ONLY)
    }

    /// The SQLSTATE code of the underlying database error, if any.
    pub fn sqlstate(&self) -> Option<String> {
        let source = match self {
            Error::Database(e) => e,
            Error::Unavailable { source: Some(e), .. } | Error::OutcomeUnknown { source: Some(e), .. } => e,
            _ => return None,
        };
        source
            .as_database_error()
            .and_then(|d| d.code())
            .map(|c| c.into_owned())
    }
}

impl From<sqlx::Error> for Error {
    /// Classifies a driver error by what the caller can do about it.
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::PoolTimedOut => Error::Unavailable {
                reason: "no database connection became available within the pool timeout".into(),
                source: Some(err),
            },
            sqlx::Error::PoolClosed => Error::ShuttingDown,
            // A TLS refusal (the server has no TLS, its certificate does not verify) is
            // not an outage: retrying cannot help, the settings must change.
            sqlx::Error::Tls(ref e) => tls_refused(&e.to_string()),
            sqlx::Error::Io(ref io)
                if io
                    .get_ref()
                    .is_some_and(|e| e.to_string().contains("certificate")) =>
            {
                tls_refused(&io.to_string())
            }
            sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed => Error::Unavailable {
                reason: "connection to the database failed".into(),
                source: Some(err),
            },
            sqlx::Error::Protocol(_) => Error::Unavailable {
                reason: "the database connection broke mid-message".into(),
                source: Some(err),
            },
            sqlx::Error::Configuration(e) => Error::config("database connection options", e.to_string()),
            // A write on a server that does not take writes (a standby, a demoted
            // primary): refused before anything was written. Transient: new connections
            // go to the host that satisfies `target_session_attrs`. The driver's error
            // is kept so that the pool can tell (`is_read_only`).
            sqlx::Error::Database(ref db) if db.code().as_deref() == Some(READ_ONLY) => {
                let reason = format!(
                    "the server does not accept writes (a standby, or read-only); nothing was \
                     written (SQLSTATE {READ_ONLY}: {})",
                    db.message()
                );
                Error::Unavailable {
                    reason,
                    source: Some(err),
                }
            }
            sqlx::Error::RowNotFound => Error::not_found("row", "(query returned no row)"),
            sqlx::Error::Database(ref db) => {
                let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
                classify_sqlstate(&code, db.message(), db.constraint()).unwrap_or(Error::Database(err))
            }
            other => Error::Database(other),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for Error {
    fn from(err: sqlx::migrate::MigrateError) -> Self {
        use sqlx::migrate::MigrateError as M;
        match err {
            M::Execute(e) => match Error::from(e) {
                Error::Database(e) => Error::Migration(e.to_string()),
                other => other,
            },
            // The migrate layer names a version with its description and file
            // (`Migrations::error`); from here, only the number is known.
            M::VersionMismatch(v) => Error::migration_edited(&format!("{v:04}"), BOTDB_TABLE),
            M::VersionMissing(v) => Error::Migration(format!(
                "the database has migration {v} applied, which this build of botdb does not know \
                 (was it migrated by a newer botdb?)"
            )),
            M::Dirty(v) => Error::migration_dirty(&format!("{v:04}"), BOTDB_TABLE),
            other => Error::Migration(other.to_string()),
        }
    }
}

/// sqlx's default bookkeeping table, botdb's: the one a bare `MigrateError` is about.
const BOTDB_TABLE: &str = "_sqlx_migrations";

/// SQLSTATE `read_only_sql_transaction`.
const READ_ONLY: &str = "25006";

/// A TLS handshake the client or the server refused.
fn tls_refused(why: &str) -> Error {
    Error::config(
        "DB_SSLMODE",
        format!(
            "the TLS connection was refused ({why}); check the TLS mode and the CA certificate \
             (DB_SSLMODE / DB_SSLROOTCERT, or sslmode / sslrootcert in DATABASE_URL)"
        ),
    )
}

/// Maps the SQLSTATE classes a caller can act on; `None` leaves it as [`Error::Database`].
fn classify_sqlstate(code: &str, message: &str, constraint: Option<&str>) -> Option<Error> {
    let unavailable = |reason: &str| Error::Unavailable {
        reason: format!("{reason} (SQLSTATE {code}: {message})"),
        source: None,
    };
    Some(match code {
        // connection_exception class, admin/crash shutdown, cannot_connect_now,
        // too_many_connections, query cancelled by a shutdown
        c if c.starts_with("08") => unavailable("connection to the database lost"),
        "57P01" | "57P02" | "57P03" => unavailable("the database server is shutting down or restarting"),
        "53300" => unavailable("the database server has no free connection slots"),
        "28P01" | "28000" => Error::config(
            "DB_USER / DB_PASSWORD",
            format!("the server rejected the credentials ({message})"),
        ),
        "3D000" => Error::config("DB_NAME", format!("the database does not exist ({message})")),
        "23505" => Error::Conflict(format!(
            "unique constraint {} violated",
            constraint.unwrap_or("(unnamed)")
        )),
        "23503" => Error::not_found(
            "referenced row",
            format!("(foreign key {})", constraint.unwrap_or("(unnamed)")),
        ),
        "23514" => Error::InvalidInput {
            field: "row",
            reason: format!("check constraint {} violated", constraint.unwrap_or("(unnamed)")),
        },
        "22021" => Error::invalid("text", "contains a byte sequence PostgreSQL cannot store (NUL?)"),
        "40001" | "40P01" => Error::Conflict(format!("serialization failure or deadlock: {message}")),
        "55P03" => Error::Timeout {
            kind: TimeoutKind::Lock,
            reason: message.to_string(),
        },
        "57014" if message.contains("statement timeout") => Error::Timeout {
            kind: TimeoutKind::Statement,
            reason: message.to_string(),
        },
        "57014" => unavailable("the statement was cancelled"),
        "25P03" => Error::Timeout {
            kind: TimeoutKind::IdleInTransaction,
            reason: message.to_string(),
        },
        _ => return None,
    })
}
