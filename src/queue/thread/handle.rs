//! [`QueueHandle`]: how actors and handlers call the queue thread, each call a command
//! answered on a channel of its own.

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};

use super::reads::Read;
use super::{Command, Fetch, ProgressNotRecorded, Reply, SubmissionAnswer, Waiting};
use crate::job::{FinishedJob, Job, JobId, JobRecord, StartedJob};
use crate::queue::{
    ControlError, Cursor, JobPage, LeaseClock, ListFilter, QueueStatus, QueuesView, ReadyBatch, RefusedStarts,
    StorageError,
};

/// The error every [`QueueHandle`] call returns once the queue thread has stopped.
fn queue_closed() -> StorageError {
    StorageError::new("the queue thread has stopped")
}

/// Sends `command` to the lane behind `lane` and waits for its answer.
async fn call_on<T>(
    lane: &mpsc::Sender<Command>,
    command: impl FnOnce(Reply<T>) -> Command,
) -> Result<T, StorageError> {
    let (reply, answer) = oneshot::channel();
    lane.send(command(reply)).await.map_err(|_| queue_closed())?;
    answer.await.map_err(|_| queue_closed())?
}

/// A cheap, cloneable way to talk to the queue thread. Every call is async and
/// answered by the thread; the number of calls in flight is bounded by the channel.
#[derive(Clone)]
pub struct QueueHandle {
    pub(super) commands: mpsc::Sender<Command>,
    /// The ingest lane, which takes submissions and retries, when the backend has one.
    pub(super) ingest: Option<mpsc::Sender<Command>>,
    /// Whether the backend lists by job id: see [`super::super::QueueBackend::lists_by_id`].
    pub(super) lists_by_id: bool,
    /// This node's lease on a shared queue: see [`super::super::QueueBackend::lease_clock`].
    pub(super) lease_clock: Option<std::sync::Arc<LeaseClock>>,
    /// The read lane, which serves records and listings, when the backend has one.
    pub(super) reads: Option<mpsc::Sender<Read>>,
}

impl QueueHandle {
    /// Whether this node may act on the jobs it holds: always with a queue only it uses;
    /// with a shared one, while it can prove that its lease holds.
    pub fn lease_held(&self) -> bool {
        self.lease_clock.as_ref().is_none_or(|clock| clock.is_held())
    }

    /// The lease's term (see [`LeaseClock::term`]); always 0 with a queue only this node
    /// uses.
    pub fn lease_term(&self) -> u64 {
        self.lease_clock.as_ref().map_or(0, |clock| clock.term())
    }

    /// Whether other nodes share this queue, so that a job's start may be refused.
    pub fn is_shared(&self) -> bool {
        self.lease_clock.is_some()
    }

    /// Reads a listing cursor of this queue's form; `None` if it is not one.
    pub fn parse_cursor(&self, text: &str) -> Option<Cursor> {
        Cursor::parse(text, self.lists_by_id)
    }

    async fn call<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, StorageError> {
        call_on(&self.commands, command).await
    }

    /// Enqueues a group of submissions in one transaction; see [`super::JobWriter::enqueue`].
    pub async fn enqueue_group(&self, group: Vec<Vec<Job>>) -> Result<Vec<SubmissionAnswer>, StorageError> {
        self.call_ingest(|reply| Command::Enqueue { replies: vec![(group.len(), reply)], group }).await
    }

    /// Calls the ingest lane, when there is one, else the queue thread: the commands that
    /// add unfinished jobs (submissions, retries) go there, so that one lane of this node
    /// checks them all against `max_queue`.
    async fn call_ingest<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, StorageError> {
        call_on(self.ingest.as_ref().unwrap_or(&self.commands), command).await
    }

    /// Claims up to `max` ready jobs (see [`super::JobWriter::claim`]); answered at once.
    pub async fn take_ready(&self, max: usize) -> Result<ReadyBatch, StorageError> {
        self.call(|reply| Command::TakeReady(Fetch { max, wait: None, reply })).await
    }

    /// Like [`take_ready`](Self::take_ready), but when nothing is ready the queue thread
    /// holds the call and answers it right after the next commit that readies jobs, or that
    /// makes a delayed job due before `timer_due` (when the caller's own timer fires), or
    /// at [`nudge`](Self::nudge). A cancel also answers it, so that the caller learns that
    /// its fetch cannot bring the cancelled job. One such call is meant to be in flight.
    pub async fn wait_ready(&self, max: usize, timer_due: Option<DateTime<Utc>>) -> Result<ReadyBatch, StorageError> {
        self.call(|reply| Command::TakeReady(Fetch { max, wait: Some(Waiting { timer_due }), reply })).await
    }

