//! Failures against a real daemon: panics under load, retries with backoff, timeouts,
//! blocking job bodies, a hundred thousand delayed jobs on one timer, worker replacement,
//! and the dead-letter, retry and cancel API.

use crate::common;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::{Daemon, accepted_ids};
use serde_json::{Value, json};

fn time(value: &Value) -> DateTime<Utc> {
    value.as_str().and_then(|text| DateTime::parse_from_rfc3339(text).ok()).expect("an RFC 3339 time").to_utc()
}

fn threads_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status.lines().find_map(|line| line.strip_prefix("Threads:")).and_then(|n| n.trim().parse().ok()).expect("Threads")
}

#[tokio::test]
async fn a_fifth_of_five_thousand_jobs_panic_and_the_daemon_and_pool_survive() {
    let daemon = Daemon::start(&[
        ("JOBD_MAX_WORKERS", "8"),
        ("JOBD_RETRY_BASE_MS", "5"),
        ("JOBD_RETRY_CAP_MS", "50"),
        ("JOBD_LOG", "warn,jobd::server=info"),
    ]);
    let pid = daemon.pid();
    let jobs: Vec<Value> = (0..5000)
        .map(|n| {
            if n % 5 == 0 {
                json!({"kind": "panic", "payload": {"message": format!("bug {n}")}, "max_attempts": 3})
            } else {
                json!({"kind": "sleep", "payload": {"ms": 1}})
            }
        })
        .collect();
    for chunk in jobs.chunks(500) {
        accepted_ids(daemon.post_json("/v1/jobs", &json!({"jobs": chunk})).await).await;
    }
    daemon
        .wait_for("every job at its end", |stats| {
            let jobs = &stats["counters"]["jobs"];
            jobs["succeeded"] == 4000 && jobs["dead"] == 1000
        })
        .await;
    // The pool's counters move when an attempt ends, the jobs' counters once its outcome
    // is committed: both are read once they have caught up.
    let stats = daemon
        .wait_for("the pool idle and every death recorded", |stats| {
            stats["counters"]["workers"]["busy"] == 0 && stats["queue"]["dead"] == 1000
        })
        .await;
    assert_eq!(daemon.pid(), pid);
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "same process, still alive");
    let workers = &stats["counters"]["workers"];
    assert_eq!(workers["total"], 8, "idle + busy is back to max_workers: {stats}");
    assert_eq!(workers["idle"], 8);
    assert_eq!(stats["counters"]["jobs"]["panicked"], 3000, "1000 jobs × 3 attempts");
    assert_eq!(workers["restarts"], 3000, "one restart per panic");
    assert_eq!(stats["queue"]["dead"], 1000);

    let dead = daemon.list_all("dead").await;
    assert_eq!(dead.len(), 1000);
    for record in &dead {
        assert_eq!(record["kind"], "panic");
        assert_eq!(record["attempts"], 3, "{record}");
        assert!(record["last_error"].as_str().is_some_and(|e| e.starts_with("panicked: bug ")), "{record}");
    }
    assert_eq!(daemon.list_all("succeeded").await.len(), 4000);
}

