//! RFC 9457 problem details: the one shape every HTTP error of jobd takes.

use std::fmt;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

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
    retry_after_secs: Option<u64>,
    allow: Option<&'static str>,
}

#[derive(Serialize)]
struct ProblemBody<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    errors: &'a [FieldError],
}

impl Problem {
    pub fn new(status: StatusCode, slug: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Self { status, slug, title, detail: detail.into(), errors: Vec::new(), retry_after_secs: None, allow: None }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn slug(&self) -> &'static str {
        self.slug
    }

    /// Adds a `Retry-After` header.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not Found", detail)
    }

    pub fn method_not_allowed(allow: &'static str) -> Self {
        let mut problem = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method Not Allowed",
            format!("this route allows {allow}"),
        );
        problem.allow = Some(allow);
        problem
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service Unavailable", detail).retry_after(1)
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Request Body Too Large",
            format!("the body exceeds max_body_bytes ({limit} bytes)"),
        )
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

impl From<SubmissionError> for Problem {
    fn from(error: SubmissionError) -> Self {
        match error {
            SubmissionError::Syntax(_) => {
                Problem::new(StatusCode::BAD_REQUEST, "invalid-json", "Invalid JSON", error.to_string())
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
        if let Some(secs) = self.retry_after_secs {
            response.insert_header((header::RETRY_AFTER, secs));
        }
        if let Some(allow) = self.allow {
            response.insert_header((header::ALLOW, allow));
        }
        match serde_json::to_vec(&body) {
            Ok(bytes) => response.body(bytes),
            // Serializing strings and numbers cannot fail; this keeps the error path total.
            Err(_) => response.finish(),
        }
    }
}
