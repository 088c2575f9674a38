//! Running a job's body: finds the job's kind in the registry and runs it with what job
//! bodies share, within the attempt's time limit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::job::{Job, JobResult};
use crate::kinds::{JobError, Kind, Kinds, Permit, ResolvedKind, RunContext};
use crate::stats::Stats;

/// How long one attempt may run: a job's own `timeout_ms`, else `job_timeouts_ms` for its
/// kind, else the kind's own default, else the global default.
#[derive(Debug, Clone)]
pub struct Timeouts {
    pub default: Duration,
    pub by_kind: HashMap<String, Duration>,
}

impl Timeouts {
    pub fn for_job(&self, job: &Job, kind: Option<&dyn Kind>) -> Duration {
        job.timeout_ms
            .map(Duration::from_millis)
            .or_else(|| self.by_kind.get(job.kind.as_ref()).copied())
            .or_else(|| kind.and_then(Kind::default_timeout))
            .unwrap_or(self.default)
    }
}

/// Everything a job body may use. Shared by all workers.
#[derive(Debug)]
pub struct JobRunner {
    pub kinds: Arc<Kinds>,
    pub context: RunContext,
    pub stats: Arc<Stats>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub timeouts: Timeouts,
    /// The runtime job bodies run on, apart from the actors: a body that blocks its
    /// thread holds one of these threads, never the Dispatcher's or another worker's.
    pub bodies: tokio::runtime::Handle,
}

impl JobRunner {
    /// Runs one job to its end. Panics are not caught here: the body runs as a task on
    /// the bodies runtime, whose join handle reports them to the worker. The kind's
    /// permit, if it gave one, is held until the body ends, is dropped by a timeout, or
    /// panics.
    pub async fn run(
        self: Arc<Self>,
        job: Job,
        resolved: ResolvedKind,
        permit: Option<Permit>,
    ) -> Result<JobResult, JobError> {
        let _permit = permit;
        let _running = self.stats.body_running();
        let Some(kind) = self.kinds.resolved(resolved) else {
            // A row written by a build with a kind this one lacks (or a test kind, with
            // test_kinds now off): no attempt can succeed.
            return Err(JobError::Failed {
                message: format!("unknown kind {:?}; known kinds: {}", job.kind, self.kinds.names_text()),
                retryable: false,
            });
        };
        kind.run(job, &self.context).await
    }
}
