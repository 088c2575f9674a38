//! The queue backend alone, without HTTP or actors: what one job costs the queue thread
//! to insert, claim and finish, in the transaction shapes the daemon produces. Prints
//! microseconds per job and per transaction. Run with `cargo bench --bench queue`.

use std::time::Instant;

use chrono::Utc;
use jobd::job::{FinishedJob, Job, JobId, StartedJob};
use jobd::queue::sqlite::{SqliteBackend, Synchronous};
use jobd::queue::{JobReader as _, JobWriter as _, Lease, NodeId, StorageError, Transactions as _};

const JOBS: usize = 200_000;

fn noop() -> Job {
    Job {
        id: JobId::generate(),
        created_at: Utc::now(),
        attempt: 0,
        claim: 0,
        max_attempts: 5,
        timeout_ms: None,
        run_at: None,
        idempotency_key: None,
        submitted_by: None,
        kind: std::borrow::Cow::Borrowed("noop"),
        queue: jobd::job::default_queue(),
        priority: jobd::job::DEFAULT_PRIORITY,
        args: None,
        body: None,
    }
}

/// Time spent in one kind of transaction, over all rounds.
#[derive(Default)]
struct Spent {
    elapsed: std::time::Duration,
    transactions: usize,
}

impl Spent {
    fn time<T>(&mut self, backend: &mut SqliteBackend, work: impl FnOnce(&mut SqliteBackend) -> T) -> T {
        self.time_from(backend, SqliteBackend::begin, work)
    }

    /// Like `time`, with the transaction a fetch runs in, as the queue thread does.
    fn time_fetch<T>(&mut self, backend: &mut SqliteBackend, work: impl FnOnce(&mut SqliteBackend) -> T) -> T {
        self.time_from(backend, SqliteBackend::begin_fetch, work)
    }

    fn time_from<T>(
        &mut self,
        backend: &mut SqliteBackend,
        begin: impl FnOnce(&mut SqliteBackend) -> Result<(), StorageError>,
        work: impl FnOnce(&mut SqliteBackend) -> T,
    ) -> T {
        let started = Instant::now();
        begin(backend).expect("begin");
        let result = work(backend);
        backend.commit().expect("commit");
        self.elapsed += started.elapsed();
        self.transactions += 1;
        result
    }

    fn print(&self, name: &str, jobs: usize) {
        println!(
            "{name:<48} {:>8.2} us/job {:>9.1} us/transaction {:>9.0} jobs/s",
            self.elapsed.as_secs_f64() * 1e6 / jobs as f64,
            self.elapsed.as_secs_f64() * 1e6 / self.transactions as f64,
            jobs as f64 / self.elapsed.as_secs_f64()
        );
    }
}

/// Rounds of: a transaction of new jobs, a claim of that many, and the record of their
/// starts and successes, as the daemon interleaves them when it keeps up.
fn run(synchronous: Synchronous, per_transaction: usize, per_submission: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut backend, _) =
        SqliteBackend::open(&dir.path().join("queue.db"), 10 * JOBS, synchronous, None).expect("open");
    println!("-- {synchronous:?}, {per_transaction} jobs per transaction, {per_submission} per submission");
    let (mut enqueue, mut claim, mut progress) = (Spent::default(), Spent::default(), Spent::default());
    let lease = Lease { owner: NodeId::generate(), expires_at: None };
    for _ in 0..JOBS / per_transaction {
        enqueue.time(&mut backend, |backend| {
            for _ in 0..per_transaction / per_submission {
                let submission = (0..per_submission).map(|_| noop()).collect();
                backend.enqueue(submission).expect("enqueue").expect("accepted");
            }
        });
        let claimed =
            claim.time_fetch(&mut backend, |backend| backend.claim(per_transaction, Utc::now(), &lease).expect("take"));
        assert_eq!(claimed.jobs.len(), per_transaction, "every job claimed");
        progress.time(&mut backend, |backend| {
            let now = Utc::now();
            let started: Vec<StartedJob> = claimed
                .jobs
                .iter()
                .map(|job| StartedJob { claim: 0, id: job.id, attempt: job.attempt, started_at: now })
                .collect();
            let finished: Vec<FinishedJob> =
                claimed.jobs.iter().map(|job| FinishedJob::succeeded(job.id, job.attempt, "noop", now)).collect();
            backend.record_progress(&started, &finished).expect("progress");
        });
    }
    let jobs = JOBS / per_transaction * per_transaction;
    enqueue.print("enqueue", jobs);
    claim.print("claim", jobs);
    progress.print("record_progress (start + succeed in one flush)", jobs);
    assert_eq!(backend.depth().expect("depth").unfinished(), 0, "every job finished");
}

fn main() {
    // `cargo bench --bench queue -- 16` runs only the shapes with 16 jobs per transaction.
    let only: Option<usize> = std::env::args().skip(1).find_map(|arg| arg.parse().ok());
    for (synchronous, per_transaction, per_submission) in [
        (Synchronous::Full, 16, 1),
        // The daemon's shape under single-job submissions: the sync thread fsyncs, so
        // commits only write the WAL; about eight submissions share a commit.
        (Synchronous::Normal, 8, 1),
        (Synchronous::Normal, 8, 8),
        (Synchronous::Full, 64, 64),
        (Synchronous::Full, 1000, 1000),
        (Synchronous::Normal, 1000, 1000),
    ] {
        if only.is_none_or(|only| only == per_transaction) {
            run(synchronous, per_transaction, per_submission);
        }
    }
}
