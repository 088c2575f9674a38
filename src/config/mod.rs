//! Configuration: the command line, the environment and a TOML file, merged in that order
//! of precedence over built-in defaults, and checked before anything starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;

mod settings;

pub use self::settings::Settings;
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
/// Default `lease_secs`: a node heartbeats every second, so five seconds ride out four
/// lost heartbeats (a GC-free process rarely misses one) and still let another node
/// rescue a dead node's jobs within about six seconds, well inside the ten promised.
pub const DEFAULT_LEASE_SECS: u64 = 5;
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
/// workers, uploads payloads to an object store and delivers signed webhooks.
///
/// `jobd serve` runs the daemon (`jobd serve --help` lists its settings); the other
/// commands check its configuration, make tokens, or talk to a running jobd.
#[derive(Debug, Parser)]
#[command(name = "jobd", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What the daemon's commands (`serve`, `check-config`) read: the configuration file,
/// the log format and every setting. Client commands have none of these, so that their
/// help shows their own flags.
///
/// Settings come from, highest first: command-line flags, JOBD_* environment variables,
/// the TOML file (keys as the flags, with underscores), built-in defaults.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// A TOML configuration file. Without it, the first that exists of
    /// $CONFIGURATION_DIRECTORY/jobd.toml (under systemd), ./jobd.toml and
    /// /etc/jobd/jobd.toml is read; with none, the built-in defaults apply.
    #[arg(long, env = "JOBD_CONFIG")]
    pub config: Option<PathBuf>,

    /// Log format: human-readable text, or one JSON object per line.
    #[arg(long, env = "JOBD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub settings: Settings,
}

/// What to do.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the daemon until SIGTERM or SIGINT.
    Serve(ServerArgs),
    /// Validate the configuration, print it, and exit non-zero on error.
    CheckConfig {
        /// Also check once that the object store answers (e.g. the S3 bucket is reachable).
        #[arg(long)]
        probe: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Manage bearer tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Submit JSON lines (one job, or one payload with --payloads, per line) to a running
    /// jobd, in batches, waiting out 429 and 503 as Retry-After asks.
    Submit {
        #[command(flatten)]
        connection: crate::client::ConnectionArgs,
        #[command(flatten)]
        args: crate::client::SubmitArgs,
    },
    /// Read and act on jobs of a running jobd.
    Jobs {
        #[command(flatten)]
        connection: crate::client::ConnectionArgs,
        #[command(subcommand)]
        command: crate::client::JobsCommand,
    },
    /// Read, pause and resume the named queues of a running jobd.
    Queues {
        #[command(flatten)]
        connection: crate::client::ConnectionArgs,
        #[command(subcommand)]
        command: crate::client::QueuesCommand,
    },
    /// Print a running jobd's queue depth, workers and counters.
    Stats {
        #[command(flatten)]
        connection: crate::client::ConnectionArgs,
        /// Print again every this many seconds, until interrupted.
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<u64>,
    },
}

