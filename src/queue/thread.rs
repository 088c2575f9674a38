//! The queue thread: runs a backend on a thread of its own, so that no actor ever blocks
//! on storage, and commits the work of many callers at once (group commit), with the
//! fsync on a sync thread beside it. [`QueueHandle`] is how the rest of jobd calls it.
//!
//! When the thread wakes, it takes every command waiting (up to 256). Reads run outside any
//! transaction, so they are served even while writes fail. A fetch runs first, in a
//! transaction of its own that syncs nothing, so handing out committed jobs never waits for
//! the fsync of the submissions that arrived with it; a fetch that finds nothing worth
//! answering is held and looks again after each commit that may have readied jobs, at a
//! nudge, at a cancel, and at a wake from outside the process ([`Waker`]). The writes
//! (groups of submissions, a progress flush, a purge, retries and cancels) share one
//! transaction. A commit only writes; progress is answered at once (a commit is all a
//! start needs against a process death), and the rest go to the sync thread, which runs
//! the backend's [`Syncer`](crate::queue::Syncer) once for every transaction committed since its last sync and
//! only then answers their callers. So the thread never waits for the disk. With group
//! commit off, each command commits alone and the backend syncs inside each commit.
//!
//! A failed transaction is rolled back, with the backend's bookkeeping, and its writes are
//! answered with the error. A failed sync means nobody knows what is on disk (the kernel
//! may have dropped the pages it could not write): the writes are failed, every later
//! command is refused, and [`QueueLost`] tells the server, which stops jobd so that the next
//! start recovers from what the disk holds.
//!
//! **Architecture Invariant:** the group commit, the sync thread and the held fetch live
//! here and are the same for every backend; a backend only implements the traits of
//! [`super::backend`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;

use chrono::Utc;
use prometheus::Histogram;
use tokio::sync::{mpsc, oneshot};

use super::{Admitted, Lease, NodeId, QueueBackend, QueueStatus, ReadyBatch, Refusal, StorageError};
use crate::job::{FinishedJob, StartedJob};

/// The queue thread's own metrics: how long commits and syncs take, and how many requests
/// a commit carries. Handed in by whoever owns the registry.
#[derive(Clone, Debug)]
pub struct CommitMetrics {
    pub commit_duration: Histogram,
    pub commit_batch_size: Histogram,
    pub sync_duration: Histogram,
}

/// Wakes the fetch the queue thread holds, so that it looks again: for backends that hear
/// of new jobs from outside this process (see [`QueueBackend::set_waker`]).
#[derive(Clone, Debug)]
pub struct Waker {
    commands: mpsc::WeakSender<Command>,
    /// Set by every wake, and taken by the thread after each batch it receives: a wake
    /// that finds the channel full is not lost, since a full channel means the thread
    /// has commands to receive, and it then sees the flag.
    woken: Arc<AtomicBool>,
}

impl Waker {
    fn new(commands: &mpsc::Sender<Command>, woken: &Arc<AtomicBool>) -> Self {
        Waker { commands: commands.downgrade(), woken: woken.clone() }
    }

    /// Asks the queue thread to look again for ready jobs. Never blocks.
    pub fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        if let Some(commands) = self.commands.upgrade() {
            drop(commands.try_send(Command::Wake));
        }
    }
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

/// Owns the thread that runs the backend (which owns the sync thread, if any). Dropping
/// every [`QueueHandle`] and then calling [`QueueThread::join`] ends both.
pub struct QueueThread {
    handle: QueueHandle,
    thread: thread::JoinHandle<()>,
    /// The ingest lane's thread, when the backend has one.
    ingest: Option<thread::JoinHandle<()>>,
    /// The read lane's thread, when the backend has one.
    reads: Option<thread::JoinHandle<()>>,
    node: NodeId,
}

/// Answers once, when the queue can no longer be trusted: a sync failed, so the backend
/// does not know what its storage holds (after a failed fsync the kernel may have dropped
/// the pages it could not write, and a later fsync would succeed without them), or the
/// thread itself died. From then on every call fails; the daemon must stop and let the
/// next start recover from what is on disk. Closing without an answer means the thread
/// ended, which only a panic does while handles remain.
pub type QueueLost = oneshot::Receiver<StorageError>;

/// Calls in flight beyond this wait for room. The protocol keeps far fewer in flight:
/// 64 groups from the Ingest actor, one fetch, one nudge and one progress flush from
/// the Dispatcher, one purge, plus status reads.
const COMMAND_CHANNEL_CAPACITY: usize = 1024;
/// The most commands one transaction carries when group commit is on.
const MAX_COMMANDS_PER_COMMIT: usize = 256;
/// The most jobs [`merge_enqueues`] puts into one command: as many as the Ingest actor puts
/// into one group, so a merged statement is never larger than one group's already was.
const MAX_MERGED_JOBS: usize = 16_384;

