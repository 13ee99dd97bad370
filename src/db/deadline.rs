//! botdb's own deadlines on the server's answers ([`NetworkConfig`]): what a round trip
//! may take, what a unit of work may take, and what a missed deadline does to the pool.
//!
//! A missed deadline means the server, or the network to it, stopped answering: the
//! server's own limits (`statement_timeout`) would have ended the statement and
//! answered by then. So the connection that missed it is closed at once (never handed
//! back to sqlx, whose release check would wait on the silent socket as long as the
//! kernel lets it), and every connection opened before that moment is replaced before
//! its next use instead of being pinged one by one: a silent path usually took them
//! all, and waiting a deadline for each would keep the bot down for `pool size x
//! deadline` after the server answers again.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

// tokio's clock: the real one, except in tests that pause it.
use tokio::time::Instant;

use crate::config::{NetworkConfig, TimeoutConfig};
use crate::error::Error;

/// The deadlines of one pool, and the moment before which its connections are retired.
#[derive(Debug)]
pub(crate) struct Deadlines {
    round_trip: Duration,
    work: Option<Duration>,
    /// When this pool's clock started: `retired_before` counts from here.
    epoch: Instant,
    /// Connections opened before `epoch` + this many microseconds are replaced before
    /// their next use (0: none).
    retired_before: AtomicU64,
    /// Deadlines missed, in all.
    missed: AtomicU64,
}

/// Which deadline a wait was held to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    /// A round trip the server answers at once: BEGIN, ROLLBACK, a ping.
    RoundTrip,
    /// A unit of work's statements, or its COMMIT.
    Work,
}

impl Deadlines {
    pub(crate) fn new(network: &NetworkConfig, timeouts: &TimeoutConfig) -> Self {
        Deadlines {
            round_trip: network.round_trip(),
            work: network.work_deadline(timeouts),
            epoch: Instant::now(),
            retired_before: AtomicU64::new(0),
            missed: AtomicU64::new(0),
        }
    }

    /// The limit of a wait of kind `wait`; `None`: unbounded (no `statement_timeout`).
    pub(crate) fn limit(&self, wait: Wait) -> Option<Duration> {
        match wait {
            Wait::RoundTrip => Some(self.round_trip),
            Wait::Work => self.work,
        }
    }

    /// Runs `fut` within the deadline of `wait`. A miss is counted, retires every
    /// connection open now, and is an [`Error::Unavailable`] saying what got no
    /// answer (the caller closes the connection and decides what the miss means for
    /// the outcome: after a COMMIT was sent, it is unknown).
    pub(crate) async fn within<T, E>(
        &self,
        wait: Wait,
        what: &'static str,
        fut: impl Future<Output = Result<T, E>>,
    ) -> Result<Result<T, E>, Error> {
        let Some(limit) = self.limit(wait) else {
            return Ok(fut.await);
        };
        match tokio::time::timeout(limit, fut).await {
            Ok(result) => Ok(result),
            Err(_) => {
                self.missed();
                tracing::warn!(
                    ?limit,
                    what,
                    "no answer from the database in time: the connection is closed, and those opened before are replaced"
                );
                Err(Error::Unavailable {
                    reason: format!(
                        "no answer from the database within {limit:?} ({what}); the connection is closed \
                         (DB_NETWORK_TIMEOUT, DB_STATEMENT_TIMEOUT)"
                    ),
                    source: None,
                })
            }
        }
    }

    /// Records a missed deadline: every connection opened until now is retired.
    pub(crate) fn missed(&self) {
        self.missed.fetch_add(1, Ordering::Relaxed);
        let now = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.retired_before.fetch_max(now.max(1), Ordering::Relaxed);
    }

    /// `true` for a connection `age` old that was opened before the last missed
    /// deadline: it is closed rather than used.
    pub(crate) fn is_retired(&self, age: Duration) -> bool {
        let mark = self.retired_before.load(Ordering::Relaxed);
        if mark == 0 {
            return false;
        }
        let Some(opened) = Instant::now().checked_sub(age) else {
            return true;
        };
        match opened.checked_duration_since(self.epoch) {
            Some(since) => since.as_micros() < u128::from(mark),
            // Opened before this pool's clock started: before the mark too.
            None => true,
        }
    }

    /// How long closing the pool waits for connections to come back: a unit of work's
    /// deadline and a round trip on either side of it (`None`: no unit of work is
    /// bounded, so neither is this).
    pub(crate) fn close_bound(&self) -> Option<Duration> {
        self.work
            .map(|w| w.saturating_add(self.round_trip.saturating_mul(2)))
    }

    /// How many deadlines were missed.
    pub(crate) fn misses(&self) -> u64 {
        self.missed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deadlines(statement: Option<Duration>) -> Deadlines {
        let network = NetworkConfig {
            timeout: Duration::from_millis(50),
            ..NetworkConfig::default()
        };
        let timeouts = TimeoutConfig {
            statement,
            ..TimeoutConfig::default()
        };
        Deadlines::new(&network, &timeouts)
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_past_its_deadline_is_unavailable_and_retires_the_connections_open_then() {
        let d = deadlines(Some(Duration::from_millis(100)));
        assert_eq!(d.limit(Wait::Work), Some(Duration::from_millis(150)));
        let ok: Result<Result<u8, Error>, Error> = d.within(Wait::RoundTrip, "BEGIN", async { Ok(1) }).await;
        assert!(matches!(ok, Ok(Ok(1))));
        assert!(!d.is_retired(Duration::from_secs(3600)));

        let silent = d
            .within(
                Wait::Work,
                "the unit of work",
                std::future::pending::<Result<u8, Error>>(),
            )
            .await;
        let Err(Error::Unavailable { reason, .. }) = silent else {
            panic!("{silent:?}");
        };
        assert!(
            reason.contains("150ms") && reason.contains("the unit of work"),
            "{reason}"
        );
        assert_eq!(d.misses(), 1);
        // Opened before the miss: retired. Opened after it: kept.
        assert!(d.is_retired(Duration::from_secs(1)));
        tokio::time::advance(Duration::from_millis(10)).await;
        assert!(!d.is_retired(Duration::from_millis(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_statement_timeout_a_unit_of_work_waits_as_long_as_it_takes() {
        let d = deadlines(None);
        assert_eq!(d.limit(Wait::Work), None);
        let slow = d
            .within(Wait::Work, "the unit of work", async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, Error>(7)
            })
            .await;
        assert!(matches!(slow, Ok(Ok(7))));
        assert_eq!(d.misses(), 0);
    }
}
