//! Tidy checks run as ordinary tests: every Rust file opens with a `//!` line saying what
//! it owns and has no trailing whitespace; no source file grows past about 700 lines
//! besides its tests; and no module outside `src/kinds/` names a kind's request fields.

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
