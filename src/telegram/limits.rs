//! Telegram's sending limits, kept on this side: at most about 30 messages a second
//! overall and one a second per chat, and a pause after a 429.
//!
//! Telegram answers a bot that goes faster with `429 Too Many Requests` and a
//! `retry_after`, and one that keeps going faster with longer bans; staying under the
//! limits costs a wait here instead. [`RateLimits::wait`] returns when a message to a
//! chat may go:
//!
//! - overall, at most `per_second` messages in any one second: a sliding window of the
//!   last `per_second` send times (a token bucket of `per_second` tokens would let
//!   almost twice as many through in the second it is emptied and refilled);
//! - per chat, one message per `per_chat_interval`;
//! - not before a pause ([`RateLimits::pause`], after a 429) of that chat or of all.
//!
//! A message is counted when `wait` returns, so concurrent senders never pass together
//! what one alone would not. Cheap with many chats: a chat is remembered only while it
//! still has to wait (an entry whose time has passed says nothing and is forgotten), and
//! the forgetting is amortised over the sends. All times are tokio's, so tests run on
//! its paused clock.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// How long one second is, for the overall window.
const WINDOW: Duration = Duration::from_secs(1);

/// Below this many remembered chats, idle ones are not swept (not worth a pass).
const SWEEP_FLOOR: usize = 64;

/// Idle chats are swept at least this often (when there are more than
/// [`SWEEP_FLOOR`]), and whenever their number has doubled since the last sweep.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Telegram's sending limits, shared by every sender of one bot (see the module docs).
#[derive(Debug)]
pub struct RateLimits {
    per_second: usize,
    per_chat_interval: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// When each of the last `per_second` messages went, oldest first.
    sent: VecDeque<Instant>,
    /// No message at all before this (a pause of everyone).
    paused_until: Option<Instant>,
    /// Per chat, no message before this; only chats that still have to wait.
    chats: HashMap<i64, Instant>,
    /// The number of chats after the last sweep, and when it was.
    swept: (usize, Instant),
}

impl RateLimits {
    /// At most `per_second` messages a second overall (at least 1) and one per
    /// `per_chat_interval` to each chat (zero: no limit per chat).
    pub fn new(per_second: u32, per_chat_interval: Duration) -> Self {
        let per_second = usize::try_from(per_second.max(1)).unwrap_or(usize::MAX);
        RateLimits {
            per_second,
            per_chat_interval,
            state: Mutex::new(State {
                sent: VecDeque::with_capacity(per_second.min(1024)),
                paused_until: None,
                chats: HashMap::new(),
                swept: (0, Instant::now()),
            }),
        }
    }

    /// Returns when a message to `chat_id` may go, and counts it as sent then.
    /// Cancel-safe: a wait dropped before it returns has counted nothing.
    pub async fn wait(&self, chat_id: i64) {
        loop {
            let until = {
                let mut state = self.lock();
                let now = Instant::now();
                match state.ready_at(chat_id, now, self.per_second) {
                    None => {
                        state.record(chat_id, now, self.per_second, self.per_chat_interval);
                        return;
                    }
                    Some(until) => until,
                }
            };
            // Another sender may take the turn meanwhile: look again when it is due.
            tokio::time::sleep_until(until).await;
        }
    }

    /// No message to `chat_id` (`None`: to anyone) for `for_` from now, as a 429's
    /// `retry_after` asks. A pause never shortens one already in force.
    pub fn pause(&self, chat_id: Option<i64>, for_: Duration) {
        let until = Instant::now() + for_;
        let mut state = self.lock();
        let slot = match chat_id {
            None => state.paused_until.get_or_insert(until),
            Some(chat) => state.chats.entry(chat).or_insert(until),
        };
        *slot = (*slot).max(until);
    }

