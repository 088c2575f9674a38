//! The submission routes, `POST /v1/jobs` and `POST /v1/payloads`, and their shared path:
//! the body read within its size and time limits, parsed, confined to the caller's key
//! prefixes, handed to the Ingest actor, and answered.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix_web::http::header;
use actix_web::web::{self, Bytes, BytesMut};
use actix_web::{HttpMessage as _, HttpRequest, HttpResponse};
use futures_util::StreamExt as _;
use serde::Serialize;

use super::problem::ProblemBody;
use super::{AcceptedJob, AppState, Problem, QUEUE_FULL_RETRY_AFTER_SECS};
use crate::actors::ingest::{Submit, SubmitError};
use crate::auth::Principal;
use crate::job::JobSpec;
use crate::kinds::Kinds;
use crate::queue::Refusal;
use crate::submission::{self, JobOptions, PayloadCollection};

/// `Retry-After` when submissions wait for a slow disk past `ingest_max_pending_bytes`. A
/// disk stall lasts seconds, longer than a queue takes to drain a little, so clients that
/// honour it come back once rather than many times into the same stall.
const COMMIT_BACKLOG_RETRY_AFTER_SECS: u64 = 5;

/// The answer to an accepted submission: one entry per job, in request order.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Accepted {
    jobs: Vec<AcceptedJob>,
}

/// Submits one job, or `{"jobs": [...]}`, atomically: all are enqueued or none.
#[utoipa::path(
    post,
    path = "/v1/jobs",
    tag = "jobs",
    request_body(content = JobOptions, description = "A job, or an object with `jobs`: an array of jobs"),
    params(("Idempotency-Key" = Option<String>, Header, description = "For a single-job request: a key that makes retries of it return the original job")),
    responses(
        (status = 202, description = "Accepted; every job is durably queued", body = Accepted),
        (status = 200, description = "Every job was already known by its idempotency key", body = Accepted),
        (status = 400, description = "The body or a field is invalid; `errors` names each field", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No bearer token, or an unknown one", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the scope, or one of its confinements (a kind's token limit) refused a job; `type` and `errors` say which", body = ProblemBody, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive within client_body_timeout_ms", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "The body exceeds max_body_bytes, or holds more than max_jobs_per_request jobs", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Content-Type is not JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "The queue is full; nothing was enqueued; see Retry-After", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Shutting down, or the queue cannot be written; nothing was enqueued", body = ProblemBody, content_type = "application/problem+json")
    ),
    security(("bearer" = []))
)]
pub(super) async fn post_jobs(
    request: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let options = state.parse_options;
    let kinds = state.kinds.clone();
    let queues = state.queues.clone();
    let header_key = request.headers().get("idempotency-key").map(|value| value.to_str().map(str::to_owned));
    let parse = move |bytes: &[u8]| {
        let mut jobs = submission::parse_jobs(bytes, &kinds, &queues, options)?;
        if let Some(key) = header_key {
            apply_idempotency_header(&mut jobs, key)?;
        }
        Ok(jobs)
    };
    counted(&state, submit(&request, body, &state, parse)).await
}

/// The `Idempotency-Key` header names the one job of a single-job request.
fn apply_idempotency_header(
    jobs: &mut [JobSpec],
    key: Result<String, header::ToStrError>,
) -> Result<(), submission::SubmissionError> {
    let header_problem = |message: &str| submission::SubmissionError::field("Idempotency-Key", message);
    let key = key.map_err(|_| header_problem("must be visible ASCII"))?;
    submission::check_idempotency_key(&key).map_err(|message| header_problem(&message))?;
    match jobs {
        [job] => match &job.idempotency_key {
            Some(own) if *own != key => Err(header_problem("differs from the job's idempotency_key")),
            _ => {
                job.idempotency_key = Some(key);
                Ok(())
            }
        },
        _ => Err(header_problem("applies to a single-job request only; give each job an idempotency_key")),
    }
}

/// Submits the seed's payload collection: one `upload` job per payload, all or none.
#[utoipa::path(
    post,
    path = "/v1/payloads",
    tag = "jobs",
    request_body = PayloadCollection,
    responses(
        (status = 202, description = "Accepted; every job is durably queued", body = Accepted),
        (status = 400, description = "The body or a field is invalid; `errors` names each field", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No bearer token, or an unknown one", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the scope, or one of its confinements (a kind's token limit) refused a job; `type` and `errors` say which", body = ProblemBody, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive within client_body_timeout_ms", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "The body exceeds max_body_bytes, or holds more than max_jobs_per_request jobs", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Content-Type is not JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "The queue is full; nothing was enqueued; see Retry-After", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Shutting down, or the queue cannot be written; nothing was enqueued", body = ProblemBody, content_type = "application/problem+json")
    ),
    security(("bearer" = []))
)]
pub(super) async fn post_payloads(
    request: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let options = state.parse_options;
    let parse = move |bytes: &[u8]| submission::parse_payloads(bytes, options);
    counted(&state, submit(&request, body, &state, parse)).await
}

