//! The scheduling core's tests: a few worked examples, then a model of the queue, the
//! workers and the lease that drives the core with random events (proptest) and checks,
//! after every event, what must always hold.

use std::collections::{HashMap, HashSet, VecDeque};

use proptest::prelude::*;

use super::*;
use crate::job::JobResult;
use crate::kinds::KindSettings;
use crate::kinds::upload::{STORE_GATE, StoreHealth};
use crate::queue::{CLAIM_MAX_BODY_BYTES, claim_has_room};

const WORKERS: usize = 4;
const WINDOW_MAX_BYTES: usize = 24 << 20;

fn settings(shared_queue: bool) -> PoolSettings {
    PoolSettings {
        max_workers: WORKERS,
        retry_policy: RetryPolicy { base: std::time::Duration::from_secs(1), cap: std::time::Duration::from_secs(60) },
        window_max_bytes: WINDOW_MAX_BYTES,
        shared_queue,
    }
}

fn kinds(store_reachable: bool) -> Kinds {
    Kinds::unserved(&KindSettings {
        test_kinds: true,
        store_health: Some(StoreHealth::for_test(store_reachable)),
        ..KindSettings::defaults()
    })
    .expect("kinds")
}

fn claimed(mut job: Job) -> Job {
    job.attempt = 1;
    job
}

fn succeeded() -> Outcome {
    Outcome::Succeeded(JobResult::default())
}

#[test]
fn a_noop_runs_at_once_and_a_guarded_job_once_its_start_is_recorded() {
    let kinds = kinds(true);
    let mut scheduler = Scheduler::new(settings(false), fastrand::Rng::with_seed(1), std::time::Instant::now());
    assert!(scheduler.worker_idle(0) && scheduler.worker_idle(1));
    let first = scheduler.pump(&kinds, Utc::now(), std::time::Instant::now());
    let wanted = first.fetch.expect("an empty window fetches");
    assert!(scheduler.pump(&kinds, Utc::now(), std::time::Instant::now()).fetch.is_none(), "one fetch at a time");
    let (noop, sleep) = (claimed(Job::for_test("noop")), claimed(Job::for_test("sleep")));
    let (noop_id, sleep_id) = (noop.id, sleep.id);
    scheduler.fetched(vec![noop, sleep], wanted);
    let pumped = scheduler.pump(&kinds, Utc::now(), std::time::Instant::now());
    assert_eq!(pumped.run_now.iter().map(|launch| launch.job.id).collect::<Vec<_>>(), [noop_id]);
    assert!(pumped.dispatched);
    assert_eq!(scheduler.busy(), 2);
    assert_eq!(scheduler.progress_due(), ProgressDue::Now, "a job waits for its start");
    let flush = scheduler.take_flush().expect("a flush");
    assert_eq!(flush.started.len(), 2);
    assert!(scheduler.take_flush().is_none(), "one flush at a time");
    let committed = scheduler.flush_committed(flush.starting, &[], true, Utc::now());
    assert_eq!(committed.run.iter().map(|launch| launch.job.id).collect::<Vec<_>>(), [sleep_id]);
}

