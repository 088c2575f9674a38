//! The webhook receiver of the tests (`tests/webhook_receiver.py`), which verifies every
//! delivery with the official Standard Webhooks library and records what it saw.

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

/// The receiver, killed when dropped.
pub struct Receiver {
    child: Child,
    port: u16,
    /// `https` when it serves TLS.
    scheme: &'static str,
    client: reqwest::Client,
}

/// A receiver's certificate chain and key, and a client that trusts its CA.
pub struct ReceiverTls<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
    pub client: reqwest::Client,
}

impl Receiver {
    pub fn start(secrets: &[&str]) -> Receiver {
        Self::start_with(secrets, None)
    }

    pub fn start_with(secrets: &[&str], tls: Option<ReceiverTls<'_>>) -> Receiver {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/webhook_receiver.py");
        let mut command = Command::new("python3");
        command.arg(script).stdout(Stdio::piped()).stderr(Stdio::inherit());
        for secret in secrets {
            command.args(["--secret", secret]);
        }
        if let Some(tls) = &tls {
            command.arg("--tls-cert").arg(tls.cert).arg("--tls-key").arg(tls.key);
        }
        let mut child = command.spawn().expect("python3 runs the receiver");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("the port");
        let port = line.trim().parse().unwrap_or_else(|_| panic!("the receiver did not start: {line:?}"));
        match tls {
            Some(tls) => Receiver { child, port, scheme: "https", client: tls.client },
            None => Receiver { child, port, scheme: "http", client: reqwest::Client::new() },
        }
    }

    pub fn url(&self, path: &str) -> String {
        // Over TLS by `localhost`, the name its certificate carries.
        let host = if self.scheme == "https" { "localhost" } else { "127.0.0.1" };
        format!("{}://{host}:{}{path}", self.scheme, self.port)
    }

    pub async fn seen(&self) -> Vec<Value> {
        let response = self.client.get(self.url("/seen")).send().await.expect("GET /seen");
        response.json().await.expect("JSON")
    }

    pub async fn seen_at(&self, path: &str) -> Vec<Value> {
        self.seen().await.into_iter().filter(|delivery| delivery["path"] == path).collect()
    }

    pub async fn set_switch(&self, status: u16) {
        let response = self.client.post(self.url("/control")).json(&json!({"switch": status})).send().await;
        assert_eq!(response.expect("POST /control").status(), 204);
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
