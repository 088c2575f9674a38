//! The job queue seam: the [`QueueBackend`] trait every backend implements, and the
//! [`QueueThread`] that runs a backend on a thread of its own, so that no actor ever
//! blocks on storage, and that commits the work of many callers at once.

// The in-memory backend is a test helper: it keeps nothing across a restart, so no
// operator should run it, and the queue thread's tests need a backend without a disk.
#[cfg(test)]
pub mod memory;
pub mod sqlite;

use std::sync::{Arc, OnceLock};
use std::thread;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};

use crate::job::{FinishedJob, Job, JobId, JobRecord, JobState, StartedJob};
use crate::metrics::Metrics;

/// A storage failure. Usually the unit of work it belonged to did nothing, and callers
/// answer 503 and keep running. After a failed sync nobody knows whether it did
/// ([`is_outcome_unknown`](Self::is_outcome_unknown)), and the queue is lost.
#[derive(Debug, Clone, thiserror::Error)]
#[error("queue storage failed: {message}")]
pub struct StorageError {
    message: String,
    outcome_unknown: bool,
}

impl StorageError {
    /// A failure that undid its unit of work.
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into(), outcome_unknown: false }
    }

    /// A failure after which what the unit of work wrote may or may not be on disk.
    pub fn outcome_unknown(message: impl Into<String>) -> Self {
        Self { message: message.into(), outcome_unknown: true }
    }

    pub fn is_outcome_unknown(&self) -> bool {
        self.outcome_unknown
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Why one submission of a group was refused while the others may have been accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Accepting the submission would exceed `max_queue` unfinished jobs.
    #[error("the queue holds {unfinished} of at most {capacity} unfinished jobs; {requested} more do not fit")]
    QueueFull { unfinished: usize, capacity: usize, requested: usize },
    /// The queue's storage reached its size limit (`queue_db_max_bytes`).
    #[error("the queue database holds {used_bytes} of at most {limit_bytes} bytes; this request does not fit")]
    StorageFull { used_bytes: u64, limit_bytes: u64 },
}

/// One job of an accepted submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    pub id: JobId,
    pub state: JobState,
    /// False when an earlier job with the same idempotency key answered instead.
    pub created: bool,
}

/// What the backend holds, by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Due and not started (including jobs claimed into the Dispatcher's window).
    pub queued: usize,
    /// Waiting for their `run_at`.
    pub scheduled: usize,
    /// Started and not finished.
    pub running: usize,
    /// Failed and waiting for their retry.
    pub failed: usize,
    /// Failed for good, kept until the retention purge.
    pub dead: usize,
    /// The most unfinished jobs (queued, scheduled, running, failed) the backend accepts.
    pub capacity: usize,
}

impl QueueDepth {
    /// Jobs that will still run: what `max_queue` bounds.
    pub fn unfinished(&self) -> usize {
        self.queued + self.scheduled + self.running + self.failed
    }
}

/// The most body bytes one claim hands the Dispatcher beyond its first job. With the
/// Dispatcher's window of jobs, it bounds the memory that claimed jobs hold, however large
/// their bodies, while a window of small jobs can be large.
pub const CLAIM_MAX_BODY_BYTES: usize = 8 << 20;

/// Whether a claim holding `jobs` jobs with `bytes` of bodies may take one more of `more`.
pub(crate) fn claim_has_room(jobs: usize, bytes: usize, more: usize) -> bool {
    jobs == 0 || bytes + more <= CLAIM_MAX_BODY_BYTES
}

/// Ready jobs for the Dispatcher, and when the next delayed job falls due.
#[derive(Debug, Default)]
pub struct ReadyBatch {
    pub jobs: Vec<Job>,
    /// The claim stopped at [`CLAIM_MAX_BODY_BYTES`]: fewer jobs than asked for does not
    /// mean that no more are ready.
    pub stopped_at_byte_limit: bool,
    /// The earliest `run_at` of a scheduled or failed job, if there is one. The
    /// Dispatcher keeps one timer for it: this is the whole timer structure.
    pub next_due: Option<DateTime<Utc>>,
}

/// Why a retry or cancel request was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("no such job")]
    NotFound,
    #[error("the job is {}", .0.name())]
    Conflict(JobState),
    #[error(transparent)]
    Refused(#[from] Refusal),
}

/// Which jobs a listing shows.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs this token submitted: the listing of a token confined by
    /// `allowed_key_prefixes`.
    pub submitted_by: Option<String>,
}

/// A page of a listing, newest first.
#[derive(Debug, Default)]
pub struct JobPage {
    pub records: Vec<JobRecord>,
    /// Pass as `before` for the next page; `None` on the last page.
    pub next_before: Option<i64>,
}

/// The queue's health as `/readyz` and `/v1/stats` see it.
#[derive(Debug, Clone, Copy)]
pub struct QueueStatus {
    pub depth: QueueDepth,
    /// When the oldest queued job became due; its age is how far the queue lags.
    pub oldest_queued_at: Option<DateTime<Utc>>,
    pub durable: bool,
    /// Whether the latest write committed; false after a storage fault until a write succeeds.
    pub writable: bool,
}

/// Makes every unit of work committed before the call durable. It runs on the queue's
/// sync thread, beside the thread that owns the backend and goes on committing; a failure
/// means the backend no longer knows what its storage holds, and the queue refuses all
/// further work (see [`QueueLost`]).
pub trait Syncer: Send + 'static {
    fn sync(&mut self) -> Result<(), StorageError>;
}

impl<F: FnMut() -> Result<(), StorageError> + Send + 'static> Syncer for F {
    fn sync(&mut self) -> Result<(), StorageError> {
        self()
    }
}

