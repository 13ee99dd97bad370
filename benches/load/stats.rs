//! What a cell measures, and how: the [`Sample`] every mode reports (turns/s, latency
//! quantiles, CPU per turn), the latency histograms its workers fill, the CPU clocks it
//! reads (this process and its children by `getrusage`, the whole machine by
//! `/proc/stat`), and what the server wrote and read meanwhile ([`Io`]).
//!
//! Kept apart from the modes so that every mode, in process or not (pgbench, `serve`),
//! is measured by the same rules and so compares like with like.

use std::time::Duration;

use hdrhistogram::Histogram;
use sqlx::PgPool;

use crate::Mode;

/// One measured cell.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sample {
    pub mode: &'static str,
    pub concurrency: usize,
    pub turns: u64,
    pub errors: u64,
    pub turns_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The client's CPU time (user + system) per turn, in microseconds: on a shared
    /// machine it is taken from PostgreSQL. For pgbench, its own CPU.
    pub client_cpu_us_per_turn: f64,
    /// Mode `http`: `botdb serve`'s CPU time per turn (µs) and largest resident memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_turn: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_max_kib: Option<u64>,
    /// The whole machine's busy CPU time per turn (µs, every process: PostgreSQL, the
    /// bench, `serve`) and its idle share (%) over the cell, from `/proc/stat`: a cell
    /// whose machine is not idle is limited by CPU, one with idle cores by waiting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine_cpu_us_per_turn: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine_idle_pct: Option<f64>,
}

/// The whole machine's CPU time, busy and idle, summed over its cores (`/proc/stat`'s
/// `cpu` line, in clock ticks); `None` where there is no `/proc/stat`.
#[derive(Clone, Copy)]
pub struct MachineCpu {
    busy: u64,
    idle: u64,
}

impl MachineCpu {
    /// The machine's CPU time so far.
    pub fn read() -> Option<MachineCpu> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let ticks: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .take(8) // user nice system idle iowait irq softirq steal (guest is in user)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let idle = ticks.get(3)? + ticks.get(4)?;
        Some(MachineCpu {
            busy: ticks.iter().sum::<u64>() - idle,
            idle,
        })
    }

    /// Busy CPU time since `before` in µs, and the idle share in %.
    pub fn since(&self, before: &MachineCpu) -> (f64, f64) {
        let tick_us = 1e6
            / nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
                .ok()
                .flatten()
                .map_or(100.0, |t| t as f64);
        let busy = self.busy.saturating_sub(before.busy) as f64;
        let idle = self.idle.saturating_sub(before.idle) as f64;
        (busy * tick_us, 100.0 * idle / (busy + idle).max(1.0))
    }
}

/// This process's CPU time (user + system), and its waited-for children's.
pub fn cpu_times() -> (Duration, Duration) {
    use nix::sys::resource::{UsageWho, getrusage};
    let total = |who| {
        getrusage(who)
            .map(|u| {
                let tv =
                    |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
                tv(u.user_time()) + tv(u.system_time())
            })
            .unwrap_or_default()
    };
    (total(UsageWho::RUSAGE_SELF), total(UsageWho::RUSAGE_CHILDREN))
}

/// The workers' latency histograms merged, and their errors summed (a worker that
/// panicked counts nothing).
pub async fn merged<E>(
    workers: Vec<impl Future<Output = Result<(Histogram<u64>, u64), E>>>,
) -> (Histogram<u64>, u64) {
    let mut hist = histogram();
    let mut errors = 0;
    for w in workers {
        if let Ok((h, e)) = w.await {
            let _ = hist.add(&h);
            errors += e;
        }
    }
    (hist, errors)
}

/// A latency histogram, in µs: 1 µs to a minute, three significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("constant histogram bounds")
}

/// The sample of a cell of `mode`: `hist` holds its turns' latencies (µs), `elapsed`
/// its seconds, `cpu` the client CPU it took; the server and machine figures are left
/// for the caller.
pub fn sample(
    mode: Mode,
    concurrency: usize,
    hist: &Histogram<u64>,
    errors: u64,
    elapsed: f64,
    cpu: Duration,
) -> Sample {
    Sample {
        mode: mode.name(),
        concurrency,
        turns: hist.len(),
        errors,
        turns_per_sec: hist.len() as f64 / elapsed,
        p50_ms: hist.value_at_quantile(0.50) as f64 / 1000.0,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
        client_cpu_us_per_turn: cpu.as_secs_f64() * 1e6 / hist.len().max(1) as f64,
        server_cpu_us_per_turn: None,
        server_rss_max_kib: None,
        machine_cpu_us_per_turn: None,
        machine_idle_pct: None,
    }
}

/// What a cell cost the server beyond time: WAL written (exact: the insert position),
/// and shared buffers hit and read in the database (approximate: backends report their
/// counts about once a second).
pub struct Io {
    lsn: i64,
    hit: i64,
    read: i64,
}

/// [`Io`] between two reads, per turn of the cell; printed under its line.
pub struct IoPerTurn {
    wal_bytes: f64,
    hit: f64,
    read: f64,
}

impl Io {
    /// The server's counters now.
    pub async fn read(pool: &PgPool) -> anyhow::Result<Io> {
        let (lsn, hit, read): (i64, i64, i64) = sqlx::query_as(
            "SELECT (pg_current_wal_insert_lsn() - '0/0')::int8, blks_hit, blks_read \
               FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(pool)
        .await?;
        Ok(Io { lsn, hit, read })
    }

    /// What was written and read since `before`, per turn.
    pub fn since(&self, before: &Io, turns: u64) -> IoPerTurn {
        let per = |a: i64, b: i64| (a - b) as f64 / turns.max(1) as f64;
        IoPerTurn {
            wal_bytes: per(self.lsn, before.lsn),
            hit: per(self.hit, before.hit),
            read: per(self.read, before.read),
        }
    }
}

impl std::fmt::Display for IoPerTurn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "per turn: WAL {:.0} bytes, shared buffers hit {:.1} read {:.1} (approx.)",
            self.wal_bytes, self.hit, self.read
        )
    }
}
