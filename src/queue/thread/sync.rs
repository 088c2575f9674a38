//! The queue thread's durability: the sync thread, which fsyncs what the queue thread
//! committed, once for every transaction waiting, and answers their callers after it; and
//! the signal that the queue is lost when a sync fails.

use std::sync::{Arc, OnceLock};
use std::thread;

use tokio::sync::{mpsc, oneshot};

use super::{Command, CommitMetrics, Committed};
use crate::queue::{StorageError, Syncer};

/// Where committed transactions go to be made durable before their callers are answered.
pub(super) enum Syncing {
    /// Commits need no sync after them: answer at once.
    NotNeeded,
    /// The sync thread, which the queue thread owns: dropping `to_sync` ends it, and the
    /// queue thread joins it before it ends itself.
    Thread { to_sync: std::sync::mpsc::SyncSender<Committed>, thread: thread::JoinHandle<()> },
}

/// The failure that lost the queue, set once by whichever thread syncs, and the
/// [`QueueLost`] sender, which the queue thread alone uses.
pub(super) struct LostSignal {
    pub(super) poison: Arc<OnceLock<StorageError>>,
    pub(super) sender: Option<oneshot::Sender<StorageError>>,
}

impl LostSignal {
    /// The error, once a sync failed; tells the owner of [`QueueLost`] the first time.
    pub(super) fn check(&mut self) -> Option<StorageError> {
        let error = self.poison.get()?;
        if let Some(sender) = self.sender.take() {
            drop(sender.send(error.clone()));
        }
        Some(error.clone())
    }
}

/// Syncs everything committed so far, once for all the transactions waiting, and answers
/// their callers, or fails them all: when the sync fails, and once the queue is lost.
pub(super) fn run_sync_thread(
    mut syncer: Box<dyn Syncer>,
    committed: &std::sync::mpsc::Receiver<Committed>,
    poison: &OnceLock<StorageError>,
    wake: &mpsc::WeakSender<Command>,
    metrics: &CommitMetrics,
) {
    while let Ok(first) = committed.recv() {
        let mut batches = vec![first];
        batches.extend(committed.try_iter());
        if let Some(error) = poison.get() {
            batches.into_iter().for_each(|batch| batch.fail(error));
            continue;
        }
        let started = std::time::Instant::now();
        let synced = syncer.sync();
        metrics.sync_duration.observe(started.elapsed().as_secs_f64());
        let Err(error) = synced else {
            batches.into_iter().for_each(Committed::answer);
            continue;
        };
        let error = StorageError::outcome_unknown(format!(
            "{}; what was committed since the last sync may or may not be on disk, so the queue refuses all work \
             until jobd restarts and recovers from what is on disk",
            error.message()
        ));
        tracing::error!(%error, transactions = batches.len(), "syncing the queue failed");
        let error = poison.get_or_init(|| error);
        batches.into_iter().for_each(|batch| batch.fail(error));
        // The queue thread may be asleep with a fetch held; wake it, so that it fails that
        // fetch and reports the loss now rather than at its next command.
        if let Some(commands) = wake.upgrade() {
            drop(commands.try_send(Command::Nudge));
        }
    }
}
