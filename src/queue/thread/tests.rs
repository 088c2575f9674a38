//! The queue thread's tests: held fetches, syncs, and failures, against the memory and
//! SQLite backends.

use chrono::DateTime;

use super::*;
use crate::job::{Job, JobId, JobState};
use crate::queue::sqlite::{SqliteBackend, Synchronous};
use crate::queue::{JobWriter as _, Transactions as _, memory};

/// The queue thread's metrics, unregistered: tests only need somewhere to observe into.
fn metrics() -> CommitMetrics {
    crate::metrics::Metrics::new(&["noop"]).expect("metrics").commit_metrics()
}

fn memory_queue() -> (QueueThread, QueueHandle) {
    let metrics = metrics();
    let (thread, _lost) =
        QueueThread::spawn(Box::new(memory::MemoryBackend::new(1000)), NodeId::generate(), true, metrics, None)
            .expect("thread");
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
    let mut job = Job::for_test("noop");
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

    let job = Job::for_test("noop");
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
    let backend = memory::MemoryBackend::new(1000)
        .with_sync_for_test(move || sync_results.recv().unwrap_or_else(|_| Err(StorageError::new("the test ended"))));
    let metrics = metrics();
    let (thread, lost) =
        QueueThread::spawn(Box::new(backend), NodeId::generate(), true, metrics, None).expect("thread");
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
    let job = Job::for_test("noop");
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
    let accepted = queue.enqueue_group(vec![vec![Job::for_test("noop")]]).await.expect("enqueue");
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
    assert!(within_a_minute(queue.enqueue_group(vec![vec![Job::for_test("noop")]])).await.is_err());
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
    let metrics = metrics();
    let (thread, _lost) =
        QueueThread::spawn(Box::new(backend), NodeId::generate(), true, metrics, None).expect("thread");
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

/// An `Enqueue` command of `submissions` (each a list of job counts) and the receiver of
/// its answers.
fn enqueue_command(submissions: &[usize]) -> (Command, oneshot::Receiver<Result<Vec<SubmissionAnswer>, StorageError>>) {
    let group: Vec<Vec<Job>> =
        submissions.iter().map(|&jobs| (0..jobs).map(|_| Job::for_test("noop")).collect()).collect();
    let (reply, answer) = oneshot::channel();
    (Command::Enqueue { replies: vec![(group.len(), reply)], group }, answer)
}

#[test]
fn a_batchs_groups_are_merged_and_each_caller_gets_its_own_answers() {
    let (first, mut first_answer) = enqueue_command(&[1]);
    let (second, mut second_answer) = enqueue_command(&[2, 1]);
    let (purge_reply, _purged) = oneshot::channel();
    let purge = Command::Purge { cutoff: Utc::now(), limit: 0, reply: purge_reply };
    let (third, mut third_answer) = enqueue_command(&[3]);
    let merged = merge_enqueues(vec![first, purge, second, third]);
    assert_eq!(merged.len(), 2, "one enqueue in the first group's place, then the purge");
    assert!(matches!(merged[1], Command::Purge { .. }), "other writes keep their order");
    let mut merged = merged.into_iter();
    let Some(Command::Enqueue { group, replies }) = merged.next() else { panic!("the merged enqueue comes first") };
    let sizes: Vec<usize> = group.iter().map(Vec::len).collect();
    assert_eq!(sizes, [1, 2, 1, 3], "the submissions, in the order they came");
    let ids: Vec<Vec<JobId>> = group.iter().map(|submission| submission.iter().map(|job| job.id).collect()).collect();
    let answers: Vec<SubmissionAnswer> = group
        .iter()
        .map(|submission| {
            Ok(submission.iter().map(|job| Admitted { id: job.id, state: JobState::Queued, created: true }).collect())
        })
        .collect();
    Command::Enqueue { group, replies }.answer(Output::Enqueue(answers));
    let answered = |answer: &mut oneshot::Receiver<Result<Vec<SubmissionAnswer>, StorageError>>| -> Vec<Vec<JobId>> {
        let answers: Vec<SubmissionAnswer> = answer.try_recv().expect("answered").expect("committed");
        answers.into_iter().map(|answer| answer.expect("admitted").iter().map(|job| job.id).collect()).collect()
    };
    assert_eq!(answered(&mut first_answer), ids[..1]);
    assert_eq!(answered(&mut second_answer), ids[1..3]);
    assert_eq!(answered(&mut third_answer), ids[3..]);
}

#[test]
fn a_merged_command_holds_at_most_one_groups_worth_of_jobs() {
    let (large, _large_answer) = enqueue_command(&[MAX_MERGED_JOBS - 1]);
    let (single, _single_answer) = enqueue_command(&[1]);
    let (overflowing, _overflowing_answer) = enqueue_command(&[1]);
    let merged = merge_enqueues(vec![large, single, overflowing]);
    let jobs: Vec<usize> = merged
        .iter()
        .map(|command| match command {
            Command::Enqueue { group, .. } => group.iter().map(Vec::len).sum(),
            _ => panic!("only enqueues were sent"),
        })
        .collect();
    assert_eq!(jobs, [MAX_MERGED_JOBS, 1], "the third group starts a command of its own");
}

#[test]
fn a_failed_merged_command_fails_every_caller() {
    let (first, mut first_answer) = enqueue_command(&[1]);
    let (second, mut second_answer) = enqueue_command(&[1]);
    for command in merge_enqueues(vec![first, second]) {
        command.fail(&StorageError::new("the disk is gone"));
    }
    for answer in [&mut first_answer, &mut second_answer] {
        assert!(answer.try_recv().expect("answered").is_err(), "each caller hears of the failure");
    }
}

#[tokio::test]
async fn concurrent_single_job_submissions_each_learn_their_own_job() {
    let (thread, queue) = memory_queue();
    let submissions: Vec<Job> = (0..200).map(|_| Job::for_test("noop")).collect();
    let expected: Vec<JobId> = submissions.iter().map(|job| job.id).collect();
    let answers = futures_util::future::join_all(submissions.into_iter().map(|job| {
        let queue = queue.clone();
        async move { queue.enqueue_group(vec![vec![job]]).await }
    }))
    .await;
    let learned: Vec<JobId> = answers
        .into_iter()
        .map(|answer| {
            let mut answers = answer.expect("committed");
            assert_eq!(answers.len(), 1, "one answer per submission");
            answers.pop().expect("an answer").expect("admitted")[0].id
        })
        .collect();
    assert_eq!(learned, expected);
    drop(queue);
    thread.join();
}
