//! The in-memory backend: fast and bounded, and honest that it forgets everything when
//! the process ends. For tests and for deployments that prefer speed over durability.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{
    Admitted, ControlError, Cursor, JobPage, JobReader, JobWriter, Lease, ListFilter, QueueBackend, QueueDepth,
    ReadyBatch, Refusal, RefusedStarts, StorageError, Transactions, admit, claim_has_room,
};
use crate::job::{FinishedJob, Job, JobId, JobRecord, JobState, Outcome, StartedJob};

/// One job: its definition (kept so that a retry can run it again) and its record.
struct Entry {
    job: Job,
    record: JobRecord,
    seq: i64,
}

/// Every job in a map, with ordered indexes for the ready queue, the due times and listings.
pub struct MemoryBackend {
    entries: HashMap<JobId, Entry>,
    /// Queued jobs not yet claimed, by ready order.
    ready: BTreeMap<i64, JobId>,
    /// Scheduled and failed jobs, by due time.
    due: BTreeMap<(DateTime<Utc>, i64), JobId>,
    /// Every job by submission order, for listings.
    by_seq: BTreeMap<i64, JobId>,
    /// Jobs by (submitting token, idempotency key), as the SQLite index scopes them.
    idempotency: HashMap<(String, String), JobId>,
    next_seq: i64,
    capacity: usize,
    /// Lives as long as the backend, like its jobs.
    queue_id: Arc<str>,
    /// What operators said of named queues: paused or not.
    paused: BTreeMap<String, bool>,
    /// Queued jobs a claim passed over because their queue was paused, by ready order:
    /// they go back to `ready`, in their places, when it resumes.
    parked: BTreeMap<i64, JobId>,
    /// What each sync does, in tests of how the queue thread orders syncs and answers.
    #[cfg(test)]
    sync_for_test: Option<Box<dyn FnMut() -> Result<(), StorageError> + Send>>,
}

/// A queued job's place in `ready`: its priority's band, then its order (as the database
/// backends number `ready_seq`).
fn ready_key(priority: u8, seq: i64) -> i64 {
    super::columns::band_start(super::columns::band_of(priority)) + seq
}

/// A queue id no other queue has: the random half of a UUIDv7 (62 random bits), as hex.
pub(crate) fn new_queue_id() -> Arc<str> {
    Arc::from(&uuid::Uuid::now_v7().simple().to_string()[16..])
}

impl MemoryBackend {
    /// A backend that holds at most `capacity` unfinished jobs.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            ready: BTreeMap::new(),
            due: BTreeMap::new(),
            by_seq: BTreeMap::new(),
            idempotency: HashMap::new(),
            next_seq: 0,
            capacity,
            queue_id: new_queue_id(),
            paused: BTreeMap::new(),
            parked: BTreeMap::new(),
            #[cfg(test)]
            sync_for_test: None,
        }
    }

    /// A backend whose every sync runs `sync`, which may block or fail.
    #[cfg(test)]
    pub(crate) fn with_sync_for_test(
        mut self,
        sync: impl FnMut() -> Result<(), StorageError> + Send + 'static,
    ) -> Self {
        self.sync_for_test = Some(Box::new(sync));
        self
    }

    fn take_seq(&mut self) -> i64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn count(&self, state: JobState) -> usize {
        self.entries.values().filter(|entry| entry.record.state == state).count()
    }

    /// Marks queued jobs as running, counting their attempt.
    pub(crate) fn record_started(&mut self, started: &[StartedJob]) {
        for start in started {
            if let Some(entry) = self.entries.get_mut(&start.id)
                && entry.record.state == JobState::Queued
            {
                entry.record.state = JobState::Running;
                entry.record.attempts += 1;
                entry.record.started_at = Some(start.started_at);
            }
        }
    }

    /// Records how attempts of running jobs ended.
    pub(crate) fn record_finished(&mut self, finished: &[FinishedJob]) {
        for end in finished {
            let Some(entry) = self.entries.get_mut(&end.id) else { continue };
            if entry.record.state != JobState::Running {
                continue;
            }
            let state = end.state();
            entry.record.state = state;
            entry.record.run_at = end.retry_at.or(entry.record.run_at);
            entry.record.finished_at = state.is_finished().then_some(end.finished_at);
            entry.record.last_error = end.outcome.error();
            if let Outcome::Succeeded(result) = &end.outcome {
                entry.record.result = Some(result.clone());
            }
            if let Some(at) = end.retry_at {
                self.due.insert((at, entry.seq), end.id);
            }
        }
    }

    fn unfinished(&self) -> usize {
        self.entries.values().filter(|entry| !entry.record.state.is_finished()).count()
    }
}

