//! Fault injection for botdb's own tests (cargo feature `fault-injection`, enabled only
//! by the test build): make a user's next request panic in the actor's handler, in its
//! database work, or in the batch it runs in, or sleep in the database before it runs.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Shared switches, armed by tests through [`DbHandle::faults`](crate::actors::DbHandle::faults).
/// Until one is armed, every check is one atomic load (benchmarks build with this
/// feature too, through the dev-dependencies).
#[derive(Clone, Debug, Default)]
pub struct Faults(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    armed: AtomicBool,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    panic_in_handler: HashSet<i64>,
    panic_in_run: HashSet<i64>,
    panic_in_batch: HashSet<i64>,
    sleep_secs: HashMap<i64, f64>,
}

impl Faults {
    /// The next request of `user_id` that reaches an actor panics in its handler.
    pub fn panic_in_handler_once(&self, user_id: i64) {
        self.arm(|s| {
            s.panic_in_handler.insert(user_id);
        });
    }

    /// The next request of `user_id` to run panics inside its database work.
    pub fn panic_in_run_once(&self, user_id: i64) {
        self.arm(|s| {
            s.panic_in_run.insert(user_id);
        });
    }

    /// The next batch that holds a request of `user_id` panics inside its batch runner,
    /// before its statement is sent. Unlike the other run-time faults, it does not make
    /// the user's requests run alone: the point is to hit a batch of several users.
    pub fn panic_in_batch_once(&self, user_id: i64) {
        self.arm(|s| {
            s.panic_in_batch.insert(user_id);
        });
    }

    /// Every request of `user_id` first holds a connection in `pg_sleep(secs)`.
    pub fn sleep_in_database(&self, user_id: i64, secs: f64) {
        self.arm(|s| {
            s.sleep_secs.insert(user_id, secs);
        });
    }

    fn arm(&self, set: impl FnOnce(&mut State)) {
        if let Ok(mut s) = self.0.state.lock() {
            set(&mut s);
            self.0.armed.store(true, Ordering::Release);
        }
    }

    /// Reads the switches, unless none was ever armed.
    fn check<T: Default>(&self, read: impl FnOnce(&mut State) -> T) -> T {
        if !self.0.armed.load(Ordering::Acquire) {
            return T::default();
        }
        self.0.state.lock().map(|mut s| read(&mut s)).unwrap_or_default()
    }

    pub(crate) fn take_handler_panic(&self, user_id: i64) -> bool {
        self.check(|s| s.panic_in_handler.remove(&user_id))
    }

    pub(crate) fn take_run_panic(&self, user_id: i64) -> bool {
        self.check(|s| s.panic_in_run.remove(&user_id))
    }

    /// `true` (once) when one of `users` is armed to panic in its batch.
    pub(crate) fn take_batch_panic(&self, users: impl IntoIterator<Item = i64>) -> bool {
        self.check(|s| users.into_iter().any(|u| s.panic_in_batch.remove(&u)))
    }

    /// `true` when a run-time fault is set for the user (its requests then run alone).
    pub(crate) fn armed_for(&self, user_id: i64) -> bool {
        self.check(|s| s.panic_in_run.contains(&user_id) || s.sleep_secs.contains_key(&user_id))
    }

    pub(crate) fn sleep_for(&self, user_id: i64) -> Option<f64> {
        self.check(|s| s.sleep_secs.get(&user_id).copied())
    }
}
