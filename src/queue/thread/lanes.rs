//! The ingest lane: a second queue thread, on a backend of its own, that takes the
//! commands adding unfinished jobs (submissions and retries) while the main lane claims and
//! records progress. Only a backend whose storage takes concurrent writers offers one.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::thread;

use tokio::sync::mpsc;

use super::{COMMAND_CHANNEL_CAPACITY, Command, CommitMetrics, LostSignal, Syncing, Waker, run_backend};
use crate::queue::{Lease, QueueBackend, StorageError};

/// How a lane relates to the other.
pub(super) struct Lanes {
    /// The main lane, which the ingest lane wakes after each commit that readied jobs,
    /// so that its held fetch looks again, as the main lane does after its own commits.
    pub(super) peer: Option<Waker>,
    /// Set by this lane's wakers; see [`Waker`].
    pub(super) woken: Arc<AtomicBool>,
}

/// Starts the ingest lane's thread on `lane`; returns it and the sender of its commands.
/// Its commits are durable by themselves (it has no sync thread). Should it panic, it
/// sets the main lane's `poison`, and wakes it, so that the queue is reported lost and
/// jobd stops, as when the main lane's thread dies: submissions never fail silently.
pub(super) fn spawn_ingest(
    lane: Box<dyn QueueBackend>,
    lease: Lease,
    per_commit: usize,
    metrics: &CommitMetrics,
    main: Waker,
    poison: Arc<OnceLock<StorageError>>,
) -> std::io::Result<(thread::JoinHandle<()>, mpsc::Sender<Command>)> {
    let (commands, receiver) = mpsc::channel(COMMAND_CHANNEL_CAPACITY);
    let metrics = metrics.clone();
    let thread = thread::Builder::new().name("jobd-ingest".to_owned()).spawn(move || {
        let _alarm = PanicAlarm { poison, main: main.clone() };
        let lost = LostSignal { poison: Arc::new(OnceLock::new()), sender: None };
        let lanes = Lanes { peer: Some(main), woken: Arc::new(AtomicBool::new(false)) };
        // Submissions only: no cancel reaches this lane, so there is none to hold.
        run_backend(lane, lease, receiver, per_commit, &metrics, Syncing::NotNeeded, lost, &lanes, None);
    })?;
    Ok((thread, commands))
}

/// Reports the ingest lane's panic to the main lane as it unwinds.
struct PanicAlarm {
    poison: Arc<OnceLock<StorageError>>,
    main: Waker,
}

impl Drop for PanicAlarm {
    fn drop(&mut self) {
        if thread::panicking() {
            tracing::error!("the queue's ingest thread panicked; the queue is lost and jobd stops");
            self.poison.get_or_init(|| StorageError::new("the queue's ingest thread panicked"));
            self.main.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    /// A wake that finds the main lane's channel full is kept as a flag, which the lane
    /// reads after each batch: the flag is set although the command was not sent.
    #[test]
    fn a_wake_into_a_full_channel_is_kept_as_a_flag() {
        let (commands, mut receiver) = mpsc::channel(1);
        let woken = Arc::new(AtomicBool::new(false));
        let waker = Waker::new(&commands, &woken);
        assert!(commands.try_send(Command::Nudge).is_ok(), "room for one command");
        waker.wake();
        assert!(woken.load(Ordering::Acquire));
        assert!(matches!(receiver.try_recv(), Ok(Command::Nudge)));
        assert!(receiver.try_recv().is_err(), "the wake itself found no room");
    }

    /// An ingest thread that panics poisons the queue and wakes the main lane, which then
    /// reports the queue lost; one that ends normally does neither.
    #[test]
    fn a_panicking_ingest_thread_poisons_the_queue_and_wakes_the_main_lane() {
        for panics in [false, true] {
            let (commands, _receiver) = mpsc::channel(4);
            let woken = Arc::new(AtomicBool::new(false));
            let poison = Arc::new(OnceLock::new());
            let alarm = PanicAlarm { poison: poison.clone(), main: Waker::new(&commands, &woken) };
            let ended = thread::spawn(move || {
                let _alarm = alarm;
                assert!(!panics, "a bug in the ingest lane");
            })
            .join();
            assert_eq!(ended.is_err(), panics);
            assert_eq!(poison.get().is_some(), panics);
            assert_eq!(woken.load(Ordering::Acquire), panics);
        }
    }
}
