//! A webhook destination: its settings as the configuration file gives them, and at run
//! time its HTTP client, its secrets, its in-flight limit and its circuit breaker.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;
use base64::Engine as _;
use serde::{Deserialize, Serialize, Serializer};

use super::client::DeliveryClient;
use crate::kinds::{Admission, GateKey, Permit};

/// Default time a delivery may take, from connecting to the end of the answer.
pub const DEFAULT_TIMEOUT_MS: u64 = 15_000;
/// Default deliveries in flight to one destination: enough to keep a receiver busy, few
/// enough that one slow receiver cannot occupy every worker (16 by default).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 8;
/// Default consecutive failed deliveries after which a destination's circuit opens.
pub const DEFAULT_CIRCUIT_FAILURES: u32 = 5;
/// Default time an open circuit waits before one probe delivery is tried.
pub const DEFAULT_CIRCUIT_OPEN_SECS: u64 = 30;

/// Headers jobd sets itself, or that describe the request's framing, which a destination's
/// extra headers may not set.
const RESERVED_HEADERS: [&str; 10] = [
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "webhook-event-type",
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "user-agent",
    "host",
];

/// `[webhooks.<name>]` in the configuration file. Its `Debug` and `Serialize` (what
/// `check-config` prints) show no secret: not the secrets, not header values, not a URL's
/// password or query.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationSettings {
    /// Where deliveries go: an `http://` or `https://` URL.
    #[serde(serialize_with = "redacted_url")]
    pub url: String,
    /// Signing secrets, `whsec_` + base64, as Standard Webhooks writes them. Several are
    /// allowed for rotation: each delivery carries one signature per secret.
    #[serde(default, serialize_with = "redacted")]
    pub secrets: Vec<String>,
    /// Names of systemd credentials that hold more secrets, so that none need be in the file.
    #[serde(default)]
    pub secret_credentials: Vec<String>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Extra request headers, e.g. an `authorization` the receiver wants.
    #[serde(default, serialize_with = "redacted_values")]
    pub headers: BTreeMap<String, String>,
    /// Retry `4xx` answers other than `410` (final) and `429` (always retried), which are
    /// final by default.
    #[serde(default)]
    pub retry_4xx: bool,
    #[serde(default)]
    pub max_in_flight: Option<usize>,
    #[serde(default)]
    pub circuit_failures: Option<u32>,
    #[serde(default)]
    pub circuit_open_secs: Option<u64>,
}

impl DestinationSettings {
    /// The settings with every default filled in, as `check-config` prints them: what a
    /// destination does is then on the page, not only what the file changed.
    pub fn with_defaults(mut self) -> Self {
        self.timeout_ms = Some(self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS));
        self.max_in_flight = Some(self.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT));
        self.circuit_failures = Some(self.circuit_failures.unwrap_or(DEFAULT_CIRCUIT_FAILURES));
        self.circuit_open_secs = Some(self.circuit_open_secs.unwrap_or(DEFAULT_CIRCUIT_OPEN_SECS));
        self
    }
}

impl std::fmt::Debug for DestinationSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DestinationSettings")
            .field("url", &shown_url(&self.url))
            .field("secrets", &self.secrets.len())
            .field("secret_credentials", &self.secret_credentials)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// A URL as it may be shown: without a password, and with its query hidden, since either
/// may carry a credential the receiver asked for.
fn shown_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("(hidden)"));
            }
            if parsed.query().is_some() {
                parsed.set_query(Some("(hidden)"));
            }
            parsed.to_string()
        }
        Err(_) => "(not a URL)".to_owned(),
    }
}

fn redacted_url<S: Serializer>(url: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&shown_url(url))
}

/// Secrets never leave the process: `check-config` shows how many there are.
fn redacted<S: Serializer>(secrets: &[String], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(secrets.iter().map(|_| "(secret)"))
}

/// Header values may be credentials too: only their names are shown.
fn redacted_values<S: Serializer>(headers: &BTreeMap<String, String>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_map(headers.keys().map(|name| (name, "(hidden)")))
}

