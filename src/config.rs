//! Configuration: the command line, the environment and a TOML file, merged in that order
//! of precedence over built-in defaults, and checked before anything starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::queue::{QueueKind, QueueSettings, Synchronous};

/// Default `max_workers`. Workers are cheap actors and upload jobs wait on I/O, so the
/// pool is larger than the core count; 16 concurrent uploads keep a store busy without
/// holding many payloads in memory at once.
pub const DEFAULT_MAX_WORKERS: usize = 16;
/// Default `max_queue`. The durable queue keeps the backlog on disk and only a small
/// window in memory, so the bound is about disk: a million jobs of about 1 KiB is about
/// 1 GiB, hours of backlog at typical rates, and still a hard stop before the disk fills.
pub const DEFAULT_MAX_QUEUE: usize = 1_000_000;
/// Default `max_attempts`: with the default backoff, 25 attempts span 1.3 to 2.6 days, so
/// a job rides out a store outage of a day, as Sidekiq's, River's and Faktory's 25 do
/// (theirs span longer). A job that cannot succeed is parked by its own error's verdict
/// (permanent errors go `dead` at once), not by running out of attempts.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 25;
/// Default `retry_base_ms`: the first retry waits half a second to a second, so a blip
/// costs seconds.
pub const DEFAULT_RETRY_BASE_MS: u64 = 1_000;
/// Default `retry_cap_ms`: no retry waits more than six hours, so a job whose store came
/// back is at most six hours late.
pub const DEFAULT_RETRY_CAP_MS: u64 = 6 * 3_600_000;
/// Default `job_timeout_ms`: five minutes, generous for an upload of `max_body_bytes`.
pub const DEFAULT_JOB_TIMEOUT_MS: u64 = 300_000;
/// Default `retention_secs`: finished jobs stay readable (and idempotency keys stay
/// remembered) for a day.
pub const DEFAULT_RETENTION_SECS: u64 = 86_400;
/// Default `max_body_bytes`: 8 MiB, a payload collection of thousands of small payloads.
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Default `window_max_bytes`: the Dispatcher's claimed, not-yet-started jobs take at
/// most 64 MiB (plus one job), eight claims of 8 MiB, however large their bodies: enough
/// to keep 16 workers fed with large uploads, small next to the memory a host running
/// jobd has, and a hard stop before a backlog of large bodies can run the process out of
/// memory (1,000 jobs of 1 MiB behind a busy pool took 1 GiB with a bound in jobs alone).
pub const DEFAULT_WINDOW_MAX_BYTES: usize = 64 << 20;
/// Default `shutdown_timeout_secs`.
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECS: u64 = 30;
/// Default `ingest_max_pending_bytes`: 64 MiB, eight requests of the default
/// `max_body_bytes`. Submissions wait for a commit slot only while earlier commits wait
/// for their fsync: with a healthy disk that is milliseconds, and even the benchmark's
/// ~24,000 small submissions a second then hold well under a MiB. More than 64 MiB waits
/// only when the disk stalls, and holding more then would only grow the memory kept for
/// requests whose clients have likely timed out already.
pub const DEFAULT_INGEST_MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;

