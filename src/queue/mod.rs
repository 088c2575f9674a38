//! The job queue: the types every backend shares, the backend seam ([`backend`]), the
//! queue thread that drives a backend ([`thread`]), and the backends themselves.
//!
//! **Architecture Invariant:** a new backend is a module here plus its variant in
//! [`select`]; the rest of jobd reaches backends only through [`QueueHandle`].

mod backend;
mod columns;
#[cfg(test)]
mod conformance;
mod lease;
#[cfg(test)]
mod test_cluster;
// The in-memory backend is a test helper: it keeps nothing across a restart, so no
// operator should run it, and the queue thread's tests need a backend without a disk.
#[cfg(test)]
pub(crate) mod memory;
pub mod postgres;
mod select;
pub mod sqlite;
mod test_hooks;
mod thread;

pub use backend::{JobReader, JobWriter, QueueBackend, RecordReader, Syncer, Transactions};
pub use lease::LeaseClock;
pub use postgres::{ClusterMetrics, ClusterSettings, check_postgres_url, redacted_url};
pub use select::{OpenError, QueueKind, QueueSettings, open};
pub use sqlite::Synchronous;
pub use test_hooks::TestHooks;
pub use thread::{CommitMetrics, ProgressNotRecorded, QueueHandle, QueueLost, QueueThread, SubmissionAnswer, Waker};

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::job::{Job, JobId, JobRecord, JobState};

/// The starts a flush of progress refused, each a job's id and the claim of the copy that
/// must not run: the job moved on to another node or claim, or this node's lease is not
/// proven held.
pub type RefusedStarts = Vec<(JobId, i64)>;

/// A storage failure. Usually the unit of work it belonged to did nothing, and callers
/// answer 503 and keep running. After a failed sync nobody knows whether it did
/// ([`is_outcome_unknown`](Self::is_outcome_unknown)), and the queue is lost.
#[derive(Debug, Clone, thiserror::Error)]
#[error("queue storage failed: {message}")]
pub struct StorageError {
    message: String,
    outcome_unknown: bool,
}

impl StorageError {
    /// A failure that undid its unit of work.
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into(), outcome_unknown: false }
    }

    /// A failure after which what the unit of work wrote may or may not be on disk.
    pub fn outcome_unknown(message: impl Into<String>) -> Self {
        Self { message: message.into(), outcome_unknown: true }
    }

    pub fn is_outcome_unknown(&self) -> bool {
        self.outcome_unknown
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Why one submission of a group was refused while the others may have been accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Accepting the submission would exceed `max_queue` unfinished jobs.
    #[error("the queue holds {unfinished} of at most {capacity} unfinished jobs; {requested} more do not fit")]
    QueueFull { unfinished: usize, capacity: usize, requested: usize },
    /// The queue's storage reached its size limit (`queue_db_max_bytes`).
    #[error("the queue database holds {used_bytes} of at most {limit_bytes} bytes; this request does not fit")]
    StorageFull { used_bytes: u64, limit_bytes: u64 },
}

/// One job of an accepted submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    pub id: JobId,
    pub state: JobState,
    /// False when an earlier job with the same idempotency key answered instead.
    pub created: bool,
}

/// What the backend holds, by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Due and not started (including jobs claimed into the Dispatcher's window).
    pub queued: usize,
    /// Waiting for their `run_at`.
    pub scheduled: usize,
    /// Started and not finished.
    pub running: usize,
    /// Failed and waiting for their retry.
    pub failed: usize,
    /// Failed for good, kept until the retention purge.
    pub dead: usize,
    /// The most unfinished jobs (queued, scheduled, running, failed) the backend accepts.
    pub capacity: usize,
}

impl QueueDepth {
    /// Jobs that will still run: what `max_queue` bounds.
    pub fn unfinished(&self) -> usize {
        self.queued + self.scheduled + self.running + self.failed
    }
}

/// The named queues as the storage knows them ([`JobReader::queues`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueuesView {
    /// Each queue an operator paused or resumed (or the configuration started paused), and
    /// whether it is paused now. A queue not listed runs.
    pub paused: std::collections::BTreeMap<String, bool>,
    /// Unfinished jobs (queued, scheduled, running, failed) by queue and state; a queue
    /// with none is not listed.
    pub depths: std::collections::BTreeMap<String, std::collections::BTreeMap<JobState, u64>>,
}

impl QueuesView {
    /// The queues paused now.
    pub fn paused_names(&self) -> impl Iterator<Item = &str> {
        self.paused.iter().filter(|(_, paused)| **paused).map(|(name, _)| name.as_str())
    }
}

/// The most body bytes one claim hands the Dispatcher beyond its first job. With the
/// Dispatcher's window of jobs, it bounds the memory that claimed jobs hold, however large
/// their bodies, while a window of small jobs can be large.
pub const CLAIM_MAX_BODY_BYTES: usize = 8 << 20;

/// Whether a claim holding `jobs` jobs with `bytes` of bodies may take one more of `more`.
pub(crate) fn claim_has_room(jobs: usize, bytes: usize, more: usize) -> bool {
    jobs == 0 || bytes + more <= CLAIM_MAX_BODY_BYTES
}

