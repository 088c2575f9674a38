//! Daemon lifecycle: builds the store, queue and actors, serves HTTP, and shuts down in
//! order on SIGTERM or SIGINT.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix::Actor as _;
use actix_web::{App, HttpServer, web};
use tokio::signal::unix::{SignalKind, signal};

use crate::actors::{Dispatcher, Ingest, dispatcher::Drain};
use crate::config::Config;
use crate::http::{self, AppState, Lifecycle};
use crate::queue::QueueThread;
use crate::queue::memory::MemoryBackend;
use crate::runner::JobRunner;
use crate::stats::Stats;
use crate::store::{JobStore, StoreError};
use crate::submission::ParseOptions;

/// How often the store is probed for `/readyz`.
const STORE_PROBE_INTERVAL: Duration = Duration::from_secs(15);

/// Why the daemon could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("cannot start the queue thread: {0}")]
    QueueThread(std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
}

/// Checks what `serve` would build from `config` without starting anything: the store
/// URL is parsed and the store built (a `file://` root is created).
pub fn check(config: &Config) -> Result<(), ServeError> {
    JobStore::from_url(&config.store_url, &config.key_prefix)?;
    Ok(())
}

/// Runs the daemon until a shutdown signal, then drains and returns.
pub fn serve(config: Config) -> Result<(), ServeError> {
    let queue = QueueThread::spawn(Box::new(MemoryBackend::new(config.max_queue))).map_err(ServeError::QueueThread)?;
    let handle = queue.handle();
    let result = actix::System::new().block_on(run(config, handle));
    // The actors and the HTTP server are gone with the System, and with them every
    // queue handle, so the queue thread ends here.
    queue.join();
    result
}

async fn run(config: Config, queue: crate::queue::QueueHandle) -> Result<(), ServeError> {
    // Signal streams are created first, so that a signal during start-up is not lost.
    let mut terminate = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(ServeError::Signals)?;

    let store = Arc::new(JobStore::from_url(&config.store_url, &config.key_prefix)?);
    let lifecycle = Arc::new(Lifecycle::default());
    let stats = Arc::new(Stats::default());
    match store.probe().await {
        Ok(()) => lifecycle.store_reachable.store(true, Ordering::Release),
        Err(error) => tracing::warn!(%error, store = store.url(), "object store not reachable; not ready until it is"),
    }
    let probe_task = actix::spawn(probe_store_periodically(store.clone(), lifecycle.clone()));

    let runner = Arc::new(JobRunner { store: store.clone(), stats: stats.clone() });
    let wake_pending = Arc::new(AtomicBool::new(false));
    let dispatcher =
        Dispatcher::new(queue.clone(), runner, stats.clone(), config.max_workers, wake_pending.clone()).start();
    let ingest = Ingest::new(queue.clone(), dispatcher.clone(), stats.clone(), wake_pending).start();

    let state = web::Data::new(AppState {
        ingest,
        queue,
        stats,
        lifecycle: lifecycle.clone(),
        parse_options: ParseOptions { test_kinds: config.test_kinds },
        max_body_bytes: config.max_body_bytes,
    });
    let listener =
        TcpListener::bind(config.listen).map_err(|source| ServeError::Listen { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Listen { addr: config.listen, source })?;
    let server = HttpServer::new(move || App::new().configure(http::configure(state.clone())))
        .workers(config.http_workers)
        // jobd handles the signals itself: the HTTP listener must stay open during the
        // drain so that late submissions get a clear 503 instead of a refused connection.
        .disable_signals()
        .shutdown_timeout(config.shutdown_timeout.as_secs())
        .listen(listener)
        .map_err(ServeError::Http)?
        .run();
    let server_handle = server.handle();
    let server_task = actix::spawn(server);
    lifecycle.started.store(true, Ordering::Release);
    tracing::info!(
        %addr,
        store = store.url(),
        max_workers = config.max_workers,
        max_queue = config.max_queue,
        test_kinds = config.test_kinds,
        "jobd listening"
    );

    let signal_name = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    lifecycle.shutting_down.store(true, Ordering::Release);
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
    probe_task.abort();
    server_handle.stop(true).await;
    if let Err(error) = server_task.await {
        tracing::error!(%error, "the HTTP server task failed");
    }
    actix::System::current().stop();
    tracing::info!("jobd stopped");
    Ok(())
}

async fn probe_store_periodically(store: Arc<JobStore>, lifecycle: Arc<Lifecycle>) {
    let mut interval = tokio::time::interval(STORE_PROBE_INTERVAL);
    interval.tick().await;
    loop {
        interval.tick().await;
        let reachable = match store.probe().await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, store = store.url(), "object store probe failed");
                false
            }
        };
        lifecycle.store_reachable.store(reachable, Ordering::Release);
    }
}
