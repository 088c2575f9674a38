//! The SQLite schema and its migrations from earlier versions.

use std::path::Path;

use rusqlite::Connection;

use crate::queue::StorageError;

/// The schema's version, in `PRAGMA user_version`; a file of another version is refused
/// rather than misread.
pub(super) const SCHEMA_VERSION: i64 = 5;

/// The schema.
///
/// A row is a job's envelope plus its bookkeeping: `kind`, `args` (the kind's arguments as
/// JSON) and `body` are stored as given and never interpreted here.
///
/// `seq` is the submission order and AUTOINCREMENT, so it only ever grows. `ready_seq` is
/// the order among queued jobs: new jobs get the next one, and so do scheduled and failed
/// jobs when they fall due, so the claim cursor over `ready_seq` never misses a job.
pub(super) const SCHEMA: &str = "
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
    args TEXT,
    queue TEXT NOT NULL DEFAULT 'default',
    priority INTEGER NOT NULL DEFAULT 5
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs(submitted_by, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs(ready_seq) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS jobs_waiting ON jobs(run_at, seq) WHERE state = 'scheduled' OR state = 'failed';
CREATE INDEX IF NOT EXISTS jobs_done ON jobs(finished_at) WHERE state = 'succeeded' OR state = 'dead' OR state = 'cancelled';
CREATE INDEX IF NOT EXISTS jobs_running ON jobs(seq) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS jobs_dead ON jobs(seq) WHERE state = 'dead';
CREATE INDEX IF NOT EXISTS jobs_cancelled ON jobs(seq) WHERE state = 'cancelled';
CREATE INDEX IF NOT EXISTS jobs_kind ON jobs(kind, seq);
CREATE INDEX IF NOT EXISTS jobs_tenant ON jobs(submitted_by, seq) WHERE submitted_by <> '';
CREATE TABLE IF NOT EXISTS probe (value BLOB);
CREATE TABLE IF NOT EXISTS queue_states (name TEXT PRIMARY KEY, paused INTEGER NOT NULL, changed_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS identity (queue_id TEXT NOT NULL);
INSERT INTO identity (queue_id) SELECT lower(hex(randomblob(8))) WHERE NOT EXISTS (SELECT 1 FROM identity);
DROP INDEX IF EXISTS jobs_state;
DROP INDEX IF EXISTS jobs_due;
DROP INDEX IF EXISTS jobs_finished;
DROP INDEX IF EXISTS jobs_idempotency_key;
";

/// Brings a version 2 file to version 3: jobs record which token submitted them (`''`
/// for none, so that the unique index over it and the key treats "no token" as one
/// submitter), and idempotency keys are unique per submitter rather than globally. Run
/// before [`SCHEMA`], which then replaces the index.
pub(super) const MIGRATE_2_TO_3: &str = "ALTER TABLE jobs ADD COLUMN submitted_by TEXT NOT NULL DEFAULT '';";

// Every index but the unique ones is partial, over the few rows in one state or a few:
// per job, only the indexes of the states it passes through are written (a job that
// starts and finishes within one progress flush goes from `queued` straight to its end).
// Recovery and the counts at open read `jobs_ready`, `jobs_waiting`, `jobs_running` and
// `jobs_dead`, so opening costs time in the unfinished and dead jobs, not in the finished
// history that retention keeps. Listings use those, `jobs_cancelled`, and the indexes by
// kind and by tenant (see `reader::listing_sql`); those two are not partial by state, but
// their columns never change, so only an insert or a purge writes them. A file opened by
// an earlier build gains them at its first open, which reads the whole table once.
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

/// Brings a version 3 file to version 4, the job envelope: version 3 spread a job's kind
/// over columns of its own (`object_key`, `content_type`, and `arg` for the rest). Those
/// columns become fields of the same names in `args` (a JSON merge patch drops the empty
/// ones), and go. Run before [`SCHEMA`], in one transaction with the version bump, so that
/// a process killed midway leaves a version 3 file behind, never half of each.
pub(super) const MIGRATE_3_TO_4: &str = "
BEGIN IMMEDIATE;
ALTER TABLE jobs ADD COLUMN args TEXT;
UPDATE jobs SET args = NULLIF(
    json_patch(COALESCE(arg, '{}'), json_object('key', object_key, 'content_type', content_type)), '{}');
ALTER TABLE jobs DROP COLUMN arg;
ALTER TABLE jobs DROP COLUMN object_key;
ALTER TABLE jobs DROP COLUMN content_type;
PRAGMA user_version = 4;
COMMIT;
";

/// Brings a version 4 file to version 5: each job names its queue and has a priority;
/// jobs from before run in the default queue at the default priority. SQLite adds a column
/// with a constant default without rewriting the table. The jobs that will be claimed
/// again (queued, and running ones, which the open puts back in line) move to the default
/// priority's band of `ready_seq` (`crate::queue::columns::PRIORITY_BAND`), in their order.
/// One transaction with the version bump.
pub(super) const MIGRATE_4_TO_5: &str = "
BEGIN IMMEDIATE;
ALTER TABLE jobs ADD COLUMN queue TEXT NOT NULL DEFAULT 'default';
ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 5;
UPDATE jobs SET ready_seq = ready_seq + 4 * 281474976710656
    WHERE ready_seq IS NOT NULL AND (state = 'queued' OR state = 'running');
PRAGMA user_version = 5;
COMMIT;
";

/// The queue's id ([`crate::queue::QueueBackend::queue_id`]): 64 random bits, made when
/// the file was created (or first opened by a build that has it) and kept with the jobs.
pub(super) fn queue_id(connection: &Connection) -> Result<std::sync::Arc<str>, StorageError> {
    let id: String = connection.query_row("SELECT queue_id FROM identity LIMIT 1", [], |row| row.get(0))?;
    Ok(std::sync::Arc::from(id))
}

/// Runs a migration that holds its own transaction and version bump: on an error, what it
/// began is rolled back, so that the file stays at the version before, never half of each.
fn run_whole(connection: &Connection, migration: &str) -> Result<(), StorageError> {
    if let Err(error) = connection.execute_batch(migration) {
        if !connection.is_autocommit() {
            drop(connection.execute_batch("ROLLBACK"));
        }
        return Err(error.into());
    }
    Ok(())
}

/// Brings the file at `path` to [`SCHEMA_VERSION`], one version at a time, and creates
/// what is missing. A file of an unknown version is refused rather than misread.
pub(super) fn migrate(connection: &Connection, path: &Path) -> Result<(), StorageError> {
    let mut version: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let has_jobs: bool = connection.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'jobs')",
        [],
        |row| row.get(0),
    )?;
    if has_jobs && version == 2 {
        connection.execute_batch(MIGRATE_2_TO_3)?;
        connection.pragma_update(None, "user_version", 3)?;
        tracing::info!(path = %path.display(), "queue.db upgraded from schema version 2 to 3");
        version = 3;
    }
    if has_jobs && version == 3 {
        run_whole(connection, MIGRATE_3_TO_4)?;
        tracing::info!(path = %path.display(), "queue.db upgraded from schema version 3 to 4 (job envelopes)");
        version = 4;
    }
    if has_jobs && version == 4 {
        run_whole(connection, MIGRATE_4_TO_5)?;
        tracing::info!(path = %path.display(), "queue.db upgraded from schema version 4 to 5 (named queues)");
        version = 5;
    }
    if has_jobs && version != SCHEMA_VERSION {
        return Err(StorageError::new(format!(
            "{} has schema version {version}; this jobd reads version {SCHEMA_VERSION}",
            path.display()
        )));
    }
    connection.execute_batch(SCHEMA)?;
    connection.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    Ok(())
}
