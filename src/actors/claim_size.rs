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
    /// A floor that doubles each claim round in which the node ran out of jobs while the
    /// queue had more (see [`ClaimSize::limit`]), and halves each tick without that.
    boost: usize,
    /// Whether the last claim came back with all it asked for: the queue may hold more.
    last_claim_full: bool,
    /// Whether the boost already doubled since the last claim came back.
    doubled_this_claim: bool,
    /// Whether the node ran out of jobs during the current tick.
    starved_this_tick: bool,
    /// The last limit handed out.
    last_limit: usize,
}

impl ClaimSize {
    /// For a window of at most `ceiling` jobs, measuring its pace from `now`.
    pub fn new(ceiling: usize, now: Instant) -> Self {
        ClaimSize {
            ceiling: ceiling.max(1),
            started: 0,
            tick_began: now,
            pace: 0.0,
            boost: 0,
            last_claim_full: false,
            doubled_this_claim: false,
            starved_this_tick: false,
            last_limit: 1,
        }
    }

    /// Notes that a claim came back, and whether it brought all it asked for.
    pub fn claimed(&mut self, full: bool) {
        self.last_claim_full = full;
        self.doubled_this_claim = false;
    }

    /// The jobs the recent pace starts in [`HOLD`].
    fn ahead(&self) -> usize {
        (self.pace * HOLD.as_secs_f64()).ceil() as usize
    }

    /// Counts jobs handed to workers.
    pub fn started(&mut self, jobs: u64) {
        self.started += jobs;
    }

