//! The Dispatcher's decisions, with no I/O: which idle worker runs which claimed job, when
//! to fetch and how many, which starts and outcomes a progress flush carries, what an
//! attempt's end means (retry or final), and what a cancel, a drain and a lapsed lease do
//! to the pool and the window. [`Scheduler`] takes events (a worker is idle, a fetch
//! answered, an attempt ended, a flush committed) and returns what to do (run these jobs,
//! fetch this many, flush this progress); the Dispatcher actor carries that out with its
//! timers, its worker addresses and the queue.
//!
//! **Architecture Invariant:** nothing here awaits, spawns, reads a clock or talks to the
//! queue: the time and the lease's state come in with the events, so every decision can
//! be driven and checked in a unit test (`scheduler/tests.rs`, with proptest).

use std::collections::HashSet;
use std::time::Instant;

use chrono::{DateTime, Utc};

use super::claim_size::ClaimSize;
use super::progress::PROGRESS_LINGER_ENOUGH;
use super::window::Window;
use crate::job::{FinishedJob, Job, JobId, JobState, Outcome, StartedJob};
use crate::kinds::{GateKey, Kinds, Permit, Placement, ResolvedKind, RunsOn, Starts};
use crate::retry::RetryPolicy;

#[cfg(test)]
mod tests;

/// The fewest jobs the window of claimed jobs holds; see [`Scheduler::new`].
const WINDOW_FLOOR: usize = 16_384;

/// What the scheduler is built with.
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

/// A job handed to a worker: its kind, resolved once for the attempt, and its kind's
/// permit if it gave one.
#[derive(Debug)]
pub struct Launch {
    pub worker: usize,
    pub job: Job,
    pub kind: ResolvedKind,
    pub permit: Option<Permit>,
}

/// What the scheduler knows about a job a worker is running.
#[derive(Debug)]
pub struct RunningJob {
    pub id: JobId,
    pub kind: &'static str,
    pub attempt: u32,
    /// The claim the attempt runs under; its outcome is recorded only under it.
    pub claim: i64,
    pub max_attempts: u32,
    /// The gate whose permit the job holds (a webhook destination): when the job ends, a
    /// job waiting at that gate may start.
    pub gate: Option<GateKey>,
    /// Its named queue: when it ends, a job of the queue waiting at the queue's limit may
    /// start.
    pub queue: crate::job::QueueName,
}

/// What [`Scheduler::pump`] decided.
#[derive(Debug, Default)]
pub struct Pumped {
    /// Jobs to hand their workers now.
    pub run_now: Vec<Launch>,
    /// Whether any job was handed a worker (at once or once its start is recorded): the
    /// starts are then buffered for a flush.
    pub dispatched: bool,
    /// Each started job's kind and how long it waited since it was due, in seconds.
    pub waits: Vec<(&'static str, f64)>,
    /// Send a fetch for this many jobs.
    pub fetch: Option<usize>,
}

/// Whether buffered progress goes now or lingers ([`super::progress::PROGRESS_LINGER`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressDue {
    Now,
    Linger,
}

/// One progress flush: the starts and ends it records, and the jobs that wait for it to
/// commit before they run.
#[derive(Debug)]
pub struct Flush {
    pub started: Vec<StartedJob>,
    pub finished: Vec<FinishedJob>,
    pub starting: Vec<Launch>,
}

/// What a committed flush lets run.
#[derive(Debug, Default)]
pub struct FlushCommitted {
    /// Jobs whose start is recorded and still this node's: hand them their workers.
    pub run: Vec<Launch>,
    /// Whether a worker was freed without running its job (a refused start, or a lease
    /// that lapsed as it was recorded).
    pub freed: bool,
    /// Jobs not run because the queue refused their start (another node or claim holds
    /// them), and jobs not run because the lease lapsed, for the log.
    pub refused: Vec<(JobId, u32)>,
    pub interrupted: Vec<(JobId, u32)>,
}

/// What a look at the lease changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LeaseChange {
    /// The lease is not held now: nothing starts and nothing is fetched.
    pub lapsed: bool,
    /// It was just lost (or came back in a new term): the claimed jobs were dropped from
    /// the window (how many), and these workers' jobs must stop.
    pub stopped: Option<(usize, Vec<usize>)>,
    /// It is held again after a lapse: work resumes.
    pub resumed: bool,
}

