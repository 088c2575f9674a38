//! The operators' routes: liveness (`/healthz`), readiness (`/readyz`), the figures of
//! `/v1/stats`, and the Prometheus metrics of `/metrics`, which the optional metrics
//! listener renders too.

use std::sync::atomic::Ordering;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;
use serde_json::json;

use super::problem::ProblemBody;
use super::{AppState, Problem, QUEUE_CHECK_TIMEOUT};
use crate::auth::Scope;
use crate::metrics::Metrics;
use crate::queue::QueueHandle;
use crate::stats::Stats;
use crate::store::JobStore;

/// The liveness answer.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Health {
    status: String,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "meta", responses((status = 200, description = "Alive", body = Health)))]
pub(super) async fn healthz() -> HttpResponse {
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
pub(super) async fn readyz(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let lifecycle = &state.lifecycle;
    let started = lifecycle.started.load(Ordering::Acquire);
    let shutting_down = lifecycle.shutting_down.load(Ordering::Acquire);
    let store_reachable = state.store_health.is_up();
    let queue = tokio::time::timeout(QUEUE_CHECK_TIMEOUT, state.queue.status()).await;
    let queue_open = matches!(queue, Ok(Ok(_)));
    let queue_writable = matches!(queue, Ok(Ok(status)) if status.writable);
    let ingest = tokio::time::timeout(QUEUE_CHECK_TIMEOUT, state.queue.ingest_writable()).await;
    let ingest_writable = matches!(ingest, Ok(Ok(true)));
    let ready = started && !shutting_down && store_reachable && queue_open && queue_writable && ingest_writable;
    let mut body = json!({
        "ready": ready,
        "checks": {
            "started": started,
            "shutting_down": shutting_down,
            "queue_open": queue_open,
            "queue_writable": queue_writable,
            "ingest_writable": ingest_writable,
            "store_reachable": store_reachable,
        },
        // A detail, not a check: a node that cannot prove its lease still takes
        // submissions, and starts nothing until its lease is back.
        "lease_held": state.queue.lease_held(),
        "store": {
            "reachable": store_reachable,
            "reason": (!store_reachable).then_some("unreachable"),
        },
    });
    let authorization = request.headers().get(header::AUTHORIZATION).map(header::HeaderValue::as_bytes);
    // The details name the store and every webhook destination: an operator's, not a
    // tenant's, to read.
    let operator = match state.auth.check(authorization, Scope::Read) {
        Ok(None) => true,
        Ok(Some(principal)) => !principal.is_confined(),
        Err(_) => false,
    };
    if operator {
        body["store"]["url"] = json!(state.store.url());
        body["store"]["error"] = json!(state.store_health.last_error());
        // The kinds' own state, such as each webhook destination's circuit: a detail, not
        // a readiness check, since one receiver down is no reason to stop taking jobs.
        let kinds = state.kinds.readiness();
        if !kinds.is_empty() {
            body["kinds"] = serde_json::Value::Object(kinds);
        }
    }
    if ready { HttpResponse::Ok().json(body) } else { HttpResponse::ServiceUnavailable().json(body) }
}

/// Queue depths, counters and runtime figures: when (`at`), whose (`scope`: the queue's
/// figures are the whole queue's, the counters this node's), and this node's rates over the
/// last ten seconds (`rates`, null just after start).
#[utoipa::path(
    get,
    path = "/v1/stats",
    tag = "meta",
    params(StatsQuery),
    responses(
        (status = 200, description = "Current figures", body = Object),
        (status = 400, description = "A query parameter is invalid; `errors` names it", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No bearer token, or an unknown one", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the scope", body = ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Shutting down, or the queue cannot be written; nothing was enqueued", body = ProblemBody, content_type = "application/problem+json")
    ),
    security(("bearer" = []))
)]
pub(super) async fn get_stats(
    state: web::Data<AppState>,
    query: web::Query<StatsQuery>,
) -> Result<HttpResponse, Problem> {
    let status = tokio::time::timeout(QUEUE_CHECK_TIMEOUT, state.queue.status())
        .await
        .map_err(|_| Problem::unavailable("the queue did not answer in time"))?
        .map_err(|error| Problem::unavailable(error.to_string()))?;
    let counters = state.stats.snapshot(&state.metrics);
    let now = chrono::Utc::now();
    let sample = crate::stats::history::Sample::of(&counters, now.timestamp_millis());
    let shared = state.queue.is_shared();
    let mut body = json!({
        "at": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        // Whose figures each part is: the queue's are the whole queue's, which on a shared
        // queue every node reports alike; the counters and workers are this node's alone.
        "scope": {
            "queue": if shared { "cluster" } else { "node" },
            "counters": "node",
        },
        "rates": state.stats.history.rates(sample),
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
        "counters": counters,
        // The nodes sharing the queue whose lease is live (1 with SQLite).
        "cluster": { "nodes": state.metrics.cluster.nodes.get() },
        // Flat however many jobs wait: delayed jobs cost no task and no timer of their own.
        "runtime": {
            "delay_timers": state.stats.delay_timers.load(Ordering::Relaxed),
            "body_tasks": state.body_runtime.metrics().num_alive_tasks(),
            "body_threads": state.body_runtime.metrics().num_workers(),
        },
    });
    if query.history {
        body["history"] = json!(state.stats.history.samples());
    }
    Ok(HttpResponse::Ok().json(body))
}

/// `GET /v1/stats`'s options.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct StatsQuery {
    /// Include this node's counters of the last five minutes, one sample a second
    /// (`at_ms`, `accepted`, `succeeded`, `failed`, `dead`), oldest first.
    #[serde(default)]
    history: bool,
}

/// `GET /metrics`: every series in the Prometheus text format, with the queue gauges
/// read at scrape time.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "meta",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain"),
        (status = 401, description = "With a token file: no bearer token, or an unknown one", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "With a token file: a token without the read scope, or one confined to its own jobs (metrics name every destination and kind)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "On the API listener when metrics_listen is set: metrics are served there only", body = ProblemBody, content_type = "application/problem+json")
    ),
    security(("bearer" = []))
)]
pub async fn get_metrics(state: web::Data<AppState>) -> HttpResponse {
    render_metrics(&state.metrics, &state.queue, &state.stats, &state.store).await
}

/// Renders the metrics; shared by the API listener and the optional metrics listener.
pub async fn render_metrics(metrics: &Metrics, queue: &QueueHandle, stats: &Stats, store: &JobStore) -> HttpResponse {
    let status = match tokio::time::timeout(QUEUE_CHECK_TIMEOUT, queue.status()).await {
        Ok(Ok(mut status)) => {
            status.oldest_queued_at = stats.earliest_due(status.oldest_queued_at);
            Some(status)
        }
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
