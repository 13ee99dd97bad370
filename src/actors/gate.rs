//! Admission: the bound on an actor's pending work, shared fairly between users, and
//! the switch Shutdown throws.
//!
//! Every request passes its actor's [`Gate`] before it is put in the mailbox: the gate
//! counts requests admitted and not yet answered, refuses at once past the bound
//! ([`Error::Overloaded`]) and after Shutdown ([`Error::ShuttingDown`]). One atomic word
//! holds both the count and the closed flag, so a request is either admitted before the
//! gate closed (and will be drained) or refused: there is no window in between.
//! Because the count covers requests still in the mailbox, the mailbox itself can be
//! unbounded without memory growing past the bound.
//!
//! Fairness: each user may hold at most `max_pending_per_user` of the bound. A user who
//! floods the bot (a loop in a client, a replayed backlog) is refused past that share
//! with `Overloaded { user_id: Some(..) }` while every other user is still admitted.
//! The per-user counts live in a sharded map (a user's entry exists only while they
//! have requests pending), so two users rarely contend on one lock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

const CLOSED: u64 = 1 << 63;

/// Shards of the per-user counts: enough that concurrent callers rarely share one.
const SHARDS: usize = 64;

/// One actor's admission counter.
#[derive(Debug)]
pub(crate) struct Gate {
    name: &'static str,
    limit: usize,
    per_user_limit: usize,
    /// Bit 63: closed. Bits 0..63: requests admitted and not yet answered.
    state: AtomicU64,
    /// Pending requests per user, only for users with any.
    users: Box<[Mutex<HashMap<i64, u32>>]>,
    accepted: AtomicU64,
    rejected_overloaded: AtomicU64,
    rejected_user_overloaded: AtomicU64,
    rejected_shutting_down: AtomicU64,
}

/// The gate's counters, for stats and the shutdown report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GateCounts {
    /// Requests admitted since start.
    pub accepted: u64,
    /// Requests refused because the actor held its bound (all users together).
    pub rejected_overloaded: u64,
    /// Requests refused because their user held their share of the bound.
    pub rejected_user_overloaded: u64,
    /// Requests refused because Shutdown had begun.
    pub rejected_shutting_down: u64,
    /// Requests admitted and not yet answered.
    pub pending: u64,
}

impl GateCounts {
    /// Every refusal, whatever its reason.
    pub fn rejected(&self) -> u64 {
        self.rejected_overloaded + self.rejected_user_overloaded + self.rejected_shutting_down
    }
}

impl Gate {
    pub(crate) fn new(name: &'static str, limit: usize, per_user_limit: usize) -> Self {
        Gate {
            name,
            limit,
            per_user_limit: per_user_limit.clamp(1, limit.max(1)),
            state: AtomicU64::new(0),
            users: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            accepted: AtomicU64::new(0),
            rejected_overloaded: AtomicU64::new(0),
            rejected_user_overloaded: AtomicU64::new(0),
            rejected_shutting_down: AtomicU64::new(0),
        }
    }

