//! The in-memory backend: fast and bounded, and honest that it forgets everything when
//! the process ends. For tests and for deployments that prefer speed over durability.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Utc};

use super::{Admitted, QueueBackend, QueueDepth, Refusal, StorageError, admit};
use crate::job::{FinishedJob, Job, JobId, JobRecord, JobState, StartedJob};

/// Jobs in a `VecDeque`, in submission order, and a record of every job for status reads.
pub struct MemoryBackend {
    ready: VecDeque<Job>,
    records: HashMap<JobId, JobRecord>,
    idempotency: HashMap<String, JobId>,
    /// Queued (including claimed) and running jobs; bounded by `capacity`.
    unfinished: usize,
    running: usize,
    capacity: usize,
}

impl MemoryBackend {
    /// A backend that holds at most `capacity` unfinished jobs.
    pub fn new(capacity: usize) -> Self {
        Self {
            ready: VecDeque::new(),
            records: HashMap::new(),
            idempotency: HashMap::new(),
            unfinished: 0,
            running: 0,
            capacity,
        }
    }
}

impl QueueBackend for MemoryBackend {
    fn enqueue(&mut self, submission: Vec<Job>) -> Result<Result<Vec<Admitted>, Refusal>, StorageError> {
        let (admitted, is_new) = admit(&submission, |key| {
            Ok(self
                .idempotency
                .get(key)
                .map(|id| (*id, self.records.get(id).map_or(JobState::Queued, |record| record.state))))
        })?;
        let new_jobs = is_new.iter().filter(|&&new| new).count();
        if self.unfinished + new_jobs > self.capacity {
            return Ok(Err(Refusal::QueueFull {
                unfinished: self.unfinished,
                capacity: self.capacity,
                requested: new_jobs,
            }));
        }
        for (job, new) in submission.into_iter().zip(is_new) {
            if !new {
                continue;
            }
            if let Some(key) = &job.idempotency_key {
                self.idempotency.insert(key.clone(), job.id);
            }
            self.records.insert(
                job.id,
                JobRecord {
                    id: job.id,
                    kind: job.kind.name().to_owned(),
                    state: JobState::Queued,
                    attempts: 0,
                    created_at: job.created_at,
                    started_at: None,
                    finished_at: None,
                    last_error: None,
                    result: None,
                    idempotency_key: job.idempotency_key.clone(),
                    payload: None,
                },
            );
            self.unfinished += 1;
            self.ready.push_back(job);
        }
        Ok(Ok(admitted))
    }

    fn take_ready(&mut self, max: usize) -> Result<Vec<Job>, StorageError> {
        let count = max.min(self.ready.len());
        Ok(self
            .ready
            .drain(..count)
            .map(|mut job| {
                job.attempt = self.records.get(&job.id).map_or(1, |record| record.attempts + 1);
                job
            })
            .collect())
    }

    fn record_started(&mut self, started: &[StartedJob]) -> Result<(), StorageError> {
        for start in started {
            if let Some(record) = self.records.get_mut(&start.id) {
                record.state = JobState::Running;
                record.attempts += 1;
                record.started_at = Some(start.started_at);
                self.running += 1;
            }
        }
        Ok(())
    }

    fn record_finished(&mut self, finished: &[FinishedJob]) -> Result<(), StorageError> {
        for end in finished {
            if let Some(record) = self.records.get_mut(&end.id) {
                if record.state == JobState::Running {
                    self.running -= 1;
                }
                record.state = end.outcome.final_state();
                record.finished_at = Some(end.finished_at);
                match &end.outcome {
                    crate::job::Outcome::Succeeded(result) => record.result = Some(result.clone()),
                    crate::job::Outcome::Failed { error } => record.last_error = Some(error.clone()),
                    crate::job::Outcome::Panicked { message } => record.last_error = Some(message.clone()),
                }
                self.unfinished -= 1;
            }
        }
        Ok(())
    }

    fn purge_finished(&mut self, cutoff: DateTime<Utc>, limit: usize) -> Result<usize, StorageError> {
        let expired: Vec<JobId> = self
            .records
            .values()
            .filter(|record| record.state.is_finished() && record.finished_at.is_some_and(|at| at < cutoff))
            .take(limit)
            .map(|record| record.id)
            .collect();
        for id in &expired {
            if let Some(key) = self.records.remove(id).and_then(|record| record.idempotency_key) {
                self.idempotency.remove(&key);
            }
        }
        Ok(expired.len())
    }

    fn get(&mut self, id: JobId, _with_payload: bool) -> Result<Option<JobRecord>, StorageError> {
        Ok(self.records.get(&id).cloned())
    }

    fn depth(&self) -> QueueDepth {
        QueueDepth { queued: self.unfinished - self.running, running: self.running, capacity: self.capacity }
    }

    fn is_durable(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{JobKind, Outcome};

    fn jobs(count: usize) -> Vec<Job> {
        (0..count)
            .map(|_| Job {
                id: JobId::generate(),
                created_at: Utc::now(),
                attempt: 0,
                idempotency_key: None,
                kind: JobKind::Noop,
            })
            .collect()
    }

    #[test]
    fn submissions_are_all_or_nothing_against_capacity() {
        let mut backend = MemoryBackend::new(5);
        let answers: Vec<_> =
            [jobs(3), jobs(3), jobs(2)].into_iter().map(|s| backend.enqueue(s).expect("memory never fails")).collect();
        assert!(answers[0].is_ok());
        assert!(matches!(answers[1], Err(Refusal::QueueFull { unfinished: 3, .. })));
        assert!(answers[2].is_ok());
        assert_eq!(backend.depth().queued, 5);
    }

    #[test]
    fn claimed_jobs_hold_capacity_until_finished() {
        let mut backend = MemoryBackend::new(2);
        let first = jobs(2);
        let ids: Vec<JobId> = first.iter().map(|job| job.id).collect();
        backend.enqueue(first).expect("enqueue").expect("fits");
        let claimed = backend.take_ready(10).expect("take");
        assert_eq!(claimed.iter().map(|job| job.id).collect::<Vec<_>>(), ids);
        assert!(backend.enqueue(jobs(1)).expect("enqueue").is_err());
        let finished: Vec<_> = ids
            .iter()
            .map(|&id| FinishedJob {
                id,
                kind: "noop",
                outcome: Outcome::Failed { error: "x".into() },
                finished_at: Utc::now(),
            })
            .collect();
        backend.record_finished(&finished).expect("record");
        assert!(backend.enqueue(jobs(2)).expect("enqueue").is_ok());
    }
}