#[test]
fn a_paused_queue_waits_without_holding_workers_and_a_limited_queue_runs_its_limit() {
    let kinds = kinds(true);
    let mut scheduler = Scheduler::new(settings(false), fastrand::Rng::with_seed(3), std::time::Instant::now())
        .with_queue_limits([(crate::job::queue_name("limited"), 1)]);
    for worker in 0..WORKERS {
        scheduler.worker_idle(worker);
    }
    let in_queue = |queue: &str| claimed(Job { queue: crate::job::queue_name(queue), ..Job::for_test("noop") });
    let (bulk, limited) = ([in_queue("bulk"), in_queue("bulk")], [in_queue("limited"), in_queue("limited")]);
    let (bulk_ids, limited_ids): (Vec<JobId>, Vec<JobId>) =
        (bulk.iter().map(|job| job.id).collect(), limited.iter().map(|job| job.id).collect());
    let other = in_queue("default");
    let other_id = other.id;
    scheduler.queues_paused(&HashSet::from([crate::job::queue_name("bulk")]));
    let wanted = scheduler.pump(&kinds, Utc::now(), std::time::Instant::now()).fetch.expect("fetch");
    scheduler.fetched(bulk.into_iter().chain(limited).chain([other]).collect(), wanted);
    let ran =
        |pumped: Pumped| pumped.run_now.into_iter().map(|launch| (launch.worker, launch.job.id)).collect::<Vec<_>>();
    let first = ran(scheduler.pump(&kinds, Utc::now(), std::time::Instant::now()));
    assert_eq!(first.iter().map(|(_, id)| *id).collect::<Vec<_>>(), [limited_ids[0], other_id], "one of limited");
    let (limited_worker, _) = first[0];
    assert_eq!(scheduler.busy(), 2, "the paused queue's jobs hold no worker");
    scheduler.job_finished(limited_worker, succeeded(), false, Utc::now());
    let second = ran(scheduler.pump(&kinds, Utc::now(), std::time::Instant::now()));
    assert_eq!(second.iter().map(|(_, id)| *id).collect::<Vec<_>>(), [limited_ids[1]], "its next, once a slot frees");
    scheduler.queues_paused(&HashSet::new());
    let resumed = ran(scheduler.pump(&kinds, Utc::now(), std::time::Instant::now()));
    assert_eq!(resumed.iter().map(|(_, id)| *id).collect::<Vec<_>>(), bulk_ids, "the resumed queue, in order");
}

#[test]
fn a_job_of_higher_priority_claimed_later_starts_before_the_window_it_joins() {
    let kinds = kinds(true);
    let mut scheduler = Scheduler::new(settings(false), fastrand::Rng::with_seed(4), std::time::Instant::now());
    let at = |priority: u8| claimed(Job { priority, ..Job::for_test("noop") });
    let wanted = scheduler.pump(&kinds, Utc::now(), std::time::Instant::now()).fetch.expect("fetch");
    let backlog = [at(5), at(0), at(5)];
    let backlog_ids: Vec<JobId> = backlog.iter().map(|job| job.id).collect();
    scheduler.fetched(backlog.into(), wanted);
    let wanted = scheduler.pump(&kinds, Utc::now(), std::time::Instant::now()).fetch.expect("room for more");
    let urgent = [at(9), at(5)];
    let urgent_ids: Vec<JobId> = urgent.iter().map(|job| job.id).collect();
    scheduler.fetched(urgent.into(), wanted);
    scheduler.worker_idle(0);
    let mut order = Vec::new();
    for _ in 0..5 {
        let pumped = scheduler.pump(&kinds, Utc::now(), std::time::Instant::now());
        for launch in pumped.run_now {
            order.push(launch.job.id);
            scheduler.job_finished(launch.worker, succeeded(), false, Utc::now());
        }
    }
    assert_eq!(order, [urgent_ids[0], backlog_ids[0], backlog_ids[2], urgent_ids[1], backlog_ids[1]]);
}

