//! Request bodies to validated jobs: parses `POST /v1/jobs` and `POST /v1/payloads` bodies,
//! naming the job index and field of every problem.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

use base64::Engine as _;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::job::{JobKind, JobSpec, UploadBody, UploadSpec};
use crate::keys::ObjectKey;

/// The longest `sleep` a test job may ask for; keeps a typo from parking a worker for days.
const MAX_SLEEP_MILLIS: u64 = 3_600_000;
/// The most attempts a job may ask for.
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;
/// The longest timeout a job may ask for: a day.
pub const MAX_TIMEOUT_MS: u64 = 86_400_000;
/// The furthest ahead a job may be scheduled, by `delay_ms` or by `run_at`: a year. A
/// time further out is almost always a unit or a typo, and would sit in the queue for ever.
pub const MAX_DELAY_MS: u64 = 365 * 86_400_000;
/// The longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;
/// The most user metadata entries an upload may carry.
const MAX_METADATA_ENTRIES: usize = 32;
/// The most bytes of user metadata, keys and values together: S3's limit is 2 KiB.
const MAX_METADATA_BYTES: usize = 2048;
/// The longest Content-Type accepted; S3 headers are limited and no real type is longer.
const MAX_CONTENT_TYPE_BYTES: usize = 256;

/// What the parser needs to know about the daemon.
#[derive(Debug, Clone, Copy)]
pub struct ParseOptions {
    /// Whether the `sleep`, `fail` and `panic` kinds exist.
    pub test_kinds: bool,
    /// Whether the store records object metadata (a `file://` store cannot).
    pub metadata_supported: bool,
    /// The deepest nesting of arrays and objects a body may have, counted from the top.
    pub max_json_depth: usize,
    /// The most jobs (or payloads) one request may carry.
    pub max_jobs_per_request: usize,
}

impl ParseOptions {
    /// The defaults, with the test kinds off.
    pub const DEFAULT: ParseOptions = ParseOptions {
        test_kinds: false,
        metadata_supported: true,
        max_json_depth: DEFAULT_MAX_JSON_DEPTH,
        max_jobs_per_request: DEFAULT_MAX_JOBS_PER_REQUEST,
    };
}

/// Default `max_json_depth`: a job wrapper takes three levels, which leaves payloads 61,
/// far more than real documents use and far fewer than could exhaust a stack.
pub const DEFAULT_MAX_JSON_DEPTH: usize = 64;
/// Default `max_jobs_per_request`: large batches are what make ingest fast, and ten
/// thousand jobs are committed in well under a second.
pub const DEFAULT_MAX_JOBS_PER_REQUEST: usize = 10_000;

/// One problem with one field of one job.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// The job's position in the request, when the problem belongs to one job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// The field's JSON path within the job (or within the body, without an index).
    pub field: String,
    pub message: String,
}

/// Why a request body was refused. Nothing from a refused body is ever enqueued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmissionError {
    #[error("the body is not valid JSON: {0}")]
    Syntax(String),
    #[error("the body nests arrays and objects deeper than max_json_depth ({limit}), at byte {offset}")]
    TooDeep { limit: usize, offset: usize },
    /// The count is not given: parsing stops at the first entry past the limit, so that
    /// a hostile body costs no more than the limit's worth of entries.
    #[error("{field} holds more than {limit} entries; at most {limit} (max_jobs_per_request) are accepted per request")]
    TooManyJobs { field: &'static str, limit: usize },
    #[error("{}", describe(.0))]
    Invalid(Vec<FieldError>),
}

impl SubmissionError {
    /// One problem with a field of the request as a whole (a header, the query, the body).
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        SubmissionError::Invalid(vec![FieldError { index: None, field: field.to_owned(), message: message.into() }])
    }
}

fn describe(errors: &[FieldError]) -> String {
    let Some(first) = errors.first() else {
        return "the request is invalid".to_owned();
    };
    let location = match first.index {
        Some(index) => format!("jobs[{index}].{}", first.field),
        None => first.field.clone(),
    };
    format!("{location}: {}", first.message)
}

