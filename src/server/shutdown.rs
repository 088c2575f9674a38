//! The daemon's end: the signals it waits for, the ordered stop after SIGTERM or SIGINT
//! (drain, upload aborts, listeners), and the stop without a drain when the queue is lost.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};

use super::serving::{Listeners, RunningServer};
use super::wiring::Wiring;
use super::{ServeError, reload};
use crate::actors::dispatcher::Drain;
use crate::config::Config;
use crate::http::Lifecycle;
use crate::queue::{QueueHandle, QueueLost, StorageError};

/// How long a lost queue's stop waits for the requests in flight to be answered.
const IN_FLIGHT_GRACE: Duration = Duration::from_secs(2);
/// How long shutdown waits for the aborts of abandoned multipart uploads, after the drain.
/// An abort is one request; with `shutdown_timeout_secs` (30 s) and the runtime's own second
/// this stays inside the unit's `TimeoutStopSec=` (45 s).
const UPLOAD_ABORT_WAIT: Duration = Duration::from_secs(5);

/// The signal streams jobd watches: SIGTERM and SIGINT stop it, SIGHUP reloads.
pub(super) struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
}

impl Signals {
    /// Installs the handlers; from then on, a signal is not lost even before it is awaited.
    pub(super) fn install() -> Result<Self, ServeError> {
        let terminate = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
        let interrupt = signal(SignalKind::interrupt()).map_err(ServeError::Signals)?;
        // SIGHUP's default action would kill the process; an operator used to "reload" must
        // not lose the daemon to it.
        let hangup = signal(SignalKind::hangup()).map_err(ServeError::Signals)?;
        Ok(Self { terminate, interrupt, hangup })
    }
}

/// Why jobd stops.
pub(super) enum Stop {
    /// SIGTERM or SIGINT, by name.
    Signal(&'static str),
    /// The queue is lost (see [`QueueLost`]).
    QueueLost(StorageError),
}

/// Waits until jobd must stop, reloading on every SIGHUP meanwhile.
pub(super) async fn wait_for_stop(signals: &mut Signals, queue_lost: &mut QueueLost, wiring: &Wiring) -> Stop {
    loop {
        tokio::select! {
            _ = signals.terminate.recv() => return Stop::Signal("SIGTERM"),
            _ = signals.interrupt.recv() => return Stop::Signal("SIGINT"),
            _ = signals.hangup.recv() => reload(&wiring.auth, wiring.certificate.as_deref(), &wiring.metrics),
            lost = &mut *queue_lost => {
                return Stop::QueueLost(lost.unwrap_or_else(|_| StorageError::new("the queue thread stopped")));
            }
        }
    }
}

/// The ordered stop after SIGTERM or SIGINT: submissions get 503, running jobs drain (up
/// to `shutdown_timeout`), abandoned uploads are aborted, the background tasks end, the
/// listeners stop, and then the actix System.
pub(super) async fn stop_in_order(
    config: &Config,
    signal_name: &'static str,
    signals: Signals,
    wiring: &Wiring,
    listeners: Listeners,
) {
    wiring.lifecycle.shutting_down.store(true, Ordering::Release);
    if let Some(notifier) = &wiring.notifier {
        notifier.stopping();
    }
    tracing::info!(
        signal = signal_name,
        timeout_secs = config.shutdown_timeout.as_secs(),
        "shutting down: draining running jobs"
    );
    // A second signal means the operator will not wait; exit at once.
    let Signals { mut terminate, mut interrupt, .. } = signals;
    actix::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {},
            _ = interrupt.recv() => {},
        }
        tracing::warn!("second signal: exiting without waiting for running jobs");
        std::process::exit(1);
    });

    match tokio::time::timeout(config.shutdown_timeout, wiring.dispatcher.send(Drain)).await {
        Ok(Ok(report)) => {
            tracing::info!(unstarted_in_window = report.unstarted_in_window, "all running jobs finished");
        }
        Ok(Err(error)) => tracing::error!(%error, "the Dispatcher stopped before the drain finished"),
        Err(_) => tracing::warn!("shutdown_timeout elapsed with jobs still running; they are abandoned"),
    }
    // Abandoned uploads are aborted now, while the bodies runtime can still send the
    // aborts; S3 would otherwise keep (and bill) their parts.
    let still_open = wiring.store.abandon_uploads(UPLOAD_ABORT_WAIT).await;
    if still_open > 0 {
        tracing::warn!(
            still_open,
            "multipart uploads not aborted in time; their parts stay until a bucket lifecycle rule removes them"
        );
    }
    wiring.probe_task.abort();
    wiring.purge_task.abort();
    wiring.summary_task.abort();
    wiring.history_task.abort();
    wiring.pauses_task.abort();
    if let Some(queued) = queue_status_for_log(&wiring.queue).await
        && queued > 0
    {
        tracing::info!(queued, "queued jobs stay in the queue for the next start");
    }
    let Listeners { api: (server_handle, server_task), metrics: metrics_server, .. } = listeners;
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
}

/// Stops when the queue is lost (see [`QueueLost`]): no drain, since no outcome could be
/// recorded. The listener answers the requests in flight (every queue call fails at once
/// now, and each answer closes its connection) and closes. Jobs left running go back to
/// the queue at the next start, which systemd makes (jobd exits with a failure).
pub(super) async fn stop_after_queue_lost(
    error: StorageError,
    lifecycle: &Lifecycle,
    notifier: Option<&crate::systemd::Notifier>,
    (server, server_task): RunningServer,
    metrics_server: Option<RunningServer>,
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

async fn queue_status_for_log(queue: &QueueHandle) -> Option<usize> {
    queue.status().await.ok().map(|status| status.depth.queued)
}