#[test]
fn a_refused_start_frees_its_worker_and_a_lapsed_lease_interrupts_the_attempt() {
    let kinds = kinds(true);
    let mut scheduler = Scheduler::new(settings(true), fastrand::Rng::with_seed(2), std::time::Instant::now());
    scheduler.worker_idle(0);
    scheduler.worker_idle(1);
    let wanted = scheduler.pump(&kinds, Utc::now(), std::time::Instant::now()).fetch.expect("fetch");
    let (refused, lapsed) = (claimed(Job::for_test("sleep")), claimed(Job::for_test("sleep")));
    let (refused_id, lapsed_id) = (refused.id, lapsed.id);
    scheduler.fetched(vec![refused, lapsed], wanted);
    assert!(
        scheduler.pump(&kinds, Utc::now(), std::time::Instant::now()).run_now.is_empty(),
        "on a shared queue both wait for their start"
    );
    let flush = scheduler.take_flush().expect("flush");
    let committed = scheduler.flush_committed(flush.starting, &[(refused_id, 0)], true, Utc::now());
    assert!(committed.run.iter().all(|launch| launch.job.id != refused_id));
    assert_eq!(committed.refused, [(refused_id, 1)]);
    assert_eq!(committed.run.len(), 1);
    // The same, for a start recorded as the lease lapsed: it runs nothing, and its
    // attempt ends as interrupted.
    let mut scheduler = Scheduler::new(settings(true), fastrand::Rng::with_seed(3), std::time::Instant::now());
    scheduler.worker_idle(0);
    let wanted = scheduler.pump(&kinds, Utc::now(), std::time::Instant::now()).fetch.expect("fetch");
    let job = claimed(Job::for_test("sleep"));
    scheduler.fetched(vec![job], wanted);
    scheduler.pump(&kinds, Utc::now(), std::time::Instant::now());
    let flush = scheduler.take_flush().expect("flush");
    let committed = scheduler.flush_committed(flush.starting, &[], false, Utc::now());
    assert!(committed.run.is_empty());
    assert_eq!(committed.interrupted.len(), 1);
    assert_eq!(scheduler.busy(), 0);
    let next = scheduler.take_flush().expect("the interrupted end is recorded");
    assert!(matches!(next.finished[0].outcome, Outcome::Interrupted));
    assert!(next.finished[0].retry_at.is_some(), "retried, not dead");
    assert_ne!(refused_id, lapsed_id);
}

#[test]
fn a_lapse_drops_the_window_stops_running_jobs_and_starts_nothing_until_renewed() {
    let kinds = kinds(true);
    let mut scheduler = Scheduler::new(settings(true), fastrand::Rng::with_seed(4), std::time::Instant::now());
    scheduler.worker_idle(0);
    let wanted = scheduler.pump(&kinds, Utc::now(), std::time::Instant::now()).fetch.expect("fetch");
    scheduler.fetched((0..3).map(|_| claimed(Job::for_test("noop"))).collect(), wanted);
    let running = scheduler.pump(&kinds, Utc::now(), std::time::Instant::now());
    assert_eq!(running.run_now.len(), 1);
    let change = scheduler.lease_observed(false, false);
    assert_eq!(change.stopped, Some((2, vec![0])), "two dropped from the window, worker 0 stopped");
    assert!(change.lapsed);
    scheduler.job_finished(0, Outcome::Interrupted, false, Utc::now());
    let pumped = scheduler.pump(&kinds, Utc::now(), std::time::Instant::now());
    assert!(pumped.run_now.is_empty() && pumped.fetch.is_none(), "a lapsed node starts and claims nothing");
    let change = scheduler.lease_observed(true, true);
    assert!(change.resumed && change.stopped.is_none());
}

/// One step of the model.
#[derive(Debug, Clone)]
enum Event {
    /// New jobs reach the queue: sizes in KiB, 0 for a noop, odd for a guarded `sleep`.
    Submit(Vec<u16>),
    /// The fetch out is answered (or fails); `race` lets it bring a job whose cancel is
    /// not yet answered.
    Answer {
        fail: bool,
        race: bool,
    },
    /// A running attempt ends: 0 succeeds, 1 fails and may be retried, 2 fails for good,
    /// 3 panics and the worker restarts.
    Finish {
        pick: u8,
        how: u8,
    },
    /// The linger timer fires: buffered progress goes.
    Linger,
    /// The flush out commits (refusing the starts `refuse` picks) or fails.
    Commit {
        refuse: u8,
        fail: bool,
    },
    Cancel {
        pick: u16,
    },
    CancelAnswer {
        cancelled: bool,
    },
    Store {
        reachable: bool,
    },
    Tick,
    Lease {
        held: bool,
        new_term: bool,
    },
    WorkerLost {
        pick: u8,
    },
    WorkerBack,
    /// The `bulk` queue is paused, or resumed.
    Pause {
        paused: bool,
    },
}

