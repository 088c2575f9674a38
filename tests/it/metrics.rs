//! Observability against real parts: `/metrics` checked by `promtool`, the shipped
//! Prometheus config and alert rules checked and unit-tested by `promtool`, and every
//! query of the Grafana dashboard run against a real Prometheus scraping a real jobd.
//! Needs the Debian package `prometheus`, which `scripts/test.sh` installs.

use crate::common;

use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, accepted_ids};
use serde_json::{Value, json};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tool(name: &str) -> Command {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false);
    assert!(found, "{name} is not installed; `bash scripts/test.sh` installs the Debian package prometheus");
    Command::new(name)
}

fn promtool(args: &[&str], dir: &Path) -> std::process::Output {
    tool("promtool").args(args).current_dir(dir).output().expect("run promtool")
}

/// A real Prometheus on a free loopback port, scraping one target every second.
struct Prometheus {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        Self::start_with(&[target], None)
    }

    /// Scraping every one of `targets`, and evaluating the rules of `rules`, if given,
    /// every second.
    fn start_with(targets: &[&str], rules: Option<&Path>) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|target| format!("\"{target}\"")).collect();
        let rule_files = rules.map(|path| format!("rule_files: [\"{}\"]\n", path.display())).unwrap_or_default();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n{rule_files}scrape_configs:\n  - job_name: jobd\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .expect("write config");
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let child = tool("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        Prometheus { child, base: format!("http://127.0.0.1:{port}"), _dir: dir }
    }

    async fn wait_ready(&self, client: &reqwest::Client) {
        let deadline = Instant::now() + common::WAIT_DEADLINE;
        loop {
            if let Ok(response) = client.get(format!("{}/-/ready", self.base)).send().await
                && response.status() == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "prometheus never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An instant query's result vector.
    async fn query(&self, client: &reqwest::Client, expr: &str) -> Vec<Value> {
        let answer: Value = client
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", expr)])
            .send()
            .await
            .expect("query prometheus")
            .json()
            .await
            .expect("prometheus JSON");
        assert_eq!(answer["status"], "success", "query {expr}: {answer}");
        answer["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of one series in a scrape, by its exact name and labels, the `queue_id` label
/// of the queue-wide series aside (one daemon has one queue).
fn sample(scrape: &str, series: &str) -> Option<f64> {
    let scrape = common::without_queue_label(scrape);
    scrape.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn the_shipped_prometheus_config_and_alert_rules_pass_promtool() {
    let dir = repo().join("deploy/prometheus");
    for args in [
        vec!["check", "config", "prometheus.yml"],
        vec!["check", "rules", "jobd-alerts.yml"],
        vec!["test", "rules", "jobd-alerts.test.yml"],
    ] {
        let output = promtool(&args, &dir);
        assert!(
            output.status.success(),
            "promtool {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[tokio::test]
async fn a_scrape_under_load_passes_promtool_check_metrics() {
    let daemon = Daemon::start(&[("JOBD_MAX_WORKERS", "4")]);
    let jobs: Vec<Value> = (0..400)
        .map(|n| if n % 2 == 0 { json!({"kind": "noop"}) } else { json!({"kind": "sleep", "payload": {"ms": 2}}) })
        .collect();
    accepted_ids(daemon.post_json("/v1/jobs", &json!({"jobs": jobs})).await).await;
    let scrape = daemon.client.get(daemon.url("/metrics")).send().await.expect("GET").text().await.expect("text");
    let mut check = tool("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    check.stdin.take().expect("stdin").write_all(scrape.as_bytes()).expect("write scrape");
    let output = check.wait_with_output().expect("promtool output");
    assert!(
        output.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    for name in [
        "jobd_queue_depth{state=\"scheduled\"}",
        "jobd_queue_capacity",
        "jobd_queue_oldest_age_seconds",
        "jobd_workers{state=\"idle\"}",
        "jobd_jobs_submitted_total{kind=\"sleep\"}",
        "jobd_job_wait_seconds_count{kind=\"noop\"}",
        "jobd_store_commit_duration_seconds_count",
        "jobd_store_sync_duration_seconds_count",
        "jobd_http_requests_total{method=\"POST\",route=\"/v1/jobs\",status=\"2xx\"}",
        "process_open_fds",
    ] {
        assert!(common::without_queue_label(&scrape).contains(name), "scrape lacks {name}");
    }
}

#[tokio::test]
async fn http_requests_are_counted_by_route_pattern_never_by_path() {
    let daemon = Daemon::start(&[]);
    let get = |path: &str| daemon.client.get(daemon.url(path)).send();
    for id in ["0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c"] {
        assert_eq!(get(&format!("/v1/jobs/{id}")).await.expect("GET").status(), 404);
    }
    assert_eq!(daemon.client.put(daemon.url("/healthz")).send().await.expect("PUT").status(), 405);
    assert_eq!(get("/no/such/route").await.expect("GET").status(), 404);
    let scrape = get("/metrics").await.expect("GET").text().await.expect("text");
    let count = |series: &str| sample(&scrape, series);
    assert_eq!(count("jobd_http_requests_total{method=\"GET\",route=\"/v1/jobs/{id}\",status=\"4xx\"}"), Some(2.0));
    assert_eq!(count("jobd_http_requests_total{method=\"PUT\",route=\"/healthz\",status=\"4xx\"}"), Some(1.0));
    assert_eq!(count("jobd_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"4xx\"}"), Some(1.0));
    assert!(!scrape.contains("0190a1b2"), "a concrete path became a label:\n{scrape}");
}

/// Only the kinds that can run have series: with the test kinds off (the default), no
/// `sleep`, `fail` or `panic` series sit at zero for ever.
#[tokio::test]
async fn only_the_kinds_that_can_run_have_series() {
    let daemon = Daemon::start(&[("JOBD_TEST_KINDS", "0")]);
    let scrape = daemon.client.get(daemon.url("/metrics")).send().await.expect("GET").text().await.expect("text");
    assert_eq!(sample(&scrape, "jobd_jobs_submitted_total{kind=\"upload\"}"), Some(0.0), "{scrape}");
    assert_eq!(sample(&scrape, "jobd_jobs_submitted_total{kind=\"noop\"}"), Some(0.0));
    for kind in ["sleep", "fail", "panic"] {
        assert!(!scrape.contains(&format!("kind=\"{kind}\"")), "a series for {kind}: {scrape}");
    }
}

#[tokio::test]
async fn gauges_tell_the_truth() {
    let daemon = Daemon::start(&[("JOBD_MAX_WORKERS", "3")]);
    let long: Vec<Value> = (0..3).map(|_| json!({"kind": "sleep", "payload": {"ms": 600000}})).collect();
    accepted_ids(daemon.post_json("/v1/jobs", &json!({"jobs": long})).await).await;
    daemon.wait_for("three running", |stats| stats["queue"]["running"] == 3).await;
    let queued: Vec<Value> = (0..5).map(|_| json!({"kind": "noop"})).collect();
    accepted_ids(daemon.post_json("/v1/jobs", &json!({"jobs": queued})).await).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let scrape = daemon.client.get(daemon.url("/metrics")).send().await.expect("GET").text().await.expect("text");
    assert_eq!(sample(&scrape, "jobd_workers{state=\"busy\"}"), Some(3.0), "{scrape}");
    assert_eq!(sample(&scrape, "jobd_workers{state=\"idle\"}"), Some(0.0));
    assert_eq!(sample(&scrape, "jobd_queue_depth{state=\"queued\"}"), Some(5.0));
    assert_eq!(sample(&scrape, "jobd_queue_depth{state=\"running\"}"), Some(3.0));
    assert!(sample(&scrape, "jobd_queue_oldest_age_seconds").is_some_and(|age| age > 0.0));
    assert_eq!(sample(&scrape, "jobd_queue_capacity"), Some(1_000_000.0));
}

#[tokio::test]
async fn with_metrics_listen_only_the_metrics_listener_serves_metrics() {
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let metrics_listen = format!("127.0.0.1:{metrics_port}");
    let daemon = Daemon::start(&[("JOBD_METRICS_LISTEN", metrics_listen.as_str())]);
    let on_api = daemon.client.get(daemon.url("/metrics")).send().await.expect("GET");
    assert_eq!(on_api.status(), 404, "the API listener no longer serves /metrics");
    let problem: Value = on_api.json().await.expect("problem JSON");
    assert_eq!(problem["type"], "/problems/not-found", "{problem}");
    assert!(problem["detail"].as_str().is_some_and(|detail| detail.contains("metrics_listen")), "{problem}");
    let scrape = daemon.client.get(format!("http://{metrics_listen}/metrics")).send().await.expect("GET");
    assert_eq!(scrape.status(), 200);
    let text = scrape.text().await.expect("text");
    assert!(sample(&text, "jobd_queue_capacity").is_some(), "{text}");
    // The rest of the API is where it was.
    assert_eq!(daemon.client.get(daemon.url("/healthz")).send().await.expect("GET").status(), 200);
    assert_eq!(daemon.stats().await["queue"]["queued"], 0);
}

#[tokio::test]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let metrics_listen = format!("127.0.0.1:{metrics_port}");
    // A webhook destination, so that the webhook panels have data: the metrics listener,
    // which refuses the POST (a final answer, counted as `rejected`).
    let config_dir = tempfile::tempdir().expect("tempdir");
    let config = config_dir.path().join("jobd.toml");
    std::fs::write(
        &config,
        format!(
            "[webhooks.selftest]\nurl = \"http://{metrics_listen}/metrics\"\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n"
        ),
    )
    .expect("write the config");
    let daemon = Daemon::start(&[
        ("JOBD_CONFIG", config.to_str().expect("utf-8")),
        ("JOBD_MAX_WORKERS", "2"),
        ("JOBD_MAX_QUEUE", "50"),
        ("JOBD_RETRY_BASE_MS", "10"),
        ("JOBD_METRICS_LISTEN", metrics_listen.as_str()),
        ("JOBD_STORE_URL", "memory://"),
    ]);
    // Prometheus scrapes the separate metrics listener, which serves nothing else.
    let only_metrics = daemon.client.get(format!("http://{metrics_listen}/v1/stats")).send().await.expect("GET");
    assert_eq!(only_metrics.status(), 404);
    let prometheus = Prometheus::start(&metrics_listen);
    prometheus.wait_ready(&daemon.client).await;

    // A small mixed load: successes, retried failures that die, a panic, a 429 and a 400.
    let mut jobs: Vec<Value> = (0..20).map(|_| json!({"kind": "noop"})).collect();
    jobs.extend((0..5).map(|_| json!({"kind": "sleep", "payload": {"ms": 20}})));
    jobs.extend((0..3).map(|n| json!({"kind": "fail", "payload": {"message": format!("f{n}")}, "max_attempts": 2})));
    jobs.push(json!({"kind": "panic", "max_attempts": 1}));
    jobs.push(json!({"kind": "upload", "payload": {"hello": "prometheus"}}));
    jobs.push(json!({"kind": "webhook", "destination": "selftest", "payload": {"hello": "prometheus"}}));
    accepted_ids(daemon.post_json("/v1/jobs", &json!({"jobs": jobs})).await).await;
    let too_many: Vec<Value> = (0..60).map(|_| json!({"kind": "noop"})).collect();
    assert_eq!(daemon.post_json("/v1/jobs", &json!({"jobs": too_many})).await.status(), 429);
    assert_eq!(daemon.post_json("/v1/jobs", &json!({"kind": "nope"})).await.status(), 400);
    daemon.wait_for("the load done", |stats| stats["counters"]["jobs"]["dead"] == 5).await;

    // Let Prometheus take a few scrapes after the events, so that rates have two points.
    let deadline = Instant::now() + common::WAIT_DEADLINE;
    while prometheus.query(&daemon.client, "jobd_jobs_finished_total{outcome=\"dead\"} > 0").await.len() < 2 {
        assert!(Instant::now() < deadline, "prometheus never saw the dead jobs");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("grafana/dashboards/jobd.json")).expect("read dashboard"),
    )
    .expect("dashboard JSON");
    assert_eq!(dashboard["templating"]["list"][0]["name"], "datasource");
    let mut expressions = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "panel {} uses the variable", panel["title"]);
        for target in panel["targets"].as_array().expect("targets") {
            expressions.push((
                panel["title"].as_str().unwrap_or_default().to_owned(),
                target["expr"].as_str().expect("expr").to_owned(),
            ));
        }
    }
    assert!(expressions.len() >= 20);
    let mut empty = Vec::new();
    for (title, expr) in &expressions {
        let query = expr.replace("$__rate_interval", "30s").replace("$kind", ".*");
        if prometheus.query(&daemon.client, &query).await.is_empty() {
            empty.push(format!("{title}: {query}"));
        }
    }
    println!("{} dashboard queries run, {} empty", expressions.len(), empty.len());
    assert!(empty.is_empty(), "dashboard queries that match nothing:\n{}", empty.join("\n"));
}

/// The dashboard's expression of the panel titled `title`, its first query.
fn dashboard_expression(title: &str) -> String {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("grafana/dashboards/jobd.json")).expect("read dashboard"),
    )
    .expect("dashboard JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let panel = panels.iter().find(|panel| panel["title"] == title).unwrap_or_else(|| panic!("no panel {title}"));
    panel["targets"][0]["expr"].as_str().expect("an expression").to_owned()
}

/// Two nodes of one PostgreSQL queue behind one real Prometheus with the shipped alert
/// rules: each node reports the whole queue's depth, under the same `queue_id` label, and
/// the dashboard and the alerts count the queue once. A sum over instances, as the
/// dashboard used to take, reads double.
#[tokio::test]
async fn two_nodes_of_one_queue_are_counted_once_by_the_dashboard_and_the_alerts() {
    let cluster = common::postgres::Cluster::start();
    let url = cluster.new_database();
    // A queue that ten jobs fill, so that the capacity alert's condition holds.
    let settings = |name: &'static str| {
        vec![
            ("JOBD_QUEUE", "postgres"),
            ("JOBD_POSTGRES_URL", url.as_str()),
            ("JOBD_NODE_NAME", name),
            ("JOBD_MAX_QUEUE", "10"),
        ]
    };
    let nodes = [Daemon::start(&settings("node-1")), Daemon::start(&settings("node-2"))];
    let later: Vec<Value> = (0..10).map(|_| json!({"kind": "noop", "delay_ms": 3_600_000})).collect();
    accepted_ids(nodes[0].post_json("/v1/jobs", &json!({"jobs": later})).await).await;
    let targets: Vec<String> =
        nodes.iter().map(|node| node.base.trim_start_matches("http://").trim_end_matches('/').to_owned()).collect();
    let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
    let prometheus = Prometheus::start_with(&targets, Some(&repo().join("deploy/prometheus/jobd-alerts.yml")));
    let client = &nodes[0].client;
    prometheus.wait_ready(client).await;

    // Both nodes scraped, both reporting ten scheduled jobs and two nodes, under one label.
    let deadline = Instant::now() + common::WAIT_DEADLINE;
    loop {
        let reporting = prometheus.query(client, "jobd_queue_depth{state=\"scheduled\"} == 10").await;
        let two_nodes = prometheus.query(client, "jobd_nodes == 2").await;
        if reporting.len() == 2 && two_nodes.len() == 2 {
            let queues: HashSet<&str> =
                reporting.iter().filter_map(|series| series["metric"]["queue_id"].as_str()).collect();
            assert_eq!(queues.len(), 1, "one queue_id label for both nodes: {reporting:?}");
            break;
        }
        assert!(Instant::now() < deadline, "prometheus never saw both nodes report the queue");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let value = |series: &Value| series["value"][1].as_str().and_then(|text| text.parse::<f64>().ok());
    let naive = prometheus.query(client, "sum(jobd_queue_depth{state=\"scheduled\"})").await;
    assert_eq!(naive.first().and_then(value), Some(20.0), "a sum over nodes counts the queue twice");
    let depth = prometheus.query(client, &dashboard_expression("Queue depth by state")).await;
    let scheduled = depth.iter().find(|series| series["metric"]["state"] == "scheduled").and_then(value);
    assert_eq!(scheduled, Some(10.0), "the dashboard counts the queue once: {depth:?}");
    let fill = prometheus.query(client, &dashboard_expression("Queue fill (unfinished / max_queue)")).await;
    assert_eq!(fill.first().and_then(value), Some(1.0), "{fill:?}");
    let nodes_panel = prometheus.query(client, &dashboard_expression("Nodes sharing each queue")).await;
    assert_eq!(nodes_panel.iter().filter_map(value).collect::<Vec<_>>(), [2.0], "{nodes_panel:?}");

    // The capacity alert's condition holds (its `for` keeps it pending): once for the
    // queue, not once per node.
    let near_capacity = || async {
        let answer: Value = client
            .get(format!("{}/api/v1/alerts", prometheus.base))
            .send()
            .await
            .expect("GET alerts")
            .json()
            .await
            .expect("alerts JSON");
        let alerts = answer["data"]["alerts"].as_array().cloned().unwrap_or_default();
        alerts.into_iter().filter(|alert| alert["labels"]["alertname"] == "JobdQueueNearCapacity").collect::<Vec<_>>()
    };
    let deadline = Instant::now() + common::WAIT_DEADLINE;
    while near_capacity().await.is_empty() {
        assert!(Instant::now() < deadline, "the capacity alert never became pending");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Two more evaluations, in which an alert per node would have appeared.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pending = near_capacity().await;
    assert_eq!(pending.len(), 1, "one alert for the one queue: {pending:?}");
    assert!(pending[0]["labels"]["queue_id"].is_string() && pending[0]["labels"]["instance"].is_null(), "{pending:?}");
}
