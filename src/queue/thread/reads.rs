//! The read lane: a thread of its own, on a [`RecordReader`] of its own, that serves
//! records and listings, so that a costly listing (a filter without an index, a flood of
//! them from a read token) never holds the thread that claims jobs and records progress.

use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::job::{JobId, JobRecord};
use crate::queue::{Cursor, JobPage, ListFilter, QueuesView, RecordReader, StorageError};

/// Reads waiting beyond this make their callers (HTTP handlers) wait for room: a flood of
/// listings queues at the lane, bounded, instead of in memory.
const READ_CHANNEL_CAPACITY: usize = 64;

/// A read that took longer than this is costly (a filter no index serves, a scan of many
/// rows): the lane rests after it, [`REST_PER_COSTLY`] times as long as it took.
const COSTLY_READ: Duration = Duration::from_millis(2);
/// How long the lane rests after a costly read, as a multiple of the read's time. The
/// database server shares its CPU between the lanes, so a lane busy all the time with
/// costly listings (a read token repeating `GET /v1/jobs?kind=zzz`) took a sixth of the
/// rate of jobs from the claiming lane (bench (15)); at twice its time the lane spends at
/// most a third of its time on them. Reads through indexes (a job by id, a page of a
/// state) take well under the threshold and never wait.
const REST_PER_COSTLY: u32 = 2;

type Reply<T> = oneshot::Sender<Result<T, StorageError>>;

/// A read for the lane.
pub(super) enum Read {
    Get { id: JobId, with_payload: bool, reply: Reply<Option<JobRecord>> },
    List { filter: ListFilter, before: Option<Cursor>, limit: usize, reply: Reply<JobPage> },
    Queues { with_depths: bool, reply: Reply<QueuesView> },
}

/// Starts the read lane's thread on `reader`; returns it and the sender of its reads. The
/// thread ends when every sender is gone.
pub(super) fn spawn_reads(
    mut reader: Box<dyn RecordReader>,
) -> std::io::Result<(thread::JoinHandle<()>, mpsc::Sender<Read>)> {
    let (reads, mut receiver) = mpsc::channel(READ_CHANNEL_CAPACITY);
    let thread = thread::Builder::new().name("jobd-read".to_owned()).spawn(move || {
        while let Some(read) = receiver.blocking_recv() {
            let began = Instant::now();
            // A caller that gave up dropped its receiver; the answer goes nowhere.
            match read {
                Read::Get { id, with_payload, reply } => drop(reply.send(reader.get(id, with_payload))),
                Read::List { filter, before, limit, reply } => drop(reply.send(reader.list(&filter, before, limit))),
                Read::Queues { with_depths, reply } => drop(reply.send(reader.queues(with_depths))),
            }
            let took = began.elapsed();
            if took > COSTLY_READ {
                thread::sleep(took * REST_PER_COSTLY);
            }
        }
    })?;
    Ok((thread, reads))
}

/// Sends `read` to the lane and waits for its answer.
pub(super) async fn call<T>(lane: &mpsc::Sender<Read>, read: impl FnOnce(Reply<T>) -> Read) -> Result<T, StorageError> {
    let closed = || StorageError::new("the queue's read thread has stopped");
    let (reply, answer) = oneshot::channel();
    lane.send(read(reply)).await.map_err(|_| closed())?;
    answer.await.map_err(|_| closed())?
}
