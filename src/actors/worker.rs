//! The Worker actor: runs one job at a time, contains the job's panics, and restarts
//! itself under actix supervision when a job panicked.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use actix::prelude::*;
use futures_util::FutureExt as _;
use tracing::Instrument as _;

use super::dispatcher::{Dispatcher, JobFinished, WorkerIdle};
use crate::job::{FinishedJob, Job, Outcome};
use crate::runner::JobRunner;
use crate::stats::Stats;

/// A job for a worker the Dispatcher knows to be idle.
///
/// Sent with `do_send`: the protocol bounds a worker's mailbox to one job, because the
/// Dispatcher only sends to a worker that reported itself idle and has not been sent
/// anything since.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RunJob(pub Job);

/// Runs jobs one at a time. Started under a [`Supervisor`], so stopping it restarts it
/// with the same address.
pub struct Worker {
    /// The worker's number, for logs.
    number: usize,
    dispatcher: Addr<Dispatcher>,
    runner: Arc<JobRunner>,
    stats: Arc<Stats>,
}

impl Worker {
    pub fn new(number: usize, dispatcher: Addr<Dispatcher>, runner: Arc<JobRunner>, stats: Arc<Stats>) -> Self {
        Self { number, dispatcher, runner, stats }
    }
}

impl Actor for Worker {
    type Context = Context<Self>;

    /// Runs at the first start and after every restart: either way the worker is idle
    /// now and says so.
    fn started(&mut self, ctx: &mut Self::Context) {
        self.stats.workers_total.fetch_add(1, Ordering::Relaxed);
        self.dispatcher.do_send(WorkerIdle { worker: ctx.address() });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.stats.workers_total.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Supervised for Worker {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        Stats::bump(&self.stats.worker_restarts);
        tracing::info!(worker = self.number, "worker restarting after a panicked job");
    }
}

impl Handler<RunJob> for Worker {
    type Result = ();

    fn handle(&mut self, RunJob(job): RunJob, ctx: &mut Self::Context) {
        let id = job.id;
        let kind = job.kind.name();
        let span = tracing::info_span!("job", job_id = %id, kind, attempt = job.attempt, worker = self.number);
        let started = Instant::now();
        Stats::bump(&self.stats.jobs_started);
        // The body runs inside `catch_unwind`, so a panic ends only this future. Without
        // it the panic would unwind through the actor's task and kill the worker without
        // a restart.
        let body = AssertUnwindSafe(self.runner.clone().run(job)).catch_unwind().instrument(span.clone());
        ctx.spawn(body.into_actor(self).map(move |result, worker, ctx| {
            let _entered = span.enter();
            let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
            let outcome = match result {
                Ok(Ok(result)) => {
                    Stats::bump(&worker.stats.jobs_succeeded);
                    tracing::debug!(elapsed_ms, outcome = "succeeded", key = result.key.as_deref(), "job finished");
                    Outcome::Succeeded(result)
                }
                Ok(Err(error)) => {
                    Stats::bump(&worker.stats.jobs_failed);
                    tracing::warn!(elapsed_ms, outcome = "failed", %error, "job finished");
                    Outcome::Failed { error: error.to_string() }
                }
                Err(panic) => {
                    Stats::bump(&worker.stats.jobs_panicked);
                    let message = panic_message(panic.as_ref());
                    tracing::error!(elapsed_ms, outcome = "panicked", error = %message, "job finished");
                    Outcome::Panicked { message: format!("panicked: {message}") }
                }
            };
            let panicked = matches!(outcome, Outcome::Panicked { .. });
            worker.dispatcher.do_send(JobFinished {
                worker: ctx.address(),
                finished: FinishedJob { id, kind, outcome, finished_at: chrono::Utc::now() },
                worker_restarts: panicked,
            });
            if panicked {
                // A panic may have left state behind that the worker cannot vouch for,
                // so the worker starts afresh; the Supervisor restarts it and `started`
                // registers it as idle again.
                ctx.stop();
            }
        }));
    }
}

/// The text of a panic payload, which is a `&str` or a `String` for `panic!` with a
/// message and anything at all otherwise.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_owned()
    }
}
