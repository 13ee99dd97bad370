//! What botdb removed for good, counted for `/metrics`: users erased on request and
//! the rows that went with them, soft-deleted messages purged after their retention.
//! Shared by every clone of a [`Database`](crate::Database).

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of physical removals since the process started.
#[derive(Debug, Default)]
pub struct Counters {
    erased_users: AtomicU64,
    erased_messages: AtomicU64,
    purged_messages: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Removed {
    /// Users erased (`EraseUser`, `botdb erase-user`).
    pub erased_users: u64,
    /// Messages removed with them.
    pub erased_messages: u64,
    /// Soft-deleted messages removed after their retention (`purge`).
    pub purged_messages: u64,
}

impl Counters {
    /// Counts one erased user and their messages.
    pub fn erased(&self, messages: u64) {
        self.erased_users.fetch_add(1, Ordering::Relaxed);
        self.erased_messages.fetch_add(messages, Ordering::Relaxed);
    }

    /// Counts purged messages.
    pub fn purged(&self, messages: u64) {
        self.purged_messages.fetch_add(messages, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> Removed {
        Removed {
            erased_users: self.erased_users.load(Ordering::Relaxed),
            erased_messages: self.erased_messages.load(Ordering::Relaxed),
            purged_messages: self.purged_messages.load(Ordering::Relaxed),
        }
    }
}
