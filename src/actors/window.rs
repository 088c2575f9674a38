//! The Dispatcher's window of claimed jobs: their order, the bounds on their number and
//! bytes, the jobs waiting at their kind's gates, and the jobs whose cancel is in flight.

use std::collections::{HashMap, VecDeque};

use crate::job::{Job, JobId, QueueName};
use crate::kinds::{Admission, GateKey, Kinds, Permit, ResolvedKind};
use crate::queue::CLAIM_MAX_BODY_BYTES;

/// Claimed jobs that have not started, in priority and claim order.
///
/// **Architecture Invariant:** the window is bounded in jobs and in bytes. A fetch is sent
/// only while the runnable jobs number at most half of `max_ready` and one more claim
/// ([`CLAIM_MAX_BODY_BYTES`] of bodies) still fits under `max_bytes`, or when the window
/// is empty; a claim's first job is always taken, so the bytes held stay below
/// `max_bytes` plus one job. Jobs held at a paused named queue's gate count against neither
/// bound (claims pass over a paused queue's jobs, so they are at most what the window held
/// at the pause): with them, the window holds at most twice its bounds, plus a claim.
#[derive(Debug)]
pub struct Window {
    /// Jobs that may start, in order: by priority, highest first, then as claimed.
    ready: VecDeque<Job>,
    /// Jobs their kind would not admit yet, by gate (a webhook destination at its
    /// in-flight limit, or whose circuit is open; the object store while it cannot be
    /// reached), each gate's in order. They started nothing and used no attempt.
    gated: HashMap<GateKey, VecDeque<Job>>,
    /// How many jobs `gated` holds.
    gated_len: usize,
    /// The gates whose latest refusal said closed ([`Admission::Closed`]): their jobs do not
    /// count against `max_ready`.
    closed: std::collections::HashSet<GateKey>,
    /// Jobs let out of their gate to try again, ahead of `ready`.
    released: VecDeque<Job>,
    /// The [`Job::footprint`] of every job in `ready`, `gated`, `released` and
    /// `cancelling`.
    bytes: usize,
    max_jobs: usize,
    /// The most runnable jobs (`ready`): `max_jobs`, or less with a queue shared by
    /// several nodes, where a job in this window is one no other node can run.
    max_ready: usize,
    /// Whether jobs waiting at a gate that is only full (not closed) count against
    /// `max_ready`: on a shared queue they are leased to this node, and another node with
    /// free slots could run them, so they are not claimed beyond it either. Jobs at a
    /// closed gate (the store's while it is down) never count: no node could run them, and
    /// counting them would stop the other kinds behind them.
    waiting_is_ready: bool,
    max_bytes: usize,
    /// Jobs whose cancel the queue has not answered yet, with the job if it was taken out
    /// of the window or a fetch brought it meanwhile. Such a job starts only if its cancel
    /// fails: after a `200` from DELETE the job must never start.
    cancelling: HashMap<JobId, Option<Job>>,
    /// Jobs cancelled while the fetch now out was in flight: that fetch may still bring
    /// them (it may have claimed them before the cancel committed), so its answer drops
    /// them. Cleared at each fetch's answer: a fetch sent after the cancel's answer was
    /// received runs after the cancel committed and cannot bring the job.
    cancelled_during_fetch: Vec<JobId>,
    /// The named queues paused now, each with the gate its claimed jobs wait at: nothing of
    /// a paused queue starts, and its jobs claimed before the pause wait, closed (they
    /// count against no claim), until it resumes.
    paused_queues: HashMap<QueueName, GateKey>,
    /// The jobs, and their bytes, that wait at paused queues' gates. They count against
    /// neither of the window's bounds: claims pass over a paused queue's jobs, so these are
    /// at most what the window held when the pause came (bounded as it was), and counted,
    /// a paused backlog would stop the claims of every other queue until the resume.
    held: (usize, usize),
    /// The named queues with a limit on their jobs running at once on this node
    /// (`concurrency`): a job of a queue at its limit waits at the queue's gate, without a
    /// worker, until one of the queue's jobs ends.
    queue_slots: HashMap<QueueName, QueueSlots>,
}

/// One queue's limit on this node, how many of its jobs run, and the gate its jobs wait at.
#[derive(Debug)]
struct QueueSlots {
    limit: usize,
    running: usize,
    gate: GateKey,
}

