//! Replica reads with read-your-writes (`DATABASE_REPLICA_URL`).
//!
//! A write made on behalf of users to some tables
//! ([`Database::acting_for`](super::Database::acting_for), which the actors use for
//! every request) records, once committed, the primary's WAL insert position for each
//! (user, table): an LSN at or past the end of its commit record. A read on behalf of
//! users of some tables goes to a replica only when the replica's replay position has
//! reached the highest LSN recorded for them there (waiting up to `DB_REPLICA_WAIT` for
//! it), the replica
//! is still in recovery and lags at most `DB_REPLICA_MAX_LAG`; otherwise it reads from
//! the primary. A user this process has not written for needs the *floor*: the
//! primary's position when the pool opened (or when the first write was recorded),
//! which covers every write committed before botdb started; the floor rises as the
//! replicas replay, and the users whose writes every replica has replayed are forgotten,
//! so the map holds only the users written in the last moments.
//!
//! A replica is used only while its WAL receiver streams (a standby whose primary is
//! gone looks idle, lag 0, while it is frozen). A replica that cannot be reached is
//! skipped for [`DOWN_FOR`]; a read that fails on a replica because its connection
//! broke, recovery cancelled it or it timed out is read again on the primary (reads
//! commit nothing: nothing is doubted). When the primary changes (a failover), every
//! position is forgotten: positions of one server say nothing about another's WAL.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::{PgConnection, PgPool};

use crate::config::Config;
use crate::error::{Error, Result};

/// How long a replica that could not be reached is left out.
pub(super) const DOWN_FOR: Duration = Duration::from_secs(5);

/// How long a replica's observed state is trusted without asking again.
const FRESH_FOR: Duration = Duration::from_millis(250);

/// The most a read waits for a connection to a replica before using the primary.
const ACQUIRE_AT_MOST: Duration = Duration::from_millis(250);

/// The most a replica may take to say where it is before it counts as down.
const OBSERVE_AT_MOST: Duration = Duration::from_secs(1);

/// Asks of a replica that is behind made one after the other, before sleeping between
/// asks.
const IMMEDIATE_ASKS: u32 = 3;

/// The most (user, table) positions held: past it the floor rises to the highest of
/// them and they are forgotten (stricter for everyone, never wrong).
const MAX_TRACKED: usize = 100_000;

/// "Not known": reads that need it go to the primary.
const UNKNOWN: u64 = u64::MAX;

/// What a replica said about itself: in recovery, replayed up to, lag in seconds.
/// The lag is `None` (cannot tell: the replica is not used) when no WAL receiver is
/// streaming (its primary is gone, or it cannot follow a promoted one's timeline: it
/// would look idle, lag 0, while frozen), or when it replayed nothing yet while WAL is
/// waiting. A role without `pg_read_all_stats` sees the receiver's row but not its
/// status: then a running receiver counts as streaming.
const STATE_SQL: &str = "SELECT pg_is_in_recovery(), \
     COALESCE((pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint, 0), \
     CASE WHEN NOT EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status IS NULL OR status = 'streaming') \
               THEN NULL \
          WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0::float8 \
          ELSE EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8 END";

/// The primary's WAL insert position after a commit: at or past the commit's record.
pub(super) const POSITION_SQL: &str = "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint";

/// The replicas of one [`Database`](super::Database) and what its users wrote last.
pub(crate) struct Replicas {
    servers: Vec<Server>,
    max_lag: Duration,
    wait: Duration,
    written: Mutex<Written>,
    /// The server a read tries first, turning round.
    next: AtomicUsize,
    /// The primary's host moves seen (several hosts): on a new one, every position is
    /// forgotten.
    primary_moves: AtomicU64,
    counts: Counts,
}

/// Reads by where they went.
#[derive(Default)]
struct Counts {
    on_replica: AtomicU64,
    behind: AtomicU64,
    lagging: AtomicU64,
    down: AtomicU64,
}

/// How many reads went where, and why those that could have gone to a replica did not
/// ([`Database::replica_reads`](super::Database::replica_reads)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReplicaReads {
    /// Reads answered by a replica.
    pub on_replica: u64,
    /// Reads sent to the primary because no replica had replayed the user's last
    /// write within `DB_REPLICA_WAIT` (or the write's position was not known).
    pub behind: u64,
    /// Reads sent to the primary because every replica lagged more than
    /// `DB_REPLICA_MAX_LAG` or was not a standby.
    pub lagging: u64,
    /// Reads sent to the primary because no replica could be reached.
    pub down: u64,
}

