//! The queue's test hooks: faults the integration tests inject into a debug build of the
//! daemon, as a dying or stalled disk would (fsyncs that fail, or wait), and a queue thread
//! that holds a cancel so that the Dispatcher's next fetch shares its batch.
//!
//! They live in this one type, apart from the settings an operator reads: hidden from
//! `--help`, left out of the printed configuration unless set, and refused by a release
//! build ([`TestHooks::refuse_in_release`]), since each one costs the daemon its
//! durability or its speed on purpose.

use std::time::Duration;

use serde::Serialize;

/// See the module's documentation. Each field keeps the name of its setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TestHooks {
    /// Every fsync of the queue fails after this many (SQLite with group commit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_fail_sync_after: Option<u64>,
    /// The queue thread waits this many ms whenever a batch carries a cancel, gathering
    /// what arrives meanwhile, so that a fetch lands in the cancel's batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_cancel_hold_ms: Option<u64>,
    /// Every fsync of the queue waits this many ms first (SQLite with group commit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_sync_delay_ms: Option<u64>,
}

impl TestHooks {
    pub fn cancel_hold(&self) -> Option<Duration> {
        self.test_cancel_hold_ms.map(Duration::from_millis)
    }

    pub fn sync_delay(&self) -> Option<Duration> {
        // `Config::resolve` already left a delay of 0 unset.
        self.test_sync_delay_ms.map(Duration::from_millis)
    }

    /// The first hook set, by its setting's name, if any.
    pub fn first_set(&self) -> Option<&'static str> {
        [
            ("test_fail_sync_after", self.test_fail_sync_after.is_some()),
            ("test_cancel_hold_ms", self.test_cancel_hold_ms.is_some()),
            ("test_sync_delay_ms", self.test_sync_delay_ms.is_some()),
        ]
        .into_iter()
        .find_map(|(name, set)| set.then_some(name))
    }

    /// Refuses every hook in a release build (`release`), naming the first one set: an
    /// operator who set one by mistake would lose the daemon's durability or its speed
    /// without a word.
    pub fn refuse_in_release(&self, release: bool) -> Result<(), &'static str> {
        match self.first_set() {
            Some(setting) if release => Err(setting),
            _ => Ok(()),
        }
    }
}
