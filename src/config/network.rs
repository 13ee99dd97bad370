//! How long botdb itself waits for PostgreSQL over the network, and the TCP settings of
//! every connection it opens.
//!
//! The server's own limits (`statement_timeout`, `lock_timeout`) end a statement the
//! server is running; they cannot help when the server never hears from botdb again,
//! or botdb never hears from it: a cloud failover behind a moved address, a dropped
//! route, a pooler that went silent. Without a bound on botdb's side, a request waits
//! for the kernel's retransmission timeout, about 15 minutes. So every round trip has a
//! deadline on botdb's side too ([`NetworkConfig::round_trip`],
//! [`NetworkConfig::work_deadline`]), and every socket has TCP keepalives and
//! `TCP_USER_TIMEOUT`, so that the kernel notices a dead peer within seconds even while
//! nothing is being waited for.

use std::time::Duration;

use crate::config::settings::TimeoutConfig;

/// botdb's side of waiting on the network (`DB_NETWORK_TIMEOUT`, `DB_KEEPALIVES*`,
/// `DB_TCP_USER_TIMEOUT`, or libpq's `keepalives`, `keepalives_idle`,
/// `keepalives_interval`, `keepalives_count`, `tcp_user_timeout` in `DATABASE_URL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetworkConfig {
    /// How long botdb waits for the server beyond what the server allows itself
    /// (`DB_NETWORK_TIMEOUT`, default 5 s): BEGIN, a ping, a ROLLBACK wait at most this
    /// long; a unit of work's statements and its COMMIT at most `DB_STATEMENT_TIMEOUT`
    /// plus this. A connection that misses a deadline is closed, never reused, and every
    /// connection opened before it is replaced before its next use.
    pub timeout: Duration,
    /// TCP keepalives on every connection (`DB_KEEPALIVES`, libpq's `keepalives`;
    /// default on).
    pub keepalives: bool,
    /// Idle time before the first keepalive probe (`DB_KEEPALIVES_IDLE`, libpq's
    /// `keepalives_idle`; default 5 s).
    pub keepalives_idle: Duration,
    /// Time between probes (`DB_KEEPALIVES_INTERVAL`, `keepalives_interval`; 2 s).
    pub keepalives_interval: Duration,
    /// Probes unanswered before the connection is dropped (`DB_KEEPALIVES_COUNT`,
    /// `keepalives_count`; 3).
    pub keepalives_count: u32,
    /// `TCP_USER_TIMEOUT`: data left unacknowledged this long drops the connection
    /// (`DB_TCP_USER_TIMEOUT`, libpq's `tcp_user_timeout` in milliseconds; default 10 s;
    /// `None`: the system's).
    pub tcp_user_timeout: Option<Duration>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            timeout: Duration::from_secs(5),
            keepalives: true,
            keepalives_idle: Duration::from_secs(5),
            keepalives_interval: Duration::from_secs(2),
            keepalives_count: 3,
            tcp_user_timeout: Some(Duration::from_secs(10)),
        }
    }
}

impl NetworkConfig {
    /// The deadline of one round trip the server answers at once: BEGIN, a ping, a
    /// ROLLBACK, the startup of a new connection.
    pub fn round_trip(&self) -> Duration {
        self.timeout
    }

    /// The deadline of a unit of work's statements together, and of its COMMIT (which
    /// may wait for a synchronous standby): the server's `statement_timeout` plus
    /// [`timeout`](Self::timeout). `None` when `statement_timeout` is off: then only the
    /// kernel (keepalives, `TCP_USER_TIMEOUT`) bounds the wait.
    pub fn work_deadline(&self, timeouts: &TimeoutConfig) -> Option<Duration> {
        timeouts.statement.map(|s| s.saturating_add(self.timeout))
    }

    /// How long a dead peer goes unnoticed by the kernel at most, on an idle
    /// connection: the keepalive idle time plus its probes, or `TCP_USER_TIMEOUT`
    /// when that is shorter (Linux lets it cut the probes short).
    pub fn dead_peer_after(&self) -> Option<Duration> {
        let probes = self.keepalives.then(|| {
            self.keepalives_idle
                .saturating_add(self.keepalives_interval.saturating_mul(self.keepalives_count))
        });
        match (probes, self.tcp_user_timeout) {
            (Some(p), Some(u)) => Some(p.min(u.max(self.keepalives_idle))),
            (p, u) => p.or(u),
        }
    }