impl QueueThread {
    /// Starts the queue thread with `backend`. With `group_commit`, all commands waiting
    /// when the thread wakes share one transaction, and the backend's [`Syncer`](crate::queue::Syncer) runs on a
    /// sync thread, one fsync for every transaction committed since the last; without it,
    /// each command commits alone, with its own fsync (for comparison and for debugging).
    /// Also returns the [`QueueLost`] signal, which its owner must watch. `cancel_hold` is
    /// a test hook (`test_cancel_hold_ms`, see [`crate::queue::TestHooks`]): the thread
    /// waits that long when a batch carries a cancel, gathering what arrives meanwhile, so
    /// that the Dispatcher's next fetch shares the cancel's batch. `None` in production.
    pub fn spawn(
        mut backend: Box<dyn QueueBackend>,
        node: NodeId,
        group_commit: bool,
        metrics: CommitMetrics,
        cancel_hold: Option<std::time::Duration>,
    ) -> std::io::Result<(Self, QueueLost)> {
        let (commands, receiver) = mpsc::channel(COMMAND_CHANNEL_CAPACITY);
        let woken = Arc::new(AtomicBool::new(false));
        backend.set_waker(Waker::new(&commands, &woken));
        let lease = Lease { owner: node, expires_at: None };
        let lists_by_id = backend.lists_by_id();
        let lease_clock = backend.lease_clock();
        let reader = backend.record_reader().map_err(|error| std::io::Error::other(error.message().to_owned()))?;
        let (reads, read_lane) = match reader {
            Some(reader) => reads::spawn_reads(reader).map(|(thread, sender)| (Some(thread), Some(sender)))?,
            None => (None, None),
        };
        let per_commit = if group_commit { MAX_COMMANDS_PER_COMMIT } else { 1 };
        let poison = Arc::new(OnceLock::new());
        let ingest = match backend.ingest_lane() {
            Some(lane) => {
                let main = Waker::new(&commands, &woken);
                Some(lanes::spawn_ingest(lane, lease, per_commit, &metrics, main, poison.clone())?)
            }
            None => None,
        };
        let (ingest, ingest_commands) = ingest.unzip();
        let (lost_sender, lost) = oneshot::channel();
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
            let lanes = Lanes { peer: None, woken };
            run_backend(backend, lease, receiver, per_commit, &metrics, syncing, lost, &lanes, cancel_hold);
        })?;
        let handle = QueueHandle { commands, ingest: ingest_commands, lists_by_id, lease_clock, reads: read_lane };
        Ok((Self { handle, thread, ingest, reads, node }, lost))
    }

    /// This process's id as the holder of the jobs it claims.
    pub fn node(&self) -> NodeId {
        self.node
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
        if let Some(ingest) = self.ingest
            && ingest.join().is_err()
        {
            tracing::error!("the queue's ingest thread panicked");
        }
        if let Some(reads) = self.reads
            && reads.join().is_err()
        {
            tracing::error!("the queue's read thread panicked");
        }
    }
}

#[expect(clippy::too_many_arguments, reason = "the thread's whole state, handed over once")]
fn run_backend(
    mut backend: Box<dyn QueueBackend>,
    lease: Lease,
    mut receiver: mpsc::Receiver<Command>,
    per_commit: usize,
    metrics: &CommitMetrics,
    mut syncing: Syncing,
    mut lost: LostSignal,
    lanes: &Lanes,
    cancel_hold: Option<std::time::Duration>,
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
        // One look for every wake since the last batch, whether its command arrived or
        // found the channel full.
        let mut woken = lanes.woken.swap(false, Ordering::AcqRel);
        batch.retain(|command| {
            let wake = matches!(command, Command::Wake);
            woken |= wake;
            !wake
        });
        if woken {
            batch.push(Command::Wake);
        }
        if let Some(hold) = cancel_hold
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
        let (fetches, writes): (Vec<Command>, Vec<Command>) = writes
            .into_iter()
            .partition(|command| matches!(command, Command::TakeReady(_) | Command::Nudge | Command::Wake));
        for command in fetches {
            if let Command::Wake = command {
                // News from outside: the waiting fetch looks again, and stays held if it
                // finds nothing.
                if let Some(woken) = waiting.take() {
                    waiting = run_fetch(backend.as_mut(), &lease, woken, Answer::IfWorthIt, &mut writable);
                }
                continue;
            }
            // The protocol keeps one fetch in flight; should another come, the one waiting
            // is answered first, so that no caller waits forever. A nudge answers it too.
            if let Some(earlier) = waiting.take() {
                run_fetch(backend.as_mut(), &lease, earlier, Answer::Always, &mut writable);
            }
            if let Command::TakeReady(fetch) = command {
                waiting = run_fetch(backend.as_mut(), &lease, fetch, Answer::IfWorthIt, &mut writable);
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
        let writes = merge_enqueues(writes);
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
                waiting = run_fetch(backend, &lease, woken, answer, &mut writable);
                fetching = fetch_started.elapsed();
            }
        });
        // The fetch in between is the Dispatcher's, not the transaction's.
        metrics.commit_duration.observe(started.elapsed().saturating_sub(fetching).as_secs_f64());
        metrics.commit_batch_size.observe(requests as f64);
        writable = committed.is_some();
        if may_ready_jobs
            && committed.is_some()
            && let Some(peer) = &lanes.peer
        {
            peer.wake();
        }
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

