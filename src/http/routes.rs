//! The route table, [`routes`], which both the router and the OpenAPI description are
//! checked against; [`configure`], which registers it; and [`authorize`], each route's
//! access check.

use actix_web::body::BoxBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, header};
use actix_web::middleware::{Next, from_fn};
use actix_web::{HttpMessage as _, HttpRequest, HttpResponse, web};

use super::console::whoami;
use super::jobs::{cancel_job, get_job, list_jobs, retry_dead_jobs, retry_job};
use super::ops::{get_metrics, get_stats, healthz, readyz};
use super::queues::{list_queues, pause_queue, resume_queue};
use super::submit::{post_jobs, post_payloads};
use super::{AppState, Problem, openapi};
use crate::auth::{AuthFailure, Scope};
use crate::submission;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: probes, metrics and the API description, which hold no job data.
    Open,
    /// A bearer token with this scope, when a token file is configured.
    Needs(Scope),
    /// A bearer token with the `read` scope and no confinement, when a token file is
    /// configured: what describes the whole daemon (its metrics name every webhook
    /// destination and every kind's figures), which a tenant may not see.
    Operators,
}

/// One route of the API: the single table that both the router and the OpenAPI
/// description are checked against.
pub struct RouteSpec {
    pub path: &'static str,
    pub method: Method,
    pub access: Access,
    route: fn() -> actix_web::Route,
}

/// Every route jobd serves.
pub fn routes() -> Vec<RouteSpec> {
    let spec = |path, method, access, route| RouteSpec { path, method, access, route };
    vec![
        spec("/v1/jobs", Method::GET, Access::Needs(Scope::Read), || web::get().to(list_jobs)),
        spec("/v1/jobs", Method::POST, Access::Needs(Scope::Submit), || web::post().to(post_jobs)),
        // Before `/v1/jobs/{id}`, which would otherwise take the path `retry` for an id.
        spec("/v1/jobs/retry", Method::POST, Access::Needs(Scope::Admin), || web::post().to(retry_dead_jobs)),
        spec("/v1/jobs/{id}", Method::GET, Access::Needs(Scope::Read), || web::get().to(get_job)),
        spec("/v1/jobs/{id}", Method::DELETE, Access::Needs(Scope::Admin), || web::delete().to(cancel_job)),
        spec("/v1/jobs/{id}/retry", Method::POST, Access::Needs(Scope::Admin), || web::post().to(retry_job)),
        spec("/v1/payloads", Method::POST, Access::Needs(Scope::Submit), || web::post().to(post_payloads)),
        spec("/v1/queues", Method::GET, Access::Operators, || web::get().to(list_queues)),
        spec("/v1/queues/{name}/pause", Method::POST, Access::Needs(Scope::Admin), || web::post().to(pause_queue)),
        spec("/v1/queues/{name}/resume", Method::POST, Access::Needs(Scope::Admin), || web::post().to(resume_queue)),
        spec("/v1/stats", Method::GET, Access::Needs(Scope::Read), || web::get().to(get_stats)),
        spec("/v1/whoami", Method::GET, Access::Needs(Scope::Read), || web::get().to(whoami)),
        spec("/v1/openapi.json", Method::GET, Access::Open, || web::get().to(openapi::get_openapi)),
        spec("/healthz", Method::GET, Access::Open, || web::get().to(healthz)),
        spec("/readyz", Method::GET, Access::Open, || web::get().to(readyz)),
        spec("/metrics", Method::GET, Access::Operators, || web::get().to(get_metrics)),
    ]
}

