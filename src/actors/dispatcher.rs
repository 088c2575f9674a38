//! The Dispatcher actor: holds the idle workers and a bounded window of ready jobs, and
//! hands a job to a worker whenever it has both. The seed's `WorkerPool chan chan Job`,
//! as an actor.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::worker::{RunJob, Worker};
use chrono::Utc;

use crate::job::{FinishedJob, Job, StartedJob};
use crate::queue::QueueHandle;
use crate::runner::JobRunner;
use crate::stats::Stats;

/// How long to wait before calling the queue again after a call failed.
const FETCH_RETRY_DELAY: Duration = Duration::from_millis(500);

/// A worker is idle: at its first start, and again after a restart.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WorkerIdle {
    pub worker: Addr<Worker>,
}

/// A worker finished a job. Unless `worker_restarts` is set, the worker is idle again.
#[derive(Message)]
#[rtype(result = "()")]
pub struct JobFinished {
    pub worker: Addr<Worker>,
    pub finished: FinishedJob,
    /// The job panicked and the worker is restarting; it will send [`WorkerIdle`] itself.
    pub worker_restarts: bool,
}

/// New jobs were committed. At most one is in the mailbox at a time (see
/// [`Dispatcher::wake_pending`]), so the Ingest actor may send it with `do_send`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct JobsCommitted;

/// Stop starting jobs; answers once every running job has finished and its outcome
/// has been recorded.
#[derive(Message)]
#[rtype(result = "DrainReport")]
pub struct Drain;

/// What a drain left behind.
#[derive(Debug, Clone, Copy, MessageResponse)]
pub struct DrainReport {
    /// Jobs claimed from the queue into the window but never started.
    pub unstarted_in_window: usize,
}

/// Routes ready jobs to idle workers.
pub struct Dispatcher {
    queue: QueueHandle,
    runner: Arc<JobRunner>,
    stats: Arc<Stats>,
    max_workers: usize,
    /// Idle workers, used last-in first-out so the most recently active worker (whose
    /// state is warm in the cache) runs the next job.
    idle: Vec<Addr<Worker>>,
    /// Ready jobs claimed from the queue, in submission order. Bounded by `window`, so
    /// memory does not grow with the backlog.
    ready: VecDeque<Job>,
    /// The most jobs `ready` holds.
    window: usize,
    /// Whether a `take_ready` call is in flight; at most one is, so the window is never
    /// overfilled.
    fetching: bool,
    /// Whether the queue may hold jobs the window has not claimed yet.
    backlog_may_have_jobs: bool,
    /// Counts [`JobsCommitted`] notices, so a fetch that started before a commit does not
    /// wrongly conclude that the backlog is empty.
    commit_epoch: u64,
    /// Set by the Ingest actor before it sends [`JobsCommitted`], cleared here on receipt:
    /// this keeps at most one notice in the mailbox whatever the commit rate.
    wake_pending: Arc<AtomicBool>,
    busy: usize,
    /// Starts and outcomes waiting to be recorded; flushed together, one queue call at a
    /// time, so that each flush is one transaction however many jobs it carries.
    started: Vec<StartedJob>,
    outcomes: Vec<FinishedJob>,
    recording: bool,
    /// Drain requests waiting for the running jobs; `Some` once draining began.
    drain_waiters: Option<Vec<oneshot::Sender<()>>>,
}

impl Dispatcher {
    pub fn new(
        queue: QueueHandle,
        runner: Arc<JobRunner>,
        stats: Arc<Stats>,
        max_workers: usize,
        wake_pending: Arc<AtomicBool>,
    ) -> Self {
        Self {
            queue,
            runner,
            stats,
            max_workers,
            idle: Vec::with_capacity(max_workers),
            ready: VecDeque::new(),
            // Twice the pool keeps every worker fed while the next page is fetched, with
            // a floor so small pools still fetch in useful batches.
            window: (2 * max_workers).max(64),
            fetching: false,
            backlog_may_have_jobs: true,
            commit_epoch: 0,
            wake_pending,
            busy: 0,
            started: Vec::new(),
            outcomes: Vec::new(),
            recording: false,
            drain_waiters: None,
        }
    }

    fn draining(&self) -> bool {
        self.drain_waiters.is_some()
    }