    /// Applies one of libpq's parameters from a connection URL; `Ok(false)` when `key`
    /// is not one of them.
    ///
    /// # Errors
    /// A message for `DATABASE_URL` when the value is malformed.
    pub(super) fn apply_url_param(&mut self, key: &str, value: &str) -> Result<bool, String> {
        let whole = |what: &str| -> Result<u64, String> {
            value
                .trim()
                .parse::<u64>()
                .map_err(|_| format!("{key}={value:?}: expected a whole number of {what}"))
        };
        match key {
            "keepalives" => {
                self.keepalives = match value.trim() {
                    "1" => true,
                    "0" => false,
                    _ => return Err(format!("{key}={value:?}: expected 0 or 1")),
                }
            }
            "keepalives_idle" => self.keepalives_idle = positive_secs(key, whole("seconds")?)?,
            "keepalives_interval" => self.keepalives_interval = positive_secs(key, whole("seconds")?)?,
            "keepalives_count" => {
                let n = whole("probes")?;
                self.keepalives_count = u32::try_from(n)
                    .ok()
                    .filter(|n| (1..=127).contains(n))
                    .ok_or_else(|| format!("{key}={value:?}: expected 1 to 127 probes"))?;
            }
            "tcp_user_timeout" => {
                let ms = whole("milliseconds")?;
                self.tcp_user_timeout = (ms > 0).then(|| Duration::from_millis(ms));
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// libpq's names for the settings above, as they may appear in `DATABASE_URL`.
pub(super) const URL_PARAMS: [&str; 5] = [
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
];

fn positive_secs(key: &str, secs: u64) -> Result<Duration, String> {
    if secs == 0 || secs > 86_400 {
        return Err(format!("{key}={secs}: expected 1 to 86400 seconds"));
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_work_deadline_is_the_statement_timeout_plus_the_margin() {
        let n = NetworkConfig::default();
        let t = TimeoutConfig::default();
        assert_eq!(n.work_deadline(&t), Some(Duration::from_secs(15)));
        let off = TimeoutConfig { statement: None, ..t };
        assert_eq!(n.work_deadline(&off), None);
        assert_eq!(n.round_trip(), Duration::from_secs(5));
    }

    #[test]
    fn libpq_url_parameters_set_the_socket_settings_and_bad_ones_are_refused() {
        let mut n = NetworkConfig::default();
        assert_eq!(n.apply_url_param("keepalives_idle", "7"), Ok(true));
        assert_eq!(n.apply_url_param("keepalives_interval", "1"), Ok(true));
        assert_eq!(n.apply_url_param("keepalives_count", "4"), Ok(true));
        assert_eq!(n.apply_url_param("tcp_user_timeout", "2500"), Ok(true));
        assert_eq!(n.apply_url_param("sslmode", "disable"), Ok(false));
        assert_eq!(n.keepalives_idle, Duration::from_secs(7));
        assert_eq!(n.keepalives_interval, Duration::from_secs(1));
        assert_eq!(n.keepalives_count, 4);
        assert_eq!(n.tcp_user_timeout, Some(Duration::from_millis(2500)));
        assert_eq!(n.apply_url_param("tcp_user_timeout", "0"), Ok(true));
        assert_eq!(n.tcp_user_timeout, None);
        assert_eq!(n.apply_url_param("keepalives", "0"), Ok(true));
        assert!(!n.keepalives);
        for (k, v) in [
            ("keepalives", "yes"),
            ("keepalives_idle", "0"),
            ("keepalives_idle", "-1"),
            ("keepalives_count", "1000"),
            ("tcp_user_timeout", "soon"),
        ] {
            let err = n.apply_url_param(k, v).unwrap_err();
            assert!(err.starts_with(k), "{err}");
        }
    }

    #[test]
    fn a_dead_peer_is_noticed_within_seconds_by_default() {
        let n = NetworkConfig::default();
        // 5 s idle + 3 probes 2 s apart = 11 s, cut to 10 s by TCP_USER_TIMEOUT.
        assert_eq!(n.dead_peer_after(), Some(Duration::from_secs(10)));
        let off = NetworkConfig {
            keepalives: false,
            tcp_user_timeout: None,
            ..n
        };
        assert_eq!(off.dead_peer_after(), None);
    }
}
