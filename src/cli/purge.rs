//! `botdb purge --deleted-before DURATION`: soft-deleted messages removed for good, a
//! small batch per transaction, with a progress bar; Ctrl-C stops between batches and
//! a later run goes on where this one stopped.

use std::process::ExitCode;
use std::time::Duration;

use botdb::retention::{self, PurgeOptions};
use botdb::shutdown::{FORCED_EXIT_CODE, Signals};
use botdb::{Config, Database};
use indicatif::{ProgressBar, ProgressStyle};

/// `--key-retention` / `BOTDB_KEY_RETENTION_HOURS`, read alike by `serve`, which keeps the
/// keys that long, and `purge`, which may not be shorter.
#[derive(Debug, clap::Args)]
pub struct KeyRetentionArg {
    /// Hours handled update ids are kept (Telegram redelivers for at most 24); a purge
    /// of soft-deleted messages may not be shorter.
    #[arg(
        long = "key-retention",
        value_name = "HOURS",
        env = retention::KEY_RETENTION_VAR,
        default_value = retention::DEFAULT_KEY_RETENTION_HOURS,
        value_parser = key_retention,
    )]
    pub key_retention: Duration,
}

fn key_retention(text: &str) -> Result<Duration, String> {
    retention::parse_key_retention(text).map_err(|e| e.to_string())
}

#[derive(Debug, clap::Args)]
pub struct PurgeArgs {
    /// Remove messages soft-deleted longer ago than this (30d, 12h, 1w 2d).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    deleted_before: Duration,
    /// Messages removed per transaction (1 to 100000): each holds its row locks for
    /// one statement of this size.
    #[arg(long, default_value_t = 1000)]
    batch: i64,
    /// Rest between batches, leaving the server to the traffic (e.g. 50ms; 0: none).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = pause)]
    pause: Duration,
    #[command(flatten)]
    key_retention: KeyRetentionArg,
}

fn duration(text: &str) -> Result<Duration, String> {
    botdb::model::parse_duration("deleted-before", text).map_err(|e| e.to_string())
}

fn pause(text: &str) -> Result<Duration, String> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(text.trim()).map_err(|e| format!("expected a duration such as 50ms: {e}"))
}

pub async fn run(config: &Config, args: PurgeArgs) -> anyhow::Result<ExitCode> {
    let key_retention = args.key_retention.key_retention;
    // Refused before any connection, naming the flag the operator typed.
    retention::check_purge_period("--deleted-before", args.deleted_before, key_retention)?;
    let mut signals = Signals::install()?;
    let db = Database::connect(config).await?;
    let options = PurgeOptions {
        deleted_before: args.deleted_before,
        key_retention,
        batch: args.batch,
        pause: args.pause,
    };
    // Its length is known once the purge has counted what is due.
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} messages purged  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let done = retention::purge(
        &db,
        options,
        |report| {
            bar.set_length(report.due);
            bar.set_position(report.purged);
        },
        signals.recv(),
    )
    .await;
    bar.finish_and_clear();
    db.close().await;
    let report = done?;
    let longest = report.longest_batch.as_secs_f64() * 1000.0;
    if report.finished {
        println!(
            "purged {} messages soft-deleted before {} ({} transactions, the longest {longest:.1} ms)",
            report.purged,
            report.cutoff.to_rfc3339(),
            report.batches
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "interrupted: purged {} of {} messages soft-deleted before {} ({} transactions, the longest \
             {longest:.1} ms); run the same command again to go on",
            report.purged,
            report.due,
            report.cutoff.to_rfc3339(),
            report.batches
        );
        Ok(ExitCode::from(u8::try_from(FORCED_EXIT_CODE).unwrap_or(1)))
    }
}