/// A job as it arrives, before validation. Unknown fields are refused, so that a
/// misspelt option is an error rather than silently ignored.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Job)]
pub(crate) struct RawJob {
    /// `upload` or `noop`; with test_kinds also `sleep`, `fail` and `panic`.
    #[schema(value_type = KindName)]
    kind: String,
    /// For `upload`: the JSON to store, byte for byte. For test kinds: their options.
    #[serde(default)]
    #[schema(value_type = Option<serde_json::Value>)]
    payload: Option<Box<RawValue>>,
    #[serde(default)]
    body_base64: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    content_encoding: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<std::collections::BTreeMap<String, String>>)]
    metadata: Option<Metadata>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    run_at: Option<String>,
    #[serde(default)]
    delay_ms: Option<u64>,
}

/// The kinds of job, as the API description names them. `kind` itself is read as a
/// string, so that an unknown kind gets its own message naming the known ones.
#[derive(utoipa::ToSchema)]
#[schema(as = Kind, rename_all = "snake_case")]
#[expect(dead_code, reason = "only its schema is used")]
enum KindName {
    Upload,
    Noop,
    Sleep,
    Fail,
    Panic,
}

/// The body of `POST /v1/payloads`, as the API description shows it. The parser reads it
/// with [`PayloadsBody`] instead, which counts the payloads as it goes.
#[derive(Debug, utoipa::ToSchema)]
#[expect(dead_code, reason = "only its schema is used")]
pub(crate) struct PayloadCollection {
    /// Each payload becomes one `upload` job under a default key.
    #[schema(value_type = Vec<serde_json::Value>)]
    payloads: Vec<Box<RawValue>>,
}

/// Reads a JSON array as its entries' unparsed text, borrowed from the body, and fails at
/// the first entry past `limit`. Entries are parsed into jobs only once the count is known
/// to be within the limit, so a body of a million tiny entries costs a few pointers per
/// entry up to the limit, instead of a parsed job per entry before the count is checked.
struct BoundedArray<'flag> {
    limit: usize,
    /// Set when the limit was passed, so that the caller can tell this error from a type
    /// error, both of which serde reports as a data error.
    exceeded: &'flag Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for BoundedArray<'_> {
    type Value = Vec<&'de RawValue>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for BoundedArray<'_> {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut entries: A) -> Result<Self::Value, A::Error> {
        let mut found = Vec::new();
        while let Some(entry) = entries.next_element::<&'de RawValue>()? {
            if found.len() == self.limit {
                self.exceeded.set(true);
                return Err(de::Error::custom(format_args!("holds more than {} entries", self.limit)));
            }
            found.push(entry);
        }
        Ok(found)
    }
}

/// The top level of a `POST /v1/jobs` body, read without keeping its keys: the `jobs`
/// value if there is one, and the first other key, which is an error next to `jobs`.
/// Keeping every key (as a map would) would let a body of a million short keys cost many
/// times its size.
struct JobsBodyTop<'de> {
    jobs: Option<&'de RawValue>,
    first_other_key: Option<String>,
}

impl<'de> Deserialize<'de> for JobsBodyTop<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TopVisitor;
        impl<'de> Visitor<'de> for TopVisitor {
            type Value = JobsBodyTop<'de>;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut top = JobsBodyTop { jobs: None, first_other_key: None };
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    let value = map.next_value::<&'de RawValue>()?;
                    if key == "jobs" {
                        top.jobs = Some(value);
                    } else if top.first_other_key.is_none() {
                        top.first_other_key = Some(key.into_owned());
                    }
                }
                Ok(top)
            }
        }
        deserializer.deserialize_map(TopVisitor)
    }
}

/// A `POST /v1/payloads` body: `{"payloads": [...]}` and nothing else, its entries counted
/// by [`BoundedArray`] as they are read.
struct PayloadsBody<'flag> {
    array: BoundedArray<'flag>,
}

impl<'de> DeserializeSeed<'de> for PayloadsBody<'_> {
    type Value = Vec<&'de RawValue>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_struct("PayloadCollection", &["payloads"], self)
    }
}

