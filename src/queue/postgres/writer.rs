//! Writing the PostgreSQL queue: many jobs per statement (`unnest` arrays), claims with
//! `FOR UPDATE SKIP LOCKED`, and starts and ends that match the job's id, attempt and
//! lease owner, so that a node that lost a job cannot record anything about it.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use super::PostgresBackend;
use super::codec::{CLAIMED_COLUMNS, InsertColumns, decode_claimed, job_id, uuid_of};
use super::pick::{PICK, PICK_HIGHER_PRIORITIES};
use super::schema::PURGE_LOCK;
use crate::job::{FinishedJob, Job, JobId, JobState, StartedJob};
use crate::queue::columns::{FinishColumns, millis, split_progress, state_of};
use crate::queue::{
    Admitted, ControlError, JobWriter, Lease, ReadyBatch, Refusal, RefusedStarts, StorageError, admit, claim_has_room,
};

const FIND_BY_KEY: &str = "SELECT id, state FROM jobd_jobs WHERE submitted_by = $1 AND idempotency_key = $2";

/// New jobs, one row per array element. A job whose idempotency key another node's
/// transaction took meanwhile is skipped (`ON CONFLICT DO NOTHING`), and the caller finds
/// the winner by its key: concurrent duplicates sent to different nodes create one job.
const INSERT: &str = "INSERT INTO jobd_jobs (id, kind, state, ready_seq, run_at, max_attempts, timeout_ms,
         created_at, idempotency_key, submitted_by, body, body_is_json, args, queue, priority)
     SELECT id, kind, state,
         CASE WHEN state = 'queued' THEN nextval('jobd_ready_seq') + (9 - priority) * 281474976710656::bigint END,
         run_at, max_attempts, timeout_ms, created_at, idempotency_key, submitted_by, body, body_is_json, args, queue,
         priority
     FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::integer[], $6::bigint[], $7::bigint[],
         $8::text[], $9::text[], $10::bytea[], $11::boolean[], $12::text[], $13::text[], $14::smallint[])
         AS new(id, kind, state, run_at, max_attempts, timeout_ms, created_at, idempotency_key, submitted_by, body,
             body_is_json, args, queue, priority)
     ON CONFLICT DO NOTHING
     RETURNING id";

/// Moves due scheduled and failed jobs to the queue, returning the states they left. Their
/// places in the queue (`ready_seq`) follow their due order, ties broken by id (creation
/// order): PostgreSQL evaluates a volatile function of a select list after its sort, whereas
/// an `UPDATE … FROM` would number the rows in whatever order its join produced them, which
/// let a later-due job start a moment before an earlier one.
const PROMOTE_DUE: &str = "WITH due AS (
         SELECT id, state, run_at, priority FROM jobd_jobs WHERE state IN ('scheduled', 'failed') AND run_at <= $1
         ORDER BY run_at, id LIMIT $2 FOR UPDATE SKIP LOCKED),
     numbered AS (
         SELECT id, state, nextval('jobd_ready_seq') + (9 - priority) * 281474976710656::bigint AS ready_seq
         FROM due ORDER BY run_at, id)
     UPDATE jobd_jobs j SET state = 'queued', ready_seq = numbered.ready_seq
     FROM numbered WHERE j.id = numbered.id RETURNING numbered.state";

/// Takes picked jobs into this node's window: leased to `$2` under its claim epoch `$3`,
/// still `queued` until their start is recorded, if this node's row is still there.
///
/// The row is locked (`FOR KEY SHARE`) until the claim commits, so a rescuer that forgets
/// this node meanwhile waits for the claim and then sweeps what it took; and a claim
/// after the forget takes nothing. A node declared lost can thus never leave jobs leased
/// to an owner that has no row and is no longer swept, which is what lets the sweep of
/// every leased job run only at a node's start.
fn take_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "UPDATE jobd_jobs j SET lease_owner = $2, claim_epoch = $3
             WHERE j.id = ANY($1) AND EXISTS (SELECT 1 FROM jobd_nodes n WHERE n.id = $2 FOR KEY SHARE)
             RETURNING {CLAIMED_COLUMNS}"
        )
    })
}

const NEXT_DUE: &str = "SELECT min(run_at) FROM jobd_jobs WHERE state IN ('scheduled', 'failed')";

