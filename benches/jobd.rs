//! The jobd benchmark: starts release builds of jobd on temporary data directories, drives
//! them over real HTTP with its own keep-alive load generator, and prints every figure
//! beside the HTTP ceiling measured in the same run. Writes `target/jobd-bench.json` and
//! `BENCHMARKS.md`. Run with `cargo bench --bench jobd`; (10) to (13) are PostgreSQL's
//! (`benches/jobd/postgres.rs`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[path = "jobd/postgres.rs"]
mod postgres;
#[path = "jobd/queues.rs"]
mod queues;

use futures_util::StreamExt as _;
use object_store::ObjectStoreExt as _;
use serde_json::{Value, json};

const CONNECTIONS: usize = 64;
const WARM_UP: Duration = Duration::from_secs(1);
const MEASURE: Duration = Duration::from_secs(5);
const END_TO_END_JOBS: u64 = 1_000_000;
const UPLOAD_JOBS: u64 = 50_000;
/// (6) alternates jobd and the plain loop in this many rounds of `UPLOAD_JOBS / UPLOAD_ROUNDS`.
const UPLOAD_ROUNDS: u64 = 4;
const WEBHOOK_JOBS: u64 = 100_000;
/// (9) alternates jobd's deliveries and the plain loop in this many rounds.
const WEBHOOK_ROUNDS: u64 = 4;
/// The default in-flight limit of a webhook destination: (9)'s plain loop posts this many
/// at once too.
const WEBHOOK_CONCURRENCY: usize = 8;

/// A release jobd on a temporary data directory, killed when dropped.
struct Daemon {
    child: Child,
    base: String,
    data_dir: Option<tempfile::TempDir>,
    started: Instant,
    listening_after: Duration,
}

impl Daemon {
    fn start(env: &[(&str, &str)]) -> Daemon {
        Self::start_in(tempfile::tempdir().expect("tempdir"), env)
    }

    fn start_in(data_dir: tempfile::TempDir, env: &[(&str, &str)]) -> Daemon {
        let started = Instant::now();
        // `JOBD_BENCH_BINARY` runs another build (an earlier commit's, for an A/B table)
        // under the same load generator.
        let binary = std::env::var_os("JOBD_BENCH_BINARY").unwrap_or_else(|| env!("CARGO_BIN_EXE_jobd").into());
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .env("JOBD_LISTEN", "127.0.0.1:0")
            .env("JOBD_DATA_DIR", data_dir.path())
            .env("JOBD_LOG_FORMAT", "json")
            .env("JOBD_LOG", "warn,jobd::server=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start jobd");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let addr = loop {
            let line = lines.next().expect("jobd exited before listening").expect("read log");
            let record: Value = serde_json::from_str(&line).unwrap_or_default();
            if record["message"] == "jobd listening" {
                break record["addr"].as_str().expect("addr").to_owned();
            }
        };
        let listening_after = started.elapsed();
        // Keep draining the pipe so that the daemon never blocks on a full one.
        std::thread::spawn(move || lines.for_each(drop));
        Daemon { child, base: format!("http://{addr}"), data_dir: Some(data_dir), started, listening_after }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("status");
        let kib: f64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kib / 1024.0
    }

