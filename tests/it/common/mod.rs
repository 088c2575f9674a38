//! Test harness: starts the real `jobd` binary on a free loopback port with its own data
//! directory, captures its JSON logs, and talks HTTP to it.

#![allow(dead_code)] // Some helpers serve only the PostgreSQL pass or one platform.

pub mod netns;
pub mod pki;
pub mod postgres;
pub mod proxy;
pub mod receiver;
pub mod s3;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a daemon may take to start before the test fails. Generous: it guards
/// against a hang, it measures nothing.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long `wait_for` polls before failing a test; a safety net, not a timing assertion.
pub const WAIT_DEADLINE: Duration = Duration::from_secs(120);

/// A running daemon, killed when dropped.
pub struct Daemon {
    child: Child,
    pub base: String,
    pub logs: Arc<Mutex<Vec<String>>>,
    /// Always `Some` until [`Daemon::into_data_dir`] takes it.
    data_dir: Option<tempfile::TempDir>,
    /// The thread that copies the daemon's log lines into `logs`; joined after exit so
    /// that `logs` holds every line.
    log_reader: Option<std::thread::JoinHandle<()>>,
    pub client: reqwest::Client,
}

impl Daemon {
    /// Starts `jobd serve` with test kinds enabled and `env` on top.
    pub fn start(env: &[(&str, &str)]) -> Daemon {
        let data_dir = tempfile::tempdir().expect("temporary data dir");
        Self::start_in(data_dir, env)
    }