const BURY: &str = "UPDATE jobd_jobs SET state = 'dead', last_error = $2, finished_at = $3, lease_owner = NULL
     WHERE id = $1 AND state = 'queued'";

// The lease owner is compared with `IS NOT DISTINCT FROM`, which no index serves, in the
// statements below that match jobs by id: given `=`, the planner may walk every job the
// node holds (the leased index, dead entries and all) for each id, instead of looking
// each id up by the primary key, and a finish then costs tens of microseconds per job.
// The owner is never NULL there, so the two compare alike.

/// Records the start of attempts that have not ended yet, counting each: the job leaves
/// the queue for `running`, if this node (`$4`) still holds it at the attempt before,
/// under the claim (`$5`) the start belongs to. Returns the ids it moved. A plain `UPDATE`
/// locks each row it changes and checks the conditions again on a row another
/// transaction changed meanwhile, so a rescue that took the job first leaves nothing to
/// match.
const RECORD_STARTED: &str = "UPDATE jobd_jobs j SET state = 'running', attempts = s.attempt, started_at = s.started_at
     FROM unnest($1::uuid[], $2::integer[], $3::bigint[], $5::bigint[]) AS s(id, attempt, started_at, claim)
     WHERE j.id = s.id AND j.lease_owner IS NOT DISTINCT FROM $4 AND j.state = 'queued' AND j.attempts = s.attempt - 1
       AND j.claim_epoch = s.claim
     RETURNING j.id, j.claim_epoch";

/// Of starts that did not apply, those already recorded (by a commit whose answer was
/// lost): the job runs at that attempt, held by this node (`$3`) under the same claim.
const ALREADY_STARTED: &str = "SELECT j.id, j.claim_epoch FROM jobd_jobs j
     JOIN unnest($1::uuid[], $2::integer[], $4::bigint[]) AS s(id, attempt, claim) ON j.id = s.id
     WHERE j.lease_owner IS NOT DISTINCT FROM $3 AND j.state = 'running' AND j.attempts = s.attempt
       AND j.claim_epoch = s.claim";

/// Records the end of attempts, if this node (`$10`) still holds each job in state `$9`
/// at that attempt: `running` at the attempt, or still `queued` at the attempt before,
/// when the end also records the start (both came in one flush). The job leaves its
/// lease. The claim epoch must match too. Two statements, one per state the jobs leave, rather than one that locks rows
/// to read their old state: each row is written once, and the caller knows where it came
/// from. Returns each job's id and its state now.
const RECORD_FINISHED: &str = "UPDATE jobd_jobs j SET state = f.state, attempts = f.attempt,
         started_at = COALESCE(f.started_at, j.started_at), finished_at = f.finished_at,
         last_error = f.error, result = f.result, run_at = COALESCE(f.retry_at, j.run_at), lease_owner = NULL
     FROM unnest($1::uuid[], $2::integer[], $3::text[], $4::bigint[], $5::bigint[], $6::text[], $7::text[],
         $8::bigint[], $11::bigint[]) AS f(id, attempt, state, started_at, finished_at, error, result, retry_at, claim)
     WHERE j.id = f.id AND j.lease_owner IS NOT DISTINCT FROM $10 AND j.state = $9
       AND j.attempts = CASE WHEN $9 = 'queued' THEN f.attempt - 1 ELSE f.attempt END AND j.claim_epoch = f.claim
     RETURNING j.id, j.state";

const STATE_OF: &str = "SELECT state FROM jobd_jobs WHERE id = $1";

/// The statements of the claim and progress path, by name, for the tests that check their
/// plans on a fresh database (`tests/it/cluster_safety.rs`).
#[doc(hidden)]
pub fn hot_statements() -> Vec<(&'static str, &'static str)> {
    vec![
        ("promote due", PROMOTE_DUE),
        ("pick", PICK),
        ("pick higher priorities", PICK_HIGHER_PRIORITIES),
        ("take", take_sql()),
        ("record started", RECORD_STARTED),
        ("already started", ALREADY_STARTED),
        ("record finished", RECORD_FINISHED),
        ("retake unknown claims", own_unknown_claims_sql()),
        ("rescue", super::cluster::RESCUE),
        ("rescue of lost owners", super::cluster::RESCUE_OWNERS),
    ]
}