    fn kill_9(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.data_dir.take().expect("data dir")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Throughput {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

type RequestFactory = Arc<dyn Fn(&reqwest::Client) -> reqwest::RequestBuilder + Send + Sync>;

/// `CONNECTIONS` clients on keep-alive connections. Closed loop (each sends the next request
/// when the last is answered) unless `rate` paces them open loop at that total rate.
async fn drive(client: &reqwest::Client, request: RequestFactory, expected: u16, rate: Option<f64>) -> Throughput {
    sample(client, request, expected, rate, WARM_UP, MEASURE, None).await.throughput()
}

/// Latencies of the answers that arrived while measuring, and how long that was.
/// With `cpu_of` given, also the CPU time that the client and jobd's threads used meanwhile.
#[derive(Default)]
struct Samples {
    latencies: Vec<Duration>,
    measured: Duration,
    cpu: CpuTimes,
}

impl Samples {
    fn add(mut self, other: Samples) -> Samples {
        self.latencies.extend(other.latencies);
        self.measured += other.measured;
        self.cpu.add(&other.cpu);
        self
    }

    /// CPU microseconds per answered request, by thread group.
    fn cpu_per_request(&self) -> CpuTimes {
        let requests = self.latencies.len().max(1) as u32;
        CpuTimes {
            client: self.cpu.client / requests,
            jobd: self.cpu.jobd.iter().map(|(group, time)| (*group, *time / requests)).collect(),
        }
    }

    fn throughput(mut self) -> Throughput {
        self.latencies.sort();
        let latencies = &self.latencies;
        let at = |quantile: f64| latencies[((latencies.len() as f64 * quantile) as usize).min(latencies.len() - 1)];
        Throughput {
            per_second: latencies.len() as f64 / self.measured.as_secs_f64(),
            p50_ms: at(0.50).as_secs_f64() * 1000.0,
            p99_ms: at(0.99).as_secs_f64() * 1000.0,
        }
    }
}

/// Drives `CONNECTIONS` clients for `warm_up`, then measures for `measure`.
async fn sample(
    client: &reqwest::Client,
    request: RequestFactory,
    expected: u16,
    rate: Option<f64>,
    warm_up: Duration,
    measure: Duration,
    cpu_of: Option<u32>,
) -> Samples {
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let interval = rate.map(|rate| Duration::from_secs_f64(CONNECTIONS as f64 / rate));
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (client, request, measuring, stop) = (client.clone(), request.clone(), measuring.clone(), stop.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut ticker = interval.map(tokio::time::interval);
                while !stop.load(Ordering::Relaxed) {
                    if let Some(ticker) = ticker.as_mut() {
                        ticker.tick().await;
                    }
                    let started = Instant::now();
                    let response = request(&client).send().await.expect("request");
                    assert_eq!(response.status().as_u16(), expected, "unexpected status");
                    let _ = response.bytes().await;
                    if measuring.load(Ordering::Relaxed) {
                        latencies.push(started.elapsed());
                    }
                }
                latencies
            })
        })
        .collect();
    tokio::time::sleep(warm_up).await;
    measuring.store(true, Ordering::Relaxed);
    let cpu_before = cpu_of.map(CpuTimes::read);
    let started = Instant::now();
    tokio::time::sleep(measure).await;
    measuring.store(false, Ordering::Relaxed);
    let measured = started.elapsed();
    let cpu = cpu_of.zip(cpu_before).map_or_else(CpuTimes::default, |(pid, before)| CpuTimes::read(pid).since(&before));
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("client task"));
    }
    Samples { latencies, measured, cpu }
}

/// CPU time (user and system) of this process, the load generator, and of jobd's threads
/// by what they run. The kernel counts it in ticks of 10 ms (`USER_HZ` is 100 on Linux), so
/// it is read over whole measuring windows only.
#[derive(Default, Clone)]
struct CpuTimes {
    client: Duration,
    jobd: std::collections::BTreeMap<&'static str, Duration>,
}

impl CpuTimes {
    const GROUPS: [&'static str; 5] = ["HTTP", "actors", "queue", "fsync", "other"];

    fn read(pid: u32) -> CpuTimes {
        let mut jobd = std::collections::BTreeMap::new();
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("jobd's threads");
        for task in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
            let Some((name, time)) = Self::parse_stat(&stat) else { continue };
            // HTTP workers; the main thread runs the actix System: Ingest, Dispatcher, workers.
            let group = match name {
                name if name.starts_with("actix-rt") => "HTTP",
                "jobd" => "actors",
                "jobd-queue" => "queue",
                "jobd-sync" => "fsync",
                _ => "other",
            };
            *jobd.entry(group).or_default() += time;
        }
        let own = std::fs::read_to_string("/proc/self/stat").expect("own stat");
        CpuTimes { client: Self::parse_stat(&own).map_or(Duration::ZERO, |(_, time)| time), jobd }
    }

    /// The name and the user plus system time of a `/proc/.../stat` line.
    fn parse_stat(stat: &str) -> Option<(&str, Duration)> {
        let (head, rest) = stat.rsplit_once(')')?;
        let name = head.split_once('(')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After the name: state is field 3 of the line, utime 14 and stime 15.
        let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some((name, Duration::from_millis(ticks * 10)))
    }

    fn since(&self, before: &CpuTimes) -> CpuTimes {
        let jobd = self
            .jobd
            .iter()
            .map(|(group, time)| (*group, time.saturating_sub(before.jobd.get(group).copied().unwrap_or_default())))
            .collect();
        CpuTimes { client: self.client.saturating_sub(before.client), jobd }
    }

    fn add(&mut self, other: &CpuTimes) {
        self.client += other.client;
        for (group, time) in &other.jobd {
            *self.jobd.entry(group).or_default() += *time;
        }
    }

    fn jobd_total(&self) -> Duration {
        self.jobd.values().sum()
    }

    /// "client 30 us, jobd 41 us (HTTP 20, actors 8, ...)", in microseconds per request.
    fn describe(&self) -> String {
        let groups: Vec<String> = Self::GROUPS
            .iter()
            .filter_map(|group| self.jobd.get(group).map(|time| format!("{group} {:.0}", micros(*time))))
            .collect();
        format!(
            "client {:.0} us, jobd {:.0} us ({})",
            micros(self.client),
            micros(self.jobd_total()),
            groups.join(", ")
        )
    }
}