/// A place where accepted jobs wait for a worker.
///
/// A backend is owned by exactly one thread (see [`QueueThread`]), so its methods take
/// `&mut self` and may block: a durable backend does its I/O here. The thread wraps a
/// batch of calls in [`begin`](Self::begin) and [`commit`](Self::commit); nothing a
/// batch did may be visible after a failed commit, and [`rollback`](Self::rollback) must
/// restore any bookkeeping the backend keeps in memory. A commit makes the batch final
/// for this process; its [`Syncer`] then makes it durable, and only then are the batch's
/// callers answered.
pub trait QueueBackend: Send + 'static {
    /// Starts a unit of work.
    fn begin(&mut self) -> Result<(), StorageError> {
        Ok(())
    }

    /// Starts a unit of work for [`take_ready`](Self::take_ready), which mostly reads: a
    /// backend may put off its locks until it touches storage, which a claim served from
    /// memory may never do.
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

    /// Enqueues one submission, all or nothing: either every job is accepted (or
    /// answered by an earlier job with the same idempotency key) or none is.
    fn enqueue(&mut self, submission: Vec<Job>) -> Result<Result<Vec<Admitted>, Refusal>, StorageError>;

    /// Moves scheduled and failed jobs whose `run_at` has come to the queue, then claims
    /// up to `max` queued jobs in order for the Dispatcher, stopping before a job whose
    /// body would take the batch past [`CLAIM_MAX_BODY_BYTES`] (the first job is always
    /// taken). A claimed job is not returned again by this process; after a restart it is
    /// queued again.
    fn take_ready(&mut self, max: usize, now: DateTime<Utc>) -> Result<ReadyBatch, StorageError>;

    /// Marks jobs as running.
    fn record_started(&mut self, started: &[StartedJob]) -> Result<(), StorageError>;

    /// Records how attempts ended: final states free capacity, retries wait for `retry_at`.
    fn record_finished(&mut self, finished: &[FinishedJob]) -> Result<(), StorageError>;

    /// Records starts and finishes together. A backend may do it in fewer writes than
    /// the two calls, for jobs that started and finished within one flush.
    fn record_progress(&mut self, started: &[StartedJob], finished: &[FinishedJob]) -> Result<(), StorageError> {
        self.record_started(started)?;
        self.record_finished(finished)
    }

    /// Deletes up to `limit` finished jobs that finished before `cutoff`; returns how many.
    fn purge_finished(&mut self, cutoff: DateTime<Utc>, limit: usize) -> Result<usize, StorageError>;

    /// Queues a dead job again with its attempts reset.
    fn retry_dead(&mut self, id: JobId) -> Result<Result<(), ControlError>, StorageError>;

    /// Cancels a job that has not started: queued, scheduled, or failed and waiting.
    fn cancel(&mut self, id: JobId, now: DateTime<Utc>) -> Result<Result<(), ControlError>, StorageError>;

    /// A page of records that pass `filter`, newest first, before a cursor.
    fn list(&mut self, filter: &ListFilter, before: Option<i64>, limit: usize) -> Result<JobPage, StorageError>;

    /// One job's record.
    fn get(&mut self, id: JobId, with_payload: bool) -> Result<Option<JobRecord>, StorageError>;

    /// The current depth.
    fn depth(&self) -> QueueDepth;

    /// Whether jobs the backend accepted are still there after the process dies.
    fn is_durable(&self) -> bool;

    /// When the oldest queued job (the next to be claimed) became due.
    fn oldest_queued(&mut self) -> Result<Option<DateTime<Utc>>, StorageError> {
        Ok(None)
    }

    /// Whether the backend's storage reached its size limit, so that submissions are
    /// refused until finished jobs are purged.
    fn is_full(&mut self) -> bool {
        false
    }

    /// How long the queue thread waits when a batch carries a cancel, before it runs the
    /// batch, gathering what arrives meanwhile: a test hook (`test_cancel_hold_ms`) that
    /// puts the Dispatcher's next fetch in the same batch as a cancel. Never set in
    /// production.
    fn cancel_hold(&self) -> Option<std::time::Duration> {
        None
    }

    /// Tries a trivial write, to learn whether a storage fault has passed.
    fn check_writable(&mut self) -> Result<(), StorageError> {
        Ok(())
    }
}

/// Decides, for each job of a submission, whether it is new or answered by an earlier job
/// with the same idempotency key: one found by `find_earlier`, or one earlier in the same
/// submission. Returns the answers and, per job, whether it is new. Shared by backends.
pub(crate) fn admit(
    submission: &[Job],
    mut find_earlier: impl FnMut(&str) -> Result<Option<(JobId, JobState)>, StorageError>,
) -> Result<(Vec<Admitted>, Vec<bool>), StorageError> {
    let mut admitted = Vec::with_capacity(submission.len());
    let mut is_new = Vec::with_capacity(submission.len());
    let mut keys_in_submission = std::collections::HashMap::new();
    for job in submission {
        let earlier = match job.idempotency_key.as_deref() {
            None => None,
            Some(key) => match keys_in_submission.get(key) {
                Some(&id) => Some((id, JobState::Queued)),
                None => find_earlier(key)?,
            },
        };
        match earlier {
            Some((id, state)) => {
                admitted.push(Admitted { id, state, created: false });
                is_new.push(false);
            }
            None => {
                if let Some(key) = job.idempotency_key.as_deref() {
                    keys_in_submission.insert(key, job.id);
                }
                admitted.push(Admitted { id: job.id, state: JobState::Queued, created: true });
                is_new.push(true);
            }
        }
    }
    Ok((admitted, is_new))
}