impl PostgresBackend {
    fn find_by_idempotency_key(
        &mut self,
        submitted_by: &str,
        key: &str,
    ) -> Result<Option<(JobId, JobState)>, StorageError> {
        let rows = self.connection.query(FIND_BY_KEY, &[&submitted_by, &key])?;
        Ok(rows.first().map(|row| (job_id(row.get(0)), state_of(row.get(1)))))
    }

    /// The unfinished jobs of the whole cluster as committed, plus this transaction's own.
    fn unfinished(&mut self) -> Result<i64, StorageError> {
        let committed = match self.committed_unfinished {
            Some(count) => count,
            None => {
                let rows = self.connection.query(super::schema::DEPTH, &[])?;
                let count = rows
                    .iter()
                    .filter(|row| state_of(row.get(0)) != JobState::Dead)
                    .map(|row| row.get::<_, i64>(1))
                    .sum();
                self.committed_unfinished = Some(count);
                count
            }
        };
        Ok(committed + self.deltas.unfinished())
    }

    /// Inserts `jobs` in one statement and returns the ids that were inserted.
    fn insert_all(&mut self, jobs: &[Job], now: DateTime<Utc>) -> Result<HashSet<uuid::Uuid>, StorageError> {
        let count = jobs.len();
        let mut columns = InsertColumns::with_capacity(count);
        for job in jobs {
            let delayed = job.run_at.is_some_and(|at| at > now);
            columns.ids.push(uuid_of(job.id));
            columns.kinds.push(&job.kind);
            columns.states.push(if delayed { JobState::Scheduled.name() } else { JobState::Queued.name() });
            columns.run_at.push(job.run_at.map(millis));
            columns.max_attempts.push(i32::try_from(job.max_attempts).unwrap_or(i32::MAX));
            columns.timeout_ms.push(job.timeout_ms.map(|ms| i64::try_from(ms).unwrap_or(i64::MAX)));
            columns.created_at.push(millis(job.created_at));
            columns.keys.push(job.idempotency_key.as_deref());
            columns.submitted_by.push(job.submitted_by.as_deref().unwrap_or_default());
            columns.bodies.push(job.body.as_ref().map(|body| body.bytes.as_slice()));
            columns.body_is_json.push(job.body.as_ref().is_some_and(|body| body.is_json));
            columns.args.push(job.args.as_ref().map(|args| args.get()));
            columns.queues.push(&job.queue);
            columns.priorities.push(i16::from(job.priority));
        }
        let rows = self.connection.query(
            INSERT,
            &[
                &columns.ids,
                &columns.kinds,
                &columns.states,
                &columns.run_at,
                &columns.max_attempts,
                &columns.timeout_ms,
                &columns.created_at,
                &columns.keys,
                &columns.submitted_by,
                &columns.bodies,
                &columns.body_is_json,
                &columns.args,
                &columns.queues,
                &columns.priorities,
            ],
        )?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    /// Marks a claimed job that cannot be decoded as dead, so one bad row cannot wedge
    /// the queue.
    fn bury_undecodable(&mut self, id: uuid::Uuid, error: &str) -> Result<(), StorageError> {
        tracing::error!(job_id = %id, %error, "a stored job cannot be decoded; it is marked dead");
        let message = format!("stored job cannot be decoded: {error}");
        let changed = self.connection.execute(BURY, &[&id, &message, &millis(Utc::now())])?;
        self.deltas.moved(JobState::Queued, JobState::Dead, changed as i64);
        Ok(())
    }

    /// Records starts, and returns those refused: jobs that moved on to another node or
    /// claim, or all of them while this node cannot prove that it holds its lease. The
    /// Dispatcher never runs a refused job. A start is one copy of a job, by its id and
    /// claim: two copies of one job (an old claim's and a new one's) may meet in a flush,
    /// and only the one the database holds may run.
    fn write_started(&mut self, started: &[StartedJob]) -> Result<RefusedStarts, StorageError> {
        if started.is_empty() {
            return Ok(Vec::new());
        }
        if !self.lease.is_held() {
            // Writing would succeed while no other node has taken the jobs yet, but this
            // node could not stop them in time should one do so: it runs none of them.
            tracing::warn!(jobs = started.len(), "starts refused: this node's lease is not proven held");
            self.metrics.fenced_starts.inc_by(started.len() as u64);
            return Ok(started.iter().map(|start| (start.id, start.claim)).collect());
        }
        let owner = self.owner();
        let ids: Vec<uuid::Uuid> = started.iter().map(|start| uuid_of(start.id)).collect();
        let attempts: Vec<i32> = started.iter().map(|start| attempt_column(start.attempt)).collect();
        let times: Vec<i64> = started.iter().map(|start| millis(start.started_at)).collect();
        let claims: Vec<i64> = started.iter().map(|start| start.claim).collect();
        let rows = self.connection.query(RECORD_STARTED, &[&ids, &attempts, &times, &owner, &claims])?;
        self.deltas.moved(JobState::Queued, JobState::Running, rows.len() as i64);
        if rows.len() == started.len() {
            return Ok(Vec::new());
        }
        let mut written: HashSet<(uuid::Uuid, i64)> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
        let missed: Vec<usize> = (0..ids.len()).filter(|&at| !written.contains(&(ids[at], claims[at]))).collect();
        let missed_ids: Vec<uuid::Uuid> = missed.iter().map(|&at| ids[at]).collect();
        let missed_attempts: Vec<i32> = missed.iter().map(|&at| attempts[at]).collect();
        let missed_claims: Vec<i64> = missed.iter().map(|&at| claims[at]).collect();
        let recorded =
            self.connection.query(ALREADY_STARTED, &[&missed_ids, &missed_attempts, &owner, &missed_claims])?;
        written.extend(recorded.iter().map(|row| (row.get::<_, uuid::Uuid>(0), row.get::<_, i64>(1))));
        let refused: Vec<&StartedJob> =
            started.iter().filter(|start| !written.contains(&(uuid_of(start.id), start.claim))).collect();
        self.fenced("start", refused.iter().map(|start| (start.id, start.attempt, start.claim)));
        self.metrics.fenced_starts.inc_by(refused.len() as u64);
        Ok(refused.iter().map(|start| (start.id, start.claim)).collect())
    }

    /// Records `finished`: first the ends that also record their start, from `queued`;
    /// then the rest, and any of those that did not match, from `running`.
    fn write_finished(
        &mut self,
        finished: &[FinishedJob],
        started_at: &HashMap<JobId, DateTime<Utc>>,
    ) -> Result<(), StorageError> {
        if finished.is_empty() {
            return Ok(());
        }
        let mut written: HashSet<uuid::Uuid> = HashSet::with_capacity(finished.len());
        let with_start: Vec<&FinishedJob> = finished.iter().filter(|end| started_at.contains_key(&end.id)).collect();
        self.write_finished_from(JobState::Queued, &with_start, started_at, &mut written)?;
        let rest: Vec<&FinishedJob> = finished.iter().filter(|end| !written.contains(&uuid_of(end.id))).collect();
        self.write_finished_from(JobState::Running, &rest, started_at, &mut written)?;
        if written.len() < finished.len() {
            self.fenced(
                "finish",
                finished
                    .iter()
                    .filter(|end| !written.contains(&uuid_of(end.id)))
                    .map(|end| (end.id, end.attempt, end.claim)),
            );
        }
        Ok(())
    }

    /// Records the ends of jobs that are in state `from`, adding the ids written to
    /// `written`.
    fn write_finished_from(
        &mut self,
        from: JobState,
        ends: &[&FinishedJob],
        started_at: &HashMap<JobId, DateTime<Utc>>,
        written: &mut HashSet<uuid::Uuid>,
    ) -> Result<(), StorageError> {
        if ends.is_empty() {
            return Ok(());
        }
        let mut columns = FinishArrays::default();
        for end in ends {
            let outcome = FinishColumns::of(end);
            columns.claims.push(end.claim);
            columns.ids.push(uuid_of(end.id));
            columns.attempts.push(attempt_column(end.attempt));
            columns.states.push(outcome.state.name());
            columns.started_at.push(started_at.get(&end.id).copied().map(millis));
            columns.finished_at.push(outcome.finished_at);
            columns.errors.push(outcome.error);
            columns.results.push(outcome.result);
            columns.retry_at.push(outcome.retry_at);
        }
        let owner = self.owner();
        let rows = self.connection.query(
            RECORD_FINISHED,
            &[
                &columns.ids,
                &columns.attempts,
                &columns.states,
                &columns.started_at,
                &columns.finished_at,
                &columns.errors,
                &columns.results,
                &columns.retry_at,
                &from.name(),
                &owner,
                &columns.claims,
            ],
        )?;
        for row in &rows {
            self.deltas.moved(from, state_of(row.get(1)), 1);
            written.insert(row.get(0));
        }
        Ok(())
    }

    fn state_of_job(&mut self, id: JobId) -> Result<Option<JobState>, StorageError> {
        let rows = self.connection.query(STATE_OF, &[&uuid_of(id)])?;
        Ok(rows.first().map(|row| state_of(row.get(0))))
    }
}

impl PostgresBackend {
    /// Adds to `jobs` this node's leased, unstarted jobs that the Dispatcher does not hold:
    /// those of a claim whose commit failed after it may have taken effect, and, after a
    /// lapse of this node's lease, all of them (the Dispatcher dropped its window). Each is
    /// claimed again under `claim`, so a copy the Dispatcher may still hold can record
    /// nothing.
    fn take_back_unknown_claims(&mut self, jobs: &mut Vec<Job>, claim: i64) -> Result<(), StorageError> {
        let owner = self.owner();
        let held: Vec<uuid::Uuid> =
            self.handed_out.iter().copied().chain(jobs.iter().map(|job| job.id)).map(uuid_of).collect();
        let mut rows = self.connection.query(own_unknown_claims_sql(), &[&owner, &held, &claim])?;
        rows.sort_by_key(|row| row.get::<_, Option<i64>>(0));
        let mut found = 0;
        for row in &rows {
            if let Ok(job) = decode_claimed(row) {
                found += 1;
                jobs.push(job);
            }
        }
        if found > 0 {
            tracing::warn!(jobs = found, "claimed jobs this node's window does not hold are handed out again");
        }
        Ok(())
    }
}

/// Claims again, under epoch `$3`, this node's (`$1`) leased jobs that have not started,
/// except those in `$2` (the window holds them).
fn own_unknown_claims_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "UPDATE jobd_jobs j SET claim_epoch = $3 WHERE j.lease_owner = $1 AND j.state = 'queued'
                 AND NOT (j.id = ANY($2)) RETURNING {CLAIMED_COLUMNS}"
        )
    })
}

