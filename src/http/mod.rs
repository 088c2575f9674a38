//! The HTTP API: routes, request reading and validation, and the answers, all in JSON.
//! Handlers never wait for room in the queue; a full queue is a 429.

pub mod problem;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix::Addr;
use actix_web::http::header;
use actix_web::web::{self, Bytes, BytesMut};
use actix_web::{HttpRequest, HttpResponse};
use futures_util::StreamExt as _;
use serde::Serialize;
use serde_json::json;

use crate::actors::dispatcher::{CancelJob, Wake};
use crate::actors::ingest::{Submit, SubmitError};
use crate::actors::{Dispatcher, Ingest};
use crate::job::{JobId, JobSpec, JobState};
use crate::metrics::Metrics;
use crate::queue::{ControlError, QueueHandle, Refusal};
use crate::stats::Stats;
use crate::store::JobStore;
use crate::submission::{self, ParseOptions};
pub use problem::Problem;

/// How long `/readyz` and `/v1/stats` wait for the queue thread before calling it wedged.
const QUEUE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// The `Retry-After` of a 429, in seconds. Jobs finish continuously, so room usually
/// appears within a second; clients that back off further are welcome to.
const QUEUE_FULL_RETRY_AFTER_SECS: u64 = 1;

/// Process-wide flags that readiness and the handlers read.
#[derive(Debug, Default)]
pub struct Lifecycle {
    /// Set once the actors run and the listener is bound.
    pub started: AtomicBool,
    /// Set at the first shutdown signal; submissions get 503 from then on.
    pub shutting_down: AtomicBool,
    /// The result of the latest store probe.
    pub store_reachable: AtomicBool,
    /// Why the latest store probe failed, for `/readyz`.
    pub store_error: std::sync::Mutex<Option<String>>,
}

/// What every handler shares.
pub struct AppState {
    pub ingest: Addr<Ingest>,
    pub dispatcher: Addr<Dispatcher>,
    /// Wakes the Dispatcher after a dead job is queued again.
    pub wake: Wake,
    pub queue: QueueHandle,
    pub stats: Arc<Stats>,
    pub lifecycle: Arc<Lifecycle>,
    pub parse_options: ParseOptions,
    pub max_body_bytes: usize,
    pub metrics: Arc<Metrics>,
    pub store: Arc<JobStore>,
    /// The job bodies' runtime, whose task count `/v1/stats` reports.
    pub body_runtime: tokio::runtime::Handle,
}

/// Registers every route. The default service answers unknown paths with a 404 problem,
/// and each resource answers other methods with a 405 problem.
pub fn configure(state: web::Data<AppState>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |config| {
        config
            .app_data(web::Data::new(state.metrics.clone()))
            .app_data(state)
            .service(
                web::resource("/v1/jobs")
                    .route(web::post().to(post_jobs))
                    .route(web::get().to(list_jobs))
                    .default_service(web::to(|| async {
                        Err::<HttpResponse, _>(Problem::method_not_allowed("GET, POST"))
                    })),
            )
            .service(
                web::resource("/v1/jobs/{id}")
                    .route(web::get().to(get_job))
                    .route(web::delete().to(cancel_job))
                    .default_service(web::to(|| async {
                        Err::<HttpResponse, _>(Problem::method_not_allowed("GET, DELETE"))
                    })),
            )
            .service(resource("/v1/jobs/{id}/retry", "POST", web::post().to(retry_job)))
            .service(resource("/v1/payloads", "POST", web::post().to(post_payloads)))
            .service(resource("/v1/stats", "GET", web::get().to(get_stats)))
            .service(resource("/healthz", "GET", web::get().to(healthz)))
            .service(resource("/metrics", "GET", web::get().to(get_metrics)))
            .service(resource("/readyz", "GET", web::get().to(readyz)))
            .default_service(web::to(|request: HttpRequest| async move {
                Err::<HttpResponse, _>(Problem::not_found(format!("no route for {}", request.path())))
            }));
    }
}

/// A resource with one method; any other method gets a 405 problem naming it.
fn resource(path: &str, allow: &'static str, route: actix_web::Route) -> actix_web::Resource {
    web::resource(path)
        .route(route)
        .default_service(web::to(move || async move { Err::<HttpResponse, _>(Problem::method_not_allowed(allow)) }))
}

#[derive(Serialize)]
struct AcceptedJob {
    id: JobId,
    state: JobState,
}

#[derive(Serialize)]
struct Accepted {
    jobs: Vec<AcceptedJob>,
}

