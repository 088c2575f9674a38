//! The named queues' figures, (16) and (17), on SQLite at the defaults: how soon a job of
//! the highest priority starts behind a backlog of the lowest, and what a declared queue
//! with limits that never bind costs end to end against the default queue.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Daemon, Figure, submit_batches, wait_succeeded};

/// The backlog of (16), as issue 34's test 4 puts it.
const BACKLOG: u64 = 100_000;
/// Jobs per round of (17); the rounds run in the order default, declared, declared,
/// default, so that a drift of the machine weighs on both sides alike.
const ROUND_JOBS: u64 = 300_000;

pub(super) async fn figures(client: &reqwest::Client) -> Vec<Figure> {
    let mut figures = Vec::new();
    if super::wanted(&[16]) {
        figures.push(priority_behind_a_backlog(client).await);
    }
    if super::wanted(&[17]) {
        figures.push(declared_queue_against_default(client).await);
    }
    figures
}

/// (16): 100,000 noop jobs of priority 0, submitted while the default queue is paused (the
/// workers outrun the submitters, so no backlog would build otherwise); the queue resumes,
/// and once the backlog runs (a tenth of it done) one job of priority 9 comes. The time
/// from its acceptance to its start, from its record.
async fn priority_behind_a_backlog(client: &reqwest::Client) -> Figure {
    let daemon = Daemon::start(&[("JOBD_CONFIG", "/dev/null")]);
    let set_paused = |action: &'static str| {
        let url = daemon.url(&format!("/v1/queues/default/{action}"));
        async move { assert!(client.post(url).send().await.expect(action).status().is_success(), "{action}") }
    };
    set_paused("pause").await;
    submit_batches(client, &daemon, BACKLOG, 1000, 4, |_| json!({"kind": "noop", "priority": 0})).await;
    set_paused("resume").await;
    wait_succeeded(client, &daemon, BACKLOG / 10).await;
    let answer: Value = client
        .post(daemon.url("/v1/jobs"))
        .json(&json!({"kind": "noop", "priority": 9}))
        .send()
        .await
        .expect("submit")
        .json()
        .await
        .expect("answer");
    let id = answer["jobs"][0]["id"].as_str().expect("an id").to_owned();
    let record = loop {
        let record: Value =
            client.get(daemon.url(&format!("/v1/jobs/{id}"))).send().await.expect("get").json().await.expect("json");
        if record["state"] == "succeeded" {
            break record;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let queued = super::stats(client, &daemon).await["queue"]["queued"].as_u64().unwrap_or(0);
    let at = |field: &str| chrono::DateTime::parse_from_rfc3339(record[field].as_str().expect("a time")).expect("time");
    let waited = (at("started_at") - at("created_at")).num_milliseconds();
    println!("(16) priority 9 behind {BACKLOG}: started after {waited} ms, {queued} of the backlog still queued");
    Figure {
        number: "16",
        name: "SQLite at its defaults: a priority-9 noop job submitted behind 100,000 queued priority-0 noop jobs \
               (once a tenth of them ran), from accepted to started",
        value: format!("{waited} ms ({queued} of the backlog still queued when it had run)"),
        target: "< 100 ms (issue 34)",
        met: Some(waited < 100),
    }
}

/// (17): end to end noop jobs/s through a declared queue whose limit never binds (its
/// `concurrency` is the pool), against the default queue.
async fn declared_queue_against_default(client: &reqwest::Client) -> Figure {
    let config = tempfile::NamedTempFile::new().expect("config file");
    std::fs::write(config.path(), "[queues.work]\nconcurrency = 16\n").expect("config");
    let config = config.path().to_str().expect("utf-8").to_owned();
    let mut elapsed = [Duration::ZERO; 2];
    for declared in [false, true, true, false] {
        let daemon = Daemon::start(&[("JOBD_CONFIG", &config)]);
        let job = if declared { json!({"kind": "noop", "queue": "work"}) } else { json!({"kind": "noop"}) };
        let started = Instant::now();
        submit_batches(client, &daemon, ROUND_JOBS, 1000, 4, move |_| job.clone()).await;
        let done = wait_succeeded(client, &daemon, ROUND_JOBS).await;
        let round = done - started;
        println!(
            "(17) {} queue: {:.0} noop jobs/s",
            if declared { "declared" } else { "default" },
            ROUND_JOBS as f64 / round.as_secs_f64()
        );
        elapsed[usize::from(declared)] += round;
    }
    let rate = |time: Duration| 2.0 * ROUND_JOBS as f64 / time.as_secs_f64();
    let (plain, declared) = (rate(elapsed[0]), rate(elapsed[1]));
    let ratio = declared / plain;
    Figure {
        number: "17",
        name: "SQLite at its defaults: end to end noop jobs/s through a declared queue with limits that do not bind \
               (concurrency = the pool), against the default queue; 300,000 jobs a round, 4 rounds",
        value: format!("{declared:.0} vs {plain:.0}: {ratio:.2} x"),
        target: ">= 0.9 x (issue 34)",
        met: Some(ratio >= 0.9),
    }
}