/// The named queues of the model: `bulk` is paused now and then, and `limited` runs at
/// most [`LIMITED_CONCURRENCY`] jobs at once.
const QUEUES: [&str; 3] = ["default", "bulk", "limited"];
const LIMITED_CONCURRENCY: usize = 2;

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        3 => proptest::collection::vec(0u16..3_000, 1..12).prop_map(Event::Submit),
        4 => (any::<u8>().prop_map(|n| n % 8 == 0), any::<bool>()).prop_map(|(fail, race)| Event::Answer { fail, race }),
        6 => (any::<u8>(), 0u8..4).prop_map(|(pick, how)| Event::Finish { pick, how }),
        2 => Just(Event::Linger),
        4 => (any::<u8>(), any::<u8>().prop_map(|n| n % 8 == 0)).prop_map(|(refuse, fail)| Event::Commit { refuse, fail }),
        2 => any::<u16>().prop_map(|pick| Event::Cancel { pick }),
        2 => any::<bool>().prop_map(|cancelled| Event::CancelAnswer { cancelled }),
        1 => any::<bool>().prop_map(|reachable| Event::Store { reachable }),
        1 => Just(Event::Tick),
        1 => (any::<u8>().prop_map(|n| n % 4 != 0), any::<u8>().prop_map(|n| n % 8 == 0))
            .prop_map(|(held, new_term)| Event::Lease { held, new_term }),
        1 => any::<u8>().prop_map(|pick| Event::WorkerLost { pick }),
        2 => Just(Event::WorkerBack),
        1 => any::<bool>().prop_map(|paused| Event::Pause { paused }),
    ]
}

/// The world around the core: a queue, workers that run what they are handed, and a
/// lease; with everything the invariants need to remember.
struct Model {
    scheduler: Scheduler,
    shared: bool,
    store_reachable: bool,
    up: Kinds,
    down: Kinds,
    /// Queued jobs no fetch has taken, in order.
    queue: VecDeque<Job>,
    fetch_out: Option<usize>,
    flush_out: Option<(Flush, u64)>,
    /// Workers running a job, and the job.
    running: HashMap<usize, JobId>,
    /// Workers restarting after a panic or a loss, which report idle later.
    restarting: Vec<usize>,
    /// Every job that ran: none may run twice.
    ran: HashSet<JobId>,
    /// Every job a fetch brought.
    fetched: Vec<JobId>,
    cancels_out: VecDeque<JobId>,
    cancelled: HashSet<JobId>,
    /// Jobs whose cancel was answered while the fetch now out was in flight: that fetch
    /// may have claimed them before the cancel committed.
    cancelled_during_fetch: HashSet<JobId>,
    lease_held: bool,
    term: u64,
    largest_footprint: usize,
    recorded_starts: HashSet<(JobId, u32)>,
    /// Each job's named queue.
    queue_of: HashMap<JobId, crate::job::QueueName>,
    /// Whether `bulk` is paused.
    bulk_paused: bool,
    /// Whether `bulk` was ever paused in this run.
    ever_paused: bool,
}

impl Model {
    fn new(shared: bool) -> Self {
        let mut scheduler = Scheduler::new(settings(shared), fastrand::Rng::with_seed(7), std::time::Instant::now())
            .with_queue_limits([(crate::job::queue_name("limited"), LIMITED_CONCURRENCY)]);
        for number in 0..WORKERS {
            assert!(scheduler.worker_idle(number));
        }
        Model {
            scheduler,
            shared,
            store_reachable: true,
            up: kinds(true),
            down: kinds(false),
            queue: VecDeque::new(),
            fetch_out: None,
            flush_out: None,
            running: HashMap::new(),
            restarting: Vec::new(),
            ran: HashSet::new(),
            fetched: Vec::new(),
            cancels_out: VecDeque::new(),
            cancelled: HashSet::new(),
            cancelled_during_fetch: HashSet::new(),
            lease_held: true,
            term: 0,
            largest_footprint: 0,
            recorded_starts: HashSet::new(),
            queue_of: HashMap::new(),
            bulk_paused: false,
            ever_paused: false,
        }
    }

