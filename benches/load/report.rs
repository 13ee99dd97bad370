//! What the run prints: a line per cell as it is measured (stderr, with what the server
//! wrote and read per turn), and at the end the table of each cell's best round
//! (stdout, Markdown, with each mode's ratio to `raw` and to `pgbench` at the same
//! concurrency). Mode `http` adds its own table ([`crate::http::print_vs`]).
//!
//! The formats are the ones docs/benchmarks.md quotes: change them there too.

use crate::Mode;
use crate::stats::{IoPerTurn, Sample};

/// Prints the cell just measured: round `round`, concurrency `c`.
pub fn print_cell(round: usize, c: usize, s: &Sample, io: &IoPerTurn) {
    eprintln!(
        "round {round} {:<10} C={c:<3} {:>8.0} turns/s  p50 {:>6.2} ms  p99 {:>7.2} ms  client cpu {:>5.0} us/turn  machine cpu {:>5.0} us/turn, idle {:>3.0}%  errors {}",
        s.mode,
        s.turns_per_sec,
        s.p50_ms,
        s.p99_ms,
        s.client_cpu_us_per_turn,
        s.machine_cpu_us_per_turn.unwrap_or(f64::NAN),
        s.machine_idle_pct.unwrap_or(f64::NAN),
        s.errors
    );
    eprintln!("        {io}");
}

/// The best sample of mode `m` at concurrency `c`.
pub fn cell(best: &[Sample], m: Mode, c: usize) -> Option<&Sample> {
    best.iter().find(|s| s.mode == m.name() && s.concurrency == c)
}

/// The table of the best rounds: a row per concurrency and mode, in the order asked.
pub fn print_table(best: &[Sample], concurrency: &[usize], modes: &[Mode]) {
    let get = |m: Mode, c: usize| cell(best, m, c);
    println!();
    println!(
        "| mode | C | turns/s | p50 ms | p99 ms | client CPU µs/turn | machine CPU µs/turn | machine idle | vs raw | vs pgbench |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &c in concurrency {
        for &m in modes {
            if let Some(s) = get(m, c) {
                let ratio = |base: Mode| {
                    get(base, c).map_or("-".to_string(), |r| {
                        format!("{:.2}x", s.turns_per_sec / r.turns_per_sec)
                    })
                };
                let or_dash =
                    |v: Option<f64>, unit: &str| v.map_or("-".to_string(), |v| format!("{v:.0}{unit}"));
                println!(
                    "| {} | {c} | {:.0} | {:.2} | {:.2} | {:.0} | {} | {} | {} | {} |",
                    s.mode,
                    s.turns_per_sec,
                    s.p50_ms,
                    s.p99_ms,
                    s.client_cpu_us_per_turn,
                    or_dash(s.machine_cpu_us_per_turn, ""),
                    or_dash(s.machine_idle_pct, " %"),
                    ratio(Mode::Raw),
                    ratio(Mode::Pgbench)
                );
            }
        }
    }
}
