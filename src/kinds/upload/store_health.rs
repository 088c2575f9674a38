//! The object store's health, which the upload kind owns: the probe loop that decides
//! whether the store is up, the verdict that `/readyz`, the `jobd_store_up` gauge and the
//! kind's gate read, and the re-probes with backoff while it is down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::kinds::{GateKey, GateSignal};
use crate::metrics::Metrics;
use crate::store::{JobStore, StoreError};

/// How often the store is probed while it is up.
const PROBE_INTERVAL_UP: Duration = Duration::from_secs(15);
/// The first re-probe after the store was found down; each next one waits twice as long,
/// up to [`PROBE_INTERVAL_DOWN_MAX`]. A short first wait ends a blip quickly; the cap keeps
/// a job's wait after a long outage at most this much longer than the outage.
const PROBE_INTERVAL_DOWN_FIRST: Duration = Duration::from_secs(1);
const PROBE_INTERVAL_DOWN_MAX: Duration = Duration::from_secs(10);

/// What the latest probe found. Shared by the probe loop (which writes it), `/readyz` and
/// the metrics (which read it) and the upload kind, whose gate is closed while the store
/// cannot be reached, and which asks for a probe when an upload finds it unreachable.
#[derive(Debug)]
pub struct StoreHealth {
    /// The latest probe succeeded.
    up: AtomicBool,
    /// The latest probe failed because the store could not be reached (see
    /// [`StoreError::is_unreachable`]): uploads are held. A store that answers with a
    /// refusal (a missing bucket, bad credentials) is not ready, but its jobs run and fail
    /// with the store's own answer, which is permanent.
    unreachable: AtomicBool,
    /// Why the latest probe failed: logged, and shown by `/readyz` only to callers that
    /// may read jobs, since it can name hosts and buckets.
    last_error: std::sync::Mutex<Option<String>>,
    /// Wakes the probe loop for a probe now.
    probe_now: Notify,
    metrics: Arc<Metrics>,
}

impl StoreHealth {
    /// Probes the store once, so that the daemon starts knowing whether it is up.
    pub async fn probe_at_start(store: &JobStore, metrics: Arc<Metrics>) -> Arc<StoreHealth> {
        let health = Arc::new(StoreHealth {
            up: AtomicBool::new(false),
            unreachable: AtomicBool::new(false),
            last_error: std::sync::Mutex::new(None),
            probe_now: Notify::new(),
            metrics,
        });
        if !health.probe(store).await {
            tracing::warn!(
                store = store.url(),
                error = health.last_error().as_deref(),
                "object store not reachable; uploads wait until it is"
            );
        }
        health
    }

    /// Whether the latest probe succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Whether the latest probe could reach the store at all; while it cannot, uploads
    /// wait instead of spending their attempts.
    pub fn is_reachable(&self) -> bool {
        !self.unreachable.load(Ordering::Acquire)
    }

    /// Why the latest probe failed, if it did.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|error| error.clone())
    }

    /// An upload found the store unreachable: the gate closes at once, rather than let
    /// each waiting upload spend an attempt until the next scheduled probe, and the probe
    /// asked for now decides whether it opens again.
    pub fn found_unreachable(&self, error: &str) {
        if !self.unreachable.swap(true, Ordering::AcqRel) {
            tracing::warn!(%error, "an upload found the store unreachable: holding uploads until a probe answers");
        }
        self.probe_now.notify_one();
    }

    /// A store health for tests, reachable or not, that no probe loop updates.
    #[cfg(test)]
    pub fn for_test(reachable: bool) -> Arc<StoreHealth> {
        let metrics = Arc::new(Metrics::new(&["noop"]).expect("metrics"));
        Arc::new(StoreHealth {
            up: AtomicBool::new(reachable),
            unreachable: AtomicBool::new(!reachable),
            last_error: std::sync::Mutex::new(None),
            probe_now: Notify::new(),
            metrics,
        })
    }

    /// Probes and records the verdict; returns whether the probe succeeded.
    async fn probe(&self, store: &JobStore) -> bool {
        let result = store.probe().await;
        let up = result.is_ok();
        let unreachable = result.as_ref().is_err_and(StoreError::is_unreachable);
        self.unreachable.store(unreachable, Ordering::Release);
        self.up.store(up, Ordering::Release);
        self.metrics.store_up.set(i64::from(up));
        if let Ok(mut last_error) = self.last_error.lock() {
            *last_error = result.err().map(|error| error.to_string());
        }
        up
    }

    /// Probes forever: every [`PROBE_INTERVAL_UP`] while the store is reachable or when
    /// asked, and with backoff while it is not. After a probe that found the store
    /// reachable when it had not been, or that an upload asked for, it signals that the
    /// store's gate ([`super::STORE_GATE`]) opened, so that the uploads waiting at it go on.
    /// The signals are bounded by the probes, one at a time.
    pub async fn run(self: Arc<Self>, store: Arc<JobStore>, opened: GateSignal) {
        let gate = GateKey::from(super::STORE_GATE);
        let mut down_wait = PROBE_INTERVAL_DOWN_FIRST;
        loop {
            let was_up = self.is_up();
            let was_reachable = self.is_reachable();
            let asked = if was_reachable {
                tokio::select! {
                    () = tokio::time::sleep(PROBE_INTERVAL_UP) => false,
                    () = self.probe_now.notified() => true,
                }
            } else {
                tokio::time::sleep(down_wait).await;
                down_wait = (down_wait * 2).min(PROBE_INTERVAL_DOWN_MAX);
                false
            };
            let up = self.probe(&store).await;
            if self.is_reachable() {
                down_wait = PROBE_INTERVAL_DOWN_FIRST;
            }
            match (was_up, up) {
                (true, false) => tracing::error!(
                    store = store.url(),
                    error = self.last_error().as_deref(),
                    reachable = self.is_reachable(),
                    "object store probe failed; while it cannot be reached, uploads are held"
                ),
                (false, true) => tracing::info!(store = store.url(), "object store reachable again: uploads resume"),
                (false, false) => tracing::warn!(
                    store = store.url(),
                    error = self.last_error().as_deref(),
                    reachable = self.is_reachable(),
                    "object store probe failed again"
                ),
                (true, true) => {}
            }
            if self.is_reachable() && (asked || !was_reachable) {
                opened.signal(gate.clone());
            }
        }
    }
}
