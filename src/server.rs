//! Daemon lifecycle: builds the store, queue and actors, serves HTTP, and shuts down in
//! order on SIGTERM or SIGINT.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix::Actor as _;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use tokio::signal::unix::{SignalKind, signal};

use crate::actors::dispatcher::{Drain, PoolSettings};
use crate::actors::{Dispatcher, Ingest};
use crate::auth::{Authenticator, TokenFileError};
use crate::config::Config;
use crate::http::{self, AppState, Lifecycle};
use crate::kinds::{KindSettings, Kinds, RunContext};
use crate::metrics::{Metrics, MetricsError};
use crate::queue::{OpenError, QueueHandle, QueueLost, QueueThread, StorageError};
use crate::runner::JobRunner;
use crate::stats::Stats;
use crate::store::{JobStore, StoreError};
use crate::store_health::StoreHealth;
use crate::submission::ParseOptions;
use crate::tls::{CertificateReloader, TlsError};

/// How long a lost queue's stop waits for the requests in flight to be answered.
const IN_FLIGHT_GRACE: Duration = Duration::from_secs(2);
/// Finished jobs deleted per purge transaction: small, so a purge never holds the queue
/// thread long enough to delay submissions noticeably.
const PURGE_BATCH: usize = 1_000;
/// How long shutdown waits for the aborts of abandoned multipart uploads, after the drain.
/// An abort is one request; with `shutdown_timeout_secs` (30 s) and the runtime's own second
/// this stays inside the unit's `TimeoutStopSec=` (45 s).
const UPLOAD_ABORT_WAIT: Duration = Duration::from_secs(5);
/// The most threads the job-body runtime gets, however large `max_workers` is.
const MAX_BODY_THREADS: usize = 256;

