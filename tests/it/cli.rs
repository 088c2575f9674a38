//! The command line: `check-config` accepts good settings and names the bad one, and
//! `--help` documents every setting's environment variable.

use crate::common;

use std::process::Command;

fn jobd(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_jobd"));
    for (key, _) in std::env::vars() {
        if key.starts_with("JOBD_") {
            command.env_remove(key);
        }
    }
    command.args(args).envs(env.iter().copied()).output().expect("run jobd")
}

#[test]
fn check_config_accepts_good_settings_and_names_bad_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().to_str().expect("utf-8 path");
    let good = jobd(&["check-config"], &[("JOBD_DATA_DIR", data_dir), ("JOBD_MAX_WORKERS", "7")]);
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stderr));
    let text = String::from_utf8_lossy(&good.stdout);
    assert!(text.contains("max_workers = 7"), "{text}");

    let bad = jobd(&["check-config"], &[("JOBD_DATA_DIR", data_dir), ("JOBD_MAX_WORKERS", "0")]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("max_workers"));

    let config = dir.path().join("jobd.toml");
    std::fs::write(&config, "max_queue = 12\nlisten = \"127.0.0.1:9999\"\n").expect("write config");
    let from_file = jobd(&["check-config", "--config", config.to_str().expect("path")], &[("JOBD_DATA_DIR", data_dir)]);
    assert!(from_file.status.success());
    let text = String::from_utf8_lossy(&from_file.stdout);
    assert!(text.contains("max_queue = 12") && text.contains("127.0.0.1:9999"), "{text}");

    std::fs::write(&config, "max_qeueu = 12\n").expect("write config");
    let misspelt = jobd(&["check-config", "--config", config.to_str().expect("path")], &[]);
    assert_eq!(misspelt.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&misspelt.stderr).contains("max_qeueu"));

    let bad_store = jobd(&["check-config"], &[("JOBD_DATA_DIR", data_dir), ("JOBD_STORE_URL", "ftp://x/y")]);
    assert_eq!(bad_store.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_store.stderr).contains("unsupported scheme"));
}

#[test]
fn the_example_config_names_only_real_keys() {
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/jobd.toml")).expect("read");
    // Uncomment every setting, as an operator would, and let check-config judge them all.
    let uncommented: String = example
        .lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase() || c == '[') => rest,
            _ => line,
        })
        .map(|line| format!("{line}\n"))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("jobd.toml");
    // The files the example points at, made real: a token file and a self-signed certificate.
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "ops submit,read,admin 0123456789abcdef0123456789abcdef\n").expect("write tokens");
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).expect("write cert");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key");
    let uncommented = uncommented
        .replace("s3://my-bucket/jobd", &format!("file://{}/objects", dir.path().display()))
        .replace("/var/lib/jobd", &dir.path().display().to_string())
        .replace("/etc/jobd/credentials/tokens", &tokens.display().to_string())
        .replace("/etc/jobd/tls/cert.pem", &cert.display().to_string())
        .replace("/etc/jobd/tls/key.pem", &key.display().to_string());
    std::fs::write(&config, uncommented).expect("write");
    let checked = jobd(&["check-config", "--config", config.to_str().expect("path")], &[]);
    assert!(checked.status.success(), "{}", String::from_utf8_lossy(&checked.stderr));
    let effective = String::from_utf8_lossy(&checked.stdout);
    assert!(effective.contains("upload = 60000"), "{effective}");
    // And every setting jobd has is documented in the example.
    // `upload` and `"x-team"` are the example's entries of tables (per-kind timeouts, a
    // destination's headers), not settings.
    for key in effective.lines().filter_map(|line| line.split_once(" = ").map(|(key, _)| key)) {
        if key != "upload" && key.trim_matches('"') != "x-team" {
            assert!(example.contains(&format!("#{key} = ")), "deploy/jobd.toml does not document {key}");
        }
    }
}