    fn run(&mut self, launch: Launch) {
        let id = launch.job.id;
        assert!(self.lease_held, "{id} ran while the lease was not held");
        assert!(self.ran.insert(id), "{id} ran twice");
        assert!(!self.cancelled.contains(&id), "{id} ran after its cancel was answered");
        assert!(!self.cancels_out.contains(&id), "{id} ran while its cancel was out");
        assert!(self.running.insert(launch.worker, id).is_none(), "worker {} ran two jobs", launch.worker);
    }

    fn pump(&mut self) {
        let kinds = if self.store_reachable { &self.up } else { &self.down };
        let awaiting_before: HashSet<JobId> =
            self.scheduler.awaiting_start.iter().map(|launch| launch.job.id).collect();
        let pumped = self.scheduler.pump(kinds, Utc::now(), std::time::Instant::now());
        let handed_out = pumped.run_now.iter().chain(&self.scheduler.awaiting_start).map(|launch| launch.job.id);
        for id in handed_out.filter(|id| !awaiting_before.contains(id)) {
            let queue = self.queue_of.get(&id).map_or("default", |queue| &**queue);
            assert!(!(self.bulk_paused && queue == "bulk"), "{id} of the paused queue was handed a worker");
        }
        if self.scheduler.is_draining() {
            assert!(pumped.run_now.is_empty() && !pumped.dispatched, "a drain starts nothing");
        }
        for launch in pumped.run_now {
            self.run(launch);
        }
        if let Some(wanted) = pumped.fetch {
            assert!(self.fetch_out.is_none(), "a second fetch while one is out");
            assert!(wanted > 0);
            self.fetch_out = Some(wanted);
        }
        if self.scheduler.progress_due() == ProgressDue::Now {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.flush_out.is_some() {
            assert!(self.scheduler.take_flush().is_none(), "a second flush while one is out");
            return;
        }
        if let Some(flush) = self.scheduler.take_flush() {
            self.flush_out = Some((flush, self.term));
        }
    }

    fn answer_fetch(&mut self, fail: bool, race: bool) {
        let Some(wanted) = self.fetch_out.take() else { return };
        if fail {
            self.scheduler.fetch_dropped();
            self.cancelled_during_fetch.clear();
            return;
        }
        let mut jobs = Vec::new();
        let mut bytes = 0;
        // The queue passes over a paused queue's jobs, which keep their places.
        let mut at = 0;
        while jobs.len() < wanted {
            let Some(next) = self.queue.get(at) else { break };
            if self.bulk_paused && &*next.queue == "bulk" {
                at += 1;
                continue;
            }
            let id = next.id;
            let pending_cancel = self.cancels_out.contains(&id);
            if (self.cancelled.contains(&id) && !(race && self.cancelled_during_fetch.contains(&id)))
                || (pending_cancel && !race)
            {
                // The queue cancelled it before this claim, or the cancel holds it back.
                if !pending_cancel {
                    self.queue.remove(at);
                    continue;
                }
                break;
            }
            if !claim_has_room(jobs.len(), bytes, next.body_len()) {
                break;
            }
            bytes += next.body_len();
            jobs.extend(self.queue.remove(at));
        }
        self.cancelled_during_fetch.clear();
        if !self.lease_held {
            self.scheduler.fetch_dropped();
            return;
        }
        self.fetched.extend(jobs.iter().map(|job| job.id));
        self.scheduler.fetched(jobs, wanted);
    }

    fn commit(&mut self, refuse: u8, fail: bool) {
        let Some((flush, term)) = self.flush_out.take() else { return };
        if fail {
            self.scheduler.flush_failed(flush);
            self.scheduler.retry_flush();
            return;
        }
        for start in &flush.started {
            assert!(self.recorded_starts.insert((start.id, start.attempt)), "a start recorded twice: {start:?}");
        }
        let refused: Vec<(JobId, i64)> = flush
            .starting
            .iter()
            .enumerate()
            .filter(|(index, _)| refuse & (1 << (index % 8)) != 0 && refuse % 3 == 0)
            .map(|(_, launch)| (launch.job.id, launch.job.claim))
            .collect();
        let held = self.lease_held && term == self.term;
        let committed = self.scheduler.flush_committed(flush.starting, &refused, held, Utc::now());
        if !held {
            assert!(committed.run.is_empty(), "a start recorded as the lease lapsed ran");
        }
        for launch in committed.run {
            assert!(!refused.iter().any(|(id, _)| *id == launch.job.id), "a refused start ran");
            self.run(launch);
        }
    }

    fn finish(&mut self, pick: u8, how: u8) {
        let mut workers: Vec<usize> = self.running.keys().copied().collect();
        workers.sort_unstable();
        let Some(&worker) = workers.get(usize::from(pick) % workers.len().max(1)) else { return };
        let outcome = match how {
            0 => succeeded(),
            1 => Outcome::Failed { error: "try again".to_owned(), retryable: true },
            2 => Outcome::Failed { error: "never".to_owned(), retryable: false },
            _ => Outcome::Panicked { message: "boom".to_owned() },
        };
        let restarts = how == 3;
        self.running.remove(&worker);
        assert!(self.scheduler.job_finished(worker, outcome, restarts, Utc::now()), "a running worker finished");
        if restarts {
            self.restarting.push(worker);
        }
    }

    fn cancel(&mut self, pick: u16) {
        let mut known: Vec<JobId> = self.queue.iter().map(|job| job.id).collect();
        known.extend(self.fetched.iter().copied());
        known.sort_unstable();
        let Some(&id) = known.get(usize::from(pick) % known.len().max(1)) else { return };
        if self.cancels_out.contains(&id) || self.cancelled.contains(&id) {
            return;
        }
        let accepted = self.scheduler.cancel_requested(id);
        if accepted {
            assert!(!self.running.values().any(|running| *running == id), "a running job's cancel was taken");
            self.cancels_out.push_back(id);
        }
    }

    fn cancel_answer(&mut self, cancelled: bool) {
        let Some(id) = self.cancels_out.pop_front() else { return };
        if cancelled {
            self.cancelled.insert(id);
            if self.fetch_out.is_some() {
                self.cancelled_during_fetch.insert(id);
            }
        }
        self.scheduler.cancel_answered(id, cancelled);
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::Submit(sizes) => {
                for size in sizes {
                    let mut job = match size {
                        0 => Job::for_test("noop"),
                        size if size % 2 == 1 => Job::for_test("sleep"),
                        size => Job::upload_for_test(usize::from(size) << 10),
                    };
                    job.attempt = 1;
                    job.queue = crate::job::queue_name(QUEUES[usize::from(size) % QUEUES.len()]);
                    self.queue_of.insert(job.id, job.queue.clone());
                    self.largest_footprint = self.largest_footprint.max(job.footprint());
                    self.queue.push_back(job);
                }
            }
            Event::Answer { fail, race } => self.answer_fetch(fail, race),
            Event::Finish { pick, how } => self.finish(pick, how),
            Event::Linger => self.flush(),
            Event::Commit { refuse, fail } => self.commit(refuse, fail),
            Event::Cancel { pick } => self.cancel(pick),
            Event::CancelAnswer { cancelled } => self.cancel_answer(cancelled),
            Event::Store { reachable } => {
                if reachable && !self.store_reachable {
                    self.scheduler.gate_opened(&GateKey::from(STORE_GATE));
                }
                self.store_reachable = reachable;
            }
            Event::Tick => {
                self.scheduler.release_all_gates();
            }
            Event::Lease { held, new_term } if self.shared => {
                if new_term || (!self.lease_held && held) {
                    self.term += 1;
                }
                self.lease_held = held;
                let change = self.scheduler.lease_observed(held, new_term);
                if let Some((_, stopped)) = change.stopped {
                    // Each stopped attempt ends as interrupted; the others of the window are
                    // no longer this node's.
                    for worker in stopped {
                        if self.running.remove(&worker).is_some() {
                            self.scheduler.job_finished(worker, Outcome::Interrupted, false, Utc::now());
                        }
                    }
                }
            }
            Event::Lease { .. } => {}
            Event::WorkerLost { pick } => {
                let worker = usize::from(pick) % WORKERS;
                if self.restarting.contains(&worker) {
                    return;
                }
                self.running.remove(&worker);
                self.scheduler.worker_lost(worker, Utc::now());
                self.restarting.push(worker);
            }
            Event::WorkerBack => {
                if let Some(worker) = self.restarting.pop() {
                    self.scheduler.worker_idle(worker);
                }
            }
            Event::Pause { paused } => {
                self.bulk_paused = paused;
                self.ever_paused |= paused;
                let paused: HashSet<crate::job::QueueName> =
                    paused.then(|| crate::job::queue_name("bulk")).into_iter().collect();
                self.scheduler.queues_paused(&paused);
            }
        }
        self.pump();
        self.check();
    }

