//! The cluster checker: three nodes on one private PostgreSQL cluster deliver webhooks to
//! a local receiver (`tests/webhook_receiver.py`, at `/work/<node>`, so the receiver
//! knows which node delivered), through rounds of faults: `kill -9` of a node, SIGSTOP of
//! a node past its lease, a stall of PostgreSQL, a 5-s restart of PostgreSQL, and one
//! node cut off from the database through a proxy. At default settings. Over all rounds:
//! every job that got a 202 is delivered and its record says so; no node delivers a job
//! after its start for it was refused; and every duplicate delivery is one that a fault
//! caught in flight, on the node the fault struck (or, for a database fault, any node).

use crate::common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::postgres::Cluster;
use common::proxy::CutProxy;
use common::receiver::Receiver;
use common::{Daemon, WAIT_DEADLINE, accepted_ids};
use serde_json::{Value, json};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Jobs per round: at 8 deliveries in flight per node and 500 ms each, about three
/// seconds of work for three nodes, so that the fault finds deliveries in flight.
const JOBS_PER_ROUND: usize = 150;

/// A fault the checker injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill,
    StopPastLease,
    DatabaseStall,
    DatabaseRestart,
    CutOff,
}

/// A round: its fault, the node it struck (none for a database fault), its jobs, and
/// when the fault began and ended (seconds since the epoch, the receiver's clock).
struct Round {
    fault: Fault,
    victim: Option<String>,
    ids: Vec<String>,
    began: f64,
    ended: f64,
}

fn now_secs() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |since| since.as_secs_f64())
}

/// Starts node `name` on `url`, delivering to the receiver's `/work/<name>`.
fn start_node(dir: &std::path::Path, receiver: &Receiver, url: &str, name: &str) -> Daemon {
    let file = dir.join(format!("{name}.toml"));
    let config =
        format!("[webhooks.check]\nurl = \"{}\"\nsecrets = [\"{SECRET}\"]\n", receiver.url(&format!("/work/{name}")));
    std::fs::write(&file, config).expect("write the config");
    let file = file.to_str().expect("utf-8").to_owned();
    Daemon::start(&[
        ("JOBD_CONFIG", file.as_str()),
        ("JOBD_QUEUE", "postgres"),
        ("JOBD_POSTGRES_URL", url),
        ("JOBD_NODE_NAME", name),
    ])
}

