//! The routes that read and control jobs: `GET /v1/jobs`, `GET /v1/jobs/{id}`,
//! `POST /v1/jobs/{id}/retry`, `POST /v1/jobs/retry` (dead jobs by filter) and
//! `DELETE /v1/jobs/{id}`, and the tenant confinement that hides other tenants' jobs from
//! them.

use std::sync::Arc;

use actix_web::{HttpMessage as _, HttpRequest, HttpResponse, web};
use serde::Serialize;

use super::problem::ProblemBody;
use super::{AcceptedJob, AppState, Problem, QUEUE_CHECK_TIMEOUT, QUEUE_FULL_RETRY_AFTER_SECS};
use crate::actors::dispatcher::CancelJob;
use crate::auth::Principal;
use crate::job::{JobId, JobState};
use crate::queue::{ControlError, ListFilter};
use crate::submission;

/// One page of job records.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct JobList {
    jobs: Vec<crate::job::JobRecord>,
    /// Pass as `cursor` for the next page; absent on the last page.
    next_cursor: Option<String>,
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct GetJobQuery {
    /// Include the payload; off by default because payloads can be large.
    #[serde(default)]
    payload: bool,
}

/// One job's record.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "The job id"), GetJobQuery),
    responses(
        (status = 200, description = "The job", body = crate::job::JobRecord),
        (status = 400, description = "The body or a field is invalid; `errors` names each field", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No bearer token, or an unknown one", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the scope", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such job", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Shutting down, or the queue cannot be written; nothing was enqueued", body = ProblemBody, content_type = "application/problem+json")
    ),
    security(("bearer" = []))
)]
pub(super) async fn get_job(
    request: HttpRequest,
    id: web::Path<String>,
    query: web::Query<GetJobQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let job_id = parse_job_id(&id)?;
    let tenant = confined_tenant(&request);
    let record = visible_record(&state, job_id, query.payload, tenant.as_deref()).await?;
    match record {
        Some(mut record) => {
            record.target = state.kinds.get(&record.kind).and_then(|kind| kind.target(&record));
            Ok(HttpResponse::Ok().json(record))
        }
        None => Err(Problem::not_found(format!("no job {job_id}; unknown, or purged after its retention"))),
    }
}

/// The name of the caller if its token is confined by `allowed_key_prefixes`: a tenant,
/// who reads, lists and controls only the jobs it submitted. Other callers see every job.
fn confined_tenant(request: &HttpRequest) -> Option<String> {
    let extensions = request.extensions();
    let principal = extensions.get::<Arc<Principal>>()?;
    principal.is_confined().then(|| principal.name.clone())
}

/// A job's record, unless `tenant` (see [`confined_tenant`]) did not submit it: another
/// tenant's job is answered like an unknown one (404), so that a tenant cannot even learn
/// that it exists.
async fn visible_record(
    state: &AppState,
    job_id: JobId,
    with_payload: bool,
    tenant: Option<&str>,
) -> Result<Option<crate::job::JobRecord>, Problem> {
    let record = tokio::time::timeout(QUEUE_CHECK_TIMEOUT, state.queue.get(job_id, with_payload))
        .await
        .map_err(|_| Problem::unavailable("the queue did not answer in time"))?
        .map_err(|error| Problem::unavailable(error.to_string()))?;
    Ok(record.filter(|record| tenant.is_none_or(|tenant| record.submitted_by.as_deref() == Some(tenant))))
}

/// Refuses a control request on a job the caller may not see, as if it did not exist.
async fn check_control_access(request: &HttpRequest, state: &AppState, job_id: JobId) -> Result<(), Problem> {
    let Some(tenant) = confined_tenant(request) else { return Ok(()) };
    match visible_record(state, job_id, false, Some(&tenant)).await? {
        Some(_) => Ok(()),
        None => Err(Problem::not_found(format!("no job {job_id}"))),
    }
}

/// The most records one listing page holds.
const MAX_PAGE: usize = 1_000;

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Only jobs in this state.
    #[param(value_type = Option<JobState>)]
    state: Option<String>,
    /// Records per page, 1 to 1000 [default: 100].
    limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Only jobs of this kind.
    kind: Option<String>,
}

/// A 400 problem naming the query `field` at fault.
fn field_problem(field: &str, message: String) -> Problem {
    Problem::from(submission::SubmissionError::field(field, message))
}

