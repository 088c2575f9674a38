//! The commands the queue thread takes ([`Command`]), what a write produced inside its
//! transaction ([`Output`]), and how each command is executed and answered, or failed.

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use super::{ProgressNotRecorded, Reply, SubmissionAnswer};
use crate::job::{FinishedJob, Job, JobId, JobRecord, StartedJob};
use crate::queue::{
    ControlError, Cursor, JobPage, ListFilter, QueueBackend, QueueStatus, ReadyBatch, RefusedStarts, StorageError,
};

pub(super) enum Command {
    /// Another process may have readied jobs: the waiting fetch looks again.
    Wake,
    /// Submissions, and who waits for which: each reply is owed the answers of the next
    /// `usize` submissions. The groups of one batch are merged into one command
    /// ([`merge_enqueues`]), so that a backend inserts them with one statement.
    Enqueue {
        group: Vec<Vec<Job>>,
        replies: Vec<(usize, Reply<Vec<SubmissionAnswer>>)>,
    },
    TakeReady(Fetch),
    /// Answers the waiting fetch now, whatever it finds.
    Nudge,
    RecordProgress {
        started: Vec<StartedJob>,
        finished: Vec<FinishedJob>,
        reply: ProgressReply,
    },
    Purge {
        cutoff: DateTime<Utc>,
        limit: usize,
        reply: Reply<usize>,
    },
    Retry {
        id: JobId,
        reply: Reply<Result<(), ControlError>>,
    },
    Cancel {
        id: JobId,
        now: DateTime<Utc>,
        reply: Reply<Result<(), ControlError>>,
    },
    Get {
        id: JobId,
        with_payload: bool,
        reply: Reply<Option<JobRecord>>,
    },
    List {
        filter: ListFilter,
        before: Option<Cursor>,
        limit: usize,
        reply: Reply<JobPage>,
    },
    Status {
        reply: Reply<QueueStatus>,
    },
    SetPaused {
        name: String,
        paused: bool,
        if_unset: bool,
        reply: Reply<()>,
    },
    Queues {
        with_depths: bool,
        reply: Reply<crate::queue::QueuesView>,
    },
}

type ProgressReply = oneshot::Sender<Result<RefusedStarts, ProgressNotRecorded>>;

/// How a fetch that finds nothing new waits: see [`QueueHandle::wait_ready`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Waiting {
    /// When the caller's own timer fires; a delayed job due by then needs no answer.
    pub(super) timer_due: Option<DateTime<Utc>>,
}

/// A call for ready jobs. One that may wait and finds nothing worth answering is held by
/// the queue thread until a commit may have changed that or the caller nudges it.
pub(super) struct Fetch {
    pub(super) max: usize,
    pub(super) wait: Option<Waiting>,
    pub(super) reply: Reply<ReadyBatch>,
}

/// Whether a fetch's result tells its caller something: jobs, or a delayed job due before
/// the caller's timer fires.
pub(super) fn worth_answering(batch: &ReadyBatch, waiting: Waiting) -> bool {
    !batch.jobs.is_empty()
        || batch.stopped_at_byte_limit
        || batch.next_due.is_some_and(|due| waiting.timer_due.is_none_or(|timer| due < timer))
}

/// What a write command produced inside the open transaction; its answer is held back
/// until the commit has returned.
pub(super) enum Output {
    Enqueue(Vec<SubmissionAnswer>),
    RecordProgress(RefusedStarts),
    Purge(usize),
    Control(Result<(), ControlError>),
    Done,
}

impl Command {
    pub(super) fn is_read(&self) -> bool {
        matches!(self, Command::Get { .. } | Command::Status { .. } | Command::List { .. } | Command::Queues { .. })
    }

    /// Whether a committed transaction that carried this command may have made jobs ready
    /// or moved the next due time, so that a waiting fetch must look again.
    pub(super) fn may_ready_jobs(&self) -> bool {
        matches!(self, Command::Enqueue { .. } | Command::Retry { .. } | Command::SetPaused { paused: false, .. })
    }

