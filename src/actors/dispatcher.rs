//! The Dispatcher actor: holds the worker pool and a bounded window of ready jobs, hands a
//! job to a worker whenever it has both (the seed's `WorkerPool chan chan Job`, as an
//! actor), decides retries, keeps the one timer for delayed jobs, and replaces dead workers.
//!
//! It learns of jobs from the queue thread itself: while its window has room it keeps one
//! fetch (`wait_ready`) out, which the queue thread holds when nothing is ready and answers
//! straight after the next commit that readies jobs. The window (`Window`) holds at most
//! `max(2 × max_workers, 16,384)` claimed jobs and `window_max_bytes` of them; it is refilled
//! when it falls to half. A job of a kind that waits for its recorded start reaches its worker only once
//! the progress flush carrying its start has committed, so its attempt counts even if the
//! process dies during it. While the store cannot be reached, the window sets the store's
//! jobs aside in order and hands out the others. The Dispatcher decides what an attempt
//! means: retryable with attempts left is `failed` with a `retry_at` from `RetryPolicy`,
//! anything else is final. Starts and outcomes are recorded in batches, one flush in flight
//! at a time, gathered for up to 2 ms unless a job waits for its start; a failed flush is
//! kept and tried again. Delayed jobs wait in the backend with
//! their `run_at`; the Dispatcher keeps one timer for the earliest and nudges the queue
//! thread when it fires. Every second it checks that each worker is still connected, and
//! replaces one that died outside supervision. Cancels go through it, because it alone knows
//! whether a job is in its window or running.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use super::claim_size::ClaimSize;
use super::progress::{FinishedCounts, PROGRESS_LINGER, PROGRESS_LINGER_ENOUGH};
use super::window::Window;
use super::worker::{JobFinished, RunJob, Worker, WorkerIdle, WorkerReports};
use crate::job::{FinishedJob, JobId, JobState, Outcome, StartedJob};
use crate::kinds::GateKey;
use crate::queue::{ControlError, QueueHandle, StorageError};
use crate::retry::RetryPolicy;
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
/// The fewest jobs the window of claimed jobs holds; see `Dispatcher::new`.
const WINDOW_FLOOR: usize = 16_384;
/// How often the Dispatcher refreshes the `STATUS=` line systemd shows.
const STATUS_INTERVAL: Duration = Duration::from_secs(2);
/// How often the Dispatcher checks that every worker is still alive.
const WORKER_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// What the Dispatcher is built with, apart from its collaborators.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub max_workers: usize,
    pub retry_policy: RetryPolicy,
    /// The most bytes the window's claimed, not-yet-started jobs may take.
    pub window_max_bytes: usize,
    /// Whether other nodes share the queue (PostgreSQL). Then the window's runnable jobs,
    /// jobs waiting at a full gate included, are bounded by what the node started in the
    /// last moment, at least its free workers ([`ClaimSize`]): each is leased to this node,
    /// so no other node can run it, however idle. Short jobs get large claims, slow ones
    /// claims of about the free slots, which balance the load as River's do.
    pub shared_queue: bool,
}

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

/// What the Dispatcher knows about a job a worker is running.
struct RunningJob {
    id: JobId,
    kind: &'static str,
    attempt: u32,
    /// The claim the attempt runs under; its outcome is recorded only under it.
    claim: i64,
    max_attempts: u32,
    /// The gate whose permit the job holds (a webhook destination): when the job ends, a
    /// job waiting at that gate may start.
    gate: Option<GateKey>,
}

/// One worker of the pool.
struct WorkerSlot {
    /// `None` until the worker first reports idle.
    addr: Option<Addr<Worker>>,
    running: Option<RunningJob>,
}

