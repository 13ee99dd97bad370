//! How much the turn pipeline does at once, and how it keeps its leases.

use std::time::Duration;

/// How much the pipeline does at once, and how it keeps its leases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PipelineConfig {
    /// Turns this instance runs at once (`BOTDB_TURNS_IN_FLIGHT`): the model calls in
    /// flight.
    pub turns_in_flight: usize,
    /// Messages this instance sends at once.
    pub sends_in_flight: usize,
    /// How long a claim holds without renewal: an instance that dies gives its work
    /// over after at most this long (`BOTDB_LEASE`).
    pub lease: Duration,
    /// How often it looks for work nobody woke it for (another instance's updates,
    /// expired leases, messages due again).
    pub poll: Duration,
    /// The least time between two claims (each a statement over the open updates).
    pub claim_every: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            turns_in_flight: 256,
            sends_in_flight: 64,
            lease: Duration::from_secs(30),
            poll: Duration::from_millis(250),
            claim_every: Duration::from_millis(20),
        }
    }
}
