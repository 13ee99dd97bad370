//! Retention: soft-deleted messages removed for good once they have been deleted for
//! longer than a period (`botdb purge --deleted-before 30d`, `serve`'s
//! `BOTDB_PURGE_AFTER`).
//!
//! The purge removes a small batch per transaction (oldest deletion first, through the
//! partial index `ix_messages_deleted`), so each transaction holds its row locks for
//! one short statement, and only on rows nobody else touches: a turn writes new rows
//! and reads live ones, a reset marks live ones, and the purge's rows are neither (it
//! skips, never waits for, a row another transaction holds). Stopping between batches
//! (Ctrl-C) loses nothing: what was purged is committed, and the next run goes on
//! from there (the state is the database's own).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::db::Database;
use crate::error::{Error, Result};
use crate::repo;

/// How a purge runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PurgeOptions {
    /// Messages soft-deleted longer ago than this are removed.
    pub deleted_before: Duration,
    /// Rows per transaction (1 to 100,000).
    pub batch: i64,
    /// Rest between batches, leaving the server to the traffic (zero: none).
    pub pause: Duration,
}

impl PurgeOptions {
    /// Messages deleted longer ago than `deleted_before`, 1,000 per transaction, no pause.
    pub fn new(deleted_before: Duration) -> Self {
        PurgeOptions {
            deleted_before,
            batch: 1000,
            pause: Duration::ZERO,
        }
    }
}

/// What a purge did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PurgeReport {
    /// Messages soft-deleted before this instant (the server's clock at the start)
    /// were the ones to remove.
    pub cutoff: DateTime<Utc>,
    /// How many there were at the start.
    pub due: u64,
    /// How many were removed.
    pub purged: u64,
    /// Transactions run.
    pub batches: u64,
    /// The longest batch: the longest any row lock of the purge was held.
    pub longest_batch: Duration,
    /// `false` when stopped before the end (run again to go on).
    pub finished: bool,
}

/// Where the server's clock puts the cutoff: `now() - deleted_before`.
///
/// # Errors
/// [`Error::InvalidInput`] for a period past what PostgreSQL's timestamps hold;
/// database errors.
pub async fn cutoff(db: &Database, deleted_before: Duration) -> Result<DateTime<Utc>> {
    let millis = i64::try_from(deleted_before.as_millis())
        .ok()
        .filter(|ms| *ms < 100 * 365 * 86_400_000)
        .ok_or_else(|| Error::invalid("deleted-before", "expected less than 100 years"))?;
    db.read(async |c| {
        Ok(
            sqlx::query_scalar("SELECT now() - make_interval(secs => $1::float8 / 1000)")
                .bind(millis)
                .fetch_one(&mut *c)
                .await?,
        )
    })
    .await
}

/// Removes every message soft-deleted before `options.deleted_before` ago, a batch per
/// transaction, until none is left or `stop` resolves (checked between batches: a batch
/// under way finishes). `progress` sees the report once before the first batch (the
/// cutoff and what is due) and after each batch.
///
/// # Errors
/// [`Error::InvalidInput`] for a bad batch size or period; database errors (what was
/// purged before stays purged).
pub async fn purge(
    db: &Database,
    options: PurgeOptions,
    mut progress: impl FnMut(&PurgeReport),
    stop: impl Future<Output = ()>,
) -> Result<PurgeReport> {
    if !(1..=100_000).contains(&options.batch) {
        return Err(Error::invalid(
            "batch",
            format!("expected 1 to 100000, got {}", options.batch),
        ));
    }
    let cutoff = cutoff(db, options.deleted_before).await?;
    let due = db
        .read(async |c| repo::messages::count_deleted_before(c, cutoff).await)
        .await?;
    let mut report = PurgeReport {
        cutoff,
        due,
        purged: 0,
        batches: 0,
        longest_batch: Duration::ZERO,
        finished: false,
    };
    progress(&report);
    let mut stop = std::pin::pin!(stop);
    loop {
        let started = Instant::now();
        let n = db
            .autocommit(async |c| repo::messages::purge_deleted(c, cutoff, options.batch).await)
            .await?;
        report.longest_batch = report.longest_batch.max(started.elapsed());
        report.batches += 1;
        report.purged += n;
        db.counters().purged(n);
        progress(&report);
        // Done when a batch finds nothing: a short batch may only mean that rows were
        // skipped because another transaction held them (an erasure under way).
        if n == 0 {
            report.finished = true;
            return Ok(report);
        }
        let pause = tokio::time::sleep(options.pause);
        tokio::select! {
            biased;
            () = &mut stop => return Ok(report),
            () = pause => {}
        }
    }
}
