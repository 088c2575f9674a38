//! The Dispatcher's side of self-fencing on a shared queue: a job whose start the queue
//! refused never runs here, and while this node cannot prove that it holds its lease it
//! starts and claims nothing, drops the jobs it claimed, and stops the ones running. The
//! decisions are the core's ([`crate::actors::scheduler::Scheduler::lease_observed`] and
//! [`crate::actors::scheduler::Scheduler::flush_committed`]); this file reads the lease
//! and carries them out.
//!
//! Why: fencing in the database stops a node that lost a job from *recording* anything
//! about it; only the node itself can stop *running* it. The lease thread renews the
//! lease's [`crate::queue::LeaseClock`], which lapses a safety margin before the lease
//! expires in the database, so a node that is cut off or stalled has stopped its jobs
//! before any other node may take them. What it cannot cover is a node frozen whole
//! (SIGSTOP, a paused VM): it cannot act until it runs again, and then its first look at
//! the clock stops it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;

use super::Dispatcher;
use crate::actors::scheduler::Launch;
use crate::actors::worker::StopJob;
use crate::job::JobId;

/// How often the Dispatcher looks at its lease besides before each start: a lapse stops
/// the running jobs within this long.
pub(super) const LEASE_CHECK_INTERVAL: Duration = Duration::from_millis(100);

impl Dispatcher {
    /// Whether the lease is lapsed now. When it lapsed, or came back in a new term (it
    /// lapsed between two looks, say while the process was stopped), the jobs this node
    /// claimed are dropped and the running ones stopped: another node may hold them now.
    /// Only the Dispatcher sets `jobd_lease_held`: it looks at least every
    /// [`LEASE_CHECK_INTERVAL`]. A queue only this node uses has no lease to lose.
    pub(super) fn lease_lapsed(&mut self) -> bool {
        if !self.queue.is_shared() {
            return false;
        }
        let held = self.queue.lease_held();
        let term = self.queue.lease_term();
        let new_term = std::mem::replace(&mut self.lease_term, term) != term;
        self.runner.metrics.cluster.lease_held.set(i64::from(held));
        let change = self.core.lease_observed(held, new_term);
        if let Some((dropped, running)) = change.stopped {
            let mut stopped = 0;
            for number in running {
                if let Some(worker) = self.workers.get(number).and_then(Option::as_ref) {
                    worker.do_send(StopJob);
                    stopped += 1;
                }
            }
            if held {
                tracing::warn!(
                    dropped_from_window = dropped,
                    running_stopped = stopped,
                    "the lease lapsed between two looks (was this process stopped?): this node stops the jobs it \
                     held, which another node may have taken, and claims again"
                );
            } else {
                tracing::warn!(
                    dropped_from_window = dropped,
                    running_stopped = stopped,
                    "lease not proven held (the database is unreachable or stalled): this node stops its jobs and \
                     claims nothing until a heartbeat renews the lease"
                );
            }
        }
        if change.resumed {
            tracing::info!("lease proven held again: this node claims and starts jobs again");
        }
        change.lapsed
    }

    /// Looks at the lease between starts; resumes work when it came back.
    pub(super) fn watch_lease(&mut self, ctx: &mut Context<Self>) {
        let was_lapsed = self.core.is_lease_lapsed();
        if !self.lease_lapsed() && was_lapsed {
            self.pump(ctx);
        }
    }

    /// A flush committed: runs the jobs whose start it recorded, as the core decides: not one whose
    /// start was refused, nor one recorded just before the lease lapsed. `term_at_send` is
    /// the lease's term when the flush was sent: a new one since means the lease lapsed
    /// meanwhile (the process may have been stopped), and the jobs may be another node's.
    pub(super) fn start_recorded(
        &mut self,
        starting: Vec<Launch>,
        refused: &[(JobId, i64)],
        term_at_send: u64,
        ctx: &mut Context<Self>,
    ) {
        // The core hears of every commit (it ends the flush); the lease matters only to
        // jobs that wait for it.
        let held = starting.is_empty() || (!self.lease_lapsed() && self.queue.lease_term() == term_at_send);
        let committed = self.core.flush_committed(starting, refused, held, Utc::now());
        for launch in committed.run {
            self.run(launch);
        }
        for (job_id, attempt) in committed.refused {
            tracing::warn!(%job_id, attempt, "job not run: its start was refused (it moved to another node or claim)");
        }
        for (job_id, attempt) in committed.interrupted {
            tracing::warn!(%job_id, attempt, "job not run: the lease lapsed as its start was recorded");
        }
        if committed.freed {
            self.stats.workers_busy.store(self.core.busy(), Ordering::Relaxed);
            self.pump(ctx);
        }
    }
}