/// Routes ready jobs to idle workers.
pub struct Dispatcher {
    queue: QueueHandle,
    runner: Arc<JobRunner>,
    stats: Arc<Stats>,
    retry_policy: RetryPolicy,
    rng: fastrand::Rng,
    /// The pool, by worker number.
    workers: Vec<WorkerSlot>,
    /// Numbers of idle workers, used last-in first-out so the most recently active
    /// worker (whose state is warm in the cache) runs the next job.
    idle: Vec<usize>,
    /// Jobs claimed from the queue and not started, bounded in jobs and in bytes, so
    /// memory does not grow with the backlog or with the size of its bodies.
    window: Window,
    /// On a shared queue, how many runnable jobs the window holds.
    claim_size: Option<ClaimSize>,
    /// Whether a fetch (`wait_ready`) is out; at most one is, so the window is never
    /// overfilled. While the window has room one always is: when nothing is ready the
    /// queue thread holds it and answers it right after the commit that readies jobs, so
    /// nobody has to tell the Dispatcher that jobs came in.
    fetching: bool,
    /// Jobs handed a worker whose start is being recorded: each starts once the flush
    /// carrying its start has committed, so that an attempt counts even if the process
    /// dies during it, and a job that kills the process cannot run forever. Kinds whose
    /// bodies cannot take the process down (`Kind::waits_for_recorded_start`) skip this,
    /// unless other nodes share the queue: then every kind with effects waits, so that a
    /// job whose start is refused (it moved to another node) never runs here. Each entry
    /// names its worker's number.
    awaiting_start: Vec<fencing::AwaitingStart>,
    /// Whether this node lost sight of its lease on a shared queue: it then starts and
    /// claims nothing, has dropped its window and stopped its running jobs, until a
    /// renewal proves the lease again (see `fencing.rs`).
    lease_lapsed: bool,
    /// The lease's term at the last look: a new one means it lapsed in between.
    lease_term: u64,
    /// The one timer for delayed work: when the earliest scheduled job or retry is due.
    /// However many jobs wait, this is the only timer they cost.
    due_timer: Option<(DateTime<Utc>, SpawnHandle)>,
    /// When the due timer last fired; see [`MIN_DUE_INTERVAL`].
    due_timer_fired: Option<std::time::Instant>,
    busy: usize,
    /// Starts and outcomes waiting to be recorded; flushed together, one queue call at a
    /// time, so that each flush is one transaction however many jobs it carries.
    started: Vec<StartedJob>,
    outcomes: Vec<FinishedJob>,
    recording: bool,
    /// The timer of progress lingering before its flush ([`PROGRESS_LINGER`]).
    linger: Option<SpawnHandle>,
    /// Drain requests waiting for the running jobs; `Some` once draining began.
    drain_waiters: Option<Vec<oneshot::Sender<()>>>,
    /// systemd's notification socket, when jobd runs under systemd.
    notifier: Option<Arc<Notifier>>,
    /// Half of systemd's watchdog timeout. The pings come from this actor's own loop, so
    /// a wedged Dispatcher stops them and systemd restarts jobd.
    watchdog: Option<Duration>,
}

impl Dispatcher {
    pub fn new(queue: QueueHandle, runner: Arc<JobRunner>, stats: Arc<Stats>, pool: PoolSettings) -> Self {
        let max_workers = pool.max_workers;
        let lease_term = queue.lease_term();
        let window_jobs = (2 * max_workers).max(WINDOW_FLOOR);
        Self {
            queue,
            runner,
            stats,
            retry_policy: pool.retry_policy,
            rng: fastrand::Rng::new(),
            workers: (0..max_workers).map(|_| WorkerSlot { addr: None, running: None }).collect(),
            idle: Vec::with_capacity(max_workers),
            // Twice the pool keeps every worker fed while the next page is fetched, with a
            // floor so that short jobs come in large batches: every fetch is a round trip
            // to the queue thread, and a million noop jobs ran end to end at about 65k/s
            // with a window of 64, 125k/s with 1,024 and 250k/s with 16,384. The byte
            // bound keeps a window of large jobs small: 1,000 jobs of 1 MiB behind a busy
            // pool took 1 GiB with the job bound alone.
            window: if pool.shared_queue {
                Window::new(window_jobs, pool.window_max_bytes)
                    .with_ready_limit(max_workers)
                    .counting_waiting_as_ready()
            } else {
                Window::new(window_jobs, pool.window_max_bytes)
            },
            claim_size: pool.shared_queue.then(|| ClaimSize::new(window_jobs)),
            fetching: false,
            awaiting_start: Vec::new(),
            lease_lapsed: false,
            lease_term,
            due_timer: None,
            due_timer_fired: None,
            busy: 0,
            started: Vec::new(),
            outcomes: Vec::new(),
            recording: false,
            linger: None,
            drain_waiters: None,
            notifier: None,
            watchdog: None,
        }
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
        let (busy, total) = (self.busy, self.workers.len());
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
        let live = self.workers.iter().filter(|slot| slot.addr.is_some()).count();
        self.stats.workers_total.store(live, Ordering::Relaxed);
    }

