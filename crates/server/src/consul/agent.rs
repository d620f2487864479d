//! `/v1/agent/...` and `/v1/status/...`.

use super::{ConsulError, ConsulResult, DATACENTER, NODE, NODE_ADDRESS, NODE_ID, reply};
use crate::acl::Caller;
use crate::app::AppState;
use crate::extract::Query;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use muster_core::{DeregisterBody, MaintenanceBody, Status};
use serde_json::json;

fn index(s: &AppState) -> u64 {
    s.registry().map(|r| r.revision()).unwrap_or(1)
}

/// `PUT /v1/agent/service/register`.
pub async fn register(State(s): State<AppState>, caller: Caller, body: Bytes) -> ConsulResult {
    let reg = super::body::parse(&body)?;
    caller.require_write(&reg.service)?;
    let registry = s.registry()?;
    registry.register(&reg.service, reg.body, None).await?;
    Ok(reply(StatusCode::OK, index(&s), &serde_json::Value::Null))
}

fn owner(s: &AppState, id: &str) -> Result<String, ConsulError> {
    s.registry()?
        .find_instance(id)
        .ok_or_else(|| ConsulError(StatusCode::NOT_FOUND, format!("Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name.")))
}

/// `PUT /v1/agent/service/deregister/{id}`.
pub async fn deregister(State(s): State<AppState>, Path(id): Path<String>) -> ConsulResult {
    let service = owner(&s, &id)?;
    let body = DeregisterBody {
        reason: Some("deregistered through the Consul API".into()),
        error: None,
    };
    s.registry()?.deregister(&service, &id, body).await?;
    Ok(reply(StatusCode::OK, index(&s), &serde_json::Value::Null))
}

/// `PUT /v1/agent/service/maintenance/{id}?enable=true|false&reason=`.
pub async fn maintenance(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Query,
) -> ConsulResult {
    // Clients spell booleans as they like (`True` from Python's requests).
    let enabled = match q.one("enable").map(str::to_ascii_lowercase).as_deref() {
        Some("true" | "1") => true,
        Some("false" | "0") => false,
        _ => {
            return Err(ConsulError(
                StatusCode::BAD_REQUEST,
                "Missing value for enable".into(),
            ));
        }
    };
    let service = owner(&s, &id)?;
    let body = MaintenanceBody {
        enabled,
        reason: q.one("reason").map(str::to_string),
    };
    s.registry()?.maintenance(&service, &id, body).await?;
    Ok(reply(StatusCode::OK, index(&s), &serde_json::Value::Null))
}

async fn ttl(s: AppState, id: String, status: Status, output: Option<String>) -> ConsulResult {
    s.registry()?.check(&id)?;
    s.health()?.ttl_update(&id, status, output).await?;
    Ok(reply(StatusCode::OK, index(&s), &serde_json::Value::Null))
}

/// `PUT /v1/agent/check/pass/{id}?note=`.
pub async fn pass(State(s): State<AppState>, Path(id): Path<String>, q: Query) -> ConsulResult {
    let note = q.one("note").map(str::to_string);
    ttl(s, id, Status::Passing, note).await
}

pub async fn warn(State(s): State<AppState>, Path(id): Path<String>, q: Query) -> ConsulResult {
    let note = q.one("note").map(str::to_string);
    ttl(s, id, Status::Warning, note).await
}

pub async fn fail(State(s): State<AppState>, Path(id): Path<String>, q: Query) -> ConsulResult {
    let note = q.one("note").map(str::to_string);
    ttl(s, id, Status::Critical, note).await
}

/// `PUT /v1/agent/check/update/{id}` with `{"Status": ..., "Output": ...}`.
pub async fn update(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ConsulResult {
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        ConsulError(
            StatusCode::BAD_REQUEST,
            format!("request decode failed: {e}"),
        )
    })?;
    let field = |k: &str| {
        v.as_object()
            .and_then(|m| m.iter().find(|(key, _)| key.eq_ignore_ascii_case(k)))
            .and_then(|(_, v)| v.as_str())
            .map(str::to_string)
    };
    let status = match field("Status").as_deref() {
        Some("passing") => Status::Passing,
        Some("warning") => Status::Warning,
        Some("critical") => Status::Critical,
        other => {
            return Err(ConsulError(
                StatusCode::BAD_REQUEST,
                format!("Invalid check status: {other:?}"),
            ));
        }
    };
    ttl(s, id, status, field("Output")).await
}

/// `GET /v1/agent/self`: every top-level value an object.
pub async fn agent_self(State(s): State<AppState>) -> ConsulResult {
    let body = json!({
        "Config": {
            "Datacenter": DATACENTER, "NodeName": NODE, "NodeID": NODE_ID, "Server": true,
            "Revision": "muster", "Version": env!("CARGO_PKG_VERSION"), "PrimaryDatacenter": DATACENTER,
        },
        "DebugConfig": {},
        "Coord": {},
        "Member": {"Name": NODE, "Addr": NODE_ADDRESS, "Port": 8301, "Tags": {"dc": DATACENTER, "role": "consul"}, "Status": 1},
        "Meta": {},
        "Stats": {"muster": {"revision": index(&s).to_string()}},
        "xDS": {},
    });
    Ok(reply(StatusCode::OK, index(&s), &body))
}

/// `GET /v1/agent/services`: every instance, keyed by id.
pub async fn services(State(s): State<AppState>, caller: Caller) -> ConsulResult {
    let registry = s.registry()?;
    let mut out = serde_json::Map::new();
    for summary in registry.services() {
        if !caller.may_read(&summary.name) {
            continue;
        }
        for (rec, _) in registry.records(&summary.name) {
            out.insert(rec.id.clone(), super::catalog::agent_service(&rec));
        }
    }
    Ok(reply(StatusCode::OK, index(&s), &out))
}

/// `GET /v1/status/leader`: this server (standalone mode leads itself).
pub async fn leader(State(s): State<AppState>) -> ConsulResult {
    Ok(reply(
        StatusCode::OK,
        index(&s),
        &format!("{NODE_ADDRESS}:8300"),
    ))
}

pub async fn peers(State(s): State<AppState>) -> ConsulResult {
    Ok(reply(
        StatusCode::OK,
        index(&s),
        &[format!("{NODE_ADDRESS}:8300")],
    ))
}
