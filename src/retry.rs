//! The retry policy: how many attempts a job gets and how long it waits between them.

use std::time::Duration;

/// Exponential backoff with jitter that has a floor: before attempt `n + 1`, wait a
/// uniformly random time between half of and all of `min(cap, base × 2^(n−1))`. The
/// jitter spreads out retries of jobs that failed together, so a recovering store is not
/// hit by all of them at once; the floor keeps each wait at least half its nominal value,
/// so that a job's attempts span the schedule the operator reads in docs/http-api.md rather than
/// collapsing into a burst of near-zero waits (full jitter's expected sum is only half).
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
}

impl RetryPolicy {
    /// The longest wait after `attempt` (from 1) failed: its nominal value.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(30);
        self.base.saturating_mul(1 << doublings).min(self.cap)
    }

    /// The shortest wait after `attempt` (from 1) failed: half its nominal value.
    pub fn floor(&self, attempt: u32) -> Duration {
        self.ceiling(attempt) / 2
    }

    /// The wait after `attempt` (from 1) failed, drawn from `rng`.
    pub fn delay(&self, attempt: u32, rng: &mut fastrand::Rng) -> Duration {
        let millis = |duration: Duration| duration.as_millis().min(u128::from(u64::MAX)) as u64;
        let (floor, ceiling) = (millis(self.floor(attempt)), millis(self.ceiling(attempt)));
        Duration::from_millis(rng.u64(floor..=ceiling))
    }

    /// The shortest and longest time from a job's first attempt failing to its last
    /// attempt starting, when every attempt fails at once: the span the schedule covers.
    pub fn span(&self, max_attempts: u32) -> (Duration, Duration) {
        (1..max_attempts).fold((Duration::ZERO, Duration::ZERO), |(low, high), attempt| {
            (low.saturating_add(self.floor(attempt)), high.saturating_add(self.ceiling(attempt)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_up_to_the_cap_and_delays_stay_between_half_and_all_of_them() {
        let policy = RetryPolicy { base: Duration::from_millis(100), cap: Duration::from_secs(1) };
        let ceilings: Vec<u128> = (1..=6).map(|attempt| policy.ceiling(attempt).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        let mut rng = fastrand::Rng::with_seed(7);
        for attempt in 1..=6 {
            let delays: Vec<Duration> = (0..1000).map(|_| policy.delay(attempt, &mut rng)).collect();
            let ceiling = policy.ceiling(attempt);
            assert!(delays.iter().all(|delay| *delay <= ceiling && *delay >= ceiling / 2), "attempt {attempt}");
            // The jitter uses the whole upper half, not just one end of it.
            let mean = delays.iter().sum::<Duration>() / 1000;
            assert!(mean > ceiling * 5 / 8 && mean < ceiling * 7 / 8, "attempt {attempt}: mean {mean:?}");
        }
        assert_eq!(policy.ceiling(u32::MAX), Duration::from_secs(1), "no overflow");
    }

    /// The default schedule rides out an outage of a day: 25 attempts, waits from a second
    /// doubling to six hours, so the last attempt comes between about 1.3 and 2.6 days
    /// after the first. The table in docs/http-api.md is this schedule.
    #[test]
    fn the_default_schedule_spans_more_than_a_day() {
        use crate::config::{DEFAULT_MAX_ATTEMPTS, DEFAULT_RETRY_BASE_MS, DEFAULT_RETRY_CAP_MS};
        let policy = RetryPolicy {
            base: Duration::from_millis(DEFAULT_RETRY_BASE_MS),
            cap: Duration::from_millis(DEFAULT_RETRY_CAP_MS),
        };
        let (shortest, longest) = policy.span(DEFAULT_MAX_ATTEMPTS);
        let day = Duration::from_secs(86_400);
        assert!(shortest > day, "shortest span {shortest:?}");
        assert!(longest < 3 * day, "longest span {longest:?}");
        // The first retries come quickly, so a blip costs seconds, not minutes.
        assert!(policy.ceiling(1) <= Duration::from_secs(1));
        assert_eq!(policy.ceiling(DEFAULT_MAX_ATTEMPTS), Duration::from_secs(6 * 3600));
    }
}
