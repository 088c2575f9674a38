//! The durable backend, the default: `<data_dir>/queue.db` in SQLite, WAL mode, one
//! transaction per batch of commands. A job it accepted survives `kill -9`.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OptionalExtension as _, Row, params};
use serde_json::{Value, json, value::RawValue};

use super::{
    Admitted, ControlError, JobPage, ListFilter, QueueBackend, QueueDepth, ReadyBatch, Refusal, StorageError, Syncer,
    admit, claim_has_room,
};
use crate::job::{
    FinishedJob, Job, JobId, JobKind, JobRecord, JobResult, JobState, Outcome, StartedJob, UploadBody, UploadSpec,
};
use crate::keys::ObjectKey;

mod fresh;
mod wal;

#[cfg(test)]
use fresh::FRESH_MAX_JOBS;
use fresh::FreshJobs;
use wal::{Checkpointer, WalFile, WalSyncer};

/// How SQLite syncs commits to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync at every commit that has callers to answer, before they are answered: a 202
    /// survives power loss. The default.
    Full,
    /// fsync at checkpoints only: a 202 survives a crash of jobd, but the last commits
    /// before a power loss or kernel crash may be lost. Faster on slow disks.
    Normal,
}

impl From<rusqlite::Error> for StorageError {
    fn from(error: rusqlite::Error) -> Self {
        StorageError::new(error.to_string())
    }
}

/// The schema's version, in `PRAGMA user_version`; a file of another version is refused
/// rather than misread.
const SCHEMA_VERSION: i64 = 3;

/// The schema.
///
/// `seq` is the submission order and AUTOINCREMENT, so it only ever grows. `ready_seq` is
/// the order among queued jobs: new jobs get the next one, and so do scheduled and failed
/// jobs when they fall due, so the claim cursor over `ready_seq` never misses a job.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id BLOB NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    ready_seq INTEGER,
    run_at INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    timeout_ms INTEGER,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    last_error TEXT,
    result TEXT,
    idempotency_key TEXT,
    submitted_by TEXT NOT NULL DEFAULT '',
    body BLOB,
    body_is_json INTEGER NOT NULL DEFAULT 0,
    object_key TEXT,
    content_type TEXT,
    arg TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs(submitted_by, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs(ready_seq) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS jobs_waiting ON jobs(run_at, seq) WHERE state = 'scheduled' OR state = 'failed';
CREATE INDEX IF NOT EXISTS jobs_done ON jobs(finished_at) WHERE state = 'succeeded' OR state = 'dead' OR state = 'cancelled';
CREATE INDEX IF NOT EXISTS jobs_running ON jobs(seq) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS jobs_dead ON jobs(seq) WHERE state = 'dead';
CREATE TABLE IF NOT EXISTS probe (value BLOB);
DROP INDEX IF EXISTS jobs_state;
DROP INDEX IF EXISTS jobs_due;
DROP INDEX IF EXISTS jobs_finished;
DROP INDEX IF EXISTS jobs_idempotency_key;
";

/// Brings a version 2 file to version 3: jobs record which token submitted them (`''`
/// for none, so that the unique index over it and the key treats "no token" as one
/// submitter), and idempotency keys are unique per submitter rather than globally. Run
/// before [`SCHEMA`], which then replaces the index.
const MIGRATE_2_TO_3: &str = "ALTER TABLE jobs ADD COLUMN submitted_by TEXT NOT NULL DEFAULT '';";

// Every index but the unique ones is partial, over the few rows in one state or a few:
// per job, only the indexes of the states it passes through are written (a job that
// starts and finishes within one progress flush goes from `queued` straight to its end).
// Recovery and the counts at open read `jobs_ready`, `jobs_waiting`, `jobs_running` and
// `jobs_dead`, so opening costs time in the unfinished and dead jobs, not in the finished
// history that retention keeps; listings of dead jobs use `jobs_dead`.
//
// Partial-index conditions are written with `=` and `OR`, never `IN (...)`: SQLite checks
// them for every row it inserts or updates, and an `IN` list makes it build and free a
// temporary table each time, which profiling showed as about a tenth of the queue thread's
// time per insert. Version 2 files had `IN` forms under other names; opening drops them.

// The hot queries name their index (`INDEXED BY`). Version 2 files also had
// `jobs_state(state, seq)`: the planner picked it for "queued, in ready order" and scanned
// and sorted every queued job on each claim, and every insert and state change paid to
// keep it, while listings walk `seq` backwards anyway. Opening drops it; the file format
// is otherwise the same, so the version stays.

/// SQL NULL, and borrowed and integer parameters, for multi-row statements.
const NULL: ToSqlOutput<'static> = ToSqlOutput::Borrowed(ValueRef::Null);

fn blob(bytes: &[u8]) -> ToSqlOutput<'_> {
    ToSqlOutput::Borrowed(ValueRef::Blob(bytes))
}

fn text(text: &str) -> ToSqlOutput<'_> {
    ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes()))
}

fn integer(value: Option<i64>) -> ToSqlOutput<'static> {
    value.map_or(NULL, |value| ToSqlOutput::Borrowed(ValueRef::Integer(value)))
}

/// The columns [`SqliteBackend::insert_all`] writes, in order.
const INSERT_COLUMN_NAMES: &str = "id, kind, state, ready_seq, run_at, max_attempts, timeout_ms, created_at,
     idempotency_key, submitted_by, body, body_is_json, object_key, content_type, arg";
const INSERT_COLUMNS: usize = 15;
/// The row counts of the multi-row statements, largest first: any number of rows is
/// written with at most one statement of each size below the largest. 64 rows of 15
/// values stay far below SQLite's limit of 32,766 bound values.
const STATEMENT_ROWS: [usize; 7] = [64, 32, 16, 8, 4, 2, 1];

/// The rows the next multi-row statement writes, of `remaining`.
fn statement_rows(remaining: usize) -> usize {
    STATEMENT_ROWS.iter().copied().find(|&rows| rows <= remaining).unwrap_or(1)
}

/// `(?, ?, ...)` with `columns` placeholders, `rows` times.
fn placeholder_rows(rows: usize, columns: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    vec![row; rows].join(", ")
}

/// One statement per size of [`STATEMENT_ROWS`], built once.
fn sized_statements(sql: impl Fn(usize) -> String) -> Vec<String> {
    STATEMENT_ROWS.iter().map(|&rows| sql(rows)).collect()
}

fn size_index(rows: usize) -> usize {
    STATEMENT_ROWS.iter().position(|&size| size == rows).unwrap_or(STATEMENT_ROWS.len() - 1)
}

/// The SQL of an INSERT of `rows` rows.
///
/// The hot writes (this and [`finish_sql`]) run `OR ROLLBACK`: a failing row ends the whole
/// transaction, which the queue thread rolls back on any error anyway, so SQLite keeps no
/// statement journal (a copy of every page a statement touches, in case that statement
/// alone must be undone). The journal was a tenth of the queue thread under batch ingest.
fn insert_sql(rows: usize) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let statements = SQL.get_or_init(|| {
        sized_statements(|rows| {
            format!(
                "INSERT OR ROLLBACK INTO jobs ({INSERT_COLUMN_NAMES}) VALUES {}",
                placeholder_rows(rows, INSERT_COLUMNS)
            )
        })
    });
    &statements[size_index(rows)]
}

/// The SQL that records the same end of attempts for `ids` jobs in state `from` (queued
/// or running): the shared values first, then the ids.
///
/// The unique index on `id` is named: the planner might otherwise walk a partial index of
/// every queued job (a unit test checks the plan). The state a job leaves is written into
/// the SQL rather than bound: SQLite plans partial indexes against bound values, so a
/// bound state made it re-prepare the statement on every execution.
fn finish_sql(from: JobState, ids: usize) -> &'static str {
    static SQL: std::sync::OnceLock<[Vec<String>; 2]> = std::sync::OnceLock::new();
    let statements = SQL.get_or_init(|| {
        [JobState::Queued, JobState::Running].map(|from| {
            sized_statements(|ids| {
                format!(
                    "UPDATE OR ROLLBACK jobs INDEXED BY sqlite_autoindex_jobs_1 SET state = ?, started_at = COALESCE(?, started_at),
                         attempts = attempts + ?, finished_at = ?, last_error = COALESCE(?, last_error), result = ?,
                         run_at = COALESCE(?, run_at)
                     WHERE state = '{}' AND id IN ({})",
                    from.name(),
                    vec!["?"; ids].join(", ")
                )
            })
        })
    });
    &statements[usize::from(from != JobState::Queued)][size_index(ids)]
}

/// Due scheduled and failed jobs, earliest first.
///
/// The hot queries have no `LIMIT ?`: SQLite plans with a bound LIMIT's value, so a bound
/// LIMIT made it re-prepare the statement on every run (a tenth of the queue thread's time
/// in profiles of single-job submissions). They walk their index in order, and the caller
/// stops reading after as many rows as it wants.
const PROMOTE_DUE: &str = "SELECT seq, state FROM jobs INDEXED BY jobs_waiting
     WHERE (state = 'scheduled' OR state = 'failed') AND run_at <= ?1 ORDER BY run_at, seq";
/// When the earliest scheduled or failed job falls due.
const NEXT_DUE: &str =
    "SELECT MIN(run_at) FROM jobs INDEXED BY jobs_waiting WHERE state = 'scheduled' OR state = 'failed'";
const RECORD_STARTED: &str =
    "UPDATE jobs SET state = 'running', started_at = ?2, attempts = attempts + 1 WHERE id = ?1 AND state = 'queued'";

/// The columns a record is read from, for `get` and `list`.
const RECORD_COLUMNS: &str = "seq, id, kind, state, attempts, max_attempts, timeout_ms, created_at, run_at, started_at,
     finished_at, last_error, result, idempotency_key, submitted_by, body_is_json";

/// Counts kept in memory so capacity checks and depth cost no query; restored on rollback.
#[derive(Debug, Clone, Copy, Default)]
struct Bookkeeping {
    queued: usize,
    scheduled: usize,
    running: usize,
    failed: usize,
    dead: usize,
    /// The last `ready_seq` handed out; the next one is one more.
    last_ready_seq: i64,
    /// The highest `ready_seq` claimed by this process.
    claimed_up_to: i64,
}

impl Bookkeeping {
    fn unfinished(&self) -> usize {
        self.queued + self.scheduled + self.running + self.failed
    }