impl JobWriter for MemoryBackend {
    fn enqueue(&mut self, submission: Vec<Job>) -> Result<Result<Vec<Admitted>, Refusal>, StorageError> {
        let submitted_by = submission.first().and_then(|job| job.submitted_by.clone()).unwrap_or_default();
        let (mut admitted, is_new) = admit(&submission, |key| {
            let scoped = (submitted_by.clone(), key.to_owned());
            Ok(self.idempotency.get(&scoped).and_then(|id| self.entries.get(id)).map(|e| (e.record.id, e.record.state)))
        })?;
        let new_jobs = is_new.iter().filter(|&&new| new).count();
        let unfinished = self.unfinished();
        if unfinished + new_jobs > self.capacity {
            return Ok(Err(Refusal::QueueFull { unfinished, capacity: self.capacity, requested: new_jobs }));
        }
        let now = Utc::now();
        for ((job, new), answer) in submission.into_iter().zip(is_new).zip(admitted.iter_mut()) {
            if !new {
                continue;
            }
            let seq = self.take_seq();
            let state = match job.run_at.filter(|at| *at > now) {
                Some(at) => {
                    self.due.insert((at, seq), job.id);
                    JobState::Scheduled
                }
                None => {
                    self.ready.insert(ready_key(job.priority, seq), job.id);
                    JobState::Queued
                }
            };
            answer.state = state;
            if let Some(key) = &job.idempotency_key {
                self.idempotency.insert((submitted_by.clone(), key.clone()), job.id);
            }
            let record = JobRecord {
                id: job.id,
                kind: job.kind.to_string(),
                queue: job.queue.to_string(),
                priority: job.priority,
                state,
                attempts: 0,
                max_attempts: job.max_attempts,
                timeout_ms: job.timeout_ms,
                created_at: job.created_at,
                run_at: job.run_at,
                started_at: None,
                finished_at: None,
                last_error: None,
                result: None,
                idempotency_key: job.idempotency_key.clone(),
                submitted_by: job.submitted_by.clone(),
                payload: None,
                target: None,
                args: job.args.clone(),
                body_is_json: job.body.as_ref().is_some_and(|body| body.is_json),
            };
            self.by_seq.insert(seq, job.id);
            self.entries.insert(job.id, Entry { job, record, seq });
        }
        Ok(Ok(admitted))
    }

    fn claim(&mut self, max: usize, now: DateTime<Utc>, _lease: &Lease) -> Result<ReadyBatch, StorageError> {
        while self.ready.len() < max {
            let Some((&(at, seq), &id)) = self.due.first_key_value() else { break };
            if at > now {
                break;
            }
            self.due.remove(&(at, seq));
            let ready_seq = self.take_seq();
            if let Some(entry) = self.entries.get_mut(&id) {
                entry.record.state = JobState::Queued;
                self.ready.insert(ready_key(entry.job.priority, ready_seq), id);
            }
        }
        let mut jobs = Vec::new();
        let (mut bytes, mut stopped_at_byte_limit) = (0, false);
        while jobs.len() < max {
            let Some((&ready_seq, &id)) = self.ready.first_key_value() else { break };
            let Some(entry) = self.entries.get(&id) else {
                self.ready.remove(&ready_seq);
                continue;
            };
            if self.paused.get(&*entry.job.queue).copied().unwrap_or(false) {
                self.ready.remove(&ready_seq);
                self.parked.insert(ready_seq, id);
                continue;
            }
            let size = entry.job.body_len();
            if !claim_has_room(jobs.len(), bytes, size) {
                stopped_at_byte_limit = true;
                break;
            }
            self.ready.remove(&ready_seq);
            bytes += size;
            let mut job = entry.job.clone();
            job.attempt = entry.record.attempts + 1;
            jobs.push(job);
        }
        Ok(ReadyBatch { jobs, stopped_at_byte_limit, next_due: self.due.keys().next().map(|(at, _)| *at) })
    }

    fn record_progress(
        &mut self,
        started: &[StartedJob],
        finished: &[FinishedJob],
    ) -> Result<RefusedStarts, StorageError> {
        self.record_started(started);
        self.record_finished(finished);
        Ok(RefusedStarts::new())
    }

