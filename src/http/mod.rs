//! The HTTP API: routes, request reading and validation, and the answers, all in JSON.
//! Handlers never wait for room in the queue; a full queue is a 429.

pub mod openapi;
pub mod problem;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use actix::Addr;
use actix_web::body::BoxBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, header};
use actix_web::middleware::{Next, from_fn};
use actix_web::web::{self, Bytes, BytesMut};
use actix_web::{HttpMessage as _, HttpRequest, HttpResponse};
use futures_util::StreamExt as _;
use serde::Serialize;
use serde_json::json;

use crate::actors::dispatcher::CancelJob;
use crate::actors::ingest::{Submit, SubmitError};
use crate::actors::{Dispatcher, Ingest};
use crate::auth::{AuthFailure, Authenticator, Principal, Scope};
use crate::job::{JobId, JobSpec, JobState};
use crate::kinds::Kinds;
use crate::metrics::Metrics;
use crate::queue::{ControlError, ListFilter, QueueHandle, Refusal};
use crate::stats::Stats;
use crate::store::JobStore;
use crate::submission::{self, ParseOptions};
pub use problem::Problem;
use problem::ProblemBody;
use submission::{JobOptions, PayloadCollection};

/// How long `/readyz` and `/v1/stats` wait for the queue thread before calling it wedged.
const QUEUE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// The `Retry-After` of a 429, in seconds. Jobs finish continuously, so room usually
/// appears within a second; clients that back off further are welcome to.
const QUEUE_FULL_RETRY_AFTER_SECS: u64 = 1;
/// `Retry-After` when submissions wait for a slow disk past `ingest_max_pending_bytes`. A
/// disk stall lasts seconds, longer than a queue takes to drain a little, so clients that
/// honour it come back once rather than many times into the same stall.
const COMMIT_BACKLOG_RETRY_AFTER_SECS: u64 = 5;

/// Process-wide flags that readiness and the handlers read.
#[derive(Debug, Default)]
pub struct Lifecycle {
    /// Set once the actors run and the listener is bound.
    pub started: AtomicBool,
    /// Set at the first shutdown signal; submissions get 503 from then on.
    pub shutting_down: AtomicBool,
    /// Requests that entered the API and have not been answered (or dropped). A lost
    /// queue's stop waits for these to be answered before it closes the listener.
    pub requests_in_flight: AtomicUsize,
}

/// Counts one request in [`Lifecycle::requests_in_flight`] until dropped, which also
/// covers a request whose client went away mid-way.
struct InFlightRequest(Arc<Lifecycle>);

impl InFlightRequest {
    fn new(lifecycle: Arc<Lifecycle>) -> Self {
        lifecycle.requests_in_flight.fetch_add(1, Ordering::AcqRel);
        Self(lifecycle)
    }
}

