//! Several hosts and `target_session_attrs` (libpq's way) on top of sqlx's pool.
//!
//! sqlx's pool reads its connect options again for every connection it opens, and
//! retries after an `after_connect` error until the acquire deadline. So: before the
//! pool is built, the hosts are probed in order and the first one that satisfies the
//! attribute becomes the pool's connect options; an `after_connect` check then re-checks
//! the attribute on every new connection. When the check fails (the host was demoted,
//! a standby was promoted elsewhere), the hosts are probed again in order, the pool's
//! options are pointed at the one found, and the error makes sqlx retry there.
//!
//! A connection that already exists when its server stops satisfying the attribute is
//! caught by its first refused write (SQLSTATE 25006): that request fails
//! [`Unavailable`](crate::Error::Unavailable) (nothing was written), the connection is
//! closed instead of reused, and every connection opened before that moment is
//! checked again before the pool hands it out (`before_acquire`).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

use crate::config::{Config, TargetSessionAttrs};
use crate::error::{Error, Result};

/// What a server is, as far as `target_session_attrs` is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ServerState {
    /// `pg_is_in_recovery()`: a standby.
    in_recovery: bool,
    /// `default_transaction_read_only = on`.
    read_only: bool,
}

impl ServerState {
    /// What `attrs` requires, strictly: `prefer-standby` is satisfied by a standby only
    /// (whether another server will do is decided over the whole list).
    fn satisfies(self, attrs: TargetSessionAttrs) -> bool {
        match attrs {
            TargetSessionAttrs::ReadWrite => !self.in_recovery && !self.read_only,
            TargetSessionAttrs::ReadOnly => self.in_recovery || self.read_only,
            TargetSessionAttrs::Primary => !self.in_recovery,
            TargetSessionAttrs::Standby | TargetSessionAttrs::PreferStandby => self.in_recovery,
            _ => true,
        }
    }

    fn describe(self) -> &'static str {
        match (self.in_recovery, self.read_only) {
            (true, _) => "a standby",
            (false, true) => "a primary with default_transaction_read_only on",
            (false, false) => "a primary",
        }
    }
}

/// Asks the server on `conn` what it is.
async fn server_state(conn: &mut PgConnection) -> std::result::Result<ServerState, sqlx::Error> {
    let (in_recovery, read_only): (bool, bool) =
        sqlx::query_as("SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only') = 'on'")
            .fetch_one(conn)
            .await?;
    Ok(ServerState {
        in_recovery,
        read_only,
    })
}

/// The host list of one pool, which host new connections go to, and the pool itself.
pub(crate) struct Hosts {
    /// Every host's connect options, in order.
    options: Vec<PgConnectOptions>,
    /// Every host as `host:port`, for messages.
    names: Vec<String>,
    attrs: TargetSessionAttrs,
    /// The host the pool's connect options point at.
    current: AtomicUsize,
    /// How many times new connections moved to another host.
    moves: AtomicU64,
    /// The pool, to point its connect options at another host. Set once the pool is
    /// built; cleared when the last `Database` handle goes (see [`HostsLink`]), so the
    /// pool (whose hook holds this) and this do not keep each other alive.
    pool: Mutex<Option<PgPool>>,
    /// When a write was last refused as read-only: connections older than that are
    /// checked again before use.
    suspect_since: Mutex<Option<Instant>>,
    /// How long one probe of one host may take, and a background search at most.
    probe_timeout: Duration,
    /// A background search for the host is under way ([`kick`](Hosts::kick)).
    searching: AtomicBool,
    /// The configuration, to explain errors without a password.
    config: Config,
}

impl Hosts {
    /// The host list of `config`, when botdb must choose among hosts (several hosts,
    /// or an attribute other than `any`); `None` for one host and `any`.
    ///
    /// # Errors
    /// [`Error::Config`] when the URL cannot be parsed.
    pub(crate) fn from_config(config: &Config) -> Result<Option<Arc<Hosts>>> {
        if !config.chooses_hosts() {
            return Ok(None);
        }
        Ok(Some(Arc::new(Hosts {
            options: config.host_options()?,
            names: config.hosts().iter().map(|(h, p)| format!("{h}:{p}")).collect(),
            attrs: config.target_session_attrs(),
            current: AtomicUsize::new(0),
            moves: AtomicU64::new(0),
            pool: Mutex::new(None),
            suspect_since: Mutex::new(None),
            probe_timeout: config.pool.timeout,
            searching: AtomicBool::new(false),
            config: config.clone(),
        })))
    }

