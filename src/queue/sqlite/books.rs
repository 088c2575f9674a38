//! The SQLite backend's counts by state, kept in memory so that capacity checks and the
//! depth cost no query.

use crate::job::JobState;

/// Counts kept in memory so capacity checks and depth cost no query; restored on rollback.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Bookkeeping {
    pub(super) queued: usize,
    pub(super) scheduled: usize,
    pub(super) running: usize,
    pub(super) failed: usize,
    pub(super) dead: usize,
    /// The last `ready_seq` handed out; the next one is one more.
    pub(super) last_ready_seq: i64,
    /// The highest `ready_seq` claimed by this process.
    pub(super) claimed_up_to: i64,
}

impl Bookkeeping {
    pub(super) fn unfinished(&self) -> usize {
        self.queued + self.scheduled + self.running + self.failed
    }

    pub(super) fn count(&mut self, state: JobState) -> Option<&mut usize> {
        match state {
            JobState::Queued => Some(&mut self.queued),
            JobState::Scheduled => Some(&mut self.scheduled),
            JobState::Running => Some(&mut self.running),
            JobState::Failed => Some(&mut self.failed),
            JobState::Dead => Some(&mut self.dead),
            JobState::Succeeded | JobState::Cancelled => None,
        }
    }

    pub(super) fn moved(&mut self, from: JobState, to: JobState, count: usize) {
        if let Some(counter) = self.count(from) {
            *counter = counter.saturating_sub(count);
        }
        if let Some(counter) = self.count(to) {
            *counter += count;
        }
    }

    pub(super) fn take_ready_seq(&mut self) -> i64 {
        self.last_ready_seq += 1;
        self.last_ready_seq
    }
}