/// Decodes a `whsec_` secret; the prefix is optional and base64 padding may be left off,
/// as the Standard Webhooks libraries accept.
fn decode_secret(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret.trim().strip_prefix("whsec_").unwrap_or(secret.trim());
    // The decoder's error would quote the offending character: a fixed text instead.
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(encoded.trim_end_matches('='))
        .map_err(|_| "a secret is not whsec_ followed by base64".to_owned())?;
    if bytes.len() < 16 {
        return Err("a secret must hold at least 16 bytes".to_owned());
    }
    Ok(bytes)
}

/// The `user:password@` of a URL as a sensitive `authorization: Basic` value, taken out of
/// the URL, as browsers and other HTTP clients send it; the URL is left without it.
fn basic_credentials(url: &mut reqwest::Url) -> Option<reqwest::header::HeaderValue> {
    if url.username().is_empty() && url.password().is_none() {
        return None;
    }
    let mut pair: Vec<u8> = percent_encoding::percent_decode_str(url.username()).collect();
    pair.push(b':');
    pair.extend(percent_encoding::percent_decode_str(url.password().unwrap_or_default()));
    let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
    let _ = url.set_username("");
    let _ = url.set_password(None);
    // Base64 is always a valid header value.
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

impl DestinationSettings {
    /// Checks the settings and reads the secrets, without logging any.
    pub fn resolve(&self, name: &str) -> Result<Destination, String> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            return Err("a destination's name holds only letters, digits, '-', '_' and '.'".to_owned());
        }
        let mut url = reqwest::Url::parse(&self.url).map_err(|error| format!("url: {error}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err("url: must be an http:// or https:// URL with a host".to_owned());
        }
        let mut secrets = Vec::new();
        for secret in &self.secrets {
            secrets.push(decode_secret(secret)?);
        }
        for credential in &self.secret_credentials {
            let secret = crate::systemd::credential(credential)
                .ok_or_else(|| format!("the systemd credential {credential:?} is not there"))?;
            secrets.push(decode_secret(&secret)?);
        }
        if secrets.is_empty() {
            return Err("a destination needs at least one secret (secrets or secret_credentials)".to_owned());
        }
        let mut headers = reqwest::header::HeaderMap::new();
        for (header, value) in &self.headers {
            let header_name = reqwest::header::HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| format!("headers: {header:?} is not a header name"))?;
            if RESERVED_HEADERS.contains(&header_name.as_str()) {
                return Err(format!("headers: jobd sets {header_name} itself"));
            }
            let mut value = reqwest::header::HeaderValue::from_str(value)
                .map_err(|_| format!("headers: the value of {header_name} is not a header value"))?;
            value.set_sensitive(true);
            headers.insert(header_name, value);
        }
        // An `authorization` in `headers` is the more explicit of the two, and wins.
        if let Some(credentials) = basic_credentials(&mut url)
            && !headers.contains_key(reqwest::header::AUTHORIZATION)
        {
            headers.insert(reqwest::header::AUTHORIZATION, credentials);
        }
        let timeout = Duration::from_millis(self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS));
        if timeout.is_zero() || timeout > Duration::from_secs(300) {
            return Err("timeout_ms: must be between 1 and 300000".to_owned());
        }
        let limit = self.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT);
        if !(1..=1000).contains(&limit) {
            return Err("max_in_flight: must be between 1 and 1000".to_owned());
        }
        let failures_to_open = self.circuit_failures.unwrap_or(DEFAULT_CIRCUIT_FAILURES);
        if !(1..=1000).contains(&failures_to_open) {
            return Err("circuit_failures: must be between 1 and 1000".to_owned());
        }
        let open_secs = self.circuit_open_secs.unwrap_or(DEFAULT_CIRCUIT_OPEN_SECS);
        if !(1..=86_400).contains(&open_secs) {
            return Err("circuit_open_secs: must be between 1 and 86400".to_owned());
        }
        let open_for = Duration::from_secs(open_secs);
        // The client follows no redirect: one could point anywhere, and the destination is
        // what the operator configured.
        let client = DeliveryClient::new(limit, timeout.min(Duration::from_secs(5)), url.scheme() == "https")?;
        let uri = url.as_str().parse::<hyper::Uri>().map_err(|error| format!("url: {error}"))?;
        Ok(Destination {
            name: Arc::from(name),
            uri,
            signing_keys: secrets.iter().map(|secret| hmac::Key::new(hmac::HMAC_SHA256, secret)).collect(),
            headers,
            retry_4xx: self.retry_4xx,
            timeout,
            client,
            limit,
            failures_to_open,
            open_for,
            gate: Mutex::new(GateState::default()),
            series: None,
        })
    }
}

