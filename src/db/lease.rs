//! Connections held between uses: a small stack in front of sqlx's pool.
//!
//! sqlx's pool tests every connection when it is returned: a spawned task sends a
//! Sync and waits for the server's ReadyForQuery, a full round trip per checkout on
//! top of the statement (measured here: a `SELECT 1` costs 98 µs through the pool
//! against 41 µs on a held connection). botdb therefore keeps connections that ended
//! their last use cleanly on a stack of its own and hands them out again directly:
//! no acquire, no release ping.
//!
//! When every connection of the pool is out, a caller waits for the first of: a
//! connection released by botdb (handed over directly, oldest waiter first) or one
//! coming back to the pool. Otherwise it takes one from the pool, which then opens
//! more as load needs, up to `pool_size + max_overflow`.
//!
//! What keeps this as safe as the pool:
//! - only a connection whose last unit of work completed cleanly is parked: a
//!   connection dropped mid-way (a cancelled future, a panic) or after an error goes
//!   back through sqlx, whose release ping flushes a pending rollback or closes it;
//! - a parked connection stays parked at most the pre-ping threshold
//!   (`DB_POOL_PRE_PING_IDLE`); older ones go back to sqlx's pool, whose pre-ping,
//!   idle timeout and recycle rules then apply, so a connection that sat idle is still
//!   checked before use. With a threshold of 0 (the reference's ping on every
//!   checkout) nothing is parked;
//! - a connection is parked for at most `DB_POOL_RECYCLE` in total, then returned
//!   (sqlx closes it if it is older than that);
//! - `Database::close` stops parking and returns every parked connection before it
//!   closes the pool.

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{Connection, PgConnection, PgPool, Postgres};
use tokio::sync::oneshot;

use crate::config::PoolConfig;
use crate::error::Result;

struct Parked {
    conn: PoolConnection<Postgres>,
    idle_since: Instant,
    leased_at: Instant,
}

/// A connection handed from a release to a waiter.
struct Handed {
    conn: PoolConnection<Postgres>,
    leased_at: Instant,
}

/// The stack of parked connections, and the callers waiting for one.
pub(crate) struct Parking {
    pool: PgPool,
    parked: Mutex<Vec<Parked>>,
    waiters: Mutex<VecDeque<oneshot::Sender<Handed>>>,
    closed: AtomicBool,
    /// How long a connection may stay parked; zero disables parking.
    idle_limit: Duration,
    /// How long a connection may be kept out of the pool in total.
    lease_limit: Option<Duration>,
    /// How long a connection going back to the pool may take to answer a ping
    /// (`DB_NETWORK_TIMEOUT`; see [`give_back`]).
    round_trip: Duration,
}

