//! The defaults are stated in four places: the code (`Config::resolve`), `jobd serve --help`, the
//! configuration reference (docs/configuration.md) and `deploy/jobd.toml`. These tests compare the other three
//! with the code, so that none of them can drift: a default changed in one place and not in
//! the others fails here, naming the setting.

use std::collections::BTreeMap;

use clap::CommandFactory as _;
use jobd::config::{Cli, Config, Settings};
use serde_json::Value;

/// Every setting's resolved default, as `check-config` prints it, by key.
fn defaults() -> BTreeMap<String, Value> {
    let config = Config::resolve(Settings::default()).expect("the defaults are valid");
    let Value::Object(map) = serde_json::to_value(&config).expect("serialize") else { panic!("not an object") };
    map.into_iter().collect()
}

/// A default as the documentation writes it, when it is a literal (a number, `true`,
/// `false`, or a word such as `sqlite`); prose defaults ("CPU count", "`$STATE_DIRECTORY`,
/// else ...") name no single value and are skipped.
fn literal(text: &str) -> Option<Value> {
    let text = text.trim().trim_matches('`').trim_matches('"');
    if let Ok(number) = text.parse::<u64>() {
        return Some(Value::from(number));
    }
    match text {
        "true" => Some(Value::Bool(true)),
        "false" => Some(Value::Bool(false)),
        // The setting is unset by default.
        "none" | "off" => Some(Value::Null),
        // An environment variable's name says where the default comes from, not what it is.
        word if word.chars().all(|c| c.is_ascii_uppercase() || c == '_') => None,
        word if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c)) => {
            Some(Value::String(word.to_owned()))
        }
        _ => None,
    }
}

/// Compares a documented default with the resolved one; a documented value the code does
/// not have is a problem, and so is a key the code does not know.
fn compare(place: &str, key: &str, documented: Value, defaults: &BTreeMap<String, Value>, problems: &mut Vec<String>) {
    // Unset settings are left out of the resolved configuration, or are empty tables.
    let actual = match defaults.get(key) {
        None => Value::Null,
        Some(Value::Object(map)) if map.is_empty() => Value::Null,
        Some(value) => value.clone(),
    };
    // `queue_db_max_bytes = 0` is how the file and the flag say "no limit".
    let documented = if key == "queue_db_max_bytes" && documented == 0 { Value::Null } else { documented };
    if actual != documented {
        problems.push(format!("{place}: {key} says {documented}, the code's default is {actual}"));
    }
}

/// Compares the defaults a place states (`place` names it in messages) with the code's;
/// at least 20 must be found, so that a parser that finds nothing cannot pass.
fn assert_states_the_codes_defaults(place: &str, stated: Vec<(String, Value)>) {
    let defaults = defaults();
    let mut problems = Vec::new();
    for (key, value) in &stated {
        compare(place, key, value.clone(), &defaults, &mut problems);
    }
    assert!(stated.len() > 20, "only {} defaults found in {place}", stated.len());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_help_text_states_the_codes_defaults() {
    let mut stated = Vec::new();
    let cli = Cli::command();
    let serve = cli.find_subcommand("serve").expect("jobd serve");
    for argument in serve.get_arguments() {
        let key = argument.get_id().as_str().to_owned();
        let help = argument.get_help().map(ToString::to_string).unwrap_or_default();
        let Some(start) = help.find("[default: ") else { continue };
        let text = &help[start + "[default: ".len()..];
        let Some(end) = text.find(']') else { continue };
        if let Some(value) = literal(&text[..end]) {
            stated.push((key, value));
        }
    }
    assert_states_the_codes_defaults("jobd serve --help", stated);
}

#[test]
fn the_configuration_reference_states_the_codes_defaults() {
    let reference = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md"))
        .expect("docs/configuration.md");
    let table = reference.split("## Configuration").nth(1).expect("a Configuration section");
    let mut stated = Vec::new();
    for row in table.lines().filter(|line| line.starts_with("| `")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // | `key` | `ENV` | default | meaning |
        let (Some(key), Some(default)) = (cells.get(1), cells.get(3)) else { continue };
        let key = key.trim_matches('`');
        if key.starts_with("--") || key.contains(',') {
            continue;
        }
        if let Some(value) = literal(default) {
            stated.push((key.to_owned(), value));
        }
    }
    assert_states_the_codes_defaults("docs/configuration.md", stated);
}

#[test]
fn the_example_configuration_file_states_the_codes_defaults() {
    let file = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/jobd.toml")).expect("jobd.toml");
    let mut stated = Vec::new();
    let mut comment = String::new();
    for line in file.lines() {
        // Settings inside a table (`[job_timeouts_ms]`) are examples of its entries.
        if line.starts_with("#[") || line.starts_with('[') {
            break;
        }
        // Each setting is a commented-out `#key = value` under its description; a
        // description that says "e.g." or "Default:" shows an example instead.
        let Some(setting) = line.strip_prefix('#').filter(|rest| !rest.starts_with(' ') && rest.contains(" = ")) else {
            comment.push_str(line);
            comment.push('\n');
            continue;
        };
        let is_example =
            comment.contains("Default:") || comment.contains("e.g.") || comment.contains("Never in production");
        comment.clear();
        let (key, value) = setting.split_once(" = ").expect("key = value");
        if is_example {
            continue;
        }
        let Some(value) = literal(value) else { continue };
        stated.push((key.trim().to_owned(), value));
    }
    assert_states_the_codes_defaults("deploy/jobd.toml", stated);
}

/// Prose that names a setting's default as "the `key` setting, value" (the HTTP API's
/// request fields do) states the code's default. The HTTP API once said 5 attempts when
/// the code's default was 25.
#[test]
fn the_http_api_states_the_codes_defaults() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/http-api.md")).expect("http-api.md");
    let defaults = defaults();
    let mut stated = Vec::new();
    let mut problems = Vec::new();
    for (start, _) in text.match_indices("` setting, ") {
        let Some(key_start) = text[..start].rfind('`') else { continue };
        let key = &text[key_start + 1..start];
        let rest = &text[start + "` setting, ".len()..];
        let value: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        if let Some(value) = literal(&value) {
            stated.push(key.to_owned());
            compare("docs/http-api.md", key, value, &defaults, &mut problems);
        }
    }
    assert!(!stated.is_empty(), "no \"the `key` setting, value\" found in docs/http-api.md");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
