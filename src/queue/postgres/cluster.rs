//! The cluster's upkeep, on two threads with connections of their own, so that a long
//! transaction of the queue thread never delays them:
//! - the lease thread heartbeats this node's row every second, counts the live nodes, and
//!   rescues the running jobs of nodes whose lease expired (one node at a time, under an
//!   advisory lock). Each renewal moves this node's [`LeaseClock`]; a node whose beats
//!   fail or come late stops trusting its view of the others until a whole lease of
//!   beats has come on time, so a stall of the database is never taken for a death;
//! - the listener thread `LISTEN`s for other nodes' news of ready jobs, sends this node's
//!   own news (debounced: one `NOTIFY` per 25 ms at most, never from a trigger, since a
//!   commit that carries a NOTIFY takes a global lock), and wakes the queue thread, at
//!   least once a second as a fallback poll.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::Utc;
use postgres::fallible_iterator::FallibleIterator as _;

use super::schema::{READY_CHANNEL, RESCUE_LOCK};
use super::{ClusterMetrics, ClusterSettings, Connection, STATEMENT_TIMEOUT, connection_config};
use crate::queue::columns::millis;
use crate::queue::{LeaseClock, NodeId, StorageError, Waker};

/// How often a node renews its lease.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How often the listener sends this node's news at most, and looks for stop.
const ANNOUNCE_EVERY: Duration = Duration::from_millis(25);
/// The fallback poll: the queue thread looks for ready jobs at least this often, should a
/// notification be lost (a reconnect of the listener misses those sent meanwhile).
const POLL_EVERY: Duration = Duration::from_secs(1);

/// Renews this node's lease (inserting its row if a rescuer removed it) and counts the
/// live nodes, itself included, in one statement; says whether the row had to be
/// inserted. Times are the database's clock when the row is written
/// (`clock_timestamp()`), not when the statement began (`now()`): a beat that waited for
/// a lock or a stalled server must not write an expiry that has already passed.
const HEARTBEAT_SQL: &str = "WITH beat AS (
         INSERT INTO jobd_nodes (id, name, started_at, heartbeat_at, expires_at)
         VALUES ($1, $2, clock_timestamp(), clock_timestamp(), clock_timestamp() + make_interval(secs => $3))
         ON CONFLICT (id) DO UPDATE SET heartbeat_at = clock_timestamp(), expires_at = EXCLUDED.expires_at
         RETURNING (xmax = 0) AS inserted)
     SELECT (SELECT count(*) FROM jobd_nodes WHERE expires_at > clock_timestamp() AND id <> $1) + 1,
         (SELECT inserted FROM beat)";

/// The part of the lease a node keeps in hand: it stops acting on its jobs this long
/// before the lease it last renewed expires, so that it has stopped them before any other
/// node may take them.
fn safety_margin(lease: Duration) -> Duration {
    lease / 5
}

/// The statement timeout of the lease thread's connection: well inside the lease, so that
/// a beat stuck behind a lock fails (and counts as a failure) instead of returning after
/// the lease it was renewing is gone.
fn lease_statement_timeout(lease: Duration) -> Duration {
    (lease / 4).max(Duration::from_millis(250))
}

/// How long a departed node (one that left, or was declared lost) stays in `jobd_departed`,
/// its jobs swept by owner at every beat of the node that holds the rescue lock. A sweep
/// skips the rows locked at the time: those of a transaction the departed node still had
/// open, which the server ends within its idle or statement timeout (the lease, and 10 s).
/// A sweep that took something back keeps its owner listed this long again.
const DEPARTED_SWEPT_FOR: Duration = Duration::from_secs(30);

/// Removes the rows of nodes whose lease expired, by the database's clock now, and lists
/// them as departed in the same transaction: should this node die before it sweeps their
/// jobs, the next node to hold the rescue lock does.
const FORGET_LOST: &str = "WITH lost AS (
         DELETE FROM jobd_nodes WHERE expires_at < clock_timestamp() RETURNING id, name),
     departed AS (
         INSERT INTO jobd_departed (node, departed_at) SELECT id, clock_timestamp() FROM lost
         ON CONFLICT (node) DO UPDATE SET departed_at = EXCLUDED.departed_at)
     SELECT id, name FROM lost";

/// Removes this node's row as it leaves, and lists it as departed, so that what it still
/// holds is swept at once (by itself, or by the next node to hold the rescue lock).
const LEAVE: &str = "WITH gone AS (DELETE FROM jobd_nodes WHERE id = $1)
     INSERT INTO jobd_departed (node, departed_at) VALUES ($1, clock_timestamp())
     ON CONFLICT (node) DO UPDATE SET departed_at = EXCLUDED.departed_at";

