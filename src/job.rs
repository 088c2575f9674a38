//! The job model: ids, validated job specifications, and the outcome of one run.

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use uuid::Uuid;

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

/// The bytes a job carries beside its arguments: an upload's payload, a webhook's event.
/// The queue stores them apart from the arguments, so that a large body is never parsed.
#[derive(Debug, Clone)]
pub struct Body {
    pub bytes: Vec<u8>,
    /// Whether the bytes are the exact JSON text a client sent, which listings show as
    /// JSON; otherwise they are shown as base64.
    pub is_json: bool,
}

impl Body {
    /// A JSON payload, kept as the exact bytes the client sent.
    pub fn json(raw: Box<RawValue>) -> Self {
        Body { bytes: String::from(Box::<str>::from(raw)).into_bytes(), is_json: true }
    }

    /// Raw bytes.
    pub fn bytes(bytes: Vec<u8>) -> Self {
        Body { bytes, is_json: false }
    }
}

/// A kind's name: borrowed from the registry for jobs made in this process, owned for jobs
/// read back from storage, which may name a kind this build does not have.
pub type KindName = Cow<'static, str>;

/// The queue a job runs in when it names none; it always exists.
pub const DEFAULT_QUEUE: &str = "default";

/// A named queue's name. The default queue's (most jobs') is no allocation and no shared
/// count: a count that every job's clone and drop touched, from the HTTP workers, the
/// queue thread and the workers at once, cost a tenth of the end-to-end rate of noop jobs
/// as its cache line moved between the cores. Other queues' names are shared (`Arc`), since
/// one node holds thousands of jobs of a queue in its window.
#[derive(Clone, Default)]
pub struct QueueName(Option<std::sync::Arc<str>>);

impl QueueName {
    /// Whether it names the default queue.
    pub fn is_default(&self) -> bool {
        self.0.is_none()
    }
}

impl std::ops::Deref for QueueName {
    type Target = str;

    fn deref(&self) -> &str {
        self.0.as_deref().unwrap_or(DEFAULT_QUEUE)
    }
}

impl AsRef<str> for QueueName {
    fn as_ref(&self) -> &str {
        self
    }
}

impl PartialEq for QueueName {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for QueueName {}

impl std::hash::Hash for QueueName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (**self).hash(state);
    }
}

impl fmt::Debug for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

/// The default queue's name.
pub fn default_queue() -> QueueName {
    QueueName(None)
}

/// The name of a queue, read back from storage or from a request.
pub fn queue_name(name: &str) -> QueueName {
    if name == DEFAULT_QUEUE { QueueName(None) } else { QueueName(Some(std::sync::Arc::from(name))) }
}

/// The lowest and highest priority a job may have: a higher one starts first.
pub const MAX_PRIORITY: u8 = 9;
/// A job's priority when it names none: the middle of the range, so that bulk work can be
/// put below the rest as well as urgent work above it (Faktory's convention).
pub const DEFAULT_PRIORITY: u8 = 5;

/// A validated job as submitted, before it has an id.
#[derive(Debug)]
pub struct JobSpec {
    /// The kind's name, from the registry (`crate::kinds`).
    pub kind: &'static str,
    /// The kind's arguments as JSON; `None` when it takes none.
    pub args: Option<Box<RawValue>>,
    pub body: Option<Body>,
    /// A client's key for deduplication: a second job with the same key, within the
    /// retention window, is not created; the first one is answered instead.
    pub idempotency_key: Option<String>,
    /// Attempts before the job is dead; `None` means the configured default.
    pub max_attempts: Option<u32>,
    /// How long one attempt may take; `None` means the configured default for its kind.
    pub timeout_ms: Option<u64>,
    /// When the job becomes due; `None` means now.
    pub run_at: Option<DateTime<Utc>>,
    /// The queue it runs in; `None` means [`DEFAULT_QUEUE`]. The submission's parse checks
    /// the name's form; the HTTP layer checks that the queue is declared.
    pub queue: Option<QueueName>,
    /// 0 to [`MAX_PRIORITY`]; `None` means [`DEFAULT_PRIORITY`].
    pub priority: Option<u8>,
}

impl JobSpec {
    /// A spec of `kind` with its arguments and body, and every option at its default.
    pub fn new(kind: &'static str, args: Option<Box<RawValue>>, body: Option<Body>) -> Self {
        Self {
            kind,
            args,
            body,
            idempotency_key: None,
            max_attempts: None,
            timeout_ms: None,
            run_at: None,
            queue: None,
            priority: None,
        }
    }