/// See the module's documentation.
#[derive(Debug)]
pub struct Scheduler {
    retry_policy: RetryPolicy,
    rng: fastrand::Rng,
    /// By worker number: whether the worker has reported idle at least once since it was
    /// (re)started, so that it can be handed jobs.
    registered: Vec<bool>,
    /// By worker number: the job it runs.
    running: Vec<Option<RunningJob>>,
    /// Numbers of idle workers, used last-in first-out so the most recently active
    /// worker (whose state is warm in the cache) runs the next job.
    idle: Vec<usize>,
    busy: usize,
    /// Jobs claimed from the queue and not started, bounded in jobs and in bytes, so
    /// memory does not grow with the backlog or with the size of its bodies.
    window: Window,
    /// On a shared queue, how many runnable jobs the window holds.
    claim_size: Option<ClaimSize>,
    shared: bool,
    /// Whether a fetch is out; at most one is, so the window is never overfilled.
    fetching: bool,
    /// Jobs handed a worker whose start is being recorded: each starts once the flush
    /// carrying its start has committed, so that an attempt counts even if the process
    /// dies during it.
    awaiting_start: Vec<Launch>,
    /// Whether this node lost sight of its lease on a shared queue: it then starts and
    /// claims nothing until a renewal proves the lease again.
    lease_lapsed: bool,
    /// Starts and outcomes waiting to be recorded, flushed together, one flush at a time.
    started: Vec<StartedJob>,
    outcomes: Vec<FinishedJob>,
    recording: bool,
    draining: bool,
    /// How many jobs of each named queue were handed a worker since the last
    /// [`take_started_by_queue`](Self::take_started_by_queue): counted here, and reported
    /// once a second, so that a start costs no metric lookup.
    started_by_queue: Vec<(crate::job::QueueName, u64)>,
}

impl Scheduler {
    /// A pool of `max_workers` workers, none registered yet, and an empty window, made at
    /// `now`. `rng` draws the retries' jitter.
    pub fn new(pool: PoolSettings, rng: fastrand::Rng, now: Instant) -> Self {
        let max_workers = pool.max_workers;
        // Twice the pool keeps every worker fed while the next page is fetched, with a
        // floor so that short jobs come in large batches: every fetch is a round trip to
        // the queue thread, and a million noop jobs ran end to end at about 65k/s with a
        // window of 64, 125k/s with 1,024 and 250k/s with 16,384. The byte bound keeps a
        // window of large jobs small: 1,000 jobs of 1 MiB behind a busy pool took 1 GiB
        // with the job bound alone.
        let window_jobs = (2 * max_workers).max(WINDOW_FLOOR);
        let window = if pool.shared_queue {
            Window::new(window_jobs, pool.window_max_bytes).with_ready_limit(max_workers).counting_waiting_as_ready()
        } else {
            Window::new(window_jobs, pool.window_max_bytes)
        };
        Scheduler {
            retry_policy: pool.retry_policy,
            rng,
            registered: vec![false; max_workers],
            running: (0..max_workers).map(|_| None).collect(),
            idle: Vec::with_capacity(max_workers),
            busy: 0,
            window,
            claim_size: pool.shared_queue.then(|| ClaimSize::new(window_jobs, now)),
            shared: pool.shared_queue,
            fetching: false,
            awaiting_start: Vec::new(),
            lease_lapsed: false,
            started: Vec::new(),
            outcomes: Vec::new(),
            recording: false,
            draining: false,
            started_by_queue: Vec::new(),
        }
    }

    pub fn workers(&self) -> usize {
        self.running.len()
    }

    pub fn busy(&self) -> usize {
        self.busy
    }

    pub fn is_fetching(&self) -> bool {
        self.fetching
    }

    pub fn is_lease_lapsed(&self) -> bool {
        self.lease_lapsed
    }

    /// When the longest-waiting job of the window became due.
    pub fn oldest_due(&self) -> Option<DateTime<Utc>> {
        self.window.oldest_due()
    }

    #[cfg(test)]
    fn window(&self) -> &Window {
        &self.window
    }

