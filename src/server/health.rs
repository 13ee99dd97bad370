//! The health check's cache: at most one database round trip per cache period,
//! whatever the rate of calls. The answer is kept for `health_cache`, and callers that
//! arrive while a check runs wait for that check instead of starting their own (single
//! flight). `/healthz` asks it; `/metrics` shows its counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::db::Database;

/// The last database check and when it ran.
#[derive(Debug, Default)]
pub(crate) struct HealthCache {
    last: Mutex<Option<(Instant, bool)>>,
    /// Checks that went to the database.
    pub(crate) database_checks: AtomicU64,
    /// Calls answered from the cache.
    pub(crate) cached_answers: AtomicU64,
}

impl HealthCache {
    /// Whether the database answered, at most `ttl` ago. One caller at a time refreshes
    /// it; the others wait for that answer.
    pub(crate) async fn database_ok(&self, db: &Database, ttl: Duration) -> bool {
        let mut last = self.last.lock().await;
        if let Some((at, ok)) = *last
            && at.elapsed() < ttl
        {
            self.cached_answers.fetch_add(1, Ordering::Relaxed);
            return ok;
        }
        self.database_checks.fetch_add(1, Ordering::Relaxed);
        let ping = tokio::time::timeout(
            Duration::from_secs(2),
            db.read(async |c| Ok(sqlx::query("SELECT 1").execute(c).await?)),
        )
        .await;
        let ok = matches!(ping, Ok(Ok(_)));
        *last = Some((Instant::now(), ok));
        ok
    }
}