    fn check(&self) {
        let scheduler = &self.scheduler;
        let busy = scheduler.running.iter().flatten().count();
        assert_eq!(scheduler.busy(), busy, "busy counts the running slots");
        assert!(busy <= WORKERS);
        // Jobs held at a paused queue's gate count against no bound, and are at most what
        // the window held when the pause came (the queue passes over the paused queue's
        // jobs), so the window holds at most twice its bound, plus a claim.
        let (held_jobs, held_bytes) = scheduler.window().held();
        assert!(held_jobs == 0 || self.bulk_paused, "jobs held while nothing is paused");
        // Without a pause in the run, the bound holds as it always did: one job past it.
        assert!(
            self.ever_paused || scheduler.window().bytes() <= WINDOW_MAX_BYTES + self.largest_footprint,
            "the window holds {} bytes, past its bound of {} plus one job",
            scheduler.window().bytes(),
            WINDOW_MAX_BYTES
        );
        assert!(held_bytes <= scheduler.window().bytes());
        assert!(
            scheduler.window().bytes() <= 2 * (WINDOW_MAX_BYTES + self.largest_footprint + CLAIM_MAX_BODY_BYTES),
            "the window holds {} bytes, past twice its bound",
            scheduler.window().bytes()
        );
        assert!(self.fetch_out.is_some() == scheduler.is_fetching(), "the core knows whether its fetch is out");
        let limited = scheduler.running.iter().flatten().filter(|running| &*running.queue == "limited").count();
        assert!(limited <= LIMITED_CONCURRENCY, "{limited} jobs of a queue limited to {LIMITED_CONCURRENCY} run");
    }

