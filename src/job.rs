//! The job model: ids, validated job specifications, and the outcome of one run.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::keys::ObjectKey;

/// A job's identity: a UUIDv7, so that ids are unique and sort by creation time.
///
/// The hyphenated lowercase text form sorts the same way as the time order, because
/// UUIDv7 puts the millisecond timestamp in its most significant bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, format = Uuid)]
pub struct JobId(Uuid);

impl JobId {
    /// The id's 16 bytes, big-endian, which sort in time order.
    pub fn to_bytes(self) -> [u8; 16] {
        *self.0.as_bytes()
    }

    /// The id's 16 bytes, borrowed.
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// The id with these 16 bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(Uuid::from_bytes(bytes))
    }

    /// Parses the hyphenated text form.
    pub fn parse(text: &str) -> Option<Self> {
        Uuid::try_parse(text).ok().map(Self)
    }

    /// Creates a new id. `Uuid::now_v7` guarantees ids from one process are ordered by
    /// creation, even within the same millisecond.
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.as_hyphenated().fmt(f)
    }
}

/// What a job does. Test kinds exist only when `test_kinds` is enabled.
#[derive(Debug, Clone)]
pub enum JobKind {
    /// Writes a body to the object store.
    Upload(UploadSpec),
    /// Succeeds at once; used by benchmarks to measure the queue itself.
    Noop,
    /// Test kind: sleeps, then succeeds. With `blocking`, it blocks its thread instead of
    /// yielding, like a careless job body would. With `in_worker`, it blocks the Worker
    /// actor's own thread, which wedges the Dispatcher's loop (to test the watchdog).
    Sleep { millis: u64, blocking: bool, in_worker: bool },
    /// Test kind: returns an error, retryable or not.
    Fail { message: String, retryable: bool },
    /// Test kind: panics inside the job body, or with `in_worker` inside the Worker
    /// actor itself, outside the body's containment (to exercise worker replacement).
    Panic { message: String, in_worker: bool },
}

impl JobKind {
    /// The kind's name as it appears in requests, logs and metrics labels.
    pub fn name(&self) -> &'static str {
        match self {
            JobKind::Upload(_) => "upload",
            JobKind::Noop => "noop",
            JobKind::Sleep { .. } => "sleep",
            JobKind::Fail { .. } => "fail",
            JobKind::Panic { .. } => "panic",
        }
    }

    /// Whether the job writes to the object store, and so waits while the store is down.
    pub fn uses_store(&self) -> bool {
        matches!(self, JobKind::Upload(_))
    }

    /// Whether a worker runs the job on its own thread, without a body task: only `noop`,
    /// which cannot block, panic or take the process down, so it need not wait for its
    /// start to be recorded.
    pub fn runs_inline(&self) -> bool {
        matches!(self, JobKind::Noop)
    }

    /// The bytes of the body the job carries (only `upload` carries one).
    pub fn body_len(&self) -> usize {
        match self {
            JobKind::Upload(upload) => upload.body.as_bytes().len(),
            _ => 0,
        }
    }
}

/// An `upload` job: what to write and where.
#[derive(Debug, Clone)]
pub struct UploadSpec {
    pub body: UploadBody,
    /// The object key; `None` means the default `<key_prefix>/<yyyy>/<mm>/<dd>/<id>.<ext>`.
    pub key: Option<ObjectKey>,
    /// The Content-Type to record where the store supports it.
    pub content_type: Option<String>,
    /// `Some("gzip")` compresses the body before upload and records `Content-Encoding`.
    pub content_encoding: Option<String>,
    /// User metadata to record with the object (S3 `x-amz-meta-*`).
    pub metadata: Vec<(String, String)>,
}

/// The bytes an upload writes.
#[derive(Debug, Clone)]
pub enum UploadBody {
    /// A JSON payload, kept as the exact bytes the client sent.
    Json(Box<RawValue>),
    /// Raw bytes, decoded from `body_base64`.
    Bytes(Vec<u8>),
}

