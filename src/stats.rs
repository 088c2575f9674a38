//! Live counters shared by the actors and the HTTP layer, read by `GET /v1/stats`
//! (and, later, exported to Prometheus).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde::Serialize;

/// Counters and gauges. Every field is a relaxed atomic: each is exact on its own, and
/// a snapshot of several may be a few jobs apart, which is fine for observation.
#[derive(Debug, Default)]
pub struct Stats {
    /// Jobs accepted with a 202.
    pub jobs_accepted: AtomicU64,
    /// Jobs a worker started.
    pub jobs_started: AtomicU64,
    pub jobs_succeeded: AtomicU64,
    /// Jobs whose body returned an error (panics excluded).
    pub jobs_failed: AtomicU64,
    pub jobs_panicked: AtomicU64,
    /// Attempts abandoned at their timeout.
    pub jobs_timed_out: AtomicU64,
    /// Failed attempts that will be retried.
    pub jobs_retried: AtomicU64,
    /// Jobs that failed for good.
    pub jobs_dead: AtomicU64,
    /// Times the Supervisor restarted a worker.
    pub worker_restarts: AtomicU64,
    /// Workers that died some other way and were replaced by the Dispatcher.
    pub worker_replacements: AtomicU64,
    pub rejected_queue_full: AtomicU64,
    pub rejected_invalid: AtomicU64,
    pub rejected_too_large: AtomicU64,
    pub rejected_unavailable: AtomicU64,
    /// Workers in the pool, as the Dispatcher counts them.
    pub workers_total: AtomicUsize,
    /// Timers armed for delayed jobs: 0 or 1, however many jobs are scheduled.
    pub delay_timers: AtomicUsize,
    /// Workers running a job, as the Dispatcher counts them.
    pub workers_busy: AtomicUsize,
    /// Job bodies executing right now, counted inside the body itself. Independent of
    /// the Dispatcher's bookkeeping, so it can check that bookkeeping.
    pub bodies_running: AtomicUsize,
    /// The highest `bodies_running` ever seen.
    pub bodies_running_peak: AtomicUsize,
}

/// A point-in-time copy of [`Stats`], as served by `GET /v1/stats`.
#[derive(Debug, Serialize)]
pub struct StatsSnapshot {
    pub jobs: JobCounts,
    pub workers: WorkerCounts,
    pub rejected: RejectionCounts,
}

#[derive(Debug, Serialize)]
pub struct JobCounts {
    pub accepted: u64,
    /// Attempts started; with retries, a job may start more than once.
    pub started: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub panicked: u64,
    /// Attempts that failed and were scheduled to run again.
    pub retried: u64,
    pub dead: u64,
}

#[derive(Debug, Serialize)]
pub struct WorkerCounts {
    pub total: usize,
    pub busy: usize,
    pub idle: usize,
    pub restarts: u64,
    pub replacements: u64,
    pub bodies_running: usize,
    pub bodies_running_peak: usize,
}

#[derive(Debug, Serialize)]
pub struct RejectionCounts {
    pub queue_full: u64,
    pub invalid: u64,
    pub too_large: u64,
    pub unavailable: u64,
}

fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn read_gauge(gauge: &AtomicUsize) -> usize {
    gauge.load(Ordering::Relaxed)
}

impl Stats {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks a job body as running until the returned guard drops, which also happens
    /// when the body panics or its future is dropped.
    pub fn body_running(&self) -> BodyGuard<'_> {
        let now = self.bodies_running.fetch_add(1, Ordering::Relaxed) + 1;
        self.bodies_running_peak.fetch_max(now, Ordering::Relaxed);
        BodyGuard { stats: self }
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let accepted = read(&self.jobs_accepted);
        let started = read(&self.jobs_started);
        let total = read_gauge(&self.workers_total);
        let busy = read_gauge(&self.workers_busy);
        StatsSnapshot {
            jobs: JobCounts {
                accepted,
                started,
                succeeded: read(&self.jobs_succeeded),
                failed: read(&self.jobs_failed),
                timed_out: read(&self.jobs_timed_out),
                panicked: read(&self.jobs_panicked),
                retried: read(&self.jobs_retried),
                dead: read(&self.jobs_dead),
            },
            workers: WorkerCounts {
                total,
                busy,
                idle: total.saturating_sub(busy),
                restarts: read(&self.worker_restarts),
                replacements: read(&self.worker_replacements),
                bodies_running: read_gauge(&self.bodies_running),
                bodies_running_peak: read_gauge(&self.bodies_running_peak),
            },
            rejected: RejectionCounts {
                queue_full: read(&self.rejected_queue_full),
                invalid: read(&self.rejected_invalid),
                too_large: read(&self.rejected_too_large),
                unavailable: read(&self.rejected_unavailable),
            },
        }
    }
}

/// See [`Stats::body_running`].
pub struct BodyGuard<'a> {
    stats: &'a Stats,
}

impl Drop for BodyGuard<'_> {
    fn drop(&mut self) {
        self.stats.bodies_running.fetch_sub(1, Ordering::Relaxed);
    }
}
