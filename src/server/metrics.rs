//! `/metrics` in Prometheus' text exposition format (version 0.0.4), built at scrape
//! time from the actors' `Stats`, the pool's status and the webhook's counters.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::actors::{ActorStats, Depth, SystemStats};
use crate::pipeline::MetricsSnapshot;
use crate::server::health::HealthCache;

/// The webhook's own counters.
#[derive(Debug, Default)]
pub struct WebhookMetrics {
    /// Updates answered with a reply.
    pub replied: AtomicU64,
    /// Updates accepted and ignored (not a text message, ...).
    pub ignored: AtomicU64,
    /// Requests refused: bad token (401), bad body (4xx).
    pub rejected: AtomicU64,
    /// Updates that failed in the database layer (5xx).
    pub failed: AtomicU64,
    /// With the Bot API: updates recorded, their replies to be sent.
    pub recorded: AtomicU64,
    /// With the Bot API: copies of updates recorded before (answered 200, nothing done).
    pub copies: AtomicU64,
}

impl WebhookMetrics {
    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One metric family: HELP, TYPE, then `name{labels} value` lines. A sample's first
/// element is what follows the name: `{labels}`, or `_count{labels}` for a summary.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (suffix, value) in samples {
        let _ = writeln!(out, "{name}{suffix} {value}");
    }
}

/// Everything `/metrics` shows, gathered for one scrape.
pub(crate) struct Scrape<'a> {
    pub(crate) stats: &'a SystemStats,
    pub(crate) webhook: &'a WebhookMetrics,
    pub(crate) health: &'a HealthCache,
    pub(crate) keys_purged: u64,
    pub(crate) outbox_purged: u64,
    /// Waits on the server past botdb's own deadline (`Database::deadline_misses`).
    pub(crate) deadline_misses: u64,
    pub(crate) removed: crate::db::Removed,
    pub(crate) replica_reads: crate::db::ReplicaReads,
    pub(crate) shutting_down: bool,
    /// With the Bot API: this instance's pipeline counts, and the inbox's and outbox's
    /// depth when the database answered.
    pub(crate) pipeline: Option<(&'a MetricsSnapshot, Option<Depth>)>,
}

