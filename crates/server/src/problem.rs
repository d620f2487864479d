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

/// `application/problem+json`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `urn:muster:problem:{code}`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable machine code, e.g. `invalid`, `not_found`, `conflict`.
    pub code: String,
    /// The (first) offending field, when one is to blame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ProblemField>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Problem {
        Problem {
            kind: format!("urn:muster:problem:{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            code: code.to_string(),
            field: None,
            errors: Vec::new(),
        }
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
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut resp = (status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}
