//! Reading the SQLite queue: records, listings and the depth, which comes from the counts
//! kept in memory.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension as _, params};

use super::SqliteBackend;
use super::codec::{from_millis, record_from_row};
use super::sql::RECORD_COLUMNS;
use crate::job::{JobId, JobRecord, JobState};
use crate::queue::{Cursor, JobPage, JobReader, ListFilter, QueueDepth, StorageError};

impl JobReader for SqliteBackend {
    fn list(&mut self, filter: &ListFilter, before: Option<Cursor>, limit: usize) -> Result<JobPage, StorageError> {
        let before = Cursor::seq_before(before)?;
        // Dead jobs, the listing operators look for among many finished ones, have an
        // index; other listings walk the table newest first.
        let sql = match filter.state {
            Some(JobState::Dead) => format!(
                "SELECT {RECORD_COLUMNS} FROM jobs INDEXED BY jobs_dead
                 WHERE state = 'dead' AND state = ?1 AND seq < ?2 AND (?4 IS NULL OR submitted_by = ?4)
                 AND (?5 IS NULL OR kind = ?5) ORDER BY seq DESC LIMIT ?3"
            ),
            _ => format!(
                "SELECT {RECORD_COLUMNS} FROM jobs WHERE (?1 IS NULL OR state = ?1) AND seq < ?2
                 AND (?4 IS NULL OR submitted_by = ?4) AND (?5 IS NULL OR kind = ?5) ORDER BY seq DESC LIMIT ?3"
            ),
        };
        let mut statement = self.connection.prepare_cached(&sql)?;
        let mut rows = statement.query(params![
            filter.state.map(JobState::name),
            before,
            limit as i64,
            filter.submitted_by.as_deref(),
            filter.kind.as_deref()
        ])?;
        let mut page = JobPage::default();
        let mut last_seq = None;
        while let Some(row) = rows.next()? {
            last_seq = Some(row.get::<_, i64>("seq")?);
            page.records.push(record_from_row(row, false)?);
        }
        page.next_before = if page.records.len() == limit { last_seq.map(Cursor::Seq) } else { None };
        Ok(page)
    }

    fn get(&mut self, id: JobId, with_payload: bool) -> Result<Option<JobRecord>, StorageError> {
        let sql = format!("SELECT {RECORD_COLUMNS}, CASE WHEN ?2 THEN body END AS body FROM jobs WHERE id = ?1");
        let mut statement = self.connection.prepare_cached(&sql)?;
        let record = statement
            .query_row(params![id.to_bytes().as_slice(), with_payload], |row| record_from_row(row, with_payload))
            .optional()?;
        Ok(record)
    }

    fn depth(&mut self) -> Result<QueueDepth, StorageError> {
        let books = &self.books;
        Ok(QueueDepth {
            queued: books.queued,
            scheduled: books.scheduled,
            running: books.running,
            failed: books.failed,
            dead: books.dead,
            capacity: self.capacity,
        })
    }

    fn oldest_queued(&mut self) -> Result<Option<DateTime<Utc>>, StorageError> {
        let mut statement = self.connection.prepare_cached(
            "SELECT COALESCE(run_at, created_at) FROM jobs INDEXED BY jobs_ready WHERE state = 'queued' ORDER BY ready_seq LIMIT 1",
        )?;
        let due: Option<i64> = statement.query_row([], |row| row.get(0)).optional()?;
        Ok(due.map(from_millis))
    }

    /// Full when less than a page-sized row still fits under the limit.
    fn is_full(&mut self) -> Result<bool, StorageError> {
        let Some(limit) = self.size_limit else { return Ok(false) };
        Ok(self.used_bytes()? + self.page_size > limit)
    }
}