/// Write positions per user and table.
struct Written {
    by_user: HashMap<(i64, &'static str), u64>,
    /// Covers every write not in `by_user`.
    floor: u64,
}

struct Server {
    pool: PgPool,
    state: Mutex<State>,
}

#[derive(Clone, Copy)]
struct State {
    standby: bool,
    replay: u64,
    lag: Option<Duration>,
    seen_at: Option<Instant>,
    down_until: Option<Instant>,
}

/// Why a replica did not serve a read.
enum Skip {
    Behind,
    Lagging,
    Down,
}

impl Replicas {
    /// One lazily connected pool per replica host of `config`, or `None` without
    /// replicas.
    pub(super) fn from_config(config: &Config) -> Result<Option<Replicas>> {
        let Some(replica) = config.replica() else {
            return Ok(None);
        };
        // Where reads may go is worth seeing when reads surprise (as the primary's
        // "pool ready" line), and it is shown redacted like the primary's URL.
        tracing::debug!(
            replicas = %replica.redacted_url(),
            max_lag = ?config.replicas.max_lag,
            wait = ?config.replicas.wait,
            "history, settings and context reads may go to replicas"
        );
        let servers = replica
            .host_options()?
            .into_iter()
            .map(|options| Server {
                pool: crate::db::pool::pool_options(
                    &replica,
                    None,
                    &std::sync::Arc::new(crate::db::deadline::Deadlines::new(
                        &replica.network,
                        &replica.timeouts,
                    )),
                )
                .min_connections(0)
                .acquire_timeout(replica.pool.timeout.min(ACQUIRE_AT_MOST))
                .connect_lazy_with(options),
                state: Mutex::new(State {
                    standby: false,
                    replay: 0,
                    lag: None,
                    seen_at: None,
                    down_until: None,
                }),
            })
            .collect();
        Ok(Some(Replicas {
            servers,
            max_lag: config.replicas.max_lag,
            wait: config.replicas.wait,
            written: Mutex::new(Written {
                by_user: HashMap::new(),
                floor: UNKNOWN,
            }),
            next: AtomicUsize::new(0),
            primary_moves: AtomicU64::new(0),
            counts: Counts::default(),
        }))
    }