/// jobd: a job-processing daemon. Accepts jobs over HTTP, runs them on a bounded pool of
/// workers, and uploads payloads to an object store.
///
/// Settings come from, highest first: command-line flags, JOBD_* environment variables,
/// the TOML file given by --config (keys as the flags, with underscores), built-in defaults.
#[derive(Debug, Parser)]
#[command(name = "jobd", version, about, long_about)]
pub struct Cli {
    /// A TOML configuration file [default: $CONFIGURATION_DIRECTORY/jobd.toml under systemd, if present].
    #[arg(long, env = "JOBD_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    /// Log format: human-readable text, or one JSON object per line.
    #[arg(long, env = "JOBD_LOG_FORMAT", global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub settings: Settings,

    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the daemon until SIGTERM or SIGINT.
    Serve,
    /// Validate the configuration, print it, and exit non-zero on error.
    CheckConfig {
        /// Also check once that the object store answers (e.g. the S3 bucket is reachable).
        #[arg(long)]
        probe: bool,
    },
    /// Manage bearer tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `jobd token ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum TokenCommand {
    /// Print a line for the token file with a new random token: `<name> <scopes> <token>`.
    /// Append it to the file (`>> tokens`), then reload jobd (SIGHUP) or start it.
    New {
        /// The token's name, shown in logs and metrics: letters, digits, '-', '_', '.'.
        name: String,
        /// Comma-separated scopes: submit, read, admin.
        scopes: String,
        /// Confine the token's uploads (and its view of jobs) to keys under these
        /// comma-separated prefixes.
        #[arg(long)]
        allowed_key_prefixes: Option<String>,
    },
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Every setting, each optional, so that the flags, the environment and the file can
/// each give some and be merged.
#[derive(Debug, Clone, Default, clap::Args, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address to listen on for the HTTP API [default: 127.0.0.1:8080].
    #[arg(long, env = "JOBD_LISTEN", global = true)]
    pub listen: Option<SocketAddr>,

    /// Directory for jobd's own files [default: $STATE_DIRECTORY under systemd, else ./jobd-data].
    #[arg(long, env = "JOBD_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,

    /// Object store for uploads: file:///path, s3://bucket/prefix or memory:// [default: file://<data_dir>/objects].
    #[arg(long, env = "JOBD_STORE_URL", global = true)]
    pub store_url: Option<String>,

    /// First segments of the default upload key, <key_prefix>/<yyyy>/<mm>/<dd>/<id>.json [default: payloads].
    #[arg(long, env = "JOBD_KEY_PREFIX", global = true)]
    pub key_prefix: Option<String>,

    /// Jobs that run at once [default: 16].
    #[arg(long, env = "JOBD_MAX_WORKERS", global = true)]
    pub max_workers: Option<usize>,

    /// Most jobs accepted and not yet finished; beyond it submissions get 429 [default: 1000000].
    #[arg(long, env = "JOBD_MAX_QUEUE", global = true)]
    pub max_queue: Option<usize>,

    /// Largest request body in bytes; larger ones get 413 [default: 8388608].
    #[arg(long, env = "JOBD_MAX_BODY_BYTES", global = true)]
    pub max_body_bytes: Option<usize>,

    /// Seconds that running jobs get to finish after SIGTERM [default: 30].
    #[arg(long, env = "JOBD_SHUTDOWN_TIMEOUT_SECS", global = true)]
    pub shutdown_timeout_secs: Option<u64>,

    /// Enable the test kinds sleep, fail and panic [default: false].
    #[arg(long, env = "JOBD_TEST_KINDS", global = true, value_parser = clap::builder::BoolishValueParser::new())]
    pub test_kinds: Option<bool>,

    /// Fail every fsync of the queue after this many, as a dying disk would: tests what jobd does then. Never in production [default: off].
    #[arg(long, env = "JOBD_TEST_FAIL_SYNC_AFTER", global = true)]
    pub test_fail_sync_after: Option<u64>,

    /// Hold the queue thread this many ms when a cancel arrives, so that a fetch sent meanwhile shares its batch: tests that a cancelled job never starts. Never in production [default: off].
    #[arg(long, env = "JOBD_TEST_CANCEL_HOLD_MS", global = true)]
    pub test_cancel_hold_ms: Option<u64>,

    /// Make every fsync of the queue wait this many ms first, as a stalled disk would: tests what jobd does then. Never in production [default: off].
    #[arg(long, env = "JOBD_TEST_SYNC_DELAY_MS", global = true)]
    pub test_sync_delay_ms: Option<u64>,

    /// Most bytes of submissions waiting for their commit while the disk is slow; beyond it submissions get 503 [default: 67108864].
    #[arg(long, env = "JOBD_INGEST_MAX_PENDING_BYTES", global = true)]
    pub ingest_max_pending_bytes: Option<usize>,