impl Drop for InFlightRequest {
    fn drop(&mut self) {
        self.0.requests_in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What every handler shares.
pub struct AppState {
    pub ingest: Addr<Ingest>,
    pub dispatcher: Addr<Dispatcher>,
    pub queue: QueueHandle,
    pub stats: Arc<Stats>,
    pub lifecycle: Arc<Lifecycle>,
    pub parse_options: ParseOptions,
    /// The kinds this daemon runs: what submissions may name.
    pub kinds: Arc<Kinds>,
    pub max_body_bytes: usize,
    pub metrics: Arc<Metrics>,
    pub store: Arc<JobStore>,
    /// Whether the store answered its latest probe, and why not.
    pub store_health: Arc<crate::store_health::StoreHealth>,
    /// The job bodies' runtime, whose task count `/v1/stats` reports.
    pub body_runtime: tokio::runtime::Handle,
    /// The tokens in force; off when no token file is configured.
    pub auth: Arc<Authenticator>,
    /// How long a request body may take to arrive after its headers.
    pub client_body_timeout: Duration,
    /// Whether `/metrics` is served here; off when `metrics_listen` gives metrics their
    /// own listener, so that an operator who moved them off the API port (e.g. to keep
    /// them off a public address) does not still expose them there.
    pub metrics_on_api_listener: bool,
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: probes, metrics and the API description, which hold no job data.
    Open,
    /// A bearer token with this scope, when a token file is configured.
    Needs(Scope),
}

/// One route of the API: the single table that both the router and the OpenAPI
/// description are checked against.
pub struct RouteSpec {
    pub path: &'static str,
    pub method: Method,
    pub access: Access,
    route: fn() -> actix_web::Route,
}

/// Every route jobd serves.
pub fn routes() -> Vec<RouteSpec> {
    let spec = |path, method, access, route| RouteSpec { path, method, access, route };
    vec![
        spec("/v1/jobs", Method::GET, Access::Needs(Scope::Read), || web::get().to(list_jobs)),
        spec("/v1/jobs", Method::POST, Access::Needs(Scope::Submit), || web::post().to(post_jobs)),
        spec("/v1/jobs/{id}", Method::GET, Access::Needs(Scope::Read), || web::get().to(get_job)),
        spec("/v1/jobs/{id}", Method::DELETE, Access::Needs(Scope::Admin), || web::delete().to(cancel_job)),
        spec("/v1/jobs/{id}/retry", Method::POST, Access::Needs(Scope::Admin), || web::post().to(retry_job)),
        spec("/v1/payloads", Method::POST, Access::Needs(Scope::Submit), || web::post().to(post_payloads)),
        spec("/v1/stats", Method::GET, Access::Needs(Scope::Read), || web::get().to(get_stats)),
        spec("/v1/openapi.json", Method::GET, Access::Open, || web::get().to(openapi::get_openapi)),
        spec("/healthz", Method::GET, Access::Open, || web::get().to(healthz)),
        spec("/readyz", Method::GET, Access::Open, || web::get().to(readyz)),
        spec("/metrics", Method::GET, Access::Open, || web::get().to(get_metrics)),
    ]
}

/// Registers every route of [`routes`], each behind its access check. The default service
/// answers unknown paths with a 404 problem, and each resource answers other methods with
/// a 405 problem listing the ones it has.
pub fn configure(state: web::Data<AppState>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |config| {
        let metrics_on_api_listener = state.metrics_on_api_listener;
        config.app_data(web::Data::new(state.metrics.clone())).app_data(state);
        // A query string that does not fit its route is a problem+json 400 naming the
        // query, like every other error, rather than actix's plain-text default.
        config.app_data(web::QueryConfig::default().error_handler(|error, _request| {
            Problem::from(submission::SubmissionError::field("query", error.to_string())).into()
        }));
        let mut table = routes();
        if !metrics_on_api_listener {
            table.retain(|spec| spec.path != "/metrics");
            let not_here = || async {
                Err::<HttpResponse, _>(Problem::not_found(
                    "/metrics is served on the metrics_listen address only, not on the API listener",
                ))
            };
            config.service(web::resource("/metrics").app_data(crate::metrics::RoutePattern("/metrics")).to(not_here));
        }
        let mut paths: Vec<&'static str> = Vec::new();
        for spec in &table {
            if !paths.contains(&spec.path) {
                paths.push(spec.path);
            }
        }
        for path in paths {
            let specs: Vec<&RouteSpec> = table.iter().filter(|spec| spec.path == path).collect();
            let allow = specs.iter().map(|spec| spec.method.as_str()).collect::<Vec<_>>().join(", ");
            let mut resource = web::resource(path).app_data(crate::metrics::RoutePattern(path));
            for spec in specs {
                let route = (spec.route)();
                resource = resource.route(match spec.access {
                    Access::Open => route,
                    Access::Needs(scope) => route.wrap(from_fn(move |request, next| authorize(request, next, scope))),
                });
            }
            config.service(resource.default_service(web::to(move || {
                let allow = allow.clone();
                async move { Err::<HttpResponse, _>(Problem::method_not_allowed(allow)) }
            })));
        }
        config.default_service(web::to(|request: HttpRequest| async move {
            Err::<HttpResponse, _>(Problem::not_found(format!("no route for {}", request.path())))
        }));
    }
}

/// The most header bytes a request may carry; an App-level middleware reads it.
#[derive(Debug, Clone, Copy)]
pub struct HeaderLimit(pub usize);

/// Middleware: refuses a request whose head (request line and header lines) exceeds
/// `max_header_bytes` with 431, before any route runs. actix-http bounds what it reads
/// at 128 KiB; this is the operator's own, lower limit.
pub async fn limit_headers(
    request: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let limit = request.app_data::<HeaderLimit>().map_or(usize::MAX, |limit| limit.0);
    let head_bytes = request.uri().path_and_query().map_or(0, |target| target.as_str().len())
        + request.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum::<usize>();
    if head_bytes > limit {
        if let Some(metrics) = request.app_data::<web::Data<Arc<Metrics>>>() {
            metrics.http_refusals.with_label_values(&["header_too_large"]).inc();
        }
        let problem = Problem::new(
            actix_web::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "header-too-large",
            "Request Header Fields Too Large",
            format!("the request head is {head_bytes} bytes; max_header_bytes is {limit}"),
        );
        return Ok(request.error_response(problem));
    }
    next.call(request).await
}

/// Which `Host` a request may name; an App-level middleware reads it.
#[derive(Debug, Clone, Copy)]
pub struct HostCheck {
    /// The listen address's IP when authentication is off; `None` when tokens are on.
    pub unauthenticated_listen_ip: Option<IpAddr>,
}

/// Middleware: with authentication off, answers 421 to a request whose `Host` is not
/// this machine's loopback or listen address. Without a token, reaching the port is the
/// only check; a browser on this host that loads a page of a name the page's owner then
/// points at 127.0.0.1 (DNS rebinding) would otherwise let that page submit and read jobs,
/// and such a request always carries that name in `Host`. With tokens on, every `Host` is
/// answered: the token is the check, and a browser does not send it to another origin.
pub async fn check_host(
    request: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(listen_ip) = request.app_data::<HostCheck>().and_then(|check| check.unauthenticated_listen_ip) else {
        return next.call(request).await;
    };
    // HTTP/2 carries the authority in the request target rather than in a Host header.
    let host = match request.headers().get(header::HOST) {
        Some(value) => Some(value.to_str().ok()),
        None => request.uri().authority().map(|authority| Some(authority.as_str())),
    };
    // A request without any Host comes from no browser, so it cannot be a rebinding.
    let allowed = match host {
        None => true,
        Some(None) => false,
        Some(Some(host)) => host_is_allowed(host, listen_ip),
    };
    if allowed {
        return next.call(request).await;
    }
    if let Some(metrics) = request.app_data::<web::Data<Arc<Metrics>>>() {
        metrics.http_refusals.with_label_values(&["host_not_allowed"]).inc();
    }
    let shown = host.flatten().unwrap_or("(not visible ASCII)").to_owned();
    tracing::warn!(
        reason = "host_not_allowed",
        host = shown,
        method = %request.method(),
        path = request.path(),
        peer = ?request.peer_addr(),
        "request refused"
    );
    let listen = if listen_ip.is_unspecified() { "an IP address".to_owned() } else { listen_ip.to_string() };
    let problem = Problem::host_not_allowed(format!(
        "authentication is off, so jobd answers only requests addressed to localhost, *.localhost, a loopback \
         address or {listen}; Host was {shown:?}"
    ));
    Ok(request.error_response(problem))
}

/// Whether a `Host` value (a name or an IP literal, with or without a port) names this
/// machine's loopback or `listen_ip`. When jobd listens on every address (`0.0.0.0` or
/// `::`), every IP literal names it: a rebinding always carries a DNS name, never an IP.
pub fn host_is_allowed(host: &str, listen_ip: IpAddr) -> bool {
    let Some(name) = host_without_port(host) else { return false };
    let ip = if let Some(inner) = name.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')) {
        match inner.parse::<std::net::Ipv6Addr>() {
            Ok(ip) => Some(IpAddr::V6(ip)),
            Err(_) => return false,
        }
    } else {
        name.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
    };
    match ip {
        Some(ip) => ip.is_loopback() || ip == listen_ip || listen_ip.is_unspecified(),
        None => {
            // *.localhost resolves to loopback by definition (RFC 6761) and in browsers.
            let lower = name.to_ascii_lowercase();
            lower == "localhost" || (lower.ends_with(".localhost") && lower.len() > ".localhost".len())
        }
    }
}

/// `host` without its `:port`, or `None` when the port is not a number or an IPv6
/// address lacks its brackets.
fn host_without_port(host: &str) -> Option<&str> {
    let (name, port) = if host.starts_with('[') {
        let end = host.find(']')?;
        let (name, rest) = host.split_at(end + 1);
        (name, if rest.is_empty() { None } else { Some(rest.strip_prefix(':')?) })
    } else {
        match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    let port_valid =
        port.is_none_or(|port| !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()));
    (port_valid && !name.is_empty()).then_some(name)
}

/// Middleware: once jobd is stopping, every answer closes its connection, so that a
/// client on keep-alive reconnects (and finds the listener gone) instead of holding the
/// connection, and the listener's graceful stop, which waits for open connections, ends
/// as soon as the requests in flight are answered. It also counts the requests in flight
/// ([`Lifecycle::requests_in_flight`]).
pub async fn close_when_stopping(
    request: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let state = request.app_data::<web::Data<AppState>>().cloned();
    let _in_flight = state.as_ref().map(|state| InFlightRequest::new(state.lifecycle.clone()));
    let mut response = next.call(request).await?;
    if state.is_some_and(|state| state.lifecycle.shutting_down.load(Ordering::Acquire)) {
        response.response_mut().head_mut().set_connection_type(actix_web::http::ConnectionType::Close);
    }
    Ok(response)
}

/// Lets a request through when its bearer token has `scope` (or authentication is off),
/// and records who it is for the handler; otherwise answers 401 or 403 and counts why.
async fn authorize(
    request: ServiceRequest,
    next: Next<BoxBody>,
    scope: Scope,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(state) = request.app_data::<web::Data<AppState>>().cloned() else {
        // Unreachable in a configured app; refusing keeps the check fail-closed.
        return Ok(request.error_response(Problem::unavailable("the API is not configured")));
    };
    let authorization = request.headers().get(header::AUTHORIZATION).map(header::HeaderValue::as_bytes);
    match state.auth.check(authorization, scope) {
        Ok(principal) => {
            if let Some(principal) = principal {
                request.extensions_mut().insert(principal);
            }
            next.call(request).await
        }
        Err(failure) => {
            state.metrics.auth_failures.with_label_values(&[failure.reason()]).inc();
            let token_name = match &failure {
                AuthFailure::Scope { name, .. } => Some(name.clone()),
                _ => None,
            };
            tracing::warn!(
                reason = failure.reason(),
                token_name,
                scope = scope.name(),
                method = %request.method(),
                path = request.path(),
                peer = ?request.peer_addr(),
                "request refused"
            );
            Ok(request.error_response(Problem::from(failure)))
        }
    }
}

/// One job of an accepted request.
#[derive(Serialize, utoipa::ToSchema)]
struct AcceptedJob {
    id: JobId,
    state: JobState,
}

/// The answer to an accepted submission: one entry per job, in request order.
#[derive(Serialize, utoipa::ToSchema)]
struct Accepted {
    jobs: Vec<AcceptedJob>,
}

/// One page of job records.
#[derive(Serialize, utoipa::ToSchema)]
struct JobList {
    jobs: Vec<crate::job::JobRecord>,
    /// Pass as `cursor` for the next page; absent on the last page.
    next_cursor: Option<String>,
}

/// The liveness answer.
#[derive(Serialize, utoipa::ToSchema)]
struct Health {
    status: String,
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
        (status = 403, description = "The token lacks the scope, or a key lies outside its allowed_key_prefixes", body = ProblemBody, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive within client_body_timeout_ms", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "The body exceeds max_body_bytes, or holds more than max_jobs_per_request jobs", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Content-Type is not JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "The queue is full; nothing was enqueued; see Retry-After", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Shutting down, or the queue cannot be written; nothing was enqueued", body = ProblemBody, content_type = "application/problem+json")
    ),
    security(("bearer" = []))
)]
async fn post_jobs(
    request: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let options = state.parse_options;
    let kinds = state.kinds.clone();
    let header_key = request.headers().get("idempotency-key").map(|value| value.to_str().map(str::to_owned));
    let parse = move |bytes: &[u8]| {
        let mut jobs = submission::parse_jobs(bytes, &kinds, options)?;
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
        (status = 403, description = "The token lacks the scope, or a key lies outside its allowed_key_prefixes", body = ProblemBody, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive within client_body_timeout_ms", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "The body exceeds max_body_bytes, or holds more than max_jobs_per_request jobs", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Content-Type is not JSON", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "The queue is full; nothing was enqueued; see Retry-After", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Shutting down, or the queue cannot be written; nothing was enqueued", body = ProblemBody, content_type = "application/problem+json")
    ),
    security(("bearer" = []))
)]
async fn post_payloads(
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
        let (counter, reason) = match problem.slug() {
            "queue-full" => (&state.stats.rejected_queue_full, "queue_full"),
            "body-too-large" => (&state.stats.rejected_too_large, "too_large"),
            "too-many-jobs" => (&state.stats.rejected_too_large, "too_many_jobs"),
            "too-deep" => (&state.stats.rejected_invalid, "too_deep"),
            "body-timeout" => (&state.stats.rejected_invalid, "body_timeout"),
            "key-not-allowed" => (&state.stats.rejected_invalid, "key_not_allowed"),
            "unavailable" => (&state.stats.rejected_unavailable, "unavailable"),
            "commit-backlog" => (&state.stats.rejected_unavailable, "commit_backlog"),
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
        authorize_jobs(&principal, &jobs, &state.kinds).inspect_err(|_| {
            state.metrics.auth_failures.with_label_values(&["key_prefix"]).inc();
            tracing::warn!(reason = "key_prefix", token_name = principal.name, "submission refused");
        })?;
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
        Ok(Err(SubmitError::Storage(error))) if error.is_outcome_unknown() => Err(Problem::unavailable(format!(
            "{error}; this request may or may not have been enqueued: jobd is stopping to recover from what is on \
             disk. Retry once it is back; a job with an idempotency key is not created twice"
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
        Err(error) => Err(Problem::unavailable(format!("the Ingest actor is unavailable ({error})"))),
    }
}

/// Asks each job's kind whether the caller may submit it: an upload's key must lie under
/// the token's `allowed_key_prefixes`. Nothing of a refused request is enqueued.
fn authorize_jobs(principal: &Principal, jobs: &[JobSpec], kinds: &Kinds) -> Result<(), Problem> {
    let errors: Vec<submission::FieldError> = jobs
        .iter()
        .enumerate()
        .filter_map(|(index, job)| {
            let refusal = kinds.get(job.kind)?.authorize(job, principal).err()?;
            Some(submission::FieldError { index: Some(index), field: refusal.0, message: refusal.1 })
        })
        .collect();
    if errors.is_empty() { Ok(()) } else { Err(Problem::key_not_allowed(errors)) }
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

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "meta", responses((status = 200, description = "Alive", body = Health)))]
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "alive".to_owned() })
}