/// The longest kind name a filter may hold; every kind's name is far shorter.
const MAX_KIND_BYTES: usize = 64;

/// A `kind` filter: any name, since records of a kind no longer configured stay listed.
fn kind_filter(kind: Option<&str>) -> Result<Option<String>, Problem> {
    match kind {
        None => Ok(None),
        Some(kind) if kind.is_empty() || kind.len() > MAX_KIND_BYTES || kind.chars().any(char::is_control) => {
            Err(field_problem("kind", format!("must be 1 to {MAX_KIND_BYTES} bytes without control characters")))
        }
        Some(kind) => Ok(Some(kind.to_owned())),
    }
}

/// `GET /v1/jobs?state=dead&kind=upload&limit=100&cursor=...`: records newest first, paged.
#[utoipa::path(
    get,
    path = "/v1/jobs",
    tag = "jobs",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of records, newest first", body = JobList),
        (status = 400, description = "The body or a field is invalid; `errors` names each field", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No bearer token, or an unknown one", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the scope", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Shutting down, or the queue cannot be written; nothing was enqueued", body = ProblemBody, content_type = "application/problem+json")
    ),
    security(("bearer" = []))
)]
pub(super) async fn list_jobs(
    request: HttpRequest,
    query: web::Query<ListQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let job_state = match query.state.as_deref() {
        None => None,
        Some(name) => Some(JobState::from_name(name).ok_or_else(|| {
            let known: Vec<&str> = JobState::ALL.iter().map(|state| state.name()).collect();
            field_problem("state", format!("unknown state {name:?}; one of {}", known.join(", ")))
        })?),
    };
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(field_problem("limit", format!("must be between 1 and {MAX_PAGE}")));
    }
    let before = match query.cursor.as_deref() {
        None => None,
        Some(cursor) => Some(
            state
                .queue
                .parse_cursor(cursor)
                .ok_or_else(|| field_problem("cursor", "is not a cursor from this API".to_owned()))?,
        ),
    };
    let kind = kind_filter(query.kind.as_deref())?;
    let filter = ListFilter { state: job_state, submitted_by: confined_tenant(&request), kind };
    let page = list_page(&state, filter, before, limit).await?;
    Ok(HttpResponse::Ok()
        .json(JobList { jobs: page.records, next_cursor: page.next_before.map(|cursor| cursor.to_string()) }))
}

/// One page of a listing, or `503` when the queue cannot answer in time.
async fn list_page(
    state: &AppState,
    filter: ListFilter,
    before: Option<crate::queue::Cursor>,
    limit: usize,
) -> Result<crate::queue::JobPage, Problem> {
    tokio::time::timeout(QUEUE_CHECK_TIMEOUT, state.queue.list(filter, before, limit))
        .await
        .map_err(|_| Problem::unavailable("the queue did not answer in time"))?
        .map_err(|error| Problem::unavailable(error.to_string()))
}

fn parse_job_id(id: &str) -> Result<JobId, Problem> {
    JobId::parse(id).ok_or_else(|| Problem::not_found(format!("{id:?} is not a job id")))
}

/// What a control request asked for, for the message that refuses it.
#[derive(Clone, Copy)]
enum Control {
    Retry,
    Cancel,
}

/// Turns a refused control request into its problem.
fn control_problem(id: JobId, control: Control, error: ControlError) -> Problem {
    match error {
        ControlError::NotFound => Problem::not_found(format!("no job {id}")),
        ControlError::Conflict(job_state) => Problem::new(
            actix_web::http::StatusCode::CONFLICT,
            "conflict",
            "Conflict",
            match control {
                Control::Retry => format!("job {id} is {}; only a dead job can be retried", job_state.name()),
                Control::Cancel => format!(
                    "job {id} is {}; only a job that has not started (queued, scheduled, or failed and waiting \
                     for its retry) can be cancelled",
                    job_state.name()
                ),
            },
        ),
        ControlError::Refused(refusal) => Problem::new(
            actix_web::http::StatusCode::TOO_MANY_REQUESTS,
            "queue-full",
            "Queue Full",
            refusal.to_string(),
        )
        .retry_after(QUEUE_FULL_RETRY_AFTER_SECS),
    }
}

