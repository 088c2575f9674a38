//! Request bodies to validated jobs: parses `POST /v1/jobs` and `POST /v1/payloads` bodies,
//! naming the job index and field of every problem.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::job::JobSpec;
use crate::kinds::{FieldProblem, Kinds, RequestFields, field_problem, strip_position};
use crate::queues::Queues;

/// The most attempts a job may ask for.
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;
/// The longest timeout a job may ask for: a day.
pub const MAX_TIMEOUT_MS: u64 = 86_400_000;
/// The furthest ahead a job may be scheduled, by `delay_ms` or by `run_at`: a year. A
/// time further out is almost always a unit or a typo, and would sit in the queue for ever.
pub const MAX_DELAY_MS: u64 = 365 * 86_400_000;
/// The most fields a job may have besides the options every job has; every kind has far
/// fewer.
const MAX_KIND_FIELDS: usize = 32;
/// The longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;
/// What the parser needs to know about the daemon.
#[derive(Debug, Clone, Copy)]
pub struct ParseOptions {
    /// The deepest nesting of arrays and objects a body may have, counted from the top.
    pub max_json_depth: usize,
    /// The most jobs (or payloads) one request may carry.
    pub max_jobs_per_request: usize,
}

impl ParseOptions {
    /// The defaults.
    pub const DEFAULT: ParseOptions =
        ParseOptions { max_json_depth: DEFAULT_MAX_JSON_DEPTH, max_jobs_per_request: DEFAULT_MAX_JOBS_PER_REQUEST };
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

/// The options every job has, as the API description shows them; the document adds each
/// kind's own fields (`crate::kinds`) and the list of kinds. The parser reads jobs with
/// [`JobEntry`] instead, which hands the kind's fields to the kind unparsed.
#[derive(Debug, utoipa::ToSchema)]
#[schema(as = Job)]
#[expect(dead_code, reason = "only its schema is used")]
pub(crate) struct JobOptions {
    /// The job's kind; the test kinds exist only with test_kinds.
    kind: String,
    /// A client's key for deduplication, unique per token within the retention window.
    idempotency_key: Option<String>,
    /// Attempts before the job is dead, 1 to 100.
    max_attempts: Option<u32>,
    /// How long one attempt may take, in ms.
    timeout_ms: Option<u64>,
    /// When the job is due, as an RFC 3339 time at most a year ahead.
    run_at: Option<String>,
    /// How long from now the job is due, in ms, instead of `run_at`.
    delay_ms: Option<u64>,
    /// The queue the job runs in, one the configuration declares (`[queues.<name>]`); `default` unless given.
    queue: Option<String>,
    /// 0 to 9, default 5: within its queue, a job of higher priority starts first.
    priority: Option<u8>,
}

/// One job of a request as it is read: the options every job has, typed, and the kind's
/// own fields unparsed, borrowed from the body.
struct JobEntry<'de> {
    kind: String,
    idempotency_key: Option<String>,
    max_attempts: Option<u32>,
    timeout_ms: Option<u64>,
    run_at: Option<String>,
    delay_ms: Option<u64>,
    queue: Option<String>,
    priority: Option<i64>,
    fields: RequestFields<'de>,
}

/// Reads one job of a request into a [`JobEntry`].
struct EntryVisitor;

impl<'de> Visitor<'de> for EntryVisitor {
    type Value = JobEntry<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a job: an object with \"kind\"")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        /// Reads an option once; a second occurrence is an error, as serde's derive makes it.
        fn once<'de, A: MapAccess<'de>, T: Deserialize<'de>>(
            map: &mut A,
            slot: &mut Option<T>,
            name: &'static str,
        ) -> Result<(), A::Error> {
            if slot.is_some() {
                return Err(de::Error::duplicate_field(name));
            }
            *slot = map.next_value::<Option<T>>()?;
            Ok(())
        }
        let mut kind = None;
        let mut entry = JobEntry {
            kind: String::new(),
            idempotency_key: None,
            max_attempts: None,
            timeout_ms: None,
            run_at: None,
            delay_ms: None,
            queue: None,
            priority: None,
            fields: RequestFields::default(),
        };
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "kind" => once(&mut map, &mut kind, "kind")?,
                "idempotency_key" => once(&mut map, &mut entry.idempotency_key, "idempotency_key")?,
                "max_attempts" => once(&mut map, &mut entry.max_attempts, "max_attempts")?,
                "timeout_ms" => once(&mut map, &mut entry.timeout_ms, "timeout_ms")?,
                "run_at" => once(&mut map, &mut entry.run_at, "run_at")?,
                "delay_ms" => once(&mut map, &mut entry.delay_ms, "delay_ms")?,
                "queue" => once(&mut map, &mut entry.queue, "queue")?,
                "priority" => once(&mut map, &mut entry.priority, "priority")?,
                _ => {
                    // Bounded, so that a job of a million fields costs a parse error, not a
                    // list of a million borrowed values (and checks for a duplicate in it).
                    if entry.fields.len() == MAX_KIND_FIELDS {
                        return Err(de::Error::custom(format_args!(
                            "a job has at most {MAX_KIND_FIELDS} fields besides the common options"
                        )));
                    }
                    let value = map.next_value::<&'de RawValue>()?;
                    entry
                        .fields
                        .push(key, value)
                        .map_err(|(field, _)| de::Error::custom(format_args!("duplicate field `{field}`")))?;
                }
            }
        }
        entry.kind = kind.ok_or_else(|| de::Error::missing_field("kind"))?;
        Ok(entry)
    }
}

