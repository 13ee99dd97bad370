//! Admission: the bound on an actor's pending work, and the switch Shutdown throws.
//!
//! Every request passes its actor's [`Gate`] before it is put in the mailbox: the gate
//! counts requests admitted and not yet answered, refuses at once past the bound
//! ([`Error::Overloaded`]) and after Shutdown ([`Error::ShuttingDown`]). One atomic word
//! holds both the count and the closed flag, so a request is either admitted before the
//! gate closed (and will be drained) or refused: there is no window in between.
//! Because the count covers requests still in the mailbox, the mailbox itself can be
//! unbounded without memory growing past the bound.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

const CLOSED: u64 = 1 << 63;

/// One actor's admission counter.
#[derive(Debug)]
pub(crate) struct Gate {
    name: &'static str,
    limit: usize,
    /// Bit 63: closed. Bits 0..63: requests admitted and not yet answered.
    state: AtomicU64,
    accepted: AtomicU64,
    rejected_overloaded: AtomicU64,
    rejected_shutting_down: AtomicU64,
}

/// The gate's counters, for stats and the shutdown report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GateCounts {
    /// Requests admitted since start.
    pub accepted: u64,
    /// Requests refused because the actor held its bound.
    pub rejected_overloaded: u64,
    /// Requests refused because Shutdown had begun.
    pub rejected_shutting_down: u64,
    /// Requests admitted and not yet answered.
    pub pending: u64,
}

impl Gate {
    pub(crate) fn new(name: &'static str, limit: usize) -> Self {
        Gate {
            name,
            limit,
            state: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            rejected_overloaded: AtomicU64::new(0),
            rejected_shutting_down: AtomicU64::new(0),
        }
    }

    /// Admits one request, or says at once why not.
    pub(crate) fn admit(&self) -> Result<()> {
        let limit = self.limit as u64;
        let admitted = self.state.fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
            (s & CLOSED == 0 && s < limit).then_some(s + 1)
        });
        match admitted {
            Ok(_) => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(s) if s & CLOSED != 0 => {
                self.rejected_shutting_down.fetch_add(1, Ordering::Relaxed);
                Err(Error::ShuttingDown)
            }
            Err(_) => {
                self.rejected_overloaded.fetch_add(1, Ordering::Relaxed);
                Err(Error::Overloaded {
                    what: self.name,
                    limit: self.limit,
                })
            }
        }
    }

    /// One admitted request was answered.
    pub(crate) fn release(&self) {
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
        let g = Gate::new("test", 2);
        assert!(g.admit().is_ok());
        assert!(g.admit().is_ok());
        assert!(matches!(g.admit(), Err(Error::Overloaded { limit: 2, .. })));
        g.release();
        assert!(g.admit().is_ok());
        g.close();
        assert!(matches!(g.admit(), Err(Error::ShuttingDown)));
        assert_eq!(g.pending(), 2, "closing keeps the admitted ones");
        g.release();
        g.release();
        assert_eq!(g.pending(), 0);
        let c = g.counts();
        assert_eq!(
            (c.accepted, c.rejected_overloaded, c.rejected_shutting_down),
            (3, 1, 1)
        );
    }
}
