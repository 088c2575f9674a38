//! The Dispatcher actor: the shell around the scheduling core ([`Scheduler`]), which
//! decides; the actor carries its decisions out. It holds the workers' addresses, the
//! timers (the one timer for delayed jobs, the progress linger, the worker check, the
//! lease watch, systemd's watchdog) and the calls to the queue thread.
//!
//! It learns of jobs from the queue thread itself: while its window has room it keeps one
//! fetch (`wait_ready`) out, which the queue thread holds when nothing is ready and answers
//! straight after the next commit that readies jobs. Starts and outcomes are recorded in
//! batches, one flush in flight at a time, gathered for up to 2 ms unless a job waits for
//! its start; a failed flush is kept and tried again. Delayed jobs wait in the backend with
//! their `run_at`; the Dispatcher keeps one timer for the earliest and nudges the queue
//! thread when it fires. Every second it checks that each worker is still connected, and
//! replaces one that died outside supervision. Cancels go through it, because it alone
//! knows whether a job is in its window or running.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use super::progress::{FinishedCounts, PROGRESS_LINGER};
pub use super::scheduler::PoolSettings;
use super::scheduler::{Flush, Launch, ProgressDue, Scheduler};
use super::worker::{JobFinished, RunJob, Worker, WorkerIdle, WorkerReports};
use crate::job::{JobId, JobState};
use crate::kinds::GateKey;
use crate::queue::{ControlError, QueueHandle, StorageError};
use crate::runner::JobRunner;
use crate::stats::Stats;
use crate::systemd::Notifier;

mod fencing;

/// How long to wait before calling the queue again after a call failed.
const RETRY_DELAY: Duration = Duration::from_millis(500);
/// The shortest time between two firings of the due timer. When jobs fall due every
/// fraction of a millisecond, firing for each would cost a transaction per job; waiting
/// this long gathers them, at the price of starting delayed jobs up to this much late
/// (never early).
const MIN_DUE_INTERVAL: Duration = Duration::from_millis(10);
/// How often the Dispatcher refreshes the `STATUS=` line systemd shows.
const STATUS_INTERVAL: Duration = Duration::from_secs(2);
/// How often the Dispatcher checks that every worker is still alive.
const WORKER_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Cancel a job that has not started. Goes through the Dispatcher, which alone knows
/// whether the job is in its window or already running.
#[derive(Message)]
#[rtype(result = "Result<Result<(), ControlError>, StorageError>")]
pub struct CancelJob(pub JobId);

/// A gate opened by itself (a kind's [`crate::kinds::GateSignal`]): the object store
/// answers again. Every job waiting at it tries again, in its order. Its senders signal
/// at most once per probe, so `do_send` cannot pile these up.
#[derive(Message)]
#[rtype(result = "()")]
pub struct GateOpened(pub GateKey);

/// The named queues paused now, as the queue's storage says (`server/pauses.rs`): their
/// jobs do not start, on this node or any other. Sent with `send`, one at a time.
#[derive(Message)]
#[rtype(result = "()")]
pub struct QueuesPaused(pub std::collections::HashSet<crate::job::QueueName>);

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

/// Routes ready jobs to idle workers, as its [`Scheduler`] decides.
pub struct Dispatcher {
    queue: QueueHandle,
    runner: Arc<JobRunner>,
    stats: Arc<Stats>,
    /// Every decision: the pool, the window, fetches, progress, retries, cancels, drains.
    core: Scheduler,
    /// The workers' addresses, by number; `None` until a worker first reports idle, and
    /// again once it died outside supervision.
    workers: Vec<Option<Addr<Worker>>>,
    /// The lease's term at the last look: a new one means it lapsed in between.
    lease_term: u64,
    /// The one timer for delayed work: when the earliest scheduled job or retry is due.
    /// However many jobs wait, this is the only timer they cost.
    due_timer: Option<(DateTime<Utc>, SpawnHandle)>,
    /// When the due timer last fired; see [`MIN_DUE_INTERVAL`].
    due_timer_fired: Option<std::time::Instant>,
    /// The timer of progress lingering before its flush ([`PROGRESS_LINGER`]).
    linger: Option<SpawnHandle>,
    /// Drain requests waiting for the running jobs.
    drain_waiters: Vec<oneshot::Sender<()>>,
    /// systemd's notification socket, when jobd runs under systemd.
    notifier: Option<Arc<Notifier>>,
    /// Half of systemd's watchdog timeout. The pings come from this actor's own loop, so
    /// a wedged Dispatcher stops them and systemd restarts jobd.
    watchdog: Option<Duration>,
    /// The named queues' series, when the server registered them.
    queue_metrics: Option<crate::queues::QueueMetrics>,
    /// The named queues whose running and throttled gauges were set, so that they go back
    /// to 0 when the queue is idle.
    queues_reported: std::collections::HashSet<crate::job::QueueName>,
}