/// Claims ready jobs in a transaction of its own, as of now. A fetch usually writes
/// nothing, so its success says nothing about whether writes succeed; its failure is a
/// storage fault, and clears `writable` until a write or the status probe succeeds.
fn fetch_ready(
    backend: &mut dyn QueueBackend,
    lease: &Lease,
    max: usize,
    writable: &mut bool,
) -> Result<ReadyBatch, StorageError> {
    let fetched = backend.begin_fetch().and_then(|()| {
        let batch = backend.claim(max, Utc::now(), lease)?;
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
fn run_fetch(
    backend: &mut dyn QueueBackend,
    lease: &Lease,
    fetch: Fetch,
    answer: Answer,
    writable: &mut bool,
) -> Option<Fetch> {
    let fetched = fetch_ready(backend, lease, fetch.max, writable);
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
        Command::Queues { with_depths, reply } => drop(reply.send(backend.queues(with_depths))),
        Command::Status { reply } => {
            if !*writable {
                *writable = backend.check_writable().is_ok();
            }
            let status = backend.depth().map(|depth| QueueStatus {
                depth,
                queue_id: backend.queue_id(),
                oldest_queued_at: backend.oldest_queued().unwrap_or(None),
                durable: backend.is_durable(),
                // A size check that fails counts as full: submissions wait until it works.
                writable: *writable && !backend.is_full().unwrap_or(true),
            });
            drop(reply.send(status));
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
        if !self.0.iter().any(|(_, output)| matches!(output, Output::RecordProgress(_))) {
            return;
        }
        let (progress, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.0)
            .into_iter()
            .partition(|(_, output)| matches!(output, Output::RecordProgress(_)));
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
/// Merges the submissions of a batch's groups into as few commands as hold at most
/// [`MAX_MERGED_JOBS`] jobs each, in the place of the first group of each. Single-job
/// submissions from many connections arrive as many groups of one (the Ingest actor keeps
/// up to 64 in flight), and a backend inserts a command's submissions with one statement:
/// unmerged, PostgreSQL ran one `INSERT` per job, 44 of the 79 us of statement time a
/// single-job submission cost. Moving a submission ahead of another write of the same
/// transaction changes nothing the caller can see: no write can name a job that is not
/// committed yet.
fn merge_enqueues(writes: Vec<Command>) -> Vec<Command> {
    let mut merged: Vec<Command> = Vec::with_capacity(writes.len());
    // The command being filled: its place in `merged` and the jobs it holds.
    let mut filling: Option<(usize, usize)> = None;
    for command in writes {
        let Command::Enqueue { group, replies } = command else {
            merged.push(command);
            continue;
        };
        let jobs: usize = group.iter().map(Vec::len).sum();
        if let Some((at, held)) = &mut filling
            && *held + jobs <= MAX_MERGED_JOBS
            && let Some(Command::Enqueue { group: into, replies: waiting }) = merged.get_mut(*at)
        {
            into.extend(group);
            waiting.extend(replies);
            *held += jobs;
            continue;
        }
        filling = Some((merged.len(), jobs));
        merged.push(Command::Enqueue { group, replies });
    }
    merged
}

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

mod command;
mod handle;
mod lanes;
mod reads;
mod sync;

use command::{Command, Fetch, Output, Waiting, worth_answering};
pub use handle::QueueHandle;
use lanes::Lanes;
use sync::{LostSignal, Syncing, run_sync_thread};

#[cfg(test)]
mod tests;
