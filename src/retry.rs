//! The retry policy: how many attempts a job gets and how long it waits between them.

use std::time::Duration;

/// Exponential backoff with full jitter: before attempt `n + 1`, wait a uniformly random
/// time between zero and `min(cap, base × 2^(n−1))`. The jitter spreads out retries of
/// jobs that failed together, so a recovering store is not hit by all of them at once.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
}

impl RetryPolicy {
    /// The longest wait after `attempt` (from 1) failed.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(30);
        self.base.saturating_mul(1 << doublings).min(self.cap)
    }

    /// The wait after `attempt` (from 1) failed, drawn from `rng`.
    pub fn delay(&self, attempt: u32, rng: &mut fastrand::Rng) -> Duration {
        let ceiling = self.ceiling(attempt).as_millis().min(u128::from(u64::MAX)) as u64;
        Duration::from_millis(rng.u64(0..=ceiling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_up_to_the_cap_and_delays_stay_below_them() {
        let policy = RetryPolicy { base: Duration::from_millis(100), cap: Duration::from_secs(1) };
        let ceilings: Vec<u128> = (1..=6).map(|attempt| policy.ceiling(attempt).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        let mut rng = fastrand::Rng::with_seed(7);
        for attempt in 1..=6 {
            let delays: Vec<Duration> = (0..1000).map(|_| policy.delay(attempt, &mut rng)).collect();
            assert!(delays.iter().all(|delay| *delay <= policy.ceiling(attempt)));
            // Full jitter uses the whole range, not just its top.
            let mean = delays.iter().sum::<Duration>() / 1000;
            let ceiling = policy.ceiling(attempt);
            assert!(mean > ceiling / 3 && mean < ceiling * 2 / 3, "attempt {attempt}: mean {mean:?}");
        }
        assert_eq!(policy.ceiling(u32::MAX), Duration::from_secs(1), "no overflow");
    }
}
