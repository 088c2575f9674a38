//! How the Dispatcher records progress: how long starts and outcomes gather before a
//! flush, and the counts of finished attempts, taken once their flush has committed.

use std::time::Duration;

use crate::job::{FinishedJob, JobState, Outcome};

/// How long starts and outcomes that nothing waits for are gathered, up to
/// [`PROGRESS_LINGER_ENOUGH`] of them, before they are recorded. Recorded as they came, a webhook destination's 8 deliveries in flight made
/// flushes of one or two jobs, which cost 14 µs of queue-thread CPU and 6 µs of fsync
/// per job, as much as the delivery's own HTTP request; gathered for 2 ms at 35,000 jobs/s,
/// a flush carries about 70 and those costs fall to a third. The price: a job's outcome
/// reaches its record up to 2 ms later, and a crash within those 2 ms runs its job again,
/// which at-least-once allows. Nothing waits on it: a destination's slot, a worker and a
/// kind's permit are free as soon as the attempt ends.
pub(super) const PROGRESS_LINGER: Duration = Duration::from_millis(2);
/// Progress that fills a flush this well goes at once, lingering or not: a flush of many
/// jobs gains little from waiting. On PostgreSQL, lingering every flush made noop jobs 10%
/// slower (54k/s down to 49k, and 18.8 µs of PostgreSQL CPU per job up to 20.5); with
/// this bound they are as fast as before, while a webhook destination's ~100 outcomes per
/// 2 ms still linger. A bound of 64 cut flushes short there too (0.76 to 0.85 x of bench
/// (9)'s plain loop, against 0.92 x with 256).
pub(super) const PROGRESS_LINGER_ENOUGH: usize = 256;
/// The ends of attempts in one flush, by kind and outcome, for `jobd_jobs_finished_total`.
/// They are counted once the flush has committed, so that a counter never runs ahead of
/// the records: a client that saw a job counted as finished finds its record finished too,
/// and the queue's room for it.
pub(super) struct FinishedCounts(Vec<(&'static str, &'static str, u64)>);

impl FinishedCounts {
    pub(super) fn of(finished: &[FinishedJob]) -> Self {
        let mut counts = FinishedCounts(Vec::new());
        for end in finished {
            // A lost worker, an unreachable store and an attempt stopped for a lapsed lease
            // are failed attempts to the metrics, as the dashboards and alerts count them;
            // their logs and errors say which.
            let attempt_outcome = match &end.outcome {
                Outcome::WorkerLost | Outcome::Interrupted => "failed",
                other => other.name(),
            };
            counts.add(end.kind, attempt_outcome);
            if end.state() == JobState::Dead {
                counts.add(end.kind, "dead");
            }
        }
        counts
    }

    /// One more of `kind` and `outcome`. A flush holds few distinct pairs, so a list
    /// searched in order is enough.
    fn add(&mut self, kind: &'static str, outcome: &'static str) {
        match self.0.iter_mut().find(|(known_kind, known_outcome, _)| *known_kind == kind && *known_outcome == outcome)
        {
            Some((_, _, count)) => *count += 1,
            None => self.0.push((kind, outcome, 1)),
        }
    }

    pub(super) fn count(self, jobs_finished: &prometheus::IntCounterVec) {
        for (kind, outcome, count) in self.0 {
            jobs_finished.with_label_values(&[kind, outcome]).inc_by(count);
        }
    }
}
