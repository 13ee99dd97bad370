//! [`Database`]: the pool (the reference's `engine`), the session scope (its
//! `session_factory` plus `async with session.begin()`), and graceful close.
//!
//! [`Database::migrate`] and [`Database::migrate_with`] are not here but in the schema
//! layer (`takeover`, which recognises and plans a database before migrating it): this
//! module sits below it, imports nothing of `migrate` or `takeover`, and keeps only
//! what they read (the lock policy, the application's directory, the replica floor)
//! behind `pub(crate)` accessors.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

use crate::config::{AuditKey, Config, Limits, MigrateConfig};
use crate::error::{Error, Result};

mod counters;
// The migrator's dedicated connections choose their host here too (it needs only config).
pub(crate) mod hosts;
mod lease;
mod replicas;

pub use counters::{Counters, Removed};
use hosts::{Hosts, HostsLink};
use lease::{Lease, Parking};
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
    /// Builds the pool and opens its `pool_size` permanent connections.
    ///
    /// The pool keeps `pool_size` connections open, opens up to `pool_size +
    /// max_overflow` under load and closes the extra ones once idle for
    /// `idle_timeout`; with `pre_ping` it checks a connection's life before handing it
    /// out (only those idle at least `pre_ping_idle`, if that is set); it replaces
    /// connections older than `recycle`; with `echo` every statement is logged through
    /// `tracing` (target `sqlx::query`, level INFO).
    ///
    /// # Errors
    /// [`Error::Config`] for a malformed URL or rejected credentials,
    /// [`Error::Unavailable`] when the server cannot be reached within the pool timeout.
    /// No error contains the password.
    ///
    /// With several hosts or a `target_session_attrs` other than `any`
    /// ([`Config::hosts`], [`Config::target_session_attrs`]), the hosts are tried in
    /// order and the pool connects to the first that satisfies the attribute; every
    /// new connection is checked again, and goes to another host of the list when its
    /// server no longer satisfies it. [`Error::Unavailable`] then names every host and
    /// what it was when none satisfied the attribute within the pool timeout.
    pub async fn connect(config: &Config) -> Result<Self> {
        let Some(hosts) = Hosts::from_config(config)? else {
            let options = config.connect_options()?;
            let pool = pool_options(config, None)
                .connect_with(options)
                .await
                .map_err(|e| connect_error(config, e))?;
            tracing::debug!(server = %config.redacted_url(), "database pool ready");
            return Self::from_pool(pool, config, None)?
                .with_floor()
                .await?
                .probed(config)
                .await;
        };
        let deadline = tokio::time::Instant::now() + config.pool.timeout;
        hosts.resolve(deadline).await?;
        let pool = pool_options(config, Some(&hosts)).connect_lazy_with(hosts.current_options());
        let link = hosts.attach(&pool);
        // As `connect_with`: one connection now, so that a failure shows here.
        let conn = pool.acquire().await.map_err(|e| connect_error(config, e))?;
        drop(conn);
        tracing::debug!(server = %config.redacted_url(), "database pool ready");
        Self::from_pool(pool, config, Some(link))?
            .with_floor()
            .await?
            .probed(config)
            .await
    }

    /// Builds the pool without connecting; connections open on first use.
    ///
    /// # Errors
    /// [`Error::Config`] for a malformed URL.
    pub fn connect_lazy(config: &Config) -> Result<Self> {
        let Some(hosts) = Hosts::from_config(config)? else {
            let pool = pool_options(config, None).connect_lazy_with(config.connect_options()?);
            return Self::from_pool(pool, config, None);
        };
        let pool = pool_options(config, Some(&hosts)).connect_lazy_with(hosts.current_options());
        let link = hosts.attach(&pool);
        Self::from_pool(pool, config, Some(link))
    }

    fn from_pool(pool: PgPool, config: &Config, hosts: Option<HostsLink>) -> Result<Self> {
        Ok(Database {
            parking: Parking::new(pool.clone(), &config.pool),
            pool,
            limits: config.limits,
            migrate: config.migrate,
            app_migrations: config.app_migrations.as_deref().map(Arc::from),
            server: config.redacted_url().into(),
            audit_key: config.audit_key.clone(),
            counters: Arc::default(),
            hosts: hosts.map(Arc::new),
            replicas: Replicas::from_config(config)?.map(Arc::new),
            acting_for: None,
        })
    }

    /// With replicas: each connected to once, within the pool timeout, and a warning for
    /// each that cannot be (a wrong password is said at start, not found later).
    async fn probed(self, config: &Config) -> Result<Self> {
        if let Some(replicas) = &self.replicas {
            replicas.probe(config.pool.timeout).await;
        }
        Ok(self)
    }

    /// With replicas: the primary's WAL position now, below which every write this
    /// process did not record lies (see `replicas`).
    async fn with_floor(self) -> Result<Self> {
        self.raise_floor().await;
        Ok(self)
    }

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

    /// A write whose outcome is unknown may have committed: its users' reads of its
    /// tables go to the primary until their next recorded write.
    fn note_unknown(&self, err: &Error) {
        if let (Some(replicas), Some(acting), true) =
            (&self.replicas, &self.acting_for, err.is_outcome_unknown())
        {
            replicas.record(&acting.users, &acting.tables, None);
        }
    }

    /// With several hosts: forgets the recorded positions when the primary moved.
    fn follow_primary(&self, replicas: &Replicas) {
        if let Some(link) = &self.hosts {
            replicas.follow_primary(link.hosts().moves());
        }
    }

    /// Records the primary's WAL position for the users this handle works for, after a
    /// commit on `conn`; `false` when the connection failed to answer (the commit
    /// stands: their reads go to the primary until their next write).
    async fn note_write(&self, conn: &mut PgConnection) -> bool {
        let (Some(replicas), Some(acting)) = (&self.replicas, &self.acting_for) else {
            return true;
        };
        self.follow_primary(replicas);
        match sqlx::query_scalar::<_, i64>(replicas::POSITION_SQL)
            .fetch_one(conn)
            .await
        {
            Ok(lsn) => {
                replicas.record(&acting.users, &acting.tables, u64::try_from(lsn).ok());
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "the WAL position after a commit could not be read");
                replicas.record(&acting.users, &acting.tables, None);
                false
            }
        }
    }

    /// A unit of work on `conn` failed with `err`: when the server refused a write as
    /// read-only, the connection is closed instead of reused, parked connections go
    /// back to the pool and every connection open now is checked before its next use.
    /// With several hosts, a lost connection also starts a search for the host that
    /// satisfies `target_session_attrs` (the server may have failed over).
    fn after_failure(&self, conn: &mut Lease, err: &Error) {
        if err.is_read_only() {
            conn.discard();
            self.parking.flush();
            if let Some(link) = &self.hosts {
                link.hosts().suspect();
            }
        }
        self.kick_if_lost(err);
    }

    /// With several hosts, a lost connection starts a search for the host that
    /// satisfies `target_session_attrs`.
    fn kick_if_lost(&self, err: &Error) {
        if matches!(err, Error::Unavailable { .. } | Error::OutcomeUnknown { .. })
            && let Some(link) = &self.hosts
        {
            link.hosts().kick();
        }
    }

    /// A connection for one unit of work; with several hosts, a failure to get one
    /// starts a search for the host.
    async fn lease(&self) -> Result<Lease> {
        let leased = self.parking.lease().await;
        if let (Err(Error::Unavailable { .. }), Some(link)) = (&leased, &self.hosts) {
            link.hosts().kick();
        }
        leased
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

    /// Runs `body` in one transaction: the unit of work.
    ///
    /// `body` gets the transaction's connection and may run any mix of reads and writes
    /// (the repository functions in [`crate::repo`] take it). When `body` returns `Ok`
    /// the transaction is committed and, only once the commit succeeded, the value is
    /// returned: an `Ok` from `session` means committed. When `body` returns `Err` or
    /// panics, the transaction is rolled back before the error is returned or the panic
    /// resumed. When the returned future is dropped before it finishes, the transaction
    /// is rolled back as the connection goes back to the pool.
    ///
    /// ```no_run
    /// # async fn f(db: botdb::Database) -> botdb::Result<()> {
    /// use botdb::{model::Role, repo};
    /// let msg = db.limits().message(42, Role::User, "hello")?;
    /// db.session(async |tx| {
    ///     repo::users::upsert(&mut *tx, 42).await?;
    ///     repo::messages::append(&mut *tx, &msg).await
    /// })
    /// .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// `body`'s error (a connection lost while `body` ran is [`Error::Unavailable`]:
    /// COMMIT was never sent, nothing is committed); [`Error::Unavailable`] when no
    /// connection can be had; [`Error::OutcomeUnknown`] when the connection broke while
    /// COMMIT was under way (it may have been committed); [`Error::ShuttingDown`] after
    /// [`close`](Self::close).
    pub async fn session<T, F>(&self, body: F) -> Result<T>
    where
        F: AsyncFnOnce(&mut PgConnection) -> Result<T>,
    {
        let mut conn = self.lease().await?;
        let mut tx = match conn.begin().await {
            Ok(tx) => tx,
            Err(e) => {
                // BEGIN is never refused as read-only: only a lost connection matters.
                let err = Error::from(e);
                self.kick_if_lost(&err);
                return Err(err);
            }
        };
        let result = match AssertUnwindSafe(body(&mut tx)).catch_unwind().await {
            Ok(Ok(value)) => match tx.commit().await {
                Ok(()) => {
                    if !self.note_write(&mut conn).await {
                        // Committed, but the connection failed after: not put back as good.
                        return Ok(value);
                    }
                    Ok(value)
                }
                Err(e) => {
                    let err = Error::from(e).after_send();
                    self.after_failure(&mut conn, &err);
                    self.note_unknown(&err);
                    return Err(err);
                }
            },
            Ok(Err(err)) => {
                let rolled_back = tx.rollback().await;
                self.after_failure(&mut conn, &err);
                if let Err(e) = rolled_back {
                    tracing::debug!(error = %e, "rollback after an error failed; the connection is discarded");
                    return Err(err);
                }
                Err(err)
            }
            Err(panic) => {
                if let Err(e) = tx.rollback().await {
                    tracing::debug!(error = %e, "rollback after a panic failed; the connection is discarded");
                }
                std::panic::resume_unwind(panic)
            }
        };
        // Committed or rolled back: the connection is as good as new. (Left before this
        // point, it goes back through sqlx, which flushes the rollback a dropped
        // transaction queued.)
        conn.clean();
        result
    }

    /// Runs `body` on one pooled connection without an explicit transaction: each
    /// statement `body` runs is its own (implicit) transaction, committed when it returns.
    ///
    /// For a body of ONE statement this is exactly one transaction, like
    /// [`session`](Self::session), at a third of the round trips (no BEGIN, no COMMIT);
    /// the actors use it for their single-statement requests. For two or more writes
    /// that must succeed or fail together, use [`session`](Self::session). For reads,
    /// use [`read`](Self::read).
    ///
    /// # Errors
    /// `body`'s error; [`Error::OutcomeUnknown`] when the connection broke while the
    /// statement ran (it commits on its own, so it may have); [`Error::Unavailable`]
    /// when no connection can be had (nothing was sent); [`Error::ShuttingDown`] after
    /// [`close`](Self::close).
    pub async fn autocommit<T, F>(&self, body: F) -> Result<T>
    where
        F: AsyncFnOnce(&mut PgConnection) -> Result<T>,
    {
        self.on_connection(body, Error::after_send, true).await
    }

    /// Runs read-only `body` on one pooled connection, like
    /// [`autocommit`](Self::autocommit); a lost connection is
    /// [`Error::Unavailable`]: a read commits nothing, so there is no outcome to doubt.
    ///
    /// # Errors
    /// `body`'s error; [`Error::Unavailable`] when no connection can be had or it broke;
    /// [`Error::ShuttingDown`] after [`close`](Self::close).
    pub async fn read<T, F>(&self, body: F) -> Result<T>
    where
        F: AsyncFnOnce(&mut PgConnection) -> Result<T>,
    {
        self.on_connection(body, |e| e, false).await
    }

    /// Runs read-only `body` like [`read`](Self::read), on a replica when one has
    /// replayed the last write recorded for `users` to any of `tables` (the tables
    /// `body` reads; waiting up to `DB_REPLICA_WAIT` for it) and lags at most
    /// `DB_REPLICA_MAX_LAG`; otherwise, or when the replica
    /// fails while reading, on the primary. A user reading through botdb's actors
    /// after a write through them always sees that write. Without replicas it is
    /// [`read`](Self::read). `body` may run twice (on a replica, then on the primary),
    /// hence `Clone` (a closure that borrows what it reads is).
    ///
    /// # Errors
    /// As [`read`](Self::read).
    pub async fn read_replica<T, F>(&self, users: &[i64], tables: &[&'static str], body: F) -> Result<T>
    where
        F: AsyncFnOnce(&mut PgConnection) -> Result<T> + Clone,
    {
        if self.is_closed() {
            // ShuttingDown, as every other read after close.
            return self.read(body).await;
        }
        if let Some(replicas) = &self.replicas {
            self.follow_primary(replicas);
            if let Some(value) = replicas.read(users, tables, &body).await? {
                return Ok(value);
            }
        }
        self.read(body).await
    }

    /// Runs `body` on a leased connection (recording the WAL position after it when it
    /// `writes`); `failed` interprets the body's error (a
    /// failure to get the connection is never passed to it: nothing was sent then).
    async fn on_connection<T, F>(&self, body: F, failed: fn(Error) -> Error, writes: bool) -> Result<T>
    where
        F: AsyncFnOnce(&mut PgConnection) -> Result<T>,
    {
        let mut conn = self.lease().await?;
        match body(&mut conn).await {
            Ok(value) => {
                if writes && !self.note_write(&mut conn).await {
                    return Ok(value);
                }
                conn.clean();
                Ok(value)
            }
            Err(e) => {
                self.after_failure(&mut conn, &e);
                let e = failed(e);
                if writes {
                    self.note_unknown(&e);
                }
                Err(e)
            }
        }
    }

    /// Graceful shutdown: stops handing out connections (later callers get
    /// [`Error::ShuttingDown`]), waits for every checked-out connection to come back
    /// (a running query is not cut), then closes them all.
    ///
    /// It waits as long as a checked-out connection is held; bound it with
    /// [`close_within`](Self::close_within).
    pub async fn close(&self) {
        self.parking.close();
        self.pool.close().await;
        if let Some(replicas) = &self.replicas {
            replicas.close().await;
        }
        tracing::debug!(server = %self.server, "database pool closed");
    }

    /// [`close`](Self::close), giving up after `limit`. Returns `true` if every connection
    /// was returned and closed in time; otherwise the pool stays closed to new callers and
    /// the stragglers are closed when they come back.
    pub async fn close_within(&self, limit: std::time::Duration) -> bool {
        tokio::time::timeout(limit, self.close()).await.is_ok()
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

fn pool_options(config: &Config, hosts: Option<&Arc<Hosts>>) -> PgPoolOptions {
    let pool = &config.pool;
    let mut options = PgPoolOptions::new()
        .min_connections(pool.size)
        .max_connections(pool.max_connections())
        .acquire_timeout(pool.timeout)
        .idle_timeout(pool.idle_timeout)
        .max_lifetime(pool.recycle)
        // With several hosts botdb pings itself, to notice a lost server at once.
        .test_before_acquire(pool.pre_ping && pool.pre_ping_idle.is_zero() && hosts.is_none());
    let ping_idle = if hosts.is_some() {
        pool.pre_ping.then_some(pool.pre_ping_idle)
    } else {
        (pool.pre_ping && !pool.pre_ping_idle.is_zero()).then_some(pool.pre_ping_idle)
    };
    if ping_idle.is_some() || hosts.is_some() {
        let hosts = hosts.cloned();
        options = options.before_acquire(move |conn, meta| {
            let hosts = hosts.clone();
            Box::pin(async move {
                if let Some(threshold) = ping_idle
                    && meta.idle_for >= threshold
                    && let Err(e) = conn.ping().await
                {
                    if let Some(hosts) = &hosts {
                        hosts.kick();
                    }
                    return Err(e);
                }
                match hosts {
                    Some(hosts) => hosts.before_acquire(conn, meta.age).await,
                    None => Ok(true),
                }
            })
        });
    }
    if let Some(hosts) = hosts {
        let hosts = hosts.clone();
        options = options.after_connect(move |conn, _meta| {
            let hosts = hosts.clone();
            Box::pin(async move { hosts.after_connect(conn).await })
        });
    }
    options
}

/// Turns a failed first connection into an error that names the server (never the
/// password) and the setting to fix, and says what to check.
fn connect_error(config: &Config, err: sqlx::Error) -> Error {
    match config.explain(Error::from(err)) {
        Error::Unavailable { reason, source } => Error::Unavailable {
            reason: format!(
                "cannot connect to {} within {:?} ({reason}); is the server running? (DB_POOL_TIMEOUT bounds the wait)",
                config.redacted_url(),
                config.pool.timeout
            ),
            source,
        },
        other => other,
    }
}