    /// Drains: every running job finishes, every flush commits, every fetch and cancel is
    /// answered, and the drain must end.
    fn drain(&mut self) {
        // A paused queue's jobs wait; the drain must end whether or not they do.
        self.scheduler.drain();
        if self.shared && !self.lease_held {
            self.lease_held = true;
            self.term += 1;
            self.scheduler.lease_observed(true, true);
        }
        for _ in 0..10_000 {
            if self.scheduler.drained() {
                return;
            }
            if let Some(&worker) = self.running.keys().next() {
                self.running.remove(&worker);
                self.scheduler.job_finished(worker, succeeded(), false, Utc::now());
            } else if self.flush_out.is_some() {
                self.commit(0, false);
            } else if self.fetch_out.is_some() {
                self.answer_fetch(false, false);
            } else if !self.cancels_out.is_empty() {
                self.cancel_answer(false);
            } else if let Some(worker) = self.restarting.pop() {
                self.scheduler.worker_idle(worker);
            } else {
                self.flush();
            }
            self.pump();
            self.check();
        }
        panic!("the drain never ended: busy {}, running {:?}", self.scheduler.busy(), self.running);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// No job starts twice or after its cancel, the window's byte bound holds, nothing
    /// starts while the lease is lapsed, nothing of a paused queue starts, a queue's
    /// concurrency limit holds, and a drain ends; on a queue of one node and on a shared one.
    #[test]
    fn the_core_keeps_its_invariants_under_any_order_of_events(
        shared in any::<bool>(),
        events in proptest::collection::vec(event(), 1..300),
    ) {
        let mut model = Model::new(shared);
        model.pump();
        for event in events {
            model.apply(event);
        }
        model.drain();
    }
}
