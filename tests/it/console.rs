//! The operator's console at `/ui`: its headers and the API it relies on over plain HTTP,
//! then the page itself in headless Chromium driven through chromedriver (WebDriver).

use crate::common;

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "0123456789abcdef0123456789abcdef";
const READ_TOKEN: &str = "fedcba9876543210fedcba9876543210";
/// Markup in a payload and an error message, which the console must show as text.
const HOSTILE: &str = r#"<script>alert(1)</script><img src=x onerror="window.pwned=1">"#;

fn start_with_tokens() -> (common::Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("ops submit,read,admin {ADMIN_TOKEN}\nviewer read {READ_TOKEN}\n"))
        .expect("tokens");
    // A webhook destination, for the overview's table of destinations; nothing is sent to it.
    let config = dir.path().join("jobd.toml");
    std::fs::write(
        &config,
        "[webhooks.billing]\nurl = \"http://127.0.0.1:9/hook\"\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n\n\
         [queues.bulk]\nconcurrency = 3\n",
    )
    .expect("config");
    let daemon = common::Daemon::start(&[
        ("JOBD_TOKENS_FILE", tokens.to_str().expect("utf-8")),
        ("JOBD_CONFIG", config.to_str().expect("utf-8")),
    ]);
    (daemon, dir)
}