    /// How many runnable jobs the window may hold `now`, with `free` workers idle and the
    /// window `empty` or not.
    ///
    /// The pace is known only after a tick, so a node that starts on a backlog of short
    /// jobs would claim its free workers' worth for a quarter of a second, then a tenth of
    /// its pace, and reach its pace only after a second. Instead it doubles the limit each
    /// claim round in which workers sat idle with nothing claimed while the last claim
    /// came back full (so the queue may hold more), as TCP's slow start does: 16 reach
    /// 16,384 in ten claims, a few milliseconds. Slow jobs never double it: their workers
    /// are busy, or their jobs wait at a gate, when the window empties. It doubles only
    /// while the pace holds fewer jobs than the free workers (at the start, or after a
    /// quiet spell), and then halves each tick: short jobs empty the window at once whatever
    /// its size, and a boost that kept doubling would pin every claim at the ceiling (with
    /// 256 workers, row 12 of the benchmark fell from 72,808 to 41,088 jobs/s with it).
    pub fn limit(&mut self, now: Instant, free: usize, empty: bool) -> usize {
        let elapsed = now.saturating_duration_since(self.tick_began);
        if elapsed >= TICK {
            let pace = self.started as f64 / elapsed.as_secs_f64();
            // Half the last tick, half the ticks before: a burst is followed within a
            // second, and one quiet tick does not throw away what the node can do.
            self.pace = (self.pace + pace) / 2.0;
            self.started = 0;
            self.tick_began = now;
            if !std::mem::take(&mut self.starved_this_tick) {
                self.boost /= 2;
            }
        }
        let ahead = self.ahead();
        if ahead <= free && empty && free > 0 && self.last_claim_full && !self.doubled_this_claim {
            self.boost = self.last_limit.saturating_mul(2).min(self.ceiling);
            self.doubled_this_claim = true;
            self.starved_this_tick = true;
        }
        self.last_limit = ahead.max(free).max(self.boost).clamp(1, self.ceiling);
        self.last_limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_follows_the_pace_between_the_pool_and_the_ceiling() {
        let start = Instant::now();
        let mut size = ClaimSize::new(16_384, start);
        assert_eq!(size.limit(start, 16, false), 16, "the free workers, before any pace is known");
        // 100,000 starts a second for a while: the window grows to the ceiling.
        let mut now = start;
        for _ in 0..20 {
            size.started(25_000);
            now += TICK;
            size.limit(now, 16, false);
        }
        assert_eq!(size.limit(now, 16, false), 16_384);
        // Slow jobs, 8 a second: the window shrinks back to the free slots.
        for _ in 0..40 {
            size.started(2);
            now += TICK;
            size.limit(now, 16, false);
        }
        assert_eq!(size.limit(now, 16, false), 16);
        assert_eq!(size.limit(now, 8, false), 8, "workers busy with slow jobs are not free");
        assert_eq!(size.limit(now, 0, false), 2, "a busy pool still keeps its pace at hand");
        // 5,000 a second: a second's worth of the pace, a fifth of it ahead.
        for _ in 0..40 {
            size.started(1_250);
            now += TICK;
            size.limit(now, 16, false);
        }
        assert_eq!(size.limit(now, 0, false), 1_000);
    }

    #[test]
    fn a_node_that_runs_out_of_short_jobs_doubles_its_claims_until_it_does_not() {
        let start = Instant::now();
        let mut size = ClaimSize::new(16_384, start);
        let mut limit = size.limit(start, 16, true);
        assert_eq!(limit, 16, "no claim came back yet: nothing says the queue holds more");
        // Each claim comes back full, and its jobs are done before the next one: the
        // limit doubles once per claim, however often the window is found empty.
        for expected in [32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16_384, 16_384] {
            size.claimed(true);
            assert_eq!(size.limit(start, 16, true), expected);
            assert_eq!(size.limit(start, 16, true), expected, "one doubling per claim");
            limit = expected;
        }
        assert_eq!(limit, 16_384);
        // A claim that came back short: the queue is empty, and the limit stays.
        size.claimed(false);
        assert_eq!(size.limit(start, 16, true), 16_384);
        // Ticks without a starved round halve the boost back to the pace and free workers.
        let mut now = start;
        for _ in 0..20 {
            now += TICK;
            size.limit(now, 16, false);
        }
        assert_eq!(size.limit(now, 16, false), 16);
    }

    #[test]
    fn a_pool_busy_with_slow_jobs_never_doubles_its_claims() {
        let start = Instant::now();
        let mut size = ClaimSize::new(16_384, start);
        assert_eq!(size.limit(start, 16, true), 16);
        // The claim of 16 came back full and all 16 started: the window is empty, but no
        // worker is free, so another node may take the rest.
        size.claimed(true);
        assert_eq!(size.limit(start, 0, true), 1, "the pace is not known yet");
        // Jobs waiting at a full gate keep the window from being empty.
        size.claimed(true);
        assert_eq!(size.limit(start, 8, false), 8);
    }

    #[test]
    fn once_the_pace_is_known_the_boost_fades() {
        let start = Instant::now();
        let mut size = ClaimSize::new(16_384, start);
        size.limit(start, 256, true);
        for _ in 0..10 {
            size.claimed(true);
            size.limit(start, 256, true);
        }
        assert_eq!(size.limit(start, 256, true), 16_384, "the ramp reached the ceiling");
        // Quarters of a second at 60,000 starts a second. The first tick keeps the boost
        // (the node starved during it); from then on the pace holds more than the pool, an
        // emptied window no longer doubles the boost, and it halves each tick.
        size.started(15_000);
        let mut now = start + TICK;
        assert_eq!(size.limit(now, 256, true), 16_384);
        size.started(15_000);
        now += TICK;
        assert_eq!(size.limit(now, 256, true), 9_000, "the pace (45,000 a second, smoothed) over half the boost");
        size.claimed(true);
        assert_eq!(size.limit(now, 256, true), 9_000, "no doubling once the pace holds more than the pool");
        for _ in 0..5 {
            size.started(15_000);
            now += TICK;
            size.claimed(true);
            size.limit(now, 256, true);
        }
        assert_eq!(size.limit(now, 256, true), 11_907, "the pace alone decides");
    }
}
