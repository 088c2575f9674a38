//! Columns both database backends share: times as milliseconds, states by name, the
//! columns an attempt's end writes, a stored body shown as a record's payload, and the
//! priority bands of `ready_seq`.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde_json::value::RawValue;

use std::collections::{HashMap, HashSet};

use crate::job::{FinishedJob, JobId, JobState, Outcome, StartedJob};

/// The listing statement for one filter shape (a state or none, by tenant or not, by kind
/// or not), from `statements`, which holds one statement per shape built by `build` at the
/// first call: each backend prepares its statements per shape, so that each gets a plan
/// (and an index) of its own.
pub(crate) fn listing_statement(
    statements: &'static std::sync::OnceLock<Vec<String>>,
    (state, by_tenant, by_kind): (Option<JobState>, bool, bool),
    build: impl Fn(Option<JobState>, bool, bool) -> String,
) -> &'static str {
    let states = || std::iter::once(None).chain(JobState::ALL.into_iter().map(Some));
    let statements = statements.get_or_init(|| {
        let mut built = Vec::new();
        for state in states() {
            for by_tenant in [false, true] {
                for by_kind in [false, true] {
                    built.push(build(state, by_tenant, by_kind));
                }
            }
        }
        built
    });
    let state_slot = states().position(|candidate| candidate == state).unwrap_or(0);
    &statements[state_slot * 4 + usize::from(by_tenant) * 2 + usize::from(by_kind)]
}

/// How many values of `ready_seq` one priority holds. A queued job's `ready_seq` is its
/// priority's band (`9 - priority`) times this, plus its place in that band: claims read
/// `ready_seq` in order, so every job of a higher priority comes before every job of a lower
/// one, and jobs of one priority in the order they became ready. 2^48 places a band is more
/// than a million jobs a second for eight years.
pub(crate) const PRIORITY_BAND: i64 = 1 << 48;
/// How many bands there are: one per priority.
pub(crate) const BANDS: usize = crate::job::MAX_PRIORITY as usize + 1;

/// The band of `priority`: 0 for the highest.
pub(crate) fn band_of(priority: u8) -> usize {
    usize::from(crate::job::MAX_PRIORITY - priority.min(crate::job::MAX_PRIORITY))
}

/// Where `band`'s values of `ready_seq` start (that value itself is never handed out).
pub(crate) fn band_start(band: usize) -> i64 {
    i64::try_from(band).unwrap_or(0) * PRIORITY_BAND
}

/// A priority read back from storage: out of range reads as the nearest in range.
pub(crate) fn priority_of(stored: i64) -> u8 {
    u8::try_from(stored.clamp(0, i64::from(crate::job::MAX_PRIORITY))).unwrap_or(crate::job::DEFAULT_PRIORITY)
}

pub(crate) fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

pub(crate) fn from_millis(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

pub(crate) fn state_of(name: &str) -> JobState {
    // Only jobd writes the column, with `JobState::name`; an unknown value would mean a
    // newer jobd wrote it, which the schema version refuses first.
    JobState::from_name(name).unwrap_or(JobState::Dead)
}

/// The columns an attempt's end writes, shared by both ways of recording it.
#[derive(PartialEq, Eq, Hash)]
pub(crate) struct FinishColumns {
    pub(crate) state: JobState,
    /// Set only when the job will not run again.
    pub(crate) finished_at: Option<i64>,
    /// The attempt's error; `None` for a success, which clears the previous one.
    pub(crate) error: Option<String>,
    pub(crate) result: Option<String>,
    pub(crate) retry_at: Option<i64>,
}

impl FinishColumns {
    pub(crate) fn of(end: &FinishedJob) -> Self {
        let state = end.state();
        let result = match &end.outcome {
            Outcome::Succeeded(result) => serde_json::to_string(result).ok(),
            _ => None,
        };
        FinishColumns {
            state,
            finished_at: state.is_finished().then(|| millis(end.finished_at)),
            error: end.outcome.error(),
            result,
            retry_at: end.retry_at.map(millis),
        }
    }
}

/// Splits a flush's progress as both database backends write it: a start whose attempt
/// also ended in the flush is written with its end (one write instead of two), so it is
/// left out of the starts and its time is looked up by the end.
pub(crate) fn split_progress(
    started: &[StartedJob],
    finished: &[FinishedJob],
) -> (HashMap<JobId, DateTime<Utc>>, Vec<StartedJob>) {
    let started_at = started.iter().map(|start| (start.id, start.started_at)).collect();
    let finishing: HashSet<JobId> = finished.iter().map(|end| end.id).collect();
    let started_only = started.iter().filter(|start| !finishing.contains(&start.id)).copied().collect();
    (started_at, started_only)
}

/// A stored body as a record's `payload`: JSON as sent, other bytes as a base64 string.
pub(crate) fn payload_value(bytes: Vec<u8>, is_json: bool) -> Option<Box<RawValue>> {
    let text = if is_json {
        String::from_utf8(bytes).ok()?
    } else {
        serde_json::to_string(&base64::engine::general_purpose::STANDARD.encode(bytes)).ok()?
    };
    RawValue::from_string(text).ok()
}
