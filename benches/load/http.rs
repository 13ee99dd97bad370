//! Mode `http` of the load benchmark: the bot end to end, over HTTP.
//!
//! `botdb serve` runs as a child process on the benchmark's scratch database (its
//! `DATABASE_URL`, a random `BOTDB_WEBHOOK_SECRET`, a free port, the same pool size as
//! the in-process modes: `DB_POOL_SIZE` / `DB_MAX_OVERFLOW` from the bench's config; the
//! actor settings are the defaults on both sides). The bench waits for `/healthz`, then
//! each of C workers POSTs Telegram text updates to `/telegram/webhook` on a keep-alive
//! connection of its own (one `awc` client per worker, its connector limited to one
//! connection: as Telegram's `max_connections` connections, each carrying one update at
//! a time), as disjoint users of the populated range, with increasing `update_id`s and a
//! 200-character text. A turn is a 200 answer whose body was read; anything else counts
//! as an error. What the server does per update is the bot's text turn: `BeginTurn` (the
//! update's key, the user, the context, in one transaction), then `AppendTurn` (both
//! messages and the update's key in one statement) through the batched actors.
//!
//! Per cell, besides turns/s and latencies: the server's CPU per turn (utime + stime of
//! the `serve` process, all threads, from `/proc/<pid>/stat` before and after the cell)
//! and its largest resident memory (`VmRSS`, sampled every 50 ms). With
//! `--memory-users N`, a last step sends one turn from each of N users never seen before
//! (100 connections), then leaves the server idle and reads its resident memory again.
//!
//! The binary: `BOTDB_BIN` when set, else the `botdb` that cargo builds with the bench
//! (`CARGO_BIN_EXE_botdb`, set by cargo for bench targets: `cargo bench` always builds
//! the package's binaries first, from the same profile and features, so it is never
//! stale). Like the bench itself, that build has the test-only `fault-injection`
//! feature (dev-dependencies), which costs one atomic load per request until armed;
//! `BOTDB_BIN=target/release/botdb` measures a plain release build instead.
//!
//! The workers are `awc` clients, which are `!Send`: they run on the actix system
//! thread whatever `--threads` says.
//!
//! Starting the child and posting an update are `shared/serve.rs`'s, which the
//! `healthz` bench uses too; the update's text and ids are `bot.rs`'s, which mode `bot`
//! sends in process.

use std::path::PathBuf;
use std::process::Stdio;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use botdb::Config;
use tokio::process::{Child, Command};

use crate::Mode;
use crate::bot::{UPDATE_IDS, text};
use crate::report::cell;
use crate::serve::send;
use crate::stats::{Sample, cpu_times, histogram, merged, sample};
use crate::workers::Rng;

/// The `botdb` binary to run.
fn binary() -> PathBuf {
    std::env::var_os("BOTDB_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_botdb")))
}

/// A running `botdb serve`; stopped with SIGTERM by [`Served::stop`], killed on drop.
pub struct Served {
    child: Child,
    pid: u32,
    base: Rc<str>,
    secret: Rc<str>,
    /// Resident memory right after it answered `/healthz`, in KiB.
    pub idle_rss_kib: u64,
    /// Clock ticks per second, for `/proc/<pid>/stat`.
    ticks: f64,
}