/// The gate at which the jobs of a paused queue, or of a queue at its limit, wait.
fn queue_gate(queue: &QueueName) -> GateKey {
    GateKey::from(format!("queue:{queue}"))
}

impl Window {
    pub fn new(max_jobs: usize, max_bytes: usize) -> Self {
        Self {
            ready: VecDeque::new(),
            gated: HashMap::new(),
            gated_len: 0,
            closed: std::collections::HashSet::new(),
            released: VecDeque::new(),
            bytes: 0,
            max_jobs,
            max_ready: max_jobs,
            waiting_is_ready: false,
            max_bytes,
            cancelling: HashMap::new(),
            cancelled_during_fetch: Vec::new(),
            paused_queues: HashMap::new(),
            held: (0, 0),
            queue_slots: HashMap::new(),
        }
    }

    /// Limits the jobs of each named queue that run at once here (a queue's `concurrency`).
    pub fn with_queue_limits(mut self, limits: impl IntoIterator<Item = (QueueName, usize)>) -> Self {
        self.queue_slots = limits
            .into_iter()
            .map(|(queue, limit)| {
                let gate = queue_gate(&queue);
                (queue, QueueSlots { limit, running: 0, gate })
            })
            .collect();
        self
    }

    /// Per queue with a limit: the jobs waiting at it now, unless the queue is paused.
    pub fn throttled_by_queue(&self) -> impl Iterator<Item = (QueueName, usize)> + '_ {
        self.queue_slots
            .iter()
            .filter(|(queue, _)| !self.paused_queues.contains_key(*queue))
            .map(|(queue, slots)| (queue.clone(), self.gated.get(&slots.gate).map_or(0, VecDeque::len)))
    }

    /// A job of `queue` that had started ended (or never ran after all): one more of the
    /// queue's jobs may start.
    pub fn queue_job_ended(&mut self, queue: &QueueName) {
        if self.queue_slots.is_empty() {
            return;
        }
        let Some(slots) = self.queue_slots.get_mut(queue) else { return };
        slots.running = slots.running.saturating_sub(1);
        let gate = slots.gate.clone();
        self.release_gate(&gate);
    }

    /// The named queues paused now. The jobs of a queue no longer paused try again, in
    /// their order, ahead of the jobs claimed after them.
    pub fn set_paused_queues(&mut self, paused: &std::collections::HashSet<QueueName>) {
        let resumed: Vec<(QueueName, GateKey)> = self
            .paused_queues
            .iter()
            .filter(|(queue, _)| !paused.contains(*queue))
            .map(|(queue, gate)| (queue.clone(), gate.clone()))
            .collect();
        for (queue, gate) in resumed {
            self.paused_queues.remove(&queue);
            // No longer held: they count against the window's bounds again.
            if let Some(waiting) = self.gated.get(&gate) {
                self.held.0 -= waiting.len();
                self.held.1 -= waiting.iter().map(Job::footprint).sum::<usize>();
            }
            self.closed.remove(&gate);
            // A queue with a limit lets out only as many as it may run, so that the rest
            // keep their order at its gate; each of its jobs that ends lets out the next.
            match self.queue_slots.get(&queue).map(|slots| slots.limit.saturating_sub(slots.running)) {
                Some(free) => {
                    for _ in 0..free {
                        self.release_gate(&gate);
                    }
                }
                None => self.open_gate(&gate),
            }
        }
        for queue in paused {
            if self.paused_queues.contains_key(queue) {
                continue;
            }
            let gate = queue_gate(queue);
            // Jobs already waiting at the queue's limit are held from now on, as are those
            // that come to its gate while it is paused.
            if let Some(waiting) = self.gated.get(&gate) {
                self.held.0 += waiting.len();
                self.held.1 += waiting.iter().map(Job::footprint).sum::<usize>();
                self.closed.insert(gate.clone());
            }
            self.paused_queues.insert(queue.clone(), gate);
        }
    }

    /// Bounds the runnable jobs below `max_jobs`: jobs waiting at a gate may still fill the
    /// rest, so that they never starve the jobs of other kinds.
    pub fn with_ready_limit(mut self, max_ready: usize) -> Self {
        self.set_ready_limit(max_ready);
        self
    }

    /// Moves the bound on runnable jobs (see [`crate::actors::claim_size`]).
    pub fn set_ready_limit(&mut self, max_ready: usize) {
        self.max_ready = max_ready.clamp(1, self.max_jobs);
    }

    /// Counts gated jobs against the ready limit (a queue shared by nodes), those at a
    /// closed gate excepted.
    pub fn counting_waiting_as_ready(mut self) -> Self {
        self.waiting_is_ready = true;
        self
    }

    /// Jobs claimed and not started, gated ones included.
    pub fn len(&self) -> usize {
        self.ready.len() + self.gated_len + self.released.len()
    }

    /// Whether no claimed job waits, gated ones included.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes the window's jobs take.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The jobs, and their bytes, held at paused queues' gates.
    #[cfg(test)]
    pub fn held(&self) -> (usize, usize) {
        self.held
    }

    /// How many jobs a fetch may ask for now, if one may be sent.
    pub fn wanted(&self) -> Option<usize> {
        if self.is_empty() {
            return Some(self.max_ready);
        }
        // Jobs waiting at a gate count as well: the window never holds more than
        // `max_jobs` however many wait.
        let waiting = self.gated_len + self.released.len() - self.held.0;
        let runnable =
            if self.waiting_is_ready { self.ready.len() + self.countable_waiting() } else { self.ready.len() };
        let room_in_jobs = runnable <= self.max_ready / 2 && self.ready.len() + waiting < self.max_jobs;
        let room_in_bytes = (self.bytes - self.held.1).saturating_add(CLAIM_MAX_BODY_BYTES) <= self.max_bytes;
        (room_in_jobs && room_in_bytes)
            .then(|| (self.max_ready - runnable).min(self.max_jobs - self.ready.len() - waiting))
    }

    /// When the longest-waiting job the window holds became due (its `run_at`, or its
    /// submission): on a shared queue, the jobs in nodes' windows are leased, and only their
    /// node can say cheaply how long they have waited (see [`crate::stats::Stats`]).
    pub fn oldest_due(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let gated = self.gated.values().flatten();
        let waiting = self.ready.iter().chain(&self.released).chain(gated);
        waiting.map(Job::due).min()
    }

    /// Forgets every claimed job that waits (ready, gated, released) and returns how
    /// many: the node lost sight of its lease, and they are no longer its to start. Jobs
    /// whose cancel is in flight stay, for the cancel's answer.
    pub fn drop_claimed(&mut self) -> usize {
        let dropped = self.len();
        let jobs = self.ready.drain(..).chain(self.released.drain(..));
        let gated = self.gated.drain().flat_map(|(_, jobs)| jobs);
        let freed: usize = jobs.chain(gated).map(|job| job.footprint()).sum();
        self.bytes -= freed;
        self.gated_len = 0;
        self.held = (0, 0);
        dropped
    }

    /// Jobs waiting that could run on another node: those let out of their gate, and
    /// those at a gate that is full but not closed.
    fn countable_waiting(&self) -> usize {
        let at_open_gates: usize =
            self.gated.iter().filter(|(gate, _)| !self.closed.contains(*gate)).map(|(_, jobs)| jobs.len()).sum();
        self.released.len() + at_open_gates
    }

    /// Adds what a fetch brought, in order, minus the jobs cancelled meanwhile.
    pub fn add_fetched(&mut self, jobs: Vec<Job>) {
        let cancelled = std::mem::take(&mut self.cancelled_during_fetch);
        for job in jobs {
            if cancelled.contains(&job.id) {
                continue;
            }
            self.bytes += job.footprint();
            match self.cancelling.get_mut(&job.id) {
                Some(slot) => {
                    // A copy of a newer claim replaces an older one held for its cancel.
                    if let Some(older) = slot.replace(job) {
                        self.bytes = self.bytes.saturating_sub(older.footprint());
                    }
                }
                None => self.push_ready(job),
            }
        }
    }

    /// Puts a claimed job in line: behind every job of its priority or higher, ahead of
    /// every lower one. A claim comes in priority order, so a job goes at the back unless a
    /// later claim brought a higher priority than the window's last job.
    fn push_ready(&mut self, job: Job) {
        if self.ready.back().is_none_or(|last| last.priority >= job.priority) {
            self.ready.push_back(job);
        } else {
            let place = self.ready.partition_point(|waiting| waiting.priority >= job.priority);
            self.ready.insert(place, job);
        }
    }

    /// The next job that may start, with its kind's permit if it gave one. Jobs their kind
    /// does not admit yet are set aside in order at their gate, and the jobs behind them
    /// run, until [`release_gate`](Self::release_gate) or [`open_gate`](Self::open_gate).
    pub fn next_runnable(&mut self, kinds: &Kinds) -> Option<(Job, ResolvedKind, Option<Permit>)> {
        loop {
            let (job, from_gate) = match self.released.pop_front() {
                Some(job) => (job, true),
                None => (self.ready.pop_front()?, false),
            };
            let resolved = kinds.resolve(&job);
            let kind = kinds.resolved(resolved);
            // Most nodes pause nothing and limit no queue: no lookup per job then.
            let slots = if self.queue_slots.is_empty() { None } else { self.queue_slots.get(&job.queue) };
            let paused = if self.paused_queues.is_empty() { None } else { self.paused_queues.get(&job.queue) };
            let admission = match (paused, slots) {
                (Some(gate), _) => Admission::Closed(gate.clone()),
                (None, Some(slots)) if slots.running >= slots.limit => Admission::Later(slots.gate.clone()),
                (None, _) => kind.map_or(Admission::Now(None), |kind| kind.admit(&job)),
            };
            let closed = matches!(admission, Admission::Closed(_));
            match admission {
                Admission::Now(permit) => {
                    self.bytes = self.bytes.saturating_sub(job.footprint());
                    if let Some(slots) =
                        (!self.queue_slots.is_empty()).then(|| self.queue_slots.get_mut(&job.queue)).flatten()
                    {
                        slots.running += 1;
                        // Its queue's gate may admit the next in line too.
                        if from_gate && slots.running < slots.limit {
                            let gate = slots.gate.clone();
                            self.release_gate(&gate);
                        }
                    }
                    if let Some(permit) = &permit {
                        self.closed.remove(permit.gate());
                    }
                    // A gate that admits one may admit more: the next in line tries too,
                    // so that a gate that opens fills up again, not one job at a time.
                    if from_gate && let Some(permit) = &permit {
                        self.release_gate(permit.gate());
                    }
                    return Some((job, resolved, permit));
                }
                Admission::Later(gate) | Admission::Closed(gate) => {
                    if closed {
                        self.closed.insert(gate.clone());
                    } else {
                        self.closed.remove(&gate);
                    }
                    if self.is_paused_gate(&gate) {
                        self.held.0 += 1;
                        self.held.1 += job.footprint();
                    }
                    let waiting = self.gated.entry(gate).or_default();
                    // A job let out to try again keeps its place at the front.
                    if from_gate {
                        waiting.push_front(job);
                    } else {
                        waiting.push_back(job);
                    }
                    self.gated_len += 1;
                }
            }
        }
    }

    /// Whether `gate` is a paused queue's, whose jobs are held (see `held`).
    fn is_paused_gate(&self, gate: &GateKey) -> bool {
        !self.paused_queues.is_empty() && self.paused_queues.values().any(|paused| paused == gate)
    }

    /// Takes a job of `footprint` bytes, leaving `gate`, out of the held count if the gate
    /// is a paused queue's.
    fn unhold(&mut self, gate: &GateKey, footprint: usize) {
        if self.is_paused_gate(gate) {
            self.held.0 -= 1;
            self.held.1 -= footprint;
        }
    }

    /// Lets the first job waiting at `gate` try again: a permit of it was given back.
    pub fn release_gate(&mut self, gate: &GateKey) {
        let Some(job) = self.gated.get_mut(gate).and_then(VecDeque::pop_front) else { return };
        if self.gated.get(gate).is_some_and(VecDeque::is_empty) {
            self.gated.remove(gate);
        }
        self.gated_len -= 1;
        self.unhold(gate, job.footprint());
        self.released.push_back(job);
    }

    /// Lets the first job of every gate try again, as time may have opened them (a
    /// circuit's wait over). Returns whether any job was let out.
    pub fn release_all_gates(&mut self) -> bool {
        let gates: Vec<GateKey> = self.gated.keys().cloned().collect();
        for gate in &gates {
            self.release_gate(gate);
        }
        !gates.is_empty()
    }

    /// `gate` opened by itself (the store answers again): every job waiting at it tries
    /// again, in its order, ahead of the jobs claimed after it.
    pub fn open_gate(&mut self, gate: &GateKey) {
        self.closed.remove(gate);
        if let Some(waiting) = self.gated.remove(gate) {
            for job in &waiting {
                self.unhold(gate, job.footprint());
            }
            self.gated_len -= waiting.len();
            self.released.extend(waiting);
        }
    }

    /// Jobs waiting at `gate`.
    #[cfg(test)]
    pub fn waiting_at(&self, gate: &str) -> usize {
        self.gated.get(gate).map_or(0, VecDeque::len)
    }

    /// A cancel of `id` goes to the queue: the job leaves the window (if it is in it) and
    /// no fetch adds it until the queue answers; see [`cancel_answered`](Self::cancel_answered).
    pub fn cancel_started(&mut self, id: JobId, fetching: bool) {
        let mut taken = take_by_id(&mut self.ready, id).or_else(|| take_by_id(&mut self.released, id));
        if taken.is_none() {
            let mut from_gate = None;
            for (gate, waiting) in &mut self.gated {
                taken = take_by_id(waiting, id);
                if taken.is_some() {
                    self.gated_len -= 1;
                    from_gate = Some(gate.clone());
                    break;
                }
            }
            if let (Some(gate), Some(job)) = (from_gate, &taken) {
                self.unhold(&gate, job.footprint());
            }
            self.gated.retain(|_, waiting| !waiting.is_empty());
        }
        self.cancelling.insert(id, taken);
        if fetching {
            self.cancelled_during_fetch.push(id);
        }
    }

    /// The queue answered the cancel of `id`. If it was carried out, the job is dropped,
    /// and the fetch out now (which may have claimed it before the cancel committed)
    /// drops it too. If not, the job goes back to the front of its priority in the window.
    pub fn cancel_answered(&mut self, id: JobId, cancelled: bool, fetching: bool) {
        let job = self.cancelling.remove(&id).flatten();
        if cancelled {
            if let Some(job) = job {
                self.bytes = self.bytes.saturating_sub(job.footprint());
            }
            if fetching && !self.cancelled_during_fetch.contains(&id) {
                self.cancelled_during_fetch.push(id);
            }
        } else {
            self.cancelled_during_fetch.retain(|other| *other != id);
            if let Some(job) = job {
                // First among the jobs of its priority, keeping the order by priority.
                let place = self.ready.partition_point(|waiting| waiting.priority > job.priority);
                self.ready.insert(place, job);
            }
        }
    }
}

