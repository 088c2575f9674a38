//! The PostgreSQL backend: one queue that several jobd nodes share. It owns the
//! connection of the queue thread (with reconnects and their backoff), the transaction
//! protocol, and the count rows that make the depth cheap; the schema, the writes, the
//! reads and the cluster's upkeep (leases, rescue, wakeups) are its submodules.
//!
//! **Architecture Invariant:** every write about a claimed job matches the job's id, its
//! attempt and this node as its lease owner, and a write that matches nothing is counted
//! as fenced, never retried: the job has moved on to another node or attempt.

mod cluster;
mod codec;
mod connection;
mod pick;
mod queues;
mod reader;
mod schema;
#[cfg(test)]
mod tests;
mod tls;
mod writer;

use std::str::FromStr as _;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus::{Histogram, IntCounter, IntGauge};

use self::cluster::ClusterThreads;
use self::connection::{Connection, storage_error};
pub use self::reader::listing_sql;
pub use self::schema::SCHEMA_VERSION;
pub use self::writer::hot_statements;
use super::{LeaseClock, NodeId, QueueBackend, StorageError, Transactions, Waker};
use crate::job::JobState;

/// A node's connections: the queue thread's, its ingest lane's, its read lane's, the lease
/// thread's and the listener's. The pool is fixed at five, so that N nodes hold 5 × N of
/// the server's `max_connections`.
pub const CONNECTIONS_PER_NODE: usize = 5;
/// The longest one read of the read lane (a listing, a record) may run: listings are the
/// one query a client shapes, and one that walks the table answers 503 in this time
/// rather than hold the lane for the others.
const READ_STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest one statement may run before the server cancels it, so that one slow query
/// cannot hold the queue thread (and with it every submission) for ever.
pub(super) const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection attempt may take: a server that does not answer costs the
/// queue thread this long once per backoff step, not a hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long sent data may go unacknowledged, and how soon an idle connection's keepalive
/// probes give up (5 s idle, then 3 probes 1 s apart), before the kernel cuts the
/// connection: a server that vanished without a reset (a host gone, a partition) is
/// noticed within about 8 s instead of after TCP's default of about 15 minutes, during
/// which the thread waiting on it (the queue's, ingest's or the lease's) would hang.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(8);
const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_RETRIES: u32 = 3;

/// What the PostgreSQL backend needs besides the common settings.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub url: String,
    pub node_name: String,
    /// How long a node's claims outlive its last heartbeat.
    pub lease: Duration,
}

/// The cluster's series, handed in by whoever owns the registry.
#[derive(Debug, Clone)]
pub struct ClusterMetrics {
    /// Nodes whose lease is live (`jobd_nodes`).
    pub nodes: IntGauge,
    /// Jobs taken back from lost nodes (`jobd_jobs_rescued_total`).
    pub rescued: IntCounter,
    /// Writes refused because the job moved on (`jobd_fenced_writes_total`).
    pub fenced: IntCounter,
    /// How late each heartbeat committed after it was due.
    pub heartbeat_lag: Histogram,
    /// Claimed jobs this node did not run because their start was refused
    /// (`jobd_fenced_starts_total`).
    pub fenced_starts: IntCounter,
    /// 1 while this node can prove that it holds its lease (`jobd_lease_held`).
    pub lease_held: IntGauge,
}

/// The URL with its password, if it has one, replaced by `***`, for logs and output.
pub fn redacted_url(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut url) if url.password().is_some() => {
            // Setting a password fails only for URLs that cannot have one.
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        Ok(url) => url.to_string(),
        Err(_) => "(not a URL)".to_owned(),
    }
}

/// Whether `text` is a connection URL the client accepts.
pub fn check_postgres_url(text: &str) -> Result<(), String> {
    if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
        return Err("it must start with postgresql:// or postgres://".to_owned());
    }
    let (url, _) = tls::split_url(text)?;
    postgres::Config::from_str(&url).map(drop).map_err(|error| error.to_string())
}

/// How one of a node's connections is made: the client's settings and the TLS connector
/// that `sslmode` asks for.
#[derive(Clone)]
struct ConnectionConfig {
    client: postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
}