type Reply<T> = oneshot::Sender<Result<T, StorageError>>;
/// The answer to one submission of a group.
pub type SubmissionAnswer = Result<Vec<Admitted>, Refusal>;

/// Progress that could not be recorded, handed back so the caller can try again.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct ProgressNotRecorded {
    pub error: StorageError,
    pub started: Vec<StartedJob>,
    pub finished: Vec<FinishedJob>,
}

enum Command {
    Enqueue {
        group: Vec<Vec<Job>>,
        reply: Reply<Vec<SubmissionAnswer>>,
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
        before: Option<i64>,
        limit: usize,
        reply: Reply<JobPage>,
    },
    Status {
        reply: Reply<QueueStatus>,
    },
}

type ProgressReply = oneshot::Sender<Result<(), ProgressNotRecorded>>;

/// How a fetch that finds nothing new waits: see [`QueueHandle::wait_ready`].
#[derive(Debug, Clone, Copy)]
struct Waiting {
    /// When the caller's own timer fires; a delayed job due by then needs no answer.
    timer_due: Option<DateTime<Utc>>,
}

/// A call for ready jobs. One that may wait and finds nothing worth answering is held by
/// the queue thread until a commit may have changed that or the caller nudges it.
struct Fetch {
    max: usize,
    wait: Option<Waiting>,
    reply: Reply<ReadyBatch>,
}

/// Whether a fetch's result tells its caller something: jobs, or a delayed job due before
/// the caller's timer fires.
fn worth_answering(batch: &ReadyBatch, waiting: Waiting) -> bool {
    !batch.jobs.is_empty()
        || batch.stopped_at_byte_limit
        || batch.next_due.is_some_and(|due| waiting.timer_due.is_none_or(|timer| due < timer))
}

/// What a write command produced inside the open transaction; its answer is held back
/// until the commit has returned.
enum Output {
    Enqueue(Vec<SubmissionAnswer>),
    RecordProgress,
    Purge(usize),
    Control(Result<(), ControlError>),
}

impl Command {
    fn is_read(&self) -> bool {
        matches!(self, Command::Get { .. } | Command::Status { .. } | Command::List { .. })
    }

    /// Whether a committed transaction that carried this command may have made jobs ready
    /// or moved the next due time, so that a waiting fetch must look again.
    fn may_ready_jobs(&self) -> bool {
        matches!(self, Command::Enqueue { .. } | Command::Retry { .. })
    }

    /// Does a write command's work. Jobs to enqueue are moved into the backend; progress
    /// is only borrowed, so that it can be handed back if the commit fails.
    fn execute(&mut self, backend: &mut dyn QueueBackend) -> Result<Output, StorageError> {
        match self {
            Command::Enqueue { group, .. } => {
                let mut answers = Vec::with_capacity(group.len());
                for submission in std::mem::take(group) {
                    answers.push(backend.enqueue(submission)?);
                }
                Ok(Output::Enqueue(answers))
            }
            Command::Retry { id, .. } => Ok(Output::Control(backend.retry_dead(*id)?)),
            Command::Cancel { id, now, .. } => Ok(Output::Control(backend.cancel(*id, *now)?)),
            Command::RecordProgress { started, finished, .. } => {
                backend.record_progress(started, finished)?;
                Ok(Output::RecordProgress)
            }
            Command::Purge { cutoff, limit, .. } => Ok(Output::Purge(backend.purge_finished(*cutoff, *limit)?)),
            Command::Get { .. } | Command::Status { .. } | Command::List { .. } => {
                unreachable!("reads run outside transactions")
            }
            Command::TakeReady(_) | Command::Nudge => unreachable!("fetches run in transactions of their own"),
        }
    }

    /// Answers a write command after its transaction committed.
    fn answer(self, output: Output) {
        // A reply whose receiver went away is dropped: the caller gave up, and the work
        // is done either way, exactly as if the answer had been lost on the wire.
        match (self, output) {
            (Command::Enqueue { reply, .. }, Output::Enqueue(answers)) => drop(reply.send(Ok(answers))),
            (Command::Retry { reply, .. } | Command::Cancel { reply, .. }, Output::Control(result)) => {
                drop(reply.send(Ok(result)))
            }
            (Command::RecordProgress { reply, .. }, Output::RecordProgress) => drop(reply.send(Ok(()))),
            (Command::Purge { reply, .. }, Output::Purge(count)) => drop(reply.send(Ok(count))),
            _ => unreachable!("each command produces its own kind of output"),
        }
    }

    /// Answers a command with a storage error: its transaction failed and nothing it did
    /// remains, or the queue is lost and nobody knows.
    fn fail(self, error: &StorageError) {
        match self {
            Command::Enqueue { reply, .. } => drop(reply.send(Err(error.clone()))),
            Command::TakeReady(fetch) => drop(fetch.reply.send(Err(error.clone()))),
            Command::Retry { reply, .. } | Command::Cancel { reply, .. } => drop(reply.send(Err(error.clone()))),
            Command::List { reply, .. } => drop(reply.send(Err(error.clone()))),
            Command::RecordProgress { started, finished, reply } => {
                drop(reply.send(Err(ProgressNotRecorded { error: error.clone(), started, finished })))
            }
            Command::Purge { reply, .. } => drop(reply.send(Err(error.clone()))),
            Command::Get { reply, .. } => drop(reply.send(Err(error.clone()))),
            Command::Status { reply } => drop(reply.send(Err(error.clone()))),
            Command::Nudge => {}
        }
    }
}