async fn post_jobs(
    request: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let options = state.parse_options;
    let header_key = request.headers().get("idempotency-key").map(|value| value.to_str().map(str::to_owned));
    let parse = move |bytes: &[u8]| {
        let mut jobs = submission::parse_jobs(bytes, options)?;
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
    let header_problem = |message: &str| {
        submission::SubmissionError::Invalid(vec![submission::FieldError {
            index: None,
            field: "Idempotency-Key".to_owned(),
            message: message.to_owned(),
        }])
    };
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

async fn post_payloads(
    request: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    counted(&state, submit(&request, body, &state, submission::parse_payloads)).await
}

/// Counts every refused submission by reason.
async fn counted(
    state: &AppState,
    answer: impl Future<Output = Result<HttpResponse, Problem>>,
) -> Result<HttpResponse, Problem> {
    let answer = answer.await;
    if let Err(problem) = &answer {
        let (counter, reason) = match problem.status().as_u16() {
            429 => (&state.stats.rejected_queue_full, "queue_full"),
            413 => (&state.stats.rejected_too_large, "too_large"),
            503 => (&state.stats.rejected_unavailable, "unavailable"),
            _ => (&state.stats.rejected_invalid, "invalid"),
        };
        Stats::bump(counter);
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
    let bytes = read_body(request, body, state.max_body_bytes).await?;
    let jobs = parse(&bytes)?;
    let answer = state.ingest.send(Submit { jobs }).await;
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
        Ok(Err(SubmitError::Storage(error))) => {
            Err(Problem::unavailable(format!("{error}; nothing of this request was enqueued")))
        }
        Err(error) => Err(Problem::unavailable(format!("the Ingest actor is unavailable ({error})"))),
    }
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

/// Reads the body, refusing it with 413 as soon as it is known to exceed `limit`, by
/// its Content-Length or by the bytes read so far.
async fn read_body(request: &HttpRequest, mut body: web::Payload, limit: usize) -> Result<Bytes, Problem> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
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
            return Err(Problem::too_large(limit));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes.freeze())
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "alive"}))
}

/// Ready means: started, not shutting down, the queue thread answers, the store answered
/// its latest probe. The body lists each check so an operator sees which one failed.
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let lifecycle = &state.lifecycle;
    let started = lifecycle.started.load(Ordering::Acquire);
    let shutting_down = lifecycle.shutting_down.load(Ordering::Acquire);
    let store_reachable = lifecycle.store_reachable.load(Ordering::Acquire);
    let queue = tokio::time::timeout(QUEUE_CHECK_TIMEOUT, state.queue.status()).await;
    let queue_open = matches!(queue, Ok(Ok(_)));
    let queue_writable = matches!(queue, Ok(Ok(status)) if status.writable);
    let ready = started && !shutting_down && store_reachable && queue_open && queue_writable;
    let body = json!({
        "ready": ready,
        "checks": {
            "started": started,
            "shutting_down": shutting_down,
            "queue_open": queue_open,
            "queue_writable": queue_writable,
            "store_reachable": store_reachable,
        },
        "store": {
            "url": state.store.url(),
            "reachable": store_reachable,
            "error": lifecycle.store_error.lock().ok().and_then(|error| error.clone()),
        },
    });
    if ready { HttpResponse::Ok().json(body) } else { HttpResponse::ServiceUnavailable().json(body) }
}

async fn get_stats(state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    let status = tokio::time::timeout(QUEUE_CHECK_TIMEOUT, state.queue.status())
        .await
        .map_err(|_| Problem::unavailable("the queue did not answer in time"))?
        .map_err(|error| Problem::unavailable(error.to_string()))?;
    Ok(HttpResponse::Ok().json(json!({
        "queue": {
            "queued": status.depth.queued,
            "scheduled": status.depth.scheduled,
            "running": status.depth.running,
            "failed": status.depth.failed,
            "dead": status.depth.dead,
            "capacity": status.depth.capacity,
            "durable": status.durable,
            "writable": status.writable,
        },
        "counters": state.stats.snapshot(),
        // Flat however many jobs wait: delayed jobs cost no task and no timer of their own.
        "runtime": {
            "delay_timers": state.stats.delay_timers.load(Ordering::Relaxed),
            "body_tasks": state.body_runtime.metrics().num_alive_tasks(),
            "body_threads": state.body_runtime.metrics().num_workers(),
        },
    })))
}

#[derive(serde::Deserialize)]
struct GetJobQuery {
    /// Include the payload; off by default because payloads can be large.
    #[serde(default)]
    payload: bool,
}

