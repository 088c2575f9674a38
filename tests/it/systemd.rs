//! jobd under systemd's protocols, with real sockets and the real `systemd-analyze`:
//! readiness, status, watchdog and stopping notifications on path and abstract sockets,
//! the watchdog stopping when the Dispatcher wedges, the unit file's validity and its
//! sandbox exposure, and the systemd directories.

use crate::common;

use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::{Daemon, accepted_ids};
use serde_json::json;

/// Notifications received: when, and what.
type Received = Arc<Mutex<Vec<(Instant, SystemTime, String)>>>;

/// Collects every datagram on `socket` until dropped.
struct NotifyListener {
    received: Received,
    stop: Arc<AtomicBool>,
}

impl NotifyListener {
    fn start(socket: UnixDatagram) -> NotifyListener {
        socket.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
        let received: Received = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (sink, done) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buffer = [0; 4096];
            while !done.load(Ordering::Relaxed) {
                if let Ok(length) = socket.recv(&mut buffer) {
                    let text = String::from_utf8_lossy(&buffer[..length]).into_owned();
                    sink.lock().expect("lock").push((Instant::now(), SystemTime::now(), text));
                }
            }
        });
        NotifyListener { received, stop }
    }

    fn messages(&self, prefix: &str) -> Vec<(Instant, SystemTime, String)> {
        self.received.lock().expect("lock").iter().filter(|(_, _, text)| text.starts_with(prefix)).cloned().collect()
    }

    async fn wait_for(&self, message: &str) -> (Instant, SystemTime) {
        let deadline = Instant::now() + common::WAIT_DEADLINE;
        loop {
            if let Some((at, wall, _)) = self.messages(message).first() {
                return (*at, *wall);
            }
            assert!(Instant::now() < deadline, "no {message} notification");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for NotifyListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn notify_protocol(socket_name: &str, socket: UnixDatagram) {
    let listener = NotifyListener::start(socket);
    let mut daemon = Daemon::start(&[("NOTIFY_SOCKET", socket_name), ("WATCHDOG_USEC", "2000000")]);
    let (_, ready_wall) = listener.wait_for("READY=1").await;
    let listening = daemon.wait_for_logs("listening", 1, |record| record["message"] == "jobd listening").await;
    let bound_at: SystemTime = chrono::DateTime::parse_from_rfc3339(listening[0]["timestamp"].as_str().expect("ts"))
        .expect("timestamp")
        .to_utc()
        .into();
    assert!(bound_at <= ready_wall, "READY=1 came before the listener was bound");
    let ready = daemon.client.get(daemon.url("/readyz")).send().await.expect("readyz");
    assert_eq!(ready.status(), 200, "ready means ready");

    // Watchdog pings every second (half of WATCHDOG_USEC) and status lines.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let pings = listener.messages("WATCHDOG=1").len();
    assert!((3..=8).contains(&pings), "{pings} watchdog pings in about 3.5 s");
    let statuses = listener.messages("STATUS=");
    assert!(!statuses.is_empty(), "no STATUS= line");
    assert!(statuses.iter().all(|(_, _, line)| line.contains("queued") && line.contains("workers")), "{statuses:?}");

    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit().code(), Some(0));
    assert_eq!(listener.messages("STOPPING=1").len(), 1);
}

#[tokio::test]
async fn notifications_on_a_path_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind");
    notify_protocol(path.to_str().expect("utf-8"), socket).await;
}

#[tokio::test]
async fn notifications_on_an_abstract_socket() {
    let name = format!("jobd-test-{}-{}", std::process::id(), fastrand::u64(..));
    let address = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract address");
    let socket = UnixDatagram::bind_addr(&address).expect("bind");
    notify_protocol(&format!("@{name}"), socket).await;
}