impl Parking {
    pub(crate) fn new(pool: PgPool, config: &PoolConfig, round_trip: Duration) -> Arc<Self> {
        let idle_limit = if config.pre_ping {
            config.pre_ping_idle
        } else {
            Duration::from_secs(1)
        };
        let parking = Arc::new(Parking {
            pool,
            parked: Mutex::new(Vec::new()),
            waiters: Mutex::new(VecDeque::new()),
            closed: AtomicBool::new(false),
            idle_limit,
            lease_limit: config.recycle,
            round_trip,
        });
        if !idle_limit.is_zero()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(sweep(Arc::downgrade(&parking), idle_limit));
        }
        parking
    }

    /// A connection: a parked one if there is one fit to use, else the first of one
    /// handed over by a release or one from the pool (which applies its own pre-ping,
    /// limits and timeout).
    pub(crate) async fn lease(self: &Arc<Self>) -> Result<Lease> {
        let lease = |conn, leased_at| Lease {
            conn: Some(conn),
            leased_at,
            clean: false,
            abandoned: false,
            parking: self.clone(),
        };
        if let Some(parked) = self.pop_fresh() {
            return Ok(lease(parked.conn, parked.leased_at));
        }
        // While the pool can give a connection at once (an idle one) or open one more,
        // take it from there: the pool grows with the load. Waiting for a hand-off
        // would cancel connects in progress and keep the pool at its minimum.
        let pool_can_serve =
            self.pool.num_idle() > 0 || self.pool.size() < self.pool.options().get_max_connections();
        if self.idle_limit.is_zero() || self.closed.load(Ordering::Acquire) || pool_can_serve {
            return Ok(lease(Box::pin(self.pool.acquire()).await?, Instant::now()));
        }
        let (tx, mut handed) = oneshot::channel();
        if let Ok(mut waiters) = self.waiters.lock() {
            waiters.push_back(tx);
        }
        // sqlx's acquire future carries its whole connect path (~14 KB): boxed, so the
        // futures of everything above it stay small.
        let mut pooled = Box::pin(self.pool.acquire());
        tokio::select! {
            biased;
            Ok(h) = &mut handed => Ok(lease(h.conn, h.leased_at)),
            conn = &mut pooled => {
                // A release may have handed us one in the meantime: keep it moving.
                handed.close();
                if let Ok(h) = handed.try_recv() {
                    self.release(h.conn, h.leased_at);
                }
                Ok(lease(conn?, Instant::now()))
            }
        }
    }

    /// The most recently parked connection that is still fresh; stale ones met on the
    /// way go back to the pool.
    fn pop_fresh(&self) -> Option<Parked> {
        let mut stale = Vec::new();
        let fresh = {
            let Ok(mut parked) = self.parked.lock() else {
                return None;
            };
            loop {
                match parked.pop() {
                    Some(p) if p.idle_since.elapsed() < self.idle_limit => break Some(p),
                    Some(p) => stale.push(p),
                    None => break None,
                }
            }
        };
        // Outside the lock: each goes back to sqlx's pool once it answers.
        for p in stale {
            give_back(p.conn, self.round_trip);
        }
        fresh
    }

    /// A connection whose work ended cleanly: to the oldest waiter, else parked, else
    /// (closed, or kept out of the pool long enough) back to the pool.
    fn release(&self, conn: PoolConnection<Postgres>, leased_at: Instant) {
        let keep = !self.idle_limit.is_zero()
            && !self.closed.load(Ordering::Acquire)
            && self.lease_limit.is_none_or(|limit| leased_at.elapsed() < limit);
        if !keep {
            give_back(conn, self.round_trip);
            return;
        }
        let mut handed = Handed { conn, leased_at };
        if let Ok(mut waiters) = self.waiters.lock() {
            while let Some(waiter) = waiters.pop_front() {
                match waiter.send(handed) {
                    Ok(()) => return,
                    // That waiter got a connection from the pool meanwhile.
                    Err(back) => handed = back,
                }
            }
        }
        if let Ok(mut parked) = self.parked.lock() {
            parked.push(Parked {
                conn: handed.conn,
                idle_since: Instant::now(),
                leased_at: handed.leased_at,
            });
        }
    }

    /// Returns the parked connections that have been idle too long.
    fn sweep_stale(&self) {
        let stale: Vec<Parked> = match self.parked.lock() {
            Ok(mut parked) => {
                let (fresh, stale): (Vec<Parked>, Vec<Parked>) = parked
                    .drain(..)
                    .partition(|p| p.idle_since.elapsed() < self.idle_limit);
                *parked = fresh;
                stale
            }
            Err(_) => Vec::new(),
        };
        for p in stale {
            give_back(p.conn, self.round_trip);
        }
    }

    /// Stops parking and returns every parked connection to the pool.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Ok(mut waiters) = self.waiters.lock() {
            // Their acquire from the pool answers them (PoolClosed once it closes).
            waiters.clear();
        }
        self.flush();
    }

    /// Returns every parked connection to the pool (whose checks then apply before
    /// it is handed out again); parking goes on.
    pub(crate) fn flush(&self) {
        for p in self.drain() {
            give_back(p.conn, self.round_trip);
        }
    }

    /// Closes every parked connection without a word to the server: a deadline was
    /// missed, and the path they all share may be silent (see `deadline`).
    pub(crate) fn retire(&self) {
        for p in self.drain() {
            drop(p.conn.detach());
        }
    }

    fn drain(&self) -> Vec<Parked> {
        self.parked
            .lock()
            .map(|mut p| p.drain(..).collect())
            .unwrap_or_default()
    }

    /// How many connections are parked.
    pub(crate) fn len(&self) -> usize {
        self.parked.lock().map(|p| p.len()).unwrap_or(0)
    }
}

