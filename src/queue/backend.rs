//! The backend seam: small capability traits a queue backend implements, in the spirit of
//! apalis's `Backend`. [`Transactions`] is the protocol the queue thread drives,
//! [`JobWriter`] and [`JobReader`] are the domain operations, and [`QueueBackend`] ties
//! them together with what the thread needs besides (durability, optional wakeups from
//! other processes).
//!
//! **Architecture Invariant:** a backend stores and returns [`Job`] envelopes and never
//! interprets a kind's name, arguments or body.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{
    Admitted, ControlError, Cursor, JobPage, Lease, ListFilter, QueueDepth, QueuesView, ReadyBatch, Refusal,
    RefusedStarts, StorageError, Waker,
};
use crate::job::{FinishedJob, Job, JobId, JobRecord, StartedJob};

/// Makes every unit of work committed before the call durable. It runs on the queue's
/// sync thread, beside the thread that owns the backend and goes on committing; a failure
/// means the backend no longer knows what its storage holds, and the queue refuses all
/// further work (see [`super::QueueLost`]).
pub trait Syncer: Send + 'static {
    fn sync(&mut self) -> Result<(), StorageError>;
}

impl<F: FnMut() -> Result<(), StorageError> + Send + 'static> Syncer for F {
    fn sync(&mut self) -> Result<(), StorageError> {
        self()
    }
}

/// The transaction protocol the queue thread drives.
///
/// A backend is owned by exactly one thread (see [`super::QueueThread`]), so its methods
/// take `&mut self` and may block: a durable backend does its I/O here. The thread wraps a
/// batch of calls in [`begin`](Self::begin) and [`commit`](Self::commit); nothing a batch
/// did may be visible after a failed commit, and [`rollback`](Self::rollback) must restore
/// any bookkeeping the backend keeps in memory. A commit makes the batch final for this
/// process; its [`Syncer`] then makes it durable, and only then are the batch's callers
/// answered.
pub trait Transactions {
    /// Starts a unit of work.
    fn begin(&mut self) -> Result<(), StorageError> {
        Ok(())
    }

    /// Starts a unit of work for [`JobWriter::claim`], which mostly reads: a backend may
    /// put off its locks until it touches storage, which a claim served from memory may
    /// never do.
    fn begin_fetch(&mut self) -> Result<(), StorageError> {
        self.begin()
    }

    /// Ends the unit of work: what it did is final and visible to the next one, but need
    /// not be durable until the [`syncer`](Self::syncer) has run.
    fn commit(&mut self) -> Result<(), StorageError> {
        Ok(())
    }

    /// Hands over what makes committed units of work durable, to run on a thread of its
    /// own while the backend's thread goes on committing (see [`Syncer`]); from then on a
    /// commit need not be durable by itself. `None` when a commit needs nothing more: a
    /// backend that keeps nothing, one told not to sync, or one that keeps syncing in each
    /// commit. A backend never asked (group commit off) makes each commit durable itself.
    fn syncer(&mut self) -> Option<Box<dyn Syncer>> {
        None
    }

    /// Undoes the unit of work after a failure.
    fn rollback(&mut self) {}

    /// Tries a trivial write, to learn whether a storage fault has passed.
    fn check_writable(&mut self) -> Result<(), StorageError> {
        Ok(())
    }
}

/// Writing jobs: every method runs inside a unit of work of [`Transactions`].
pub trait JobWriter {
    /// Enqueues one submission, all or nothing: either every job is accepted (or
    /// answered by an earlier job with the same idempotency key) or none is.
    fn enqueue(&mut self, submission: Vec<Job>) -> Result<Result<Vec<Admitted>, Refusal>, StorageError>;

    /// Enqueues a group of submissions in the open transaction, each all or nothing, and
    /// answers each as [`enqueue`](Self::enqueue) would. A backend whose round trips cost
    /// more than its rows (PostgreSQL) inserts the whole group in one statement.
    fn enqueue_group(&mut self, group: Vec<Vec<Job>>) -> Result<Vec<Result<Vec<Admitted>, Refusal>>, StorageError> {
        group.into_iter().map(|submission| self.enqueue(submission)).collect()
    }

    /// Moves scheduled and failed jobs whose `run_at` has come to the queue, then claims
    /// up to `max` queued jobs in order for `lease`'s holder, stopping before a job whose
    /// body would take the batch past [`super::CLAIM_MAX_BODY_BYTES`] (the first job is
    /// always taken). A claimed job is not returned again while its lease holds.
    fn claim(&mut self, max: usize, now: DateTime<Utc>, lease: &Lease) -> Result<ReadyBatch, StorageError>;

    /// Records starts and finishes together: a start marks a job running and counts its
    /// attempt; a finish's final states free capacity, and its retries wait for
    /// `retry_at`. A backend may take fewer writes than one per job, for jobs that started
    /// and finished within one flush. Each start and finish names the attempt it belongs
    /// to, so that a backend shared between processes can refuse a stale one.
    ///
    /// Returns the starts it refused: jobs this process must not run, because they moved
    /// on to another node or claim, or because its lease is not proven held.
    fn record_progress(
        &mut self,
        started: &[StartedJob],
        finished: &[FinishedJob],
    ) -> Result<RefusedStarts, StorageError>;

