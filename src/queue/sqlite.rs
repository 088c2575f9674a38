//! The durable backend, the default: `<data_dir>/queue.db` in SQLite, WAL mode, one
//! transaction per batch of commands. A job it accepted survives `kill -9`.

use std::path::Path;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension as _, Row, params};
use serde_json::value::RawValue;

use super::{Admitted, QueueBackend, QueueDepth, Refusal, StorageError, admit};
use crate::job::{
    FinishedJob, Job, JobId, JobKind, JobRecord, JobResult, JobState, Outcome, StartedJob, UploadBody, UploadSpec,
};
use crate::keys::ObjectKey;

/// How SQLite syncs commits to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync at every commit: a 202 survives power loss. The default.
    Full,
    /// fsync at checkpoints only: a 202 survives a crash of jobd, but the last commits
    /// before a power loss or kernel crash may be lost. Faster on slow disks.
    Normal,
}

impl From<rusqlite::Error> for StorageError {
    fn from(error: rusqlite::Error) -> Self {
        StorageError(error.to_string())
    }
}

/// The schema. `seq` is AUTOINCREMENT so it only ever grows, even after purges: the
/// claim cursor relies on new jobs always sorting after claimed ones.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id BLOB NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    last_error TEXT,
    result TEXT,
    idempotency_key TEXT,
    body BLOB,
    body_is_json INTEGER NOT NULL DEFAULT 0,
    object_key TEXT,
    content_type TEXT,
    arg TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency_key ON jobs(idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_queued ON jobs(seq) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs(finished_at) WHERE state IN ('succeeded', 'dead');
CREATE TABLE IF NOT EXISTS probe (value BLOB);
";

/// Counters kept in memory so capacity checks cost no query; restored on rollback.
#[derive(Debug, Clone, Copy)]
struct Bookkeeping {
    /// Queued and running jobs.
    unfinished: usize,
    running: usize,
    /// The highest `seq` claimed by this process.
    claimed_up_to: i64,
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
}

/// What opening found, for the start-up log.
#[derive(Debug, Clone, Copy)]
pub struct Recovery {
    /// Jobs a previous process left running, now queued again.
    pub requeued: usize,
    /// Jobs waiting to run, in submission order.
    pub queued: usize,
}

fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

fn from_millis(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

impl SqliteBackend {
    /// Opens (or creates) the queue at `path` and recovers what a previous process left:
    /// jobs left running go back to the queue, keeping the attempt they used.
    pub fn open(
        path: &Path,
        capacity: usize,
        synchronous: Synchronous,
        max_bytes: Option<u64>,
    ) -> Result<(Self, Recovery), StorageError> {
        let connection = Connection::open(path)?;
        let mode: String = connection.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StorageError(format!("cannot switch {} to WAL mode (got {mode})", path.display())));
        }
        let sync = match synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        connection.pragma_update(None, "synchronous", sync)?;
        connection.pragma_update(None, "busy_timeout", 5_000)?;
        connection.execute_batch(SCHEMA)?;
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
        let requeued = connection.execute("UPDATE jobs SET state = 'queued' WHERE state = 'running'", [])?;
        let queued: i64 = connection.query_row("SELECT COUNT(*) FROM jobs WHERE state = 'queued'", [], |r| r.get(0))?;
        let books = Bookkeeping { unfinished: queued as usize, running: 0, claimed_up_to: 0 };
        let backend = Self { connection, capacity, size_limit: max_bytes, page_size, books, books_at_begin: books };
        Ok((backend, Recovery { requeued, queued: queued as usize }))
    }

    fn insert(&self, job: &Job) -> Result<(), StorageError> {
        let columns = KindColumns::of(&job.kind);
        let mut statement = self.connection.prepare_cached(
            "INSERT INTO jobs (id, kind, state, created_at, idempotency_key, body, body_is_json, object_key, content_type, arg)
             VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        statement.execute(params![
            job.id.to_bytes().as_slice(),
            job.kind.name(),
            millis(job.created_at),
            job.idempotency_key,
            columns.body,
            columns.body_is_json,
            columns.object_key,
            columns.content_type,
            columns.arg,
        ])?;
        Ok(())
    }

    fn find_by_idempotency_key(&self, key: &str) -> Result<Option<(JobId, JobState)>, StorageError> {
        let mut statement = self.connection.prepare_cached("SELECT id, state FROM jobs WHERE idempotency_key = ?1")?;
        let found =
            statement.query_row([key], |row| Ok((row.get::<_, [u8; 16]>(0)?, row.get::<_, String>(1)?))).optional()?;
        Ok(found.map(|(id, state)| (JobId::from_bytes(id), JobState::from_name(&state).unwrap_or(JobState::Queued))))
    }

    /// Marks a job that cannot be decoded as dead, so one bad row cannot wedge the queue.
    /// Bytes in use: the database's pages less the free ones.
    fn used_bytes(&self) -> Result<u64, StorageError> {
        let pages: i64 = self.connection.query_row("PRAGMA page_count", [], |row| row.get(0))?;
        let free: i64 = self.connection.query_row("PRAGMA freelist_count", [], |row| row.get(0))?;
        Ok(pages.saturating_sub(free).unsigned_abs() * self.page_size)
    }

    fn bury_undecodable(&mut self, seq: i64, error: &str) -> Result<(), StorageError> {
        tracing::error!(seq, %error, "a stored job cannot be decoded; it is marked dead");
        self.connection.execute(
            "UPDATE jobs SET state = 'dead', last_error = ?2, finished_at = ?3 WHERE seq = ?1",
            params![seq, format!("stored job cannot be decoded: {error}"), millis(Utc::now())],
        )?;
        self.books.unfinished -= 1;
        Ok(())
    }
}

/// How a job's kind is spread over the row's columns; [`decode_kind`] reverses it.
struct KindColumns<'a> {
    body: Option<&'a [u8]>,
    body_is_json: bool,
    object_key: Option<String>,
    content_type: Option<&'a str>,
    /// The test kinds' one parameter: `sleep`'s milliseconds, `fail`'s and `panic`'s message.
    arg: Option<String>,
}

