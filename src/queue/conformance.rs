//! The backend conformance suite: one set of tests over the backend traits
//! ([`super::backend`]), run against every backend (the memory backend, SQLite, and
//! PostgreSQL on a private cluster the suite starts itself). A backend that passes it
//! behaves as the queue thread and the Dispatcher expect, whatever it stores jobs in: claim
//! order, leases, fencing of stale attempts, cancel, retry of dead jobs, purge, counts,
//! `max_queue`, idempotency per tenant, priorities, paused queues, and listings with every filter.
//!
//! A new backend gets the suite by one more `conformance_suite!` line at the bottom.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::{ControlError, Cursor, JobPage, Lease, ListFilter, QueueBackend, Refusal};
use crate::job::{FinishedJob, Job, JobId, JobResult, JobState, Outcome, StartedJob};

/// A fresh, empty backend, the lease its claims are made under, and whatever must live
/// as long as the backend (its directory).
struct Opened {
    backend: Box<dyn QueueBackend>,
    lease: Lease,
    _keep: Box<dyn std::any::Any>,
}

/// Runs `work` in one unit of work and commits it.
fn committed<T>(backend: &mut dyn QueueBackend, work: impl FnOnce(&mut dyn QueueBackend) -> T) -> T {
    backend.begin().expect("begin");
    let result = work(&mut *backend);
    backend.commit().expect("commit");
    result
}

/// A noop job of `kind`, submitted by `tenant`.
fn job(kind: &'static str, tenant: Option<&str>) -> Job {
    Job { submitted_by: tenant.map(str::to_owned), ..Job::for_test(kind) }
}

/// Enqueues each of `jobs` as a submission of its own and returns their ids, in order.
fn enqueue_each(backend: &mut dyn QueueBackend, jobs: Vec<Job>) -> Vec<JobId> {
    committed(backend, |backend| {
        jobs.into_iter()
            .map(|job| {
                let admitted = backend.enqueue(vec![job]).expect("enqueue").expect("admitted");
                admitted[0].id
            })
            .collect()
    })
}

/// Claims up to `max` jobs as of now.
fn claim(opened: &mut Opened, max: usize) -> Vec<Job> {
    claim_at(opened, max, Utc::now())
}

fn claim_at(opened: &mut Opened, max: usize, now: DateTime<Utc>) -> Vec<Job> {
    let lease = opened.lease;
    opened.backend.begin_fetch().expect("begin");
    let batch = opened.backend.claim(max, now, &lease).expect("claim");
    opened.backend.commit().expect("commit");
    batch.jobs
}

fn started(job: &Job) -> StartedJob {
    StartedJob { id: job.id, attempt: job.attempt, claim: job.claim, started_at: Utc::now() }
}

fn finished(job: &Job, outcome: Outcome, retry_at: Option<DateTime<Utc>>) -> FinishedJob {
    FinishedJob {
        id: job.id,
        attempt: job.attempt,
        claim: job.claim,
        kind: "noop",
        outcome,
        finished_at: Utc::now(),
        retry_at,
    }
}

fn succeeded() -> Outcome {
    Outcome::Succeeded(JobResult::default())
}

/// Records `started` and `finished` in one unit of work; returns the refused starts.
fn progress(backend: &mut dyn QueueBackend, started: &[StartedJob], finished: &[FinishedJob]) -> Vec<(JobId, i64)> {
    committed(backend, |backend| backend.record_progress(started, finished).expect("record progress"))
}

fn state_of(backend: &mut dyn QueueBackend, id: JobId) -> Option<JobState> {
    backend.get(id, false).expect("get").map(|record| record.state)
}

/// Every id a listing with `filter` shows, following its cursors `page_size` at a time.
fn list_all(backend: &mut dyn QueueBackend, filter: &ListFilter, page_size: usize) -> Vec<JobId> {
    let mut ids = Vec::new();
    let mut before: Option<Cursor> = None;
    loop {
        let JobPage { records, next_before } = backend.list(filter, before, page_size).expect("list");
        assert!(records.len() <= page_size, "a page holds at most its limit");
        ids.extend(records.iter().map(|record| record.id));
        match next_before {
            Some(cursor) => before = Some(cursor),
            None => return ids,
        }
    }
}