async fn call(
    daemon: &common::Daemon,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = daemon.client.request(method, daemon.url(path)).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn submit(daemon: &common::Daemon, job: Value) -> String {
    let (status, answer) = call(daemon, reqwest::Method::POST, "/v1/jobs", ADMIN_TOKEN, Some(job)).await;
    assert_eq!(status, 202, "{answer}");
    answer["jobs"][0]["id"].as_str().expect("an id").to_owned()
}

async fn wait_dead(daemon: &common::Daemon, id: &str) {
    let deadline = Instant::now() + common::WAIT_DEADLINE;
    loop {
        let (_, record) = call(daemon, reqwest::Method::GET, &format!("/v1/jobs/{id}"), ADMIN_TOKEN, None).await;
        if record["state"] == "dead" {
            return;
        }
        assert!(Instant::now() < deadline, "job {id} never died: {record}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The page and its assets are served with a policy that allows no inline script, the page
/// holds none, and the bulk retry and whoami routes the console uses answer as documented.
#[tokio::test]
async fn the_console_is_served_strictly_and_its_api_works() {
    let (daemon, _dir) = start_with_tokens();
    let page = daemon.client.get(daemon.url("/ui")).send().await.expect("GET /ui");
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"].to_str().expect("ascii").to_owned();
    assert!(policy.contains("script-src 'self'") && !policy.contains("unsafe"), "{policy}");
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    let html = page.text().await.expect("body");
    assert_eq!(html.matches("<script").count(), html.matches("<script src=\"/ui/app.js\"").count(), "no inline script");
    let inline_handler = html.split_whitespace().any(|word| {
        word.strip_prefix("on")
            .and_then(|rest| rest.split_once('='))
            .is_some_and(|(name, _)| !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase()))
    });
    assert!(!inline_handler, "no inline event handlers");
    for asset in ["/ui/app.js", "/ui/app.css"] {
        let response = daemon.client.get(daemon.url(asset)).send().await.expect("asset");
        assert_eq!(response.status(), 200, "{asset}");
    }
    let script = daemon.client.get(daemon.url("/ui/app.js")).send().await.expect("js").text().await.expect("js");
    for markup_sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "DOMParser", "eval("] {
        assert!(!script.contains(markup_sink), "the script renders text only, yet uses {markup_sink}");
    }
    assert!(policy.contains("require-trusted-types-for 'script'"), "the browser enforces it: {policy}");

    let (status, me) = call(&daemon, reqwest::Method::GET, "/v1/whoami", READ_TOKEN, None).await;
    assert_eq!((status, me["name"].as_str(), me["scopes"].clone()), (200, Some("viewer"), json!(["read"])));

    // Three dead `fail` jobs and two dead `panic` jobs.
    let mut ids = Vec::new();
    for kind in ["fail", "fail", "fail", "panic", "panic"] {
        ids.push(submit(&daemon, json!({"kind": kind, "max_attempts": 1})).await);
    }
    for id in &ids {
        wait_dead(&daemon, id).await;
    }
    let (_, listed) = call(&daemon, reqwest::Method::GET, "/v1/jobs?state=dead&kind=panic", READ_TOKEN, None).await;
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(2), "{listed}");
    assert!(listed["jobs"].as_array().into_iter().flatten().all(|job| job["kind"] == "panic"));

    let post = reqwest::Method::POST;
    let (status, counted) =
        call(&daemon, post.clone(), "/v1/jobs/retry?kind=fail&dry_run=true", ADMIN_TOKEN, None).await;
    let fail_ids: Vec<Value> = ids[..3].iter().rev().map(|id| json!(id)).collect();
    assert_eq!((status, counted.clone()), (200, json!({"matched": 3, "ids": fail_ids, "retried": 0, "more": false})));
    let (_, first) =
        call(&daemon, post.clone(), "/v1/jobs/retry?kind=fail&limit=2&dry_run=true", ADMIN_TOKEN, None).await;
    assert_eq!((&first["matched"], &first["more"]), (&json!(2), &json!(true)), "{first}");

    // What was counted is what is retried: a `fail` job that dies after the count is not.
    let confirmed = json!({"ids": first["ids"].clone()});
    let late = submit(&daemon, json!({"kind": "fail", "max_attempts": 1})).await;
    wait_dead(&daemon, &late).await;
    let (_, late_before) = call(&daemon, reqwest::Method::GET, &format!("/v1/jobs/{late}"), ADMIN_TOKEN, None).await;
    let (status, done) = call(&daemon, post.clone(), "/v1/jobs/retry?kind=fail", ADMIN_TOKEN, Some(confirmed)).await;
    assert_eq!((status, done), (200, json!({"matched": 2, "retried": 2, "more": false})));
    let (_, late_record) = call(&daemon, reqwest::Method::GET, &format!("/v1/jobs/{late}"), ADMIN_TOKEN, None).await;
    assert_eq!(
        (&late_record["state"], &late_record["finished_at"]),
        (&json!("dead"), &late_before["finished_at"]),
        "the job that died after the count was left alone: {late_record}"
    );
    // Each id once, only dead jobs, only of the kind asked for; an unknown id is skipped.
    let unknown = "01890f3a-0000-7000-8000-000000000000";
    let waiting = submit(&daemon, json!({"kind": "fail", "delay_ms": 3_600_000})).await;
    let chosen = json!({"ids": [late, late, unknown, waiting]});
    let (_, counted) =
        call(&daemon, post.clone(), "/v1/jobs/retry?kind=fail&dry_run=true", ADMIN_TOKEN, Some(chosen.clone())).await;
    assert_eq!(counted["ids"], json!([late]), "a job that is not dead is not retried: {counted}");
    let (_, other_kind) =
        call(&daemon, post.clone(), "/v1/jobs/retry?kind=panic&dry_run=true", ADMIN_TOKEN, Some(chosen)).await;
    assert_eq!(other_kind["matched"], 0, "{other_kind}");
    let bad = json!({"ids": ["not-an-id"]});
    let (status, problem) = call(&daemon, post.clone(), "/v1/jobs/retry", ADMIN_TOKEN, Some(bad)).await;
    assert_eq!((status, &problem["errors"][0]["field"]), (400, &json!("ids[0]")), "{problem}");
    let (status, done) = call(&daemon, post.clone(), "/v1/jobs/retry?kind=panic", ADMIN_TOKEN, None).await;
    assert_eq!((status, done), (200, json!({"matched": 2, "retried": 2, "more": false})));
    let (status, _) = call(&daemon, post.clone(), "/v1/jobs/retry?kind=fail", READ_TOKEN, None).await;
    assert_eq!(status, 403, "a bulk retry needs the admin scope");
    let (status, problem) = call(&daemon, post.clone(), "/v1/jobs/retry?limit=0", ADMIN_TOKEN, None).await;
    assert_eq!(status, 400);
    assert_eq!(problem["errors"][0]["field"], "limit", "{problem}");
    let (status, problem) = call(&daemon, post, "/v1/jobs/retry?state=queued", ADMIN_TOKEN, None).await;
    assert_eq!((status, &problem["errors"][0]["field"]), (400, &json!("state")), "only dead jobs are retried");
}

/// Without tokens, a browser's write sent from another site, or from another origin of the
/// same site, is refused, so that a page elsewhere cannot make the operator's browser
/// retry or submit; the same request from a
/// non-browser client, and a cross-site read, still work.
#[tokio::test]
async fn without_tokens_cross_site_browser_writes_are_refused() {
    let daemon = common::Daemon::start(&[]);
    let send = |site: Option<&str>, method: reqwest::Method, path: &str| {
        let mut request = daemon.client.request(method, daemon.url(path));
        if let Some(site) = site {
            request = request.header("sec-fetch-site", site);
        }
        request
    };
    let job = json!({"kind": "noop"});
    let cross = send(Some("cross-site"), reqwest::Method::POST, "/v1/jobs").json(&job).send().await.expect("post");
    assert_eq!(cross.status(), 403);
    let problem: Value = cross.json().await.expect("problem");
    assert_eq!(problem["type"], "/problems/cross-site", "{problem}");
    let retry = send(Some("cross-site"), reqwest::Method::POST, "/v1/jobs/retry").send().await.expect("retry");
    assert_eq!(retry.status(), 403);
    // A page on another port of the same host is `same-site`, not `same-origin`.
    let same_site = send(Some("same-site"), reqwest::Method::POST, "/v1/jobs/retry").send().await.expect("retry");
    assert_eq!(same_site.status(), 403, "a page on 127.0.0.1:<another port> may not retry jobs");
    for site in [Some("same-origin"), Some("none"), None] {
        let response = send(site, reqwest::Method::POST, "/v1/jobs").json(&job).send().await.expect("post");
        assert_eq!(response.status(), 202, "{site:?}");
    }
    let read = send(Some("cross-site"), reqwest::Method::GET, "/v1/stats").send().await.expect("get");
    assert_eq!(read.status(), 200, "a read cannot be seen cross-site without CORS, and changes nothing");
}

/// chromedriver on a free port, stopped when dropped.
struct Driver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Driver {
    fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver (scripts/test.sh installs Debian's chromium-driver)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver { child, port, _profile: tempfile::tempdir().expect("profile dir") }
    }

    async fn browser(&self) -> Client {
        // The flags keep Chromium off the network it cannot reach here, as root.
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                    "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--window-size=1280,900", format!("--user-data-dir={}", self._profile.path().display())]
            }
        });
        let Value::Object(capabilities) = capabilities else { unreachable!("an object") };
        ClientBuilder::rustls()
            .expect("rustls")
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a WebDriver session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls the text of `css` until `done` holds for it.
async fn wait_text(browser: &Client, css: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + common::WAIT_DEADLINE;
    loop {
        if let Ok(element) = browser.find(Locator::Css(css)).await
            && let Ok(text) = element.text().await
            && done(&text)
        {
            return text;
        }
        if Instant::now() > deadline {
            let shown = match browser.find(Locator::Css(css)).await {
                Ok(element) => element.text().await.unwrap_or_default(),
                Err(_) => "(absent)".to_owned(),
            };
            let message = browser.execute("return document.getElementById('message').textContent", vec![]).await;
            panic!("{css} never showed what was expected: it shows {shown:?}; the message line: {message:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the job page shows job `id` in `state`.
async fn open_job(browser: &Client, id: &str, state: &str) {
    wait_text(browser, "#job-id", |text| text == id).await;
    wait_text(browser, "#job-state", |text| text == state).await;
}

async fn click(browser: &Client, css: &str) {
    browser.wait().for_element(Locator::Css(css)).await.expect(css).click().await.expect("click");
}

fn screenshot_path(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&dir).expect("target dir");
    dir.join(name)
}

async fn sign_in(browser: &Client, token: &str) {
    // The field exists from the start, but is shown only once the page knows it needs a token.
    let field = browser.wait().for_element(Locator::Id("login-token")).await.expect("the login field");
    let deadline = Instant::now() + common::WAIT_DEADLINE;
    while !field.is_displayed().await.expect("displayed?") {
        assert!(Instant::now() < deadline, "the login form never showed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    field.send_keys(token).await.expect("type the token");
    click(browser, "#login-button").await;
    wait_text(browser, "#who-name", |text| !text.is_empty()).await;
}

/// The console in a real browser: sign in, the overview's depth as `/v1/stats` reports it,
/// a dead job opened and retried until it succeeds, markup shown as text and never run, a
/// bulk retry after its confirmation, and a read-only token whose actions are disabled.
#[tokio::test(flavor = "multi_thread")]
async fn the_console_works_in_a_browser() {
    let (daemon, _dir) = start_with_tokens();
    // A file where the upload's first directory belongs makes the upload fail, as a full
    // or broken disk would; removing it lets the retry succeed.
    std::fs::create_dir_all(daemon.objects_dir()).expect("objects dir");
    let blocker = daemon.objects_dir().join("payloads");
    std::fs::write(&blocker, b"in the way").expect("blocker");
    let upload = submit(&daemon, json!({"kind": "upload", "max_attempts": 1, "payload": {"note": HOSTILE}})).await;
    let hostile = submit(
        &daemon,
        json!({"kind": "fail", "max_attempts": 1, "payload": {"message": HOSTILE, "retryable": false}}),
    )
    .await;
    wait_dead(&daemon, &upload).await;
    wait_dead(&daemon, &hostile).await;
    // A few seconds of the server's history, which the console draws from at once.
    let deadline = Instant::now() + common::WAIT_DEADLINE;
    loop {
        let (_, stats) = call(&daemon, reqwest::Method::GET, "/v1/stats?history=true", ADMIN_TOKEN, None).await;
        if stats["history"].as_array().is_some_and(|history| history.len() >= 5) {
            break;
        }
        assert!(Instant::now() < deadline, "no history: {stats}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let driver = Driver::start();
    let browser = driver.browser().await;
    browser.goto(&daemon.url("/ui")).await.expect("open the console");
    sign_in(&browser, ADMIN_TOKEN).await;
    assert_eq!(browser.execute("return document.cookie", vec![]).await.expect("cookie"), json!(""));
    let stored = browser.execute("return sessionStorage.getItem('jobd-token')", vec![]).await.expect("session");
    assert_eq!(stored, json!(ADMIN_TOKEN), "the token lives in the tab's session storage only");
    assert_eq!(browser.execute("return localStorage.length", vec![]).await.expect("local"), json!(0));

    // The overview shows the depth /v1/stats reports, with thousands separated, and its
    // rates from the first reading on: the server's history seeds them.
    wait_text(&browser, "#depth-dead", |text| text == "2").await;
    let rate = browser.find(Locator::Id("rate-submitted")).await.expect("rate").text().await.expect("text");
    assert_ne!(rate, "-", "the first reading shows a rate");
    let points = browser.execute("return samples.length", vec![]).await.expect("samples");
    assert!(points.as_u64().is_some_and(|points| points >= 3), "the chart was seeded: {points}");
    let (_, stats) = call(&daemon, reqwest::Method::GET, "/v1/stats", ADMIN_TOKEN, None).await;
    for state in ["queued", "scheduled", "running", "failed", "dead", "capacity"] {
        let shown = wait_text(&browser, &format!("#depth-{state}"), |text| text != "-").await;
        assert_eq!(shown.replace(',', ""), stats["queue"][state].to_string(), "{state}");
    }
    assert_eq!(wait_text(&browser, "#depth-capacity", |text| text != "-").await, "1,000,000");
    assert_eq!(wait_text(&browser, "#jobs-dead", |text| text != "-").await, "2", "this node's dead jobs");
    let destinations = wait_text(&browser, "#destinations-table tbody", |text| !text.is_empty()).await;
    assert!(destinations.contains("billing") && destinations.contains("closed"), "{destinations}");
    assert_eq!(wait_text(&browser, "#ready", |text| text != "-").await, "yes");
    std::fs::write(screenshot_path("console-overview.png"), browser.screenshot().await.expect("png")).expect("save");
    // A phone-sized window: nothing overflows sideways.
    browser.set_window_size(390, 844).await.expect("resize");
    let fits = browser.execute("return document.documentElement.scrollWidth <= window.innerWidth", vec![]).await;
    assert_eq!(fits.expect("measure"), json!(true), "the overview fits a phone's width");
    std::fs::write(screenshot_path("console-overview-phone.png"), browser.screenshot().await.expect("png"))
        .expect("save");
    browser.set_window_size(1280, 900).await.expect("resize");

    // The dead jobs, with the hostile error shown as text.
    click(&browser, "#nav-dead").await;
    wait_text(&browser, "#jobs-table tbody", |text| text.contains(&upload) && text.contains(&hostile)).await;
    let rows = browser.find_all(Locator::Css("#jobs-table tbody tr")).await.expect("rows");
    assert_eq!(rows.len(), 2);
    let table = wait_text(&browser, "#jobs-table tbody", |_| true).await;
    assert!(table.contains("<script>alert(1)</script>"), "the error shows as text: {table}");
    assert!(table.contains("ops"), "each row names the token that submitted it: {table}");
    let kinds =
        browser.execute("return [...document.querySelectorAll('#filter-kind option')].map(o => o.value)", vec![]);
    let kinds = kinds.await.expect("the kind filter");
    for kind in ["", "upload", "webhook", "noop", "fail"] {
        assert!(kinds.as_array().is_some_and(|offered| offered.contains(&json!(kind))), "{kind} not offered: {kinds}");
    }
    std::fs::write(screenshot_path("console-dead-jobs.png"), browser.screenshot().await.expect("png")).expect("save");

    // The failed job's page, opened by its id from the box in the header: its error as
    // text; the upload's page: its payload as text. Nothing of either ran.
    browser.find(Locator::Id("goto-id")).await.expect("the id box").send_keys(&hostile).await.expect("type the id");
    click(&browser, "#goto-button").await;
    open_job(&browser, &hostile, "dead").await;
    assert_eq!(wait_text(&browser, "#last-error", |text| text != "(none)" && !text.is_empty()).await, HOSTILE);
    std::fs::remove_file(&blocker).expect("remove the blocker");
    browser.goto(&daemon.url(&format!("/ui#/job/{upload}"))).await.expect("open the job");
    open_job(&browser, &upload, "dead").await;
    // A dead upload names the key it failed to write.
    let (_, dead_upload) = call(&daemon, reqwest::Method::GET, &format!("/v1/jobs/{upload}"), ADMIN_TOKEN, None).await;
    let target = dead_upload["target"].as_str().expect("a dead upload's target").to_owned();
    assert!(target.starts_with("payloads/") && target.ends_with(&format!("/{upload}.json")), "{dead_upload}");
    let record = wait_text(&browser, "#job-record", |text| text.contains("target")).await;
    assert!(record.contains(&target), "the page shows the target key: {record}");
    click(&browser, "#payload-button").await;
    let payload = wait_text(&browser, "#payload", |text| text.contains("note")).await;
    assert_eq!(serde_json::from_str::<Value>(&payload).expect("the payload as JSON text"), json!({"note": HOSTILE}));
    let scripts = browser.execute("return [document.scripts.length, window.pwned === undefined]", vec![]).await;
    assert_eq!(scripts.expect("inspect"), json!([1, true]), "only the console's own script exists and nothing ran");
    assert!(browser.get_alert_text().await.is_err(), "no alert opened");

    // Retried from its page now that the disk is fixed, the upload succeeds.
    let retry = browser.find(Locator::Id("retry-button")).await.expect("retry button");
    assert!(retry.is_enabled().await.expect("enabled?"), "an admin may retry a dead job");
    retry.click().await.expect("click retry");
    wait_text(&browser, "#message", |text| text.starts_with("Retried job")).await;
    let deadline = Instant::now() + common::WAIT_DEADLINE;
    loop {
        browser.refresh().await.expect("reload");
        if wait_text(&browser, "#job-state", |text| !text.is_empty()).await == "succeeded" {
            break;
        }
        assert!(Instant::now() < deadline, "the retried upload never succeeded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, done) = call(&daemon, reqwest::Method::GET, &format!("/v1/jobs/{upload}"), ADMIN_TOKEN, None).await;
    assert_eq!(done["result"]["key"].as_str(), Some(target.as_str()), "the target was the key: {done}");

    // Retry every dead `fail` job, after a confirmation that says how many.
    browser.goto(&daemon.url("/ui#/jobs?state=dead&kind=fail")).await.expect("filtered list");
    wait_text(&browser, "#jobs-table tbody", |text| text.contains(&hostile)).await;
    click(&browser, "#bulk-retry").await;
    assert_eq!(wait_text(&browser, "#confirm-text", |text| !text.is_empty()).await, "Retry 1 dead job of kind fail?");
    click(&browser, "#confirm-ok").await;
    wait_text(&browser, "#message", |text| text == "Retried 1 of 1 dead jobs.").await;

    // The queues page: pausing `bulk` holds its new job, resuming runs it.
    click(&browser, "#nav-queues").await;
    let bulk_row = "#queues-table tbody tr[data-queue=\"bulk\"]";
    let row = wait_text(&browser, bulk_row, |text| text.contains("running")).await;
    assert!(row.starts_with("bulk") && row.contains('3'), "the row shows the queue and its concurrency: {row}");
    click(&browser, &format!("{bulk_row} button")).await;
    wait_text(&browser, "#message", |text| text == "Paused queue bulk.").await;
    wait_text(&browser, bulk_row, |text| text.contains("paused")).await;
    let (_, queues) = call(&daemon, reqwest::Method::GET, "/v1/queues", ADMIN_TOKEN, None).await;
    let listed = queues["queues"].as_array().expect("queues").iter().find(|queue| queue["name"] == "bulk").cloned();
    assert_eq!(listed.expect("bulk listed")["paused"], true, "{queues}");
    let held = submit(&daemon, json!({"kind": "noop", "queue": "bulk"})).await;
    wait_text(&browser, bulk_row, |text| text.contains("paused") && text.contains('1')).await;
    let (_, record) = call(&daemon, reqwest::Method::GET, &format!("/v1/jobs/{held}"), ADMIN_TOKEN, None).await;
    assert_eq!(record["state"], "queued", "a paused queue's job waits: {record}");
    std::fs::write(screenshot_path("console-queues.png"), browser.screenshot().await.expect("png")).expect("save");
    click(&browser, &format!("{bulk_row} button")).await;
    wait_text(&browser, "#message", |text| text == "Resumed queue bulk.").await;
    let deadline = Instant::now() + common::WAIT_DEADLINE;
    loop {
        let (_, record) = call(&daemon, reqwest::Method::GET, &format!("/v1/jobs/{held}"), ADMIN_TOKEN, None).await;
        if record["state"] == "succeeded" {
            break;
        }
        assert!(Instant::now() < deadline, "the resumed queue's job never ran: {record}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A read-only token: the actions are there, and disabled.
    click(&browser, "#sign-out").await;
    sign_in(&browser, READ_TOKEN).await;
    // The hostile job is dead again (its retry failed): a retry an admin could make.
    wait_dead(&daemon, &hostile).await;
    browser.goto(&daemon.url(&format!("/ui#/job/{hostile}"))).await.expect("open the job");
    open_job(&browser, &hostile, "dead").await;
    let note = wait_text(&browser, "#actions-note", |text| !text.is_empty()).await;
    assert!(note.contains("admin scope"), "the page says why: {note}");
    for button in ["retry-button", "cancel-button"] {
        let element = browser.find(Locator::Id(button)).await.expect(button);
        assert!(element.is_displayed().await.expect("displayed?"), "{button} is shown");
        assert!(!element.is_enabled().await.expect("enabled?"), "{button} is disabled for a read-only token");
    }
    browser.goto(&daemon.url("/ui#/jobs?state=dead")).await.expect("dead list");
    wait_text(&browser, "#jobs-table tbody", |_| true).await;
    let bulk = browser.find(Locator::Id("bulk-retry")).await.expect("bulk retry");
    assert!(!bulk.is_enabled().await.expect("enabled?"));
    browser.goto(&daemon.url("/ui#/queues")).await.expect("queues");
    let note = wait_text(&browser, "#queues-note", |text| !text.is_empty()).await;
    assert!(note.contains("admin scope"), "the page says why: {note}");
    let pause = browser.find(Locator::Css("#queues-table tbody tr[data-queue=\"bulk\"] button")).await.expect("pause");
    assert!(!pause.is_enabled().await.expect("enabled?"), "a read-only token cannot pause");
    browser.close().await.expect("close the session");
}