    /// The connect options of the host `config` names now, for a dedicated connection
    /// (the migrator, `check`): its one host with `any`; else the first host, in order,
    /// that satisfies `target_session_attrs`, probed within the pool timeout.
    ///
    /// # Errors
    /// As [`resolve`](Self::resolve).
    pub(crate) async fn chosen_options(config: &Config) -> Result<PgConnectOptions> {
        match Self::from_config(config)? {
            None => config.connect_options(),
            Some(hosts) => {
                hosts
                    .resolve(tokio::time::Instant::now() + config.pool.timeout)
                    .await?;
                Ok(hosts.current_options())
            }
        }
    }

    /// How many times new connections moved to another host (a failover, or the first
    /// host coming back): WAL positions read before a move belong to another server.
    pub(crate) fn moves(&self) -> u64 {
        self.moves.load(Ordering::Acquire)
    }

    /// The connect options of the host new connections go to.
    pub(crate) fn current_options(&self) -> PgConnectOptions {
        let i = self.current.load(Ordering::Acquire);
        self.options
            .get(i)
            .or_else(|| self.options.first())
            .cloned()
            .unwrap_or_default()
    }

    /// Remembers the pool, so that a failed check can point it at another host.
    pub(crate) fn attach(self: &Arc<Self>, pool: &PgPool) -> HostsLink {
        if let Ok(mut slot) = self.pool.lock() {
            *slot = Some(pool.clone());
        }
        HostsLink(self.clone())
    }

    /// Points new connections at host `i`.
    fn switch(&self, i: usize) {
        let before = self.current.swap(i, Ordering::AcqRel);
        if let (Some(options), Ok(pool)) = (self.options.get(i), self.pool.lock())
            && let Some(pool) = pool.as_ref()
        {
            pool.set_connect_options(options.clone());
        }
        if before != i {
            self.moves.fetch_add(1, Ordering::AcqRel);
            tracing::info!(
                host = %self.names.get(i).map_or("?", String::as_str),
                target_session_attrs = %self.attrs,
                "new database connections go to another host"
            );
        }
    }

    /// Connects to host `i` and asks what it is.
    async fn probe_one(&self, i: usize) -> std::result::Result<ServerState, Error> {
        let options = self.options.get(i).cloned().unwrap_or_default();
        let attempt = async {
            let mut conn = options.connect().await?;
            let state = server_state(&mut conn).await;
            let _ = conn.close().await;
            state
        };
        match tokio::time::timeout(self.probe_timeout, attempt).await {
            Ok(Ok(state)) => Ok(state),
            Ok(Err(e)) => Err(self.config.explain(Error::from(e))),
            Err(_) => Err(Error::Unavailable {
                reason: format!("no answer within {:?}", self.probe_timeout),
                source: None,
            }),
        }
    }

    /// One pass over the hosts, in order: the first that satisfies the attribute
    /// (for `prefer-standby`: the first standby, else the first that answered), or
    /// what each host was or why it failed.
    async fn probe(&self) -> std::result::Result<usize, Vec<(usize, Error)>> {
        let mut failures = Vec::new();
        let mut answered = None;
        for i in 0..self.options.len() {
            match self.probe_one(i).await {
                Ok(state) if state.satisfies(self.attrs) => return Ok(i),
                Ok(state) => {
                    answered.get_or_insert(i);
                    failures.push((
                        i,
                        Error::Unavailable {
                            reason: format!(
                                "{} does not satisfy target_session_attrs={}",
                                state.describe(),
                                self.attrs
                            ),
                            source: None,
                        },
                    ));
                }
                Err(e) => failures.push((i, e)),
            }
        }
        match (self.attrs, answered) {
            (TargetSessionAttrs::PreferStandby, Some(i)) => Ok(i),
            _ => Err(failures),
        }
    }

