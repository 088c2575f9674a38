//! A node's own view of its lease on a shared queue ([`LeaseClock`]): until when it may
//! act on the jobs it holds, and whether a lapse came between two renewals.
//!
//! The lease thread renews the lease; everyone else only reads the clock: the queue
//! thread before it claims or records a start, the Dispatcher before it starts a job.
//! The clock is monotonic (`Instant`), so a wall-clock step cannot extend it, and it
//! counts from when a renewal was *sent*, which is no later than when the database wrote
//! the expiry it compares with (`clock_timestamp()` at the write), so the node always
//! believes its lease ends before the other nodes do.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// See the module's documentation.
#[derive(Debug)]
pub struct LeaseClock {
    origin: Instant,
    /// Nanoseconds after `origin` until which this node may act on its jobs: the last
    /// renewal's send time plus the lease, less the safety margin. 0 before the first.
    held_until: AtomicU64,
    /// How many times the lease was renewed after it had lapsed, or found that the other
    /// nodes had declared this one lost: each such renewal starts a new term, in which the
    /// jobs of the old term are no longer this node's to run unless handed out again.
    term: AtomicU64,
}

impl LeaseClock {
    /// A clock that holds no lease yet.
    pub fn new() -> Self {
        LeaseClock { origin: Instant::now(), held_until: AtomicU64::new(0), term: AtomicU64::new(0) }
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Records a renewal sent at `sent_at` that keeps the lease for `valid_for` (the lease
    /// less its safety margin). `lost` says the node's row was gone (the others declared
    /// it lost and took its jobs). Returns whether this renewal began a new term.
    pub fn renewed(&self, sent_at: Instant, valid_for: Duration, lost: bool) -> bool {
        // Lapsed when it was sent, or since: the old expiry passed before this renewal is
        // recorded, and meanwhile the node dropped what it held.
        let lapsed = !self.is_held_at(sent_at) || !self.is_held_at(Instant::now());
        let new_term = lapsed || lost;
        if new_term {
            self.term.fetch_add(1, Ordering::AcqRel);
        }
        self.held_until.store(self.nanos(sent_at + valid_for).max(1), Ordering::Release);
        new_term
    }

    /// Whether this node may act on its jobs now.
    pub fn is_held(&self) -> bool {
        self.is_held_at(Instant::now())
    }

    fn is_held_at(&self, at: Instant) -> bool {
        let until = self.held_until.load(Ordering::Acquire);
        until != 0 && self.nanos(at) < until
    }

    /// The current term: it changes whenever the lease was lost between two renewals.
    pub fn term(&self) -> u64 {
        self.term.load(Ordering::Acquire)
    }
}

impl Default for LeaseClock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_holds_from_a_renewal_until_its_margin_and_a_lapse_starts_a_term() {
        let clock = LeaseClock::new();
        assert!(!clock.is_held(), "nothing is held before the first renewal");
        let now = Instant::now();
        assert!(clock.renewed(now, Duration::from_secs(4), false), "the first renewal begins a term");
        assert!(clock.is_held());
        assert_eq!(clock.term(), 1);
        assert!(!clock.renewed(now + Duration::from_secs(1), Duration::from_secs(4), false));
        assert_eq!(clock.term(), 1, "a renewal in time keeps the term");
        assert!(!clock.is_held_at(now + Duration::from_secs(5)), "held until 1 s + 4 s only");
        assert!(clock.renewed(now + Duration::from_secs(6), Duration::from_secs(4), false), "after a lapse");
        assert_eq!(clock.term(), 2);
        assert!(clock.renewed(now + Duration::from_secs(7), Duration::from_secs(4), true), "found lost");
        assert_eq!(clock.term(), 3);
    }
}