impl<'de> Visitor<'de> for PayloadsBody<'_> {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an object with \"payloads\"")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut array = Some(self.array);
        let mut payloads = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key != "payloads" {
                return Err(de::Error::unknown_field(&key, &["payloads"]));
            }
            let Some(array) = array.take() else {
                return Err(de::Error::duplicate_field("payloads"));
            };
            payloads = Some(map.next_value_seed(array)?);
        }
        payloads.ok_or_else(|| de::Error::missing_field("payloads"))
    }
}

/// Parses a `POST /v1/jobs` body: `{"jobs": [...]}` or a single job object.
pub fn parse_jobs(body: &[u8], options: ParseOptions) -> Result<Vec<JobSpec>, SubmissionError> {
    check_depth(body, options.max_json_depth)?;
    let text = std::str::from_utf8(body).map_err(|error| SubmissionError::Syntax(error.to_string()))?;
    let top: JobsBodyTop = serde_json::from_str(text).map_err(top_level_error)?;
    // Each job's unparsed text, in request order: its position is the index its errors name.
    let job_texts: Vec<&RawValue> = if let Some(jobs) = top.jobs {
        if let Some(other) = &top.first_other_key {
            return Err(invalid(None, other, "unknown field; a body with \"jobs\" has no other fields"));
        }
        let limit = options.max_jobs_per_request;
        let exceeded = Cell::new(false);
        deserialize_seed_at(jobs.get(), "jobs", BoundedArray { limit, exceeded: &exceeded })
            .map_err(|error| too_many_or(error, &exceeded, "jobs", limit))?
    } else {
        // A single job without the wrapper is job 0 for error reporting.
        vec![serde_json::from_str::<&RawValue>(text).map_err(|error| SubmissionError::Syntax(error.to_string()))?]
    };
    if job_texts.is_empty() {
        return Err(invalid(None, "jobs", "must contain at least one job"));
    }
    let mut raw_jobs = Vec::with_capacity(job_texts.len());
    for (index, job_text) in job_texts.into_iter().enumerate() {
        let raw: RawJob = deserialize_at(job_text.get(), "").map_err(|error| match error {
            SubmissionError::Invalid(mut errors) => {
                for error in &mut errors {
                    error.index = Some(index);
                }
                SubmissionError::Invalid(errors)
            }
            other => other,
        })?;
        raw_jobs.push(raw);
    }
    let mut kinds = Vec::with_capacity(raw_jobs.len());
    let mut errors = Vec::new();
    for (index, mut raw) in raw_jobs.into_iter().enumerate() {
        let options_result = take_job_options(&mut raw);
        let result = options_result
            .and_then(|options_only| validate_job(raw, options).map(|kind| JobSpec { kind, ..options_only }));
        match result {
            Ok(spec) => kinds.push(spec),
            Err((field, message)) => errors.push(FieldError { index: Some(index), field, message }),
        }
    }
    if errors.is_empty() { Ok(kinds) } else { Err(SubmissionError::Invalid(errors)) }
}

/// Parses a `POST /v1/payloads` body: the seed's `{"payloads": [...]}` collection, one
/// `upload` job per payload.
pub fn parse_payloads(body: &[u8], options: ParseOptions) -> Result<Vec<JobSpec>, SubmissionError> {
    check_depth(body, options.max_json_depth)?;
    let text = std::str::from_utf8(body).map_err(|error| SubmissionError::Syntax(error.to_string()))?;
    let limit = options.max_jobs_per_request;
    let exceeded = Cell::new(false);
    let payloads = deserialize_seed_at(text, "", PayloadsBody { array: BoundedArray { limit, exceeded: &exceeded } })
        .map_err(|error| too_many_or(error, &exceeded, "payloads", limit))?;
    if payloads.is_empty() {
        return Err(invalid(None, "payloads", "must contain at least one payload"));
    }
    Ok(payloads
        .into_iter()
        .map(|payload| {
            JobSpec::new(JobKind::Upload(UploadSpec {
                body: UploadBody::Json(payload.to_owned()),
                key: None,
                content_type: None,
                content_encoding: None,
                metadata: Vec::new(),
            }))
        })
        .collect())
}