fn claims_come_in_submission_order_and_a_claimed_job_is_not_handed_out_again(mut opened: Opened) {
    let ids = enqueue_each(opened.backend.as_mut(), (0..5).map(|_| job("noop", None)).collect());
    let first = claim(&mut opened, 2);
    assert_eq!(first.iter().map(|job| job.id).collect::<Vec<_>>(), ids[..2], "the oldest first");
    assert!(first.iter().all(|job| job.attempt == 1), "a first claim is the first attempt");
    let rest = claim(&mut opened, 10);
    assert_eq!(rest.iter().map(|job| job.id).collect::<Vec<_>>(), ids[2..], "then the rest, in order");
    assert!(claim(&mut opened, 10).is_empty(), "a claimed job is not handed out again while its lease holds");
    let depth = opened.backend.depth().expect("depth");
    assert_eq!(depth.queued, 5, "claimed jobs stay queued until their start is recorded");
}

fn a_start_and_a_finish_move_a_job_through_its_states(mut opened: Opened) {
    let ids = enqueue_each(opened.backend.as_mut(), vec![job("noop", None), job("noop", None)]);
    let jobs = claim(&mut opened, 10);
    let refused = progress(opened.backend.as_mut(), &[started(&jobs[0]), started(&jobs[1])], &[]);
    assert!(refused.is_empty(), "the starts of a held claim are taken: {refused:?}");
    assert_eq!(state_of(opened.backend.as_mut(), ids[0]), Some(JobState::Running));
    let depth = opened.backend.depth().expect("depth");
    assert_eq!((depth.queued, depth.running), (0, 2));
    progress(opened.backend.as_mut(), &[], &[finished(&jobs[0], succeeded(), None)]);
    // A start and its finish in one flush, as a short job's are.
    let record = opened.backend.get(ids[0], false).expect("get").expect("a record");
    assert_eq!((record.state, record.attempts), (JobState::Succeeded, 1));
    assert!(record.started_at.is_some() && record.finished_at.is_some(), "{record:?}");
    let failed = Outcome::Failed { error: "no such bucket".to_owned(), retryable: false };
    progress(opened.backend.as_mut(), &[], &[finished(&jobs[1], failed, None)]);
    let record = opened.backend.get(ids[1], false).expect("get").expect("a record");
    assert_eq!(record.state, JobState::Dead, "a final failure is dead");
    assert_eq!(record.last_error.as_deref(), Some("no such bucket"));
    let depth = opened.backend.depth().expect("depth");
    assert_eq!((depth.queued, depth.running, depth.dead), (0, 0, 1));
}

fn a_start_and_finish_in_one_flush_count_one_attempt(mut opened: Opened) {
    let ids = enqueue_each(opened.backend.as_mut(), vec![job("noop", None)]);
    let jobs = claim(&mut opened, 10);
    progress(opened.backend.as_mut(), &[started(&jobs[0])], &[finished(&jobs[0], succeeded(), None)]);
    let record = opened.backend.get(ids[0], false).expect("get").expect("a record");
    assert_eq!((record.state, record.attempts), (JobState::Succeeded, 1));
}

fn a_retry_waits_for_its_time_and_comes_back_as_the_next_attempt(mut opened: Opened) {
    let ids = enqueue_each(opened.backend.as_mut(), vec![job("noop", None)]);
    let jobs = claim(&mut opened, 10);
    let retry_at = Utc::now() + chrono::Duration::seconds(60);
    let failed = Outcome::Failed { error: "503 from the receiver".to_owned(), retryable: true };
    progress(opened.backend.as_mut(), &[started(&jobs[0])], &[finished(&jobs[0], failed, Some(retry_at))]);
    assert_eq!(state_of(opened.backend.as_mut(), ids[0]), Some(JobState::Failed));
    assert_eq!(opened.backend.depth().expect("depth").failed, 1);
    assert!(claim(&mut opened, 10).is_empty(), "not before its retry time");
    let again = claim_at(&mut opened, 10, retry_at + chrono::Duration::seconds(1));
    assert_eq!(again.len(), 1, "due at its retry time");
    assert_eq!((again[0].id, again[0].attempt), (ids[0], 2), "the same job, at its second attempt");
}

