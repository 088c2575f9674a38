//! Rows to envelopes and back: how a job, an attempt's end and a record map to columns.
//! Nothing here knows a kind: arguments and body are stored as the job carries them.

use std::borrow::Cow;

use rusqlite::Row;
use serde_json::value::RawValue;

use super::sql::claim;
use crate::job::{Body, Job, JobId, JobRecord, JobResult, queue_name};
use crate::queue::columns::payload_value;
pub(super) use crate::queue::columns::{FinishColumns, from_millis, millis, state_of};

/// Rebuilds a job's envelope from a claimed row. Any column that does not decode (a bad
/// id, a negative count, arguments that are not JSON) is an error naming it, so that one
/// bad row is dead-lettered instead of failing every fetch and stopping the whole queue.
/// A kind this build does not know is no decoding error: the envelope is whole, and its
/// run fails for good (see `crate::runner`).
pub(super) fn decode_claimed(row: &Row<'_>) -> Result<Job, String> {
    let column = |name: &str, error: rusqlite::Error| format!("column {name}: {error}");
    let id: [u8; 16] = row.get(claim::ID).map_err(|error| column("id", error))?;
    let attempts: u32 = row.get(claim::ATTEMPTS).map_err(|error| column("attempts", error))?;
    let max_attempts: u32 = row.get(claim::MAX_ATTEMPTS).map_err(|error| column("max_attempts", error))?;
    let timeout_ms: Option<i64> = row.get(claim::TIMEOUT_MS).map_err(|error| column("timeout_ms", error))?;
    let timeout_ms = timeout_ms
        .map(|ms| u64::try_from(ms).map_err(|_| format!("column timeout_ms: {ms} is negative")))
        .transpose()?;
    let args = row
        .get::<_, Option<String>>(claim::ARGS)
        .map_err(|error| column("args", error))?
        .map(|text| RawValue::from_string(text).map_err(|error| format!("column args: {error}")))
        .transpose()?;
    let body = row
        .get::<_, Option<Vec<u8>>>(claim::BODY)
        .map_err(|error| column("body", error))?
        .map(|bytes| -> Result<Body, String> {
            let is_json: bool = row.get(claim::BODY_IS_JSON).map_err(|error| column("body_is_json", error))?;
            Ok(Body { bytes, is_json })
        })
        .transpose()?;
    Ok(Job {
        id: JobId::from_bytes(id),
        created_at: from_millis(row.get(claim::CREATED_AT).map_err(|error| column("created_at", error))?),
        attempt: attempts.saturating_add(1),
        claim: 0,
        max_attempts,
        timeout_ms,
        run_at: row.get::<_, Option<i64>>(claim::RUN_AT).map_err(|error| column("run_at", error))?.map(from_millis),
        idempotency_key: row.get(claim::IDEMPOTENCY_KEY).map_err(|error| column("idempotency_key", error))?,
        submitted_by: row
            .get::<_, String>(claim::SUBMITTED_BY)
            .map(|name| Some(name).filter(|name| !name.is_empty()))
            .map_err(|error| column("submitted_by", error))?,
        kind: Cow::Owned(row.get(claim::KIND).map_err(|error| column("kind", error))?),
        queue: queue_name(
            row.get_ref(claim::QUEUE)
                .and_then(|value| value.as_str().map_err(Into::into))
                .map_err(|error| column("queue", error))?,
        ),
        priority: crate::queue::columns::priority_of(
            row.get(claim::PRIORITY).map_err(|error| column("priority", error))?,
        ),
        args,
        body,
    })
}

/// Reads a record from a row selected with [`RECORD_COLUMNS`] (plus `body` when wanted).
pub(super) fn record_from_row(row: &Row<'_>, with_payload: bool) -> rusqlite::Result<JobRecord> {
    let state: String = row.get("state")?;
    let result: Option<String> = row.get("result")?;
    let payload = if with_payload {
        let body: Option<Vec<u8>> = row.get("body")?;
        let is_json: bool = row.get("body_is_json")?;
        body.and_then(|bytes| payload_value(bytes, is_json))
    } else {
        None
    };
    Ok(JobRecord {
        id: JobId::from_bytes(row.get("id")?),
        kind: row.get("kind")?,
        queue: row.get("queue")?,
        priority: crate::queue::columns::priority_of(row.get("priority")?),
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
        target: None,
        args: row.get::<_, Option<String>>("args")?.and_then(|text| RawValue::from_string(text).ok()),
        body_is_json: row.get("body_is_json")?,
    })
}