/// The state a new job starts in: scheduled while its `run_at` is ahead of `now`.
fn new_state(job: &Job, now: DateTime<Utc>) -> JobState {
    if job.run_at.is_some_and(|at| at > now) { JobState::Scheduled } else { JobState::Queued }
}

fn attempt_column(attempt: u32) -> i32 {
    i32::try_from(attempt).unwrap_or(i32::MAX)
}

/// Attempts' ends as arrays.
#[derive(Default)]
struct FinishArrays {
    ids: Vec<uuid::Uuid>,
    attempts: Vec<i32>,
    states: Vec<&'static str>,
    started_at: Vec<Option<i64>>,
    finished_at: Vec<Option<i64>>,
    errors: Vec<Option<String>>,
    results: Vec<Option<String>>,
    retry_at: Vec<Option<i64>>,
    claims: Vec<i64>,
}

impl JobWriter for PostgresBackend {
    fn set_queue_paused(
        &mut self,
        name: &str,
        paused: bool,
        if_unset: bool,
        _now: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        super::queues::set_paused(&mut self.connection, name, paused, if_unset)
    }

    fn enqueue(&mut self, submission: Vec<Job>) -> Result<Result<Vec<Admitted>, Refusal>, StorageError> {
        let submitted_by = submission.first().and_then(|job| job.submitted_by.clone()).unwrap_or_default();
        let (mut admitted, is_new) = admit(&submission, |key| self.find_by_idempotency_key(&submitted_by, key))?;
        let new_jobs = is_new.iter().filter(|&&new| new).count();
        let unfinished = self.unfinished()?;
        let capacity = i64::try_from(self.capacity).unwrap_or(i64::MAX);
        if unfinished + new_jobs as i64 > capacity {
            return Ok(Err(Refusal::QueueFull {
                unfinished: usize::try_from(unfinished).unwrap_or(0),
                capacity: self.capacity,
                requested: new_jobs,
            }));
        }
        if new_jobs == 0 {
            return Ok(Ok(admitted));
        }
        let now = Utc::now();
        // Which answer each new job has: the answers of jobs found earlier stay as they are.
        let positions: Vec<usize> = is_new.iter().enumerate().filter(|(_, new)| **new).map(|(at, _)| at).collect();
        let fresh: Vec<Job> =
            submission.into_iter().zip(&is_new).filter(|(_, new)| **new).map(|(job, _)| job).collect();
        let inserted = self.insert_all(&fresh, now)?;
        let mut replaced: HashMap<JobId, Admitted> = HashMap::new();
        for (job, &position) in fresh.iter().zip(&positions) {
            if inserted.contains(&uuid_of(job.id)) {
                let scheduled = job.run_at.is_some_and(|at| at > now);
                let state = if scheduled { JobState::Scheduled } else { JobState::Queued };
                self.deltas.add(state, 1);
                self.readied |= !scheduled;
                admitted[position].state = state;
            } else {
                // Another node committed a job with this key first: that job answers.
                let key = job.idempotency_key.as_deref().unwrap_or_default();
                let (id, state) = self.find_by_idempotency_key(&submitted_by, key)?.ok_or_else(|| {
                    StorageError::new("an idempotency key conflicted, but no job holds it: try again")
                })?;
                let winner = Admitted { id, state, created: false };
                admitted[position] = winner;
                replaced.insert(job.id, winner);
            }
        }
        // A later duplicate within the submission named the first job, which another
        // node's job may have replaced.
        if !replaced.is_empty() {
            for answer in admitted.iter_mut().filter(|answer| !answer.created) {
                if let Some(winner) = replaced.get(&answer.id) {
                    *answer = *winner;
                }
            }
        }
        Ok(Ok(admitted))
    }