#[test]
fn help_documents_every_setting() {
    let help = jobd(&["serve", "--help"], &[]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for variable in [
        "JOBD_LISTEN",
        "JOBD_DATA_DIR",
        "JOBD_STORE_URL",
        "JOBD_KEY_PREFIX",
        "JOBD_MAX_WORKERS",
        "JOBD_MAX_QUEUE",
        "JOBD_MAX_BODY_BYTES",
        "JOBD_SHUTDOWN_TIMEOUT_SECS",
        "JOBD_TEST_KINDS",
        "JOBD_CONFIG",
        "JOBD_LOG_FORMAT",
        "JOBD_TOKENS_FILE",
        "JOBD_TLS_CERT",
        "JOBD_MAX_JOBS_PER_REQUEST",
        "JOBD_MAX_CONNECTIONS",
        "JOBD_INGEST_MAX_PENDING_BYTES",
    ] {
        assert!(text.contains(variable), "--help lacks {variable}:\n{text}");
    }
    // The test hooks are no settings of an operator's: help never shows them.
    for hook in ["JOBD_TEST_SYNC_DELAY_MS", "JOBD_TEST_FAIL_SYNC_AFTER", "JOBD_TEST_CANCEL_HOLD_MS", "test-sync-delay"]
    {
        assert!(!text.contains(hook), "--help shows the test hook {hook}:\n{text}");
    }
}

/// `check-config` writes nothing: run where the default data directory does not exist, it
/// says what `serve` would create, and leaves the directory as it found it.
#[test]
fn check_config_creates_nothing_and_says_what_serve_would_create() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut command = Command::new(env!("CARGO_BIN_EXE_jobd"));
    for (key, _) in std::env::vars() {
        if key.starts_with("JOBD_") || key == "STATE_DIRECTORY" || key == "CONFIGURATION_DIRECTORY" {
            command.env_remove(key);
        }
    }
    let output = command.arg("check-config").current_dir(dir.path()).output().expect("run jobd");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).expect("list").flatten().map(|entry| entry.path()).collect();
    assert!(left.is_empty(), "check-config wrote {left:?}");
    assert!(stderr.contains("jobd-data/objects does not exist; serve creates it"), "{stderr}");
    assert!(stderr.contains("queue.db does not exist; serve creates it"), "{stderr}");
}

