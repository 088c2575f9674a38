//! A destination's HTTP client: hyper's pooled HTTP/1.1 client over TCP, or over rustls
//! with the system's trust store, without the layers of a general-purpose client that a
//! delivery never uses (redirects, proxies, cookies, a URL parsed again per request).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_platform_verifier::BuilderVerifierExt as _;

/// How long an idle keep-alive connection is kept: a receiver that closes it sooner is
/// found out when the next request is written, which the pool then retries on a new one.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The client of one destination: its pool holds at most `limit` idle connections, one
/// per delivery in flight.
pub struct DeliveryClient {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl DeliveryClient {
    /// A client for a destination whose URL is `https` when `tls` is set. Only then is
    /// the system's trust store read, once, here at start rather than at the first
    /// handshake, which runs beside the actors.
    pub fn new(limit: usize, connect_timeout: Duration, tls: bool) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| format!("cannot set up TLS: {error}"))?;
        let tls = if tls {
            builder.with_platform_verifier().map_err(|error| format!("cannot set up TLS: {error}"))?
        } else {
            // Never used: the connector speaks TLS only to an https URL.
            builder.with_root_certificates(rustls::RootCertStore::empty())
        }
        .with_no_client_auth();
        let mut tcp = HttpConnector::new();
        // The https connector below checks the scheme; it hands plain http to this one.
        tcp.enforce_http(false);
        tcp.set_connect_timeout(Some(connect_timeout));
        tcp.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(limit)
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(DeliveryClient { client })
    }

    /// Sends `request` and returns the answer's head; the body is read by the caller.
    pub async fn send(
        &self,
        request: hyper::Request<Full<Bytes>>,
    ) -> Result<hyper::Response<Incoming>, hyper_util::client::legacy::Error> {
        self.client.request(request).await
    }
}

/// Reads at most `limit` bytes of an answer's body, or what came before `deadline`. Read
/// to its end, a body leaves its connection free for the next delivery; one left unread
/// closes it.
pub async fn body_start(mut body: Incoming, limit: usize, deadline: tokio::time::Instant) -> Vec<u8> {
    let mut kept = Vec::new();
    while kept.len() < limit {
        let Ok(frame) = tokio::time::timeout_at(deadline, body.frame()).await else { break };
        match frame {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    kept.extend_from_slice(&data[..data.len().min(limit - kept.len())]);
                }
            }
            _ => break,
        }
    }
    kept
}
