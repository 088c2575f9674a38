//! Upload jobs against a real daemon and the default `file://` store: exact bytes,
//! chosen keys, and keys that try to escape the store root.

use crate::common;

use base64::Engine as _;
use common::{Daemon, accepted_ids, files_under, finished};
use serde_json::{Value, json};

#[tokio::test]
async fn payload_collection_becomes_one_object_per_payload_with_exact_bytes() {
    let daemon = Daemon::start(&[]);
    // Raw JSON text with odd spacing, key order and number forms: the object must hold
    // these exact bytes, not a re-serialization.
    let payloads: Vec<String> = (0..100)
        .map(|n| format!(r#"{{"n": {n},  "name":"payload-{n}", "z":[1, 2.50, "é\u00e9"], "a" : null}}"#))
        .collect();
    let body = format!(r#"{{"payloads": [{}]}}"#, payloads.join(",\n "));
    let response = daemon.post_raw("/v1/payloads", "application/json", body.into_bytes()).await;
    let ids = accepted_ids(response).await;
    assert_eq!(ids.len(), 100);
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted, ids, "ids are sortable by submission time");

    daemon.wait_for("100 uploads", |stats| finished(stats) == 100).await;
    let stats = daemon.stats().await;
    assert_eq!(stats["counters"]["jobs"]["succeeded"], 100, "{stats}");

    let files = files_under(&daemon.objects_dir());
    assert_eq!(files.len(), 100, "one object per payload");
    for (id, payload) in ids.iter().zip(&payloads) {
        let file = files
            .iter()
            .find(|path| path.file_name().and_then(|name| name.to_str()) == Some(&format!("{id}.json")))
            .unwrap_or_else(|| panic!("no object for job {id}"));
        let relative = file.strip_prefix(daemon.objects_dir()).expect("under the root");
        let parts: Vec<_> = relative.iter().map(|part| part.to_string_lossy().into_owned()).collect();
        assert_eq!(parts.len(), 5, "payloads/yyyy/mm/dd/id.json, got {relative:?}");
        assert_eq!(parts[0], "payloads");
        assert_eq!(std::fs::read(file).expect("read object"), payload.as_bytes(), "bytes of job {id}");
    }
}

#[tokio::test]
async fn jobs_with_chosen_keys_and_raw_bytes_are_written_there() {
    let daemon = Daemon::start(&[]);
    let raw: Vec<u8> = (0..=255).collect();
    let response = daemon
        .post_json(
            "/v1/jobs",
            &json!({"jobs": [
                {"kind": "upload", "body_base64": base64::engine::general_purpose::STANDARD.encode(&raw),
                 "key": "reports/raw.bin", "content_type": "application/octet-stream"},
                {"kind": "upload", "payload": {"hello": "world"}, "key": "reports/2026/hello.json"},
                {"kind": "noop"},
            ]}),
        )
        .await;
    let ids = accepted_ids(response).await;
    assert_eq!(ids.len(), 3);
    daemon.wait_for("3 jobs", |stats| finished(stats) == 3).await;
    let root = daemon.objects_dir();
    assert_eq!(std::fs::read(root.join("reports/raw.bin")).expect("raw object"), raw);
    assert_eq!(std::fs::read(root.join("reports/2026/hello.json")).expect("json object"), br#"{"hello":"world"}"#);
}

#[tokio::test]
async fn keys_that_escape_the_root_are_refused_and_nothing_is_written_outside() {
    let daemon = Daemon::start(&[]);
    let outside_marker = daemon.data_path().parent().expect("tmp").join("x");
    let escaping = [
        "../x",
        "/etc/x",
        "a/../../x",
        "%2e%2e/x",
        "a/%2E%2E/%2e%2e/x",
        "%2F..%2Fx",
        "..%2fx",
        "..\\x",
        "a/./x",
        "a//x",
        "",
    ];
    for key in escaping {
        let response =
            daemon.post_json("/v1/jobs", &json!({"kind": "upload", "payload": {"k": key}, "key": key})).await;
        assert_eq!(response.status(), 400, "key {key:?}");
        let problem: Value = response.json().await.expect("problem body");
        assert_eq!(problem["errors"][0]["field"], "key", "key {key:?}: {problem}");
        assert_eq!(problem["errors"][0]["index"], 0, "key {key:?}: {problem}");
    }
    let too_long = "k".repeat(1025);
    let response = daemon.post_json("/v1/jobs", &json!({"kind": "upload", "payload": 1, "key": too_long})).await;
    assert_eq!(response.status(), 400);

    // A symbolic link planted inside the root must not be followed out of it.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(daemon.objects_dir()).expect("objects dir");
    std::os::unix::fs::symlink(elsewhere.path(), daemon.objects_dir().join("linked")).expect("symlink");
    let response = daemon.post_json("/v1/jobs", &json!({"kind": "upload", "payload": 1, "key": "linked/x"})).await;
    assert_eq!(accepted_ids(response).await.len(), 1);
    let stats = daemon.wait_for("the symlinked upload", |stats| finished(stats) == 1).await;
    assert_eq!(stats["counters"]["jobs"]["failed"], 1, "{stats}");

    assert_eq!(std::fs::read_dir(elsewhere.path()).expect("list").count(), 0, "nothing behind the symlink");
    assert!(!outside_marker.exists(), "nothing written next to the data dir");
    assert!(!std::path::Path::new("/etc/x").exists());
    assert!(files_under(&daemon.objects_dir()).is_empty(), "no object was written at all");
    assert_eq!(stats["counters"]["jobs"]["accepted"], 1, "only the symlink job was accepted");
}

/// A key that the file system cannot hold (`t/a/b` below the object `t/a`) fails its job
/// for good at the first attempt, with a message that names the key and not the server's
/// paths; retried once the way is clear, the job succeeds, and its record no longer shows
/// the old error. At the default `max_attempts`.
#[tokio::test]
async fn a_key_below_an_object_fails_for_good_without_server_paths_and_a_success_clears_the_error() {
    let daemon = Daemon::start(&[]);
    let first = json!({"kind": "upload", "payload": {"n": 1}, "key": "t/a"});
    let id = accepted_ids(daemon.post_json("/v1/jobs", &first).await).await.remove(0);
    daemon.wait_for_job(&id, "the first upload", |record| record["state"] == "succeeded").await;

    let below = json!({"kind": "upload", "payload": {"n": 2}, "key": "t/a/b"});
    let id = accepted_ids(daemon.post_json("/v1/jobs", &below).await).await.remove(0);
    let record = daemon.wait_for_job(&id, "the blocked upload", |record| record["state"] == "dead").await;
    assert_eq!(record["attempts"], 1, "a permanent error uses one attempt: {record}");
    let error = record["last_error"].as_str().expect("an error");
    assert!(error.contains("cannot write key t/a/b") && error.contains("is an object"), "{error}");
    let root = daemon.objects_dir();
    assert!(!error.contains(root.to_str().expect("utf-8")) && !error.contains('#'), "server paths in {error:?}");

    // The way cleared, a retry succeeds, and the record shows no error any more.
    std::fs::remove_file(root.join("t/a")).expect("remove the blocking object");
    let retried = daemon.client.post(daemon.url(&format!("/v1/jobs/{id}/retry"))).send().await.expect("retry");
    assert_eq!(retried.status(), 202);
    let record = daemon.wait_for_job(&id, "the retried upload", |record| record["state"] == "succeeded").await;
    assert_eq!(record["last_error"], Value::Null, "{record}");

    // Only a dead job can be retried, and the refusal says so.
    let again = daemon.client.post(daemon.url(&format!("/v1/jobs/{id}/retry"))).send().await.expect("retry");
    assert_eq!(again.status(), 409);
    let problem: Value = again.json().await.expect("problem");
    assert!(
        problem["detail"].as_str().is_some_and(|detail| detail.contains("only a dead job can be retried")),
        "{problem}"
    );
}