/// Ready means: started, not shutting down, the queue thread answers, the store answered
/// its latest probe. The body lists each check so an operator sees which one failed. The
/// route is open to anyone, so a failing store shows only a short reason there; the
/// store's URL and its error text (which can name hosts and buckets) are shown to callers
/// whose token may read jobs, and are always in the logs.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "meta",
    responses(
        (status = 200, description = "Ready; `checks` shows each check", body = Object),
        (status = 503, description = "Not ready; `checks` shows which check failed", body = Object)
    )
)]
async fn readyz(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let lifecycle = &state.lifecycle;
    let started = lifecycle.started.load(Ordering::Acquire);
    let shutting_down = lifecycle.shutting_down.load(Ordering::Acquire);
    let store_reachable = state.store_health.is_up();
    let queue = tokio::time::timeout(QUEUE_CHECK_TIMEOUT, state.queue.status()).await;
    let queue_open = matches!(queue, Ok(Ok(_)));
    let queue_writable = matches!(queue, Ok(Ok(status)) if status.writable);
    let ready = started && !shutting_down && store_reachable && queue_open && queue_writable;
    let mut body = json!({
        "ready": ready,
        "checks": {
            "started": started,
            "shutting_down": shutting_down,
            "queue_open": queue_open,
            "queue_writable": queue_writable,
            "store_reachable": store_reachable,
        },
        "store": {
            "reachable": store_reachable,
            "reason": (!store_reachable).then_some("unreachable"),
        },
    });
    let authorization = request.headers().get(header::AUTHORIZATION).map(header::HeaderValue::as_bytes);
    if state.auth.check(authorization, Scope::Read).is_ok() {
        body["store"]["url"] = json!(state.store.url());
        body["store"]["error"] = json!(state.store_health.last_error());
    }
    if ready { HttpResponse::Ok().json(body) } else { HttpResponse::ServiceUnavailable().json(body) }
}

