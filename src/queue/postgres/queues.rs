//! Named queues in PostgreSQL: the stored word of operators (`jobd_queue_states`), which
//! every node's claim reads (`writer.rs`, `PICK`), and the view of each queue's state and
//! depth.

use crate::queue::columns::state_of;
use crate::queue::{QueuesView, StorageError};

/// Pauses or resumes a queue for every node (`$2`).
const SET_QUEUE_PAUSED: &str = "INSERT INTO jobd_queue_states (name, paused, changed_at) VALUES ($1, $2, now())
     ON CONFLICT (name) DO UPDATE SET paused = EXCLUDED.paused, changed_at = EXCLUDED.changed_at";
/// The same where no word is stored yet: a queue the configuration starts paused.
const SET_QUEUE_PAUSED_IF_UNSET: &str =
    "INSERT INTO jobd_queue_states (name, paused, changed_at) VALUES ($1, $2, now()) ON CONFLICT (name) DO NOTHING";

/// The unfinished jobs by queue and state. Each part matches a partial index (the unleased
/// queued jobs, the leased ones, the rare states), so the finished history is never walked.
const DEPTHS: &str = "SELECT queue, state, count(*) FROM (
         SELECT queue, state FROM jobd_jobs WHERE state = 'queued' AND lease_owner IS NULL
         UNION ALL
         SELECT queue, state FROM jobd_jobs WHERE lease_owner IS NOT NULL AND state = 'queued'
         UNION ALL
         SELECT queue, state FROM jobd_jobs WHERE state IN ('running', 'failed', 'scheduled')
     ) unfinished GROUP BY queue, state";

/// See [`crate::queue::JobWriter::set_queue_paused`]: a resumed queue's jobs kept their
/// places, and the next claim that looks from the start of the queue finds them.
pub(super) fn set_paused(
    connection: &mut super::connection::Connection,
    name: &str,
    paused: bool,
    if_unset: bool,
) -> Result<(), StorageError> {
    let sql = if if_unset { SET_QUEUE_PAUSED_IF_UNSET } else { SET_QUEUE_PAUSED };
    connection.execute(sql, &[&name, &paused])?;
    Ok(())
}

/// See [`crate::queue::JobReader::queues`].
pub(super) fn view(
    connection: &mut super::connection::Connection,
    with_depths: bool,
) -> Result<QueuesView, StorageError> {
    let mut view = QueuesView::default();
    for row in connection.query("SELECT name, paused FROM jobd_queue_states", &[])? {
        view.paused.insert(row.get(0), row.get(1));
    }
    if !with_depths {
        return Ok(view);
    }
    for row in connection.query(DEPTHS, &[])? {
        let count = u64::try_from(row.get::<_, i64>(2)).unwrap_or(0);
        view.depths.entry(row.get(0)).or_default().insert(state_of(row.get(1)), count);
    }
    Ok(view)
}
