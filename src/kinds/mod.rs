//! Job kinds: the [`Kind`] trait each kind implements, and the registry ([`Kinds`]) that
//! maps a job's kind name to its implementation. What a kind's arguments and body mean is
//! known here and nowhere else: the queue stores them as an opaque envelope
//! ([`crate::job::Job`]), and the HTTP layer, the Dispatcher and the workers reach a kind
//! only through this trait.
//!
//! **Architecture Invariant:** a new kind is a module under `src/kinds/` plus one line in
//! [`REGISTRY`]; no other file names it or its fields (`tests/it/tidy.rs` checks the fields).

mod fields;
pub mod noop;
pub mod testing;
pub mod upload;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::value::RawValue;

pub(crate) use fields::strip_position;
pub use fields::{FieldProblem, RequestFields, field_problem};

use crate::auth::Principal;
use crate::job::{Body, Job, JobResult, JobSpec, Outcome};
use crate::store::{JobStore, StoreError};

/// What kinds are built with: the daemon's settings they read, and the shared state a kind
/// owns but the daemon starts (the store's health, whose probe loop the server runs).
#[derive(Debug, Clone, Default)]
pub struct KindSettings {
    /// Whether the test kinds (`sleep`, `fail`, `panic`) are registered.
    pub test_kinds: bool,
    /// Whether the store records object metadata (a `file://` store cannot).
    pub metadata_supported: bool,
    /// The first segments of default upload keys, which a confined token must be allowed.
    pub default_key_prefix: String,
    /// Each kind's own table of the configuration file, by its key (`webhooks` for the
    /// webhook kind's `[webhooks.<name>]`), as the file gives it: only the kind reads it
    /// ([`SettingsTable`]).
    pub tables: std::collections::BTreeMap<String, toml::Value>,
    /// The object store's health, which gates uploads while the store cannot be reached;
    /// `None` (tests) gates nothing.
    pub store_health: Option<Arc<upload::StoreHealth>>,
}

impl KindSettings {
    /// The daemon's defaults: no test kinds, a store that records metadata, `payloads/`,
    /// no webhook destinations.
    pub fn defaults() -> Self {
        KindSettings { metadata_supported: true, default_key_prefix: "payloads".to_owned(), ..Default::default() }
    }
}

/// What a running job may use, shared by all workers.
#[derive(Debug, Clone)]
pub struct RunContext {
    pub store: Arc<JobStore>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Why a caller may not submit a job: the field at fault, what is wrong, and which of the
/// token's confinements refused it: the option of a [`TokenLimit`]
/// (`allowed_key_prefixes`, `allowed_destinations`), which names the problem and the
/// reasons the metrics count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub field: String,
    pub message: String,
    pub confinement: &'static str,
}

/// Which jobs share a limit besides the worker pool: a webhook destination's, or the
/// object store's.
pub type GateKey = Arc<str>;

/// Tells whoever holds jobs at gates that a gate opened by itself, not through a permit
/// given back: the store's, when a probe reaches it again. The server hands it to the
/// kinds' own loops and carries it to the Dispatcher, so that no kind knows the actors.
#[derive(Clone)]
pub struct GateSignal(Arc<dyn Fn(GateKey) + Send + Sync>);

impl GateSignal {
    pub fn new(signal: impl Fn(GateKey) + Send + Sync + 'static) -> Self {
        GateSignal(Arc::new(signal))
    }

    /// Says that `gate` opened: every job waiting at it may try again.
    pub fn signal(&self, gate: GateKey) {
        (self.0)(gate);
    }
}

impl std::fmt::Debug for GateSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GateSignal").finish_non_exhaustive()
    }
}

/// Held while a job's attempt runs, and dropped when it ends, however it ends: gives back
/// what [`Kind::admit`] took (a slot of a destination's in-flight limit).
pub struct Permit {
    gate: GateKey,
    _release: Box<dyn Send + Sync>,
}

impl Permit {
    /// A permit of `gate` that runs `release`'s drop when the attempt ends.
    pub fn new(gate: GateKey, release: Box<dyn Send + Sync>) -> Self {
        Permit { gate, _release: release }
    }

    /// The gate the permit belongs to: when the permit is dropped, a job waiting at that
    /// gate may start.
    pub fn gate(&self) -> &GateKey {
        &self.gate
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit").field("gate", &self.gate).finish_non_exhaustive()
    }
}

