//! `/api/v1/services/{service}/instances`: registration, discovery,
//! heartbeats and maintenance.

use crate::app::{ApiResult, AppState, json, raw_json};
use crate::extract::{Json, OptionalJson, Query};
use crate::problem::{Problem, ProblemDoc};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use muster_core::{
    DeregisterBody, HeartbeatBody, InstanceDoc, MaintenanceBody, RegisterBody, Status,
};
use muster_registry::{InstanceFilter, Registered, list_json};
use serde::Serialize;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_instances, register))
        .routes(routes!(get_instance, put_instance, deregister))
        .routes(routes!(heartbeat))
        .routes(routes!(maintenance))
}

fn registered(r: Registered) -> Response {
    let status = if r.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    raw_json(status, r.instance.to_vec())
}

/// Instances of a service, filtered. An unknown service has none: `[]`.
#[utoipa::path(get, path = "/api/v1/services/{service}/instances", tag = "instances",
    params(
        ("service" = String, Path),
        ("status" = Option<Vec<Status>>, Query, description = "any of these statuses (repeatable)"),
        ("tag" = Option<Vec<String>>, Query, description = "all of these tags (repeatable)"),
        ("healthy" = Option<bool>, Query, description = "passing, plus warning unless strict"),
        ("strict" = Option<bool>, Query, description = "with healthy: passing only"),
    ),
    responses(
        (status = 200, body = Vec<InstanceDoc>),
        (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
    ))]
async fn list_instances(
    State(s): State<AppState>,
    Path(service): Path<String>,
    q: Query,
) -> ApiResult<Response> {
    let mut filter = InstanceFilter::default();
    for v in q.all("status") {
        for part in v.split(',').filter(|p| !p.is_empty()) {
            let st = Status::parse(part).ok_or_else(|| {
                Problem::bad_request(
                    "status",
                    format!("{part:?} is not passing, warning, critical or maintenance"),
                )
            })?;
            filter.statuses.push(st);
        }
    }
    filter.tags = q.all("tag").map(str::to_string).collect();
    filter.healthy = q.flag("healthy")?;
    filter.strict = q.flag("strict")?.unwrap_or(false);
    Ok(raw_json(
        StatusCode::OK,
        list_json(&s.registry()?.instances(&service, &filter)),
    ))
}

/// Registers an instance; the id is derived from service, address and port
/// unless given. 201 when new, 200 when it replaced the same id.
#[utoipa::path(post, path = "/api/v1/services/{service}/instances", tag = "instances",
    params(("service" = String, Path)),
    request_body = RegisterBody,
    responses(
        (status = 201, description = "registered", body = InstanceDoc),
        (status = 200, description = "replaced an instance with the same id", body = InstanceDoc),
        (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "exec checks are disabled", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 413, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 503, body = ProblemDoc, content_type = "application/problem+json"),
    ))]
async fn register(
    State(s): State<AppState>,
    Path(service): Path<String>,
    Json(body): Json<RegisterBody>,
) -> ApiResult<Response> {
    Ok(registered(
        s.registry()?.register(&service, body, None).await?,
    ))
}

/// One instance, with its checks and last metrics.
#[utoipa::path(get, path = "/api/v1/services/{service}/instances/{id}", tag = "instances",
    params(("service" = String, Path), ("id" = String, Path)),
    responses(
        (status = 200, body = InstanceDoc),
        (status = 404, body = ProblemDoc, content_type = "application/problem+json"),
    ))]
async fn get_instance(
    State(s): State<AppState>,
    Path((service, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    Ok(raw_json(
        StatusCode::OK,
        s.registry()?.instance(&service, &id)?.to_vec(),
    ))
}

/// Registers under an explicit id (idempotent).
#[utoipa::path(put, path = "/api/v1/services/{service}/instances/{id}", tag = "instances",
    params(("service" = String, Path), ("id" = String, Path)),
    request_body = RegisterBody,
    responses(
        (status = 201, description = "registered", body = InstanceDoc),
        (status = 200, description = "replaced", body = InstanceDoc),
        (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, body = ProblemDoc, content_type = "application/problem+json"),
    ))]
async fn put_instance(
    State(s): State<AppState>,
    Path((service, id)): Path<(String, String)>,
    Json(body): Json<RegisterBody>,
) -> ApiResult<Response> {
    Ok(registered(
        s.registry()?.register(&service, body, Some(&id)).await?,
    ))
}

#[derive(Serialize, utoipa::ToSchema)]
struct Deregistered {
    service: String,
    id: String,
    revision: u64,
}

/// Deregisters; the optional `{reason, error}` is kept on the event.
#[utoipa::path(delete, path = "/api/v1/services/{service}/instances/{id}", tag = "instances",
    params(("service" = String, Path), ("id" = String, Path)),
    request_body(content = Option<DeregisterBody>),
    responses(
        (status = 200, body = Deregistered),
        (status = 404, body = ProblemDoc, content_type = "application/problem+json"),
    ))]
async fn deregister(
    State(s): State<AppState>,
    Path((service, id)): Path<(String, String)>,
    OptionalJson(body): OptionalJson<DeregisterBody>,
) -> ApiResult<Response> {
    let revision = s.registry()?.deregister(&service, &id, body).await?;
    Ok(json(
        StatusCode::OK,
        &Deregistered {
            service,
            id,
            revision,
        },
    ))
}

/// Renews a ttl instance; optional metrics and self-reported status. 404 if
/// unknown, so the client knows to register again.
#[utoipa::path(put, path = "/api/v1/services/{service}/instances/{id}/heartbeat", tag = "instances",
    params(("service" = String, Path), ("id" = String, Path)),
    request_body(content = Option<HeartbeatBody>),
    responses(
        (status = 200, body = InstanceDoc),
        (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, body = ProblemDoc, content_type = "application/problem+json"),
    ))]
async fn heartbeat(
    State(s): State<AppState>,
    Path((service, id)): Path<(String, String)>,
    OptionalJson(body): OptionalJson<HeartbeatBody>,
) -> ApiResult<Response> {
    let (status, output) = (body.status, body.output.clone());
    let registry = s.registry()?;
    registry.heartbeat(&service, &id, body).await?;
    // A heartbeat also passes the instance's ttl checks.
    s.health()?.heartbeat(&service, &id, status, output).await;
    Ok(raw_json(
        StatusCode::OK,
        registry.instance(&service, &id)?.to_vec(),
    ))
}

/// Puts an instance in or out of maintenance.
#[utoipa::path(put, path = "/api/v1/services/{service}/instances/{id}/maintenance", tag = "instances",
    params(("service" = String, Path), ("id" = String, Path)),
    request_body = MaintenanceBody,
    responses(
        (status = 200, body = InstanceDoc),
        (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, body = ProblemDoc, content_type = "application/problem+json"),
    ))]
async fn maintenance(
    State(s): State<AppState>,
    Path((service, id)): Path<(String, String)>,
    Json(body): Json<MaintenanceBody>,
) -> ApiResult<Response> {
    Ok(raw_json(
        StatusCode::OK,
        s.registry()?
            .maintenance(&service, &id, body)
            .await?
            .to_vec(),
    ))
}