/// `POST /v1/jobs/{id}/retry`: a dead job runs again, its attempts reset.
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/retry",
    tag = "control",
    params(("id" = String, Path, description = "The job id")),
    responses(
        (status = 202, description = "Queued again", body = AcceptedJob),
        (status = 401, description = "No bearer token, or an unknown one", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the scope", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such job", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The job is in a state that does not allow this", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "The queue is full; nothing was enqueued; see Retry-After", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Shutting down, or the queue cannot be written; nothing was enqueued", body = ProblemBody, content_type = "application/problem+json")
    ),
    security(("bearer" = []))
)]
pub(super) async fn retry_job(
    request: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let job_id = parse_job_id(&id)?;
    check_control_access(&request, &state, job_id).await?;
    let result = state.queue.retry_dead(job_id).await.map_err(|error| Problem::storage(&error))?;
    result.map_err(|error| control_problem(job_id, Control::Retry, error))?;
    Ok(HttpResponse::Accepted().json(AcceptedJob { id: job_id, state: JobState::Queued }))
}

/// `DELETE /v1/jobs/{id}`: cancels a job that has not started.
#[utoipa::path(
    delete,
    path = "/v1/jobs/{id}",
    tag = "control",
    params(("id" = String, Path, description = "The job id")),
    responses(
        (status = 200, description = "Cancelled", body = AcceptedJob),
        (status = 401, description = "No bearer token, or an unknown one", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the scope", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such job", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The job is in a state that does not allow this", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "The queue is full; nothing was enqueued; see Retry-After", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Shutting down, or the queue cannot be written; nothing was enqueued", body = ProblemBody, content_type = "application/problem+json")
    ),
    security(("bearer" = []))
)]
pub(super) async fn cancel_job(
    request: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let job_id = parse_job_id(&id)?;
    check_control_access(&request, &state, job_id).await?;
    let result = state
        .dispatcher
        .send(CancelJob(job_id))
        .await
        .map_err(|error| Problem::unavailable(format!("the Dispatcher is unavailable ({error})")))?
        .map_err(|error| Problem::storage(&error))?;
    result.map_err(|error| control_problem(job_id, Control::Cancel, error))?;
    Ok(HttpResponse::Ok().json(AcceptedJob { id: job_id, state: JobState::Cancelled }))
}

/// The most dead jobs one bulk retry touches: a thousand retries are a thousand queue
/// commands, which the queue thread groups into a few transactions.
const MAX_BULK_RETRY: usize = 1_000;

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct BulkRetryQuery {
    /// `dead`, the one state a retry applies to [default: dead].
    #[param(value_type = Option<JobState>)]
    state: Option<String>,
    /// Only jobs of this kind.
    kind: Option<String>,
    /// The most jobs to retry, 1 to 1000 [default: 1000].
    limit: Option<usize>,
    /// Only count the dead jobs that match (up to `limit`), retrying none.
    #[serde(default)]
    dry_run: bool,
}

/// The jobs a bulk retry is to retry, exactly: the `ids` a dry run answered, so that the
/// jobs retried are those an operator confirmed, not the newest dead jobs at that later
/// moment.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RetryIds {
    /// At most 1000 job ids; those no longer dead (or not the caller's) are skipped.
    #[schema(value_type = Vec<String>)]
    ids: Vec<String>,
}

/// What a bulk retry matched and did.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct BulkRetried {
    /// Dead jobs that matched, newest first, up to `limit`.
    matched: usize,
    /// On a dry run, the ids that matched, to send back as the body of the retry itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<String>>)]
    ids: Option<Vec<JobId>>,
    /// Of those, the jobs queued again (0 on a dry run). Fewer than `matched` when a job
    /// was retried or purged meanwhile, or the queue filled up.
    retried: usize,
    /// More dead jobs match than `limit`: ask again for the next ones.
    more: bool,
}