    /// Worker `number` is idle: at its first start, after a restart, or after a job.
    /// Returns false for a number outside the pool.
    pub fn worker_idle(&mut self, number: usize) -> bool {
        let Some(registered) = self.registered.get_mut(number) else { return false };
        *registered = true;
        if !self.idle.contains(&number) {
            self.idle.push(number);
        }
        true
    }

    /// Whether a job waits for its recorded start before it runs: when its kind's
    /// placement says so, and on a shared queue every job with effects, so that a refused
    /// start (the job moved to another node) runs nothing. A job on the worker's thread
    /// (`noop`) has no effect to guard.
    fn waits_for_recorded_start(&self, placement: Placement) -> bool {
        placement.starts == Starts::WhenRecorded || (self.shared && placement.runs_on != RunsOn::WorkerThread)
    }

    /// Hands ready jobs to idle workers, then says whether to fetch. Nothing starts and
    /// nothing is fetched while draining or while the lease is lapsed. `now` stamps the
    /// starts; `tick`, the same moment on the monotonic clock, paces a shared queue's claims.
    pub fn pump(&mut self, kinds: &Kinds, now: DateTime<Utc>, tick: Instant) -> Pumped {
        let mut pumped = Pumped::default();
        if self.draining || self.lease_lapsed {
            return pumped;
        }
        while let Some(&number) = self.idle.last() {
            let Some((job, kind, permit)) = self.window.next_runnable(kinds) else { break };
            self.idle.pop();
            if !self.registered[number] {
                // Unreachable: a worker is idle only once it registered. The job is not
                // lost either way: it was never started, so the next claim runs it.
                tracing::error!(worker = number, job_id = %job.id, "an idle worker is not registered");
                self.window.queue_job_ended(&job.queue);
                continue;
            }
            self.running[number] = Some(RunningJob {
                id: job.id,
                kind: kind.label,
                attempt: job.attempt,
                claim: job.claim,
                max_attempts: job.max_attempts,
                gate: permit.as_ref().map(|permit| permit.gate().clone()),
                queue: job.queue.clone(),
            });
            self.busy += 1;
            pumped.waits.push((kind.label, (now - job.due()).as_seconds_f64().max(0.0)));
            match self.started_by_queue.iter_mut().find(|(queue, _)| *queue == job.queue) {
                Some((_, count)) => *count += 1,
                None => self.started_by_queue.push((job.queue.clone(), 1)),
            }
            self.started.push(StartedJob { id: job.id, attempt: job.attempt, claim: job.claim, started_at: now });
            if let Some(claim_size) = self.claim_size.as_mut() {
                claim_size.started(1);
            }
            let launch = Launch { worker: number, job, kind, permit };
            if self.waits_for_recorded_start(kind.placement) {
                self.awaiting_start.push(launch);
            } else {
                pumped.run_now.push(launch);
            }
            pumped.dispatched = true;
        }
        if let Some(claim_size) = self.claim_size.as_mut() {
            self.window.set_ready_limit(claim_size.limit(tick, self.running.len() - self.busy, self.window.is_empty()));
        }
        if !self.fetching
            && let Some(wanted) = self.window.wanted()
        {
            self.fetching = true;
            pumped.fetch = Some(wanted);
        }
        pumped
    }

    /// A fetch for `wanted` jobs brought `jobs`.
    pub fn fetched(&mut self, jobs: Vec<Job>, wanted: usize) {
        self.fetching = false;
        if let Some(claim_size) = self.claim_size.as_mut() {
            claim_size.claimed(jobs.len() >= wanted);
        }
        self.window.add_fetched(jobs);
    }

    /// A fetch failed, or brought jobs claimed before the lease lapsed, which the next
    /// claim after the renewal hands out again.
    pub fn fetch_dropped(&mut self) {
        self.fetching = false;
        self.window.add_fetched(Vec::new());
    }