/// The departed nodes whose jobs are still swept; the older entries are removed.
const DEPARTED: &str = "WITH expired AS (
         DELETE FROM jobd_departed WHERE departed_at < clock_timestamp() - make_interval(secs => $1))
     SELECT node FROM jobd_departed WHERE departed_at >= clock_timestamp() - make_interval(secs => $1)";

/// Keeps the departed owners in `$1` swept for a while longer: a sweep took back some of
/// their jobs, and may have skipped others beside them.
const DEPARTED_AGAIN: &str = "UPDATE jobd_departed SET departed_at = clock_timestamp() WHERE node = ANY($1::uuid[])";

/// Takes back every job whose lease owner has no row. A running one is queued again, its
/// interrupted attempt counted (or buried, after its last attempt); one still queued in
/// the lost node's window is only released, in its place in the queue. `$1` is now, in ms.
/// Returns each job's id, its state now, whether it was running, and its lost owner.
macro_rules! rescue_where {
    ($owners:literal) => {
        concat!(
            "WITH orphaned AS (
         SELECT j.id, j.lease_owner, j.state = 'running' AS was_running FROM jobd_jobs j
         WHERE ",
            $owners,
            " AND NOT EXISTS (SELECT 1 FROM jobd_nodes n WHERE n.id = j.lease_owner)
         FOR UPDATE OF j SKIP LOCKED)
     UPDATE jobd_jobs j SET
         state = CASE WHEN was_running AND j.attempts >= j.max_attempts THEN 'dead' ELSE 'queued' END,
         ready_seq = CASE WHEN was_running THEN nextval('jobd_ready_seq') + (9 - j.priority) * 281474976710656::bigint
             ELSE j.ready_seq END,
         lease_owner = NULL,
         last_error = CASE WHEN was_running
             THEN 'attempt ' || j.attempts || ' was lost with node ' || orphaned.lease_owner::text
             ELSE j.last_error END,
         finished_at = CASE WHEN was_running AND j.attempts >= j.max_attempts THEN $1::bigint ELSE j.finished_at END
     FROM orphaned WHERE j.id = orphaned.id
     RETURNING j.id, j.state, was_running, orphaned.lease_owner"
        )
    };
}
/// Run once as a node starts, for orphans no departure announced (those of a database
/// written before schema version 4, or of a node row removed by hand).
pub(super) const RESCUE: &str = rescue_where!("j.lease_owner IS NOT NULL");
/// [`RESCUE`] of the jobs of the owners in `$2` only (the departed), through their range
/// of the index.
pub(super) const RESCUE_OWNERS: &str = rescue_where!("j.lease_owner = ANY($2::uuid[])");

/// Folds the count rows of nodes that are gone into the cluster's own row (the nil id),
/// so that the rows do not pile up over restarts; sums are unchanged.
const FOLD_COUNTS: &str = "WITH gone AS (
         DELETE FROM jobd_counts c
         WHERE c.node <> '00000000-0000-0000-0000-000000000000'
           AND NOT EXISTS (SELECT 1 FROM jobd_nodes n WHERE n.id = c.node)
         RETURNING state, jobs)
     INSERT INTO jobd_counts (node, lane, state, jobs)
     SELECT '00000000-0000-0000-0000-000000000000', 0, state, sum(jobs) FROM gone GROUP BY state
     ON CONFLICT (node, lane, state) DO UPDATE SET jobs = jobd_counts.jobs + EXCLUDED.jobs";

/// Adds the rescue's count changes to the cluster's row.
const RESCUE_COUNTS: &str = "INSERT INTO jobd_counts (node, lane, state, jobs)
     SELECT '00000000-0000-0000-0000-000000000000', 0, state, delta
     FROM unnest($1::text[], $2::bigint[]) AS changes(state, delta) WHERE delta <> 0
     ON CONFLICT (node, lane, state) DO UPDATE SET jobs = jobd_counts.jobs + EXCLUDED.jobs";

/// The two threads and what the backend tells them.
pub(super) struct ClusterThreads {
    stop: Arc<AtomicBool>,
    /// Set by the queue thread after a commit that readied jobs; the listener sends it.
    news: Arc<AtomicBool>,
    lease: Option<JoinHandle<()>>,
    listener: Option<JoinHandle<()>>,
}

