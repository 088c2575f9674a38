//! The durable backend, the default: `<data_dir>/queue.db` in SQLite, WAL mode, one
//! transaction per batch of commands. A job it accepted survives `kill -9`.
//!
//! It claims jobs with a cursor over `ready_seq` instead of writing a claim: a claimed job
//! is still `queued` on disk until its start is recorded, so a crash loses no claim, and on
//! open every job left `running` is queued again (or made `dead` if that was its last
//! attempt). Counts by state are kept in memory (`books.rs`), loaded at open and restored on
//! rollback. Commits cost per statement and per fsync, not per row, so new jobs go in with
//! multi-row INSERTs, attempts that ended alike are recorded by one UPDATE naming all their
//! ids (`sql.rs`), and jobs just inserted stay in memory for the next claim (`fresh.rs`).
//! WAL checkpoints and the fsync run on threads of their own (`wal.rs`).

use std::path::Path;

use chrono::Utc;
use rusqlite::{Connection, params};

use super::{QueueBackend, StorageError, Syncer, Transactions};

mod books;
mod codec;
mod fresh;
mod paused;
mod reader;
mod schema;
mod sql;
#[cfg(test)]
mod tests;
mod wal;
mod writer;

use crate::queue::columns::{BANDS, PRIORITY_BAND, band_start};
use books::Bookkeeping;
use codec::{millis, state_of};
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
    /// The paused queues, each with the claim cursor at its pause: claims pass over a
    /// paused queue's jobs, and its resume puts those passed over (after that cursor) back
    /// in the queue behind the rest (`paused.rs`).
    paused: std::collections::HashMap<String, paused::Cursors>,
    /// `paused` as it was before the open transaction changed it, to restore on rollback.
    paused_at_begin: Option<std::collections::HashMap<String, paused::Cursors>>,
    /// With [`Synchronous::Full`], the WAL file that the [`Syncer`] fsyncs, until
    /// [`QueueBackend::syncer`] hands it over; until then SQLite syncs in each commit.
    wal: Option<WalFile>,
    /// `test_fail_sync_after`: the syncer's fsyncs fail after this many.
    fail_syncs_after: Option<u64>,
    /// See [`SqliteBackend::delay_syncs_by`]; only for tests.
    sync_delay: Option<std::time::Duration>,
    /// The file, for the read lane's own connection ([`QueueBackend::record_reader`]).
    path: std::path::PathBuf,
    /// See [`QueueBackend::queue_id`]; kept in the file's `identity` table.
    queue_id: std::sync::Arc<str>,
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
        schema::migrate(&connection, path)?;
        let queue_id = schema::queue_id(&connection)?;
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
        // New jobs queue behind every queued one of their priority, including those just
        // put back. Finished jobs may hold higher values, which is harmless: the claim
        // cursors read queued rows.
        for band in 0..BANDS {
            let start = band_start(band);
            books.last_ready_seq[band] = connection.query_row(
                "SELECT COALESCE(MAX(ready_seq), ?1) FROM jobs INDEXED BY jobs_ready
                 WHERE state = 'queued' AND ready_seq > ?1 AND ready_seq < ?2",
                params![start, start + PRIORITY_BAND],
                |r| r.get(0),
            )?;
        }
        let paused = paused::load(&connection)?;
        let recovery = Recovery { requeued, buried, queued: books.queued, delayed: books.scheduled + books.failed };
        let backend = Self {
            connection,
            capacity,
            size_limit: max_bytes,
            page_size,
            books,
            books_at_begin: books,
            fresh: FreshJobs::default(),
            paused,
            paused_at_begin: None,
            wal: (synchronous == Synchronous::Full).then(|| WalFile::new(path)),
            fail_syncs_after: None,
            sync_delay: None,
            path: path.to_path_buf(),
            queue_id,
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
}

impl Transactions for SqliteBackend {
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
        self.paused_at_begin = None;
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
        if let Some(paused) = self.paused_at_begin.take() {
            self.paused = paused;
        }
        if !self.connection.is_autocommit()
            && let Err(error) = self.connection.execute_batch("ROLLBACK")
        {
            tracing::error!(%error, "rollback failed");
        }
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

impl QueueBackend for SqliteBackend {
    /// A read-only connection of its own: WAL lets it read while the queue thread writes.
    fn record_reader(&mut self) -> Result<Option<Box<dyn super::RecordReader>>, StorageError> {
        Ok(Some(Box::new(reader::SqliteReader::open(&self.path)?)))
    }

    fn is_durable(&self) -> bool {
        true
    }

    fn queue_id(&self) -> std::sync::Arc<str> {
        self.queue_id.clone()
    }
}
