//! Prometheus metrics: one registry holding every jobd series, the HTTP middleware that
//! counts requests by route pattern, and the scrape-time gauges read from the queue.
//!
//! Naming follows Prometheus conventions: base units, `_total` for counters, and only
//! low-cardinality labels (kind, outcome, state, reason, route pattern, method, status
//! class); never a job id or an object key.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use chrono::Utc;
use prometheus::{
    Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder, exponential_buckets,
};

use crate::job::JobState;
use crate::queue::QueueStatus;

/// Attempt outcomes, plus `dead` for jobs that failed for good.
pub const OUTCOMES: [&str; 5] = ["succeeded", "failed", "dead", "panicked", "timed_out"];
/// Why a submission was refused, besides the kinds' token limits
/// ([`rejection_reasons`]).
const REJECTION_REASONS: [&str; 8] = [
    "queue_full",
    "invalid",
    "too_large",
    "too_many_jobs",
    "too_deep",
    "body_timeout",
    "unavailable",
    "commit_backlog",
];

/// Every reason `jobd_submissions_rejected_total` counts: the core's, and each kind's
/// token limit's (`key_not_allowed`).
pub fn rejection_reasons() -> impl Iterator<Item = &'static str> {
    REJECTION_REASONS.into_iter().chain(crate::kinds::token_limits().map(|limit| limit.rejection_reason))
}
/// Why a request was refused before its route ran.
pub const HTTP_REFUSAL_REASONS: [&str; 2] = ["header_too_large", "host_not_allowed"];
/// What SIGHUP reloads.
pub const RELOADABLE: [&str; 2] = ["tokens", "tls"];
/// The states `jobd_queue_depth` reports.
pub const DEPTH_STATES: [JobState; 5] =
    [JobState::Queued, JobState::Scheduled, JobState::Running, JobState::Failed, JobState::Dead];

/// Why the metrics could not be set up: a name or label clash, which is a bug.
pub type MetricsError = prometheus::Error;

/// The registry and every series jobd exports.
pub struct Metrics {
    registry: Registry,
    pub jobs_submitted: IntCounterVec,
    /// One increment per attempt with its outcome, and one more with `dead` when a job
    /// fails for good.
    pub jobs_finished: IntCounterVec,
    pub job_duration: HistogramVec,
    pub job_wait: HistogramVec,
    pub worker_restarts: IntCounter,
    /// Attempts a worker started, by kind.
    pub jobs_started: IntCounterVec,
    /// Workers that died outside a job's containment and were replaced by the Dispatcher;
    /// `worker_restarts` counts them too.
    pub worker_replacements: IntCounter,
    pub submissions_rejected: IntCounterVec,
    /// Requests refused for their token, by reason (`missing`, `invalid`, `scope`, and
    /// each kind's token limit's, `key_prefix`).
    pub auth_failures: IntCounterVec,
    /// SIGHUP reloads, by what was reloaded and whether it worked.
    pub reloads: IntCounterVec,
    /// Requests refused before their route ran, by reason.
    pub http_refusals: IntCounterVec,
    pub store_commit_duration: Histogram,
    pub store_commit_batch_size: Histogram,
    pub store_sync_duration: Histogram,
    /// 1 while the object store answers its probe, 0 while uploads are held for it.
    pub store_up: IntGauge,
    /// The cluster's series (`jobd_nodes`, rescues, fenced writes, heartbeat lag); with
    /// SQLite, one node and nothing else.
    pub cluster: crate::queue::ClusterMetrics,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    /// The queue-wide series carry the `queue_id` label ([`crate::queue::QueueBackend::queue_id`]):
    /// every node of a shared queue reports the same figures under the same label, so a
    /// dashboard takes the `max` by `queue_id`, then sums over them. (The `queue` label
    /// names a named queue: `crate::queues::QueueMetrics`.)
    queue_depth: IntGaugeVec,
    queue_capacity: IntGaugeVec,
    queue_oldest_age: prometheus::GaugeVec,
    /// `jobd_nodes`, by queue, read at scrape time from `cluster.nodes`.
    nodes: IntGaugeVec,
    workers: IntGaugeVec,
    uploads_in_flight: IntGauge,
    upload_concurrency: IntGauge,
}

