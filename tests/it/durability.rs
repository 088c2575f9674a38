//! The durable queue against a real daemon and real files: a 202 survives `kill -9`
//! at any moment, memory does not grow with the backlog, idempotency keys dedupe,
//! storage faults are answered with 503 and recovered from, and every state is readable.

use crate::common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Daemon, accepted_ids, finished, settled};
use serde_json::{Value, json};

const KILL_TEST_JOBS: usize = 20_000;
const KILL_TEST_BATCH: usize = 20;
const KILL_TEST_CLIENTS: usize = 8;

/// Submits `total` short sleep jobs from several concurrent clients, recording every id
/// answered with 202, until done or until the daemon goes away.
fn start_clients(daemon: &Daemon, total: usize) -> (Arc<Mutex<Vec<String>>>, Vec<tokio::task::JoinHandle<()>>) {
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let next = Arc::new(AtomicUsize::new(0));
    let gone = Arc::new(AtomicBool::new(false));
    let tasks = (0..KILL_TEST_CLIENTS)
        .map(|client_number| {
            let (accepted, next, gone) = (accepted.clone(), next.clone(), gone.clone());
            let url = daemon.url("/v1/jobs");
            let client = daemon.client.clone();
            tokio::spawn(async move {
                loop {
                    let start = next.fetch_add(KILL_TEST_BATCH, Ordering::Relaxed);
                    if start >= total || gone.load(Ordering::Relaxed) {
                        return;
                    }
                    let jobs: Vec<Value> = (start..start + KILL_TEST_BATCH)
                        .map(|n| json!({"kind": "sleep", "payload": {"ms": 1 + (n + client_number) % 5}}))
                        .collect();
                    match client.post(&url).json(&json!({"jobs": jobs})).send().await {
                        Ok(response) if response.status() == 202 => {
                            let ids = accepted_ids(response).await;
                            accepted.lock().expect("lock").extend(ids);
                        }
                        Ok(response) => panic!("unexpected answer {}", response.status()),
                        // The daemon was killed: whatever got no 202 was never promised.
                        Err(_) => {
                            gone.store(true, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    (accepted, tasks)
}

async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + common::WAIT_DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// How many times each job finished successfully, from a daemon's logs.
fn successes_by_job(logs: &Mutex<Vec<String>>, into: &mut HashMap<String, usize>) {
    for line in logs.lock().expect("log lock").iter() {
        let Ok(record) = serde_json::from_str::<Value>(line) else { continue };
        if record["message"] == "job finished" && record["outcome"] == "succeeded" {
            if let Some(id) = record["span"]["job_id"].as_str() {
                *into.entry(id.to_owned()).or_default() += 1;
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum KillMoment {
    DuringIngest,
    MidProcessing,
    DuringDrain,
}

async fn kill_9_and_recover(moment: KillMoment) {
    let settings = [("JOBD_MAX_WORKERS", "8"), ("JOBD_SHUTDOWN_TIMEOUT_SECS", "60")];
    let daemon = Daemon::start(&settings);
    let mut long_ids = Vec::new();
    if let KillMoment::DuringDrain = moment {
        // Eight long jobs occupy every worker, so the drain below lasts long enough to be
        // killed in the middle of.
        let long: Vec<Value> = (0..8).map(|_| json!({"kind": "sleep", "payload": {"ms": 3000}})).collect();
        long_ids = accepted_ids(daemon.post_json("/v1/jobs", &json!({"jobs": long})).await).await;
    }
    let (accepted, clients) = start_clients(&daemon, KILL_TEST_JOBS);
    match moment {
        KillMoment::DuringIngest => {
            wait_until("a quarter accepted", || accepted.lock().expect("lock").len() >= KILL_TEST_JOBS / 4).await;
        }
        KillMoment::MidProcessing => {
            for client in clients.iter() {
                while !client.is_finished() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            daemon.wait_for("some jobs done", |stats| finished(stats) >= (KILL_TEST_JOBS / 3) as u64).await;
        }
        KillMoment::DuringDrain => {
            for client in clients.iter() {
                while !client.is_finished() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            daemon.signal("TERM");
            let deadline = Instant::now() + common::WAIT_DEADLINE;
            while !daemon.log_records().iter().any(|r| r["message"] == "shutting down: draining running jobs") {
                assert!(Instant::now() < deadline, "no drain");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mut successes = HashMap::new();
    let first_logs = daemon.logs.clone();
    let data_dir = daemon.kill_9();
    successes_by_job(&first_logs, &mut successes);
    for client in clients {
        client.await.expect("client task");
    }
    let mut accepted = std::mem::take(&mut *accepted.lock().expect("lock"));
    accepted.extend(long_ids);

    let daemon = Daemon::start_in(data_dir, &settings);
    daemon
        .wait_for("the recovered backlog", |stats| stats["queue"]["queued"] == 0 && stats["queue"]["running"] == 0)
        .await;
    let mut lost = Vec::new();
    // Fifty reads at a time: the read lane answers one after another and rests after a slow
    // read, so a burst of 500 could outlast the handlers' two-second wait for the queue on
    // a machine busy with other tests, and answer 503 (try again) for jobs that are there.
    for chunk in accepted.chunks(50) {
        let checks = chunk.iter().map(|id| {
            let id = id.clone();
            let daemon = &daemon;
            async move { (daemon.job(&id).await, id) }
        });
        for (record, id) in futures_util::future::join_all(checks).await {
            match record {
                Some(record) if record["state"] == "succeeded" => {}
                _ => lost.push(id),
            }
        }
    }
    let second_logs = daemon.logs.clone();
    let data_dir = daemon.kill_9();
    successes_by_job(&second_logs, &mut successes);
    let ran_twice = accepted.iter().filter(|id| successes.get(*id).copied().unwrap_or(0) > 1).count();
    println!("kill -9 {moment:?}: accepted {}, lost {}, ran more than once {ran_twice}", accepted.len(), lost.len());
    assert!(accepted.len() >= KILL_TEST_JOBS / 4, "the load reached the daemon");
    assert!(lost.is_empty(), "{} accepted jobs did not succeed, e.g. {:?}", lost.len(), lost.first());

    let connection = rusqlite::Connection::open(data_dir.path().join("queue.db")).expect("open queue.db");
    let integrity: String = connection.query_row("PRAGMA integrity_check", [], |row| row.get(0)).expect("check");
    assert_eq!(integrity, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_ingest_loses_no_accepted_job() {
    kill_9_and_recover(KillMoment::DuringIngest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_processing_loses_no_accepted_job() {
    kill_9_and_recover(KillMoment::MidProcessing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_drain_loses_no_accepted_job() {
    kill_9_and_recover(KillMoment::DuringDrain).await;
}

#[tokio::test]
async fn a_200k_backlog_does_not_grow_memory() {
    let daemon = Daemon::start(&[("JOBD_MAX_WORKERS", "1"), ("JOBD_LOG", "warn,jobd::server=info")]);
    // One long job holds the only worker, so everything after it stays queued.
    accepted_ids(daemon.post_json("/v1/jobs", &json!({"kind": "sleep", "payload": {"ms": 600000}})).await).await;
    let batch = |count: usize| json!({"jobs": (0..count).map(|_| json!({"kind": "noop"})).collect::<Vec<_>>()});
    // Warm up the HTTP buffers and the queue's statement cache first.
    for _ in 0..5 {
        accepted_ids(daemon.post_json("/v1/jobs", &batch(2000)).await).await;
    }
    let idle_kib = daemon.rss_kib();
    for _ in 0..100 {
        accepted_ids(daemon.post_json("/v1/jobs", &batch(2000)).await).await;
    }
    let stats = daemon.stats().await;
    let backlog_kib = daemon.rss_kib();
    println!("resident memory: idle {idle_kib} KiB, with a {} job backlog {backlog_kib} KiB", stats["queue"]["queued"]);
    assert!(stats["queue"]["queued"].as_u64().is_some_and(|queued| queued >= 200_000), "{stats}");
    assert!(
        backlog_kib < idle_kib + 16 * 1024,
        "memory grew with the backlog: idle {idle_kib} KiB, backlog {backlog_kib} KiB"
    );
}

/// At default settings, with every worker held busy, a backlog of large uploads waits on
/// disk, not in memory: the Dispatcher's window is bounded in bytes (64 MiB by default),
/// not only in jobs. Before the bound, 1,000 queued jobs of 1 MiB took the resident set
/// from 12 MiB to 1,044 MiB.
#[tokio::test]
async fn a_backlog_of_large_uploads_stays_bounded_in_memory_at_default_settings() {
    let daemon = Daemon::start(&[("JOBD_LOG", "warn,jobd::server=info")]);
    // Sixteen long jobs hold the default pool of sixteen workers.
    let sleepers: Vec<Value> = (0..16).map(|_| json!({"kind": "sleep", "payload": {"ms": 600000}})).collect();
    accepted_ids(daemon.post_json("/v1/jobs", &json!({"jobs": sleepers})).await).await;
    daemon.wait_for("a busy pool", |stats| stats["counters"]["workers"]["busy"] == 16).await;
    let idle_kib = daemon.rss_kib();
    let blob = "x".repeat(1 << 20);
    let mut peak_kib = idle_kib;
    // 400 jobs of 1 MiB: six times the window's byte bound, and three times the memory
    // bound this test checks, had the window held them all as it used to.
    for _ in 0..100 {
        // Four jobs of 1 MiB per request, inside the default 8 MiB body limit.
        let jobs: Vec<Value> = (0..4).map(|_| json!({"kind": "upload", "payload": {"blob": blob}})).collect();
        accepted_ids(daemon.post_json("/v1/jobs", &json!({"jobs": jobs})).await).await;
        peak_kib = peak_kib.max(daemon.rss_kib());
    }
    let stats = daemon.stats().await;
    assert_eq!(stats["queue"]["queued"], 400, "{stats}");
    // The window fills as the commits land; sample it for a while after the last one.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak_kib = peak_kib.max(daemon.rss_kib());
    }
    println!(
        "resident memory: {idle_kib} KiB with the pool busy, at most {peak_kib} KiB with 400 jobs of 1 MiB queued"
    );
    assert!(peak_kib < 150 * 1024, "claimed bodies are not bounded in bytes: {peak_kib} KiB resident");
}

/// An attempt counts once it has started, even if the process dies during it: a job whose
/// attempts all end with the process (an OOM, an abort in a C library) goes dead instead of
/// crash-looping the daemon. Default settings, but for the job's own `max_attempts`.
#[tokio::test]
async fn a_job_that_dies_with_the_process_in_every_attempt_ends_dead_after_its_attempts() {
    if common::sqlite_only("recovering a dead process's jobs when the next one opens queue.db") {
        return;
    }
    let daemon = Daemon::start(&[]);
    let job = json!({"kind": "sleep", "payload": {"ms": 600000}, "max_attempts": 2});
    let id = accepted_ids(daemon.post_json("/v1/jobs", &job).await).await.remove(0);
    let mut daemon = daemon;
    for attempt in 1..=2u64 {
        // The record says `running` only once the start is committed, which is what the
        // Dispatcher waits for before the body runs.
        let record = daemon.wait_for_job(&id, "the attempt to start", |record| record["state"] == "running").await;
        assert_eq!(record["attempts"], attempt, "{record}");
        let data_dir = daemon.kill_9();
        daemon = Daemon::start_in(data_dir, &[]);
    }
    let record = daemon.wait_for_job(&id, "its final state", |record| record["state"] != "running").await;
    assert_eq!(record["state"], "dead", "{record}");
    assert_eq!(record["attempts"], 2, "{record}");
    let error = record["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("the process died during attempt 2 of 2"), "{record}");
    let recovered =
        daemon.wait_for_logs("the recovery line", 1, |line| line["message"] == "queue opened and recovered").await;
    assert_eq!(recovered[0]["dead_after_dying_mid_attempt"], 1, "{}", recovered[0]);
}

#[tokio::test]
async fn fifty_concurrent_submissions_with_one_key_make_one_job() {
    let daemon = Daemon::start(&[]);
    let requests = (0..50).map(|n| {
        let request = daemon
            .client
            .post(daemon.url("/v1/jobs"))
            .header("idempotency-key", "order-4711")
            .json(&json!({"kind": "upload", "payload": {"attempt": n}}));
        async move { request.send().await.expect("POST") }
    });
    let responses = futures_util::future::join_all(requests).await;
    let mut created = 0;
    let mut ids = std::collections::HashSet::new();
    for response in responses {
        match response.status().as_u16() {
            202 => created += 1,
            200 => {}
            other => panic!("unexpected status {other}"),
        }
        let body: Value = response.json().await.expect("JSON");
        ids.insert(body["jobs"][0]["id"].as_str().expect("id").to_owned());
    }
    assert_eq!((created, ids.len()), (1, 1), "one job, answered to all fifty");
    let stats = daemon.wait_for("the one job", |stats| finished(stats) == 1).await;
    assert_eq!(stats["counters"]["jobs"]["accepted"], 1);
    assert_eq!(common::files_under(&daemon.objects_dir()).len(), 1);

    // The field form, across requests and within one.
    let first = daemon.post_json("/v1/jobs", &json!({"jobs": [{"kind": "noop", "idempotency_key": "k"}]})).await;
    let first_id = accepted_ids(first).await.remove(0);
    let again = daemon
        .post_json(
            "/v1/jobs",
            &json!({"jobs": [{"kind": "noop", "idempotency_key": "k"}, {"kind": "noop", "idempotency_key": "k"}]}),
        )
        .await;
    assert_eq!(again.status(), 200);
    let body: Value = again.json().await.expect("JSON");
    assert_eq!(body["jobs"][0]["id"], first_id.as_str());
    assert_eq!(body["jobs"][1]["id"], first_id.as_str());

    // The header names the job of a single-job request only.
    let response = daemon
        .client
        .post(daemon.url("/v1/jobs"))
        .header("idempotency-key", "x")
        .json(&json!({"jobs": [{"kind": "noop"}, {"kind": "noop"}]}))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.expect("problem");
    assert_eq!(problem["errors"][0]["field"], "Idempotency-Key");
}

#[tokio::test]
async fn a_full_disk_answers_503_keeps_serving_reads_and_recovers() {
    if common::sqlite_only("queue_db_max_bytes, the size of queue.db,") {
        return;
    }
    let daemon = Daemon::start(&[
        ("JOBD_STORE_URL", "memory://"),
        ("JOBD_QUEUE_DB_MAX_BYTES", "262144"),
        ("JOBD_RETENTION_SECS", "1"),
    ]);
    let first = accepted_ids(daemon.post_json("/v1/jobs", &json!({"kind": "noop"})).await).await.remove(0);
    let big = "x".repeat(8000);
    let batch = json!({"jobs": (0..10).map(|_| json!({"kind": "upload", "payload": big})).collect::<Vec<_>>()});
    let mut accepted = 1;
    let mut refused = None;
    for _ in 0..1000 {
        let response = daemon.post_json("/v1/jobs", &batch).await;
        match response.status().as_u16() {
            202 => accepted += 10,
            503 => {
                refused = Some(response.json::<Value>().await.expect("problem body"));
                break;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    let problem = refused.expect("the size limit was reached");
    assert_eq!(problem["type"], "/problems/unavailable");
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("nothing of this request")), "{problem}");

    // Reads are still served while writes fail.
    let record = daemon.job(&first).await.expect("the first job is readable");
    assert_eq!(record["kind"], "noop");
    let stats = daemon.stats().await;
    assert_eq!(stats["counters"]["jobs"]["accepted"], accepted, "the refused request added nothing");

    // Finished jobs are purged after their second of retention, which frees pages;
    // readiness returns and so do submissions.
    let deadline = Instant::now() + common::WAIT_DEADLINE;
    loop {
        let ready = daemon.client.get(daemon.url("/readyz")).send().await.expect("readyz");
        if ready.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Readiness says that a write fits again; room for the whole batch comes as the rest
    // of the finished jobs are purged, so the batch is sent until it is taken. A refused
    // one adds nothing, as above.
    loop {
        let response = daemon.post_json("/v1/jobs", &batch).await;
        if response.status() == 202 {
            break;
        }
        assert_eq!(response.status(), 503, "a batch that does not fit yet is refused as before");
        assert!(Instant::now() < deadline, "never writable again for the batch");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = daemon.wait_for("every accepted job", |stats| finished(stats) == accepted + 10).await;
    assert_eq!(stats["counters"]["jobs"]["succeeded"], accepted + 10);
}

// Multi-threaded: the test thread blocks in `wait_exit` while the clients go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_fsync_refuses_the_work_in_flight_stops_jobd_and_loses_no_accepted_job() {
    if common::sqlite_only("a failing fsync (test_fail_sync_after)") {
        return;
    }
    // After 40 good fsyncs every fsync fails, as on a disk that dies under load. Each
    // fsync takes 50 ms, as on a busy disk, so that submissions are always in flight when
    // the failing one runs: with instant fsyncs, all eight clients, answered together by
    // one group's fsync, could be between requests just when an fsync that covered only
    // the Dispatcher's progress failed and jobd stopped, and then nothing was in flight
    // to be answered (seen once under a loaded CI run).
    let mut daemon = Daemon::start(&[("JOBD_TEST_FAIL_SYNC_AFTER", "40"), ("JOBD_TEST_SYNC_DELAY_MS", "50")]);
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let unknown_outcomes = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (client, url) = (daemon.client.clone(), daemon.url("/v1/jobs"));
            let (accepted, unknown_outcomes, refused) = (accepted.clone(), unknown_outcomes.clone(), refused.clone());
            tokio::spawn(async move {
                // Until jobd stops answering: it exits by itself once the fsync fails.
                while let Ok(response) = client.post(&url).json(&json!({"kind": "noop"})).send().await {
                    match response.status().as_u16() {
                        202 => {
                            let ids = accepted_ids(response).await;
                            accepted.lock().expect("lock").extend(ids);
                        }
                        503 => {
                            let problem: Value = response.json().await.unwrap_or_default();
                            let detail = problem["detail"].as_str().unwrap_or_default();
                            // Committed before the fsync failed: nobody knows. Later: refused.
                            if detail.contains("may or may not have been enqueued") {
                                unknown_outcomes.fetch_add(1, Ordering::Relaxed);
                            } else if detail.contains("nothing of this request was enqueued")
                                || detail.contains("shutting down")
                            {
                                refused.fetch_add(1, Ordering::Relaxed);
                            } else {
                                panic!("a 503 that does not say what became of the request: {problem}");
                            }
                        }
                        other => panic!("unexpected status {other}"),
                    }
                }
            })
        })
        .collect();
    let status = daemon.wait_exit();
    for client in clients {
        client.await.expect("client task");
    }
    let (unknown_outcomes, refused) = (unknown_outcomes.load(Ordering::Relaxed), refused.load(Ordering::Relaxed));
    println!(
        "failing fsync: {} acknowledged, {unknown_outcomes} told the outcome is unknown, {refused} refused, then \
         {status}",
        accepted.lock().expect("lock").len()
    );
    assert!(!status.success(), "jobd exits with a failure, so that systemd restarts it: {status}");
    // Usually some submissions were in the transactions the failed fsync covered; it may
    // have covered only the Dispatcher's progress, so the count is not asserted alone.
    if unknown_outcomes + refused == 0 {
        for line in daemon.logs.lock().expect("logs").iter().rev().take(40) {
            eprintln!("LOG {line}");
        }
    }
    assert!(unknown_outcomes + refused > 0, "the submissions in flight were answered 503");
    let lost_records = daemon.log_records();
    assert!(
        lost_records.iter().any(|record| record["message"] == "the queue is lost: stopping without a drain"),
        "the loss is logged"
    );

    // Restarted on what the disk holds, jobd runs every job it acknowledged.
    let accepted = std::mem::take(&mut *accepted.lock().expect("lock"));
    assert!(!accepted.is_empty(), "submissions were acknowledged before the disk failed");
    let daemon = Daemon::start_in(daemon.into_data_dir(), &[]);
    for id in &accepted {
        daemon.wait_for_job(id, "an acknowledged job to succeed", |record| record["state"] == "succeeded").await;
    }
}

#[tokio::test]
async fn the_status_api_shows_every_state_and_404s_unknown_ids() {
    let daemon = Daemon::start(&[("JOBD_MAX_WORKERS", "1")]);
    let ids = accepted_ids(
        daemon
            .post_json(
                "/v1/jobs",
                &json!({"jobs": [
                    {"kind": "upload", "payload": {"hello": 1}, "key": "status/hello.json"},
                    {"kind": "fail", "payload": {"message": "no such customer"}, "max_attempts": 1},
                    {"kind": "panic", "payload": {"message": "bug"}, "max_attempts": 1},
                    {"kind": "sleep", "payload": {"ms": 600000}},
                    {"kind": "noop"},
                ]}),
            )
            .await,
    )
    .await;
    // The queue's own counts are of committed states; the fail and the panic are dead.
    daemon.wait_for("the running sleep", |stats| stats["queue"]["running"] == 1 && stats["queue"]["dead"] == 2).await;

    let upload = daemon.wait_for_job(&ids[0], "the upload's record", settled).await;
    assert_eq!(upload["state"], "succeeded");
    assert_eq!(upload["attempts"], 1);
    assert_eq!(upload["result"]["key"], "status/hello.json");
    assert_eq!(upload["result"]["size"], 11);
    assert!(upload["payload"].is_null(), "payload omitted by default");
    for field in ["created_at", "started_at", "finished_at"] {
        assert!(upload[field].is_string(), "{field}: {upload}");
    }
    let with_payload: Value = daemon
        .client
        .get(daemon.url(&format!("/v1/jobs/{}?payload=true", ids[0])))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    assert_eq!(with_payload["payload"], json!({"hello": 1}));

    let failed = daemon.job(&ids[1]).await.expect("fail record");
    assert_eq!((failed["state"].as_str(), failed["last_error"].as_str()), (Some("dead"), Some("no such customer")));
    let panicked = daemon.job(&ids[2]).await.expect("panic record");
    assert_eq!(panicked["state"], "dead");
    assert_eq!(panicked["last_error"], "panicked: bug");
    let running = daemon.job(&ids[3]).await.expect("sleep record");
    assert_eq!(running["state"], "running");
    assert!(running["started_at"].is_string() && running["finished_at"].is_null());
    let queued = daemon.job(&ids[4]).await.expect("noop record");
    assert_eq!(queued["state"], "queued");
    assert!(queued["started_at"].is_null());

    assert!(daemon.job("01900000-0000-7000-8000-000000000000").await.is_none());
    let response = daemon.client.get(daemon.url("/v1/jobs/not-an-id")).send().await.expect("GET");
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
}
