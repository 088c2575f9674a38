//! The PostgreSQL backend's tests that need its internals, on a private cluster the test
//! starts itself (the same one the integration tests use).

use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator as _;

use super::schema::READY_CHANNEL;
use super::{ClusterSettings, PostgresBackend};
use crate::job::Job;
use crate::queue::{JobWriter as _, NodeId, QueueBackend as _, Transactions as _};

use crate::queue::test_cluster::cluster;

/// At shutdown the listener thread, which announces ready jobs to the other nodes, may
/// stop before the ingest lane's last commit. The lane then announces them itself when it
/// is dropped; without that, the other nodes would find the jobs only at their next poll.
#[test]
fn the_ingest_lanes_last_ready_jobs_are_announced_when_it_closes() {
    let cluster = cluster::Cluster::start();
    let url = cluster.new_database();
    let settings =
        ClusterSettings { url: url.clone(), node_name: "announcer".to_owned(), lease: Duration::from_secs(5) };
    let metrics = crate::metrics::Metrics::new(&["noop"]).expect("metrics").cluster;
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

/// A server that refuses the connection (a role or a database that does not exist) is
/// reported as such at start, with what to do, and not as an outage.
#[test]
fn a_refused_connection_at_start_says_what_was_refused_and_what_to_do() {
    let cluster = cluster::Cluster::start();
    let url = url::Url::parse(&cluster.new_database()).expect("the cluster's URL");
    let mut no_role = url.clone();
    no_role.set_username("nobody_here").expect("a user name");
    let mut no_database = url.clone();
    no_database.set_path("/no_such_database");
    for (url, expected) in
        [(no_role, "28000: role \"nobody_here\" does not exist; the role may not exist"), (no_database, "3D000")]
    {
        let settings =
            ClusterSettings { url: url.to_string(), node_name: "refused".to_owned(), lease: Duration::from_secs(5) };
        let metrics = crate::metrics::Metrics::new(&["noop"]).expect("metrics").cluster;
        let Err(error) = PostgresBackend::open(&settings, NodeId::generate(), 1_000, metrics) else {
            panic!("{url} opened");
        };
        let message = error.to_string();
        assert!(message.contains("PostgreSQL refused the connection"), "{message}");
        assert!(message.contains(expected), "{message} lacks {expected:?}");
        assert!(!message.contains("unreachable"), "{message}");
    }
}

/// Opens node `name` on `url` with the default lease.
fn open_node(url: &str, name: &str) -> (PostgresBackend, NodeId) {
    let settings = ClusterSettings { url: url.to_owned(), node_name: name.to_owned(), lease: Duration::from_secs(5) };
    let metrics = crate::metrics::Metrics::new(&["noop"]).expect("metrics").cluster;
    let node = NodeId::generate();
    (PostgresBackend::open(&settings, node, 1_000, metrics).expect("open"), node)
}

/// Enqueues `count` noop jobs on `backend`'s ingest lane and returns their ids.
fn enqueue_noops(backend: &mut PostgresBackend, count: usize) -> Vec<uuid::Uuid> {
    let mut ingest = backend.ingest_lane().expect("the first lane offers an ingest lane");
    ingest.begin().expect("begin");
    let jobs: Vec<Job> = (0..count).map(|_| Job::for_test("noop")).collect();
    let ids = jobs.iter().map(|job| super::codec::uuid_of(job.id)).collect();
    ingest.enqueue(jobs).expect("enqueue").expect("admitted");
    ingest.commit().expect("commit");
    ids
}

/// Polls `query` (one bigint) until it returns `expected`, for at most a bound meant only
/// for a broken build.
fn wait_for_count(client: &mut postgres::Client, query: &str, expected: i64, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let found: i64 = client.query_one(query, &[]).expect("count").get(0);
        if found == expected {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {found}, expected {expected}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A claim that races the removal of its node's row (another node forgetting it) takes
/// nothing: it waits for the removal, then finds the row gone. Without that, the jobs it
/// took would be leased to an owner with no row that no rescue was sweeping any more.
#[test]
fn a_claim_that_races_its_nodes_forget_takes_nothing() {
    let cluster = cluster::Cluster::start();
    let url = cluster.new_database();
    let (mut node, id) = open_node(&url, "forgotten");
    let jobs = enqueue_noops(&mut node, 3);

    let mut rescuer = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
    let mut forget = rescuer.transaction().expect("begin");
    forget.execute("DELETE FROM jobd_nodes WHERE id = $1", &[&id.as_uuid()]).expect("forget");
    let claiming = std::thread::spawn(move || {
        node.begin_fetch().expect("begin");
        let batch = node.claim(10, chrono::Utc::now(), &crate::queue::Lease { owner: id, expires_at: None });
        let batch = batch.expect("claim");
        node.commit().expect("commit");
        (node, batch.jobs.len())
    });
    let mut observer = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
    wait_for_count(
        &mut observer,
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'UPDATE jobd_jobs j SET lease_owner%'",
        1,
        "the claim waits for the forget",
    );
    forget.commit().expect("commit the forget");
    let (node, claimed) = claiming.join().expect("the claim thread");
    assert_eq!(claimed, 0, "a claim after its node's row is gone takes nothing");
    let leased: i64 = observer
        .query_one("SELECT count(*) FROM jobd_jobs WHERE id = ANY($1) AND lease_owner IS NOT NULL", &[&jobs])
        .expect("count")
        .get(0);
    assert_eq!(leased, 0, "no job is leased to the forgotten node");
    drop(node);
}

/// The jobs of a departed node (listed in `jobd_departed` by the node that forgot it) are
/// swept by whichever node holds the rescue lock, long after that node's start sweep, and
/// one locked at the first sweeps is swept once its lock is gone. Jobs whose owner has no
/// row and was never listed are swept by the next node to start.
#[test]
fn a_departed_nodes_jobs_are_swept_by_any_node() {
    let cluster = cluster::Cluster::start();
    let url = cluster.new_database();
    let (mut survivor, _) = open_node(&url, "survivor");
    let departed_jobs = enqueue_noops(&mut survivor, 4);
    let unannounced_jobs = enqueue_noops(&mut survivor, 2);
    let (departed, unannounced) = (NodeId::generate().as_uuid(), NodeId::generate().as_uuid());
    let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
    let lease = "UPDATE jobd_jobs SET lease_owner = $1, claim_epoch = 1 WHERE id = ANY($2)";
    client.execute(lease, &[&unannounced, &unannounced_jobs]).expect("lease to an unannounced owner");
    let mut locker = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
    let mut lock = locker.transaction().expect("begin");
    lock.execute(lease, &[&departed, &departed_jobs]).expect("lease to the departed owner");
    lock.commit().expect("commit");
    let mut lock = locker.transaction().expect("begin");
    lock.query("SELECT 1 FROM jobd_jobs WHERE id = $1 FOR UPDATE", &[&departed_jobs[0]]).expect("lock one");
    client
        .execute("INSERT INTO jobd_departed (node, departed_at) VALUES ($1, clock_timestamp())", &[&departed])
        .expect("list the departed node");

    let leased_to = |owner: uuid::Uuid| format!("SELECT count(*) FROM jobd_jobs WHERE lease_owner = '{owner}'");
    wait_for_count(&mut client, &leased_to(departed), 1, "the departed node's unlocked jobs are swept");
    lock.commit().expect("unlock");
    wait_for_count(&mut client, &leased_to(departed), 0, "the locked one is swept once unlocked");
    let still: i64 = client.query_one(&leased_to(unannounced), &[]).expect("count").get(0);
    assert_eq!(still, 2, "an owner nobody announced is not swept by a running node");

    let (newcomer, _) = open_node(&url, "newcomer");
    wait_for_count(&mut client, &leased_to(unannounced), 0, "a starting node sweeps every leased job");
    drop((survivor, newcomer));
}