    /// Starts `jobd serve` on an existing data directory.
    pub fn start_in(data_dir: tempfile::TempDir, env: &[(&str, &str)]) -> Daemon {
        let mut command = Command::new(env!("CARGO_BIN_EXE_jobd"));
        command.arg("serve");
        // The test must not inherit a developer's settings.
        for (key, _) in std::env::vars() {
            if key.starts_with("JOBD_") {
                command.env_remove(key);
            }
        }
        command
            .env("JOBD_LISTEN", "127.0.0.1:0")
            .env("JOBD_DATA_DIR", data_dir.path())
            .env("JOBD_LOG_FORMAT", "json")
            .env("JOBD_LOG", "info,jobd=debug")
            .env("JOBD_TEST_KINDS", "1")
            // Nor a configuration file it finds (./jobd.toml, /etc/jobd/jobd.toml): an
            // empty file, unless the test names its own.
            .env("JOBD_CONFIG", "/dev/null");
        if let Some(url) = postgres_pass_database(data_dir.path()) {
            command.env("JOBD_QUEUE", "postgres").env("JOBD_POSTGRES_URL", url);
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child =
            command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("start jobd");
        let stderr = child.stderr.take().expect("stderr is piped");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addr_sender, addr_receiver) = mpsc::channel();
        let sink = logs.clone();
        let log_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(value) = serde_json::from_str::<Value>(&line) {
                    if value["message"] == "jobd listening" {
                        let _ = addr_sender.send(value["addr"].as_str().unwrap_or_default().to_owned());
                    }
                }
                sink.lock().expect("log lock").push(line);
            }
        });
        let addr = match addr_receiver.recv_timeout(START_DEADLINE) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("jobd did not start; logs:\n{}", logs.lock().expect("log lock").join("\n"));
            }
        };
        Daemon {
            child,
            base: format!("http://{addr}"),
            logs,
            data_dir: Some(data_dir),
            log_reader: Some(log_reader),
            // The client drops idle connections before the daemon's keep-alive (actix's 5 s)
            // closes them: a request sent on a connection as the server closes it fails
            // with a broken pipe, which a POST with a large body is not retried after (seen
            // once under load, on a 20 MiB upload sent 5 s after the last poll).
            client: reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(2)).build().expect("HTTP client"),
        }
    }

    /// The data directory.
    pub fn data_path(&self) -> &Path {
        self.data_dir.as_ref().expect("data dir present until into_data_dir").path()
    }

    /// The default `file://` store root.
    pub fn objects_dir(&self) -> PathBuf {
        self.data_path().join("objects")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL and hands back its data directory, for a restart.
    /// Every line it logged is in `logs` by then.
    pub fn kill_9(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.finish_logs();
        self.data_dir.take().expect("data dir present")
    }

    /// Hands back the data directory of a daemon that exited by itself (see
    /// [`Daemon::wait_exit`]), for a restart.
    pub fn into_data_dir(mut self) -> tempfile::TempDir {
        assert!(self.child.try_wait().expect("try_wait").is_some(), "jobd is still running");
        self.finish_logs();
        self.data_dir.take().expect("data dir present")
    }

    fn finish_logs(&mut self) {
        if let Some(reader) = self.log_reader.take() {
            let _ = reader.join();
        }
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        self.proc_status_kib("VmRSS:")
    }

    /// The highest resident set size the process has had, in KiB, from /proc: it catches
    /// a peak that a reading taken after the requests were answered would miss.
    pub fn peak_rss_kib(&self) -> u64 {
        self.proc_status_kib("VmHWM:")
    }

    fn proc_status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("read status");
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} line in /proc/<pid>/status"))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs a JSON value.
    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client.post(self.url(path)).json(body).send().await.expect("POST")
    }

    /// POSTs raw bytes with a Content-Type.
    pub async fn post_raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> reqwest::Response {
        self.client.post(self.url(path)).header("content-type", content_type).body(body).send().await.expect("POST")
    }

    /// `GET /v1/jobs/{id}` as JSON, or `None` for a 404.
    pub async fn job(&self, id: &str) -> Option<Value> {
        let response = self.client.get(self.url(&format!("/v1/jobs/{id}"))).send().await.expect("GET job");
        match response.status().as_u16() {
            200 => Some(response.json().await.expect("job JSON")),
            404 => None,
            other => panic!("GET /v1/jobs/{id} answered {other}: {}", response.text().await.unwrap_or_default()),
        }
    }

    /// Polls a job's record until `done` holds for it; fails the test after [`WAIT_DEADLINE`].
    pub async fn wait_for_job(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT_DEADLINE;
        loop {
            let record = self.job(id).await.unwrap_or_default();
            if done(&record) {
                return record;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; last record: {record}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every record of a listing of `state`, following its cursors.
    pub async fn list_all(&self, state: &str) -> Vec<Value> {
        let mut records = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut url = self.url(&format!("/v1/jobs?state={state}&limit=1000"));
            if let Some(cursor) = &cursor {
                url.push_str(&format!("&cursor={cursor}"));
            }
            let page: Value = self.client.get(url).send().await.expect("GET").json().await.expect("JSON");
            records.extend(page["jobs"].as_array().expect("jobs").iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return records,
            }
        }
    }

    /// The value of one series in a scrape of `/metrics`, named with its labels as
    /// Prometheus prints them (`jobd_store_up`, `jobd_jobs_finished_total{kind="noop",...}`).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        // A daemon that was stopped (SIGSTOP) closes its idle keep-alive connections when
        // it continues, and a request sent on one just then fails without an answer: a GET
        // is safe to send again, on a new connection.
        let mut attempts = 0;
        let response = loop {
            attempts += 1;
            match self.client.get(self.url("/metrics")).send().await {
                Ok(response) => break response,
                Err(error) if attempts < 3 && error.is_request() => continue,
                Err(error) => panic!("GET /metrics: {error}"),
            }
        };
        let scrape = without_queue_label(&response.text().await.expect("text"));
        scrape.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// `GET /v1/stats`.
    pub async fn stats(&self) -> Value {
        let response = self.client.get(self.url("/v1/stats")).send().await.expect("GET stats");
        assert_eq!(response.status(), 200);
        response.json().await.expect("stats JSON")
    }

    /// Polls `/v1/stats` until `done` holds for it; fails the test after [`WAIT_DEADLINE`].
    pub async fn wait_for(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT_DEADLINE;
        loop {
            let stats = self.stats().await;
            if done(&stats) {
                return stats;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; last stats: {stats}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends a signal by name (TERM, INT, KILL).
    pub fn signal(&self, name: &str) {
        let status =
            Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status().expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit; fails the test after [`WAIT_DEADLINE`].
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.finish_logs();
                return status;
            }
            assert!(Instant::now() < deadline, "jobd did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `count` captured log records match `matches`; the log pipe is read
    /// by another thread, so lines can trail the HTTP answers a little.
    pub async fn wait_for_logs(&self, what: &str, count: usize, matches: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + WAIT_DEADLINE;
        loop {
            let found: Vec<Value> = self.log_records().into_iter().filter(|record| matches(record)).collect();
            if found.len() >= count {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {count} log lines: {what}; found {}",
                found.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every captured log line that parses as JSON.
    pub fn log_records(&self) -> Vec<Value> {
        self.logs.lock().expect("log lock").iter().filter_map(|line| serde_json::from_str(line).ok()).collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The environment variable that runs the suite's daemons on PostgreSQL instead of SQLite
/// (`scripts/test.sh` runs the HTTP tests a second time with it set).
pub const POSTGRES_PASS: &str = "JOBD_TEST_POSTGRES";

/// Whether this run's daemons keep their queue in PostgreSQL.
pub fn on_postgres() -> bool {
    std::env::var_os(POSTGRES_PASS).is_some()
}

/// Skips a test that checks what only the SQLite backend has (its file, its fsyncs): says
/// so, and tells the caller to return.
pub fn sqlite_only(what: &str) -> bool {
    if on_postgres() {
        eprintln!("skipped on the PostgreSQL pass: {what} is SQLite's");
    }
    on_postgres()
}

/// On the PostgreSQL pass, the database of the daemon whose data directory is `data_dir`:
/// a new one in this test binary's private cluster, remembered in the directory so that a
/// restart on it finds its queue again.
fn postgres_pass_database(data_dir: &Path) -> Option<String> {
    static CLUSTER: std::sync::OnceLock<postgres::Cluster> = std::sync::OnceLock::new();
    if !on_postgres() {
        return None;
    }
    let remembered = data_dir.join("test-postgres-url");
    if let Ok(url) = std::fs::read_to_string(&remembered) {
        return Some(url);
    }
    // Never dropped: the cluster's watchdog stops it once this test binary exits.
    let url = CLUSTER.get_or_init(postgres::Cluster::start).new_database();
    std::fs::write(&remembered, &url).expect("remember the database");
    Some(url)
}

/// The ids of a 202 answer, in order.
pub async fn accepted_ids(response: reqwest::Response) -> Vec<String> {
    assert_eq!(response.status(), 202, "expected 202 Accepted");
    let body: Value = response.json().await.expect("JSON answer");
    body["jobs"]
        .as_array()
        .expect("jobs array")
        .iter()
        .map(|job| {
            assert!(job["state"] == "queued" || job["state"] == "scheduled", "{job}");
            job["id"].as_str().expect("id").to_owned()
        })
        .collect()
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return found };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// Finished-job counts from a stats answer.
/// Whether a job's record shows the outcome of its latest attempt: neither waiting for its
/// first start nor running.
pub fn settled(record: &Value) -> bool {
    !matches!(record["state"].as_str(), None | Some("queued" | "running" | "scheduled"))
}

pub fn finished(stats: &Value) -> u64 {
    let counters = &stats["counters"]["jobs"];
    ["succeeded", "failed", "panicked"].iter().map(|key| counters[key].as_u64().unwrap_or(0)).sum()
}

/// A scrape with the queue-wide series' `queue_id` label taken out (`jobd_queue_depth{queue_id="…",
/// state="queued"}` reads `jobd_queue_depth{state="queued"}`), for tests of one daemon,
/// which has one queue: they name a series by its other labels.
pub fn without_queue_label(scrape: &str) -> String {
    let mut out = String::with_capacity(scrape.len());
    for line in scrape.lines() {
        let Some(start) = line.find("queue_id=\"") else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let value_end = line[start + 10..].find('"').map_or(line.len(), |end| start + 10 + end + 1);
        let (mut before, mut after) = (&line[..start], &line[value_end..]);
        if let Some(rest) = after.strip_prefix(',') {
            after = rest;
        } else if let Some(rest) = before.strip_suffix(',') {
            before = rest;
        }
        let joined = format!("{before}{after}");
        out.push_str(&joined.replace("{}", ""));
        out.push('\n');
    }
    out
}