/// A destination at run time.
pub struct Destination {
    pub name: GateKey,
    pub uri: hyper::Uri,
    /// The secrets as HMAC-SHA256 keys, one signature each.
    pub signing_keys: Vec<hmac::Key>,
    pub headers: reqwest::header::HeaderMap,
    pub retry_4xx: bool,
    pub timeout: Duration,
    pub client: DeliveryClient,
    limit: usize,
    failures_to_open: u32,
    open_for: Duration,
    gate: Mutex<GateState>,
    /// The destination's metric series, looked up once rather than by label per delivery;
    /// `None` for a destination resolved only to check the settings.
    pub(super) series: Option<Series>,
}

/// How a webhook delivery ended: the `outcome` label of `jobd_webhook_deliveries_total`.
pub const OUTCOMES: [&str; 4] = ["delivered", "failed", "timed_out", "rejected"];

/// The label that names a destination on the webhook metrics (`jobd_webhook_*`).
const DESTINATION_LABEL: &str = "destination";

/// The webhook kind's metric families, which the kind registers itself when it is built.
pub struct Families {
    deliveries: prometheus::IntCounterVec,
    duration: prometheus::HistogramVec,
    circuit_open: prometheus::IntGaugeVec,
}

impl Families {
    /// Creates the families and registers them in `registry`.
    pub fn register(registry: &prometheus::Registry) -> Result<Families, prometheus::Error> {
        use prometheus::{HistogramOpts, Opts, exponential_buckets};
        let families = Families {
            deliveries: prometheus::IntCounterVec::new(
                Opts::new("jobd_webhook_deliveries_total", "Webhook deliveries, by destination and outcome."),
                &[DESTINATION_LABEL, "outcome"],
            )?,
            duration: prometheus::HistogramVec::new(
                HistogramOpts::new("jobd_webhook_duration_seconds", "Time a webhook delivery took, by destination.")
                    .buckets(exponential_buckets(0.001, 2.0, 16)?),
                &[DESTINATION_LABEL],
            )?,
            circuit_open: prometheus::IntGaugeVec::new(
                Opts::new(
                    "jobd_webhook_circuit_open",
                    "1 while a destination's circuit is open and its deliveries wait.",
                ),
                &[DESTINATION_LABEL],
            )?,
        };
        registry.register(Box::new(families.deliveries.clone()))?;
        registry.register(Box::new(families.duration.clone()))?;
        registry.register(Box::new(families.circuit_open.clone()))?;
        Ok(families)
    }

    /// Destination `name`'s series, each at zero from now on, so that dashboards and
    /// alerts see them before the first delivery.
    pub fn series(&self, name: &str) -> Series {
        let circuit_open = self.circuit_open.with_label_values(&[name]);
        circuit_open.set(0);
        Series {
            duration: self.duration.with_label_values(&[name]),
            circuit_open,
            deliveries: OUTCOMES.iter().map(|outcome| self.deliveries.with_label_values(&[name, outcome])).collect(),
        }
    }
}

/// One destination's series of the webhook metrics.
pub struct Series {
    pub duration: prometheus::Histogram,
    pub circuit_open: prometheus::IntGauge,
    /// By outcome, in the order of [`OUTCOMES`].
    deliveries: Vec<prometheus::IntCounter>,
}