fn take_by_id(jobs: &mut VecDeque<Job>, id: JobId) -> Option<Job> {
    let position = jobs.iter().position(|job| job.id == id)?;
    jobs.remove(position)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::upload::{STORE_GATE, StoreHealth};
    use crate::kinds::{KindSettings, Kinds};

    fn ids(jobs: &[Job]) -> Vec<JobId> {
        jobs.iter().map(|job| job.id).collect()
    }

    /// The daemon's kinds, with an object store that can be reached or not.
    fn kinds_with_store(reachable: bool) -> Kinds {
        Kinds::unserved(&KindSettings {
            store_health: Some(StoreHealth::for_test(reachable)),
            ..KindSettings::defaults()
        })
        .expect("kinds")
    }

    #[test]
    fn fetches_stop_at_the_byte_bound_and_resume_when_jobs_start() {
        let mut window = Window::new(16_384, 64 << 20);
        assert_eq!(window.wanted(), Some(16_384), "an empty window always fetches");
        // Claims of 8 MiB each, as the queue makes them, until the window wants no more:
        // seven fit under 64 MiB with the jobs' own overhead, an eighth would not.
        let mut claims = 0;
        while window.wanted().is_some() {
            window.add_fetched((0..8).map(|_| Job::upload_for_test(1 << 20)).collect());
            claims += 1;
            assert!(claims <= 8, "the window kept fetching past its byte bound");
        }
        assert_eq!(claims, 7);
        assert!(window.bytes() <= 64 << 20 && window.bytes() > 56 << 20, "{}", window.bytes());
        assert_eq!(window.wanted(), None, "past the byte bound nothing more is claimed");
        for _ in 0..8 {
            assert!(window.next_runnable(&Kinds::unserved(&KindSettings::defaults()).expect("kinds")).is_some());
        }
        assert!(window.wanted().is_some(), "started jobs free their bytes");
    }

    #[test]
    fn a_paused_queues_backlog_in_a_full_window_stops_no_other_queues_claims() {
        let kinds = Kinds::unserved(&KindSettings::defaults()).expect("kinds");
        let in_queue = |queue: &str| Job { queue: crate::job::queue_name(queue), ..Job::for_test("noop") };
        let mut window = Window::new(4, 64 << 20).with_queue_limits([(crate::job::queue_name("bulk"), 1)]);
        let bulk: Vec<Job> = (0..4).map(|_| in_queue("bulk")).collect();
        let bulk_ids = ids(&bulk);
        window.add_fetched(bulk);
        assert_eq!(window.wanted(), None, "a full window claims nothing more");
        window.set_paused_queues(&std::collections::HashSet::from([crate::job::queue_name("bulk")]));
        assert!(window.next_runnable(&kinds).is_none(), "nothing of a paused queue starts");
        assert_eq!(window.held(), (4, window.bytes()));
        assert_eq!(window.wanted(), Some(4), "held jobs leave room for the other queues");
        let other = in_queue("default");
        let other_id = other.id;
        window.add_fetched(vec![other]);
        assert_eq!(window.next_runnable(&kinds).map(|(job, ..)| job.id), Some(other_id));
        // The resume lets out as many as the queue may run (its limit is 1), in order; each
        // of its jobs that ends lets out the next.
        window.set_paused_queues(&std::collections::HashSet::new());
        assert_eq!(window.held(), (0, 0));
        let mut started = Vec::new();
        for _ in 0..4 {
            let (job, ..) = window.next_runnable(&kinds).expect("the next bulk job");
            assert!(window.next_runnable(&kinds).is_none(), "one at a time: its limit");
            window.queue_job_ended(&job.queue);
            started.push(job.id);
        }
        assert_eq!(started, bulk_ids, "in their order");
    }

    #[test]
    fn while_the_store_is_down_its_jobs_wait_in_order_and_others_run() {
        let (down, up) = (kinds_with_store(false), kinds_with_store(true));
        let mut window = Window::new(100, 64 << 20);
        let jobs =
            vec![Job::upload_for_test(10), Job::for_test("noop"), Job::upload_for_test(10), Job::for_test("noop")];
        let order = ids(&jobs);
        window.add_fetched(jobs);
        let first = window.next_runnable(&down).map(|(job, _, _)| job.id);
        let second = window.next_runnable(&down).map(|(job, _, _)| job.id);
        assert_eq!((first, second), (Some(order[1]), Some(order[3])));
        assert_eq!(window.next_runnable(&down).map(|(job, _, _)| job.id), None);
        assert_eq!(window.waiting_at(STORE_GATE), 2);
        // A tick lets one job try its gate again: still closed, it keeps its place.
        assert!(window.release_all_gates());
        assert_eq!(window.next_runnable(&down).map(|(job, _, _)| job.id), None);
        window.open_gate(&GateKey::from(STORE_GATE));
        let rest: Vec<JobId> = std::iter::from_fn(|| window.next_runnable(&up)).map(|(job, _, _)| job.id).collect();
        assert_eq!(rest, [order[0], order[2]], "the store's jobs come back in their order");
        assert_eq!(window.bytes(), 0);
    }

    /// The window's longest-waiting job, gated ones included: what a shared queue's nodes
    /// add to the queue's oldest age.
    #[test]
    fn the_oldest_due_counts_gated_jobs_and_a_run_at_in_the_past() {
        let kinds = kinds_with_store(false);
        let mut window = Window::new(100, 64 << 20);
        assert_eq!(window.oldest_due(), None);
        let now = chrono::Utc::now();
        let mut held = Job::upload_for_test(10);
        held.created_at = now - chrono::Duration::seconds(30);
        let mut delayed = Job::for_test("noop");
        delayed.created_at = now - chrono::Duration::seconds(60);
        delayed.run_at = Some(now - chrono::Duration::seconds(10));
        let fresh = Job::for_test("noop");
        window.add_fetched(vec![held, delayed, fresh]);
        assert_eq!(window.oldest_due(), Some(now - chrono::Duration::seconds(30)), "due at its run_at, not before");
        // The store is down: the upload waits at its gate, and is still the oldest.
        let started = window.next_runnable(&kinds).map(|(job, _, _)| job.run_at);
        assert_eq!(started, Some(Some(now - chrono::Duration::seconds(10))));
        assert_eq!(window.waiting_at(STORE_GATE), 1);
        assert_eq!(window.oldest_due(), Some(now - chrono::Duration::seconds(30)));
        window.drop_claimed();
        assert_eq!(window.oldest_due(), None);
    }

    /// With a shared queue the runnable jobs are few, but jobs waiting for the store do
    /// not use them up: a noop behind a full window of waiting uploads is still claimed.
    #[test]
    fn jobs_waiting_for_the_store_do_not_use_up_a_ready_limit() {
        let kinds = kinds_with_store(false);
        let mut window = Window::new(100, 64 << 20).with_ready_limit(4);
        assert_eq!(window.wanted(), Some(4));
        window.add_fetched((0..4).map(|_| Job::upload_for_test(10)).collect());
        assert_eq!(window.wanted(), None, "four runnable jobs fill the limit");
        assert!(window.next_runnable(&kinds).is_none(), "the store is down: all four wait");
        assert_eq!(window.waiting_at(STORE_GATE), 4);
        assert_eq!(window.wanted(), Some(4), "waiting jobs leave the runnable limit free");
        let noop = Job::for_test("noop");
        let id = noop.id;
        window.add_fetched(vec![noop]);
        assert_eq!(window.next_runnable(&kinds).map(|(job, _, _)| job.id), Some(id));
        let mut full = Window::new(6, 64 << 20).with_ready_limit(4);
        full.add_fetched((0..4).map(|_| Job::upload_for_test(10)).collect());
        assert!(full.next_runnable(&kinds).is_none());
        assert_eq!(full.wanted(), Some(2), "the window as a whole stays within max_jobs");
        // On a shared queue too: no node could run them while the store is down, and
        // counting them would stop every other kind behind them.
        let mut shared = Window::new(100, 64 << 20).with_ready_limit(4).counting_waiting_as_ready();
        shared.add_fetched((0..4).map(|_| Job::upload_for_test(10)).collect());
        assert!(shared.next_runnable(&kinds).is_none());
        assert_eq!(shared.wanted(), Some(4), "waiting jobs leave a shared queue's limit free as well");
    }

    #[test]
    fn a_job_whose_cancel_succeeded_never_comes_back_whichever_fetch_brings_it() {
        let job = Job::for_test("noop");
        let id = job.id;
        // The cancel goes out while no fetch is out; a fetch sent after it lands in the
        // same queue batch and claims the job before the cancel commits.
        let mut window = Window::new(100, 64 << 20);
        window.cancel_started(id, false);
        window.add_fetched(vec![job.clone()]);
        assert!(
            window.next_runnable(&Kinds::unserved(&KindSettings::defaults()).expect("kinds")).is_none(),
            "held back while the cancel is in flight"
        );
        window.cancel_answered(id, true, false);
        assert!(window.next_runnable(&Kinds::unserved(&KindSettings::defaults()).expect("kinds")).is_none());
        assert_eq!(window.bytes(), 0);

        // The cancel is answered while a fetch is out that claimed the job earlier.
        let mut window = Window::new(100, 64 << 20);
        window.cancel_started(id, false);
        window.cancel_answered(id, true, true);
        window.add_fetched(vec![job.clone()]);
        assert!(window.next_runnable(&Kinds::unserved(&KindSettings::defaults()).expect("kinds")).is_none());

        // A cancel that failed puts the job back.
        let mut window = Window::new(100, 64 << 20);
        window.add_fetched(vec![job]);
        window.cancel_started(id, true);
        assert!(window.next_runnable(&Kinds::unserved(&KindSettings::defaults()).expect("kinds")).is_none());
        window.cancel_answered(id, false, true);
        assert_eq!(
            window.next_runnable(&Kinds::unserved(&KindSettings::defaults()).expect("kinds")).map(|(job, _, _)| job.id),
            Some(id)
        );
    }
}