    fn draining(&self) -> bool {
        self.drain_waiters.is_some()
    }

    fn start_worker(&self, number: usize, ctx: &mut Context<Self>) {
        let dispatcher = ctx.address();
        let runner = self.runner.clone();
        Supervisor::start(move |_| Worker::new(number, WorkerReports::to(&dispatcher), runner));
    }

    /// Starts jobs while there is an idle worker and a ready job, then tops up the window.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.draining() || self.lease_lapsed() {
            return;
        }
        let mut dispatched = false;
        while let Some(&number) = self.idle.last() {
            let Some((job, kind, permit)) = self.window.next_runnable(&self.runner.kinds) else {
                break;
            };
            self.idle.pop();
            let slot = &mut self.workers[number];
            let Some(worker) = slot.addr.clone() else {
                // Unreachable: a worker is idle only once it registered. The job is not
                // lost either way: it was never started, so the next start runs it.
                tracing::error!(worker = number, job_id = %job.id, "an idle worker has no address");
                continue;
            };
            // A kind this build lacks is labelled "unknown"; its run fails for good.
            let kind_name = kind.label;
            slot.running = Some(RunningJob {
                id: job.id,
                kind: kind_name,
                attempt: job.attempt,
                claim: job.claim,
                max_attempts: job.max_attempts,
                gate: permit.as_ref().map(|permit| permit.gate().clone()),
            });
            self.busy += 1;
            let now = Utc::now();
            let due = job.due();
            let wait = (now - due).as_seconds_f64().max(0.0);
            self.runner.metrics.job_wait.with_label_values(&[kind_name]).observe(wait);
            self.started.push(StartedJob { id: job.id, attempt: job.attempt, claim: job.claim, started_at: now });
            if let Some(claim_size) = self.claim_size.as_mut() {
                claim_size.started(1);
            }
            // The pool bounds both: one RunJob per idle worker.
            if self.waits_for_recorded_start(kind.placement) {
                self.awaiting_start.push((number, worker, RunJob(job, kind, permit)));
            } else {
                worker.do_send(RunJob(job, kind, permit));
            }
            dispatched = true;
        }
        self.stats.workers_busy.store(self.busy, Ordering::Relaxed);
        if dispatched {
            self.record_progress(ctx);
        }
        if let Some(claim_size) = self.claim_size.as_mut() {
            self.window.set_ready_limit(claim_size.limit(self.workers.len() - self.busy, self.window.is_empty()));
        }
        if !self.fetching
            && let Some(wanted) = self.window.wanted()
        {
            self.fetch(wanted, ctx);
        }
    }

    fn fetch(&mut self, wanted: usize, ctx: &mut Context<Self>) {
        let timer_due = self.due_timer.map(|(due, _)| due);
        self.fetching = true;
        let queue = self.queue.clone();
        ctx.spawn(async move { queue.wait_ready(wanted, timer_due).await }.into_actor(self).map(
            move |result, dispatcher, ctx| {
                dispatcher.fetching = false;
                match result {
                    // A fresh look, not the last one: the claim may have come after a
                    // renewal the Dispatcher has not seen yet, and then its jobs are ours.
                    Ok(_) if dispatcher.lease_lapsed() => {
                        // Claimed before the lease lapsed: the renewal that ends the lapse
                        // begins a new term, and the next claim hands them out again.
                        dispatcher.window.add_fetched(Vec::new());
                    }
                    Ok(batch) => {
                        if let Some(claim_size) = dispatcher.claim_size.as_mut() {
                            claim_size.claimed(batch.jobs.len() >= wanted);
                        }
                        dispatcher.window.add_fetched(batch.jobs);
                        if let Some(due) = batch.next_due {
                            dispatcher.arm_due_timer(due, ctx);
                        }
                        dispatcher.pump(ctx);
                    }
                    Err(error) => {
                        dispatcher.window.add_fetched(Vec::new());
                        tracing::error!(%error, "fetching ready jobs failed; retrying");
                        ctx.run_later(RETRY_DELAY, |dispatcher, ctx| dispatcher.pump(ctx));
                    }
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
            if dispatcher.fetching {
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

    /// Decides what happens after an attempt: retry later, or the outcome is final.
    fn decide(&mut self, running: &RunningJob, outcome: Outcome) -> FinishedJob {
        let now = Utc::now();
        // An attempt stopped because the lease lapsed is retried even after the last one:
        // the node, not the job, failed.
        let attempts_left = running.attempt < running.max_attempts || matches!(outcome, Outcome::Interrupted);
        let retry_at = (outcome.is_retryable() && attempts_left).then(|| {
            let mut delay = self.retry_policy.delay(running.attempt, &mut self.rng);
            // The other side's `Retry-After` is a floor: the retry never comes sooner.
            if let Outcome::Deferred { retry_after, .. } = &outcome {
                delay = delay.max(*retry_after);
            }
            now + chrono::Duration::from_std(delay).unwrap_or_default()
        });
        let finished = FinishedJob {
            id: running.id,
            attempt: running.attempt,
            claim: running.claim,
            kind: running.kind,
            outcome,
            finished_at: now,
            retry_at,
        };
        match (finished.state(), retry_at) {
            (JobState::Failed, Some(at)) => {
                tracing::info!(
                    job_id = %running.id,
                    attempt = running.attempt,
                    retry_at = %at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    "job will be retried"
                );
            }
            (JobState::Dead, _) => {
                tracing::warn!(
                    job_id = %running.id,
                    attempts = running.attempt,
                    error = finished.outcome.error(),
                    "job is dead"
                );
            }
            _ => {}
        }
        finished
    }

    /// Replaces workers whose actor is gone without a restart (a panic outside the job
    /// body's containment, say). Their running job counts as a failed attempt.
    fn replace_dead_workers(&mut self, ctx: &mut Context<Self>) {
        for number in 0..self.workers.len() {
            let alive = self.workers[number].addr.as_ref().is_none_or(Addr::connected);
            if alive {
                continue;
            }
            tracing::error!(worker = number, "worker died; starting a replacement");
            self.runner.metrics.worker_replacements.inc();
            self.runner.metrics.worker_restarts.inc();
            self.idle.retain(|idle| *idle != number);
            let slot = &mut self.workers[number];
            slot.addr = None;
            if let Some(running) = slot.running.take() {
                self.busy -= 1;
                if let Some(gate) = &running.gate {
                    self.window.release_gate(gate);
                }
                let finished = self.decide(&running, Outcome::WorkerLost);
                self.outcomes.push(finished);
            }
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
        let buffered = self.started.len() + self.outcomes.len();
        let awaited = !self.awaiting_start.is_empty() || self.draining();
        if self.recording || buffered == 0 || awaited || buffered >= PROGRESS_LINGER_ENOUGH {
            self.flush_progress(ctx);
        } else if self.linger.is_none() {
            self.linger = Some(ctx.run_later(PROGRESS_LINGER, |dispatcher, ctx| {
                dispatcher.linger = None;
                dispatcher.flush_progress(ctx);
            }));
        }
    }

    /// Sends the buffered starts and outcomes to the queue now, unless a flush is out.
    fn flush_progress(&mut self, ctx: &mut Context<Self>) {
        if self.recording || (self.outcomes.is_empty() && self.started.is_empty()) {
            self.finish_drain_if_done();
            return;
        }
        if let Some(linger) = self.linger.take() {
            ctx.cancel_future(linger);
        }
        self.recording = true;
        let started = std::mem::take(&mut self.started);
        let finished = std::mem::take(&mut self.outcomes);
        let starting = std::mem::take(&mut self.awaiting_start);
        let term_at_send = self.queue.lease_term();
        let earliest_retry = finished.iter().filter_map(|end| end.retry_at).min();
        let ends = FinishedCounts::of(&finished);
        let queue = self.queue.clone();
        ctx.spawn(async move { queue.record_progress(started, finished).await }.into_actor(self).map(
            move |result, dispatcher, ctx| {
                dispatcher.recording = false;
                let refused = match result {
                    Ok(refused) => refused,
                    Err(failed) => {
                        // Keep the progress and try again shortly; until then the records
                        // lag behind the jobs, and a crash in between only means the jobs
                        // run again, which is the at-least-once promise.
                        tracing::error!(error = %failed.error, "recording job progress failed; retrying");
                        dispatcher.started.splice(0..0, failed.started);
                        dispatcher.outcomes.splice(0..0, failed.finished);
                        dispatcher.awaiting_start.splice(0..0, starting);
                        dispatcher.recording = true;
                        ctx.run_later(RETRY_DELAY, |dispatcher, ctx| {
                            dispatcher.recording = false;
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
        let done = self.busy == 0
            && !self.recording
            && self.outcomes.is_empty()
            && self.started.is_empty()
            && self.awaiting_start.is_empty();
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
        for number in 0..self.workers.len() {
            self.start_worker(number, ctx);
        }
        ctx.run_interval(WORKER_CHECK_INTERVAL, |dispatcher, ctx| {
            dispatcher.replace_dead_workers(ctx);
            let oldest = dispatcher.queue.is_shared().then(|| dispatcher.window.oldest_due()).flatten();
            dispatcher.stats.set_window_oldest_due(oldest);
            // A gate may have opened with time (a circuit's wait over): one job of each
            // tries again, and a success lets the rest follow.
            if dispatcher.window.release_all_gates() {
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
        slot.addr = Some(message.worker);
        self.count_workers();
        if !self.idle.contains(&message.number) {
            self.idle.push(message.number);
        }
        self.pump(ctx);
    }
}

impl Handler<JobFinished> for Dispatcher {
    type Result = ();

    fn handle(&mut self, message: JobFinished, ctx: &mut Self::Context) {
        let Some(running) = self.workers.get_mut(message.number).and_then(|slot| slot.running.take()) else {
            return;
        };
        self.busy = self.busy.saturating_sub(1);
        if !message.worker_restarts {
            self.idle.push(message.number);
        }
        if let Some(gate) = &running.gate {
            // Its permit was given back as the attempt ended: the next job at its gate may start.
            self.window.release_gate(gate);
        }
        let finished = self.decide(&running, message.outcome);
        self.outcomes.push(finished);
        self.record_progress(ctx);
        self.pump(ctx);
    }
}

impl Handler<GateOpened> for Dispatcher {
    type Result = ();

    fn handle(&mut self, GateOpened(gate): GateOpened, ctx: &mut Self::Context) {
        self.window.open_gate(&gate);
        self.pump(ctx);
    }
}

impl Handler<CancelJob> for Dispatcher {
    type Result = ResponseActFuture<Self, Result<Result<(), ControlError>, StorageError>>;

    fn handle(&mut self, CancelJob(id): CancelJob, _ctx: &mut Self::Context) -> Self::Result {
        let running = self.workers.iter().any(|slot| slot.running.as_ref().is_some_and(|job| job.id == id));
        if running {
            return Box::pin(actix::fut::ready(Ok(Err(ControlError::Conflict(JobState::Running)))));
        }
        // Out of the window before the queue is asked, and kept out of it until the queue
        // answers, so it cannot start meanwhile, whichever fetch brings it.
        self.window.cancel_started(id, self.fetching);
        let queue = self.queue.clone();
        Box::pin(async move { queue.cancel(id).await }.into_actor(self).map(move |result, dispatcher, ctx| {
            let cancelled = matches!(result, Ok(Ok(())));
            dispatcher.window.cancel_answered(id, cancelled, dispatcher.fetching);
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
        self.drain_waiters.get_or_insert_with(Vec::new).push(done);
        tracing::info!(running = self.busy, "draining: no new jobs start");
        let report = DrainReport { unstarted_in_window: self.window.len() };
        self.finish_drain_if_done();
        Box::pin(async move {
            // A dropped sender means the Dispatcher stopped, which also ends the drain.
            let _ = finished.await;
            report
        })
    }
}