    /// Decides what an attempt's end means: retry later, or the outcome is final.
    fn decide(&mut self, running: &RunningJob, outcome: Outcome, now: DateTime<Utc>) -> FinishedJob {
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

    /// Worker `number` ended its attempt with `outcome`; unless it restarts (its job
    /// panicked, and it reports idle itself), it is idle again. Returns false when it ran
    /// nothing (a stale report).
    pub fn job_finished(&mut self, number: usize, outcome: Outcome, restarts: bool, now: DateTime<Utc>) -> bool {
        let Some(running) = self.running.get_mut(number).and_then(Option::take) else { return false };
        self.busy = self.busy.saturating_sub(1);
        if !restarts {
            self.idle.push(number);
        }
        if let Some(gate) = &running.gate {
            // Its permit was given back as the attempt ended: the next job at its gate may start.
            self.window.release_gate(gate);
        }
        self.window.queue_job_ended(&running.queue);
        let finished = self.decide(&running, outcome, now);
        self.outcomes.push(finished);
        true
    }

    /// Worker `number` died outside supervision: it is no longer idle or registered, and
    /// its running job counts as a failed attempt. Returns whether it ran one.
    pub fn worker_lost(&mut self, number: usize, now: DateTime<Utc>) -> bool {
        self.idle.retain(|idle| *idle != number);
        if let Some(registered) = self.registered.get_mut(number) {
            *registered = false;
        }
        let Some(running) = self.running.get_mut(number).and_then(Option::take) else { return false };
        self.busy -= 1;
        if let Some(gate) = &running.gate {
            self.window.release_gate(gate);
        }
        self.window.queue_job_ended(&running.queue);
        let finished = self.decide(&running, Outcome::WorkerLost, now);
        self.outcomes.push(finished);
        true
    }

    /// Whether buffered progress should go now: starts that jobs wait for and a drain go
    /// at once, and so does a buffer full enough; the rest lingers.
    pub fn progress_due(&self) -> ProgressDue {
        let buffered = self.started.len() + self.outcomes.len();
        let awaited = !self.awaiting_start.is_empty() || self.draining;
        if self.recording || buffered == 0 || awaited || buffered >= PROGRESS_LINGER_ENOUGH {
            ProgressDue::Now
        } else {
            ProgressDue::Linger
        }
    }

    /// The buffered progress as one flush, unless a flush is out or there is none.
    pub fn take_flush(&mut self) -> Option<Flush> {
        if self.recording || (self.outcomes.is_empty() && self.started.is_empty()) {
            return None;
        }
        self.recording = true;
        Some(Flush {
            started: std::mem::take(&mut self.started),
            finished: std::mem::take(&mut self.outcomes),
            starting: std::mem::take(&mut self.awaiting_start),
        })
    }

    /// A flush failed: its progress goes back ahead of what came meanwhile, and no flush
    /// goes until [`retry_flush`](Self::retry_flush).
    pub fn flush_failed(&mut self, flush: Flush) {
        self.started.splice(0..0, flush.started);
        self.outcomes.splice(0..0, flush.finished);
        self.awaiting_start.splice(0..0, flush.starting);
    }

    /// The pause after a failed flush is over.
    pub fn retry_flush(&mut self) {
        self.recording = false;
    }

    /// A flush committed. Of the jobs that waited for it, those whose start the queue
    /// refused never run (their workers are idle again and their gates' permits given
    /// back), and so do none while the lease is not `held` (lapsed, or lapsed and renewed
    /// since the flush was sent): their attempts, already counted, end as interrupted, so
    /// that they are retried rather than left running on a node that holds nothing.
    pub fn flush_committed(
        &mut self,
        starting: Vec<Launch>,
        refused: &[(JobId, i64)],
        held: bool,
        now: DateTime<Utc>,
    ) -> FlushCommitted {
        self.recording = false;
        let mut committed = FlushCommitted::default();
        let refused: HashSet<(JobId, i64)> = refused.iter().copied().collect();
        for launch in starting {
            let was_refused = refused.contains(&(launch.job.id, launch.job.claim));
            // A worker lost meanwhile has had its attempt ended already: its job runs on
            // no other worker.
            let still_its_job =
                self.running.get(launch.worker).and_then(Option::as_ref).is_some_and(|job| job.id == launch.job.id);
            if !still_its_job {
                continue;
            }
            if held && !was_refused {
                committed.run.push(launch);
                continue;
            }
            let Launch { worker, job, permit, .. } = launch;
            committed.freed = true;
            if let Some(permit) = permit {
                let gate = permit.gate().clone();
                drop(permit);
                self.window.release_gate(&gate);
            }
            let Some(running) =
                self.running.get_mut(worker).and_then(|slot| slot.take_if(|running| running.id == job.id))
            else {
                continue;
            };
            self.busy = self.busy.saturating_sub(1);
            self.window.queue_job_ended(&running.queue);
            if !self.idle.contains(&worker) {
                self.idle.push(worker);
            }
            if was_refused {
                committed.refused.push((job.id, job.attempt));
            } else {
                committed.interrupted.push((job.id, job.attempt));
                let finished = self.decide(&running, Outcome::Interrupted, now);
                self.outcomes.push(finished);
            }
        }
        committed
    }

    /// Stops starting jobs; returns how many claimed jobs the window holds unstarted.
    pub fn drain(&mut self) -> usize {
        self.draining = true;
        self.window.len()
    }

    #[cfg(test)]
    fn is_draining(&self) -> bool {
        self.draining
    }

    /// Whether a drain is over: nothing runs, and every start and outcome is recorded.
    pub fn drained(&self) -> bool {
        self.draining
            && self.busy == 0
            && !self.recording
            && self.outcomes.is_empty()
            && self.started.is_empty()
            && self.awaiting_start.is_empty()
    }

    /// A cancel of `id` is asked for. A running job cannot be cancelled (`false`); any
    /// other leaves the window until the queue answers, so it cannot start meanwhile,
    /// whichever fetch brings it.
    pub fn cancel_requested(&mut self, id: JobId) -> bool {
        if self.running.iter().flatten().any(|job| job.id == id) {
            return false;
        }
        self.window.cancel_started(id, self.fetching);
        true
    }

    /// The queue answered the cancel of `id`: a cancelled job never starts; one that
    /// could not be cancelled goes back to the front of the window.
    pub fn cancel_answered(&mut self, id: JobId, cancelled: bool) {
        self.window.cancel_answered(id, cancelled, self.fetching);
    }

    /// The starts of each named queue since the last call.
    pub fn take_started_by_queue(&mut self) -> Vec<(crate::job::QueueName, u64)> {
        std::mem::take(&mut self.started_by_queue)
    }

    /// Per named queue with jobs running or waiting at its limit here: how many run, and how
    /// many wait at its `concurrency` (not those of a paused queue).
    pub fn queue_load(&self) -> std::collections::HashMap<crate::job::QueueName, (usize, usize)> {
        let mut load: std::collections::HashMap<crate::job::QueueName, (usize, usize)> =
            self.window.throttled_by_queue().map(|(queue, waiting)| (queue, (0, waiting))).collect();
        for running in self.running.iter().flatten() {
            load.entry(running.queue.clone()).or_default().0 += 1;
        }
        load
    }

    /// Limits the jobs of each named queue that run at once on this node.
    pub fn with_queue_limits(mut self, limits: impl IntoIterator<Item = (crate::job::QueueName, usize)>) -> Self {
        self.window = self.window.with_queue_limits(limits);
        self
    }

    /// The named queues paused now (on every node that shares the queue): their jobs in
    /// the window wait without starting, and those of a queue resumed may start again.
    pub fn queues_paused(&mut self, paused: &HashSet<crate::job::QueueName>) {
        self.window.set_paused_queues(paused);
    }

    /// A gate opened by itself: every job waiting at it tries again, in order.
    pub fn gate_opened(&mut self, gate: &GateKey) {
        self.window.open_gate(gate);
    }

    /// Lets one job of every gate try again, as time may have opened them. Returns whether
    /// any job was let out.
    pub fn release_all_gates(&mut self) -> bool {
        self.window.release_all_gates()
    }

    /// A look at the lease: `held` now, and whether a new term began since the last look
    /// (it lapsed in between). When it lapsed, or came back in a new term, the claimed jobs
    /// are dropped and the running ones must stop: another node may hold them now.
    pub fn lease_observed(&mut self, held: bool, new_term: bool) -> LeaseChange {
        let mut change = LeaseChange { lapsed: !held, ..LeaseChange::default() };
        if (!held || new_term) && !self.lease_lapsed {
            let dropped = self.window.drop_claimed();
            let running = (0..self.running.len()).filter(|number| self.running[*number].is_some()).collect();
            change.stopped = Some((dropped, running));
        }
        change.resumed = held && self.lease_lapsed;
        self.lease_lapsed = !held;
        change
    }
}
