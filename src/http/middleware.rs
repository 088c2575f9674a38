//! The App-level middleware: the header size limit ([`limit_headers`]), the `Host` check
//! against DNS rebinding ([`check_host`]), and the count of requests in flight that also
//! closes connections once jobd is stopping ([`close_when_stopping`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use actix_web::body::BoxBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::web;

use super::{AppState, Lifecycle, Problem};
use crate::metrics::Metrics;

/// Counts one request in [`Lifecycle::requests_in_flight`] until dropped, which also
/// covers a request whose client went away mid-way.
struct InFlightRequest(Arc<Lifecycle>);

impl InFlightRequest {
    fn new(lifecycle: Arc<Lifecycle>) -> Self {
        lifecycle.requests_in_flight.fetch_add(1, Ordering::AcqRel);
        Self(lifecycle)
    }
}

impl Drop for InFlightRequest {
    fn drop(&mut self) {
        self.0.requests_in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The most header bytes a request may carry; an App-level middleware reads it.
#[derive(Debug, Clone, Copy)]
pub struct HeaderLimit(pub usize);

/// Middleware: refuses a request whose head (request line and header lines) exceeds
/// `max_header_bytes` with 431, before any route runs. actix-http bounds what it reads
/// at 128 KiB; this is the operator's own, lower limit.
pub async fn limit_headers(
    request: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let limit = request.app_data::<HeaderLimit>().map_or(usize::MAX, |limit| limit.0);
    let head_bytes = request.uri().path_and_query().map_or(0, |target| target.as_str().len())
        + request.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum::<usize>();
    if head_bytes > limit {
        if let Some(metrics) = request.app_data::<web::Data<Arc<Metrics>>>() {
            metrics.http_refusals.with_label_values(&["header_too_large"]).inc();
        }
        let problem = Problem::new(
            actix_web::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "header-too-large",
            "Request Header Fields Too Large",
            format!("the request head is {head_bytes} bytes; max_header_bytes is {limit}"),
        );
        return Ok(request.error_response(problem));
    }
    next.call(request).await
}

/// Which `Host` a request may name; an App-level middleware reads it.
#[derive(Debug, Clone, Copy)]
pub struct HostCheck {
    /// The listen address's IP when authentication is off; `None` when tokens are on.
    pub unauthenticated_listen_ip: Option<IpAddr>,
}

/// Middleware: with authentication off, answers 421 to a request whose `Host` is not
/// this machine's loopback or listen address. Without a token, reaching the port is the
/// only check; a browser on this host that loads a page of a name the page's owner then
/// points at 127.0.0.1 (DNS rebinding) would otherwise let that page submit and read jobs,
/// and such a request always carries that name in `Host`. With tokens on, every `Host` is
/// answered: the token is the check, and a browser does not send it to another origin.
pub async fn check_host(
    request: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(listen_ip) = request.app_data::<HostCheck>().and_then(|check| check.unauthenticated_listen_ip) else {
        return next.call(request).await;
    };
    // HTTP/2 carries the authority in the request target rather than in a Host header.
    let host = match request.headers().get(header::HOST) {
        Some(value) => Some(value.to_str().ok()),
        None => request.uri().authority().map(|authority| Some(authority.as_str())),
    };
    // A request without any Host comes from no browser, so it cannot be a rebinding.
    let allowed = match host {
        None => true,
        Some(None) => false,
        Some(Some(host)) => host_is_allowed(host, listen_ip),
    };
    if allowed {
        return next.call(request).await;
    }
    if let Some(metrics) = request.app_data::<web::Data<Arc<Metrics>>>() {
        metrics.http_refusals.with_label_values(&["host_not_allowed"]).inc();
    }
    let shown = host.flatten().unwrap_or("(not visible ASCII)").to_owned();
    tracing::warn!(
        reason = "host_not_allowed",
        host = shown,
        method = %request.method(),
        path = request.path(),
        peer = request.peer_addr().map(tracing::field::display),
        "request refused"
    );
    let listen = if listen_ip.is_unspecified() { "an IP address".to_owned() } else { listen_ip.to_string() };
    let problem = Problem::host_not_allowed(format!(
        "authentication is off, so jobd answers only requests addressed to localhost, *.localhost, a loopback \
         address or {listen}; Host was {shown:?}"
    ));
    Ok(request.error_response(problem))
}

/// Whether a `Host` value (a name or an IP literal, with or without a port) names this
/// machine's loopback or `listen_ip`. When jobd listens on every address (`0.0.0.0` or
/// `::`), every IP literal names it: a rebinding always carries a DNS name, never an IP.
pub fn host_is_allowed(host: &str, listen_ip: IpAddr) -> bool {
    let Some(name) = host_without_port(host) else { return false };
    let ip = if let Some(inner) = name.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')) {
        match inner.parse::<std::net::Ipv6Addr>() {
            Ok(ip) => Some(IpAddr::V6(ip)),
            Err(_) => return false,
        }
    } else {
        name.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
    };
    match ip {
        Some(ip) => ip.is_loopback() || ip == listen_ip || listen_ip.is_unspecified(),
        None => {
            // *.localhost resolves to loopback by definition (RFC 6761) and in browsers.
            let lower = name.to_ascii_lowercase();
            lower == "localhost" || (lower.ends_with(".localhost") && lower.len() > ".localhost".len())
        }
    }
}

/// `host` without its `:port`, or `None` when the port is not a number or an IPv6
/// address lacks its brackets.
fn host_without_port(host: &str) -> Option<&str> {
    let (name, port) = if host.starts_with('[') {
        let end = host.find(']')?;
        let (name, rest) = host.split_at(end + 1);
        (name, if rest.is_empty() { None } else { Some(rest.strip_prefix(':')?) })
    } else {
        match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    let port_valid =
        port.is_none_or(|port| !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()));
    (port_valid && !name.is_empty()).then_some(name)
}

/// Middleware: once jobd is stopping, every answer closes its connection, so that a
/// client on keep-alive reconnects (and finds the listener gone) instead of holding the
/// connection, and the listener's graceful stop, which waits for open connections, ends
/// as soon as the requests in flight are answered. It also counts the requests in flight
/// ([`Lifecycle::requests_in_flight`]).
pub async fn close_when_stopping(
    request: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let state = request.app_data::<web::Data<AppState>>().cloned();
    let _in_flight = state.as_ref().map(|state| InFlightRequest::new(state.lifecycle.clone()));
    let mut response = next.call(request).await?;
    if state.is_some_and(|state| state.lifecycle.shutting_down.load(Ordering::Acquire)) {
        response.response_mut().head_mut().set_connection_type(actix_web::http::ConnectionType::Close);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_and_the_listen_address_are_allowed_hosts() {
        let loopback: IpAddr = "127.0.0.1".parse().expect("IP");
        for host in [
            "localhost",
            "LocalHost:8080",
            "jobd.localhost",
            "a.b.localhost:1",
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.9.9.9:80",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(host_is_allowed(host, loopback), "{host}");
        }
        for host in [
            "attacker.example",
            "attacker.example:8080",
            "localhost.attacker.example",
            ".localhost",
            "notlocalhost",
            "10.0.0.5:8080",
            "[::2]:8080",
            "::1",
            "localhost:",
            "localhost:80:80",
            "localhost:http",
            "[::1]8080",
            "",
        ] {
            assert!(!host_is_allowed(host, loopback), "{host}");
        }
        let public: IpAddr = "192.0.2.7".parse().expect("IP");
        assert!(host_is_allowed("192.0.2.7:8080", public) && host_is_allowed("localhost", public));
        assert!(!host_is_allowed("192.0.2.8:8080", public) && !host_is_allowed("jobd.example", public));
        let every: IpAddr = "0.0.0.0".parse().expect("IP");
        assert!(host_is_allowed("192.0.2.8:8080", every) && host_is_allowed("[2001:db8::1]:80", every));
        assert!(!host_is_allowed("jobd.example:8080", every));
    }
}