/// What the scrape-time gauges are read from.
pub struct Scrape<'a> {
    pub queue: Option<&'a QueueStatus>,
    pub workers_total: usize,
    pub workers_busy: usize,
    /// Uploads in flight, and `upload_concurrency`.
    pub uploads: (usize, usize),
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// The registry `/metrics` serves, where kinds register their own series
    /// ([`crate::kinds::Registration::build`]).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The queue thread's series, handed to it so that the queue needs no registry.
    pub fn commit_metrics(&self) -> crate::queue::CommitMetrics {
        crate::queue::CommitMetrics {
            commit_duration: self.store_commit_duration.clone(),
            commit_batch_size: self.store_commit_batch_size.clone(),
            sync_duration: self.store_sync_duration.clone(),
        }
    }

    /// Creates and registers every series, with each known label value at zero so that
    /// dashboards and alerts see a series before the first event. `kinds` are the kinds
    /// that can run (the registry's, without the test kinds unless they are on): only they
    /// get series.
    pub fn new(kinds: &[&'static str]) -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let jobs_submitted =
            IntCounterVec::new(Opts::new("jobd_jobs_submitted_total", "Jobs accepted, by kind."), &["kind"])?;
        let jobs_finished = IntCounterVec::new(
            Opts::new(
                "jobd_jobs_finished_total",
                "Job attempts ended, by kind and outcome; outcome=dead counts jobs that failed for good.",
            ),
            &["kind", "outcome"],
        )?;
        let job_duration = HistogramVec::new(
            HistogramOpts::new("jobd_job_duration_seconds", "Run time of one attempt, by kind.")
                .buckets(exponential_buckets(0.0005, 4.0, 11)?),
            &["kind"],
        )?;
        let job_wait = HistogramVec::new(
            HistogramOpts::new("jobd_job_wait_seconds", "Time from due (queued) to started, by kind.")
                // Fine at the low end: dispatch latency is counted in fractions of a millisecond.
                .buckets(exponential_buckets(0.0001, 2.0, 22)?),
            &["kind"],
        )?;
        let worker_restarts =
            IntCounter::new("jobd_worker_restarts_total", "Workers restarted after a panicked job, or replaced.")?;
        let jobs_started =
            IntCounterVec::new(Opts::new("jobd_jobs_started_total", "Attempts a worker started, by kind."), &["kind"])?;
        let worker_replacements = IntCounter::new(
            "jobd_worker_replacements_total",
            "Workers that died outside a job's containment and were replaced; also counted in jobd_worker_restarts_total.",
        )?;
        let submissions_rejected = IntCounterVec::new(
            Opts::new("jobd_submissions_rejected_total", "Submissions refused, by reason."),
            &["reason"],
        )?;
        let auth_failures = IntCounterVec::new(
            Opts::new("jobd_auth_failures_total", "Requests refused for their bearer token, by reason."),
            &["reason"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new("jobd_reloads_total", "SIGHUP reloads, by what was reloaded and outcome."),
            &["what", "outcome"],
        )?;
        let http_refusals = IntCounterVec::new(
            Opts::new("jobd_http_refusals_total", "Requests refused before their route ran, by reason."),
            &["reason"],
        )?;
        let store_commit_duration = Histogram::with_opts(
            HistogramOpts::new(
                "jobd_store_commit_duration_seconds",
                "Duration of one queue transaction, its commit included (its fsync is the sync's).",
            )
            .buckets(exponential_buckets(0.0001, 4.0, 10)?),
        )?;
        let store_sync_duration = Histogram::with_opts(
            HistogramOpts::new(
                "jobd_store_sync_duration_seconds",
                "Duration of one fsync of the queue, which covers every transaction committed since the last.",
            )
            .buckets(exponential_buckets(0.0001, 4.0, 10)?),
        )?;
        let store_commit_batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "jobd_store_commit_batch_size",
                "Requests committed in one queue transaction (submissions, fetches, progress flushes).",
            )
            .buckets(exponential_buckets(1.0, 2.0, 12)?),
        )?;
        let http_requests = IntCounterVec::new(
            Opts::new("jobd_http_requests_total", "HTTP requests, by route pattern, method and status class."),
            &["route", "method", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "jobd_http_request_duration_seconds",
                "HTTP request duration, by route pattern and method.",
            ),
            &["route", "method"],
        )?;
        let queue_depth = IntGaugeVec::new(
            Opts::new("jobd_queue_depth", "Jobs in the queue, by state; the same on every node of a shared queue."),
            &["state", "queue_id"],
        )?;
        let queue_capacity = IntGaugeVec::new(
            Opts::new("jobd_queue_capacity", "The most unfinished jobs accepted (max_queue)."),
            &["queue_id"],
        )?;
        let queue_oldest_age = prometheus::GaugeVec::new(
            Opts::new(
                "jobd_queue_oldest_age_seconds",
                "How long the oldest queued job has been due without starting; 0 when none is queued.",
            ),
            &["queue_id"],
        )?;
        let nodes = IntGaugeVec::new(
            Opts::new("jobd_nodes", "Nodes sharing the queue whose lease is live, this one included."),
            &["queue_id"],
        )?;
        let workers = IntGaugeVec::new(Opts::new("jobd_workers", "Workers, by state."), &["state"])?;
        let uploads_in_flight = IntGauge::new("jobd_uploads_in_flight", "Uploads to the object store in flight.")?;
        let upload_concurrency =
            IntGauge::new("jobd_upload_concurrency", "The most uploads in flight at once (upload_concurrency).")?;
        let store_up = IntGauge::new(
            "jobd_store_up",
            "1 if the object store answered its latest probe; 0 while it is unreachable and uploads are held.",
        )?;
        let cluster = crate::queue::ClusterMetrics {
            // Registered by queue as `jobd_nodes` ([`Metrics::render`]).
            nodes: IntGauge::new("jobd_nodes_unlabelled", "Read into jobd_nodes at scrape time.")?,
            rescued: IntCounter::new(
                "jobd_jobs_rescued_total",
                "Running jobs this node took back from nodes whose lease expired.",
            )?,
            fenced: IntCounter::new(
                "jobd_fenced_writes_total",
                "Starts and finishes this node wrote for jobs it no longer held (rescued meanwhile); none recorded.",
            )?,
            heartbeat_lag: Histogram::with_opts(
                HistogramOpts::new(
                    "jobd_lease_heartbeat_lag_seconds",
                    "How long after it was due each lease heartbeat committed.",
                )
                .buckets(exponential_buckets(0.001, 4.0, 8)?),
            )?,
            fenced_starts: IntCounter::new(
                "jobd_fenced_starts_total",
                "Claimed jobs this node did not run because their start was refused: the job moved to another \
                 node or claim, or this node's lease was not proven held.",
            )?,
            lease_held: IntGauge::new(
                "jobd_lease_held",
                "1 while this node can prove that it holds its lease on the shared queue (always 1 with SQLite); \
                 0 while it cannot, and so starts and claims nothing.",
            )?,
        };
        // A node alone (SQLite) is its whole cluster, and holds its jobs for its life.
        cluster.nodes.set(1);
        cluster.lease_held.set(1);
        let build_info =
            IntGaugeVec::new(Opts::new("jobd_build_info", "Always 1; labelled with the version."), &["version"])?;
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);

        for &kind in kinds {
            jobs_submitted.with_label_values(&[kind]);
            jobs_started.with_label_values(&[kind]);
            job_duration.with_label_values(&[kind]);
            job_wait.with_label_values(&[kind]);
            for outcome in OUTCOMES {
                jobs_finished.with_label_values(&[kind, outcome]);
            }
        }
        for reason in rejection_reasons() {
            submissions_rejected.with_label_values(&[reason]);
        }
        for reason in crate::auth::AuthFailure::reasons() {
            auth_failures.with_label_values(&[reason]);
        }
        for reason in HTTP_REFUSAL_REASONS {
            http_refusals.with_label_values(&[reason]);
        }
        for what in RELOADABLE {
            for outcome in ["ok", "error"] {
                reloads.with_label_values(&[what, outcome]);
            }
        }
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(jobs_submitted.clone()),
            Box::new(jobs_finished.clone()),
            Box::new(job_duration.clone()),
            Box::new(job_wait.clone()),
            Box::new(worker_restarts.clone()),
            Box::new(jobs_started.clone()),
            Box::new(worker_replacements.clone()),
            Box::new(submissions_rejected.clone()),
            Box::new(auth_failures.clone()),
            Box::new(reloads.clone()),
            Box::new(http_refusals.clone()),
            Box::new(store_commit_duration.clone()),
            Box::new(store_commit_batch_size.clone()),
            Box::new(store_sync_duration.clone()),
            Box::new(http_requests.clone()),
            Box::new(http_duration.clone()),
            Box::new(queue_depth.clone()),
            Box::new(queue_capacity.clone()),
            Box::new(queue_oldest_age.clone()),
            Box::new(workers.clone()),
            Box::new(uploads_in_flight.clone()),
            Box::new(upload_concurrency.clone()),
            Box::new(store_up.clone()),
            Box::new(nodes.clone()),
            Box::new(cluster.rescued.clone()),
            Box::new(cluster.fenced.clone()),
            Box::new(cluster.heartbeat_lag.clone()),
            Box::new(cluster.fenced_starts.clone()),
            Box::new(cluster.lease_held.clone()),
            Box::new(build_info),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ];
        for collector in collectors {
            registry.register(collector)?;
        }
        Ok(Metrics {
            registry,
            jobs_submitted,
            jobs_finished,
            job_duration,
            job_wait,
            worker_restarts,
            jobs_started,
            worker_replacements,
            submissions_rejected,
            auth_failures,
            reloads,
            http_refusals,
            store_commit_duration,
            store_commit_batch_size,
            store_sync_duration,
            store_up,
            cluster,
            http_requests,
            http_duration,
            queue_depth,
            queue_capacity,
            queue_oldest_age,
            nodes,
            workers,
            uploads_in_flight,
            upload_concurrency,
        })
    }

    /// Sets the scrape-time gauges and renders every series in the text format.
    pub fn render(&self, scrape: &Scrape<'_>) -> String {
        let (workers_total, workers_busy) = (scrape.workers_total, scrape.workers_busy);
        self.uploads_in_flight.set(i64::try_from(scrape.uploads.0).unwrap_or(i64::MAX));
        self.upload_concurrency.set(i64::try_from(scrape.uploads.1).unwrap_or(i64::MAX));
        if let Some(status) = scrape.queue {
            let depth = &status.depth;
            let queue = &*status.queue_id;
            for state in DEPTH_STATES {
                let value = match state {
                    JobState::Queued => depth.queued,
                    JobState::Scheduled => depth.scheduled,
                    JobState::Running => depth.running,
                    JobState::Failed => depth.failed,
                    _ => depth.dead,
                };
                let value = i64::try_from(value).unwrap_or(i64::MAX);
                self.queue_depth.with_label_values(&[state.name(), queue]).set(value);
            }
            self.queue_capacity.with_label_values(&[queue]).set(i64::try_from(depth.capacity).unwrap_or(i64::MAX));
            let age = status.oldest_queued_at.map_or(0.0, |due| (Utc::now() - due).as_seconds_f64().max(0.0));
            self.queue_oldest_age.with_label_values(&[queue]).set(age);
            self.nodes.with_label_values(&[queue]).set(self.cluster.nodes.get());
        }
        let busy = i64::try_from(workers_busy).unwrap_or(i64::MAX);
        let idle = i64::try_from(workers_total.saturating_sub(workers_busy)).unwrap_or(i64::MAX);
        self.workers.with_label_values(&["busy"]).set(busy);
        self.workers.with_label_values(&["idle"]).set(idle);
        let mut buffer = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families, which the registry guarantees.
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "encoding metrics failed");
        }
        String::from_utf8_lossy(&buffer).into_owned()
    }

    fn observe_http(&self, route: &str, method: &str, status: u16, started: Instant) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.http_requests.with_label_values(&[route, method, class]).inc();
        self.http_duration.with_label_values(&[route, method]).observe(started.elapsed().as_secs_f64());
    }
}

