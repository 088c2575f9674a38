//! The job queue seam: the [`QueueBackend`] trait every backend implements, and the
//! [`QueueThread`] that runs a backend on a thread of its own so no actor ever blocks on it.

pub mod memory;

use std::thread;

use tokio::sync::{mpsc, oneshot};

use crate::job::{FinishedJob, Job};

/// A storage failure: the operation did nothing. Callers answer 503 and keep running.
#[derive(Debug, Clone, thiserror::Error)]
#[error("queue storage failed: {0}")]
pub struct StorageError(pub String);

/// Why one submission of a group was refused while the others may have been accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Accepting the submission would exceed `max_queue` unfinished jobs.
    #[error("the queue holds {unfinished} of at most {capacity} unfinished jobs; {requested} more do not fit")]
    QueueFull { unfinished: usize, capacity: usize, requested: usize },
}

/// How many jobs the backend holds, by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Accepted and not yet handed to the Dispatcher.
    pub queued: usize,
    /// Handed to the Dispatcher and not yet finished.
    pub claimed: usize,
    /// The most unfinished jobs the backend accepts (`max_queue`).
    pub capacity: usize,
}

/// A place where accepted jobs wait for a worker.
///
/// A backend is owned by exactly one thread (see [`QueueThread`]), so its methods take
/// `&mut self` and may block: a durable backend does its I/O here. Every method is a
/// whole unit of work: it either happens completely or returns an error and changes nothing.
pub trait QueueBackend: Send + 'static {
    /// Enqueues a group of submissions in one commit.
    ///
    /// Each submission is all-or-nothing: it is accepted whole or refused whole with a
    /// [`Refusal`], judged in group order. A [`StorageError`] means nothing of the group
    /// was stored. Group commit lives here: one call is one transaction, however many
    /// submissions it carries.
    fn enqueue_group(&mut self, group: Vec<Vec<Job>>) -> Result<Vec<Result<(), Refusal>>, StorageError>;

    /// Claims up to `max` ready jobs in submission order for the Dispatcher.
    fn take_ready(&mut self, max: usize) -> Result<Vec<Job>, StorageError>;

    /// Records how claimed jobs ended, freeing their capacity.
    fn record_outcomes(&mut self, finished: Vec<FinishedJob>) -> Result<(), StorageError>;

    /// The current depth.
    fn depth(&self) -> QueueDepth;

    /// Whether jobs the backend accepted are still there after the process dies.
    fn is_durable(&self) -> bool;
}

enum Command {
    Enqueue { group: Vec<Vec<Job>>, reply: oneshot::Sender<Result<Vec<Result<(), Refusal>>, StorageError>> },
    TakeReady { max: usize, reply: oneshot::Sender<Result<Vec<Job>, StorageError>> },
    RecordOutcomes { finished: Vec<FinishedJob>, reply: oneshot::Sender<Result<(), StorageError>> },
    Depth { reply: oneshot::Sender<(QueueDepth, bool)> },
}

/// The error every [`QueueHandle`] call returns once the queue thread has stopped.
fn queue_closed() -> StorageError {
    StorageError("the queue thread has stopped".to_owned())
}

/// Owns the thread that runs the backend. Dropping every [`QueueHandle`] and then
/// calling [`QueueThread::join`] ends it.
pub struct QueueThread {
    handle: QueueHandle,
    thread: thread::JoinHandle<()>,
}

/// A cheap, cloneable way to talk to the queue thread. Every call is async and
/// answered by the thread; the number of calls in flight is bounded by the channel.
#[derive(Clone)]
pub struct QueueHandle {
    commands: mpsc::Sender<Command>,
}

/// Calls in flight beyond this wait for room. The protocol keeps far fewer in flight:
/// one commit from the Ingest actor, one fetch and one outcome flush from the Dispatcher,
/// plus status reads.
const COMMAND_CHANNEL_CAPACITY: usize = 256;

impl QueueThread {
    /// Starts the queue thread with `backend`.
    pub fn spawn(backend: Box<dyn QueueBackend>) -> std::io::Result<Self> {
        let (commands, receiver) = mpsc::channel(COMMAND_CHANNEL_CAPACITY);
        let thread =
            thread::Builder::new().name("jobd-queue".to_owned()).spawn(move || run_backend(backend, receiver))?;
        Ok(Self { handle: QueueHandle { commands }, thread })
    }

    /// A handle for actors and handlers.
    pub fn handle(&self) -> QueueHandle {
        self.handle.clone()
    }

    /// Waits for the thread to finish. It finishes once every handle, including the
    /// one this value holds, is gone, so call this after the actors have stopped.
    pub fn join(self) {
        drop(self.handle);
        if self.thread.join().is_err() {
            tracing::error!("the queue thread panicked");
        }
    }
}

fn run_backend(mut backend: Box<dyn QueueBackend>, mut receiver: mpsc::Receiver<Command>) {
    // Replies whose receiver went away are dropped: the caller gave up, and the work is
    // done either way, exactly as if the answer had been lost on the wire.
    while let Some(command) = receiver.blocking_recv() {
        match command {
            Command::Enqueue { group, reply } => {
                let _ = reply.send(backend.enqueue_group(group));
            }
            Command::TakeReady { max, reply } => {
                let _ = reply.send(backend.take_ready(max));
            }
            Command::RecordOutcomes { finished, reply } => {
                let _ = reply.send(backend.record_outcomes(finished));
            }
            Command::Depth { reply } => {
                let _ = reply.send((backend.depth(), backend.is_durable()));
            }
        }
    }
}

impl QueueHandle {
    async fn call<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, StorageError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(command(reply)).await.map_err(|_| queue_closed())?;
        answer.await.map_err(|_| queue_closed())
    }

    /// See [`QueueBackend::enqueue_group`].
    pub async fn enqueue_group(&self, group: Vec<Vec<Job>>) -> Result<Vec<Result<(), Refusal>>, StorageError> {
        self.call(|reply| Command::Enqueue { group, reply }).await?
    }

    /// See [`QueueBackend::take_ready`].
    pub async fn take_ready(&self, max: usize) -> Result<Vec<Job>, StorageError> {
        self.call(|reply| Command::TakeReady { max, reply }).await?
    }

    /// See [`QueueBackend::record_outcomes`].
    pub async fn record_outcomes(&self, finished: Vec<FinishedJob>) -> Result<(), StorageError> {
        self.call(|reply| Command::RecordOutcomes { finished, reply }).await?
    }

    /// The depth and whether the backend is durable.
    pub async fn depth(&self) -> Result<(QueueDepth, bool), StorageError> {
        self.call(|reply| Command::Depth { reply }).await
    }
}