/// Registers every route of [`routes`], each behind its access check. The default service
/// answers unknown paths with a 404 problem, and each resource answers other methods with
/// a 405 problem listing the ones it has.
pub fn configure(state: web::Data<AppState>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |config| {
        let metrics_on_api_listener = state.metrics_on_api_listener;
        config.app_data(web::Data::new(state.metrics.clone())).app_data(state);
        // A query string that does not fit its route is a problem+json 400 naming the
        // query, like every other error, rather than actix's plain-text default.
        config.app_data(web::QueryConfig::default().error_handler(|error, _request| {
            Problem::from(submission::SubmissionError::field("query", error.to_string())).into()
        }));
        let mut table = routes();
        if !metrics_on_api_listener {
            table.retain(|spec| spec.path != "/metrics");
            let not_here = || async {
                Err::<HttpResponse, _>(Problem::not_found(
                    "/metrics is served on the metrics_listen address only, not on the API listener",
                ))
            };
            config.service(web::resource("/metrics").app_data(crate::metrics::RoutePattern("/metrics")).to(not_here));
        }
        let mut paths: Vec<&'static str> = Vec::new();
        for spec in &table {
            if !paths.contains(&spec.path) {
                paths.push(spec.path);
            }
        }
        for path in paths {
            let specs: Vec<&RouteSpec> = table.iter().filter(|spec| spec.path == path).collect();
            let allow = specs.iter().map(|spec| spec.method.as_str()).collect::<Vec<_>>().join(", ");
            let mut resource = web::resource(path).app_data(crate::metrics::RoutePattern(path));
            for spec in specs {
                let route = (spec.route)();
                resource = resource.route(match spec.access {
                    Access::Open => route,
                    Access::Needs(scope) => {
                        route.wrap(from_fn(move |request, next| authorize(request, next, scope, false)))
                    }
                    Access::Operators => {
                        route.wrap(from_fn(move |request, next| authorize(request, next, Scope::Read, true)))
                    }
                });
            }
            config.service(resource.default_service(web::to(move || {
                let allow = allow.clone();
                async move { Err::<HttpResponse, _>(Problem::method_not_allowed(allow)) }
            })));
        }
        super::console::configure(config);
        config.default_service(web::to(|request: HttpRequest| async move {
            Err::<HttpResponse, _>(Problem::not_found(format!("no route for {}", request.path())))
        }));
    }
}

/// Lets a request through when its bearer token has `scope` (and no confinement, with
/// `unconfined`), or authentication is off, and records who it is for the handler;
/// otherwise answers 401 or 403 and counts why.
async fn authorize(
    request: ServiceRequest,
    next: Next<BoxBody>,
    scope: Scope,
    unconfined: bool,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(state) = request.app_data::<web::Data<AppState>>().cloned() else {
        // Unreachable in a configured app; refusing keeps the check fail-closed.
        return Ok(request.error_response(Problem::unavailable("the API is not configured")));
    };
    let authorization = request.headers().get(header::AUTHORIZATION).map(header::HeaderValue::as_bytes);
    let checked = state.auth.check(authorization, scope).and_then(|principal| match principal {
        Some(principal) if unconfined && principal.is_confined() => {
            Err(AuthFailure::Confined { name: principal.name.clone() })
        }
        other => Ok(other),
    });
    match checked {
        Ok(None) if is_cross_site_write(&request) => {
            // Without tokens, a page on another site could make the operator's browser
            // submit, retry or cancel; with tokens it cannot, lacking the bearer token.
            tracing::warn!(method = %request.method(), path = request.path(), "cross-site write refused");
            Ok(request.error_response(Problem::new(
                actix_web::http::StatusCode::FORBIDDEN,
                "cross-site",
                "Cross-Site Request",
                "a browser request from another site may not change jobs; without tokens only same-origin \
                 pages and non-browser clients may",
            )))
        }
        Ok(principal) => {
            if let Some(principal) = principal {
                request.extensions_mut().insert(principal);
            }
            next.call(request).await
        }
        Err(failure) => {
            state.metrics.auth_failures.with_label_values(&[failure.reason()]).inc();
            let token_name = match &failure {
                AuthFailure::Scope { name, .. } | AuthFailure::Confined { name } => Some(name.clone()),
                _ => None,
            };
            tracing::warn!(
                reason = failure.reason(),
                token_name,
                scope = scope.name(),
                method = %request.method(),
                path = request.path(),
                peer = request.peer_addr().map(tracing::field::display),
                "request refused"
            );
            Ok(request.error_response(Problem::from(failure)))
        }
    }
}

/// A write (any method but GET and HEAD) that a browser marks as sent from anywhere but
/// this origin: `cross-site`, and `same-site` too, since a page on another port of the
/// same host (`127.0.0.1:3000`) is the same site as jobd's. Only `same-origin` (the
/// console) and `none` (typed by the user) pass. Browsers set `Sec-Fetch-Site` on every
/// request and scripts cannot forge it; other clients do not send it.
fn is_cross_site_write(request: &ServiceRequest) -> bool {
    let safe = matches!(*request.method(), Method::GET | Method::HEAD);
    !safe
        && request
            .headers()
            .get("sec-fetch-site")
            .is_some_and(|site| !matches!(site.as_bytes(), b"same-origin" | b"none"))
}