    /// Without idempotency keys, a group's submissions are checked against `max_queue` one
    /// after another, in memory, and their jobs go in with one insert: a burst of
    /// single-job submissions costs one statement per commit, not one per submission.
    /// With a key anywhere in the group, each submission goes in by itself, as the keys
    /// need their lookups and another node's conflicting insert its answer.
    fn enqueue_group(&mut self, group: Vec<Vec<Job>>) -> Result<Vec<Result<Vec<Admitted>, Refusal>>, StorageError> {
        if group.iter().flatten().any(|job| job.idempotency_key.is_some()) {
            return group.into_iter().map(|submission| self.enqueue(submission)).collect();
        }
        let capacity = i64::try_from(self.capacity).unwrap_or(i64::MAX);
        let mut unfinished = self.unfinished()?;
        let now = Utc::now();
        let mut answers = Vec::with_capacity(group.len());
        let mut accepted = Vec::new();
        for submission in group {
            let requested = submission.len();
            if unfinished + requested as i64 > capacity {
                let refusal = Refusal::QueueFull {
                    unfinished: usize::try_from(unfinished).unwrap_or(0),
                    capacity: self.capacity,
                    requested,
                };
                answers.push(Err(refusal));
                continue;
            }
            unfinished += requested as i64;
            answers.push(Ok(submission
                .iter()
                .map(|job| Admitted { id: job.id, state: new_state(job, now), created: true })
                .collect()));
            accepted.extend(submission);
        }
        if accepted.is_empty() {
            return Ok(answers);
        }
        let inserted = self.insert_all(&accepted, now)?;
        if inserted.len() != accepted.len() {
            // Only an idempotency key can conflict, and none of these has one.
            return Err(StorageError::new("a new job's id was already taken: nothing of the group was enqueued"));
        }
        for job in &accepted {
            let state = new_state(job, now);
            self.deltas.add(state, 1);
            self.readied |= state == JobState::Queued;
        }
        Ok(answers)
    }