/// The error every [`QueueHandle`] call returns once the queue thread has stopped.
fn queue_closed() -> StorageError {
    StorageError::new("the queue thread has stopped")
}

/// Owns the thread that runs the backend (which owns the sync thread, if any). Dropping
/// every [`QueueHandle`] and then calling [`QueueThread::join`] ends both.
pub struct QueueThread {
    handle: QueueHandle,
    thread: thread::JoinHandle<()>,
}

/// Answers once, when the queue can no longer be trusted: a sync failed, so the backend
/// does not know what its storage holds (after a failed fsync the kernel may have dropped
/// the pages it could not write, and a later fsync would succeed without them), or the
/// thread itself died. From then on every call fails; the daemon must stop and let the
/// next start recover from what is on disk. Closing without an answer means the thread
/// ended, which only a panic does while handles remain.
pub type QueueLost = oneshot::Receiver<StorageError>;

/// A cheap, cloneable way to talk to the queue thread. Every call is async and
/// answered by the thread; the number of calls in flight is bounded by the channel.
#[derive(Clone)]
pub struct QueueHandle {
    commands: mpsc::Sender<Command>,
}

/// Calls in flight beyond this wait for room. The protocol keeps far fewer in flight:
/// 64 groups from the Ingest actor, one fetch, one nudge and one progress flush from
/// the Dispatcher, one purge, plus status reads.
const COMMAND_CHANNEL_CAPACITY: usize = 1024;
/// The most commands one transaction carries when group commit is on.
const MAX_COMMANDS_PER_COMMIT: usize = 256;