    /// Answers the call of [`wait_ready`](Self::wait_ready) that waits, if any, with what
    /// is ready now: the caller's timer fired, and delayed jobs may be due.
    pub async fn nudge(&self) -> Result<(), StorageError> {
        self.commands.send(Command::Nudge).await.map_err(|_| queue_closed())
    }

    /// See [`super::JobWriter::retry_dead`].
    pub async fn retry_dead(&self, id: JobId) -> Result<Result<(), ControlError>, StorageError> {
        self.call_ingest(|reply| Command::Retry { id, reply }).await
    }

    /// See [`super::JobWriter::cancel`].
    pub async fn cancel(&self, id: JobId) -> Result<Result<(), ControlError>, StorageError> {
        self.call(|reply| Command::Cancel { id, now: Utc::now(), reply }).await
    }

    /// See [`super::JobReader::list`].
    pub async fn list(
        &self,
        filter: ListFilter,
        before: Option<Cursor>,
        limit: usize,
    ) -> Result<JobPage, StorageError> {
        match &self.reads {
            Some(lane) => super::reads::call(lane, |reply| Read::List { filter, before, limit, reply }).await,
            None => self.call(|reply| Command::List { filter, before, limit, reply }).await,
        }
    }

    /// Records started and finished jobs in one transaction, and answers with the starts
    /// it refused. On failure the progress comes back, to be tried again.
    pub async fn record_progress(
        &self,
        started: Vec<StartedJob>,
        finished: Vec<FinishedJob>,
    ) -> Result<RefusedStarts, ProgressNotRecorded> {
        let (reply, answer) = oneshot::channel();
        let command = Command::RecordProgress { started, finished, reply };
        if let Err(mpsc::error::SendError(command)) = self.commands.send(command).await {
            let Command::RecordProgress { started, finished, .. } = command else { unreachable!("sent just above") };
            return Err(ProgressNotRecorded { error: queue_closed(), started, finished });
        }
        answer.await.unwrap_or_else(|_| {
            Err(ProgressNotRecorded { error: queue_closed(), started: Vec::new(), finished: Vec::new() })
        })
    }

    /// See [`super::JobWriter::purge_finished`].
    pub async fn purge_finished(&self, cutoff: DateTime<Utc>, limit: usize) -> Result<usize, StorageError> {
        self.call(|reply| Command::Purge { cutoff, limit, reply }).await
    }

    /// See [`super::JobReader::get`].
    pub async fn get(&self, id: JobId, with_payload: bool) -> Result<Option<JobRecord>, StorageError> {
        match &self.reads {
            Some(lane) => super::reads::call(lane, |reply| Read::Get { id, with_payload, reply }).await,
            None => self.call(|reply| Command::Get { id, with_payload, reply }).await,
        }
    }

    /// See [`super::JobWriter::set_queue_paused`]; answered once durable.
    pub async fn set_queue_paused(&self, name: &str, paused: bool, if_unset: bool) -> Result<(), StorageError> {
        let name = name.to_owned();
        self.call(|reply| Command::SetPaused { name, paused, if_unset, reply }).await
    }

    /// See [`super::JobReader::queues`]; on the read lane when there is one.
    /// Without `with_depths`, only which queues are paused: one read of a few rows, which
    /// goes to the queue thread, so that a watch of the pauses never waits in the read
    /// lane behind (or ahead of) a costly listing. With them, a read of every unfinished
    /// job's index entry, on the read lane where there is one.
    pub async fn queues(&self, with_depths: bool) -> Result<QueuesView, StorageError> {
        match &self.reads {
            Some(lane) if with_depths => super::reads::call(lane, |reply| Read::Queues { with_depths, reply }).await,
            _ => self.call(|reply| Command::Queues { with_depths, reply }).await,
        }
    }

    /// Depth, durability and whether writes currently succeed.
    pub async fn status(&self) -> Result<QueueStatus, StorageError> {
        self.call(|reply| Command::Status { reply }).await
    }

    /// Whether the ingest lane, when there is one, reaches its storage and its latest
    /// write committed: submissions go there, so a node whose ingest connection is down
    /// is not ready however well its main lane does. `true` without a lane of its own.
    pub async fn ingest_writable(&self) -> Result<bool, StorageError> {
        let Some(lane) = &self.ingest else { return Ok(true) };
        call_on(lane, |reply| Command::Status { reply }).await.map(|status| status.writable)
    }
}
