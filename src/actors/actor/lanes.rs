//! Lanes: one user's requests in order. A filed request ([`Job`]) is ready at once when
//! its user has nothing running, else it waits in that user's lane; when the user's
//! request ends, the next one in the lane becomes ready, or the lane is dropped.
//!
//! A lane exists only while its user has a request running, batching or waiting, so an
//! idle user costs no memory, and the number of lanes is the number of users in flight.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};

use crate::actors::actor::batching::Batchable;
use crate::actors::actor::work::Work;

/// A filed request, ready to run or waiting behind its user's running one.
pub(super) enum Job {
    /// Runs on its own.
    Alone(Work),
    /// Joins the pending batch of its type when ready.
    Batchable(Box<dyn Batchable>),
}

/// Every user's lane: the user's running request is outside it, their waiting jobs in
/// it, in the order they arrived.
#[derive(Default)]
pub(super) struct Lanes {
    /// One entry per user with a request running or batching; the deque holds that
    /// user's waiting jobs.
    lanes: HashMap<i64, VecDeque<Job>>,
    /// Waiting jobs, in all lanes.
    queued: usize,
}

impl Lanes {
    /// Files `user`'s job: returned when it is ready now (the user was idle, and now
    /// has a lane), else queued behind the user's running request.
    pub(super) fn file(&mut self, user: i64, job: Job) -> Option<Job> {
        match self.lanes.entry(user) {
            Entry::Occupied(mut lane) => {
                lane.get_mut().push_back(job);
                self.queued += 1;
                None
            }
            Entry::Vacant(lane) => {
                lane.insert(VecDeque::new());
                Some(job)
            }
        }
    }

    /// `user`'s request ended: their next job, now ready, or `None` when they have
    /// none (their lane is dropped).
    pub(super) fn next(&mut self, user: i64) -> Option<Job> {
        let Entry::Occupied(mut lane) = self.lanes.entry(user) else {
            return None;
        };
        match lane.get_mut().pop_front() {
            Some(next) => {
                self.queued -= 1;
                Some(next)
            }
            None => {
                lane.remove();
                // Give memory back after a burst of many users.
                if self.lanes.capacity() > 1024 && self.lanes.len() < self.lanes.capacity() / 4 {
                    self.lanes.shrink_to_fit();
                }
                None
            }
        }
    }

    /// Users with a request running, batching or waiting.
    pub(super) fn users(&self) -> usize {
        self.lanes.len()
    }

    /// Jobs waiting behind their user's running request.
    pub(super) fn queued(&self) -> usize {
        self.queued
    }
}