/// Queue depths, counters and runtime figures.
#[utoipa::path(
    get,
    path = "/v1/stats",
    tag = "meta",
    responses(
        (status = 200, description = "Current figures", body = Object),
        (status = 401, description = "No bearer token, or an unknown one", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the scope, or a key lies outside its allowed_key_prefixes", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Shutting down, or the queue cannot be written; nothing was enqueued", body = ProblemBody, content_type = "application/problem+json")
    ),
    security(("bearer" = []))
)]
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

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct GetJobQuery {
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
        (status = 403, description = "The token lacks the scope, or a key lies outside its allowed_key_prefixes", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such job", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Shutting down, or the queue cannot be written; nothing was enqueued", body = ProblemBody, content_type = "application/problem+json")
    ),
    security(("bearer" = []))
)]
async fn get_job(
    request: HttpRequest,
    id: web::Path<String>,
    query: web::Query<GetJobQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let job_id = parse_job_id(&id)?;
    let tenant = confined_tenant(&request);
    let record = visible_record(&state, job_id, query.payload, tenant.as_deref()).await?;
    match record {
        Some(record) => Ok(HttpResponse::Ok().json(record)),
        None => Err(Problem::not_found(format!("no job {job_id}; unknown, or purged after its retention"))),
    }
}

