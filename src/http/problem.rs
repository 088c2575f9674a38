//! RFC 9457 problem details: the one shape every HTTP error of jobd takes.

use std::fmt;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::auth::AuthFailure;
use crate::submission::{FieldError, SubmissionError};

/// An HTTP error with an `application/problem+json` body.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    /// The last segment of the problem's `type`, e.g. `invalid-job`.
    slug: &'static str,
    title: &'static str,
    detail: String,
    errors: Vec<FieldError>,
    /// Headers that belong to the status: `Retry-After`, `Allow`, `WWW-Authenticate`.
    headers: Vec<(header::HeaderName, String)>,
}

/// The body of every error: RFC 9457 problem details, with the fields at fault.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Problem)]
pub(crate) struct ProblemBody<'a> {
    /// `/problems/<slug>`, e.g. `/problems/invalid-job`.
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    /// One entry per field at fault, with the job's index where there is one.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    #[schema(value_type = Vec<FieldError>)]
    errors: &'a [FieldError],
}

impl Problem {
    pub fn new(status: StatusCode, slug: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Self { status, slug, title, detail: detail.into(), errors: Vec::new(), headers: Vec::new() }
    }

    pub fn slug(&self) -> &'static str {
        self.slug
    }

    /// Adds a `Retry-After` header.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.headers.push((header::RETRY_AFTER, secs.to_string()));
        self
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not Found", detail)
    }

    pub fn method_not_allowed(allow: impl Into<String>) -> Self {
        let allow = allow.into();
        let mut problem = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method Not Allowed",
            format!("this route allows {allow}"),
        );
        problem.headers.push((header::ALLOW, allow));
        problem
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service Unavailable", detail).retry_after(1)
    }

    /// A 503 after which nobody knows whether the request was enqueued: a client may send
    /// it again only if every job carries an idempotency key. Its own type, so that a
    /// client can tell it from the 503s that enqueued nothing.
    pub fn outcome_unknown(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "outcome-unknown", "Outcome Unknown", detail).retry_after(1)
    }

    /// The 503 for a failed write to the queue: `outcome-unknown` when its commit's answer
    /// was lost (it may have taken effect), else `unavailable` (it did nothing).
    pub fn storage(error: &crate::queue::StorageError) -> Self {
        if error.is_outcome_unknown() {
            Self::outcome_unknown(format!("{error}; it may or may not have taken effect"))
        } else {
            Self::unavailable(error.to_string())
        }
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Request Body Too Large",
            format!("the body exceeds max_body_bytes ({limit} bytes)"),
        )
    }

    /// A 421 for a request addressed to a name other than this host's while authentication
    /// is off; see [`super::check_host`].
    pub fn host_not_allowed(detail: String) -> Self {
        let mut problem =
            Self::new(StatusCode::MISDIRECTED_REQUEST, "host-not-allowed", "Misdirected Request", detail.clone());
        problem.errors = vec![FieldError { index: None, field: "Host".to_owned(), message: detail }];
        problem
    }

    pub fn unsupported_media_type(found: Option<&str>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported Media Type",
            format!("Content-Type must be application/json, got {}", found.unwrap_or("none")),
        )
    }
}

impl From<AuthFailure> for Problem {
    /// A 401 or 403 with its RFC 6750 challenge; a refused token's name is shown, its
    /// value never.
    fn from(failure: AuthFailure) -> Self {
        let (status, slug, title, detail, challenge) = match &failure {
            AuthFailure::Missing => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Unauthorized",
                "this route needs an `Authorization: Bearer <token>` header".to_owned(),
                r#"Bearer realm="jobd""#.to_owned(),
            ),
            AuthFailure::Invalid => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Unauthorized",
                "the bearer token is not valid".to_owned(),
                r#"Bearer realm="jobd", error="invalid_token""#.to_owned(),
            ),
            AuthFailure::Scope { name, needed } => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "Forbidden",
                format!("token {name} lacks the {} scope this route needs", needed.name()),
                format!(r#"Bearer realm="jobd", error="insufficient_scope", scope="{}""#, needed.name()),
            ),
            AuthFailure::Confined { name } => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "Forbidden",
                format!(
                    "token {name} is confined to its own jobs, and this route describes the whole daemon: it needs \
                     a read token without confinements"
                ),
                r#"Bearer realm="jobd", error="insufficient_scope", scope="read""#.to_owned(),
            ),
        };
        let mut problem = Problem::new(status, slug, title, detail);
        problem.headers.push((header::WWW_AUTHENTICATE, challenge));
        problem
    }
}

impl Problem {
    /// A 403 for jobs a kind's token limit refused (a key outside the token's
    /// `allowed_key_prefixes`), with the kind's problem type and each job's field.
    pub fn not_allowed(slug: &'static str, title: &'static str, errors: Vec<FieldError>) -> Self {
        // The same "jobs[i].field: message" detail as every other field problem.
        let detail = SubmissionError::Invalid(errors.clone()).to_string();
        let mut problem = Problem::new(StatusCode::FORBIDDEN, slug, title, detail);
        problem.errors = errors;
        problem
    }
}

impl From<SubmissionError> for Problem {
    fn from(error: SubmissionError) -> Self {
        match error {
            SubmissionError::Syntax(_) => {
                Problem::new(StatusCode::BAD_REQUEST, "invalid-json", "Invalid JSON", error.to_string())
            }
            SubmissionError::TooDeep { offset, .. } => {
                let mut problem = Problem::new(StatusCode::BAD_REQUEST, "too-deep", "JSON Too Deep", error.to_string());
                problem.errors = vec![FieldError {
                    index: None,
                    field: String::new(),
                    message: format!("nested too deep at byte {offset}"),
                }];
                problem
            }
            SubmissionError::TooManyJobs { field, .. } => {
                let mut problem =
                    Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "too-many-jobs", "Too Many Jobs", error.to_string());
                problem.errors = vec![FieldError { index: None, field: field.to_owned(), message: error.to_string() }];
                problem
            }
            SubmissionError::Invalid(ref errors) => {
                let mut problem =
                    Problem::new(StatusCode::BAD_REQUEST, "invalid-job", "Invalid Job", error.to_string());
                problem.errors = errors.clone();
                problem
            }
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.title, self.detail)
    }
}

impl ResponseError for Problem {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let body = ProblemBody {
            kind: format!("/problems/{}", self.slug),
            title: self.title,
            status: self.status.as_u16(),
            detail: &self.detail,
            errors: &self.errors,
        };
        let mut response = HttpResponse::build(self.status);
        response.insert_header((header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json")));
        for (name, value) in &self.headers {
            response.insert_header((name.clone(), value.as_str()));
        }
        match serde_json::to_vec(&body) {
            Ok(bytes) => response.body(bytes),
            // Serializing strings and numbers cannot fail; this keeps the error path total.
            Err(_) => response.finish(),
        }
    }
}