impl QueueThread {
    /// Starts the queue thread with `backend`. With `group_commit`, all commands waiting
    /// when the thread wakes share one transaction, and the backend's [`Syncer`] runs on a
    /// sync thread, one fsync for every transaction committed since the last; without it,
    /// each command commits alone, with its own fsync (for comparison and for debugging).
    /// Also returns the [`QueueLost`] signal, which its owner must watch.
    pub fn spawn(
        mut backend: Box<dyn QueueBackend>,
        group_commit: bool,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(Self, QueueLost)> {
        let (commands, receiver) = mpsc::channel(COMMAND_CHANNEL_CAPACITY);
        let (lost_sender, lost) = oneshot::channel();
        let per_commit = if group_commit { MAX_COMMANDS_PER_COMMIT } else { 1 };
        let poison = Arc::new(OnceLock::new());
        // Without group commit, each request pays its own fsync inside its commit, as the
        // comparison means: the backend is not asked for a syncer.
        let syncer = if group_commit { backend.syncer() } else { None };
        let syncing = match syncer {
            None => Syncing::NotNeeded,
            Some(syncer) => {
                let (to_sync, committed) = std::sync::mpsc::sync_channel(COMMAND_CHANNEL_CAPACITY);
                let (poison, wake, metrics) = (poison.clone(), commands.downgrade(), metrics.clone());
                let thread = thread::Builder::new()
                    .name("jobd-sync".to_owned())
                    .spawn(move || run_sync_thread(syncer, &committed, &poison, &wake, &metrics))?;
                Syncing::Thread { to_sync, thread }
            }
        };
        let thread = thread::Builder::new().name("jobd-queue".to_owned()).spawn(move || {
            let lost = LostSignal { poison, sender: Some(lost_sender) };
            run_backend(backend, receiver, per_commit, &metrics, syncing, lost);
        })?;
        Ok((Self { handle: QueueHandle { commands }, thread }, lost))
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

/// Where committed transactions go to be made durable before their callers are answered.
enum Syncing {
    /// Commits need no sync after them: answer at once.
    NotNeeded,
    /// The sync thread, which the queue thread owns: dropping `to_sync` ends it, and the
    /// queue thread joins it before it ends itself.
    Thread { to_sync: std::sync::mpsc::SyncSender<Committed>, thread: thread::JoinHandle<()> },
}

/// The failure that lost the queue, set once by whichever thread syncs, and the
/// [`QueueLost`] sender, which the queue thread alone uses.
struct LostSignal {
    poison: Arc<OnceLock<StorageError>>,
    sender: Option<oneshot::Sender<StorageError>>,
}

impl LostSignal {
    /// The error, once a sync failed; tells the owner of [`QueueLost`] the first time.
    fn check(&mut self) -> Option<StorageError> {
        let error = self.poison.get()?;
        if let Some(sender) = self.sender.take() {
            drop(sender.send(error.clone()));
        }
        Some(error.clone())
    }
}

fn run_backend(
    mut backend: Box<dyn QueueBackend>,
    mut receiver: mpsc::Receiver<Command>,
    per_commit: usize,
    metrics: &Metrics,
    mut syncing: Syncing,
    mut lost: LostSignal,
) {
    let mut writable = true;
    let mut waiting: Option<Fetch> = None;
    while let Some(first) = receiver.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < per_commit {
            match receiver.try_recv() {
                Ok(command) => batch.push(command),
                Err(_) => break,
            }
        }
        if let Some(hold) = backend.cancel_hold()
            && batch.iter().any(|command| matches!(command, Command::Cancel { .. }))
        {
            thread::sleep(hold);
            while batch.len() < per_commit
                && let Ok(command) = receiver.try_recv()
            {
                batch.push(command);
            }
        }
        if let Some(lost_because) = lost.check() {
            // These were never tried: nothing they asked for was done.
            let refused = StorageError::new(format!("the queue is lost ({})", lost_because.message()));
            for command in batch.into_iter().chain(waiting.take().map(Command::TakeReady)) {
                command.fail(&refused);
            }
            continue;
        }
        let (reads, writes): (Vec<Command>, Vec<Command>) = batch.into_iter().partition(Command::is_read);
        // Reads run outside the transaction, so they are served even while writes fail.
        for read in reads {
            answer_read(backend.as_mut(), read, &mut writable);
        }
        // A fetch runs in a transaction of its own, ahead of the others, which syncs
        // nothing: its answer waits for no fsync. It sees only committed jobs, so it never
        // hands out a job whose commit might still fail.
        let (fetches, writes): (Vec<Command>, Vec<Command>) =
            writes.into_iter().partition(|command| matches!(command, Command::TakeReady(_) | Command::Nudge));
        for command in fetches {
            // The protocol keeps one fetch in flight; should another come, the one waiting
            // is answered first, so that no caller waits forever. A nudge answers it too.
            if let Some(earlier) = waiting.take() {
                run_fetch(backend.as_mut(), earlier, Answer::Always, &mut writable);
            }
            if let Command::TakeReady(fetch) = command {
                waiting = run_fetch(backend.as_mut(), fetch, Answer::IfWorthIt, &mut writable);
            }
        }
        if writes.is_empty() {
            continue;
        }
        let requests: usize = writes
            .iter()
            .map(|command| match command {
                Command::Enqueue { group, .. } => group.len(),
                _ => 1,
            })
            .sum();
        let may_ready_jobs = writes.iter().any(Command::may_ready_jobs);
        // The Dispatcher sets aside the ids it cancels while a fetch is out, in case that
        // fetch brings them; an answer tells it that the fetch no longer can.
        let cancels = writes.iter().any(|command| matches!(command, Command::Cancel { .. }));
        let started = std::time::Instant::now();
        let mut fetching = std::time::Duration::ZERO;
        let committed = run_writes(backend.as_mut(), writes, |backend, committed| {
            // The waiting fetch looks again straight after the commit that readied jobs,
            // before the next group is even gathered: the Dispatcher learns of new jobs
            // without a round trip of its own, and a job starts while its submission's
            // fsync runs. Should that fsync fail, the daemon stops, and the job, which may
            // already have run, is at worst run again after a retry of a submission that
            // was never acknowledged: at least once, as always.
            if (cancels || (committed && may_ready_jobs))
                && let Some(woken) = waiting.take()
            {
                let answer = if cancels { Answer::Always } else { Answer::IfWorthIt };
                let fetch_started = std::time::Instant::now();
                waiting = run_fetch(backend, woken, answer, &mut writable);
                fetching = fetch_started.elapsed();
            }
        });
        // The fetch in between is the Dispatcher's, not the transaction's.
        metrics.store_commit_duration.observe(started.elapsed().saturating_sub(fetching).as_secs_f64());
        metrics.store_commit_batch_size.observe(requests as f64);
        writable = committed.is_some();
        let Some(mut committed) = committed else { continue };
        // Progress is answered at the commit, not after the fsync: the Dispatcher starts a
        // job only once its start is recorded (so that an attempt counts even if the
        // process dies during it), and a commit is all that takes against a process death.
        // Should the fsync then fail, jobd stops and recovery runs the job again: at least
        // once, as always.
        committed.answer_progress();
        match &mut syncing {
            Syncing::NotNeeded => committed.answer(),
            Syncing::Thread { to_sync, .. } => {
                if let Err(std::sync::mpsc::SendError(committed)) = to_sync.send(committed) {
                    // Only a panic ends the sync thread early; nothing it did not sync is
                    // acknowledged.
                    let error = StorageError::outcome_unknown("the queue's sync thread stopped");
                    committed.fail(lost.poison.get_or_init(|| error));
                }
            }
        }
    }
    if let Syncing::Thread { to_sync, thread } = syncing {
        drop(to_sync);
        if thread.join().is_err() {
            tracing::error!("the queue's sync thread panicked");
        }
    }
}

/// Syncs everything committed so far, once for all the transactions waiting, and answers
/// their callers, or fails them all: when the sync fails, and once the queue is lost.
fn run_sync_thread(
    mut syncer: Box<dyn Syncer>,
    committed: &std::sync::mpsc::Receiver<Committed>,
    poison: &OnceLock<StorageError>,
    wake: &mpsc::WeakSender<Command>,
    metrics: &Metrics,
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
        metrics.store_sync_duration.observe(started.elapsed().as_secs_f64());
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

/// Claims ready jobs in a transaction of its own, as of now. A fetch usually writes
/// nothing, so its success says nothing about whether writes succeed; its failure is a
/// storage fault, and clears `writable` until a write or the status probe succeeds.
fn fetch_ready(backend: &mut dyn QueueBackend, max: usize, writable: &mut bool) -> Result<ReadyBatch, StorageError> {
    let fetched = backend.begin_fetch().and_then(|()| {
        let batch = backend.take_ready(max, Utc::now())?;
        backend.commit()?;
        Ok(batch)
    });
    if let Err(error) = &fetched {
        backend.rollback();
        *writable = false;
        tracing::error!(%error, "fetching ready jobs failed and was rolled back");
    }
    fetched
}

/// When [`run_fetch`] answers a fetch that may wait.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Whatever it finds: a nudge, a cancel, or a second fetch.
    Always,
    /// Only when what it finds is [`worth_answering`].
    IfWorthIt,
}

/// Runs a fetch and answers it, unless it may wait and found nothing worth answering:
/// then it comes back, to be held.
fn run_fetch(backend: &mut dyn QueueBackend, fetch: Fetch, answer: Answer, writable: &mut bool) -> Option<Fetch> {
    let fetched = fetch_ready(backend, fetch.max, writable);
    match (&fetched, fetch.wait) {
        (Ok(batch), Some(wait)) if answer == Answer::IfWorthIt && !worth_answering(batch, wait) => Some(fetch),
        _ => {
            drop(fetch.reply.send(fetched));
            None
        }
    }
}

fn answer_read(backend: &mut dyn QueueBackend, command: Command, writable: &mut bool) {
    match command {
        Command::Get { id, with_payload, reply } => drop(reply.send(backend.get(id, with_payload))),
        Command::List { filter, before, limit, reply } => drop(reply.send(backend.list(&filter, before, limit))),
        Command::Status { reply } => {
            if !*writable {
                *writable = backend.check_writable().is_ok();
            }
            let status = QueueStatus {
                depth: backend.depth(),
                oldest_queued_at: backend.oldest_queued().unwrap_or(None),
                durable: backend.is_durable(),
                writable: *writable && !backend.is_full(),
            };
            drop(reply.send(Ok(status)));
        }
        _ => unreachable!("only reads are passed here"),
    }
}

/// The write commands of a committed transaction, with what each did: answered once a
/// sync covers the transaction.
struct Committed(Vec<(Command, Output)>);

impl Committed {
    /// Answers the progress flushes among the commands now, leaving the rest.
    fn answer_progress(&mut self) {
        // Most transactions of a busy queue carry no flush; they keep their vector as it is.
        if !self.0.iter().any(|(_, output)| matches!(output, Output::RecordProgress)) {
            return;
        }
        let (progress, rest): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.0).into_iter().partition(|(_, output)| matches!(output, Output::RecordProgress));
        self.0 = rest;
        for (command, output) in progress {
            command.answer(output);
        }
    }

    fn answer(self) {
        for (command, output) in self.0 {
            command.answer(output);
        }
    }

    fn fail(self, error: &StorageError) {
        for (command, _) in self.0 {
            command.fail(error);
        }
    }
}

/// Runs write commands in one transaction. After the commit (or the rollback),
/// `after_commit` runs with whether it committed. A rolled-back transaction's commands are
/// answered with the error here; a committed one's come back, to be answered after a sync.
fn run_writes(
    backend: &mut dyn QueueBackend,
    mut writes: Vec<Command>,
    after_commit: impl FnOnce(&mut dyn QueueBackend, bool),
) -> Option<Committed> {
    let mut outputs = Vec::with_capacity(writes.len());
    let result = backend.begin().and_then(|()| {
        for command in &mut writes {
            outputs.push(command.execute(backend)?);
        }
        backend.commit()
    });
    if let Err(error) = result {
        backend.rollback();
        tracing::error!(%error, commands = writes.len(), "queue transaction failed and was rolled back");
        for command in writes {
            command.fail(&error);
        }
        after_commit(backend, false);
        return None;
    }
    after_commit(backend, true);
    Some(Committed(writes.into_iter().zip(outputs).collect()))
}

impl QueueHandle {
    async fn call<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, StorageError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(command(reply)).await.map_err(|_| queue_closed())?;
        answer.await.map_err(|_| queue_closed())?
    }