/// Refuses a body whose arrays and objects nest deeper than `limit`, in one pass over
/// the bytes and before any value is built, so a hostile body costs no more than its
/// length: no recursion, no allocation. Brackets inside strings do not count. Bodies
/// that are not JSON at all pass through to the parser, which names the syntax error.
pub fn check_depth(body: &[u8], limit: usize) -> Result<(), SubmissionError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (offset, &byte) in body.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return Err(SubmissionError::TooDeep { limit, offset });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Checks an idempotency key from a job field or the `Idempotency-Key` header.
pub fn check_idempotency_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
        return Err(format!("must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} bytes long"));
    }
    if key.chars().any(char::is_control) {
        return Err("must not contain control characters".to_owned());
    }
    Ok(())
}

fn top_level_error(error: serde_json::Error) -> SubmissionError {
    match error.classify() {
        serde_json::error::Category::Data => {
            invalid(None, "", "the body must be a JSON object: a job, or {\"jobs\": [...]}")
        }
        _ => SubmissionError::Syntax(error.to_string()),
    }
}

fn invalid(index: Option<usize>, field: &str, message: &str) -> SubmissionError {
    SubmissionError::Invalid(vec![FieldError { index, field: field.to_owned(), message: message.to_owned() }])
}

/// Deserializes `text`, turning a type error into a [`FieldError`] that names the job
/// index and field, e.g. `jobs[3].kind`.
fn deserialize_at<'de, T: Deserialize<'de>>(text: &'de str, root: &str) -> Result<T, SubmissionError> {
    deserialize_seed_at(text, root, PhantomData::<T>)
}

/// The error of a [`BoundedArray`] read: [`SubmissionError::TooManyJobs`] naming `field`
/// if the array passed its limit, else `error` as it is.
fn too_many_or(error: SubmissionError, exceeded: &Cell<bool>, field: &'static str, limit: usize) -> SubmissionError {
    if exceeded.get() { SubmissionError::TooManyJobs { field, limit } } else { error }
}

/// Deserializes `text` with `seed`, turning a type error into a [`FieldError`] as
/// [`deserialize_at`] does.
fn deserialize_seed_at<'de, S: DeserializeSeed<'de>>(
    text: &'de str,
    root: &str,
    seed: S,
) -> Result<S::Value, SubmissionError> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let mut track = serde_path_to_error::Track::new();
    let value =
        seed.deserialize(serde_path_to_error::Deserializer::new(&mut deserializer, &mut track)).map_err(|inner| {
            if !matches!(inner.classify(), serde_json::error::Category::Data) {
                return SubmissionError::Syntax(inner.to_string());
            }
            let (index, field) = split_path(root, &track.path());
            SubmissionError::Invalid(vec![FieldError { index, field, message: strip_position(&inner) }])
        })?;
    deserializer.end().map_err(|error| SubmissionError::Syntax(error.to_string()))?;
    Ok(value)
}

/// Splits a serde path into the job index and the field within that job.
fn split_path(root: &str, path: &serde_path_to_error::Path) -> (Option<usize>, String) {
    use serde_path_to_error::Segment;
    let mut segments = path.iter().peekable();
    let mut index = None;
    if root == "jobs" {
        if let Some(Segment::Seq { index: position }) = segments.peek() {
            index = Some(*position);
            segments.next();
        }
    }
    let mut field = String::new();
    if index.is_none() && !root.is_empty() {
        field.push_str(root);
    }
    for segment in segments {
        match segment {
            Segment::Seq { index } => field.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !field.is_empty() {
                    field.push('.');
                }
                field.push_str(key);
            }
            Segment::Enum { variant } => field.push_str(variant),
            Segment::Unknown => {}
        }
    }
    (index, field)
}

/// serde_json appends " at line L column C" to data errors; inside a nested value those
/// positions are relative to the fragment and would mislead, so they are dropped.
fn strip_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(position) => text[..position].to_owned(),
        None => text,
    }
}

type FieldProblem = (String, String);

