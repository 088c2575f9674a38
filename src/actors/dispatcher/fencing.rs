//! The Dispatcher's side of self-fencing on a shared queue: a job whose start the queue
//! refused never runs here, and while this node cannot prove that it holds its lease it
//! starts and claims nothing, drops the jobs it claimed, and stops the ones running.
//!
//! Why: fencing in the database stops a node that lost a job from *recording* anything
//! about it; only the node itself can stop *running* it. The lease thread renews the
//! lease's [`crate::queue::LeaseClock`], which lapses a safety margin before the lease
//! expires in the database, so a node that is cut off or stalled has stopped its jobs
//! before any other node may take them. What it cannot cover is a node frozen whole
//! (SIGSTOP, a paused VM): it cannot act until it runs again, and then its first look at
//! the clock stops it.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix::prelude::*;

use super::Dispatcher;
use crate::actors::worker::{RunJob, StopJob, Worker};
use crate::job::{JobId, Outcome};
use crate::kinds::{Placement, RunsOn, Starts};

/// How often the Dispatcher looks at its lease besides before each start: a lapse stops
/// the running jobs within this long.
pub(super) const LEASE_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// A job handed a worker whose start was being recorded.
pub(super) type AwaitingStart = (usize, Addr<Worker>, RunJob);

impl Dispatcher {
    /// Whether a job waits for its recorded start before it runs: when its kind's
    /// placement says so, and on a shared queue every job with effects, so that a refused
    /// start (the job moved to another node) runs nothing. A job on the worker's thread
    /// (`noop`) has no effect to guard.
    pub(super) fn waits_for_recorded_start(&self, placement: Placement) -> bool {
        placement.starts == Starts::WhenRecorded
            || (self.queue.is_shared() && placement.runs_on != RunsOn::WorkerThread)
    }

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
        if (!held || new_term) && !self.lease_lapsed {
            self.stop_claimed_work(held);
        }
        if held && self.lease_lapsed {
            tracing::info!("lease proven held again: this node claims and starts jobs again");
        }
        self.lease_lapsed = !held;
        self.lease_lapsed
    }

    /// Drops the window and stops every running job.
    fn stop_claimed_work(&mut self, held_again: bool) {
        let dropped = self.window.drop_claimed();
        let mut stopped = 0;
        for slot in &self.workers {
            if let (Some(_), Some(worker)) = (&slot.running, &slot.addr) {
                worker.do_send(StopJob);
                stopped += 1;
            }
        }
        if held_again {
            tracing::warn!(
                dropped_from_window = dropped,
                running_stopped = stopped,
                "the lease lapsed between two looks (was this process stopped?): this node stops the jobs it held, \
                 which another node may have taken, and claims again"
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

    /// Looks at the lease between starts; resumes work when it came back.
    pub(super) fn watch_lease(&mut self, ctx: &mut Context<Self>) {
        let was_lapsed = self.lease_lapsed;
        if !self.lease_lapsed() && was_lapsed {
            self.pump(ctx);
        }
    }

    /// Runs the jobs whose start a flush recorded. One whose start was refused is never
    /// run: its worker is idle again and its gate's permit given back. One recorded just
    /// before the lease lapsed does not run either; its attempt, already counted, ends as
    /// interrupted, so the job is retried rather than left running on a node that holds
    /// nothing.
    /// `term_at_send` is the lease's term when the flush was sent: a new one since means
    /// the lease lapsed meanwhile (the process may have been stopped), and the jobs may be
    /// another node's now.
    pub(super) fn start_recorded(
        &mut self,
        starting: Vec<AwaitingStart>,
        refused: &[(JobId, i64)],
        term_at_send: u64,
        ctx: &mut Context<Self>,
    ) {
        if starting.is_empty() {
            return;
        }
        let held = !self.lease_lapsed() && self.queue.lease_term() == term_at_send;
        let refused: HashSet<(JobId, i64)> = refused.iter().copied().collect();
        let mut freed = false;
        for (number, worker, run) in starting {
            let was_refused = refused.contains(&(run.0.id, run.0.claim));
            if held && !was_refused {
                worker.do_send(run);
                continue;
            }
            let RunJob(job, _, permit) = run;
            freed = true;
            if let Some(permit) = permit {
                let gate = permit.gate().clone();
                drop(permit);
                self.window.release_gate(&gate);
            }
            let Some(slot) = self.workers.get_mut(number) else { continue };
            let Some(running) = slot.running.take_if(|running| running.id == job.id) else { continue };
            self.busy = self.busy.saturating_sub(1);
            if !self.idle.contains(&number) {
                self.idle.push(number);
            }
            if was_refused {
                tracing::warn!(job_id = %job.id, attempt = job.attempt, "job not run: its start was refused (it moved to another node or claim)");
            } else {
                tracing::warn!(job_id = %job.id, attempt = job.attempt, "job not run: the lease lapsed as its start was recorded");
                let finished = self.decide(&running, Outcome::Interrupted);
                self.outcomes.push(finished);
            }
        }
        if freed {
            self.stats.workers_busy.store(self.busy, Ordering::Relaxed);
            self.pump(ctx);
        }
    }
}
