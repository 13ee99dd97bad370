//! What `serve` does beside answering: the request keys' and the soft-deleted messages'
//! retention purges, each a task aborted at shutdown.

use std::sync::atomic::Ordering;
use std::time::Duration;

use actix_web::web;

use crate::db::Database;
use crate::server::state::AppState;

/// Removes handled update ids older than `retention`, and the turn pipeline's sent and
/// failed messages as old (their copies are settled by then), every minute, 1,000 at a
/// time (each batch one short statement, locking only rows nobody else touches), until
/// the task is aborted at shutdown.
pub(crate) async fn purge_keys(db: Database, retention: Duration, state: web::Data<AppState>) {
    const BATCH: i64 = 1000;
    loop {
        loop {
            match db
                .autocommit(async |c| crate::repo::keys::purge_older_than(c, retention, BATCH).await)
                .await
            {
                Ok(n) => {
                    state.keys_purged.fetch_add(n, Ordering::Relaxed);
                    if n < BATCH as u64 {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "purging old request keys failed; trying again later");
                    break;
                }
            }
        }
        loop {
            match db
                .autocommit(async |c| crate::repo::outbox::purge_done(c, retention, BATCH).await)
                .await
            {
                Ok(n) => {
                    state.outbox_purged.fetch_add(n, Ordering::Relaxed);
                    if n < BATCH as u64 {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "purging sent outbox messages failed; trying again later");
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
}

/// Purges messages soft-deleted longer ago than `after`, every hour (the first time at
/// start), 1,000 per transaction, until the task is aborted at shutdown.
pub(crate) async fn purge_messages(db: Database, after: Duration, key_retention: Duration) {
    loop {
        let options = crate::retention::PurgeOptions {
            key_retention,
            ..crate::retention::PurgeOptions::new(after)
        };
        match crate::retention::purge(&db, options, |_| {}, std::future::pending()).await {
            Ok(report) if report.purged > 0 => tracing::info!(
                purged = report.purged,
                batches = report.batches,
                longest_batch_ms = report.longest_batch.as_millis() as u64,
                "purged soft-deleted messages past their retention"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "purging soft-deleted messages failed; trying again later"),
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}