/// Why the daemon could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("cannot start the queue thread: {0}")]
    QueueThread(std::io::Error),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir { path: std::path::PathBuf, source: std::io::Error },
    #[error("cannot open the queue: {0}")]
    Queue(#[from] StorageError),
    #[error(transparent)]
    QueueOpen(#[from] OpenError),
    #[error("{0}; jobd stopped, and its next start recovers the queue from what is on disk")]
    QueueLost(StorageError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Tokens(#[from] TokenFileError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Checks what `serve` would build from `config` without starting anything: the store
/// URL is parsed and the store built (a `file://` root is created). With `probe`, the
/// store is also asked once whether it answers.
pub fn check(config: &Config, probe: bool) -> Result<(), ServeError> {
    let auth = authenticator(config)?;
    if let Some(path) = &config.tokens_file {
        eprintln!("jobd: token file {} is valid", path.display());
        if auth.token_count() == Some(0) {
            eprintln!("jobd: warning: {NO_TOKENS}");
        }
    }
    if let Some(reloader) = certificate(config)? {
        reloader.server_config()?;
        eprintln!("jobd: TLS certificate and key are valid");
    }
    let store = JobStore::from_url(&config.store_url, &config.store_options())?;
    if probe {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(ServeError::Http)?;
        runtime.block_on(store.probe())?;
        eprintln!("jobd: store {} answers", store.url());
    }
    Ok(())
}

/// What jobd says whenever the token file in force holds no tokens.
const NO_TOKENS: &str =
    "the token file holds no tokens: every request that needs a token gets 401, so nothing can be submitted";

/// Warns when authentication is on and no token is in force: a valid state (an emptied
/// file revokes every token) but one an operator must not miss.
fn warn_if_no_tokens(auth: &Authenticator) {
    if auth.token_count() == Some(0) {
        tracing::warn!(tokens_file = ?auth.path(), tokens = 0, "{NO_TOKENS}");
    }
}

/// The token checker `config` describes; fails on a token file that cannot be used.
fn authenticator(config: &Config) -> Result<Authenticator, ServeError> {
    match &config.tokens_file {
        Some(path) => Ok(Authenticator::from_file(path)?),
        None => Ok(Authenticator::disabled()),
    }
}

/// The TLS certificate `config` describes, if any.
fn certificate(config: &Config) -> Result<Option<Arc<CertificateReloader>>, ServeError> {
    match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Ok(Some(Arc::new(CertificateReloader::load(cert, key)?))),
        _ => Ok(None),
    }
}

/// SIGHUP: reads the token file and the TLS certificate again. Each keeps what is in
/// force when its new version cannot be used, so a bad edit never opens or closes the API.
fn reload(auth: &Authenticator, certificate: Option<&CertificateReloader>, metrics: &Metrics) {
    if auth.enabled() {
        match auth.reload() {
            Ok(tokens) => {
                metrics.reloads.with_label_values(&["tokens", "ok"]).inc();
                tracing::info!(tokens, "SIGHUP: token file reloaded");
                warn_if_no_tokens(auth);
            }
            Err(error) => {
                metrics.reloads.with_label_values(&["tokens", "error"]).inc();
                tracing::error!(%error, "SIGHUP: token file not reloaded; the previous tokens stay in force");
            }
        }
    }
    if let Some(certificate) = certificate {
        match certificate.reload() {
            Ok(()) => {
                metrics.reloads.with_label_values(&["tls", "ok"]).inc();
                tracing::info!("SIGHUP: TLS certificate reloaded; new connections use it");
            }
            Err(error) => {
                metrics.reloads.with_label_values(&["tls", "error"]).inc();
                tracing::error!(%error, "SIGHUP: TLS certificate not reloaded; the previous one stays in force");
            }
        }
    }
    tracing::info!("SIGHUP: other settings are read at start only; restart jobd to apply them");
}

/// Runs the daemon until a shutdown signal, then drains and returns.
pub fn serve(config: Config) -> Result<(), ServeError> {
    // The queue opens, and recovers, before anything listens: jobd is ready only after
    // recovery.
    let metrics = Arc::new(Metrics::new()?);
    let backend = crate::queue::open(&config.queue_settings())?;
    let (queue, queue_lost) =
        QueueThread::spawn(backend, config.group_commit, metrics.commit_metrics()).map_err(ServeError::QueueThread)?;
    tracing::info!(node = %queue.node(), "this process holds the jobs it claims as this node");
    // Job bodies run here, one thread per worker: a body that blocks its thread holds
    // only its own, so it cannot stall the actors or the other workers.
    let bodies = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.max_workers.min(MAX_BODY_THREADS))
        .thread_name("jobd-job")
        .enable_all()
        .build()
        .map_err(ServeError::QueueThread)?;
    let handle = queue.handle();
    let result = actix::System::new().block_on(run(config, handle, queue_lost, bodies.handle().clone(), metrics));
    // Bodies still running after the drain (past shutdown_timeout) are abandoned.
    bodies.shutdown_timeout(Duration::from_secs(1));
    // The actors and the HTTP server are gone with the System, and with them every
    // queue handle, so the queue thread ends here. A lost queue's thread refuses all work
    // and holds nothing worth waiting for: jobd exits without joining it, so that a
    // handle some part of the stopped server still holds cannot keep a failed daemon
    // from exiting and being restarted.
    if matches!(result, Err(ServeError::QueueLost(_))) {
        drop(queue);
    } else {
        queue.join();
    }
    result
}

async fn run(
    config: Config,
    queue: QueueHandle,
    mut queue_lost: QueueLost,
    bodies: tokio::runtime::Handle,
    metrics: Arc<Metrics>,
) -> Result<(), ServeError> {
    // Signal streams are created first, so that a signal during start-up is not lost.
    let mut terminate = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(ServeError::Signals)?;
    // SIGHUP's default action would kill the process; an operator used to "reload" must
    // not lose the daemon to it.
    let mut hangup = signal(SignalKind::hangup()).map_err(ServeError::Signals)?;

    let auth = Arc::new(authenticator(&config)?);
    warn_if_no_tokens(&auth);
    let certificate = certificate(&config)?;
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

    let kinds = Arc::new(Kinds::new(&KindSettings {
        test_kinds: config.test_kinds,
        metadata_supported: store.kind().supports_attributes(),
        default_key_prefix: config.key_prefix.clone(),
    }));
    let runner = Arc::new(JobRunner {
        kinds: kinds.clone(),
        context: RunContext { store: store.clone() },
        stats: stats.clone(),
        metrics: metrics.clone(),
        timeouts: config.timeouts(),
        bodies: bodies.clone(),
    });
    let notifier = crate::systemd::Notifier::from_env().map(Arc::new);
    let pool = PoolSettings {
        max_workers: config.max_workers,
        retry_policy: config.retry_policy(),
        window_max_bytes: config.window_max_bytes,
    };
    let dispatcher = Dispatcher::new(queue.clone(), runner, stats.clone(), pool, store_health.clone())
        .with_systemd(notifier.clone(), crate::systemd::watchdog_interval())
        .start();
    let probe_task = actix::spawn(store_health.clone().run(store.clone(), dispatcher.clone()));
    let ingest = Ingest::new(queue.clone(), stats.clone(), metrics.clone(), config.group_commit, config.max_attempts)
        .with_max_pending_bytes(config.ingest_max_pending_bytes)
        .start();
    let purge_task = actix::spawn(purge_periodically(queue.clone(), config.retention));

    let state_queue = queue.clone();
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
    let listener =
        TcpListener::bind(config.listen).map_err(|source| ServeError::Listen { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Listen { addr: config.listen, source })?;
    let host_check = http::HostCheck { unauthenticated_listen_ip: (!auth.enabled()).then(|| config.listen.ip()) };
    let server = HttpServer::new(move || {
        App::new()
            .app_data(http::HeaderLimit(config.max_header_bytes))
            .app_data(host_check)
            .wrap(from_fn(http::limit_headers))
            .wrap(from_fn(http::check_host))
            .wrap(from_fn(http::close_when_stopping))
            // Outermost, so that it counts the refusals of the limits inside it too.
            .wrap(from_fn(crate::metrics::observe_http))
            .configure(http::configure(state.clone()))
    })
    .workers(config.http_workers)
    // jobd handles the signals itself: the HTTP listener must stay open during the
    // drain so that late submissions get a clear 503 instead of a refused connection.
    .disable_signals()
    .shutdown_timeout(config.shutdown_timeout.as_secs())
    // A client that trickles its headers (slowloris) is cut off after this, so idle
    // connections cannot pile up to max_connections and starve real clients.
    .client_request_timeout(Duration::from_millis(config.client_request_timeout_ms))
    .client_disconnect_timeout(Duration::from_millis(config.client_disconnect_timeout_ms))
    .tls_handshake_timeout(Duration::from_millis(config.client_request_timeout_ms))
    // actix counts connections per worker thread.
    .max_connections(config.max_connections.div_ceil(config.http_workers));
    let server = match &certificate {
        Some(certificate) => server.listen_rustls_0_23(listener, certificate.server_config()?),
        None => server.listen(listener),
    }
    .map_err(ServeError::Http)?
    .run();
    let server_handle = server.handle();
    let server_task = actix::spawn(server);
    let metrics_server = match config.metrics_listen {
        Some(metrics_addr) => {
            Some(serve_metrics(metrics_addr, metrics.clone(), queue.clone(), stats.clone(), store.clone())?)
        }
        None => None,
    };
    lifecycle.started.store(true, Ordering::Release);
    tracing::info!(
        %addr,
        tls = certificate.is_some(),
        authentication = auth.enabled(),
        store = store.url(),
        max_workers = config.max_workers,
        max_queue = config.max_queue,
        test_kinds = config.test_kinds,
        "jobd listening"
    );
    // Ready only now: the queue is open and recovered, and the listener is bound.
    if let Some(notifier) = &notifier {
        notifier.ready();
    }

    let signal_name = loop {
        tokio::select! {
            _ = terminate.recv() => break "SIGTERM",
            _ = interrupt.recv() => break "SIGINT",
            _ = hangup.recv() => reload(&auth, certificate.as_deref(), &metrics),
            lost = &mut queue_lost => {
                let error = lost.unwrap_or_else(|_| StorageError::new("the queue thread stopped"));
                let http = (server_handle, server_task);
                return Err(stop_after_queue_lost(error, &lifecycle, notifier.as_deref(), http, metrics_server).await);
            }
        }
    };
    lifecycle.shutting_down.store(true, Ordering::Release);
    if let Some(notifier) = &notifier {
        notifier.stopping();
    }
    tracing::info!(
        signal = signal_name,
        timeout_secs = config.shutdown_timeout.as_secs(),
        "shutting down: draining running jobs"
    );
    // A second signal means the operator will not wait; exit at once.
    actix::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {},
            _ = interrupt.recv() => {},
        }
        tracing::warn!("second signal: exiting without waiting for running jobs");
        std::process::exit(1);
    });

    match tokio::time::timeout(config.shutdown_timeout, dispatcher.send(Drain)).await {
        Ok(Ok(report)) => {
            tracing::info!(unstarted_in_window = report.unstarted_in_window, "all running jobs finished");
        }
        Ok(Err(error)) => tracing::error!(%error, "the Dispatcher stopped before the drain finished"),
        Err(_) => tracing::warn!("shutdown_timeout elapsed with jobs still running; they are abandoned"),
    }
    // Abandoned uploads are aborted now, while the bodies runtime can still send the
    // aborts; S3 would otherwise keep (and bill) their parts.
    let still_open = store.abandon_uploads(UPLOAD_ABORT_WAIT).await;
    if still_open > 0 {
        tracing::warn!(
            still_open,
            "multipart uploads not aborted in time; their parts stay until a bucket lifecycle rule removes them"
        );
    }
    probe_task.abort();
    purge_task.abort();
    if let Some(queued) = queue_status_for_log(&state_queue).await
        && queued > 0
    {
        tracing::info!(queued, "queued jobs stay in the queue for the next start");
    }
    server_handle.stop(true).await;
    if let Some((handle, task)) = metrics_server {
        handle.stop(true).await;
        let _ = task.await;
    }
    if let Err(error) = server_task.await {
        tracing::error!(%error, "the HTTP server task failed");
    }
    actix::System::current().stop();
    tracing::info!("jobd stopped");
    Ok(())
}

