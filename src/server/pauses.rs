//! The node's watch on paused queues: it pauses the queues the configuration starts
//! paused (unless an operator's word is stored), tells the Dispatcher which queues are
//! paused as the queue's storage says, so that a pause from any node reaches this one, and
//! keeps the named queues' paused and depth series.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;

use crate::actors::{Dispatcher, QueuesPaused};
use crate::job::{QueueName, queue_name};
use crate::queue::{QueueHandle, QueuesView, StorageError};
use crate::queues::{QueueMetrics, Queues, UNFINISHED_STATES};

/// How often the named queues' depths (`jobd_queue_jobs`) are read: a read of every
/// unfinished job's index entry, on the read lane, so not at every scrape.
const DEPTH_READ_PERIOD: Duration = Duration::from_secs(15);

/// What the watch reports into.
pub(super) struct Reporting {
    pub(super) metrics: QueueMetrics,
    pub(super) queues: Arc<Queues>,
    pub(super) queue_id: Arc<str>,
}

impl Reporting {
    /// Sets `jobd_queue_paused` for every declared queue and every queue the storage names.
    fn paused(&self, view: &QueuesView) {
        let names = self.queues.iter().map(|queue| queue.name.to_string()).chain(view.paused.keys().cloned());
        for name in names {
            let paused = view.paused.get(&name).copied().unwrap_or(false);
            self.metrics.paused.with_label_values(&[&*self.queue_id, name.as_str()]).set(i64::from(paused));
        }
    }

    /// Sets `jobd_queue_jobs` for every declared queue and every queue holding jobs.
    fn depths(&self, view: &QueuesView) {
        let names = self.queues.iter().map(|queue| queue.name.to_string()).chain(view.depths.keys().cloned());
        for name in names {
            for state in UNFINISHED_STATES {
                let count = view.depths.get(&name).and_then(|states| states.get(&state)).copied().unwrap_or(0);
                self.metrics
                    .jobs
                    .with_label_values(&[&*self.queue_id, name.as_str(), state.name()])
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
            }
        }
    }
}

/// How often the node reads which queues are paused: a pause reaches every node within
/// this, plus a read. A read of the few rows of `queue_states` costs well under a
/// millisecond, on the read lane where there is one.
pub(super) const PAUSE_READ_PERIOD: Duration = Duration::from_millis(250);

/// Pauses the queues the configuration starts paused, where the storage holds no word on
/// them yet: an operator's resume through the API outlives restarts.
pub(super) async fn pause_configured(queue: &QueueHandle, queues: &Queues) -> Result<(), StorageError> {
    for name in queues.paused_at_start() {
        queue.set_queue_paused(&name, true, true).await?;
    }
    Ok(())
}

/// Reads the paused queues every [`PAUSE_READ_PERIOD`], and at once when `changed` is
/// notified (a pause or resume through this node), and tells the Dispatcher whenever they
/// change; reads the depths every [`DEPTH_READ_PERIOD`]; runs until aborted at shutdown.
///
/// **Architecture Invariant:** this watch is the only sender of the paused queues to the
/// Dispatcher, so what it last told is what the Dispatcher holds: a second sender (the
/// handler of a pause) could leave the Dispatcher with a set the watch never compares
/// against, and a queue held paused that the storage runs.
pub(super) async fn watch_pauses(
    queue: QueueHandle,
    dispatcher: Addr<Dispatcher>,
    reporting: Reporting,
    changed: Arc<tokio::sync::Notify>,
) {
    let mut told: Option<HashSet<QueueName>> = None;
    let mut interval = tokio::time::interval(PAUSE_READ_PERIOD);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut depths_read_at: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = changed.notified() => {}
        }
        let with_depths = depths_read_at.is_none_or(|at| at.elapsed() >= DEPTH_READ_PERIOD);
        let view = match queue.queues(with_depths).await {
            Ok(view) => view,
            Err(error) => {
                // The Dispatcher keeps what it was last told; the next read tries again.
                tracing::debug!(%error, "reading the paused queues failed");
                continue;
            }
        };
        reporting.paused(&view);
        if with_depths {
            reporting.depths(&view);
            depths_read_at = Some(std::time::Instant::now());
        }
        let paused: HashSet<QueueName> = view.paused_names().map(queue_name).collect();
        if told.as_ref() != Some(&paused) {
            if dispatcher.send(QueuesPaused(paused.clone())).await.is_err() {
                return;
            }
            told = Some(paused);
        }
    }
}