impl Series {
    /// The delivery counter of `outcome`, one of [`OUTCOMES`].
    pub fn deliveries(&self, outcome: &str) -> &prometheus::IntCounter {
        let position = OUTCOMES.iter().position(|known| *known == outcome).unwrap_or(0);
        &self.deliveries[position]
    }
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry credentials in its query; only the name is shown.
        f.debug_struct("Destination").field("name", &self.name).finish_non_exhaustive()
    }
}

/// The in-flight count and the circuit breaker of one destination.
#[derive(Debug, Default)]
struct GateState {
    in_flight: usize,
    consecutive_failures: u32,
    /// Set while the circuit is open: until then no delivery starts; after it, one probe.
    open_until: Option<Instant>,
    /// A probe delivery is out: the circuit is half open.
    probing: bool,
}

/// How a delivery went, for the circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Delivered, or refused by the receiver for this delivery alone (a `4xx`): the
    /// receiver is up.
    ReceiverUp,
    /// A `5xx`, a timeout or a connection failure: one more toward opening the circuit.
    ReceiverDown,
    /// A `429`: the receiver is up but asks for less. It does not count toward opening
    /// the circuit, and an open circuit stays open for another wait: a probe answered
    /// `429` says nothing about whether deliveries may flow again.
    Throttled,
}

/// Gives a destination's slot back when a delivery's attempt ends.
struct Slot {
    destination: Arc<Destination>,
    probe: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut gate = self.destination.lock();
        gate.in_flight = gate.in_flight.saturating_sub(1);
        if self.probe {
            gate.probing = false;
        }
    }
}