#[tokio::test]
async fn a_wedged_dispatcher_stops_the_watchdog_pings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify.sock");
    let listener = NotifyListener::start(UnixDatagram::bind(&path).expect("bind"));
    let daemon = Daemon::start(&[("NOTIFY_SOCKET", path.to_str().expect("utf-8")), ("WATCHDOG_USEC", "1000000")]);
    listener.wait_for("READY=1").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // This test kind blocks the thread the Dispatcher runs on for three seconds.
    let wedge = json!({"kind": "sleep", "payload": {"ms": 3000, "in_worker": true}});
    accepted_ids(daemon.post_json("/v1/jobs", &wedge).await).await;
    daemon.wait_for("the wedge over", |stats| stats["counters"]["jobs"]["succeeded"] == 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pings: Vec<Instant> = listener.messages("WATCHDOG=1").into_iter().map(|(at, _, _)| at).collect();
    let gaps: Vec<Duration> = pings.windows(2).map(|pair| pair[1] - pair[0]).collect();
    let longest = gaps.iter().max().copied().unwrap_or_default();
    println!("watchdog gaps: {gaps:?}");
    assert!(longest >= Duration::from_millis(2500), "the pings did not stop: longest gap {longest:?}");
    assert!(
        gaps.iter().filter(|gap| **gap < Duration::from_millis(1000)).count() >= 3,
        "regular pings before and after"
    );
}

fn unit_with_built_binary() -> (tempfile::TempDir, PathBuf) {
    let unit = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/jobd.service"))
        .expect("read unit");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("jobd.service");
    std::fs::write(&path, unit.replace("/usr/bin/jobd", env!("CARGO_BIN_EXE_jobd"))).expect("write unit");
    (dir, path)
}

fn systemd_analyze(args: &[&str]) -> std::process::Output {
    Command::new("systemd-analyze")
        .args(args)
        .output()
        .expect("systemd-analyze is not installed; `bash scripts/test.sh` installs the Debian package systemd")
}

#[test]
fn the_unit_verifies_and_its_sandbox_exposure_is_at_most_2() {
    let (_dir, unit) = unit_with_built_binary();
    let unit = unit.to_str().expect("utf-8");
    let verify = systemd_analyze(&["verify", unit]);
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success() && complaints.trim().is_empty(), "systemd-analyze verify:\n{complaints}");

    let security = systemd_analyze(&["security", "--offline=true", "--threshold=20", unit]);
    let report = String::from_utf8_lossy(&security.stdout);
    assert!(security.status.success(), "systemd-analyze security:\n{report}");
    let score: f64 = report
        .lines()
        .find_map(|line| line.split("Overall exposure level for jobd.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .expect("an exposure score");
    println!("systemd-analyze security exposure: {score}");
    assert!(score <= 2.0, "exposure {score} is above 2.0:\n{report}");
}

#[test]
fn systemd_directories_set_the_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let configuration = dir.path().join("etc");
    std::fs::create_dir_all(&configuration).expect("mkdir");
    std::fs::write(configuration.join("jobd.toml"), "max_workers = 9\n").expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_jobd"))
        .arg("check-config")
        .env_remove("JOBD_DATA_DIR")
        .env_remove("JOBD_CONFIG")
        .env("STATE_DIRECTORY", &state)
        .env("CONFIGURATION_DIRECTORY", &configuration)
        .output()
        .expect("run jobd");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(text.contains(&format!("data_dir = \"{}\"", state.display())), "{text}");
    assert!(text.contains("max_workers = 9"), "{text}");
}

#[test]
fn the_tokens_credential_is_the_default_token_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let credentials = dir.path().join("credentials");
    std::fs::create_dir_all(&credentials).expect("mkdir");
    std::fs::write(credentials.join("tokens"), "ops submit 0123456789abcdef0123456789abcdef\n").expect("write");
    let check = |credentials_dir: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_jobd"))
            .args(["check-config", "--listen", "0.0.0.0:8080"])
            .env_remove("JOBD_TOKENS_FILE")
            .env_remove("JOBD_CONFIG")
            .env("JOBD_DATA_DIR", dir.path().join("state"))
            .env("CREDENTIALS_DIRECTORY", credentials_dir)
            .output()
            .expect("run jobd")
    };
    // With the credential, a public listener is allowed, and the file is the one named.
    let output = check(&credentials);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains(&format!("tokens_file = \"{}\"", credentials.join("tokens").display())), "{text}");
    // Without it, the same listener is refused for lack of tokens.
    let empty = dir.path().join("no-credentials");
    std::fs::create_dir_all(&empty).expect("mkdir");
    assert!(!check(&empty).status.success());
}