    /// The bytes of the body the job carries.
    pub fn body_len(&self) -> usize {
        self.body.as_ref().map_or(0, |body| body.bytes.len())
    }
}

/// An accepted job: the envelope the queue stores and returns without interpreting it. The
/// kind's arguments and body mean something only to the kind (`crate::kinds`); the rest is
/// what every job has.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: JobId,
    pub created_at: DateTime<Utc>,
    /// Which attempt this run is, from 1; set when the Dispatcher claims the job.
    pub attempt: u32,
    /// Which claim handed the job out (PostgreSQL's claim epoch; 0 for a queue only this
    /// process uses): a copy of the job from an older claim cannot record anything, so one
    /// node never runs two copies of one attempt.
    pub claim: i64,
    pub max_attempts: u32,
    pub timeout_ms: Option<u64>,
    /// When the job is due, if not at once.
    pub run_at: Option<DateTime<Utc>>,
    pub idempotency_key: Option<String>,
    /// The name of the token that submitted the job; `None` without authentication.
    /// Idempotency keys are scoped by it, and a token confined by `allowed_key_prefixes`
    /// reads only the jobs it submitted.
    pub submitted_by: Option<String>,
    pub kind: KindName,
    /// The queue it runs in ([`DEFAULT_QUEUE`] unless it named one).
    pub queue: QueueName,
    /// Within its queue, a job of higher priority starts first; equal ones in order.
    pub priority: u8,
    /// The kind's arguments as JSON; `None` when it takes none.
    pub args: Option<Box<RawValue>>,
    pub body: Option<Body>,
}

impl Job {
    /// The bytes of the body the job carries.
    pub fn body_len(&self) -> usize {
        self.body.as_ref().map_or(0, |body| body.bytes.len())
    }

    /// When the job became due: its `run_at`, or its submission if that is later (or it
    /// has none).
    pub fn due(&self) -> DateTime<Utc> {
        self.run_at.map_or(self.created_at, |run_at| run_at.max(self.created_at))
    }

    /// The memory the job takes: the struct, its body and its idempotency key. Memory
    /// bounds on held jobs (the Dispatcher's window, the queue's buffer of fresh jobs)
    /// count this.
    pub fn footprint(&self) -> usize {
        std::mem::size_of::<Job>()
            + self.body_len()
            + self.args.as_ref().map_or(0, |args| args.get().len())
            + self.idempotency_key.as_ref().map_or(0, String::len)
            + self.submitted_by.as_ref().map_or(0, String::len)
    }
}

#[cfg(test)]
impl Job {
    /// A new job of `kind`, without arguments or body, with every option at a plain
    /// default, for unit tests.
    pub(crate) fn for_test(kind: &'static str) -> Job {
        Job {
            id: JobId::generate(),
            created_at: Utc::now(),
            attempt: 0,
            claim: 0,
            max_attempts: 3,
            timeout_ms: None,
            run_at: None,
            idempotency_key: None,
            submitted_by: None,
            kind: Cow::Borrowed(kind),
            queue: default_queue(),
            priority: DEFAULT_PRIORITY,
            args: None,
            body: None,
        }
    }

    /// A new `upload` job with a body of `bytes` bytes, for unit tests.
    pub(crate) fn upload_for_test(bytes: usize) -> Job {
        Job { body: Some(Body::bytes(vec![7; bytes])), ..Job::for_test("upload") }
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, utoipa::ToSchema)]
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
    /// The queue it runs in.
    pub queue: String,
    /// 0 to 9; a higher one starts first.
    pub priority: u8,
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
    /// The error of the latest attempt, if it failed; a success clears it. Every attempt's
    /// error is in the logs, with the job's id.
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
    /// Where the job writes or sends, as its kind names it (an upload's object key, a
    /// webhook's destination), whether or not it got there: a dead upload says which key
    /// it failed to write. Filled in by the HTTP layer from the kind ([`crate::kinds::Kind::target`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The kind's arguments, as stored; only the kind reads them.
    #[serde(skip)]
    #[schema(ignore)]
    pub args: Option<Box<RawValue>>,
    /// Whether the body is JSON, which an upload's default key follows (`.json` or `.bin`).
    #[serde(skip)]
    #[schema(ignore)]
    pub body_is_json: bool,
}