impl UploadBody {
    /// The bytes to write.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            UploadBody::Json(raw) => raw.get().as_bytes(),
            UploadBody::Bytes(bytes) => bytes,
        }
    }

    /// The Content-Type used when the job names none.
    pub fn default_content_type(&self) -> &'static str {
        match self {
            UploadBody::Json(_) => "application/json",
            UploadBody::Bytes(_) => "application/octet-stream",
        }
    }

    /// The file extension of the default key.
    pub fn default_extension(&self) -> &'static str {
        match self {
            UploadBody::Json(_) => "json",
            UploadBody::Bytes(_) => "bin",
        }
    }
}

/// A validated job as submitted, before it has an id.
#[derive(Debug)]
pub struct JobSpec {
    pub kind: JobKind,
    /// A client's key for deduplication: a second job with the same key, within the
    /// retention window, is not created; the first one is answered instead.
    pub idempotency_key: Option<String>,
    /// Attempts before the job is dead; `None` means the configured default.
    pub max_attempts: Option<u32>,
    /// How long one attempt may take; `None` means the configured default for its kind.
    pub timeout_ms: Option<u64>,
    /// When the job becomes due; `None` means now.
    pub run_at: Option<DateTime<Utc>>,
}

impl JobSpec {
    /// A spec with every option at its default.
    pub fn new(kind: JobKind) -> Self {
        Self { kind, idempotency_key: None, max_attempts: None, timeout_ms: None, run_at: None }
    }
}

/// An accepted job: a validated kind plus the identity and time the Ingest actor gave it.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: JobId,
    pub created_at: DateTime<Utc>,
    /// Which attempt this run is, from 1; set when the Dispatcher claims the job.
    pub attempt: u32,
    pub max_attempts: u32,
    pub timeout_ms: Option<u64>,
    /// When the job is due, if not at once.
    pub run_at: Option<DateTime<Utc>>,
    pub idempotency_key: Option<String>,
    /// The name of the token that submitted the job; `None` without authentication.
    /// Idempotency keys are scoped by it, and a token confined by `allowed_key_prefixes`
    /// reads only the jobs it submitted.
    pub submitted_by: Option<String>,
    pub kind: JobKind,
}

impl Job {
    /// The memory the job takes: the struct, its body and its idempotency key. Memory
    /// bounds on held jobs (the Dispatcher's window, the queue's buffer of fresh jobs)
    /// count this.
    pub fn footprint(&self) -> usize {
        std::mem::size_of::<Job>()
            + self.kind.body_len()
            + self.idempotency_key.as_ref().map_or(0, String::len)
            + self.submitted_by.as_ref().map_or(0, String::len)
    }
}

#[cfg(test)]
impl Job {
    /// A new job of `kind` with every option at a plain default, for unit tests.
    pub(crate) fn for_test(kind: JobKind) -> Job {
        Job {
            id: JobId::generate(),
            created_at: Utc::now(),
            attempt: 0,
            max_attempts: 3,
            timeout_ms: None,
            run_at: None,
            idempotency_key: None,
            submitted_by: None,
            kind,
        }
    }

    /// A new `upload` job with a body of `bytes` bytes, for unit tests.
    pub(crate) fn upload_for_test(bytes: usize) -> Job {
        Job::for_test(JobKind::Upload(UploadSpec {
            body: UploadBody::Bytes(vec![7; bytes]),
            key: None,
            content_type: None,
            content_encoding: None,
            metadata: Vec::new(),
        }))
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Due and waiting for a worker.
    Queued,
    /// Accepted with a `run_at` or `delay_ms` that has not come yet.
    Scheduled,
    /// A worker is running it.
    Running,
    /// It did its work.
    Succeeded,
    /// Its latest attempt failed; it will be retried at its `run_at`.
    Failed,
    /// It failed for good: a permanent error, or `max_attempts` used up.
    Dead,
    /// Cancelled by a client before it ran.
    Cancelled,
}

impl JobState {
    /// Every state, for listings and metrics.
    pub const ALL: [JobState; 7] = [
        JobState::Queued,
        JobState::Scheduled,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Dead,
        JobState::Cancelled,
    ];

    /// The state's name in the API, the database and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Scheduled => "scheduled",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    /// The state a name stands for.
    pub fn from_name(name: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|state| state.name() == name)
    }

    /// Whether the job will never run again (unless a client retries a dead one).
    pub fn is_finished(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Dead | JobState::Cancelled)
    }
}