/// Ready jobs for the Dispatcher, and when the next delayed job falls due.
#[derive(Debug, Default)]
pub struct ReadyBatch {
    pub jobs: Vec<Job>,
    /// The claim stopped at [`CLAIM_MAX_BODY_BYTES`]: fewer jobs than asked for does not
    /// mean that no more are ready.
    pub stopped_at_byte_limit: bool,
    /// The earliest `run_at` of a scheduled or failed job, if there is one. The
    /// Dispatcher keeps one timer for it: this is the whole timer structure.
    pub next_due: Option<DateTime<Utc>>,
}

/// This process's identity as the holder of claimed jobs: a UUIDv7 made at start, so that
/// no two processes, nor two lives of one process, share it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeId(uuid::Uuid);

impl NodeId {
    /// A new id for this process.
    pub fn generate() -> Self {
        NodeId(uuid::Uuid::now_v7())
    }

    pub fn as_uuid(&self) -> uuid::Uuid {
        self.0
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.as_hyphenated().fmt(f)
    }
}

/// Who holds claimed jobs, and until when. A backend that only one process uses (SQLite)
/// needs no expiry: every job left running is queued again when the next process opens
/// it. A shared one renews `expires_at` while the holder lives, and hands the jobs of an
/// expired lease to another node, refusing the late writes of their old holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub owner: NodeId,
    /// `None`: held for the life of the process.
    pub expires_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
impl Lease {
    /// A lease for a test's own process.
    pub(crate) fn for_test() -> Lease {
        Lease { owner: NodeId::generate(), expires_at: None }
    }
}

/// Why a retry or cancel request was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("no such job")]
    NotFound,
    #[error("the job is {}", .0.name())]
    Conflict(JobState),
    #[error(transparent)]
    Refused(#[from] Refusal),
}

/// Which jobs a listing shows.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs this token submitted: the listing of a token confined by
    /// `allowed_key_prefixes`.
    pub submitted_by: Option<String>,
    /// Only jobs of this kind.
    pub kind: Option<String>,
}

/// A page of a listing, newest first.
#[derive(Debug, Default)]
pub struct JobPage {
    pub records: Vec<JobRecord>,
    /// Pass as `before` for the next page; `None` on the last page.
    pub next_before: Option<Cursor>,
}

/// Where a page of a listing ended: the next page shows older jobs. SQLite and the memory
/// queue order listings by their insertion sequence; PostgreSQL orders them by job id
/// (a UUIDv7, ordered by creation time), which needs no index beyond the primary key and
/// no sequence the nodes would share. The API shows a cursor as text: digits, or an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    Seq(i64),
    Id(JobId),
}

impl Cursor {
    /// Reads a cursor the API handed out, in the form the backend (`by_id` or not) lists by.
    pub fn parse(text: &str, by_id: bool) -> Option<Cursor> {
        if by_id { JobId::parse(text).map(Cursor::Id) } else { text.parse().ok().map(Cursor::Seq) }
    }

    /// For a backend that lists by sequence: the sequence a page starts below, all of
    /// them without a cursor. [`QueueHandle::parse_cursor`] only makes the form the
    /// backend lists by, so an id here is a bug, answered as a storage error.
    pub(crate) fn seq_before(before: Option<Cursor>) -> Result<i64, StorageError> {
        match before {
            None => Ok(i64::MAX),
            Some(Cursor::Seq(seq)) => Ok(seq),
            Some(Cursor::Id(_)) => Err(StorageError::new("this queue lists by sequence, not by job id")),
        }
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cursor::Seq(seq) => write!(f, "{seq}"),
            Cursor::Id(id) => write!(f, "{id}"),
        }
    }
}

/// The queue's health as `/readyz` and `/v1/stats` see it.
#[derive(Debug, Clone)]
pub struct QueueStatus {
    pub depth: QueueDepth,
    /// [`QueueBackend::queue_id`]: the `queue` label of the queue-wide series.
    pub queue_id: Arc<str>,
    /// When the oldest queued job became due; its age is how far the queue lags. A shared
    /// queue reports only the jobs no node holds: each node adds its own window's
    /// ([`crate::stats::Stats::earliest_due`]).
    pub oldest_queued_at: Option<DateTime<Utc>>,
    pub durable: bool,
    /// Whether the latest write committed; false after a storage fault until a write succeeds.
    pub writable: bool,
}

/// Decides, for each job of a submission, whether it is new or answered by an earlier job
/// with the same idempotency key: one found by `find_earlier`, or one earlier in the same
/// submission. Returns the answers and, per job, whether it is new. Shared by backends.
pub(crate) fn admit(
    submission: &[Job],
    mut find_earlier: impl FnMut(&str) -> Result<Option<(JobId, JobState)>, StorageError>,
) -> Result<(Vec<Admitted>, Vec<bool>), StorageError> {
    let mut admitted = Vec::with_capacity(submission.len());
    let mut is_new = Vec::with_capacity(submission.len());
    let mut keys_in_submission = std::collections::HashMap::new();
    for job in submission {
        let earlier = match job.idempotency_key.as_deref() {
            None => None,
            Some(key) => match keys_in_submission.get(key) {
                Some(&id) => Some((id, JobState::Queued)),
                None => find_earlier(key)?,
            },
        };
        match earlier {
            Some((id, state)) => {
                admitted.push(Admitted { id, state, created: false });
                is_new.push(false);
            }
            None => {
                if let Some(key) = job.idempotency_key.as_deref() {
                    keys_in_submission.insert(key, job.id);
                }
                admitted.push(Admitted { id: job.id, state: JobState::Queued, created: true });
                is_new.push(true);
            }
        }
    }
    Ok((admitted, is_new))
}
