//! The HTTP listeners: the API server with its App-level middleware and limits, and the
//! optional listener that serves only `/metrics`.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use tokio::task::JoinHandle;

use super::ServeError;
use super::wiring::Wiring;
use crate::config::Config;
use crate::http;
use crate::metrics::Metrics;
use crate::queue::QueueHandle;
use crate::stats::Stats;
use crate::store::JobStore;

/// A running HTTP server: the handle that stops it, and the task that serves until then.
pub(super) type RunningServer = (ServerHandle, JoinHandle<std::io::Result<()>>);

/// The listeners [`listen`] started, which shutdown stops.
pub(super) struct Listeners {
    /// The address the API listener is bound to.
    pub(super) addr: SocketAddr,
    /// The API server.
    pub(super) api: RunningServer,
    /// The `/metrics` server, when `metrics_listen` gives metrics a listener of their own.
    pub(super) metrics: Option<RunningServer>,
}

/// Binds the API listener and starts serving on it, then the metrics listener if one is
/// configured.
pub(super) fn listen(config: &Config, wiring: &Wiring) -> Result<Listeners, ServeError> {
    let listener =
        TcpListener::bind(config.listen).map_err(|source| ServeError::Listen { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Listen { addr: config.listen, source })?;
    let host_check =
        http::HostCheck { unauthenticated_listen_ip: (!wiring.auth.enabled()).then(|| config.listen.ip()) };
    let max_header_bytes = config.max_header_bytes;
    let state = wiring.state.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(http::HeaderLimit(max_header_bytes))
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
    let server = match &wiring.certificate {
        Some(certificate) => server.listen_rustls_0_23(listener, certificate.server_config()?),
        None => server.listen(listener),
    }
    .map_err(ServeError::Http)?
    .run();
    let server_handle = server.handle();
    let server_task = actix::spawn(server);
    let metrics_server = match config.metrics_listen {
        Some(metrics_addr) => Some(serve_metrics(
            metrics_addr,
            wiring.metrics.clone(),
            wiring.queue.clone(),
            wiring.stats.clone(),
            wiring.store.clone(),
        )?),
        None => None,
    };
    Ok(Listeners { addr, api: (server_handle, server_task), metrics: metrics_server })
}

/// Starts the listener that serves only `/metrics`, on one worker thread.
fn serve_metrics(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    queue: QueueHandle,
    stats: Arc<Stats>,
    store: Arc<JobStore>,
) -> Result<RunningServer, ServeError> {
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
