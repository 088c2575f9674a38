//! One delivery: the signed request, and what its answer means for the job (done, retry,
//! retry no sooner than `Retry-After`, or dead) and for the destination's circuit.

use std::time::{Duration, Instant};

use aws_lc_rs::hmac;
use base64::Engine as _;

use bytes::Bytes;
use http_body_util::Full;
use hyper::http;

use super::client;
use super::destination::{Destination, Verdict};
use crate::job::{Job, JobResult};
use crate::kinds::JobError;

/// How much of a receiver's answer the job's record keeps.
const RESPONSE_KEPT_BYTES: usize = 1024;
/// What jobd calls itself in a delivery's `user-agent`.
const USER_AGENT: &str = concat!("jobd/", env!("CARGO_PKG_VERSION"));
/// The longest `Retry-After` honoured: a receiver cannot park a job for more than a day.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

/// The `webhook-signature` header: one `v1,<base64 HMAC-SHA256>` per secret, over
/// `{id}.{timestamp}.{body}`, space-separated, as Standard Webhooks defines it. The keys
/// are the destination's secrets, prepared once rather than per delivery.
pub(super) fn signature_header(keys: &[hmac::Key], id: &str, timestamp: i64, body: &[u8]) -> String {
    let prefix = format!("{id}.{timestamp}.");
    let mut header = String::new();
    for key in keys {
        let mut context = hmac::Context::with_key(key);
        context.update(prefix.as_bytes());
        context.update(body);
        if !header.is_empty() {
            header.push(' ');
        }
        header.push_str("v1,");
        base64::engine::general_purpose::STANDARD.encode_string(context.sign().as_ref(), &mut header);
    }
    header
}

/// A `Retry-After` value: seconds, or an HTTP date.
fn retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
            (at.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().unwrap_or_default()
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// Delivers the job's payload to `destination`. The id is the job's, the same on every
/// attempt, so that a receiver can drop duplicates; the timestamp is this attempt's.
pub(super) async fn deliver(
    destination: &Destination,
    job: Job,
    event_type: Option<&str>,
) -> Result<JobResult, JobError> {
    // The job's own timeout, which the worker applies by dropping this future.
    let job_timeout = job.timeout_ms.map(Duration::from_millis);
    // The job is this attempt's own copy: its body moves into the request.
    let body = job.body.map(|body| body.bytes).unwrap_or_default();
    let id = job.id.to_string();
    let timestamp = chrono::Utc::now().timestamp();
    let signature = signature_header(&destination.signing_keys, &id, timestamp, &body);
    let mut request = hyper::Request::post(destination.uri.clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, USER_AGENT)
        .header(http::header::ACCEPT, "*/*")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp)
        .header("webhook-signature", signature);
    if let Some(event_type) = event_type {
        request = request.header("webhook-event-type", event_type);
    }
    let request = request.body(Full::new(Bytes::from(body))).map(|mut request| {
        request.headers_mut().extend(destination.headers.clone());
        request
    });
    let started = Instant::now();
    // A job whose own timeout is shorter than the destination's is cut off by the worker,
    // which drops this future mid-exchange: the guard still counts it as the timeout it
    // is, so that a receiver that hangs opens the circuit whatever the jobs' timeouts.
    let cut_off_after = job_timeout.filter(|timeout| *timeout < destination.timeout);
    let mut unanswered = Unanswered { destination, started, cut_off_after, armed: true };
    // The destination's timeout covers the whole exchange: connecting, sending, and
    // reading the part of the answer that is kept. An answer whose head came in time is
    // judged by its status, with as much of its body as came by then.
    let deadline = tokio::time::Instant::from_std(started + destination.timeout);
    let exchange = async { Ok::<_, DeliveryError>(destination.client.send(request?).await?) };
    let sent = tokio::time::timeout_at(deadline, exchange).await;
    let elapsed = started.elapsed();
    let (outcome, verdict, result) = match sent {
        Err(_elapsed) => (
            "timed_out",
            Verdict::ReceiverDown,
            Err(JobError::Failed {
                message: format!("the delivery timed out after {} ms", destination.timeout.as_millis()),
                retryable: true,
            }),
        ),
        Ok(Err(error)) => (
            "failed",
            Verdict::ReceiverDown,
            Err(JobError::Failed { message: format!("the delivery failed: {error}"), retryable: true }),
        ),
        Ok(Ok(response)) => {
            // The receiver answered: whatever cuts the body short, it was up.
            unanswered.armed = false;
            let (head, body) = response.into_parts();
            let answer = client::body_start(body, RESPONSE_KEPT_BYTES, deadline).await;
            classify(destination, &head, &answer, elapsed)
        }
    };
    unanswered.armed = false;
    note(destination, outcome, verdict, started.elapsed());
    result
}

