//! `/api/v1/checks`: checks, passive ttl updates, probe history and stats.

use crate::acl::Caller;
use crate::app::{ApiResult, AppState, json};
use crate::extract::{Json, OptionalJson, Query};
use crate::problem::{Problem, ProblemDoc};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use muster_core::{CheckKind, CheckRecord, CheckSpec, Millis, Status};
use muster_health::history::{ProbeRecord, ProbeStats};
use muster_registry::OwnedCheck;
use serde::{Deserialize, Serialize};
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_checks, add_check))
        .routes(routes!(get_check, delete_check))
        .routes(routes!(pass))
        .routes(routes!(warn))
        .routes(routes!(fail))
        .routes(routes!(probes))
        .routes(routes!(stats))
}

/// A check as the API shows it: definition, current status, last probe and
/// stats over the last hour.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CheckView {
    id: String,
    service: String,
    instance: String,
    name: String,
    kind: &'static str,
    target: String,
    #[schema(value_type = Millis)]
    interval: Millis,
    #[schema(value_type = Millis)]
    timeout: Millis,
    success_before_passing: u32,
    failures_before_warning: u32,
    failures_before_critical: u32,
    status: Status,
    output: String,
    flapping: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_probe: Option<ProbeRecord>,
    stats: ProbeStats,
}

const STATS_WINDOW: std::time::Duration = std::time::Duration::from_secs(3600);

fn view(s: &AppState, c: OwnedCheck) -> ApiResult<CheckView> {
    let health = s.health()?;
    let history = health.history();
    let CheckRecord {
        id,
        name,
        kind,
        interval,
        timeout,
        success_before_passing,
        failures_before_warning,
        failures_before_critical,
        status,
        output,
        flapping,
    } = c.check.clone();
    let target = c.check.target();
    // The engine's live view wins over the stored one between writes.
    let (status, flapping) = health.live(&id).unwrap_or((status, flapping));
    Ok(CheckView {
        last_probe: history.last(&id),
        stats: history.stats(&id, STATS_WINDOW, time::OffsetDateTime::now_utc()),
        id,
        service: c.service,
        instance: c.instance,
        name,
        kind: kind_name(&kind),
        target,
        interval,
        timeout,
        success_before_passing,
        failures_before_warning,
        failures_before_critical,
        status,
        output,
        flapping,
    })
}

fn kind_name(k: &CheckKind) -> &'static str {
    k.name()
}

/// Every check; `?service=` and `?status=` (repeatable) filter.
#[utoipa::path(get, path = "/api/v1/checks", tag = "checks",
    params(
        ("service" = Option<String>, Query),
        ("status" = Option<Vec<Status>>, Query, description = "any of these (repeatable)"),
    ),
    responses((status = 200, body = Vec<CheckView>), (status = 400, body = ProblemDoc, content_type = "application/problem+json")))]
async fn list_checks(State(s): State<AppState>, caller: Caller, q: Query) -> ApiResult<Response> {
    if let Some(service) = q.one("service") {
        caller.require_read(service)?;
    }
    let mut statuses = Vec::new();
    for v in q.all("status") {
        statuses.push(Status::parse(v).ok_or_else(|| {
            Problem::bad_request(
                "status",
                format!("{v:?} is not passing, warning or critical"),
            )
        })?);
    }
    let mut out = Vec::new();
    for c in s.registry()?.checks(q.one("service")) {
        if !caller.may_read(&c.service) {
            continue;
        }
        let v = view(&s, c)?;
        if statuses.is_empty() || statuses.contains(&v.status) {
            out.push(v);
        }
    }
    Ok(json(StatusCode::OK, &out))
}

/// Adds a check to an existing instance: `{service, instance, ...check}`.
#[utoipa::path(post, path = "/api/v1/checks", tag = "checks", request_body = CheckSpec,
    responses(
        (status = 201, body = CheckView),
        (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "exec checks are disabled", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 404, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, body = ProblemDoc, content_type = "application/problem+json"),
    ))]
async fn add_check(
    State(s): State<AppState>,
    caller: Caller,
    Json(spec): Json<CheckSpec>,
) -> ApiResult<Response> {
    match &spec.service {
        Some(service) => caller.require_write(service)?,
        None => caller.require_token()?,
    }
    let c = s.registry()?.add_check(spec).await?;
    Ok(json(StatusCode::CREATED, &view(&s, c)?))
}

#[utoipa::path(get, path = "/api/v1/checks/{id}", tag = "checks", params(("id" = String, Path)),
    responses((status = 200, body = CheckView), (status = 404, body = ProblemDoc, content_type = "application/problem+json")))]
async fn get_check(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let c = s.registry()?.check(&id)?;
    Ok(json(StatusCode::OK, &view(&s, c)?))
}

#[derive(Serialize, utoipa::ToSchema)]
struct Removed {
    id: String,
}

#[utoipa::path(delete, path = "/api/v1/checks/{id}", tag = "checks", params(("id" = String, Path)),
    responses((status = 200, body = Removed), (status = 404, body = ProblemDoc, content_type = "application/problem+json")))]
async fn delete_check(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    s.registry()?.remove_check(&id).await?;
    s.health()?.history().remove(&id);
    Ok(json(StatusCode::OK, &Removed { id }))
}

/// `{output?}` of a passive update.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TtlUpdate {
    output: Option<String>,
}