/// The connection settings: the URL's (TLS as its `sslmode` says, see [`tls`]), plus the
/// password from the systemd credential `postgres_password` when the URL has none, the
/// timeouts, and the node's name as the application name (so `pg_stat_activity` shows
/// which node holds which connection). `statement_timeout` bounds each statement.
///
/// The queue's, the read lane's and the lease thread's connections plan without sequential scans
/// (`enable_seqscan=off`): every statement they send has an index (the tests `EXPLAIN`
/// them), and a prepared statement's generic plan, chosen while the table was nearly
/// empty, otherwise kept a sequential scan of the claim's `id = ANY($1)` as the table grew:
/// measured on a fresh database at defaults, 2 runs of 4 ran 100,000 noop jobs at about
/// 3,400 jobs/s instead of 31,000-48,000, the claim at 69 ms a statement. Forcing custom
/// plans (`plan_cache_mode`) fixed the claim but gave the finish a nested loop over a
/// sequential scan, which the planner guessed held one row (6,500 jobs/s in 6 runs of 6).
/// A transaction left open longer than the lease between two statements is ended by the
/// server (`idle_in_transaction_session_timeout`): jobd's transactions send their
/// statements back to back, so only a frozen or cut-off node leaves one open, and its
/// locks (on the jobs it was claiming or finishing, and on its own row, see the claim)
/// would otherwise keep its jobs from rescue until it woke.
///
/// JIT compilation is off on every connection: a sequential scan that is the only way
/// (the count rows, the nodes table) is costed at the disabled-scan penalty, which is far
/// past `jit_above_cost`, and compiling it took 40 to 80 ms a statement; no statement of
/// a queue's runs long enough to gain from JIT.
fn connection_config(
    settings: &ClusterSettings,
    role: &str,
    statement_timeout: Duration,
) -> Result<ConnectionConfig, StorageError> {
    let (url, tls) = tls::split_url(&settings.url)
        .map_err(|error| StorageError::new(format!("postgres_url is invalid: {error}")))?;
    let mut config = postgres::Config::from_str(&url)
        .map_err(|error| StorageError::new(format!("postgres_url is invalid: {error}")))?;
    if config.get_password().is_none()
        && let Some(path) = crate::systemd::credential_path("postgres_password")
    {
        let password = std::fs::read(&path)
            .map_err(|error| StorageError::new(format!("cannot read the credential postgres_password: {error}")))?;
        let password = password.strip_suffix(b"\n").unwrap_or(&password);
        config.password(password);
    }
    config
        .ssl_mode(tls.client_mode())
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_user_timeout(TCP_USER_TIMEOUT)
        .keepalives(true)
        .keepalives_idle(KEEPALIVE_IDLE)
        .keepalives_interval(KEEPALIVE_INTERVAL)
        .keepalives_retries(KEEPALIVE_RETRIES)
        .application_name(&format!("jobd {} ({role})", settings.node_name))
        .options(&format!(
            "-c statement_timeout={} -c idle_in_transaction_session_timeout={} -c jit=off{}",
            statement_timeout.as_millis(),
            settings.lease.as_millis(),
            if matches!(role, "queue" | "read" | "lease") { " -c enable_seqscan=off" } else { "" }
        ));
    Ok(ConnectionConfig { client: config, tls: tls.connector()? })
}

/// Count changes by state that the open transaction made; written to this node's count
/// rows just before it commits, so the sum of every node's rows is the depth.
#[derive(Debug, Default)]
struct Deltas {
    by_state: [i64; 5],
}

impl Deltas {
    fn slot(state: JobState) -> Option<usize> {
        match state {
            JobState::Queued => Some(0),
            JobState::Scheduled => Some(1),
            JobState::Running => Some(2),
            JobState::Failed => Some(3),
            JobState::Dead => Some(4),
            JobState::Succeeded | JobState::Cancelled => None,
        }
    }

    const STATES: [JobState; 5] =
        [JobState::Queued, JobState::Scheduled, JobState::Running, JobState::Failed, JobState::Dead];

    fn add(&mut self, state: JobState, count: i64) {
        if let Some(slot) = Self::slot(state) {
            self.by_state[slot] += count;
        }
    }

    fn moved(&mut self, from: JobState, to: JobState, count: i64) {
        self.add(from, -count);
        self.add(to, count);
    }

    fn unfinished(&self) -> i64 {
        self.by_state[..4].iter().sum()
    }

    fn is_empty(&self) -> bool {
        self.by_state.iter().all(|&delta| delta == 0)
    }
}

