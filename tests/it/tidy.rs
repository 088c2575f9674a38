//! Tidy checks run as ordinary tests: every Rust file opens with a `//!` line saying what
//! it owns and has no trailing whitespace; no source file grows past about 700 lines
//! besides its tests; no module outside `src/kinds/` names a kind's request fields, and the
//! scheduling core names no kind module; and the README stays short, with every relative
//! link of the documentation leading somewhere.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("list directory").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn every_rust_file_starts_with_a_module_comment_and_has_no_trailing_whitespace() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "tests", "benches"] {
        if root.join(dir).is_dir() {
            rust_files(&root.join(dir), &mut files);
        }
    }
    assert!(files.len() > 10, "found only {files:?}");
    let mut problems = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read source");
        if !text.starts_with("//! ") {
            problems.push(format!("{}: does not start with a `//!` line", file.display()));
        }
        for (number, line) in text.lines().enumerate() {
            if line.ends_with(' ') || line.ends_with('\t') {
                problems.push(format!("{}:{}: trailing whitespace", file.display(), number + 1));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The part of a source file that is not its unit tests: everything before its first
/// `#[cfg(test)]` module.
fn without_tests(text: &str) -> &str {
    match text.find("\n#[cfg(test)]\nmod ") {
        Some(end) => &text[..end],
        None => text,
    }
}

/// Every Rust file under `src/`.
fn source_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
    assert!(files.len() > 10, "found only {files:?}");
    files
}

/// A file that only tests: `tests.rs`, or anything in a `tests/` directory of `src/`.
fn is_test_file(path: &Path) -> bool {
    path.file_name().is_some_and(|name| name == "tests.rs") || path.components().any(|part| part.as_os_str() == "tests")
}

#[test]
fn no_source_file_holds_more_than_about_700_lines_besides_its_tests() {
    let mut problems = Vec::new();
    for file in source_files().iter().filter(|file| !is_test_file(file)) {
        let text = std::fs::read_to_string(file).expect("read source");
        let lines = without_tests(&text).lines().count();
        if lines > 700 {
            problems.push(format!("{}: {lines} lines besides its tests; split it along what it holds", file.display()));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A kind's request fields are its own business: the queue stores them as opaque
/// arguments, and HTTP, the actors and the runner reach them only through the `Kind`
/// trait. So no file outside `src/kinds/` spells one as a string, besides its tests.
/// `payload` is left out: it is also the job record's name for the body it shows, and the
/// query parameter that asks for it, both of which every kind shares.
#[test]
fn no_module_outside_src_kinds_names_a_kinds_request_fields() {
    let mut fields: Vec<String> =
        jobd::kinds::REGISTRY.iter().flat_map(jobd::kinds::request_fields).filter(|field| field != "payload").collect();
    fields.sort();
    fields.dedup();
    assert!(fields.iter().any(|field| field == "key"), "the upload kind's fields are found: {fields:?}");
    let kinds_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join("kinds");
    let mut problems = Vec::new();
    for file in source_files().iter().filter(|file| !file.starts_with(&kinds_dir) && !is_test_file(file)) {
        let text = std::fs::read_to_string(file).expect("read source");
        for (number, line) in without_tests(&text).lines().enumerate() {
            for field in &fields {
                if line.contains(&format!("\"{field}\"")) {
                    problems.push(format!("{}:{}: names the kind field {field:?}", file.display(), number + 1));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The core (the actors, the queue, the configuration, the runner, the job and its metrics)
/// reaches kinds only through the `Kind` trait and the registry: no kind module is named
/// there (a kind's settings table reaches `config/` as a `SettingsTable`), so
/// that a kind's gate, settings or series never become the core's business again (the
/// store's health once made `actors/dispatcher.rs` and `store_health.rs` import each other).
#[test]
fn the_core_names_no_kind_module() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let core = |path: &Path| {
        path.starts_with(src.join("actors"))
            || path.starts_with(src.join("queue"))
            || path.starts_with(src.join("config"))
            || ["metrics.rs", "runner.rs", "job.rs", "stats.rs", "retry.rs"].iter().any(|name| *path == src.join(name))
    };
    let mut named = Vec::new();
    for path in source_files().into_iter().filter(|path| core(path) && !is_test_file(path)) {
        let text = std::fs::read_to_string(&path).expect("read source");
        for module in ["kinds::upload", "kinds::webhook", "kinds::noop", "kinds::testing"] {
            if without_tests(&text).contains(module) {
                named.push(format!("{} names {module}", path.display()));
            }
        }
    }
    assert!(named.is_empty(), "{}", named.join("\n"));
}

/// A kind's token limit is its own (ARCHITECTURE.md, "Adding a kind"): outside
/// `src/kinds/`, no code names a token option, its problem type or its metric reasons.
/// Comments and tests may: they explain and exercise the kinds, they do not decide for them.
#[test]
fn no_code_outside_the_kinds_names_a_token_limit() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut named = Vec::new();
    for path in source_files().into_iter().filter(|path| !path.starts_with(src.join("kinds")) && !is_test_file(path)) {
        let text = std::fs::read_to_string(&path).expect("read source");
        let code = without_tests(&text);
        for (number, line) in code.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for name in [
                "allowed_key_prefixes",
                "allowed_destinations",
                "key-not-allowed",
                "destination-not-allowed",
                "key_not_allowed",
                "destination_not_allowed",
                "\"key_prefix\"",
            ] {
                if line.contains(name) {
                    named.push(format!("{}:{} names {name}", path.display(), number + 1));
                }
            }
        }
    }
    assert!(named.is_empty(), "{}", named.join("\n"));
}

/// The scheduling core decides without I/O (ARCHITECTURE.md, `src/actors/`): no actor,
/// runtime, clock, thread, file or queue call in it, so that every decision can be driven
/// by a unit test with the time and the lease passed in.
#[test]
fn the_scheduling_core_does_no_io() {
    let actors = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join("actors");
    let mut found = Vec::new();
    for name in ["scheduler.rs", "window.rs", "claim_size.rs", "progress.rs"] {
        let text = std::fs::read_to_string(actors.join(name)).expect("read source");
        for forbidden in
            ["actix", "tokio", "::now()", "SystemTime", "std::thread", "std::fs", ".await", "QueueHandle", "spawn("]
        {
            if without_tests(&text).contains(forbidden) {
                found.push(format!("src/actors/{name} uses {forbidden}"));
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// The Markdown files a reader moves between: the README, the documents under `docs/`, and
/// the architecture and benchmark pages.
fn documentation_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = ["README.md", "ARCHITECTURE.md", "BENCHMARKS.md", "deploy/README.md"]
        .iter()
        .map(|name| root.join(name))
        .collect();
    let docs = std::fs::read_dir(root.join("docs")).expect("docs/");
    files.extend(
        docs.map(|entry| entry.expect("a docs/ entry").path())
            .filter(|path| path.extension().is_some_and(|extension| extension == "md")),
    );
    files
}

#[test]
fn the_readme_stays_short_and_links_to_every_document_under_docs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let lines = readme.lines().count();
    assert!(lines <= 300, "README.md has {lines} lines; the depth belongs under docs/");
    for document in documentation_files().iter().filter(|path| path.parent() == Some(&root.join("docs"))) {
        let name = document.file_name().and_then(|name| name.to_str()).expect("a UTF-8 name");
        assert!(readme.contains(&format!("](docs/{name}")), "README.md does not link to docs/{name}");
    }
}

#[test]
fn every_relative_link_in_the_documentation_leads_to_a_file_and_heading_that_exist() {
    let mut broken = Vec::new();
    for file in documentation_files() {
        let text = std::fs::read_to_string(&file).expect("a documentation file");
        for (_, rest) in text.match_indices("](").map(|(at, _)| ((), &text[at + 2..])) {
            let Some(target) = rest.split(')').next() else { continue };
            if target.contains("://") || target.starts_with("mailto:") || target.contains(' ') {
                continue;
            }
            let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
            let linked = if path.is_empty() { file.clone() } else { file.parent().expect("a parent").join(path) };
            let Ok(linked_text) = std::fs::read_to_string(&linked) else {
                if !linked.exists() {
                    broken.push(format!("{}: {target} (no such file)", file.display()));
                }
                continue;
            };
            let slugs: Vec<String> =
                linked_text.lines().filter_map(|line| line.strip_prefix('#')).map(github_heading_slug).collect();
            if !anchor.is_empty() && !slugs.iter().any(|slug| slug == anchor) {
                broken.push(format!("{}: {target} (no such heading)", file.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The anchor GitHub gives a heading (`## What a 202 means` → `what-a-202-means`), from the
/// heading's text after its first `#`.
fn github_heading_slug(heading: &str) -> String {
    heading
        .trim_start_matches('#')
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}