fn micros(time: Duration) -> f64 {
    time.as_secs_f64() * 1e6
}

/// Measures two kinds of request in turns, `ROUNDS` rounds of `MEASURE / ROUNDS` each,
/// so that a slow spell of a shared machine slows both and their ratio stays fair.
/// Each side's throughput comes with the CPU time per request of the client and of jobd's
/// threads (the process `pid`).
async fn drive_in_turns(
    client: &reqwest::Client,
    pid: u32,
    (first, first_status): (RequestFactory, u16),
    (second, second_status): (RequestFactory, u16),
) -> ((Throughput, CpuTimes), (Throughput, CpuTimes)) {
    const ROUNDS: u32 = 5;
    const SETTLE: Duration = Duration::from_millis(300);
    let round = MEASURE / ROUNDS;
    // Both warm up once at full length; each later turn settles briefly before measuring.
    let _ = sample(client, first.clone(), first_status, None, WARM_UP, Duration::ZERO, None).await;
    let _ = sample(client, second.clone(), second_status, None, WARM_UP, Duration::ZERO, None).await;
    let (mut firsts, mut seconds) = (Samples::default(), Samples::default());
    for _ in 0..ROUNDS {
        firsts = firsts.add(sample(client, first.clone(), first_status, None, SETTLE, round, Some(pid)).await);
        seconds = seconds.add(sample(client, second.clone(), second_status, None, SETTLE, round, Some(pid)).await);
    }
    let (first_cpu, second_cpu) = (firsts.cpu_per_request(), seconds.cpu_per_request());
    ((firsts.throughput(), first_cpu), (seconds.throughput(), second_cpu))
}

fn post_json(base: &str, path: &str, body: Vec<u8>) -> RequestFactory {
    let url = format!("{base}{path}");
    Arc::new(move |client: &reqwest::Client| {
        client.post(&url).header("content-type", "application/json").body(body.clone())
    })
}

async fn stats(client: &reqwest::Client, daemon: &Daemon) -> Value {
    client.get(daemon.url("/v1/stats")).send().await.expect("stats").json().await.expect("stats JSON")
}

