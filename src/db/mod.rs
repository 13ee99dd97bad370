//! [`Database`]: the pool (the reference's `engine`), the session scope (its
//! `session_factory` plus `async with session.begin()`), and graceful close.
//!
//! [`Database::migrate`] and [`Database::migrate_with`] are not here but in the schema
//! layer (`takeover`, which recognises and plans a database before migrating it): this
//! module sits below it, imports nothing of `migrate` or `takeover`, and keeps only
//! what they read (the lock policy, the application's directory, the replica floor)
//! behind `pub(crate)` accessors.

use std::fmt;
use std::sync::Arc;

use sqlx::PgPool;

use crate::config::{AuditKey, Limits, MigrateConfig};

mod counters;
mod deadline;
// The migrator's dedicated connections choose their host here too (it needs only config).
pub(crate) mod hosts;
mod lease;
mod open;
mod pool;
mod replicas;
mod scope;
mod socket;

pub use counters::{Counters, Removed};
use deadline::Deadlines;
use hosts::HostsLink;
use lease::Parking;
pub use replicas::ReplicaReads;
use replicas::Replicas;

/// Whose writes a handle makes, to which tables.
struct Acting {
    users: Box<[i64]>,
    tables: Box<[&'static str]>,
}

/// A handle on botdb's connection pool. Cheap to clone: clones share one pool.
#[derive(Clone)]
pub struct Database {
    pool: PgPool,
    /// Connections held between uses (see `lease`).
    parking: Arc<Parking>,
    limits: Limits,
    /// How [`Database::migrate`] takes its locks. (`migrate` and `migrate_with` are
    /// the schema layer's, `takeover`: this module keeps only their settings, so that
    /// it needs nothing above it.)
    migrate: MigrateConfig,
    /// The application's migrations directory, applied by [`Database::migrate`].
    app_migrations: Option<Arc<std::path::Path>>,
    /// The server's URL without its password, for logs and `Debug`.
    server: Arc<str>,
    /// The key of erasures' audit rows.
    audit_key: Option<AuditKey>,
    /// Rows removed for good (erasures, purges), for `/metrics`.
    counters: Arc<Counters>,
    /// botdb's own deadlines on the server's answers (`DB_NETWORK_TIMEOUT`).
    deadlines: Arc<Deadlines>,
    /// The host list, when the configuration names several hosts or a
    /// `target_session_attrs` other than `any`.
    hosts: Option<Arc<HostsLink>>,
    /// The replicas reads may go to (`DATABASE_REPLICA_URL`).
    replicas: Option<Arc<Replicas>>,
    /// The users and tables this handle writes for ([`acting_for`](Self::acting_for)):
    /// its committed writes are recorded for their reads on replicas.
    acting_for: Option<Arc<Acting>>,
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("server", &self.server)
            .field("pool", &self.pool_status())
            .finish()
    }
}

/// A snapshot of the pool's connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PoolStatus {
    /// Open connections (idle + in use).
    pub size: u32,
    /// Open connections not in use: waiting in the pool, or held by botdb for reuse.
    pub idle: u32,
    /// Connections checked out by callers.
    pub in_use: u32,
    /// The most the pool opens (`pool_size + max_overflow`).
    pub max: u32,
    /// `true` after [`Database::close`] started.
    pub closed: bool,
}

impl Database {
    /// With replicas: raises the floor to the primary's WAL position now. When the
    /// server cannot tell (no `pg_current_wal_insert_lsn()`), the floor stays unknown
    /// and reads go to the primary until a write records one. (Also after a migration:
    /// a read that needs only the floor must not reach a replica without the new schema.)
    pub(crate) async fn raise_floor(&self) {
        if let Some(replicas) = &self.replicas {
            match sqlx::query_scalar::<_, i64>(replicas::POSITION_SQL)
                .fetch_one(&self.pool)
                .await
            {
                Ok(lsn) => replicas.set_floor(u64::try_from(lsn).unwrap_or(0)),
                Err(e) => {
                    tracing::warn!(error = %e, "the primary's WAL position cannot be read: replica reads wait for a write")
                }
            }
        }
    }

