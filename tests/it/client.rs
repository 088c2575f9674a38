//! The client commands (`jobd submit`, `jobd jobs …`, `jobd stats`) against a live jobd:
//! backpressure honoured, resumed runs without duplicates, and the documented exit codes.

use crate::common;

use std::collections::HashMap;
use std::io::Write as _;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// `jobd` with `args`, none of the developer's `JOBD_` settings, and `env` on top.
fn jobd_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_jobd"));
    for (key, _) in std::env::vars() {
        if key.starts_with("JOBD_") {
            command.env_remove(key);
        }
    }
    command.args(args).envs(env.iter().copied()).stdin(Stdio::null());
    command
}

fn jobd(args: &[&str], env: &[(&str, &str)]) -> Output {
    jobd_command(args, env).output().expect("run jobd")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `<line> <id>` pairs of an ids file; a last line still being written is left out.
fn read_ids(path: &std::path::Path) -> Vec<(u64, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (number, id) = line.split_once(' ').expect("<line> <id>");
            (number.parse().expect("a line number"), id.to_owned())
        })
        .collect()
}

/// 30,000 payloads against a queue of 5,000: the client meets 429s, waits them out, and
/// in the end every payload is accepted once. jobd's own count of created jobs is the
/// proof of no duplicates, and the ids file holds 30,000 distinct ids.
#[tokio::test(flavor = "multi_thread")]
async fn submit_waits_out_a_full_queue_and_every_payload_is_accepted_once() {
    // Six times what the queue holds: the queue fills, and batches wait, several times over.
    // (100,000 took two minutes of a CI run, to show nothing 30,000 does not.)
    const PAYLOADS: u64 = 30_000;
    let daemon = common::Daemon::start(&[("JOBD_MAX_QUEUE", "5000")]);
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("payloads.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&input).expect("create the input"));
    for n in 0..PAYLOADS {
        writeln!(file, r#"{{"n": {n}, "event": "signup"}}"#).expect("write");
    }
    file.into_inner().expect("flush").sync_all().expect("sync");
    let ids = dir.path().join("ids");
    let (input_path, ids_path) = (input.to_str().expect("utf-8"), ids.to_str().expect("utf-8"));
    let args = [
        "submit",
        "--payloads",
        "--batch",
        "1000",
        "--parallel",
        "4",
        "--ids-file",
        ids_path,
        "--output",
        "json",
        input_path,
    ];
    let output = tokio::task::block_in_place(|| jobd(&args, &[("JOBD_URL", &daemon.base)]));
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let summary: Value = serde_json::from_slice(&output.stdout).expect("a JSON summary");
    assert_eq!(summary["accepted"], PAYLOADS, "{summary}");
    assert_eq!((summary["refused"].as_u64(), summary["failed"].as_u64()), (Some(0), Some(0)), "{summary}");
    assert!(summary["waits"].as_u64().unwrap_or(0) > 0, "a queue of 5,000 must have refused some batch: {summary}");
    assert!(daemon.stats().await["counters"]["rejected"]["queue_full"].as_u64().unwrap_or(0) > 0);
    // Not a terminal: plain progress lines, never a bar redrawn with escapes.
    assert!(!text(&output.stderr).contains('\x1b'), "{}", text(&output.stderr));

    let pairs = read_ids(&ids);
    assert_eq!(pairs.len() as u64, PAYLOADS);
    let distinct: std::collections::HashSet<&String> = pairs.iter().map(|(_, id)| id).collect();
    assert_eq!(distinct.len() as u64, PAYLOADS, "one job per payload");
    let stats = daemon.stats().await;
    assert_eq!(stats["counters"]["jobs"]["accepted"], PAYLOADS, "jobd created exactly one job per payload");

    // A payload is stored exactly as its line was written.
    let (line, id) = &pairs[pairs.len() / 2];
    let record = daemon.wait_for_job(id, "the upload", common::settled).await;
    assert_eq!(record["state"], "succeeded", "{record}");
    let key = record["result"]["key"].as_str().expect("an object key");
    let stored = std::fs::read_to_string(daemon.objects_dir().join(key)).expect("the stored payload");
    assert_eq!(stored, format!(r#"{{"n": {}, "event": "signup"}}"#, line - 1));
}

/// A run killed part way, then run again with the same `--idempotency-from-line` name,
/// creates each job once: the second run is answered with the first run's jobs for the
/// lines it had sent.
#[tokio::test(flavor = "multi_thread")]
async fn a_resumed_run_with_keys_from_lines_creates_no_duplicates() {
    const JOBS: u64 = 3_000;
    let daemon = common::Daemon::start(&[("JOBD_MAX_QUEUE", "1000")]);
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("jobs.jsonl");
    let lines: Vec<String> =
        (0..JOBS).map(|n| json!({"kind": "sleep", "payload": {"ms": 20 + n % 3}}).to_string()).collect();
    std::fs::write(&input, lines.join("\n") + "\n").expect("write the input");
    let ids = dir.path().join("ids");
    let (input_path, ids_path) = (input.to_str().expect("utf-8"), ids.to_str().expect("utf-8"));
    let args = ["submit", "--batch", "200", "--parallel", "1", "--ids-file", ids_path];
    let run = [&args[..], &["--idempotency-from-line", "nightly-42", input_path]].concat();

    // The first run is killed once it has been given some ids, well before the end.
    // 16 workers run 20-ms jobs at about 800 a second, so the queue of 1,000 fills and
    // the run takes seconds: time enough to interrupt it part way.
    let first_stderr = std::fs::File::create(dir.path().join("first.stderr")).expect("stderr file");
    let mut first = jobd_command(&run, &[("JOBD_URL", &daemon.base)]).stderr(first_stderr).spawn().expect("spawn");
    let deadline = Instant::now() + common::WAIT_DEADLINE;
    while read_ids(&ids).len() < 1000 {
        assert!(Instant::now() < deadline, "the first run never got 1,000 ids");
        if let Some(status) = first.try_wait().expect("try_wait") {
            let stderr = std::fs::read_to_string(dir.path().join("first.stderr")).unwrap_or_default();
            panic!("the first run ended ({status}) before it was interrupted: {stderr}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().expect("kill the first run");
    first.wait().expect("reap");
    let before: HashMap<u64, String> = read_ids(&ids).into_iter().collect();
    assert!((before.len() as u64) < JOBS, "the interruption came before the end");

    let second = tokio::task::block_in_place(|| jobd(&run, &[("JOBD_URL", &daemon.base)]));
    assert_eq!(second.status.code(), Some(0), "{}", text(&second.stderr));
    assert!(
        text(&second.stdout).contains(&format!("accepted {JOBS}, refused 0, failed 0")),
        "{}",
        text(&second.stdout)
    );
    let all = read_ids(&ids);
    let mut by_line: HashMap<u64, String> = HashMap::new();
    for (line, id) in &all {
        if let Some(earlier) = by_line.insert(*line, id.clone()) {
            assert_eq!(&earlier, id, "line {line} became two jobs");
        }
    }
    assert_eq!(by_line.len() as u64, JOBS);
    for (line, id) in &before {
        assert_eq!(by_line.get(line), Some(id), "the rerun was answered with the first run's job");
    }
    assert_eq!(daemon.stats().await["counters"]["jobs"]["accepted"], JOBS, "no line became a second job");
}

/// The exit codes the README documents: 0 done, 1 refused, 2 usage, 3 unreachable,
/// 4 token refused; and `jobs` and `stats` print what the API says.
#[tokio::test(flavor = "multi_thread")]
async fn client_commands_exit_with_the_documented_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens");
    let admin = "a".repeat(64);
    let reader = "b".repeat(64);
    std::fs::write(&tokens, format!("ops submit,read,admin {admin}\nviewer read {reader}\n")).expect("tokens");
    let daemon = common::Daemon::start(&[("JOBD_TOKENS_FILE", tokens.to_str().expect("utf-8"))]);
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{admin}\n")).expect("token file");
    let as_admin = [("JOBD_URL", daemon.base.as_str()), ("JOBD_TOKEN_FILE", token_file.to_str().expect("utf-8"))];
    let run = |args: &[&str], env: &[(&str, &str)]| tokio::task::block_in_place(|| jobd(args, env));

    // A dead job, found with `jobs list`, read with `jobs get`, retried with `jobs retry`.
    let input = dir.path().join("one.jsonl");
    std::fs::write(&input, "{\"kind\": \"fail\", \"max_attempts\": 1, \"payload\": {\"message\": \"<b>boom</b>\"}}\n")
        .expect("write");
    let ids = dir.path().join("ids");
    let submitted =
        run(&["submit", "--ids-file", ids.to_str().expect("utf-8"), input.to_str().expect("utf-8")], &as_admin);
    assert_eq!(submitted.status.code(), Some(0), "{}", text(&submitted.stderr));
    let id = read_ids(&ids).pop().expect("an id").1;
    let deadline = Instant::now() + common::WAIT_DEADLINE;
    loop {
        let got = run(&["jobs", "get", &id, "--output", "json"], &as_admin);
        assert_eq!(got.status.code(), Some(0), "{}", text(&got.stderr));
        let record: Value = serde_json::from_slice(&got.stdout).expect("JSON record");
        if record["state"] == "dead" {
            assert_eq!(record["last_error"], "<b>boom</b>", "{record}");
            break;
        }
        assert!(Instant::now() < deadline, "the job never died: {record}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed = run(&["jobs", "list", "--state", "dead"], &as_admin);
    assert_eq!(listed.status.code(), Some(0));
    assert!(
        text(&listed.stdout).contains(&id) && text(&listed.stdout).contains("<b>boom</b>"),
        "{}",
        text(&listed.stdout)
    );
    let retried = run(&["jobs", "retry", &id, "--output", "json"], &as_admin);
    assert_eq!(retried.status.code(), Some(0), "{}", text(&retried.stderr));
    assert_eq!(serde_json::from_slice::<Value>(&retried.stdout).expect("JSON")["state"], "queued");

    // 1: the server refused: an unknown job, a cancel of a job that is not queued, a bad line.
    let missing = run(&["jobs", "get", "01a216d3-b082-737a-89d5-c6d7616e096d"], &as_admin);
    assert_eq!(missing.status.code(), Some(1), "{}", text(&missing.stderr));
    assert!(text(&missing.stderr).contains("404"), "{}", text(&missing.stderr));
    let bad_lines = dir.path().join("bad.jsonl");
    std::fs::write(&bad_lines, "{\"kind\": \"noop\"}\n{\"kind\": \"no-such-kind\"}\nnot json\n{\"kind\": \"noop\"}\n")
        .expect("write");
    let mixed = run(&["submit", bad_lines.to_str().expect("utf-8")], &as_admin);
    assert_eq!(mixed.status.code(), Some(1), "{}", text(&mixed.stderr));
    assert!(text(&mixed.stdout).contains("accepted 2, refused 2, failed 0"), "{}", text(&mixed.stdout));
    let stderr = text(&mixed.stderr);
    assert!(stderr.contains("line 2 refused") && stderr.contains("line 3 refused"), "{stderr}");

    // Standard input, and `jobs cancel`: a delayed job cancelled once, then refused (409).
    let mut piped = jobd_command(&["submit", "-", "--output", "json"], &as_admin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    piped
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"{\"kind\": \"noop\", \"delay_ms\": 3600000}\n\n{\"kind\": \"noop\"}\n")
        .expect("write stdin");
    let piped = tokio::task::block_in_place(|| piped.wait_with_output()).expect("wait");
    assert_eq!(piped.status.code(), Some(0), "{}", text(&piped.stderr));
    let summary: Value = serde_json::from_slice(&piped.stdout).expect("JSON summary");
    assert_eq!(summary["accepted"], 2, "a blank line is skipped: {summary}");
    let listed = run(&["jobs", "list", "--state", "scheduled", "--output", "json"], &as_admin);
    let page: Value = serde_json::from_slice(&listed.stdout).expect("JSON page");
    let delayed = page["jobs"][0]["id"].as_str().expect("the delayed job").to_owned();
    let cancelled = run(&["jobs", "cancel", &delayed], &as_admin);
    assert_eq!(cancelled.status.code(), Some(0), "{}", text(&cancelled.stderr));
    assert!(text(&cancelled.stdout).contains("state: cancelled"), "{}", text(&cancelled.stdout));
    let again = run(&["jobs", "cancel", &delayed], &as_admin);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again.stderr));
    assert!(text(&again.stderr).contains("409"), "{}", text(&again.stderr));

    // 2: usage.
    assert_eq!(run(&["jobs", "frobnicate"], &as_admin).status.code(), Some(2));
    assert_eq!(run(&["submit", "/no/such/file"], &as_admin).status.code(), Some(2));

    // 3: nobody listens.
    let closed = format!(
        "http://127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
    );
    let unreachable = run(&["stats", "--url", &closed], &[]);
    assert_eq!(unreachable.status.code(), Some(3), "{}", text(&unreachable.stderr));

    // 4: no token, or a token without the scope.
    assert_eq!(run(&["stats"], &[("JOBD_URL", daemon.base.as_str())]).status.code(), Some(4));
    let viewer = [("JOBD_URL", daemon.base.as_str()), ("JOBD_TOKEN", reader.as_str())];
    assert_eq!(run(&["jobs", "retry", &id], &viewer).status.code(), Some(4));
    let refused_submit = run(&["submit", input.to_str().expect("utf-8")], &viewer);
    assert_eq!(refused_submit.status.code(), Some(4), "{}", text(&refused_submit.stderr));

    // `stats` prints the depth jobd reports.
    let stats = run(&["stats", "--output", "json"], &viewer);
    assert_eq!(stats.status.code(), Some(0));
    let printed: Value = serde_json::from_slice(&stats.stdout).expect("JSON stats");
    assert_eq!(printed["queue"]["capacity"], daemon_stats_capacity(&daemon).await);
    let human = run(&["stats"], &viewer);
    // A first line says when the figures were read; the queue's line follows it.
    let human = text(&human.stdout);
    assert!(human.starts_with("at ") && human.contains("\nqueue      queued "), "{human}");
}

async fn daemon_stats_capacity(daemon: &common::Daemon) -> Value {
    let response = daemon.client.get(daemon.url("/v1/stats")).bearer_auth("b".repeat(64)).send().await.expect("stats");
    response.json::<Value>().await.expect("JSON")["queue"]["capacity"].clone()
}

/// `/v1/stats` says when and whose its figures are, with this node's rates and, on request,
/// the counters of the last minutes; `jobd stats` prints them from one request.
#[tokio::test]
async fn stats_carry_their_time_their_scope_their_rates_and_a_history() {
    let daemon = common::Daemon::start(&[]);
    let jobs: Vec<Value> = (0..20).map(|_| json!({"kind": "noop"})).collect();
    common::accepted_ids(daemon.post_json("/v1/jobs", &json!({"jobs": jobs})).await).await;
    daemon.wait_for("the jobs done", |stats| stats["counters"]["jobs"]["succeeded"] == 20).await;
    // The history samples once a second: wait for two samples after the jobs.
    let deadline = Instant::now() + common::WAIT_DEADLINE;
    let stats = loop {
        let stats: Value = daemon
            .client
            .get(daemon.url("/v1/stats?history=true"))
            .send()
            .await
            .expect("GET")
            .json()
            .await
            .expect("json");
        let history = stats["history"].as_array().cloned().unwrap_or_default();
        if stats["rates"].is_object() && history.iter().filter(|sample| sample["accepted"] == 20).count() >= 2 {
            break stats;
        }
        assert!(Instant::now() < deadline, "no rates or history: {stats}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let at = stats["at"].as_str().expect("at");
    assert!(chrono::DateTime::parse_from_rfc3339(at).is_ok(), "{at}");
    assert!(matches!(stats["scope"]["queue"].as_str(), Some("node" | "cluster")), "{stats}");
    assert_eq!(stats["scope"]["counters"], "node");
    let history = stats["history"].as_array().expect("history");
    let times: Vec<i64> = history.iter().filter_map(|sample| sample["at_ms"].as_i64()).collect();
    assert!(times.windows(2).all(|pair| pair[0] < pair[1]), "oldest first: {times:?}");
    assert!(history.len() <= 300, "bounded: {}", history.len());
    let without: Value = daemon.client.get(daemon.url("/v1/stats")).send().await.expect("GET").json().await.expect("j");
    assert!(without["history"].is_null(), "history only on request");

    let printed = jobd(&["stats", "--url", &daemon.base], &[]);
    let out = text(&printed.stdout);
    assert!(printed.status.success(), "{}", text(&printed.stderr));
    assert!(out.starts_with("at ") && out.contains("rates      accepted ") && out.contains("accepted 20"), "{out}");
}
