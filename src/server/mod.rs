//! Daemon lifecycle: builds the store, queue and actors (`wiring`), serves HTTP
//! (`serving`), and shuts down in order on SIGTERM or SIGINT (`shutdown`). This file
//! holds the public entry points, [`serve`] and [`check`], their [`ServeError`], and the
//! loading of the token file and the TLS certificate that both use and SIGHUP repeats.

mod pauses;
mod serving;
mod shutdown;
mod summary;
mod wiring;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

pub use crate::auth::new_token_line;
use crate::auth::{Authenticator, TokenFileError};
use crate::config::Config;
use crate::metrics::{Metrics, MetricsError};
use crate::queue::{OpenError, QueueHandle, QueueLost, QueueThread, StorageError};
use crate::store::{JobStore, StoreError, StorePlan};
use crate::tls::{CertificateReloader, TlsError};
use shutdown::{Signals, Stop};

/// Why the daemon could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("cannot start the queue thread: {0}")]
    QueueThread(std::io::Error),
    #[error(transparent)]
    QueueOpen(#[from] OpenError),
    #[error("{0}; jobd stopped, and its next start recovers the queue from what is on disk")]
    QueueLost(StorageError),
    #[error("cannot read or pause the named queues at start: {0}")]
    QueuePauses(StorageError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] MetricsError),
    #[error("cannot build the kinds: {0}")]
    Kinds(#[from] crate::kinds::BuildError),
    #[error(transparent)]
    Tokens(#[from] TokenFileError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// `check-config --probe`: the settings hold, but the probe of a service they name
    /// failed (it could not be reached, or refused: a missing bucket, a wrong key).
    #[error("the settings are valid, but the probe of {service} failed: {reason}")]
    Unreachable { service: String, reason: String },
}

/// Checks what `serve` would build from `config` without starting anything or writing
/// anything: the token file, the certificate, the store URL (and, for a `file://` store,
/// whether its root exists or could be created). With `probe`, a remote store is also
/// asked once whether it answers.
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
    // A check writes nothing: it says what `serve` would create, and whether it could.
    match JobStore::check_url(&config.store_url, &config.store_options())? {
        StorePlan::Ready => {}
        StorePlan::WouldCreate(root) => {
            eprintln!("jobd: the store root {} does not exist; serve creates it", root.display())
        }
        StorePlan::NotWritable { root, reason } => eprintln!(
            "jobd: warning: serve could not create or write the store root {}: {reason} (the service may run as \
             another user: under systemd, DynamicUser= and StateDirectory= decide)",
            root.display()
        ),
    }
    match (config.queue, &config.postgres_url) {
        (crate::queue::QueueKind::Postgres, Some(url)) => {
            let shown = crate::queue::redacted_url(url);
            if probe {
                let settings = config.queue_settings(crate::queue::NodeId::generate());
                let cluster = settings.cluster.as_ref().ok_or(crate::queue::OpenError::NoPostgresUrl)?;
                let version = crate::queue::postgres::PostgresBackend::probe(cluster).map_err(|error| {
                    ServeError::Unreachable { service: format!("PostgreSQL at {shown}"), reason: error.to_string() }
                })?;
                match version {
                    Some(version) => eprintln!("jobd: PostgreSQL {shown} answers; jobd schema version {version}"),
                    None => {
                        eprintln!("jobd: PostgreSQL {shown} answers; it has no jobd tables yet, serve creates them")
                    }
                }
            } else {
                eprintln!("jobd: the queue is in PostgreSQL at {shown} (--probe connects to it)");
            }
        }
        _ if config.queue_path().exists() => eprintln!(
            "jobd: the queue {} exists; serve opens it and recovers what it holds",
            config.queue_path().display()
        ),
        _ => eprintln!("jobd: the queue {} does not exist; serve creates it", config.queue_path().display()),
    }
    // A probe of a `file://` store is the check above; a remote one is asked once.
    if probe && !config.store_url.starts_with("file:") {
        let store = JobStore::from_url(&config.store_url, &config.store_options())?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(ServeError::Http)?;
        runtime.block_on(store.probe()).map_err(|error| ServeError::Unreachable {
            service: format!("the store {}", store.url()),
            reason: error.to_string(),
        })?;
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

/// Says at start where the settings came from, and what each kind's own table of the
/// file configured (the webhook destinations by name), so that a file that was not read,
/// or a table that was misplaced, shows in the first lines of the log.
fn log_configuration(config: &Config) {
    match &config.config_file {
        Some(path) => tracing::info!(config_file = %path.display(), "configuration file read"),
        None => tracing::info!(
            searched = crate::config::CONFIG_SEARCH.join(", "),
            "no configuration file found; built-in defaults, flags and JOBD_* variables apply"
        ),
    }
    for (table, value) in &config.kind_tables {
        let names: Vec<&str> =
            value.as_table().map(|entries| entries.keys().map(String::as_str).collect()).unwrap_or_default();
        tracing::info!(table, entries = names.join(", "), "configured [{table}]");
    }
}

/// Runs the daemon until a shutdown signal, then drains and returns.
pub fn serve(config: Config) -> Result<(), ServeError> {
    // The queue opens, and recovers, before anything listens: jobd is ready only after
    // recovery.
    let metrics = Arc::new(Metrics::new(&crate::kinds::registered_names(config.test_kinds))?);
    log_configuration(&config);
    let node = crate::queue::NodeId::generate();
    // Only a shared queue has other nodes to tell this one's claims apart from.
    if config.queue != crate::queue::QueueKind::Sqlite {
        tracing::info!(node = %node, node_name = config.node_name, "this process holds the jobs it claims as this node");
    }
    let backend = crate::queue::open(&config.queue_settings(node), metrics.cluster.clone())?;
    let cancel_hold = config.test_hooks.cancel_hold();
    if let Some(hold) = cancel_hold {
        tracing::warn!(
            ms = hold.as_millis(),
            "test_cancel_hold_ms: the queue thread waits this long whenever a cancel arrives"
        );
    }
    let (queue, queue_lost) =
        QueueThread::spawn(backend, node, config.group_commit, metrics.commit_metrics(), cancel_hold)
            .map_err(ServeError::QueueThread)?;
    let bodies = wiring::body_runtime(&config)?;
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

/// The daemon on the actix System: wires the parts, serves, and stops in order at the
/// first SIGTERM or SIGINT, or at once, with an error, when the queue is lost.
async fn run(
    config: Config,
    queue: QueueHandle,
    mut queue_lost: QueueLost,
    bodies: tokio::runtime::Handle,
    metrics: Arc<Metrics>,
) -> Result<(), ServeError> {
    // Signal streams are created first, so that a signal during start-up is not lost.
    let mut signals = Signals::install()?;
    let wiring = wiring::wire(&config, queue, bodies, metrics).await?;
    let listeners = serving::listen(&config, &wiring)?;
    wiring.lifecycle.started.store(true, Ordering::Release);
    tracing::info!(
        addr = %listeners.addr,
        tls = wiring.certificate.is_some(),
        authentication = wiring.auth.enabled(),
        store = wiring.store.url(),
        max_workers = config.max_workers,
        max_queue = config.max_queue,
        test_kinds = config.test_kinds,
        "jobd listening"
    );
    // Ready only now: the queue is open and recovered, and the listener is bound.
    if let Some(notifier) = &wiring.notifier {
        notifier.ready();
    }

    match shutdown::wait_for_stop(&mut signals, &mut queue_lost, &wiring).await {
        Stop::Signal(signal_name) => {
            shutdown::stop_in_order(&config, signal_name, signals, &wiring, listeners).await;
            Ok(())
        }
        Stop::QueueLost(error) => {
            let notifier = wiring.notifier.as_deref();
            Err(shutdown::stop_after_queue_lost(error, &wiring.lifecycle, notifier, listeners.api, listeners.metrics)
                .await)
        }
    }
}