/// `jobd token new` prints a token-file line with a fresh 64-character token; the line
/// works as printed: a daemon started with it accepts the token and refuses no token.
#[tokio::test]
async fn a_new_token_line_works_as_printed() {
    let output = jobd(&["token", "new", "ingest", "submit,read"], &[]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let line = String::from_utf8(output.stdout).expect("utf-8");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[..2], ["ingest", "submit,read"], "{line}");
    assert!(fields[2].len() == 64 && fields[2].chars().all(|c| c.is_ascii_hexdigit()), "{line}");
    let again = jobd(&["token", "new", "ingest", "submit,read"], &[]);
    assert_ne!(String::from_utf8_lossy(&again.stdout), line, "every token is new");
    let bad = jobd(&["token", "new", "ingest", "submit,write"], &[]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown scope"));

    let bad_message = String::from_utf8_lossy(&bad.stderr).to_string();
    assert!(bad_message.contains("scopes: unknown scope"), "names the argument: {bad_message}");
    assert!(!bad_message.contains("token file line"), "speaks of a file nobody gave: {bad_message}");

    // Confinements are written as the file spells them, each kind's own.
    let confined = jobd(&["token", "new", "billing", "submit", "allowed_destinations=billing,crm"], &[]);
    assert!(confined.status.success(), "{}", String::from_utf8_lossy(&confined.stderr));
    let confined_line = String::from_utf8(confined.stdout).expect("utf-8");
    assert!(confined_line.trim_end().ends_with(" allowed_destinations=billing,crm"), "{confined_line}");
    let unknown = jobd(&["token", "new", "billing", "submit", "allowed_colours=red"], &[]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("option: unknown option"));

    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{line}{confined_line}")).expect("write the token file");
    let tokens_path = tokens.to_str().expect("utf-8 path");
    let daemon = common::Daemon::start(&[("JOBD_TOKENS_FILE", tokens_path)]);
    let job = serde_json::json!({"kind": "noop"});
    let with = daemon.client.post(daemon.url("/v1/jobs")).bearer_auth(fields[2]).json(&job).send().await;
    assert_eq!(with.expect("POST").status(), 202);
    let without = daemon.client.post(daemon.url("/v1/jobs")).json(&job).send().await;
    assert_eq!(without.expect("POST").status(), 401);

    // The client commands read the token from the same file, by the line's name.
    let listed =
        jobd(&["jobs", "list", "--url", &daemon.base, "--token-file", tokens_path, "--token-name", "ingest"], &[]);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    assert!(String::from_utf8_lossy(&listed.stdout).contains("(1 job, no more)"));
    let ambiguous = jobd(&["jobs", "list", "--url", &daemon.base, "--token-file", tokens_path], &[]);
    assert_eq!(ambiguous.status.code(), Some(2), "a usage error: nothing was sent");
    assert!(String::from_utf8_lossy(&ambiguous.stderr).contains("choose one with --token-name"));
}

/// Client commands show their own flags, not the daemon's settings, and no command shows
/// a test hook; the daemon's commands show every setting.
#[test]
fn each_command_has_help_of_its_own() {
    let options = |text: &str| text.lines().filter(|line| line.trim_start().starts_with("--")).count();
    let top = jobd(&["--help"], &[]);
    let top = String::from_utf8_lossy(&top.stdout).to_string();
    assert!(top.contains("webhooks") && top.contains("serve") && top.contains("submit"), "{top}");
    assert!(!top.contains("--max-workers") && options(&top) <= 3, "{top}");
    for command in [&["submit"][..], &["jobs", "list"], &["stats"], &["token", "new"]] {
        let help = jobd(&[command, &["--help"]].concat(), &[]);
        assert!(help.status.success());
        let text = String::from_utf8_lossy(&help.stdout).to_string();
        for server_setting in ["--max-workers", "--listen", "--store-url", "--config", "test-", "JOBD_MAX_QUEUE"] {
            assert!(!text.contains(server_setting), "jobd {command:?} --help shows {server_setting}:\n{text}");
        }
        assert!(options(&text) <= 20, "jobd {command:?} --help lists {} options:\n{text}", options(&text));
    }
    let check = jobd(&["check-config", "--help"], &[]);
    let check = String::from_utf8_lossy(&check.stdout).to_string();
    assert!(check.contains("--max-workers") && check.contains("--probe") && !check.contains("test-sync"), "{check}");
    let client_flag_first = jobd(&["--max-workers", "4", "serve"], &[]);
    assert_eq!(client_flag_first.status.code(), Some(2), "settings belong to serve: jobd serve --max-workers 4");
}

/// Without --config or JOBD_CONFIG, `./jobd.toml` is read (then /etc/jobd/jobd.toml), and
/// check-config says which file it read; JOBD_CONFIG and flags each take precedence.
#[test]
fn the_config_file_is_searched_for_and_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("jobd.toml"), "max_workers = 7\n").expect("write jobd.toml");
    std::fs::write(dir.path().join("other.toml"), "max_workers = 9\n").expect("write other.toml");
    let check = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_jobd"));
        for (key, _) in std::env::vars() {
            if key.starts_with("JOBD_") || key == "CONFIGURATION_DIRECTORY" {
                command.env_remove(key);
            }
        }
        let output = command
            .arg("check-config")
            .args(args)
            .envs(env.iter().copied())
            .env("JOBD_DATA_DIR", dir.path().join("data"))
            .current_dir(dir.path())
            .output()
            .expect("run jobd");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).expect("utf-8")
    };
    let found = check(&[], &[]);
    let local = std::path::absolute(dir.path().join("jobd.toml")).expect("absolute");
    assert!(found.contains(&format!("read from {}", local.display())), "{found}");
    assert!(found.contains("max_workers = 7"), "{found}");
    let named = check(&[], &[("JOBD_CONFIG", "other.toml")]);
    assert!(named.contains("read from other.toml") && named.contains("max_workers = 9"), "{named}");
    let flagged = check(&["--config", "other.toml", "--max-workers", "11"], &[]);
    assert!(flagged.contains("max_workers = 11"), "a flag beats the file: {flagged}");
    // A file others may write is not taken from the working directory; named, it is read.
    use std::os::unix::fs::PermissionsExt as _;
    let local_file = dir.path().join("jobd.toml");
    std::fs::set_permissions(&local_file, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let mut command = Command::new(env!("CARGO_BIN_EXE_jobd"));
    for (key, _) in std::env::vars() {
        if key.starts_with("JOBD_") || key == "CONFIGURATION_DIRECTORY" {
            command.env_remove(key);
        }
    }
    let refused = command.arg("check-config").current_dir(dir.path()).output().expect("run jobd");
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("others may write it: not read"));
    let named = check(&["--config", "jobd.toml"], &[]);
    assert!(named.contains("max_workers = 7"), "{named}");
    std::fs::remove_file(&local_file).expect("remove jobd.toml");
    let none = check(&[], &[]);
    if std::path::Path::new("/etc/jobd/jobd.toml").is_file() {
        assert!(none.contains("read from /etc/jobd/jobd.toml"), "{none}");
    } else {
        assert!(none.contains("no configuration file was found") && none.contains("max_workers = 16"), "{none}");
    }
}

