//! The SQLite backend's counts by state, kept in memory so that capacity checks and the
//! depth cost no query.

use crate::job::JobState;
use crate::queue::columns::{BANDS, band_of, band_start};

/// Counts kept in memory so capacity checks and depth cost no query; restored on rollback.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bookkeeping {
    pub(super) queued: usize,
    pub(super) scheduled: usize,
    pub(super) running: usize,
    pub(super) failed: usize,
    pub(super) dead: usize,
    /// By priority band (`crate::queue::columns::band_of`): the last `ready_seq` handed
    /// out in it; the next one is one more.
    pub(super) last_ready_seq: [i64; BANDS],
    /// By priority band: the highest `ready_seq` claimed by this process.
    pub(super) claimed_up_to: [i64; BANDS],
}

impl Default for Bookkeeping {
    fn default() -> Self {
        let starts = std::array::from_fn(band_start);
        Bookkeeping {
            queued: 0,
            scheduled: 0,
            running: 0,
            failed: 0,
            dead: 0,
            last_ready_seq: starts,
            claimed_up_to: starts,
        }
    }
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

    /// The next place in line for a job of `priority`.
    pub(super) fn take_ready_seq(&mut self, priority: u8) -> i64 {
        let last = &mut self.last_ready_seq[band_of(priority)];
        *last += 1;
        *last
    }
}
