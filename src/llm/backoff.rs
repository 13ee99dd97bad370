//! The waits between the attempts of one model call: exponential (250 ms, then
//! doubling) with jitter, never longer than the configured longest wait, and at least
//! what the server asked for in a `Retry-After` (within that longest wait).

use std::time::Duration;

/// The step of the first retry.
pub(super) const FIRST_STEP: Duration = Duration::from_millis(250);

/// The wait before retry number `retry` (1 for the second attempt): half of the step
/// fixed, half random, so that callers that failed together do not come back together,
/// yet each leaves the server at least half a step. A server's `retry_after` is
/// honoured when longer, but `max` bounds every wait: a server asking for an hour does
/// not hold a user's turn for an hour.
pub(super) fn wait_before(retry: u32, max: Duration, retry_after: Option<Duration>) -> Duration {
    let doublings = retry.saturating_sub(1).min(31);
    let step = FIRST_STEP.saturating_mul(1 << doublings).min(max);
    let half = step / 2;
    let jittered = half + half.mul_f64(random_fraction());
    retry_after.map_or(jittered, |asked| jittered.max(asked)).min(max)
}

/// A number in `[0, 1)` from the operating system's randomness (through uuid's v4,
/// already a dependency): jitter needs no reproducibility, only spread.
fn random_fraction() -> f64 {
    let bits = uuid::Uuid::new_v4().as_u64_pair().0 >> 11;
    // 53 bits: every value exact in an f64.
    bits as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(8);

    #[test]
    fn steps_double_with_jitter_within_the_longest_wait() {
        for retry in 1..=8 {
            let step = (FIRST_STEP * (1 << (retry - 1))).min(MAX);
            for _ in 0..100 {
                let wait = wait_before(retry, MAX, None);
                assert!(
                    wait >= step / 2 && wait <= step,
                    "retry {retry}: {wait:?} not in [{:?}, {step:?}]",
                    step / 2
                );
            }
        }
        let waits: std::collections::BTreeSet<_> = (0..20).map(|_| wait_before(3, MAX, None)).collect();
        assert!(waits.len() > 1, "no jitter: {waits:?}");
        // A huge retry count saturates instead of overflowing.
        assert!(wait_before(u32::MAX, MAX, None) <= MAX);
    }

    #[test]
    fn retry_after_is_honoured_within_the_longest_wait() {
        let asked = Duration::from_secs(3);
        assert!(wait_before(1, MAX, Some(asked)) >= asked);
        assert_eq!(wait_before(1, MAX, Some(Duration::from_secs(60))), MAX);
        // A shorter Retry-After never shortens the backoff's own wait.
        assert!(wait_before(5, MAX, Some(Duration::ZERO)) >= Duration::from_secs(2));
        assert_eq!(wait_before(4, Duration::ZERO, Some(asked)), Duration::ZERO);
    }
}
