//! Where a claim (and the read of the oldest queued job) starts to look in the queue's
//! ready index: a slack behind the head it last found, and now and then from the start.

/// How far behind the head of its last claim a claim starts to look ([`pick_floor`]):
/// more than a claim's most jobs, so that the jobs of a claim that rolled back are seen
/// again, and seconds of inserts at tens of thousands a second, so that a submission that
/// took its place before it committed (another node's, or this one's ingest lane) is found
/// by the next claim.
const PICK_SLACK: i64 = 250_000;
/// How often a claim looks from the very start of the queue, whatever the slack: for jobs
/// put back in their old place (a lost node's window, released) and a commit later than the
/// slack.
const FULL_PICK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Where a claim starts to look in the ready index: [`pick_floor`] with the claims' slack
/// and period.
pub(super) fn claim_floor(queue_head: i64, last_full_pick: &mut Option<std::time::Instant>) -> i64 {
    pick_floor(queue_head, last_full_pick, PICK_SLACK, FULL_PICK_EVERY)
}

/// Where a scan starts to look in the ready index. Each claim leaves a dead entry at the
/// index's head for every job it took (the job's row leaves the index), and only a vacuum
/// removes them. A scan from the start walks all of them: in the half-hour soak at 35,000
/// jobs a second, with tens of millions of rows and vacuums minutes apart, the mean wait
/// from due to start grew from 7.5 ms over the first five minutes to 64 ms over the last
/// five. So a claim starts `slack` ([`PICK_SLACK`]) places behind where the last one ended,
/// and from the start once every `full_pick_every` ([`FULL_PICK_EVERY`]): the same soak
/// then waited 6.5 and 7.0 ms.
pub(super) fn pick_floor(
    queue_head: i64,
    last_full_pick: &mut Option<std::time::Instant>,
    slack: i64,
    full_pick_every: std::time::Duration,
) -> i64 {
    let now = std::time::Instant::now();
    if last_full_pick.is_none_or(|at| now.saturating_duration_since(at) >= full_pick_every) {
        *last_full_pick = Some(now);
        return 0;
    }
    queue_head.saturating_sub(slack).max(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_claim_looks_from_the_start_once_a_second_and_otherwise_behind_the_last_head() {
        let mut last_full_pick = None;
        assert_eq!(
            super::pick_floor(1_000_000, &mut last_full_pick, super::PICK_SLACK, super::FULL_PICK_EVERY),
            0,
            "the first claim looks from the start"
        );
        assert_eq!(
            super::pick_floor(1_000_000, &mut last_full_pick, super::PICK_SLACK, super::FULL_PICK_EVERY),
            1_000_000 - super::PICK_SLACK
        );
        assert_eq!(
            super::pick_floor(100, &mut last_full_pick, super::PICK_SLACK, super::FULL_PICK_EVERY),
            0,
            "never below the start"
        );
        last_full_pick = last_full_pick.and_then(|at| at.checked_sub(super::FULL_PICK_EVERY));
        assert_eq!(
            super::pick_floor(1_000_000, &mut last_full_pick, super::PICK_SLACK, super::FULL_PICK_EVERY),
            0,
            "a second later, from the start again"
        );
    }
}