    fn count(&mut self, state: JobState) -> Option<&mut usize> {
        match state {
            JobState::Queued => Some(&mut self.queued),
            JobState::Scheduled => Some(&mut self.scheduled),
            JobState::Running => Some(&mut self.running),
            JobState::Failed => Some(&mut self.failed),
            JobState::Dead => Some(&mut self.dead),
            JobState::Succeeded | JobState::Cancelled => None,
        }
    }

    fn moved(&mut self, from: JobState, to: JobState, count: usize) {
        if let Some(counter) = self.count(from) {
            *counter = counter.saturating_sub(count);
        }
        if let Some(counter) = self.count(to) {
            *counter += count;
        }
    }

    fn take_ready_seq(&mut self) -> i64 {
        self.last_ready_seq += 1;
        self.last_ready_seq
    }
}

/// The SQLite queue.
pub struct SqliteBackend {
    connection: Connection,
    capacity: usize,
    /// `queue_db_max_bytes`: submissions that would take the database past it are refused.
    size_limit: Option<u64>,
    page_size: u64,
    books: Bookkeeping,
    /// The bookkeeping at `begin`, restored by `rollback`.
    books_at_begin: Bookkeeping,
    /// Queued jobs this process inserted, which the next claims take from memory.
    fresh: FreshJobs,
    /// With [`Synchronous::Full`], the WAL file that the [`Syncer`] fsyncs, until
    /// [`QueueBackend::syncer`] hands it over; until then SQLite syncs in each commit.
    wal: Option<WalFile>,
    /// `test_fail_sync_after`: the syncer's fsyncs fail after this many.
    fail_syncs_after: Option<u64>,
    /// See [`QueueBackend::cancel_hold`]; only for tests.
    cancel_hold: Option<std::time::Duration>,
    /// See [`SqliteBackend::delay_syncs_by`]; only for tests.
    sync_delay: Option<std::time::Duration>,
    /// Declared after `connection`, so it is dropped (and its thread joined) after it.
    checkpointer: Checkpointer,
}

/// What opening found, for the start-up log.
#[derive(Debug, Clone, Copy)]
pub struct Recovery {
    /// Jobs a previous process left running, now queued again.
    pub requeued: usize,
    /// Jobs a previous process left running in their last attempt, now dead: the attempt
    /// counted when it started, and a job whose body takes the process down must not
    /// crash-loop the daemon.
    pub buried: usize,
    /// Jobs waiting to run now, in submission order.
    pub queued: usize,
    /// Jobs waiting for a later time (scheduled, or failed and waiting for a retry).
    pub delayed: usize,
}

fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

fn from_millis(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn state_of(name: &str) -> JobState {
    // Only this module writes the column, with `JobState::name`; an unknown value would
    // mean a newer jobd wrote the file, which the schema version refuses first.
    JobState::from_name(name).unwrap_or(JobState::Dead)
}

impl SqliteBackend {
    fn begin_with(&mut self, begin: &str) -> Result<(), StorageError> {
        self.books_at_begin = self.books;
        // Cached statements: parsing BEGIN and COMMIT anew showed up in profiles of the
        // queue thread, which runs both for every transaction.
        self.connection.prepare_cached(begin)?.execute([])?;
        Ok(())
    }

    /// Opens (or creates) the queue at `path` and recovers what a previous process left:
    /// jobs left running go back to the queue, keeping the attempt they used, ahead of
    /// everything queued after them.
    pub fn open(
        path: &Path,
        capacity: usize,
        synchronous: Synchronous,
        max_bytes: Option<u64>,
    ) -> Result<(Self, Recovery), StorageError> {
        let connection = Connection::open(path)?;
        let mode: String = connection.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StorageError::new(format!("cannot switch {} to WAL mode (got {mode})", path.display())));
        }
        // With `Full`, SQLite fsyncs in each commit until the queue thread takes the
        // syncer (see `WalFile`); recovery's writes below are durable either way.
        let sync = match synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        connection.pragma_update(None, "synchronous", sync)?;
        connection.pragma_update(None, "busy_timeout", 5_000)?;
        let version: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        let has_jobs: bool = connection.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'jobs')",
            [],
            |row| row.get(0),
        )?;
        if has_jobs && version == 2 {
            connection.execute_batch(MIGRATE_2_TO_3)?;
            tracing::info!(path = %path.display(), "queue.db upgraded from schema version 2 to 3");
        } else if has_jobs && version != SCHEMA_VERSION {
            return Err(StorageError::new(format!(
                "{} has schema version {version}; this jobd reads version {SCHEMA_VERSION}",
                path.display()
            )));
        }
        connection.execute_batch(SCHEMA)?;
        connection.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        let page_size = connection.query_row("PRAGMA page_size", [], |row| row.get::<_, i64>(0))?.unsigned_abs();
        if let Some(bytes) = max_bytes {
            // Submissions stop at `bytes`; the hard limit above it leaves room for what
            // must still be written to drain the queue (starts, outcomes, results), so a
            // full queue can always empty itself and recover.
            let hard_limit = bytes + (bytes / 4).max(1 << 20);
            let pages = hard_limit / page_size;
            let _: i64 = connection.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |row| row.get(0))?;
        }
        connection.set_prepared_statement_cache_capacity(64);
        let mut connection = connection;
        let checkpointer = Checkpointer::start(path, &mut connection)?;
        // A running job's attempt counted when its start was recorded, before its body ran
        // (the Dispatcher waits for that); one whose attempts are used up dies here rather
        // than run again, so a job that takes the process down (an OOM, an abort in a C
        // library) ends dead after its attempts instead of crash-looping the daemon.
        let buried = connection.execute(
            "UPDATE jobs INDEXED BY jobs_running SET state = 'dead', finished_at = ?1,
                 last_error = 'the process died during attempt ' || attempts || ' of ' || max_attempts
                     || ' (killed, crashed or out of memory); no attempts are left'
             WHERE state = 'running' AND attempts >= max_attempts",
            params![millis(Utc::now())],
        )?;
        let requeued = connection
            .execute("UPDATE jobs INDEXED BY jobs_running SET state = 'queued' WHERE state = 'running'", [])?;
        let mut books = Bookkeeping::default();
        let count = |sql: &str| -> Result<usize, rusqlite::Error> {
            connection.query_row(sql, [], |row| row.get::<_, i64>(0)).map(i64::unsigned_abs).map(|n| n as usize)
        };
        books.queued = count("SELECT COUNT(*) FROM jobs INDEXED BY jobs_ready WHERE state = 'queued'")?;
        books.dead = count("SELECT COUNT(*) FROM jobs INDEXED BY jobs_dead WHERE state = 'dead'")?;
        {
            let mut statement = connection.prepare(
                "SELECT state, COUNT(*) FROM jobs INDEXED BY jobs_waiting
                 WHERE state = 'scheduled' OR state = 'failed' GROUP BY state",
            )?;
            let mut rows = statement.query([])?;
            while let Some(row) = rows.next()? {
                if let Some(counter) = books.count(state_of(&row.get::<_, String>(0)?)) {
                    *counter = row.get::<_, i64>(1)?.unsigned_abs() as usize;
                }
            }
        }
        // New jobs queue behind every queued one, including those just put back. Finished
        // jobs may hold higher values, which is harmless: the claim cursor reads queued rows.
        books.last_ready_seq = connection.query_row(
            "SELECT COALESCE(MAX(ready_seq), 0) FROM jobs INDEXED BY jobs_ready WHERE state = 'queued'",
            [],
            |r| r.get(0),
        )?;
        let recovery = Recovery { requeued, buried, queued: books.queued, delayed: books.scheduled + books.failed };
        let backend = Self {
            connection,
            capacity,
            size_limit: max_bytes,
            page_size,
            books,
            books_at_begin: books,
            fresh: FreshJobs::default(),
            wal: (synchronous == Synchronous::Full).then(|| WalFile::new(path)),
            fail_syncs_after: None,
            cancel_hold: None,
            sync_delay: None,
            checkpointer,
        };
        Ok((backend, recovery))
    }

    /// Makes every fsync of the syncer fail after `count` of them, as a dying disk would
    /// (`test_fail_sync_after`), so that tests can watch what jobd does then.
    pub fn fail_syncs_after(&mut self, count: u64) {
        self.fail_syncs_after = Some(count);
    }

    /// Makes every fsync of the syncer wait this long first, as a stalled disk would
    /// (`test_sync_delay_ms`), so that tests can hold commits' answers back.
    pub fn delay_syncs_by(&mut self, delay: std::time::Duration) {
        self.sync_delay = Some(delay);
    }

    /// Makes the queue thread wait this long when a cancel arrives (`test_cancel_hold_ms`),
    /// so that tests can put a fetch in the same batch as a cancel.
    pub fn hold_cancels_for(&mut self, hold: std::time::Duration) {
        self.cancel_hold = Some(hold);
    }

    /// Inserts new jobs, as few statements as possible: a statement of many rows pays the
    /// per-statement work (stepping, resetting, reading and writing the AUTOINCREMENT
    /// counter) once for all of them, which profiling showed to be a good part of an
    /// insert's cost.
    fn insert_all(&mut self, jobs: &[Job], now: DateTime<Utc>) -> Result<Vec<Option<i64>>, StorageError> {
        let mut ready_seqs = Vec::with_capacity(jobs.len());
        let mut rest = jobs;
        while !rest.is_empty() {
            let rows = statement_rows(rest.len());
            let (chunk, after) = rest.split_at(rows);
            let mut values: Vec<ToSqlOutput<'_>> = Vec::with_capacity(rows * INSERT_COLUMNS);
            for job in chunk {
                ready_seqs.push(self.push_insert_values(job, now, &mut values));
            }
            self.connection.prepare_cached(insert_sql(rows))?.execute(rusqlite::params_from_iter(values))?;
            rest = after;
        }
        Ok(ready_seqs)
    }

    /// Appends one job's row to `values` in [`INSERT_COLUMNS`] order and counts it.
    /// Returns the job's `ready_seq` if it is queued now.
    /// Values borrow from the job where they can: copying every body into the statement's
    /// parameters showed in profiles of batch ingest.
    fn push_insert_values<'a>(
        &mut self,
        job: &'a Job,
        now: DateTime<Utc>,
        values: &mut Vec<ToSqlOutput<'a>>,
    ) -> Option<i64> {
        let columns = KindColumns::of(&job.kind);
        let delayed = job.run_at.filter(|at| *at > now);
        let (state, ready_seq) = match delayed {
            Some(_) => (JobState::Scheduled, None),
            None => (JobState::Queued, Some(self.books.take_ready_seq())),
        };
        values.extend([
            blob(job.id.as_bytes()),
            text(job.kind.name()),
            text(state.name()),
            integer(ready_seq),
            integer(job.run_at.map(millis)),
            integer(Some(i64::from(job.max_attempts))),
            integer(job.timeout_ms.map(|ms| ms.min(i64::MAX as u64) as i64)),
            integer(Some(millis(job.created_at))),
            job.idempotency_key.as_deref().map_or(NULL, text),
            text(job.submitted_by.as_deref().unwrap_or_default()),
            columns.body.map_or(NULL, blob),
            integer(Some(i64::from(columns.body_is_json))),
            columns.object_key.map_or(NULL, text),
            columns.content_type.map_or(NULL, text),
            columns.arg.map_or(NULL, |arg| ToSqlOutput::Owned(rusqlite::types::Value::Text(arg))),
        ]);
        if let Some(counter) = self.books.count(state) {
            *counter += 1;
        }
        ready_seq
    }

    fn find_by_idempotency_key(
        &self,
        submitted_by: Option<&str>,
        key: &str,
    ) -> Result<Option<(JobId, JobState)>, StorageError> {
        let mut statement = self
            .connection
            .prepare_cached("SELECT id, state FROM jobs WHERE submitted_by = ?1 AND idempotency_key = ?2")?;
        let found = statement
            .query_row(params![submitted_by.unwrap_or_default(), key], |row| {
                Ok((row.get::<_, [u8; 16]>(0)?, row.get::<_, String>(1)?))
            })
            .optional()?;
        Ok(found.map(|(id, state)| (JobId::from_bytes(id), state_of(&state))))
    }

    fn state_of_job(&self, id: JobId) -> Result<Option<JobState>, StorageError> {
        let mut statement = self.connection.prepare_cached("SELECT state FROM jobs WHERE id = ?1")?;
        let state: Option<String> = statement.query_row([id.to_bytes().as_slice()], |row| row.get(0)).optional()?;
        Ok(state.map(|state| state_of(&state)))
    }

    /// Bytes in use: the database's pages less the free ones.
    fn used_bytes(&self) -> Result<u64, StorageError> {
        let pages: i64 = self.connection.query_row("PRAGMA page_count", [], |row| row.get(0))?;
        let free: i64 = self.connection.query_row("PRAGMA freelist_count", [], |row| row.get(0))?;
        Ok(pages.saturating_sub(free).unsigned_abs() * self.page_size)
    }

    /// Moves due scheduled and failed jobs to the queue, earliest first, at most `max`.
    fn promote_due(&mut self, max: usize, now: DateTime<Utc>) -> Result<(), StorageError> {
        let due: Vec<(i64, String)> = {
            let mut statement = self.connection.prepare_cached(PROMOTE_DUE)?;
            let rows = statement.query_map(params![millis(now)], |row| Ok((row.get(0)?, row.get(1)?)))?;
            rows.take(max).collect::<Result<_, _>>()?
        };
        for (seq, state) in due {
            let ready_seq = self.books.take_ready_seq();
            self.connection
                .prepare_cached("UPDATE jobs SET state = 'queued', ready_seq = ?2 WHERE seq = ?1")?
                .execute(params![seq, ready_seq])?;
            self.books.moved(state_of(&state), JobState::Queued, 1);
        }
        Ok(())
    }

    fn next_due(&self) -> Result<Option<DateTime<Utc>>, StorageError> {
        let mut statement = self.connection.prepare_cached(NEXT_DUE)?;
        let next: Option<i64> = statement.query_row([], |row| row.get(0))?;
        Ok(next.map(from_millis))
    }

    /// Records how attempts ended. An end with a start time also records that start: the
    /// job goes straight from `queued`, and its attempt is counted here.
    fn write_finishes<'a>(
        &mut self,
        ends: impl Iterator<Item = (&'a FinishedJob, Option<DateTime<Utc>>)>,
    ) -> Result<(), StorageError> {
        // Ends that write the same values (a burst of short jobs that started and finished
        // in the same milliseconds) are written by one statement naming all their ids. Each
        // statement's count of changed rows is exact for the bookkeeping of its group.
        let mut groups: HashMap<(JobState, Option<i64>, FinishColumns), Vec<ToSqlOutput<'a>>> = HashMap::new();
        for (end, started_at) in ends {
            let columns = FinishColumns::of(end);
            let from = if started_at.is_some() { JobState::Queued } else { JobState::Running };
            groups.entry((from, started_at.map(millis), columns)).or_default().push(blob(end.id.as_bytes()));
        }
        for ((from, started_at, columns), ids) in groups {
            let shared = [
                text(columns.state.name()),
                integer(started_at),
                integer(Some(i64::from(started_at.is_some()))),
                integer(columns.finished_at),
                columns.error.as_deref().map_or(NULL, text),
                columns.result.as_deref().map_or(NULL, text),
                integer(columns.retry_at),
            ];
            let mut changed = 0;
            let mut rest = ids.as_slice();
            while !rest.is_empty() {
                let (chunk, after) = rest.split_at(statement_rows(rest.len()));
                changed += self
                    .connection
                    .prepare_cached(finish_sql(from, chunk.len()))?
                    .execute(rusqlite::params_from_iter(shared.iter().chain(chunk)))?;
                rest = after;
            }
            self.books.moved(from, columns.state, changed);
        }
        Ok(())
    }

    /// Marks a job that cannot be decoded as dead, so one bad row cannot wedge the queue.
    fn bury_undecodable(&mut self, seq: i64, error: &str) -> Result<(), StorageError> {
        tracing::error!(seq, %error, "a stored job cannot be decoded; it is marked dead");
        self.connection.execute(
            "UPDATE jobs SET state = 'dead', last_error = ?2, finished_at = ?3 WHERE seq = ?1",
            params![seq, format!("stored job cannot be decoded: {error}"), millis(Utc::now())],
        )?;
        self.books.moved(JobState::Queued, JobState::Dead, 1);
        Ok(())
    }
}