/// Only for a backend that several processes share: there a copy of a job from before a
/// rescue can finish late. A backend one process owns (SQLite, memory) never receives such
/// a write, since the worker drops an abandoned attempt's result, and records a finish by
/// the job's state alone.
fn a_stale_attempts_writes_change_nothing(mut opened: Opened) {
    let ids = enqueue_each(opened.backend.as_mut(), vec![job("noop", None)]);
    let jobs = claim(&mut opened, 10);
    // A start that names another claim: a copy of the job this node no longer holds.
    let other_claim = Job { claim: jobs[0].claim + 1, ..jobs[0].clone() };
    let refused = progress(opened.backend.as_mut(), &[started(&other_claim)], &[]);
    assert_eq!(refused, [(ids[0], other_claim.claim)], "the copy must not run");
    assert_eq!(state_of(opened.backend.as_mut(), ids[0]), Some(JobState::Queued), "and nothing was recorded");
    progress(opened.backend.as_mut(), &[started(&jobs[0])], &[]);
    // A finish that names an attempt the job is not on: a copy from before a rescue.
    let mut stale = jobs[0].clone();
    stale.attempt += 1;
    progress(opened.backend.as_mut(), &[], &[finished(&stale, succeeded(), None)]);
    let record = opened.backend.get(ids[0], false).expect("get").expect("a record");
    assert_eq!((record.state, record.attempts), (JobState::Running, 1), "the stale finish changed nothing");
    progress(opened.backend.as_mut(), &[], &[finished(&jobs[0], succeeded(), None)]);
    assert_eq!(state_of(opened.backend.as_mut(), ids[0]), Some(JobState::Succeeded), "the real one lands");
}

fn cancel_stops_a_waiting_job_and_refuses_the_others(mut opened: Opened) {
    let ids = enqueue_each(opened.backend.as_mut(), vec![job("noop", None), job("noop", None), job("noop", None)]);
    let cancel = |backend: &mut dyn QueueBackend, id| committed(backend, |backend| backend.cancel(id, Utc::now()));
    assert_eq!(cancel(opened.backend.as_mut(), ids[2]).expect("cancel"), Ok(()));
    assert_eq!(state_of(opened.backend.as_mut(), ids[2]), Some(JobState::Cancelled));
    assert_eq!(
        cancel(opened.backend.as_mut(), ids[2]).expect("cancel"),
        Err(ControlError::Conflict(JobState::Cancelled)),
        "a cancelled job is finished"
    );
    assert_eq!(cancel(opened.backend.as_mut(), JobId::generate()).expect("cancel"), Err(ControlError::NotFound));
    let jobs = claim(&mut opened, 10);
    assert_eq!(jobs.iter().map(|job| job.id).collect::<Vec<_>>(), ids[..2], "a cancelled job is never claimed");
    progress(opened.backend.as_mut(), &[started(&jobs[0])], &[]);
    assert_eq!(
        cancel(opened.backend.as_mut(), ids[0]).expect("cancel"),
        Err(ControlError::Conflict(JobState::Running)),
        "a running job is not cancelled"
    );
    assert_eq!(opened.backend.depth().expect("depth").unfinished(), 2, "a cancelled job frees its place");
}

fn a_dead_job_is_retried_from_its_first_attempt_and_nothing_else_is(mut opened: Opened) {
    let ids = enqueue_each(opened.backend.as_mut(), vec![job("noop", None), job("noop", None)]);
    let jobs = claim(&mut opened, 10);
    let failed = Outcome::Failed { error: "refused".to_owned(), retryable: false };
    progress(opened.backend.as_mut(), &[started(&jobs[0])], &[finished(&jobs[0], failed, None)]);
    let retry = |backend: &mut dyn QueueBackend, id| committed(backend, |backend| backend.retry_dead(id));
    assert_eq!(
        retry(opened.backend.as_mut(), ids[1]).expect("retry"),
        Err(ControlError::Conflict(JobState::Queued)),
        "only a dead job is retried"
    );
    assert_eq!(retry(opened.backend.as_mut(), JobId::generate()).expect("retry"), Err(ControlError::NotFound));
    assert_eq!(retry(opened.backend.as_mut(), ids[0]).expect("retry"), Ok(()));
    let record = opened.backend.get(ids[0], false).expect("get").expect("a record");
    assert_eq!((record.state, record.attempts), (JobState::Queued, 0));
    let again = claim(&mut opened, 10);
    assert_eq!(again.iter().map(|job| (job.id, job.attempt)).collect::<Vec<_>>(), [(ids[0], 1)]);
}