/// The queue in a PostgreSQL database, shared with the other nodes that use it.
pub struct PostgresBackend {
    connection: Connection,
    node: NodeId,
    /// Which of this node's connections this is, for its count rows: 0 claims and records
    /// progress, 1 enqueues (see [`QueueBackend::ingest_lane`]).
    lane: i16,
    /// The settings a second connection (the ingest lane) is opened with.
    ingest_config: ConnectionConfig,
    /// The settings of the read lane's connection; `None` on the lanes that offer none.
    read_config: Option<ConnectionConfig>,
    capacity: usize,
    deltas: Deltas,
    /// The committed count of unfinished jobs, read once per transaction that enqueues.
    committed_unfinished: Option<i64>,
    /// Whether the open transaction readied jobs that other nodes should hear of.
    readied: bool,
    metrics: ClusterMetrics,
    /// The jobs claimed and handed to the Dispatcher, not yet started, finished or
    /// cancelled (at most its window), and what the open transaction adds and removes.
    handed_out: std::collections::HashSet<crate::job::JobId>,
    pending_handout: Vec<crate::job::JobId>,
    pending_release: Vec<crate::job::JobId>,
    /// A claim's transaction failed after it leased jobs, perhaps at a commit whose answer
    /// was lost: the next claim also hands out this node's leased jobs that the Dispatcher
    /// was never given, so that none stays leased to a node that does not know it.
    claims_uncertain: bool,
    /// The open transaction handed out again the jobs `claims_uncertain` was about: its
    /// commit clears that flag.
    retaking: bool,
    /// The last answer of `oldest_queued` and when it was read: the query walks the head
    /// of the ready index, which churns under load, so status reads (every scrape and
    /// every `/v1/stats`) share one answer per second, as long as it agrees with the
    /// latest depth on whether anything is queued.
    oldest_queued: Option<(std::time::Instant, Option<chrono::DateTime<chrono::Utc>>)>,
    /// Where the oldest queued job's last reading found the queue's head, and when it
    /// last read from the index's start (see `reader::OLDEST_QUEUED`).
    oldest_queued_head: i64,
    last_full_oldest_read: Option<std::time::Instant>,
    /// The queued count of the latest `depth` read.
    last_queued: Option<usize>,
    /// The lease and listener threads, owned by the first lane; held only to be dropped
    /// with it, which stops them.
    _threads: Option<ClusterThreads>,
    /// Set after a commit that readied jobs; the listener thread tells the other nodes.
    news: Arc<std::sync::atomic::AtomicBool>,
    waker: Arc<OnceLock<Waker>>,
    /// This node's view of its lease, which the lease thread renews; the main lane claims
    /// and records starts only while it is held.
    lease: Arc<LeaseClock>,
    /// The lease's term at this lane's last claim: a new one means the lease lapsed
    /// meanwhile, and the Dispatcher dropped the jobs it held.
    seen_term: u64,
    /// This lane's latest claim epoch; with the node's id it names one claim.
    next_claim: i64,
    /// See [`QueueBackend::queue_id`]; kept in `jobd_schema`, so every node has the same.
    queue_id: Arc<str>,
    /// Where the queue's head was at this lane's last claim (the highest `ready_seq` it
    /// picked), and when it last looked from the very start ([`pick::pick_floor`]).
    queue_head: i64,
    last_full_pick: Option<std::time::Instant>,
}

impl PostgresBackend {
    /// Connects, migrates the schema (once, however many nodes start at once), registers
    /// this node, and starts its lease and listener threads.
    pub fn open(
        settings: &ClusterSettings,
        node: NodeId,
        capacity: usize,
        metrics: ClusterMetrics,
    ) -> Result<PostgresBackend, StorageError> {
        let mut connection = Connection::new(connection_config(settings, "queue", STATEMENT_TIMEOUT)?);
        let client = connection.connect_at_start()?;
        let version = schema::migrate(client)?;
        let queue_id = schema::queue_id(client)?;
        let mut depth = [0i64; 5];
        for row in connection.query(schema::DEPTH, &[])? {
            if let Some(slot) = Deltas::slot(crate::queue::columns::state_of(row.get(0))) {
                depth[slot] = row.get(1);
            }
        }
        tracing::info!(
            url = %redacted_url(&settings.url),
            schema_version = version,
            node = %node,
            node_name = settings.node_name,
            lease_secs = settings.lease.as_secs(),
            queued = depth[0],
            delayed = depth[1] + depth[3],
            running = depth[2],
            "PostgreSQL queue opened"
        );
        let waker = Arc::new(OnceLock::new());
        let lease = Arc::new(LeaseClock::new());
        let threads = ClusterThreads::start(settings, node, metrics.clone(), waker.clone(), lease.clone())?;
        let ingest_config = connection_config(settings, "ingest", STATEMENT_TIMEOUT)?;
        let mut backend = Self::on_connection(connection, node, 0, ingest_config, capacity, metrics, threads.news());
        backend._threads = Some(threads);
        backend.waker = waker;
        backend.seen_term = lease.term();
        backend.lease = lease;
        backend.queue_id = queue_id;
        backend.read_config = Some(connection_config(settings, "read", READ_STATEMENT_TIMEOUT)?);
        Ok(backend)
    }

