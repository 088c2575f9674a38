//! Named queues over HTTP, on a real daemon (and, on the PostgreSQL pass, on its private
//! cluster): a job names a declared queue or gets a 400 naming `queue`; a pause starts
//! nothing of its queue while the others run, outlives a restart, and a resume drains it;
//! a queue the configuration starts paused stays as an operator left it.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Daemon, accepted_ids};

const CONFIG: &str = "[queues.bulk]\n\n[queues.held]\npaused = true\n\n[queues.urgent]\nconcurrency = 2\n";

async fn submit_to(daemon: &Daemon, queue: &str, count: usize) -> Vec<String> {
    let jobs: Vec<Value> = (0..count).map(|_| json!({"kind": "noop", "queue": queue})).collect();
    let response = daemon.post_json("/v1/jobs", &json!({"jobs": jobs})).await;
    assert_eq!(response.status(), 202, "submitting to {queue}");
    accepted_ids(response).await
}

async fn queue_info(daemon: &Daemon, name: &str) -> Value {
    let list: Value =
        daemon.client.get(daemon.url("/v1/queues")).send().await.expect("list").json().await.expect("json");
    list["queues"].as_array().expect("queues").iter().find(|queue| queue["name"] == name).cloned().unwrap_or_default()
}

async fn set_paused(daemon: &Daemon, name: &str, action: &str) -> reqwest::Response {
    daemon.client.post(daemon.url(&format!("/v1/queues/{name}/{action}"))).send().await.expect("pause or resume")
}

/// Waits until every job of `ids` succeeded.
async fn all_succeed(daemon: &Daemon, ids: &[String]) {
    for id in ids {
        daemon.wait_for_job(id, "succeeded", |job| job["state"] == "succeeded").await;
    }
}

async fn states(daemon: &Daemon, ids: &[String]) -> Vec<String> {
    let mut states = Vec::new();
    for id in ids {
        let job = daemon.job(id).await.expect("the job");
        states.push(job["state"].as_str().unwrap_or_default().to_owned());
    }
    states
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_queue_starts_nothing_outlives_a_restart_and_drains_on_resume() {
    let data_dir = tempfile::tempdir().expect("data dir");
    let config = data_dir.path().join("jobd.toml");
    std::fs::write(&config, CONFIG).expect("config");
    let config = config.to_str().expect("utf-8 path").to_owned();
    let daemon = Daemon::start_in(data_dir, &[("JOBD_CONFIG", &config)]);

    // A job names a declared queue, or is refused naming the field; nothing of it is kept.
    let response =
        daemon.post_json("/v1/jobs", &json!({"jobs": [{"kind": "noop"}, {"kind": "noop", "queue": "nope"}]})).await;
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.expect("problem");
    assert_eq!(problem["errors"][0]["field"], "queue", "{problem}");
    assert!(problem["errors"][0]["message"].as_str().is_some_and(|text| text.contains("bulk, default, held, urgent")));
    assert_eq!(set_paused(&daemon, "nope", "pause").await.status(), 404);

    assert_eq!(set_paused(&daemon, "bulk", "pause").await.status(), 200);
    let bulk = submit_to(&daemon, "bulk", 5).await;
    let held = submit_to(&daemon, "held", 2).await;
    let default = submit_to(&daemon, "default", 3).await;
    all_succeed(&daemon, &default).await;
    let urgent = submit_to(&daemon, "urgent", 4).await;
    all_succeed(&daemon, &urgent).await;
    // Past the other queues' jobs and a read of the pauses (every 250 ms), nothing of the
    // paused queues started.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(states(&daemon, &bulk).await.iter().all(|state| state == "queued"));
    assert!(states(&daemon, &held).await.iter().all(|state| state == "queued"), "held starts paused");
    let info = queue_info(&daemon, "bulk").await;
    assert_eq!(info["paused"], true, "{info}");
    assert_eq!(info["declared"], true);
    assert_eq!(info["depth"]["queued"], 5, "{info}");
    assert_eq!(queue_info(&daemon, "urgent").await["concurrency"], 2);
    assert_eq!(queue_info(&daemon, "default").await["paused"], false);
    let record = daemon.job(&urgent[0]).await.expect("the job");
    assert_eq!(record["queue"], "urgent");

    // An operator's resume of a queue the configuration starts paused outlives restarts.
    assert_eq!(set_paused(&daemon, "held", "resume").await.status(), 200);
    all_succeed(&daemon, &held).await;

    daemon.signal("TERM");
    let mut daemon = daemon;
    assert!(daemon.wait_exit().success());
    let daemon = Daemon::start_in(daemon.into_data_dir(), &[("JOBD_CONFIG", &config)]);
    let held_after = submit_to(&daemon, "held", 1).await;
    let default_after = submit_to(&daemon, "default", 1).await;
    all_succeed(&daemon, &default_after).await;
    all_succeed(&daemon, &held_after).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(states(&daemon, &bulk).await.iter().all(|state| state == "queued"), "the pause outlived the restart");
    assert_eq!(queue_info(&daemon, "bulk").await["paused"], true);

    let resumed = set_paused(&daemon, "bulk", "resume").await;
    assert_eq!(resumed.status(), 200);
    assert_eq!(resumed.json::<Value>().await.expect("json")["paused"], false);
    all_succeed(&daemon, &bulk).await;
    assert_eq!(queue_info(&daemon, "bulk").await["depth"]["queued"], 0);
}