    /// Probes the hosts until one satisfies the attribute or `deadline` passes, and
    /// points new connections at it.
    ///
    /// # Errors
    /// [`Error::Unavailable`] naming every host and what it was (never the password)
    /// when none satisfied the attribute in time; [`Error::Config`] at once when every
    /// host refused the settings (credentials, database, TLS).
    pub(crate) async fn resolve(&self, deadline: tokio::time::Instant) -> Result<usize> {
        let mut backoff = Duration::from_millis(20);
        loop {
            let failures = match self.probe().await {
                Ok(i) => {
                    self.switch(i);
                    return Ok(i);
                }
                Err(failures) => failures,
            };
            if failures.iter().all(|(_, e)| matches!(e, Error::Config { .. })) {
                if let Some((_, first)) = failures.into_iter().next() {
                    return Err(first);
                }
                return Err(Error::config(
                    self.config.setting_for(crate::config::ServerPart::Address),
                    "no host to connect to",
                ));
            }
            let now = tokio::time::Instant::now();
            if now + backoff >= deadline {
                let each: Vec<String> = failures
                    .iter()
                    .map(|(i, e)| {
                        let why = match e {
                            Error::Unavailable { reason, .. } => reason.clone(),
                            other => other.to_string(),
                        };
                        format!("{}: {why}", self.names.get(*i).map_or("?", String::as_str))
                    })
                    .collect();
                return Err(self.config.explain(Error::Unavailable {
                    reason: format!(
                        "no host of {} satisfies target_session_attrs={} within {:?} ({}); DB_POOL_TIMEOUT bounds the wait",
                        self.config.redacted_url(),
                        self.attrs,
                        self.probe_timeout,
                        each.join("; ")
                    ),
                    source: None,
                }));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// The `after_connect` check: `Ok` keeps the new connection; an error makes sqlx
    /// close it and connect again (with the options [`switch`](Self::switch) set).
    pub(crate) async fn after_connect(
        &self,
        conn: &mut PgConnection,
    ) -> std::result::Result<(), sqlx::Error> {
        let state = server_state(conn).await?;
        if state.satisfies(self.attrs) {
            return Ok(());
        }
        let here = self.current.load(Ordering::Acquire);
        match self.probe().await {
            // prefer-standby with no standby anywhere: this one will do.
            Ok(i) if i == here && self.attrs == TargetSessionAttrs::PreferStandby => Ok(()),
            Ok(i) => {
                self.switch(i);
                Err(sqlx::Error::Protocol(format!(
                    "{} is {}, not target_session_attrs={}; connecting to {} instead",
                    self.names.get(here).map_or("?", String::as_str),
                    state.describe(),
                    self.attrs,
                    self.names.get(i).map_or("?", String::as_str)
                )))
            }
            Err(_) => Err(sqlx::Error::Protocol(format!(
                "no host satisfies target_session_attrs={} now; retrying until the pool timeout",
                self.attrs
            ))),
        }
    }

    /// The `before_acquire` check: after a refused write, a connection opened before
    /// it is checked again; `false` closes it (the pool then opens another, which
    /// [`after_connect`](Self::after_connect) sends to the right host).
    pub(crate) async fn before_acquire(
        &self,
        conn: &mut PgConnection,
        age: Duration,
    ) -> std::result::Result<bool, sqlx::Error> {
        let suspect = self
            .suspect_since
            .lock()
            .ok()
            .and_then(|s| *s)
            .is_some_and(|since| age >= since.elapsed());
        if !suspect
            || matches!(
                self.attrs,
                TargetSessionAttrs::Any | TargetSessionAttrs::PreferStandby
            )
        {
            return Ok(true);
        }
        Ok(server_state(conn).await?.satisfies(self.attrs))
    }

    /// A write was refused as read-only: the connections open now are suspect.
    pub(crate) fn suspect(&self) {
        if let Ok(mut since) = self.suspect_since.lock() {
            *since = Some(Instant::now());
        }
    }

    /// A connection failed (lost, refused, read-only): looks for the host again in the
    /// background, at most one search at a time, each bounded by the pool timeout. sqlx
    /// retries a refused connection on the options it has; the search moves them to the
    /// host that satisfies the attribute (after a failover, the promoted standby).
    pub(crate) fn kick(self: &Arc<Self>) {
        if self.searching.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.searching.store(false, Ordering::Release);
            return;
        };
        let hosts = self.clone();
        runtime.spawn(async move {
            let deadline = tokio::time::Instant::now() + hosts.probe_timeout;
            if let Err(e) = hosts.resolve(deadline).await {
                tracing::warn!(error = %e, "no database host satisfies target_session_attrs yet");
            }
            hosts.searching.store(false, Ordering::Release);
        });
    }
}

/// Held by every `Database` handle of a pool that chooses among hosts; when the last
/// one goes, the host list lets go of the pool.
pub(crate) struct HostsLink(Arc<Hosts>);

impl HostsLink {
    /// The host list.
    pub(crate) fn hosts(&self) -> &Arc<Hosts> {
        &self.0
    }
}

impl Drop for HostsLink {
    fn drop(&mut self) {
        if let Ok(mut slot) = self.0.pool.lock() {
            *slot = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_attribute_wants_its_kind_of_server() {
        let primary = ServerState {
            in_recovery: false,
            read_only: false,
        };
        let read_only_primary = ServerState {
            in_recovery: false,
            read_only: true,
        };
        let standby = ServerState {
            in_recovery: true,
            read_only: true,
        };
        use TargetSessionAttrs as T;
        let table = [
            (T::Any, [true, true, true]),
            (T::ReadWrite, [true, false, false]),
            (T::ReadOnly, [false, true, true]),
            (T::Primary, [true, true, false]),
            (T::Standby, [false, false, true]),
            (T::PreferStandby, [false, false, true]),
        ];
        for (attrs, expected) in table {
            let got = [primary, read_only_primary, standby].map(|s| s.satisfies(attrs));
            assert_eq!(got, expected, "{attrs}");
        }
    }
}