/// Counts every refused submission by reason.
async fn counted(
    state: &AppState,
    answer: impl Future<Output = Result<HttpResponse, Problem>>,
) -> Result<HttpResponse, Problem> {
    let answer = answer.await;
    if let Err(problem) = &answer {
        // `/v1/stats` folds these reasons into its four (`crate::stats`).
        let reason = match problem.slug() {
            "queue-full" => "queue_full",
            "body-too-large" => "too_large",
            "too-many-jobs" => "too_many_jobs",
            "too-deep" => "too_deep",
            "body-timeout" => "body_timeout",
            "unavailable" => "unavailable",
            "commit-backlog" => "commit_backlog",
            slug => crate::kinds::token_limits()
                .find(|limit| limit.problem_slug == slug)
                .map_or("invalid", |limit| limit.rejection_reason),
        };
        state.metrics.submissions_rejected.with_label_values(&[reason]).inc();
    }
    answer
}

/// The shared path of both submission routes: check, read, parse, enqueue, answer.
async fn submit(
    request: &HttpRequest,
    body: web::Payload,
    state: &AppState,
    parse: impl FnOnce(&[u8]) -> Result<Vec<JobSpec>, submission::SubmissionError>,
) -> Result<HttpResponse, Problem> {
    if state.lifecycle.shutting_down.load(Ordering::Acquire) {
        return Err(Problem::unavailable("jobd is shutting down and accepts no new jobs"));
    }
    require_json(request)?;
    // A client that sends its body a byte at a time must not hold a connection and a
    // handler for ever.
    let bytes = tokio::time::timeout(state.client_body_timeout, read_body(request, body, state.max_body_bytes))
        .await
        .map_err(|_| {
            Problem::new(
                actix_web::http::StatusCode::REQUEST_TIMEOUT,
                "body-timeout",
                "Request Timeout",
                format!(
                    "the body did not arrive within client_body_timeout_ms ({} ms)",
                    state.client_body_timeout.as_millis()
                ),
            )
        })??;
    let jobs = parse(&bytes)?;
    let principal = request.extensions().get::<Arc<Principal>>().cloned();
    if let Some(principal) = principal {
        if let Err(refused) = authorize_jobs(&principal, &jobs, &state.kinds) {
            let (reason, problem) = *refused;
            state.metrics.auth_failures.with_label_values(&[reason]).inc();
            tracing::warn!(reason, token_name = principal.name, "submission refused");
            return Err(problem);
        }
    }
    let submitted_by = request.extensions().get::<Arc<Principal>>().map(|principal| principal.name.clone());
    let answer = state.ingest.send(Submit { jobs, submitted_by }).await;
    match answer {
        Ok(Ok(admitted)) => {
            // 202 when this request created a job; 200 when every job was already known
            // by its idempotency key, so that a retried request looks like the original.
            let mut response =
                if admitted.iter().any(|job| job.created) { HttpResponse::Accepted() } else { HttpResponse::Ok() };
            Ok(response.json(Accepted {
                jobs: admitted.into_iter().map(|job| AcceptedJob { id: job.id, state: job.state }).collect(),
            }))
        }
        Ok(Err(SubmitError::Refused(refusal @ Refusal::QueueFull { .. }))) => Err(Problem::new(
            actix_web::http::StatusCode::TOO_MANY_REQUESTS,
            "queue-full",
            "Queue Full",
            format!("{refusal}; nothing of this request was enqueued"),
        )
        .retry_after(QUEUE_FULL_RETRY_AFTER_SECS)),
        Ok(Err(SubmitError::Refused(full @ Refusal::StorageFull { .. }))) => {
            Err(Problem::unavailable(format!("{full}; nothing of this request was enqueued")))
        }
        Ok(Err(SubmitError::Storage(error))) if error.is_outcome_unknown() => Err(Problem::outcome_unknown(format!(
            "{error}; this request may or may not have been enqueued. Retry it once jobd answers again: a job with an \
             idempotency key is not created twice"
        ))),
        Ok(Err(SubmitError::Storage(error))) => {
            Err(Problem::unavailable(format!("{error}; nothing of this request was enqueued")))
        }
        // 503, not 429: the queue has room, it is the disk that is behind.
        Ok(Err(behind @ SubmitError::CommitsBehind { .. })) => Err(Problem::new(
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            "commit-backlog",
            "Service Unavailable",
            format!("{behind}; nothing of this request was enqueued, retry it later"),
        )
        .retry_after(COMMIT_BACKLOG_RETRY_AFTER_SECS)),
        // A message that timed out in the mailbox may still be handled: nobody knows.
        Err(error) => Err(Problem::outcome_unknown(format!(
            "the Ingest actor is unavailable ({error}); this request may or may not have been enqueued"
        ))),
    }
}