impl<'a> KindColumns<'a> {
    fn of(kind: &'a JobKind) -> Self {
        let none = KindColumns { body: None, body_is_json: false, object_key: None, content_type: None, arg: None };
        match kind {
            JobKind::Upload(upload) => KindColumns {
                body: Some(upload.body.as_bytes()),
                body_is_json: matches!(upload.body, UploadBody::Json(_)),
                object_key: upload.key.as_ref().map(ToString::to_string),
                content_type: upload.content_type.as_deref(),
                arg: None,
            },
            JobKind::Noop => none,
            JobKind::Sleep { millis } => KindColumns { arg: Some(millis.to_string()), ..none },
            JobKind::Fail { message } | JobKind::Panic { message } => {
                KindColumns { arg: Some(message.clone()), ..none }
            }
        }
    }
}

/// The bytes a job's body takes in its row.
fn job_body_len(kind: &JobKind) -> u64 {
    match kind {
        JobKind::Upload(upload) => upload.body.as_bytes().len() as u64,
        JobKind::Fail { message } | JobKind::Panic { message } => message.len() as u64,
        JobKind::Noop | JobKind::Sleep { .. } => 0,
    }
}

/// Rebuilds a job's kind from its columns.
fn decode_kind(row: &Row<'_>) -> Result<JobKind, String> {
    let kind: String = row.get("kind").map_err(|e| e.to_string())?;
    let arg: Option<String> = row.get("arg").map_err(|e| e.to_string())?;
    match kind.as_str() {
        "upload" => {
            let body: Vec<u8> = row.get::<_, Option<Vec<u8>>>("body").map_err(|e| e.to_string())?.unwrap_or_default();
            let is_json: bool = row.get("body_is_json").map_err(|e| e.to_string())?;
            let body = if is_json {
                let text = String::from_utf8(body).map_err(|e| e.to_string())?;
                UploadBody::Json(RawValue::from_string(text).map_err(|e| e.to_string())?)
            } else {
                UploadBody::Bytes(body)
            };
            let key = row
                .get::<_, Option<String>>("object_key")
                .map_err(|e| e.to_string())?
                .map(|key| ObjectKey::parse(&key).map_err(|e| e.to_string()))
                .transpose()?;
            let content_type = row.get("content_type").map_err(|e| e.to_string())?;
            Ok(JobKind::Upload(UploadSpec { body, key, content_type }))
        }
        "noop" => Ok(JobKind::Noop),
        "sleep" => {
            Ok(JobKind::Sleep { millis: arg.unwrap_or_default().parse().map_err(|_| "bad sleep ms".to_owned())? })
        }
        "fail" => Ok(JobKind::Fail { message: arg.unwrap_or_default() }),
        "panic" => Ok(JobKind::Panic { message: arg.unwrap_or_default() }),
        other => Err(format!("unknown kind {other:?}")),
    }
}

impl QueueBackend for SqliteBackend {
    fn begin(&mut self) -> Result<(), StorageError> {
        self.books_at_begin = self.books;
        self.connection.execute_batch("BEGIN IMMEDIATE")?;
        Ok(())
    }

    fn commit(&mut self) -> Result<(), StorageError> {
        self.connection.execute_batch("COMMIT")?;
        Ok(())
    }