impl Served {
    /// Starts `botdb serve` on the database at `url` with `config`'s pool size, and
    /// waits until `/healthz` answers 200.
    pub async fn start(url: &url::Url, config: &Config) -> anyhow::Result<Served> {
        let secret: Rc<str> = format!("bench-{}", uuid::Uuid::new_v4().simple()).into();
        let (child, base) = crate::serve::start(
            Command::new(binary())
                .args(["serve", "--bind", "127.0.0.1:0"])
                .env_remove("BOTDB_BIND")
                .env("DATABASE_URL", url.as_str())
                .env("BOTDB_WEBHOOK_SECRET", &*secret)
                .env("DB_POOL_SIZE", config.pool.size.to_string())
                .env("DB_MAX_OVERFLOW", config.pool.max_overflow.to_string())
                .env("RUST_LOG", "warn")
                .current_dir(std::env::temp_dir())
                .stderr(Stdio::inherit()),
        )
        .await?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow::anyhow!("botdb serve exited at once"))?;
        let client = awc::Client::builder().timeout(Duration::from_secs(5)).finish();
        let healthy = async {
            loop {
                if let Ok(resp) = client.get(format!("{base}/healthz")).send().await
                    && resp.status().as_u16() == 200
                {
                    return;
                }
                actix_rt::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), healthy)
            .await
            .map_err(|_| anyhow::anyhow!("botdb serve's /healthz did not answer 200 within 30 s"))?;
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|t| *t > 0)
            .unwrap_or(100) as f64;
        let mut served = Served {
            child,
            pid,
            base: base.into(),
            secret,
            idle_rss_kib: 0,
            ticks,
        };
        // Settled: what an idle server holds.
        actix_rt::time::sleep(Duration::from_secs(1)).await;
        served.idle_rss_kib = served.rss_kib()?;
        eprintln!(
            "http: {} serve (pid {pid}) on {}, pool {} + {}, idle RSS {:.1} MiB",
            binary().display(),
            served.base,
            config.pool.size,
            config.pool.max_overflow,
            served.idle_rss_kib as f64 / 1024.0
        );
        Ok(served)
    }

    /// The server's CPU time so far (user + system, every thread).
    fn cpu(&self) -> anyhow::Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        // The fields after the command name, which is in parentheses and may hold spaces.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .ok_or_else(|| anyhow::anyhow!("unexpected /proc/{}/stat", self.pid))?;
        let field = |n: usize| -> anyhow::Result<u64> {
            // rest starts at field 3 (state).
            Ok(rest
                .split_whitespace()
                .nth(n - 3)
                .ok_or_else(|| anyhow::anyhow!("short /proc/{}/stat", self.pid))?
                .parse()?)
        };
        let ticks = field(14)? + field(15)?;
        Ok(Duration::from_secs_f64(ticks as f64 / self.ticks))
    }

    /// The server's resident memory now, in KiB.
    fn rss_kib(&self) -> anyhow::Result<u64> {
        rss_kib(self.pid)
    }

    /// SIGTERM, then waits for it to exit (at most 60 s; killed after that).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        use nix::sys::signal::{Signal, kill};
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid)?);
        kill(pid, Signal::SIGTERM)?;
        match tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                anyhow::ensure!(status.success(), "botdb serve exited with {status}");
            }
            Err(_) => {
                self.child.kill().await?;
                anyhow::bail!("botdb serve did not stop within 60 s of SIGTERM");
            }
        }
        Ok(())
    }
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))
}

/// One client: a keep-alive connection of its own.
fn client() -> awc::Client {
    awc::Client::builder()
        .connector(awc::Connector::new().limit(1))
        .timeout(Duration::from_secs(60))
        .finish()
}