    /// Claims for this node: due delayed jobs are promoted, then the next queued jobs no
    /// node holds are locked (`SKIP LOCKED`, so nodes never wait for each other's claims),
    /// cut at the byte bound, and leased to `lease.owner`; they stay `queued` until their
    /// start is recorded. Jobs picked but not taken are unlocked at commit.
    fn claim(&mut self, max: usize, now: DateTime<Utc>, lease: &Lease) -> Result<ReadyBatch, StorageError> {
        if !self.lease.is_held() {
            // A node that cannot prove its lease takes nothing: the listener's poll asks
            // again within a second, and a renewal may have come by then.
            return Ok(ReadyBatch { jobs: Vec::new(), stopped_at_byte_limit: false, next_due: None });
        }
        self.note_new_term();
        self.next_claim += 1;
        let claim = self.next_claim;
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let promoted = self.connection.query(PROMOTE_DUE, &[&millis(now), &limit])?;
        for row in &promoted {
            self.deltas.moved(state_of(row.get(0)), JobState::Queued, 1);
        }
        let (higher_before, floor) = super::pick::claim_range(self.queue_head, &mut self.last_full_pick);
        let mut picked = if higher_before > 0 {
            self.connection.query(PICK_HIGHER_PRIORITIES, &[&limit, &higher_before])?
        } else {
            Vec::new()
        };
        let rest = limit - i64::try_from(picked.len()).unwrap_or(limit);
        if rest > 0 {
            picked.extend(self.connection.query(PICK, &[&rest, &floor])?);
        }
        // The next claim looks behind the last job this one took, in that job's band.
        if let Some(head) = picked.iter().filter_map(|row| row.get::<_, Option<i64>>(2)).max() {
            self.queue_head = head;
        }
        let mut ids = Vec::with_capacity(picked.len());
        let mut bytes = 0usize;
        let mut stopped_at_byte_limit = false;
        for row in &picked {
            let size = usize::try_from(row.get::<_, Option<i32>>(1).unwrap_or(0)).unwrap_or(0);
            if !claim_has_room(ids.len(), bytes, size) {
                stopped_at_byte_limit = true;
                break;
            }
            bytes += size;
            ids.push(row.get::<_, uuid::Uuid>(0));
        }
        let mut jobs = Vec::with_capacity(ids.len());
        if !ids.is_empty() {
            let owner = lease.owner.as_uuid();
            let mut taken = self.connection.query(take_sql(), &[&ids, &owner, &claim])?;
            taken.sort_by_key(|row| row.get::<_, Option<i64>>(0));
            let mut undecodable = Vec::new();
            for row in &taken {
                match decode_claimed(row) {
                    Ok(job) => jobs.push(job),
                    Err(error) => undecodable.push((row.get::<_, uuid::Uuid>(1), error)),
                }
            }
            for (id, error) in undecodable {
                self.bury_undecodable(id, &error)?;
            }
        }
        if self.claims_uncertain {
            // Cleared only once this transaction commits: should it fail, the next claim
            // hands them out again.
            self.take_back_unknown_claims(&mut jobs, claim)?;
            self.retaking = true;
        }
        self.pending_handout.extend(jobs.iter().map(|job| job.id));
        let next_due: Option<i64> = self.connection.query(NEXT_DUE, &[])?.first().and_then(|row| row.get(0));
        Ok(ReadyBatch { jobs, stopped_at_byte_limit, next_due: next_due.map(crate::queue::columns::from_millis) })
    }

