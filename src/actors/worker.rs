//! The Worker actor: runs one job at a time with its timeout, on the bodies runtime or
//! beside the actors as its kind asks, contains the job's panics, and restarts itself
//! under actix supervision when a job panicked.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use tracing::Instrument as _;

use crate::job::{Job, JobResult, Outcome};
use crate::kinds::{JobError, Permit, ResolvedKind, RunsOn};
use crate::runner::JobRunner;

/// A job for a worker the Dispatcher knows to be idle.
///
/// Sent with `do_send`: the protocol bounds a worker's mailbox to one job, because the
/// Dispatcher only sends to a worker that reported itself idle and has not been sent
/// anything since.
/// The job's kind comes resolved, once for the attempt, by the Dispatcher.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RunJob(pub Job, pub ResolvedKind, pub Option<Permit>);

/// Stop the running attempt now, if there is one: the node can no longer prove that it
/// holds the job's lease. The body is dropped at its next await (a webhook's request is
/// cut off, a multipart upload aborted by its guard) and the attempt ends as
/// [`Outcome::Interrupted`].
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopJob;

/// A worker is idle: at its first start, and again after a restart.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WorkerIdle {
    pub number: usize,
    pub worker: Addr<Worker>,
}

/// A worker finished an attempt. Unless `worker_restarts` is set, it is idle again.
#[derive(Message)]
#[rtype(result = "()")]
pub struct JobFinished {
    pub number: usize,
    pub outcome: Outcome,
    /// The job panicked and the worker is restarting; it will send [`WorkerIdle`] itself.
    pub worker_restarts: bool,
}

/// Where a worker reports: the Dispatcher, as recipients of the two messages, so that the
/// worker needs nothing else of it.
#[derive(Clone)]
pub struct WorkerReports {
    finished: Recipient<JobFinished>,
    idle: Recipient<WorkerIdle>,
}

impl WorkerReports {
    /// Reports to `actor`, the Dispatcher.
    pub fn to<A>(actor: &Addr<A>) -> Self
    where
        A: Actor<Context = Context<A>> + Handler<JobFinished> + Handler<WorkerIdle>,
    {
        WorkerReports { finished: actor.clone().recipient(), idle: actor.clone().recipient() }
    }
}

/// One kind's series of the job metrics.
struct KindSeries {
    kind: &'static str,
    started: prometheus::IntCounter,
    duration: prometheus::Histogram,
}

/// Runs jobs one at a time. Started under a [`Supervisor`], so stopping it restarts it
/// with the same address.
pub struct Worker {
    /// The worker's slot in the Dispatcher, also used in logs.
    number: usize,
    dispatcher: WorkerReports,
    runner: Arc<JobRunner>,
    /// The kind of the job running now, for the duration histogram's label.
    kind: &'static str,
    /// The series of the kind that started last (`jobd_jobs_started_total`,
    /// `jobd_job_duration_seconds`): a run of jobs of one kind (the usual case) then counts
    /// without a label lookup each.
    series: Option<KindSeries>,
    /// Stops the running attempt: the future the worker waits on, and the body's task on
    /// the bodies runtime when it runs there.
    stop: Option<(futures_util::future::AbortHandle, Option<tokio::task::AbortHandle>)>,
}

impl Worker {
    pub fn new(number: usize, dispatcher: WorkerReports, runner: Arc<JobRunner>) -> Self {
        Self { number, dispatcher, runner, kind: "unknown", series: None, stop: None }
    }

    /// Counts, logs and reports one attempt's outcome; stops the worker after a panic.
    fn finish(&mut self, ctx: &mut Context<Self>, outcome: Outcome, started: Instant) {
        self.stop = None;
        // Microsecond precision: more digits are noise in a log line.
        let elapsed_ms = (started.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0;
        if let Some(series) = &self.series {
            series.duration.observe(started.elapsed().as_secs_f64());
        }
        match &outcome {
            Outcome::Succeeded(result) => {
                tracing::debug!(elapsed_ms, outcome = outcome.name(), result = ?result.0, "job finished");
            }
            Outcome::Panicked { .. } => {
                tracing::error!(elapsed_ms, outcome = outcome.name(), error = outcome.error(), "job finished");
            }
            _ => tracing::warn!(elapsed_ms, outcome = outcome.name(), error = outcome.error(), "job finished"),
        }
        let panicked = matches!(outcome, Outcome::Panicked { .. });
        self.dispatcher.finished.do_send(JobFinished { number: self.number, outcome, worker_restarts: panicked });
        if panicked {
            // A panic may have left state behind that the worker cannot vouch for, so the
            // worker starts afresh: the Supervisor restarts it and `started` registers it
            // as idle again.
            ctx.stop();
        }
    }
}

impl Actor for Worker {
    type Context = Context<Self>;

    /// Runs at the first start and after every restart: either way the worker is idle
    /// now and says so.
    fn started(&mut self, ctx: &mut Self::Context) {
        self.dispatcher.idle.do_send(WorkerIdle { number: self.number, worker: ctx.address() });
    }
}

impl Supervised for Worker {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        self.runner.metrics.worker_restarts.inc();
        tracing::info!(worker = self.number, "worker restarting after a panicked job");
    }
}

