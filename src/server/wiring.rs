//! The daemon's wiring: opens the queue and builds the job-body runtime, then builds the
//! store, the actors, the background tasks and the state the HTTP handlers share.

use std::sync::Arc;
use std::time::Duration;

use actix::Actor as _;
use actix::Addr;
use actix_web::web;
use tokio::task::JoinHandle;

use super::{ServeError, authenticator, certificate, warn_if_no_tokens};
use crate::actors::dispatcher::{GateOpened, PoolSettings};
use crate::actors::{Dispatcher, Ingest};
use crate::auth::Authenticator;
use crate::config::Config;
use crate::http::{AppState, Lifecycle};
use crate::kinds::upload::StoreHealth;
use crate::kinds::{GateSignal, KindSettings, Kinds, RunContext};
use crate::metrics::Metrics;
use crate::queue::{QueueHandle, QueueKind};
use crate::runner::JobRunner;
use crate::stats::Stats;
use crate::store::JobStore;
use crate::submission::ParseOptions;
use crate::systemd::Notifier;
use crate::tls::CertificateReloader;

/// Finished jobs deleted per purge transaction: small, so a purge never holds the queue
/// thread long enough to delay submissions noticeably.
const PURGE_BATCH: usize = 1_000;
/// The most threads the job-body runtime gets, however large `max_workers` is.
const MAX_BODY_THREADS: usize = 256;

/// Everything [`wire`] built, which serving and shutdown use; the two tasks are aborted
/// by the ordered stop.
pub(super) struct Wiring {
    pub(super) auth: Arc<Authenticator>,
    pub(super) certificate: Option<Arc<CertificateReloader>>,
    pub(super) store: Arc<JobStore>,
    pub(super) stats: Arc<Stats>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) lifecycle: Arc<Lifecycle>,
    pub(super) notifier: Option<Arc<Notifier>>,
    pub(super) queue: QueueHandle,
    pub(super) dispatcher: Addr<Dispatcher>,
    /// The store's probe loop (`StoreHealth::run`).
    pub(super) probe_task: JoinHandle<()>,
    /// The retention purge ([`purge_periodically`]).
    pub(super) purge_task: JoinHandle<()>,
    /// The periodic activity line ([`super::summary::log_activity`]).
    pub(super) summary_task: JoinHandle<()>,
    /// The counters' short history ([`crate::stats::sample_history`]).
    pub(super) history_task: JoinHandle<()>,
    pub(super) pauses_task: JoinHandle<()>,
    /// What every HTTP handler shares.
    pub(super) state: web::Data<AppState>,
}

/// The runtime that job bodies run on.
pub(super) fn body_runtime(config: &Config) -> Result<tokio::runtime::Runtime, ServeError> {
    // Job bodies run here, one thread per worker: a body that blocks its thread holds
    // only its own, so it cannot stall the actors or the other workers.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.max_workers.min(MAX_BODY_THREADS))
        .thread_name("jobd-job")
        .enable_all()
        .build()
        .map_err(ServeError::QueueThread)
}