    fn rollback(&mut self) {
        self.books = self.books_at_begin;
        if !self.connection.is_autocommit()
            && let Err(error) = self.connection.execute_batch("ROLLBACK")
        {
            tracing::error!(%error, "rollback failed");
        }
    }

    fn enqueue(&mut self, submission: Vec<Job>) -> Result<Result<Vec<Admitted>, Refusal>, StorageError> {
        let (admitted, is_new) = admit(&submission, |key| self.find_by_idempotency_key(key))?;
        let new_jobs = is_new.iter().filter(|&&new| new).count();
        if let Some(limit_bytes) = self.size_limit {
            // A row costs its body plus about two hundred bytes of columns and index entries.
            let estimate: u64 = submission
                .iter()
                .zip(&is_new)
                .filter(|(_, new)| **new)
                .map(|(job, _)| 200 + job_body_len(&job.kind))
                .sum();
            let used_bytes = self.used_bytes()?;
            if used_bytes + estimate > limit_bytes {
                return Ok(Err(Refusal::StorageFull { used_bytes, limit_bytes }));
            }
        }
        if self.books.unfinished + new_jobs > self.capacity {
            return Ok(Err(Refusal::QueueFull {
                unfinished: self.books.unfinished,
                capacity: self.capacity,
                requested: new_jobs,
            }));
        }
        for (job, new) in submission.iter().zip(is_new) {
            if new {
                self.insert(job)?;
            }
        }
        self.books.unfinished += new_jobs;
        Ok(Ok(admitted))
    }

    fn take_ready(&mut self, max: usize) -> Result<Vec<Job>, StorageError> {
        let mut jobs = Vec::with_capacity(max);
        let mut undecodable = Vec::new();
        {
            let mut statement = self.connection.prepare_cached(
                "SELECT seq, id, kind, attempts, created_at, idempotency_key, body, body_is_json, object_key, content_type, arg
                 FROM jobs WHERE state = 'queued' AND seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let mut rows = statement.query(params![self.books.claimed_up_to, max as i64])?;
            while let Some(row) = rows.next()? {
                let seq: i64 = row.get("seq")?;
                self.books.claimed_up_to = seq;
                match decode_kind(row) {
                    Ok(kind) => jobs.push(Job {
                        id: JobId::from_bytes(row.get("id")?),
                        created_at: from_millis(row.get("created_at")?),
                        attempt: row.get::<_, u32>("attempts")? + 1,
                        idempotency_key: row.get("idempotency_key")?,
                        kind,
                    }),
                    Err(error) => undecodable.push((seq, error)),
                }
            }
        }
        for (seq, error) in undecodable {
            self.bury_undecodable(seq, &error)?;
        }
        Ok(jobs)
    }

    fn record_started(&mut self, started: &[StartedJob]) -> Result<(), StorageError> {
        let mut statement = self.connection.prepare_cached(
            "UPDATE jobs SET state = 'running', started_at = ?2, attempts = attempts + 1 WHERE id = ?1 AND state = 'queued'",
        )?;
        for start in started {
            self.books.running +=
                statement.execute(params![start.id.to_bytes().as_slice(), millis(start.started_at)])?;
        }
        Ok(())
    }

    fn record_finished(&mut self, finished: &[FinishedJob]) -> Result<(), StorageError> {
        let mut statement = self.connection.prepare_cached(
            "UPDATE jobs SET state = ?2, finished_at = ?3, last_error = ?4, result = ?5
             WHERE id = ?1 AND state = 'running'",
        )?;
        for end in finished {
            let (error, result) = match &end.outcome {
                Outcome::Succeeded(result) => (None, serde_json::to_string(result).ok()),
                Outcome::Failed { error } => (Some(error.as_str()), None),
                Outcome::Panicked { message } => (Some(message.as_str()), None),
            };
            let changed = statement.execute(params![
                end.id.to_bytes().as_slice(),
                end.outcome.final_state().name(),
                millis(end.finished_at),
                error,
                result,
            ])?;
            self.books.running -= changed;
            self.books.unfinished -= changed;
        }
        Ok(())
    }

    fn purge_finished(&mut self, cutoff: DateTime<Utc>, limit: usize) -> Result<usize, StorageError> {
        let mut statement = self.connection.prepare_cached(
            "DELETE FROM jobs WHERE seq IN (
                 SELECT seq FROM jobs WHERE state IN ('succeeded', 'dead') AND finished_at < ?1 LIMIT ?2)",
        )?;
        Ok(statement.execute(params![millis(cutoff), limit as i64])?)
    }