impl ClusterThreads {
    /// Registers this node (its first heartbeat, so that its lease exists before its
    /// first claim) and starts both threads.
    pub(super) fn start(
        settings: &ClusterSettings,
        node: NodeId,
        metrics: ClusterMetrics,
        waker: Arc<OnceLock<Waker>>,
        clock: Arc<LeaseClock>,
    ) -> Result<Self, StorageError> {
        let mut upkeep = Upkeep {
            connection: Connection::new(connection_config(settings, "lease", lease_statement_timeout(settings.lease))?),
            node,
            name: settings.node_name.clone(),
            lease: settings.lease,
            metrics,
            live_since: None,
            clock,
            joined: false,
        };
        // Before this node's first beat, so that its lease does not lapse meanwhile.
        upkeep.sweep_every_leased_job();
        upkeep.heartbeat(Instant::now())?;
        let stop = Arc::new(AtomicBool::new(false));
        let news = Arc::new(AtomicBool::new(false));
        let lease = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("jobd-lease".to_owned())
                .spawn(move || upkeep.run(&stop))
                .map_err(|error| StorageError::new(format!("cannot start the lease thread: {error}")))?
        };
        let listener = Listener {
            connection: Connection::new(connection_config(settings, "listen", STATEMENT_TIMEOUT)?),
            listening: false,
            node,
            waker,
        };
        let listener = {
            let (stop, news) = (stop.clone(), news.clone());
            std::thread::Builder::new()
                .name("jobd-listen".to_owned())
                .spawn(move || listener.run(&stop, &news))
                .map_err(|error| StorageError::new(format!("cannot start the listener thread: {error}")))?
        };
        Ok(ClusterThreads { stop, news, lease: Some(lease), listener: Some(listener) })
    }

    /// The flag that tells the other nodes, soon, that jobs became ready: set after a
    /// commit that readied some, by any of this node's connections.
    pub(super) fn news(&self) -> Arc<AtomicBool> {
        self.news.clone()
    }
}

impl Drop for ClusterThreads {
    /// Stops both threads; the lease thread removes this node's row as it goes, so that
    /// any job it abandoned is rescued at once instead of after the lease.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for thread in [self.lease.take(), self.listener.take()].into_iter().flatten() {
            thread.thread().unpark();
            if thread.join().is_err() {
                tracing::error!("a PostgreSQL cluster thread panicked");
            }
        }
    }
}

/// What a rescue round sweeps.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sweep {
    /// The jobs of the departed nodes, by owner.
    Departed,
    /// Those, after the nodes whose lease expired are forgotten (departed) too.
    ForgettingLostNodes,
    /// Every leased job whose owner has no row: once, as a node starts.
    EveryLeasedJob,
}

/// The lease thread's state.
struct Upkeep {
    connection: Connection,
    node: NodeId,
    name: String,
    lease: Duration,
    metrics: ClusterMetrics,
    /// Since when every heartbeat succeeded on time. A node declares others lost only
    /// after a whole lease of such beats: after an outage or a stall of the database,
    /// every node's lease has lapsed, and the first node back must not take the jobs of
    /// nodes that are about to heartbeat too.
    live_since: Option<Instant>,
    /// This node's view of its lease, moved by every renewal.
    clock: Arc<LeaseClock>,
    /// Whether this node's row was written once: a row that must be inserted again was
    /// removed by another node, which took back this node's jobs.
    joined: bool,
}

impl Upkeep {
    fn run(mut self, stop: &AtomicBool) {
        let mut due = Instant::now() + HEARTBEAT;
        while !stop.load(Ordering::Acquire) {
            let now = Instant::now();
            if now < due {
                std::thread::park_timeout(due - now);
                continue;
            }
            match self.heartbeat(due) {
                Ok(()) => {
                    self.metrics.heartbeat_lag.observe(due.elapsed().as_secs_f64());
                    // Jobs whose owner has no row are safe to take back at any time; nodes
                    // whose lease expired are forgotten only by a node trusted to judge.
                    let trusted = self.live_since.is_some_and(|since| since.elapsed() >= self.lease);
                    let sweep = if trusted { Sweep::ForgettingLostNodes } else { Sweep::Departed };
                    if let Err(error) = self.rescue(sweep) {
                        tracing::warn!(
                            error = error.message(),
                            "rescue of lost nodes' jobs failed; retried next second"
                        );
                    }
                }
                Err(error) => {
                    if self.live_since.take().is_some() {
                        tracing::warn!(error = error.message(), "lease heartbeat failed; retried every second");
                    }
                }
            }
            due += HEARTBEAT;
            // After a long stall (the process was stopped), beat at once, then every second.
            if due < Instant::now() {
                due = Instant::now();
            }
        }
        self.leave();
    }

