//! Several jobd nodes on one PostgreSQL database, a private cluster these tests start
//! themselves: migrations run once, jobs submitted anywhere run once, a killed node's jobs
//! are rescued, a stopped node's late completions are fenced, a restart of the database
//! loses nothing that got a 202, and an idempotency key sent to three nodes at once makes
//! one job.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::postgres::{Cluster, scalar, sql};
use common::{Daemon, WAIT_DEADLINE, accepted_ids};
use serde_json::{Value, json};

/// Starts `count` nodes on `url` at once, each named `node-<n>`, with `extra` settings.
fn start_nodes(url: &str, count: usize, extra: &[(&str, &str)]) -> Vec<Daemon> {
    let handles: Vec<_> = (0..count)
        .map(|number| {
            let url = url.to_owned();
            let extra: Vec<(String, String)> = extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
            std::thread::spawn(move || {
                let name = format!("node-{number}");
                let mut env = vec![
                    ("JOBD_QUEUE", "postgres"),
                    ("JOBD_POSTGRES_URL", url.as_str()),
                    ("JOBD_NODE_NAME", name.as_str()),
                ];
                env.extend(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                Daemon::start(&env)
            })
        })
        .collect();
    handles.into_iter().map(|handle| handle.join().expect("node start")).collect()
}

/// Submits `count` jobs like `job` to `node` in one request; returns their ids.
async fn submit(node: &Daemon, count: usize, job: &Value) -> Vec<String> {
    let jobs: Vec<Value> = (0..count).map(|_| job.clone()).collect();
    accepted_ids(node.post_json("/v1/jobs", &json!({ "jobs": jobs })).await).await
}

/// Waits until every job in `ids` has succeeded, reading through `node`; returns the records.
async fn wait_all_succeeded(node: &Daemon, ids: &[String]) -> Vec<Value> {
    let mut records = Vec::with_capacity(ids.len());
    for id in ids {
        records.push(node.wait_for_job(id, "success", |record| record["state"] == "succeeded").await);
    }
    records
}

/// Waits until every node's `jobd_nodes` says `count` (each learns at its next heartbeat).
async fn wait_for_nodes(nodes: &[Daemon], count: usize) {
    let deadline = Instant::now() + WAIT_DEADLINE;
    for node in nodes {
        while node.metric("jobd_nodes").await != Some(count as f64) {
            assert!(Instant::now() < deadline, "jobd_nodes never said {count}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn metric_sum(nodes: &[Daemon], series: &str) -> f64 {
    let mut sum = 0.0;
    for node in nodes {
        sum += node.metric(series).await.unwrap_or(0.0);
    }
    sum
}

/// Tests 7 and 2: three nodes started at once on an empty database all become ready with
/// one schema, migrated once; jobs submitted to every node all run, spread over the
/// nodes, each succeeding on its first attempt, and every API answers from any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_migrate_once_and_share_the_work() {
    let cluster = Cluster::start();
    let url = cluster.new_database();
    let nodes = start_nodes(&url, 3, &[]);
    for node in &nodes {
        let ready = node.client.get(node.url("/readyz")).send().await.expect("readyz");
        assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap_or_default());
    }
    let versions: Vec<i32> = sql(&url, |client| {
        client.query("SELECT version FROM jobd_schema", &[]).expect("schema").iter().map(|row| row.get(0)).collect()
    });
    assert_eq!(versions, vec![jobd::queue::postgres::SCHEMA_VERSION]);
    let migrating_nodes = nodes
        .iter()
        .filter(|node| node.log_records().iter().any(|record| record["message"] == "PostgreSQL schema migrated"))
        .count();
    assert_eq!(migrating_nodes, 1, "exactly one node migrated");
    assert_eq!(scalar(&url, "SELECT count(*) FROM jobd_nodes"), 3);

    let mut ids = Vec::new();
    for node in &nodes {
        ids.extend(submit(node, 60, &json!({"kind": "sleep", "payload": {"ms": 20}})).await);
    }
    // Every record is readable from every node, whichever node accepted or ran it.
    let records = wait_all_succeeded(&nodes[2], &ids).await;
    for record in &records {
        assert_eq!(record["attempts"], 1, "ran once: {record}");
    }
    for node in &nodes {
        let started = node.metric("jobd_jobs_started_total{kind=\"sleep\"}").await.unwrap_or(0.0);
        assert!(started > 0.0, "every node ran some of the jobs");
    }
    assert_eq!(metric_sum(&nodes, "jobd_jobs_finished_total{kind=\"sleep\",outcome=\"succeeded\"}").await, 180.0);
    let stats = nodes[1].stats().await;
    assert_eq!(stats["queue"]["running"], 0, "{stats}");
    wait_for_nodes(&nodes, 3).await;
    // `/v1/stats` (and with it the console's overview) reports the live nodes.
    assert_eq!(nodes[0].stats().await["cluster"]["nodes"], 3);
    // Listings and cancels work from any node: a scheduled job accepted by node 0 is
    // listed and cancelled through node 1.
    let at = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let scheduled = accepted_ids(nodes[0].post_json("/v1/jobs", &json!({"kind": "noop", "run_at": at})).await).await;
    let listed: Value = nodes[1]
        .client
        .get(nodes[1].url("/v1/jobs?state=scheduled"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("JSON");
    assert_eq!(listed["jobs"][0]["id"], scheduled[0].as_str(), "{listed}");
    let cancel =
        nodes[1].client.delete(nodes[1].url(&format!("/v1/jobs/{}", scheduled[0]))).send().await.expect("cancel");
    assert!(cancel.status().is_success(), "cancel: {}", cancel.status());
    let record = nodes[2].job(&scheduled[0]).await.expect("record");
    assert_eq!(record["state"], "cancelled");
}

/// Test 6: one idempotency key sent to three nodes at once makes one job, whose id all
/// three answers name; repeated for many keys so that the race is really run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_on_three_nodes_make_one_job() {
    let cluster = Cluster::start();
    let url = cluster.new_database();
    let nodes = start_nodes(&url, 3, &[]);
    for round in 0..40 {
        let key = format!("order-{round}");
        let sends = nodes.iter().map(|node| {
            let request = node
                .client
                .post(node.url("/v1/jobs"))
                .header("idempotency-key", key.clone())
                .json(&json!({"kind": "noop"}));
            async move {
                let response = request.send().await.expect("POST");
                // 202 for the job made, 200 for an answer from the job the key already names.
                assert!([200, 202].contains(&response.status().as_u16()), "{}", response.status());
                let body: Value = response.json().await.expect("JSON");
                body["jobs"][0]["id"].as_str().expect("id").to_owned()
            }
        });
        let ids: HashSet<String> = futures_util::future::join_all(sends).await.into_iter().collect();
        assert_eq!(ids.len(), 1, "round {round}: three nodes answered {ids:?}");
    }
    assert_eq!(scalar(&url, "SELECT count(*) FROM jobd_jobs"), 40);
}

/// Test 3: a node killed with SIGKILL under load loses no acknowledged job; its running
/// jobs are rescued and succeed on the other nodes. Prints the time from the kill to the
/// last rescued job's start (the target is under 10 s; a benchmark, not an assertion).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_jobs_are_rescued_and_nothing_is_lost() {
    let cluster = Cluster::start();
    let url = cluster.new_database();
    let mut nodes = start_nodes(&url, 3, &[]);
    let mut ids = Vec::new();
    for node in &nodes {
        ids.extend(submit(node, 40, &json!({"kind": "sleep", "payload": {"ms": 1500}})).await);
    }
    // The victim is busy: its workers hold jobs when it dies.
    let victim = nodes.pop().expect("three nodes");
    let deadline = Instant::now() + WAIT_DEADLINE;
    while victim.metric("jobd_workers{state=\"busy\"}").await.unwrap_or(0.0) < 8.0 {
        assert!(Instant::now() < deadline, "the victim never got busy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A busy worker's job runs once its start is recorded: wait for the records to say
    // that the victim runs jobs, so that it dies holding some.
    let victims_running = "SELECT count(*) FROM jobd_jobs j JOIN jobd_nodes n ON n.id = j.lease_owner
         WHERE n.name = 'node-2' AND j.state = 'running'";
    while scalar(&url, victims_running) == 0 {
        assert!(Instant::now() < deadline, "the victim's starts were never recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let victim_name = "node-2";
    let killed_at = chrono::Utc::now();
    drop(victim.kill_9());
    let records = wait_all_succeeded(&nodes[0], &ids).await;
    let rescued: Vec<&Value> = records.iter().filter(|record| record["attempts"].as_u64().unwrap_or(0) >= 2).collect();
    assert!(!rescued.is_empty(), "the killed node held running jobs, which ran again elsewhere");
    let last_start = rescued
        .iter()
        .filter_map(|record| record["started_at"].as_str()?.parse::<chrono::DateTime<chrono::Utc>>().ok())
        .max()
        .expect("rescued jobs have a start");
    let rescue_secs = (last_start - killed_at).as_seconds_f64();
    eprintln!("rescue: {} jobs of {victim_name}, last started {rescue_secs:.2} s after the kill", rescued.len());
    assert!(metric_sum(&nodes, "jobd_jobs_rescued_total").await >= rescued.len() as f64);
    wait_for_nodes(&nodes, 2).await;
}

/// Test 4: a node stopped (SIGSTOP) for longer than its lease while it runs long jobs is
/// presumed dead: its jobs are rescued and succeed on another node. When it continues
/// (SIGCONT), its late completions are fenced and counted, and the records keep the
/// rescuer's attempt as the successful one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_nodes_late_completions_are_fenced() {
    let cluster = Cluster::start();
    let url = cluster.new_database();
    // The zombie starts alone, so that it alone claims the jobs.
    let zombie = start_nodes(&url, 1, &[]).pop().expect("a node");
    let ids = submit(&zombie, 8, &json!({"kind": "sleep", "payload": {"ms": 9000}})).await;
    zombie.wait_for("running jobs", |stats| stats["queue"]["running"].as_u64().unwrap_or(0) == 8).await;
    let rescuer = Daemon::start(&[
        ("JOBD_QUEUE", "postgres"),
        ("JOBD_POSTGRES_URL", url.as_str()),
        ("JOBD_NODE_NAME", "rescuer"),
    ]);
    zombie.signal("STOP");
    // Rescued by the other node, and running there as attempt 2.
    let deadline = Instant::now() + WAIT_DEADLINE;
    for id in &ids {
        loop {
            let record = rescuer.job(id).await.expect("record");
            if record["attempts"] == 2 && record["state"] == "running" {
                break;
            }
            assert!(Instant::now() < deadline, "job {id} was not rescued: {record}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    zombie.signal("CONT");
    // The zombie's sleeps are overdue: they end at once, and their writes are fenced.
    let deadline = Instant::now() + WAIT_DEADLINE;
    while zombie.metric("jobd_fenced_writes_total").await.unwrap_or(0.0) < ids.len() as f64 {
        assert!(Instant::now() < deadline, "the zombie's completions were not fenced");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fenced = zombie.metric("jobd_fenced_writes_total").await.unwrap_or(0.0);
    let fenced_logs = zombie
        .wait_for_logs("fenced writes", ids.len(), |record| {
            record["message"].as_str().is_some_and(|message| message.starts_with("write fenced"))
        })
        .await;
    let fenced_ids: HashSet<&str> = fenced_logs.iter().filter_map(|record| record["job_id"].as_str()).collect();
    assert_eq!(fenced_ids, ids.iter().map(String::as_str).collect::<HashSet<_>>());
    // Meanwhile the records still show the rescuer's attempt running.
    for id in &ids {
        let record = rescuer.job(id).await.expect("record");
        assert_eq!((record["attempts"].as_u64(), record["state"].as_str()), (Some(2), Some("running")), "{record}");
    }
    let records = wait_all_succeeded(&rescuer, &ids).await;
    for record in &records {
        assert_eq!(record["attempts"], 2, "{record}");
    }
    eprintln!("zombie: {fenced} writes fenced for {} jobs", ids.len());
    // The zombie is back in the cluster, with a new lease.
    let deadline = Instant::now() + WAIT_DEADLINE;
    while rescuer.metric("jobd_nodes").await != Some(2.0) {
        assert!(Instant::now() < deadline, "the zombie did not rejoin");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Test 5: PostgreSQL stopped for 5 s under load and started again: every job that got a
/// 202 succeeds; submissions meanwhile get 503 (not another error, not a hang), and
/// `/readyz` says 503 until the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_loses_nothing_that_was_accepted() {
    let mut cluster = Cluster::start();
    let url = cluster.new_database();
    let nodes = start_nodes(&url, 2, &[]);
    let mut accepted = Vec::new();
    for node in &nodes {
        accepted.extend(submit(node, 50, &json!({"kind": "sleep", "payload": {"ms": 50}})).await);
    }
    cluster.stop_server();
    let outage = Instant::now();
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    while outage.elapsed() < Duration::from_secs(5) {
        for node in &nodes {
            let started = Instant::now();
            let response = node.post_json("/v1/jobs", &json!({"kind": "noop"})).await;
            assert!(started.elapsed() < Duration::from_secs(15), "a submission hung during the outage");
            let status = response.status().as_u16();
            if status == 202 {
                accepted.extend(accepted_ids(response).await);
            } else {
                *statuses.entry(status).or_default() += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = nodes[0].client.get(nodes[0].url("/readyz")).send().await.expect("readyz");
    assert_eq!(ready.status(), 503);
    assert!(statuses.get(&503).is_some_and(|&count| count > 0), "{statuses:?}");
    assert_eq!(statuses.keys().copied().collect::<Vec<_>>(), vec![503], "only 503s: {statuses:?}");
    cluster.start_server();
    let deadline = Instant::now() + WAIT_DEADLINE;
    for node in &nodes {
        while node.client.get(node.url("/readyz")).send().await.expect("readyz").status() != 200 {
            assert!(Instant::now() < deadline, "node not ready after the database came back");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Every accepted job succeeds; should one not, the failure shows the rows and the
    // nodes' warnings.
    let deadline = Instant::now() + WAIT_DEADLINE;
    loop {
        let unfinished = scalar(&url, "SELECT count(*) FROM jobd_jobs WHERE state <> 'succeeded'");
        if unfinished == 0 {
            break;
        }
        if Instant::now() > deadline {
            let rows: Vec<String> = sql(&url, |client| {
                client
                    .query(
                        "SELECT id::text, state, attempts, lease_owner::text FROM jobd_jobs WHERE state <> 'succeeded'",
                        &[],
                    )
                    .expect("rows")
                    .iter()
                    .map(|row| {
                        format!(
                            "{:?}",
                            (
                                row.get::<_, String>(0),
                                row.get::<_, String>(1),
                                row.get::<_, i32>(2),
                                row.get::<_, Option<String>>(3)
                            )
                        )
                    })
                    .collect()
            });
            let warnings: Vec<String> = nodes
                .iter()
                .flat_map(|node| node.log_records())
                .filter(|record| record["level"] == "WARN" || record["level"] == "ERROR")
                .map(|record| record.to_string())
                .collect();
            panic!("{unfinished} jobs did not succeed: {rows:?}\nwarnings:\n{}", warnings.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(scalar(&url, "SELECT count(*) FROM jobd_jobs"), accepted.len() as i64);
}

/// `check-config --probe` connects and reports the schema version, and neither it nor the
/// printed configuration shows the URL's password.
#[test]
fn check_config_probes_the_database_and_hides_the_password() {
    let cluster = Cluster::start();
    let url = cluster.new_database();
    // Trust authentication ignores the password; it is there to be hidden.
    let with_password = url.replace("jobd@", "jobd:hunter2@");
    let probe = |url: &str| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_jobd"))
            .args(["check-config", "--probe"])
            .env("JOBD_QUEUE", "postgres")
            .env("JOBD_POSTGRES_URL", url)
            .env("JOBD_DATA_DIR", cluster.dir())
            .output()
            .expect("run check-config");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
    };
    let before = probe(&with_password);
    assert!(before.contains("no jobd tables yet"), "{before}");
    assert!(!before.contains("hunter2") && before.contains("***"), "{before}");
    let node = start_nodes(&url, 1, &[]).pop().expect("a node");
    let after = probe(&with_password);
    assert!(after.contains(&format!("jobd schema version {}", jobd::queue::postgres::SCHEMA_VERSION)), "{after}");
    assert!(!after.contains("hunter2"), "{after}");
    drop(node);
}

/// A database that jobd's schema version 1 wrote (its migration, from the source, and rows
/// as version 1 stored them) is upgraded in place at start: its queued job runs, its dead
/// job is still listed, and the table has lost `seq` for its id as primary key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_database_is_upgraded_in_place() {
    let cluster = Cluster::start();
    let url = cluster.new_database();
    let v1 = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/queue/postgres/migrations/v1.sql"))
        .expect("the version 1 migration");
    let (queued, dead) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let now_ms = chrono::Utc::now().timestamp_millis();
    sql(&url, |client| {
        client.batch_execute(&v1).expect("version 1 schema");
        client
            .batch_execute("CREATE TABLE jobd_schema (version integer NOT NULL); INSERT INTO jobd_schema VALUES (1);")
            .expect("version table");
        for (id, state) in [(queued, "queued"), (dead, "dead")] {
            client
                .execute(
                    "INSERT INTO jobd_jobs (id, kind, state, attempts, max_attempts, created_at, finished_at, ready_seq)
                     VALUES ($1, 'noop', $2, $3, 3, $4, CASE WHEN $2 = 'dead' THEN $4::bigint END, nextval('jobd_ready_seq'))",
                    &[&id, &state, &if state == "dead" { 3i32 } else { 0 }, &now_ms],
                )
                .expect("a version 1 row");
        }
        client
            .batch_execute(
                "INSERT INTO jobd_counts VALUES ('00000000-0000-0000-0000-000000000000', 'queued', 1),
                     ('00000000-0000-0000-0000-000000000000', 'dead', 1)",
            )
            .expect("version 1 counts");
    });
    let node = start_nodes(&url, 1, &[]).pop().expect("a node");
    assert_eq!(
        scalar(&url, "SELECT version::bigint FROM jobd_schema"),
        i64::from(jobd::queue::postgres::SCHEMA_VERSION)
    );
    let seq_columns =
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'jobd_jobs' AND column_name = 'seq'";
    assert_eq!(scalar(&url, seq_columns), 0);
    wait_all_succeeded(&node, &[queued.to_string()]).await;
    let listed: Value =
        node.client.get(node.url("/v1/jobs?state=dead")).send().await.expect("list").json().await.expect("JSON");
    assert_eq!(listed["jobs"][0]["id"], dead.to_string().as_str(), "{listed}");
    let stats = node.stats().await;
    assert_eq!((stats["queue"]["queued"].as_u64(), stats["queue"]["dead"].as_u64()), (Some(0), Some(1)), "{stats}");
}