    fn get(&mut self, id: JobId, with_payload: bool) -> Result<Option<JobRecord>, StorageError> {
        let mut statement = self.connection.prepare_cached(
            "SELECT kind, state, attempts, created_at, started_at, finished_at, last_error, result, idempotency_key,
                    CASE WHEN ?2 THEN body END AS body, body_is_json
             FROM jobs WHERE id = ?1",
        )?;
        let record = statement
            .query_row(params![id.to_bytes().as_slice(), with_payload], |row| {
                let state: String = row.get("state")?;
                let result: Option<String> = row.get("result")?;
                let body: Option<Vec<u8>> = row.get("body")?;
                let is_json: bool = row.get("body_is_json")?;
                let payload = body.and_then(|bytes| {
                    let text = if is_json {
                        String::from_utf8(bytes).ok()?
                    } else {
                        serde_json::to_string(&base64::engine::general_purpose::STANDARD.encode(bytes)).ok()?
                    };
                    RawValue::from_string(text).ok()
                });
                Ok(JobRecord {
                    id,
                    kind: row.get("kind")?,
                    state: JobState::from_name(&state).unwrap_or(JobState::Dead),
                    attempts: row.get("attempts")?,
                    created_at: from_millis(row.get("created_at")?),
                    started_at: row.get::<_, Option<i64>>("started_at")?.map(from_millis),
                    finished_at: row.get::<_, Option<i64>>("finished_at")?.map(from_millis),
                    last_error: row.get("last_error")?,
                    result: result.and_then(|text| serde_json::from_str::<JobResult>(&text).ok()),
                    idempotency_key: row.get("idempotency_key")?,
                    payload,
                })
            })
            .optional()?;
        Ok(record)
    }

    fn depth(&self) -> QueueDepth {
        QueueDepth {
            queued: self.books.unfinished - self.books.running,
            running: self.books.running,
            capacity: self.capacity,
        }
    }

    fn is_durable(&self) -> bool {
        true
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
        Job { id: JobId::generate(), created_at: Utc::now(), attempt: 0, idempotency_key: key.map(str::to_owned), kind }
    }

    fn open(path: &Path, capacity: usize) -> SqliteBackend {
        SqliteBackend::open(path, capacity, Synchronous::Full, None).expect("open").0
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
        });
        let jobs = vec![job(upload, None), job(JobKind::Sleep { millis: 7 }, None), job(JobKind::Noop, None)];
        let ids: Vec<JobId> = jobs.iter().map(|job| job.id).collect();
        {
            let mut backend = open(&path, 10);
            backend.begin().expect("begin");
            backend.enqueue(jobs).expect("enqueue").expect("fits");
            backend.commit().expect("commit");
            backend.begin().expect("begin");
            let claimed = backend.take_ready(1).expect("take");
            backend.record_started(&[StartedJob { id: claimed[0].id, started_at: Utc::now() }]).expect("start");
            backend.commit().expect("commit");
            assert_eq!(backend.depth(), QueueDepth { queued: 2, running: 1, capacity: 10 });
        }
        // The process "died" with one job running: it is queued again, attempt counted.
        let (mut backend, recovery) = SqliteBackend::open(&path, 10, Synchronous::Full, None).expect("reopen");
        assert_eq!((recovery.requeued, recovery.queued), (1, 3));
        let claimed = backend.take_ready(10).expect("take");
        assert_eq!(claimed.iter().map(|job| job.id).collect::<Vec<_>>(), ids, "submission order");
        assert_eq!(claimed[0].attempt, 2);
        let JobKind::Upload(upload) = &claimed[0].kind else { panic!("not an upload") };
        assert_eq!(upload.body.as_bytes(), br#"{"b": 1,  "a": [2]}"#);
        assert_eq!(upload.key.as_ref().map(ToString::to_string).as_deref(), Some("x/y.json"));
        assert!(matches!(claimed[1].kind, JobKind::Sleep { millis: 7 }));
        assert!(backend.take_ready(10).expect("take").is_empty(), "claimed jobs are not handed out twice");
    }

    #[test]
    fn a_rolled_back_batch_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut backend = open(&dir.path().join("queue.db"), 10);
        backend.begin().expect("begin");
        backend.enqueue(vec![job(JobKind::Noop, None)]).expect("enqueue").expect("fits");
        assert_eq!(backend.take_ready(10).expect("take").len(), 1);
        backend.rollback();
        assert_eq!(backend.depth().queued, 0);
        assert!(backend.take_ready(10).expect("take").is_empty());
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
        let claimed = backend.take_ready(2).expect("take");
        let now = Utc::now();
        let started: Vec<_> = claimed.iter().map(|job| StartedJob { id: job.id, started_at: now }).collect();
        backend.record_started(&started).expect("start");
        let finished: Vec<_> = claimed
            .iter()
            .map(|job| FinishedJob {
                id: job.id,
                kind: "noop",
                outcome: Outcome::Succeeded(JobResult::default()),
                finished_at: now,
            })
            .collect();
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