impl<'de> Deserialize<'de> for JobEntry<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(EntryVisitor)
    }
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
pub fn parse_jobs(
    body: &[u8],
    kinds: &Kinds,
    queues: &Queues,
    options: ParseOptions,
) -> Result<Vec<JobSpec>, SubmissionError> {
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
    let mut entries = Vec::with_capacity(job_texts.len());
    for (index, job_text) in job_texts.into_iter().enumerate() {
        let entry: JobEntry = deserialize_at(job_text.get(), "").map_err(|error| match error {
            SubmissionError::Invalid(mut errors) => {
                for error in &mut errors {
                    error.index = Some(index);
                }
                SubmissionError::Invalid(errors)
            }
            other => other,
        })?;
        entries.push(entry);
    }
    let mut specs = Vec::with_capacity(entries.len());
    let mut errors = Vec::new();
    for (index, entry) in entries.into_iter().enumerate() {
        match validate_job(entry, kinds, queues) {
            Ok(spec) => specs.push(spec),
            Err((field, message)) => errors.push(FieldError { index: Some(index), field, message }),
        }
    }
    if errors.is_empty() { Ok(specs) } else { Err(SubmissionError::Invalid(errors)) }
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
    Ok(payloads.into_iter().map(crate::kinds::upload::payload_job).collect())
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

/// Checks the options every job has and has its kind validate the rest.
fn validate_job(entry: JobEntry<'_>, kinds: &Kinds, queues: &Queues) -> Result<JobSpec, FieldProblem> {
    let JobEntry {
        kind: kind_name,
        idempotency_key,
        max_attempts,
        timeout_ms,
        run_at,
        delay_ms,
        queue,
        priority,
        mut fields,
    } = entry;
    let priority = priority
        .map(|priority| {
            u8::try_from(priority)
                .ok()
                .filter(|priority| *priority <= crate::job::MAX_PRIORITY)
                .ok_or_else(|| field_problem("priority", format!("must be between 0 and {}", crate::job::MAX_PRIORITY)))
        })
        .transpose()?;
    let queue =
        queue.map(|name| queues.resolve(&name)).transpose().map_err(|message| field_problem("queue", message))?;
    if let Some(key) = &idempotency_key {
        check_idempotency_key(key).map_err(|message| field_problem("idempotency_key", message))?;
    }
    if let Some(attempts) = max_attempts
        && !(1..=MAX_ATTEMPTS_LIMIT).contains(&attempts)
    {
        return Err(field_problem("max_attempts", format!("must be between 1 and {MAX_ATTEMPTS_LIMIT}")));
    }
    if let Some(timeout) = timeout_ms
        && !(1..=MAX_TIMEOUT_MS).contains(&timeout)
    {
        return Err(field_problem("timeout_ms", format!("must be between 1 and {MAX_TIMEOUT_MS}")));
    }
    let run_at = match (run_at, delay_ms) {
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
    let Some(kind) = kinds.get(&kind_name) else {
        return Err(field_problem("kind", format!("unknown kind {kind_name:?}; known kinds: {}", kinds.names_text())));
    };
    let validated = kind.validate(&mut fields)?;
    if let Some(field) = fields.remaining().next() {
        let message = match kinds.accepting(field) {
            Some(other) => format!("is only valid for kind {other:?}"),
            None => format!("unknown field `{field}`"),
        };
        return Err(field_problem(field, message));
    }
    Ok(JobSpec {
        idempotency_key,
        max_attempts,
        timeout_ms,
        run_at,
        queue,
        priority,
        ..JobSpec::new(kind.name(), validated.args, validated.body)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: ParseOptions = ParseOptions::DEFAULT;

    /// Every kind, the test kinds too.
    fn all_kinds() -> Kinds {
        Kinds::unserved(&crate::kinds::KindSettings { test_kinds: true, ..crate::kinds::KindSettings::defaults() })
            .expect("kinds")
    }

    fn parse(body: &[u8], options: ParseOptions) -> Result<Vec<JobSpec>, SubmissionError> {
        parse_jobs(body, &all_kinds(), &Queues::default(), options)
    }

    fn first_error(result: Result<Vec<JobSpec>, SubmissionError>) -> FieldError {
        match result {
            Err(SubmissionError::Invalid(errors)) => errors[0].clone(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn wrapped_and_single_forms_parse() {
        let jobs = parse(br#"{"jobs":[{"kind":"noop"},{"kind":"upload","payload":{"a":1}}]}"#, OPTIONS);
        assert_eq!(jobs.map(|j| j.len()), Ok(2));
        let single = parse(br#"{"kind":"sleep","payload":{"ms":5}}"#, OPTIONS);
        let single = single.expect("valid");
        assert_eq!((single.len(), single[0].kind), (1, "sleep"));
        let args: serde_json::Value = serde_json::from_str(single[0].args.as_ref().expect("args").get()).expect("JSON");
        assert_eq!(args, serde_json::json!({"ms": 5, "blocking": false, "in_worker": false, "beside_actors": false}));
    }

    #[test]
    fn a_noop_accepts_a_payload_and_drops_it_but_not_an_upload_field() {
        let jobs = parse(br#"{"kind":"noop","payload":{"pad":"xxxx"}}"#, OPTIONS).expect("valid");
        assert_eq!((jobs[0].kind, jobs[0].args.is_none(), jobs[0].body.is_none()), ("noop", true, true));
        let error = first_error(parse(br#"{"kind":"noop","content_type":"text/plain"}"#, OPTIONS));
        assert_eq!(
            (error.field.as_str(), error.message.as_str()),
            ("content_type", "is only valid for kind \"upload\"")
        );
    }

    #[test]
    fn a_job_holds_at_most_32_fields_besides_the_common_options() {
        let fields: Vec<String> = (0..=MAX_KIND_FIELDS).map(|n| format!("\"f{n}\":0")).collect();
        let body = format!("{{\"kind\":\"noop\",{}}}", fields.join(","));
        let error = first_error(parse(body.as_bytes(), OPTIONS));
        assert_eq!(error.index, Some(0));
        assert!(error.message.contains("at most 32 fields"), "{error:?}");
        // Within the bound, the first field no kind has is named.
        let error = first_error(parse(br#"{"kind":"noop","f0":0,"f1":0}"#, OPTIONS));
        assert_eq!((error.field.as_str(), error.message.as_str()), ("f0", "unknown field `f0`"));
    }

    #[test]
    fn payload_bytes_are_kept_exactly() {
        let jobs = parse_payloads(br#"{"payloads":[ {"b":2,  "a":1.50} ]}"#, OPTIONS).expect("valid");
        assert_eq!(jobs[0].kind, "upload");
        assert_eq!(jobs[0].body.as_ref().expect("a body").bytes, br#"{"b":2,  "a":1.50}"#);
    }

    #[test]
    fn errors_name_index_and_field() {
        let error = first_error(parse(br#"{"jobs":[{"kind":"noop"},{"kind":7}]}"#, OPTIONS));
        assert_eq!((error.index, error.field.as_str()), (Some(1), "kind"));
        let error = first_error(parse(br#"{"jobs":[{"kind":"noop"},{"kind":"nope"}]}"#, OPTIONS));
        assert_eq!((error.index, error.field.as_str()), (Some(1), "kind"));
        let error = first_error(parse(br#"{"jobs":[{"kind":"upload","payload":1,"key":"../x"}]}"#, OPTIONS));
        assert_eq!((error.index, error.field.as_str()), (Some(0), "key"));
        let error = first_error(parse(br#"{"jobs":[]}"#, OPTIONS));
        assert_eq!((error.index, error.field.as_str()), (None, "jobs"));
        let error = first_error(parse(br#"{"jobs":"x"}"#, OPTIONS));
        assert_eq!((error.index, error.field.as_str()), (None, "jobs"));
        let error = first_error(parse(br#"{"kind":"noop","colour":"red"}"#, OPTIONS));
        assert!(error.message.contains("colour"), "{error:?}");
        let error = first_error(parse(br#"{"jobs":[{"kind":"noop","idempotency_key":""}]}"#, OPTIONS));
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
            let error = first_error(parse(body.as_bytes(), OPTIONS));
            assert_eq!((error.index, error.field.as_str()), (Some(0), field), "{body}");
        }
        // A time within the year ahead, in another zone, is kept as that instant in UTC.
        let offset = chrono::FixedOffset::east_opt(2 * 3600).expect("valid offset");
        let soon = (chrono::Utc::now() + chrono::Duration::days(300)).with_timezone(&offset);
        let body = format!(r#"{{"kind":"noop","run_at":"{}","max_attempts":3}}"#, soon.to_rfc3339());
        let spec = parse(body.as_bytes(), OPTIONS).expect("valid").remove(0);
        assert_eq!(spec.run_at, Some(soon.with_timezone(&chrono::Utc)));
        let past = parse(br#"{"kind":"noop","run_at":"2020-01-01T00:00:00Z"}"#, OPTIONS).expect("valid");
        assert!(past[0].run_at.is_some());
        assert_eq!(spec.max_attempts, Some(3));
        let error = first_error(parse_payloads(br#"{"payloads":{}}"#, OPTIONS));
        assert_eq!((error.index, error.field.as_str()), (None, "payloads"));
    }

    #[test]
    fn test_kinds_are_unknown_unless_enabled() {
        let closed = Kinds::unserved(&crate::kinds::KindSettings::defaults()).expect("kinds");
        let error =
            first_error(parse_jobs(br#"{"kind":"sleep","payload":{"ms":1}}"#, &closed, &Queues::default(), OPTIONS));
        assert_eq!(error.field, "kind");
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let deep = format!("{{\"kind\":\"upload\",\"payload\":{}1{}}}", "[".repeat(100_000), "]".repeat(100_000));
        let error = parse(deep.as_bytes(), OPTIONS).expect_err("too deep");
        assert_eq!(error, SubmissionError::TooDeep { limit: 64, offset: 90 });
        let shallow = format!("{{\"kind\":\"upload\",\"payload\":{}1{}}}", "[".repeat(63), "]".repeat(63));
        assert!(parse(shallow.as_bytes(), OPTIONS).is_ok());
        // Brackets inside strings, also after an escaped quote, are text.
        let text = format!("{{\"kind\":\"upload\",\"payload\":\"\\\"{}\"}}", "[".repeat(1_000));
        assert!(parse(text.as_bytes(), OPTIONS).is_ok());
    }

    #[test]
    fn requests_carry_at_most_max_jobs_per_request() {
        let options = ParseOptions { max_jobs_per_request: 2, ..OPTIONS };
        let body = br#"{"jobs":[{"kind":"noop"},{"kind":"noop"},{"kind":"noop"}]}"#;
        assert_eq!(
            parse(body, options).expect_err("too many"),
            SubmissionError::TooManyJobs { field: "jobs", limit: 2 }
        );
        let payloads = parse_payloads(br#"{"payloads":[1,2,3]}"#, options).expect_err("too many");
        assert!(matches!(payloads, SubmissionError::TooManyJobs { field: "payloads", .. }));
        // The count is checked before any entry is parsed: these entries are no jobs.
        assert_eq!(
            parse(br#"{"jobs":[{},{},{}]}"#, options).expect_err("too many"),
            SubmissionError::TooManyJobs { field: "jobs", limit: 2 }
        );
        // Within the limit, entry errors still name their index.
        let error = first_error(parse(br#"{"jobs":[{"kind":"noop"},{}]}"#, options));
        assert_eq!((error.index, error.field.as_str()), (Some(1), ""), "{error:?}");
        assert!(error.message.contains("kind"), "{error:?}");
    }

    #[test]
    fn syntax_errors_are_reported_as_such() {
        assert!(matches!(parse(b"{\"jobs\": [", OPTIONS), Err(SubmissionError::Syntax(_))));
        assert!(matches!(parse(b"[1,2]", OPTIONS), Err(SubmissionError::Invalid(_))));
    }
}