/// How a job's kind is spread over the row's columns; [`decode_kind`] reverses it.
struct KindColumns<'a> {
    body: Option<&'a [u8]>,
    body_is_json: bool,
    object_key: Option<&'a str>,
    content_type: Option<&'a str>,
    /// The test kinds' parameters as JSON.
    arg: Option<String>,
}

impl<'a> KindColumns<'a> {
    fn of(kind: &'a JobKind) -> Self {
        let none = KindColumns { body: None, body_is_json: false, object_key: None, content_type: None, arg: None };
        match kind {
            JobKind::Upload(upload) => KindColumns {
                body: Some(upload.body.as_bytes()),
                body_is_json: matches!(upload.body, UploadBody::Json(_)),
                object_key: upload.key.as_ref().map(ObjectKey::as_str),
                content_type: upload.content_type.as_deref(),
                // Upload options beyond the columns travel in `arg`, only when given.
                arg: (upload.content_encoding.is_some() || !upload.metadata.is_empty()).then(|| {
                    let metadata: serde_json::Map<String, Value> = upload
                        .metadata
                        .iter()
                        .map(|(name, value)| (name.clone(), Value::from(value.clone())))
                        .collect();
                    json!({"content_encoding": upload.content_encoding, "metadata": metadata}).to_string()
                }),
            },
            JobKind::Noop => none,
            JobKind::Sleep { millis, blocking, in_worker } => KindColumns {
                arg: Some(json!({"ms": millis, "blocking": blocking, "in_worker": in_worker}).to_string()),
                ..none
            },
            JobKind::Fail { message, retryable } => {
                KindColumns { arg: Some(json!({"message": message, "retryable": retryable}).to_string()), ..none }
            }
            JobKind::Panic { message, in_worker } => {
                KindColumns { arg: Some(json!({"message": message, "in_worker": in_worker}).to_string()), ..none }
            }
        }
    }
}

/// The columns an attempt's end writes, shared by both ways of recording it.
#[derive(PartialEq, Eq, Hash)]
struct FinishColumns {
    state: JobState,
    /// Set only when the job will not run again.
    finished_at: Option<i64>,
    error: Option<String>,
    result: Option<String>,
    retry_at: Option<i64>,
}