/// Takes and checks the options every kind accepts, returning them in a spec whose kind
/// is a placeholder.
fn take_job_options(raw: &mut RawJob) -> Result<JobSpec, FieldProblem> {
    let idempotency_key = raw.idempotency_key.take();
    if let Some(key) = &idempotency_key {
        check_idempotency_key(key).map_err(|message| field_problem("idempotency_key", message))?;
    }
    if let Some(attempts) = raw.max_attempts
        && !(1..=MAX_ATTEMPTS_LIMIT).contains(&attempts)
    {
        return Err(field_problem("max_attempts", format!("must be between 1 and {MAX_ATTEMPTS_LIMIT}")));
    }
    if let Some(timeout) = raw.timeout_ms
        && !(1..=MAX_TIMEOUT_MS).contains(&timeout)
    {
        return Err(field_problem("timeout_ms", format!("must be between 1 and {MAX_TIMEOUT_MS}")));
    }
    let run_at = match (raw.run_at.take(), raw.delay_ms) {
        (Some(_), Some(_)) => return Err(field_problem("delay_ms", "give either run_at or delay_ms, not both")),
        (Some(text), None) => {
            let at = chrono::DateTime::parse_from_rfc3339(&text)
                .map_err(|error| field_problem("run_at", format!("is not an RFC 3339 time: {error}")))?
                .with_timezone(&chrono::Utc);
            // The same bound as delay_ms, measured from the moment the job arrives.
            if at > chrono::Utc::now() + chrono::Duration::milliseconds(MAX_DELAY_MS as i64) {
                return Err(field_problem(
                    "run_at",
                    format!("must be at most a year ({MAX_DELAY_MS} ms, as delay_ms) from now"),
                ));
            }
            Some(at)
        }
        (None, Some(delay)) if delay > MAX_DELAY_MS => {
            return Err(field_problem("delay_ms", format!("must be at most {MAX_DELAY_MS}")));
        }
        (None, Some(delay)) => Some(chrono::Utc::now() + chrono::Duration::milliseconds(delay as i64)),
        (None, None) => None,
    };
    Ok(JobSpec {
        idempotency_key,
        max_attempts: raw.max_attempts,
        timeout_ms: raw.timeout_ms,
        run_at,
        ..JobSpec::new(JobKind::Noop)
    })
}

fn field_problem(field: &str, message: impl Into<String>) -> FieldProblem {
    (field.to_owned(), message.into())
}

fn validate_job(raw: RawJob, options: ParseOptions) -> Result<JobKind, FieldProblem> {
    let is_test_kind = matches!(raw.kind.as_str(), "sleep" | "fail" | "panic");
    if is_test_kind && !options.test_kinds {
        return Err(field_problem("kind", format!("unknown kind {:?}; known kinds: upload, noop", raw.kind)));
    }
    if raw.kind != "upload" {
        for (field, present) in [
            ("body_base64", raw.body_base64.is_some()),
            ("key", raw.key.is_some()),
            ("content_type", raw.content_type.is_some()),
            ("content_encoding", raw.content_encoding.is_some()),
            ("metadata", raw.metadata.is_some()),
        ] {
            if present {
                return Err(field_problem(field, "is only valid for kind \"upload\""));
            }
        }
    }
    match raw.kind.as_str() {
        "upload" => validate_upload(raw, options).map(JobKind::Upload),
        "noop" => Ok(JobKind::Noop),
        "sleep" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct SleepPayload {
                ms: u64,
                #[serde(default)]
                blocking: bool,
                #[serde(default)]
                in_worker: bool,
            }
            let payload: SleepPayload = test_payload(raw.payload.as_deref(), true)?
                .ok_or_else(|| field_problem("payload", "must be {\"ms\": N}"))?;
            if payload.ms > MAX_SLEEP_MILLIS {
                return Err(field_problem("payload.ms", format!("must be at most {MAX_SLEEP_MILLIS}")));
            }
            Ok(JobKind::Sleep { millis: payload.ms, blocking: payload.blocking, in_worker: payload.in_worker })
        }
        "fail" | "panic" => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct MessagePayload {
                #[serde(default)]
                message: Option<String>,
                /// `fail` only: whether the error is worth retrying.
                #[serde(default = "default_true")]
                retryable: bool,
                /// `panic` only: panic in the Worker actor rather than in the job body.
                #[serde(default)]
                in_worker: bool,
            }
            let payload = test_payload::<MessagePayload>(raw.payload.as_deref(), false)?;
            let message = payload
                .as_ref()
                .and_then(|payload| payload.message.clone())
                .unwrap_or_else(|| format!("{} requested by the job", raw.kind));
            Ok(if raw.kind == "fail" {
                JobKind::Fail { message, retryable: payload.as_ref().is_none_or(|payload| payload.retryable) }
            } else {
                JobKind::Panic { message, in_worker: payload.as_ref().is_some_and(|payload| payload.in_worker) }
            })
        }
        other => {
            let known = if options.test_kinds { "upload, noop, sleep, fail, panic" } else { "upload, noop" };
            Err(field_problem("kind", format!("unknown kind {other:?}; known kinds: {known}")))
        }
    }
}

