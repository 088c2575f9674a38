//! Several nodes under partial failure, on private PostgreSQL clusters these tests start
//! themselves, at default settings unless a test says why: a node that lost its jobs runs
//! none of them, a stale copy of a claim never starts, a stall of the database (frozen
//! server processes, or the nodes table locked) is not taken for a death, a clean stop
//! releases the node's jobs at once, a slow migration is waited for, a commit whose answer
//! was lost is answered `outcome-unknown`, and TLS is verified as `sslmode` says.

use crate::common;

use std::time::{Duration, Instant};

use common::postgres::{Cluster, CommitCutter, scalar, sql};
use common::{Daemon, WAIT_DEADLINE, accepted_ids};
use serde_json::{Value, json};

/// Starts a node named `name` on `url` with `extra` settings.
fn start_node(url: &str, name: &str, extra: &[(&str, &str)]) -> Daemon {
    let mut env = vec![("JOBD_QUEUE", "postgres"), ("JOBD_POSTGRES_URL", url), ("JOBD_NODE_NAME", name)];
    env.extend_from_slice(extra);
    Daemon::start(&env)
}

/// Submits `count` sleep jobs of `ms` each, with `max_attempts`, to `node`.
async fn submit_sleeps(node: &Daemon, count: usize, ms: u64, max_attempts: u32) -> Vec<String> {
    let jobs: Vec<Value> =
        (0..count).map(|_| json!({"kind": "sleep", "payload": {"ms": ms}, "max_attempts": max_attempts})).collect();
    accepted_ids(node.post_json("/v1/jobs", &json!({ "jobs": jobs })).await).await
}