/// Whether a job may start now, as far as its kind is concerned.
#[derive(Debug)]
pub enum Admission {
    /// It may; the permit, if any, is held until its attempt ends.
    Now(Option<Permit>),
    /// Not yet: it waits at this gate (a destination at its in-flight limit), without a
    /// worker and without using an attempt.
    Later(GateKey),
    /// Not for a while: the gate is closed (a destination whose circuit is open), for
    /// every node alike. Its jobs wait as `Later`'s do, but a node on a shared queue does
    /// not count them against its claims: another node could not run them either, and
    /// counting them would stop every other kind behind them.
    Closed(GateKey),
}

/// Where and when one attempt of a job runs: one decision, made by the job's kind
/// ([`Kind::placement`]) once per attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub runs_on: RunsOn,
    pub starts: Starts,
}

impl Placement {
    /// On the bodies runtime, once its start is recorded: what a kind gets unless it says
    /// otherwise.
    pub const GUARDED: Placement = Placement { runs_on: RunsOn::Bodies, starts: Starts::WhenRecorded };
}

/// A job's kind, resolved once per attempt where the Dispatcher takes the job from its
/// window, and carried with the job to its worker and its body: the kind's place in the
/// registry, its name as metrics label it, and where and when the attempt runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedKind {
    /// The kind's index in [`Kinds`]; `None` for a kind this build lacks.
    slot: Option<usize>,
    /// The kind's name, or "unknown" for a kind this build lacks, so that labels stay a
    /// bounded set.
    pub label: &'static str,
    /// [`Kind::placement`] for this attempt; [`Placement::GUARDED`] for a kind this build
    /// lacks, whose attempt fails at once.
    pub placement: Placement,
}

/// Where an attempt runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunsOn {
    /// On the worker actor's own thread, to its outcome, with no body task
    /// ([`Kind::run_on_worker_thread`]): only for a body that cannot block, panic or have
    /// an effect (`noop`), or a test job that blocks or panics the worker as a bug in jobd
    /// would.
    WorkerThread,
    /// As a task beside the actors, on the worker's arbiter: only for a body that never
    /// blocks its thread and spends little CPU between awaits (a small webhook's HTTP
    /// request). The hop to the bodies runtime and back is two cross-thread wakeups, which
    /// on two busy cores added about 120 µs to a delivery of about 160 µs. The worker
    /// still contains its panics and its timeout.
    BesideActors,
    /// On the bodies runtime, where a body that blocks its thread cannot stall the actors.
    Bodies,
}

/// When an attempt may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Starts {
    /// At once; its start is recorded in the next flush. For a body that cannot take the
    /// process down (one on the worker's thread that cannot panic, a webhook's HTTP
    /// request): should the process die first, it runs again.
    AtOnce,
    /// Once its start is recorded, so that its attempt counts even if it takes the
    /// process down (a crash, an abort in a library, memory): without the wait, such a job
    /// could crash-loop the daemon with attempts left.
    WhenRecorded,
}

/// A request's job, validated by its kind: the arguments the queue stores as JSON, and the
/// body it stores as bytes.
#[derive(Debug, Default)]
pub struct Validated {
    pub args: Option<Box<RawValue>>,
    pub body: Option<Body>,
}

/// Why a job body failed. The error decides whether another attempt may help.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("upload failed: {0}")]
    Store(#[from] StoreError),
    #[error("{message}")]
    Failed { message: String, retryable: bool },
    /// A failure the other side asked to be retried no sooner than `retry_after` (an HTTP
    /// `Retry-After`).
    #[error("{message}")]
    Deferred { message: String, retry_after: Duration },
}

impl JobError {
    /// Whether another attempt may succeed; a permanent error makes the job dead at once.
    pub fn is_retryable(&self) -> bool {
        match self {
            JobError::Store(error) => error.is_retryable(),
            JobError::Failed { retryable, .. } => *retryable,
            JobError::Deferred { .. } => true,
        }
    }
}

