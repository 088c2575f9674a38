//! The SQL the SQLite backend runs often, built once, and the helpers that bind borrowed
//! values to multi-row statements.

use rusqlite::types::{ToSqlOutput, ValueRef};

use crate::job::JobState;

/// SQL NULL, and borrowed and integer parameters, for multi-row statements.
pub(super) const NULL: ToSqlOutput<'static> = ToSqlOutput::Borrowed(ValueRef::Null);

pub(super) fn blob(bytes: &[u8]) -> ToSqlOutput<'_> {
    ToSqlOutput::Borrowed(ValueRef::Blob(bytes))
}

pub(super) fn text(text: &str) -> ToSqlOutput<'_> {
    ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes()))
}

pub(super) fn integer(value: Option<i64>) -> ToSqlOutput<'static> {
    value.map_or(NULL, |value| ToSqlOutput::Borrowed(ValueRef::Integer(value)))
}

/// The columns [`SqliteBackend::insert_all`] writes, in order; the last two ([`PLACED_COLUMNS`])
/// only for a statement of rows not all in the default queue at the default priority,
/// which the columns' defaults give otherwise: two bound values fewer a row, which showed
/// in the end-to-end rate of noop jobs.
const INSERT_COLUMN_NAMES: &str = "id, kind, state, ready_seq, run_at, max_attempts, timeout_ms, created_at,
     idempotency_key, submitted_by, body, body_is_json, args";
const PLACED_COLUMN_NAMES: &str = "queue, priority";
pub(super) const INSERT_COLUMNS: usize = 13;
pub(super) const PLACED_COLUMNS: usize = 2;
/// The row counts of the multi-row statements, largest first: any number of rows is
/// written with at most one statement of each size below the largest. 64 rows of 15
/// values stay far below SQLite's limit of 32,766 bound values.
const STATEMENT_ROWS: [usize; 7] = [64, 32, 16, 8, 4, 2, 1];

/// The rows the next multi-row statement writes, of `remaining`.
pub(super) fn statement_rows(remaining: usize) -> usize {
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
/// With `placed`, the statement also writes each row's queue and priority.
pub(super) fn insert_sql(rows: usize, placed: bool) -> &'static str {
    static SQL: std::sync::OnceLock<[Vec<String>; 2]> = std::sync::OnceLock::new();
    let statements = SQL.get_or_init(|| {
        [false, true].map(|placed| {
            sized_statements(|rows| {
                let (names, columns) = if placed {
                    (format!("{INSERT_COLUMN_NAMES}, {PLACED_COLUMN_NAMES}"), INSERT_COLUMNS + PLACED_COLUMNS)
                } else {
                    (INSERT_COLUMN_NAMES.to_owned(), INSERT_COLUMNS)
                };
                format!("INSERT OR ROLLBACK INTO jobs ({names}) VALUES {}", placeholder_rows(rows, columns))
            })
        })
    });
    &statements[usize::from(placed)][size_index(rows)]
}

/// The SQL that records the same end of attempts for `ids` jobs in state `from` (queued
/// or running): the shared values first, then the ids.
///
/// The unique index on `id` is named: the planner might otherwise walk a partial index of
/// every queued job (a unit test checks the plan). The state a job leaves is written into
/// the SQL rather than bound: SQLite plans partial indexes against bound values, so a
/// bound state made it re-prepare the statement on every execution.
pub(super) fn finish_sql(from: JobState, ids: usize) -> &'static str {
    static SQL: std::sync::OnceLock<[Vec<String>; 2]> = std::sync::OnceLock::new();
    let statements = SQL.get_or_init(|| {
        [JobState::Queued, JobState::Running].map(|from| {
            sized_statements(|ids| {
                format!(
                    "UPDATE OR ROLLBACK jobs INDEXED BY sqlite_autoindex_jobs_1 SET state = ?, started_at = COALESCE(?, started_at),
                         attempts = attempts + ?, finished_at = ?, last_error = ?, result = ?,
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

/// Due scheduled and failed jobs, earliest first, with their priorities (which band of
/// `ready_seq` each goes to).
///
/// The hot queries have no `LIMIT ?`: SQLite plans with a bound LIMIT's value, so a bound
/// LIMIT made it re-prepare the statement on every run (a tenth of the queue thread's time
/// in profiles of single-job submissions). They walk their index in order, and the caller
/// stops reading after as many rows as it wants.
pub(super) const PROMOTE_DUE: &str = "SELECT seq, state, priority FROM jobs INDEXED BY jobs_waiting
     WHERE (state = 'scheduled' OR state = 'failed') AND run_at <= ?1 ORDER BY run_at, seq";
/// When the earliest scheduled or failed job falls due.
pub(super) const NEXT_DUE: &str =
    "SELECT MIN(run_at) FROM jobs INDEXED BY jobs_waiting WHERE state = 'scheduled' OR state = 'failed'";
pub(super) const RECORD_STARTED: &str =
    "UPDATE jobs SET state = 'running', started_at = ?2, attempts = attempts + 1 WHERE id = ?1 AND state = 'queued'";

/// The columns a record is read from, for `get` and `list`.
pub(super) const RECORD_COLUMNS: &str =
    "seq, id, kind, state, attempts, max_attempts, timeout_ms, created_at, run_at, started_at,
     finished_at, last_error, result, idempotency_key, submitted_by, body_is_json, args, queue, priority";

/// The claim query's columns, read by position: reading by name scans the column names
/// for every value, which showed in profiles of the queue thread.
pub(super) mod claim {
    pub const SQL: &str = "SELECT seq, ready_seq, id, kind, attempts, max_attempts, timeout_ms, run_at, created_at,
             idempotency_key, body, body_is_json, args, submitted_by, queue, priority
         FROM jobs INDEXED BY jobs_ready WHERE state = 'queued' AND ready_seq > ?1 AND ready_seq <= ?2
         ORDER BY ready_seq";
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
    pub const ARGS: usize = 12;
    pub const SUBMITTED_BY: usize = 13;
    pub const QUEUE: usize = 14;
    pub const PRIORITY: usize = 15;
}
