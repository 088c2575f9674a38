//! The SQLite backend's buffer of fresh jobs: queued jobs this process inserted, kept in
//! memory in claim order so that claiming them reads nothing from the table.

use std::collections::VecDeque;

use crate::job::Job;
use crate::queue::claim_has_room;

/// The most jobs, and bytes (see [`Job::footprint`]), [`FreshJobs`] keeps: up to about 8 MiB
/// whatever the jobs. Past them, claims read the database as they would without it. The
/// buffer is large so that a burst of ingest faster than the workers does not overflow it
/// at once: each overflow sends claims back to reading rows until they catch up.
pub(super) const FRESH_MAX_JOBS: usize = 32_768;
const FRESH_MAX_BYTES: usize = 8 << 20;

/// Queued jobs this process inserted, in claim order, kept in memory so that claiming
/// them reads nothing: a job committed a moment ago goes to the Dispatcher as it came in,
/// without a query and a decode per job. The database stays the truth: the buffer only
/// serves a claim when its first job is exactly the next one in `ready_seq` order, and
/// whatever it cannot serve (a gap, an overflow, a cancel, a rollback) the claim reads
/// from the table as before.
#[derive(Default)]
pub(super) struct FreshJobs {
    /// Committed jobs; the first has `ready_seq` `first`, each next one the next number.
    committed: VecDeque<Job>,
    first: i64,
    /// Jobs inserted by the open transaction, following `committed` without a gap.
    pending: Vec<Job>,
    /// The [`Job::footprint`] of `committed` and of `pending`.
    committed_bytes: usize,
    pending_bytes: usize,
}

impl FreshJobs {
    fn len(&self) -> usize {
        self.committed.len() + self.pending.len()
    }

    /// Keeps a job just inserted with `ready_seq`. A job that does not follow the last one
    /// kept (another path took the numbers between) starts the buffer anew; one that does
    /// not fit is left to the database.
    pub(super) fn add(&mut self, ready_seq: i64, job: Job) {
        if self.len() == 0 || ready_seq != self.first + self.len() as i64 {
            self.clear();
            self.first = ready_seq;
        }
        let bytes = job.footprint();
        if self.len() >= FRESH_MAX_JOBS || self.committed_bytes + self.pending_bytes + bytes > FRESH_MAX_BYTES {
            return;
        }
        self.pending.push(job);
        self.pending_bytes += bytes;
    }

    pub(super) fn commit(&mut self) {
        self.committed.extend(self.pending.drain(..));
        self.committed_bytes += std::mem::take(&mut self.pending_bytes);
    }

    pub(super) fn rollback(&mut self) {
        self.pending.clear();
        self.pending_bytes = 0;
    }

    pub(super) fn clear(&mut self) {
        self.committed.clear();
        self.committed_bytes = 0;
        self.rollback();
    }

    fn pop_front(&mut self) -> Option<Job> {
        let job = self.committed.pop_front()?;
        self.committed_bytes = self.committed_bytes.saturating_sub(job.footprint());
        self.first += 1;
        Some(job)
    }

    /// Moves committed jobs that follow `claimed_up_to` into `into`, up to `max` in all and
    /// as many body bytes as the claim has room for, advancing `claimed_up_to` and adding
    /// to `bytes`; jobs `passed_over` (of a paused queue) only advance it. Returns whether
    /// it stopped at the byte limit.
    pub(super) fn claim(
        &mut self,
        claimed_up_to: &mut i64,
        max: usize,
        into: &mut Vec<Job>,
        bytes: &mut usize,
        passed_over: impl Fn(&Job) -> bool,
    ) -> bool {
        // Jobs a claim already read from the table are of no more use.
        while !self.committed.is_empty() && self.first <= *claimed_up_to {
            self.pop_front();
        }
        if self.first != *claimed_up_to + 1 {
            return false;
        }
        while into.len() < max {
            let Some(front) = self.committed.front() else { break };
            let size = front.body_len();
            if !claim_has_room(into.len(), *bytes, size) {
                return true;
            }
            let Some(mut job) = self.pop_front() else { break };
            *claimed_up_to = self.first - 1;
            if passed_over(&job) {
                continue;
            }
            *bytes += size;
            // What the table would say of a job never started: its first attempt.
            job.attempt = 1;
            into.push(job);
        }
        false
    }
}
