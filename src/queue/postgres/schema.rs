//! The PostgreSQL schema and its versioned migrations, run at start under an advisory
//! lock so that nodes starting at once migrate once.
//!
//! Times of jobs are milliseconds since the epoch from jobd's clock, as in SQLite, so the
//! two backends share one codec; lease times come from the server's clock (`now()`), the
//! one clock every node agrees on.

use super::storage_error;
use crate::queue::StorageError;

/// The schema this build writes. A database with a higher version was written by a newer
/// jobd, and this one refuses it rather than misread it.
pub const SCHEMA_VERSION: i32 = 1;

/// The advisory lock the migrations hold: one node migrates while the others wait.
const MIGRATION_LOCK: i64 = 0x6a6f_6264_0001;
/// The advisory lock (per transaction) under which one node at a time rescues.
pub(super) const RESCUE_LOCK: i64 = 0x6a6f_6264_0002;
/// The advisory lock (per transaction) under which one node at a time purges.
pub(super) const PURGE_LOCK: i64 = 0x6a6f_6264_0003;

/// The channel on which nodes announce newly ready jobs to each other.
pub(super) const READY_CHANNEL: &str = "jobd_ready";

/// Each migration, in order: version `n` is the `n`th entry. Each runs in one transaction
/// with its version bump.
const MIGRATIONS: [&str; 1] = [
    // Version 1. `seq` orders listings; `ready_seq` (from a sequence) orders claims and is
    // renewed when a delayed job falls due, as in SQLite. `lease_owner` is the node that
    // claimed a job: it stays `queued` in that node's window until its start is recorded,
    // then `running`. The partial indexes keep the claim, the promotion of due jobs, the
    // rescue and the purge off the finished rows that make up most of the table.
    "CREATE SEQUENCE jobd_ready_seq;
     CREATE TABLE jobd_jobs (
         seq bigserial PRIMARY KEY,
         id uuid NOT NULL UNIQUE,
         kind text NOT NULL,
         state text NOT NULL,
         attempts integer NOT NULL DEFAULT 0,
         max_attempts integer NOT NULL,
         timeout_ms bigint,
         created_at bigint NOT NULL,
         run_at bigint,
         started_at bigint,
         finished_at bigint,
         last_error text,
         result text,
         idempotency_key text,
         submitted_by text NOT NULL DEFAULT '',
         args text,
         body bytea,
         body_is_json boolean NOT NULL DEFAULT false,
         ready_seq bigint,
         lease_owner uuid
     );
     CREATE UNIQUE INDEX jobd_jobs_idempotency ON jobd_jobs (submitted_by, idempotency_key)
         WHERE idempotency_key IS NOT NULL;
     CREATE INDEX jobd_jobs_ready ON jobd_jobs (ready_seq) WHERE state = 'queued' AND lease_owner IS NULL;
     CREATE INDEX jobd_jobs_waiting ON jobd_jobs (run_at) WHERE state IN ('scheduled', 'failed');
     CREATE INDEX jobd_jobs_leased ON jobd_jobs (lease_owner) WHERE lease_owner IS NOT NULL;
     CREATE INDEX jobd_jobs_done ON jobd_jobs (finished_at) WHERE state IN ('succeeded', 'dead', 'cancelled');
     CREATE INDEX jobd_jobs_dead ON jobd_jobs (seq) WHERE state = 'dead';
     CREATE TABLE jobd_nodes (
         id uuid PRIMARY KEY,
         name text NOT NULL,
         started_at timestamptz NOT NULL,
         heartbeat_at timestamptz NOT NULL,
         expires_at timestamptz NOT NULL
     );
     CREATE TABLE jobd_counts (
         node uuid NOT NULL,
         state text NOT NULL,
         jobs bigint NOT NULL,
         PRIMARY KEY (node, state)
     );",
];

/// Adds a transaction's count changes to its node's rows: `$1` the node, `$2` the states,
/// `$3` the changes. Each node writes only its own rows, so nodes never wait for each
/// other's counts, and the sum over all rows is exact.
pub(super) const ADD_COUNTS: &str = "INSERT INTO jobd_counts (node, state, jobs)
     SELECT $1, state, delta FROM unnest($2::text[], $3::bigint[]) AS changes(state, delta) WHERE delta <> 0
     ON CONFLICT (node, state) DO UPDATE SET jobs = jobd_counts.jobs + EXCLUDED.jobs";

/// The depth by state: a sum over a few rows per node, never a count of jobs.
pub(super) const DEPTH: &str = "SELECT state, sum(jobs)::bigint FROM jobd_counts GROUP BY state";

/// The schema version, or `None` before jobd created its tables.
pub(super) fn version(client: &mut postgres::Client) -> Result<Option<i32>, StorageError> {
    let exists = client
        .query_one("SELECT to_regclass('jobd_schema') IS NOT NULL", &[])
        .map_err(|error| storage_error("schema check failed", &error))?;
    if !exists.get::<_, bool>(0) {
        return Ok(None);
    }
    let row = client
        .query_opt("SELECT version FROM jobd_schema", &[])
        .map_err(|error| storage_error("schema check failed", &error))?;
    Ok(row.map(|row| row.get(0)))
}

/// Brings the schema to [`SCHEMA_VERSION`] and returns it. Nodes
/// starting together take turns on an advisory lock; the first migrates, the others find
/// the work done.
pub(super) fn migrate(client: &mut postgres::Client) -> Result<i32, StorageError> {
    let failed = |error: postgres::Error| storage_error("migration failed", &error);
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).map_err(failed)?;
    let result = migrate_locked(client);
    // The lock is the session's: released here, or when the connection closes.
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).map_err(failed);
    let version = result?;
    unlocked?;
    Ok(version)
}

fn migrate_locked(client: &mut postgres::Client) -> Result<i32, StorageError> {
    let failed = |error: postgres::Error| storage_error("migration failed", &error);
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS jobd_schema (version integer NOT NULL);
             INSERT INTO jobd_schema (version) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM jobd_schema);",
        )
        .map_err(failed)?;
    let found: i32 = client.query_one("SELECT version FROM jobd_schema", &[]).map_err(failed)?.get(0);
    if found > SCHEMA_VERSION {
        return Err(StorageError::new(format!(
            "the database holds jobd schema version {found}, newer than this build's {SCHEMA_VERSION}: \
             run the newer jobd, or point this one at another database"
        )));
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(usize::try_from(found).unwrap_or(0)) {
        let target = i32::try_from(index + 1).unwrap_or(i32::MAX);
        let mut transaction = client.transaction().map_err(failed)?;
        transaction.batch_execute(migration).map_err(failed)?;
        transaction.execute("UPDATE jobd_schema SET version = $1", &[&target]).map_err(failed)?;
        transaction.commit().map_err(failed)?;
        tracing::info!(from = found, to = target, "PostgreSQL schema migrated");
    }
    Ok(SCHEMA_VERSION)
}
