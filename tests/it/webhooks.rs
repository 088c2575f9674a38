//! The `webhook` kind against a real receiver (`tests/webhook_receiver.py`) that verifies
//! every delivery with the official Standard Webhooks library: signatures, ids stable
//! across retries, `Retry-After`, final answers, timeouts, redirects, the circuit breaker,
//! confinement, deliveries over TLS, and deliveries across a `kill -9`.

use crate::common;

use std::time::{Duration, Instant};

use common::pki::TestPki;
use common::receiver::{Receiver, ReceiverTls};
use common::{Daemon, WAIT_DEADLINE, accepted_ids};
use serde_json::{Value, json};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SECOND_SECRET: &str = "whsec_dGhlIHNlY29uZCBzZWNyZXQgb2YgdGhlIHBhaXI=";

/// A configuration file with one `[webhooks.<name>]` per `(name, path, extra lines)`.
fn config(dir: &std::path::Path, receiver: &Receiver, destinations: &[(&str, &str, &str)]) -> String {
    let mut text = String::new();
    for (name, path, extra) in destinations {
        text.push_str(&format!(
            "[webhooks.{name}]\nurl = \"{}\"\nsecrets = [\"{SECRET}\"]\n{extra}\n",
            receiver.url(path)
        ));
    }
    let file = dir.join("jobd.toml");
    std::fs::write(&file, text).expect("write the config");
    file.to_str().expect("utf-8").to_owned()
}

/// A receiver that verifies with [`SECRET`], and a daemon whose configuration points each of
/// `destinations` at it; the directory holds the configuration.
fn start(destinations: &[(&str, &str, &str)]) -> (Receiver, tempfile::TempDir, String, Daemon) {
    let receiver = Receiver::start(&[SECRET]);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = config(dir.path(), &receiver, destinations);
    let daemon = Daemon::start(&[("JOBD_CONFIG", &file)]);
    (receiver, dir, file, daemon)
}

fn webhook(destination: &str, payload: &str) -> Value {
    json!({"kind": "webhook", "destination": destination, "payload": serde_json::from_str::<Value>(payload).expect("json")})
}

async fn submit(daemon: &Daemon, job: &Value) -> String {
    accepted_ids(daemon.post_json("/v1/jobs", job).await).await.remove(0)
}

