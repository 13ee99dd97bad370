//! The pool as the configuration builds it: its sizes and timeouts, the liveness check
//! before a connection is handed out (bounded by botdb's round-trip deadline), the
//! retirement of connections opened before a missed deadline, the TCP settings of each
//! new connection, and with several hosts the check that a connection is on the host
//! that takes writes; and the error a failed first connection becomes.

use std::sync::Arc;

use sqlx::Connection;
use sqlx::postgres::PgPoolOptions;

use crate::config::Config;
use crate::db::deadline::{Deadlines, Wait};
use crate::db::hosts::Hosts;
use crate::db::socket;
use crate::error::Error;

/// A missed deadline as the driver's error, for sqlx's connection hooks (which close
/// a connection whose hook failed).
fn timed_out(e: Error) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, e.to_string()))
}

pub(super) fn pool_options(
    config: &Config,
    hosts: Option<&Arc<Hosts>>,
    deadlines: &Arc<Deadlines>,
) -> PgPoolOptions {
    let pool = &config.pool;
    let mut options = PgPoolOptions::new()
        .min_connections(pool.size)
        .max_connections(pool.max_connections())
        .acquire_timeout(pool.timeout)
        .idle_timeout(pool.idle_timeout)
        .max_lifetime(pool.recycle)
        // botdb pings itself (below), within its round-trip deadline: sqlx's own ping
        // waits as long as the socket does.
        .test_before_acquire(false);
    // With several hosts botdb pings idle connections, to notice a lost server at once.
    let ping_idle = pool.pre_ping.then_some(pool.pre_ping_idle);
    {
        let hosts = hosts.cloned();
        let deadlines = deadlines.clone();
        options = options.before_acquire(move |conn, meta| {
            let hosts = hosts.clone();
            let deadlines = deadlines.clone();
            Box::pin(async move {
                if deadlines.is_retired(meta.age) {
                    // Opened before a deadline was missed: replaced, not pinged.
                    return Ok(false);
                }
                if let Some(threshold) = ping_idle
                    && meta.idle_for >= threshold
                {
                    let ping = deadlines.within(Wait::RoundTrip, "a ping", conn.ping()).await;
                    if let Err(e) = ping.map_err(timed_out).and_then(|r| r) {
                        if let Some(hosts) = &hosts {
                            hosts.kick();
                        }
                        return Err(e);
                    }
                }
                match hosts {
                    Some(hosts) => deadlines
                        .within(
                            Wait::RoundTrip,
                            "the host's state",
                            hosts.before_acquire(conn, meta.age),
                        )
                        .await
                        .map_err(timed_out)?,
                    None => Ok(true),
                }
            })
        });
    }
    let hosts = hosts.cloned();
    let deadlines = deadlines.clone();
    let network = config.network;
    let addresses = Arc::new(config.hosts().to_vec());
    options.after_connect(move |conn, _meta| {
        let hosts = hosts.clone();
        let deadlines = deadlines.clone();
        let addresses = addresses.clone();
        Box::pin(async move {
            let peers = socket::resolve(&addresses).await;
            match socket::tune(&peers, &network) {
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "TCP keepalives could not be set on a new database connection")
                }
            }
            match hosts {
                Some(hosts) => deadlines
                    .within(Wait::RoundTrip, "the host's state", hosts.after_connect(conn))
                    .await
                    .map_err(timed_out)?,
                None => Ok(()),
            }
        })
    })
}

/// Turns a failed first connection into an error that names the server (never the
/// password) and the setting to fix, and says what to check.
pub(super) fn connect_error(config: &Config, err: sqlx::Error) -> Error {
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
