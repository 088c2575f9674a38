//! The PostgreSQL backend's tests that need its internals, on a private cluster the test
//! starts itself (the same one the integration tests use).

use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator as _;

use super::schema::READY_CHANNEL;
use super::{ClusterSettings, PostgresBackend};
use crate::job::Job;
use crate::queue::{NodeId, QueueBackend as _};

// The integration tests' private cluster, and what it can be started with.
#[allow(dead_code)]
#[path = "../../../tests/common/postgres.rs"]
mod cluster;
#[allow(dead_code)]
#[path = "../../../tests/common/netns.rs"]
mod netns;
#[allow(dead_code)]
#[path = "../../../tests/common/pki.rs"]
mod pki;

/// At shutdown the listener thread, which announces ready jobs to the other nodes, may
/// stop before the ingest lane's last commit. The lane then announces them itself when it
/// is dropped; without that, the other nodes would find the jobs only at their next poll.
#[test]
fn the_ingest_lanes_last_ready_jobs_are_announced_when_it_closes() {
    let cluster = cluster::Cluster::start();
    let url = cluster.new_database();
    let settings =
        ClusterSettings { url: url.clone(), node_name: "announcer".to_owned(), lease: Duration::from_secs(5) };
    let metrics = crate::metrics::Metrics::new(&["noop"], &[]).expect("metrics").cluster;
    let node = NodeId::generate();
    let mut main = PostgresBackend::open(&settings, node, 1_000, metrics).expect("open");
    let mut ingest = main.ingest_lane().expect("the first lane offers an ingest lane");
    // The main lane owns the listener thread: dropping it stops the thread, as shutdown
    // does before the ingest lane's last commit.
    drop(main);

    let mut other_node = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
    other_node.batch_execute(&format!("LISTEN {READY_CHANNEL}")).expect("listen");
    ingest.begin().expect("begin");
    let admitted = ingest.enqueue(vec![Job::for_test("noop")]).expect("enqueue").expect("admitted");
    assert_eq!(admitted.len(), 1);
    ingest.commit().expect("commit");
    let mut notifications = other_node.notifications();
    assert!(
        notifications.iter().next().expect("read notifications").is_none(),
        "nothing is announced before the lane closes: no listener thread runs"
    );
    drop(notifications);

    drop(ingest);
    let mut notifications = other_node.notifications();
    // A bound for a broken build only; the notification comes within milliseconds.
    let announced = notifications.timeout_iter(Duration::from_secs(30)).next().expect("read notifications");
    let announced = announced.expect("the closing ingest lane announces its ready jobs");
    assert_eq!(announced.channel(), READY_CHANNEL);
    assert_eq!(announced.payload(), node.to_string(), "the announcement names the node, which ignores its own");
}
