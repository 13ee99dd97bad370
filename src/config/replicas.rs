//! Replica reads (`DATABASE_REPLICA_URL`): which servers `GetHistory`, `GetSettings`
//! and `GetContext` may read from, and how far behind a replica may be.

use std::fmt;
use std::time::Duration;

use super::Config;

/// Default [`ReplicaConfig::max_lag`].
pub const DEFAULT_REPLICA_MAX_LAG: Duration = Duration::from_secs(2);

/// Default [`ReplicaConfig::wait`].
pub const DEFAULT_REPLICA_WAIT: Duration = Duration::from_millis(50);

/// Where reads may go besides the primary, and on what terms.
#[derive(Clone)]
pub struct ReplicaConfig {
    /// The replicas' server (one host or several), with this configuration's pool
    /// settings; `None`: every read goes to the primary.
    pub(super) server: Option<Box<Config>>,
    /// A replica whose replay lags more than this behind its primary is skipped
    /// (`DB_REPLICA_MAX_LAG`). Lag is PostgreSQL's usual measure: zero when the replica
    /// has replayed all the WAL it received, else the time since the last transaction
    /// it replayed committed.
    pub max_lag: Duration,
    /// How long a read waits for a replica to replay the user's own last write before
    /// it goes to the primary instead (`DB_REPLICA_WAIT`).
    pub wait: Duration,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            server: None,
            max_lag: DEFAULT_REPLICA_MAX_LAG,
            wait: DEFAULT_REPLICA_WAIT,
        }
    }
}

impl fmt::Debug for ReplicaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaConfig")
            .field("server", &self.server.as_ref().map(|c| c.redacted_url()))
            .field("max_lag", &self.max_lag)
            .field("wait", &self.wait)
            .finish()
    }
}
