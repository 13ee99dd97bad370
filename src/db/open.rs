//! Opening a [`Database`]: the pool built from the configuration (one host, or the one
//! of several that satisfies `target_session_attrs`), its first connection, and with
//! replicas the floor of positions and a first look at each replica.

use std::sync::Arc;

use sqlx::PgPool;

use crate::config::Config;
use crate::db::Database;
use crate::db::deadline::Deadlines;
use crate::db::hosts::{Hosts, HostsLink};
use crate::db::lease::Parking;
use crate::db::pool::{connect_error, pool_options};
use crate::db::replicas::Replicas;
use crate::error::Result;

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
    /// [`Error::Config`](crate::Error::Config) for a malformed URL or rejected credentials,
    /// [`Error::Unavailable`](crate::Error::Unavailable) when the server cannot be reached within the pool timeout.
    /// No error contains the password.
    ///
    /// With several hosts or a `target_session_attrs` other than `any`
    /// ([`Config::hosts`], [`Config::target_session_attrs`]), the hosts are tried in
    /// order and the pool connects to the first that satisfies the attribute; every
    /// new connection is checked again, and goes to another host of the list when its
    /// server no longer satisfies it. [`Error::Unavailable`](crate::Error::Unavailable) then names every host and
    /// what it was when none satisfied the attribute within the pool timeout.
    pub async fn connect(config: &Config) -> Result<Self> {
        let deadlines = Arc::new(Deadlines::new(&config.network, &config.timeouts));
        let Some(hosts) = Hosts::from_config(config)? else {
            let options = config.connect_options()?;
            let pool = pool_options(config, None, &deadlines)
                .connect_with(options)
                .await
                .map_err(|e| connect_error(config, e))?;
            tracing::debug!(server = %config.redacted_url(), "database pool ready");
            return Self::from_pool(pool, config, None, deadlines)?
                .with_floor()
                .await?
                .probed(config)
                .await;
        };
        let deadline = tokio::time::Instant::now() + config.pool.timeout;
        hosts.resolve(deadline).await?;
        let pool = pool_options(config, Some(&hosts), &deadlines).connect_lazy_with(hosts.current_options());
        let link = hosts.attach(&pool);
        // As `connect_with`: one connection now, so that a failure shows here.
        let conn = pool.acquire().await.map_err(|e| connect_error(config, e))?;
        drop(conn);
        tracing::debug!(server = %config.redacted_url(), "database pool ready");
        Self::from_pool(pool, config, Some(link), deadlines)?
            .with_floor()
            .await?
            .probed(config)
            .await
    }

    /// Builds the pool without connecting; connections open on first use.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) for a malformed URL.
    pub fn connect_lazy(config: &Config) -> Result<Self> {
        let deadlines = Arc::new(Deadlines::new(&config.network, &config.timeouts));
        let Some(hosts) = Hosts::from_config(config)? else {
            let pool = pool_options(config, None, &deadlines).connect_lazy_with(config.connect_options()?);
            return Self::from_pool(pool, config, None, deadlines);
        };
        let pool = pool_options(config, Some(&hosts), &deadlines).connect_lazy_with(hosts.current_options());
        let link = hosts.attach(&pool);
        Self::from_pool(pool, config, Some(link), deadlines)
    }

    fn from_pool(
        pool: PgPool,
        config: &Config,
        hosts: Option<HostsLink>,
        deadlines: Arc<Deadlines>,
    ) -> Result<Self> {
        Ok(Database {
            parking: Parking::new(pool.clone(), &config.pool, config.network.round_trip()),
            deadlines,
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
}