/// `POST /v1/jobs/retry?kind=upload&limit=1000`: the newest dead jobs that match run again;
/// with a body `{"ids": [...]}`, exactly those of them that are still dead.
#[utoipa::path(
    post,
    path = "/v1/jobs/retry",
    tag = "control",
    params(BulkRetryQuery),
    request_body(content = Option<RetryIds>, description = "Retry exactly these jobs: the `ids` of a dry run", content_type = "application/json"),
    responses(
        (status = 200, description = "What matched and what was queued again", body = BulkRetried),
        (status = 400, description = "The body or a field is invalid; `errors` names each field", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No bearer token, or an unknown one", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the scope", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Shutting down, or the queue cannot be written; nothing was enqueued", body = ProblemBody, content_type = "application/problem+json")
    ),
    security(("bearer" = []))
)]
pub(super) async fn retry_dead_jobs(
    request: HttpRequest,
    query: web::Query<BulkRetryQuery>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    if query.state.as_deref().is_some_and(|name| name != JobState::Dead.name()) {
        let message = "only dead jobs can be retried; leave it out or give dead".to_owned();
        return Err(field_problem("state", message));
    }
    let limit = query.limit.unwrap_or(MAX_BULK_RETRY);
    if !(1..=MAX_BULK_RETRY).contains(&limit) {
        let message = format!("must be between 1 and {MAX_BULK_RETRY}");
        return Err(field_problem("limit", message));
    }
    let filter = ListFilter {
        state: Some(JobState::Dead),
        submitted_by: confined_tenant(&request),
        kind: kind_filter(query.kind.as_deref())?,
    };
    let (ids, more) = match chosen_ids(&body)? {
        Some(chosen) => (matching_ids(&state, chosen, &filter).await?, false),
        None => {
            // One more than the limit tells whether more match.
            let page = list_page(&state, filter, None, limit + 1).await?;
            let more = page.records.len() > limit;
            (page.records.iter().take(limit).map(|record| record.id).collect(), more)
        }
    };
    let matched = ids.len();
    if query.dry_run {
        return Ok(HttpResponse::Ok().json(BulkRetried { matched, ids: Some(ids), retried: 0, more }));
    }
    // Sent at once, the retries reach the queue thread together and share its commits.
    let results = futures_util::future::join_all(ids.iter().map(|&id| state.queue.retry_dead(id))).await;
    let retried = results.iter().filter(|result| matches!(result, Ok(Ok(())))).count();
    let failure = results.iter().find_map(|result| result.as_ref().err());
    if let Some(error) = failure {
        if retried == 0 {
            return Err(Problem::storage(error));
        }
        // Some were queued again: the answer says how many, the log why not all.
        tracing::warn!(error = error.message(), retried, matched, "part of a bulk retry failed");
    }
    tracing::info!(matched, retried, more, kind = query.kind.as_deref(), "dead jobs retried in bulk");
    Ok(HttpResponse::Ok().json(BulkRetried { matched, ids: None, retried, more }))
}

/// The ids a bulk retry's body names, if it has a body: at most [`MAX_BULK_RETRY`], each a
/// job id, or a 400 naming the one at fault.
fn chosen_ids(body: &[u8]) -> Result<Option<Vec<JobId>>, Problem> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let chosen: RetryIds = serde_json::from_slice(body).map_err(|error| field_problem("body", error.to_string()))?;
    if chosen.ids.len() > MAX_BULK_RETRY {
        return Err(field_problem("ids", format!("at most {MAX_BULK_RETRY} ids, got {}", chosen.ids.len())));
    }
    let parsed = chosen.ids.iter().enumerate().map(|(index, id)| {
        JobId::parse(id).ok_or_else(|| field_problem(&format!("ids[{index}]"), format!("{id:?} is not a job id")))
    });
    parsed.collect::<Result<Vec<_>, _>>().map(Some)
}

/// Of `ids`, once each, those that match `filter` now: dead, of its kind if it names one,
/// and the caller's own if the caller is a tenant (another tenant's job is skipped as if it
/// did not exist).
async fn matching_ids(state: &AppState, mut ids: Vec<JobId>, filter: &ListFilter) -> Result<Vec<JobId>, Problem> {
    let mut seen = std::collections::HashSet::new();
    ids.retain(|id| seen.insert(*id));
    let tenant = filter.submitted_by.as_deref();
    let records = futures_util::future::join_all(ids.iter().map(|&id| visible_record(state, id, false, tenant)));
    let mut matching = Vec::with_capacity(ids.len());
    for (id, record) in ids.iter().zip(records.await) {
        let matches = record?.is_some_and(|record| {
            record.state == JobState::Dead && filter.kind.as_deref().is_none_or(|kind| record.kind == kind)
        });
        if matches {
            matching.push(*id);
        }
    }
    Ok(matching)
}