async fn get_job(
    id: web::Path<String>,
    query: web::Query<GetJobQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let job_id = parse_job_id(&id)?;
    let record = tokio::time::timeout(QUEUE_CHECK_TIMEOUT, state.queue.get(job_id, query.payload))
        .await
        .map_err(|_| Problem::unavailable("the queue did not answer in time"))?
        .map_err(|error| Problem::unavailable(error.to_string()))?;
    match record {
        Some(record) => Ok(HttpResponse::Ok().json(record)),
        None => Err(Problem::not_found(format!("no job {job_id}; unknown, or purged after its retention"))),
    }
}

/// The most records one listing page holds.
const MAX_PAGE: usize = 1_000;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// `GET /v1/jobs?state=dead&limit=100&cursor=...`: records newest first, paged.
async fn list_jobs(query: web::Query<ListQuery>, state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    let bad = |field: &str, message: String| {
        Problem::from(submission::SubmissionError::Invalid(vec![submission::FieldError {
            index: None,
            field: field.to_owned(),
            message,
        }]))
    };
    let job_state = match query.state.as_deref() {
        None => None,
        Some(name) => Some(JobState::from_name(name).ok_or_else(|| {
            let known: Vec<&str> = JobState::ALL.iter().map(|state| state.name()).collect();
            bad("state", format!("unknown state {name:?}; one of {}", known.join(", ")))
        })?),
    };
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(bad("limit", format!("must be between 1 and {MAX_PAGE}")));
    }
    let before = match query.cursor.as_deref() {
        None => None,
        Some(cursor) => {
            Some(cursor.parse::<i64>().map_err(|_| bad("cursor", "is not a cursor from this API".to_owned()))?)
        }
    };
    let page = tokio::time::timeout(QUEUE_CHECK_TIMEOUT, state.queue.list(job_state, before, limit))
        .await
        .map_err(|_| Problem::unavailable("the queue did not answer in time"))?
        .map_err(|error| Problem::unavailable(error.to_string()))?;
    Ok(HttpResponse::Ok().json(json!({
        "jobs": page.records,
        "next_cursor": page.next_before.map(|seq| seq.to_string()),
    })))
}

fn parse_job_id(id: &str) -> Result<JobId, Problem> {
    JobId::parse(id).ok_or_else(|| Problem::not_found(format!("{id:?} is not a job id")))
}

/// Turns a refused control request into its problem.
fn control_problem(id: JobId, error: ControlError) -> Problem {
    match error {
        ControlError::NotFound => Problem::not_found(format!("no job {id}")),
        ControlError::Conflict(job_state) => Problem::new(
            actix_web::http::StatusCode::CONFLICT,
            "conflict",
            "Conflict",
            format!("job {id} is {}", job_state.name()),
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
async fn retry_job(id: web::Path<String>, state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    let job_id = parse_job_id(&id)?;
    let result = state.queue.retry_dead(job_id).await.map_err(|error| Problem::unavailable(error.to_string()))?;
    result.map_err(|error| control_problem(job_id, error))?;
    state.wake.wake();
    Ok(HttpResponse::Accepted().json(AcceptedJob { id: job_id, state: JobState::Queued }))
}

/// `DELETE /v1/jobs/{id}`: cancels a job that has not started.
async fn cancel_job(id: web::Path<String>, state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    let job_id = parse_job_id(&id)?;
    let result = state
        .dispatcher
        .send(CancelJob(job_id))
        .await
        .map_err(|error| Problem::unavailable(format!("the Dispatcher is unavailable ({error})")))?
        .map_err(|error| Problem::unavailable(error.to_string()))?;
    result.map_err(|error| control_problem(job_id, error))?;
    Ok(HttpResponse::Ok().json(AcceptedJob { id: job_id, state: JobState::Cancelled }))
}

/// `GET /metrics`: every series in the Prometheus text format, with the queue gauges
/// read at scrape time.
pub async fn get_metrics(state: web::Data<AppState>) -> HttpResponse {
    render_metrics(&state.metrics, &state.queue, &state.stats, &state.store).await
}

/// Renders the metrics; shared by the API listener and the optional metrics listener.
pub async fn render_metrics(metrics: &Metrics, queue: &QueueHandle, stats: &Stats, store: &JobStore) -> HttpResponse {
    let status = match tokio::time::timeout(QUEUE_CHECK_TIMEOUT, queue.status()).await {
        Ok(Ok(status)) => Some(status),
        // The queue gauges keep their last values; the scrape itself still succeeds, so
        // the counters and the process metrics stay visible while the queue is wedged.
        _ => None,
    };
    let text = metrics.render(&crate::metrics::Scrape {
        queue: status.as_ref(),
        workers_total: stats.workers_total.load(Ordering::Relaxed),
        workers_busy: stats.workers_busy.load(Ordering::Relaxed),
        uploads: store.uploads(),
    });
    HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(text)
}
