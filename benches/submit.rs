//! Durable single-job submissions per second, with and without group commit, against a
//! real release daemon over HTTP, beside the `/healthz` ceiling of the same server.
//! Run with `cargo bench --bench submit`; it prints a table.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const CONNECTIONS: usize = 64;
const WARM_UP: Duration = Duration::from_secs(1);
const MEASURE: Duration = Duration::from_secs(5);

struct Daemon {
    child: Child,
    base: String,
    _data_dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(group_commit: bool) -> Daemon {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_jobd"))
        .arg("serve")
        .env("JOBD_LISTEN", "127.0.0.1:0")
        .env("JOBD_DATA_DIR", data_dir.path())
        .env("JOBD_LOG_FORMAT", "json")
        .env("JOBD_LOG", "warn,jobd::server=info")
        .env("JOBD_GROUP_COMMIT", if group_commit { "true" } else { "false" })
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start jobd");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().expect("jobd exited before listening").expect("read log");
        let record: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if record["message"] == "jobd listening" {
            break record["addr"].as_str().expect("addr").to_owned();
        }
    };
    // Keep draining the pipe so the daemon never blocks on a full one.
    std::thread::spawn(move || lines.for_each(drop));
    Daemon { child, base: format!("http://{addr}"), _data_dir: data_dir }
}

struct Figures {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Runs `CONNECTIONS` clients against one request shape; returns throughput and latency.
async fn drive(
    client: reqwest::Client,
    request: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder + Send + Sync + 'static,
    expected: u16,
) -> Figures {
    let request = Arc::new(request);
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (client, request, measuring, stop) = (client.clone(), request.clone(), measuring.clone(), stop.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let response = request(&client).send().await.expect("request");
                    assert_eq!(response.status().as_u16(), expected);
                    let _ = response.bytes().await;
                    if measuring.load(Ordering::Relaxed) {
                        latencies.push(started.elapsed());
                    }
                }
                latencies
            })
        })
        .collect();
    tokio::time::sleep(WARM_UP).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(MEASURE).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("client task"));
    }
    latencies.sort();
    let at = |quantile: f64| latencies[((latencies.len() as f64 * quantile) as usize).min(latencies.len() - 1)];
    Figures {
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: at(0.50).as_secs_f64() * 1000.0,
        p99_ms: at(0.99).as_secs_f64() * 1000.0,
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let job = serde_json::json!({"kind": "noop", "payload": {"pad": "x".repeat(160)}}).to_string();
    println!(
        "{CONNECTIONS} connections, {}s per figure, one noop job (~{} bytes) per request",
        MEASURE.as_secs(),
        job.len()
    );
    println!("{:<34} {:>12} {:>9} {:>9}", "figure", "requests/s", "p50 ms", "p99 ms");
    for group_commit in [true, false] {
        let daemon = start(group_commit);
        let client = reqwest::Client::builder().pool_max_idle_per_host(CONNECTIONS).build().expect("client");
        let base = daemon.base.clone();
        let ceiling = runtime.block_on(drive(client.clone(), move |c| c.get(format!("{base}/healthz")), 200));
        let (base, body) = (daemon.base.clone(), job.clone());
        let submit = runtime.block_on(drive(
            client,
            move |c| c.post(format!("{base}/v1/jobs")).header("content-type", "application/json").body(body.clone()),
            202,
        ));
        let mode = if group_commit { "group commit" } else { "one commit per request" };
        for (name, figures) in
            [(format!("GET /healthz ({mode})"), &ceiling), (format!("POST /v1/jobs ({mode})"), &submit)]
        {
            println!("{name:<34} {:>12.0} {:>9.2} {:>9.2}", figures.per_second, figures.p50_ms, figures.p99_ms);
        }
        println!("{:<34} {:>12.2}", format!("ratio to /healthz ({mode})"), submit.per_second / ceiling.per_second);
    }
}
