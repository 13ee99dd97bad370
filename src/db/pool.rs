//! The pool as the configuration builds it: its sizes and timeouts, the liveness check
//! before a connection is handed out, and with several hosts the check that a
//! connection is on the host that takes writes; and the error a failed first
//! connection becomes.

use std::sync::Arc;

use sqlx::Connection;
use sqlx::postgres::PgPoolOptions;

use crate::config::Config;
use crate::db::hosts::Hosts;
use crate::error::Error;

pub(super) fn pool_options(config: &Config, hosts: Option<&Arc<Hosts>>) -> PgPoolOptions {
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