/// Renders everything as Prometheus text.
pub(crate) fn render(scrape: &Scrape<'_>) -> String {
    let Scrape {
        stats,
        webhook,
        health,
        keys_purged,
        outbox_purged,
        deadline_misses,
        removed,
        replica_reads,
        shutting_down,
        pipeline,
    } = scrape;
    let (keys_purged, outbox_purged, shutting_down) = (*keys_purged, *outbox_purged, *shutting_down);
    let mut out = String::new();
    let per_actor = |f: &dyn Fn(&ActorStats) -> f64| -> Vec<(String, f64)> {
        stats
            .actors
            .iter()
            .map(|a| (format!("{{actor=\"{}\"}}", a.actor), f(a)))
            .collect()
    };
    family(
        &mut out,
        "botdb_actor_queued",
        "gauge",
        "Requests waiting behind an earlier request of the same user.",
        &per_actor(&|a| a.queued as f64),
    );
    family(
        &mut out,
        "botdb_actor_in_flight",
        "gauge",
        "Requests running (one per user at most).",
        &per_actor(&|a| a.in_flight as f64),
    );
    family(
        &mut out,
        "botdb_actor_pending",
        "gauge",
        "Requests admitted and not yet answered (mailbox included).",
        &per_actor(&|a| a.gate.pending as f64),
    );
    let mut outcomes = Vec::new();
    for a in &stats.actors {
        for (outcome, n) in [
            ("ok", a.completed),
            ("error", a.failed),
            ("overloaded", a.gate.rejected_overloaded),
            ("user_overloaded", a.gate.rejected_user_overloaded),
            ("shutting_down", a.gate.rejected_shutting_down),
        ] {
            outcomes.push((
                format!("{{actor=\"{}\",outcome=\"{outcome}\"}}", a.actor),
                n as f64,
            ));
        }
    }
    family(
        &mut out,
        "botdb_actor_requests_total",
        "counter",
        "Requests by outcome.",
        &outcomes,
    );
    family(
        &mut out,
        "botdb_actor_batch_splits_total",
        "counter",
        "Requests split out of a batch to run alone (a row locked by another transaction, an unknown user).",
        &per_actor(&|a| a.batch_splits as f64),
    );
    family(
        &mut out,
        "botdb_actor_lock_retries_total",
        "counter",
        "Tries repeated after a lock timeout, each after giving the connection back.",
        &per_actor(&|a| a.lock_retries as f64),
    );
    let mut timeouts = Vec::new();
    for a in &stats.actors {
        for (kind, n) in [
            ("lock", a.lock_timeouts),
            ("statement", a.statement_timeouts),
            ("idle_in_transaction", a.idle_in_transaction_timeouts),
        ] {
            timeouts.push((format!("{{actor=\"{}\",kind=\"{kind}\"}}", a.actor), n as f64));
        }
    }
    family(
        &mut out,
        "botdb_actor_timeouts_total",
        "counter",
        "Requests failed on a time limit, by kind.",
        &timeouts,
    );
    family(
        &mut out,
        "botdb_actor_restarts_total",
        "counter",
        "Supervisor restarts after a panic.",
        &per_actor(&|a| a.restarts as f64),
    );
    let mut latency = Vec::new();
    for a in &stats.actors {
        for (q, ms) in [
            ("0.5", a.latency.p50_ms),
            ("0.95", a.latency.p95_ms),
            ("0.99", a.latency.p99_ms),
        ] {
            latency.push((format!("{{actor=\"{}\",quantile=\"{q}\"}}", a.actor), ms / 1000.0));
        }
        latency.push((format!("_count{{actor=\"{}\"}}", a.actor), a.latency.count as f64));
    }
    family(
        &mut out,
        "botdb_actor_latency_seconds",
        "summary",
        "Time from acceptance to answer.",
        &latency,
    );
    if let Some(pool) = stats.pool {
        family(
            &mut out,
            "botdb_pool_connections",
            "gauge",
            "Pooled connections by state.",
            &[
                ("{state=\"in_use\"}".into(), f64::from(pool.in_use)),
                ("{state=\"idle\"}".into(), f64::from(pool.idle)),
            ],
        );
        family(
            &mut out,
            "botdb_pool_max_connections",
            "gauge",
            "pool_size + max_overflow.",
            &[(String::new(), f64::from(pool.max))],
        );
    }
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
    family(
        &mut out,
        "botdb_webhook_updates_total",
        "counter",
        "Webhook requests by result.",
        &[
            ("{result=\"replied\"}".into(), load(&webhook.replied)),
            ("{result=\"ignored\"}".into(), load(&webhook.ignored)),
            ("{result=\"rejected\"}".into(), load(&webhook.rejected)),
            ("{result=\"failed\"}".into(), load(&webhook.failed)),
            ("{result=\"recorded\"}".into(), load(&webhook.recorded)),
            ("{result=\"copy\"}".into(), load(&webhook.copies)),
        ],
    );
    family(
        &mut out,
        "botdb_health_checks_total",
        "counter",
        "/healthz calls, by where the answer came from (the database at most once per cache period).",
        &[
            ("{source=\"database\"}".into(), load(&health.database_checks)),
            ("{source=\"cache\"}".into(), load(&health.cached_answers)),
        ],
    );
    family(
        &mut out,
        "botdb_request_keys_purged_total",
        "counter",
        "Handled update ids removed after the retention period.",
        &[(String::new(), keys_purged as f64)],
    );
    family(
        &mut out,
        "botdb_db_deadline_misses_total",
        "counter",
        "Waits on the database past botdb's own deadline (DB_NETWORK_TIMEOUT): each closed its connection and replaced those opened before it.",
        &[(String::new(), *deadline_misses as f64)],
    );
    family(
        &mut out,
        "botdb_outbox_purged_total",
        "counter",
        "Sent and failed Bot API messages removed after the request keys' retention period.",
        &[(String::new(), outbox_purged as f64)],
    );
    family(
        &mut out,
        "botdb_messages_purged_total",
        "counter",
        "Soft-deleted messages removed for good after their retention (BOTDB_PURGE_AFTER).",
        &[(String::new(), removed.purged_messages as f64)],
    );
    family(
        &mut out,
        "botdb_replica_reads_total",
        "counter",
        "History, settings and context reads that could go to a replica (DATABASE_REPLICA_URL), by where they went: \
         replica, or the primary because no replica had the user's last write (behind), lagged (lagging) or answered (down).",
        &[
            ("{route=\"replica\"}".into(), replica_reads.on_replica as f64),
            ("{route=\"behind\"}".into(), replica_reads.behind as f64),
            ("{route=\"lagging\"}".into(), replica_reads.lagging as f64),
            ("{route=\"down\"}".into(), replica_reads.down as f64),
        ],
    );
    family(
        &mut out,
        "botdb_users_erased_total",
        "counter",
        "Users erased on request (EraseUser, /forget yes).",
        &[(String::new(), removed.erased_users as f64)],
    );
    family(
        &mut out,
        "botdb_erased_messages_total",
        "counter",
        "Messages removed with erased users.",
        &[(String::new(), removed.erased_messages as f64)],
    );
    if let Some((counts, depth)) = pipeline {
        render_pipeline(&mut out, counts, *depth);
    }
    family(
        &mut out,
        "botdb_shutting_down",
        "gauge",
        "1 once shutdown began.",
        &[(String::new(), if shutting_down { 1.0 } else { 0.0 })],
    );
    out
}