/// `jobd token ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum TokenCommand {
    /// Print a line for the token file with a new random token:
    /// `<name> <scopes> <token> [<option>=<items>]...`. Append it to the file
    /// (`>> tokens`), then reload jobd (SIGHUP) or start it. The client commands'
    /// --token-file reads such a line as well as a bare token.
    New {
        /// The token's name, shown in logs and metrics: letters, digits, '-', '_', '.'.
        name: String,
        /// Comma-separated scopes: submit, read, admin (admin retries and cancels jobs).
        scopes: String,
        /// Confinements, as the token file spells them: `allowed_key_prefixes=a/,b/`
        /// confines uploads (and the token's view of jobs) to keys under those prefixes,
        /// `allowed_destinations=billing,crm` confines webhooks to those destinations.
        #[arg(value_name = "OPTION=ITEMS")]
        options: Vec<String>,
    },
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
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
    #[error(
        "{path} was found, not named, and another user owns it or others may write it: not read; name it with \
         --config to use it anyway"
    )]
    UntrustedFile { path: PathBuf },
    #[error("tls_cert and tls_key go together; only {given} is set")]
    TlsHalf { given: &'static str },
    /// A kind's own table of the file (`[webhooks.<name>]`) does not hold.
    #[error("{0}")]
    KindTable(String),
    /// A `[queues.<name>]` table does not hold.
    #[error("{0}")]
    Queues(String),
    #[error(
        "{setting} is a test hook (it breaks the queue's disk on purpose or holds its thread): only a debug build, \
         the one the tests run, accepts it"
    )]
    TestHookInRelease { setting: &'static str },
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
    /// The queue's test hooks, printed only when set; a release build refuses them.
    #[serde(flatten)]
    pub test_hooks: crate::queue::TestHooks,
    pub ingest_max_pending_bytes: usize,
    pub http_workers: usize,
    pub queue: QueueKind,
    pub window_max_bytes: usize,
    pub sqlite_synchronous: Synchronous,
    /// `queue = "postgres"`'s server; its password, if the URL has one, is never printed.
    #[serde(serialize_with = "serialize_redacted_url")]
    pub postgres_url: Option<String>,
    pub node_name: String,
    #[serde(rename = "lease_secs", serialize_with = "serialize_secs")]
    pub lease: Duration,
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
    /// The `[queues.<name>]` tables; `default` exists whether or not it has one.
    pub queues: std::collections::BTreeMap<String, crate::queues::QueueTable>,
    /// The file the settings were read from, if any; `check-config` prints it as a
    /// comment and `serve` logs it, since it is no setting.
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
    /// The kinds' own tables of the file, by key, printed as each kind describes it (a
    /// webhook destination without its secrets).
    #[serde(flatten, serialize_with = "serialize_kind_tables")]
    pub kind_tables: std::collections::BTreeMap<String, toml::Value>,
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

/// The URL with its password, if any, replaced by `***`.
fn serialize_redacted_url<S: serde::Serializer>(url: &Option<String>, serializer: S) -> Result<S::Ok, S::Error> {
    match url {
        None => serializer.serialize_none(),
        Some(text) => serializer.serialize_some(&crate::queue::redacted_url(text)),
    }
}

/// The host's name, for `node_name`'s default; `jobd` if it cannot be read.
fn host_name() -> String {
    nix::unistd::gethostname().ok().and_then(|name| name.into_string().ok()).unwrap_or_else(|| "jobd".to_owned())
}

fn serialize_secs<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(duration.as_secs())
}

/// Reads a configuration file: the kinds' own tables ([`crate::kinds::SettingsTable`]) are
/// taken out first and kept as they are, for their kinds; the rest must be settings jobd
/// knows, so that a misspelt key is refused.
fn parse_file(text: &str) -> Result<Settings, toml::de::Error> {
    let mut table: toml::Table = toml::from_str(text)?;
    let kind_tables: std::collections::BTreeMap<String, toml::Value> = crate::kinds::settings_tables()
        .filter_map(|kind_table| Some((kind_table.key.to_owned(), table.remove(kind_table.key)?)))
        .collect();
    let settings: Settings = toml::Value::Table(table).try_into()?;
    Ok(Settings { kind_tables, ..settings })
}

/// Prints the kinds' own tables as each kind describes them.
fn serialize_kind_tables<S: serde::Serializer>(
    tables: &std::collections::BTreeMap<String, toml::Value>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap as _;
    let mut map = serializer.serialize_map(Some(tables.len()))?;
    for kind_table in crate::kinds::settings_tables() {
        if let Some(value) = tables.get(kind_table.key) {
            map.serialize_entry(kind_table.key, &(kind_table.describe)(value))?;
        }
    }
    map.end()
}

/// Where the configuration file is looked for when neither `--config` nor `JOBD_CONFIG`
/// names one, in order, after systemd's `$CONFIGURATION_DIRECTORY/jobd.toml`: the working
/// directory, where a newcomer writes it, then the packaged location.
pub const CONFIG_SEARCH: [&str; 2] = ["jobd.toml", "/etc/jobd/jobd.toml"];

/// The first configuration file that exists: systemd's, then [`CONFIG_SEARCH`]'s. A file
/// found in the working directory is named by its absolute path, for the log.
fn search_config_file() -> Result<Option<PathBuf>, ConfigError> {
    if let Some(file) = crate::systemd::configuration_file() {
        return Ok(Some(file));
    }
    let Some(found) = CONFIG_SEARCH.iter().map(Path::new).find(|path| path.is_file()) else { return Ok(None) };
    let path = std::path::absolute(found).unwrap_or_else(|_| found.to_owned());
    refuse_if_others_control(&path)?;
    Ok(Some(path))
}