/// The name of the caller if its token is confined by `allowed_key_prefixes`: a tenant,
/// who reads, lists and controls only the jobs it submitted. Other callers see every job.
fn confined_tenant(request: &HttpRequest) -> Option<String> {
    let extensions = request.extensions();
    let principal = extensions.get::<Arc<Principal>>()?;
    (!principal.allowed_key_prefixes.is_empty()).then(|| principal.name.clone())
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
        None => Err(control_problem(job_id, ControlError::NotFound)),
    }
}

/// The most records one listing page holds.
const MAX_PAGE: usize = 1_000;

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only jobs in this state.
    #[param(value_type = Option<JobState>)]
    state: Option<String>,
    /// Records per page, 1 to 1000 [default: 100].
    limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// `GET /v1/jobs?state=dead&limit=100&cursor=...`: records newest first, paged.
#[utoipa::path(
    get,
    path = "/v1/jobs",
    tag = "jobs",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of records, newest first", body = JobList),
        (status = 400, description = "The body or a field is invalid; `errors` names each field", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No bearer token, or an unknown one", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the scope, or a key lies outside its allowed_key_prefixes", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Shutting down, or the queue cannot be written; nothing was enqueued", body = ProblemBody, content_type = "application/problem+json")
    ),
    security(("bearer" = []))
)]
async fn list_jobs(
    request: HttpRequest,
    query: web::Query<ListQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let bad = |field: &str, message: String| Problem::from(submission::SubmissionError::field(field, message));
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
    let filter = ListFilter { state: job_state, submitted_by: confined_tenant(&request) };
    let page = tokio::time::timeout(QUEUE_CHECK_TIMEOUT, state.queue.list(filter, before, limit))
        .await
        .map_err(|_| Problem::unavailable("the queue did not answer in time"))?
        .map_err(|error| Problem::unavailable(error.to_string()))?;
    Ok(HttpResponse::Ok()
        .json(JobList { jobs: page.records, next_cursor: page.next_before.map(|seq| seq.to_string()) }))
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
#[utoipa::path(
    post,
    path = "/v1/jobs/{id}/retry",
    tag = "control",
    params(("id" = String, Path, description = "The job id")),
    responses(
        (status = 202, description = "Queued again", body = AcceptedJob),
        (status = 401, description = "No bearer token, or an unknown one", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the scope, or a key lies outside its allowed_key_prefixes", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such job", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The job is in a state that does not allow this", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "The queue is full; nothing was enqueued; see Retry-After", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Shutting down, or the queue cannot be written; nothing was enqueued", body = ProblemBody, content_type = "application/problem+json")
    ),
    security(("bearer" = []))
)]
async fn retry_job(
    request: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let job_id = parse_job_id(&id)?;
    check_control_access(&request, &state, job_id).await?;
    let result = state.queue.retry_dead(job_id).await.map_err(|error| Problem::unavailable(error.to_string()))?;
    result.map_err(|error| control_problem(job_id, error))?;
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
        (status = 403, description = "The token lacks the scope, or a key lies outside its allowed_key_prefixes", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such job", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The job is in a state that does not allow this", body = ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "The queue is full; nothing was enqueued; see Retry-After", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Shutting down, or the queue cannot be written; nothing was enqueued", body = ProblemBody, content_type = "application/problem+json")
    ),
    security(("bearer" = []))
)]
async fn cancel_job(
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
        .map_err(|error| Problem::unavailable(error.to_string()))?;
    result.map_err(|error| control_problem(job_id, error))?;
    Ok(HttpResponse::Ok().json(AcceptedJob { id: job_id, state: JobState::Cancelled }))
}