    fn set_queue_paused(
        &mut self,
        name: &str,
        paused: bool,
        if_unset: bool,
        _now: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        if if_unset && self.paused.contains_key(name) {
            return Ok(());
        }
        self.paused.insert(name.to_owned(), paused);
        if !paused {
            let entries = &self.entries;
            let resumed: Vec<(i64, JobId)> = self
                .parked
                .iter()
                .filter(|(_, id)| entries.get(*id).is_some_and(|entry| &*entry.job.queue == name))
                .map(|(&ready_seq, &id)| (ready_seq, id))
                .collect();
            for (ready_seq, id) in resumed {
                self.parked.remove(&ready_seq);
                self.ready.insert(ready_seq, id);
            }
        }
        Ok(())
    }

    fn purge_finished(&mut self, cutoff: DateTime<Utc>, limit: usize) -> Result<usize, StorageError> {
        let expired: Vec<JobId> = self
            .entries
            .values()
            .filter(|entry| entry.record.state.is_finished() && entry.record.finished_at.is_some_and(|at| at < cutoff))
            .take(limit)
            .map(|entry| entry.record.id)
            .collect();
        for id in &expired {
            if let Some(entry) = self.entries.remove(id) {
                self.by_seq.remove(&entry.seq);
                if let Some(key) = entry.record.idempotency_key {
                    self.idempotency.remove(&(entry.record.submitted_by.unwrap_or_default(), key));
                }
            }
        }
        Ok(expired.len())
    }

    fn retry_dead(&mut self, id: JobId) -> Result<Result<(), ControlError>, StorageError> {
        let unfinished = self.unfinished();
        let Some(entry) = self.entries.get_mut(&id) else { return Ok(Err(ControlError::NotFound)) };
        if entry.record.state != JobState::Dead {
            return Ok(Err(ControlError::Conflict(entry.record.state)));
        }
        if unfinished + 1 > self.capacity {
            let refusal = Refusal::QueueFull { unfinished, capacity: self.capacity, requested: 1 };
            return Ok(Err(ControlError::Refused(refusal)));
        }
        entry.record.state = JobState::Queued;
        entry.record.attempts = 0;
        entry.record.finished_at = None;
        entry.record.run_at = None;
        self.next_seq += 1;
        let priority = entry.job.priority;
        self.ready.insert(ready_key(priority, self.next_seq), id);
        Ok(Ok(()))
    }

    fn cancel(&mut self, id: JobId, now: DateTime<Utc>) -> Result<Result<(), ControlError>, StorageError> {
        let Some(entry) = self.entries.get_mut(&id) else { return Ok(Err(ControlError::NotFound)) };
        match entry.record.state {
            JobState::Queued | JobState::Scheduled | JobState::Failed => {}
            other => return Ok(Err(ControlError::Conflict(other))),
        }
        entry.record.state = JobState::Cancelled;
        entry.record.finished_at = Some(now);
        self.ready.retain(|_, ready| *ready != id);
        self.parked.retain(|_, parked| *parked != id);
        self.due.retain(|_, due| *due != id);
        Ok(Ok(()))
    }
}

impl JobReader for MemoryBackend {
    fn list(&mut self, filter: &ListFilter, before: Option<Cursor>, limit: usize) -> Result<JobPage, StorageError> {
        let mut page = JobPage::default();
        let before = Cursor::seq_before(before)?;
        for (&seq, id) in self.by_seq.range(..before).rev() {
            let Some(entry) = self.entries.get(id) else { continue };
            if filter.state.is_some_and(|state| state != entry.record.state)
                || filter.submitted_by.as_ref().is_some_and(|name| entry.record.submitted_by.as_ref() != Some(name))
                || filter.kind.as_ref().is_some_and(|kind| &entry.record.kind != kind)
            {
                continue;
            }
            page.records.push(entry.record.clone());
            if page.records.len() == limit {
                page.next_before = Some(Cursor::Seq(seq));
                break;
            }
        }
        Ok(page)
    }

    fn get(&mut self, id: JobId, _with_payload: bool) -> Result<Option<JobRecord>, StorageError> {
        Ok(self.entries.get(&id).map(|entry| entry.record.clone()))
    }

    fn depth(&mut self) -> Result<QueueDepth, StorageError> {
        Ok(QueueDepth {
            queued: self.count(JobState::Queued),
            scheduled: self.count(JobState::Scheduled),
            running: self.count(JobState::Running),
            failed: self.count(JobState::Failed),
            dead: self.count(JobState::Dead),
            capacity: self.capacity,
        })
    }

