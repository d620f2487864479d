//! `/api/v1/services`: service definitions and the service list.

use crate::acl::Caller;
use crate::app::{ApiResult, AppState, json, raw_json};
use crate::extract::{Json, Query};
use crate::problem::ProblemDoc;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use muster_core::{ServiceBody, ServiceRecord};
use muster_registry::{ServiceDetail, ServiceSummary};
use serde::Serialize;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_services))
        .routes(routes!(get_service, put_service, delete_service))
}

/// Every service with its instance counts by status.
#[utoipa::path(get, path = "/api/v1/services", tag = "services", responses(
    (status = 200, body = Vec<ServiceSummary>),
))]
async fn list_services(State(s): State<AppState>, caller: Caller) -> ApiResult<Response> {
    let mut services = s.registry()?.services();
    services.retain(|sv| caller.may_read(&sv.name));
    Ok(json(StatusCode::OK, &services))
}

/// A service's definition and its instances.
#[utoipa::path(get, path = "/api/v1/services/{name}", tag = "services",
    params(("name" = String, Path, description = "service name")),
    responses(
        (status = 200, body = ServiceDetail),
        (status = 404, body = ProblemDoc, content_type = "application/problem+json"),
    ))]
async fn get_service(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult<Response> {
    Ok(raw_json(
        StatusCode::OK,
        s.registry()?.service(&name)?.to_json(),
    ))
}

/// Creates or replaces a service definition.
#[utoipa::path(put, path = "/api/v1/services/{name}", tag = "services",
    params(("name" = String, Path, description = "service name: 1-63 of a-z0-9-._, starting with a letter or digit")),
    request_body = ServiceBody,
    responses(
        (status = 200, description = "replaced", body = ServiceRecord),
        (status = 201, description = "created", body = ServiceRecord),
        (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 413, body = ProblemDoc, content_type = "application/problem+json"),
    ))]
async fn put_service(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Json(body): Json<ServiceBody>,
) -> ApiResult<Response> {
    let (rec, created, _) = s.registry()?.put_service(&name, body).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json(status, &rec))
}

#[derive(Serialize, utoipa::ToSchema)]
struct Deleted {
    name: String,
    revision: u64,
}

/// Deletes a service; refuses with 409 while it has instances unless `?cascade=true`.
#[utoipa::path(delete, path = "/api/v1/services/{name}", tag = "services",
    params(
        ("name" = String, Path, description = "service name"),
        ("cascade" = Option<bool>, Query, description = "also deregister its instances"),
    ),
    responses(
        (status = 200, body = Deleted),
        (status = 404, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, body = ProblemDoc, content_type = "application/problem+json"),
    ))]
async fn delete_service(
    State(s): State<AppState>,
    Path(name): Path<String>,
    q: Query,
) -> ApiResult<Response> {
    let cascade = q.flag("cascade")?.unwrap_or(false);
    let revision = s.registry()?.delete_service(&name, cascade).await?;
    Ok(json(StatusCode::OK, &Deleted { name, revision }))
}