/// Polls `/readyz` until `destination`'s circuit is no longer closed.
async fn wait_circuit_open(daemon: &Daemon, destination: &str) {
    let deadline = Instant::now() + WAIT_DEADLINE;
    loop {
        let ready: Value =
            daemon.client.get(daemon.url("/readyz")).send().await.expect("GET").json().await.expect("json");
        if ready["kinds"]["webhook"]["destinations"][destination]["circuit"] != "closed" {
            return;
        }
        assert!(Instant::now() < deadline, "the circuit of {destination} never opened: {ready}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls until `done` holds for what the receiver saw at `path`.
async fn wait_seen(receiver: &Receiver, path: &str, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + WAIT_DEADLINE;
    loop {
        let seen = receiver.seen_at(path).await;
        if done(&seen) {
            return seen;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; saw {seen:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn five_hundred_deliveries_verify_and_carry_their_exact_bytes() {
    let (receiver, _dir, _file, daemon) = start(&[("main", "/ok", "")]);
    // Odd spacing and key order: the receiver must get these bytes, not a re-serialization.
    let payloads: Vec<String> = (0..500).map(|n| format!(r#"{{"n": {n},  "amount":1.50, "a" : [1, "é"]}}"#)).collect();
    let mut ids = Vec::new();
    for chunk in payloads.chunks(100) {
        let jobs: Vec<String> = chunk
            .iter()
            .map(|payload| {
                format!(r#"{{"kind":"webhook","destination":"main","payload":{payload},"event_type":"invoice.paid"}}"#)
            })
            .collect();
        let body = format!(r#"{{"jobs":[{}]}}"#, jobs.join(","));
        ids.extend(accepted_ids(daemon.post_raw("/v1/jobs", "application/json", body.into_bytes()).await).await);
    }
    let seen = wait_seen(&receiver, "/ok", "500 deliveries", |seen| seen.len() >= 500).await;
    assert_eq!(seen.len(), 500);
    for (id, payload) in ids.iter().zip(&payloads) {
        let delivery = seen.iter().find(|delivery| delivery["id"] == id.as_str()).expect("delivered under its job id");
        assert_eq!(delivery["verified_by"], json!([0]), "verified: {delivery}");
        assert_eq!(delivery["body"], payload.as_str(), "exact bytes");
        assert_eq!(delivery["event_type"], "invoice.paid");
        assert_eq!(delivery["content_type"], "application/json");
        assert!(delivery["user_agent"].as_str().is_some_and(|agent| agent.starts_with("jobd/")), "{delivery}");
    }
    daemon.wait_for("500 succeeded", |stats| stats["counters"]["jobs"]["succeeded"] == 500).await;
    let record = daemon.job(&ids[0]).await.expect("record");
    assert_eq!(
        (record["result"]["status"].as_u64(), record["result"]["response"].as_str()),
        (Some(200), Some("received"))
    );
    assert!(record["result"]["latency_ms"].is_number(), "{record}");
    let delivered = daemon.metric(r#"jobd_webhook_deliveries_total{destination="main",outcome="delivered"}"#).await;
    assert_eq!(delivered, Some(500.0));
}

#[tokio::test]
async fn retries_keep_the_webhook_id_and_every_secret_signs() {
    let receiver = Receiver::start(&[SECRET, SECOND_SECRET]);
    let dir = tempfile::tempdir().expect("tempdir");
    // The second secret comes from a systemd credential, so that it is in no file jobd reads
    // its settings from.
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).expect("credentials dir");
    std::fs::write(credentials.join("hook_secret"), format!("{SECOND_SECRET}\n")).expect("credential");
    let file = dir.path().join("jobd.toml");
    std::fs::write(
        &file,
        format!(
            "[webhooks.flaky]\nurl = \"{}\"\nsecrets = [\"{SECRET}\"]\nsecret_credentials = [\"hook_secret\"]\n",
            receiver.url("/flaky/2")
        ),
    )
    .expect("write");
    // Default retry settings: the two retries wait about a second, then about two.
    let daemon = Daemon::start(&[
        ("JOBD_CONFIG", file.to_str().expect("utf-8")),
        ("CREDENTIALS_DIRECTORY", credentials.to_str().expect("utf-8")),
    ]);
    let id = submit(&daemon, &webhook("flaky", r#"{"event": "retry me"}"#)).await;
    let seen = wait_seen(&receiver, "/flaky/2", "three deliveries", |seen| seen.len() >= 3).await;
    assert!(seen.iter().all(|delivery| delivery["id"] == id.as_str()), "one id across retries: {seen:?}");
    for delivery in &seen {
        assert_eq!(delivery["verified_by"], json!([0, 1]), "each secret's signature verifies: {delivery}");
        assert_eq!(delivery["signature"].as_str().map(|text| text.matches("v1,").count()), Some(2));
    }
    let record = daemon.wait_for_job(&id, "the delivered job", |record| record["state"] == "succeeded").await;
    assert_eq!((record["attempts"].as_u64(), &record["last_error"]), (Some(3), &Value::Null));
}

#[tokio::test]
async fn retry_after_is_a_floor_and_final_answers_end_the_job() {
    let (receiver, _dir, _file, daemon) = start(&[
        ("throttle", "/throttle", ""),
        ("gone", "/status/410", ""),
        ("moved", "/redirect", ""),
        ("bad", "/status/400", ""),
    ]);

    // 503 with Retry-After: 2: the retry comes no sooner, though the backoff says one second.
    let throttled = submit(&daemon, &webhook("throttle", r#"{"n": 1}"#)).await;
    let seen = wait_seen(&receiver, "/throttle", "the retry", |seen| seen.len() >= 2).await;
    let waited = seen[1]["at"].as_f64().expect("at") - seen[0]["at"].as_f64().expect("at");
    assert!(waited >= 2.0, "the retry came {waited} s after a Retry-After of 2 s");
    daemon.wait_for_job(&throttled, "the throttled job", |record| record["state"] == "succeeded").await;

    // 410, a redirect and another 4xx are final: dead after one attempt.
    for destination in ["gone", "moved", "bad"] {
        let id = submit(&daemon, &webhook(destination, r#"{"n": 2}"#)).await;
        let record = daemon.wait_for_job(&id, destination, |record| record["state"] == "dead").await;
        assert_eq!(record["attempts"], 1, "{record}");
    }
    assert!(receiver.seen_at("/ok").await.is_empty(), "the redirect was not followed");
}

#[tokio::test]
async fn a_hanging_receiver_is_cut_off_at_the_default_timeout() {
    let (_receiver, _dir, _file, daemon) = start(&[("hang", "/hang", "")]);
    let job = json!({"kind": "webhook", "destination": "hang", "payload": {"n": 1}, "max_attempts": 1});
    let id = submit(&daemon, &job).await;
    let record = daemon.wait_for_job(&id, "the cut-off delivery", |record| record["state"] == "dead").await;
    assert_eq!(record["last_error"], "the delivery timed out after 15000 ms", "{record}");
}

/// A job whose own timeout is shorter than the destination's is cut off by the worker,
/// mid-delivery: the cut-off still counts toward the circuit, so a receiver that hangs
/// opens it whatever the jobs' timeouts.
#[tokio::test]
async fn deliveries_cut_off_by_the_jobs_own_timeout_open_the_circuit() {
    let (_receiver, _dir, _file, daemon) = start(&[("hang", "/hang", "circuit_failures = 2")]);
    for n in 0..2 {
        let job = json!({"kind": "webhook", "destination": "hang", "payload": {"n": n}, "max_attempts": 1, "timeout_ms": 300});
        let id = submit(&daemon, &job).await;
        let record = daemon.wait_for_job(&id, "the cut-off delivery", |record| record["state"] == "dead").await;
        assert!(record["last_error"].as_str().is_some_and(|error| error.contains("timed out")), "{record}");
    }
    // The cut-off delivery is noted as its future is dropped, as the attempt ends.
    wait_circuit_open(&daemon, "hang").await;
    assert_eq!(
        daemon.metric(r#"jobd_webhook_deliveries_total{destination="hang",outcome="timed_out"}"#).await,
        Some(2.0)
    );
}

/// The circuit opens after five consecutive failures (the default), holds the
/// destination's jobs without starting them, and closes after the receiver recovers.
/// `circuit_open_secs = 2` shortens the wait before the probe; the opening and the
/// holding are those of the defaults.
#[tokio::test]
async fn the_circuit_opens_holds_jobs_without_using_attempts_and_closes_again() {
    let receiver = Receiver::start(&[SECRET]);
    receiver.set_switch(500).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = config(dir.path(), &receiver, &[("switch", "/switch", "circuit_open_secs = 2")]);
    let daemon = Daemon::start(&[("JOBD_CONFIG", &file)]);
    let failing: Vec<String> = {
        let mut ids = Vec::new();
        for n in 0..5 {
            ids.push(submit(&daemon, &webhook("switch", &format!(r#"{{"n": {n}}}"#))).await);
        }
        ids
    };
    wait_seen(&receiver, "/switch", "five failures", |seen| seen.len() >= 5).await;
    wait_circuit_open(&daemon, "switch").await;
    assert_eq!(daemon.metric(r#"jobd_webhook_circuit_open{destination="switch"}"#).await, Some(1.0));

    // While it is open, new jobs wait without starting.
    let held = submit(&daemon, &webhook("switch", r#"{"held": true}"#)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let record = daemon.job(&held).await.expect("record");
    assert_eq!((record["state"].as_str(), record["attempts"].as_u64()), (Some("queued"), Some(0)), "{record}");

    // The receiver recovers: the probe succeeds, the circuit closes, and everything is delivered.
    receiver.set_switch(200).await;
    let record = daemon.wait_for_job(&held, "the held job", |record| record["state"] == "succeeded").await;
    assert_eq!(record["attempts"], 1, "no attempt was used while the circuit was open: {record}");
    for id in &failing {
        daemon.wait_for_job(id, "a failed job's retry", |record| record["state"] == "succeeded").await;
    }
    assert_eq!(daemon.metric(r#"jobd_webhook_circuit_open{destination="switch"}"#).await, Some(0.0));
}

#[tokio::test]
async fn unknown_and_forbidden_destinations_are_refused_and_queue_nothing() {
    let receiver = Receiver::start(&[SECRET]);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = config(dir.path(), &receiver, &[("main", "/ok", ""), ("other", "/ok", "")]);
    let tokens = dir.path().join("tokens");
    let token = "a".repeat(40);
    let tenant = "t".repeat(40);
    std::fs::write(
        &tokens,
        format!(
            "billing submit,read {token} allowed_destinations=main\ntenant submit,read {tenant} allowed_key_prefixes=t/\n"
        ),
    )
    .expect("tokens");
    let daemon = Daemon::start(&[("JOBD_CONFIG", &file), ("JOBD_TOKENS_FILE", tokens.to_str().expect("utf-8"))]);
    let post = |job: Value| daemon.client.post(daemon.url("/v1/jobs")).bearer_auth(&token).json(&job).send();
    let unknown = post(webhook("nope", "{}")).await.expect("POST");
    assert_eq!(unknown.status(), 400);
    let problem: Value = unknown.json().await.expect("problem");
    assert_eq!(problem["errors"][0]["field"], "destination", "{problem}");
    let forbidden = post(json!({"jobs": [webhook("main", "{}"), webhook("other", "{}")]})).await.expect("POST");
    assert_eq!(forbidden.status(), 403);
    let problem: Value = forbidden.json().await.expect("problem");
    assert_eq!(problem["type"], "/problems/destination-not-allowed", "{problem}");
    assert_eq!(
        (problem["errors"][0]["index"].as_u64(), problem["errors"][0]["field"].as_str()),
        (Some(1), Some("destination"))
    );
    let stats: Value = daemon
        .client
        .get(daemon.url("/v1/stats"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(stats["counters"]["jobs"]["accepted"], 0, "nothing was queued: {stats}");
    assert_eq!(post(webhook("main", "{}")).await.expect("POST").status(), 202);

    // A limit a token does not set allows nothing: a token confined to destinations
    // uploads nothing, and one confined to key prefixes sends no webhook.
    let upload = json!({"kind": "upload", "payload": {"a": 1}, "key": "t/x.json"});
    let refused = post(upload.clone()).await.expect("POST");
    assert_eq!(refused.status(), 403);
    let as_tenant = |job: Value| daemon.client.post(daemon.url("/v1/jobs")).bearer_auth(&tenant).json(&job).send();
    assert_eq!(as_tenant(upload).await.expect("POST").status(), 202);
    let refused = as_tenant(webhook("main", "{}")).await.expect("POST");
    assert_eq!(refused.status(), 403);
    let problem: Value = refused.json().await.expect("problem");
    assert_eq!(problem["type"], "/problems/destination-not-allowed", "{problem}");
}

/// Destination names are an operator's to read: `/readyz` shows each destination's
/// circuit, and `/metrics` its series, only to a read token without confinements. A
/// tenant's token, even one allowed a destination, learns no names from either.
#[tokio::test]
async fn destination_names_are_shown_to_operators_and_never_to_tenants() {
    let receiver = Receiver::start(&[SECRET]);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = config(dir.path(), &receiver, &[("main", "/ok", ""), ("secret-partner", "/ok", "")]);
    let tokens = dir.path().join("tokens");
    let (operator, tenant) = ("o".repeat(40), "t".repeat(40));
    std::fs::write(
        &tokens,
        format!(
            "operator read {operator}
tenant submit,read {tenant} allowed_destinations=main
"
        ),
    )
    .expect("tokens");
    let daemon = Daemon::start(&[("JOBD_CONFIG", &file), ("JOBD_TOKENS_FILE", tokens.to_str().expect("utf-8"))]);
    let get = |path: &str, token: Option<&str>| {
        let request = daemon.client.get(daemon.url(path));
        match token {
            Some(token) => request.bearer_auth(token).send(),
            None => request.send(),
        }
    };
    for token in [None, Some(tenant.as_str())] {
        let ready = get("/readyz", token).await.expect("GET /readyz").text().await.expect("text");
        assert!(!ready.contains("secret-partner") && !ready.contains("\"main\""), "{token:?}: {ready}");
        let metrics = get("/metrics", token).await.expect("GET /metrics");
        assert_eq!(metrics.status(), if token.is_some() { 403 } else { 401 }, "{token:?}");
        assert!(!metrics.text().await.expect("text").contains("secret-partner"));
    }
    let ready: Value = get("/readyz", Some(&operator)).await.expect("GET").json().await.expect("json");
    assert_eq!(ready["kinds"]["webhook"]["destinations"]["secret-partner"]["circuit"], "closed", "{ready}");
    let metrics = get("/metrics", Some(&operator)).await.expect("GET");
    assert_eq!(metrics.status(), 200);
    assert!(metrics.text().await.expect("text").contains(r#"destination="secret-partner""#));
}

/// Deliveries over TLS: a receiver whose certificate chains to a CA in the system's trust
/// store (given here through `SSL_CERT_FILE`, which the store honours) gets them verified
/// and signed; a daemon that does not trust that CA refuses the handshake and delivers
/// nothing. At the defaults; `max_attempts` is the job's own option.
#[tokio::test]
async fn https_deliveries_reach_a_trusted_receiver_and_an_untrusted_one_gets_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key, ca) = (dir.path().join("cert.pem"), dir.path().join("key.pem"), dir.path().join("ca.pem"));
    let pki = TestPki::new();
    pki.write_leaf(&cert, &key);
    std::fs::write(&ca, &pki.ca_pem).expect("write the CA");
    let receiver = Receiver::start_with(&[SECRET], Some(ReceiverTls { cert: &cert, key: &key, client: pki.client() }));
    assert!(receiver.url("/ok").starts_with("https://"));
    let file = config(dir.path(), &receiver, &[("trusted", "/ok", ""), ("untrusted", "/status/200", "")]);

    let trusting = Daemon::start(&[("JOBD_CONFIG", &file), ("SSL_CERT_FILE", ca.to_str().expect("utf-8"))]);
    let id = submit(&trusting, &webhook("trusted", r#"{"over": "tls"}"#)).await;
    let seen = wait_seen(&receiver, "/ok", "the delivery over TLS", |seen| !seen.is_empty()).await;
    assert_eq!(seen[0]["id"], *id);
    assert_eq!(seen[0]["verified_by"], json!([0]), "{seen:?}");
    assert_eq!(seen[0]["body"], r#"{"over":"tls"}"#);
    trusting.wait_for_job(&id, "its record", |record| record["state"] == "succeeded").await;

    // A daemon without the CA: the system store alone does not know it.
    let system_store_only = Daemon::start(&[("JOBD_CONFIG", &file)]);
    let mut job = webhook("untrusted", "{}");
    job["max_attempts"] = json!(1);
    let id = submit(&system_store_only, &job).await;
    let record = system_store_only.wait_for_job(&id, "its record", |record| record["state"] == "dead").await;
    let error = record["last_error"].as_str().expect("an error");
    assert!(error.starts_with("the delivery failed: ") && error.contains("certificate"), "{record}");
    assert!(receiver.seen_at("/status/200").await.is_empty(), "nothing was delivered without trust");
}

#[tokio::test]
async fn a_kill_9_during_deliveries_loses_no_webhook() {
    let (receiver, _dir, file, daemon) = start(&[("main", "/slow", "")]);
    let jobs: Vec<Value> = (0..300).map(|n| webhook("main", &format!(r#"{{"n": {n}}}"#))).collect();
    let ids = accepted_ids(daemon.post_json("/v1/jobs", &json!({"jobs": jobs})).await).await;
    wait_seen(&receiver, "/slow", "some deliveries", |seen| !seen.is_empty()).await;
    let data_dir = daemon.kill_9();
    let daemon = Daemon::start_in(data_dir, &[("JOBD_CONFIG", &file)]);
    let seen = wait_seen(&receiver, "/slow", "every job delivered", |seen| {
        ids.iter().all(|id| seen.iter().any(|delivery| delivery["id"] == id.as_str()))
    })
    .await;
    assert!(seen.iter().all(|delivery| delivery["verified_by"] == json!([0])));
    daemon.wait_for("300 succeeded", |stats| stats["queue"]["queued"] == 0 && stats["queue"]["running"] == 0).await;
}