fn purge_deletes_only_finished_jobs_older_than_the_cutoff_up_to_its_limit(mut opened: Opened) {
    let ids = enqueue_each(opened.backend.as_mut(), (0..4).map(|_| job("noop", None)).collect());
    let jobs = claim(&mut opened, 3);
    let ends: Vec<FinishedJob> = jobs.iter().map(|job| finished(job, succeeded(), None)).collect();
    progress(opened.backend.as_mut(), &jobs.iter().map(started).collect::<Vec<_>>(), &ends);
    let purge = |backend: &mut dyn QueueBackend, cutoff, limit| {
        committed(backend, |backend| backend.purge_finished(cutoff, limit).expect("purge"))
    };
    let before_they_finished = Utc::now() - chrono::Duration::seconds(60);
    assert_eq!(purge(opened.backend.as_mut(), before_they_finished, 100), 0, "none finished before the cutoff");
    let later = Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(purge(opened.backend.as_mut(), later, 2), 2, "at most the limit");
    assert_eq!(purge(opened.backend.as_mut(), later, 100), 1, "then the rest");
    let left: Vec<Option<JobState>> = ids.iter().map(|&id| state_of(opened.backend.as_mut(), id)).collect();
    assert_eq!(left, [None, None, None, Some(JobState::Queued)], "the unfinished job stays");
}

fn max_queue_bounds_unfinished_jobs_and_finished_ones_make_room(opened: Opened) {
    // Opened with room for 3 unfinished jobs.
    let mut opened = opened;
    enqueue_each(opened.backend.as_mut(), vec![job("noop", None), job("noop", None)]);
    let refused = committed(opened.backend.as_mut(), |backend| {
        backend.enqueue(vec![job("noop", None), job("noop", None)]).expect("enqueue")
    });
    assert!(matches!(refused, Err(Refusal::QueueFull { requested: 2, .. })), "{refused:?}");
    assert_eq!(opened.backend.depth().expect("depth").queued, 2, "a refused submission adds nothing");
    let jobs = claim(&mut opened, 1);
    progress(opened.backend.as_mut(), &[started(&jobs[0])], &[finished(&jobs[0], succeeded(), None)]);
    let accepted = committed(opened.backend.as_mut(), |backend| {
        backend.enqueue(vec![job("noop", None), job("noop", None)]).expect("enqueue")
    });
    assert!(accepted.is_ok(), "a finished job makes room: {accepted:?}");
}

fn an_idempotency_key_names_one_job_per_tenant(mut opened: Opened) {
    let keyed = |tenant: Option<&str>| Job { idempotency_key: Some("order-42".to_owned()), ..job("noop", tenant) };
    let submit = |backend: &mut dyn QueueBackend, job: Job| {
        committed(backend, |backend| backend.enqueue(vec![job]).expect("enqueue").expect("admitted")[0])
    };
    let first = submit(opened.backend.as_mut(), keyed(Some("billing")));
    assert!(first.created);
    let again = submit(opened.backend.as_mut(), keyed(Some("billing")));
    assert_eq!((again.id, again.created), (first.id, false), "the same key from the same tenant names the job");
    let other = submit(opened.backend.as_mut(), keyed(Some("shipping")));
    assert!(other.created && other.id != first.id, "another tenant's key is its own");
    let anonymous = submit(opened.backend.as_mut(), keyed(None));
    assert!(anonymous.created && anonymous.id != first.id && anonymous.id != other.id);
    // Within one submission, a repeated key names the first job.
    let pair = committed(opened.backend.as_mut(), |backend| {
        let jobs = vec![keyed(Some("audit")), keyed(Some("audit"))];
        backend.enqueue(jobs).expect("enqueue").expect("admitted")
    });
    assert_eq!(pair[1].id, pair[0].id);
    assert_eq!(opened.backend.depth().expect("depth").queued, 4, "four jobs, not six");
}