    /// Records that `users`' writes to `tables` committed at or before `position`
    /// (`None`: a position that could not be read, so their reads of those tables go to
    /// the primary until their next recorded write).
    pub(super) fn record(&self, users: &[i64], tables: &[&'static str], position: Option<u64>) {
        let mut written = lock(&self.written);
        let Some(lsn) = position else {
            for user in users {
                for table in tables {
                    written.by_user.insert((*user, table), UNKNOWN);
                }
            }
            return;
        };
        if written.floor == UNKNOWN {
            written.floor = lsn;
        }
        for user in users {
            for table in tables {
                let at = written.by_user.entry((*user, table)).or_insert(lsn);
                if *at == UNKNOWN || *at < lsn {
                    *at = lsn;
                }
            }
        }
        if written.by_user.len() > MAX_TRACKED {
            // No replica keeps up (or none is reachable): every known position is
            // covered by the highest; only the unknown ones must stay.
            let highest = written
                .by_user
                .values()
                .copied()
                .filter(|at| *at != UNKNOWN)
                .max()
                .unwrap_or(lsn);
            written.floor = written.floor.max(highest);
            written.by_user.retain(|_, at| *at == UNKNOWN);
        }
    }

    /// Follows the primary's host moves (`moves`, from the host list): on a move, every
    /// position is forgotten (they are another server's WAL) and, until the next
    /// recorded write, reads go to the primary.
    pub(super) fn follow_primary(&self, moves: u64) {
        if self.primary_moves.swap(moves, Ordering::AcqRel) != moves {
            let mut written = lock(&self.written);
            written.by_user.clear();
            written.floor = UNKNOWN;
        }
    }

    /// Raises the floor: every write committed so far is at or before `lsn` (the pool
    /// opened, or migrations ran).
    pub(super) fn set_floor(&self, lsn: u64) {
        let mut written = lock(&self.written);
        if written.floor == UNKNOWN || written.floor < lsn {
            written.floor = lsn;
        }
    }

    /// The position a replica must have replayed for a read of `tables` on behalf of
    /// `users`.
    fn needed(&self, users: &[i64], tables: &[&'static str]) -> u64 {
        let written = lock(&self.written);
        let mut needed = written.floor;
        for user in users {
            for table in tables {
                if let Some(at) = written.by_user.get(&(*user, *table)) {
                    needed = needed.max(*at);
                }
            }
        }
        needed
    }

    /// Raises the floor to what every reachable standby has replayed and forgets the
    /// users below it.
    fn prune(&self) {
        let replayed = self
            .servers
            .iter()
            .map(|s| *lock(&s.state))
            .filter(|s| self.acceptable(s) && s.down_until.is_none())
            .map(|s| s.replay)
            .min();
        let mut written = lock(&self.written);
        if let Some(replayed) = replayed
            && written.floor != UNKNOWN
            && replayed > written.floor
        {
            written.floor = replayed;
            let floor = written.floor;
            written.by_user.retain(|_, at| *at > floor);
        }
    }

    /// Reads and counts.
    pub(super) fn reads(&self) -> ReplicaReads {
        let c = &self.counts;
        ReplicaReads {
            on_replica: c.on_replica.load(Ordering::Relaxed),
            behind: c.behind.load(Ordering::Relaxed),
            lagging: c.lagging.load(Ordering::Relaxed),
            down: c.down.load(Ordering::Relaxed),
        }
    }

    /// Closes every replica's pool.
    pub(super) async fn close(&self) {
        for server in &self.servers {
            server.pool.close().await;
        }
    }

    /// (user, table) positions held (written recently, or not yet replayed).
    pub(super) fn tracked(&self) -> usize {
        lock(&self.written).by_user.len()
    }

    /// Runs `body` on a replica that has what `users` wrote to `tables`; `Ok(None)`
    /// when none can (the caller reads from the primary).
    pub(super) async fn read<T, F>(
        &self,
        users: &[i64],
        tables: &[&'static str],
        body: &F,
    ) -> Result<Option<T>>
    where
        F: AsyncFnOnce(&mut PgConnection) -> Result<T> + Clone,
    {
        let needed = self.needed(users, tables);
        let n = self.servers.len();
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let mut why = Skip::Down;
        for i in 0..n {
            let server = &self.servers[(first + i) % n];
            match self.try_server(server, needed, body).await {
                Ok(value) => {
                    self.counts.on_replica.fetch_add(1, Ordering::Relaxed);
                    return Ok(Some(value));
                }
                Err(Ok(skip)) => {
                    // The most telling reason: behind > lagging > down.
                    why = match (why, skip) {
                        (Skip::Behind, _) | (_, Skip::Behind) => Skip::Behind,
                        (Skip::Lagging, _) | (_, Skip::Lagging) => Skip::Lagging,
                        _ => Skip::Down,
                    };
                }
                Err(Err(e)) => return Err(e),
            }
        }
        let counter = match why {
            Skip::Behind => &self.counts.behind,
            Skip::Lagging => &self.counts.lagging,
            Skip::Down => &self.counts.down,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(None)
    }

    /// One replica: `Ok` with the read, `Err(Ok(skip))` when it cannot serve it,
    /// `Err(Err(e))` for the read's own error (the primary would give the same).
    async fn try_server<T, F>(
        &self,
        server: &Server,
        needed: u64,
        body: &F,
    ) -> std::result::Result<T, Result<Skip>>
    where
        F: AsyncFnOnce(&mut PgConnection) -> Result<T> + Clone,
    {
        if needed == UNKNOWN {
            return Err(Ok(Skip::Behind));
        }
        let now = Instant::now();
        let seen = *lock(&server.state);
        if seen.down_until.is_some_and(|t| t > now) {
            return Err(Ok(Skip::Down));
        }
        let fresh = seen.seen_at.is_some_and(|t| now - t < FRESH_FOR);
        if fresh && !self.acceptable(&seen) {
            return Err(Ok(Skip::Lagging));
        }
        let mut conn = match server.pool.acquire().await {
            Ok(conn) => conn,
            // Every connection to it is busy: not down, just not now.
            Err(sqlx::Error::PoolTimedOut) => return Err(Ok(Skip::Down)),
            Err(e) => {
                tracing::debug!(error = %e, "a replica cannot be reached; reading from the primary");
                server.mark_down();
                return Err(Ok(Skip::Down));
            }
        };
        if !(fresh && self.acceptable(&seen) && seen.replay >= needed) {
            match self.wait_for(server, &mut conn, needed).await {
                Ok(()) => {}
                Err(Skip::Down) => {
                    drop(conn.detach());
                    return Err(Ok(Skip::Down));
                }
                Err(skip) => return Err(Ok(skip)),
            }
        }
        match body.clone()(&mut conn).await {
            Ok(value) => Ok(value),
            Err(e) if matches!(e, Error::Unavailable { .. } | Error::OutcomeUnknown { .. }) => {
                tracing::debug!(error = %e, "a read on a replica lost its connection; reading from the primary");
                server.mark_down();
                drop(conn.detach());
                Err(Ok(Skip::Down))
            }
            // Recovery cancelled it (SQLSTATE 40001, or a deadlock with the startup
            // process), or it ran past the replica's statement timeout: the primary may
            // well answer. The connection may have been terminated: not reused.
            Err(e @ (Error::Conflict(_) | Error::Timeout { .. })) => {
                tracing::debug!(error = %e, "a read on a replica was cancelled; reading from the primary");
                drop(conn.detach());
                Err(Ok(Skip::Lagging))
            }
            Err(e) => Err(Err(e)),
        }
    }

    /// Asks the replica on `conn` where it is until it has replayed `needed`: at once a
    /// few times (a replica usually replays a commit within a round trip or two), then
    /// sleeping 1 to 10 ms between asks, within `DB_REPLICA_WAIT`.
    async fn wait_for(
        &self,
        server: &Server,
        conn: &mut PgConnection,
        needed: u64,
    ) -> std::result::Result<(), Skip> {
        let deadline = Instant::now() + self.wait;
        let mut pause = Duration::from_millis(1);
        for asks in 1u32.. {
            let state = match server.observe(conn).await {
                Ok(state) => state,
                Err(e) => {
                    tracing::debug!(error = %e, "a replica failed to report its state; reading from the primary");
                    server.mark_down();
                    return Err(Skip::Down);
                }
            };
            self.prune();
            if !self.acceptable(&state) {
                return Err(Skip::Lagging);
            }
            if state.replay >= needed {
                return Ok(());
            }
            let now_or_later = if asks <= IMMEDIATE_ASKS {
                Duration::ZERO
            } else {
                pause
            };
            if Instant::now() + now_or_later >= deadline {
                return Err(Skip::Behind);
            }
            if !now_or_later.is_zero() {
                tokio::time::sleep(now_or_later).await;
                pause = (pause * 2).min(Duration::from_millis(10));
            }
        }
        Err(Skip::Behind)
    }

    /// A standby within the lag limit.
    fn acceptable(&self, state: &State) -> bool {
        state.standby && state.lag.is_some_and(|lag| lag <= self.max_lag)
    }
}

impl Replicas {
    /// Connects to each replica once, within `timeout`, and warns of each that cannot
    /// be reached (reads then go to the primary). Without it a replica with a wrong
    /// password, say, would go unsaid: its pool reaches for it only when a read could
    /// use it, and gives up after at most 250 ms, at debug level. What it learns is
    /// kept as the replica's state.
    pub(super) async fn probe(&self, timeout: Duration) {
        // All at once: a replica that never answers costs the start one timeout.
        futures::future::join_all(self.servers.iter().map(|server| server.probe(timeout))).await;
    }
}

impl Server {
    /// [`Replicas::probe`] for this replica.
    async fn probe(&self, timeout: Duration) {
        let options = self.pool.connect_options();
        let host = format!("{}:{}", options.get_host(), options.get_port());
        match tokio::time::timeout(timeout, sqlx::ConnectOptions::connect(&*options)).await {
            Ok(Ok(mut conn)) => {
                if let Err(e) = self.observe(&mut conn).await {
                    tracing::warn!(replica = %host, error = %e, "a replica did not report its state; reads go to the primary until it does");
                    self.mark_down();
                }
                let _ = sqlx::Connection::close(conn).await;
            }
            Ok(Err(e)) => {
                tracing::warn!(replica = %host, error = %e, "a replica cannot be reached; reads go to the primary until it can");
                self.mark_down();
            }
            Err(_) => {
                tracing::warn!(replica = %host, ?timeout, "a replica did not accept a connection in time; reads go to the primary until it does");
                self.mark_down();
            }
        }
    }

    /// Asks the replica where it is (within [`OBSERVE_AT_MOST`]), and keeps the answer.
    async fn observe(&self, conn: &mut PgConnection) -> Result<State> {
        let asked = tokio::time::timeout(OBSERVE_AT_MOST, sqlx::query_as(STATE_SQL).fetch_one(&mut *conn));
        let (standby, replay, lag): (bool, i64, Option<f64>) =
            asked.await.map_err(|_| Error::Unavailable {
                reason: format!("a replica did not answer within {OBSERVE_AT_MOST:?}"),
                source: None,
            })??;
        let state = State {
            standby,
            replay: u64::try_from(replay).unwrap_or(0),
            lag: lag.map(|s| Duration::from_secs_f64(s.clamp(0.0, 1e9))),
            seen_at: Some(Instant::now()),
            down_until: None,
        };
        *lock(&self.state) = state;
        Ok(state)
    }

    fn mark_down(&self) {
        lock(&self.state).down_until = Some(Instant::now() + DOWN_FOR);
    }
}

/// A poisoned lock still holds consistent positions (each update is one assignment).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
