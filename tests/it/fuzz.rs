//! Fuzzing of the code that reads untrusted bytes: the submission parsers, the depth
//! check and object-key validation, with proptest (this machine has only the stable
//! toolchain, so cargo-fuzz's nightly-only instrumentation is not available). Each
//! property runs for `JOBD_FUZZ_SECONDS` (scripts/test.sh sets 60) and fails on any
//! panic or broken invariant, printing the smallest input that breaks it.

use std::path::Component;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use jobd::keys::{MAX_KEY_BYTES, ObjectKey};
use jobd::kinds::{KindSettings, Kinds};
use jobd::submission::{self, ParseOptions, SubmissionError};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseResult, TestRng, TestRunner};
use serde_json::Value;

/// Cases per round; rounds repeat until the time is up, each with new random inputs.
const CASES_PER_ROUND: u32 = 256;

const OPTIONS: ParseOptions = ParseOptions::DEFAULT;

/// Every kind, the test kinds too, as a daemon with `test_kinds` runs them.
fn kinds() -> Kinds {
    Kinds::unserved(&KindSettings { test_kinds: true, ..KindSettings::defaults() }).expect("kinds")
}

fn fuzz_time() -> Duration {
    let seconds = std::env::var("JOBD_FUZZ_SECONDS").ok().and_then(|value| value.parse().ok()).unwrap_or(5);
    Duration::from_secs(seconds)
}

/// Runs `property` on inputs from `strategy` until the fuzz time is spent, each round
/// from a new random seed, which a failure prints so that it can be replayed.
fn fuzz<S: Strategy>(name: &str, strategy: S, property: impl Fn(S::Value) -> TestCaseResult) {
    let deadline = Instant::now() + fuzz_time();
    let config = Config { cases: CASES_PER_ROUND, failure_persistence: None, ..Config::default() };
    let cases = AtomicU64::new(0);
    let counted = |input: S::Value| {
        cases.fetch_add(1, Ordering::Relaxed);
        property(input)
    };
    loop {
        let seed: [u8; 32] = std::array::from_fn(|_| fastrand::u8(..));
        let mut runner = TestRunner::new_with_rng(config.clone(), TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
        if let Err(failure) = runner.run(&strategy, counted) {
            panic!("{name}: {failure} (seed {seed:?})");
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    eprintln!("{name}: {} cases, no failure", cases.load(Ordering::Relaxed));
}

/// Any JSON value, nested a few levels, with strings drawn to hit the parsers' edges.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        hostile_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(field_name(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Strings over an alphabet of the characters that matter to keys and JSON, or anything.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(
            prop::sample::select(vec![
                ".", "..", "/", "\\", "%", "%2e", "%2E", "%2f", "%5c", "%00", "%0a", "a", "b", "ü", " ", "\0", "\n",
                "\"", "[", "{", "tenant-a", "upload", "noop",
            ]),
            0..12
        )
        .prop_map(|parts| parts.concat()),
        any::<String>(),
    ]
}

/// Mostly the fields a job has, sometimes anything.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "kind",
            "payload",
            "body_base64",
            "key",
            "content_type",
            "content_encoding",
            "metadata",
            "idempotency_key",
            "max_attempts",
            "timeout_ms",
            "run_at",
            "delay_ms",
            "jobs",
            "payloads",
            "ms",
            "retryable",
        ])
        .prop_map(str::to_owned),
        hostile_string(),
    ]
}

/// A job-shaped object: a plausible kind and a few fields of any value.
fn job_value() -> impl Strategy<Value = Value> {
    let kind = prop_oneof![
        prop::sample::select(vec!["upload", "noop", "sleep", "fail", "panic"]).prop_map(str::to_owned),
        hostile_string(),
    ];
    (kind, prop::collection::btree_map(field_name(), json_value(), 0..5), prop::option::of(hostile_string())).prop_map(
        |(kind, fields, key)| {
            let mut object: serde_json::Map<String, Value> = fields.into_iter().collect();
            object.insert("kind".to_owned(), Value::String(kind));
            if let Some(key) = key {
                object.insert("key".to_owned(), Value::String(key));
            }
            Value::Object(object)
        },
    )
}

