//! The system actor: the system-level [`Shutdown`] (drain, then close the pool) and
//! [`Stats`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::FutureExt;
use futures::future::{LocalBoxFuture, Shared};
use serde::Serialize;
use tracing_actix::ActorInstrument;

use crate::actors::endpoints::Endpoints;
use crate::actors::stats::{ActorStats, SystemStats};
use crate::db::Database;

/// Shut botdb's actors down: refuse new requests at once ([`Error::ShuttingDown`]),
/// let every accepted request finish and be answered, then close the pool.
///
/// [`Error::ShuttingDown`]: crate::Error::ShuttingDown
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "ShutdownReport")]
pub struct Shutdown;

/// Ask for every actor's counters and the pool's state.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "SystemStats")]
pub struct Stats;

/// What a Shutdown did. The counts add up: `accepted = completed + failed +
/// unfinished`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ShutdownReport {
    /// Requests admitted since the actors started.
    pub accepted: u64,
    /// Of those, answered `Ok` (committed).
    pub completed: u64,
    /// Of those, answered with an error.
    pub failed: u64,
    /// Of those, still unanswered when the drain timeout expired (0 after a clean drain).
    pub unfinished: u64,
    /// Requests refused: after Shutdown began, or past an actor's bound.
    pub rejected: u64,
    /// Of `rejected`, refused because Shutdown had begun.
    pub rejected_shutting_down: u64,
    /// Time from Shutdown to the pool closed.
    #[serde(with = "duration_ms")]
    pub drain_time: Duration,
    /// `true` when every accepted request was answered within the drain timeout.
    pub drained: bool,
    /// `true` when every pooled connection was closed within the drain timeout.
    pub pool_closed: bool,
}

mod duration_ms {
    pub fn serialize<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1000.0)
    }
}

impl ShutdownReport {
    pub(crate) fn system_gone() -> Self {
        ShutdownReport::default()
    }
}

impl std::fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "accepted {}, completed {}, failed {}, unfinished {}, rejected {} ({} after shutdown), drained in {:.1} ms{}{}",
            self.accepted,
            self.completed,
            self.failed,
            self.unfinished,
            self.rejected,
            self.rejected_shutting_down,
            self.drain_time.as_secs_f64() * 1000.0,
            if self.drained { "" } else { ", DRAIN TIMED OUT" },
            if self.pool_closed {
                ", pool closed"
            } else {
                ", pool NOT closed in time"
            },
        )
    }
}

/// Coordinates Shutdown and Stats across the table actors.
pub struct SystemActor {
    db: Database,
    endpoints: Arc<Endpoints>,
    drain_timeout: Duration,
    /// The one drain, shared by every Shutdown caller.
    shutdown: Option<Shared<LocalBoxFuture<'static, ShutdownReport>>>,
}

impl SystemActor {
    pub(crate) fn new(db: Database, endpoints: Arc<Endpoints>, drain_timeout: Duration) -> Self {
        SystemActor {
            db,
            endpoints,
            drain_timeout,
            shutdown: None,
        }
    }
}

impl Actor for SystemActor {
    type Context = Context<Self>;
}

impl Supervised for SystemActor {}

async fn snapshots(endpoints: &Endpoints) -> Vec<ActorStats> {
    futures::future::join_all(endpoints.all().map(|e| e.snapshot()))
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Close the gates, wait for every admitted request to be answered, close the pool.
async fn drain(db: Database, endpoints: Arc<Endpoints>, timeout: Duration) -> ShutdownReport {
    let started = Instant::now();
    endpoints.close();
    tracing::info!("shutdown: no new requests; draining accepted ones");
    let drains = futures::future::join_all(endpoints.all().map(|e| e.drain()));
    let drained = tokio::time::timeout(timeout, drains).await.is_ok();
    if !drained {
        tracing::warn!(?timeout, "shutdown: drain timed out; closing the pool anyway");
    }
    // Every answered request has ended its transaction: closing now cuts nothing that
    // was acknowledged. After a timeout, close() still waits for checked-out
    // connections, so it gets a bound too.
    let remaining = timeout
        .saturating_sub(started.elapsed())
        .max(Duration::from_secs(1));
    let pool_closed = db.close_within(remaining).await;
    let stats = snapshots(&endpoints).await;
    let mut report = ShutdownReport {
        drain_time: started.elapsed(),
        drained,
        pool_closed,
        ..ShutdownReport::default()
    };
    for s in &stats {
        report.accepted += s.gate.accepted;
        report.completed += s.completed;
        report.failed += s.failed;
        report.unfinished += s.gate.pending;
        report.rejected += s.gate.rejected();
        report.rejected_shutting_down += s.gate.rejected_shutting_down;
    }
    tracing::info!(%report, "shutdown complete");
    report
}

impl Handler<Shutdown> for SystemActor {
    type Result = ResponseActFuture<Self, ShutdownReport>;

    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) -> Self::Result {
        let shared = self
            .shutdown
            .get_or_insert_with(|| {
                drain(self.db.clone(), self.endpoints.clone(), self.drain_timeout)
                    .boxed_local()
                    .shared()
            })
            .clone();
        let span = tracing::info_span!("botdb.shutdown");
        Box::pin(shared.into_actor(self).actor_instrument(span))
    }
}

impl Handler<Stats> for SystemActor {
    type Result = ResponseFuture<SystemStats>;

    fn handle(&mut self, _: Stats, _: &mut Context<Self>) -> Self::Result {
        let (endpoints, db) = (self.endpoints.clone(), self.db.clone());
        Box::pin(async move {
            SystemStats {
                actors: snapshots(&endpoints).await,
                pool: Some(db.pool_status()),
            }
        })
    }
}
