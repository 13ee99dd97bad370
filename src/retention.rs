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
//!
//! A purge may not be shorter than the key retention (`BOTDB_KEY_RETENTION_HOURS`): a
//! handled update's key names the messages its turn stored, and a copy of that update
//! (Telegram redelivers) is answered with them. A purge that removed them while the
//! key is kept would make that copy fail; [`check_purge_period`] refuses it, and
//! [`purge`] and `serve` call it.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::db::Database;
use crate::error::{Error, Result};
use crate::repo;

/// The variable that says how long `serve` keeps handled update ids, in hours.
pub const KEY_RETENTION_VAR: &str = "BOTDB_KEY_RETENTION_HOURS";

/// Its default, as the command line shows it (hours); [`DEFAULT_KEY_RETENTION`] as a
/// duration.
pub const DEFAULT_KEY_RETENTION_HOURS: &str = "24";

/// How long handled update ids are kept by default: Telegram does not redeliver an
/// update after 24 hours.
pub const DEFAULT_KEY_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Reads a key retention as `BOTDB_KEY_RETENTION_HOURS` gives it: a number of hours,
/// fractions allowed, more than 0.
///
/// # Errors
/// [`Error::Config`] naming `BOTDB_KEY_RETENTION_HOURS`.
pub fn parse_key_retention(text: &str) -> Result<Duration> {
    match text.trim().parse::<f64>() {
        // Under a million hours (a century): Duration holds it, and no key is kept longer.
        Ok(hours) if hours > 0.0 && hours < 1e6 => Ok(Duration::from_secs_f64(hours * 3600.0)),
        _ => Err(Error::config(
            KEY_RETENTION_VAR,
            format!(
                "expected a number of hours more than 0, got {:?}",
                text.chars().take(40).collect::<String>()
            ),
        )),
    }
}

/// Refuses a purge period (`setting`: where it came from, `BOTDB_PURGE_AFTER` or
/// `--deleted-before`) shorter than the key retention: a copy of an update whose key
/// is still kept replays its turn by the messages the key names, and a purge could
/// have removed them (soft-deleted by a `/reset` after the turn).
///
/// # Errors
/// [`Error::Config`] naming `setting` and `BOTDB_KEY_RETENTION_HOURS`.
pub fn check_purge_period(
    setting: &'static str,
    deleted_before: Duration,
    key_retention: Duration,
) -> Result<()> {
    if deleted_before >= key_retention {
        return Ok(());
    }
    let hours = key_retention.as_secs_f64() / 3600.0;
    Err(Error::config(
        setting,
        format!(
            "{} is shorter than the request keys' retention, {KEY_RETENTION_VAR}={hours}: a copy of \
             an update handled since is answered with the messages its turn stored, which this \
             purge could remove first; purge only what was soft-deleted at least {hours} hours \
             ago, or lower {KEY_RETENTION_VAR}",
            humantime::format_duration(deleted_before),
        ),
    ))
}

/// How a purge runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PurgeOptions {
    /// Messages soft-deleted longer ago than this are removed. At least
    /// `key_retention`.
    pub deleted_before: Duration,
    /// How long handled update ids are kept (`BOTDB_KEY_RETENTION_HOURS`, default
    /// [`DEFAULT_KEY_RETENTION`]): the shortest `deleted_before` allowed.
    pub key_retention: Duration,
    /// Rows per transaction (1 to 100,000).
    pub batch: i64,
    /// Rest between batches, leaving the server to the traffic (zero: none).
    pub pause: Duration,
}

impl PurgeOptions {
    /// Messages deleted longer ago than `deleted_before`, 1,000 per transaction, no
    /// pause, under the default key retention (24 hours).
    pub fn new(deleted_before: Duration) -> Self {
        PurgeOptions {
            deleted_before,
            key_retention: DEFAULT_KEY_RETENTION,
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
/// [`Error::Config`] (`deleted_before`) for a period shorter than `key_retention`
/// ([`check_purge_period`]), and then nothing is removed; [`Error::InvalidInput`] for a
/// bad batch size or period; database errors (what was purged before stays purged).
pub async fn purge(
    db: &Database,
    options: PurgeOptions,
    mut progress: impl FnMut(&PurgeReport),
    stop: impl Future<Output = ()>,
) -> Result<PurgeReport> {
    check_purge_period("deleted_before", options.deleted_before, options.key_retention)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_key_retention_is_one_value() {
        assert_eq!(
            parse_key_retention(DEFAULT_KEY_RETENTION_HOURS).unwrap(),
            DEFAULT_KEY_RETENTION
        );
        assert_eq!(
            PurgeOptions::new(Duration::from_secs(1)).key_retention,
            DEFAULT_KEY_RETENTION
        );
    }

    #[test]
    fn key_retentions_are_hours() {
        assert_eq!(parse_key_retention(" 1.5 ").unwrap(), Duration::from_secs(5400));
        for bad in ["0", "-1", "soon", "", "1e9", "NaN"] {
            let err = parse_key_retention(bad).unwrap_err();
            assert!(
                matches!(&err, Error::Config { key, .. } if key == KEY_RETENTION_VAR),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn a_purge_period_at_the_key_retention_or_longer_is_allowed() {
        let day = Duration::from_secs(86_400);
        assert!(check_purge_period("BOTDB_PURGE_AFTER", day, day).is_ok());
        assert!(check_purge_period("BOTDB_PURGE_AFTER", 30 * day, day).is_ok());
        let err = check_purge_period("BOTDB_PURGE_AFTER", Duration::from_secs(3600), day).unwrap_err();
        assert!(
            matches!(&err, Error::Config { key, .. } if key == "BOTDB_PURGE_AFTER"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "configuration error in BOTDB_PURGE_AFTER: 1h is shorter than the request keys' \
             retention, BOTDB_KEY_RETENTION_HOURS=24: a copy of an update handled since is \
             answered with the messages its turn stored, which this purge could remove first; \
             purge only what was soft-deleted at least 24 hours ago, or lower \
             BOTDB_KEY_RETENTION_HOURS"
        );
    }
}
