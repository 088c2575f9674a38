//! The operator's console: the page, script and style under `/ui`, embedded in the binary
//! (no build step, no CDN), served with a strict Content-Security-Policy; and
//! `GET /v1/whoami`, which tells the console what the caller's token may do.

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{HttpMessage as _, HttpRequest, HttpResponse, web};
use serde::Serialize;

use super::problem::ProblemBody;
use crate::auth::{Principal, Scope};

const INDEX_HTML: &str = include_str!("console/index.html");
const APP_JS: &str = include_str!("console/app.js");
const APP_CSS: &str = include_str!("console/app.css");

/// No script but the console's own file, no inline script or style, no frames, no forms
/// posted anywhere, and requests only to this origin: a payload or an error message that
/// holds markup cannot run, even if it were ever inserted as markup.
/// `require-trusted-types-for 'script'` makes the browser itself refuse any assignment of
/// markup from a string (`innerHTML` and the like), so "text only" is enforced, not only
/// followed.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; \
     require-trusted-types-for 'script'";

/// Registers `/ui` and its two assets. They are open: the page holds no data, and every
/// request it makes carries the token the operator typed.
pub fn configure(config: &mut web::ServiceConfig) {
    config
        .route("/ui", web::get().to(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/ui/", web::get().to(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/ui/app.js", web::get().to(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/ui/app.css", web::get().to(|| async { asset("text/css; charset=utf-8", APP_CSS) }));
}

fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        // A new jobd serves a new console: never a stale script from the browser's cache.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

/// Who the caller is, for a client deciding what to offer.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct WhoAmI {
    /// Whether tokens are in force; without them every caller may do everything.
    authenticated: bool,
    /// The token's name.
    name: Option<String>,
    /// What the token may do: `submit`, `read`, `admin`.
    scopes: Vec<&'static str>,
    /// Whether the token sees and controls only the jobs it submitted.
    confined: bool,
    /// The kinds this jobd runs, for a filter that offers them.
    kinds: Vec<&'static str>,
}

/// `GET /v1/whoami`: the caller's token name and scopes.
#[utoipa::path(
    get,
    path = "/v1/whoami",
    tag = "meta",
    responses(
        (status = 200, description = "The caller's token and what it may do", body = WhoAmI),
        (status = 401, description = "No bearer token, or an unknown one", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "The token lacks the scope", body = ProblemBody, content_type = "application/problem+json")
    ),
    security(("bearer" = []))
)]
pub(super) async fn whoami(request: HttpRequest, state: actix_web::web::Data<super::AppState>) -> HttpResponse {
    let principal = request.extensions().get::<Arc<Principal>>().cloned();
    let kinds = state.kinds.names();
    let answer = match principal {
        Some(principal) => WhoAmI {
            authenticated: true,
            name: Some(principal.name.clone()),
            scopes: Scope::ALL.into_iter().filter(|&scope| principal.has(scope)).map(Scope::name).collect(),
            confined: principal.is_confined(),
            kinds,
        },
        None => WhoAmI {
            authenticated: false,
            name: None,
            scopes: Scope::ALL.into_iter().map(Scope::name).collect(),
            confined: false,
            kinds,
        },
    };
    HttpResponse::Ok().json(answer)
}
