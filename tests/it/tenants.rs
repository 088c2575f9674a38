//! Tenants against the real daemon: idempotency keys are scoped by the submitting token,
//! and a token confined by `allowed_key_prefixes` reads, lists and controls only the jobs
//! it submitted, while other tokens see everything.

use crate::common;

use common::{Daemon, accepted_ids};
use serde_json::{Value, json};

const TENANT_A: &str = "tenant-a-0123456789abcdef0123456789abcdef";
const TENANT_B: &str = "tenant-b-0123456789abcdef0123456789abcdef";
const OPERATOR: &str = "operator-0123456789abcdef0123456789abcdef";

fn start() -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tokens");
    std::fs::write(
        &path,
        format!(
            "tenant-a submit,read,admin {TENANT_A} allowed_key_prefixes=a/\n\
             tenant-b submit,read,admin {TENANT_B} allowed_key_prefixes=b/\n\
             operator submit,read,admin {OPERATOR}\n"
        ),
    )
    .expect("write tokens");
    let daemon = Daemon::start(&[("JOBD_TOKENS_FILE", path.to_str().expect("utf-8 path"))]);
    (daemon, dir)
}

async fn submit(daemon: &Daemon, token: &str, job: &Value) -> reqwest::Response {
    daemon.client.post(daemon.url("/v1/jobs")).bearer_auth(token).json(job).send().await.expect("POST")
}

async fn get(daemon: &Daemon, token: &str, path: &str) -> (u16, Value) {
    let response = daemon.client.get(daemon.url(path)).bearer_auth(token).send().await.expect("GET");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test]
async fn idempotency_keys_are_scoped_by_token_and_confined_tokens_see_only_their_own_jobs() {
    let (daemon, _dir) = start();
    // The same key from two tenants makes two jobs; B never gets A's id.
    let keyed = |prefix: &str| json!({"kind": "upload", "payload": {"n": 1}, "key": format!("{prefix}/x.json"), "idempotency_key": "order-1", "delay_ms": 60000});
    let a_id = accepted_ids(submit(&daemon, TENANT_A, &keyed("a")).await).await.remove(0);
    let b_response = submit(&daemon, TENANT_B, &keyed("b")).await;
    assert_eq!(b_response.status(), 202, "another tenant's key is a new job");
    let b_id = accepted_ids(b_response).await.remove(0);
    assert_ne!(a_id, b_id);
    // Within one token, the key still answers with the first job.
    let again = submit(&daemon, TENANT_A, &keyed("a")).await;
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.expect("JSON");
    assert_eq!(again["jobs"][0]["id"], a_id.as_str());

    // A confined token reads its own job, and another tenant's is unknown to it.
    let (status, record) = get(&daemon, TENANT_A, &format!("/v1/jobs/{a_id}")).await;
    assert_eq!((status, record["submitted_by"].as_str()), (200, Some("tenant-a")), "{record}");
    let (status, _) = get(&daemon, TENANT_A, &format!("/v1/jobs/{b_id}?payload=true")).await;
    assert_eq!(status, 404, "tenant A must not read tenant B's job or payload");
    // Its listing holds only its own jobs.
    let (status, page) = get(&daemon, TENANT_A, "/v1/jobs").await;
    assert_eq!(status, 200);
    let listed: Vec<&str> =
        page["jobs"].as_array().expect("jobs").iter().filter_map(|job| job["id"].as_str()).collect();
    assert_eq!(listed, [a_id.as_str()]);
    // Nor can it cancel another tenant's job.
    let cancel = daemon.client.delete(daemon.url(&format!("/v1/jobs/{b_id}"))).bearer_auth(TENANT_A).send().await;
    assert_eq!(cancel.expect("DELETE").status(), 404);
    let (_, record) = get(&daemon, TENANT_B, &format!("/v1/jobs/{b_id}")).await;
    assert_eq!(record["state"], "scheduled", "B's job is untouched: {record}");

    // A token without prefixes reads and lists every job, as before.
    let (status, _) = get(&daemon, OPERATOR, &format!("/v1/jobs/{b_id}")).await;
    assert_eq!(status, 200);
    let (_, page) = get(&daemon, OPERATOR, "/v1/jobs").await;
    assert_eq!(page["jobs"].as_array().map(Vec::len), Some(2));
    // And a tenant still cancels its own job.
    let cancel = daemon.client.delete(daemon.url(&format!("/v1/jobs/{a_id}"))).bearer_auth(TENANT_A).send().await;
    assert_eq!(cancel.expect("DELETE").status(), 200);
}