#[tokio::test]
async fn a_failing_job_is_attempted_exactly_max_attempts_times_with_growing_waits() {
    let daemon = Daemon::start(&[("JOBD_RETRY_BASE_MS", "100"), ("JOBD_RETRY_CAP_MS", "10000")]);
    let id = accepted_ids(
        daemon
            .post_json("/v1/jobs", &json!({"kind": "fail", "payload": {"message": "flaky"}, "max_attempts": 4}))
            .await,
    )
    .await
    .remove(0);
    let deadline = Instant::now() + common::WAIT_DEADLINE;
    let record = loop {
        let record = daemon.job(&id).await.expect("record");
        if record["state"] == "dead" {
            break record;
        }
        assert!(Instant::now() < deadline, "never dead: {record}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(record["attempts"], 4);
    assert_eq!(record["last_error"], "flaky");

    let attempts =
        daemon.wait_for_logs("4 attempts", 4, |r| r["message"] == "job finished" && r["span"]["job_id"] == *id).await;
    let retries =
        daemon.wait_for_logs("3 retries", 3, |r| r["message"] == "job will be retried" && r["job_id"] == *id).await;
    assert_eq!(attempts.len(), 4, "exactly max_attempts attempts");
    assert_eq!(retries.len(), 3);
    for (n, retry) in retries.iter().enumerate() {
        let attempt = n as u64 + 1;
        assert_eq!(retry["attempt"], attempt, "in order");
        let failed_at = time(&attempts[n]["timestamp"]);
        let retry_at = time(&retry["retry_at"]);
        let next_attempt_at = time(&attempts[n + 1]["timestamp"]);
        assert_eq!(attempts[n + 1]["span"]["attempt"], attempt + 1);
        // Jitter with a floor: each wait is between half of and all of
        // base × 2^(attempt−1), and the next attempt never starts before its time.
        let ceiling = chrono::Duration::milliseconds(100 << (attempt - 1));
        assert!(retry_at - failed_at <= ceiling + chrono::Duration::milliseconds(20), "wait {attempt} too long");
        assert!(retry_at - failed_at >= ceiling / 2 - chrono::Duration::milliseconds(20), "wait {attempt} too short");
        assert!(next_attempt_at >= retry_at, "attempt {} started early", attempt + 1);
    }
}

#[tokio::test]
async fn permanent_errors_go_straight_to_dead() {
    let daemon = Daemon::start(&[]);
    let id = accepted_ids(
        daemon
            .post_json(
                "/v1/jobs",
                &json!({"kind": "fail", "payload": {"message": "invalid customer", "retryable": false}}),
            )
            .await,
    )
    .await
    .remove(0);
    daemon.wait_for("the dead job", |stats| stats["queue"]["dead"] == 1).await;
    let record = daemon.job(&id).await.expect("record");
    assert_eq!((record["state"].as_str(), record["attempts"].as_u64()), (Some("dead"), Some(1)));
    assert_eq!(record["max_attempts"], 25, "the default applies, and was not used up");
}

#[tokio::test]
async fn timeouts_abandon_attempts_and_a_blocking_job_does_not_stall_the_others() {
    let daemon = Daemon::start(&[("JOBD_MAX_WORKERS", "4"), ("JOBD_RETRY_BASE_MS", "10")]);
    let slow = json!({"kind": "sleep", "payload": {"ms": 60000}, "timeout_ms": 200, "max_attempts": 2});
    let slow_id = accepted_ids(daemon.post_json("/v1/jobs", &slow).await).await.remove(0);
    let blocking = json!({"kind": "sleep", "payload": {"ms": 3000, "blocking": true}});
    let blocking_id = accepted_ids(daemon.post_json("/v1/jobs", &blocking).await).await.remove(0);
    daemon.wait_for("the blocking job", |stats| stats["queue"]["running"].as_u64() >= Some(1)).await;

    // Forty short jobs all finish on the other workers while the blocking one holds its thread.
    let short: Vec<Value> = (0..40).map(|_| json!({"kind": "sleep", "payload": {"ms": 20}})).collect();
    let short_ids = accepted_ids(daemon.post_json("/v1/jobs", &json!({"jobs": short})).await).await;
    daemon.wait_for("the short jobs", |stats| stats["counters"]["jobs"]["succeeded"] == 40).await;
    let blocking_record = daemon.job(&blocking_id).await.expect("record");
    assert_eq!(blocking_record["state"], "running", "the short jobs did not wait for the blocking one");
    for id in &short_ids {
        daemon.wait_for_job(id, "a short job's record", |record| record["state"] == "succeeded").await;
    }

    // The slow job timed out twice and is dead.
    daemon.wait_for("the timed-out job", |stats| stats["counters"]["jobs"]["timed_out"] == 2).await;
    daemon.wait_for("its record", |stats| stats["queue"]["dead"] == 1).await;
    let slow_record = daemon.job(&slow_id).await.expect("record");
    assert_eq!(slow_record["attempts"], 2);
    assert_eq!(slow_record["last_error"], "timed out after 200 ms");

    // A blocking job past its timeout is abandoned too, and its worker runs the next job.
    let stuck =
        json!({"kind": "sleep", "payload": {"ms": 2000, "blocking": true}, "timeout_ms": 100, "max_attempts": 1});
    let stuck_id = accepted_ids(daemon.post_json("/v1/jobs", &stuck).await).await.remove(0);
    daemon.wait_for("the stuck job dead", |stats| stats["queue"]["dead"] == 2).await;
    assert_eq!(daemon.job(&stuck_id).await.expect("record")["last_error"], "timed out after 100 ms");
    accepted_ids(daemon.post_json("/v1/jobs", &json!({"kind": "noop"})).await).await;
    daemon.wait_for("the next job", |stats| stats["counters"]["jobs"]["succeeded"] == 41).await;
}

/// Bodies that run beside the actors (as a webhook's do) are contained like the others: a
/// panic restarts only its worker, a timeout cuts the attempt off, and the pool goes on. At
/// the defaults; `max_attempts` and `timeout_ms` are the jobs' own options.
#[tokio::test]
async fn panics_and_timeouts_of_bodies_beside_the_actors_are_contained() {
    let daemon = Daemon::start(&[]);
    let pid = daemon.pid();
    let stuck =
        json!({"kind": "sleep", "payload": {"ms": 60000, "beside_actors": true}, "timeout_ms": 300, "max_attempts": 1});
    let stuck_id = accepted_ids(daemon.post_json("/v1/jobs", &stuck).await).await.remove(0);
    let jobs: Vec<Value> = (0..40)
        .map(|n| {
            if n % 2 == 0 {
                json!({"kind": "panic", "payload": {"message": format!("beside {n}"), "beside_actors": true}, "max_attempts": 1})
            } else {
                json!({"kind": "sleep", "payload": {"ms": 5, "beside_actors": true}})
            }
        })
        .collect();
    accepted_ids(daemon.post_json("/v1/jobs", &json!({"jobs": jobs})).await).await;
    // The queue's counts show a finish once it commits; the counters of attempts, once the
    // Dispatcher has the commit's answer, a moment later. So the wait is for both: 21 dead
    // jobs, and 21 of their ends counted, whatever their outcome.
    let stats = daemon
        .wait_for("every job at its end, recorded", |stats| {
            let jobs = &stats["counters"]["jobs"];
            let ends = jobs["panicked"].as_u64().unwrap_or(0) + jobs["timed_out"].as_u64().unwrap_or(0);
            jobs["succeeded"] == 20
                && stats["queue"]["dead"] == 21
                && ends == 21
                && stats["counters"]["workers"]["busy"] == 0
        })
        .await;
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "same process, still alive");
    assert_eq!(stats["counters"]["jobs"]["panicked"], 20, "{stats}");
    assert_eq!(stats["counters"]["jobs"]["timed_out"], 1, "{stats}");
    assert_eq!(stats["counters"]["workers"]["restarts"], 20, "one restart per panic: {stats}");
    assert_eq!(stats["counters"]["workers"]["idle"], stats["counters"]["workers"]["total"], "{stats}");
    assert_eq!(daemon.job(&stuck_id).await.expect("record")["last_error"], "timed out after 300 ms");
    let dead = daemon.list_all("dead").await;
    let panicked: Vec<&Value> = dead.iter().filter(|record| record["kind"] == "panic").collect();
    assert_eq!(panicked.len(), 20);
    for record in panicked {
        assert!(record["last_error"].as_str().is_some_and(|e| e.starts_with("panicked: beside ")), "{record}");
    }
    accepted_ids(daemon.post_json("/v1/jobs", &json!({"kind": "noop"})).await).await;
    daemon.wait_for("the next job", |stats| stats["counters"]["jobs"]["succeeded"] == 21).await;
}

#[tokio::test]
async fn a_hundred_thousand_delayed_jobs_run_in_due_order_none_early_on_one_timer() {
    let daemon = Daemon::start(&[("JOBD_LOG", "warn,jobd::server=info")]);
    const JOBS: u64 = 100_000;
    const SPREAD_MS: u64 = 60_000;
    let submitted_at = Instant::now();
    for first in (0..JOBS).step_by(2000) {
        let jobs: Vec<Value> =
            (first..first + 2000).map(|n| json!({"kind": "noop", "delay_ms": n * SPREAD_MS / JOBS})).collect();
        let response = daemon.post_json("/v1/jobs", &json!({"jobs": jobs})).await;
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.expect("JSON");
        if first > 0 {
            assert!(body["jobs"].as_array().expect("jobs").iter().all(|job| job["state"] == "scheduled"));
        }
    }
    let mut samples = Vec::new();
    loop {
        let stats = daemon.stats().await;
        let runtime = &stats["runtime"];
        let sample = (
            threads_of(daemon.pid()),
            runtime["delay_timers"].as_u64().expect("delay timers"),
            runtime["body_tasks"].as_u64().expect("body tasks"),
            stats["queue"]["scheduled"].as_u64().expect("scheduled"),
        );
        println!("threads {}, delay timers {}, body tasks {}, scheduled {}", sample.0, sample.1, sample.2, sample.3);
        samples.push(sample);
        if stats["counters"]["jobs"]["succeeded"] == JOBS {
            break;
        }
        assert!(submitted_at.elapsed() < Duration::from_secs(600), "the delayed jobs never all ran");
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let threads: Vec<u64> = samples.iter().map(|s| s.0).collect();
    let tasks: Vec<u64> = samples.iter().map(|s| s.2).collect();
    assert!(samples.iter().all(|s| s.1 <= 1), "one timer at most for all delayed jobs");
    let (min_threads, max_threads) = (threads.iter().min().copied(), threads.iter().max().copied());
    let (min_tasks, max_tasks) = (tasks.iter().min().copied(), tasks.iter().max().copied());
    println!(
        "threads {min_threads:?}..{max_threads:?}, tasks {min_tasks:?}..{max_tasks:?} over {} samples",
        samples.len()
    );
    assert!(samples.iter().any(|s| s.3 > 50_000), "the samples saw a large delayed backlog");
    assert!(max_threads.unwrap_or(0) <= min_threads.unwrap_or(0) + 4, "threads grew: {threads:?}");
    assert!(max_tasks.unwrap_or(0) <= min_tasks.unwrap_or(0) + 20, "tasks grew: {tasks:?}");
    assert!(max_tasks.unwrap_or(u64::MAX) <= 16, "no task per job, at most one per worker: {tasks:?}");

    let mut records = daemon.list_all("succeeded").await;
    assert_eq!(records.len() as u64, JOBS);
    for record in &records {
        assert!(time(&record["started_at"]) >= time(&record["run_at"]), "started early: {record}");
    }
    records.sort_by_key(|record| (time(&record["run_at"]), record["id"].as_str().unwrap_or_default().to_owned()));
    let out_of_order =
        records.windows(2).filter(|pair| time(&pair[1]["started_at"]) < time(&pair[0]["started_at"])).count();
    assert_eq!(out_of_order, 0, "jobs started in due order");
}

#[tokio::test]
async fn a_worker_that_dies_outside_supervision_is_replaced() {
    let daemon = Daemon::start(&[("JOBD_MAX_WORKERS", "3"), ("JOBD_RETRY_BASE_MS", "10")]);
    let job = json!({"kind": "panic", "payload": {"message": "actor bug", "in_worker": true}, "max_attempts": 2});
    let id = accepted_ids(daemon.post_json("/v1/jobs", &job).await).await.remove(0);
    daemon.wait_for("the job dead", |stats| stats["queue"]["dead"] == 1).await;
    let record = daemon.job(&id).await.expect("record");
    assert_eq!(record["attempts"], 2);
    assert_eq!(record["last_error"], "the worker running the job died");
    let stats = daemon.wait_for("the pool whole", |stats| stats["counters"]["workers"]["total"] == 3).await;
    assert_eq!(stats["counters"]["workers"]["replacements"], 2, "{stats}");

    // The replaced pool still runs three jobs at once.
    let sleeps: Vec<Value> = (0..12).map(|_| json!({"kind": "sleep", "payload": {"ms": 50}})).collect();
    accepted_ids(daemon.post_json("/v1/jobs", &json!({"jobs": sleeps})).await).await;
    let stats = daemon.wait_for("the sleeps", |stats| stats["counters"]["jobs"]["succeeded"] == 12).await;
    assert_eq!(stats["counters"]["workers"]["bodies_running_peak"], 3, "{stats}");
}

#[tokio::test]
async fn dead_letters_are_listed_retried_and_queued_jobs_cancelled() {
    let daemon = Daemon::start(&[("JOBD_MAX_WORKERS", "1")]);
    let permanent = |n: u64| json!({"kind": "fail", "payload": {"message": format!("bad {n}"), "retryable": false}});
    let dead_ids =
        accepted_ids(daemon.post_json("/v1/jobs", &json!({"jobs": [permanent(0), permanent(1), permanent(2)]})).await)
            .await;
    daemon.wait_for("three dead", |stats| stats["queue"]["dead"] == 3).await;

    // Newest first, paged with a cursor.
    let page: Value = daemon
        .client
        .get(daemon.url("/v1/jobs?state=dead&limit=2"))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    let ids: Vec<&str> = page["jobs"].as_array().expect("jobs").iter().filter_map(|job| job["id"].as_str()).collect();
    assert_eq!(ids, [dead_ids[2].as_str(), dead_ids[1].as_str()]);
    let cursor = page["next_cursor"].as_str().expect("a next page");
    let rest: Value = daemon
        .client
        .get(daemon.url(&format!("/v1/jobs?state=dead&limit=2&cursor={cursor}")))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    assert_eq!(rest["jobs"][0]["id"], dead_ids[0].as_str());
    assert!(rest["next_cursor"].is_null());
    for bad in ["state=sleepy", "limit=0", "limit=5000", "cursor=abc", "colour=red"] {
        let response = daemon.client.get(daemon.url(&format!("/v1/jobs?{bad}"))).send().await.expect("GET");
        assert_eq!(response.status(), 400, "{bad}");
    }

    // Retry: a dead job runs again with its attempts reset; anything else is refused.
    let response =
        daemon.client.post(daemon.url(&format!("/v1/jobs/{}/retry", dead_ids[0]))).send().await.expect("POST");
    assert_eq!(response.status(), 202);
    daemon.wait_for("the retried job dead again", |stats| stats["counters"]["jobs"]["dead"] == 4).await;
    let record = daemon.wait_for_job(&dead_ids[0], "its record dead", |record| record["state"] == "dead").await;
    assert_eq!((record["state"].as_str(), record["attempts"].as_u64()), (Some("dead"), Some(1)), "attempts were reset");
    let ok = accepted_ids(daemon.post_json("/v1/jobs", &json!({"kind": "noop"})).await).await.remove(0);
    daemon.wait_for("the noop", |stats| stats["counters"]["jobs"]["succeeded"] == 1).await;
    let retry_status = |id: String| {
        let request = daemon.client.post(daemon.url(&format!("/v1/jobs/{id}/retry")));
        async move { request.send().await.expect("POST").status().as_u16() }
    };
    assert_eq!(retry_status(ok.clone()).await, 409, "a succeeded job is not retried");
    assert_eq!(retry_status("01900000-0000-7000-8000-000000000000".to_owned()).await, 404);
    assert_eq!(retry_status("nonsense".to_owned()).await, 404);

    // Cancel: a scheduled job and a queued one never run; running and finished ones are 409.
    let scheduled =
        accepted_ids(daemon.post_json("/v1/jobs", &json!({"kind": "noop", "delay_ms": 60000})).await).await.remove(0);
    let running = accepted_ids(daemon.post_json("/v1/jobs", &json!({"kind": "sleep", "payload": {"ms": 1500}})).await)
        .await
        .remove(0);
    daemon.wait_for("the sleep running", |stats| stats["queue"]["running"] == 1).await;
    let queued = accepted_ids(daemon.post_json("/v1/jobs", &json!({"kind": "noop"})).await).await.remove(0);
    let listed = daemon.list_all("scheduled").await;
    assert_eq!(listed.iter().filter_map(|job| job["id"].as_str()).collect::<Vec<_>>(), [scheduled.as_str()]);
    let cancel = |id: String| {
        let request = daemon.client.delete(daemon.url(&format!("/v1/jobs/{id}")));
        async move { request.send().await.expect("DELETE").status().as_u16() }
    };
    assert_eq!(cancel(scheduled.clone()).await, 200);
    assert_eq!(cancel(queued.clone()).await, 200);
    assert_eq!(cancel(scheduled.clone()).await, 409, "already cancelled");
    assert_eq!(cancel(running.clone()).await, 409, "running");
    assert_eq!(cancel(ok).await, 409, "finished");
    assert_eq!(cancel("01900000-0000-7000-8000-000000000000".to_owned()).await, 404);

    daemon.wait_for("the sleep done", |stats| stats["counters"]["jobs"]["succeeded"] == 2).await;
    // Let the Dispatcher go idle; the cancelled queued job must not have started.
    accepted_ids(daemon.post_json("/v1/jobs", &json!({"kind": "noop"})).await).await;
    daemon.wait_for("a later job", |stats| stats["counters"]["jobs"]["succeeded"] == 3).await;
    for id in [&scheduled, &queued] {
        let record = daemon.job(id).await.expect("record");
        assert_eq!(record["state"], "cancelled", "{record}");
        assert!(record["started_at"].is_null(), "never ran: {record}");
    }
    assert_eq!(daemon.list_all("cancelled").await.len(), 2);
}

/// After a `200` from DELETE the job never starts, even when the Dispatcher's fetch lands
/// in the same queue batch as the cancel and claims the job before the cancel commits.
/// `test_cancel_hold_ms` makes the queue thread wait whenever a cancel arrives, so that the
/// fetch the Dispatcher sends meanwhile always shares the cancel's batch: the race is
/// made certain rather than left to chance. Otherwise default settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_never_starts_when_a_fetch_shares_the_cancels_batch() {
    let daemon = Daemon::start(&[("JOBD_TEST_CANCEL_HOLD_MS", "8000"), ("JOBD_LOG", "warn,jobd::server=info")]);
    // The sixteen default workers sleep, so the window fills past half and stops fetching.
    let sleepers: Vec<Value> = (0..16).map(|_| json!({"kind": "sleep", "payload": {"ms": 5000}})).collect();
    accepted_ids(daemon.post_json("/v1/jobs", &json!({"jobs": sleepers})).await).await;
    daemon.wait_for("a busy pool", |stats| stats["counters"]["workers"]["busy"] == 16).await;
    let mut ids = Vec::new();
    for _ in 0..17 {
        let noops: Vec<Value> = (0..1000).map(|_| json!({"kind": "noop"})).collect();
        ids.extend(accepted_ids(daemon.post_json("/v1/jobs", &json!({"jobs": noops})).await).await);
    }
    // A job past the window (at most 16,384 claimed, and no fetch out once it holds more
    // than half): its cancel reaches the queue while no fetch is out. The queue thread
    // holds it; the sleepers end, the window drains below half, and the fetch the
    // Dispatcher sends then claims this job in the same batch, ahead of the cancel.
    let victim = ids[16_500].clone();
    let status = daemon.client.delete(daemon.url(&format!("/v1/jobs/{victim}"))).send().await.expect("DELETE").status();
    assert_eq!(status, 200);
    let total = ids.len() as u64;
    daemon.wait_for("every other noop", |stats| stats["queue"]["queued"] == 0 && stats["queue"]["running"] == 0).await;
    let record = daemon.job(&victim).await.expect("record");
    assert_eq!(record["state"], "cancelled", "{record}");
    assert!(record["started_at"].is_null(), "{record}");
    let noops_run =
        daemon.metric("jobd_jobs_finished_total{kind=\"noop\",outcome=\"succeeded\"}").await.expect("the noop series");
    assert_eq!(noops_run as u64, total - 1, "the cancelled job ran");
}