    /// Enqueues a group of submissions in one transaction; see [`QueueBackend::enqueue`].
    pub async fn enqueue_group(&self, group: Vec<Vec<Job>>) -> Result<Vec<SubmissionAnswer>, StorageError> {
        self.call(|reply| Command::Enqueue { group, reply }).await
    }

    /// See [`QueueBackend::take_ready`]; answered at once.
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

    /// See [`QueueBackend::retry_dead`].
    pub async fn retry_dead(&self, id: JobId) -> Result<Result<(), ControlError>, StorageError> {
        self.call(|reply| Command::Retry { id, reply }).await
    }

    /// See [`QueueBackend::cancel`].
    pub async fn cancel(&self, id: JobId) -> Result<Result<(), ControlError>, StorageError> {
        self.call(|reply| Command::Cancel { id, now: Utc::now(), reply }).await
    }

    /// See [`QueueBackend::list`].
    pub async fn list(&self, filter: ListFilter, before: Option<i64>, limit: usize) -> Result<JobPage, StorageError> {
        self.call(|reply| Command::List { filter, before, limit, reply }).await
    }

    /// Records started and finished jobs in one transaction. On failure the progress
    /// comes back, to be tried again.
    pub async fn record_progress(
        &self,
        started: Vec<StartedJob>,
        finished: Vec<FinishedJob>,
    ) -> Result<(), ProgressNotRecorded> {
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

    /// See [`QueueBackend::purge_finished`].
    pub async fn purge_finished(&self, cutoff: DateTime<Utc>, limit: usize) -> Result<usize, StorageError> {
        self.call(|reply| Command::Purge { cutoff, limit, reply }).await
    }

    /// See [`QueueBackend::get`].
    pub async fn get(&self, id: JobId, with_payload: bool) -> Result<Option<JobRecord>, StorageError> {
        self.call(|reply| Command::Get { id, with_payload, reply }).await
    }

    /// Depth, durability and whether writes currently succeed.
    pub async fn status(&self) -> Result<QueueStatus, StorageError> {
        self.call(|reply| Command::Status { reply }).await
    }
}

#[cfg(test)]
mod tests {
    use super::sqlite::{SqliteBackend, Synchronous};
    use super::*;
    use crate::job::JobKind;

    fn memory_queue() -> (QueueThread, QueueHandle) {
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let (thread, _lost) =
            QueueThread::spawn(Box::new(memory::MemoryBackend::new(1000)), true, metrics).expect("thread");
        let handle = thread.handle();
        (thread, handle)
    }

