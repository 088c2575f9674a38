//! The in-memory backend: fast and bounded, and honest that it forgets everything when
//! the process ends.

use std::collections::VecDeque;

use super::{QueueBackend, QueueDepth, Refusal, StorageError};
use crate::job::{FinishedJob, Job};

/// Jobs in a `VecDeque`, in submission order.
pub struct MemoryBackend {
    ready: VecDeque<Job>,
    /// Jobs handed to the Dispatcher whose outcome has not been recorded yet. They still
    /// count against `capacity`, so that `max_queue` bounds everything not yet finished.
    claimed: usize,
    capacity: usize,
}

impl MemoryBackend {
    /// A backend that holds at most `capacity` unfinished jobs.
    pub fn new(capacity: usize) -> Self {
        Self { ready: VecDeque::new(), claimed: 0, capacity }
    }

    fn unfinished(&self) -> usize {
        self.ready.len() + self.claimed
    }
}

impl QueueBackend for MemoryBackend {
    fn enqueue_group(&mut self, group: Vec<Vec<Job>>) -> Result<Vec<Result<(), Refusal>>, StorageError> {
        Ok(group
            .into_iter()
            .map(|submission| {
                let unfinished = self.unfinished();
                if unfinished + submission.len() > self.capacity {
                    return Err(Refusal::QueueFull {
                        unfinished,
                        capacity: self.capacity,
                        requested: submission.len(),
                    });
                }
                self.ready.extend(submission);
                Ok(())
            })
            .collect())
    }

    fn take_ready(&mut self, max: usize) -> Result<Vec<Job>, StorageError> {
        let count = max.min(self.ready.len());
        self.claimed += count;
        Ok(self.ready.drain(..count).collect())
    }

    fn record_outcomes(&mut self, finished: Vec<FinishedJob>) -> Result<(), StorageError> {
        self.claimed = self.claimed.saturating_sub(finished.len());
        Ok(())
    }

    fn depth(&self) -> QueueDepth {
        QueueDepth { queued: self.ready.len(), claimed: self.claimed, capacity: self.capacity }
    }

    fn is_durable(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{JobId, JobKind, Outcome};

    fn jobs(count: usize) -> Vec<Job> {
        (0..count).map(|_| Job { id: JobId::generate(), created_at: chrono::Utc::now(), kind: JobKind::Noop }).collect()
    }

    #[test]
    fn submissions_are_all_or_nothing_against_capacity() {
        let mut backend = MemoryBackend::new(5);
        let answers = backend.enqueue_group(vec![jobs(3), jobs(3), jobs(2)]).expect("memory never fails");
        assert_eq!(answers[0], Ok(()));
        assert!(matches!(answers[1], Err(Refusal::QueueFull { unfinished: 3, .. })));
        assert_eq!(answers[2], Ok(()));
        assert_eq!(backend.depth().queued, 5);
    }

    #[test]
    fn claimed_jobs_hold_capacity_until_recorded() {
        let mut backend = MemoryBackend::new(2);
        let first = jobs(2);
        let ids: Vec<JobId> = first.iter().map(|job| job.id).collect();
        backend.enqueue_group(vec![first]).expect("enqueue");
        let claimed = backend.take_ready(10).expect("take");
        assert_eq!(claimed.iter().map(|job| job.id).collect::<Vec<_>>(), ids);
        assert!(backend.enqueue_group(vec![jobs(1)]).expect("enqueue")[0].is_err());
        let finished = ids
            .iter()
            .map(|&id| FinishedJob { id, kind: "noop", outcome: Outcome::Failed { error: "x".into() } })
            .collect();
        backend.record_outcomes(finished).expect("record");
        assert_eq!(backend.enqueue_group(vec![jobs(2)]).expect("enqueue")[0], Ok(()));
    }
}
