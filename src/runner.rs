//! Job bodies: what each kind does when a worker runs it.

use std::sync::Arc;
use std::time::Duration;

use crate::job::{Job, JobKind, JobResult};
use crate::stats::Stats;
use crate::store::JobStore;

/// Why a job body failed. The message is recorded on the job.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("upload failed: {0}")]
    Upload(#[from] crate::store::StoreError),
    #[error("{0}")]
    Requested(String),
}

/// Everything a job body may use. Shared by all workers.
#[derive(Debug)]
pub struct JobRunner {
    pub store: Arc<JobStore>,
    pub stats: Arc<Stats>,
}

impl JobRunner {
    /// Runs one job to its end. Panics are not caught here: the worker catches them,
    /// because it also has to restart itself afterwards.
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
                let body = match upload.body {
                    crate::job::UploadBody::Json(raw) => String::from(Box::<str>::from(raw)).into_bytes(),
                    crate::job::UploadBody::Bytes(bytes) => bytes,
                };
                Ok(self.store.put(&key, body, &content_type).await?)
            }
            JobKind::Noop => Ok(JobResult::default()),
            JobKind::Sleep { millis } => {
                tokio::time::sleep(Duration::from_millis(millis)).await;
                Ok(JobResult::default())
            }
            JobKind::Fail { message } => Err(JobError::Requested(message)),
            JobKind::Panic { message } => panic!("{message}"),
        }
    }
}