fn listings_show_what_each_filter_names_newest_first_across_pages(mut opened: Opened) {
    // Jobs of two kinds and three submitters, in every state a listing can name.
    let mut made: Vec<(JobId, &'static str, Option<&'static str>)> = Vec::new();
    for round in 0..3 {
        for (kind, tenant) in [("noop", None), ("sleep", Some("billing")), ("noop", Some("shipping"))] {
            let mut new = job(kind, tenant);
            if round == 2 && kind == "sleep" {
                new.run_at = Some(Utc::now() + chrono::Duration::hours(1));
            }
            let id = enqueue_each(opened.backend.as_mut(), vec![new])[0];
            made.push((id, kind, tenant));
        }
    }
    let claimed = claim(&mut opened, 4);
    let failed = Outcome::Failed { error: "boom".to_owned(), retryable: false };
    let retry = Outcome::Failed { error: "later".to_owned(), retryable: true };
    let later = Utc::now() + chrono::Duration::hours(1);
    progress(
        opened.backend.as_mut(),
        &claimed.iter().map(started).collect::<Vec<_>>(),
        &[
            finished(&claimed[0], succeeded(), None),
            finished(&claimed[1], failed, None),
            finished(&claimed[2], retry, Some(later)),
        ],
    );
    let cancelled = made[5].0;
    committed(opened.backend.as_mut(), |backend| backend.cancel(cancelled, Utc::now())).expect("cancel").expect("ok");
    let states: Vec<JobState> =
        made.iter().map(|&(id, _, _)| state_of(opened.backend.as_mut(), id).expect("a record")).collect();
    let seen: BTreeSet<&str> = states.iter().map(|state| state.name()).collect();
    assert_eq!(seen.len(), 7, "every state is present: {seen:?}");

    let kinds = [None, Some("noop"), Some("sleep"), Some("zzz")];
    let tenants = [None, Some("billing"), Some("shipping"), Some("nobody")];
    let all_states = [
        None,
        Some(JobState::Queued),
        Some(JobState::Scheduled),
        Some(JobState::Running),
        Some(JobState::Succeeded),
        Some(JobState::Failed),
        Some(JobState::Dead),
        Some(JobState::Cancelled),
    ];
    for state in all_states {
        for kind in kinds {
            for tenant in tenants {
                let filter =
                    ListFilter { state, kind: kind.map(str::to_owned), submitted_by: tenant.map(str::to_owned) };
                let expected: Vec<JobId> = made
                    .iter()
                    .zip(&states)
                    .rev()
                    .filter(|((_, job_kind, job_tenant), job_state)| {
                        state.is_none_or(|state| state == **job_state)
                            && kind.is_none_or(|kind| kind == *job_kind)
                            && tenant.is_none_or(|tenant| Some(tenant) == *job_tenant)
                    })
                    .map(|((id, _, _), _)| *id)
                    .collect();
                for page_size in [2, 100] {
                    let listed = list_all(opened.backend.as_mut(), &filter, page_size);
                    assert_eq!(listed, expected, "{filter:?}, {page_size} a page: newest first, each once");
                }
            }
        }
    }
}