/// Submits a round's jobs to `node`, sending again after a 503 that says nothing was
/// enqueued (`/problems/unavailable`), as a client would.
async fn submit_round(node: &Daemon, round: usize) -> Vec<String> {
    let jobs: Vec<Value> = (0..JOBS_PER_ROUND)
        .map(|n| json!({"kind": "webhook", "destination": "check", "payload": {"round": round, "n": n}}))
        .collect();
    let deadline = Instant::now() + WAIT_DEADLINE;
    loop {
        let response = node.post_json("/v1/jobs", &json!({ "jobs": jobs })).await;
        if response.status() != 503 {
            return accepted_ids(response).await;
        }
        let problem: Value = response.json().await.expect("a problem");
        assert_eq!(problem["type"], "/problems/unavailable", "{problem}");
        assert!(Instant::now() < deadline, "the node never took the round: {problem}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the receiver has seen deliveries of this round's jobs from `node`.
async fn wait_in_flight(receiver: &Receiver, ids: &[String], node: &str) {
    let path = format!("/work/{node}");
    let deadline = Instant::now() + WAIT_DEADLINE;
    loop {
        let seen = receiver.seen().await;
        if seen
            .iter()
            .any(|delivery| delivery["path"] == path.as_str() && ids.iter().any(|id| delivery["id"] == id.as_str()))
        {
            return;
        }
        assert!(Instant::now() < deadline, "{node} never delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every job in `ids` is final, reading through `node`; a read answered 503
/// (the database is still coming back) is tried again.
async fn wait_all_final(node: &Daemon, ids: &[String]) {
    let deadline = Instant::now() + WAIT_DEADLINE;
    for id in ids {
        loop {
            let response = node.client.get(node.url(&format!("/v1/jobs/{id}"))).send().await.expect("GET");
            if response.status() == 200 {
                let record: Value = response.json().await.expect("JSON");
                if matches!(record["state"].as_str(), Some("succeeded" | "dead" | "cancelled")) {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "job {id} never became final");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_through_rounds_of_faults_lose_nothing_and_run_nothing_they_lost() {
    let mut cluster = Cluster::start();
    let url = cluster.new_database();
    let receiver = Receiver::start(&[SECRET]);
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = CutProxy::start(cluster.port);
    let proxied = url.replace(&format!(":{}/", cluster.port), &format!(":{}/", proxy.port));
    let mut nodes: HashMap<String, Daemon> = HashMap::new();
    nodes.insert("n0".into(), start_node(dir.path(), &receiver, &url, "n0"));
    nodes.insert("n1".into(), start_node(dir.path(), &receiver, &url, "n1"));
    nodes.insert("n2".into(), start_node(dir.path(), &receiver, &proxied, "n2"));
    // Every node trusts its view of the others after a lease of on-time beats.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let faults = [Fault::Kill, Fault::StopPastLease, Fault::DatabaseStall, Fault::DatabaseRestart, Fault::CutOff];
    let mut rounds = Vec::new();
    // Logs of nodes that are gone, kept for the checks below.
    let mut gone_logs: HashMap<String, Vec<Value>> = HashMap::new();
    for (number, fault) in faults.into_iter().enumerate() {
        let victim = match fault {
            Fault::Kill => Some("n1"),
            Fault::StopPastLease => Some("n0"),
            Fault::CutOff => Some("n2"),
            Fault::DatabaseStall | Fault::DatabaseRestart => None,
        };
        // Sent to the node the fault will strike: its own commit wakes its own claim first,
        // so it holds most of them (a node keeps the jobs waiting at a destination's limit
        // in its window).
        let ids = submit_round(&nodes[victim.unwrap_or("n0")], number).await;
        assert_eq!(ids.len(), JOBS_PER_ROUND);
        wait_in_flight(&receiver, &ids, victim.unwrap_or("n0")).await;
        let began = now_secs();
        match fault {
            Fault::Kill => {
                let killed = nodes.remove("n1").expect("n1");
                gone_logs.insert("n1".into(), killed.log_records());
                drop(killed.kill_9());
                nodes.insert("n1b".into(), start_node(dir.path(), &receiver, &url, "n1b"));
            }
            Fault::StopPastLease => {
                nodes["n0"].signal("STOP");
                tokio::time::sleep(Duration::from_secs(9)).await;
                nodes["n0"].signal("CONT");
            }
            Fault::DatabaseStall => {
                cluster.signal_server("STOP");
                tokio::time::sleep(Duration::from_secs(7)).await;
                cluster.signal_server("CONT");
            }
            Fault::DatabaseRestart => {
                cluster.stop_server();
                tokio::time::sleep(Duration::from_secs(5)).await;
                cluster.start_server();
            }
            Fault::CutOff => {
                proxy.set_cut(true);
                tokio::time::sleep(Duration::from_secs(8)).await;
                proxy.set_cut(false);
            }
        }
        let ended = now_secs();
        wait_all_final(&nodes["n1b"], &ids).await;
        rounds.push(Round { fault, victim: victim.map(str::to_owned), ids, began, ended });
    }

    let seen = receiver.seen().await;
    let mut deliveries: HashMap<&str, Vec<&Value>> = HashMap::new();
    for delivery in &seen {
        if let Some(id) = delivery["id"].as_str() {
            deliveries.entry(id).or_default().push(delivery);
        }
    }
    // Refused starts, by node: a node must never run the copy of a job whose start was
    // refused. A copy is a job and a claim; the node may later run a newer claim of the
    // same job, handed out again once its lease was back. Runs are the workers' `job
    // finished` lines, in the job's span (every copy that starts ends in one).
    let mut logs: HashMap<String, Vec<Value>> = gone_logs;
    for (name, node) in &nodes {
        logs.insert(name.clone(), node.log_records());
    }
    let mut refused_copies = 0;
    for (name, records) in &logs {
        let refused: std::collections::HashSet<(String, i64)> = records
            .iter()
            .filter(|record| {
                record["message"].as_str().is_some_and(|message| message.starts_with("write fenced"))
                    && record["write"] == "start"
            })
            .filter_map(|record| Some((record["job_id"].as_str()?.to_owned(), record["claim"].as_i64()?)))
            .collect();
        refused_copies += refused.len();
        for record in records {
            if record["message"] != "job finished" {
                continue;
            }
            let span = &record["span"];
            if let (Some(id), Some(claim)) = (span["job_id"].as_str(), span["claim"].as_i64()) {
                assert!(
                    !refused.contains(&(id.to_owned(), claim)),
                    "{name} ran job {id} of claim {claim}, whose start was refused"
                );
            }
        }
    }
    let reader = &nodes["n1b"];
    for round in &rounds {
        let mut duplicates = 0;
        let mut in_flight_at_fault = 0;
        for id in &round.ids {
            let got = deliveries.get(id.as_str()).map(Vec::as_slice).unwrap_or_default();
            assert!(!got.is_empty(), "{:?}: job {id} got a 202 and was never delivered", round.fault);
            let record = reader.job(id).await.expect("record");
            assert_eq!(
                record["state"], "succeeded",
                "{:?}: the record disagrees with the receiver: {record}",
                round.fault
            );
            if got.len() > 1 {
                duplicates += got.len() - 1;
                // The first delivery was in flight when the fault struck, on the node it
                // struck (any node, for a fault of the database): it arrived before the
                // fault ended and had not been answered before it began.
                let first = got
                    .iter()
                    .min_by(|a, b| a["at"].as_f64().partial_cmp(&b["at"].as_f64()).expect("times"))
                    .expect("one");
                let node = first["path"].as_str().unwrap_or_default().trim_start_matches("/work/");
                let arrived = first["at"].as_f64().unwrap_or(0.0);
                let answered = first["ended"].as_f64().unwrap_or(f64::MAX);
                let struck = round.victim.as_deref().is_none_or(|victim| victim == node);
                assert!(
                    struck && arrived <= round.ended + 1.0 && answered >= round.began - 1.0,
                    "{:?}: a duplicate of {id} that the fault does not account for: {got:?}",
                    round.fault
                );
                in_flight_at_fault += 1;
            }
        }
        eprintln!(
            "checker {:?} (victim {:?}): {} jobs, {} duplicate deliveries ({} jobs caught in flight)",
            round.fault,
            round.victim,
            round.ids.len(),
            duplicates,
            in_flight_at_fault
        );
    }
    eprintln!("checker: {refused_copies} refused starts over all rounds, none of those copies ran");
}

/// Jobs waiting at a destination's in-flight limit do not pile up in one node's window
/// while another node has free slots: 32 webhooks of half a second each, sent to one of
/// two nodes (8 in flight per node, the default): both nodes deliver a fair share. Before,
/// the first node claimed all 32 and the second delivered none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_waiting_at_a_destination_limit_are_shared_between_nodes() {
    let cluster = Cluster::start();
    let url = cluster.new_database();
    let receiver = Receiver::start(&[SECRET]);
    let dir = tempfile::tempdir().expect("tempdir");
    let first = start_node(dir.path(), &receiver, &url, "first");
    let _second = start_node(dir.path(), &receiver, &url, "second");
    let jobs: Vec<Value> =
        (0..32).map(|n| json!({"kind": "webhook", "destination": "check", "payload": {"n": n}})).collect();
    let ids = accepted_ids(first.post_json("/v1/jobs", &json!({ "jobs": jobs })).await).await;
    wait_all_final(&first, &ids).await;
    let seen = receiver.seen().await;
    let by = |node: &str| seen.iter().filter(|delivery| delivery["path"] == format!("/work/{node}").as_str()).count();
    let (on_first, on_second) = (by("first"), by("second"));
    eprintln!("32 webhooks: {on_first} delivered by the node they were sent to, {on_second} by the other");
    assert!(on_first >= 8 && on_second >= 8, "first {on_first}, second {on_second}");
    assert_eq!(on_first + on_second, 32);
}
