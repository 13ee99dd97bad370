//! What a `/healthz` flood costs the bot: `cargo bench --bench healthz [-- --help]`.
//!
//! `botdb serve` on a throwaway cluster; `--clients` Telegram-like clients send text
//! updates (keep-alive, each waiting for its answer) for `--seconds`, three ways, in
//! interleaved rounds (each cell reports its best round):
//! - `quiet`: no health checks;
//! - `flood`: `--flood` more clients call `GET /healthz`, `--flood-rate` calls per
//!   second in all, with the default health cache (the database is asked at most once
//!   a second);
//! - `flood-uncached`: the same flood against a server whose cache is 1 µs, i.e. one
//!   database round trip per call, as before the cache existed;
//! - `flood-max`: the flood clients as fast as they are answered (cached): what
//!   answering that many HTTP requests costs the machine's CPU, whatever the route.
//!
//! Reported: turns/s and health calls/s per cell, and each flood's turns/s as a share of
//! `quiet`'s.
//!
//! `botdb serve` is started, and its webhook sent updates, as the load bench's `http`
//! mode does it (`shared/serve.rs`).

#[path = "shared/serve.rs"]
mod serve;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use botdb::embedded::EmbeddedPostgres;
use clap::Parser;
use secrecy::ExposeSecret;
use tokio::process::{Child, Command};

const SECRET: &str = "bench-secret_0123456789";

#[derive(Debug, Parser)]
#[command(about = "botdb: what a /healthz flood costs the webhook")]
struct Args {
    /// Seconds per cell.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Interleaved rounds; each cell reports its best.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Clients sending updates.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Clients calling /healthz during the flood cells.
    #[arg(long, default_value_t = 8)]
    flood: usize,
    /// /healthz calls per second, all flood clients together (the `flood-max` cell
    /// ignores it).
    #[arg(long, default_value_t = 2000)]
    flood_rate: u64,
    /// cargo bench passes --bench; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// A running `botdb serve`, killed on drop.
struct Served {
    _child: Child,
    base: String,
}

async fn serve(url: &str, health_cache: &str) -> Served {
    let (child, base) = serve::start(
        Command::new(env!("CARGO_BIN_EXE_botdb"))
            .args([
                "serve",
                "--bind",
                "127.0.0.1:0",
                "--migrate",
                "--health-cache",
                health_cache,
            ])
            .env("DATABASE_URL", url)
            .env("BOTDB_WEBHOOK_SECRET", SECRET)
            .env("RUST_LOG", "warn"),
    )
    .await
    .expect("botdb serve listens");
    Served { _child: child, base }
}

/// Turns per second and health calls per second of one cell. `rate`: /healthz calls
/// per second in all, or 0 for as fast as answered.
async fn cell(
    base: &str,
    clients: usize,
    flood: usize,
    rate: u64,
    seconds: f64,
    first_user: i64,
) -> (f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let (turns, checks) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for c in 0..clients as i64 {
        let (base, stop, turns) = (base.to_string(), stop.clone(), turns.clone());
        tasks.push(actix_rt::spawn(async move {
            let client = awc::Client::builder().timeout(Duration::from_secs(30)).finish();
            let user = first_user + c;
            let mut i = 0i64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let text = format!("turn {i} of user {user}");
                if serve::send(&client, &base, SECRET, i, user, &text).await {
                    turns.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for _ in 0..flood {
        let (base, stop, checks) = (base.to_string(), stop.clone(), checks.clone());
        tasks.push(actix_rt::spawn(async move {
            let client = awc::Client::builder().timeout(Duration::from_secs(30)).finish();
            let mut pace = (rate > 0).then(|| {
                let every = Duration::from_secs_f64(flood as f64 / rate as f64);
                let mut tick = actix_rt::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick
            });
            while !stop.load(Ordering::Relaxed) {
                if let Some(tick) = pace.as_mut() {
                    tick.tick().await;
                }
                if let Ok(mut resp) = client.get(format!("{base}/healthz")).send().await
                    && resp.status().as_u16() == 200
                    && resp.body().await.is_ok()
                {
                    checks.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let started = Instant::now();
    actix_rt::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let (t, h) = (turns.load(Ordering::Relaxed), checks.load(Ordering::Relaxed));
    for task in tasks {
        let _ = task.await;
    }
    (t as f64 / elapsed, h as f64 / elapsed)
}

fn main() {
    let args = Args::parse();
    actix_rt::System::new().block_on(async move {
        let pg = tokio::task::spawn_blocking(EmbeddedPostgres::start)
            .await
            .expect("join")
            .expect("a throwaway PostgreSQL");
        pg.create_database("bench").await.expect("create database");
        let url = pg.url("bench").expose_secret().to_string();
        let cached = serve(&url, "1").await;
        let uncached = serve(&url, "0.000001").await;
        let cells: [(&str, &Served, usize, u64); 4] = [
            ("quiet", &cached, 0, 0),
            ("flood", &cached, args.flood, args.flood_rate),
            ("flood-uncached", &uncached, args.flood, args.flood_rate),
            ("flood-max", &cached, args.flood, 0),
        ];
        let mut best = [(0.0f64, 0.0f64); 4];
        let mut next_user = 1_000_000i64;
        for round in 1..=args.rounds {
            for (i, (name, served, flood, rate)) in cells.iter().enumerate() {
                let (turns, checks) = cell(&served.base, args.clients, *flood, *rate, args.seconds, next_user).await;
                next_user += args.clients as i64;
                println!("round {round} {name:<15} {turns:>8.0} turns/s {checks:>9.0} /healthz per s");
                if turns > best[i].0 {
                    best[i] = (turns, checks);
                }
            }
        }
        println!(
            "\n{} clients sending updates, {} calling /healthz ({}/s in all; flood-max: unpaced), {} s cells, best of {} rounds:",
            args.clients, args.flood, args.flood_rate, args.seconds, args.rounds
        );
        for (i, (name, ..)) in cells.iter().enumerate() {
            println!(
                "{name:<15} {:>8.0} turns/s ({:.2}x quiet) {:>9.0} /healthz per s",
                best[i].0,
                best[i].0 / best[0].0,
                best[i].1
            );
        }
    });
}