fn default_true() -> bool {
    true
}

fn test_payload<T: for<'de> Deserialize<'de>>(
    payload: Option<&RawValue>,
    required: bool,
) -> Result<Option<T>, FieldProblem> {
    match payload {
        None if required => Err(field_problem("payload", "is required for this kind")),
        None => Ok(None),
        Some(raw) => {
            serde_json::from_str(raw.get()).map(Some).map_err(|error| field_problem("payload", strip_position(&error)))
        }
    }
}

fn validate_upload(raw: RawJob, options: ParseOptions) -> Result<UploadSpec, FieldProblem> {
    let body = match (raw.payload, raw.body_base64) {
        (Some(_), Some(_)) => {
            return Err(field_problem("body_base64", "give either payload or body_base64, not both"));
        }
        (None, None) => return Err(field_problem("payload", "an upload needs payload or body_base64")),
        (Some(payload), None) => UploadBody::Json(payload),
        (None, Some(encoded)) => UploadBody::Bytes(
            base64::engine::general_purpose::STANDARD
                .decode(encoded.as_bytes())
                .map_err(|error| field_problem("body_base64", format!("is not valid base64: {error}")))?,
        ),
    };
    let key = raw
        .key
        .as_deref()
        .map(ObjectKey::parse)
        .transpose()
        .map_err(|error| field_problem("key", error.to_string()))?;
    if let Some(content_type) = &raw.content_type {
        let valid = !content_type.is_empty()
            && content_type.len() <= MAX_CONTENT_TYPE_BYTES
            && content_type.bytes().all(|byte| (0x20..0x7f).contains(&byte))
            && content_type.contains('/');
        if !valid {
            return Err(field_problem(
                "content_type",
                "must be a printable ASCII media type such as \"text/plain\", at most 256 bytes",
            ));
        }
    }
    if let Some(encoding) = &raw.content_encoding
        && encoding != "gzip"
    {
        return Err(field_problem("content_encoding", "must be \"gzip\" (the only encoding jobd applies)"));
    }
    let metadata: Vec<(String, String)> = raw.metadata.unwrap_or_default().0.into_iter().collect();
    if !metadata.is_empty() && !options.metadata_supported {
        return Err(field_problem("metadata", "needs a store that records metadata (s3:// or memory://), not file://"));
    }
    check_metadata(&metadata)?;
    Ok(UploadSpec { body, key, content_type: raw.content_type, content_encoding: raw.content_encoding, metadata })
}

/// An upload's `metadata` as it is read: a map that stops at the first entry past
/// [`MAX_METADATA_ENTRIES`], so that a body of many tiny entries is refused at about its
/// own size instead of first becoming a map of a million strings.
#[derive(Debug, Default)]
pub(crate) struct Metadata(std::collections::BTreeMap<String, String>);

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BoundedMap;
        impl<'de> Visitor<'de> for BoundedMap {
            type Value = Metadata;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(formatter, "an object of at most {MAX_METADATA_ENTRIES} string entries")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Metadata, A::Error> {
                let mut entries = std::collections::BTreeMap::new();
                while let Some(name) = map.next_key::<String>()? {
                    if entries.len() == MAX_METADATA_ENTRIES {
                        return Err(de::Error::custom(format!("has more than {MAX_METADATA_ENTRIES} entries")));
                    }
                    let value = map.next_value::<String>()?;
                    entries.insert(name, value);
                }
                Ok(Metadata(entries))
            }
        }
        deserializer.deserialize_map(BoundedMap)
    }
}