    /// HTTP worker threads [default: the number of CPUs].
    #[arg(long, env = "JOBD_HTTP_WORKERS", global = true)]
    pub http_workers: Option<usize>,

    /// Queue backend: sqlite (durable, <data_dir>/queue.db) [default: sqlite].
    #[arg(long, env = "JOBD_QUEUE", global = true, value_enum)]
    pub queue: Option<QueueKind>,

    /// SQLite sync mode: full (a 202 survives power loss) or normal (survives a crash of jobd only) [default: full].
    #[arg(long, env = "JOBD_SQLITE_SYNCHRONOUS", global = true, value_enum)]
    pub sqlite_synchronous: Option<Synchronous>,

    /// The most bytes of claimed, not-yet-started jobs the Dispatcher holds in memory [default: 67108864].
    #[arg(long, env = "JOBD_WINDOW_MAX_BYTES", global = true)]
    pub window_max_bytes: Option<usize>,

    /// Largest size of queue.db in bytes; beyond it submissions get 503. 0 means no limit [default: 0].
    #[arg(long, env = "JOBD_QUEUE_DB_MAX_BYTES", global = true)]
    pub queue_db_max_bytes: Option<u64>,

    /// Seconds finished jobs stay readable, and idempotency keys remembered [default: 86400].
    #[arg(long, env = "JOBD_RETENTION_SECS", global = true)]
    pub retention_secs: Option<u64>,

    /// Commit concurrent submissions together, one fsync for many [default: true].
    #[arg(long, env = "JOBD_GROUP_COMMIT", global = true, value_parser = clap::builder::BoolishValueParser::new())]
    pub group_commit: Option<bool>,

    /// Attempts a job gets before it is dead, unless it gives its own [default: 25].
    #[arg(long, env = "JOBD_MAX_ATTEMPTS", global = true)]
    pub max_attempts: Option<u32>,

    /// Retry backoff: the first retry waits between half and all of this many ms, doubling per attempt [default: 1000].
    #[arg(long, env = "JOBD_RETRY_BASE_MS", global = true)]
    pub retry_base_ms: Option<u64>,

    /// Retry backoff: no retry waits longer than this many ms [default: 21600000].
    #[arg(long, env = "JOBD_RETRY_CAP_MS", global = true)]
    pub retry_cap_ms: Option<u64>,

    /// How long one attempt may run, in ms, unless the job or its kind says otherwise [default: 300000].
    #[arg(long, env = "JOBD_JOB_TIMEOUT_MS", global = true)]
    pub job_timeout_ms: Option<u64>,

    /// A custom S3 endpoint (MinIO, Ceph, R2...); implies path-style requests [default: AWS_ENDPOINT_URL, else AWS].
    #[arg(long, env = "JOBD_S3_ENDPOINT", global = true)]
    pub s3_endpoint: Option<String>,

    /// The S3 region [default: AWS_REGION / AWS_DEFAULT_REGION].
    #[arg(long, env = "JOBD_S3_REGION", global = true)]
    pub s3_region: Option<String>,

    /// Allow plain HTTP to the S3 endpoint [default: false].
    #[arg(long, env = "JOBD_S3_ALLOW_HTTP", global = true, value_parser = clap::builder::BoolishValueParser::new())]
    pub s3_allow_http: Option<bool>,

    /// Bodies at least this many bytes go up as multipart uploads [default: 8388608].
    #[arg(long, env = "JOBD_MULTIPART_THRESHOLD", global = true)]
    pub multipart_threshold: Option<usize>,

    /// The most uploads in flight at once, apart from max_workers [default: 16].
    #[arg(long, env = "JOBD_UPLOAD_CONCURRENCY", global = true)]
    pub upload_concurrency: Option<usize>,

    /// A second address that serves only /metrics, so scrapers need no access to the job API [default: none].
    #[arg(long, env = "JOBD_METRICS_LISTEN", global = true)]
    pub metrics_listen: Option<SocketAddr>,

