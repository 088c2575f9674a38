//! The lists the documents keep of something the code or a shipped file defines, each
//! compared with its source, so that neither can change without the other: the metrics
//! table with the series a daemon exports, the alerts named in `deploy/README.md` with the
//! rules file and its unit tests, and the panels `grafana/README.md` lists with the
//! dashboard. (`tests/it/defaults.rs` does the same for the defaults.)

use crate::common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use common::Daemon;

fn read(path: &str) -> String {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|error| panic!("read {}: {error}", full.display()))
}

/// Every `` `word` `` of `text` that starts with `prefix`, up to the closing backtick or
/// the first character that cannot be in a name.
fn backticked(text: &str, prefix: &str) -> BTreeSet<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|word| word.starts_with(prefix))
        .map(|word| word.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect())
        .collect()
}

/// The difference of two sets, both ways, for a message.
fn differences(documented: &BTreeSet<String>, actual: &BTreeSet<String>, what: &str) -> Vec<String> {
    let mut problems: Vec<String> =
        actual.difference(documented).map(|name| format!("{what} {name} exists but is not listed")).collect();
    problems.extend(documented.difference(actual).map(|name| format!("{what} {name} is listed but does not exist")));
    problems
}

/// The metrics table of docs/operations.md names every `jobd_*` family a daemon with a
/// webhook destination exports, and nothing else.
#[tokio::test]
async fn the_metrics_table_names_every_series_jobd_exports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("jobd.toml");
    std::fs::write(
        &config,
        "[webhooks.billing]\nurl = \"http://127.0.0.1:9/hook\"\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n",
    )
    .expect("write the config");
    let daemon = Daemon::start(&[("JOBD_CONFIG", config.to_str().expect("utf-8"))]);
    // Every family with labels has its series once something happened: a job, a request.
    let job = serde_json::json!({"kind": "noop"});
    common::accepted_ids(daemon.post_json("/v1/jobs", &job).await).await;
    daemon.wait_for("the job ran", |stats| stats["counters"]["jobs"]["succeeded"] == 1).await;
    let scrape = daemon.client.get(daemon.url("/metrics")).send().await.expect("GET").text().await.expect("text");
    let exported: BTreeSet<String> = scrape
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter(|name| name.starts_with("jobd_"))
        .map(str::to_owned)
        .collect();
    assert!(exported.len() > 20, "only {exported:?} in\n{scrape}");

    let operations = read("docs/operations.md");
    let table: String = operations
        .split("\n## Observe it\n")
        .nth(1)
        .expect("an Observe it section")
        .lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| line.split('|').nth(1).unwrap_or_default().to_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let documented = backticked(&table, "jobd_");
    let problems = differences(&documented, &exported, "series");
    assert!(problems.is_empty(), "docs/operations.md's metrics table:\n{}", problems.join("\n"));
}

/// `deploy/README.md` names every alert of the rules file, and each alert has a unit test.
#[test]
fn every_alert_is_listed_and_unit_tested() {
    let rules = read("deploy/prometheus/jobd-alerts.yml");
    let defined: BTreeSet<String> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
        .map(|name| name.trim().to_owned())
        .collect();
    assert!(defined.len() >= 8, "{defined:?}");
    let readme = read("deploy/README.md");
    let row = readme.lines().find(|line| line.contains("`prometheus/jobd-alerts.yml`")).expect("the alerts' row");
    let problems = differences(&backticked(row, "Jobd"), &defined, "alert");
    assert!(problems.is_empty(), "deploy/README.md:\n{}", problems.join("\n"));
    let tests = read("deploy/prometheus/jobd-alerts.test.yml");
    let tested: BTreeSet<String> = tests
        .lines()
        .filter_map(|line| line.trim().strip_prefix("alertname: "))
        .map(|name| name.trim().to_owned())
        .collect();
    let untested: Vec<&String> = defined.difference(&tested).collect();
    assert!(untested.is_empty(), "alerts without a unit test: {untested:?}");
}

/// `grafana/README.md` lists every panel of the dashboard by its title, and no other.
#[test]
fn the_grafana_readme_lists_every_panel() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("grafana/dashboards/jobd.json")).expect("dashboard JSON");
    let titles: BTreeSet<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter_map(|panel| panel["title"].as_str())
        .map(str::to_owned)
        .collect();
    assert!(titles.len() > 20, "{titles:?}");
    let readme = read("grafana/README.md");
    let listed: BTreeSet<String> = readme
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("- panel: "))
        .map(|title| title.trim().trim_matches('"').to_owned())
        .collect();
    let problems = differences(&listed, &titles, "panel");
    assert!(problems.is_empty(), "grafana/README.md:\n{}", problems.join("\n"));
}