    /// A start and an end of one attempt in the same flush cost one write: the end also
    /// records the start.
    fn record_progress(
        &mut self,
        started: &[StartedJob],
        finished: &[FinishedJob],
    ) -> Result<RefusedStarts, StorageError> {
        let (started_at, started_only) = split_progress(started, finished);
        let refused = self.write_started(&started_only)?;
        self.write_finished(finished, &started_at)?;
        // A refused copy leaves the job's place in `handed_out` alone: another copy of it,
        // of a newer claim, may be in the window.
        let refused_ids: HashSet<JobId> = refused.iter().map(|(id, _)| *id).collect();
        self.pending_release.extend(
            started
                .iter()
                .map(|start| start.id)
                .filter(|id| !refused_ids.contains(id))
                .chain(finished.iter().map(|end| end.id)),
        );
        if finished.iter().any(|end| end.retry_at.is_some()) {
            // A retry may fall due before the other nodes' timers look.
            self.readied = true;
        }
        Ok(refused)
    }

    fn retry_dead(&mut self, id: JobId) -> Result<Result<(), ControlError>, StorageError> {
        match self.state_of_job(id)? {
            None => return Ok(Err(ControlError::NotFound)),
            Some(JobState::Dead) => {}
            Some(other) => return Ok(Err(ControlError::Conflict(other))),
        }
        let unfinished = self.unfinished()?;
        if unfinished + 1 > i64::try_from(self.capacity).unwrap_or(i64::MAX) {
            let refusal = Refusal::QueueFull {
                unfinished: usize::try_from(unfinished).unwrap_or(0),
                capacity: self.capacity,
                requested: 1,
            };
            return Ok(Err(ControlError::Refused(refusal)));
        }
        let changed = self.connection.execute(
            "UPDATE jobd_jobs SET state = 'queued', attempts = 0,
                 ready_seq = nextval('jobd_ready_seq') + (9 - priority) * 281474976710656::bigint,
                 run_at = NULL, finished_at = NULL
             WHERE id = $1 AND state = 'dead'",
            &[&uuid_of(id)],
        )?;
        if changed == 0 {
            // Another node retried or purged it between the read and the write.
            return Ok(Err(ControlError::NotFound));
        }
        self.deltas.moved(JobState::Dead, JobState::Queued, 1);
        self.readied = true;
        Ok(Ok(()))
    }