/// Polls `query` on `url` until `done` holds for its count.
async fn wait_until_count(url: &str, what: &str, query: &str, done: impl Fn(i64) -> bool) -> i64 {
    let deadline = Instant::now() + WAIT_DEADLINE;
    loop {
        let count = scalar(url, query);
        if done(count) {
            return count;
        }
        assert!(Instant::now() < deadline, "{what}: still {count}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The id of the node named `name`, from its row.
fn node_id(url: &str, name: &str) -> uuid::Uuid {
    let name = name.to_owned();
    sql(url, move |client| client.query_one("SELECT id FROM jobd_nodes WHERE name = $1", &[&name]).expect("row").get(0))
}

async fn started_sleeps(node: &Daemon) -> f64 {
    node.metric("jobd_jobs_started_total{kind=\"sleep\"}").await.unwrap_or(0.0)
}

/// A node stopped (SIGSTOP) past its lease, holding one running job and claimed jobs in
/// its window: the other node rescues all of them. When it continues, it runs none of
/// them: it sees that its lease lapsed, drops its window and stops its running job,
/// instead of starting the window's jobs with fenced starts as it did before. One worker
/// on the stopped node, so that it holds jobs in its window that have not started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_jobs_runs_none_of_them() {
    let cluster = Cluster::start();
    let url = cluster.new_database();
    let stale = start_node(&url, "stale", &[("JOBD_MAX_WORKERS", "1")]);
    let ids = submit_sleeps(&stale, 4, 3000, 3).await;
    let stale_id = node_id(&url, "stale");
    let held = format!("SELECT count(*) FROM jobd_jobs WHERE lease_owner = '{stale_id}' AND state = 'queued'");
    let running = format!("SELECT count(*) FROM jobd_jobs WHERE lease_owner = '{stale_id}' AND state = 'running'");
    wait_until_count(&url, "the stale node's window", &held, |count| count >= 1).await;
    wait_until_count(&url, "the stale node's running job", &running, |count| count == 1).await;
    let rescuer = start_node(&url, "rescuer", &[]);
    let started_before = started_sleeps(&stale).await;
    stale.signal("STOP");
    // The rescuer forgets the stale node and takes every job back; it runs them all.
    let taken = format!(
        "SELECT count(*) FROM jobd_jobs WHERE state <> 'succeeded' AND (lease_owner IS NULL OR lease_owner = '{stale_id}')"
    );
    wait_until_count(&url, "the rescue", &taken, |count| count == 0).await;
    stale.signal("CONT");
    for id in &ids {
        rescuer.wait_for_job(id, "success", |record| record["state"] == "succeeded").await;
    }
    // Whatever it does later, it claims only jobs no node holds, and none is left.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(started_sleeps(&stale).await, started_before, "the stale node started a job it had lost");
    let stops = stale
        .wait_for_logs("the stale node stopping its jobs", 1, |record| {
            record["message"].as_str().is_some_and(|message| message.contains("stops the jobs it held"))
                || record["message"].as_str().is_some_and(|message| message.contains("lease not proven held"))
        })
        .await;
    let dropped: u64 = stops.iter().filter_map(|record| record["dropped_from_window"].as_u64()).sum();
    assert!(dropped >= 1, "the stale node dropped the jobs in its window: {stops:?}");
    assert_eq!(stale.metric("jobd_lease_held").await, Some(1.0), "its lease is back");
}

/// A copy of a job from an older claim (here: the job claimed again by the same node,
/// simulated by moving its claim epoch on) never starts: its start is refused, counted,
/// and the job does not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_copy_of_a_claim_never_starts() {
    let cluster = Cluster::start();
    let url = cluster.new_database();
    // One worker, so that the second job waits in the window behind the first.
    let node = start_node(&url, "node", &[("JOBD_MAX_WORKERS", "1")]);
    let first = submit_sleeps(&node, 1, 2000, 3).await;
    let second = submit_sleeps(&node, 1, 10, 3).await;
    let waiting = format!(
        "SELECT count(*) FROM jobd_jobs WHERE id = '{}' AND lease_owner IS NOT NULL AND state = 'queued'",
        second[0]
    );
    wait_until_count(&url, "the second job in the window", &waiting, |count| count == 1).await;
    let moved = sql(&url, |client| {
        client
            .execute("UPDATE jobd_jobs SET claim_epoch = claim_epoch + 1000 WHERE id = $1::text::uuid", &[&second[0]])
            .expect("move the claim on")
    });
    assert_eq!(moved, 1);
    node.wait_for_job(&first[0], "the first job's success", |record| record["state"] == "succeeded").await;
    let deadline = Instant::now() + WAIT_DEADLINE;
    while node.metric("jobd_fenced_starts_total").await.unwrap_or(0.0) < 1.0 {
        assert!(Instant::now() < deadline, "the stale copy's start was never refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let record = node.job(&second[0]).await.expect("record");
    assert_eq!((record["state"].as_str(), record["attempts"].as_u64()), (Some("queued"), Some(0)), "{record}");
    assert_eq!(started_sleeps(&node).await, 1.0, "only the first job ran");
}

/// How a stall of the database is made.
#[derive(Debug, Clone, Copy)]
enum Stall {
    /// Every server process stopped (SIGSTOP): statements hang, nothing errs.
    Frozen,
    /// The nodes table locked by another session: heartbeats wait for the lock.
    NodesLocked,
}

/// Two nodes with jobs running on their last attempt, through stalls of 1.5 and 2.5 times
/// the lease (5 s): no node is declared lost, nothing is rescued, no job dies, and every
/// job succeeds. A node that cannot prove its lease during the stall stops its jobs, which
/// are retried afterwards, never buried.
async fn a_stall_is_not_a_death(stall: Stall) {
    let cluster = Cluster::start();
    let url = cluster.new_database();
    let nodes = [start_node(&url, "node-a", &[]), start_node(&url, "node-b", &[])];
    // Both nodes have heartbeaten on time for a whole lease, so each trusts its view of
    // the other: the stall finds them as it would in production.
    tokio::time::sleep(Duration::from_secs(7)).await;
    for factor in [1.5, 2.5] {
        let mut ids = Vec::new();
        for node in &nodes {
            ids.extend(submit_sleeps(node, 12, 3000, 1).await);
        }
        let running = "SELECT count(*) FROM jobd_jobs WHERE state = 'running'";
        let deadline = Instant::now() + WAIT_DEADLINE;
        while scalar(&url, running) < 16 {
            if Instant::now() > deadline {
                for node in &nodes {
                    eprintln!("STATS {}", node.stats().await);
                    for line in node.log_records().iter().rev().take(60).rev() {
                        eprintln!("{line}");
                    }
                }
                let rows = sql(&url, |client| {
                    client
                        .query("SELECT state, lease_owner::text, claim_epoch, attempts, count(*) FROM jobd_jobs GROUP BY 1, 2, 3, 4", &[])
                        .expect("rows")
                        .iter()
                        .map(|row| format!("{:?} {:?} {:?} {:?} {:?}", row.get::<_, String>(0), row.get::<_, Option<String>>(1), row.get::<_, i64>(2), row.get::<_, i32>(3), row.get::<_, i64>(4)))
                        .collect::<Vec<_>>()
                });
                panic!("{stall:?} x{factor}: the jobs never ran: {rows:#?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let stall_for = Duration::from_secs_f64(5.0 * factor);
        match stall {
            Stall::Frozen => {
                cluster.signal_server("STOP");
                tokio::time::sleep(stall_for).await;
                cluster.signal_server("CONT");
            }
            Stall::NodesLocked => {
                let url = url.clone();
                tokio::task::spawn_blocking(move || {
                    let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
                    let mut transaction = client.transaction().expect("begin");
                    transaction.batch_execute("LOCK TABLE jobd_nodes IN ACCESS EXCLUSIVE MODE").expect("lock");
                    std::thread::sleep(stall_for);
                    transaction.commit().expect("unlock");
                })
                .await
                .expect("the locking session");
            }
        }
        for id in &ids {
            let record = nodes[0]
                .wait_for_job(id, "a final state", |record| record["state"] == "succeeded" || record["state"] == "dead")
                .await;
            assert_eq!(record["state"], "succeeded", "{stall:?} x{factor}: {record}");
        }
        for node in &nodes {
            assert_eq!(node.metric("jobd_jobs_rescued_total").await, Some(0.0), "{stall:?} x{factor}: a rescue");
            let lost = node
                .log_records()
                .into_iter()
                .filter(|record| record["message"].as_str().is_some_and(|message| message.starts_with("node lost")));
            assert_eq!(lost.count(), 0, "{stall:?} x{factor}: a live node was declared lost");
        }
        eprintln!("{stall:?} x{factor}: {} jobs, none rescued, none dead", ids.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_server_processes_are_not_a_death() {
    a_stall_is_not_a_death(Stall::Frozen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_nodes_table_is_not_a_death() {
    a_stall_is_not_a_death(Stall::NodesLocked).await;
}

/// A clean stop (SIGTERM) releases the jobs in the node's window at once: none stays
/// leased to it after it exits. One worker, so that the window holds jobs at the stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_releases_the_nodes_jobs_at_once() {
    let cluster = Cluster::start();
    let url = cluster.new_database();
    let mut node = start_node(&url, "leaver", &[("JOBD_MAX_WORKERS", "1")]);
    submit_sleeps(&node, 4, 1000, 3).await;
    let id = node_id(&url, "leaver");
    let held = format!("SELECT count(*) FROM jobd_jobs WHERE lease_owner = '{id}' AND state = 'queued'");
    wait_until_count(&url, "jobs in the window", &held, |count| count >= 1).await;
    node.signal("TERM");
    assert!(node.wait_exit().success());
    let leased = format!("SELECT count(*) FROM jobd_jobs WHERE lease_owner = '{id}'");
    assert_eq!(scalar(&url, &leased), 0, "jobs stayed leased to the node that left");
    assert_eq!(scalar(&url, "SELECT count(*) FROM jobd_jobs WHERE state = 'queued' AND lease_owner IS NULL"), 3);
}

/// A node starting while another holds the migration lock for longer than the statement
/// timeout (10 s) waits for it, and comes up once it is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_waits_out_a_migration_longer_than_the_statement_timeout() {
    let cluster = Cluster::start();
    let url = cluster.new_database();
    let (locked_sender, locked) = std::sync::mpsc::channel();
    let holder = {
        let url = url.clone();
        std::thread::spawn(move || {
            let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
            client.execute("SELECT pg_advisory_lock($1)", &[&0x6a6f_6264_0001i64]).expect("the migration lock");
            locked_sender.send(()).expect("tell");
            std::thread::sleep(Duration::from_secs(12));
            client.execute("SELECT pg_advisory_unlock($1)", &[&0x6a6f_6264_0001i64]).expect("unlock");
        })
    };
    locked.recv().expect("the lock is held");
    let node = start_node(&url, "patient", &[]);
    holder.join().expect("the lock holder");
    let ids = submit_sleeps(&node, 1, 10, 3).await;
    node.wait_for_job(&ids[0], "success", |record| record["state"] == "succeeded").await;
    assert_eq!(
        scalar(&url, "SELECT version::bigint FROM jobd_schema"),
        i64::from(jobd::queue::postgres::SCHEMA_VERSION)
    );
}

/// The connection of the ingest lane is cut after its COMMIT reached the server and
/// before the answer came back: the submission is answered `503 outcome-unknown` (not a
/// plain 503, which says nothing was enqueued), and the jobs are in fact there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_was_lost_is_answered_outcome_unknown() {
    let cluster = Cluster::start();
    let url = cluster.new_database();
    let cutter = CommitCutter::start(cluster.port);
    let proxied = url.replace(&format!(":{}/", cluster.port), &format!(":{}/", cutter.port));
    let node = start_node(&proxied, "cut", &[]);
    // One submission first, so that the ingest lane is known to the proxy.
    accepted_ids(node.post_json("/v1/jobs", &json!({"kind": "noop"})).await).await;
    cutter.arm();
    let jobs: Vec<Value> = (0..3).map(|_| json!({"kind": "noop"})).collect();
    let response = node.post_json("/v1/jobs", &json!({ "jobs": jobs })).await;
    assert_eq!(response.status(), 503);
    let problem: Value = response.json().await.expect("a problem");
    assert_eq!(problem["type"], "/problems/outcome-unknown", "{problem}");
    assert_eq!(cutter.cut.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(scalar(&url, "SELECT count(*) FROM jobd_jobs"), 4, "the cut commit took effect");
    // The lane reconnects: the next submission is accepted.
    let deadline = Instant::now() + WAIT_DEADLINE;
    while node.post_json("/v1/jobs", &json!({"kind": "noop"})).await.status() != 202 {
        assert!(Instant::now() < deadline, "the ingest lane never came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // With the ingest connection down and the main one up, the node is not ready: it
    // could not take a submission.
    cutter.block_ingest(true);
    let readiness = wait_readiness(&node, false).await;
    assert_eq!(readiness["checks"]["ingest_writable"], false, "{readiness}");
    assert_eq!(readiness["checks"]["queue_writable"], true, "{readiness}");
    cutter.block_ingest(false);
    wait_readiness(&node, true).await;
}

/// Polls `/readyz` until its `ready` is `ready`; returns the body.
async fn wait_readiness(node: &Daemon, ready: bool) -> Value {
    let deadline = Instant::now() + WAIT_DEADLINE;
    loop {
        let body: Value =
            node.client.get(node.url("/readyz")).send().await.expect("readyz").json().await.expect("JSON");
        if body["ready"] == ready {
            return body;
        }
        assert!(Instant::now() < deadline, "readiness never became {ready}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// TLS to PostgreSQL, through `check-config --probe` and a running node: `verify-full`
/// with the test CA connects, and a node runs jobs over it; a wrong CA or a host name the
/// certificate does not carry is refused with the reason; `require` against a server
/// without TLS fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_verified_as_sslmode_says() {
    let pki = common::pki::TestPki::new();
    let cluster = Cluster::start_tls(&pki);
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).expect("write the CA");
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, common::pki::TestPki::new().ca_pem).expect("write another CA");
    let database = cluster.new_database();
    let name = database.rsplit('/').next().expect("a database name").to_owned();
    let port = cluster.port;
    let url = |host: &str, query: &str| format!("postgresql://jobd@{host}:{port}/{name}?{query}");
    let probe = |url: &str| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_jobd"))
            .args(["check-config", "--probe"])
            .env("JOBD_QUEUE", "postgres")
            .env("JOBD_POSTGRES_URL", url)
            .env("JOBD_DATA_DIR", dir.path())
            .output()
            .expect("run check-config");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.success(), text)
    };
    let verified = url("localhost", &format!("sslmode=verify-full&sslrootcert={}", ca.display()));
    let (ok, text) = probe(&verified);
    assert!(ok, "verify-full with the right CA: {text}");
    let (ok, text) = probe(&url("localhost", &format!("sslmode=verify-full&sslrootcert={}", other_ca.display())));
    assert!(!ok && text.contains("TLS") && text.contains("invalid peer certificate"), "a wrong CA: {text}");
    let wrong_host =
        url("wrong.invalid", &format!("hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={}", ca.display()));
    let (ok, text) = probe(&wrong_host);
    assert!(!ok && text.contains("TLS") && text.contains("not valid for name"), "a wrong host name: {text}");
    let plain = Cluster::start();
    let plain_url = format!("{}?sslmode=require", plain.new_database());
    let (ok, text) = probe(&plain_url);
    assert!(!ok && text.contains("TLS"), "require without TLS on the server: {text}");
    let node = start_node(&verified, "tls", &[]);
    let ids = submit_sleeps(&node, 2, 10, 3).await;
    for id in &ids {
        node.wait_for_job(id, "success", |record| record["state"] == "succeeded").await;
    }
    let encrypted = scalar(
        &cluster.url("postgres"),
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE s.ssl AND a.application_name LIKE 'jobd tls%'",
    );
    assert!(encrypted >= 3, "the node's connections use TLS: {encrypted}");
}

/// Every filter of the listing API has an index: with sequential scans off, as on jobd's
/// read lane, the plan of each listing statement by a state few jobs are in, by kind or by
/// tenant names one of them, never a walk of the table. (A listing by `queued` or
/// `succeeded` alone, or of everything, walks the primary key from the newest job, which
/// most jobs match.)
#[test]
fn every_listing_filter_has_an_index() {
    use jobd::job::JobState;
    let cluster = Cluster::start();
    let url = cluster.new_database();
    let node = start_node(&url, "lister", &[]);
    drop(node);
    let rare = [JobState::Running, JobState::Failed, JobState::Scheduled, JobState::Cancelled, JobState::Dead];
    let mut checked = 0;
    for state in std::iter::once(None).chain(JobState::ALL.into_iter().map(Some)) {
        for by_tenant in [false, true] {
            for by_kind in [false, true] {
                let selective = state.is_some_and(|state| rare.contains(&state)) || by_tenant || by_kind;
                if !selective {
                    continue;
                }
                let statement = jobd::queue::postgres::listing_sql(state, by_tenant, by_kind)
                    .replace("$1::uuid", "NULL::uuid")
                    .replace("$2", "50")
                    .replace("$3", "'x'")
                    .replace("$4", "'y'");
                let plan: String = sql(&url, |client| {
                    client.batch_execute("SET enable_seqscan = off").expect("set");
                    let rows = client.query(&format!("EXPLAIN {statement}"), &[]).expect("explain");
                    rows.iter().map(|row| row.get::<_, String>(0)).collect::<Vec<_>>().join("\n")
                });
                let mut expected = Vec::new();
                match state {
                    Some(JobState::Dead) => expected.push("jobd_jobs_dead"),
                    Some(state) if rare.contains(&state) => expected.push("jobd_jobs_rare_states"),
                    _ => {}
                }
                if by_tenant {
                    expected.push("jobd_jobs_tenant");
                }
                if by_kind {
                    expected.push("jobd_jobs_kind");
                }
                assert!(!plan.contains("Seq Scan"), "{state:?} tenant={by_tenant} kind={by_kind}:\n{plan}");
                assert!(
                    expected.iter().any(|index| plan.contains(index)),
                    "{state:?} tenant={by_tenant} kind={by_kind} uses none of {expected:?}:\n{plan}"
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 29, "five rare states, each alone and with a tenant, a kind or both; the rest with either");
}

/// A database that vanishes without a word (the link to it cut: no reset, no close
/// reaches either side) is noticed: the node's connections give up (TCP keepalives and
/// `tcp_user_timeout`), its heartbeat fails and says so, `/readyz` is 503, and it works
/// again once the database is back. Before those settings a statement sent into the cut
/// waited for TCP's own give-up, about 15 minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_vanishes_is_noticed_and_readiness_says_so() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: a network namespace needs root");
        return;
    }
    let netns = common::netns::Netns::create(0).expect("a network namespace (ip netns add)");
    let cluster = Cluster::start_in_netns(&netns);
    let url = cluster.new_database();
    let node = start_node(&url, "far", &[]);
    let ids = submit_sleeps(&node, 1, 10, 3).await;
    node.wait_for_job(&ids[0], "success", |record| record["state"] == "succeeded").await;
    wait_readiness(&node, true).await;
    netns.set_cut(true);
    let failed = node
        .wait_for_logs("a failed heartbeat", 1, |record| {
            record["message"].as_str().is_some_and(|message| message.starts_with("lease heartbeat failed"))
        })
        .await;
    eprintln!("vanished database noticed: {}", failed[0]);
    let readiness = wait_readiness(&node, false).await;
    assert_eq!(readiness["lease_held"], false, "{readiness}");
    netns.set_cut(false);
    wait_readiness(&node, true).await;
    let ids = submit_sleeps(&node, 1, 10, 3).await;
    node.wait_for_job(&ids[0], "success after the database came back", |record| record["state"] == "succeeded").await;
}

/// The statements of the claim and progress path, and the rescue, plan through their
/// indexes on a fresh, empty database with jobd's settings (`enable_seqscan=off` on those
/// connections), even as generic plans, the plans a prepared statement keeps: on an empty
/// table the claim's generic plan was a sequential scan, kept as the table grew (a run of
/// 100,000 noop jobs then went at about 3,400 jobs/s instead of over 30,000).
#[test]
fn hot_statements_plan_through_their_indexes_on_a_fresh_database() {
    let cluster = Cluster::start();
    let url = cluster.new_database();
    drop(start_node(&url, "planner", &[]));
    let plan = |sql: &str, seqscan: bool| -> String {
        let parameters = (1..=12).filter(|n| sql.contains(&format!("${n}"))).count();
        let nulls = vec!["NULL"; parameters].join(", ");
        let sql = sql.to_owned();
        common::postgres::sql(&url, move |client| {
            client
                .batch_execute(&format!(
                    "SET enable_seqscan = {}; SET plan_cache_mode = force_generic_plan; PREPARE hot AS {sql}",
                    if seqscan { "on" } else { "off" }
                ))
                .expect("prepare");
            let execute = if parameters == 0 { "EXECUTE hot".to_owned() } else { format!("EXECUTE hot({nulls})") };
            let rows = client.query(&format!("EXPLAIN {execute}"), &[]).expect("explain");
            rows.iter().map(|row| row.get::<_, String>(0)).collect::<Vec<_>>().join("\n")
        })
    };
    for (name, sql) in jobd::queue::postgres::hot_statements() {
        let planned = plan(sql, false);
        assert!(!planned.contains("Seq Scan on jobd_jobs"), "{name} walks the table:\n{planned}");
        assert!(planned.contains("Index") || planned.contains("Function Scan"), "{name}:\n{planned}");
    }
    // The trap itself: with sequential scans allowed, the claim's generic plan on the
    // empty table walks it.
    let take = jobd::queue::postgres::hot_statements().into_iter().find(|(name, _)| *name == "take").expect("take").1;
    assert!(plan(take, true).contains("Seq Scan on jobd_jobs"), "the trap this guards against is gone");
}
