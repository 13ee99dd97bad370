//! Fault injection for botdb's own tests (cargo feature `fault-injection`, enabled only
//! by the test build): make a user's next request panic in the actor's handler or in
//! its database work, or sleep in the database before it runs.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// Shared switches, armed by tests through [`DbHandle::faults`](crate::actors::DbHandle::faults).
#[derive(Clone, Debug, Default)]
pub struct Faults(Arc<Mutex<State>>);

#[derive(Debug, Default)]
struct State {
    panic_in_handler: HashSet<i64>,
    panic_in_run: HashSet<i64>,
    sleep_secs: HashMap<i64, f64>,
}

impl Faults {
    /// The next request of `user_id` that reaches an actor panics in its handler.
    pub fn panic_in_handler_once(&self, user_id: i64) {
        if let Ok(mut s) = self.0.lock() {
            s.panic_in_handler.insert(user_id);
        }
    }

    /// The next request of `user_id` to run panics inside its database work.
    pub fn panic_in_run_once(&self, user_id: i64) {
        if let Ok(mut s) = self.0.lock() {
            s.panic_in_run.insert(user_id);
        }
    }

    /// Every request of `user_id` first holds a connection in `pg_sleep(secs)`.
    pub fn sleep_in_database(&self, user_id: i64, secs: f64) {
        if let Ok(mut s) = self.0.lock() {
            s.sleep_secs.insert(user_id, secs);
        }
    }

    pub(crate) fn take_handler_panic(&self, user_id: i64) -> bool {
        self.0
            .lock()
            .map(|mut s| s.panic_in_handler.remove(&user_id))
            .unwrap_or(false)
    }

    pub(crate) fn take_run_panic(&self, user_id: i64) -> bool {
        self.0
            .lock()
            .map(|mut s| s.panic_in_run.remove(&user_id))
            .unwrap_or(false)
    }

    /// `true` when a run-time fault is set for the user (its requests then run alone).
    pub(crate) fn armed_for(&self, user_id: i64) -> bool {
        self.0
            .lock()
            .map(|s| s.panic_in_run.contains(&user_id) || s.sleep_secs.contains_key(&user_id))
            .unwrap_or(false)
    }

    pub(crate) fn sleep_for(&self, user_id: i64) -> Option<f64> {
        self.0
            .lock()
            .ok()
            .and_then(|s| s.sleep_secs.get(&user_id).copied())
    }
}