    /// A backend on `connection` as lane `lane` of `node`, with nothing claimed, pending or
    /// cached yet, and no cluster threads of its own.
    fn on_connection(
        connection: Connection,
        node: NodeId,
        lane: i16,
        ingest_config: ConnectionConfig,
        capacity: usize,
        metrics: ClusterMetrics,
        news: Arc<std::sync::atomic::AtomicBool>,
    ) -> Self {
        PostgresBackend {
            connection,
            node,
            lane,
            ingest_config,
            read_config: None,
            capacity,
            deltas: Deltas::default(),
            committed_unfinished: None,
            readied: false,
            metrics,
            handed_out: std::collections::HashSet::new(),
            pending_handout: Vec::new(),
            pending_release: Vec::new(),
            claims_uncertain: false,
            retaking: false,
            oldest_queued: None,
            oldest_queued_head: 0,
            last_full_oldest_read: None,
            last_queued: None,
            _threads: None,
            news,
            waker: Arc::new(OnceLock::new()),
            lease: Arc::new(LeaseClock::new()),
            seen_term: 0,
            next_claim: 0,
            queue_id: Arc::from(""),
            queue_head: 0,
            last_full_pick: None,
        }
    }

    /// After a lapse of the lease, the Dispatcher holds none of the jobs it was handed:
    /// the next claim hands out again every unstarted job still leased to this node.
    fn note_new_term(&mut self) {
        let term = self.lease.term();
        if term != self.seen_term {
            self.seen_term = term;
            self.handed_out.clear();
            self.claims_uncertain = true;
        }
    }

    /// A second backend of this node on a connection of its own, for submissions only.
    fn open_ingest_lane(&self) -> PostgresBackend {
        let mut connection = Connection::new(self.ingest_config.clone());
        // Connected now, so that a server without a connection to spare says so at start,
        // in the log; the lane connects again, with the backoff, at its first submission.
        if let Err(error) = connection.client() {
            tracing::error!(error = error.message(), "the ingest connection to PostgreSQL failed at start");
        }
        let (config, metrics, news) = (self.ingest_config.clone(), self.metrics.clone(), self.news.clone());
        let mut lane = Self::on_connection(connection, self.node, 1, config, self.capacity, metrics, news);
        lane.queue_id = self.queue_id.clone();
        lane
    }

    /// The schema version of the database at `settings.url`, for `check-config --probe`;
    /// `None` when jobd has not created its tables there yet.
    pub fn probe(settings: &ClusterSettings) -> Result<Option<i32>, StorageError> {
        let mut connection = Connection::new(connection_config(settings, "probe", STATEMENT_TIMEOUT)?);
        schema::version(connection.client()?)
    }

    /// The node that holds what this backend claims.
    fn owner(&self) -> uuid::Uuid {
        self.node.as_uuid()
    }

    /// Counts and logs writes that matched nothing because the job moved on.
    /// Each write is named by its job, attempt and claim.
    fn fenced(&self, what: &'static str, stale: impl Iterator<Item = (crate::job::JobId, u32, i64)>) {
        for (id, attempt, claim) in stale {
            self.metrics.fenced.inc();
            tracing::warn!(
                job_id = %id,
                attempt,
                claim,
                stale_owner = %self.node,
                write = what,
                "write fenced: the job is no longer this node's at this attempt (rescued, or finished by another)"
            );
        }
    }

    /// Writes this transaction's count changes to this node's rows.
    fn write_deltas(&mut self) -> Result<(), StorageError> {
        if self.deltas.is_empty() {
            return Ok(());
        }
        let states: Vec<&str> = Deltas::STATES.iter().map(|state| state.name()).collect();
        let deltas: Vec<i64> = self.deltas.by_state.to_vec();
        let node = self.owner();
        self.connection.execute(schema::ADD_COUNTS, &[&node, &self.lane, &states, &deltas])?;
        Ok(())
    }
}

/// The read lane. A read is tried once more when it found its connection broken (the
/// server restarted, or the network dropped it, since the last read): reads change
/// nothing, and a client should not get a 503 for a connection nobody used since it broke.
impl super::RecordReader for PostgresBackend {
    fn get(
        &mut self,
        id: crate::job::JobId,
        with_payload: bool,
    ) -> Result<Option<crate::job::JobRecord>, StorageError> {
        self.read_again_if_lost(|backend| super::JobReader::get(backend, id, with_payload))
    }

