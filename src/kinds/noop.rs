//! The `noop` kind: succeeds at once. Benchmarks use it to measure the queue itself.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::{
    FieldProblem, JobError, Kind, KindSettings, Placement, Registration, RequestFields, RunContext, RunsOn, Starts,
    Validated,
};
use crate::job::{Job, JobResult, Outcome};

pub const REGISTRATION: Registration = Registration {
    name: "noop",
    test_only: false,
    build: |_: &KindSettings, _: &prometheus::Registry| -> Result<Arc<dyn Kind>, super::BuildError> {
        Ok(Arc::new(Noop))
    },
    request_schema: || utoipa::openapi::ObjectBuilder::new().into(),
    settings: None,
    token_limit: None,
};

#[derive(Debug)]
struct Noop;

impl Kind for Noop {
    fn name(&self) -> &'static str {
        "noop"
    }

    /// A `payload` is accepted and dropped: benchmarks send noop jobs of a realistic size,
    /// and the queue's cost is then measured without storing their bytes.
    fn validate(&self, fields: &mut RequestFields<'_>) -> Result<Validated, FieldProblem> {
        fields.take_raw("payload");
        Ok(Validated::default())
    }

    fn run(&self, _job: Job, _context: &RunContext) -> BoxFuture<'static, Result<JobResult, JobError>> {
        Box::pin(std::future::ready(Ok(JobResult::default())))
    }

    /// A noop cannot block, panic or have an effect: it runs on the worker's thread, which
    /// saves two thread crossings, and at once.
    fn placement(&self, _job: &Job) -> Placement {
        Placement { runs_on: RunsOn::WorkerThread, starts: Starts::AtOnce }
    }

    fn run_on_worker_thread(&self, _job: &Job) -> Outcome {
        Outcome::Succeeded(JobResult::default())
    }
}