impl Dispatcher {
    pub fn new(queue: QueueHandle, runner: Arc<JobRunner>, stats: Arc<Stats>, pool: PoolSettings) -> Self {
        let lease_term = queue.lease_term();
        Self {
            queue,
            runner,
            stats,
            core: Scheduler::new(pool, fastrand::Rng::new(), std::time::Instant::now()),
            workers: vec![None; pool.max_workers],
            lease_term,
            due_timer: None,
            due_timer_fired: None,
            linger: None,
            drain_waiters: Vec::new(),
            notifier: None,
            watchdog: None,
            queue_metrics: None,
            queues_reported: std::collections::HashSet::new(),
        }
    }

    /// Reports the named queues' starts, running and throttled jobs in `metrics`.
    pub fn with_queue_metrics(mut self, metrics: crate::queues::QueueMetrics) -> Self {
        self.queue_metrics = Some(metrics);
        self
    }

    /// Sets the named queues' series of this node: starts since the last report, running
    /// jobs, and jobs waiting at a queue's limit. Queues seen before and idle now read 0.
    fn report_queue_load(&mut self) {
        let Some(metrics) = &self.queue_metrics else { return };
        for (queue, started) in self.core.take_started_by_queue() {
            metrics.started.with_label_values(&[&queue]).inc_by(started);
        }
        let load = self.core.queue_load();
        for queue in &self.queues_reported {
            if !load.contains_key(queue) {
                metrics.running.with_label_values(&[queue]).set(0);
                metrics.throttled.with_label_values(&[queue]).set(0);
            }
        }
        for (queue, (running, throttled)) in &load {
            metrics.running.with_label_values(&[queue]).set(i64::try_from(*running).unwrap_or(i64::MAX));
            metrics.throttled.with_label_values(&[queue]).set(i64::try_from(*throttled).unwrap_or(i64::MAX));
        }
        self.queues_reported.extend(load.into_keys());
    }

    /// Limits the jobs of each named queue that run at once on this node (its `concurrency`).
    pub fn with_queue_limits(mut self, limits: impl IntoIterator<Item = (crate::job::QueueName, usize)>) -> Self {
        self.core = self.core.with_queue_limits(limits);
        self
    }

    /// Reports to systemd: watchdog pings every `watchdog`, and a status line.
    pub fn with_systemd(mut self, notifier: Option<Arc<Notifier>>, watchdog: Option<Duration>) -> Self {
        self.notifier = notifier;
        self.watchdog = watchdog;
        self
    }

    /// Sends systemd a one-line summary of the queue and the pool.
    fn report_status(&mut self, ctx: &mut Context<Self>) {
        let Some(notifier) = self.notifier.clone() else { return };
        let queue = self.queue.clone();
        let (busy, total) = (self.core.busy(), self.core.workers());
        ctx.spawn(async move { queue.status().await }.into_actor(self).map(move |status, _, _| {
            let line = match status {
                Ok(status) => {
                    let depth = status.depth;
                    format!(
                        "queued {}, scheduled {}, running {}, failed {}, dead {}; workers {busy}/{total} busy",
                        depth.queued, depth.scheduled, depth.running, depth.failed, depth.dead
                    )
                }
                Err(error) => format!("queue unavailable: {error}; workers {busy}/{total} busy"),
            };
            notifier.status(&line);
        }));
    }