/// Counts a delivery that ended, by `outcome`, and gives its verdict to the circuit.
fn note(destination: &Destination, outcome: &str, verdict: Verdict, took: Duration) {
    let series = destination.series();
    if let Some(series) = series {
        series.duration.observe(took.as_secs_f64());
        series.deliveries(outcome).inc();
    }
    let (open, changed) = destination.record(verdict);
    if changed {
        if let Some(series) = series {
            series.circuit_open.set(i64::from(open));
        }
        let name = destination.name.as_ref();
        if open {
            tracing::warn!(destination = name, "webhook circuit opened: deliveries wait, then one probe is tried");
        } else {
            tracing::info!(destination = name, "webhook circuit closed: the destination answers again");
        }
    }
}

/// A delivery waiting for its answer's head. Dropped while armed at or after the job's own
/// timeout (shorter than the destination's), it was cut off by that timeout, and is noted
/// as timed out. Dropped earlier (the node stopped the job: its lease lapsed, or it shut
/// down), it says nothing about the receiver, and nothing is noted.
struct Unanswered<'a> {
    destination: &'a Destination,
    started: Instant,
    cut_off_after: Option<Duration>,
    armed: bool,
}

/// How much earlier than the job's timeout a drop still counts as that timeout: the
/// worker's timer and this clock are read at slightly different instants.
const CUT_OFF_SLACK: Duration = Duration::from_millis(20);

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        let timed_out = self.cut_off_after.is_some_and(|timeout| elapsed + CUT_OFF_SLACK >= timeout);
        if self.armed && timed_out {
            note(self.destination, "timed_out", Verdict::ReceiverDown, elapsed);
        }
    }
}

/// Why a request got no answer: the request could not be built (a header value the
/// receiver's configuration made invalid), or the exchange failed.
#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error("{0}")]
    Request(#[from] http::Error),
    /// With its causes, which name the reason (connection refused, a certificate): the
    /// client's error alone says only where it failed. Neither carries the URL.
    #[error("{}", crate::error_text::with_causes(.0))]
    Exchange(#[from] hyper_util::client::legacy::Error),
}

/// What an answer means: `2xx` is done; `410` and other `4xx` (unless `retry_4xx`) are
/// final; `429` and `503` retry no sooner than their `Retry-After`; other `5xx` retry
/// with the job's backoff. A `3xx` is final too: redirects are not followed.
fn classify(
    destination: &Destination,
    head: &http::response::Parts,
    answer: &[u8],
    elapsed: Duration,
) -> (&'static str, Verdict, Result<JobResult, JobError>) {
    let status = head.status;
    let wait = head.headers.get(http::header::RETRY_AFTER).and_then(|value| value.to_str().ok()).and_then(retry_after);
    let answer = String::from_utf8_lossy(answer);
    let code = status.as_u16();
    if status.is_success() {
        let result = JobResult::with([
            ("status", Some(code.into())),
            ("latency_ms", Some(((elapsed.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0).into())),
            ("response", Some(answer.into_owned().into())),
        ]);
        return ("delivered", Verdict::ReceiverUp, Ok(result));
    }
    let message = format!("the receiver answered {status}: {}", answer.chars().take(200).collect::<String>());
    let permanent = |message| Err(JobError::Failed { message, retryable: false });
    match code {
        429 | 503 => {
            // Throttling is the receiver's say, not a failure of it: a 503 counts toward
            // the circuit; a 429 neither counts toward it nor closes it.
            let verdict = if code == 503 { Verdict::ReceiverDown } else { Verdict::Throttled };
            let result = match wait {
                Some(retry_after) => Err(JobError::Deferred { message, retry_after }),
                None => Err(JobError::Failed { message, retryable: true }),
            };
            ("failed", verdict, result)
        }
        500..=599 => ("failed", Verdict::ReceiverDown, Err(JobError::Failed { message, retryable: true })),
        410 => ("rejected", Verdict::ReceiverUp, permanent(format!("{message} (410 Gone: the job is dead)"))),
        400..=499 if destination.retry_4xx => {
            ("failed", Verdict::ReceiverUp, Err(JobError::Failed { message, retryable: true }))
        }
        300..=399 => ("rejected", Verdict::ReceiverUp, permanent(format!("{message} (redirects are not followed)"))),
        _ => ("rejected", Verdict::ReceiverUp, permanent(message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification: this secret, id, timestamp
    /// and body sign to this signature.
    #[test]
    fn signatures_match_the_specifications_example() {
        let secret = base64::engine::general_purpose::STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("b64");
        let body = br#"{"test": 2432232314}"#;
        let key = hmac::Key::new(hmac::HMAC_SHA256, &secret);
        let header = signature_header(&[key], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(header, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn retry_after_reads_seconds_and_dates_and_is_bounded() {
        assert_eq!(retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(retry_after("99999999"), Some(MAX_RETRY_AFTER));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(60)).to_rfc2822();
        assert!(retry_after(&later).is_some_and(|wait| wait > Duration::from_secs(50)));
        assert_eq!(retry_after("soon"), None);
    }
}