    /// A handle on the same pool that writes for `users` to `tables`: once a write
    /// through it ([`session`](Self::session), [`autocommit`](Self::autocommit)) has
    /// committed, the primary's WAL position is recorded for each user and table, so
    /// that their reads of those tables through [`read_replica`](Self::read_replica)
    /// see it. The actors give every request such a handle for its user (a batch, for
    /// all of its users) and the tables it may write (its own, and
    /// [`DbRequest::ALSO_WRITES`](crate::actors::DbRequest::ALSO_WRITES)). Without
    /// replicas it is the same handle, at no cost.
    pub fn acting_for(&self, users: &[i64], tables: &[&'static str]) -> Database {
        let mut db = self.clone();
        if self.replicas.is_some() {
            db.acting_for = Some(Arc::new(Acting {
                users: users.into(),
                tables: tables.into(),
            }));
        }
        db
    }

    /// `true` when reads may go to replicas (`DATABASE_REPLICA_URL`).
    pub fn has_replicas(&self) -> bool {
        self.replicas.is_some()
    }

    /// How many reads went to a replica and why others went to the primary (all zero
    /// without replicas).
    pub fn replica_reads(&self) -> ReplicaReads {
        self.replicas.as_ref().map(|r| r.reads()).unwrap_or_default()
    }

    /// How many (user, table) write positions are held for read-your-writes (written
    /// recently, or not yet replayed by every replica).
    pub fn replica_tracked(&self) -> usize {
        self.replicas.as_ref().map_or(0, |r| r.tracked())
    }

    /// The underlying sqlx pool (the reference's `engine`), for queries of your own.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The text limits this database was configured with; build inputs with them
    /// ([`Limits::message`], [`Limits::system_prompt`]).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The key of erasures' audit rows (`BOTDB_AUDIT_KEY`), if configured.
    pub fn audit_key(&self) -> Option<&AuditKey> {
        self.audit_key.as_ref()
    }

    /// What was removed for good through this pool (erasures, purges) since it opened.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// How many times the server (or the network to it) did not answer within
    /// botdb's own deadline (`DB_NETWORK_TIMEOUT`, `DB_STATEMENT_TIMEOUT`); each closed
    /// its connection and retired those opened before it.
    pub fn deadline_misses(&self) -> u64 {
        self.deadlines.misses()
    }

    /// The server's URL, password redacted.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// How [`migrate`](Self::migrate) takes its locks (`BOTDB_MIGRATE_LOCK_TIMEOUT`,
    /// `BOTDB_MIGRATE_ATTEMPTS`).
    pub(crate) fn migrate_config(&self) -> &MigrateConfig {
        &self.migrate
    }

    /// The application's migrations directory the configuration names
    /// (`BOTDB_APP_MIGRATIONS`), applied by [`migrate`](Self::migrate).
    pub(crate) fn app_migrations_dir(&self) -> Option<&std::path::Path> {
        self.app_migrations.as_deref()
    }

    /// Graceful shutdown: stops handing out connections (later callers get
    /// [`Error::ShuttingDown`](crate::Error::ShuttingDown)), waits for every checked-out connection to come back
    /// (a running query is not cut), then closes them all.
    ///
    /// With `DB_STATEMENT_TIMEOUT` set it waits at most that plus twice
    /// `DB_NETWORK_TIMEOUT`: botdb's own units of work end within it, and a connection
    /// still being opened to a server that went silent (sqlx keeps up the pool's
    /// minimum for minutes) is not worth waiting for. Without it, it waits as long as a
    /// checked-out connection is held; bound it with [`close_within`](Self::close_within).
    pub async fn close(&self) {
        self.close_all().await;
    }

    /// [`close`](Self::close); `true` when every connection came back and was closed
    /// within the bound.
    async fn close_all(&self) -> bool {
        self.parking.close();
        let closed = match self.deadlines.close_bound() {
            Some(bound) => {
                let closed = tokio::time::timeout(bound, self.pool.close()).await.is_ok();
                if !closed {
                    tracing::warn!(
                        ?bound,
                        "closing the pool: connections still out or being opened after the bound; they close when they come back"
                    );
                }
                closed
            }
            None => {
                self.pool.close().await;
                true
            }
        };
        if let Some(replicas) = &self.replicas {
            replicas.close().await;
        }
        tracing::debug!(server = %self.server, "database pool closed");
        closed
    }

    /// [`close`](Self::close), giving up after `limit`. Returns `true` if every connection
    /// was returned and closed in time; otherwise the pool stays closed to new callers and
    /// the stragglers are closed when they come back.
    pub async fn close_within(&self, limit: std::time::Duration) -> bool {
        tokio::time::timeout(limit, self.close_all())
            .await
            .unwrap_or(false)
    }

    /// `true` once [`close`](Self::close) has started.
    pub fn is_closed(&self) -> bool {
        self.pool.is_closed()
    }

    /// How many connections are open, idle and in use.
    pub fn pool_status(&self) -> PoolStatus {
        let size = self.pool.size();
        let parked = self.parking.len();
        let idle = u32::try_from(self.pool.num_idle() + parked)
            .unwrap_or(u32::MAX)
            .min(size);
        PoolStatus {
            size,
            idle,
            in_use: size - idle,
            max: self.pool.options().get_max_connections(),
            closed: self.pool.is_closed(),
        }
    }
}
