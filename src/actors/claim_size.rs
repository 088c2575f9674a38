//! How many runnable jobs a node on a shared queue holds in its window: enough for a
//! short while of its recent pace, and no fewer than its free workers.
//!
//! Every job in a node's window is leased to it: no other node can run it. A window of
//! twice the pool (the earlier rule) balanced slow jobs across nodes but made short ones
//! slow: at the default 16 workers, 100,000 noop jobs took over 4,000 claims, each a commit.
//! So the window follows the work instead: it holds what the node started in the last
//! [`HOLD`] at its recent pace. Short jobs start thousands a second, and their claims grow
//! to thousands (up to the window's bound); slow ones start a few a second, and their
//! claims shrink to the free slots, so that an idle node finds the rest in the queue.
//! Jobs waiting at a full gate (a webhook destination at its in-flight limit) count
//! against the bound, and the workers their kind keeps busy are not free, so a node does
//! not claim more of them than it can start. Jobs at a closed gate (an open circuit) or
//! held while the store is down do not: no node could run them (see `Window`).

use std::time::{Duration, Instant};

/// How much of its recent work a node holds ahead.
const HOLD: Duration = Duration::from_millis(200);
/// How often the pace is measured.
const TICK: Duration = Duration::from_millis(250);

/// See the module's documentation.
#[derive(Debug)]
pub struct ClaimSize {
    ceiling: usize,
    /// Jobs started since the current tick began.
    started: u64,
    tick_began: Instant,
    /// Starts per second, smoothed over ticks.
    pace: f64,
}

impl ClaimSize {
    /// For a window of at most `ceiling` jobs.
    pub fn new(ceiling: usize) -> Self {
        ClaimSize { ceiling: ceiling.max(1), started: 0, tick_began: Instant::now(), pace: 0.0 }
    }

    /// Counts jobs handed to workers.
    pub fn started(&mut self, jobs: u64) {
        self.started += jobs;
    }

    /// How many runnable jobs the window may hold now, with `free` workers idle.
    pub fn limit(&mut self, free: usize) -> usize {
        self.limit_at(Instant::now(), free)
    }

    fn limit_at(&mut self, now: Instant, free: usize) -> usize {
        let elapsed = now.saturating_duration_since(self.tick_began);
        if elapsed >= TICK {
            let pace = self.started as f64 / elapsed.as_secs_f64();
            // Half the last tick, half the ticks before: a burst is followed within a
            // second, and one quiet tick does not throw away what the node can do.
            self.pace = (self.pace + pace) / 2.0;
            self.started = 0;
            self.tick_began = now;
        }
        let ahead = (self.pace * HOLD.as_secs_f64()).ceil() as usize;
        ahead.max(free).clamp(1, self.ceiling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_follows_the_pace_between_the_pool_and_the_ceiling() {
        let start = Instant::now();
        let mut size = ClaimSize { tick_began: start, ..ClaimSize::new(16_384) };
        assert_eq!(size.limit_at(start, 16), 16, "the free workers, before any pace is known");
        // 100,000 starts a second for a while: the window grows to the ceiling.
        let mut now = start;
        for _ in 0..20 {
            size.started(25_000);
            now += TICK;
            size.limit_at(now, 16);
        }
        assert_eq!(size.limit_at(now, 16), 16_384);
        // Slow jobs, 8 a second: the window shrinks back to the free slots.
        for _ in 0..40 {
            size.started(2);
            now += TICK;
            size.limit_at(now, 16);
        }
        assert_eq!(size.limit_at(now, 16), 16);
        assert_eq!(size.limit_at(now, 8), 8, "workers busy with slow jobs are not free");
        assert_eq!(size.limit_at(now, 0), 2, "a busy pool still keeps its pace at hand");
        // 5,000 a second: a second's worth of the pace, a fifth of it ahead.
        for _ in 0..40 {
            size.started(1_250);
            now += TICK;
            size.limit_at(now, 16);
        }
        assert_eq!(size.limit_at(now, 0), 1_000);
    }
}