    fn cancel(&mut self, id: JobId, now: DateTime<Utc>) -> Result<Result<(), ControlError>, StorageError> {
        // A job queued in this node's window may be cancelled: the Dispatcher took it out
        // before asking. One in another node's window is as good as running: that node
        // may start it at any moment.
        let owner = self.owner();
        let rows = self.connection.query(
            "WITH target AS (SELECT id, state, lease_owner FROM jobd_jobs WHERE id = $1 FOR UPDATE),
                  cancelled AS (
                      UPDATE jobd_jobs j SET state = 'cancelled', finished_at = $2, lease_owner = NULL FROM target
                      WHERE j.id = target.id AND target.state IN ('queued', 'scheduled', 'failed')
                        AND (target.lease_owner IS NULL OR target.lease_owner = $3)
                      RETURNING j.id)
             SELECT target.state, EXISTS (SELECT 1 FROM cancelled), target.lease_owner IS NOT NULL FROM target",
            &[&uuid_of(id), &millis(now), &owner],
        )?;
        let Some(row) = rows.first() else { return Ok(Err(ControlError::NotFound)) };
        let state = state_of(row.get(0));
        if !row.get::<_, bool>(1) {
            // Running (here or on another node), claimed by another node, or finished: as
            // with SQLite, a 409.
            let state = if state == JobState::Queued && row.get::<_, bool>(2) { JobState::Running } else { state };
            return Ok(Err(ControlError::Conflict(state)));
        }
        self.deltas.moved(state, JobState::Cancelled, 1);
        self.pending_release.push(id);
        Ok(Ok(()))
    }

    /// Purges under an advisory lock, so that one node at a time does it; the others find
    /// the lock taken and purge nothing this round.
    fn purge_finished(&mut self, cutoff: DateTime<Utc>, limit: usize) -> Result<usize, StorageError> {
        let locked = self.connection.query("SELECT pg_try_advisory_xact_lock($1)", &[&PURGE_LOCK])?;
        if !locked.first().is_some_and(|row| row.get::<_, bool>(0)) {
            return Ok(0);
        }
        let rows = self.connection.query(
            "DELETE FROM jobd_jobs WHERE id IN (
                 SELECT id FROM jobd_jobs WHERE state IN ('succeeded', 'dead', 'cancelled') AND finished_at < $1
                 LIMIT $2)
             RETURNING state",
            &[&millis(cutoff), &i64::try_from(limit).unwrap_or(i64::MAX)],
        )?;
        let dead = rows.iter().filter(|row| state_of(row.get(0)) == JobState::Dead).count();
        self.deltas.add(JobState::Dead, -(dead as i64));
        Ok(rows.len())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Deltas;
    use crate::job::JobState;

    #[test]
    fn deltas_move_between_counted_states_only() {
        let mut deltas = Deltas::default();
        deltas.moved(JobState::Queued, JobState::Running, 3);
        deltas.moved(JobState::Running, JobState::Succeeded, 2);
        assert_eq!(deltas.by_state, [-3, 0, 1, 0, 0]);
        assert_eq!(deltas.unfinished(), -2);
    }
}