    /// Sends a fetch that may wait, and returns where its answer will arrive.
    async fn send_waiting_fetch(
        queue: &QueueHandle,
        timer_due: Option<DateTime<Utc>>,
    ) -> oneshot::Receiver<Result<ReadyBatch, StorageError>> {
        let (reply, answer) = oneshot::channel();
        let command = Command::TakeReady(Fetch { max: 100, wait: Some(Waiting { timer_due }), reply });
        assert!(queue.commands.send(command).await.is_ok(), "queue thread is running");
        answer
    }

    /// Returns once the queue thread has handled every command sent before: a write runs
    /// after the fetches of its batch, and batches run in order.
    async fn settle(queue: &QueueHandle) {
        queue.purge_finished(Utc::now(), 0).await.expect("purge");
    }

    /// The fetch's answer, or `None` while the queue thread still holds it.
    fn answer_now(answer: &mut oneshot::Receiver<Result<ReadyBatch, StorageError>>) -> Option<ReadyBatch> {
        match answer.try_recv() {
            Ok(batch) => Some(batch.expect("fetch succeeds")),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => panic!("the waiting fetch was dropped"),
        }
    }

    fn scheduled_in(minutes: i64) -> Job {
        let mut job = Job::for_test(JobKind::Noop);
        job.run_at = Some(Utc::now() + chrono::Duration::minutes(minutes));
        job
    }

    #[tokio::test]
    async fn a_waiting_fetch_is_answered_by_the_commit_that_readies_jobs() {
        let (thread, queue) = memory_queue();
        let mut answer = send_waiting_fetch(&queue, None).await;
        settle(&queue).await;
        assert!(answer_now(&mut answer).is_none(), "nothing is ready, so the fetch waits");
        // Progress and purges ready nothing: the fetch goes on waiting.
        queue.record_progress(Vec::new(), Vec::new()).await.expect("progress");
        settle(&queue).await;
        assert!(answer_now(&mut answer).is_none());

        let job = Job::for_test(JobKind::Noop);
        let id = job.id;
        queue.enqueue_group(vec![vec![job]]).await.expect("enqueue").into_iter().for_each(|answer| {
            assert!(answer.is_ok());
        });
        settle(&queue).await;
        let batch = answer_now(&mut answer).expect("answered after the commit");
        assert_eq!(batch.jobs.iter().map(|job| job.id).collect::<Vec<_>>(), vec![id]);
        drop(queue);
        thread.join();
    }

    #[tokio::test]
    async fn a_waiting_fetch_is_answered_for_a_due_time_before_the_callers_timer_and_at_a_nudge() {
        let (thread, queue) = memory_queue();
        // No timer yet: a delayed job is news.
        let mut answer = send_waiting_fetch(&queue, None).await;
        let in_an_hour = scheduled_in(60);
        let due = in_an_hour.run_at;
        queue.enqueue_group(vec![vec![in_an_hour]]).await.expect("enqueue");
        settle(&queue).await;
        let batch = answer_now(&mut answer).expect("answered with the due time");
        assert!(batch.jobs.is_empty());
        assert_eq!(batch.next_due, due);

        // A timer set for that time: a later job is no news, an earlier one is.
        let mut answer = send_waiting_fetch(&queue, due).await;
        queue.enqueue_group(vec![vec![scheduled_in(120)]]).await.expect("enqueue");
        settle(&queue).await;
        assert!(answer_now(&mut answer).is_none(), "due after the caller's timer");
        let sooner = scheduled_in(30);
        let sooner_due = sooner.run_at;
        queue.enqueue_group(vec![vec![sooner]]).await.expect("enqueue");
        settle(&queue).await;
        assert_eq!(answer_now(&mut answer).expect("due before the timer").next_due, sooner_due);

        // The caller's timer fired: a nudge answers with what is ready now.
        let mut answer = send_waiting_fetch(&queue, sooner_due).await;
        settle(&queue).await;
        assert!(answer_now(&mut answer).is_none());
        queue.nudge().await.expect("nudge");
        settle(&queue).await;
        let batch = answer_now(&mut answer).expect("answered at the nudge");
        assert!(batch.jobs.is_empty(), "nothing is due yet");
        assert_eq!(batch.next_due, sooner_due);
        // A nudge with no fetch waiting does nothing.
        queue.nudge().await.expect("nudge");
        settle(&queue).await;
        drop(queue);
        thread.join();
    }

    #[tokio::test]
    async fn a_cancel_or_a_second_fetch_answers_the_waiting_fetch() {
        let (thread, queue) = memory_queue();
        let delayed = scheduled_in(60);
        let (id, due) = (delayed.id, delayed.run_at);
        queue.enqueue_group(vec![vec![delayed]]).await.expect("enqueue");

        let mut answer = send_waiting_fetch(&queue, due).await;
        settle(&queue).await;
        assert!(answer_now(&mut answer).is_none());
        assert_eq!(queue.cancel(id).await.expect("cancel"), Ok(()));
        settle(&queue).await;
        let batch = answer_now(&mut answer).expect("a cancel answers the waiting fetch");
        assert!(batch.jobs.is_empty());
        assert_eq!(batch.next_due, None, "the cancelled job is no longer due");

        // The protocol keeps one fetch out; a second one does not leave the first hanging.
        let mut first = send_waiting_fetch(&queue, None).await;
        let mut second = send_waiting_fetch(&queue, None).await;
        settle(&queue).await;
        assert!(answer_now(&mut first).is_some(), "the earlier fetch is answered");
        assert!(answer_now(&mut second).is_none(), "the later one waits");
        drop(queue);
        thread.join();
    }