/// Stops when the queue is lost (see [`QueueLost`]): no drain, since no outcome could be
/// recorded. The listener answers the requests in flight (every queue call fails at once
/// now, and each answer closes its connection) and closes. Jobs left running go back to
/// the queue at the next start, which systemd makes (jobd exits with a failure).
async fn stop_after_queue_lost(
    error: StorageError,
    lifecycle: &Lifecycle,
    notifier: Option<&crate::systemd::Notifier>,
    (server, server_task): (actix_web::dev::ServerHandle, tokio::task::JoinHandle<std::io::Result<()>>),
    metrics_server: Option<(actix_web::dev::ServerHandle, tokio::task::JoinHandle<std::io::Result<()>>)>,
) -> ServeError {
    lifecycle.shutting_down.store(true, Ordering::Release);
    if let Some(notifier) = notifier {
        notifier.stopping();
    }
    tracing::error!(%error, "the queue is lost: stopping without a drain");
    // The requests in flight get their 503 first: every queue call now fails at once, so
    // they are answered within moments. The listener's own graceful stop did not always
    // wait for them (a run under load saw eight submitters' connections closed before
    // their 503s were written), so this waits for them itself, for a bounded time.
    let waiting_since = std::time::Instant::now();
    while lifecycle.requests_in_flight.load(Ordering::Acquire) > 0 && waiting_since.elapsed() < IN_FLIGHT_GRACE {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Graceful for the listener: new connections are refused.
    server.stop(true).await;
    let _ = server_task.await;
    if let Some((handle, task)) = metrics_server {
        handle.stop(true).await;
        let _ = task.await;
    }
    ServeError::QueueLost(error)
}

/// Starts the listener that serves only `/metrics`, on one worker thread.
fn serve_metrics(
    addr: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    queue: QueueHandle,
    stats: Arc<Stats>,
    store: Arc<JobStore>,
) -> Result<(actix_web::dev::ServerHandle, tokio::task::JoinHandle<std::io::Result<()>>), ServeError> {
    let listener = TcpListener::bind(addr).map_err(|source| ServeError::Listen { addr, source })?;
    let bound = listener.local_addr().map_err(|source| ServeError::Listen { addr, source })?;
    let server = HttpServer::new(move || {
        let (metrics, queue, stats, store) = (metrics.clone(), queue.clone(), stats.clone(), store.clone());
        App::new().route(
            "/metrics",
            web::get().to(move || {
                let (metrics, queue, stats, store) = (metrics.clone(), queue.clone(), stats.clone(), store.clone());
                async move { http::render_metrics(&metrics, &queue, &stats, &store).await }
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .map_err(ServeError::Http)?
    .run();
    tracing::info!(addr = %bound, "metrics listening");
    let handle = server.handle();
    Ok((handle, actix::spawn(server)))
}

async fn queue_status_for_log(queue: &QueueHandle) -> Option<usize> {
    queue.status().await.ok().map(|status| status.depth.queued)
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