/// Everything the queue knows about one job, as `GET /v1/jobs/{id}` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobRecord {
    pub id: JobId,
    pub kind: String,
    pub state: JobState,
    pub attempts: u32,
    pub max_attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    pub created_at: DateTime<Utc>,
    /// When the job is (or was) due, for scheduled jobs and retries.
    pub run_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub result: Option<JobResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The name of the token that submitted the job; absent without authentication.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub submitted_by: Option<String>,
    /// The payload, only when asked for: it can be large.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<serde_json::Value>)]
    pub payload: Option<Box<RawValue>>,
}

/// How one attempt of a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The job did its work; for uploads, where the object went.
    Succeeded(JobResult),
    /// The job body returned an error; `retryable` is the error's own verdict.
    Failed { error: String, retryable: bool },
    /// The attempt ran past its timeout and was abandoned. Retryable.
    TimedOut { after_ms: u64 },
    /// The job body panicked; the panic was contained and the worker restarted. Retryable:
    /// a panic may come from a transient condition, and `max_attempts` bounds the cost.
    Panicked { message: String },
    /// The worker running the job died; the Dispatcher replaced it. Retryable.
    WorkerLost,
    /// The object store could not be reached (connection refused or reset, DNS, timeout,
    /// 5xx, `SlowDown`). Retryable; the Dispatcher holds the store's jobs until a probe
    /// finds it up, so an outage costs a job about one attempt, not all of them.
    StoreUnreachable { error: String },
}

impl Outcome {
    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Outcome::Succeeded(_) => false,
            Outcome::Failed { retryable, .. } => *retryable,
            Outcome::TimedOut { .. }
            | Outcome::Panicked { .. }
            | Outcome::WorkerLost
            | Outcome::StoreUnreachable { .. } => true,
        }
    }

    /// The error recorded on the job, if the attempt failed.
    pub fn error(&self) -> Option<String> {
        match self {
            Outcome::Succeeded(_) => None,
            Outcome::Failed { error, .. } | Outcome::StoreUnreachable { error } => Some(error.clone()),
            Outcome::TimedOut { after_ms } => Some(format!("timed out after {after_ms} ms")),
            Outcome::Panicked { message } => Some(format!("panicked: {message}")),
            Outcome::WorkerLost => Some("the worker running the job died".to_owned()),
        }
    }

    /// The outcome's name as it appears in logs and metrics labels.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Succeeded(_) => "succeeded",
            Outcome::Failed { .. } => "failed",
            Outcome::TimedOut { .. } => "timed_out",
            Outcome::Panicked { .. } => "panicked",
            Outcome::WorkerLost => "worker_lost",
            Outcome::StoreUnreachable { .. } => "store_unreachable",
        }
    }
}

/// What a successful job produced.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct JobResult {
    /// The object key an upload wrote, relative to the store root.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The number of bytes written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The ETag the store returned, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

/// A finished attempt, as the Dispatcher reports it to the queue backend.
#[derive(Debug, Clone)]
pub struct FinishedJob {
    pub id: JobId,
    pub kind: &'static str,
    pub outcome: Outcome,
    pub finished_at: DateTime<Utc>,
    /// When to try again; `None` means the outcome is final.
    pub retry_at: Option<DateTime<Utc>>,
}

impl FinishedJob {
    /// An attempt that succeeded with nothing to report (a `noop`'s), final.
    pub fn succeeded(id: JobId, kind: &'static str, finished_at: DateTime<Utc>) -> Self {
        FinishedJob { id, kind, outcome: Outcome::Succeeded(JobResult::default()), finished_at, retry_at: None }
    }

    /// The state the job is in after this attempt.
    pub fn state(&self) -> JobState {
        match (&self.outcome, self.retry_at) {
            (Outcome::Succeeded(_), _) => JobState::Succeeded,
            (_, Some(_)) => JobState::Failed,
            (_, None) => JobState::Dead,
        }
    }
}

/// A job a worker started, as the Dispatcher reports it to the queue backend.
#[derive(Debug, Clone, Copy)]
pub struct StartedJob {
    pub id: JobId,
    pub started_at: DateTime<Utc>,
}
