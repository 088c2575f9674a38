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
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct JobId(Uuid);

impl JobId {
    /// The id's 16 bytes, big-endian, which sort in time order.
    pub fn to_bytes(self) -> [u8; 16] {
        *self.0.as_bytes()
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
#[derive(Debug)]
pub enum JobKind {
    /// Writes a body to the object store.
    Upload(UploadSpec),
    /// Succeeds at once; used by benchmarks to measure the queue itself.
    Noop,
    /// Test kind: sleeps asynchronously, then succeeds.
    Sleep { millis: u64 },
    /// Test kind: returns an error.
    Fail { message: String },
    /// Test kind: panics inside the job body.
    Panic { message: String },
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
}

/// An `upload` job: what to write and where.
#[derive(Debug)]
pub struct UploadSpec {
    pub body: UploadBody,
    /// The object key; `None` means the default `<key_prefix>/<yyyy>/<mm>/<dd>/<id>.<ext>`.
    pub key: Option<ObjectKey>,
    /// The Content-Type to record where the store supports it.
    pub content_type: Option<String>,
}

/// The bytes an upload writes.
#[derive(Debug)]
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
}

/// An accepted job: a validated kind plus the identity and time the Ingest actor gave it.
#[derive(Debug)]
pub struct Job {
    pub id: JobId,
    pub created_at: DateTime<Utc>,
    /// Which attempt this run is, from 1; set when the Dispatcher claims the job.
    pub attempt: u32,
    pub idempotency_key: Option<String>,
    pub kind: JobKind,
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Accepted and waiting for a worker.
    Queued,
    /// A worker is running it.
    Running,
    /// It did its work.
    Succeeded,
    /// Its latest attempt failed and it will be retried.
    Failed,
    /// It failed and will not be retried.
    Dead,
}

impl JobState {
    /// Every state, for listings and metrics.
    pub const ALL: [JobState; 5] =
        [JobState::Queued, JobState::Running, JobState::Succeeded, JobState::Failed, JobState::Dead];

    /// The state's name in the API, the database and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Dead => "dead",
        }
    }

    /// The state a name stands for.
    pub fn from_name(name: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|state| state.name() == name)
    }

    /// Whether the job will never run again.
    pub fn is_finished(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Dead)
    }
}

/// Everything the queue knows about one job, as `GET /v1/jobs/{id}` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct JobRecord {
    pub id: JobId,
    pub kind: String,
    pub state: JobState,
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub result: Option<JobResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The payload, only when asked for: it can be large.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Box<RawValue>>,
}

/// How one run of a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The job did its work; for uploads, where the object went.
    Succeeded(JobResult),
    /// The job body returned an error.
    Failed { error: String },
    /// The job body panicked; the panic was caught and the worker restarted.
    Panicked { message: String },
}

impl Outcome {
    /// The state a job is in after this outcome. Retries arrive with the failure-handling
    /// work; until then a failed or panicked job is not retried and so is dead.
    pub fn final_state(&self) -> JobState {
        match self {
            Outcome::Succeeded(_) => JobState::Succeeded,
            Outcome::Failed { .. } | Outcome::Panicked { .. } => JobState::Dead,
        }
    }

    /// The outcome's name as it appears in logs and metrics labels.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Succeeded(_) => "succeeded",
            Outcome::Failed { .. } => "failed",
            Outcome::Panicked { .. } => "panicked",
        }
    }
}

/// What a successful job produced.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
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

/// A finished run, as the Dispatcher reports it to the queue backend.
#[derive(Debug, Clone)]
pub struct FinishedJob {
    pub id: JobId,
    pub kind: &'static str,
    pub outcome: Outcome,
    pub finished_at: DateTime<Utc>,
}

/// A job a worker started, as the Dispatcher reports it to the queue backend.
#[derive(Debug, Clone, Copy)]
pub struct StartedJob {
    pub id: JobId,
    pub started_at: DateTime<Utc>,
}
