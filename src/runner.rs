//! Job bodies: what each kind does when a worker runs it, and how long it may take.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::job::{Job, JobKind, JobResult, UploadBody};
use crate::stats::Stats;
use crate::store::{JobStore, StoreError, UploadOptions};

/// Compresses a body for `content_encoding: "gzip"`. It runs on the bodies runtime, whose
/// threads are the job bodies' own, so the CPU it takes delays no actor.
fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::default());
    encoder.write_all(body)?;
    encoder.finish()
}

/// Why a job body failed. The error decides whether another attempt may help.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("upload failed: {0}")]
    Upload(#[from] StoreError),
    #[error("{message}")]
    Requested { message: String, retryable: bool },
}

impl JobError {
    /// Whether another attempt may succeed; a permanent error makes the job dead at once.
    pub fn is_retryable(&self) -> bool {
        match self {
            JobError::Upload(error) => error.is_retryable(),
            JobError::Requested { retryable, .. } => *retryable,
        }
    }

    /// Whether the error says the store itself is unreachable rather than that this job
    /// cannot be written: then the store's other jobs would fail the same way.
    pub fn is_store_unreachable(&self) -> bool {
        matches!(self, JobError::Upload(error) if error.is_unreachable())
    }
}

/// How long one attempt may run: a job's own `timeout_ms`, else its kind's default,
/// else the global default.
#[derive(Debug, Clone)]
pub struct Timeouts {
    pub default: Duration,
    pub by_kind: HashMap<String, Duration>,
}

impl Timeouts {
    pub fn for_job(&self, job: &Job) -> Duration {
        job.timeout_ms
            .map(Duration::from_millis)
            .or_else(|| self.by_kind.get(job.kind.name()).copied())
            .unwrap_or(self.default)
    }
}

/// Everything a job body may use. Shared by all workers.
#[derive(Debug)]
pub struct JobRunner {
    pub store: Arc<JobStore>,
    pub stats: Arc<Stats>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub timeouts: Timeouts,
    /// The runtime job bodies run on, apart from the actors: a body that blocks its
    /// thread holds one of these threads, never the Dispatcher's or another worker's.
    pub bodies: tokio::runtime::Handle,
}

impl JobRunner {
    /// Runs one job to its end. Panics are not caught here: the body runs as a task on
    /// the bodies runtime, whose join handle reports them to the worker.
    pub async fn run(self: Arc<Self>, job: Job) -> Result<JobResult, JobError> {
        let _running = self.stats.body_running();
        match job.kind {
            JobKind::Upload(upload) => {
                let key = match &upload.key {
                    Some(key) => key.path().clone(),
                    None => self.store.default_key(job.id, job.created_at, upload.body.default_extension()),
                };
                let content_type =
                    upload.content_type.as_deref().unwrap_or_else(|| upload.body.default_content_type()).to_owned();
                let mut body = match upload.body {
                    UploadBody::Json(raw) => String::from(Box::<str>::from(raw)).into_bytes(),
                    UploadBody::Bytes(bytes) => bytes,
                };
                if upload.content_encoding.as_deref() == Some("gzip") {
                    body = gzip(&body).map_err(|error| JobError::Requested {
                        message: format!("gzip failed: {error}"),
                        retryable: false,
                    })?;
                }
                let options = UploadOptions {
                    content_type,
                    content_encoding: upload.content_encoding,
                    metadata: upload.metadata,
                };
                Ok(self.store.put(&key, body, &options).await?)
            }
            JobKind::Noop => Ok(JobResult::default()),
            JobKind::Sleep { millis, blocking: false, .. } => {
                tokio::time::sleep(Duration::from_millis(millis)).await;
                Ok(JobResult::default())
            }
            JobKind::Sleep { millis, blocking: true, .. } => {
                // Deliberately blocks the thread, as careless job code would.
                std::thread::sleep(Duration::from_millis(millis));
                Ok(JobResult::default())
            }
            JobKind::Fail { message, retryable } => Err(JobError::Requested { message, retryable }),
            JobKind::Panic { message, .. } => panic!("{message}"),
        }
    }
}