    fn queues(&mut self, with_depths: bool) -> Result<super::QueuesView, StorageError> {
        let mut view = super::QueuesView { paused: self.paused.clone(), ..super::QueuesView::default() };
        if !with_depths {
            return Ok(view);
        }
        for entry in self.entries.values().filter(|entry| !entry.record.state.is_finished()) {
            let states = view.depths.entry(entry.record.queue.clone()).or_default();
            *states.entry(entry.record.state).or_default() += 1;
        }
        Ok(view)
    }

    fn oldest_queued(&mut self) -> Result<Option<DateTime<Utc>>, StorageError> {
        let first = self.ready.values().next().and_then(|id| self.entries.get(id));
        Ok(first.map(|entry| entry.record.run_at.unwrap_or(entry.record.created_at)))
    }
}

impl Transactions for MemoryBackend {
    fn syncer(&mut self) -> Option<Box<dyn super::Syncer>> {
        self.sync_for_test.take().map(|sync| Box::new(sync) as Box<dyn super::Syncer>)
    }
}

impl QueueBackend for MemoryBackend {
    fn is_durable(&self) -> bool {
        false
    }

    fn queue_id(&self) -> Arc<str> {
        self.queue_id.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobResult;

    fn jobs(count: usize) -> Vec<Job> {
        (0..count).map(|_| Job::for_test("noop")).collect()
    }

    #[test]
    fn a_claim_stops_at_its_byte_limit_but_always_takes_one_job() {
        let mut backend = MemoryBackend::new(10);
        let large = || Job::upload_for_test(super::super::CLAIM_MAX_BODY_BYTES * 5 / 8);
        assert!(backend.enqueue(vec![large(), large()]).expect("memory never fails").is_ok());
        let first = backend.claim(10, Utc::now(), &Lease::for_test()).expect("take");
        assert_eq!((first.jobs.len(), first.stopped_at_byte_limit), (1, true));
        let second = backend.claim(10, Utc::now(), &Lease::for_test()).expect("take");
        assert_eq!((second.jobs.len(), second.stopped_at_byte_limit), (1, false));
    }

    #[test]
    fn submissions_are_all_or_nothing_against_capacity() {
        let mut backend = MemoryBackend::new(5);
        let answers: Vec<_> =
            [jobs(3), jobs(3), jobs(2)].into_iter().map(|s| backend.enqueue(s).expect("memory never fails")).collect();
        assert!(answers[0].is_ok());
        assert!(matches!(answers[1], Err(Refusal::QueueFull { unfinished: 3, .. })));
        assert!(answers[2].is_ok());
        assert_eq!(backend.depth().expect("depth").queued, 5);
    }

    #[test]
    fn retries_wait_for_their_time_and_finished_jobs_free_capacity() {
        let mut backend = MemoryBackend::new(2);
        let now = Utc::now();
        backend.enqueue(jobs(2)).expect("enqueue").expect("fits");
        let claimed = backend.claim(10, now, &Lease::for_test()).expect("take").jobs;
        let started: Vec<_> = claimed
            .iter()
            .map(|job| StartedJob { claim: 0, id: job.id, attempt: job.attempt, started_at: now })
            .collect();
        backend.record_started(&started);
        let retry_at = now + chrono::Duration::seconds(10);
        let finished = [
            FinishedJob {
                claim: 0,
                id: claimed[0].id,
                attempt: 1,
                kind: "noop",
                outcome: Outcome::Succeeded(JobResult::default()),
                finished_at: now,
                retry_at: None,
            },
            FinishedJob {
                claim: 0,
                id: claimed[1].id,
                attempt: 1,
                kind: "noop",
                outcome: Outcome::Failed { error: "x".into(), retryable: true },
                finished_at: now,
                retry_at: Some(retry_at),
            },
        ];
        backend.record_finished(&finished);
        assert!(backend.enqueue(jobs(1)).expect("enqueue").is_ok(), "the success freed a slot");
        assert!(backend.enqueue(jobs(1)).expect("enqueue").is_err(), "the retry still holds one");
        let batch = backend.claim(10, now, &Lease::for_test()).expect("take");
        assert_eq!((batch.jobs.len(), batch.next_due), (1, Some(retry_at)));
        let later = backend.claim(10, retry_at, &Lease::for_test()).expect("take");
        assert_eq!(later.jobs.iter().map(|job| (job.id, job.attempt)).collect::<Vec<_>>(), vec![(claimed[1].id, 2)]);
    }
}
