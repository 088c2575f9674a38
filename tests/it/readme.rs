//! The README's "Run it" section, run as written against a live jobd: every shell example
//! in order, with `cargo run --release --` standing for the built binary (and `jobd` on the
//! PATH once the README installs it), `localhost:8080` and the client's default URL for the
//! test daemon's address, `$(pgrep -x jobd)` for its pid, and the README's job ids for the
//! ones jobd answered.
//! Each command must succeed, and its output must have the shape the README shows under it
//! (the same keys and kinds of values, not the same ids or times).

use crate::common;

use std::collections::HashMap;
use std::process::Command;
use std::time::Instant;

use common::{Daemon, WAIT_DEADLINE};
use serde_json::Value;

/// A code block of the section: its language and its text.
struct Block {
    language: String,
    text: String,
}

fn run_it_section() -> Vec<Block> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let section = readme.split("\n## Run it\n").nth(1).expect("a Run it section");
    let section = section.split("\n## ").next().expect("the section");
    let mut blocks = Vec::new();
    let mut lines = section.lines();
    while let Some(line) = lines.next() {
        let Some(language) = line.strip_prefix("```") else { continue };
        let text: Vec<&str> = lines.by_ref().take_while(|line| !line.starts_with("```")).collect();
        blocks.push(Block { language: language.to_owned(), text: text.join("\n") });
    }
    blocks
}

/// Whether `text` is a job id (a hyphenated UUID).
fn is_uuid(text: &str) -> bool {
    text.len() == 36
        && text
            .chars()
            .enumerate()
            .all(|(i, c)| if [8, 13, 18, 23].contains(&i) { c == '-' } else { c.is_ascii_hexdigit() })
}

/// Every UUID in `text`, in order.
fn uuids(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(35))
        .filter(|&start| text.is_char_boundary(start) && text.is_char_boundary(start + 36))
        .map(|start| &text[start..start + 36])
        .filter(|candidate| is_uuid(candidate))
        .map(str::to_owned)
        .collect()
}

/// Whether `actual` has the shape of `shown`: the same keys, arrays of the same length,
/// and values of the same JSON type (a `null` shown must be `null`).
fn same_shape(shown: &Value, actual: &Value) -> bool {
    match (shown, actual) {
        (Value::Object(shown), Value::Object(actual)) => {
            shown.len() == actual.len()
                && shown.iter().all(|(key, value)| actual.get(key).is_some_and(|other| same_shape(value, other)))
        }
        (Value::Array(shown), Value::Array(actual)) => {
            shown.len() == actual.len() && shown.iter().zip(actual).all(|(shown, actual)| same_shape(shown, actual))
        }
        (Value::String(_), Value::String(_)) | (Value::Number(_), Value::Number(_)) => true,
        (Value::Bool(shown), Value::Bool(actual)) => shown == actual,
        (Value::Null, Value::Null) => true,
        _ => false,
    }
}

/// Whether text output has the shape shown: as many lines, each alike once digits and ids
/// are set aside.
fn same_text_shape(shown: &str, actual: &str) -> bool {
    let normalize = |text: &str| -> Vec<String> {
        let mut lines: Vec<String> = text
            .lines()
            .map(|line| line.chars().map(|c| if c.is_ascii_hexdigit() { '0' } else { c }).collect())
            .collect();
        lines.sort();
        lines
    };
    normalize(shown) == normalize(actual)
}

/// The environment a `VAR=value cargo run ... serve` line sets, by name.
fn env_prefix(command: &str) -> Vec<(String, String)> {
    command
        .split_whitespace()
        .take_while(|word| word.contains('=') && !word.starts_with('-'))
        .filter_map(|word| word.split_once('=').map(|(name, value)| (name.to_owned(), value.to_owned())))
        .collect()
}