    /// Bearer tokens, one `<name> <scopes> <token> [allowed_key_prefixes=a/,b/]` per line [default: $CREDENTIALS_DIRECTORY/tokens under systemd, else none: no authentication, loopback only].
    #[arg(long, env = "JOBD_TOKENS_FILE", global = true)]
    pub tokens_file: Option<PathBuf>,

    /// Allow listening on a non-loopback address without tokens_file [default: false].
    #[arg(long, env = "JOBD_ALLOW_UNAUTHENTICATED", global = true, value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_unauthenticated: Option<bool>,

    /// PEM certificate chain for HTTPS on the API listener; reloaded on SIGHUP [default: none, plain HTTP].
    #[arg(long, env = "JOBD_TLS_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for tls_cert; reloaded on SIGHUP [default: none].
    #[arg(long, env = "JOBD_TLS_KEY", global = true)]
    pub tls_key: Option<PathBuf>,

    /// Most jobs (or payloads) in one request; more get 413 [default: 10000].
    #[arg(long, env = "JOBD_MAX_JOBS_PER_REQUEST", global = true)]
    pub max_jobs_per_request: Option<usize>,

    /// Deepest nesting of JSON arrays and objects in a body, counted from the top; deeper gets 400 [default: 64].
    #[arg(long, env = "JOBD_MAX_JSON_DEPTH", global = true)]
    pub max_json_depth: Option<usize>,

    /// A client must send a request's headers within this many ms of connecting, or gets 408 [default: 5000].
    #[arg(long, env = "JOBD_CLIENT_REQUEST_TIMEOUT_MS", global = true)]
    pub client_request_timeout_ms: Option<u64>,

    /// A request's whole body must arrive within this many ms of its headers, or gets 408 [default: 30000].
    #[arg(long, env = "JOBD_CLIENT_BODY_TIMEOUT_MS", global = true)]
    pub client_body_timeout_ms: Option<u64>,

    /// How long a closing connection may take to shut down, in ms [default: 1000].
    #[arg(long, env = "JOBD_CLIENT_DISCONNECT_TIMEOUT_MS", global = true)]
    pub client_disconnect_timeout_ms: Option<u64>,

    /// Largest request head (request line and headers) in bytes; larger gets 431 [default: 32768].
    #[arg(long, env = "JOBD_MAX_HEADER_BYTES", global = true)]
    pub max_header_bytes: Option<usize>,

    /// Most open API connections; beyond it new ones wait in the listen backlog [default: 10000].
    #[arg(long, env = "JOBD_MAX_CONNECTIONS", global = true)]
    pub max_connections: Option<usize>,

    /// Webhook destinations, `[webhooks.<name>]` with `url`, `secrets` and options. File only.
    #[arg(skip)]
    pub webhooks: Option<std::collections::BTreeMap<String, crate::kinds::webhook::DestinationSettings>>,

    /// Per-kind attempt timeouts in ms, e.g. `[job_timeouts_ms] upload = 60000`. File only.
    #[arg(skip)]
    pub job_timeouts_ms: Option<std::collections::BTreeMap<String, u64>>,
}

impl Settings {
    /// `self` where set, else `lower`.
    fn or(self, lower: Settings) -> Settings {
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
            queue_db_max_bytes: self.queue_db_max_bytes.or(lower.queue_db_max_bytes),
            retention_secs: self.retention_secs.or(lower.retention_secs),
            group_commit: self.group_commit.or(lower.group_commit),
            max_attempts: self.max_attempts.or(lower.max_attempts),
            retry_base_ms: self.retry_base_ms.or(lower.retry_base_ms),
            retry_cap_ms: self.retry_cap_ms.or(lower.retry_cap_ms),
            job_timeout_ms: self.job_timeout_ms.or(lower.job_timeout_ms),
            job_timeouts_ms: self.job_timeouts_ms.or(lower.job_timeouts_ms),
            webhooks: self.webhooks.or(lower.webhooks),
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

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is invalid: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("{setting} must be {requirement}, got {value}")]
    OutOfRange { setting: &'static str, requirement: &'static str, value: String },
    #[error("data_dir {path} cannot be made absolute: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error(
        "listen = {listen} is not a loopback address and no tokens_file is set: anyone who reaches it could \
         submit and control jobs; set tokens_file, or allow_unauthenticated = true if a proxy in front authenticates"
    )]
    Unauthenticated { listen: SocketAddr },
    #[error("tls_cert and tls_key go together; only {given} is set")]
    TlsHalf { given: &'static str },
    #[error("{0}")]
    Webhook(String),
}