    /// The number of chats remembered (those that still have to wait, and idle ones
    /// not yet swept). For tests and metrics.
    pub fn chats_remembered(&self) -> usize {
        self.lock().chats.len()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a few instants, consistent after every statement: a panic of
        // another holder leaves nothing half-done to refuse.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    /// `None` when a message to `chat` may go at `now`, else when to look again.
    fn ready_at(&self, chat: i64, now: Instant, per_second: usize) -> Option<Instant> {
        let window = (self.sent.len() >= per_second)
            .then(|| self.sent.front().map(|oldest| *oldest + WINDOW))
            .flatten();
        [self.paused_until, self.chats.get(&chat).copied(), window]
            .into_iter()
            .flatten()
            .filter(|until| *until > now)
            .max()
    }

    fn record(&mut self, chat: i64, now: Instant, per_second: usize, interval: Duration) {
        while self.sent.len() >= per_second {
            self.sent.pop_front();
        }
        self.sent.push_back(now);
        if interval.is_zero() {
            self.chats.remove(&chat);
        } else {
            self.chats.insert(chat, now + interval);
        }
        let (count, at) = self.swept;
        let len = self.chats.len();
        if len >= SWEEP_FLOOR && (len >= 2 * count || now >= at + SWEEP_EVERY) {
            // An entry whose time has passed constrains nothing: forget it.
            self.chats.retain(|_, until| *until > now);
            self.swept = (self.chats.len(), now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// When, from now, the waits for `chats` (one task each, started in this order)
    /// return.
    async fn times(limits: &Arc<RateLimits>, chats: &[i64]) -> Vec<(i64, Duration)> {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for &chat in chats {
            let limits = limits.clone();
            tasks.push(tokio::spawn(async move {
                limits.wait(chat).await;
                (chat, start.elapsed())
            }));
        }
        let mut out = Vec::new();
        for task in tasks {
            out.push(task.await.unwrap());
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn no_more_than_per_second_in_any_second() {
        let limits = Arc::new(RateLimits::new(30, Duration::ZERO));
        let chats: Vec<i64> = (0..100).collect();
        let mut at: Vec<Duration> = times(&limits, &chats).await.into_iter().map(|(_, t)| t).collect();
        at.sort();
        // 100 messages at 30 a second: the last goes in the fourth second, not before.
        assert_eq!(at[29], Duration::ZERO, "the first 30 go at once");
        assert_eq!(at[30], WINDOW, "the 31st waits for the window");
        assert_eq!(at[99], 3 * WINDOW);
        for (i, t) in at.iter().enumerate().skip(30) {
            assert!(
                *t >= at[i - 30] + WINDOW,
                "message {i} at {t:?} is the 31st in a second"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_message_per_interval_to_each_chat() {
        let limits = Arc::new(RateLimits::new(1000, Duration::from_secs(1)));
        let at = times(&limits, &[7, 7, 7, 8]).await;
        let mut seven: Vec<Duration> = at.iter().filter(|(c, _)| *c == 7).map(|(_, t)| *t).collect();
        seven.sort();
        assert_eq!(
            seven,
            vec![Duration::ZERO, Duration::from_secs(1), Duration::from_secs(2)]
        );
        assert_eq!(
            at[3],
            (8, Duration::ZERO),
            "another chat does not wait for chat 7"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_its_chat_or_everyone() {
        let limits = Arc::new(RateLimits::new(1000, Duration::ZERO));
        limits.pause(Some(1), Duration::from_secs(5));
        limits.pause(Some(1), Duration::from_secs(2)); // never shortens
        let at = times(&limits, &[1, 2]).await;
        assert_eq!(at, vec![(1, Duration::from_secs(5)), (2, Duration::ZERO)]);

        limits.pause(None, Duration::from_secs(3));
        let at = times(&limits, &[1, 2]).await;
        assert_eq!(at, vec![(1, Duration::from_secs(3)), (2, Duration::from_secs(3))]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_wait_counts_nothing() {
        let limits = RateLimits::new(1, Duration::ZERO);
        limits.wait(1).await;
        // This one would wait a second; dropped after a tenth of it, it never sent.
        let cut = tokio::time::timeout(Duration::from_millis(100), limits.wait(2)).await;
        assert!(cut.is_err());
        let start = Instant::now();
        limits.wait(3).await;
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(900),
            "one message, not two"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_chats_are_forgotten() {
        let limits = RateLimits::new(1_000_000, Duration::from_secs(1));
        for chat in 0..10_000 {
            limits.wait(chat).await;
        }
        assert!(limits.chats_remembered() >= 10_000 / 2, "all still have to wait");
        tokio::time::advance(SWEEP_EVERY).await;
        for chat in 10_000..10_100 {
            limits.wait(chat).await;
        }
        assert!(
            limits.chats_remembered() <= 2 * SWEEP_FLOOR,
            "{} remembered after they went idle",
            limits.chats_remembered()
        );
    }
}