impl Drop for Parking {
    /// The last handle on the database is gone. Parked connections go back to the pool,
    /// which needs a Tokio runtime to do it (sqlx spawns a task for every connection it
    /// gets back). Without one (the runtime already shut down, as when an actix system
    /// is torn down), they are forgotten instead of panicking: the pool itself is going
    /// away, and the server closes the sockets when they close. `Database::close`
    /// avoids this by returning them while the runtime runs.
    fn drop(&mut self) {
        let parked: Vec<Parked> = match self.parked.get_mut() {
            Ok(parked) => std::mem::take(parked),
            Err(poisoned) => std::mem::take(poisoned.into_inner()),
        };
        if tokio::runtime::Handle::try_current().is_err() {
            for p in parked {
                std::mem::forget(p.conn);
            }
        }
    }
}

/// Returns stale parked connections to the pool even when nothing else happens.
async fn sweep(parking: Weak<Parking>, every: Duration) {
    let every = every.max(Duration::from_millis(50));
    loop {
        tokio::time::sleep(every).await;
        match parking.upgrade() {
            Some(p) if !p.closed.load(Ordering::Acquire) => p.sweep_stale(),
            _ => return,
        }
    }
}

/// A connection leased for one unit of work. Mark it [`clean`](Lease::clean) when the
/// work ended normally (committed, rolled back, or a statement that completed); it is
/// then parked for the next one. Otherwise it goes back through sqlx's release, which
/// tests it and flushes what is pending.
pub(crate) struct Lease {
    conn: Option<PoolConnection<Postgres>>,
    leased_at: Instant,
    clean: bool,
    /// Closed at once when the lease ends, without a word to the server.
    abandoned: bool,
    parking: Arc<Parking>,
}

impl Lease {
    /// The work on this connection ended normally: it may be reused as it is.
    pub(crate) fn clean(&mut self) {
        self.clean = true;
    }

    /// The connection must not be used again: it is closed when the lease ends
    /// instead of going back to the pool.
    pub(crate) fn discard(&mut self) {
        self.clean = false;
        if let Some(conn) = self.conn.as_mut() {
            conn.close_on_drop();
        }
    }

    /// The server did not answer in time: the connection is closed when the lease ends
    /// without sending or waiting for anything (a goodbye on a silent socket would wait
    /// too), and the pool opens another.
    pub(crate) fn abandon(&mut self) {
        self.clean = false;
        self.abandoned = true;
    }
}

impl Deref for Lease {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        // Present from construction until drop.
        self.conn
            .as_deref()
            .unwrap_or_else(|| unreachable!("a lease holds its connection until dropped"))
    }
}

impl DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.conn
            .as_deref_mut()
            .unwrap_or_else(|| unreachable!("a lease holds its connection until dropped"))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.clean {
                self.parking.release(conn, self.leased_at);
            } else if self.abandoned {
                drop(conn.detach());
            } else {
                give_back(conn, self.parking.round_trip);
            }
        }
    }
}

/// Gives a connection back to sqlx's pool once it has answered a ping within `limit`.
/// sqlx checks every connection it gets back with a ping of its own that waits as long
/// as the socket does: a connection whose server went silent would hold its place in
/// the pool for as long as the kernel keeps the socket (about 15 minutes), and with a
/// few of them the pool is full of connections nobody can use. One that does not
/// answer in time is closed instead, without a word to the server. Without a Tokio
/// runtime (the process is ending) it goes back as it is.
fn give_back(conn: PoolConnection<Postgres>, limit: Duration) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        drop(conn);
        return;
    };
    runtime.spawn(async move {
        let mut conn = conn;
        match tokio::time::timeout(limit, conn.ping()).await {
            Ok(Ok(())) => drop(conn),
            _ => drop(conn.detach()),
        }
    });
}
