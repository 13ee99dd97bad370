//! What the demo prints once the simulation is done: throughput and latency, the
//! failures, the redeliveries, the failover, the drain.
//!
//! The lines are aligned on a 14-column label (`turns:`, `per turn:`, ...), with the
//! verification's own lines (`stored:`, `verification:`) after them; the README quotes
//! this output and `tests/it/cli.rs` reads it.

use super::simulation::Simulated;

/// Prints the summary of `ran`; `redeliver` is `--redeliver`'s percentage (its line is
/// printed when it is not 0).
pub(super) fn print(ran: &Simulated, redeliver: f64) {
    let hist = &ran.latency;
    let turns = hist.len();
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!();
    if ran.interrupted {
        println!("stopped early (signal or --duration): summary of what was done");
    }
    println!(
        "turns:        {turns} in {:.2} s = {:.0} turns/s",
        ran.elapsed.as_secs_f64(),
        turns as f64 / ran.elapsed.as_secs_f64()
    );
    println!(
        "per turn:     p50 {:.2} ms   p95 {:.2} ms   p99 {:.2} ms",
        ms(0.50),
        ms(0.95),
        ms(0.99)
    );
    println!("failures:     {}", ran.failures.len());
    for f in ran.failures.iter().take(5) {
        println!("              {f}");
    }
    let (copies, same) = ran.copies;
    if redeliver > 0.0 {
        println!(
            "redelivered:  {copies} copies of updates ({redeliver:.0}% of turns twice at once, half of those again later); \
             {same} answered with the first reply"
        );
    }
    if let Some(failover) = &ran.failover {
        println!("{}", failover.summary());
        println!(
            "redelivered after failover: {} (deliveries of updates answered 503, as Telegram redelivers)",
            failover.redelivered.get()
        );
    }
    println!("shutdown:     {}", ran.report);
}
