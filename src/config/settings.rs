//! The settings as each source gives them: every one optional, so that the flags, the
//! environment and the file can each give some, merged in that order of precedence.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::queue::{QueueKind, Synchronous};

/// Every setting, each optional, so that the flags, the environment and the file can
/// each give some and be merged.
#[derive(Debug, Clone, Default, clap::Args, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address to listen on for the HTTP API [default: 127.0.0.1:8080].
    #[arg(long, env = "JOBD_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// Directory for jobd's own files [default: $STATE_DIRECTORY under systemd, else ./jobd-data].
    #[arg(long, env = "JOBD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Object store for uploads: file:///path, s3://bucket/prefix or memory:// [default: file://<data_dir>/objects].
    #[arg(long, env = "JOBD_STORE_URL")]
    pub store_url: Option<String>,

    /// First segments of the default upload key, <key_prefix>/<yyyy>/<mm>/<dd>/<id>.json [default: payloads].
    #[arg(long, env = "JOBD_KEY_PREFIX")]
    pub key_prefix: Option<String>,

    /// Jobs that run at once [default: 16].
    #[arg(long, env = "JOBD_MAX_WORKERS")]
    pub max_workers: Option<usize>,

    /// Most jobs accepted and not yet finished; beyond it submissions get 429 [default: 1000000].
    #[arg(long, env = "JOBD_MAX_QUEUE")]
    pub max_queue: Option<usize>,

    /// Largest request body in bytes; larger ones get 413 [default: 8388608].
    #[arg(long, env = "JOBD_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,

    /// Seconds that running jobs get to finish after SIGTERM [default: 30].
    #[arg(long, env = "JOBD_SHUTDOWN_TIMEOUT_SECS")]
    pub shutdown_timeout_secs: Option<u64>,

    /// Enable the test kinds sleep, fail and panic [default: false].
    #[arg(long, env = "JOBD_TEST_KINDS", value_parser = clap::builder::BoolishValueParser::new())]
    pub test_kinds: Option<bool>,

    /// Fail every fsync of the queue after this many, as a dying disk would: tests what jobd does then. Never in production [default: off].
    #[arg(long, env = "JOBD_TEST_FAIL_SYNC_AFTER", hide = true)]
    pub test_fail_sync_after: Option<u64>,

    /// Hold the queue thread this many ms when a cancel arrives, so that a fetch sent meanwhile shares its batch: tests that a cancelled job never starts. Never in production [default: off].
    #[arg(long, env = "JOBD_TEST_CANCEL_HOLD_MS", hide = true)]
    pub test_cancel_hold_ms: Option<u64>,

    /// Make every fsync of the queue wait this many ms first, as a stalled disk would: tests what jobd does then. Never in production [default: off].
    #[arg(long, env = "JOBD_TEST_SYNC_DELAY_MS", hide = true)]
    pub test_sync_delay_ms: Option<u64>,

    /// Most bytes of submissions waiting for their commit while the disk is slow; beyond it submissions get 503 [default: 67108864].
    #[arg(long, env = "JOBD_INGEST_MAX_PENDING_BYTES")]
    pub ingest_max_pending_bytes: Option<usize>,

    /// HTTP worker threads [default: the number of CPUs].
    #[arg(long, env = "JOBD_HTTP_WORKERS")]
    pub http_workers: Option<usize>,

    /// Queue backend: sqlite (durable, <data_dir>/queue.db) or postgres (shared by several nodes, postgres_url) [default: sqlite].
    #[arg(long, env = "JOBD_QUEUE", value_enum)]
    pub queue: Option<QueueKind>,

    /// PostgreSQL connection URL (libpq style) for queue = postgres, e.g. postgresql://jobd@db.internal/jobd; a password may come from the systemd credential postgres_password [default: none].
    #[arg(long, env = "JOBD_POSTGRES_URL")]
    pub postgres_url: Option<String>,

    /// This node's name in logs, /v1/stats and the nodes table [default: the host name].
    #[arg(long, env = "JOBD_NODE_NAME")]
    pub node_name: Option<String>,

    /// Seconds a node's claim on its jobs outlives its last heartbeat (one a second); a node silent longer is presumed dead and its jobs are rescued. PostgreSQL only [default: 5].
    #[arg(long, env = "JOBD_LEASE_SECS")]
    pub lease_secs: Option<u64>,

    /// SQLite sync mode: full (a 202 survives power loss) or normal (survives a crash of jobd only) [default: full].
    #[arg(long, env = "JOBD_SQLITE_SYNCHRONOUS", value_enum)]
    pub sqlite_synchronous: Option<Synchronous>,

    /// The most bytes of claimed, not-yet-started jobs the Dispatcher holds in memory [default: 67108864].
    #[arg(long, env = "JOBD_WINDOW_MAX_BYTES")]
    pub window_max_bytes: Option<usize>,

    /// Largest size of queue.db in bytes; beyond it submissions get 503. 0 means no limit [default: 0].
    #[arg(long, env = "JOBD_QUEUE_DB_MAX_BYTES")]
    pub queue_db_max_bytes: Option<u64>,

    /// Seconds finished jobs stay readable, and idempotency keys remembered [default: 86400].
    #[arg(long, env = "JOBD_RETENTION_SECS")]
    pub retention_secs: Option<u64>,

    /// Commit concurrent submissions together, one fsync for many [default: true].
    #[arg(long, env = "JOBD_GROUP_COMMIT", value_parser = clap::builder::BoolishValueParser::new())]
    pub group_commit: Option<bool>,

    /// Attempts a job gets before it is dead, unless it gives its own [default: 25].
    #[arg(long, env = "JOBD_MAX_ATTEMPTS")]
    pub max_attempts: Option<u32>,

    /// Retry backoff: the first retry waits between half and all of this many ms, doubling per attempt [default: 1000].
    #[arg(long, env = "JOBD_RETRY_BASE_MS")]
    pub retry_base_ms: Option<u64>,

    /// Retry backoff: no retry waits longer than this many ms [default: 21600000].
    #[arg(long, env = "JOBD_RETRY_CAP_MS")]
    pub retry_cap_ms: Option<u64>,

    /// How long one attempt may run, in ms, unless the job or its kind says otherwise [default: 300000].
    #[arg(long, env = "JOBD_JOB_TIMEOUT_MS")]
    pub job_timeout_ms: Option<u64>,

    /// A custom S3 endpoint (MinIO, Ceph, R2...); implies path-style requests [default: AWS_ENDPOINT_URL, else AWS].
    #[arg(long, env = "JOBD_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    /// The S3 region [default: AWS_REGION / AWS_DEFAULT_REGION].
    #[arg(long, env = "JOBD_S3_REGION")]
    pub s3_region: Option<String>,

    /// Allow plain HTTP to the S3 endpoint [default: false].
    #[arg(long, env = "JOBD_S3_ALLOW_HTTP", value_parser = clap::builder::BoolishValueParser::new())]
    pub s3_allow_http: Option<bool>,

    /// Bodies at least this many bytes go up as multipart uploads [default: 8388608].
    #[arg(long, env = "JOBD_MULTIPART_THRESHOLD")]
    pub multipart_threshold: Option<usize>,

    /// The most uploads in flight at once, apart from max_workers [default: 16].
    #[arg(long, env = "JOBD_UPLOAD_CONCURRENCY")]
    pub upload_concurrency: Option<usize>,

    /// A second address that serves only /metrics, so scrapers need no access to the job API [default: none].
    #[arg(long, env = "JOBD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Bearer tokens, one `<name> <scopes> <token> [allowed_key_prefixes=a/,b/] [allowed_destinations=billing]` per line [default: $CREDENTIALS_DIRECTORY/tokens under systemd, else none: no authentication, loopback only].
    #[arg(long, env = "JOBD_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,

    /// Allow listening on a non-loopback address without tokens_file [default: false].
    #[arg(long, env = "JOBD_ALLOW_UNAUTHENTICATED", value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_unauthenticated: Option<bool>,

    /// PEM certificate chain for HTTPS on the API listener; reloaded on SIGHUP [default: none, plain HTTP].
    #[arg(long, env = "JOBD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for tls_cert; reloaded on SIGHUP [default: none].
    #[arg(long, env = "JOBD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// Most jobs (or payloads) in one request; more get 413 [default: 10000].
    #[arg(long, env = "JOBD_MAX_JOBS_PER_REQUEST")]
    pub max_jobs_per_request: Option<usize>,

    /// Deepest nesting of JSON arrays and objects in a body, counted from the top; deeper gets 400 [default: 64].
    #[arg(long, env = "JOBD_MAX_JSON_DEPTH")]
    pub max_json_depth: Option<usize>,

    /// A client must send a request's headers within this many ms of connecting, or gets 408 [default: 5000].
    #[arg(long, env = "JOBD_CLIENT_REQUEST_TIMEOUT_MS")]
    pub client_request_timeout_ms: Option<u64>,

    /// A request's whole body must arrive within this many ms of its headers, or gets 408 [default: 30000].
    #[arg(long, env = "JOBD_CLIENT_BODY_TIMEOUT_MS")]
    pub client_body_timeout_ms: Option<u64>,

    /// How long a closing connection may take to shut down, in ms [default: 1000].
    #[arg(long, env = "JOBD_CLIENT_DISCONNECT_TIMEOUT_MS")]
    pub client_disconnect_timeout_ms: Option<u64>,

    /// Largest request head (request line and headers) in bytes; larger gets 431 [default: 32768].
    #[arg(long, env = "JOBD_MAX_HEADER_BYTES")]
    pub max_header_bytes: Option<usize>,

    /// Most open API connections; beyond it new ones wait in the listen backlog [default: 10000].
    #[arg(long, env = "JOBD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// The kinds' own tables of the file (`[webhooks.<name>]`), by key, which only their
    /// kinds read ([`crate::kinds::SettingsTable`]). File only.
    #[arg(skip)]
    #[serde(skip)]
    pub kind_tables: std::collections::BTreeMap<String, toml::Value>,

    /// Per-kind attempt timeouts in ms, e.g. `[job_timeouts_ms] upload = 60000`. File only.
    #[arg(skip)]
    pub job_timeouts_ms: Option<std::collections::BTreeMap<String, u64>>,

    /// Named queues and their limits, e.g. `[queues.bulk] concurrency = 4`. File only.
    #[arg(skip)]
    pub queues: Option<std::collections::BTreeMap<String, crate::queues::QueueTable>>,
}