/// One kind of job: how a request's job is validated and authorised, and how it runs.
pub trait Kind: Send + Sync + std::fmt::Debug + 'static {
    /// The name requests, records, logs and metrics labels use.
    fn name(&self) -> &'static str;

    /// Validates a request's job into its arguments and body. `fields` holds the job's
    /// fields other than the options every job has (`kind`, `idempotency_key`,
    /// `max_attempts`, `timeout_ms`, `run_at`, `delay_ms`); the kind takes the ones it
    /// knows, and any it leaves are refused as unknown.
    fn validate(&self, fields: &mut RequestFields<'_>) -> Result<Validated, FieldProblem>;

    /// Whether `caller` may submit this job. Only kinds with confinable arguments (an
    /// upload's key, a webhook's destination) refuse anything.
    fn authorize(&self, _job: &JobSpec, _caller: &Principal) -> Result<(), Refusal> {
        Ok(())
    }

    /// Whether the job may start now. A kind whose jobs share a limit besides the worker
    /// pool (a webhook destination's in-flight limit and circuit, the object store while it
    /// cannot be reached) says `Later` or `Closed` while it is reached; the Dispatcher then
    /// sets the job aside without starting it.
    fn admit(&self, _job: &Job) -> Admission {
        Admission::Now(None)
    }

    /// Where a job writes or sends, for its record (an upload's object key, a webhook's
    /// destination): what an operator looking at a dead job needs to know first.
    fn target(&self, _record: &crate::job::JobRecord) -> Option<String> {
        None
    }

    /// What `/readyz` shows of the kind's own state (a webhook destination's circuit), if
    /// it has any.
    fn readiness(&self) -> Option<serde_json::Value> {
        None
    }

    /// Runs one attempt. Panics are not caught here: the worker contains them, through
    /// the join handle of the body's task or by catching them beside the actors.
    fn run(&self, job: Job, context: &RunContext) -> BoxFuture<'static, Result<JobResult, JobError>>;

    /// Where and when an attempt of `job` runs ([`Placement`]).
    fn placement(&self, _job: &Job) -> Placement {
        Placement::GUARDED
    }

    /// How long one attempt may take when neither the job nor `job_timeouts_ms` says.
    fn default_timeout(&self) -> Option<Duration> {
        None
    }

    /// Runs an attempt placed on the worker's own thread ([`RunsOn::WorkerThread`]) to its
    /// outcome. A kind that places no job there never has this called.
    fn run_on_worker_thread(&self, _job: &Job) -> Outcome {
        Outcome::Failed { error: format!("kind {} runs no job on the worker's thread", self.name()), retryable: false }
    }
}

/// Builds a kind from its settings, registering its series in the registry `/metrics`
/// serves.
pub type BuildKind = fn(&KindSettings, &prometheus::Registry) -> Result<Arc<dyn Kind>, BuildError>;

/// Why a kind could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Its metric series clash with registered ones: a bug.
    #[error("cannot register a kind's metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Its table of the configuration file does not hold (the daemon checks it at start,
    /// through [`SettingsTable::check`], before any kind is built).
    #[error("{0}")]
    Settings(String),
}

/// A kind's own table of the configuration file. The configuration takes the table out
/// of the file before it reads the rest, checks it with `check` as jobd starts, prints it
/// with `describe`, and hands it to the kind's `build` in [`KindSettings::tables`]: no
/// other file knows its fields.
pub struct SettingsTable {
    /// The table's key at the top of the file (`webhooks`).
    pub key: &'static str,
    /// The first problem of the table, saying where it is.
    pub check: fn(&toml::Value) -> Result<(), String>,
    /// The table as `check-config` prints it, its secrets never included.
    pub describe: fn(&toml::Value) -> toml::Value,
}

/// The tables of the configuration file that kinds read, one per kind that has one.
pub fn settings_tables() -> impl Iterator<Item = &'static SettingsTable> {
    REGISTRY.iter().filter_map(|registration| registration.settings.as_ref())
}

/// A confinement a kind reads from a token-file line (`allowed_destinations=billing,crm`):
/// the option's name, what each of its comma-separated items must be, and how a job it
/// refuses is answered and counted. The token file keeps the items per option
/// ([`Principal::limit`]); only the kind's [`Kind::authorize`] gives them a meaning.
pub struct TokenLimit {
    /// The option as the token file spells it.
    pub option: &'static str,
    /// One item of the option as it is kept, or why it cannot be.
    pub parse_item: fn(&str) -> Result<String, String>,
    /// The problem type of a refusal (`/problems/<slug>`), answered with 403.
    pub problem_slug: &'static str,
    pub problem_title: &'static str,
    /// The `reason` label of `jobd_submissions_rejected_total` for a refusal.
    pub rejection_reason: &'static str,
    /// The `reason` label of `jobd_auth_failures_total` for a refusal.
    pub auth_failure_reason: &'static str,
}

/// The token-file options kinds read, one per kind that has one.
pub fn token_limits() -> impl Iterator<Item = &'static TokenLimit> {
    REGISTRY.iter().filter_map(|registration| registration.token_limit.as_ref())
}

/// The token limit a refusal names by its option.
pub fn token_limit(option: &str) -> Option<&'static TokenLimit> {
    token_limits().find(|limit| limit.option == option)
}

/// How the registry builds a kind.
pub struct Registration {
    pub name: &'static str,
    /// Registered only with `test_kinds`.
    pub test_only: bool,
    /// Builds the kind from its settings, registering its own metric series, if it has
    /// any, in the registry `/metrics` serves.
    pub build: BuildKind,
    /// The kind's own request fields, for the API description.
    pub request_schema: fn() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
    /// The kind's own table of the configuration file, if it has one.
    pub settings: Option<SettingsTable>,
    /// The kind's own option of the token file, if it has one.
    pub token_limit: Option<TokenLimit>,
}

