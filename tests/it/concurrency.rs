//! The worker pool against a real daemon: the bound on concurrent jobs, and panics that
//! restart a worker without shrinking the pool.

use crate::common;

use common::{Daemon, accepted_ids, finished};
use serde_json::json;

#[tokio::test]
async fn a_thousand_jobs_never_run_more_than_max_workers_at_once() {
    let daemon = Daemon::start(&[("JOBD_MAX_WORKERS", "4")]);
    let jobs: Vec<_> = (0..1000).map(|n| json!({"kind": "sleep", "payload": {"ms": 1 + n % 3}})).collect();
    // Several requests, so jobs arrive while others run.
    let mut ids = Vec::new();
    for chunk in jobs.chunks(250) {
        ids.extend(accepted_ids(daemon.post_json("/v1/jobs", &json!({"jobs": chunk})).await).await);
    }
    assert_eq!(ids.len(), 1000);
    let stats = daemon.wait_for("1000 jobs", |stats| finished(stats) == 1000).await;
    let workers = &stats["counters"]["workers"];
    assert_eq!(stats["counters"]["jobs"]["succeeded"], 1000, "{stats}");
    // Counted inside the job bodies themselves, independent of the Dispatcher.
    assert_eq!(workers["bodies_running_peak"], 4, "at most 4, and the pool was used fully: {stats}");
    assert_eq!(workers["total"], 4);
}

#[tokio::test]
async fn a_panicking_job_restarts_its_worker_and_the_pool_stays_full() {
    let daemon = Daemon::start(&[("JOBD_MAX_WORKERS", "3")]);
    let panics: Vec<_> = (0..5)
        .map(|n| json!({"kind": "panic", "payload": {"message": format!("boom {n}")}, "max_attempts": 1}))
        .collect();
    accepted_ids(daemon.post_json("/v1/jobs", &json!({"jobs": panics})).await).await;
    let stats = daemon.wait_for("5 panics", |stats| finished(stats) == 5).await;
    assert_eq!(stats["counters"]["jobs"]["panicked"], 5, "{stats}");
    let stats = daemon.wait_for("5 restarts", |stats| stats["counters"]["workers"]["restarts"] == 5).await;
    assert_eq!(stats["counters"]["workers"]["total"], 3, "{stats}");

    // The pool still runs three jobs at once.
    let sleeps: Vec<_> = (0..30).map(|_| json!({"kind": "sleep", "payload": {"ms": 30}})).collect();
    accepted_ids(daemon.post_json("/v1/jobs", &json!({"jobs": sleeps})).await).await;
    let stats = daemon.wait_for("30 sleeps", |stats| finished(stats) == 35).await;
    assert_eq!(stats["counters"]["jobs"]["succeeded"], 30, "{stats}");
    assert_eq!(stats["counters"]["workers"]["bodies_running_peak"], 3, "{stats}");

    let panicked_lines = daemon
        .wait_for_logs("panics", 5, |record| {
            record["outcome"] == "panicked" && record["span"]["job_id"].as_str().is_some_and(|id| id.len() == 36)
        })
        .await;
    assert_eq!(panicked_lines.len(), 5, "each panic is logged once, with its job id");
}