impl Handler<RunJob> for Worker {
    type Result = ();

    fn handle(&mut self, RunJob(job, resolved, permit): RunJob, ctx: &mut Self::Context) {
        let kind = self.runner.kinds.resolved(resolved);
        self.kind = resolved.label;
        let span = tracing::info_span!("job", job_id = %job.id, kind = self.kind, attempt = job.attempt, claim = job.claim, worker = self.number);
        let entered = span.enter();
        let started = Instant::now();
        let metrics = &self.runner.metrics;
        let kind_name = self.kind;
        let series = match self.series.take() {
            Some(series) if std::ptr::eq(series.kind, kind_name) => series,
            _ => KindSeries {
                kind: kind_name,
                started: metrics.jobs_started.with_label_values(&[kind_name]),
                duration: metrics.job_duration.with_label_values(&[kind_name]),
            },
        };
        series.started.inc();
        self.series = Some(series);
        // A job placed on the worker's thread finishes here: a noop, and the test jobs that
        // block or panic the worker's own thread, outside the body's containment, as a bug
        // in jobd would, so that the Dispatcher's health check has something to catch.
        let runs_on = resolved.placement.runs_on;
        if let (RunsOn::WorkerThread, Some(kind)) = (runs_on, kind) {
            let outcome = kind.run_on_worker_thread(&job);
            return self.finish(ctx, outcome, started);
        }
        drop(entered);
        let timeout = self.runner.timeouts.for_job(&job, kind);
        let beside_actors = runs_on == RunsOn::BesideActors;
        let body = self.runner.clone().run(job, resolved, permit).instrument(span.clone());
        let mut task_abort = None;
        let ended: BoxFuture<'static, BodyEnd> = if beside_actors {
            // The body runs here, on this arbiter; its panic is caught as it unwinds out of
            // the body's poll, so it never reaches the actors.
            Box::pin(tokio::time::timeout(timeout, AssertUnwindSafe(body).catch_unwind()).map(|result| match result {
                Ok(Ok(result)) => BodyEnd::Returned(result),
                Ok(Err(payload)) => BodyEnd::Panicked(panic_message(payload.as_ref())),
                // Dropping the future ended the attempt at its last await.
                Err(_elapsed) => BodyEnd::TimedOut,
            }))
        } else {
            // The body runs on the bodies runtime: a body that blocks its thread cannot
            // stall this arbiter, and a panic ends only its task, reported by the join handle.
            let task = self.runner.bodies.spawn(body);
            let abort = task.abort_handle();
            task_abort = Some(task.abort_handle());
            Box::pin(tokio::time::timeout(timeout, task).map(move |result| match result {
                Ok(Ok(result)) => BodyEnd::Returned(result),
                Ok(Err(join_error)) if join_error.is_panic() => {
                    BodyEnd::Panicked(panic_message(join_error.into_panic().as_ref()))
                }
                Ok(Err(join_error)) => BodyEnd::Lost(join_error.to_string()),
                Err(_elapsed) => {
                    // Dropping the join handle would not stop the task: it is aborted at its
                    // next await. A body that blocks keeps its thread until it returns, but
                    // its result is ignored and this worker is free now.
                    abort.abort();
                    BodyEnd::TimedOut
                }
            }))
        };
        let (ended, stop) = futures_util::future::abortable(ended);
        self.stop = Some((stop, task_abort));
        let ended = ended.map(|ended| ended.unwrap_or(BodyEnd::Stopped));
        ctx.spawn(ended.into_actor(self).map(move |ended, worker, ctx| {
            let _entered = span.enter();
            let outcome = match ended {
                BodyEnd::Returned(Ok(result)) => Outcome::Succeeded(result),
                BodyEnd::Returned(Err(JobError::Deferred { message, retry_after })) => {
                    Outcome::Deferred { error: message, retry_after }
                }
                BodyEnd::Returned(Err(error)) => {
                    Outcome::Failed { error: error.to_string(), retryable: error.is_retryable() }
                }
                BodyEnd::Panicked(message) => Outcome::Panicked { message },
                BodyEnd::Lost(error) => Outcome::Failed { error, retryable: true },
                BodyEnd::TimedOut => Outcome::TimedOut { after_ms: duration_ms(timeout) },
                BodyEnd::Stopped => Outcome::Interrupted,
            };
            worker.finish(ctx, outcome, started);
        }));
    }
}

/// How a job's body ended, wherever it ran.
enum BodyEnd {
    Returned(Result<JobResult, JobError>),
    Panicked(String),
    /// The body's task ended without an answer (its runtime shut down).
    Lost(String),
    TimedOut,
    /// The worker was told to stop it ([`StopJob`]).
    Stopped,
}

impl Handler<StopJob> for Worker {
    type Result = ();

    fn handle(&mut self, _: StopJob, _ctx: &mut Self::Context) {
        if let Some((attempt, task)) = self.stop.take() {
            attempt.abort();
            if let Some(task) = task {
                task.abort();
            }
        }
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
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