/// A pause passes over the queue's jobs on every claim; a resume hands them out in their
/// order, and never a job claimed before the pause (the claiming node holds it). The
/// stored word outlives a write `if_unset` (the configuration's), and the view shows it
/// with each queue's depth.
fn a_paused_queue_is_passed_over_and_resumes_in_order(mut opened: Opened) {
    let in_queue = |queue: &str| Job { queue: crate::job::queue_name(queue), ..job("noop", None) };
    let set = |opened: &mut Opened, paused: bool, if_unset: bool| {
        committed(opened.backend.as_mut(), |backend| backend.set_queue_paused("bulk", paused, if_unset, Utc::now()))
            .expect("pause or resume");
    };
    let before = enqueue_each(opened.backend.as_mut(), vec![in_queue("bulk")]);
    assert_eq!(claim(&mut opened, 1).iter().map(|job| job.id).collect::<Vec<_>>(), before);
    set(&mut opened, true, false);
    let ids = enqueue_each(
        opened.backend.as_mut(),
        vec![in_queue("bulk"), in_queue("default"), in_queue("bulk"), in_queue("default")],
    );
    let during = claim(&mut opened, 10);
    assert_eq!(during.iter().map(|job| job.id).collect::<Vec<_>>(), [ids[1], ids[3]], "only the running queue");
    assert!(during.iter().all(|job| &*job.queue == "default"));
    set(&mut opened, false, true);
    assert!(claim(&mut opened, 10).is_empty(), "a write if unset keeps the stored pause");
    let view = opened.backend.queues(true).expect("queues");
    assert_eq!(view.paused.get("bulk"), Some(&true));
    assert_eq!(view.depths["bulk"][&JobState::Queued], 3, "the claimed job, and the two passed over");
    assert_eq!(view.depths["default"][&JobState::Queued], 2);
    let record = opened.backend.get(ids[0], false).expect("get").expect("the job");
    assert_eq!(record.queue, "bulk");
    set(&mut opened, false, false);
    let after = claim(&mut opened, 10);
    assert_eq!(after.iter().map(|job| job.id).collect::<Vec<_>>(), [ids[0], ids[2]], "the passed-over jobs, in order");
    assert!(claim(&mut opened, 10).is_empty(), "the job claimed before the pause is not handed out again");
    assert_eq!(opened.backend.queues(false).expect("queues").paused.get("bulk"), Some(&false));
}

/// Claims hand out every job of a higher priority before any of a lower one, and jobs of
/// one priority in submission order: also a job of high priority submitted after a claim
/// took part of a backlog, and one that falls due later.
fn higher_priorities_are_claimed_first_and_equal_ones_in_order(mut opened: Opened) {
    let at = |priority: u8| Job { priority, ..job("noop", None) };
    let ids = enqueue_each(opened.backend.as_mut(), vec![at(0), at(5), at(9), at(5), at(0), at(9)]);
    let first = claim(&mut opened, 3);
    assert_eq!(first.iter().map(|job| job.id).collect::<Vec<_>>(), [ids[2], ids[5], ids[1]]);
    assert_eq!(first.iter().map(|job| job.priority).collect::<Vec<_>>(), [9, 9, 5]);
    let urgent = enqueue_each(opened.backend.as_mut(), vec![at(7)]);
    let rest = claim(&mut opened, 10);
    assert_eq!(rest.iter().map(|job| job.id).collect::<Vec<_>>(), [urgent[0], ids[3], ids[0], ids[4]]);
    let now = Utc::now();
    let later = enqueue_each(
        opened.backend.as_mut(),
        vec![at(1), Job { run_at: Some(now + chrono::Duration::seconds(60)), ..at(8) }],
    );
    let due = claim_at(&mut opened, 10, now + chrono::Duration::seconds(61));
    assert_eq!(due.iter().map(|job| job.id).collect::<Vec<_>>(), [later[1], later[0]], "a due job keeps its priority");
    let record = opened.backend.get(later[1], false).expect("get").expect("the job");
    assert_eq!(record.priority, 8);
}

/// Opens a fresh memory backend with room for `capacity` unfinished jobs.
fn memory(capacity: usize) -> Opened {
    Opened {
        backend: Box::new(super::memory::MemoryBackend::new(capacity)),
        lease: Lease::for_test(),
        _keep: Box::new(()),
    }
}

/// Opens a fresh SQLite file with room for `capacity` unfinished jobs.
fn sqlite(capacity: usize) -> Opened {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("queue.db");
    let (backend, _) =
        super::sqlite::SqliteBackend::open(&path, capacity, super::Synchronous::Normal, None).expect("open");
    Opened { backend: Box::new(backend), lease: Lease::for_test(), _keep: Box::new(dir) }
}

use super::test_cluster::cluster;

