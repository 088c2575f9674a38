//! What an operator sees in the logs at the default level: jobd's own start-up lines
//! without actix's repeats, a periodic activity line while jobs flow, and plain field
//! values (a peer address, not Rust's `Some(...)`).

use crate::common;

use common::Daemon;
use serde_json::{Value, json};

#[tokio::test]
async fn at_the_default_level_activity_is_summed_up_and_fields_read_plainly() {
    let daemon = Daemon::start(&[("JOBD_LOG", jobd::telemetry::DEFAULT_FILTER)]);
    daemon.wait_for_logs("the listening line", 1, |record| record["message"] == "jobd listening").await;
    let recovery = daemon
        .wait_for_logs("the queue's opening line", 1, |record| {
            record["message"] == "queue opened and recovered" || record["message"] == "PostgreSQL queue opened"
        })
        .await;
    assert_eq!((recovery[0]["queued"].as_u64(), recovery[0]["delayed"].as_u64()), (Some(0), Some(0)), "{recovery:?}");

    let jobs: Vec<Value> = (0..20).map(|_| json!({"kind": "noop"})).collect();
    assert_eq!(daemon.post_json("/v1/jobs", &json!({"jobs": jobs})).await.status(), 202);
    // The line comes at the end of the 10-second period the jobs fell in.
    let lines = daemon.wait_for_logs("the activity line", 1, |record| record["message"] == "activity").await;
    let submitted: u64 = lines.iter().filter_map(|line| line["submitted"].as_u64()).sum();
    let succeeded: u64 = lines.iter().filter_map(|line| line["succeeded"].as_u64()).sum();
    assert_eq!((submitted, succeeded), (20, 20), "{lines:?}");
    assert_eq!(lines[0]["level"], "INFO");
    assert!(lines[0]["submitted_per_second"].is_u64() && lines[0]["queued"].is_u64(), "{lines:?}");

    // A refused request names its peer as an address.
    let refused = daemon.client.get(daemon.url("/v1/stats")).header("host", "attacker.example").send().await;
    assert_eq!(refused.expect("GET").status(), 421);
    let refusals = daemon.wait_for_logs("the refusal", 1, |record| record["message"] == "request refused").await;
    let peer = refusals[0]["peer"].as_str().expect("a peer");
    assert!(peer.parse::<std::net::SocketAddr>().is_ok(), "peer {peer:?}");

    // actix-server's own start-up lines repeat jobd's; at the default level they are gone.
    let records = daemon.log_records();
    assert!(
        !records
            .iter()
            .any(|record| record["target"].as_str().is_some_and(|target| target.starts_with("actix_server")))
    );
    assert!(!records.iter().any(|record| record["message"] == "job finished"), "per-job lines are debug");
}