/// The effective configuration, every value resolved.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub store_url: String,
    pub key_prefix: String,
    pub max_workers: usize,
    pub max_queue: usize,
    pub max_body_bytes: usize,
    #[serde(serialize_with = "serialize_secs", rename = "shutdown_timeout_secs")]
    pub shutdown_timeout: Duration,
    pub test_kinds: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_fail_sync_after: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_cancel_hold_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_sync_delay_ms: Option<u64>,
    pub ingest_max_pending_bytes: usize,
    pub http_workers: usize,
    pub queue: QueueKind,
    pub window_max_bytes: usize,
    pub sqlite_synchronous: Synchronous,
    /// `None` means no limit.
    pub queue_db_max_bytes: Option<u64>,
    #[serde(serialize_with = "serialize_secs", rename = "retention_secs")]
    pub retention: Duration,
    pub group_commit: bool,
    pub max_attempts: u32,
    pub retry_base_ms: u64,
    pub retry_cap_ms: u64,
    pub job_timeout_ms: u64,
    pub job_timeouts_ms: std::collections::BTreeMap<String, u64>,
    /// Webhook destinations by name; their secrets are never printed.
    pub webhooks: std::collections::BTreeMap<String, crate::kinds::webhook::DestinationSettings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_region: Option<String>,
    pub s3_allow_http: bool,
    pub multipart_threshold: usize,
    pub upload_concurrency: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_file: Option<PathBuf>,
    pub allow_unauthenticated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    pub max_jobs_per_request: usize,
    pub max_json_depth: usize,
    pub client_request_timeout_ms: u64,
    pub client_body_timeout_ms: u64,
    pub client_disconnect_timeout_ms: u64,
    pub max_connections: usize,
    pub max_header_bytes: usize,
}

fn serialize_secs<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(duration.as_secs())
}

