//! The HTTP API: routes, request reading and validation, and the answers, all in JSON.
//! Handlers never wait for room in the queue; a full queue is a 429. This module owns the
//! state every handler shares ([`AppState`], [`Lifecycle`]) and the answers and limits more
//! than one group of handlers uses; the route table is in `routes`, the middleware in
//! `middleware`, and the handlers in `submit`, `jobs` and `ops`.

mod console;
mod jobs;
mod middleware;
pub mod openapi;
mod ops;
pub mod problem;
mod queues;
mod routes;
mod submit;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::time::Duration;

use actix::Addr;
use serde::Serialize;

use crate::actors::{Dispatcher, Ingest};
use crate::auth::Authenticator;
use crate::job::{JobId, JobState};
use crate::metrics::Metrics;
use crate::queue::QueueHandle;
use crate::stats::Stats;
use crate::store::JobStore;
use crate::submission::ParseOptions;

// What the rest of the crate (the server's wiring, the OpenAPI test) uses, re-exported so
// that callers name `crate::http::...` whichever file of this module holds it.
pub use middleware::{HeaderLimit, HostCheck, check_host, close_when_stopping, limit_headers};
pub use ops::render_metrics;
pub use problem::Problem;
pub use routes::configure;

/// How long `/readyz` and `/v1/stats` wait for the queue thread before calling it wedged.
const QUEUE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// The `Retry-After` of a 429, in seconds. Jobs finish continuously, so room usually
/// appears within a second; clients that back off further are welcome to.
const QUEUE_FULL_RETRY_AFTER_SECS: u64 = 1;

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

/// What every handler shares.
pub struct AppState {
    pub ingest: Addr<Ingest>,
    pub dispatcher: Addr<Dispatcher>,
    pub queue: QueueHandle,
    pub stats: Arc<Stats>,
    pub lifecycle: Arc<Lifecycle>,
    pub parse_options: ParseOptions,
    /// The kinds this daemon runs: what submissions may name.
    pub kinds: Arc<crate::kinds::Kinds>,
    /// The queues this daemon declares: what submissions may name.
    pub queues: Arc<crate::queues::Queues>,
    /// Wakes the watch of paused queues after a pause or resume through this node, so that
    /// its Dispatcher holds or starts the queue's jobs at once (`server/pauses.rs`).
    pub pauses_changed: Arc<tokio::sync::Notify>,
    pub max_body_bytes: usize,
    pub metrics: Arc<Metrics>,
    pub store: Arc<JobStore>,
    /// Whether the store answered its latest probe, and why not.
    pub store_health: Arc<crate::kinds::upload::StoreHealth>,
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

/// One job of an accepted request.
#[derive(Serialize, utoipa::ToSchema)]
struct AcceptedJob {
    id: JobId,
    state: JobState,
}
