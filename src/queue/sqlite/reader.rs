//! Reading the SQLite queue: records, listings and the depth, which comes from the counts
//! kept in memory. Records and listings are read on a read-only connection of their own
//! too ([`SqliteReader`], the read lane), each read bounded in time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags, OptionalExtension as _, params};

use super::SqliteBackend;
use super::codec::{from_millis, record_from_row};
use super::sql::RECORD_COLUMNS;
use crate::job::{JobId, JobRecord, JobState};
use crate::queue::{Cursor, JobPage, JobReader, ListFilter, QueueDepth, RecordReader, StorageError};

/// The longest one read of the read lane may run before SQLite interrupts it: a listing
/// that walks a large table answers 503 rather than hold the lane for every other read.
const READ_DEADLINE: Duration = Duration::from_secs(5);

/// A read-only connection to the queue's file, for the read lane.
pub(super) struct SqliteReader {
    connection: Connection,
    /// When the running read must stop, in nanoseconds after `origin`; 0 when none runs.
    deadline: Arc<AtomicU64>,
    origin: Instant,
}

impl SqliteReader {
    pub(super) fn open(path: &std::path::Path) -> Result<Self, StorageError> {
        let mut connection = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
        )?;
        connection.pragma_update(None, "busy_timeout", 5_000)?;
        connection.set_prepared_statement_cache_capacity(16);
        let deadline = Arc::new(AtomicU64::new(0));
        let origin = Instant::now();
        let watched = deadline.clone();
        // Looked at every thousand virtual-machine steps: true interrupts the statement.
        connection.progress_handler(
            1_000,
            Some(move || {
                let until = watched.load(Ordering::Relaxed);
                until != 0 && u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX) > until
            }),
        )?;
        Ok(SqliteReader { connection, deadline, origin })
    }

    /// Runs `read` under [`READ_DEADLINE`].
    fn bounded<T>(&mut self, read: impl FnOnce(&Connection) -> Result<T, StorageError>) -> Result<T, StorageError> {
        let until = self.origin.elapsed() + READ_DEADLINE;
        self.deadline.store(u64::try_from(until.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        let result = read(&self.connection);
        self.deadline.store(0, Ordering::Relaxed);
        result.map_err(|error| {
            if error.message().contains("interrupted") {
                StorageError::new(format!(
                    "the read took longer than {} s and was stopped; narrow the filter",
                    READ_DEADLINE.as_secs()
                ))
            } else {
                error
            }
        })
    }
}

impl RecordReader for SqliteReader {
    fn get(&mut self, id: JobId, with_payload: bool) -> Result<Option<JobRecord>, StorageError> {
        self.bounded(|connection| get_record(connection, id, with_payload))
    }

    fn list(&mut self, filter: &ListFilter, before: Option<Cursor>, limit: usize) -> Result<JobPage, StorageError> {
        self.bounded(|connection| list_records(connection, filter, before, limit))
    }

    fn queues(&mut self, with_depths: bool) -> Result<crate::queue::QueuesView, StorageError> {
        self.bounded(|connection| super::paused::view(connection, with_depths))
    }
}

/// A page of a listing; see [`JobReader::list`].
fn list_records(
    connection: &Connection,
    filter: &ListFilter,
    before: Option<Cursor>,
    limit: usize,
) -> Result<JobPage, StorageError> {
    let before = Cursor::seq_before(before)?;
    let sql = listing_sql(filter.state, filter.submitted_by.is_some(), filter.kind.is_some());
    let mut statement = connection.prepare_cached(sql)?;
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

/// The listing statement for a filter (`?1` state, `?2` the cursor, `?3` rows, `?4` tenant,
/// `?5` kind; an absent filter is NULL), newest first. Every filter has an index, named
/// (`INDEXED BY`) so that the planner cannot walk the table instead: a rare state's own
/// partial index, else the kind's, else the tenant's. Only `queued` and `succeeded`
/// alone, which most jobs match, walk the table from the newest job. The kind and the
/// tenant never change after insert, so their indexes cost a write at insert and delete
/// only.
#[doc(hidden)]
pub fn listing_sql(state: Option<JobState>, by_tenant: bool, by_kind: bool) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    crate::queue::columns::listing_statement(&SQL, (state, by_tenant, by_kind), |state, by_tenant, by_kind| {
        let (index, condition) = match state {
            Some(JobState::Dead) => ("jobs_dead", "state = 'dead'"),
            Some(JobState::Running) => ("jobs_running", "state = 'running'"),
            Some(JobState::Cancelled) => ("jobs_cancelled", "state = 'cancelled'"),
            _ if by_kind => ("jobs_kind", "kind = ?5"),
            _ if by_tenant => ("jobs_tenant", "submitted_by = ?4 AND submitted_by <> ''"),
            Some(JobState::Scheduled | JobState::Failed) => {
                ("jobs_waiting", "(state = 'scheduled' OR state = 'failed')")
            }
            _ => ("", "1"),
        };
        let indexed_by = if index.is_empty() { String::new() } else { format!(" INDEXED BY {index}") };
        format!(
            "SELECT {RECORD_COLUMNS} FROM jobs{indexed_by} WHERE {condition} AND (?1 IS NULL OR state = ?1)
                 AND seq < ?2 AND (?4 IS NULL OR submitted_by = ?4) AND (?5 IS NULL OR kind = ?5)
                 ORDER BY seq DESC LIMIT ?3"
        )
    })
}

/// One job's record; see [`JobReader::get`].
fn get_record(connection: &Connection, id: JobId, with_payload: bool) -> Result<Option<JobRecord>, StorageError> {
    let sql = format!("SELECT {RECORD_COLUMNS}, CASE WHEN ?2 THEN body END AS body FROM jobs WHERE id = ?1");
    let mut statement = connection.prepare_cached(&sql)?;
    let record = statement
        .query_row(params![id.to_bytes().as_slice(), with_payload], |row| record_from_row(row, with_payload))
        .optional()?;
    Ok(record)
}

impl JobReader for SqliteBackend {
    fn list(&mut self, filter: &ListFilter, before: Option<Cursor>, limit: usize) -> Result<JobPage, StorageError> {
        list_records(&self.connection, filter, before, limit)
    }

    fn get(&mut self, id: JobId, with_payload: bool) -> Result<Option<JobRecord>, StorageError> {
        get_record(&self.connection, id, with_payload)
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

    fn queues(&mut self, with_depths: bool) -> Result<crate::queue::QueuesView, StorageError> {
        super::paused::view(&self.connection, with_depths)
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
