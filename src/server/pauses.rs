//! The node's watch on paused queues: it pauses the queues the configuration starts
//! paused (unless an operator's word is stored), and tells the Dispatcher which queues are
//! paused as the queue's storage says, so that a pause from any node reaches this one.

use std::collections::HashSet;
use std::time::Duration;

use actix::Addr;

use crate::actors::{Dispatcher, QueuesPaused};
use crate::job::{QueueName, queue_name};
use crate::queue::{QueueHandle, StorageError};
use crate::queues::Queues;

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

/// Reads the paused queues every [`PAUSE_READ_PERIOD`] and tells the Dispatcher whenever
/// they change; runs until aborted at shutdown.
pub(super) async fn watch_pauses(queue: QueueHandle, dispatcher: Addr<Dispatcher>) {
    let mut told: Option<HashSet<QueueName>> = None;
    let mut interval = tokio::time::interval(PAUSE_READ_PERIOD);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let paused: HashSet<QueueName> = match queue.queues(false).await {
            Ok(view) => view.paused_names().map(queue_name).collect(),
            Err(error) => {
                // The Dispatcher keeps what it was last told; the next read tries again.
                tracing::debug!(%error, "reading the paused queues failed");
                continue;
            }
        };
        if told.as_ref() != Some(&paused) {
            if dispatcher.send(QueuesPaused(paused.clone())).await.is_err() {
                return;
            }
            told = Some(paused);
        }
    }
}