/// `GET /metrics`: every series in the Prometheus text format, with the queue gauges
/// read at scrape time.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "meta",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain"),
        (status = 404, description = "On the API listener when metrics_listen is set: metrics are served there only", body = ProblemBody, content_type = "application/problem+json")
    )
)]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_and_the_listen_address_are_allowed_hosts() {
        let loopback: IpAddr = "127.0.0.1".parse().expect("IP");
        for host in [
            "localhost",
            "LocalHost:8080",
            "jobd.localhost",
            "a.b.localhost:1",
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.9.9.9:80",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(host_is_allowed(host, loopback), "{host}");
        }
        for host in [
            "attacker.example",
            "attacker.example:8080",
            "localhost.attacker.example",
            ".localhost",
            "notlocalhost",
            "10.0.0.5:8080",
            "[::2]:8080",
            "::1",
            "localhost:",
            "localhost:80:80",
            "localhost:http",
            "[::1]8080",
            "",
        ] {
            assert!(!host_is_allowed(host, loopback), "{host}");
        }
        let public: IpAddr = "192.0.2.7".parse().expect("IP");
        assert!(host_is_allowed("192.0.2.7:8080", public) && host_is_allowed("localhost", public));
        assert!(!host_is_allowed("192.0.2.8:8080", public) && !host_is_allowed("jobd.example", public));
        let every: IpAddr = "0.0.0.0".parse().expect("IP");
        assert!(host_is_allowed("192.0.2.8:8080", every) && host_is_allowed("[2001:db8::1]:80", every));
        assert!(!host_is_allowed("jobd.example:8080", every));
    }
}
