//! Every kind of bad request gets its status and a problem body naming what is wrong,
//! and nothing from a refused request is ever enqueued or run.

use crate::common;

use common::{Daemon, files_under};
use serde_json::{Value, json};

/// Checks the problem body shape and returns it.
async fn problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers().get("content-type").and_then(|value| value.to_str().ok()),
        Some("application/problem+json")
    );
    let body: Value = response.json().await.expect("problem JSON");
    assert_eq!(body["status"], status, "{body}");
    for field in ["type", "title", "detail"] {
        assert!(body[field].as_str().is_some_and(|text| !text.is_empty()), "{field} missing: {body}");
    }
    body
}

#[tokio::test]
async fn bad_requests_get_clear_problems_and_enqueue_nothing() {
    let daemon = Daemon::start(&[("JOBD_MAX_BODY_BYTES", "4096")]);

    let cases: Vec<(&str, &str, Option<usize>, &str)> = vec![
        // (body, expected problem type, expected index, expected field)
        ("{\"jobs\": [", "/problems/invalid-json", None, ""),
        (r#"{"jobs": [{"kind": "noop"}, {"kind": 5}]}"#, "/problems/invalid-job", Some(1), "kind"),
        (
            r#"{"jobs": [{"kind": "noop"}, {"kind": "upload", "payload": 1}, {"kind": "transmogrify"}]}"#,
            "/problems/invalid-job",
            Some(2),
            "kind",
        ),
        (r#"{"jobs": []}"#, "/problems/invalid-job", None, "jobs"),
        (r#"{"jobs": {"kind": "noop"}}"#, "/problems/invalid-job", None, "jobs"),
        (
            r#"{"jobs": [{"kind": "upload", "payload": {"a": 1}, "key": "../../etc/passwd"}]}"#,
            "/problems/invalid-job",
            Some(0),
            "key",
        ),
        (r#"{"jobs": [{"kind": "upload"}]}"#, "/problems/invalid-job", Some(0), "payload"),
        (
            r#"{"jobs": [{"kind": "upload", "body_base64": "@@not base64@@"}]}"#,
            "/problems/invalid-job",
            Some(0),
            "body_base64",
        ),
        (
            r#"{"jobs": [{"kind": "upload", "payload": 1, "content_type": "no\u0001pe"}]}"#,
            "/problems/invalid-job",
            Some(0),
            "content_type",
        ),
        (r#"{"jobs": [{"kind": "noop", "key": "a"}]}"#, "/problems/invalid-job", Some(0), "key"),
        (r#"{"jobs": [{"kind": "sleep", "payload": {"ms": "soon"}}]}"#, "/problems/invalid-job", Some(0), "payload"),
        (r#"{"kind": "nope"}"#, "/problems/invalid-job", Some(0), "kind"),
        // More than a year ahead, like a delay_ms over its one-year limit.
        (
            r#"{"jobs": [{"kind": "noop", "run_at": "2999-01-01T00:00:00Z"}]}"#,
            "/problems/invalid-job",
            Some(0),
            "run_at",
        ),
        (r#"{"kind": "noop", "delay_ms": 31536000001}"#, "/problems/invalid-job", Some(0), "delay_ms"),
        (r#"[1, 2, 3]"#, "/problems/invalid-job", None, ""),
        (r#"{"jobs": [{"kind": "noop"}], "extra": true}"#, "/problems/invalid-job", None, "extra"),
    ];
    for (body, kind, index, field) in &cases {
        let response = daemon.post_raw("/v1/jobs", "application/json", body.as_bytes().to_vec()).await;
        let problem = problem(response, 400).await;
        assert_eq!(problem["type"], *kind, "body {body}: {problem}");
        if *kind == "/problems/invalid-job" && !field.is_empty() {
            let error = &problem["errors"][0];
            assert_eq!(error["field"], *field, "body {body}: {problem}");
            assert_eq!(error["index"].as_u64(), index.map(|i| i as u64), "body {body}: {problem}");
            assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
    }
    let mut rejected_invalid = cases.len() as u64;

    for body in [r#"{"payloads": []}"#, r#"{"payloads": "x"}"#, r#"{"payload": [1]}"#, "{"] {
        let response = daemon.post_raw("/v1/payloads", "application/json", body.as_bytes().to_vec()).await;
        let problem = problem(response, 400).await;
        assert!(problem["detail"].as_str().is_some_and(|d| d.contains("payload") || d.contains("JSON")), "{problem}");
        rejected_invalid += 1;
    }

    // Too large, by Content-Length.
    let big = json!({"payloads": [ "x".repeat(5000) ]}).to_string();
    problem(daemon.post_raw("/v1/payloads", "application/json", big.into_bytes()).await, 413).await;

    // Not JSON.
    let noop = br#"{"kind": "noop"}"#.to_vec();
    let unsupported = problem(daemon.post_raw("/v1/jobs", "text/plain", noop.clone()).await, 415).await;
    assert!(unsupported["detail"].as_str().is_some_and(|d| d.contains("text/plain")));
    let response = daemon.client.post(daemon.url("/v1/jobs")).body(noop.clone()).send().await.expect("POST");
    problem(response, 415).await;
    rejected_invalid += 2;
    // A +json type and a charset parameter are JSON.
    assert_eq!(daemon.post_raw("/v1/jobs", "application/json; charset=utf-8", b"{}".to_vec()).await.status(), 400);
    assert_eq!(daemon.post_raw("/v1/jobs", "application/vnd.jobd+json", b"{}".to_vec()).await.status(), 400);
    rejected_invalid += 2;

    // Wrong method and unknown path.
    let response = daemon.client.put(daemon.url("/v1/jobs")).send().await.expect("PUT");
    assert_eq!(response.headers().get("allow").and_then(|v| v.to_str().ok()), Some("GET, POST"));
    problem(response, 405).await;
    let response = daemon.client.delete(daemon.url("/v1/payloads")).send().await.expect("DELETE");
    problem(response, 405).await;
    let response = daemon.client.post(daemon.url("/healthz")).send().await.expect("POST");
    problem(response, 405).await;
    problem(daemon.client.get(daemon.url("/v2/nothing")).send().await.expect("GET"), 404).await;

    // Nothing of any refused request was accepted, ran, or wrote an object.
    let stats = daemon.stats().await;
    let jobs = &stats["counters"]["jobs"];
    assert_eq!(jobs["accepted"], 0, "{stats}");
    assert_eq!(stats["counters"]["rejected"]["invalid"], rejected_invalid, "{stats}");
    assert_eq!(stats["counters"]["rejected"]["too_large"], 1, "{stats}");

    // A good request afterwards works, and is the only thing that ever ran.
    let response = daemon.post_json("/v1/jobs", &json!({"kind": "upload", "payload": {"ok": true}})).await;
    assert_eq!(response.status(), 202);
    let stats = daemon.wait_for("the good job", |stats| common::finished(stats) == 1).await;
    assert_eq!(stats["counters"]["jobs"]["succeeded"], 1);
    assert_eq!(files_under(&daemon.objects_dir()).len(), 1);
}

#[tokio::test]
async fn test_kinds_do_not_exist_unless_enabled() {
    let daemon = Daemon::start(&[("JOBD_TEST_KINDS", "0")]);
    for kind in ["sleep", "fail", "panic"] {
        let response = daemon.post_json("/v1/jobs", &json!({"kind": kind, "payload": {"ms": 1}})).await;
        let problem = problem(response, 400).await;
        assert_eq!(problem["errors"][0]["field"], "kind");
        assert!(problem["errors"][0]["message"].as_str().is_some_and(|m| m.contains("unknown kind")));
    }
    let response = daemon.post_json("/v1/jobs", &json!({"kind": "noop"})).await;
    assert_eq!(response.status(), 202);
}