    fn list(
        &mut self,
        filter: &super::ListFilter,
        before: Option<super::Cursor>,
        limit: usize,
    ) -> Result<super::JobPage, StorageError> {
        self.read_again_if_lost(|backend| super::JobReader::list(backend, filter, before, limit))
    }

    fn queues(&mut self, with_depths: bool) -> Result<super::QueuesView, StorageError> {
        self.read_again_if_lost(|backend| super::JobReader::queues(backend, with_depths))
    }
}

impl PostgresBackend {
    fn read_again_if_lost<T>(
        &mut self,
        mut read: impl FnMut(&mut Self) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let had_client = self.connection.client.is_some();
        match read(self) {
            Err(_) if self.connection.broke_just_now(had_client) => read(self),
            result => result,
        }
    }
}

impl Drop for PostgresBackend {
    /// Tells the other nodes of jobs this lane readied since the listener last did, on
    /// this lane's own connection: at shutdown the listener may stop before the last
    /// commits of the ingest lane, and their jobs would otherwise wait for the other
    /// nodes' one-second poll.
    fn drop(&mut self) {
        if self.news.swap(false, std::sync::atomic::Ordering::AcqRel) && self.connection.client.is_some() {
            let own = self.node.to_string();
            if let Err(error) = self.connection.execute("SELECT pg_notify($1, $2)", &[&schema::READY_CHANNEL, &own]) {
                tracing::debug!(error = error.message(), "could not announce the last ready jobs at shutdown");
            }
        }
    }
}

impl Transactions for PostgresBackend {
    fn begin(&mut self) -> Result<(), StorageError> {
        self.deltas = Deltas::default();
        self.committed_unfinished = None;
        self.readied = false;
        self.pending_handout.clear();
        self.pending_release.clear();
        self.retaking = false;
        let had_client = self.connection.client.is_some();
        match self.connection.batch("BEGIN") {
            // The connection broke while idle (the server restarted): nothing of this
            // transaction was sent, so a fresh connection takes it.
            Err(_) if self.connection.broke_just_now(had_client) => self.connection.batch("BEGIN"),
            result => result,
        }
    }

    fn commit(&mut self) -> Result<(), StorageError> {
        self.write_deltas()?;
        self.connection.commit()?;
        if std::mem::take(&mut self.retaking) {
            self.claims_uncertain = false;
        }
        self.handed_out.extend(self.pending_handout.drain(..));
        for id in self.pending_release.drain(..) {
            self.handed_out.remove(&id);
        }
        if std::mem::take(&mut self.readied) {
            self.news.store(true, std::sync::atomic::Ordering::Release);
        }
        Ok(())
    }

    fn rollback(&mut self) {
        self.deltas = Deltas::default();
        self.readied = false;
        self.claims_uncertain |= !self.pending_handout.is_empty();
        self.retaking = false;
        self.pending_handout.clear();
        self.pending_release.clear();
        // A broken connection has no transaction left to roll back.
        if self.connection.client.is_some() && self.connection.batch("ROLLBACK").is_err() {
            self.connection.lost();
        }
    }

    fn check_writable(&mut self) -> Result<(), StorageError> {
        self.connection.batch("SELECT 1")
    }
}

impl QueueBackend for PostgresBackend {
    fn is_durable(&self) -> bool {
        true
    }

    fn queue_id(&self) -> Arc<str> {
        self.queue_id.clone()
    }

    fn lists_by_id(&self) -> bool {
        true
    }

    /// Submissions commit on a second connection, beside claims and progress on the
    /// first: PostgreSQL runs the two transactions at once, on two server processes, and
    /// a submission's commit no longer waits behind a claim's or a flush's.
    fn ingest_lane(&mut self) -> Option<Box<dyn QueueBackend>> {
        (self.lane == 0).then(|| Box::new(self.open_ingest_lane()) as Box<dyn QueueBackend>)
    }

    fn set_waker(&mut self, waker: Waker) {
        // The listener thread wakes the queue thread through it; set once, at spawn.
        let _ = self.waker.set(waker);
    }

    fn lease_clock(&self) -> Option<Arc<LeaseClock>> {
        (self.lane == 0).then(|| self.lease.clone())
    }

    /// A third lane on a connection of its own, with a short statement timeout; it
    /// connects at its first read.
    fn record_reader(&mut self) -> Result<Option<Box<dyn super::RecordReader>>, StorageError> {
        let Some(config) = self.read_config.take() else { return Ok(None) };
        let (ingest, metrics) = (self.ingest_config.clone(), self.metrics.clone());
        let quiet = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = Self::on_connection(Connection::new(config), self.node, 2, ingest, self.capacity, metrics, quiet);
        Ok(Some(Box::new(reader)))
    }
}
