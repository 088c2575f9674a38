//! PostgreSQL rows to envelopes and records, and jobs to the column arrays an insert takes.
//! Nothing here knows a kind: arguments and body come back as the job carried them.

use std::borrow::Cow;

use postgres::Row;
use serde_json::value::RawValue;

use crate::job::{Body, Job, JobId, JobRecord, JobResult, queue_name};
use crate::queue::columns::{from_millis, payload_value, state_of};

/// The columns a claim returns, by position.
pub(super) const CLAIMED_COLUMNS: &str = "j.ready_seq, j.id, j.kind, j.attempts, j.max_attempts, j.timeout_ms,
     j.run_at, j.created_at, j.idempotency_key, j.body, j.body_is_json, j.args, j.submitted_by, j.claim_epoch,
     j.queue, j.priority";

/// The columns a record is read from, by position; the body comes last when asked for.
pub(super) const RECORD_COLUMNS: &str = "id, kind, state, attempts, max_attempts, timeout_ms, created_at, run_at,
     started_at, finished_at, last_error, result, idempotency_key, submitted_by, body_is_json, args, queue, priority";

pub(super) fn job_id(id: uuid::Uuid) -> JobId {
    JobId::from_bytes(id.into_bytes())
}

pub(super) fn uuid_of(id: JobId) -> uuid::Uuid {
    uuid::Uuid::from_bytes(id.to_bytes())
}

fn column<T: for<'a> postgres::types::FromSql<'a>>(row: &Row, index: usize, name: &str) -> Result<T, String> {
    row.try_get(index).map_err(|error| format!("column {name}: {error}"))
}

fn unsigned(value: i32, name: &str) -> Result<u32, String> {
    u32::try_from(value).map_err(|_| format!("column {name}: {value} is negative"))
}

/// Rebuilds a claimed job's envelope (see [`CLAIMED_COLUMNS`]): its attempt is the one
/// after those counted, as its start will count it. A column that does not decode is an
/// error naming it, so that one bad row is buried instead of failing every claim.
pub(super) fn decode_claimed(row: &Row) -> Result<Job, String> {
    let timeout_ms: Option<i64> = column(row, 5, "timeout_ms")?;
    let args: Option<String> = column(row, 11, "args")?;
    let body: Option<Vec<u8>> = column(row, 9, "body")?;
    let submitted_by: String = column(row, 12, "submitted_by")?;
    Ok(Job {
        id: job_id(column(row, 1, "id")?),
        kind: Cow::Owned(column(row, 2, "kind")?),
        attempt: unsigned(column(row, 3, "attempts")?, "attempts")?.saturating_add(1),
        claim: column(row, 13, "claim_epoch")?,
        max_attempts: unsigned(column(row, 4, "max_attempts")?, "max_attempts")?,
        timeout_ms: timeout_ms
            .map(|ms| u64::try_from(ms).map_err(|_| format!("column timeout_ms: {ms} is negative")))
            .transpose()?,
        run_at: column::<Option<i64>>(row, 6, "run_at")?.map(from_millis),
        created_at: from_millis(column(row, 7, "created_at")?),
        idempotency_key: column(row, 8, "idempotency_key")?,
        body: body
            .map(|bytes| -> Result<Body, String> { Ok(Body { bytes, is_json: column(row, 10, "body_is_json")? }) })
            .transpose()?,
        args: args
            .map(|text| RawValue::from_string(text).map_err(|error| format!("column args: {error}")))
            .transpose()?,
        submitted_by: Some(submitted_by).filter(|name| !name.is_empty()),
        queue: queue_name(row.try_get::<_, &str>(14).map_err(|error| format!("column queue: {error}"))?),
        priority: crate::queue::columns::priority_of(i64::from(column::<i16>(row, 15, "priority")?)),
    })
}

/// Reads a record from a row selected with [`RECORD_COLUMNS`], plus the body when asked.
pub(super) fn record_from_row(row: &Row, with_payload: bool) -> Result<JobRecord, String> {
    let state: String = column(row, 2, "state")?;
    let result: Option<String> = column(row, 11, "result")?;
    let payload = if with_payload {
        let body: Option<Vec<u8>> = column(row, 18, "body")?;
        let is_json: bool = column(row, 14, "body_is_json")?;
        body.and_then(|bytes| payload_value(bytes, is_json))
    } else {
        None
    };
    let submitted_by: String = column(row, 13, "submitted_by")?;
    Ok(JobRecord {
        id: job_id(column(row, 0, "id")?),
        kind: column(row, 1, "kind")?,
        queue: column(row, 16, "queue")?,
        priority: crate::queue::columns::priority_of(i64::from(column::<i16>(row, 17, "priority")?)),
        state: state_of(&state),
        attempts: unsigned(column(row, 3, "attempts")?, "attempts")?,
        max_attempts: unsigned(column(row, 4, "max_attempts")?, "max_attempts")?,
        timeout_ms: column::<Option<i64>>(row, 5, "timeout_ms")?.map(i64::unsigned_abs),
        created_at: from_millis(column(row, 6, "created_at")?),
        run_at: column::<Option<i64>>(row, 7, "run_at")?.map(from_millis),
        started_at: column::<Option<i64>>(row, 8, "started_at")?.map(from_millis),
        finished_at: column::<Option<i64>>(row, 9, "finished_at")?.map(from_millis),
        last_error: column(row, 10, "last_error")?,
        result: result.and_then(|text| serde_json::from_str::<JobResult>(&text).ok()),
        idempotency_key: column(row, 12, "idempotency_key")?,
        submitted_by: Some(submitted_by).filter(|name| !name.is_empty()),
        payload,
        target: None,
        args: column::<Option<String>>(row, 15, "args")?
            .map(|text| RawValue::from_string(text).map_err(|error| format!("column args: {error}")))
            .transpose()?,
        body_is_json: column(row, 14, "body_is_json")?,
    })
}

/// An insert's columns as arrays, borrowing from the jobs.
pub(super) struct InsertColumns<'a> {
    pub(super) ids: Vec<uuid::Uuid>,
    pub(super) kinds: Vec<&'a str>,
    pub(super) states: Vec<&'static str>,
    pub(super) run_at: Vec<Option<i64>>,
    pub(super) max_attempts: Vec<i32>,
    pub(super) timeout_ms: Vec<Option<i64>>,
    pub(super) created_at: Vec<i64>,
    pub(super) keys: Vec<Option<&'a str>>,
    pub(super) submitted_by: Vec<&'a str>,
    pub(super) bodies: Vec<Option<&'a [u8]>>,
    pub(super) body_is_json: Vec<bool>,
    pub(super) args: Vec<Option<&'a str>>,
    pub(super) queues: Vec<&'a str>,
    pub(super) priorities: Vec<i16>,
}

impl InsertColumns<'_> {
    pub(super) fn with_capacity(count: usize) -> Self {
        InsertColumns {
            ids: Vec::with_capacity(count),
            kinds: Vec::with_capacity(count),
            states: Vec::with_capacity(count),
            run_at: Vec::with_capacity(count),
            max_attempts: Vec::with_capacity(count),
            timeout_ms: Vec::with_capacity(count),
            created_at: Vec::with_capacity(count),
            keys: Vec::with_capacity(count),
            submitted_by: Vec::with_capacity(count),
            bodies: Vec::with_capacity(count),
            body_is_json: Vec::with_capacity(count),
            args: Vec::with_capacity(count),
            queues: Vec::with_capacity(count),
            priorities: Vec::with_capacity(count),
        }
    }
}