impl Config {
    /// Merges `cli` (flags and environment, which clap has already merged) over the
    /// file `config_file`, if any, over the defaults.
    pub fn load(cli: Settings, config_file: Option<&Path>) -> Result<Config, ConfigError> {
        // Under systemd, `ConfigurationDirectory=jobd` makes /etc/jobd/jobd.toml the default.
        let systemd_file = crate::systemd::configuration_file();
        let file = match config_file.or(systemd_file.as_deref()) {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
                toml::from_str::<Settings>(&text)
                    .map_err(|source| ConfigError::Parse { path: path.to_owned(), source: Box::new(source) })?
            }
            None => Settings::default(),
        };
        Config::resolve(cli.or(file))
    }

    /// Fills in defaults and checks every value.
    pub fn resolve(settings: Settings) -> Result<Config, ConfigError> {
        // Under systemd, `StateDirectory=jobd` (/var/lib/jobd) is the default.
        let relative_data_dir =
            settings.data_dir.or_else(crate::systemd::state_directory).unwrap_or_else(|| PathBuf::from("jobd-data"));
        let data_dir = std::path::absolute(&relative_data_dir)
            .map_err(|source| ConfigError::DataDir { path: relative_data_dir.clone(), source })?;
        let store_url = match settings.store_url {
            Some(url) => url,
            None => url::Url::from_directory_path(data_dir.join("objects")).map(String::from).map_err(|()| {
                ConfigError::OutOfRange {
                    setting: "data_dir",
                    requirement: "a path that can be written as a file:// URL",
                    value: data_dir.display().to_string(),
                }
            })?,
        };
        let config = Config {
            listen: settings.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            data_dir,
            store_url,
            key_prefix: settings.key_prefix.unwrap_or_else(|| "payloads".to_owned()),
            max_workers: settings.max_workers.unwrap_or(DEFAULT_MAX_WORKERS),
            max_queue: settings.max_queue.unwrap_or(DEFAULT_MAX_QUEUE),
            max_body_bytes: settings.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES),
            shutdown_timeout: Duration::from_secs(
                settings.shutdown_timeout_secs.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT_SECS),
            ),
            test_kinds: settings.test_kinds.unwrap_or(false),
            test_fail_sync_after: settings.test_fail_sync_after,
            test_cancel_hold_ms: settings.test_cancel_hold_ms,
            test_sync_delay_ms: settings.test_sync_delay_ms.filter(|&millis| millis > 0),
            ingest_max_pending_bytes: settings.ingest_max_pending_bytes.unwrap_or(DEFAULT_INGEST_MAX_PENDING_BYTES),
            http_workers: settings
                .http_workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from)),
            queue: settings.queue.unwrap_or(QueueKind::Sqlite),
            window_max_bytes: settings.window_max_bytes.unwrap_or(DEFAULT_WINDOW_MAX_BYTES),
            sqlite_synchronous: settings.sqlite_synchronous.unwrap_or(Synchronous::Full),
            queue_db_max_bytes: settings.queue_db_max_bytes.filter(|&bytes| bytes > 0),
            retention: Duration::from_secs(settings.retention_secs.unwrap_or(DEFAULT_RETENTION_SECS)),
            group_commit: settings.group_commit.unwrap_or(true),
            max_attempts: settings.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
            retry_base_ms: settings.retry_base_ms.unwrap_or(DEFAULT_RETRY_BASE_MS),
            retry_cap_ms: settings.retry_cap_ms.unwrap_or(DEFAULT_RETRY_CAP_MS),
            job_timeout_ms: settings.job_timeout_ms.unwrap_or(DEFAULT_JOB_TIMEOUT_MS),
            job_timeouts_ms: settings.job_timeouts_ms.unwrap_or_default(),
            webhooks: settings.webhooks.unwrap_or_default(),
            metrics_listen: settings.metrics_listen,
            s3_endpoint: settings.s3_endpoint,
            s3_region: settings.s3_region,
            s3_allow_http: settings.s3_allow_http.unwrap_or(false),
            multipart_threshold: settings.multipart_threshold.unwrap_or(8 * 1024 * 1024),
            upload_concurrency: settings.upload_concurrency.unwrap_or(16),
            // Under systemd, `LoadCredential=tokens:...` is the default token file.
            tokens_file: settings.tokens_file.or_else(|| crate::systemd::credential_path("tokens")),
            allow_unauthenticated: settings.allow_unauthenticated.unwrap_or(false),
            tls_cert: settings.tls_cert,
            tls_key: settings.tls_key,
            max_jobs_per_request: settings
                .max_jobs_per_request
                .unwrap_or(crate::submission::DEFAULT_MAX_JOBS_PER_REQUEST),
            max_json_depth: settings.max_json_depth.unwrap_or(crate::submission::DEFAULT_MAX_JSON_DEPTH),
            client_request_timeout_ms: settings.client_request_timeout_ms.unwrap_or(5_000),
            client_body_timeout_ms: settings.client_body_timeout_ms.unwrap_or(30_000),
            client_disconnect_timeout_ms: settings.client_disconnect_timeout_ms.unwrap_or(1_000),
            max_connections: settings.max_connections.unwrap_or(10_000),
            max_header_bytes: settings.max_header_bytes.unwrap_or(32_768),
        };
        config.check()?;
        Ok(config)
    }

    /// The durable queue's file.
    pub fn queue_path(&self) -> PathBuf {
        self.data_dir.join("queue.db")
    }

    /// What opening the queue needs.
    pub fn queue_settings(&self) -> QueueSettings {
        QueueSettings {
            kind: self.queue,
            data_dir: self.data_dir.clone(),
            capacity: self.max_queue,
            sqlite_synchronous: self.sqlite_synchronous,
            max_bytes: self.queue_db_max_bytes,
            test_fail_sync_after: self.test_fail_sync_after,
            test_cancel_hold: self.test_cancel_hold_ms.map(Duration::from_millis),
            test_sync_delay: self.test_sync_delay_ms.map(Duration::from_millis),
        }
    }

    /// How to build the object store.
    pub fn store_options(&self) -> crate::store::StoreOptions {
        crate::store::StoreOptions {
            key_prefix: self.key_prefix.clone(),
            s3_endpoint: self.s3_endpoint.clone(),
            s3_region: self.s3_region.clone(),
            s3_allow_http: self.s3_allow_http,
            multipart_threshold: self.multipart_threshold,
            upload_concurrency: self.upload_concurrency,
        }
    }

    /// The retry policy these settings describe.
    pub fn retry_policy(&self) -> crate::retry::RetryPolicy {
        crate::retry::RetryPolicy {
            base: Duration::from_millis(self.retry_base_ms),
            cap: Duration::from_millis(self.retry_cap_ms),
        }
    }

    /// The attempt timeouts these settings describe.
    pub fn timeouts(&self) -> crate::runner::Timeouts {
        crate::runner::Timeouts {
            default: Duration::from_millis(self.job_timeout_ms),
            by_kind: self.job_timeouts_ms.iter().map(|(kind, ms)| (kind.clone(), Duration::from_millis(*ms))).collect(),
        }
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.tokens_file.is_none() && !self.listen.ip().is_loopback() && !self.allow_unauthenticated {
            return Err(ConfigError::Unauthenticated { listen: self.listen });
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err(ConfigError::TlsHalf { given: "tls_cert" }),
            (None, Some(_)) => return Err(ConfigError::TlsHalf { given: "tls_key" }),
            _ => {}
        }
        let limits: [(&'static str, u64, u64, u64, &'static str); 7] = [
            ("max_attempts", u64::from(self.max_attempts), 1, 100, "between 1 and 100"),
            ("retry_base_ms", self.retry_base_ms, 1, 86_400_000, "between 1 and 86400000"),
            ("retry_cap_ms", self.retry_cap_ms, self.retry_base_ms, 604_800_000, "between retry_base_ms and 604800000"),
            ("job_timeout_ms", self.job_timeout_ms, 1, 86_400_000, "between 1 and 86400000"),
            ("client_request_timeout_ms", self.client_request_timeout_ms, 100, 600_000, "between 100 and 600000"),
            ("client_body_timeout_ms", self.client_body_timeout_ms, 100, 3_600_000, "between 100 and 3600000"),
            ("client_disconnect_timeout_ms", self.client_disconnect_timeout_ms, 0, 60_000, "between 0 and 60000"),
        ];
        for (setting, value, low, high, requirement) in limits {
            if !(low..=high).contains(&value) {
                return Err(ConfigError::OutOfRange { setting, requirement, value: value.to_string() });
            }
        }
        for (kind, ms) in &self.job_timeouts_ms {
            if !crate::kinds::all_names().any(|name| name == kind) || !(1..=86_400_000).contains(ms) {
                return Err(ConfigError::OutOfRange {
                    setting: "job_timeouts_ms",
                    requirement: "a table of known kinds to milliseconds between 1 and 86400000",
                    value: format!("{kind} = {ms}"),
                });
            }
        }
        crate::kinds::webhook::check_destinations(&self.webhooks).map_err(ConfigError::Webhook)?;
        if self.queue_db_max_bytes.is_some_and(|bytes| bytes < 65_536) {
            return Err(ConfigError::OutOfRange {
                setting: "queue_db_max_bytes",
                requirement: "0 (no limit) or at least 65536",
                value: format!("{:?}", self.queue_db_max_bytes),
            });
        }
        let ranges: [(&'static str, usize, usize, usize, &'static str); 12] = [
            ("window_max_bytes", self.window_max_bytes, 1 << 20, 1 << 40, "between 1 MiB and 1 TiB"),
            ("max_workers", self.max_workers, 1, 10_000, "between 1 and 10000"),
            ("max_queue", self.max_queue, 1, 100_000_000, "between 1 and 100000000"),
            ("max_body_bytes", self.max_body_bytes, 1024, 1 << 30, "between 1024 and 1073741824"),
            // The lowest bound still holds a few submissions while one commit waits.
            (
                "ingest_max_pending_bytes",
                self.ingest_max_pending_bytes,
                65_536,
                1 << 40,
                "between 65536 and 1099511627776",
            ),
            ("http_workers", self.http_workers, 1, 256, "between 1 and 256"),
            ("multipart_threshold", self.multipart_threshold, 5 << 20, 5 << 30, "between 5 MiB and 5 GiB"),
            ("upload_concurrency", self.upload_concurrency, 1, 1024, "between 1 and 1024"),
            ("max_jobs_per_request", self.max_jobs_per_request, 1, 1_000_000, "between 1 and 1000000"),
            // serde_json stops at 128 levels on its own; jobd's limit must be the one that speaks.
            ("max_json_depth", self.max_json_depth, 4, 128, "between 4 and 128"),
            ("max_connections", self.max_connections, 1, 1_000_000, "between 1 and 1000000"),
            // actix-http itself stops reading a head at 128 KiB, so a higher limit would never speak.
            ("max_header_bytes", self.max_header_bytes, 1024, 131_072, "between 1024 and 131072"),
        ];
        for (setting, value, low, high, requirement) in ranges {
            if !(low..=high).contains(&value) {
                return Err(ConfigError::OutOfRange { setting, requirement, value: value.to_string() });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jobd.toml");
        std::fs::write(&path, "max_workers = 3\nmax_queue = 50\n").expect("write");
        let cli = Settings { max_workers: Some(7), ..Settings::default() };
        let config = Config::load(cli, Some(&path)).expect("valid");
        assert_eq!((config.max_workers, config.max_queue), (7, 50));
        assert_eq!(config.listen, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert!(config.store_url.starts_with("file:///") && config.store_url.ends_with("/jobd-data/objects/"));
    }

    #[test]
    fn a_public_listener_needs_tokens_or_an_explicit_opt_out() {
        let public = SocketAddr::from(([0, 0, 0, 0], 8080));
        let open = Settings { listen: Some(public), ..Settings::default() };
        assert!(matches!(Config::resolve(open), Err(ConfigError::Unauthenticated { .. })));
        let opted_out = Settings { listen: Some(public), allow_unauthenticated: Some(true), ..Settings::default() };
        assert!(Config::resolve(opted_out).is_ok());
        let with_tokens =
            Settings { listen: Some(public), tokens_file: Some(PathBuf::from("tokens")), ..Settings::default() };
        assert!(Config::resolve(with_tokens).is_ok());
        let half_tls = Settings { tls_cert: Some(PathBuf::from("cert.pem")), ..Settings::default() };
        assert!(matches!(Config::resolve(half_tls), Err(ConfigError::TlsHalf { given: "tls_cert" })));
    }

    #[test]
    fn bad_values_and_unknown_keys_are_refused() {
        let zero = Settings { max_workers: Some(0), ..Settings::default() };
        assert!(matches!(Config::resolve(zero), Err(ConfigError::OutOfRange { setting: "max_workers", .. })));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jobd.toml");
        std::fs::write(&path, "max_wrokers = 3\n").expect("write");
        assert!(matches!(Config::load(Settings::default(), Some(&path)), Err(ConfigError::Parse { .. })));
    }
}