impl Destination {
    /// The destination's metric series, if the kind registered them.
    pub fn series(&self) -> Option<&Series> {
        self.series.as_ref()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        // The state stays consistent under a panic (plain counters), so a poisoned lock
        // is used as it is.
        self.gate.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a delivery may start now: below the in-flight limit with the circuit
    /// closed, or as the one probe once an open circuit's wait is over.
    pub fn admit(self: &Arc<Self>) -> Admission {
        let mut gate = self.lock();
        let probe = match gate.open_until {
            Some(until) if Instant::now() < until || gate.probing => return Admission::Closed(self.name.clone()),
            Some(_) => true,
            None if gate.in_flight >= self.limit => return Admission::Later(self.name.clone()),
            None => false,
        };
        gate.in_flight += 1;
        gate.probing |= probe;
        let slot = Slot { destination: self.clone(), probe };
        Admission::Now(Some(Permit::new(self.name.clone(), Box::new(slot))))
    }

    /// Records how a delivery went; returns whether the circuit is open now, and whether
    /// that changed.
    pub fn record(&self, verdict: Verdict) -> (bool, bool) {
        let mut gate = self.lock();
        let was_open = gate.open_until.is_some();
        match verdict {
            Verdict::ReceiverUp => {
                gate.consecutive_failures = 0;
                gate.open_until = None;
            }
            Verdict::ReceiverDown => {
                gate.consecutive_failures = gate.consecutive_failures.saturating_add(1);
                // A failed probe opens the circuit again at once.
                if was_open || gate.consecutive_failures >= self.failures_to_open {
                    gate.open_until = Some(Instant::now() + self.open_for);
                }
            }
            Verdict::Throttled if was_open => gate.open_until = Some(Instant::now() + self.open_for),
            Verdict::Throttled => {}
        }
        let open = gate.open_until.is_some();
        (open, open != was_open)
    }

    /// The destination's state for `/readyz`.
    pub fn readiness(&self) -> serde_json::Value {
        let gate = self.lock();
        let circuit = match (gate.open_until, gate.probing) {
            (None, _) => "closed",
            (Some(_), true) => "half_open",
            (Some(until), false) if Instant::now() >= until => "half_open",
            (Some(_), false) => "open",
        };
        serde_json::json!({
            "circuit": circuit,
            "in_flight": gate.in_flight,
            "max_in_flight": self.limit,
            "consecutive_failures": gate.consecutive_failures,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str, headers: &[(&str, &str)]) -> DestinationSettings {
        DestinationSettings {
            url: url.to_owned(),
            secrets: vec!["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned()],
            secret_credentials: Vec::new(),
            timeout_ms: None,
            headers: headers.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect(),
            retry_4xx: false,
            max_in_flight: None,
            circuit_failures: None,
            circuit_open_secs: None,
        }
    }

    /// A `429` neither opens the circuit nor closes it: answered to a probe, the circuit
    /// stays open for another wait; only a delivery that gets through closes it.
    #[test]
    fn a_throttled_answer_neither_opens_nor_closes_the_circuit() {
        let mut settings = settings("http://billing.example/in", &[]);
        settings.circuit_failures = Some(2);
        let destination = settings.resolve("billing").expect("a destination");
        for _ in 0..5 {
            assert_eq!(destination.record(Verdict::Throttled), (false, false), "throttling opens nothing");
        }
        assert_eq!(destination.record(Verdict::ReceiverDown), (false, false));
        assert_eq!(destination.record(Verdict::ReceiverDown), (true, true), "two failures open it");
        assert_eq!(destination.record(Verdict::Throttled), (true, false), "a 429 to the probe keeps it open");
        assert_eq!(destination.record(Verdict::ReceiverUp), (false, true), "a delivery closes it");
    }

    /// Credentials in the URL become `authorization: Basic`, percent-decoded, and leave
    /// the request's URI; an `authorization` header given as well wins.
    #[test]
    fn credentials_in_the_url_are_sent_as_basic_authorization() {
        let destination = settings("http://hook:p%40ss@billing.example:8080/in?x=1", &[]).resolve("billing");
        let destination = destination.expect("a destination");
        let authorization = destination.headers.get(reqwest::header::AUTHORIZATION).expect("authorization");
        // base64("hook:p@ss")
        assert_eq!(authorization.to_str().ok(), Some("Basic aG9vazpwQHNz"));
        assert!(authorization.is_sensitive());
        assert_eq!(destination.uri.to_string(), "http://billing.example:8080/in?x=1");

        let plain = settings("http://billing.example/in", &[]).resolve("billing").expect("a destination");
        assert!(plain.headers.get(reqwest::header::AUTHORIZATION).is_none());

        let both = settings("http://hook:pass@billing.example/in", &[("authorization", "Bearer x")]).resolve("billing");
        let both = both.expect("a destination");
        assert_eq!(
            both.headers.get(reqwest::header::AUTHORIZATION).and_then(|value| value.to_str().ok()),
            Some("Bearer x")
        );
        assert_eq!(both.uri.to_string(), "http://billing.example/in");
    }

    /// The kind registers its own series, and a configured destination's are exported at
    /// zero before its first delivery, so that dashboards and alerts see them.
    #[test]
    fn the_kinds_series_are_registered_by_it_and_start_at_zero() {
        let registry = prometheus::Registry::new();
        let families = Families::register(&registry).expect("register");
        let series = families.series("billing");
        series.deliveries("timed_out").inc();
        let text = {
            use prometheus::Encoder as _;
            let mut text = Vec::new();
            prometheus::TextEncoder::new().encode(&registry.gather(), &mut text).expect("encode");
            String::from_utf8(text).expect("utf-8")
        };
        for line in [
            r#"jobd_webhook_deliveries_total{destination="billing",outcome="delivered"} 0"#,
            r#"jobd_webhook_deliveries_total{destination="billing",outcome="timed_out"} 1"#,
            r#"jobd_webhook_circuit_open{destination="billing"} 0"#,
            r#"jobd_webhook_duration_seconds_count{destination="billing"} 0"#,
        ] {
            assert!(text.contains(line), "missing {line} in:\n{text}");
        }
        assert!(Families::register(&registry).is_err(), "a second registration clashes instead of hiding the first");
    }
}
