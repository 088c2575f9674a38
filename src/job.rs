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

/// An accepted job: a validated kind plus the identity and time the Ingest actor gave it.
#[derive(Debug)]
pub struct Job {
    pub id: JobId,
    pub created_at: DateTime<Utc>,
    pub kind: JobKind,
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
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
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
}