async fn ttl(s: AppState, id: String, status: Status, body: TtlUpdate) -> ApiResult<Response> {
    if body
        .output
        .as_ref()
        .is_some_and(|o| o.len() > muster_core::instance::MAX_TEXT)
    {
        return Err(Problem::bad_request("output", "at most 4096 bytes"));
    }
    // The check must exist in the registry, whatever the engine has loaded yet.
    let c = s.registry()?.check(&id)?;
    s.health()?.ttl_update(&id, status, body.output).await?;
    Ok(json(
        StatusCode::OK,
        &view(&s, s.registry()?.check(&c.check.id)?)?,
    ))
}

/// Passes a ttl check and restarts its ttl.
#[utoipa::path(put, path = "/api/v1/checks/{id}/pass", tag = "checks", params(("id" = String, Path)),
    request_body(content = Option<TtlUpdate>),
    responses((status = 200, body = CheckView), (status = 404, body = ProblemDoc, content_type = "application/problem+json"),
               (status = 409, description = "not a ttl check", body = ProblemDoc, content_type = "application/problem+json")))]
async fn pass(
    State(s): State<AppState>,
    Path(id): Path<String>,
    OptionalJson(b): OptionalJson<TtlUpdate>,
) -> ApiResult<Response> {
    ttl(s, id, Status::Passing, b).await
}

/// Sets a ttl check to warning and restarts its ttl.
#[utoipa::path(put, path = "/api/v1/checks/{id}/warn", tag = "checks", params(("id" = String, Path)),
    request_body(content = Option<TtlUpdate>),
    responses((status = 200, body = CheckView), (status = 404, body = ProblemDoc, content_type = "application/problem+json"),
               (status = 409, description = "not a ttl check", body = ProblemDoc, content_type = "application/problem+json")))]
async fn warn(
    State(s): State<AppState>,
    Path(id): Path<String>,
    OptionalJson(b): OptionalJson<TtlUpdate>,
) -> ApiResult<Response> {
    ttl(s, id, Status::Warning, b).await
}

/// Sets a ttl check to critical and restarts its ttl.
#[utoipa::path(put, path = "/api/v1/checks/{id}/fail", tag = "checks", params(("id" = String, Path)),
    request_body(content = Option<TtlUpdate>),
    responses((status = 200, body = CheckView), (status = 404, body = ProblemDoc, content_type = "application/problem+json"),
               (status = 409, description = "not a ttl check", body = ProblemDoc, content_type = "application/problem+json")))]
async fn fail(
    State(s): State<AppState>,
    Path(id): Path<String>,
    OptionalJson(b): OptionalJson<TtlUpdate>,
) -> ApiResult<Response> {
    ttl(s, id, Status::Critical, b).await
}

fn parse_since(q: &Query) -> ApiResult<Option<time::OffsetDateTime>> {
    q.one("since")
        .map(|v| {
            time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339).map_err(
                |_| {
                    Problem::bad_request(
                        "since",
                        format!("{v:?} is not an RFC 3339 time such as 2026-11-22T10:00:00Z"),
                    )
                },
            )
        })
        .transpose()
}

/// Probe history, newest first.
#[utoipa::path(get, path = "/api/v1/checks/{id}/probes", tag = "checks",
    params(("id" = String, Path),
           ("since" = Option<String>, Query, description = "RFC 3339: only probes requested at or after"),
           ("limit" = Option<u32>, Query, description = "at most this many (default 100, at most 10000)")),
    responses((status = 200, body = Vec<ProbeRecord>), (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
              (status = 404, body = ProblemDoc, content_type = "application/problem+json")))]
async fn probes(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Query,
) -> ApiResult<Response> {
    let since = parse_since(&q)?;
    let limit = match q.one("limit") {
        None => 100,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|&n| (1..=10_000).contains(&n))
            .ok_or_else(|| {
                Problem::bad_request("limit", format!("{v:?} is not a number from 1 to 10000"))
            })?,
    };
    s.registry()?.check(&id)?;
    Ok(json(
        StatusCode::OK,
        &s.health()?.history().list(&id, since, limit),
    ))
}

/// Uptime ratio and response-time percentiles over a window (default 1h).
#[utoipa::path(get, path = "/api/v1/checks/{id}/stats", tag = "checks",
    params(("id" = String, Path), ("window" = Option<String>, Query, description = "a duration such as 1h, 15m (default 1h)")),
    responses((status = 200, body = ProbeStats), (status = 400, body = ProblemDoc, content_type = "application/problem+json"),
              (status = 404, body = ProblemDoc, content_type = "application/problem+json")))]
async fn stats(State(s): State<AppState>, Path(id): Path<String>, q: Query) -> ApiResult<Response> {
    let window = match q.one("window") {
        None => STATS_WINDOW,
        Some(v) => muster_core::duration::parse(v)
            .ok()
            .filter(|m| m.0 > 0)
            .map(Millis::as_duration)
            .ok_or_else(|| {
                Problem::bad_request(
                    "window",
                    format!("{v:?} is not a duration such as 1h or 15m"),
                )
            })?,
    };
    s.registry()?.check(&id)?;
    Ok(json(
        StatusCode::OK,
        &s.health()?
            .history()
            .stats(&id, window, time::OffsetDateTime::now_utc()),
    ))
}