    /// Queues a dead job again with its attempts reset.
    fn retry_dead(&mut self, id: JobId) -> Result<Result<(), ControlError>, StorageError>;

    /// Cancels a job that has not started: queued, scheduled, or failed and waiting.
    fn cancel(&mut self, id: JobId, now: DateTime<Utc>) -> Result<Result<(), ControlError>, StorageError>;

    /// Deletes up to `limit` finished jobs that finished before `cutoff`; returns how many.
    fn purge_finished(&mut self, cutoff: DateTime<Utc>, limit: usize) -> Result<usize, StorageError>;

    /// Pauses or resumes the named queue for every process that shares the storage: from
    /// the commit on, claims skip a paused queue's jobs, and a resumed queue's jobs are
    /// claimed again in their order. With `if_unset`, it writes only when the storage holds
    /// no word on the queue yet (a queue the configuration starts paused), so that an
    /// operator's resume outlives restarts.
    fn set_queue_paused(
        &mut self,
        name: &str,
        paused: bool,
        if_unset: bool,
        now: DateTime<Utc>,
    ) -> Result<(), StorageError>;
}

/// Reading jobs and the queue's state; all fallible, since a shared backend reads them
/// from its storage rather than from counts in memory.
pub trait JobReader {
    /// One job's record.
    fn get(&mut self, id: JobId, with_payload: bool) -> Result<Option<JobRecord>, StorageError>;

    /// A page of records that pass `filter`, newest first, before a cursor.
    fn list(&mut self, filter: &ListFilter, before: Option<Cursor>, limit: usize) -> Result<JobPage, StorageError>;

    /// How many jobs are in each state.
    fn depth(&mut self) -> Result<QueueDepth, StorageError>;

    /// The named queues' state: which are paused, and, `with_depths`, their unfinished
    /// jobs by state (a read of every unfinished job's index entry).
    fn queues(&mut self, with_depths: bool) -> Result<QueuesView, StorageError>;

    /// When the oldest queued job (the next to be claimed) became due.
    fn oldest_queued(&mut self) -> Result<Option<DateTime<Utc>>, StorageError> {
        Ok(None)
    }

    /// Whether the backend's storage reached its size limit, so that submissions are
    /// refused until finished jobs are purged.
    fn is_full(&mut self) -> Result<bool, StorageError> {
        Ok(false)
    }
}

/// Records and listings, read apart from the writer on storage of its own (a connection),
/// with a bound on each read: a costly listing then never holds up claims, progress or
/// submissions, whoever sends it.
pub trait RecordReader: Send {
    /// One job's record.
    fn get(&mut self, id: JobId, with_payload: bool) -> Result<Option<JobRecord>, StorageError>;

    /// A page of records that pass `filter`, newest first, before a cursor.
    fn list(&mut self, filter: &ListFilter, before: Option<Cursor>, limit: usize) -> Result<JobPage, StorageError>;
    /// See [`JobReader::queues`].
    fn queues(&mut self, with_depths: bool) -> Result<QueuesView, StorageError>;
}

/// A place where accepted jobs wait for a worker: the capabilities above, plus what the
/// queue thread asks of a backend as a whole.
pub trait QueueBackend: Transactions + JobWriter + JobReader + Send + 'static {
    /// Whether jobs the backend accepted are still there after the process dies.
    fn is_durable(&self) -> bool;

    /// What names this queue for as long as its storage lives, the same on every node
    /// that shares it: the `queue` label of the queue-wide series, so that a dashboard
    /// counts a shared queue once however many nodes report it, and separate queues
    /// (single hosts behind one Prometheus) each once.
    fn queue_id(&self) -> Arc<str>;

    /// Whether listings are ordered, and their cursors made, by job id ([`Cursor::Id`])
    /// rather than by an insertion sequence ([`Cursor::Seq`]).
    fn lists_by_id(&self) -> bool {
        false
    }

    /// A second backend on storage of its own (a connection) for submissions alone, run
    /// on a thread of its own beside this one, so that their commits need not wait for
    /// claims and progress. Only a backend whose storage takes concurrent writers has one
    /// (PostgreSQL); the default, for an embedded file with one writer, is none.
    fn ingest_lane(&mut self) -> Option<Box<dyn QueueBackend>> {
        None
    }

    /// Hands the backend a [`Waker`] for news from outside this process (another node's
    /// commit, a notification): waking answers a fetch the queue thread holds. A backend
    /// that only this process writes ignores it, which is the default.
    fn set_waker(&mut self, _waker: Waker) {}

    /// A reader on storage of its own, for records and listings (see [`RecordReader`]);
    /// `None`, the default, serves them on the queue thread (the test backend in memory).
    fn record_reader(&mut self) -> Result<Option<Box<dyn RecordReader>>, StorageError> {
        Ok(None)
    }

    /// This node's view of its lease, for a backend that several nodes share: the
    /// Dispatcher stops starting jobs while it is not held. `None`, the default, for a
    /// backend only this process uses, whose claims hold for the life of the process.
    fn lease_clock(&self) -> Option<std::sync::Arc<super::LeaseClock>> {
        None
    }
}
