//! The named queues' series: each queue's starts, running and throttled jobs on this node,
//! whether it is paused, and its unfinished jobs by state. The last two are facts of the
//! whole queue (every node of a shared queue reports the same), so they carry the storage's
//! `queue_id` as the queue-wide series do, and a dashboard takes their `max`.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use super::Queues;
use crate::job::JobState;

/// The states `jobd_queue_jobs` reports: the unfinished ones.
pub const UNFINISHED_STATES: [JobState; 4] =
    [JobState::Queued, JobState::Scheduled, JobState::Running, JobState::Failed];

/// See the module's documentation.
#[derive(Clone, Debug)]
pub struct QueueMetrics {
    /// `jobd_queue_started_total{queue}`: attempts this node started.
    pub started: IntCounterVec,
    /// `jobd_queue_running{queue}`: attempts running on this node now.
    pub running: IntGaugeVec,
    /// `jobd_queue_throttled{queue}`: jobs this node claimed that wait at the queue's
    /// `concurrency` now.
    pub throttled: IntGaugeVec,
    /// `jobd_queue_paused{queue_id, queue}`: 1 while paused.
    pub paused: IntGaugeVec,
    /// `jobd_queue_jobs{queue_id, queue, state}`: unfinished jobs, sampled.
    pub jobs: IntGaugeVec,
}

impl QueueMetrics {
    /// Creates the series in `registry`, each declared queue's at zero, so that a
    /// dashboard shows every queue from the first scrape.
    pub fn register(registry: &Registry, queues: &Queues, queue_id: &str) -> Result<Self, prometheus::Error> {
        let metrics = QueueMetrics {
            started: IntCounterVec::new(
                Opts::new("jobd_queue_started_total", "Attempts this node started, by named queue."),
                &["queue"],
            )?,
            running: IntGaugeVec::new(
                Opts::new("jobd_queue_running", "Attempts running on this node, by named queue."),
                &["queue"],
            )?,
            throttled: IntGaugeVec::new(
                Opts::new(
                    "jobd_queue_throttled",
                    "Jobs this node claimed that wait at their named queue's concurrency limit.",
                ),
                &["queue"],
            )?,
            paused: IntGaugeVec::new(
                Opts::new("jobd_queue_paused", "1 while the named queue is paused, on every node; else 0."),
                &["queue_id", "queue"],
            )?,
            jobs: IntGaugeVec::new(
                Opts::new(
                    "jobd_queue_jobs",
                    "Unfinished jobs by named queue and state, sampled every 15 s; the same on every node.",
                ),
                &["queue_id", "queue", "state"],
            )?,
        };
        for queue in queues.iter() {
            let name = &*queue.name;
            metrics.started.with_label_values(&[name]);
            metrics.running.with_label_values(&[name]);
            metrics.throttled.with_label_values(&[name]);
            metrics.paused.with_label_values(&[queue_id, name]);
            for state in UNFINISHED_STATES {
                metrics.jobs.with_label_values(&[queue_id, name, state.name()]);
            }
        }
        registry.register(Box::new(metrics.started.clone()))?;
        registry.register(Box::new(metrics.running.clone()))?;
        registry.register(Box::new(metrics.throttled.clone()))?;
        registry.register(Box::new(metrics.paused.clone()))?;
        registry.register(Box::new(metrics.jobs.clone()))?;
        Ok(metrics)
    }
}