/// Asks each job's kind whether the caller may submit it: an upload's key must lie under
/// the token's `allowed_key_prefixes`, a webhook's destination among its
/// `allowed_destinations`. Nothing of a refused request is enqueued. The first refusal's
/// confinement, a kind's [`crate::kinds::TokenLimit`], decides the problem and its reason
/// for `jobd_auth_failures_total`.
fn authorize_jobs(principal: &Principal, jobs: &[JobSpec], kinds: &Kinds) -> Result<(), Box<(&'static str, Problem)>> {
    let mut confinement = None;
    let errors: Vec<submission::FieldError> = jobs
        .iter()
        .enumerate()
        .filter_map(|(index, job)| {
            let refusal = kinds.get(job.kind)?.authorize(job, principal).err()?;
            confinement.get_or_insert(refusal.confinement);
            Some(submission::FieldError { index: Some(index), field: refusal.field, message: refusal.message })
        })
        .collect();
    let Some(confinement) = confinement else {
        return Ok(());
    };
    let problem = match crate::kinds::token_limit(confinement) {
        Some(limit) => {
            (limit.auth_failure_reason, Problem::not_allowed(limit.problem_slug, limit.problem_title, errors))
        }
        // A kind that refuses by an option it did not register is a bug; the caller still
        // gets a 403 that names each field.
        None => ("scope", Problem::not_allowed("forbidden", "Forbidden", errors)),
    };
    Err(Box::new(problem))
}

/// Accepts `application/json` and any `+json` type, with parameters such as charset.
fn require_json(request: &HttpRequest) -> Result<(), Problem> {
    let found = request.headers().get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok());
    let essence = found.map(|value| value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase());
    match essence.as_deref() {
        Some("application/json") => Ok(()),
        Some(other) if other.starts_with("application/") && other.ends_with("+json") => Ok(()),
        _ => Err(Problem::unsupported_media_type(found)),
    }
}

/// The most of a refused body that is read and thrown away before the answer, and for
/// how long (a lingering close, as nginx does). A client that sends its whole body before
/// it reads (Python's http.client, among many) would otherwise be reset mid-write: closing
/// a socket with unread data makes the kernel answer with RST, and the client sees EPIPE
/// or a reset instead of the 413. Bounded, so that a refused client cannot keep a
/// connection busy for long; the bytes are dropped as they come, so memory stays flat.
const LINGER_MAX_BYTES: usize = 8 * 1024 * 1024;
const LINGER_MAX_TIME: Duration = Duration::from_secs(2);

/// Reads the body, refusing it with 413 as soon as it is known to exceed `limit`, by
/// its Content-Length or by the bytes read so far.
async fn read_body(request: &HttpRequest, mut body: web::Payload, limit: usize) -> Result<Bytes, Problem> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if let Some(length) = declared.filter(|length| *length > limit) {
        discard_rest(&mut body, Some(length)).await;
        return Err(Problem::too_large(limit));
    }
    let mut bytes = BytesMut::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|error| {
            Problem::new(
                actix_web::http::StatusCode::BAD_REQUEST,
                "unreadable-body",
                "Unreadable Body",
                format!("reading the request body failed: {error}"),
            )
        })?;
        if bytes.len() + chunk.len() > limit {
            let received = bytes.len() + chunk.len();
            drop(bytes);
            discard_rest(&mut body, declared.map(|length| length.saturating_sub(received))).await;
            return Err(Problem::too_large(limit));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes.freeze())
}

/// Reads and drops what is left of a refused body, up to [`LINGER_MAX_BYTES`] and
/// [`LINGER_MAX_TIME`], so that the client has sent it all when the 413 is written; see
/// [`LINGER_MAX_BYTES`]. A body declared longer than that is not read at all: the client
/// would be reset before it finished anyway, and reading would only cost bandwidth.
async fn discard_rest(body: &mut web::Payload, declared_rest: Option<usize>) {
    if declared_rest.is_some_and(|rest| rest > LINGER_MAX_BYTES) {
        return;
    }
    let mut discarded = 0usize;
    let drain = async {
        while let Some(Ok(chunk)) = body.next().await {
            discarded += chunk.len();
            if discarded > LINGER_MAX_BYTES {
                break;
            }
        }
    };
    let finished = tokio::time::timeout(LINGER_MAX_TIME, drain).await.is_ok();
    tracing::debug!(discarded, finished, "read and dropped the rest of a refused body");
}