async fn wait_succeeded(client: &reqwest::Client, daemon: &Daemon, count: u64) -> Instant {
    loop {
        if stats(client, daemon).await["counters"]["jobs"]["succeeded"].as_u64() >= Some(count) {
            return Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Submits `total` jobs made by `job` in batches of `batch` from `parallel` clients.
async fn submit_batches(
    client: &reqwest::Client,
    daemon: &Daemon,
    total: u64,
    batch: u64,
    parallel: usize,
    job: impl Fn(u64) -> Value + Send + Sync + 'static,
) {
    let job = Arc::new(job);
    let next = Arc::new(AtomicU64::new(0));
    let url = daemon.url("/v1/jobs");
    let tasks: Vec<_> = (0..parallel)
        .map(|_| {
            let (client, job, next, url) = (client.clone(), job.clone(), next.clone(), url.clone());
            tokio::spawn(async move {
                loop {
                    let first = next.fetch_add(batch, Ordering::Relaxed);
                    if first >= total {
                        return;
                    }
                    let jobs: Vec<Value> = (first..(first + batch).min(total)).map(|n| job(n)).collect();
                    let body = serde_json::to_vec(&json!({"jobs": jobs})).expect("json");
                    let response = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .expect("submit");
                    assert_eq!(response.status(), 202, "batch refused");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("submitter");
    }
}

/// Keeps a daemon's only worker busy for an hour (the `sleep` test kind), so that nothing
/// else runs.
async fn hold_the_only_worker(client: &reqwest::Client, daemon: &Daemon) {
    let blocker = client
        .post(daemon.url("/v1/jobs"))
        .json(&json!({"kind": "sleep", "payload": {"ms": 3_600_000}}))
        .send()
        .await
        .expect("blocker");
    assert_eq!(blocker.status(), 202);
}

/// A quantile of a Prometheus histogram in a scrape, interpolated within its bucket.
fn histogram_quantile(scrape: &str, series: &str, quantile: f64) -> f64 {
    let mut buckets: Vec<(f64, f64)> = scrape
        .lines()
        .filter_map(|line| {
            // `series` ends inside the braces, after other labels or right at the opening one.
            let rest = line.strip_prefix(series)?;
            let rest = rest.strip_prefix(',').unwrap_or(rest).strip_prefix("le=\"")?;
            let (le, count) = rest.split_once("\"} ")?;
            Some((if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? }, count.trim().parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |bucket| bucket.1);
    let rank = total * quantile;
    let mut lower = (0.0, 0.0);
    for (le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return lower.0;
            }
            let fraction = if count > lower.1 { (rank - lower.1) / (count - lower.1) } else { 0.0 };
            return lower.0 + (le - lower.0) * fraction;
        }
        lower = (le, count);
    }
    f64::NAN
}

/// The value of one series in a scrape, named as scraped (with its labels, if it has any).
fn scalar(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// How the queue spent a run: commits, requests per commit, and fsyncs.
async fn print_queue_work(client: &reqwest::Client, daemon: &Daemon) {
    let scrape = client.get(daemon.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    let commits = scalar(&scrape, "jobd_store_commit_batch_size_count");
    let requests = scalar(&scrape, "jobd_store_commit_batch_size_sum");
    let syncs = scalar(&scrape, "jobd_store_sync_duration_seconds_count");
    let sync_p50 = histogram_quantile(&scrape, "jobd_store_sync_duration_seconds_bucket{", 0.5) * 1000.0;
    let commit_p50 = histogram_quantile(&scrape, "jobd_store_commit_duration_seconds_bucket{", 0.5) * 1000.0;
    println!(
        "    queue: {commits:.0} commits of {:.1} requests on average, p50 {commit_p50:.3} ms; {syncs:.0} fsyncs, \
         p50 {sync_p50:.3} ms",
        requests / commits
    );
}

struct Figure {
    /// The figure's number in the issue that asked for it; "2b" and the like are references.
    number: &'static str,
    name: &'static str,
    value: String,
    target: &'static str,
    met: Option<bool>,
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let figures = runtime.block_on(run());
    let machine = machine_description();
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_default();
    let date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string();
    let mut table = String::from("| # | Figure | Result | Target | Met |\n|---|---|---|---|---|\n");
    for figure in &figures {
        let met = match figure.met {
            Some(true) => "yes",
            Some(false) => "no",
            None => "",
        };
        table.push_str(&format!(
            "| {} | {} | {} | {} | {met} |\n",
            figure.number, figure.name, figure.value, figure.target
        ));
    }
    println!("\n{table}");
    let json: Vec<Value> = figures
        .iter()
        .map(
            |figure| json!({"number": figure.number, "figure": figure.name, "result": figure.value, "target": figure.target, "met": figure.met}),
        )
        .collect();
    let report = json!({"date": date, "commit": commit, "machine": machine, "figures": json});
    if !selected_figures().is_empty() {
        println!("only some figures ran: BENCHMARKS.md and the JSON file are left as they were");
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::write(root.join("target/jobd-bench.json"), serde_json::to_string_pretty(&report).expect("json"))
        .expect("write JSON");
    let markdown = format!(
        "# Benchmarks\n\nWritten by `cargo bench --bench jobd`: it starts release builds of jobd on temporary \
         data directories and drives them over HTTP with its own keep-alive load generator ({CONNECTIONS} \
         connections; {}s per throughput figure after {}s of warm-up). Client and daemon share the machine, \
         and every ratio is taken within one run. (1) and (2) take turns in 5 rounds, as the two sides \
         of (6) do, so that a slow spell of the shared machine slows both.\n\n- Date: {date}\n- Commit: {commit}\n- Machine: {machine}\n\n\
         {table}\nThe same figures, as JSON, are in `target/jobd-bench.json` after a run.\n",
        MEASURE.as_secs(),
        WARM_UP.as_secs()
    );
    std::fs::write(root.join("BENCHMARKS.md"), markdown).expect("write BENCHMARKS.md");
    println!("wrote BENCHMARKS.md and target/jobd-bench.json");
}

fn machine_description() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| text.lines().next().and_then(|line| line.split_whitespace().nth(1)).map(str::to_owned))
        .and_then(|kib| kib.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    format!("{cores} cores ({model}), {memory_gib:.0} GiB RAM, Linux")
}

/// Whether a run of only some figures (`cargo bench --bench jobd -- 4 5`) includes one of
/// `figures`. The ceiling and (2) always run: every ratio and (5)'s rate need them.
fn wanted(figures: &[u32]) -> bool {
    selected_figures().is_empty() || figures.iter().any(|figure| selected_figures().contains(figure))
}

fn selected_figures() -> &'static [u32] {
    static SELECTED: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();
    SELECTED.get_or_init(|| std::env::args().skip(1).filter_map(|arg| arg.parse().ok()).collect())
}

async fn run() -> Vec<Figure> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(CONNECTIONS).build().expect("client");
    let mut figures = Vec::new();
    let job = json!({"kind": "noop", "payload": {"pad": "x".repeat(160)}}).to_string().into_bytes();

    // (1) and (2): the ceiling and single-job durable submissions, same server, same client,
    // measured in turns.
    let daemon = Daemon::start(&[]);
    let base = daemon.base.clone();
    let healthz: RequestFactory = Arc::new(move |client: &reqwest::Client| client.get(format!("{base}/healthz")));
    let ((ceiling, ceiling_cpu), (single, single_cpu)) = drive_in_turns(
        &client,
        daemon.child.id(),
        (healthz, 200),
        (post_json(&daemon.base, "/v1/jobs", job.clone()), 202),
    )
    .await;
    let ratio = single.per_second / ceiling.per_second;
    println!(
        "(1) ceiling {:.0}/s; (2) single-job {:.0}/s, p99 {:.2} ms",
        ceiling.per_second, single.per_second, single.p99_ms
    );
    print_queue_work(&client, &daemon).await;
    figures.push(Figure {
        number: "1",
        name: "Ceiling: GET /healthz requests/s",
        value: format!("{:.0} (p50 {:.2} ms, p99 {:.2} ms)", ceiling.per_second, ceiling.p50_ms, ceiling.p99_ms),
        target: "reference",
        met: None,
    });
    figures.push(Figure {
        number: "2",
        name: "Single-job durable submissions/s (POST /v1/jobs, ~200 B noop)",
        value: format!(
            "{:.0}: {ratio:.2} x (1), p50 {:.2} ms, p99 {:.2} ms",
            single.per_second, single.p50_ms, single.p99_ms
        ),
        target: ">= 0.75 x (1), p99 < 5 ms",
        met: Some(ratio >= 0.75 && single.p99_ms < 5.0),
    });
    // Why the ratio is what it is: the two sides share the cores, so each rate is about
    // the cores' time over the CPU time that one request costs the client and jobd.
    let cpu = format!("(1): {}; (2): {}", ceiling_cpu.describe(), single_cpu.describe());
    println!("    CPU per request: {cpu}");
    figures.push(Figure {
        number: "2c",
        name: "CPU time per request of (1) and (2), by thread group of jobd",
        value: cpu,
        target: "reference",
        met: None,
    });
    drop(daemon);

    if wanted(&[2]) {
        // For comparison: the same submissions with group commit off, one fsync per request.
        let daemon = Daemon::start(&[("JOBD_GROUP_COMMIT", "false")]);
        let alone = drive(&client, post_json(&daemon.base, "/v1/jobs", job.clone()), 202, None).await;
        println!("(2b) without group commit {:.0}/s, p99 {:.2} ms", alone.per_second, alone.p99_ms);
        print_queue_work(&client, &daemon).await;
        figures.push(Figure {
            number: "2b",
            name: "For comparison: (2) with group_commit = false",
            value: format!(
                "{:.0}: group commit gives {:.1} x, p99 {:.2} ms",
                alone.per_second,
                single.per_second / alone.per_second,
                alone.p99_ms
            ),
            target: "reference",
            met: None,
        });
        drop(daemon);
    }

    if wanted(&[3]) {
        // (3) batch ingest alone: the only worker is held by an hour-long job, so the figure
        // is what taking payloads in costs, as (4) is what running them costs. (With the
        // worker free, it ran up to 60k jobs/s beside the ingest, and the ingest figure
        // measured how the two shared the queue thread.) Room for every payload of the run.
        for batch in [100u64, 1000] {
            let daemon = Daemon::start(&[
                ("JOBD_STORE_URL", "memory://"),
                ("JOBD_MAX_WORKERS", "1"),
                ("JOBD_TEST_KINDS", "1"),
                ("JOBD_MAX_QUEUE", "20000000"),
            ]);
            hold_the_only_worker(&client, &daemon).await;
            let payloads: Vec<Value> = (0..batch).map(|n| json!({"n": n, "pad": "x".repeat(100)})).collect();
            let body = serde_json::to_vec(&json!({"payloads": payloads})).expect("json");
            let request = post_json(&daemon.base, "/v1/payloads", body);
            let samples = sample(&client, request, 202, None, WARM_UP, MEASURE, Some(daemon.child.id())).await;
            let cpu = samples.cpu_per_request();
            let result = samples.throughput();
            let payloads_per_second = result.per_second * batch as f64;
            println!("(3) batches of {batch}: {payloads_per_second:.0} payloads/s");
            println!("    CPU per request: {}", cpu.describe());
            print_queue_work(&client, &daemon).await;
            figures.push(Figure {
                number: if batch == 100 { "3a" } else { "3" },
                name: if batch == 100 {
                    "Batch ingest (workers held), 100 payloads per request: payloads/s"
                } else {
                    "Batch ingest (workers held), 1,000 payloads per request: payloads/s"
                },
                value: format!("{payloads_per_second:.0} (p99 {:.1} ms per request)", result.p99_ms),
                target: if batch == 100 { "" } else { ">= 500,000" },
                met: (batch == 1000).then_some(payloads_per_second >= 500_000.0),
            });
        }
    }

    if wanted(&[4]) {
        // (4) end to end: a million noop jobs, submitted in batches while the workers run.
        let daemon = Daemon::start(&[]);
        let started = Instant::now();
        submit_batches(&client, &daemon, END_TO_END_JOBS, 1000, 4, |_| json!({"kind": "noop"})).await;
        let submitted = started.elapsed();
        let done = wait_succeeded(&client, &daemon, END_TO_END_JOBS).await;
        let end_to_end = END_TO_END_JOBS as f64 / (done - started).as_secs_f64();
        println!("(4) {END_TO_END_JOBS} noop jobs end to end: {end_to_end:.0}/s (all submitted after {submitted:.1?})");
        figures.push(Figure {
            number: "4",
            name: "End to end: noop jobs/s, 1,000,000 jobs, first submission to last succeeded",
            value: format!("{end_to_end:.0}"),
            target: ">= 200,000",
            met: Some(end_to_end >= 200_000.0),
        });
        drop(daemon);
    }

    if wanted(&[5]) {
        // (5) dispatch latency, open loop at about half of (2)'s rate, read from the
        // submit-to-start histogram of a fresh daemon.
        let daemon = Daemon::start(&[]);
        let half =
            drive(&client, post_json(&daemon.base, "/v1/jobs", job.clone()), 202, Some(single.per_second / 2.0)).await;
        let scrape = client.get(daemon.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
        let series = "jobd_job_wait_seconds_bucket{kind=\"noop\"";
        let wait_p50 = histogram_quantile(&scrape, series, 0.5) * 1000.0;
        let wait_p99 = histogram_quantile(&scrape, series, 0.99) * 1000.0;
        println!("(5) at {:.0}/s: submit -> start p50 {wait_p50:.3} ms, p99 {wait_p99:.3} ms", half.per_second);
        // Where the time goes: the queue's commits (each with its fsync) in the same run.
        let commit = |quantile| histogram_quantile(&scrape, "jobd_store_commit_duration_seconds_bucket{", quantile);
        println!("    queue commits: p50 {:.3} ms, p99 {:.3} ms", commit(0.5) * 1000.0, commit(0.99) * 1000.0);
        print_queue_work(&client, &daemon).await;
        figures.push(Figure {
            number: "5",
            name: "Dispatch latency, submit -> start, at half of (2)'s rate",
            value: format!("p50 {wait_p50:.2} ms, p99 {wait_p99:.2} ms at {:.0} submissions/s", half.per_second),
            target: "p99 < 2 ms",
            met: Some(wait_p99 < 2.0),
        });
        drop(daemon);
    }

    if wanted(&[6]) {
        // (6) uploads into a file:// store, against a plain loop of object_store puts into the
        // same kind of store at the same concurrency (the default upload_concurrency). On
        // ext4, creating files right after many were deleted is several times slower (the
        // inode allocator skips recently freed inodes), so nothing is deleted until both
        // have run, and the two take turns in rounds, each after a `sync`, so that neither
        // meets a file system the other left in a better or worse state.
        let plain_dir = tempfile::tempdir().expect("tempdir");
        // The plain loop syncs as jobd's store does (file, then directories), so that the
        // ratio measures what jobd adds to a durable put, not the cost of the fsyncs.
        let plain_store = Arc::new(
            object_store::local::LocalFileSystem::new_with_prefix(plain_dir.path())
                .expect("plain store")
                .with_fsync(true),
        );
        let daemon = Daemon::start(&[]);
        let per_round = UPLOAD_JOBS / UPLOAD_ROUNDS;
        let (mut plain_time, mut jobd_time) = (Duration::ZERO, Duration::ZERO);
        for round in 0..UPLOAD_ROUNDS {
            for plain_turn in [round % 2 == 0, round % 2 == 1] {
                settle_file_system();
                let started = Instant::now();
                if plain_turn {
                    plain_puts(&plain_store, per_round, 16).await;
                    plain_time += started.elapsed();
                } else {
                    submit_batches(
                        &client,
                        &daemon,
                        per_round,
                        500,
                        4,
                        |n| json!({"kind": "upload", "payload": {"n": n, "pad": "x".repeat(160)}}),
                    )
                    .await;
                    wait_succeeded(&client, &daemon, per_round * (round + 1)).await;
                    jobd_time += started.elapsed();
                }
            }
        }
        let name = "Uploads into file://: jobs/s, vs a plain loop of object_store puts (16 at once)";
        let (uploads, plain, figure) = against_plain("6", name, UPLOAD_JOBS, jobd_time, plain_time);
        println!("(6) uploads {uploads:.0}/s; plain object_store puts {plain:.0}/s ({UPLOAD_ROUNDS} rounds each)");
        figures.push(figure);
        drop(daemon);
    }

    if wanted(&[7, 8]) {
        // (7) and (8): memory idle and with a million-job backlog; recovery after kill -9.
        // Room for the backlog plus the job that holds the only worker.
        let backlog_env = [("JOBD_MAX_WORKERS", "1"), ("JOBD_TEST_KINDS", "1"), ("JOBD_MAX_QUEUE", "2000000")];
        let daemon = Daemon::start(&backlog_env);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let idle = daemon.rss_mib();
        hold_the_only_worker(&client, &daemon).await;
        submit_batches(&client, &daemon, END_TO_END_JOBS, 1000, 4, |_| json!({"kind": "noop"})).await;
        let backlog = daemon.rss_mib();
        let queued = stats(&client, &daemon).await["queue"]["queued"].as_u64().unwrap_or(0);
        println!("(7) RSS idle {idle:.1} MiB, with {queued} queued {backlog:.1} MiB");
        figures.push(Figure {
            number: "7",
            name: "Memory: resident set idle, and with a 1,000,000-job backlog",
            value: format!("{idle:.1} MiB idle, {backlog:.1} MiB with {queued} queued"),
            target: "idle < 30 MB, backlog < 150 MB",
            met: Some(idle < 30.0 && backlog < 150.0),
        });
        let data_dir = daemon.kill_9();
        let restarted = Daemon::start_in(data_dir, &backlog_env);
        let ready = loop {
            let answer = client.get(restarted.url("/readyz")).send().await.expect("readyz");
            if answer.status() == 200 {
                break restarted.started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        println!("(8) recovery: listening after {:.2?}, ready after {ready:.2?}", restarted.listening_after);
        figures.push(Figure {
            number: "8",
            name: "Recovery: start to ready with 1,000,000 queued jobs after kill -9",
            value: format!("{:.2} s", ready.as_secs_f64()),
            target: "< 3 s",
            met: Some(ready < Duration::from_secs(3)),
        });
    }
    if wanted(&[9]) {
        // (9) webhook deliveries to a local receiver that answers at once, against a plain
        // loop of HTTP posts of the same bodies to it at the same concurrency (a
        // destination's default in-flight limit), in alternating rounds.
        let receiver = Receiver::start();
        let config_dir = tempfile::tempdir().expect("tempdir");
        let config = config_dir.path().join("jobd.toml");
        std::fs::write(
            &config,
            format!(
                "[webhooks.bench]\nurl = \"{}\"\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n",
                receiver.url
            ),
        )
        .expect("write the config");
        let daemon = Daemon::start(&[("JOBD_CONFIG", config.to_str().expect("utf-8"))]);
        let per_round = WEBHOOK_JOBS / WEBHOOK_ROUNDS;
        let hyper_client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(WEBHOOK_CONCURRENCY)
            .build_http::<http_body_util::Full<bytes::Bytes>>();
        // Three sides take turns, each round in another order: jobd, the plain loop with
        // reqwest, and the plain loop with hyper's pooled client (jobd's own).
        let mut times = [Duration::ZERO; 3];
        for round in 0..WEBHOOK_ROUNDS {
            for turn in 0..3 {
                let side = (turn + round as usize) % 3;
                let started = Instant::now();
                match side {
                    0 => {
                        submit_batches(&client, &daemon, per_round, 500, 4, |n| {
                            json!({"kind": "webhook", "destination": "bench", "payload": {"n": n, "pad": "x".repeat(160)}})
                        })
                        .await;
                        wait_succeeded(&client, &daemon, per_round * (round + 1)).await;
                    }
                    1 => plain_posts(&client, &receiver.url, per_round, WEBHOOK_CONCURRENCY).await,
                    _ => plain_posts_hyper(&hyper_client, &receiver.url, per_round, WEBHOOK_CONCURRENCY).await,
                }
                times[side] += started.elapsed();
            }
        }
        let [jobd_time, plain_time, hyper_time] = times;
        // How long jobd's own requests took, against the plain loop's (its in-flight count
        // over its rate): the part of the gap that is the receiver's answer, not the queue.
        let scrape = client.get(daemon.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
        let request_sum = scalar(&scrape, "jobd_webhook_duration_seconds_sum{destination=\"bench\"}");
        let request_count = scalar(&scrape, "jobd_webhook_duration_seconds_count{destination=\"bench\"}");
        let jobd_request_us = request_sum / request_count.max(1.0) * 1e6;
        let name = "Webhook deliveries/s to a local receiver, vs a plain loop of HTTP posts (8 at once)";
        let (deliveries, plain, mut figure) = against_plain("9", name, WEBHOOK_JOBS, jobd_time, plain_time);
        let plain_request_us = WEBHOOK_CONCURRENCY as f64 / plain * 1e6;
        figure.value = format!(
            "{} (mean request {jobd_request_us:.0} us in jobd, {plain_request_us:.0} us in the plain loop)",
            figure.value
        );
        println!(
            "(9) webhook deliveries {deliveries:.0}/s; plain HTTP posts {plain:.0}/s ({WEBHOOK_ROUNDS} rounds each); \
             mean request {jobd_request_us:.0} us in jobd, {plain_request_us:.0} us in the plain loop"
        );
        figures.push(figure);
        let hyper_rate = WEBHOOK_JOBS as f64 / hyper_time.as_secs_f64();
        println!("(9b) plain HTTP posts with hyper's pooled client {hyper_rate:.0}/s");
        figures.push(Figure {
            number: "9b",
            name: "For comparison: (9)'s plain loop with hyper's pooled client, the one jobd delivers with",
            value: format!("{hyper_rate:.0}: jobd's deliveries are {:.2} x this", deliveries / hyper_rate),
            target: "reference",
            met: None,
        });
        drop(daemon);
    }
    if wanted(&[10, 11, 12, 13, 14, 15]) {
        figures.extend(postgres::figures(&client).await);
    }
    if wanted(&[16, 17]) {
        figures.extend(queues::figures(&client).await);
    }
    figures
}

/// A figure of jobd against a plain loop that did the same `jobs` in `plain` time: both
/// rates, and the figure with their ratio against the target of 0.8.
fn against_plain(
    number: &'static str,
    name: &'static str,
    jobs: u64,
    jobd: Duration,
    plain: Duration,
) -> (f64, f64, Figure) {
    let (jobd, plain) = (jobs as f64 / jobd.as_secs_f64(), jobs as f64 / plain.as_secs_f64());
    let figure = Figure {
        number,
        name,
        value: format!("{jobd:.0} vs {plain:.0}: {:.2} x", jobd / plain),
        target: ">= 0.8 x the plain loop",
        met: Some(jobd / plain >= 0.8),
    };
    (jobd, plain, figure)
}

/// A webhook receiver on a free loopback port that answers every POST with `204` as soon
/// as it has read it, on a thread of its own (an actix-web server in its own System).
struct Receiver {
    url: String,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                // The body is read before the answer: an answer before it makes actix close the
                // connection, which a keep-alive client then finds dead.
                let server = actix_web::HttpServer::new(|| {
                    actix_web::App::new().default_service(actix_web::web::to(|_body: actix_web::web::Bytes| async {
                        actix_web::HttpResponse::NoContent().finish()
                    }))
                })
                .disable_signals()
                .workers(1)
                .listen(listener)
                .expect("listen")
                .run();
                let _ = server.await;
            });
        });
        Receiver { url }
    }
}

/// Posts `count` bodies like (9)'s payloads to `url`, `concurrency` at a time.
async fn plain_posts(client: &reqwest::Client, url: &str, count: u64, concurrency: usize) {
    futures_util::stream::iter(0..count)
        .map(|n| {
            let request = client
                .post(url)
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&json!({"n": n, "pad": "x".repeat(160)})).expect("json"));
            async move {
                let response = request.send().await.expect("post");
                assert!(response.status().is_success());
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
}

/// Posts `count` bodies like (9)'s payloads to `url`, `concurrency` at a time, with hyper's
/// pooled client (the one jobd's deliveries use) rather than reqwest.
async fn plain_posts_hyper(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
    url: &str,
    count: u64,
    concurrency: usize,
) {
    let uri: hyper::Uri = url.parse().expect("a URI");
    futures_util::stream::iter(0..count)
        .map(|n| {
            let body = serde_json::to_vec(&json!({"n": n, "pad": "x".repeat(160)})).expect("json");
            let request = hyper::Request::post(uri.clone())
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .expect("a request");
            async move {
                let response = client.request(request).await.expect("post");
                assert!(response.status().is_success());
                http_body_util::BodyExt::collect(response.into_body()).await.expect("the answer");
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
}

/// Writes every dirty page back (sync(1)), so that the next part does not pay for the
/// previous one's files.
fn settle_file_system() {
    if let Err(error) = Command::new("sync").status() {
        eprintln!("sync failed: {error}");
    }
}

/// Puts `count` small objects into `store`, `concurrency` at a time, named as jobd names
/// an upload without a key (a UUIDv7 under a date) and with the same body.
async fn plain_puts(store: &Arc<object_store::local::LocalFileSystem>, count: u64, concurrency: usize) {
    futures_util::stream::iter(0..count)
        .map(|n| {
            let store = store.clone();
            async move {
                let path = object_store::path::Path::from(format!("payloads/2026/01/01/{}.json", uuid::Uuid::now_v7()));
                let body = serde_json::to_vec(&json!({"n": n, "pad": "x".repeat(160)})).expect("json");
                store.put(&path, body.into()).await.expect("put");
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
}