    /// Publishes the pool's size: workers that have registered and not died. A worker
    /// restarting after a panic keeps its address and so its place.
    fn count_workers(&self) {
        let live = self.workers.iter().filter(|worker| worker.is_some()).count();
        self.stats.workers_total.store(live, Ordering::Relaxed);
    }

    fn start_worker(&self, number: usize, ctx: &mut Context<Self>) {
        let dispatcher = ctx.address();
        let runner = self.runner.clone();
        Supervisor::start(move |_| Worker::new(number, WorkerReports::to(&dispatcher), runner));
    }

    /// Hands a job its worker. The pool bounds these: one `RunJob` per idle worker.
    fn run(&self, launch: Launch) {
        let Launch { worker, job, kind, permit } = launch;
        match self.workers.get(worker).and_then(Option::as_ref) {
            Some(address) => address.do_send(RunJob(job, kind, permit)),
            // Unreachable: the core hands jobs only to registered workers. The job was
            // never started, so the next claim runs it.
            None => tracing::error!(worker, job_id = %job.id, "a worker handed a job has no address"),
        }
    }

    /// Starts jobs while there is an idle worker and a ready job, then tops up the window.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.lease_lapsed() {
            return;
        }
        let pumped = self.core.pump(&self.runner.kinds, Utc::now(), std::time::Instant::now());
        for (kind, wait) in &pumped.waits {
            self.runner.metrics.job_wait.with_label_values(&[kind]).observe(*wait);
        }
        for launch in pumped.run_now {
            self.run(launch);
        }
        self.stats.workers_busy.store(self.core.busy(), Ordering::Relaxed);
        if pumped.dispatched {
            self.record_progress(ctx);
        }
        if let Some(wanted) = pumped.fetch {
            self.fetch(wanted, ctx);
        }
    }

    fn fetch(&mut self, wanted: usize, ctx: &mut Context<Self>) {
        let timer_due = self.due_timer.map(|(due, _)| due);
        let queue = self.queue.clone();
        ctx.spawn(async move { queue.wait_ready(wanted, timer_due).await }.into_actor(self).map(
            move |result, dispatcher, ctx| match result {
                // A fresh look, not the last one: the claim may have come after a renewal
                // the Dispatcher has not seen yet, and then its jobs are ours. Claimed
                // before the lease lapsed, they are handed out again by the next claim
                // after the renewal that ends the lapse, which begins a new term.
                Ok(_) if dispatcher.lease_lapsed() => dispatcher.core.fetch_dropped(),
                Ok(batch) => {
                    dispatcher.core.fetched(batch.jobs, wanted);
                    if let Some(due) = batch.next_due {
                        dispatcher.arm_due_timer(due, ctx);
                    }
                    dispatcher.pump(ctx);
                }
                Err(error) => {
                    dispatcher.core.fetch_dropped();
                    tracing::error!(%error, "fetching ready jobs failed; retrying");
                    ctx.run_later(RETRY_DELAY, |dispatcher, ctx| dispatcher.pump(ctx));
                }
            },
        ));
    }

    /// Makes sure the one timer fires by `due`. A timer already set for an earlier time
    /// stays; one set for a later time is replaced. A timer that fires with nothing due
    /// costs one fetch, so stale timers are harmless and never cancelled for lack of news.
    fn arm_due_timer(&mut self, due: DateTime<Utc>, ctx: &mut Context<Self>) {
        if let Some((current, handle)) = self.due_timer {
            if current <= due {
                return;
            }
            ctx.cancel_future(handle);
        }
        // One millisecond late rather than early: `run_at` has millisecond precision.
        let until_due = (due - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(1);
        let until_allowed =
            self.due_timer_fired.map_or(Duration::ZERO, |fired| MIN_DUE_INTERVAL.saturating_sub(fired.elapsed()));
        let wait = until_due.max(until_allowed);
        self.stats.delay_timers.store(1, Ordering::Relaxed);
        let handle = ctx.run_later(wait, |dispatcher, ctx| {
            dispatcher.due_timer = None;
            dispatcher.due_timer_fired = Some(std::time::Instant::now());
            dispatcher.stats.delay_timers.store(0, Ordering::Relaxed);
            if dispatcher.core.is_fetching() {
                // The fetch that is out may be waiting in the queue thread for news that
                // a due time is not: the nudge makes it look now. A fetch not yet run
                // looks as of when it runs, after this, so it sees the due jobs anyway.
                let queue = dispatcher.queue.clone();
                ctx.spawn(
                    async move {
                        if let Err(error) = queue.nudge().await {
                            tracing::error!(%error, "could not nudge the waiting fetch");
                        }
                    }
                    .into_actor(dispatcher),
                );
            } else {
                dispatcher.pump(ctx);
            }
        });
        self.due_timer = Some((due, handle));
    }

    /// Replaces workers whose actor is gone without a restart (a panic outside the job
    /// body's containment, say). Their running job counts as a failed attempt.
    fn replace_dead_workers(&mut self, ctx: &mut Context<Self>) {
        for number in 0..self.workers.len() {
            let alive = self.workers[number].as_ref().is_none_or(Addr::connected);
            if alive {
                continue;
            }
            tracing::error!(worker = number, "worker died; starting a replacement");
            self.runner.metrics.worker_replacements.inc();
            self.runner.metrics.worker_restarts.inc();
            self.workers[number] = None;
            self.core.worker_lost(number, Utc::now());
            self.start_worker(number, ctx);
        }
        self.count_workers();
        self.record_progress(ctx);
    }

    /// Records buffered starts and outcomes, one queue call at a time, so that those that
    /// arrive during a call go out together in the next. Progress that nothing waits for
    /// lingers up to [`PROGRESS_LINGER`] first; starts that jobs wait for, and a drain,
    /// go at once.
    fn record_progress(&mut self, ctx: &mut Context<Self>) {
        match self.core.progress_due() {
            ProgressDue::Now => self.flush_progress(ctx),
            ProgressDue::Linger if self.linger.is_none() => {
                self.linger = Some(ctx.run_later(PROGRESS_LINGER, |dispatcher, ctx| {
                    dispatcher.linger = None;
                    dispatcher.flush_progress(ctx);
                }));
            }
            ProgressDue::Linger => {}
        }
    }

    /// Sends the buffered starts and outcomes to the queue now, unless a flush is out.
    fn flush_progress(&mut self, ctx: &mut Context<Self>) {
        let Some(Flush { started, finished, starting }) = self.core.take_flush() else {
            self.finish_drain_if_done();
            return;
        };
        if let Some(linger) = self.linger.take() {
            ctx.cancel_future(linger);
        }
        let term_at_send = self.queue.lease_term();
        let earliest_retry = finished.iter().filter_map(|end| end.retry_at).min();
        let ends = FinishedCounts::of(&finished);
        let queue = self.queue.clone();
        ctx.spawn(async move { queue.record_progress(started, finished).await }.into_actor(self).map(
            move |result, dispatcher, ctx| {
                let refused = match result {
                    Ok(refused) => refused,
                    Err(failed) => {
                        // Keep the progress and try again shortly; until then the records
                        // lag behind the jobs, and a crash in between only means the jobs
                        // run again, which is the at-least-once promise.
                        tracing::error!(error = %failed.error, "recording job progress failed; retrying");
                        let flush = Flush { started: failed.started, finished: failed.finished, starting };
                        dispatcher.core.flush_failed(flush);
                        ctx.run_later(RETRY_DELAY, |dispatcher, ctx| {
                            dispatcher.core.retry_flush();
                            dispatcher.flush_progress(ctx);
                        });
                        return;
                    }
                };
                ends.count(&dispatcher.runner.metrics.jobs_finished);
                // Their starts are recorded: the attempts count from here, whatever
                // happens to the process. A drain still starts them, since they are
                // `running` on disk and the drain waits for them anyway. A start the queue
                // refused, or one recorded just before the lease lapsed, runs nothing.
                dispatcher.start_recorded(starting, &refused, term_at_send, ctx);
                // The timer for retries is armed only now that they are committed: a fetch
                // before the commit would not see them, and then no timer would be left.
                if let Some(at) = earliest_retry {
                    dispatcher.arm_due_timer(at, ctx);
                }
                dispatcher.record_progress(ctx);
            },
        ));
    }

    fn finish_drain_if_done(&mut self) {
        if self.core.drained() {
            for waiter in self.drain_waiters.drain(..) {
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
        for number in 0..self.workers.len() {
            self.start_worker(number, ctx);
        }
        ctx.run_interval(WORKER_CHECK_INTERVAL, |dispatcher, ctx| {
            dispatcher.replace_dead_workers(ctx);
            dispatcher.report_queue_load();
            let oldest = dispatcher.queue.is_shared().then(|| dispatcher.core.oldest_due()).flatten();
            dispatcher.stats.set_window_oldest_due(oldest);
            // A gate may have opened with time (a circuit's wait over): one job of each
            // tries again, and a success lets the rest follow.
            if dispatcher.core.release_all_gates() {
                dispatcher.pump(ctx);
            }
        });
        if self.queue.is_shared() {
            ctx.run_interval(fencing::LEASE_CHECK_INTERVAL, |dispatcher, ctx| dispatcher.watch_lease(ctx));
        }
        if let (Some(notifier), Some(every)) = (self.notifier.clone(), self.watchdog) {
            notifier.watchdog();
            ctx.run_interval(every, move |_, _| notifier.watchdog());
        }
        if self.notifier.is_some() {
            self.report_status(ctx);
            ctx.run_interval(STATUS_INTERVAL, |dispatcher, ctx| dispatcher.report_status(ctx));
        }
        self.pump(ctx);
    }
}

impl Handler<WorkerIdle> for Dispatcher {
    type Result = ();

    fn handle(&mut self, message: WorkerIdle, ctx: &mut Self::Context) {
        let Some(slot) = self.workers.get_mut(message.number) else { return };
        *slot = Some(message.worker);
        self.core.worker_idle(message.number);
        self.count_workers();
        self.pump(ctx);
    }
}

impl Handler<JobFinished> for Dispatcher {
    type Result = ();

    fn handle(&mut self, message: JobFinished, ctx: &mut Self::Context) {
        if !self.core.job_finished(message.number, message.outcome, message.worker_restarts, Utc::now()) {
            return;
        }
        self.record_progress(ctx);
        self.pump(ctx);
    }
}

impl Handler<GateOpened> for Dispatcher {
    type Result = ();

    fn handle(&mut self, GateOpened(gate): GateOpened, ctx: &mut Self::Context) {
        self.core.gate_opened(&gate);
        self.pump(ctx);
    }
}

impl Handler<QueuesPaused> for Dispatcher {
    type Result = ();

    fn handle(&mut self, QueuesPaused(paused): QueuesPaused, ctx: &mut Self::Context) {
        self.core.queues_paused(&paused);
        self.pump(ctx);
    }
}

impl Handler<CancelJob> for Dispatcher {
    type Result = ResponseActFuture<Self, Result<Result<(), ControlError>, StorageError>>;

    fn handle(&mut self, CancelJob(id): CancelJob, _ctx: &mut Self::Context) -> Self::Result {
        if !self.core.cancel_requested(id) {
            return Box::pin(actix::fut::ready(Ok(Err(ControlError::Conflict(JobState::Running)))));
        }
        let queue = self.queue.clone();
        Box::pin(async move { queue.cancel(id).await }.into_actor(self).map(move |result, dispatcher, ctx| {
            let cancelled = matches!(result, Ok(Ok(())));
            dispatcher.core.cancel_answered(id, cancelled);
            if !cancelled {
                dispatcher.pump(ctx);
            }
            result
        }))
    }
}

impl Handler<Drain> for Dispatcher {
    type Result = ResponseFuture<DrainReport>;

    fn handle(&mut self, _: Drain, _ctx: &mut Self::Context) -> Self::Result {
        let (done, finished) = oneshot::channel();
        self.drain_waiters.push(done);
        tracing::info!(running = self.core.busy(), "draining: no new jobs start");
        let report = DrainReport { unstarted_in_window: self.core.drain() };
        self.finish_drain_if_done();
        Box::pin(async move {
            // A dropped sender means the Dispatcher stopped, which also ends the drain.
            let _ = finished.await;
            report
        })
    }
}
