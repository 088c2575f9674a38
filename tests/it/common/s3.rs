//! S3 test parts: a real S3-protocol server (`moto_server` from PyPI) on a free loopback
//! port, a client to read what jobd wrote, and a fault-injecting HTTP proxy in front of
//! the server that can fail chosen requests or go down entirely, like an S3 outage.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt as _;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::{ObjectStore, ObjectStoreExt as _};

/// The secret key jobd is given; moto accepts any, and tests check it never shows up.
pub const SECRET: &str = "jobd-test-secret-d41d8cd98f00";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr()).expect("free port").port()
}

/// A `moto_server` process, killed when dropped.
pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Moto {
    pub async fn start() -> Moto {
        Self::launch(false).await
    }

    /// A server that checks credentials: unknown access keys get `InvalidAccessKeyId`.
    pub async fn start_authenticated() -> Moto {
        Self::launch(true).await
    }

    async fn launch(authenticated: bool) -> Moto {
        let port = free_port();
        let mut command = Command::new("moto_server");
        if authenticated {
            command.env("INITIAL_NO_AUTH_ACTION_COUNT", "0");
        }
        let child = command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server is not installed; `bash scripts/test.sh` installs moto[server] with pip");
        let moto = Moto { child, endpoint: format!("http://127.0.0.1:{port}") };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + super::WAIT_DEADLINE;
        while client.get(&moto.endpoint).send().await.is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        moto
    }

    pub async fn create_bucket(&self, bucket: &str) {
        let response =
            reqwest::Client::new().put(format!("{}/{bucket}", self.endpoint)).send().await.expect("PUT bucket");
        assert!(response.status().is_success(), "create bucket: {}", response.status());
    }

    /// A client for reading what jobd wrote to `bucket`.
    pub fn client(&self, bucket: &str) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .with_allow_http(true)
            .build()
            .expect("S3 client")
    }

    /// Every key in the bucket.
    pub async fn keys(&self, bucket: &str) -> Vec<String> {
        let client = self.client(bucket);
        let objects: Vec<_> = client.list(None).try_collect().await.expect("list");
        objects.into_iter().map(|object| object.location.to_string()).collect()
    }

    /// The keys of the multipart uploads in progress in `bucket` (neither completed nor
    /// aborted), from ListMultipartUploads: one `<Upload>` entry each.
    pub async fn open_multipart_uploads(&self, bucket: &str) -> Vec<String> {
        let answer = self.multipart_uploads(bucket).await;
        assert!(answer.contains("ListMultipartUploadsResult"), "not a ListMultipartUploads answer: {answer}");
        answer
            .split("<Upload>")
            .skip(1)
            .map(|entry| {
                entry
                    .split_once("<Key>")
                    .and_then(|(_, rest)| rest.split_once("</Key>"))
                    .map_or_else(|| entry.to_owned(), |(key, _)| key.to_owned())
            })
            .collect()
    }

    /// The raw answer to ListMultipartUploads.
    pub async fn multipart_uploads(&self, bucket: &str) -> String {
        reqwest::Client::new()
            .get(format!("{}/{bucket}?uploads", self.endpoint))
            .send()
            .await
            .expect("list uploads")
            .text()
            .await
            .expect("text")
    }

    /// The environment that points jobd at `bucket` through `endpoint`.
    pub fn jobd_env(endpoint: &str, bucket: &str) -> Vec<(&'static str, String)> {
        vec![
            ("JOBD_STORE_URL", format!("s3://{bucket}")),
            ("JOBD_S3_ENDPOINT", endpoint.to_owned()),
            ("JOBD_S3_ALLOW_HTTP", "true".to_owned()),
            ("AWS_ACCESS_KEY_ID", "test".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
        ]
    }

    pub async fn get(&self, bucket: &str, key: &str) -> object_store::GetResult {
        let path = object_store::path::Path::parse(key).expect("key");
        self.client(bucket).get(&path).await.expect("get object")
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the proxy does to requests.
#[derive(Default)]
pub struct Faults {
    /// Answer every `UploadPart` for part 2 with a 500, so multipart uploads fail mid-way.
    pub fail_second_part: AtomicBool,
    /// Hold every `UploadPart` this many milliseconds before forwarding it, like a slow
    /// link, so that a job's timeout or a shutdown can catch an upload mid-way.
    pub delay_parts_ms: AtomicU64,
}

/// An HTTP proxy in front of moto, on a port of its own, which can be stopped (connections
/// refused, as in an outage) and started again on the same port.
pub struct FaultProxy {
    pub port: u16,
    upstream: String,
    pub faults: Arc<Faults>,
    running: Option<(actix_web::dev::ServerHandle, std::thread::JoinHandle<()>)>,
}

impl FaultProxy {
    pub fn start(upstream: &str) -> FaultProxy {
        let mut proxy =
            FaultProxy { port: free_port(), upstream: upstream.to_owned(), faults: Arc::default(), running: None };
        proxy.resume();
        proxy
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops listening and drops every connection.
    pub fn stop(&mut self) {
        if let Some((handle, thread)) = self.running.take() {
            drop(handle.stop(false));
            let _ = thread.join();
        }
    }

    /// Listens again on the same port.
    pub fn resume(&mut self) {
        let (upstream, faults, port) = (self.upstream.clone(), self.faults.clone(), self.port);
        let (sender, receiver) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let client = reqwest::Client::new();
                let server = actix_web::HttpServer::new(move || {
                    let (upstream, faults, client) = (upstream.clone(), faults.clone(), client.clone());
                    actix_web::App::new().app_data(actix_web::web::PayloadConfig::new(64 << 20)).default_service(
                        actix_web::web::to(move |request: actix_web::HttpRequest, body: actix_web::web::Bytes| {
                            forward(client.clone(), upstream.clone(), faults.clone(), request, body)
                        }),
                    )
                })
                .workers(2)
                .disable_signals()
                .shutdown_timeout(0)
                .bind(("127.0.0.1", port))
                .expect("bind proxy port")
                .run();
                sender.send(server.handle()).expect("send handle");
                let _ = server.await;
            });
        });
        let handle = receiver.recv().expect("proxy started");
        self.running = Some((handle, thread));
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn forward(
    client: reqwest::Client,
    upstream: String,
    faults: Arc<Faults>,
    request: actix_web::HttpRequest,
    body: actix_web::web::Bytes,
) -> actix_web::HttpResponse {
    let query = request.query_string();
    if faults.fail_second_part.load(Ordering::Relaxed) && request.method() == "PUT" && query.contains("partNumber=2") {
        return actix_web::HttpResponse::InternalServerError()
            .content_type("application/xml")
            .body("<Error><Code>InternalError</Code><Message>injected</Message></Error>");
    }
    let part_delay = faults.delay_parts_ms.load(Ordering::Relaxed);
    if part_delay > 0 && request.method() == "PUT" && query.contains("partNumber=") {
        tokio::time::sleep(Duration::from_millis(part_delay)).await;
    }
    let url = if query.is_empty() {
        format!("{upstream}{}", request.path())
    } else {
        format!("{upstream}{}?{query}", request.path())
    };
    let method = reqwest::Method::from_bytes(request.method().as_str().as_bytes()).expect("method");
    let mut outgoing = client.request(method, url).body(body.to_vec());
    for (name, value) in request.headers() {
        if name != "host" && name != "content-length" {
            outgoing = outgoing.header(name.as_str(), value.as_bytes());
        }
    }
    let Ok(answer) = outgoing.send().await else {
        return actix_web::HttpResponse::BadGateway().finish();
    };
    let status = actix_web::http::StatusCode::from_u16(answer.status().as_u16()).expect("status");
    let mut response = actix_web::HttpResponse::build(status);
    for (name, value) in answer.headers() {
        if !["content-length", "transfer-encoding", "connection"].contains(&name.as_str()) {
            response.insert_header((name.as_str(), value.as_bytes()));
        }
    }
    response.body(answer.bytes().await.unwrap_or_default())
}
