//! Hostile and unauthorised clients against the real daemon: tokens and scopes on every
//! route, key confinement, token and certificate reloads, TLS, slowloris, deep and huge
//! bodies, and the API description against the routes it describes.

use crate::common;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::Daemon;
use common::pki::TestPki;
use serde_json::{Value, json};

const SUBMIT_TOKEN: &str = "submit-0123456789abcdef0123456789abcdef";
const READ_TOKEN: &str = "read-0123456789abcdef0123456789abcdef";
const ADMIN_TOKEN: &str = "admin-0123456789abcdef0123456789abcdef";
const CONFINED_TOKEN: &str = "confined-0123456789abcdef0123456789abcdef";
const ALL_TOKEN: &str = "all-0123456789abcdef0123456789abcdef";
const UNKNOWN_TOKEN: &str = "unknown-0123456789abcdef0123456789abcdef";

fn token_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("tokens");
    std::fs::write(
        &path,
        format!(
            "# name scopes token [options]\n\
             pusher submit {SUBMIT_TOKEN}\n\
             watcher read {READ_TOKEN}\n\
             operator admin {ADMIN_TOKEN}\n\
             tenant-a submit,read {CONFINED_TOKEN} allowed_key_prefixes=tenant-a/\n\
             root submit,read,admin {ALL_TOKEN}\n"
        ),
    )
    .expect("write tokens");
    path
}

/// Starts a daemon with the token file above.
fn start_with_tokens(extra: &[(&str, &str)]) -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = token_file(dir.path());
    let mut env = vec![("JOBD_TOKENS_FILE", path.to_str().expect("utf-8 path"))];
    env.extend_from_slice(extra);
    (Daemon::start(&env), dir)
}

