//! A full queue answers 429 with Retry-After at once, refuses the whole request, leaves
//! accepted jobs alone, and accepts again once it drains.

mod common;

use common::{Daemon, accepted_ids, finished};
use serde_json::{Value, json};

#[tokio::test]
async fn a_full_queue_answers_429_and_recovers_after_draining() {
    let daemon = Daemon::start(&[("JOBD_MAX_WORKERS", "2"), ("JOBD_MAX_QUEUE", "10")]);
    let slow = |count: usize| -> Value {
        json!({"jobs": (0..count).map(|_| json!({"kind": "sleep", "payload": {"ms": 150}})).collect::<Vec<_>>()})
    };
    let first = accepted_ids(daemon.post_json("/v1/jobs", &slow(8)).await).await;
    assert_eq!(first.len(), 8);

    // 8 unfinished + 3 > 10: refused whole, although 2 would still fit.
    let response = daemon.post_json("/v1/jobs", &slow(3)).await;
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .expect("a numeric Retry-After header");
    assert!(retry_after >= 1);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let problem: Value = response.json().await.expect("problem body");
    assert_eq!(problem["status"], 429);
    assert_eq!(problem["type"], "/problems/queue-full");

    let stats = daemon.wait_for("the first 8 jobs", |stats| finished(stats) == 8).await;
    assert_eq!(stats["counters"]["jobs"]["succeeded"], 8, "earlier jobs unaffected: {stats}");
    assert_eq!(stats["counters"]["jobs"]["accepted"], 8, "nothing of the refused request was accepted");
    assert_eq!(stats["counters"]["rejected"]["queue_full"], 1);

    let again = accepted_ids(daemon.post_json("/v1/jobs", &slow(10)).await).await;
    assert_eq!(again.len(), 10, "accepted again once drained");
    daemon.wait_for("all 18 jobs", |stats| finished(stats) == 18).await;
}