    /// Renews the lease. `due` is when the beat was due: a beat that began or returned
    /// more than a beat late did renew the lease, but restarts the count of on-time beats
    /// that this node's judgement of the others rests on.
    fn heartbeat(&mut self, due: Instant) -> Result<(), StorageError> {
        let node = self.node.as_uuid();
        let sent = Instant::now();
        let rows = self.connection.query(HEARTBEAT_SQL, &[&node, &self.name, &self.lease.as_secs_f64()])?;
        let returned = Instant::now();
        let live = rows.first().map_or(0, |row| row.get::<_, i64>(0));
        let inserted = rows.first().and_then(|row| row.get::<_, Option<bool>>(1)).unwrap_or(false);
        self.metrics.nodes.set(live);
        let declared_lost = inserted && self.joined;
        self.joined = true;
        if declared_lost {
            tracing::warn!(
                node = %self.node,
                "this node's row was gone: other nodes declared it lost and took back its jobs; it joins again"
            );
        }
        let held_before = self.clock.is_held();
        let new_term = self.clock.renewed(sent, self.lease.saturating_sub(safety_margin(self.lease)), declared_lost);
        if new_term && self.clock.term() > 1 {
            tracing::info!(
                node = %self.node,
                lapsed = !held_before,
                "lease re-established: this node claims and starts jobs again"
            );
        }
        let on_time = sent.saturating_duration_since(due) <= HEARTBEAT && returned - sent <= HEARTBEAT;
        if on_time && !declared_lost {
            self.live_since.get_or_insert(returned);
        } else {
            self.live_since = Some(returned);
        }
        Ok(())
    }

    /// Sweeps every leased job for orphans, once, as this node starts: the sweep walks the
    /// whole index of leased jobs, dead entries included, so it runs with the queue's
    /// statement timeout rather than the lease thread's short one. A sweep that fails is
    /// only logged: the departed nodes are swept by owner at every beat anyway.
    fn sweep_every_leased_job(&mut self) {
        if let Err(error) = self.rescue(Sweep::EveryLeasedJob) {
            tracing::warn!(error = error.message(), "the start's sweep for orphaned jobs failed");
        }
    }

    /// One rescue round, if no other node is doing one: forgets the nodes whose lease
    /// expired (when asked), then takes back the jobs of owners without a row.
    fn rescue(&mut self, sweep: Sweep) -> Result<(), StorageError> {
        self.connection.batch("BEGIN")?;
        let result = self.rescue_locked(sweep);
        match result {
            Ok((taken_back, rescued)) => {
                self.connection.batch("COMMIT")?;
                self.metrics.rescued.inc_by(rescued);
                if taken_back > 0 {
                    // The rescued jobs are ready: every node should look now.
                    self.connection.execute("SELECT pg_notify($1, '')", &[&READY_CHANNEL])?;
                }
                Ok(())
            }
            Err(error) => {
                if self.connection.batch("ROLLBACK").is_err() {
                    self.connection.lost();
                }
                Err(error)
            }
        }
    }

    /// Returns how many jobs were taken back, and how many of them were running.
    fn rescue_locked(&mut self, sweep: Sweep) -> Result<(u64, u64), StorageError> {
        let locked = self.connection.query("SELECT pg_try_advisory_xact_lock($1)", &[&RESCUE_LOCK])?;
        if !locked.first().is_some_and(|row| row.get::<_, bool>(0)) {
            return Ok((0, 0));
        }
        if sweep == Sweep::ForgettingLostNodes {
            for row in self.connection.query(FORGET_LOST, &[])? {
                let (id, name): (uuid::Uuid, String) = (row.get(0), row.get(1));
                tracing::warn!(lost_node = %id, lost_node_name = name, "node lost: its lease expired; its running jobs are rescued");
            }
        }
        let now = millis(Utc::now());
        let rows = if sweep == Sweep::EveryLeasedJob {
            // Only at start: the lease thread's short timeout would cut it on a large table.
            let timeout = format!("SET LOCAL statement_timeout = {}", STATEMENT_TIMEOUT.as_millis());
            self.connection.batch(&timeout)?;
            self.connection.query(RESCUE, &[&now])?
        } else {
            let kept = DEPARTED_SWEPT_FOR.as_secs_f64();
            let departed: Vec<uuid::Uuid> =
                self.connection.query(DEPARTED, &[&kept])?.iter().map(|row| row.get(0)).collect();
            if departed.is_empty() {
                return Ok((0, 0));
            }
            self.connection.query(RESCUE_OWNERS, &[&now, &departed])?
        };
        // What a sweep took back may have been beside rows it skipped: its owners are
        // swept again for a while.
        let mut owners: Vec<uuid::Uuid> = rows.iter().map(|row| row.get(3)).collect();
        owners.sort_unstable();
        owners.dedup();
        if !owners.is_empty() {
            self.connection.execute(DEPARTED_AGAIN, &[&owners])?;
        }
        let running: Vec<&postgres::Row> = rows.iter().filter(|row| row.get::<_, bool>(2)).collect();
        let released = rows.len() - running.len();
        let buried = running.iter().filter(|row| row.get::<_, &str>(1) == "dead").count() as i64;
        let requeued = running.len() as i64 - buried;
        if !running.is_empty() {
            let states = vec!["running", "queued", "dead"];
            let deltas = vec![-(running.len() as i64), requeued, buried];
            self.connection.execute(RESCUE_COUNTS, &[&states, &deltas])?;
        }
        self.connection.execute(FOLD_COUNTS, &[])?;
        for row in &running {
            let id: uuid::Uuid = row.get(0);
            tracing::info!(job_id = %id, state = row.get::<_, &str>(1), "job rescued from a lost node");
        }
        if !rows.is_empty() {
            tracing::warn!(requeued, dead = buried, released, "took back the jobs of lost nodes");
        }

        // Released jobs are ready too: the caller notifies the other nodes of both.
        Ok((rows.len() as u64, running.len() as u64))
    }