/// User metadata rules: few short entries of header-safe names and printable values, as
/// S3 accepts them.
fn check_metadata(metadata: &[(String, String)]) -> Result<(), FieldProblem> {
    if metadata.len() > MAX_METADATA_ENTRIES {
        return Err(field_problem("metadata", format!("has more than {MAX_METADATA_ENTRIES} entries")));
    }
    let total: usize = metadata.iter().map(|(name, value)| name.len() + value.len()).sum();
    if total > MAX_METADATA_BYTES {
        return Err(field_problem("metadata", format!("is larger than {MAX_METADATA_BYTES} bytes")));
    }
    for (name, value) in metadata {
        let valid_name = !name.is_empty()
            && name.len() <= 128
            && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
        if !valid_name {
            return Err(field_problem(&format!("metadata.{name}"), "names are 1-128 letters, digits, '-' or '_'"));
        }
        if !value.bytes().all(|byte| (0x20..0x7f).contains(&byte)) {
            return Err(field_problem(&format!("metadata.{name}"), "values are printable ASCII"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: ParseOptions = ParseOptions { test_kinds: true, ..ParseOptions::DEFAULT };

    fn first_error(result: Result<Vec<JobSpec>, SubmissionError>) -> FieldError {
        match result {
            Err(SubmissionError::Invalid(errors)) => errors[0].clone(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn wrapped_and_single_forms_parse() {
        let jobs = parse_jobs(br#"{"jobs":[{"kind":"noop"},{"kind":"upload","payload":{"a":1}}]}"#, OPTIONS);
        assert_eq!(jobs.map(|j| j.len()), Ok(2));
        let single = parse_jobs(br#"{"kind":"sleep","payload":{"ms":5}}"#, OPTIONS);
        assert!(matches!(
            single.as_deref(),
            Ok([JobSpec { kind: JobKind::Sleep { millis: 5, blocking: false, in_worker: false }, .. }])
        ));
    }

    #[test]
    fn payload_bytes_are_kept_exactly() {
        let jobs = parse_payloads(br#"{"payloads":[ {"b":2,  "a":1.50} ]}"#, OPTIONS).expect("valid");
        let JobKind::Upload(upload) = &jobs[0].kind else { panic!("not an upload") };
        assert_eq!(upload.body.as_bytes(), br#"{"b":2,  "a":1.50}"#);
    }

    #[test]
    fn errors_name_index_and_field() {
        let error = first_error(parse_jobs(br#"{"jobs":[{"kind":"noop"},{"kind":7}]}"#, OPTIONS));
        assert_eq!((error.index, error.field.as_str()), (Some(1), "kind"));
        let error = first_error(parse_jobs(br#"{"jobs":[{"kind":"noop"},{"kind":"nope"}]}"#, OPTIONS));
        assert_eq!((error.index, error.field.as_str()), (Some(1), "kind"));
        let error = first_error(parse_jobs(br#"{"jobs":[{"kind":"upload","payload":1,"key":"../x"}]}"#, OPTIONS));
        assert_eq!((error.index, error.field.as_str()), (Some(0), "key"));
        let error = first_error(parse_jobs(br#"{"jobs":[]}"#, OPTIONS));
        assert_eq!((error.index, error.field.as_str()), (None, "jobs"));
        let error = first_error(parse_jobs(br#"{"jobs":"x"}"#, OPTIONS));
        assert_eq!((error.index, error.field.as_str()), (None, "jobs"));
        let error = first_error(parse_jobs(br#"{"kind":"noop","colour":"red"}"#, OPTIONS));
        assert!(error.message.contains("colour"), "{error:?}");
        let error = first_error(parse_jobs(br#"{"jobs":[{"kind":"noop","idempotency_key":""}]}"#, OPTIONS));
        assert_eq!((error.index, error.field.as_str()), (Some(0), "idempotency_key"));
        for (body, field) in [
            (r#"{"kind":"noop","max_attempts":0}"#, "max_attempts"),
            (r#"{"kind":"noop","timeout_ms":0}"#, "timeout_ms"),
            (r#"{"kind":"noop","run_at":"tomorrow"}"#, "run_at"),
            (r#"{"kind":"noop","run_at":"2030-01-01T00:00:00Z","delay_ms":5}"#, "delay_ms"),
            (r#"{"kind":"noop","delay_ms":-5}"#, "delay_ms"),
            (r#"{"kind":"noop","delay_ms":31536000001}"#, "delay_ms"),
            (r#"{"kind":"noop","run_at":"9999-12-31T23:59:59Z"}"#, "run_at"),
        ] {
            let error = first_error(parse_jobs(body.as_bytes(), OPTIONS));
            assert_eq!((error.index, error.field.as_str()), (Some(0), field), "{body}");
        }
        // A time within the year ahead, in another zone, is kept as that instant in UTC.
        let offset = chrono::FixedOffset::east_opt(2 * 3600).expect("valid offset");
        let soon = (chrono::Utc::now() + chrono::Duration::days(300)).with_timezone(&offset);
        let body = format!(r#"{{"kind":"noop","run_at":"{}","max_attempts":3}}"#, soon.to_rfc3339());
        let spec = parse_jobs(body.as_bytes(), OPTIONS).expect("valid").remove(0);
        assert_eq!(spec.run_at, Some(soon.with_timezone(&chrono::Utc)));
        let past = parse_jobs(br#"{"kind":"noop","run_at":"2020-01-01T00:00:00Z"}"#, OPTIONS).expect("valid");
        assert!(past[0].run_at.is_some());
        assert_eq!(spec.max_attempts, Some(3));
        let error = first_error(parse_payloads(br#"{"payloads":{}}"#, OPTIONS));
        assert_eq!((error.index, error.field.as_str()), (None, "payloads"));
    }

    #[test]
    fn test_kinds_are_unknown_unless_enabled() {
        let closed = ParseOptions { test_kinds: false, ..OPTIONS };
        let error = first_error(parse_jobs(br#"{"kind":"sleep","payload":{"ms":1}}"#, closed));
        assert_eq!(error.field, "kind");
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let deep = format!("{{\"kind\":\"upload\",\"payload\":{}1{}}}", "[".repeat(100_000), "]".repeat(100_000));
        let error = parse_jobs(deep.as_bytes(), OPTIONS).expect_err("too deep");
        assert_eq!(error, SubmissionError::TooDeep { limit: 64, offset: 90 });
        let shallow = format!("{{\"kind\":\"upload\",\"payload\":{}1{}}}", "[".repeat(63), "]".repeat(63));
        assert!(parse_jobs(shallow.as_bytes(), OPTIONS).is_ok());
        // Brackets inside strings, also after an escaped quote, are text.
        let text = format!("{{\"kind\":\"upload\",\"payload\":\"\\\"{}\"}}", "[".repeat(1_000));
        assert!(parse_jobs(text.as_bytes(), OPTIONS).is_ok());
    }

    #[test]
    fn requests_carry_at_most_max_jobs_per_request() {
        let options = ParseOptions { max_jobs_per_request: 2, ..OPTIONS };
        let body = br#"{"jobs":[{"kind":"noop"},{"kind":"noop"},{"kind":"noop"}]}"#;
        assert_eq!(
            parse_jobs(body, options).expect_err("too many"),
            SubmissionError::TooManyJobs { field: "jobs", limit: 2 }
        );
        let payloads = parse_payloads(br#"{"payloads":[1,2,3]}"#, options).expect_err("too many");
        assert!(matches!(payloads, SubmissionError::TooManyJobs { field: "payloads", .. }));
        // The count is checked before any entry is parsed: these entries are no jobs.
        assert_eq!(
            parse_jobs(br#"{"jobs":[{},{},{}]}"#, options).expect_err("too many"),
            SubmissionError::TooManyJobs { field: "jobs", limit: 2 }
        );
        // Within the limit, entry errors still name their index.
        let error = first_error(parse_jobs(br#"{"jobs":[{"kind":"noop"},{}]}"#, options));
        assert_eq!((error.index, error.field.as_str()), (Some(1), ""), "{error:?}");
        assert!(error.message.contains("kind"), "{error:?}");
    }

    #[test]
    fn syntax_errors_are_reported_as_such() {
        assert!(matches!(parse_jobs(b"{\"jobs\": [", OPTIONS), Err(SubmissionError::Syntax(_))));
        assert!(matches!(parse_jobs(b"[1,2]", OPTIONS), Err(SubmissionError::Invalid(_))));
    }
}
