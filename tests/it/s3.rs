//! Uploads over the real S3 protocol (`moto_server`): exact bytes and Content-Type,
//! multipart for large bodies with no parts left behind on failure, gzip, permanent
//! errors, outages that lose nothing (one at default settings), and `kill -9` during
//! uploads.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::io::Read as _;
use std::time::{Duration, Instant};

use common::s3::{FaultProxy, Moto};
use common::{Daemon, accepted_ids, finished, settled};
use object_store::Attribute;
use serde_json::{Value, json};

const BUCKET: &str = "jobd-test";

fn env_for(endpoint: &str, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut env = Moto::jobd_env(endpoint, BUCKET);
    env.extend(extra.iter().map(|(key, value)| (*key, (*value).to_owned())));
    env
}

fn start(env: &[(&'static str, String)]) -> Daemon {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(key, value)| (*key, value.as_str())).collect();
    Daemon::start(&pairs)
}

fn key_of(keys: &[String], id: &str) -> String {
    keys.iter()
        .find(|key| key.ends_with(&format!("{id}.json")))
        .cloned()
        .unwrap_or_else(|| panic!("no object for {id}"))
}

#[tokio::test]
async fn five_hundred_payloads_become_five_hundred_objects_with_exact_bytes_and_type() {
    let moto = Moto::start().await;
    moto.create_bucket(BUCKET).await;
    let daemon = start(&env_for(&moto.endpoint, &[]));
    let ready = daemon.client.get(daemon.url("/readyz")).send().await.expect("readyz");
    assert_eq!(ready.status(), 200, "the bucket answers the probe");

    let payloads: Vec<String> = (0..500).map(|n| format!(r#"{{"n": {n}, "text": "payload {n} é"}}"#)).collect();
    let body = format!(r#"{{"payloads": [{}]}}"#, payloads.join(","));
    let ids = accepted_ids(daemon.post_raw("/v1/payloads", "application/json", body.into_bytes()).await).await;
    let raw = accepted_ids(
        daemon
            .post_json(
                "/v1/jobs",
                &json!({"kind": "upload", "body_base64": "iVBORw0KGgo=", "key": "images/x.png", "content_type": "image/png"}),
            )
            .await,
    )
    .await;
    assert_eq!(raw.len(), 1);
    daemon.wait_for("501 uploads", |stats| stats["counters"]["jobs"]["succeeded"] == 501).await;

    let keys = moto.keys(BUCKET).await;
    assert_eq!(keys.len(), 501);
    for (id, payload) in ids.iter().zip(&payloads) {
        let object = moto.get(BUCKET, &key_of(&keys, id)).await;
        assert_eq!(object.attributes.get(&Attribute::ContentType).map(|v| v.as_ref()), Some("application/json"));
        assert_eq!(object.bytes().await.expect("bytes").as_ref(), payload.as_bytes(), "bytes of {id}");
    }
    let image = moto.get(BUCKET, "images/x.png").await;
    assert_eq!(image.attributes.get(&Attribute::ContentType).map(|v| v.as_ref()), Some("image/png"));
    assert_eq!(image.bytes().await.expect("bytes").as_ref(), b"\x89PNG\r\n\x1a\n");
}

#[tokio::test]
async fn a_large_payload_goes_up_in_parts_and_a_failed_multipart_upload_leaves_nothing_behind() {
    let moto = Moto::start().await;
    moto.create_bucket(BUCKET).await;
    let proxy = FaultProxy::start(&moto.endpoint);
    let daemon = start(&env_for(&proxy.endpoint(), &[("JOBD_MAX_BODY_BYTES", "67108864")]));

    let big = "x".repeat(20 * 1024 * 1024);
    let job = json!({"kind": "upload", "payload": {"blob": big}, "key": "big/ok.json", "metadata": {"team": "ingest"}});
    let big_id = accepted_ids(daemon.post_json("/v1/jobs", &job).await).await.remove(0);
    daemon.wait_for("the big upload", |stats| finished(stats) == 1).await;
    let record = daemon.wait_for_job(&big_id, "its record", settled).await;
    assert_eq!(record["state"], "succeeded", "{record}");
    let object = moto.get(BUCKET, "big/ok.json").await;
    let etag = object.meta.e_tag.clone().unwrap_or_default();
    assert!(etag.contains('-'), "a multipart ETag has a part count: {etag}");
    assert_eq!(object.attributes.get(&Attribute::Metadata("team".into())).map(|v| v.as_ref()), Some("ingest"));
    let bytes = object.bytes().await.expect("bytes");
    assert_eq!(bytes.as_ref(), serde_json::to_vec(&json!({"blob": big})).expect("json").as_slice());

    // Part 2 of the next upload fails every time: the job fails, and the upload is aborted.
    proxy.faults.fail_second_part.store(true, std::sync::atomic::Ordering::Relaxed);
    let failing = json!({"kind": "upload", "payload": {"blob": big}, "key": "big/failed.json", "max_attempts": 1});
    let id = accepted_ids(daemon.post_json("/v1/jobs", &failing).await).await.remove(0);
    daemon.wait_for("the failed upload", |stats| stats["queue"]["dead"] == 1).await;
    let record = daemon.job(&id).await.expect("record");
    assert!(record["last_error"].as_str().is_some_and(|e| e.contains("InternalError")), "{record}");
    let uploads = moto.multipart_uploads(BUCKET).await;
    assert!(
        uploads.contains("ListMultipartUploadsResult") && !uploads.contains("<Upload>"),
        "orphaned parts: {uploads}"
    );
    assert!(!moto.keys(BUCKET).await.contains(&"big/failed.json".to_owned()));
}

/// A daemon behind a proxy that holds every part for a minute, with the lowest
/// `multipart_threshold` S3 allows, so that a 6 MiB body goes up as one (last) part.
async fn slow_parts_daemon(moto: &Moto, extra: &[(&'static str, &str)]) -> (FaultProxy, Daemon) {
    moto.create_bucket(BUCKET).await;
    let proxy = FaultProxy::start(&moto.endpoint);
    proxy.faults.delay_parts_ms.store(60_000, std::sync::atomic::Ordering::Relaxed);
    let mut env = vec![("JOBD_MAX_BODY_BYTES", "16777216"), ("JOBD_MULTIPART_THRESHOLD", "5242880")];
    env.extend_from_slice(extra);
    let daemon = start(&env_for(&proxy.endpoint(), &env));
    (proxy, daemon)
}

fn six_mib_upload(key: &str, extra: Value) -> Value {
    let mut job = json!({"kind": "upload", "payload": {"blob": "x".repeat(6 * 1024 * 1024)}, "key": key});
    if let (Some(job), Some(extra)) = (job.as_object_mut(), extra.as_object()) {
        job.extend(extra.clone());
    }
    job
}

/// Polls moto until no multipart upload is in progress; fails the test after the harness's
/// deadline, with the uploads left behind.
async fn wait_until_no_open_uploads(moto: &Moto) {
    let deadline = Instant::now() + common::WAIT_DEADLINE;
    loop {
        let open = moto.open_multipart_uploads(BUCKET).await;
        if open.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "multipart uploads left behind: {open:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_multipart_upload_cut_off_by_the_job_timeout_is_aborted() {
    let moto = Moto::start().await;
    let (_proxy, daemon) = slow_parts_daemon(&moto, &[]).await;

    let job = six_mib_upload("slow/timeout.json", json!({"timeout_ms": 1000, "max_attempts": 1}));
    let id = accepted_ids(daemon.post_json("/v1/jobs", &job).await).await.remove(0);
    let record = daemon.wait_for_job(&id, "the timed-out upload", settled).await;
    assert_eq!(record["state"], "dead", "{record}");
    assert!(record["last_error"].as_str().is_some_and(|e| e.contains("timed out")), "{record}");
    wait_until_no_open_uploads(&moto).await;
    // The upload had begun (its part is held by the proxy) when the timeout cut it off,
    // so there was an upload to abort, and jobd aborted it.
    daemon
        .wait_for_logs("the abort of the abandoned upload", 1, |line| {
            line["message"] == "aborting the multipart upload of an abandoned job"
        })
        .await;
    assert!(!moto.keys(BUCKET).await.contains(&"slow/timeout.json".to_owned()));
}

#[tokio::test]
async fn a_multipart_upload_abandoned_at_shutdown_is_aborted() {
    let moto = Moto::start().await;
    let (_proxy, mut daemon) = slow_parts_daemon(&moto, &[("JOBD_SHUTDOWN_TIMEOUT_SECS", "1")]).await;

    accepted_ids(daemon.post_json("/v1/jobs", &six_mib_upload("slow/shutdown.json", json!({}))).await).await;
    let deadline = Instant::now() + common::WAIT_DEADLINE;
    while moto.open_multipart_uploads(BUCKET).await.is_empty() {
        assert!(Instant::now() < deadline, "the upload never began");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.signal("TERM");
    assert!(daemon.wait_exit().success());
    // jobd has exited: whatever it did not abort by now stays in the bucket.
    let open = moto.open_multipart_uploads(BUCKET).await;
    assert!(open.is_empty(), "multipart uploads left behind: {open:?}");
}

#[tokio::test]
async fn gzip_uploads_decompress_to_the_payload() {
    let moto = Moto::start().await;
    moto.create_bucket(BUCKET).await;
    let daemon = start(&env_for(&moto.endpoint, &[]));
    let payload = json!({"words": "the quick brown fox ".repeat(1000)});
    let job = json!({"kind": "upload", "payload": payload, "key": "z/fox.json", "content_encoding": "gzip"});
    accepted_ids(daemon.post_json("/v1/jobs", &job).await).await;
    daemon.wait_for("the gzip upload", |stats| stats["counters"]["jobs"]["succeeded"] == 1).await;
    let object = moto.get(BUCKET, "z/fox.json").await;
    assert_eq!(object.attributes.get(&Attribute::ContentEncoding).map(|v| v.as_ref()), Some("gzip"));
    let compressed = object.bytes().await.expect("bytes");
    assert!(compressed.len() < 2000, "compressed: {} bytes", compressed.len());
    let mut text = String::new();
    flate2::read::GzDecoder::new(compressed.as_ref()).read_to_string(&mut text).expect("gunzip");
    assert_eq!(serde_json::from_str::<Value>(&text).expect("json"), payload);

    for (field, value) in [("content_encoding", json!("br")), ("metadata", json!({"bad name": "x"}))] {
        let mut job = json!({"kind": "upload", "payload": 1});
        job[field] = value;
        let response = daemon.post_json("/v1/jobs", &job).await;
        assert_eq!(response.status(), 400, "{field}");
    }
}

#[tokio::test]
async fn a_missing_bucket_makes_jobs_dead_with_the_s3_code_and_readiness_name_the_store() {
    let moto = Moto::start().await;
    let daemon = start(&env_for(&moto.endpoint, &[]));
    let ready = daemon.client.get(daemon.url("/readyz")).send().await.expect("readyz");
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.expect("JSON");
    assert_eq!(body["store"]["url"], format!("s3://{BUCKET}"));
    assert!(body["store"]["error"].as_str().is_some_and(|e| e.contains("NoSuchBucket")), "{body}");

    let id = accepted_ids(daemon.post_json("/v1/jobs", &json!({"kind": "upload", "payload": 1})).await).await.remove(0);
    daemon.wait_for("the dead job", |stats| stats["queue"]["dead"] == 1).await;
    let record = daemon.job(&id).await.expect("record");
    assert_eq!(record["attempts"], 1, "no retries for a permanent error: {record}");
    assert!(record["last_error"].as_str().is_some_and(|e| e.contains("S3 NoSuchBucket")), "{record}");
    assert_eq!(daemon.client.get(daemon.url("/healthz")).send().await.expect("healthz").status(), 200);

    let probe = std::process::Command::new(env!("CARGO_BIN_EXE_jobd"))
        .args(["check-config", "--probe"])
        .envs(env_for(&moto.endpoint, &[("JOBD_DATA_DIR", daemon.data_path().to_str().expect("utf-8"))]))
        .output()
        .expect("check-config");
    // The settings hold; the store they name refused the probe: exit 1, not the 2 of an
    // invalid configuration.
    assert_eq!(probe.status.code(), Some(1));
    let complaint = String::from_utf8_lossy(&probe.stderr);
    assert!(complaint.contains("NoSuchBucket") && complaint.contains("the probe of the store"), "{complaint}");
    assert!(!complaint.contains("invalid configuration"), "{complaint}");
    // An endpoint nothing listens on is not an invalid configuration either.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
    let unreachable = std::process::Command::new(env!("CARGO_BIN_EXE_jobd"))
        .args(["check-config", "--probe"])
        .envs(env_for(&format!("http://{closed}"), &[("JOBD_DATA_DIR", daemon.data_path().to_str().expect("utf-8"))]))
        .output()
        .expect("check-config");
    let complaint = String::from_utf8_lossy(&unreachable.stderr);
    assert_eq!(unreachable.status.code(), Some(1), "{complaint}");
    assert!(!complaint.contains("invalid configuration") && complaint.contains("probe"), "{complaint}");
    assert!(!complaint.contains(common::s3::SECRET), "the secret leaked: {complaint}");
    let logs = daemon.logs.lock().expect("logs").join("\n");
    assert!(!logs.contains(common::s3::SECRET), "the secret is in the logs");
}

#[tokio::test]
async fn wrong_credentials_make_jobs_dead_with_the_s3_code() {
    let moto = Moto::start_authenticated().await;
    let mut env = env_for(&moto.endpoint, &[]);
    env.retain(|(key, _)| *key != "AWS_ACCESS_KEY_ID");
    env.push(("AWS_ACCESS_KEY_ID", "AKIDOESNOTEXIST".to_owned()));
    let daemon = start(&env);
    let ready: Value =
        daemon.client.get(daemon.url("/readyz")).send().await.expect("readyz").json().await.expect("JSON");
    assert!(ready["store"]["error"].as_str().is_some_and(|e| e.contains("InvalidAccessKeyId")), "{ready}");
    let id = accepted_ids(daemon.post_json("/v1/jobs", &json!({"kind": "upload", "payload": 1})).await).await.remove(0);
    daemon.wait_for("the dead job", |stats| stats["queue"]["dead"] == 1).await;
    let record = daemon.job(&id).await.expect("record");
    assert_eq!(record["attempts"], 1, "{record}");
    assert!(record["last_error"].as_str().is_some_and(|e| e.contains("S3 InvalidAccessKeyId")), "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_outage_of_twenty_seconds_loses_nothing() {
    let moto = Moto::start().await;
    moto.create_bucket(BUCKET).await;
    let mut proxy = FaultProxy::start(&moto.endpoint);
    let daemon = start(&env_for(
        &proxy.endpoint(),
        &[
            ("JOBD_MAX_ATTEMPTS", "40"),
            ("JOBD_RETRY_BASE_MS", "200"),
            ("JOBD_RETRY_CAP_MS", "2000"),
            ("JOBD_LOG", "warn,jobd::server=info"),
        ],
    ));
    let mut ids = Vec::new();
    let mut outage: Option<Instant> = None;
    for batch in 0..40 {
        let jobs: Vec<Value> =
            (0..50).map(|n| json!({"kind": "upload", "payload": {"batch": batch, "n": n}})).collect();
        ids.extend(accepted_ids(daemon.post_json("/v1/jobs", &json!({"jobs": jobs})).await).await);
        if batch == 10 {
            proxy.stop();
            outage = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if let Some(started) = outage {
        tokio::time::sleep(Duration::from_secs(20).saturating_sub(started.elapsed())).await;
    }
    let during = daemon.stats().await;
    proxy.resume();
    let stats = daemon.wait_for("every upload", |stats| stats["counters"]["jobs"]["succeeded"] == 2000).await;
    println!("before the restart: {}; after: {}", during["queue"], stats["counters"]["jobs"]);

    let keys = moto.keys(BUCKET).await;
    let unique: HashSet<&String> = keys.iter().collect();
    assert_eq!((keys.len(), unique.len()), (2000, 2000), "every object exactly once");
    for id in &ids {
        assert!(keys.iter().any(|key| key.ends_with(&format!("{id}.json"))), "object of {id}");
    }
    let failed_attempts = daemon
        .metric("jobd_jobs_finished_total{kind=\"upload\",outcome=\"failed\"}")
        .await
        .expect("the failed-attempt series");
    println!("failed upload attempts retried during the outage: {failed_attempts}");
    assert!(failed_attempts > 0.0, "retries are visible in the metrics");
    // Uploads wait while the store is down: about one failed attempt for each upload
    // that was running when it went, not one per backoff (1,242 before the hold).
    assert!(failed_attempts <= 100.0, "uploads burned attempts during the outage: {failed_attempts}");
    assert_eq!(stats["queue"]["dead"], 0);
}

/// At default settings (no tuned attempts or backoff), S3 goes away for a minute under a
/// steady load of uploads. Every accepted job ends `succeeded`, none `dead`, and every
/// object is there exactly once; the outage shows in `/readyz` and `jobd_store_up`, other
/// kinds keep running meanwhile, and uploads wait instead of burning their attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_outage_of_a_minute_at_default_settings_loses_nothing_and_burns_no_attempts() {
    const OUTAGE: Duration = Duration::from_secs(60);
    let moto = Moto::start().await;
    moto.create_bucket(BUCKET).await;
    let mut proxy = FaultProxy::start(&moto.endpoint);
    let daemon = start(&env_for(
        &proxy.endpoint(),
        &[("JOBD_LOG", "warn,jobd::server=info,jobd::kinds::upload::store_health=info")],
    ));
    let mut ids = Vec::new();
    let submit_batch = async |ids: &mut Vec<String>, batch: usize| {
        let jobs: Vec<Value> =
            (0..10).map(|n| json!({"kind": "upload", "payload": {"batch": batch, "n": n}})).collect();
        ids.extend(accepted_ids(daemon.post_json("/v1/jobs", &json!({"jobs": jobs})).await).await);
    };
    let mut batch = 0;
    for _ in 0..10 {
        submit_batch(&mut ids, batch).await;
        batch += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    proxy.stop();
    let outage_started = Instant::now();
    let mut seen_down = false;
    while outage_started.elapsed() < OUTAGE {
        submit_batch(&mut ids, batch).await;
        batch += 1;
        if !seen_down && outage_started.elapsed() > Duration::from_secs(20) {
            let ready = daemon.client.get(daemon.url("/readyz")).send().await.expect("readyz");
            assert_eq!(ready.status(), 503);
            let body: Value = ready.json().await.expect("JSON");
            assert_eq!(body["store"]["reachable"], false, "{body}");
            assert_eq!(body["store"]["reason"], "unreachable", "{body}");
            assert_eq!(daemon.metric("jobd_store_up").await, Some(0.0));
            // Other kinds do not wait for the store.
            let noop = accepted_ids(daemon.post_json("/v1/jobs", &json!({"kind": "noop"})).await).await.remove(0);
            let record = daemon.wait_for_job(&noop, "the noop during the outage", settled).await;
            assert_eq!(record["state"], "succeeded", "{record}");
            seen_down = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(seen_down);
    proxy.resume();
    for _ in 0..10 {
        submit_batch(&mut ids, batch).await;
        batch += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let total = ids.len() as u64;
    let stats = daemon
        .wait_for("every upload", |stats| {
            stats["queue"]["queued"] == 0 && stats["queue"]["failed"] == 0 && stats["queue"]["running"] == 0
        })
        .await;
    println!("{total} uploads across a {OUTAGE:?} outage: {}", stats["queue"]);
    assert_eq!(stats["queue"]["dead"], 0, "{stats}");

    let succeeded = daemon.list_all("succeeded").await;
    let uploads: Vec<&Value> = succeeded.iter().filter(|record| record["kind"] == "upload").collect();
    assert_eq!(uploads.len() as u64, total);
    let most_attempts = uploads.iter().filter_map(|record| record["attempts"].as_u64()).max().unwrap_or(0);
    let retried = uploads.iter().filter(|record| record["attempts"].as_u64() > Some(1)).count();
    println!("{retried} uploads needed more than one attempt; the most any needed: {most_attempts}");
    // Held while the store is down, a job spends about one attempt on an outage (the one
    // that found it down), where it spent one every backoff before.
    assert!(most_attempts <= 3, "uploads burned attempts while the store was down: {most_attempts}");
    assert_eq!(daemon.metric("jobd_store_up").await, Some(1.0));

    let keys = moto.keys(BUCKET).await;
    let unique: HashSet<&String> = keys.iter().collect();
    assert_eq!((keys.len() as u64, unique.len() as u64), (total, total), "every object exactly once");
    for id in &ids {
        assert!(keys.iter().any(|key| key.ends_with(&format!("{id}.json"))), "object of {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_uploads_then_every_accepted_object_is_there() {
    let moto = Moto::start().await;
    moto.create_bucket(BUCKET).await;
    let env = env_for(&moto.endpoint, &[("JOBD_MAX_WORKERS", "4"), ("JOBD_LOG", "warn,jobd::server=info")]);
    let daemon = start(&env);
    let mut ids = Vec::new();
    for batch in 0..10 {
        let jobs: Vec<Value> =
            (0..100).map(|n| json!({"kind": "upload", "payload": {"batch": batch, "n": n}})).collect();
        ids.extend(accepted_ids(daemon.post_json("/v1/jobs", &json!({"jobs": jobs})).await).await);
    }
    daemon.wait_for("some uploads", |stats| stats["counters"]["jobs"]["succeeded"].as_u64() >= Some(200)).await;
    let data_dir = daemon.kill_9();
    let before = moto.keys(BUCKET).await.len();

    let pairs: Vec<(&str, &str)> = env.iter().map(|(key, value)| (*key, value.as_str())).collect();
    let daemon = Daemon::start_in(data_dir, &pairs);
    daemon.wait_for("the rest", |stats| stats["queue"]["queued"] == 0 && stats["queue"]["running"] == 0).await;
    let keys = moto.keys(BUCKET).await;
    let by_id: HashMap<String, &String> = keys
        .iter()
        .filter_map(|key| key.rsplit('/').next().map(|name| (name.trim_end_matches(".json").to_owned(), key)))
        .collect();
    let missing: Vec<&String> = ids.iter().filter(|id| !by_id.contains_key(*id)).collect();
    println!(
        "kill -9 during S3 uploads: {} accepted, {before} objects before the restart, {} after, {} missing",
        ids.len(),
        keys.len(),
        missing.len()
    );
    assert!(missing.is_empty(), "objects missing for {} accepted jobs", missing.len());
    assert_eq!(keys.len(), 1000);
}