    /// A memory queue whose every sync waits for the next result sent on the returned
    /// channel, and returns it.
    fn queue_with_controlled_syncs()
    -> (QueueThread, QueueHandle, QueueLost, std::sync::mpsc::Sender<Result<(), StorageError>>) {
        let (results, sync_results) = std::sync::mpsc::channel::<Result<(), StorageError>>();
        let backend = memory::MemoryBackend::new(1000).with_sync_for_test(move || {
            sync_results.recv().unwrap_or_else(|_| Err(StorageError::new("the test ended")))
        });
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let (thread, lost) = QueueThread::spawn(Box::new(backend), true, metrics).expect("thread");
        let handle = thread.handle();
        (thread, handle, lost, results)
    }

    /// Guards against a hang, should the queue thread never answer; not a timing test.
    async fn within_a_minute<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(std::time::Duration::from_secs(60), future).await.expect("answered")
    }

    #[tokio::test]
    async fn new_jobs_go_to_the_waiting_fetch_before_the_sync_and_their_submitter_is_answered_after_it() {
        let (thread, queue, _lost, sync_results) = queue_with_controlled_syncs();
        let answer = send_waiting_fetch(&queue, None).await;
        let job = Job::for_test(JobKind::Noop);
        let id = job.id;
        let submitter = queue.clone();
        let mut submission = tokio::spawn(async move { submitter.enqueue_group(vec![vec![job]]).await });

        // No sync has been allowed to finish, yet the job is already handed out.
        let batch = within_a_minute(answer).await.expect("answered").expect("fetch succeeds");
        assert_eq!(batch.jobs.iter().map(|job| job.id).collect::<Vec<_>>(), vec![id]);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), &mut submission).await.is_err(),
            "the submitter is not answered before the sync"
        );
        sync_results.send(Ok(())).expect("the queue thread syncs");
        let answers = within_a_minute(submission).await.expect("task").expect("enqueue");
        assert_eq!(answers.len(), 1);
        assert!(answers[0].is_ok());
        drop(queue);
        drop(sync_results);
        thread.join();
    }

    #[tokio::test]
    async fn a_failed_sync_fails_its_writes_and_the_queue_refuses_everything_after_it() {
        let (thread, queue, lost, sync_results) = queue_with_controlled_syncs();
        sync_results.send(Ok(())).expect("sync");
        let accepted = queue.enqueue_group(vec![vec![Job::for_test(JobKind::Noop)]]).await.expect("enqueue");
        assert!(accepted[0].is_ok());
        let first = send_waiting_fetch(&queue, None).await;
        let first_batch = within_a_minute(first).await.expect("answered").expect("fetch");
        assert_eq!(first_batch.jobs.len(), 1, "the ready job is handed out at once");
        // Nothing else is ready: this fetch is held when the storage fails.
        let waiting = send_waiting_fetch(&queue, None).await;

        sync_results.send(Err(StorageError::new("EIO"))).expect("sync");
        let error = queue.purge_finished(Utc::now(), 10).await.expect_err("a failed sync fails its transaction");
        assert!(error.is_outcome_unknown(), "{error}");
        assert!(error.message().contains("EIO") && error.message().contains("may or may not be on disk"), "{error}");
        let lost_error = within_a_minute(lost).await.expect("the queue reports itself lost");
        assert_eq!(lost_error.message(), error.message());
        assert!(within_a_minute(waiting).await.expect("answered").is_err(), "the held fetch is failed");

        // Everything after is refused without touching the storage (no sync result is
        // left to send, so a sync would wait for the test to end): writes, reads, fetches.
        assert!(within_a_minute(queue.enqueue_group(vec![vec![Job::for_test(JobKind::Noop)]])).await.is_err());
        assert!(within_a_minute(queue.status()).await.is_err());
        assert!(within_a_minute(queue.take_ready(10)).await.is_err());
        drop(queue);
        drop(sync_results);
        thread.join();
    }

    #[tokio::test]
    async fn a_failed_commit_fails_its_writes_keeps_earlier_jobs_and_reads_go_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut backend, _) =
            SqliteBackend::open(&dir.path().join("queue.db"), 1000, Synchronous::Full, None).expect("open");
        let small = Job::upload_for_test(10);
        let small_id = small.id;
        backend.begin().expect("begin");
        assert!(backend.enqueue(vec![small]).expect("enqueue").is_ok());
        backend.commit().expect("commit");
        // The file may not grow any more: like a full disk.
        backend.set_max_page_count_for_test(backend.page_count_for_test());
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let (thread, _lost) = QueueThread::spawn(Box::new(backend), true, metrics).expect("thread");
        let queue = thread.handle();
        assert!(queue.status().await.expect("status").writable);

        // A megabyte does not fit: the commit fails, and the whole group is gone.
        let big = Job::upload_for_test(1 << 20);
        let big_id = big.id;
        let failed = queue.enqueue_group(vec![vec![Job::upload_for_test(10)], vec![big]]).await;
        assert!(failed.is_err(), "{failed:?}");
        let status = queue.status().await.expect("status is a read");
        assert!(!status.writable, "the probe write fails too");
        assert_eq!(status.depth.queued, 1, "bookkeeping rolled back");
        assert!(queue.get(big_id, false).await.expect("reads go on").is_none());
        assert!(queue.get(small_id, false).await.expect("reads go on").is_some());
        let claimed = queue.take_ready(10).await.expect("the earlier job is still there").jobs;
        assert_eq!(claimed.iter().map(|job| job.id).collect::<Vec<_>>(), vec![small_id]);
        drop(queue);
        thread.join();
    }
}