async fn send(
    daemon: &Daemon,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> reqwest::Response {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = daemon.client.request(method, daemon.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    request.send().await.expect("request")
}

/// The value of one series in a Prometheus text exposition.
fn series(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {name}"))
}

/// `/metrics`, read as an operator's Prometheus does with tokens on: with a read token
/// that is not confined.
async fn metrics_text(daemon: &Daemon) -> String {
    let response =
        daemon.client.get(daemon.url("/metrics")).bearer_auth(READ_TOKEN).send().await.expect("GET /metrics");
    assert_eq!(response.status(), 200, "/metrics answers an operator's read token");
    response.text().await.expect("metrics text")
}

#[tokio::test]
async fn every_route_needs_a_token_with_its_scope_and_token_values_never_reach_the_logs() {
    let (daemon, _tokens) = start_with_tokens(&[]);
    let job_id = "01890f3a-0000-7000-8000-000000000000";
    let noop = json!({"kind": "noop"});
    let payloads = json!({"payloads": [{"a": 1}]});
    // (method, path, body, the token with the right scope)
    let routes: Vec<(&str, String, Option<&Value>, &str)> = vec![
        ("POST", "/v1/jobs".to_owned(), Some(&noop), SUBMIT_TOKEN),
        ("POST", "/v1/payloads".to_owned(), Some(&payloads), SUBMIT_TOKEN),
        ("GET", "/v1/jobs".to_owned(), None, READ_TOKEN),
        ("GET", format!("/v1/jobs/{job_id}"), None, READ_TOKEN),
        ("GET", "/v1/stats".to_owned(), None, READ_TOKEN),
        ("DELETE", format!("/v1/jobs/{job_id}"), None, ADMIN_TOKEN),
        ("POST", format!("/v1/jobs/{job_id}/retry"), None, ADMIN_TOKEN),
    ];
    let mut refusals: (u32, u32, u32) = (0, 0, 0);
    for (method, path, body, right) in &routes {
        let missing = send(&daemon, method, path, None, *body).await;
        assert_eq!(missing.status(), 401, "{method} {path} without a token");
        let challenge = missing.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).map(str::to_owned);
        assert_eq!(challenge.as_deref(), Some(r#"Bearer realm="jobd""#), "{method} {path}");
        let problem: Value = missing.json().await.expect("problem");
        assert_eq!(problem["type"], "/problems/unauthorized");
        refusals.0 += 1;

        let wrong = send(&daemon, method, path, Some(UNKNOWN_TOKEN), *body).await;
        assert_eq!(wrong.status(), 401, "{method} {path} with an unknown token");
        let challenge = wrong.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert!(challenge.contains("invalid_token"), "{challenge}");
        refusals.1 += 1;

        for other in [SUBMIT_TOKEN, READ_TOKEN, ADMIN_TOKEN].into_iter().filter(|token| token != right) {
            let forbidden = send(&daemon, method, path, Some(other), *body).await;
            assert_eq!(forbidden.status(), 403, "{method} {path} with a token of another scope");
            let problem: Value = forbidden.json().await.expect("problem");
            assert_eq!(problem["type"], "/problems/forbidden", "{problem}");
            refusals.2 += 1;
        }
    }
    // Nothing was created by any refused request.
    let listing: Value = send(&daemon, "GET", "/v1/jobs", Some(READ_TOKEN), None).await.json().await.expect("list");
    assert_eq!(listing["jobs"].as_array().map(Vec::len), Some(0), "{listing}");

    // The right tokens work (the job routes answer 404 for the unknown id: past the check).
    for (method, path, body, right) in &routes {
        let status = send(&daemon, method, path, Some(right), *body).await.status().as_u16();
        let expected: &[u16] = if path.contains(job_id) { &[404] } else { &[200, 202] };
        assert!(expected.contains(&status), "{method} {path} with the right token answered {status}");
    }
    let listing: Value = send(&daemon, "GET", "/v1/jobs", Some(READ_TOKEN), None).await.json().await.expect("list");
    assert_eq!(listing["jobs"].as_array().map(Vec::len), Some(2), "one job from each submission route");
    // A scheme other than Bearer is an invalid credential, not a missing one.
    let basic = daemon
        .client
        .get(daemon.url("/v1/stats"))
        .header("authorization", format!("Basic {READ_TOKEN}"))
        .send()
        .await
        .expect("GET");
    assert_eq!(basic.status(), 401);
    refusals.1 += 1;

    // Probes and the API description need no token. Metrics need a read token that is not
    // confined: they name every destination and kind, which a tenant may not learn.
    for path in ["/healthz", "/readyz", "/v1/openapi.json"] {
        let status = daemon.client.get(daemon.url(path)).send().await.expect("GET").status();
        assert_eq!(status, 200, "{path}");
    }
    let anonymous = daemon.client.get(daemon.url("/metrics")).send().await.expect("GET /metrics");
    assert_eq!(anonymous.status(), 401, "/metrics without a token");
    refusals.0 += 1;
    let tenant = daemon.client.get(daemon.url("/metrics")).bearer_auth(CONFINED_TOKEN).send().await.expect("GET");
    assert_eq!(tenant.status(), 403, "/metrics with a tenant's token");
    let problem: Value = tenant.json().await.expect("problem");
    assert!(problem["detail"].as_str().is_some_and(|detail| detail.contains("confined")), "{problem}");
    let metrics = metrics_text(&daemon).await;
    assert_eq!(series(&metrics, r#"jobd_auth_failures_total{reason="confined"}"#), 1.0);
    assert_eq!(series(&metrics, r#"jobd_auth_failures_total{reason="missing"}"#), f64::from(refusals.0));
    assert_eq!(series(&metrics, r#"jobd_auth_failures_total{reason="invalid"}"#), f64::from(refusals.1));
    assert_eq!(series(&metrics, r#"jobd_auth_failures_total{reason="scope"}"#), f64::from(refusals.2));

    // Logs name refused tokens by name; no token value appears anywhere in them.
    let records = daemon
        .wait_for_logs("refusals logged", (refusals.0 + refusals.1 + refusals.2) as usize, |record| {
            record["message"] == "request refused"
        })
        .await;
    assert!(records.iter().any(|record| record["token_name"] == "watcher"), "scope refusals name the token");
    let logs = daemon.logs.lock().expect("log lock").join("\n");
    for token in [SUBMIT_TOKEN, READ_TOKEN, ADMIN_TOKEN, CONFINED_TOKEN, ALL_TOKEN, UNKNOWN_TOKEN] {
        assert!(!logs.contains(token), "a token value appears in the logs");
        assert!(!logs.contains(&token[token.len() - 16..]), "part of a token value appears in the logs");
    }
}

#[tokio::test]
async fn confined_tokens_write_only_under_their_prefixes_and_sighup_reloads_tokens() {
    let (daemon, tokens_dir) = start_with_tokens(&[]);
    let submit = |body: Value| {
        let daemon = &daemon;
        async move { send(daemon, "POST", "/v1/jobs", Some(CONFINED_TOKEN), Some(&body)).await }
    };
    let inside = submit(json!({"kind": "upload", "payload": {"n": 1}, "key": "tenant-a/x.json"})).await;
    assert_eq!(inside.status(), 202);

    let outside = submit(json!({"jobs": [
        {"kind": "upload", "payload": {"n": 2}, "key": "tenant-a/ok.json"},
        {"kind": "upload", "payload": {"n": 3}, "key": "tenant-ab/x.json"},
    ]}))
    .await;
    assert_eq!(outside.status(), 403);
    let problem: Value = outside.json().await.expect("problem");
    assert_eq!(problem["type"], "/problems/key-not-allowed", "{problem}");
    assert_eq!(
        (problem["errors"][0]["index"].as_u64(), problem["errors"][0]["field"].as_str()),
        (Some(1), Some("key"))
    );

    // Without a key the job would go under the default prefix, outside tenant-a/.
    let default_key = submit(json!({"kind": "upload", "payload": {"n": 4}})).await;
    assert_eq!(default_key.status(), 403);
    let collection = send(&daemon, "POST", "/v1/payloads", Some(CONFINED_TOKEN), Some(&json!({"payloads": [1]}))).await;
    assert_eq!(collection.status(), 403);
    // A token without prefixes writes anywhere.
    let free = send(
        &daemon,
        "POST",
        "/v1/jobs",
        Some(SUBMIT_TOKEN),
        Some(&json!({"kind": "upload", "payload": {"n": 5}, "key": "tenant-ab/x.json"})),
    )
    .await;
    assert_eq!(free.status(), 202);
    let listing: Value = send(&daemon, "GET", "/v1/jobs", Some(READ_TOKEN), None).await.json().await.expect("list");
    assert_eq!(listing["jobs"].as_array().map(Vec::len), Some(2), "only the two allowed jobs exist: {listing}");
    let metrics = metrics_text(&daemon).await;
    assert_eq!(series(&metrics, r#"jobd_auth_failures_total{reason="key_prefix"}"#), 3.0);
    assert_eq!(series(&metrics, r#"jobd_submissions_rejected_total{reason="key_not_allowed"}"#), 3.0);

    // SIGHUP with a broken token file keeps the tokens in force...
    let path = tokens_dir.path().join("tokens");
    std::fs::write(&path, "watcher read short\n").expect("write");
    daemon.signal("HUP");
    daemon
        .wait_for_logs("failed reload", 1, |r| r["message"].as_str().is_some_and(|m| m.contains("not reloaded")))
        .await;
    assert_eq!(send(&daemon, "GET", "/v1/stats", Some(READ_TOKEN), None).await.status(), 200);
    // ...and with a good one replaces them: the removed token stops working at once.
    std::fs::write(&path, format!("operator admin,read {ADMIN_TOKEN}\n")).expect("write");
    daemon.signal("HUP");
    daemon.wait_for_logs("reload", 1, |record| record["message"] == "SIGHUP: token file reloaded").await;
    assert_eq!(send(&daemon, "GET", "/v1/stats", Some(READ_TOKEN), None).await.status(), 401);
    assert_eq!(send(&daemon, "GET", "/v1/stats", Some(ADMIN_TOKEN), None).await.status(), 200);
    // The reader's token is gone with the reload: the operator's reads the metrics.
    let response = daemon.client.get(daemon.url("/metrics")).bearer_auth(ADMIN_TOKEN).send().await.expect("GET");
    let metrics = response.text().await.expect("metrics text");
    assert_eq!(series(&metrics, r#"jobd_reloads_total{outcome="error",what="tokens"}"#), 1.0);
    assert_eq!(series(&metrics, r#"jobd_reloads_total{outcome="ok",what="tokens"}"#), 1.0);
}

/// Whether a log record is the warning that the token file holds no tokens.
fn is_no_tokens_warning(record: &Value) -> bool {
    record["level"] == "WARN" && record["message"].as_str().is_some_and(|message| message.contains("no tokens"))
}

#[tokio::test]
async fn a_token_file_emptied_of_tokens_leaves_no_token_valid_after_sighup() {
    let (daemon, tokens_dir) = start_with_tokens(&[]);
    assert_eq!(send(&daemon, "GET", "/v1/stats", Some(READ_TOKEN), None).await.status(), 200);
    // Every token removed, comments left: from now on no token is valid.
    let path = tokens_dir.path().join("tokens");
    std::fs::write(&path, "# every token revoked\n\n").expect("write");
    daemon.signal("HUP");
    daemon.wait_for_logs("the warning of an empty token file", 1, is_no_tokens_warning).await;
    let noop = json!({"kind": "noop"});
    for token in [SUBMIT_TOKEN, READ_TOKEN, ADMIN_TOKEN, ALL_TOKEN] {
        assert_eq!(send(&daemon, "POST", "/v1/jobs", Some(token), Some(&noop)).await.status(), 401, "{token}");
        assert_eq!(send(&daemon, "GET", "/v1/stats", Some(token), None).await.status(), 401, "{token}");
    }
    assert_eq!(send(&daemon, "POST", "/v1/jobs", None, Some(&noop)).await.status(), 401);
    assert_eq!(
        daemon.client.get(daemon.url("/metrics")).bearer_auth(READ_TOKEN).send().await.expect("GET").status(),
        401
    );
    // Tokens written back work again on the next SIGHUP.
    token_file(tokens_dir.path());
    daemon.signal("HUP");
    // The second reload: the emptied file's reload logged the same line first.
    daemon.wait_for_logs("the second reload", 2, |record| record["message"] == "SIGHUP: token file reloaded").await;
    assert_eq!(send(&daemon, "GET", "/v1/stats", Some(READ_TOKEN), None).await.status(), 200);
    let metrics = metrics_text(&daemon).await;
    assert_eq!(series(&metrics, r#"jobd_reloads_total{outcome="ok",what="tokens"}"#), 2.0, "both reloads worked");

    // Starting with an empty token file is allowed too, with the same warning and the
    // same effect: authentication is on and nothing can be submitted.
    let empty_dir = tempfile::tempdir().expect("tempdir");
    let empty = empty_dir.path().join("tokens");
    std::fs::write(&empty, "").expect("write");
    let daemon = Daemon::start(&[("JOBD_TOKENS_FILE", empty.to_str().expect("utf-8 path"))]);
    daemon.wait_for_logs("the warning of an empty token file at start", 1, is_no_tokens_warning).await;
    assert_eq!(send(&daemon, "POST", "/v1/jobs", Some(SUBMIT_TOKEN), Some(&noop)).await.status(), 401);
    assert_eq!(send(&daemon, "POST", "/v1/jobs", None, Some(&noop)).await.status(), 401);
    assert_eq!(daemon.client.get(daemon.url("/healthz")).send().await.expect("GET").status(), 200);
}

/// Sends `GET path` with the given `Host` header.
async fn get_with_host(daemon: &Daemon, path: &str, host: &str) -> reqwest::Response {
    daemon.client.get(daemon.url(path)).header("host", host).send().await.expect("GET")
}

#[tokio::test]
async fn with_authentication_off_only_loopback_host_names_are_answered() {
    let daemon = Daemon::start(&[]);
    let port = daemon.base.rsplit(':').next().expect("port").to_owned();
    // DNS rebinding: a page of attacker.example, its name now resolving to 127.0.0.1,
    // reaches jobd from the browser with its own name in Host.
    for host in [format!("attacker.example:{port}"), "attacker.example".to_owned(), "localhost.evil.example".to_owned()]
    {
        for path in ["/v1/stats", "/metrics", "/healthz"] {
            let response = get_with_host(&daemon, path, &host).await;
            assert_eq!(response.status(), 421, "{path} with Host {host}");
            assert_eq!(
                response.headers().get("content-type").and_then(|value| value.to_str().ok()),
                Some("application/problem+json")
            );
            let problem: Value = response.json().await.expect("problem");
            assert_eq!(problem["type"], "/problems/host-not-allowed", "{problem}");
            assert_eq!(problem["errors"][0]["field"], "Host", "{problem}");
        }
    }
    let submitted = daemon
        .client
        .post(daemon.url("/v1/jobs"))
        .header("host", "attacker.example")
        .json(&json!({"kind": "noop"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(submitted.status(), 421);
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "localhost".to_owned(),
        format!("jobd.localhost:{port}"),
        format!("127.1.2.3:{port}"),
        format!("[::1]:{port}"),
        "[::1]".to_owned(),
    ] {
        assert_eq!(get_with_host(&daemon, "/v1/stats", &host).await.status(), 200, "Host {host}");
    }
    assert_eq!(daemon.stats().await["queue"]["queued"], 0, "the refused submission queued nothing");
    let metrics = metrics_text(&daemon).await;
    assert_eq!(series(&metrics, r#"jobd_http_refusals_total{reason="host_not_allowed"}"#), 10.0);

    // With tokens, the token is what protects the API, and any Host is answered.
    let (daemon, _tokens) = start_with_tokens(&[]);
    let response = daemon
        .client
        .get(daemon.url("/v1/stats"))
        .header("host", "attacker.example")
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn allow_unauthenticated_on_all_addresses_answers_ip_hosts_and_refuses_names() {
    let daemon = Daemon::start(&[("JOBD_LISTEN", "0.0.0.0:0"), ("JOBD_ALLOW_UNAUTHENTICATED", "true")]);
    let port = daemon.base.rsplit(':').next().expect("port").to_owned();
    // Listening on every address, any address of this host is the listen address.
    for host in [format!("192.0.2.7:{port}"), "192.0.2.7".to_owned(), format!("0.0.0.0:{port}"), "localhost".to_owned()]
    {
        assert_eq!(get_with_host(&daemon, "/v1/stats", &host).await.status(), 200, "Host {host}");
    }
    assert_eq!(get_with_host(&daemon, "/v1/stats", "attacker.example").await.status(), 421);
}

#[test]
fn a_public_listener_without_tokens_is_refused_unless_explicitly_allowed() {
    let run = |args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_jobd"));
        for (key, _) in std::env::vars() {
            if key.starts_with("JOBD_") {
                command.env_remove(key);
            }
        }
        let dir = tempfile::tempdir().expect("tempdir");
        command.env("JOBD_DATA_DIR", dir.path()).args(args).output().expect("run jobd")
    };
    let refused = run(&["check-config", "--listen", "0.0.0.0:8080"]);
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("tokens_file") && message.contains("allow_unauthenticated"), "{message}");
    let serve_refused = run(&["serve", "--listen", "0.0.0.0:0"]);
    assert!(!serve_refused.status.success(), "serve refuses the same configuration");
    let allowed = run(&["check-config", "--listen", "0.0.0.0:8080", "--allow-unauthenticated", "true"]);
    assert!(allowed.status.success(), "{}", String::from_utf8_lossy(&allowed.stderr));
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = token_file(dir.path());
    let with_tokens =
        run(&["check-config", "--listen", "0.0.0.0:8080", "--tokens-file", tokens.to_str().expect("utf-8")]);
    assert!(with_tokens.status.success(), "{}", String::from_utf8_lossy(&with_tokens.stderr));
    let output =
        String::from_utf8_lossy(&with_tokens.stdout).to_string() + &String::from_utf8_lossy(&with_tokens.stderr);
    assert!(!output.contains(SUBMIT_TOKEN), "check-config never prints a token");
    std::fs::write(&tokens, "a submit tooshort\n").expect("write");
    let bad_file = run(&["check-config", "--listen", "0.0.0.0:8080", "--tokens-file", tokens.to_str().expect("utf-8")]);
    assert!(!bad_file.status.success());
    assert!(String::from_utf8_lossy(&bad_file.stderr).contains("line 1"));
}

/// The leaf certificate the server showed on a new connection.
async fn served_certificate(pki: &TestPki, url: &str) -> Vec<u8> {
    // A new client per call: a fresh connection, so a fresh handshake.
    let response = pki.client().get(url).send().await.expect("HTTPS request");
    assert_eq!(response.status(), 200);
    let info = response.extensions().get::<reqwest::tls::TlsInfo>().expect("TLS info");
    info.peer_certificate().expect("peer certificate").to_vec()
}

#[tokio::test]
async fn tls_serves_the_certificate_and_sighup_swaps_it_for_new_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let pki = TestPki::new();
    let first = pki.write_leaf(&cert, &key);
    let daemon = Daemon::start(&[
        ("JOBD_TLS_CERT", cert.to_str().expect("utf-8")),
        ("JOBD_TLS_KEY", key.to_str().expect("utf-8")),
    ]);
    let port = daemon.base.rsplit(':').next().expect("port").to_owned();
    let url = format!("https://localhost:{port}/healthz");
    assert_eq!(served_certificate(&pki, &url).await, first);

    // A client that does not trust the CA is refused by its own verification.
    let untrusting = reqwest::Client::builder().build().expect("client");
    assert!(untrusting.get(&url).send().await.is_err());
    // Plain HTTP to the TLS port fails cleanly: no HTTP answer, and the server goes on.
    let plain = daemon.client.get(format!("http://127.0.0.1:{port}/healthz")).send().await;
    assert!(plain.is_err(), "plain HTTP got an answer: {plain:?}");
    let submitted = pki
        .client()
        .post(format!("https://localhost:{port}/v1/jobs"))
        .json(&json!({"kind": "noop"}))
        .send()
        .await
        .expect("POST over TLS");
    assert_eq!(submitted.status(), 202);

    // A broken renewal keeps the certificate in force.
    std::fs::write(&cert, "not a certificate").expect("write");
    daemon.signal("HUP");
    daemon
        .wait_for_logs("failed reload", 1, |r| r["message"].as_str().is_some_and(|m| m.contains("TLS certificate not")))
        .await;
    assert_eq!(served_certificate(&pki, &url).await, first);

    let second = pki.write_leaf(&cert, &key);
    assert_ne!(first, second);
    daemon.signal("HUP");
    daemon
        .wait_for_logs("reload", 1, |record| {
            record["message"] == "SIGHUP: TLS certificate reloaded; new connections use it"
        })
        .await;
    assert_eq!(served_certificate(&pki, &url).await, second, "new connections see the new certificate");
}

#[tokio::test]
async fn slowloris_connections_do_not_keep_a_normal_client_from_submitting() {
    let daemon = Daemon::start(&[("JOBD_CLIENT_REQUEST_TIMEOUT_MS", "5000")]);
    let addr = daemon.base.trim_start_matches("http://").to_owned();
    // 200 connections that each send a request head one byte at a time, every 2 s.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let closed_by_server = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut attackers = Vec::new();
    for _ in 0..200 {
        let (addr, stop, closed) = (addr.clone(), stop.clone(), closed_by_server.clone());
        attackers.push(std::thread::spawn(move || {
            let Ok(mut stream) = TcpStream::connect(&addr) else { return };
            let head = b"POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
            let _ = stream.set_read_timeout(Some(Duration::from_millis(10)));
            for byte in head {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                if stream.write_all(&[*byte]).is_err() {
                    closed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
                let mut buffer = [0; 256];
                // The server answering (408) or closing ends the attack on this connection.
                match stream.read(&mut buffer) {
                    Ok(_) => {
                        closed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return;
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => {
                        closed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return;
                    }
                }
                std::thread::sleep(Duration::from_secs(2));
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(500));
    // While they hold their connections, a normal client submits, each within 1 s.
    let mut slowest = Duration::ZERO;
    for round in 0..8 {
        let started = Instant::now();
        let response = tokio::time::timeout(
            Duration::from_secs(1),
            daemon.post_json("/v1/jobs", &json!({"kind": "noop", "idempotency_key": format!("round-{round}")})),
        )
        .await
        .expect("a submission finished within 1 s during the slowloris");
        assert_eq!(response.status(), 202);
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("slowest submission during 200 slowloris connections: {slowest:?}");
    // client_request_timeout cuts every slow connection off; none holds on for ever.
    let deadline = Instant::now() + common::WAIT_DEADLINE;
    while closed_by_server.load(std::sync::atomic::Ordering::Relaxed) < 200 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        closed_by_server.load(std::sync::atomic::Ordering::Relaxed),
        200,
        "the server closed every slow connection"
    );
    for attacker in attackers {
        let _ = attacker.join();
    }
}

#[tokio::test]
async fn hostile_bodies_and_heads_are_refused_with_their_reasons() {
    let daemon = Daemon::start(&[("JOBD_CLIENT_BODY_TIMEOUT_MS", "1000"), ("JOBD_MAX_BODY_BYTES", "16777216")]);
    // Nesting 100,000 deep: refused before any value is built, and the daemon lives on.
    let deep = format!("{{\"kind\":\"upload\",\"payload\":{}1{}}}", "[".repeat(100_000), "]".repeat(100_000));
    let response = daemon.post_raw("/v1/jobs", "application/json", deep.into_bytes()).await;
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.expect("problem");
    assert_eq!(problem["type"], "/problems/too-deep", "{problem}");
    assert!(problem["detail"].as_str().is_some_and(|detail| detail.contains("max_json_depth (64)")), "{problem}");
    let deep_payloads = format!("{{\"payloads\":[{}{}]}}", "{\"a\":".repeat(50_000), "}".repeat(50_000));
    let response = daemon.post_raw("/v1/payloads", "application/json", deep_payloads.into_bytes()).await;
    assert_eq!(response.status(), 400);

    // One job more than max_jobs_per_request (default 10,000).
    let many: Vec<Value> = (0..10_001).map(|_| json!({"kind": "noop"})).collect();
    let response = daemon.post_json("/v1/jobs", &json!({"jobs": many})).await;
    assert_eq!(response.status(), 413);
    let problem: Value = response.json().await.expect("problem");
    assert_eq!(
        (problem["type"].as_str(), problem["errors"][0]["field"].as_str()),
        (Some("/problems/too-many-jobs"), Some("jobs"))
    );

    // A head over max_header_bytes (32 KiB) gets 431; one of 200 KiB is cut off by
    // actix-http's own 128 KiB read limit, with a 431 or a closed connection.
    // Their own client: a connection the server cuts off mid-request must not go back
    // into the pool the rest of the test uses.
    let header_client = reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client");
    let big_header = "x".repeat(40 * 1024);
    let response = header_client.get(daemon.url("/healthz")).header("x-big", big_header).send().await.expect("GET");
    assert_eq!(response.status(), 431);
    let problem: Value = response.json().await.expect("problem");
    assert_eq!(problem["type"], "/problems/header-too-large");
    let huge_header = "x".repeat(200 * 1024);
    let response = header_client.get(daemon.url("/healthz")).header("x-huge", huge_header).send().await;
    assert!(
        matches!(&response, Ok(answer) if answer.status() == 431) || response.is_err(),
        "a 200 KiB header got {response:?}"
    );

    // A body that stops arriving gets 408 after client_body_timeout_ms.
    let addr = daemon.base.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&addr).expect("connect");
    stream
        .write_all(b"POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"kind\"")
        .expect("write");
    stream.set_read_timeout(Some(common::WAIT_DEADLINE)).expect("timeout");
    let mut answer = vec![0; 4096];
    let length = stream.read(&mut answer).expect("an answer");
    let answer = String::from_utf8_lossy(&answer[..length]).to_string();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("client_body_timeout_ms"), "{answer}");

    let metrics = metrics_text(&daemon).await;
    assert_eq!(series(&metrics, r#"jobd_submissions_rejected_total{reason="too_deep"}"#), 2.0);
    assert_eq!(series(&metrics, r#"jobd_submissions_rejected_total{reason="too_many_jobs"}"#), 1.0);
    assert_eq!(series(&metrics, r#"jobd_submissions_rejected_total{reason="body_timeout"}"#), 1.0);
    assert!(series(&metrics, r#"jobd_http_refusals_total{reason="header_too_large"}"#) >= 1.0);
    // Nothing of it was enqueued, and the daemon still works.
    assert_eq!(daemon.stats().await["queue"]["queued"], 0);
    assert_eq!(daemon.post_json("/v1/jobs", &json!({"kind": "noop"})).await.status(), 202);
}

/// A body of `max_body_bytes` (8 MiB by default) that is one array of `element`s under
/// `field`, e.g. `{"jobs":[{},{},...]}`: hundreds of thousands of entries.
fn array_body(field: &str, element: &str, size: usize) -> Vec<u8> {
    let mut body = format!("{{\"{field}\":[{element}").into_bytes();
    while body.len() + element.len() + 3 <= size {
        body.push(b',');
        body.extend_from_slice(element.as_bytes());
    }
    body.extend_from_slice(b"]}");
    body
}

/// Checks that an answer is the 413 of a body with more than max_jobs_per_request entries,
/// naming `field`.
async fn assert_too_many_jobs(response: reqwest::Response, field: &str) {
    assert_eq!(response.status(), 413, "{field}");
    let problem: Value = response.json().await.expect("problem");
    assert_eq!(problem["type"], "/problems/too-many-jobs", "{problem}");
    assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    assert!(problem["detail"].as_str().is_some_and(|detail| detail.contains("max_jobs_per_request")), "{problem}");
}

#[tokio::test]
async fn a_body_of_700k_empty_jobs_is_refused_by_its_count_naming_the_field() {
    let daemon = Daemon::start(&[]);
    // `{}` is no valid job, but the count is what is wrong with this body, and it is
    // refused for that before any of its entries is looked at.
    let body = array_body("jobs", "{}", 8 * 1024 * 1024);
    assert_too_many_jobs(daemon.post_raw("/v1/jobs", "application/json", body).await, "jobs").await;
    let body = array_body("payloads", "{}", 8 * 1024 * 1024);
    assert_too_many_jobs(daemon.post_raw("/v1/payloads", "application/json", body).await, "payloads").await;
    assert_eq!(daemon.stats().await["queue"]["queued"], 0);
    assert_eq!(daemon.post_json("/v1/jobs", &json!({"kind": "noop"})).await.status(), 202);
}

#[tokio::test]
async fn eight_concurrent_bodies_of_far_too_many_jobs_cost_about_their_own_size_in_memory() {
    let daemon = Daemon::start(&[]);
    let idle_kib = daemon.peak_rss_kib();
    let mut answers = Vec::new();
    for round in 0..8 {
        let (path, field, element) = if round % 2 == 0 {
            ("/v1/jobs", "jobs", r#"{"kind":"noop"}"#)
        } else {
            ("/v1/payloads", "payloads", "{}")
        };
        let request = daemon.client.post(daemon.url(path)).header("content-type", "application/json").body(array_body(
            field,
            element,
            8 * 1024 * 1024,
        ));
        answers.push(tokio::spawn(async move { (field, request.send().await.expect("POST")) }));
    }
    let mut responses = Vec::new();
    for answer in answers {
        responses.push(answer.await.expect("request task"));
    }
    let peak_kib = daemon.peak_rss_kib();
    eprintln!("peak resident memory: {idle_kib} KiB idle, {peak_kib} KiB after 8 concurrent 8 MiB bodies");
    for (field, response) in responses {
        assert_too_many_jobs(response, field).await;
    }
    // The bodies themselves are 64 MiB; parsing each into jobs before counting them took
    // the peak past 380 MiB.
    assert!(peak_kib < 150 * 1024, "peak resident memory {peak_kib} KiB (idle {idle_kib} KiB)");
    assert_eq!(daemon.stats().await["queue"]["queued"], 0);
}

/// An upload whose `metadata` holds hundreds of thousands of tiny entries is refused at
/// the first entry past the limit, so eight such 8 MiB bodies at once cost about their own
/// size. Read whole into a map first, they cost many times that before the entry count was
/// checked.
#[tokio::test]
async fn eight_concurrent_bodies_of_far_too_much_metadata_cost_about_their_own_size_in_memory() {
    let daemon = Daemon::start(&[]);
    let idle_kib = daemon.peak_rss_kib();
    let mut body = br#"{"kind":"upload","payload":1,"metadata":{"m0":"""#.to_vec();
    let mut entry = 1;
    while body.len() < 8 * 1024 * 1024 - 32 {
        body.extend_from_slice(format!(r#","m{entry}":"""#).as_bytes());
        entry += 1;
    }
    body.extend_from_slice(b"}}");
    let mut answers = Vec::new();
    for _ in 0..8 {
        let request =
            daemon.client.post(daemon.url("/v1/jobs")).header("content-type", "application/json").body(body.clone());
        answers.push(tokio::spawn(async move { request.send().await.expect("POST") }));
    }
    drop(body);
    for answer in answers {
        let response = answer.await.expect("request task");
        assert_eq!(response.status(), 400);
        let problem: Value = response.json().await.expect("problem");
        assert!(problem.to_string().contains("metadata"), "the problem names the field: {problem}");
    }
    let peak_kib = daemon.peak_rss_kib();
    eprintln!("peak resident memory: {idle_kib} KiB idle, {peak_kib} KiB after 8 bodies of {entry} metadata entries");
    assert!(peak_kib < 150 * 1024, "peak resident memory {peak_kib} KiB (idle {idle_kib} KiB)");
    assert_eq!(daemon.stats().await["queue"]["queued"], 0);
}

/// Sends a POST of `body_bytes` bytes the way simple clients do: the whole body first,
/// then the answer is read. With `declared`, the body has a Content-Length; without, it
/// is chunked. Returns the status line, or what went wrong.
fn send_whole_body_then_read(addr: &str, body_bytes: usize, declared: bool) -> Result<String, std::io::Error> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(common::WAIT_DEADLINE))?;
    let framing =
        if declared { format!("Content-Length: {body_bytes}") } else { "Transfer-Encoding: chunked".to_owned() };
    let head =
        format!("POST /v1/payloads HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{framing}\r\n\r\n");
    stream.write_all(head.as_bytes())?;
    let piece = vec![b' '; 64 * 1024];
    let mut sent = 0;
    while sent < body_bytes {
        let length = piece.len().min(body_bytes - sent);
        if declared {
            stream.write_all(&piece[..length])?;
        } else {
            stream.write_all(format!("{length:x}\r\n").as_bytes())?;
            stream.write_all(&piece[..length])?;
            stream.write_all(b"\r\n")?;
        }
        sent += length;
    }
    if !declared {
        stream.write_all(b"0\r\n\r\n")?;
    }
    let mut answer = Vec::new();
    let mut buffer = [0; 4096];
    while !answer.windows(2).any(|window| window == b"\r\n") {
        let length = stream.read(&mut buffer)?;
        if length == 0 {
            break;
        }
        answer.extend_from_slice(&buffer[..length]);
    }
    let answer = String::from_utf8_lossy(&answer).to_string();
    Ok(answer.lines().next().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn a_client_that_sends_its_whole_oversize_body_before_reading_gets_the_413() {
    let daemon = Daemon::start(&[("JOBD_MAX_BODY_BYTES", "65536")]);
    let addr = daemon.base.trim_start_matches("http://").to_owned();
    // 6 MiB over the limit: more than the socket buffers take in, so a server that closes
    // at once resets the connection while the client still writes (with 1 MiB the client
    // sometimes finishes writing first, and the test would pass by luck).
    let body_bytes = 65536 + 6 * 1024 * 1024;
    for declared in [true, false, true, false] {
        let status = send_whole_body_then_read(&addr, body_bytes, declared)
            .unwrap_or_else(|error| panic!("Content-Length {declared}: {:?}: {error}", error.kind()));
        assert!(status.starts_with("HTTP/1.1 413"), "Content-Length {declared}: {status}");
    }
    let stats = daemon.stats().await;
    assert_eq!(stats["counters"]["rejected"]["too_large"], 4, "{stats}");
    assert_eq!(stats["queue"]["queued"], 0, "{stats}");
}

#[tokio::test]
async fn every_described_operation_is_served_and_every_served_route_is_described() {
    let (daemon, _tokens) = start_with_tokens(&[]);
    let document: Value =
        daemon.client.get(daemon.url("/v1/openapi.json")).send().await.expect("GET").json().await.expect("JSON");
    assert!(document["openapi"].as_str().is_some_and(|version| version.starts_with("3.1")));
    let paths = document["paths"].as_object().expect("paths");
    let mut operations = 0;
    for (path, item) in paths {
        let concrete = path.replace("{id}", "01890f3a-0000-7000-8000-000000000000");
        for (method, operation) in item.as_object().expect("path item") {
            let secured = operation["security"].as_array().is_some_and(|list| !list.is_empty());
            let body = json!({"kind": "noop"});
            let status = send(&daemon, &method.to_uppercase(), &concrete, None, Some(&body)).await.status();
            // Without a token a secured operation is refused by its check, an open one served.
            let expected = if secured { 401 } else { 200 };
            assert_eq!(status, expected, "{method} {path}");
            operations += 1;
        }
    }
    assert_eq!(operations, 16, "{paths:?}");
    // A method the description does not list is a 405 naming the ones it does.
    let response = send(&daemon, "PUT", "/v1/jobs", Some(ALL_TOKEN), None).await;
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers().get("allow").and_then(|v| v.to_str().ok()), Some("GET, POST"));
}

/// schemathesis (PyPI) generates requests from `/v1/openapi.json` against the live
/// daemon: no answer may be a 5xx, and every answer must match the description (status,
/// content type, body schema). scripts/test.sh installs it.
#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_description() {
    let (daemon, _tokens) = start_with_tokens(&[("JOBD_TEST_KINDS", "0")]);
    let work = tempfile::tempdir().expect("tempdir");
    let config = work.path().join("schemathesis.toml");
    // No crash cache or hypothesis database in the checkout.
    std::fs::write(&config, "[cache]\nenabled = false\n").expect("write config");
    let examples = std::env::var("JOBD_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "25".to_owned());
    let mut command = std::process::Command::new("schemathesis");
    command
        .current_dir(work.path())
        .env("HYPOTHESIS_STORAGE_DIRECTORY", work.path().join("hypothesis"))
        .env("NO_COLOR", "1")
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(daemon.url("/v1/openapi.json"))
        .args(["-H", &format!("Authorization: Bearer {ALL_TOKEN}")])
        .args(["-n", &examples])
        .args(["-c", "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance"])
        .args(["--seed", "42", "--generation-deterministic", "--request-timeout", "10", "--no-color"])
        .stdin(std::process::Stdio::null());
    // The daemon runs in its own process, so blocking this test's thread is harmless.
    let output = command.output().expect("run schemathesis (scripts/test.sh installs it with pip)");
    let report = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    eprintln!("{report}");
    assert!(output.status.success(), "schemathesis found problems:\n{report}");
    assert!(report.contains("passed"), "{report}");
    assert_eq!(daemon.client.get(daemon.url("/healthz")).send().await.expect("GET").status(), 200);
}