/// How one attempt of a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The job did its work; for uploads, where the object went.
    Succeeded(JobResult),
    /// The job body returned an error; `retryable` is the error's own verdict.
    Failed { error: String, retryable: bool },
    /// The other side asked to be tried again no sooner than `retry_after` (an HTTP
    /// `Retry-After` with a `429` or `503`). Retryable; the retry waits at least that long.
    Deferred { error: String, retry_after: std::time::Duration },
    /// The attempt ran past its timeout and was abandoned. Retryable.
    TimedOut { after_ms: u64 },
    /// The job body panicked; the panic was contained and the worker restarted. Retryable:
    /// a panic may come from a transient condition, and `max_attempts` bounds the cost.
    Panicked { message: String },
    /// The worker running the job died; the Dispatcher replaced it. Retryable.
    WorkerLost,
    /// The node stopped the attempt because it could no longer prove that it held the
    /// job's lease (a partition from the database, or a stall): another node may take the
    /// job at any moment. Retryable, and never the reason a job dies: the job did nothing
    /// wrong.
    Interrupted,
}

impl Outcome {
    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Outcome::Succeeded(_) => false,
            Outcome::Failed { retryable, .. } => *retryable,
            Outcome::TimedOut { .. }
            | Outcome::Deferred { .. }
            | Outcome::Panicked { .. }
            | Outcome::WorkerLost
            | Outcome::Interrupted => true,
        }
    }

    /// The error recorded on the job, if the attempt failed.
    pub fn error(&self) -> Option<String> {
        match self {
            Outcome::Succeeded(_) => None,
            Outcome::Failed { error, .. } | Outcome::Deferred { error, .. } => Some(error.clone()),
            Outcome::TimedOut { after_ms } => Some(format!("timed out after {after_ms} ms")),
            Outcome::Panicked { message } => Some(format!("panicked: {message}")),
            Outcome::WorkerLost => Some("the worker running the job died".to_owned()),
            Outcome::Interrupted => {
                Some("stopped: the node could not prove that it still held the job's lease".to_owned())
            }
        }
    }

    /// The outcome's name as it appears in logs and metrics labels.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Succeeded(_) => "succeeded",
            // A deferred attempt failed; when it may run again is the retry's business.
            Outcome::Failed { .. } | Outcome::Deferred { .. } => "failed",
            Outcome::TimedOut { .. } => "timed_out",
            Outcome::Panicked { .. } => "panicked",
            Outcome::WorkerLost => "worker_lost",
            Outcome::Interrupted => "interrupted",
        }
    }
}

/// What a successful job produced, as a JSON object whose fields are the kind's business:
/// an upload's `key`, `size` and `etag`. Empty for kinds that produce nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = Object)]
pub struct JobResult(pub serde_json::Map<String, serde_json::Value>);

impl JobResult {
    /// A result with these fields; `None` values are left out.
    pub fn with(fields: impl IntoIterator<Item = (&'static str, Option<serde_json::Value>)>) -> Self {
        JobResult(fields.into_iter().filter_map(|(name, value)| value.map(|value| (name.to_owned(), value))).collect())
    }
}

/// A finished attempt, as the Dispatcher reports it to the queue backend.
#[derive(Debug, Clone)]
pub struct FinishedJob {
    pub id: JobId,
    /// The attempt that ended, as its claim numbered it: a backend shared between
    /// processes records the end only while the job is still on that attempt.
    pub attempt: u32,
    /// The claim the attempt ran under (see [`Job::claim`]).
    pub claim: i64,
    pub kind: &'static str,
    pub outcome: Outcome,
    pub finished_at: DateTime<Utc>,
    /// When to try again; `None` means the outcome is final.
    pub retry_at: Option<DateTime<Utc>>,
}

impl FinishedJob {
    /// An attempt that succeeded with nothing to report (a `noop`'s), final.
    pub fn succeeded(id: JobId, attempt: u32, kind: &'static str, finished_at: DateTime<Utc>) -> Self {
        FinishedJob {
            id,
            attempt,
            claim: 0,
            kind,
            outcome: Outcome::Succeeded(JobResult::default()),
            finished_at,
            retry_at: None,
        }
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
    /// The attempt that started, as its claim numbered it.
    pub attempt: u32,
    /// The claim the attempt runs under (see [`Job::claim`]).
    pub claim: i64,
    pub started_at: DateTime<Utc>,
}