impl FinishColumns {
    fn of(end: &FinishedJob) -> Self {
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

/// The claim query's columns, read by position: reading by name scans the column names
/// for every value, which showed in profiles of the queue thread.
mod claim {
    pub const SQL: &str = "SELECT seq, ready_seq, id, kind, attempts, max_attempts, timeout_ms, run_at, created_at,
             idempotency_key, body, body_is_json, object_key, content_type, arg, submitted_by
         FROM jobs INDEXED BY jobs_ready WHERE state = 'queued' AND ready_seq > ?1 ORDER BY ready_seq";
    pub const SEQ: usize = 0;
    pub const READY_SEQ: usize = 1;
    pub const ID: usize = 2;
    pub const KIND: usize = 3;
    pub const ATTEMPTS: usize = 4;
    pub const MAX_ATTEMPTS: usize = 5;
    pub const TIMEOUT_MS: usize = 6;
    pub const RUN_AT: usize = 7;
    pub const CREATED_AT: usize = 8;
    pub const IDEMPOTENCY_KEY: usize = 9;
    pub const BODY: usize = 10;
    pub const BODY_IS_JSON: usize = 11;
    pub const OBJECT_KEY: usize = 12;
    pub const CONTENT_TYPE: usize = 13;
    pub const ARG: usize = 14;
    pub const SUBMITTED_BY: usize = 15;
}

/// Rebuilds a job from a claimed row. Any column that does not decode (a bad id, a
/// negative count, an unknown kind) is an error naming it, so that one bad row is
/// dead-lettered instead of failing every fetch and stopping the whole queue.
fn decode_claimed(row: &Row<'_>) -> Result<Job, String> {
    let column = |name: &str, error: rusqlite::Error| format!("column {name}: {error}");
    let id: [u8; 16] = row.get(claim::ID).map_err(|error| column("id", error))?;
    let attempts: u32 = row.get(claim::ATTEMPTS).map_err(|error| column("attempts", error))?;
    let max_attempts: u32 = row.get(claim::MAX_ATTEMPTS).map_err(|error| column("max_attempts", error))?;
    let timeout_ms: Option<i64> = row.get(claim::TIMEOUT_MS).map_err(|error| column("timeout_ms", error))?;
    let timeout_ms = timeout_ms
        .map(|ms| u64::try_from(ms).map_err(|_| format!("column timeout_ms: {ms} is negative")))
        .transpose()?;
    Ok(Job {
        id: JobId::from_bytes(id),
        created_at: from_millis(row.get(claim::CREATED_AT).map_err(|error| column("created_at", error))?),
        attempt: attempts.saturating_add(1),
        max_attempts,
        timeout_ms,
        run_at: row.get::<_, Option<i64>>(claim::RUN_AT).map_err(|error| column("run_at", error))?.map(from_millis),
        idempotency_key: row.get(claim::IDEMPOTENCY_KEY).map_err(|error| column("idempotency_key", error))?,
        submitted_by: row
            .get::<_, String>(claim::SUBMITTED_BY)
            .map(|name| Some(name).filter(|name| !name.is_empty()))
            .map_err(|error| column("submitted_by", error))?,
        kind: decode_kind(row)?,
    })
}

/// Rebuilds a job's kind from the columns of a claimed row.
fn decode_kind(row: &Row<'_>) -> Result<JobKind, String> {
    let text = |error: rusqlite::Error| error.to_string();
    let kind: String = row.get(claim::KIND).map_err(text)?;
    let arg: Value = match row.get::<_, Option<String>>(claim::ARG).map_err(text)? {
        Some(arg) => serde_json::from_str(&arg).map_err(|error| error.to_string())?,
        None => Value::Null,
    };
    let message = || arg["message"].as_str().unwrap_or_default().to_owned();
    match kind.as_str() {
        "upload" => {
            let body: Vec<u8> = row.get::<_, Option<Vec<u8>>>(claim::BODY).map_err(text)?.unwrap_or_default();
            let is_json: bool = row.get(claim::BODY_IS_JSON).map_err(text)?;
            let body = if is_json {
                let json = String::from_utf8(body).map_err(|error| error.to_string())?;
                UploadBody::Json(RawValue::from_string(json).map_err(|error| error.to_string())?)
            } else {
                UploadBody::Bytes(body)
            };
            let key = row
                .get::<_, Option<String>>(claim::OBJECT_KEY)
                .map_err(text)?
                .map(|key| ObjectKey::parse(&key).map_err(|error| error.to_string()))
                .transpose()?;
            let content_type = row.get(claim::CONTENT_TYPE).map_err(text)?;
            let content_encoding = arg["content_encoding"].as_str().map(str::to_owned);
            let metadata = arg["metadata"]
                .as_object()
                .map(|map| {
                    map.iter()
                        .map(|(name, value)| (name.clone(), value.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default();
            Ok(JobKind::Upload(UploadSpec { body, key, content_type, content_encoding, metadata }))
        }
        "noop" => Ok(JobKind::Noop),
        "sleep" => Ok(JobKind::Sleep {
            millis: arg["ms"].as_u64().ok_or("sleep without ms")?,
            blocking: arg["blocking"].as_bool().unwrap_or(false),
            in_worker: arg["in_worker"].as_bool().unwrap_or(false),
        }),
        "fail" => Ok(JobKind::Fail { message: message(), retryable: arg["retryable"].as_bool().unwrap_or(true) }),
        "panic" => Ok(JobKind::Panic { message: message(), in_worker: arg["in_worker"].as_bool().unwrap_or(false) }),
        other => Err(format!("unknown kind {other:?}")),
    }
}

/// Reads a record from a row selected with [`RECORD_COLUMNS`] (plus `body` when wanted).
fn record_from_row(row: &Row<'_>, with_payload: bool) -> rusqlite::Result<JobRecord> {
    let state: String = row.get("state")?;
    let result: Option<String> = row.get("result")?;
    let payload = if with_payload {
        let body: Option<Vec<u8>> = row.get("body")?;
        let is_json: bool = row.get("body_is_json")?;
        body.and_then(|bytes| {
            let text = if is_json {
                String::from_utf8(bytes).ok()?
            } else {
                serde_json::to_string(&base64::engine::general_purpose::STANDARD.encode(bytes)).ok()?
            };
            RawValue::from_string(text).ok()
        })
    } else {
        None
    };
    Ok(JobRecord {
        id: JobId::from_bytes(row.get("id")?),
        kind: row.get("kind")?,
        state: state_of(&state),
        attempts: row.get("attempts")?,
        max_attempts: row.get("max_attempts")?,
        timeout_ms: row.get::<_, Option<i64>>("timeout_ms")?.map(i64::unsigned_abs),
        created_at: from_millis(row.get("created_at")?),
        run_at: row.get::<_, Option<i64>>("run_at")?.map(from_millis),
        started_at: row.get::<_, Option<i64>>("started_at")?.map(from_millis),
        finished_at: row.get::<_, Option<i64>>("finished_at")?.map(from_millis),
        last_error: row.get("last_error")?,
        result: result.and_then(|text| serde_json::from_str::<JobResult>(&text).ok()),
        idempotency_key: row.get("idempotency_key")?,
        submitted_by: row.get::<_, String>("submitted_by").map(|name| Some(name).filter(|name| !name.is_empty()))?,
        payload,
    })
}

impl QueueBackend for SqliteBackend {
    fn begin(&mut self) -> Result<(), StorageError> {
        self.begin_with("BEGIN IMMEDIATE")
    }

    fn begin_fetch(&mut self) -> Result<(), StorageError> {
        // DEFERRED takes no lock until the first read, and a write lock only at the first
        // write. A fetch served from the fresh jobs, with no delayed jobs to look at, then
        // costs no lock calls (about ten `fcntl`s on the WAL index otherwise) at all. Only
        // this connection writes, so taking the write lock later always succeeds.
        self.begin_with("BEGIN DEFERRED")
    }

    fn commit(&mut self) -> Result<(), StorageError> {
        self.connection.prepare_cached("COMMIT")?.execute([])?;
        self.fresh.commit();
        Ok(())
    }

    fn syncer(&mut self) -> Option<Box<dyn Syncer>> {
        let wal = self.wal.take()?;
        // Everything committed so far was synced in its commit; from here on a commit only
        // writes, and the syncer fsyncs.
        if let Err(error) = self.connection.pragma_update(None, "synchronous", "NORMAL") {
            tracing::warn!(%error, "cannot move the fsync out of the commit; SQLite keeps syncing in each commit");
            return None;
        }
        Some(Box::new(WalSyncer {
            wal,
            storage_lost: self.checkpointer.storage_lost.clone(),
            syncs_before_failing: self.fail_syncs_after,
            delay: self.sync_delay,
        }))
    }

    fn rollback(&mut self) {
        self.books = self.books_at_begin;
        self.fresh.rollback();
        if !self.connection.is_autocommit()
            && let Err(error) = self.connection.execute_batch("ROLLBACK")
        {
            tracing::error!(%error, "rollback failed");
        }
    }

    fn enqueue(&mut self, submission: Vec<Job>) -> Result<Result<Vec<Admitted>, Refusal>, StorageError> {
        let submitted_by = submission.first().and_then(|job| job.submitted_by.clone());
        let (mut admitted, is_new) =
            admit(&submission, |key| self.find_by_idempotency_key(submitted_by.as_deref(), key))?;
        let new_jobs = is_new.iter().filter(|&&new| new).count();
        if let Some(limit_bytes) = self.size_limit {
            // A row costs its body plus about two hundred bytes of columns and index entries.
            let estimate: u64 = submission
                .iter()
                .zip(&is_new)
                .filter(|(_, new)| **new)
                .map(|(job, _)| 200 + job.kind.body_len() as u64)
                .sum();
            let used_bytes = self.used_bytes()?;
            if used_bytes + estimate > limit_bytes {
                return Ok(Err(Refusal::StorageFull { used_bytes, limit_bytes }));
            }
        }
        if self.books.unfinished() + new_jobs > self.capacity {
            return Ok(Err(Refusal::QueueFull {
                unfinished: self.books.unfinished(),
                capacity: self.capacity,
                requested: new_jobs,
            }));
        }
        let now = Utc::now();
        let mut new_jobs = Vec::with_capacity(submission.len());
        for ((job, new), answer) in submission.into_iter().zip(is_new).zip(admitted.iter_mut()) {
            if new {
                if job.run_at.is_some_and(|at| at > now) {
                    answer.state = JobState::Scheduled;
                }
                new_jobs.push(job);
            }
        }
        let ready_seqs = self.insert_all(&new_jobs, now)?;
        for (job, ready_seq) in new_jobs.into_iter().zip(ready_seqs) {
            if let Some(ready_seq) = ready_seq {
                self.fresh.add(ready_seq, job);
            }
        }
        Ok(Ok(admitted))
    }

    fn take_ready(&mut self, max: usize, now: DateTime<Utc>) -> Result<ReadyBatch, StorageError> {
        // With no scheduled or failed job, nothing can fall due: the two index reads for
        // delayed jobs are skipped.
        let has_delayed = self.books.scheduled + self.books.failed > 0;
        if has_delayed {
            self.promote_due(max, now)?;
        }
        let mut jobs = Vec::with_capacity(max);
        let mut bytes = 0;
        let mut stopped_at_byte_limit = self.fresh.claim(&mut self.books.claimed_up_to, max, &mut jobs, &mut bytes);
        let mut undecodable = Vec::new();
        // The table holds more only if some `ready_seq` was handed out and not claimed.
        if !stopped_at_byte_limit && jobs.len() < max && self.books.claimed_up_to < self.books.last_ready_seq {
            let mut statement = self.connection.prepare_cached(claim::SQL)?;
            let mut rows = statement.query(params![self.books.claimed_up_to])?;
            while jobs.len() + undecodable.len() < max
                && let Some(row) = rows.next()?
            {
                let ready_seq: i64 = row.get(claim::READY_SEQ)?;
                match decode_claimed(row) {
                    Ok(job) => {
                        let size = job.kind.body_len();
                        if !claim_has_room(jobs.len(), bytes, size) {
                            stopped_at_byte_limit = true;
                            break;
                        }
                        bytes += size;
                        self.books.claimed_up_to = ready_seq;
                        jobs.push(job);
                    }
                    Err(error) => {
                        self.books.claimed_up_to = ready_seq;
                        undecodable.push((row.get::<_, i64>(claim::SEQ)?, error));
                    }
                }
            }
        }
        for (seq, error) in undecodable {
            self.bury_undecodable(seq, &error)?;
        }
        let next_due = if has_delayed { self.next_due()? } else { None };
        Ok(ReadyBatch { jobs, stopped_at_byte_limit, next_due })
    }

    fn record_started(&mut self, started: &[StartedJob]) -> Result<(), StorageError> {
        let mut statement = self.connection.prepare_cached(RECORD_STARTED)?;
        let mut changed = 0;
        for start in started {
            changed += statement.execute(params![start.id.to_bytes().as_slice(), millis(start.started_at)])?;
        }
        drop(statement);
        self.books.moved(JobState::Queued, JobState::Running, changed);
        Ok(())
    }

    fn record_finished(&mut self, finished: &[FinishedJob]) -> Result<(), StorageError> {
        self.write_finishes(finished.iter().map(|end| (end, None)))
    }

    /// A job that starts and finishes within one flush (most short jobs) costs one UPDATE
    /// instead of two: the finish also records the start.
    fn record_progress(&mut self, started: &[StartedJob], finished: &[FinishedJob]) -> Result<(), StorageError> {
        let started_at: HashMap<JobId, DateTime<Utc>> =
            started.iter().map(|start| (start.id, start.started_at)).collect();
        let finishing: HashSet<JobId> = finished.iter().map(|end| end.id).collect();
        let started_only: Vec<StartedJob> =
            started.iter().filter(|start| !finishing.contains(&start.id)).copied().collect();
        self.record_started(&started_only)?;
        self.write_finishes(finished.iter().map(|end| (end, started_at.get(&end.id).copied())))
    }

    fn purge_finished(&mut self, cutoff: DateTime<Utc>, limit: usize) -> Result<usize, StorageError> {
        let mut statement = self.connection.prepare_cached(
            "DELETE FROM jobs WHERE seq IN (
                 SELECT seq FROM jobs INDEXED BY jobs_done
                 WHERE (state = 'succeeded' OR state = 'dead' OR state = 'cancelled') AND finished_at < ?1 LIMIT ?2)
             RETURNING state",
        )?;
        let states = statement
            .query_map(params![millis(cutoff), limit as i64], |row| row.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        drop(statement);
        let dead = states.iter().filter(|state| state.as_str() == "dead").count();
        self.books.dead = self.books.dead.saturating_sub(dead);
        Ok(states.len())
    }

    fn retry_dead(&mut self, id: JobId) -> Result<Result<(), ControlError>, StorageError> {
        match self.state_of_job(id)? {
            None => return Ok(Err(ControlError::NotFound)),
            Some(JobState::Dead) => {}
            Some(other) => return Ok(Err(ControlError::Conflict(other))),
        }
        if self.books.unfinished() + 1 > self.capacity {
            let refusal =
                Refusal::QueueFull { unfinished: self.books.unfinished(), capacity: self.capacity, requested: 1 };
            return Ok(Err(ControlError::Refused(refusal)));
        }
        let ready_seq = self.books.take_ready_seq();
        self.connection
            .prepare_cached(
                "UPDATE jobs SET state = 'queued', attempts = 0, ready_seq = ?2, run_at = NULL, finished_at = NULL
                 WHERE id = ?1",
            )?
            .execute(params![id.to_bytes().as_slice(), ready_seq])?;
        self.books.moved(JobState::Dead, JobState::Queued, 1);
        Ok(Ok(()))
    }

    fn cancel(&mut self, id: JobId, now: DateTime<Utc>) -> Result<Result<(), ControlError>, StorageError> {
        let state = match self.state_of_job(id)? {
            None => return Ok(Err(ControlError::NotFound)),
            Some(state @ (JobState::Queued | JobState::Scheduled | JobState::Failed)) => state,
            Some(other) => return Ok(Err(ControlError::Conflict(other))),
        };
        // The job may wait in the buffer of fresh jobs, which must not hand it out now.
        // Cancels are rare: the buffer starts anew and claims read the table meanwhile.
        self.fresh.clear();
        self.connection
            .prepare_cached("UPDATE jobs SET state = 'cancelled', finished_at = ?2 WHERE id = ?1")?
            .execute(params![id.to_bytes().as_slice(), millis(now)])?;
        self.books.moved(state, JobState::Cancelled, 1);
        Ok(Ok(()))
    }

    fn list(&mut self, filter: &ListFilter, before: Option<i64>, limit: usize) -> Result<JobPage, StorageError> {
        // Dead jobs, the listing operators look for among many finished ones, have an
        // index; other listings walk the table newest first.
        let sql = match filter.state {
            Some(JobState::Dead) => format!(
                "SELECT {RECORD_COLUMNS} FROM jobs INDEXED BY jobs_dead
                 WHERE state = 'dead' AND state = ?1 AND seq < ?2 AND (?4 IS NULL OR submitted_by = ?4)
                 ORDER BY seq DESC LIMIT ?3"
            ),
            _ => format!(
                "SELECT {RECORD_COLUMNS} FROM jobs WHERE (?1 IS NULL OR state = ?1) AND seq < ?2
                 AND (?4 IS NULL OR submitted_by = ?4) ORDER BY seq DESC LIMIT ?3"
            ),
        };
        let mut statement = self.connection.prepare_cached(&sql)?;
        let mut rows = statement.query(params![
            filter.state.map(JobState::name),
            before.unwrap_or(i64::MAX),
            limit as i64,
            filter.submitted_by.as_deref()
        ])?;
        let mut page = JobPage::default();
        let mut last_seq = None;
        while let Some(row) = rows.next()? {
            last_seq = Some(row.get::<_, i64>("seq")?);
            page.records.push(record_from_row(row, false)?);
        }
        page.next_before = if page.records.len() == limit { last_seq } else { None };
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

    fn depth(&self) -> QueueDepth {
        let books = &self.books;
        QueueDepth {
            queued: books.queued,
            scheduled: books.scheduled,
            running: books.running,
            failed: books.failed,
            dead: books.dead,
            capacity: self.capacity,
        }
    }

    fn cancel_hold(&self) -> Option<std::time::Duration> {
        self.cancel_hold
    }

    fn is_durable(&self) -> bool {
        true
    }

    fn oldest_queued(&mut self) -> Result<Option<DateTime<Utc>>, StorageError> {
        let mut statement = self.connection.prepare_cached(
            "SELECT COALESCE(run_at, created_at) FROM jobs INDEXED BY jobs_ready WHERE state = 'queued' ORDER BY ready_seq LIMIT 1",
        )?;
        let due: Option<i64> = statement.query_row([], |row| row.get(0)).optional()?;
        Ok(due.map(from_millis))
    }

    /// Full when less than a page-sized row still fits under the limit.
    fn is_full(&mut self) -> bool {
        let Some(limit) = self.size_limit else { return false };
        self.used_bytes().map_or(true, |used| used + self.page_size > limit)
    }

    /// Writes and deletes a page-sized row in two commits: that allocates a page and
    /// syncs, which is what failed if the disk was full or read-only.
    fn check_writable(&mut self) -> Result<(), StorageError> {
        let attempt = self
            .connection
            .execute("INSERT INTO probe (value) VALUES (zeroblob(4096))", [])
            .and_then(|_| self.connection.execute("DELETE FROM probe", []));
        attempt.map(|_| ()).map_err(StorageError::from)
    }
}

#[cfg(test)]
impl SqliteBackend {
    /// Caps the file below its current need, to provoke a failing commit.
    pub(crate) fn page_count_for_test(&self) -> i64 {
        self.connection.query_row("PRAGMA page_count", [], |row| row.get(0)).expect("page_count")
    }

    pub(crate) fn set_max_page_count_for_test(&self, pages: i64) {
        let _: i64 = self
            .connection
            .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |row| row.get(0))
            .expect("max_page_count");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(kind: JobKind, key: Option<&str>) -> Job {
        Job { idempotency_key: key.map(str::to_owned), ..Job::for_test(kind) }
    }

    fn open(path: &Path, capacity: usize) -> SqliteBackend {
        SqliteBackend::open(path, capacity, Synchronous::Full, None).expect("open").0
    }

    #[test]
    fn with_full_sync_commits_only_write_and_sync_fsyncs_the_wal_sqlite_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("queue.db");
        let mut backend = open(&path, 10);
        let level = |backend: &SqliteBackend| -> i64 {
            backend.connection.query_row("PRAGMA synchronous", [], |row| row.get(0)).expect("pragma")
        };
        assert_eq!(level(&backend), 2, "FULL: SQLite syncs in each commit until the syncer is taken");
        let mut syncer = backend.syncer().expect("a syncer, with synchronous = full");
        assert_eq!(level(&backend), 1, "NORMAL: the syncer's fsync makes commits durable");
        backend.begin().expect("begin");
        assert!(backend.enqueue(vec![Job::for_test(JobKind::Noop)]).expect("enqueue").is_ok());
        backend.commit().expect("commit");
        syncer.sync().expect("sync");
        assert!(backend.syncer().is_none(), "handed over once");
        // A sync must never succeed without the file SQLite writes: with the WAL gone from
        // its path, it fails instead of syncing a file nobody will read.
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        std::fs::rename(&wal, dir.path().join("elsewhere")).expect("move the WAL away");
        let error = syncer.sync().expect_err("no WAL at its path");
        assert!(error.message().contains("queue.db-wal"), "{error}");
        std::fs::rename(dir.path().join("elsewhere"), &wal).expect("put it back");
        syncer.sync().expect("sync");
        let mut unsynced =
            SqliteBackend::open(&dir.path().join("other.db"), 10, Synchronous::Normal, None).expect("open").0;
        assert!(unsynced.syncer().is_none(), "with synchronous = normal nothing syncs at commit");
    }

    /// Column `column` of every row of an EXPLAIN statement, with its parameters unbound.
    fn explain(backend: &SqliteBackend, sql: &str, column: usize) -> Vec<String> {
        let mut explain = backend.connection.prepare(sql).expect("explain");
        let unbound = std::iter::repeat_n(rusqlite::types::Null, explain.parameter_count());
        explain
            .query_map(rusqlite::params_from_iter(unbound), |row| row.get::<_, String>(column))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    }

    #[test]
    fn version_2_indexes_are_replaced_and_writes_build_no_temporary_tables() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("queue.db");
        let mut backend = open(&path, 10);
        backend.begin().expect("begin");
        let accepted = backend.enqueue(vec![job(JobKind::Noop, None)]).expect("enqueue");
        assert!(accepted.is_ok());
        backend.commit().expect("commit");
        // What a version 2 file holds: the listing index and IN-list partial indexes.
        backend
            .connection
            .execute_batch(
                "CREATE INDEX jobs_state ON jobs(state, seq);
                 CREATE INDEX jobs_due ON jobs(run_at, seq) WHERE state IN ('scheduled', 'failed');",
            )
            .expect("old indexes");
        drop(backend);
        let backend = open(&path, 10);
        let indexes: Vec<String> = backend
            .connection
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'jobs_%' ORDER BY name")
            .expect("prepare")
            .query_map([], |row| row.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("names");
        assert_eq!(
            indexes,
            ["jobs_dead", "jobs_done", "jobs_idempotency", "jobs_ready", "jobs_running", "jobs_waiting"]
        );
        assert_eq!(backend.depth().queued, 1, "the job survived");
        // An IN list in a partial index's condition makes SQLite build a temporary table
        // for every row written; none of the writes on the hot path may do that.
        for write in [
            insert_sql(1),
            insert_sql(64),
            "UPDATE jobs SET state = 'running', started_at = 1, attempts = attempts + 1 WHERE id = x'01'",
            "UPDATE jobs SET state = 'succeeded', finished_at = 2 WHERE seq = 1",
            "UPDATE jobs SET state = 'failed', run_at = 3 WHERE seq = 1",
        ] {
            let plan = explain(&backend, &format!("EXPLAIN {write}"), 1);
            assert!(!plan.iter().any(|opcode| opcode == "OpenEphemeral"), "{write} builds a temporary table");
        }
        // Recording ends finds the jobs by the unique index on id, never by a scan.
        for sql in [finish_sql(JobState::Queued, 64), finish_sql(JobState::Running, 1)] {
            let plan = explain(&backend, &format!("EXPLAIN QUERY PLAN {sql}"), 3);
            assert_eq!(plan, ["SEARCH jobs USING INDEX sqlite_autoindex_jobs_1 (id=?)"]);
        }
    }

    #[test]
    fn jobs_round_trip_and_survive_reopening_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("queue.db");
        let payload = RawValue::from_string(r#"{"b": 1,  "a": [2]}"#.to_owned()).expect("json");
        let upload = JobKind::Upload(UploadSpec {
            body: UploadBody::Json(payload),
            key: Some(ObjectKey::parse("x/y.json").expect("key")),
            content_type: Some("text/plain".to_owned()),
            content_encoding: Some("gzip".to_owned()),
            metadata: vec![("team".to_owned(), "ingest".to_owned())],
        });
        let jobs = vec![
            job(upload, None),
            job(JobKind::Sleep { millis: 7, blocking: false, in_worker: false }, None),
            job(JobKind::Noop, None),
        ];
        let ids: Vec<JobId> = jobs.iter().map(|job| job.id).collect();
        {
            let mut backend = open(&path, 10);
            backend.begin().expect("begin");
            backend.enqueue(jobs).expect("enqueue").expect("fits");
            backend.commit().expect("commit");
            backend.begin().expect("begin");
            let claimed = backend.take_ready(1, Utc::now()).expect("take").jobs;
            backend.record_started(&[StartedJob { id: claimed[0].id, started_at: Utc::now() }]).expect("start");
            backend.commit().expect("commit");
            assert_eq!((backend.depth().queued, backend.depth().running), (2, 1));
        }
        // The process "died" with one job running: it is queued again, attempt counted.
        let (mut backend, recovery) = SqliteBackend::open(&path, 10, Synchronous::Full, None).expect("reopen");
        assert_eq!((recovery.requeued, recovery.queued), (1, 3));
        let claimed = backend.take_ready(10, Utc::now()).expect("take").jobs;
        assert_eq!(claimed.iter().map(|job| job.id).collect::<Vec<_>>(), ids, "submission order");
        assert_eq!(claimed[0].attempt, 2);
        let JobKind::Upload(upload) = &claimed[0].kind else { panic!("not an upload") };
        assert_eq!(upload.body.as_bytes(), br#"{"b": 1,  "a": [2]}"#);
        assert_eq!(upload.key.as_ref().map(ToString::to_string).as_deref(), Some("x/y.json"));
        assert_eq!(upload.content_encoding.as_deref(), Some("gzip"));
        assert_eq!(upload.metadata, vec![("team".to_owned(), "ingest".to_owned())]);
        assert!(matches!(claimed[1].kind, JobKind::Sleep { millis: 7, blocking: false, in_worker: false }));
        assert!(
            backend.take_ready(10, Utc::now()).expect("take").jobs.is_empty(),
            "claimed jobs are not handed out twice"
        );
    }

    #[test]
    fn a_rolled_back_batch_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut backend = open(&dir.path().join("queue.db"), 10);
        backend.begin().expect("begin");
        backend.enqueue(vec![job(JobKind::Noop, None)]).expect("enqueue").expect("fits");
        assert_eq!(backend.take_ready(10, Utc::now()).expect("take").jobs.len(), 1);
        backend.rollback();
        assert_eq!(backend.depth().queued, 0);
        assert!(backend.take_ready(10, Utc::now()).expect("take").jobs.is_empty());
    }

    #[test]
    fn idempotency_keys_answer_with_the_first_job() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut backend = open(&dir.path().join("queue.db"), 10);
        let first = backend.enqueue(vec![job(JobKind::Noop, Some("k1"))]).expect("enqueue").expect("fits");
        let again = backend
            .enqueue(vec![
                job(JobKind::Noop, Some("k1")),
                job(JobKind::Noop, Some("k2")),
                job(JobKind::Noop, Some("k2")),
            ])
            .expect("enqueue")
            .expect("fits");
        assert!(first[0].created);
        assert_eq!((again[0].id, again[0].created), (first[0].id, false));
        assert!(again[1].created);
        assert_eq!((again[2].id, again[2].created), (again[1].id, false));
        assert_eq!(backend.depth().queued, 2);
    }

    #[test]
    fn capacity_counts_unfinished_jobs_and_purge_deletes_old_finished_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut backend = open(&dir.path().join("queue.db"), 2);
        backend.enqueue(vec![job(JobKind::Noop, None), job(JobKind::Noop, None)]).expect("enqueue").expect("fits");
        assert!(backend.enqueue(vec![job(JobKind::Noop, None)]).expect("enqueue").is_err());
        let claimed = backend.take_ready(2, Utc::now()).expect("take").jobs;
        let now = Utc::now();
        let started: Vec<_> = claimed.iter().map(|job| StartedJob { id: job.id, started_at: now }).collect();
        backend.record_started(&started).expect("start");
        let finished: Vec<_> = claimed.iter().map(|job| FinishedJob::succeeded(job.id, "noop", now)).collect();
        backend.record_finished(&finished).expect("finish");
        assert!(backend.enqueue(vec![job(JobKind::Noop, None)]).expect("enqueue").is_ok());
        let record = backend.get(claimed[0].id, false).expect("get").expect("exists");
        assert_eq!((record.state, record.attempts), (JobState::Succeeded, 1));
        assert_eq!(backend.purge_finished(now, 10).expect("purge"), 0, "not older than the cutoff");
        assert_eq!(backend.purge_finished(now + chrono::Duration::seconds(1), 1).expect("purge"), 1, "limit");
        assert_eq!(backend.purge_finished(now + chrono::Duration::seconds(1), 10).expect("purge"), 1);
        assert!(backend.get(claimed[0].id, false).expect("get").is_none());
    }
}

#[cfg(test)]
mod delayed_tests {
    use super::*;

    #[test]
    fn a_start_and_finish_in_one_flush_is_recorded_like_two() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut backend, _) =
            SqliteBackend::open(&dir.path().join("queue.db"), 10, Synchronous::Full, None).expect("open");
        let jobs: Vec<Job> = (0..3).map(|_| job_at(None)).collect();
        let ids: Vec<JobId> = jobs.iter().map(|job| job.id).collect();
        backend.enqueue(jobs).expect("enqueue").expect("fits");
        let now = Utc::now();
        backend.take_ready(10, now).expect("take");
        let started: Vec<StartedJob> = ids.iter().map(|&id| StartedJob { id, started_at: now }).collect();
        let done = |id, outcome, retry_at| FinishedJob { id, kind: "noop", outcome, finished_at: now, retry_at };
        let finished = vec![
            done(ids[0], Outcome::Succeeded(JobResult::default()), None),
            done(ids[1], Outcome::TimedOut { after_ms: 5 }, Some(now + chrono::Duration::seconds(60))),
        ];
        backend.record_progress(&started, &finished).expect("progress");
        let states: Vec<(JobState, u32, bool)> = ids
            .iter()
            .map(|&id| backend.get(id, false).expect("get").expect("exists"))
            .map(|record| (record.state, record.attempts, record.started_at.is_some()))
            .collect();
        assert_eq!(states, [(JobState::Succeeded, 1, true), (JobState::Failed, 1, true), (JobState::Running, 1, true)]);
        let depth = backend.depth();
        assert_eq!((depth.queued, depth.running, depth.failed), (0, 1, 1));
    }

    /// Runs `work` in a transaction and commits it, as the queue thread does.
    fn committed<T>(backend: &mut SqliteBackend, work: impl FnOnce(&mut SqliteBackend) -> T) -> T {
        backend.begin().expect("begin");
        let result = work(backend);
        backend.commit().expect("commit");
        result
    }

    fn claim_ids(backend: &mut SqliteBackend, max: usize, now: DateTime<Utc>) -> Vec<JobId> {
        committed(backend, |backend| {
            backend.take_ready(max, now).expect("take").jobs.iter().map(|job| job.id).collect()
        })
    }

    /// A queue.db written by the previous release (schema version 2: no `submitted_by`,
    /// idempotency keys unique over the whole table) opens, keeps its jobs, and from then
    /// on scopes keys by submitter.
    #[test]
    fn a_version_2_file_is_upgraded_in_place_with_its_jobs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("queue.db");
        let version_2_schema = SCHEMA
            .replace("    submitted_by TEXT NOT NULL DEFAULT '',\n", "")
            .replace(
                "jobs_idempotency ON jobs(submitted_by, idempotency_key)",
                "jobs_idempotency_key ON jobs(idempotency_key)",
            )
            .replace("DROP INDEX IF EXISTS jobs_idempotency_key;", "");
        assert!(!version_2_schema.contains("submitted_by"));
        let queued = JobId::generate();
        {
            let connection = Connection::open(&path).expect("open");
            connection.execute_batch(&version_2_schema).expect("version 2 schema");
            connection.pragma_update(None, "user_version", 2).expect("version");
            connection
                .execute(
                    "INSERT INTO jobs (id, kind, state, ready_seq, max_attempts, created_at, idempotency_key, arg)
                     VALUES (?1, 'noop', 'queued', 1, 3, 0, 'order-1', NULL)",
                    params![queued.to_bytes().as_slice()],
                )
                .expect("a queued job");
        }
        let mut backend = SqliteBackend::open(&path, 100, Synchronous::Full, None).expect("upgrade").0;
        let version: i64 = backend.connection.query_row("PRAGMA user_version", [], |row| row.get(0)).expect("version");
        assert_eq!(version, SCHEMA_VERSION);
        let record = backend.get(queued, false).expect("get").expect("the old job");
        assert_eq!((record.state, record.submitted_by), (JobState::Queued, None));
        // The old key still answers a submission without a token, and not one with a token.
        let again = Job { idempotency_key: Some("order-1".to_owned()), ..Job::for_test(JobKind::Noop) };
        let answer = committed(&mut backend, |backend| backend.enqueue(vec![again]).expect("enqueue").expect("fits"));
        assert_eq!((answer[0].id, answer[0].created), (queued, false));
        let tenant = Job {
            idempotency_key: Some("order-1".to_owned()),
            submitted_by: Some("tenant-b".to_owned()),
            ..Job::for_test(JobKind::Noop)
        };
        let answer = committed(&mut backend, |backend| backend.enqueue(vec![tenant]).expect("enqueue").expect("fits"));
        assert!(answer[0].created, "another submitter's key is another job");
        assert_eq!(claim_ids(&mut backend, 10, Utc::now()).first(), Some(&queued));
    }

    #[test]
    fn rows_that_do_not_decode_are_dead_lettered_and_the_rest_are_claimed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("queue.db");
        let jobs: Vec<Job> = (0..4).map(|_| Job::for_test(JobKind::Noop)).collect();
        let ids: Vec<JobId> = jobs.iter().map(|job| job.id).collect();
        {
            let mut backend = SqliteBackend::open(&path, 100, Synchronous::Full, None).expect("open").0;
            committed(&mut backend, |backend| backend.enqueue(jobs).expect("enqueue").expect("fits"));
            // A bad id and a negative count, as a damaged file or a hand edit would leave.
            let corrupt = |sql: &str, id: JobId| {
                backend.connection.execute(sql, params![id.to_bytes().as_slice()]).expect("corrupt a row")
            };
            corrupt("UPDATE jobs SET id = x'0102' WHERE id = ?1", ids[1]);
            corrupt("UPDATE jobs SET attempts = -1 WHERE id = ?1", ids[2]);
        }
        // Reopened, so that the claim reads the table rather than the buffer of fresh jobs.
        let mut backend = SqliteBackend::open(&path, 100, Synchronous::Full, None).expect("open").0;
        assert_eq!(claim_ids(&mut backend, 10, Utc::now()), vec![ids[0], ids[3]]);
        assert_eq!(backend.depth().dead, 2);
        let errors: Vec<String> = backend
            .connection
            .prepare("SELECT last_error FROM jobs WHERE state = 'dead' ORDER BY seq")
            .and_then(|mut statement| statement.query_map([], |row| row.get(0))?.collect())
            .expect("dead rows");
        assert!(errors[0].contains("column id"), "{errors:?}");
        assert!(errors[1].contains("column attempts"), "{errors:?}");
        assert_eq!(claim_ids(&mut backend, 10, Utc::now()), Vec::<JobId>::new(), "and the queue goes on");
    }