/// Builds, on the actix System, what runs on the open queue: the token checker and the
/// certificate, the store and its first probe, the Dispatcher and the Ingest actor, the
/// probe and purge tasks, and the handlers' state.
pub(super) async fn wire(
    config: &Config,
    queue: QueueHandle,
    bodies: tokio::runtime::Handle,
    metrics: Arc<Metrics>,
) -> Result<Wiring, ServeError> {
    let auth = Arc::new(authenticator(config)?);
    warn_if_no_tokens(&auth);
    let certificate = certificate(config)?;
    if !auth.enabled() {
        if config.listen.ip().is_loopback() {
            tracing::warn!(listen = %config.listen, "no tokens_file: authentication is off, so jobd listens on loopback only");
        } else {
            tracing::warn!(listen = %config.listen, "no tokens_file and allow_unauthenticated = true: anyone who reaches this address can submit and control jobs");
        }
    }
    let store = Arc::new(JobStore::from_url(&config.store_url, &config.store_options())?);
    let lifecycle = Arc::new(Lifecycle::default());
    let stats = Arc::new(Stats::default());
    let store_health = StoreHealth::probe_at_start(&store, metrics.clone()).await;

    let kinds = Arc::new(Kinds::new(
        &KindSettings {
            test_kinds: config.test_kinds,
            metadata_supported: store.kind().supports_attributes(),
            default_key_prefix: config.key_prefix.clone(),
            tables: config.kind_tables.clone(),
            store_health: Some(store_health.clone()),
        },
        metrics.registry(),
    )?);
    let runner = Arc::new(JobRunner {
        kinds: kinds.clone(),
        context: RunContext { store: store.clone(), metrics: metrics.clone() },
        stats: stats.clone(),
        metrics: metrics.clone(),
        timeouts: config.timeouts(),
        bodies: bodies.clone(),
    });
    let notifier = Notifier::from_env().map(Arc::new);
    let pool = PoolSettings {
        max_workers: config.max_workers,
        retry_policy: config.retry_policy(),
        window_max_bytes: config.window_max_bytes,
        shared_queue: config.queue == QueueKind::Postgres,
    };
    let queues = Arc::new(crate::queues::Queues::from_tables(&config.queues));
    let queue_id = queue.status().await.map_err(ServeError::QueuePauses)?.queue_id;
    let queue_metrics = crate::queues::QueueMetrics::register(metrics.registry(), &queues, &queue_id)?;
    let dispatcher = Dispatcher::new(queue.clone(), runner, stats.clone(), pool)
        .with_queue_limits(queues.concurrency_limits())
        .with_queue_metrics(queue_metrics.clone())
        .with_systemd(notifier.clone(), crate::systemd::watchdog_interval())
        .start();
    let gate_opened = {
        let dispatcher = dispatcher.clone();
        GateSignal::new(move |gate| dispatcher.do_send(GateOpened(gate)))
    };
    let probe_task = actix::spawn(store_health.clone().run(store.clone(), gate_opened));
    let ingest = Ingest::new(queue.clone(), metrics.clone(), config.group_commit, config.max_attempts)
        .with_max_pending_bytes(config.ingest_max_pending_bytes)
        .start();
    let purge_task = actix::spawn(purge_periodically(queue.clone(), config.retention));
    let summary_task = actix::spawn(super::summary::log_activity(
        queue.clone(),
        stats.clone(),
        metrics.clone(),
        super::summary::SUMMARY_PERIOD,
    ));
    let history_task = actix::spawn(crate::stats::sample_history(stats.clone(), metrics.clone()));
    super::pauses::pause_configured(&queue, &queues).await.map_err(ServeError::QueuePauses)?;
    let pauses_changed = Arc::new(tokio::sync::Notify::new());
    let pauses_task = actix::spawn(super::pauses::watch_pauses(
        queue.clone(),
        dispatcher.clone(),
        super::pauses::Reporting { metrics: queue_metrics, queues: queues.clone(), queue_id },
        pauses_changed.clone(),
    ));

    let state = web::Data::new(AppState {
        ingest,
        dispatcher: dispatcher.clone(),
        queue: queue.clone(),
        stats: stats.clone(),
        metrics: metrics.clone(),
        store: store.clone(),
        store_health: store_health.clone(),
        lifecycle: lifecycle.clone(),
        kinds,
        queues,
        pauses_changed,
        parse_options: ParseOptions {
            max_json_depth: config.max_json_depth,
            max_jobs_per_request: config.max_jobs_per_request,
        },
        max_body_bytes: config.max_body_bytes,
        body_runtime: bodies,
        auth: auth.clone(),
        client_body_timeout: Duration::from_millis(config.client_body_timeout_ms),
        metrics_on_api_listener: config.metrics_listen.is_none(),
    });
    Ok(Wiring {
        auth,
        certificate,
        store,
        stats,
        metrics,
        lifecycle,
        notifier,
        queue,
        dispatcher,
        probe_task,
        purge_task,
        summary_task,
        history_task,
        pauses_task,
        state,
    })
}

/// Deletes finished jobs older than `retention`, in small batches, forever. The period
/// is a tenth of the retention (between 1 s and 60 s), so records outlive it by at most
/// about ten per cent.
async fn purge_periodically(queue: QueueHandle, retention: Duration) {
    let period = (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut interval = tokio::time::interval(period);
    loop {
        interval.tick().await;
        let Ok(retention) = chrono::Duration::from_std(retention) else { return };
        loop {
            let cutoff = chrono::Utc::now() - retention;
            match queue.purge_finished(cutoff, PURGE_BATCH).await {
                Ok(purged) if purged == PURGE_BATCH => continue,
                Ok(purged) => {
                    if purged > 0 {
                        tracing::debug!(purged, "purged finished jobs past retention");
                    }
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, "purging finished jobs failed");
                    break;
                }
            }
        }
    }
}
