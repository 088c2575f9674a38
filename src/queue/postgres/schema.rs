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
pub const SCHEMA_VERSION: i32 = 5;

/// The advisory lock the migrations hold: one node migrates while the others wait.
const MIGRATION_LOCK: i64 = 0x6a6f_6264_0001;
/// The advisory lock (per transaction) under which one node at a time rescues.
pub(super) const RESCUE_LOCK: i64 = 0x6a6f_6264_0002;
/// The advisory lock (per transaction) under which one node at a time purges.
pub(super) const PURGE_LOCK: i64 = 0x6a6f_6264_0003;

/// The channel on which nodes announce newly ready jobs to each other.
pub(super) const READY_CHANNEL: &str = "jobd_ready";

/// Each migration, in order: version `n` is the `n`th entry. Each runs in one transaction
/// with its version bump. A migration never changes once released: a database that ran
/// it must stay what the next one expects (the tests upgrade a version 1 database).
const MIGRATIONS: [&str; 5] = [
    include_str!("migrations/v1.sql"),
    include_str!("migrations/v2.sql"),
    include_str!("migrations/v3.sql"),
    include_str!("migrations/v4.sql"),
    include_str!("migrations/v5.sql"),
];

/// Adds a transaction's count changes to its connection's rows: `$1` the node, `$2` its
/// lane (connection), `$3` the states, `$4` the changes. Each connection writes only its
/// own rows, so neither nodes nor a node's connections wait for each other's counts, and
/// the sum over all rows is exact.
pub(super) const ADD_COUNTS: &str = "INSERT INTO jobd_counts (node, lane, state, jobs)
     SELECT $1, $2, state, delta FROM unnest($3::text[], $4::bigint[]) AS changes(state, delta) WHERE delta <> 0
     ON CONFLICT (node, lane, state) DO UPDATE SET jobs = jobd_counts.jobs + EXCLUDED.jobs";

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

/// The queue's id ([`crate::queue::QueueBackend::queue_id`]): 64 random bits, made by the
/// first node that migrated the database and kept beside its schema version, so that
/// every node reports the same. Builds before it ignore the column.
pub(super) fn queue_id(client: &mut postgres::Client) -> Result<std::sync::Arc<str>, StorageError> {
    let row = client
        .query_one("SELECT queue_id FROM jobd_schema", &[])
        .map_err(|error| storage_error("queue id read failed", &error))?;
    Ok(std::sync::Arc::from(row.get::<_, String>(0)))
}

/// Brings the schema to [`SCHEMA_VERSION`] and returns it. Nodes
/// starting together take turns on an advisory lock; the first migrates, the others find
/// the work done.
pub(super) fn migrate(client: &mut postgres::Client) -> Result<i32, StorageError> {
    let failed = |error: postgres::Error| storage_error("migration failed", &error);
    // A node waits for the lock as long as another node's migration takes, which may be
    // longer than the statement timeout meant for the queue's own statements; the
    // session's timeout comes back once the lock is released.
    client.batch_execute("SET statement_timeout = 0").map_err(failed)?;
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).map_err(failed)?;
    let result = migrate_locked(client);
    // The lock is the session's: released here, or when the connection closes.
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).map_err(failed);
    let reset = client.batch_execute("RESET statement_timeout").map_err(failed);
    let version = result?;
    unlocked?;
    reset?;
    Ok(version)
}

fn migrate_locked(client: &mut postgres::Client) -> Result<i32, StorageError> {
    let failed = |error: postgres::Error| storage_error("migration failed", &error);
    // Without the notice level raised, every start after the first logs PostgreSQL's
    // "relation jobd_schema already exists, skipping".
    client
        .batch_execute(
            "SET client_min_messages = warning;
             CREATE TABLE IF NOT EXISTS jobd_schema (version integer NOT NULL);
             INSERT INTO jobd_schema (version) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM jobd_schema);
             DO $$ BEGIN
                 -- Altered only when missing: ALTER needs the table's owner, even for a no-op.
                 IF NOT EXISTS (SELECT 1 FROM information_schema.columns
                                WHERE table_schema = current_schema() AND table_name = 'jobd_schema'
                                  AND column_name = 'queue_id') THEN
                     ALTER TABLE jobd_schema ADD COLUMN queue_id text;
                 END IF;
             END $$;
             UPDATE jobd_schema SET queue_id = substr(md5(random()::text || clock_timestamp()::text), 1, 16)
                 WHERE queue_id IS NULL;
             RESET client_min_messages;",
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
        // A migration may rebuild an index of every job (version 2 does): it must not be
        // cut short by the statement timeout meant for the queue's own statements, or the
        // node would roll it back at every start and never come up.
        transaction.batch_execute("SET LOCAL statement_timeout = 0").map_err(failed)?;
        transaction.batch_execute(migration).map_err(failed)?;
        transaction.execute("UPDATE jobd_schema SET version = $1", &[&target]).map_err(failed)?;
        transaction.commit().map_err(failed)?;
        tracing::info!(from = target - 1, to = target, "PostgreSQL schema migrated");
    }
    Ok(SCHEMA_VERSION)
}
