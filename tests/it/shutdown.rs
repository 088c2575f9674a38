//! SIGTERM drains: running jobs finish, late submissions get 503, the process exits 0.
//! A second signal exits at once.

use crate::common;

use std::time::{Duration, Instant};

use common::{Daemon, accepted_ids};
use serde_json::{Value, json};

async fn wait_for_log(daemon: &Daemon, message: &str) {
    let deadline = Instant::now() + common::WAIT_DEADLINE;
    while !daemon.log_records().iter().any(|record| record["message"] == message) {
        assert!(Instant::now() < deadline, "no log line {message:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn sigterm_lets_running_jobs_finish_refuses_new_ones_and_exits_zero() {
    let mut daemon = Daemon::start(&[("JOBD_MAX_WORKERS", "4"), ("JOBD_SHUTDOWN_TIMEOUT_SECS", "60")]);
    let jobs: Vec<_> = (0..4).map(|_| json!({"kind": "sleep", "payload": {"ms": 1500}})).collect();
    let running = accepted_ids(daemon.post_json("/v1/jobs", &json!({"jobs": jobs})).await).await;
    daemon.wait_for("4 running jobs", |stats| stats["counters"]["workers"]["bodies_running"] == 4).await;

    daemon.signal("TERM");
    wait_for_log(&daemon, "shutting down: draining running jobs").await;

    let response = daemon.post_json("/v1/jobs", &json!({"kind": "noop"})).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let problem: Value = response.json().await.expect("problem body");
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("shutting down")), "{problem}");
    let ready = daemon.client.get(daemon.url("/readyz")).send().await.expect("readyz");
    assert_eq!(ready.status(), 503);
    let live = daemon.client.get(daemon.url("/healthz")).send().await.expect("healthz");
    assert_eq!(live.status(), 200, "alive while draining");

    let status = daemon.wait_exit();
    assert_eq!(status.code(), Some(0), "clean exit after the drain");
    let records = daemon.log_records();
    for id in &running {
        let finished = records.iter().any(|record| {
            record["message"] == "job finished" && record["outcome"] == "succeeded" && record["span"]["job_id"] == **id
        });
        assert!(finished, "running job {id} finished before exit");
    }
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let mut daemon = Daemon::start(&[("JOBD_MAX_WORKERS", "1"), ("JOBD_SHUTDOWN_TIMEOUT_SECS", "600")]);
    accepted_ids(daemon.post_json("/v1/jobs", &json!({"kind": "sleep", "payload": {"ms": 600000}})).await).await;
    daemon.wait_for("the long job", |stats| stats["counters"]["workers"]["bodies_running"] == 1).await;
    daemon.signal("TERM");
    wait_for_log(&daemon, "shutting down: draining running jobs").await;
    daemon.signal("INT");
    let status = daemon.wait_exit();
    assert_eq!(status.code(), Some(1), "the second signal does not wait for the 10-minute job");
}
