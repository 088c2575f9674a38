//! The periodic activity line: at the default log level, one `info` line every
//! [`SUMMARY_PERIOD`] while jobs come in or finish, so that an operator watching the
//! terminal or the journal sees work happen without turning on per-job `debug` lines.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::Metrics;
use crate::queue::QueueHandle;
use crate::stats::{JobCounts, Stats};

/// How often the line is written while there is activity.
pub(super) const SUMMARY_PERIOD: Duration = Duration::from_secs(10);

/// Writes the activity line every `period` in which a job was submitted or finished an
/// attempt; a quiet daemon writes nothing.
pub(super) async fn log_activity(queue: QueueHandle, stats: Arc<Stats>, metrics: Arc<Metrics>, period: Duration) {
    let mut interval = tokio::time::interval(period);
    interval.tick().await;
    let mut last = stats.snapshot(&metrics).jobs;
    let mut last_at = Instant::now();
    loop {
        interval.tick().await;
        let now = stats.snapshot(&metrics).jobs;
        let finished = |counts: &JobCounts| counts.succeeded + counts.failed + counts.timed_out + counts.panicked;
        // Saturating: `retried` is derived from two counters read one after the other.
        let (submitted, ended) =
            (now.accepted.saturating_sub(last.accepted), finished(&now).saturating_sub(finished(&last)));
        if submitted == 0 && ended == 0 {
            last_at = Instant::now();
            continue;
        }
        let seconds = last_at.elapsed().as_secs_f64().max(0.001);
        let per_second = |count: u64| (count as f64 / seconds).round() as u64;
        let depth = queue.status().await.map(|status| status.depth).unwrap_or_default();
        tracing::info!(
            submitted,
            succeeded = now.succeeded.saturating_sub(last.succeeded),
            failed = (now.failed + now.timed_out + now.panicked)
                .saturating_sub(last.failed + last.timed_out + last.panicked),
            retried = now.retried.saturating_sub(last.retried),
            dead = now.dead.saturating_sub(last.dead),
            submitted_per_second = per_second(submitted),
            finished_per_second = per_second(ended),
            queued = depth.queued,
            running = depth.running,
            delayed = depth.scheduled + depth.failed,
            seconds = seconds.round() as u64,
            "activity"
        );
        last = now;
        last_at = Instant::now();
    }
}