/// Every kind jobd has. Adding a kind is its module and one line here.
pub const REGISTRY: &[Registration] =
    &[upload::REGISTRATION, noop::REGISTRATION, webhook::REGISTRATION, testing::SLEEP, testing::FAIL, testing::PANIC];

/// Every kind's name, registered or not: what `job_timeouts_ms` may name.
pub fn all_names() -> impl Iterator<Item = &'static str> {
    REGISTRY.iter().map(|registration| registration.name)
}

/// The names of the kinds a daemon runs: every kind, and the test kinds only with
/// `test_kinds`. What the metrics' `kind` labels are made of.
pub fn registered_names(test_kinds: bool) -> Vec<&'static str> {
    REGISTRY
        .iter()
        .filter(|registration| test_kinds || !registration.test_only)
        .map(|registration| registration.name)
        .collect()
}

/// The kinds this daemon runs, by name.
#[derive(Debug, Clone)]
pub struct Kinds {
    kinds: Vec<Arc<dyn Kind>>,
    /// Each registered kind's own request fields, to tell a field of another kind from
    /// one no kind has.
    fields: Vec<(&'static str, Vec<String>)>,
}

impl Kinds {
    /// The kinds `settings` enable: every kind, and the test kinds only with `test_kinds`.
    /// Each registers its own metric series in `registry`; an error is a clash of names,
    /// a bug.
    pub fn new(settings: &KindSettings, registry: &prometheus::Registry) -> Result<Self, BuildError> {
        let registered: Vec<&Registration> =
            REGISTRY.iter().filter(|registration| settings.test_kinds || !registration.test_only).collect();
        let kinds =
            registered.iter().map(|registration| (registration.build)(settings, registry)).collect::<Result<_, _>>()?;
        let fields = registered.iter().map(|registration| (registration.name, request_fields(registration))).collect();
        Ok(Kinds { kinds, fields })
    }

    /// The kinds `settings` enable, their series in a registry of their own that nothing
    /// serves: for tests and tools that build kinds without a daemon.
    pub fn unserved(settings: &KindSettings) -> Result<Self, BuildError> {
        Self::new(settings, &prometheus::Registry::new())
    }

    /// The first registered kind whose requests have `field`, for the message that
    /// refuses it on another kind.
    pub fn accepting(&self, field: &str) -> Option<&'static str> {
        self.fields.iter().find(|(_, fields)| fields.iter().any(|name| name == field)).map(|(name, _)| *name)
    }

    /// The kind named `name`, if it is registered. A linear search: there are a handful,
    /// and comparing a few short strings beats hashing one.
    pub fn get(&self, name: &str) -> Option<&dyn Kind> {
        self.kinds.iter().find(|kind| kind.name() == name).map(|kind| kind.as_ref())
    }

    /// Resolves `job`'s kind for one attempt: the one lookup by name the attempt makes.
    pub fn resolve(&self, job: &Job) -> ResolvedKind {
        match self.kinds.iter().position(|kind| kind.name() == job.kind) {
            Some(slot) => {
                let kind = &self.kinds[slot];
                ResolvedKind { slot: Some(slot), label: kind.name(), placement: kind.placement(job) }
            }
            None => ResolvedKind { slot: None, label: "unknown", placement: Placement::GUARDED },
        }
    }

    /// The kind [`resolve`](Self::resolve) found, without looking it up again.
    pub fn resolved(&self, resolved: ResolvedKind) -> Option<&dyn Kind> {
        resolved.slot.and_then(|slot| self.kinds.get(slot)).map(|kind| kind.as_ref())
    }

    /// The registered kinds' names, in registry order.
    pub fn names(&self) -> Vec<&'static str> {
        self.kinds.iter().map(|kind| kind.name()).collect()
    }

    /// The names, comma-separated, for error messages.
    pub fn names_text(&self) -> String {
        self.names().join(", ")
    }

    /// What `/readyz` shows of each kind that has state of its own, by name.
    pub fn readiness(&self) -> serde_json::Map<String, serde_json::Value> {
        self.kinds.iter().filter_map(|kind| Some((kind.name().to_owned(), kind.readiness()?))).collect()
    }
}

/// The names of a kind's own request fields, from its schema.
pub fn request_fields(registration: &Registration) -> Vec<String> {
    match (registration.request_schema)() {
        utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::Object(object)) => {
            object.properties.keys().cloned().collect()
        }
        _ => Vec::new(),
    }
}