#[tokio::test]
async fn every_example_of_run_it_works_as_shown() {
    let work = tempfile::tempdir().expect("tempdir");
    let jobd = env!("CARGO_BIN_EXE_jobd");
    let blocks = run_it_section();
    assert!(blocks.iter().filter(|block| block.language == "sh").count() >= 6, "the examples were found");
    let mut daemon: Option<Daemon> = None;
    // The README's ids, each mapped to the id jobd gave in its place.
    let mut ids: HashMap<String, String> = HashMap::new();
    // `jobd` is on the PATH once the README has installed it, and not before.
    let mut path = std::env::var("PATH").unwrap_or_default();
    for (position, block) in blocks.iter().enumerate() {
        if block.language != "sh" {
            continue;
        }
        let command = block.text.replace("\\\n", " ");
        let shown = blocks.get(position + 1).filter(|next| next.language != "sh");
        if command == "cargo install --path . --locked" {
            // What the install does, without building again: the tests' build of the same
            // source goes first on the PATH as `jobd`.
            let bin = std::path::Path::new(jobd).parent().expect("the binary's directory");
            path = format!("{}:{path}", bin.display());
            continue;
        }
        if command.split_whitespace().last() == Some("serve") {
            // The daemon the rest talks to, with the environment the line gives; its
            // data directory is ./jobd-data, as the README says.
            drop(daemon.take());
            let data_dir = work.path().join("jobd-data");
            std::fs::create_dir_all(&data_dir).expect("data dir");
            let env: Vec<(String, String)> = env_prefix(&command)
                .into_iter()
                .map(|(name, value)| (name, work.path().join(value).to_string_lossy().into_owned()))
                .collect();
            let mut env: Vec<(&str, &str)> = env.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
            let data = data_dir.to_string_lossy().into_owned();
            env.push(("JOBD_DATA_DIR", &data));
            daemon = Some(Daemon::start_in(tempfile::TempDir::new_in(work.path()).expect("unused dir"), &env));
            continue;
        }
        let address = daemon.as_ref().map(|daemon| daemon.url("")).unwrap_or_default();
        let pid = daemon.as_ref().map(|daemon| daemon.pid().to_string()).unwrap_or_default();
        let mut runnable = command
            .replace("cargo run --release --", jobd)
            .replace("localhost:8080", address.trim_start_matches("http://").trim_end_matches('/'))
            // The test's daemon, not every jobd on the machine (other tests run theirs).
            .replace("$(pgrep -x jobd)", &pid);
        for (shown_id, actual_id) in &ids {
            runnable = runnable.replace(shown_id, actual_id);
        }
        // A record is shown once its job has run: the command is repeated until its output
        // has the shape shown, or the deadline passes.
        let deadline = Instant::now() + WAIT_DEADLINE;
        let output = loop {
            // The client commands' default URL, 127.0.0.1:8080, is the test daemon's here.
            let output = Command::new("bash")
                .arg("-c")
                .arg(&runnable)
                .current_dir(work.path())
                .env("PATH", &path)
                .env("JOBD_URL", address.trim_end_matches('/'))
                .output()
                .expect("bash");
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            // An object may not be written yet: a failure is tried again until the deadline.
            let matches = match shown {
                _ if !output.status.success() => false,
                None => true,
                Some(shown) if shown.language == "json" => {
                    let shown: Value = serde_json::from_str(&shown.text).expect("the README's JSON parses");
                    serde_json::from_str::<Value>(&stdout).is_ok_and(|actual| same_shape(&shown, &actual))
                }
                Some(shown) => same_text_shape(&shown.text, &stdout),
            };
            if matches {
                break stdout;
            }
            assert!(
                Instant::now() < deadline,
                "{runnable}\nexited {:?} and printed\n{stdout}{stderr}\nnot the shape of\n{:?}",
                output.status.code(),
                shown.map(|shown| &shown.text)
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        if let Some(shown) = shown {
            for (shown_id, actual_id) in uuids(&shown.text).into_iter().zip(uuids(&output)) {
                ids.entry(shown_id).or_insert(actual_id);
            }
        }
    }
    assert!(daemon.is_some(), "a daemon ran");
    assert!(ids.len() >= 3, "the examples' ids were followed: {ids:?}");
}