    /// Does a write command's work. Jobs to enqueue are moved into the backend; progress
    /// is only borrowed, so that it can be handed back if the commit fails.
    pub(super) fn execute(&mut self, backend: &mut dyn QueueBackend) -> Result<Output, StorageError> {
        match self {
            Command::Enqueue { group, .. } => Ok(Output::Enqueue(backend.enqueue_group(std::mem::take(group))?)),
            Command::Retry { id, .. } => Ok(Output::Control(backend.retry_dead(*id)?)),
            Command::Cancel { id, now, .. } => Ok(Output::Control(backend.cancel(*id, *now)?)),
            Command::RecordProgress { started, finished, .. } => {
                Ok(Output::RecordProgress(backend.record_progress(started, finished)?))
            }
            Command::Purge { cutoff, limit, .. } => Ok(Output::Purge(backend.purge_finished(*cutoff, *limit)?)),
            Command::SetPaused { name, paused, if_unset, .. } => {
                backend.set_queue_paused(name, *paused, *if_unset, Utc::now())?;
                Ok(Output::Done)
            }
            Command::Get { .. } | Command::Status { .. } | Command::List { .. } | Command::Queues { .. } => {
                unreachable!("reads run outside transactions")
            }
            Command::TakeReady(_) | Command::Nudge | Command::Wake => {
                unreachable!("fetches run in transactions of their own")
            }
        }
    }

    /// Answers a write command after its transaction committed.
    pub(super) fn answer(self, output: Output) {
        // A reply whose receiver went away is dropped: the caller gave up, and the work
        // is done either way, exactly as if the answer had been lost on the wire.
        match (self, output) {
            (Command::Enqueue { replies, .. }, Output::Enqueue(answers)) => {
                let mut answers = answers.into_iter();
                for (submissions, reply) in replies {
                    drop(reply.send(Ok(answers.by_ref().take(submissions).collect())));
                }
            }
            (Command::Retry { reply, .. } | Command::Cancel { reply, .. }, Output::Control(result)) => {
                drop(reply.send(Ok(result)))
            }
            (Command::RecordProgress { reply, .. }, Output::RecordProgress(refused)) => drop(reply.send(Ok(refused))),
            (Command::Purge { reply, .. }, Output::Purge(count)) => drop(reply.send(Ok(count))),
            (Command::SetPaused { reply, .. }, Output::Done) => drop(reply.send(Ok(()))),
            _ => unreachable!("each command produces its own kind of output"),
        }
    }

    /// Answers a command with a storage error: its transaction failed and nothing it did
    /// remains, or the queue is lost and nobody knows.
    pub(super) fn fail(self, error: &StorageError) {
        match self {
            Command::Enqueue { replies, .. } => {
                for (_, reply) in replies {
                    drop(reply.send(Err(error.clone())));
                }
            }
            Command::TakeReady(fetch) => drop(fetch.reply.send(Err(error.clone()))),
            Command::Retry { reply, .. } | Command::Cancel { reply, .. } => drop(reply.send(Err(error.clone()))),
            Command::List { reply, .. } => drop(reply.send(Err(error.clone()))),
            Command::RecordProgress { started, finished, reply } => {
                drop(reply.send(Err(ProgressNotRecorded { error: error.clone(), started, finished })))
            }
            Command::Purge { reply, .. } => drop(reply.send(Err(error.clone()))),
            Command::Get { reply, .. } => drop(reply.send(Err(error.clone()))),
            Command::Status { reply } => drop(reply.send(Err(error.clone()))),
            Command::SetPaused { reply, .. } => drop(reply.send(Err(error.clone()))),
            Command::Queues { reply, .. } => drop(reply.send(Err(error.clone()))),
            Command::Nudge | Command::Wake => {}
        }
    }
}
