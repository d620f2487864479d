//! `/api/v1/snapshot`: save a consistent point-in-time copy of the whole
//! registry, and restore one onto a fresh server.
//!
//! The rules (one store snapshot, which leased keys are kept, batches, the
//! "fresh server" check) live in `muster_registry` (`Registry::export_snapshot`,
//! `Registry::restore_snapshot`); these handlers only decode, call and encode.
//!
//! Both routes need the `operator` right once ACLs arrive (issue 7).

use crate::app::{ApiResult, AppState, json};
use crate::extract::Json;
use crate::problem::ProblemDoc;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use muster_registry::{Restored, SnapshotDoc};
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(save_snapshot, restore_snapshot))
}

/// Every registry key at one revision, taken while the server keeps serving.
/// ttl instances carry their lease's TTL; session instances and election
/// leaders (ephemeral, bound to a live client) are left out. Operator right.
#[utoipa::path(get, path = "/api/v1/snapshot", tag = "operations",
    responses(
        (status = 200, body = SnapshotDoc),
        (status = 503, body = ProblemDoc, content_type = "application/problem+json"),
    ))]
async fn save_snapshot(State(s): State<AppState>) -> ApiResult<Response> {
    let doc = s.registry()?.export_snapshot().await?;
    Ok(json(StatusCode::OK, &doc))
}

/// Restores a snapshot onto a fresh server: refused with 409 unless the
/// registry holds no services, instances or elections. Answers once every
/// key is written and readable. Operator right.
#[utoipa::path(put, path = "/api/v1/snapshot", tag = "operations",
    request_body = SnapshotDoc,
    responses(
        (status = 200, body = Restored),
        (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "the registry is not empty", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 413, body = ProblemDoc, content_type = "application/problem+json"),
    ))]
async fn restore_snapshot(
    State(s): State<AppState>,
    Json(doc): Json<SnapshotDoc>,
) -> ApiResult<Response> {
    let restored = s.registry()?.restore_snapshot(doc).await?;
    Ok(json(StatusCode::OK, &restored))
}