    #[test]
    fn recovery_buries_jobs_that_died_in_their_last_attempt_and_requeues_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("queue.db");
        let last = Job { max_attempts: 1, ..Job::for_test(JobKind::Noop) };
        let not_last = Job { max_attempts: 2, ..Job::for_test(JobKind::Noop) };
        let (last_id, not_last_id) = (last.id, not_last.id);
        {
            let mut backend = SqliteBackend::open(&path, 100, Synchronous::Full, None).expect("open").0;
            committed(&mut backend, |backend| backend.enqueue(vec![last, not_last]).expect("enqueue").expect("fits"));
            assert_eq!(claim_ids(&mut backend, 10, Utc::now()).len(), 2);
            let started: Vec<StartedJob> =
                [last_id, not_last_id].map(|id| StartedJob { id, started_at: Utc::now() }).to_vec();
            committed(&mut backend, |backend| backend.record_started(&started).expect("started"));
        }
        let (mut backend, recovery) = SqliteBackend::open(&path, 100, Synchronous::Full, None).expect("reopen");
        assert_eq!((recovery.buried, recovery.requeued), (1, 1));
        let record = backend.get(last_id, false).expect("get").expect("record");
        assert_eq!((record.state, record.attempts), (JobState::Dead, 1));
        let error = record.last_error.unwrap_or_default();
        assert!(error.contains("the process died during attempt 1 of 1"), "{error}");
        let record = backend.get(not_last_id, false).expect("get").expect("record");
        assert_eq!((record.state, record.attempts), (JobState::Queued, 1));
        assert_eq!((backend.depth().dead, backend.depth().queued), (1, 1));
    }

    #[test]
    fn claims_serve_fresh_jobs_in_ready_order_and_never_a_cancelled_or_rolled_back_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut backend, _) =
            SqliteBackend::open(&dir.path().join("queue.db"), 100_000, Synchronous::Full, None).expect("open");
        let now = Utc::now();
        let enqueue = |backend: &mut SqliteBackend, jobs: Vec<Job>| -> Vec<JobId> {
            let ids = jobs.iter().map(|job| job.id).collect();
            committed(backend, |backend| backend.enqueue(jobs).expect("enqueue").expect("fits"));
            ids
        };

        // Fresh jobs come out in order, as a read of the table would give them, and with
        // the fields the table would give.
        let first = enqueue(&mut backend, vec![job_at(None), job_at(None)]);
        let claimed = committed(&mut backend, |backend| backend.take_ready(1, now).expect("take").jobs);
        assert_eq!((claimed[0].id, claimed[0].attempt, claimed[0].timeout_ms), (first[0], 1, Some(250)));

        // A delayed job that falls due takes the next ready number between fresh jobs: the
        // claim serves the buffer up to it and reads it from the table, in ready order.
        let delayed = enqueue(&mut backend, vec![job_at(Some(now + chrono::Duration::seconds(10)))]);
        let after = enqueue(&mut backend, vec![job_at(None)]);
        let later = now + chrono::Duration::seconds(11);
        assert_eq!(claim_ids(&mut backend, 10, later), vec![first[1], after[0], delayed[0]]);
        let behind_the_due_one = enqueue(&mut backend, vec![job_at(None)]);
        assert_eq!(claim_ids(&mut backend, 10, later), behind_the_due_one);

        // A cancelled job is not handed out, and those around it are.
        let around = enqueue(&mut backend, vec![job_at(None), job_at(None), job_at(None)]);
        let cancelled = committed(&mut backend, |backend| backend.cancel(around[1], now).expect("cancel"));
        assert_eq!(cancelled, Ok(()));
        assert_eq!(claim_ids(&mut backend, 10, later), vec![around[0], around[2]]);

        // A rolled-back submission is gone from memory as from the table.
        backend.begin().expect("begin");
        let lost = job_at(None);
        let lost_id = lost.id;
        assert!(backend.enqueue(vec![lost]).expect("enqueue").is_ok());
        backend.rollback();
        assert!(backend.get(lost_id, false).expect("get").is_none());
        let next = enqueue(&mut backend, vec![job_at(None)]);
        assert_eq!(claim_ids(&mut backend, 10, later), next);

        // More than the buffer holds: every job still comes out once, in order.
        let many = enqueue(&mut backend, (0..FRESH_MAX_JOBS + 100).map(|_| job_at(None)).collect());
        let mut claimed = Vec::new();
        while claimed.len() < many.len() {
            let batch = claim_ids(&mut backend, 1000, later);
            assert!(!batch.is_empty(), "claims stalled after {} jobs", claimed.len());
            claimed.extend(batch);
        }
        assert_eq!(claimed, many);
        assert!(claim_ids(&mut backend, 10, later).is_empty());
        // Claimed jobs count as queued until they start; the cancelled one does not.
        assert_eq!(backend.depth().queued, many.len() + 8);
    }

    /// Inserts run `OR ROLLBACK` (see `insert_sql`): a failing statement must then leave
    /// nothing of the group behind, in the table or in memory.
    #[test]
    fn a_write_that_fails_midway_undoes_the_whole_transaction_and_the_queue_goes_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut backend, _) =
            SqliteBackend::open(&dir.path().join("queue.db"), 1_000, Synchronous::Full, None).expect("open");
        let existing = job_at(None);
        let existing_id = existing.id;
        committed(&mut backend, |backend| backend.enqueue(vec![existing]).expect("enqueue").expect("fits"));
        let depth_before = backend.depth();

        backend.begin().expect("begin");
        let earlier = job_at(None);
        let earlier_id = earlier.id;
        assert!(backend.enqueue(vec![earlier]).expect("enqueue").is_ok());
        // A job whose id is taken fails the id's UNIQUE constraint, after a first row.
        let clash = vec![job_at(None), Job { id: existing_id, ..job_at(None) }];
        let error = backend.enqueue(clash).expect_err("the taken id fails the insert");
        assert!(error.message().contains("UNIQUE"), "{error}");
        assert!(backend.connection.is_autocommit(), "OR ROLLBACK ended the transaction");
        backend.rollback();

        assert!(backend.get(earlier_id, false).expect("get").is_none(), "the earlier submission was undone");
        assert_eq!(backend.depth(), depth_before);
        let next = job_at(None);
        let next_id = next.id;
        committed(&mut backend, |backend| backend.enqueue(vec![next]).expect("enqueue").expect("fits"));
        let claimed = claim_ids(&mut backend, 10, Utc::now());
        assert_eq!(claimed, vec![existing_id, next_id]);
    }

    #[test]
    fn hot_statements_are_prepared_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut backend, _) =
            SqliteBackend::open(&dir.path().join("queue.db"), 1000, Synchronous::Full, None).expect("open");
        // A delayed job far off, so that every fetch also looks for due jobs.
        let far_off = job_at(Some(Utc::now() + chrono::Duration::hours(1)));
        assert!(backend.enqueue(vec![far_off]).expect("enqueue").is_ok());
        // Each hot path twice with other values, through the table and not the buffer.
        for round in 0..3 {
            let jobs: Vec<Job> = (0..round + 1).map(|_| job_at(None)).collect();
            assert!(backend.enqueue(jobs).expect("enqueue").is_ok());
            let claimed = backend.take_ready(10 + round, Utc::now()).expect("take").jobs;
            let now = Utc::now() + chrono::Duration::milliseconds(round as i64);
            let (first, rest) = claimed.split_first().expect("claimed");
            backend.record_started(&[StartedJob { id: first.id, started_at: now }]).expect("start");
            let ends: Vec<FinishedJob> =
                claimed.iter().map(|job| FinishedJob::succeeded(job.id, "noop", now)).collect();
            let started: Vec<StartedJob> = rest.iter().map(|job| StartedJob { id: job.id, started_at: now }).collect();
            backend.record_progress(&started, &ends).expect("progress");
        }
        let hot = [
            PROMOTE_DUE,
            NEXT_DUE,
            claim::SQL,
            RECORD_STARTED,
            insert_sql(1),
            insert_sql(2),
            finish_sql(JobState::Queued, 1),
            finish_sql(JobState::Queued, 2),
            finish_sql(JobState::Running, 1),
        ];
        for sql in hot {
            let statement = backend.connection.prepare_cached(sql).expect("cached");
            assert!(statement.get_status(rusqlite::StatementStatus::Run) >= 1, "not run: {sql}");
            assert_eq!(statement.get_status(rusqlite::StatementStatus::RePrepare), 0, "re-prepared: {sql}");
        }
    }

    #[test]
    fn a_claim_stops_at_its_byte_limit_but_always_takes_one_job() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut backend, _) =
            SqliteBackend::open(&dir.path().join("queue.db"), 100, Synchronous::Full, None).expect("open");
        let large = || Job::upload_for_test(super::super::CLAIM_MAX_BODY_BYTES * 5 / 8);
        // Three from the table (enqueued outside a transaction, so never in the buffer of
        // fresh jobs), then three from the buffer: each claim holds one large job, says it
        // stopped at the limit while more wait, and the last says it did not.
        let from_table: Vec<Job> = (0..3).map(|_| large()).collect();
        let from_buffer: Vec<Job> = (0..3).map(|_| large()).collect();
        let order: Vec<JobId> = from_table.iter().chain(&from_buffer).map(|job| job.id).collect();
        assert!(backend.enqueue(from_table).expect("enqueue").is_ok());
        let mut claimed = Vec::new();
        for _ in 0..3 {
            let batch = backend.take_ready(10, Utc::now()).expect("take");
            assert_eq!(batch.jobs.len(), 1);
            claimed.push((batch.jobs[0].id, batch.stopped_at_byte_limit));
        }
        committed(&mut backend, |backend| backend.enqueue(from_buffer).expect("enqueue").expect("fits"));
        for _ in 0..3 {
            let batch = committed(&mut backend, |backend| backend.take_ready(10, Utc::now()).expect("take"));
            assert_eq!(batch.jobs.len(), 1);
            claimed.push((batch.jobs[0].id, batch.stopped_at_byte_limit));
        }
        let expected: Vec<(JobId, bool)> = order.iter().enumerate().map(|(n, id)| (*id, n != 2 && n != 5)).collect();
        assert_eq!(claimed, expected);
        // Small jobs fill a claim up to `max`.
        let small: Vec<Job> = (0..20).map(|_| job_at(None)).collect();
        committed(&mut backend, |backend| backend.enqueue(small).expect("enqueue").expect("fits"));
        let batch = committed(&mut backend, |backend| backend.take_ready(15, Utc::now()).expect("take"));
        assert_eq!((batch.jobs.len(), batch.stopped_at_byte_limit), (15, false));
    }

    fn job_at(run_at: Option<DateTime<Utc>>) -> Job {
        Job { timeout_ms: Some(250), run_at, ..Job::for_test(JobKind::Noop) }
    }

    #[test]
    fn a_fetch_transaction_takes_no_lock_until_it_must_and_its_promotions_are_committed() {
        use rusqlite::TransactionState;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("queue.db");
        let (mut backend, _) = SqliteBackend::open(&path, 100, Synchronous::Full, None).expect("open");
        let state = |backend: &SqliteBackend| backend.connection.transaction_state(Some("main")).expect("state");
        let now = Utc::now();
        let fresh = |backend: &mut SqliteBackend, jobs: Vec<Job>| {
            backend.begin().expect("begin");
            assert!(backend.enqueue(jobs).expect("enqueue").is_ok());
            backend.commit().expect("commit");
        };

        // A fresh job and nothing delayed: the fetch never touches the database.
        fresh(&mut backend, vec![job_at(None)]);
        backend.begin_fetch().expect("begin");
        assert_eq!(backend.take_ready(10, now).expect("take").jobs.len(), 1);
        assert_eq!(state(&backend), TransactionState::None);
        backend.commit().expect("commit");

        // With a delayed job waiting, it reads the table for it but writes nothing.
        let delayed = job_at(Some(now + chrono::Duration::seconds(10)));
        let delayed_id = delayed.id;
        fresh(&mut backend, vec![delayed, job_at(None)]);
        backend.begin_fetch().expect("begin");
        let batch = backend.take_ready(10, now).expect("take");
        assert_eq!(batch.jobs.len(), 1);
        assert!(batch.next_due.is_some());
        assert_eq!(state(&backend), TransactionState::Read);
        backend.commit().expect("commit");

        // Once it is due, the fetch promotes it: the transaction becomes a write, and the
        // promotion is on disk after its commit.
        backend.begin_fetch().expect("begin");
        let batch = backend.take_ready(10, now + chrono::Duration::seconds(11)).expect("take");
        assert_eq!(batch.jobs.iter().map(|job| job.id).collect::<Vec<_>>(), vec![delayed_id]);
        assert_eq!(batch.next_due, None, "nothing else is delayed");
        assert_eq!(state(&backend), TransactionState::Write);
        backend.commit().expect("commit");
        drop(backend);
        let (mut reopened, recovery) = SqliteBackend::open(&path, 100, Synchronous::Full, None).expect("reopen");
        assert_eq!((recovery.queued, recovery.delayed), (3, 0), "the promotion was committed");
        assert_eq!(reopened.get(delayed_id, false).expect("get").expect("exists").state, JobState::Queued);
    }

    #[test]
    fn delayed_jobs_wait_for_their_time_then_run_in_due_order_and_retries_come_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("queue.db");
        let (mut backend, _) = SqliteBackend::open(&path, 100, Synchronous::Full, None).expect("open");
        let now = Utc::now();
        let later = |secs| now + chrono::Duration::seconds(secs);
        let (late, early, at_once) = (job_at(Some(later(20))), job_at(Some(later(10))), job_at(None));
        let ids = (late.id, early.id, at_once.id);
        let admitted = backend.enqueue(vec![late, early, at_once]).expect("enqueue").expect("fits");
        let states: Vec<JobState> = admitted.iter().map(|job| job.state).collect();
        assert_eq!(states, [JobState::Scheduled, JobState::Scheduled, JobState::Queued]);

        let batch = backend.take_ready(10, now).expect("take");
        assert_eq!(batch.jobs.iter().map(|job| job.id).collect::<Vec<_>>(), vec![ids.2]);
        assert_eq!(batch.next_due.map(|at| at.timestamp_millis()), Some(later(10).timestamp_millis()));
        assert_eq!(batch.jobs[0].timeout_ms, Some(250));

        let batch = backend.take_ready(10, later(30)).expect("take");
        assert_eq!(batch.jobs.iter().map(|job| job.id).collect::<Vec<_>>(), vec![ids.1, ids.0], "due order");
        assert_eq!(batch.next_due, None);

        // A failed attempt with a retry time is `failed` until then, then queued again.
        backend.record_started(&[StartedJob { id: ids.1, started_at: later(30) }]).expect("start");
        let retry_at = later(40);
        let failed = FinishedJob {
            id: ids.1,
            kind: "noop",
            outcome: Outcome::TimedOut { after_ms: 250 },
            finished_at: later(31),
            retry_at: Some(retry_at),
        };
        backend.record_finished(&[failed]).expect("finish");
        let record = backend.get(ids.1, false).expect("get").expect("exists");
        assert_eq!((record.state, record.attempts), (JobState::Failed, 1));
        assert_eq!(record.last_error.as_deref(), Some("timed out after 250 ms"));
        assert_eq!(backend.depth().failed, 1);
        assert!(backend.take_ready(10, later(39)).expect("take").jobs.is_empty(), "not early");
        let retried = backend.take_ready(10, later(41)).expect("take").jobs;
        assert_eq!((retried[0].id, retried[0].attempt), (ids.1, 2));
    }

    #[test]
    fn cancel_retry_and_list_follow_the_states() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut backend, _) =
            SqliteBackend::open(&dir.path().join("queue.db"), 100, Synchronous::Full, None).expect("open");
        let jobs: Vec<Job> = (0..3).map(|_| job_at(None)).collect();
        let ids: Vec<JobId> = jobs.iter().map(|job| job.id).collect();
        backend.enqueue(jobs).expect("enqueue").expect("fits");
        let now = Utc::now();
        assert_eq!(backend.cancel(ids[0], now).expect("cancel"), Ok(()));
        assert_eq!(backend.cancel(ids[0], now).expect("cancel"), Err(ControlError::Conflict(JobState::Cancelled)));
        assert_eq!(backend.cancel(JobId::generate(), now).expect("cancel"), Err(ControlError::NotFound));
        let claimed = backend.take_ready(10, now).expect("take").jobs;
        assert_eq!(claimed.iter().map(|job| job.id).collect::<Vec<_>>(), ids[1..].to_vec(), "cancelled never runs");
        backend.record_started(&[StartedJob { id: ids[1], started_at: now }]).expect("start");
        assert_eq!(backend.cancel(ids[1], now).expect("cancel"), Err(ControlError::Conflict(JobState::Running)));
        let dead = FinishedJob {
            id: ids[1],
            kind: "noop",
            outcome: Outcome::Failed { error: "bad input".into(), retryable: false },
            finished_at: now,
            retry_at: None,
        };
        backend.record_finished(&[dead]).expect("finish");
        assert_eq!(backend.retry_dead(ids[2]).expect("retry"), Err(ControlError::Conflict(JobState::Queued)));

        let page =
            backend.list(&ListFilter { state: Some(JobState::Dead), submitted_by: None }, None, 10).expect("list");
        assert_eq!(page.records.iter().map(|r| r.id).collect::<Vec<_>>(), vec![ids[1]]);
        let all = backend.list(&ListFilter::default(), None, 2).expect("list");
        assert_eq!(all.records.iter().map(|r| r.id).collect::<Vec<_>>(), vec![ids[2], ids[1]], "newest first");
        let rest = backend.list(&ListFilter::default(), all.next_before, 2).expect("list");
        assert_eq!((rest.records.len(), rest.next_before), (1, None));

        assert_eq!(backend.retry_dead(ids[1]).expect("retry"), Ok(()));
        let record = backend.get(ids[1], false).expect("get").expect("exists");
        assert_eq!((record.state, record.attempts), (JobState::Queued, 0));
        let again = backend.take_ready(10, now).expect("take").jobs;
        assert_eq!(again.iter().map(|job| (job.id, job.attempt)).collect::<Vec<_>>(), vec![(ids[1], 1)]);
    }
}