    /// Starts jobs while there is an idle worker and a ready job, then tops up the window.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.draining() {
            return;
        }
        let mut dispatched = false;
        while !self.idle.is_empty() && !self.ready.is_empty() {
            let (Some(worker), Some(job)) = (self.idle.pop(), self.ready.pop_front()) else {
                break;
            };
            self.busy += 1;
            self.started.push(StartedJob { id: job.id, started_at: Utc::now() });
            worker.do_send(RunJob(job));
            dispatched = true;
        }
        if dispatched {
            self.record_progress(ctx);
        }
        self.stats.workers_busy.store(self.busy, Ordering::Relaxed);
        if !self.fetching && self.backlog_may_have_jobs && self.ready.len() <= self.window / 2 {
            self.fetch(ctx);
        }
    }

    fn fetch(&mut self, ctx: &mut Context<Self>) {
        let wanted = self.window - self.ready.len();
        let epoch = self.commit_epoch;
        self.fetching = true;
        let queue = self.queue.clone();
        ctx.spawn(async move { queue.take_ready(wanted).await }.into_actor(self).map(
            move |result, dispatcher, ctx| {
                dispatcher.fetching = false;
                match result {
                    Ok(jobs) => {
                        if jobs.len() < wanted && dispatcher.commit_epoch == epoch {
                            dispatcher.backlog_may_have_jobs = false;
                        }
                        dispatcher.ready.extend(jobs);
                        dispatcher.pump(ctx);
                    }
                    Err(error) => {
                        tracing::error!(%error, "fetching ready jobs failed; retrying");
                        ctx.run_later(FETCH_RETRY_DELAY, |dispatcher, ctx| dispatcher.pump(ctx));
                    }
                }
            },
        ));
    }

    /// Records buffered starts and outcomes, one queue call at a time, so that those that
    /// arrive during a call go out together in the next.
    fn record_progress(&mut self, ctx: &mut Context<Self>) {
        if self.recording || (self.outcomes.is_empty() && self.started.is_empty()) {
            self.finish_drain_if_done();
            return;
        }
        self.recording = true;
        let started = std::mem::take(&mut self.started);
        let finished = std::mem::take(&mut self.outcomes);
        let queue = self.queue.clone();
        ctx.spawn(async move { queue.record_progress(started, finished).await }.into_actor(self).map(
            |result, dispatcher, ctx| {
                dispatcher.recording = false;
                if let Err(failed) = result {
                    // Keep the progress and try again shortly; until then the records lag
                    // behind the jobs, and a crash in between only means the jobs run
                    // again, which is the at-least-once promise.
                    tracing::error!(error = %failed.error, "recording job progress failed; retrying");
                    dispatcher.started.splice(0..0, failed.started);
                    dispatcher.outcomes.splice(0..0, failed.finished);
                    dispatcher.recording = true;
                    ctx.run_later(FETCH_RETRY_DELAY, |dispatcher, ctx| {
                        dispatcher.recording = false;
                        dispatcher.record_progress(ctx);
                    });
                    return;
                }
                dispatcher.record_progress(ctx);
            },
        ));
    }

    fn finish_drain_if_done(&mut self) {
        let done = self.busy == 0 && !self.recording && self.outcomes.is_empty() && self.started.is_empty();
        if done && let Some(waiters) = self.drain_waiters.as_mut() {
            for waiter in waiters.drain(..) {
                let _ = waiter.send(());
            }
        }
    }
}

impl Actor for Dispatcher {
    type Context = Context<Self>;

    /// Starts the worker pool on this actor's arbiter: a round trip between actors that
    /// share an arbiter costs a fraction of one that crosses threads.
    fn started(&mut self, ctx: &mut Self::Context) {
        for number in 0..self.max_workers {
            let dispatcher = ctx.address();
            let runner = self.runner.clone();
            let stats = self.stats.clone();
            Supervisor::start(move |_| Worker::new(number, dispatcher, runner, stats));
        }
        self.pump(ctx);
    }
}

impl Handler<WorkerIdle> for Dispatcher {
    type Result = ();

    fn handle(&mut self, message: WorkerIdle, ctx: &mut Self::Context) {
        self.idle.push(message.worker);
        self.pump(ctx);
    }
}

impl Handler<JobFinished> for Dispatcher {
    type Result = ();

    fn handle(&mut self, message: JobFinished, ctx: &mut Self::Context) {
        self.busy = self.busy.saturating_sub(1);
        if !message.worker_restarts {
            self.idle.push(message.worker);
        }
        self.outcomes.push(message.finished);
        self.record_progress(ctx);
        self.pump(ctx);
    }
}

impl Handler<JobsCommitted> for Dispatcher {
    type Result = ();

    fn handle(&mut self, _: JobsCommitted, ctx: &mut Self::Context) {
        self.wake_pending.store(false, Ordering::Release);
        self.commit_epoch += 1;
        self.backlog_may_have_jobs = true;
        self.pump(ctx);
    }
}

impl Handler<Drain> for Dispatcher {
    type Result = ResponseFuture<DrainReport>;

    fn handle(&mut self, _: Drain, _ctx: &mut Self::Context) -> Self::Result {
        let (done, finished) = oneshot::channel();
        self.drain_waiters.get_or_insert_with(Vec::new).push(done);
        tracing::info!(running = self.busy, "draining: no new jobs start");
        let report = DrainReport { unstarted_in_window: self.ready.len() };
        self.finish_drain_if_done();
        Box::pin(async move {
            // A dropped sender means the Dispatcher stopped, which also ends the drain.
            let _ = finished.await;
            report
        })
    }
}