/// What every accepted key must be, whatever bytes it came from.
fn assert_key_is_confined(key: &str) -> TestCaseResult {
    prop_assert!(!key.is_empty() && key.len() <= MAX_KEY_BYTES);
    prop_assert!(object_store::path::Path::parse(key).is_ok());
    let decoded = percent_encoding::percent_decode_str(key).decode_utf8_lossy().into_owned();
    for form in [key, decoded.as_str()] {
        prop_assert!(!form.starts_with('/') && !form.contains('\\'));
        prop_assert!(!form.chars().any(char::is_control));
        // Joined to a store root, neither form can climb out of it.
        let joined = std::path::Path::new("/store/root").join(form);
        prop_assert!(joined.starts_with("/store/root"));
        prop_assert!(
            !joined.components().any(|component| matches!(component, Component::ParentDir | Component::CurDir))
        );
        prop_assert!(!form.split('/').any(|segment| segment == "." || segment == ".."));
    }
    Ok(())
}

/// Every upload key a successful parse produced obeys the key rules.
fn assert_parsed_keys_are_confined(parsed: &Result<Vec<jobd::job::JobSpec>, SubmissionError>) -> TestCaseResult {
    if let Ok(jobs) = parsed {
        prop_assert!(!jobs.is_empty());
        for job in jobs {
            if let Some(key) = jobd::kinds::upload::requested_key(job) {
                assert_key_is_confined(&key)?;
            }
        }
    }
    Ok(())
}

#[test]
fn arbitrary_bytes_never_crash_the_parsers() {
    fuzz("arbitrary bytes", prop::collection::vec(any::<u8>(), 0..2048), |bytes| {
        assert_parsed_keys_are_confined(&submission::parse_jobs(
            &bytes,
            &kinds(),
            &jobd::queues::Queues::default(),
            OPTIONS,
        ))?;
        let _ = submission::parse_payloads(&bytes, OPTIONS);
        let _ = submission::check_depth(&bytes, 64);
        Ok(())
    });
}

#[test]
fn job_shaped_json_is_parsed_or_refused_by_field_never_crashes() {
    let body = prop_oneof![
        job_value(),
        prop::collection::vec(job_value(), 0..8).prop_map(|jobs| serde_json::json!({"jobs": jobs})),
        prop::collection::vec(json_value(), 0..8).prop_map(|payloads| serde_json::json!({"payloads": payloads})),
        json_value(),
    ];
    fuzz("job-shaped JSON", body, |value| {
        let bytes = serde_json::to_vec(&value).expect("serialize");
        let parsed = submission::parse_jobs(&bytes, &kinds(), &jobd::queues::Queues::default(), OPTIONS);
        assert_parsed_keys_are_confined(&parsed)?;
        if let (Ok(jobs), Some(list)) = (&parsed, value.get("jobs").and_then(Value::as_array)) {
            prop_assert_eq!(jobs.len(), list.len(), "one job per entry");
        }
        if let Err(SubmissionError::Invalid(errors)) = &parsed {
            prop_assert!(!errors.is_empty(), "a refusal names at least one field");
        }
        let _ = submission::parse_payloads(&bytes, OPTIONS);
        Ok(())
    });
}

#[test]
fn key_validation_never_lets_a_key_out_of_the_store_root() {
    fuzz("object keys", hostile_string(), |key| {
        if let Ok(parsed) = ObjectKey::parse(&key) {
            prop_assert_eq!(parsed.to_string(), key.clone(), "an accepted key is kept as given");
            assert_key_is_confined(&key)?;
        }
        Ok(())
    });
}

#[test]
fn the_depth_check_refuses_exactly_the_bodies_nested_too_deep() {
    // Nesting of random brackets, with brackets also inside strings, which do not count.
    let nesting = (1usize..160, prop::collection::vec(any::<bool>(), 160), hostile_string());
    fuzz("nesting depth", nesting, |(depth, objects, text)| {
        let text = serde_json::to_string(&text).expect("string");
        let mut body = String::new();
        for &object in &objects[..depth] {
            body.push_str(if object { "{\"k\":" } else { "[" });
        }
        body.push_str(&text);
        for &object in objects[..depth].iter().rev() {
            body.push(if object { '}' } else { ']' });
        }
        let checked = submission::check_depth(body.as_bytes(), 64);
        prop_assert_eq!(checked.is_err(), depth > 64, "depth {}", depth);
        if depth <= 64 {
            // What the check passes, serde_json can parse without reaching its own limit.
            prop_assert!(serde_json::from_str::<Value>(&body).is_ok());
        }
        Ok(())
    });
}