/// The turn pipeline's families (with the Bot API): the inbox's and outbox's depth (all
/// instances'), and this instance's turns, model calls and sends.
fn render_pipeline(out: &mut String, counts: &MetricsSnapshot, depth: Option<Depth>) {
    if let Some(depth) = depth {
        family(
            out,
            "botdb_inbox_depth",
            "gauge",
            "Updates recorded and not yet done (all instances), by state.",
            &[
                ("{state=\"waiting\"}".into(), (depth.inbox - depth.running) as f64),
                ("{state=\"running\"}".into(), depth.running as f64),
            ],
        );
        family(
            out,
            "botdb_inbox_oldest_waiting_seconds",
            "gauge",
            "How long the oldest update not yet begun has waited (0: none waits).",
            &[(
                String::new(),
                depth.oldest_waiting.map_or(0.0, |d| d.as_secs_f64()),
            )],
        );
        family(
            out,
            "botdb_outbox_depth",
            "gauge",
            "Messages not yet sent (all instances).",
            &[(String::new(), depth.outbox as f64)],
        );
        family(
            out,
            "botdb_outbox_oldest_unsent_seconds",
            "gauge",
            "How long the oldest unsent message has waited (0: none).",
            &[(
                String::new(),
                depth.oldest_unsent.map_or(0.0, |d| d.as_secs_f64()),
            )],
        );
    }
    family(
        out,
        "botdb_turns_total",
        "counter",
        "Updates this instance ran, by how they ended.",
        &[
            ("{result=\"done\"}".into(), counts.turns_done as f64),
            ("{result=\"erased\"}".into(), counts.turns_erased as f64),
            ("{result=\"fenced\"}".into(), counts.turns_fenced as f64),
            ("{result=\"dropped\"}".into(), counts.turns_dropped as f64),
        ],
    );
    family(
        out,
        "botdb_turns_reclaimed_total",
        "counter",
        "Updates this instance took over from an instance whose lease expired.",
        &[(String::new(), counts.turns_reclaimed as f64)],
    );
    let mut latency: Vec<(String, f64)> = counts
        .model_buckets
        .iter()
        .map(|(le, n)| (format!("_bucket{{le=\"{le}\"}}"), *n as f64))
        .collect();
    latency.push(("_bucket{le=\"+Inf\"}".into(), counts.model_calls as f64));
    latency.push(("_sum".into(), counts.model_seconds));
    latency.push(("_count".into(), counts.model_calls as f64));
    family(
        out,
        "botdb_model_latency_seconds",
        "histogram",
        "How long the model took to answer (its retries included).",
        &latency,
    );
    let labelled = |label: &str, counts: &[(&'static str, u64)]| -> Vec<(String, f64)> {
        counts
            .iter()
            .map(|(value, n)| (format!("{{{label}=\"{value}\"}}"), *n as f64))
            .collect()
    };
    family(
        out,
        "botdb_model_failures_total",
        "counter",
        "Model calls that failed after their retries, by kind (the user was told).",
        &labelled("kind", &counts.model_failures),
    );
    family(
        out,
        "botdb_sends_total",
        "counter",
        "Messages sent through the Bot API, by outcome (delivered, retry_after, transient, unknown, refused, gave_up).",
        &labelled("outcome", &counts.sends),
    );
    family(
        out,
        "botdb_sends_resent_after_unknown_total",
        "counter",
        "Messages sent again after an attempt whose outcome is unknown: each may have reached its chat twice.",
        &[(String::new(), counts.resent_after_unknown as f64)],
    );
}