/// Refuses a file that was found rather than named, when someone else could have put it
/// there or changed it: owned by another user than this process's or root, or writable by
/// its group or by others. Started from a shared directory (`/tmp`), jobd would otherwise
/// take its listener, tokens and store from whoever wrote `jobd.toml` there. Naming the
/// file with `--config` uses it as it is.
fn refuse_if_others_control(path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::MetadataExt as _;
    let metadata = std::fs::metadata(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    // The process's own user, without a system call of our own: `/proc/self` belongs to it.
    let own_user = std::fs::metadata("/proc/self").map(|own| own.uid()).ok();
    let foreign_owner = metadata.uid() != 0 && own_user.is_some_and(|own| own != metadata.uid());
    let writable_by_others = metadata.mode() & 0o022 != 0;
    if foreign_owner || writable_by_others {
        return Err(ConfigError::UntrustedFile { path: path.to_owned() });
    }
    Ok(())
}

impl Config {
    /// Merges `cli` (flags and environment, which clap has already merged) over the
    /// file `config_file`, or the first file of [`CONFIG_SEARCH`] that exists, over the
    /// defaults.
    pub fn load(cli: Settings, config_file: Option<&Path>) -> Result<Config, ConfigError> {
        let path = match config_file {
            Some(named) => Some(named.to_owned()),
            None => search_config_file()?,
        };
        let file = match &path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
                parse_file(&text)
                    .map_err(|source| ConfigError::Parse { path: path.to_owned(), source: Box::new(source) })?
            }
            None => Settings::default(),
        };
        let mut config = Config::resolve(cli.or(file))?;
        config.config_file = path;
        Ok(config)
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
            test_hooks: crate::queue::TestHooks {
                test_fail_sync_after: settings.test_fail_sync_after,
                test_cancel_hold_ms: settings.test_cancel_hold_ms,
                test_sync_delay_ms: settings.test_sync_delay_ms.filter(|&millis| millis > 0),
            },
            ingest_max_pending_bytes: settings.ingest_max_pending_bytes.unwrap_or(DEFAULT_INGEST_MAX_PENDING_BYTES),
            http_workers: settings
                .http_workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from)),
            queue: settings.queue.unwrap_or(QueueKind::Sqlite),
            window_max_bytes: settings.window_max_bytes.unwrap_or(DEFAULT_WINDOW_MAX_BYTES),
            sqlite_synchronous: settings.sqlite_synchronous.unwrap_or(Synchronous::Full),
            postgres_url: settings.postgres_url.filter(|url| !url.is_empty()),
            node_name: settings.node_name.unwrap_or_else(host_name),
            lease: Duration::from_secs(settings.lease_secs.unwrap_or(DEFAULT_LEASE_SECS)),
            queue_db_max_bytes: settings.queue_db_max_bytes.filter(|&bytes| bytes > 0),
            retention: Duration::from_secs(settings.retention_secs.unwrap_or(DEFAULT_RETENTION_SECS)),
            group_commit: settings.group_commit.unwrap_or(true),
            max_attempts: settings.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
            retry_base_ms: settings.retry_base_ms.unwrap_or(DEFAULT_RETRY_BASE_MS),
            retry_cap_ms: settings.retry_cap_ms.unwrap_or(DEFAULT_RETRY_CAP_MS),
            job_timeout_ms: settings.job_timeout_ms.unwrap_or(DEFAULT_JOB_TIMEOUT_MS),
            job_timeouts_ms: settings.job_timeouts_ms.unwrap_or_default(),
            queues: settings.queues.unwrap_or_default(),
            config_file: None,
            kind_tables: settings.kind_tables,
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
    pub fn queue_settings(&self, node: crate::queue::NodeId) -> QueueSettings {
        QueueSettings {
            kind: self.queue,
            node,
            cluster: self.postgres_url.as_ref().map(|url| crate::queue::ClusterSettings {
                url: url.clone(),
                node_name: self.node_name.clone(),
                lease: self.lease,
            }),
            data_dir: self.data_dir.clone(),
            capacity: self.max_queue,
            sqlite_synchronous: self.sqlite_synchronous,
            max_bytes: self.queue_db_max_bytes,
            test_hooks: self.test_hooks,
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

    /// Refuses the test hooks in a release build (`release`): they fail or stall the
    /// queue's fsyncs, or hold the queue thread, on purpose, and an operator who set one by
    /// mistake would lose the daemon's durability or its speed without a word.
    fn refuse_test_hooks(&self, release: bool) -> Result<(), ConfigError> {
        self.test_hooks.refuse_in_release(release).map_err(|setting| ConfigError::TestHookInRelease { setting })
    }

    fn check(&self) -> Result<(), ConfigError> {
        self.refuse_test_hooks(!cfg!(debug_assertions))?;
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
        crate::queues::check_tables(&self.queues).map_err(ConfigError::Queues)?;
        for table in crate::kinds::settings_tables() {
            if let Some(value) = self.kind_tables.get(table.key) {
                (table.check)(value).map_err(ConfigError::KindTable)?;
            }
        }
        if self.queue == QueueKind::Postgres && self.postgres_url.is_none() {
            return Err(ConfigError::OutOfRange {
                setting: "postgres_url",
                requirement: "set when queue = \"postgres\" (e.g. postgresql://jobd@db.internal/jobd)",
                value: "nothing".to_owned(),
            });
        }
        if let Some(url) = &self.postgres_url {
            crate::queue::check_postgres_url(url).map_err(|problem| ConfigError::OutOfRange {
                setting: "postgres_url",
                requirement: "a libpq-style URL, postgresql://user@host:port/database",
                value: format!("{} ({problem})", crate::queue::redacted_url(url)),
            })?;
        }
        if self.node_name.is_empty() || self.node_name.len() > 128 {
            return Err(ConfigError::OutOfRange {
                setting: "node_name",
                requirement: "1 to 128 bytes",
                value: self.node_name.clone(),
            });
        }
        if !(2..=600).contains(&self.lease.as_secs()) {
            return Err(ConfigError::OutOfRange {
                setting: "lease_secs",
                requirement: "between 2 and 600 (heartbeats come every second)",
                value: self.lease.as_secs().to_string(),
            });
        }
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
    fn a_release_build_refuses_every_test_hook_and_a_debug_build_takes_them() {
        let plain = Config::resolve(Settings::default()).expect("the defaults");
        assert!(plain.refuse_test_hooks(true).is_ok(), "no hook set: a release build starts");
        let hooked = [
            ("test_fail_sync_after", Settings { test_fail_sync_after: Some(40), ..Settings::default() }),
            ("test_cancel_hold_ms", Settings { test_cancel_hold_ms: Some(200), ..Settings::default() }),
            ("test_sync_delay_ms", Settings { test_sync_delay_ms: Some(500), ..Settings::default() }),
        ];
        for (hook, settings) in hooked {
            // The tests run a debug build, which takes the hook.
            let config = Config::resolve(settings).expect("a debug build takes the hook");
            assert!(config.refuse_test_hooks(false).is_ok());
            let refused = config.refuse_test_hooks(true).expect_err("a release build refuses it");
            assert!(matches!(refused, ConfigError::TestHookInRelease { setting } if setting == hook), "{refused}");
            assert!(refused.to_string().starts_with(hook), "the message names the setting: {refused}");
        }
    }

    /// The webhook kind's `[webhooks.<name>]` tables reach the kind unread by `config/`,
    /// are checked as jobd starts, and print without their secrets.
    #[test]
    fn a_kinds_own_table_is_kept_for_it_checked_and_printed_without_secrets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("jobd.toml");
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let file = format!(
            "max_workers = 3\n[webhooks.billing]\nurl = \"http://127.0.0.1:9/hook\"\nsecrets = [\"{secret}\"]\n"
        );
        std::fs::write(&path, file).expect("write");
        let config = Config::load(Settings::default(), Some(&path)).expect("a valid destination");
        assert_eq!(config.max_workers, 3, "the rest of the file is read as before");
        assert!(config.kind_tables.contains_key("webhooks"));
        let printed = toml::to_string(&config).expect("printable as TOML");
        assert!(printed.contains("[webhooks.billing]") && printed.contains("127.0.0.1:9"), "{printed}");
        assert!(!printed.contains("MfKQ9r8G"), "a secret was printed: {printed}");
        std::fs::write(&path, "[webhooks.billing]\nurl = \"http://127.0.0.1:9/hook\"\nsecretz = []\n").expect("write");
        let error = Config::load(Settings::default(), Some(&path)).expect_err("an unknown field of a destination");
        assert!(matches!(&error, ConfigError::KindTable(message) if message.contains("secretz")), "{error}");
        std::fs::write(&path, "[webhook.billing]\nurl = \"http://127.0.0.1:9/hook\"\n").expect("write");
        let error = Config::load(Settings::default(), Some(&path)).expect_err("a table no kind reads");
        assert!(matches!(error, ConfigError::Parse { .. }), "{error}");
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
