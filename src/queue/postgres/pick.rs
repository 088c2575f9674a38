//! What a claim picks from the queue's ready index (`PICK`), and where it (and the read of
//! the oldest queued job) starts to look: a slack behind the head it last found, the higher
//! priorities' bands from the start, and now and then everything from the start.

/// The next queued jobs no node holds, from `ready_seq` `$2` on, in order, locked for this
/// transaction, with their body sizes: the claim cuts the batch at its byte bound before it
/// takes them.
///
/// A paused queue's jobs are passed over (`queues.rs`); they keep their places,
/// and a claim finds them again once the queue resumes (within a second: a claim looks
/// from the start of the queue once a second, `pick.rs`).
pub(super) const PICK: &str = "SELECT id, octet_length(body), ready_seq FROM jobd_jobs j
     WHERE state = 'queued' AND lease_owner IS NULL AND ready_seq >= $2
         AND NOT EXISTS (SELECT 1 FROM jobd_queue_states q WHERE q.name = j.queue AND q.paused)
     ORDER BY ready_seq LIMIT $1 FOR UPDATE OF j SKIP LOCKED";

/// [`PICK`] of the jobs before `$2` (the start of the band of priority that the claim's
/// floor is in): every job of a higher priority, from the start of the queue.
pub(super) const PICK_HIGHER_PRIORITIES: &str = "SELECT id, octet_length(body), ready_seq FROM jobd_jobs j
     WHERE state = 'queued' AND lease_owner IS NULL AND ready_seq < $2
         AND NOT EXISTS (SELECT 1 FROM jobd_queue_states q WHERE q.name = j.queue AND q.paused)
     ORDER BY ready_seq LIMIT $1 FOR UPDATE OF j SKIP LOCKED";

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

/// Where a claim looks in the ready index: every job before the first value (the bands of
/// higher priority than the last claim's head, [`PICK_HIGHER_PRIORITIES`]; 0 for none), and
/// from the second on ([`PICK`]): [`pick_floor`] with the claims' slack and period, kept
/// within the head's band, so that a band's dead entries are walked only from a slack
/// behind its head. A job of the head's band put back further behind than that is found
/// by the pick from the start, once a second.
pub(super) fn claim_range(queue_head: i64, last_full_pick: &mut Option<std::time::Instant>) -> (i64, i64) {
    let floor = pick_floor(queue_head, last_full_pick, PICK_SLACK, FULL_PICK_EVERY);
    if floor == 0 {
        return (0, 0);
    }
    let head_band_start = queue_head - queue_head.rem_euclid(crate::queue::columns::PRIORITY_BAND);
    (head_band_start, floor.max(head_band_start))
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
