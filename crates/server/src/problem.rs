//! RFC 9457 problem details: every error the API answers, with the field
//! that caused it and a stable machine code.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use muster_core::ValidationError;
use muster_registry::RegistryError;
use serde::Serialize;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ProblemField {
    pub field: String,
    pub message: String,
}

/// An RFC 9457 problem (`application/problem+json`). Kept small because
/// every fallible handler step returns it; `type` and `title` are derived
/// from `code` and `status` when it is written out.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: u16,
    /// Stable machine code, e.g. `invalid`, `not_found`, `conflict`.
    pub code: &'static str,
    pub detail: String,
    /// The (first) offending field, when one is to blame.
    pub field: Option<String>,
    pub errors: Vec<ProblemField>,
    /// Sent as `Retry-After` (whole seconds, at least 1).
    pub retry_after: Option<std::time::Duration>,
}

/// The problem document as written on the wire (and in the OpenAPI document).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Problem)]
pub struct ProblemDoc<'a> {
    /// `urn:muster:problem:{code}`.
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    errors: &'a [ProblemField],
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            status: status.as_u16(),
            code,
            detail: detail.into(),
            field: None,
            errors: Vec::new(),
            retry_after: None,
        }
    }

    /// Tells the client when to try again.
    pub fn retry_after(mut self, wait: std::time::Duration) -> Problem {
        self.retry_after = Some(wait);
        self
    }

    pub fn bad_request(field: impl Into<String>, detail: impl Into<String>) -> Problem {
        let field = field.into();
        let detail = detail.into();
        let mut p = Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("{field}: {detail}"),
        );
        p.errors.push(ProblemField {
            field: field.clone(),
            message: detail,
        });
        p.field = Some(field);
        p
    }

    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub fn doc(&self) -> ProblemDoc<'_> {
        ProblemDoc {
            kind: format!("urn:muster:problem:{}", self.code),
            title: self.status().canonical_reason().unwrap_or("Error"),
            status: self.status,
            detail: &self.detail,
            code: self.code,
            field: self.field.as_deref(),
            errors: &self.errors,
        }
    }
}

impl From<ValidationError> for Problem {
    fn from(e: ValidationError) -> Problem {
        let mut p = Problem::new(StatusCode::BAD_REQUEST, "invalid", e.to_string());
        p.field = Some(e.first_field().to_string());
        p.errors = e
            .errors
            .into_iter()
            .map(|f| ProblemField {
                field: f.field,
                message: f.message,
            })
            .collect();
        p
    }
}

impl From<RegistryError> for Problem {
    fn from(e: RegistryError) -> Problem {
        match e {
            RegistryError::Invalid(v) => v.into(),
            RegistryError::Forbidden(m) => Problem::new(StatusCode::FORBIDDEN, "forbidden", m),
            RegistryError::NotFound(m) => Problem::not_found(m),
            RegistryError::Conflict(m) => Problem::new(StatusCode::CONFLICT, "conflict", m),
            RegistryError::Unavailable(m) => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m)
            }
            RegistryError::NotReady => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "the registry is starting or stopping; retry shortly",
            ),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::to_vec(&self.doc()).unwrap_or_default();
        let mut resp = (status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(wait) = self.retry_after {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        } else if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}
