//! Operations routes: liveness, readiness and metrics.

use crate::app::AppState;
use crate::problem::ProblemDoc;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(metrics))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200, description = "alive")))]
async fn health() -> Response {
    crate::app::json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

/// Readiness: 200 once the store is open and the index loaded.
#[utoipa::path(get, path = "/ready", tag = "operations", responses(
    (status = 200, description = "ready"),
    (status = 503, description = "still loading", body = ProblemDoc, content_type = "application/problem+json"),
))]
async fn ready(State(state): State<AppState>) -> Response {
    match state.registry() {
        Ok(r) => crate::app::json(
            StatusCode::OK,
            &serde_json::json!({"status": "ready", "revision": r.revision()}),
        ),
        Err(p) => p.into_response(),
    }
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics(State(state): State<AppState>) -> Response {
    let text = state
        .metrics
        .render(state.registry().ok().map(|r| r.as_ref()));
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