/// The pattern of the resource that answers a request, as resource app data, for
/// [`observe_http`].
#[derive(Debug, Clone, Copy)]
pub struct RoutePattern(pub &'static str);

/// Middleware: counts and times every request by its route pattern (`/v1/jobs/{id}`, never
/// the concrete path), method and status class.
pub async fn observe_http(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let metrics = request.app_data::<actix_web::web::Data<std::sync::Arc<Metrics>>>().cloned();
    let method: &'static str = match request.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    let response = next.call(request).await;
    if let Some(metrics) = metrics {
        let (route, status) = match &response {
            // The resource that answered left its pattern in the request's app data;
            // `match_pattern()` would run the router's regexes again for every request.
            Ok(response) => {
                (response.request().app_data::<RoutePattern>().map(|route| route.0), response.status().as_u16())
            }
            Err(error) => (None, error.as_response_error().status_code().as_u16()),
        };
        metrics.observe_http(route.unwrap_or("unmatched"), method, status, started);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_required_series_is_exported_with_its_labels() {
        let metrics = Metrics::new(&crate::kinds::all_names().collect::<Vec<_>>()).expect("metrics");
        let text = metrics.render(&Scrape { queue: None, workers_total: 4, workers_busy: 1, uploads: (2, 8) });
        for series in [
            "jobd_jobs_submitted_total{kind=\"upload\"} 0",
            "jobd_jobs_finished_total{kind=\"noop\",outcome=\"dead\"} 0",
            "jobd_submissions_rejected_total{reason=\"queue_full\"} 0",
            "jobd_auth_failures_total{reason=\"scope\"} 0",
            "jobd_reloads_total{outcome=\"error\",what=\"tls\"} 0",
            "jobd_workers{state=\"busy\"} 1",
            "jobd_workers{state=\"idle\"} 3",
            "jobd_worker_restarts_total 0",
            "jobd_build_info{version=",
            "jobd_job_duration_seconds_bucket{kind=\"sleep\"",
            "jobd_store_commit_batch_size_bucket",
            "process_resident_memory_bytes",
            "jobd_uploads_in_flight 2",
            "jobd_upload_concurrency 8",
        ] {
            assert!(text.contains(series), "missing {series}");
        }
    }
}