    fn shard(&self, user: i64) -> &Mutex<HashMap<i64, u32>> {
        // Telegram ids are dense in their low bits; a multiplicative hash spreads them.
        let h = (user as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58;
        &self.users[h as usize % self.users.len()]
    }

    /// Admits one request of `user`, or says at once why not.
    pub(crate) fn admit(&self, user: i64) -> Result<()> {
        let limit = self.limit as u64;
        let admitted = self.state.fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
            (s & CLOSED == 0 && s < limit).then_some(s + 1)
        });
        match admitted {
            Ok(_) => {}
            Err(s) if s & CLOSED != 0 => {
                self.rejected_shutting_down.fetch_add(1, Ordering::Relaxed);
                return Err(Error::ShuttingDown);
            }
            Err(_) => {
                self.rejected_overloaded.fetch_add(1, Ordering::Relaxed);
                return Err(Error::Overloaded {
                    what: self.name,
                    limit: self.limit,
                    user_id: None,
                });
            }
        }
        let within_share = match self.shard(user).lock() {
            Ok(mut users) => {
                let n = users.entry(user).or_insert(0);
                if (*n as usize) < self.per_user_limit {
                    *n += 1;
                    true
                } else {
                    false
                }
            }
            // A poisoned shard (a panic while holding it, which the code above cannot
            // do) must not lock everyone out: admit on the global bound alone.
            Err(_) => true,
        };
        if !within_share {
            self.state.fetch_sub(1, Ordering::AcqRel);
            self.rejected_user_overloaded.fetch_add(1, Ordering::Relaxed);
            return Err(Error::Overloaded {
                what: self.name,
                limit: self.per_user_limit,
                user_id: Some(user),
            });
        }
        self.accepted.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// One admitted request of `user` was answered.
    pub(crate) fn release(&self, user: i64) {
        if let Ok(mut users) = self.shard(user).lock()
            && let Some(n) = users.get_mut(&user)
        {
            *n -= 1;
            if *n == 0 {
                users.remove(&user);
            }
        }
        self.state.fetch_sub(1, Ordering::AcqRel);
    }

    /// Refuses every later request.
    pub(crate) fn close(&self) {
        self.state.fetch_or(CLOSED, Ordering::AcqRel);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state.load(Ordering::Acquire) & CLOSED != 0
    }

    /// Requests admitted and not yet answered.
    pub(crate) fn pending(&self) -> u64 {
        self.state.load(Ordering::Acquire) & !CLOSED
    }

    pub(crate) fn counts(&self) -> GateCounts {
        GateCounts {
            accepted: self.accepted.load(Ordering::Relaxed),
            rejected_overloaded: self.rejected_overloaded.load(Ordering::Relaxed),
            rejected_user_overloaded: self.rejected_user_overloaded.load(Ordering::Relaxed),
            rejected_shutting_down: self.rejected_shutting_down.load(Ordering::Relaxed),
            pending: self.pending(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_then_close() {
        let g = Gate::new("test", 2, 2);
        assert!(g.admit(1).is_ok());
        assert!(g.admit(2).is_ok());
        assert!(matches!(
            g.admit(3),
            Err(Error::Overloaded {
                limit: 2,
                user_id: None,
                ..
            })
        ));
        g.release(1);
        assert!(g.admit(3).is_ok());
        g.close();
        assert!(matches!(g.admit(4), Err(Error::ShuttingDown)));
        assert_eq!(g.pending(), 2, "closing keeps the admitted ones");
        g.release(2);
        g.release(3);
        assert_eq!(g.pending(), 0);
        let c = g.counts();
        assert_eq!(
            (c.accepted, c.rejected_overloaded, c.rejected_shutting_down),
            (3, 1, 1)
        );
    }

    #[test]
    fn one_user_cannot_take_more_than_their_share() {
        let g = Gate::new("test", 10, 3);
        for _ in 0..3 {
            g.admit(7).unwrap();
        }
        assert!(matches!(
            g.admit(7),
            Err(Error::Overloaded {
                limit: 3,
                user_id: Some(7),
                ..
            })
        ));
        // Everyone else still gets in, up to the global bound.
        for u in 100..107 {
            g.admit(u).unwrap();
        }
        assert!(matches!(
            g.admit(200),
            Err(Error::Overloaded { user_id: None, .. })
        ));
        g.release(7);
        assert_eq!(g.pending(), 9);
        g.admit(7).unwrap();
        let c = g.counts();
        assert_eq!((c.rejected_user_overloaded, c.rejected_overloaded), (1, 1));
        // Entries of users with nothing pending are dropped.
        for _ in 0..3 {
            g.release(7);
        }
        let held: usize = g.users.iter().map(|s| s.lock().unwrap().len()).sum();
        assert_eq!(held, 7);
    }
}