impl Settings {
    /// `self` where set, else `lower`.
    pub(super) fn or(self, lower: Settings) -> Settings {
        Settings {
            listen: self.listen.or(lower.listen),
            data_dir: self.data_dir.or(lower.data_dir),
            store_url: self.store_url.or(lower.store_url),
            key_prefix: self.key_prefix.or(lower.key_prefix),
            max_workers: self.max_workers.or(lower.max_workers),
            max_queue: self.max_queue.or(lower.max_queue),
            max_body_bytes: self.max_body_bytes.or(lower.max_body_bytes),
            shutdown_timeout_secs: self.shutdown_timeout_secs.or(lower.shutdown_timeout_secs),
            test_kinds: self.test_kinds.or(lower.test_kinds),
            test_fail_sync_after: self.test_fail_sync_after.or(lower.test_fail_sync_after),
            test_cancel_hold_ms: self.test_cancel_hold_ms.or(lower.test_cancel_hold_ms),
            test_sync_delay_ms: self.test_sync_delay_ms.or(lower.test_sync_delay_ms),
            ingest_max_pending_bytes: self.ingest_max_pending_bytes.or(lower.ingest_max_pending_bytes),
            http_workers: self.http_workers.or(lower.http_workers),
            queue: self.queue.or(lower.queue),
            window_max_bytes: self.window_max_bytes.or(lower.window_max_bytes),
            sqlite_synchronous: self.sqlite_synchronous.or(lower.sqlite_synchronous),
            postgres_url: self.postgres_url.or(lower.postgres_url),
            node_name: self.node_name.or(lower.node_name),
            lease_secs: self.lease_secs.or(lower.lease_secs),
            queue_db_max_bytes: self.queue_db_max_bytes.or(lower.queue_db_max_bytes),
            retention_secs: self.retention_secs.or(lower.retention_secs),
            group_commit: self.group_commit.or(lower.group_commit),
            max_attempts: self.max_attempts.or(lower.max_attempts),
            retry_base_ms: self.retry_base_ms.or(lower.retry_base_ms),
            retry_cap_ms: self.retry_cap_ms.or(lower.retry_cap_ms),
            job_timeout_ms: self.job_timeout_ms.or(lower.job_timeout_ms),
            job_timeouts_ms: self.job_timeouts_ms.or(lower.job_timeouts_ms),
            queues: self.queues.or(lower.queues),
            kind_tables: if self.kind_tables.is_empty() { lower.kind_tables } else { self.kind_tables },
            metrics_listen: self.metrics_listen.or(lower.metrics_listen),
            s3_endpoint: self.s3_endpoint.or(lower.s3_endpoint),
            s3_region: self.s3_region.or(lower.s3_region),
            s3_allow_http: self.s3_allow_http.or(lower.s3_allow_http),
            multipart_threshold: self.multipart_threshold.or(lower.multipart_threshold),
            upload_concurrency: self.upload_concurrency.or(lower.upload_concurrency),
            tokens_file: self.tokens_file.or(lower.tokens_file),
            allow_unauthenticated: self.allow_unauthenticated.or(lower.allow_unauthenticated),
            tls_cert: self.tls_cert.or(lower.tls_cert),
            tls_key: self.tls_key.or(lower.tls_key),
            max_jobs_per_request: self.max_jobs_per_request.or(lower.max_jobs_per_request),
            max_json_depth: self.max_json_depth.or(lower.max_json_depth),
            client_request_timeout_ms: self.client_request_timeout_ms.or(lower.client_request_timeout_ms),
            client_body_timeout_ms: self.client_body_timeout_ms.or(lower.client_body_timeout_ms),
            client_disconnect_timeout_ms: self.client_disconnect_timeout_ms.or(lower.client_disconnect_timeout_ms),
            max_connections: self.max_connections.or(lower.max_connections),
            max_header_bytes: self.max_header_bytes.or(lower.max_header_bytes),
        }
    }
}