/// `jobd jobs list | head -1` ends quietly when the reader goes away: no panic, exit 0.
#[tokio::test]
async fn a_closed_output_ends_a_client_command_quietly() {
    let daemon = common::Daemon::start(&[]);
    let mut command = Command::new(env!("CARGO_BIN_EXE_jobd"));
    let mut child = command
        .args(["jobs", "list", "--url", &daemon.base])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run jobd");
    // The reader is gone before the answer is written: the write meets a closed pipe.
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("wait for jobd");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{stderr}");
}

/// A webhook destination's secrets and header values never reach check-config's output.
#[test]
fn check_config_never_prints_a_webhook_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("jobd.toml");
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    std::fs::write(
        &config,
        format!(
            "[webhooks.billing]\nurl = \"https://hook:pass-word@billing.example/hook?sig=q-u-e-r-y\"\nsecrets = [\"{secret}\"]\n\
             headers = {{ \"authorization\" = \"Bearer hush-hush\" }}\n"
        ),
    )
    .expect("write config");
    let data_dir = dir.path().to_str().expect("utf-8 path");
    let output = jobd(&["check-config", "--config", config.to_str().expect("path")], &[("JOBD_DATA_DIR", data_dir)]);
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{printed}");
    assert!(printed.contains("[webhooks.billing]") && printed.contains("(secret)"), "{printed}");
    // A destination's effective defaults are printed, not only what the file set; and so
    // are the names of the settings left unset.
    for default in ["timeout_ms = 15000", "max_in_flight = 8", "circuit_failures = 5", "circuit_open_secs = 30"] {
        assert!(printed.contains(default), "{default} is not printed: {printed}");
    }
    let unset = printed.lines().find(|line| line.starts_with("# not set")).unwrap_or_default();
    assert!(unset.contains("tokens_file") && unset.contains("tls_cert") && !unset.contains("max_workers"), "{printed}");
    for secret in ["MfKQ9r8G", "hush-hush", "pass-word", "q-u-e-r-y"] {
        assert!(!printed.contains(secret), "{secret} was printed: {printed}");
    }

    std::fs::write(
        &config,
        "[webhooks.billing]\nurl = \"ftp://x\"\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n",
    )
    .expect("write config");
    let bad = jobd(&["check-config", "--config", config.to_str().expect("path")], &[("JOBD_DATA_DIR", data_dir)]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("[webhooks.billing] url"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
