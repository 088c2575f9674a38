//! Paused queues in the SQLite backend: the stored word of operators (`queue_states`), the
//! claim's pass over a paused queue's jobs, and a resume that puts them back in line.
//!
//! Claims read queued jobs with one cursor over `ready_seq` and never write. A claim that
//! meets a job of a paused queue moves the cursor past it, as past a claimed job, and the
//! job stays `queued` in the table. The cursor at the pause is kept: on resume, the queue's
//! jobs between it and the cursor now (the ones passed over) get new `ready_seq`s behind
//! every queued job, in their old order, as jobs falling due do, and the next claim reads
//! them. Jobs claimed before the pause are in the Dispatcher's window, which holds them
//! until the resume (`actors/window.rs`); they are below the kept cursor, so a resume
//! never hands them out twice.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};

use super::SqliteBackend;
use super::codec::millis;
use crate::queue::columns::{BANDS, band_start, priority_of};
use crate::queue::{QueuesView, StorageError};

/// The claim cursors of a pause, one per priority band.
pub(super) type Cursors = [i64; BANDS];

/// The queues stored as paused, each with its kept cursors at the start of each band: after
/// a restart, claims start from the beginning, so every job of the queue counts as passed
/// over.
pub(super) fn load(connection: &Connection) -> Result<HashMap<String, Cursors>, StorageError> {
    let mut statement = connection.prepare("SELECT name FROM queue_states WHERE paused")?;
    let names = statement.query_map([], |row| row.get::<_, String>(0))?;
    let mut paused = HashMap::new();
    for name in names {
        paused.insert(name?, std::array::from_fn(band_start));
    }
    Ok(paused)
}

/// The stored states and the unfinished jobs by queue and state, each state read through
/// its partial index, so that the finished history is never walked.
pub(super) fn view(connection: &Connection, with_depths: bool) -> Result<QueuesView, StorageError> {
    let mut view = QueuesView::default();
    let mut states = connection.prepare_cached("SELECT name, paused FROM queue_states")?;
    let mut rows = states.query([])?;
    while let Some(row) = rows.next()? {
        view.paused.insert(row.get(0)?, row.get(1)?);
    }
    if !with_depths {
        return Ok(view);
    }
    let mut depths = connection.prepare_cached(
        "SELECT queue, state, COUNT(*) FROM jobs INDEXED BY jobs_ready WHERE state = 'queued' GROUP BY queue
         UNION ALL
         SELECT queue, state, COUNT(*) FROM jobs INDEXED BY jobs_waiting
             WHERE state = 'scheduled' OR state = 'failed' GROUP BY queue, state
         UNION ALL
         SELECT queue, state, COUNT(*) FROM jobs INDEXED BY jobs_running WHERE state = 'running' GROUP BY queue",
    )?;
    let mut rows = depths.query([])?;
    while let Some(row) = rows.next()? {
        let state = super::codec::state_of(&row.get::<_, String>(1)?);
        let count = row.get::<_, i64>(2)?.unsigned_abs();
        view.depths.entry(row.get(0)?).or_default().insert(state, count);
    }
    Ok(view)
}

impl SqliteBackend {
    /// See [`crate::queue::JobWriter::set_queue_paused`].
    pub(super) fn write_queue_paused(
        &mut self,
        name: &str,
        paused: bool,
        if_unset: bool,
        now: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        let insert = if if_unset { "INSERT OR IGNORE" } else { "INSERT OR REPLACE" };
        let written = self.connection.execute(
            &format!("{insert} INTO queue_states (name, paused, changed_at) VALUES (?1, ?2, ?3)"),
            params![name, paused, millis(now)],
        )?;
        if written == 0 || paused == self.paused.contains_key(name) {
            return Ok(());
        }
        if self.paused_at_begin.is_none() {
            self.paused_at_begin = Some(self.paused.clone());
        }
        if paused {
            self.paused.insert(name.to_owned(), self.books.claimed_up_to);
            return Ok(());
        }
        let Some(passed_from) = self.paused.remove(name) else { return Ok(()) };
        // The jobs passed over, band by band in their order, each given the next place in
        // line of its band.
        for (band, from) in passed_from.into_iter().enumerate() {
            let passed_over: Vec<(i64, i64)> = {
                let mut statement = self.connection.prepare_cached(
                    "SELECT seq, priority FROM jobs INDEXED BY jobs_ready
                     WHERE state = 'queued' AND ready_seq > ?1 AND ready_seq <= ?2 AND queue = ?3
                     ORDER BY ready_seq",
                )?;
                let to = self.books.claimed_up_to[band];
                let rows = statement.query_map(params![from, to, name], |row| Ok((row.get(0)?, row.get(1)?)))?;
                rows.collect::<Result<_, _>>()?
            };
            let mut renumber = self.connection.prepare_cached("UPDATE jobs SET ready_seq = ?2 WHERE seq = ?1")?;
            for (seq, priority) in passed_over {
                let ready_seq = self.books.take_ready_seq(priority_of(priority));
                renumber.execute(params![seq, ready_seq])?;
            }
        }
        Ok(())
    }
}