    /// Removes this node's row at a clean stop, after the queue thread wrote its last
    /// outcome, and takes back what it still holds: the jobs claimed into its window and
    /// any abandoned past the drain go back to the queue now, not after the lease.
    fn leave(&mut self) {
        let node = self.node.as_uuid();
        match self.connection.execute(LEAVE, &[&node]) {
            Ok(_) => tracing::info!(node = %self.node, "left the cluster"),
            Err(error) => tracing::warn!(error = error.message(), "could not remove this node's row; it expires"),
        }
        // This node's jobs are swept now: the jobs it leaves behind go back to the queue
        // at once, not after another node's sweep.
        if let Err(error) = self.rescue(Sweep::Departed) {
            tracing::warn!(error = error.message(), "could not release this node's jobs; another node will");
        }
    }
}

/// The listener thread's state.
struct Listener {
    connection: Connection,
    /// Whether this connection has run `LISTEN` (a new connection has not).
    listening: bool,
    node: NodeId,
    waker: Arc<OnceLock<Waker>>,
}

impl Listener {
    fn run(mut self, stop: &AtomicBool, news: &AtomicBool) {
        let own = self.node.to_string();
        let mut last_wake = Instant::now();
        while !stop.load(Ordering::Acquire) {
            let mut woken = false;
            match self.listen_once(&own, news, &mut woken) {
                Ok(()) => {}
                Err(error) => {
                    if self.listening {
                        tracing::warn!(error = error.message(), "PostgreSQL listener lost; polling until it is back");
                    }
                    self.listening = false;
                    std::thread::park_timeout(ANNOUNCE_EVERY);
                }
            }
            if woken || last_wake.elapsed() >= POLL_EVERY {
                if let Some(waker) = self.waker.get() {
                    waker.wake();
                }
                last_wake = Instant::now();
            }
        }
    }

    /// Sends this node's news if there is any, then waits up to [`ANNOUNCE_EVERY`] for
    /// notifications; `woken` is set when another node had news.
    fn listen_once(&mut self, own: &str, news: &AtomicBool, woken: &mut bool) -> Result<(), StorageError> {
        if !self.listening || self.connection.client.is_none() {
            self.connection.batch(&format!("LISTEN {READY_CHANNEL}"))?;
            self.listening = true;
            // Notifications sent while this node was not listening are lost: look now.
            *woken = true;
        }
        if news.swap(false, Ordering::AcqRel) {
            self.connection.execute("SELECT pg_notify($1, $2)", &[&READY_CHANNEL, &own])?;
        }
        // At most this many notifications per round, so that a flood of them cannot keep
        // this node's own news or a stop waiting.
        const MOST_PER_ROUND: usize = 256;
        let client = self.connection.client()?;
        let mut notifications = client.notifications();
        let mut pending = notifications.timeout_iter(ANNOUNCE_EVERY);
        let mut outcome = Ok(());
        for _ in 0..MOST_PER_ROUND {
            match pending.next() {
                Ok(Some(notification)) => *woken |= notification.payload() != own,
                Ok(None) => break,
                Err(error) => {
                    outcome = Err(super::storage_error("listen failed", &error));
                    break;
                }
            }
        }
        drop(pending);
        drop(notifications);
        if outcome.is_err() {
            self.connection.lost();
        }
        outcome
    }
}