/// Samples the server's resident memory every 50 ms until `until`; the largest, KiB.
async fn max_rss(pid: u32, until: Instant) -> u64 {
    let mut max = 0;
    while Instant::now() < until {
        if let Ok(kib) = rss_kib(pid) {
            max = max.max(kib);
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    max
}

/// One cell: C workers for `duration`.
pub async fn measure(
    served: &Served,
    users: i64,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Sample> {
    let text: Rc<str> = text().into();
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let (cpu_before, _) = cpu_times();
    let server_before = served.cpu()?;
    let sampler = actix_rt::spawn(max_rss(served.pid, deadline));
    let workers: Vec<_> = (0..concurrency)
        .map(|k| {
            let (base, secret, text) = (served.base.clone(), served.secret.clone(), text.clone());
            actix_rt::spawn(async move {
                let client = client();
                let mut hist = histogram();
                let mut errors = 0u64;
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (k as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9));
                let (k, c) = (k as i64, concurrency as i64);
                let slots = (users - 1 - k) / c + 1;
                while Instant::now() < deadline {
                    let uid = 1 + k + rng.below(slots as u64) as i64 * c;
                    let update_id = UPDATE_IDS.fetch_add(1, Ordering::Relaxed);
                    let start = Instant::now();
                    if send(&client, &base, &secret, update_id, uid, &text).await {
                        let _ = hist.record(start.elapsed().as_micros() as u64);
                    } else {
                        errors += 1;
                    }
                }
                (hist, errors)
            })
        })
        .collect();
    let (hist, errors) = merged(workers).await;
    let elapsed = started.elapsed().as_secs_f64();
    let (cpu_after, _) = cpu_times();
    let server_cpu = served.cpu()?.saturating_sub(server_before);
    let rss = sampler.await.unwrap_or(0);
    let mut s = sample(
        Mode::Http,
        concurrency,
        &hist,
        errors,
        elapsed,
        cpu_after - cpu_before,
    );
    s.server_cpu_us_per_turn = Some(server_cpu.as_secs_f64() * 1e6 / hist.len().max(1) as f64);
    s.server_rss_max_kib = Some(rss);
    Ok(s)
}

/// `http` beside `batched` (the actors-only path, in process) and `bot` (the same turn
/// as `http`, in process) at each concurrency.
pub fn print_vs(best: &[Sample], concurrency: &[usize]) {
    let get = |m: Mode, c: usize| cell(best, m, c);
    println!();
    println!(
        "| C | http turns/s | bot turns/s | http/bot | batched turns/s | http/batched | http p50 / p99 ms | batched p50 / p99 ms | server CPU µs/turn (http) | client CPU µs/turn (http) | in-process CPU µs/turn (batched) | machine CPU µs/turn http / batched | server max RSS MiB | http errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &c in concurrency {
        let Some(h) = get(Mode::Http, c) else { continue };
        let b = get(Mode::Batched, c);
        let in_process = get(Mode::Bot, c);
        let or_dash = |f: &dyn Fn(&Sample) -> String| b.map_or("-".to_string(), f);
        println!(
            "| {c} | {:.0} | {} | {} | {} | {} | {:.2} / {:.2} | {} | {:.0} | {:.0} | {} | {} / {} | {:.1} | {} |",
            h.turns_per_sec,
            in_process.map_or("-".to_string(), |p| format!("{:.0}", p.turns_per_sec)),
            in_process.map_or("-".to_string(), |p| format!(
                "{:.2}x",
                h.turns_per_sec / p.turns_per_sec
            )),
            or_dash(&|b| format!("{:.0}", b.turns_per_sec)),
            or_dash(&|b| format!("{:.2}x", h.turns_per_sec / b.turns_per_sec)),
            h.p50_ms,
            h.p99_ms,
            or_dash(&|b| format!("{:.2} / {:.2}", b.p50_ms, b.p99_ms)),
            h.server_cpu_us_per_turn.unwrap_or(0.0),
            h.client_cpu_us_per_turn,
            or_dash(&|b| format!("{:.0}", b.client_cpu_us_per_turn)),
            h.machine_cpu_us_per_turn
                .map_or("-".to_string(), |v| format!("{v:.0}")),
            b.and_then(|b| b.machine_cpu_us_per_turn)
                .map_or("-".to_string(), |v| format!("{v:.0}")),
            h.server_rss_max_kib.unwrap_or(0) as f64 / 1024.0,
            h.errors,
        );
    }
}

/// The memory step: one turn from each of `users` users never seen before (ids from
/// 1,000,001, 100 connections), then the server idle for 5 s. Prints the resident
/// memory idle after start, at most while the 100 connections drove it, and after.
pub async fn memory(served: &Served, users: i64, best: &[Sample]) -> anyhow::Result<()> {
    const FIRST: i64 = 1_000_001;
    const CONNECTIONS: i64 = 100;
    let text: Rc<str> = text().into();
    let started = Instant::now();
    let done = Rc::new(std::cell::Cell::new(false));
    let sampler = {
        let (pid, done) = (served.pid, done.clone());
        actix_rt::spawn(async move {
            let mut max = 0;
            while !done.get() {
                if let Ok(kib) = rss_kib(pid) {
                    max = max.max(kib);
                }
                actix_rt::time::sleep(Duration::from_millis(50)).await;
            }
            max
        })
    };
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|k| {
            let (base, secret, text) = (served.base.clone(), served.secret.clone(), text.clone());
            actix_rt::spawn(async move {
                let client = client();
                let (mut ok, mut errors) = (0u64, 0u64);
                let mut uid = FIRST + k;
                while uid < FIRST + users {
                    let update_id = UPDATE_IDS.fetch_add(1, Ordering::Relaxed);
                    // Until answered: every user must have talked once.
                    let mut tries = 0;
                    while !send(&client, &base, &secret, update_id, uid, &text).await {
                        errors += 1;
                        tries += 1;
                        if tries == 5 {
                            break;
                        }
                        actix_rt::time::sleep(Duration::from_millis(100)).await;
                    }
                    if tries < 5 {
                        ok += 1;
                    }
                    uid += CONNECTIONS;
                }
                (ok, errors)
            })
        })
        .collect();
    let (mut ok, mut errors) = (0, 0);
    for w in workers {
        if let Ok((o, e)) = w.await {
            ok += o;
            errors += e;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    done.set(true);
    let driven_max = sampler.await.unwrap_or(0);
    // The clients are gone (their connections closed): the server is idle.
    actix_rt::time::sleep(Duration::from_secs(5)).await;
    let after = served.rss_kib()?;
    let cell_max = best
        .iter()
        .filter(|s| s.mode == Mode::Http.name() && s.concurrency == 100)
        .filter_map(|s| s.server_rss_max_kib)
        .max();
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!();
    println!(
        "serve's resident memory (VmRSS): idle after start {:.1} MiB; under 100 connections at most {:.1} MiB{}; after {users} distinct new users sent one turn each ({ok} answered 200 in {elapsed:.1} s, {errors} errors), idle 5 s: {:.1} MiB",
        mib(served.idle_rss_kib),
        mib(driven_max),
        cell_max.map_or(String::new(), |m| format!(
            " (the C=100 cell's best round: {:.1} MiB)",
            mib(m)
        )),
        mib(after),
    );
    Ok(())
}