/// Opens a node on a fresh database of the suite's private cluster with room for
/// `capacity` unfinished jobs, once its lease is held: a node that cannot prove its lease
/// claims nothing.
fn postgres(capacity: usize) -> Opened {
    static CLUSTER: std::sync::OnceLock<cluster::Cluster> = std::sync::OnceLock::new();
    let url = CLUSTER.get_or_init(cluster::Cluster::start).new_database();
    let settings = super::ClusterSettings { url, node_name: "conformance".to_owned(), lease: Duration::from_secs(5) };
    let metrics = crate::metrics::Metrics::new(&["noop"]).expect("metrics").cluster;
    let node = super::NodeId::generate();
    let backend = super::postgres::PostgresBackend::open(&settings, node, capacity, metrics).expect("open");
    let clock = backend.lease_clock().expect("a shared backend has a lease clock");
    // A bound for a broken build only: the first heartbeat comes within milliseconds.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !clock.is_held() {
        assert!(Instant::now() < deadline, "the node's lease was never held");
        std::thread::sleep(Duration::from_millis(10));
    }
    Opened { backend: Box::new(backend), lease: Lease { owner: node, expires_at: None }, _keep: Box::new(()) }
}

/// The suite's tests of one backend, where `$open(capacity)` opens a fresh one.
macro_rules! suite_tests {
    ($open:expr) => {
        #[test]
        fn claims_come_in_submission_order_and_a_claimed_job_is_not_handed_out_again() {
            super::claims_come_in_submission_order_and_a_claimed_job_is_not_handed_out_again($open(1_000));
        }

        #[test]
        fn a_start_and_a_finish_move_a_job_through_its_states() {
            super::a_start_and_a_finish_move_a_job_through_its_states($open(1_000));
        }

        #[test]
        fn a_start_and_finish_in_one_flush_count_one_attempt() {
            super::a_start_and_finish_in_one_flush_count_one_attempt($open(1_000));
        }

        #[test]
        fn a_retry_waits_for_its_time_and_comes_back_as_the_next_attempt() {
            super::a_retry_waits_for_its_time_and_comes_back_as_the_next_attempt($open(1_000));
        }

        #[test]
        fn cancel_stops_a_waiting_job_and_refuses_the_others() {
            super::cancel_stops_a_waiting_job_and_refuses_the_others($open(1_000));
        }

        #[test]
        fn a_dead_job_is_retried_from_its_first_attempt_and_nothing_else_is() {
            super::a_dead_job_is_retried_from_its_first_attempt_and_nothing_else_is($open(1_000));
        }

        #[test]
        fn purge_deletes_only_finished_jobs_older_than_the_cutoff_up_to_its_limit() {
            super::purge_deletes_only_finished_jobs_older_than_the_cutoff_up_to_its_limit($open(1_000));
        }

        #[test]
        fn max_queue_bounds_unfinished_jobs_and_finished_ones_make_room() {
            super::max_queue_bounds_unfinished_jobs_and_finished_ones_make_room($open(3));
        }

        #[test]
        fn an_idempotency_key_names_one_job_per_tenant() {
            super::an_idempotency_key_names_one_job_per_tenant($open(1_000));
        }

        #[test]
        fn higher_priorities_are_claimed_first_and_equal_ones_in_order() {
            super::higher_priorities_are_claimed_first_and_equal_ones_in_order($open(1_000));
        }

        #[test]
        fn a_paused_queue_is_passed_over_and_resumes_in_order() {
            super::a_paused_queue_is_passed_over_and_resumes_in_order($open(1_000));
        }

        #[test]
        fn listings_show_what_each_filter_names_newest_first_across_pages() {
            super::listings_show_what_each_filter_names_newest_first_across_pages($open(1_000));
        }
    };
}

/// The suite as a module of tests of one backend. A backend that several processes share
/// (`shared`) also gets the tests of fencing.
macro_rules! conformance_suite {
    ($backend:ident, $open:expr) => {
        mod $backend {
            use super::*;

            suite_tests!($open);
        }
    };
    ($backend:ident, $open:expr, shared) => {
        mod $backend {
            use super::*;

            suite_tests!($open);

            #[test]
            fn a_stale_attempts_writes_change_nothing() {
                super::a_stale_attempts_writes_change_nothing($open(1_000));
            }
        }
    };
}

conformance_suite!(on_memory, memory);
conformance_suite!(on_sqlite, sqlite);
conformance_suite!(on_postgres, postgres, shared);
