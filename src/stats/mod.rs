//! What `GET /v1/stats` shows: the live gauges the actors keep, and the event counters of
//! the Prometheus registry, summed over their labels.

pub mod history;

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

use chrono::{DateTime, Utc};

use prometheus::IntCounterVec;
use prometheus::core::Collector as _;
use serde::Serialize;

use crate::metrics::Metrics;

/// Live gauges the actors keep and the HTTP layer reads. Every field is a relaxed atomic:
/// each is exact on its own, and a snapshot of several may be a few jobs apart, which is
/// fine for observation. Counters of events are not here: they live in the Prometheus
/// registry ([`Metrics`]), which `/v1/stats` reads too, so that each event is counted once.
#[derive(Debug, Default)]
pub struct Stats {
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
    /// When the longest-waiting job of the Dispatcher's window became due, in ms since the
    /// epoch; 0 when the window is empty. Published every second, on a queue shared by
    /// nodes only: a queue of its own reports its window's jobs itself (they are queued).
    pub window_oldest_due_ms: AtomicI64,
    /// The counters of the last five minutes, for rates without a second request.
    pub history: history::History,
}

/// Takes a sample of the counters every [`history::SAMPLE_PERIOD`], for as long as the
/// task that runs it lives (the server's, which ends with it).
pub async fn sample_history(stats: std::sync::Arc<Stats>, metrics: std::sync::Arc<Metrics>) {
    let mut interval = tokio::time::interval(history::SAMPLE_PERIOD);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let snapshot = stats.snapshot(&metrics);
        stats.history.record(history::Sample::of(&snapshot, Utc::now().timestamp_millis()));
    }
}

impl Stats {
    /// Publishes the window's longest-waiting job (see [`Stats::earliest_due`]).
    pub fn set_window_oldest_due(&self, due: Option<DateTime<Utc>>) {
        self.window_oldest_due_ms.store(due.map_or(0, |due| due.timestamp_millis().max(1)), Ordering::Relaxed);
    }

    /// The earlier of `queued` (the oldest job the queue reports) and the window's
    /// longest-waiting job. On a queue shared by several nodes the backend reports only the
    /// jobs no node holds: finding the leased ones would walk an index that every claim
    /// adds to and every finish leaves a dead entry in, tens to hundreds of milliseconds
    /// under load. Each node adds its own window instead, so the largest
    /// `jobd_queue_oldest_age_seconds` over the nodes is the cluster's.
    pub fn earliest_due(&self, queued: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
        let window = match self.window_oldest_due_ms.load(Ordering::Relaxed) {
            0 => None,
            millis => DateTime::from_timestamp_millis(millis),
        };
        match (queued, window) {
            (Some(queued), Some(window)) => Some(queued.min(window)),
            (queued, window) => queued.or(window),
        }
    }
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

fn read_gauge(gauge: &AtomicUsize) -> usize {
    gauge.load(Ordering::Relaxed)
}

/// The sum of a counter's series, over every label value, or over the series whose label
/// `label` has one of `values`.
fn total(counter: &IntCounterVec, filter: Option<(&str, &[&str])>) -> u64 {
    let mut sum = 0.0;
    for family in counter.collect() {
        for metric in family.get_metric() {
            let included = filter.is_none_or(|(label, values)| {
                metric.get_label().iter().any(|pair| pair.name() == label && values.contains(&pair.value()))
            });
            if included {
                sum += metric.get_counter().get_value();
            }
        }
    }
    sum as u64
}

impl Stats {
    /// Marks a job body as running until the returned guard drops, which also happens
    /// when the body panics or its future is dropped.
    pub fn body_running(&self) -> BodyGuard<'_> {
        let now = self.bodies_running.fetch_add(1, Ordering::Relaxed) + 1;
        self.bodies_running_peak.fetch_max(now, Ordering::Relaxed);
        BodyGuard { stats: self }
    }

    /// Reads every counter from `metrics` and every gauge from here.
    pub fn snapshot(&self, metrics: &Metrics) -> StatsSnapshot {
        let finished = |outcomes: &[&str]| total(&metrics.jobs_finished, Some(("outcome", outcomes)));
        let rejected = |reasons: &[&str]| total(&metrics.submissions_rejected, Some(("reason", reasons)));
        let dead = finished(&["dead"]);
        let failed_attempts = finished(&["failed", "timed_out", "panicked"]);
        let total_workers = read_gauge(&self.workers_total);
        let busy = read_gauge(&self.workers_busy);
        let replacements = metrics.worker_replacements.get();
        // A refusal by a kind's token limit is the caller's mistake, as a bad field is.
        let invalid_reasons: Vec<&str> = ["invalid", "too_deep", "body_timeout"]
            .into_iter()
            .chain(crate::kinds::token_limits().map(|limit| limit.rejection_reason))
            .collect();
        StatsSnapshot {
            jobs: JobCounts {
                accepted: total(&metrics.jobs_submitted, None),
                started: total(&metrics.jobs_started, None),
                succeeded: finished(&["succeeded"]),
                failed: finished(&["failed"]),
                timed_out: finished(&["timed_out"]),
                panicked: finished(&["panicked"]),
                // Every failed attempt either waits for a retry or made its job dead.
                retried: failed_attempts.saturating_sub(dead),
                dead,
            },
            workers: WorkerCounts {
                total: total_workers,
                busy,
                idle: total_workers.saturating_sub(busy),
                // `jobd_worker_restarts_total` counts both ways a worker comes back.
                restarts: metrics.worker_restarts.get().saturating_sub(replacements),
                replacements,
                bodies_running: read_gauge(&self.bodies_running),
                bodies_running_peak: read_gauge(&self.bodies_running_peak),
            },
            rejected: RejectionCounts {
                queue_full: rejected(&["queue_full"]),
                invalid: rejected(&invalid_reasons),
                too_large: rejected(&["too_large", "too_many_jobs"]),
                unavailable: rejected(&["unavailable", "commit_backlog"]),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earliest_due_is_the_queues_or_the_windows_whichever_waited_longer() {
        let stats = Stats::default();
        let now = Utc::now();
        let (older, newer) = (now - chrono::Duration::seconds(20), now - chrono::Duration::seconds(5));
        assert_eq!(stats.earliest_due(None), None);
        assert_eq!(stats.earliest_due(Some(newer)), Some(newer));
        stats.set_window_oldest_due(DateTime::from_timestamp_millis(older.timestamp_millis()));
        let window = DateTime::from_timestamp_millis(older.timestamp_millis());
        assert_eq!(stats.earliest_due(None), window, "a job held in the window only");
        assert_eq!(stats.earliest_due(Some(newer)), window);
        assert_eq!(
            stats.earliest_due(Some(now - chrono::Duration::seconds(60))),
            Some(now - chrono::Duration::seconds(60))
        );
        stats.set_window_oldest_due(None);
        assert_eq!(stats.earliest_due(Some(newer)), Some(newer), "an emptied window adds nothing");
    }
}
