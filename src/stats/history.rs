//! A short history of the counters `/v1/stats` shows, sampled every second by the
//! daemon: a console opened a minute ago draws its rates and chart at once, and
//! `jobd stats` prints rates from a single request.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use super::StatsSnapshot;

/// How often a sample is taken.
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(1);
/// How many samples are kept: five minutes, the console chart's span. About 50 bytes
/// each, so 15 KiB however long jobd runs.
pub const KEPT_SAMPLES: usize = 300;
/// The window the rates of `/v1/stats` are taken over.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

/// This node's counters at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    pub accepted: u64,
    pub succeeded: u64,
    /// Attempts that failed, timed out or panicked.
    pub failed: u64,
    pub dead: u64,
}

impl Sample {
    pub fn of(snapshot: &StatsSnapshot, at_ms: i64) -> Self {
        let jobs = &snapshot.jobs;
        Sample {
            at_ms,
            accepted: jobs.accepted,
            succeeded: jobs.succeeded,
            failed: jobs.failed + jobs.timed_out + jobs.panicked,
            dead: jobs.dead,
        }
    }
}

/// Per-second rates between two samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rates {
    /// The seconds the rates were taken over: [`RATE_WINDOW`], or less just after start.
    pub over_secs: f64,
    pub accepted_per_second: f64,
    pub succeeded_per_second: f64,
    pub failed_per_second: f64,
    pub dead_per_second: f64,
}

/// The last [`KEPT_SAMPLES`] samples, oldest first.
#[derive(Debug, Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Sample>> {
        // A sample is written whole under the lock: a poisoned one still holds whole samples.
        self.samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps `sample`, dropping the oldest beyond [`KEPT_SAMPLES`].
    pub fn record(&self, sample: Sample) {
        let mut samples = self.lock();
        if samples.len() == KEPT_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// Every sample kept, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.lock().iter().copied().collect()
    }

    /// The rates from the sample about [`RATE_WINDOW`] before `now` (or the oldest kept)
    /// to `now`; none until one sample is at least a second old.
    pub fn rates(&self, now: Sample) -> Option<Rates> {
        let samples = self.lock();
        let window_ms = i64::try_from(RATE_WINDOW.as_millis()).unwrap_or(i64::MAX);
        let from = samples
            .iter()
            .find(|sample| now.at_ms - sample.at_ms <= window_ms)
            .filter(|sample| now.at_ms - sample.at_ms >= 1_000)?;
        let seconds = (now.at_ms - from.at_ms) as f64 / 1000.0;
        let rate = |now: u64, then: u64| (now.saturating_sub(then) as f64 / seconds * 10.0).round() / 10.0;
        Some(Rates {
            over_secs: seconds,
            accepted_per_second: rate(now.accepted, from.accepted),
            succeeded_per_second: rate(now.succeeded, from.succeeded),
            failed_per_second: rate(now.failed, from.failed),
            dead_per_second: rate(now.dead, from.dead),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: i64, accepted: u64) -> Sample {
        Sample { at_ms, accepted, succeeded: accepted / 2, failed: 0, dead: 0 }
    }

    #[test]
    fn the_history_is_bounded_and_rates_span_the_window() {
        let history = History::default();
        assert_eq!(history.rates(sample(0, 0)), None, "no history, no rate");
        for second in 0..400 {
            history.record(sample(second * 1000, (second as u64) * 100));
        }
        let samples = history.samples();
        assert_eq!(samples.len(), KEPT_SAMPLES);
        assert_eq!(samples[0].at_ms, 100_000, "the oldest were dropped");
        let rates = history.rates(sample(400_000, 40_000)).expect("rates");
        assert_eq!(rates.over_secs, 10.0);
        assert_eq!((rates.accepted_per_second, rates.succeeded_per_second), (100.0, 50.0));

        let young = History::default();
        young.record(sample(0, 0));
        assert_eq!(young.rates(sample(500, 10)), None, "half a second is too short for a rate");
        let rates = young.rates(sample(2_000, 30)).expect("rates over what there is");
        assert_eq!((rates.over_secs, rates.accepted_per_second), (2.0, 15.0));
    }
}
