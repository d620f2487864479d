//! The Consul-compatible HTTP subset at `/v1/...`: enough for Prometheus's
//! `consul_sd_configs`, the python `py-consul` client and the npm `consul`
//! client to work unchanged against muster. Instances registered here are
//! the same instances as the native API's.
//!
//! Every answer carries `X-Consul-Index` (the revision that last changed the
//! resource asked about, at least 1), `X-Consul-KnownLeader: true`,
//! `X-Consul-LastContact: 0` and `Content-Type: application/json`, errors
//! included. Blocking queries (`?index=N&wait=...`) wait on one wake-up per
//! resource: a change to one service never wakes watchers of another.

mod agent;
mod body;
mod catalog;

use crate::app::AppState;
use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, put};
use serde::Serialize;

/// Every Consul-compatible route (the access rules in `crate::acl` are
/// checked against this list).
pub fn routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/v1/agent/service/register", put(agent::register)),
        ("/v1/agent/service/deregister/{id}", put(agent::deregister)),
        (
            "/v1/agent/service/maintenance/{id}",
            put(agent::maintenance),
        ),
        ("/v1/agent/check/pass/{id}", put(agent::pass)),
        ("/v1/agent/check/warn/{id}", put(agent::warn)),
        ("/v1/agent/check/fail/{id}", put(agent::fail)),
        ("/v1/agent/check/update/{id}", put(agent::update)),
        ("/v1/agent/self", get(agent::agent_self)),
        ("/v1/agent/services", get(agent::services)),
        ("/v1/status/leader", get(agent::leader)),
        ("/v1/status/peers", get(agent::peers)),
        ("/v1/catalog/services", get(catalog::services)),
        ("/v1/catalog/service/{name}", get(catalog::service)),
        ("/v1/catalog/datacenters", get(catalog::datacenters)),
        ("/v1/health/service/{name}", get(catalog::health)),
    ]
}

pub fn router() -> Router<AppState> {
    routes()
        .into_iter()
        .fold(Router::new(), |r, (path, method)| r.route(path, method))
}

/// The datacenter and node muster presents itself as.
pub const DATACENTER: &str = "dc1";
pub const NODE: &str = "muster";
pub const NODE_ID: &str = "6d757374-6572-0000-0000-000000000001";
pub const NODE_ADDRESS: &str = "127.0.0.1";

/// A Consul answer: JSON (or a JSON error string) with the Consul headers.
pub fn reply<T: Serialize>(status: StatusCode, index: u64, body: &T) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"null".to_vec());
    let mut resp = (status, bytes).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert("x-consul-index", HeaderValue::from(index.max(1)));
    h.insert("x-consul-knownleader", HeaderValue::from_static("true"));
    h.insert("x-consul-lastcontact", HeaderValue::from_static("0"));
    resp
}

/// Consul reports errors as text; here as a JSON string, so every answer is JSON.
pub fn error(status: StatusCode, index: u64, message: impl Into<String>) -> Response {
    reply(status, index, &message.into())
}

impl From<muster_registry::RegistryError> for ConsulError {
    fn from(e: muster_registry::RegistryError) -> Self {
        use muster_registry::RegistryError as E;
        let status = match &e {
            E::Invalid(_) => StatusCode::BAD_REQUEST,
            E::Forbidden(_) => StatusCode::FORBIDDEN,
            E::NotFound(_) => StatusCode::NOT_FOUND,
            E::Conflict(_) => StatusCode::CONFLICT,
            E::Unavailable(_) | E::NotReady => StatusCode::SERVICE_UNAVAILABLE,
        };
        ConsulError(status, e.to_string())
    }
}

impl From<crate::problem::Problem> for ConsulError {
    fn from(p: crate::problem::Problem) -> Self {
        ConsulError(
            StatusCode::from_u16(p.status).unwrap_or(StatusCode::BAD_REQUEST),
            p.detail,
        )
    }
}

/// An error on a Consul route.
#[derive(Debug)]
pub struct ConsulError(pub StatusCode, pub String);

impl IntoResponse for ConsulError {
    fn into_response(self) -> Response {
        error(self.0, 1, self.1)
    }
}

pub type ConsulResult = Result<Response, ConsulError>;

/// `wait=` of a blocking query: Consul's duration syntax, at most 10 minutes,
/// default 5 minutes.
pub fn wait_of(q: &crate::extract::Query) -> Result<std::time::Duration, ConsulError> {
    let d = match q.one("wait") {
        None => std::time::Duration::from_secs(300),
        Some(v) => muster_core::duration::parse(v)
            .map(|m| m.as_duration())
            .map_err(|e| ConsulError(StatusCode::BAD_REQUEST, format!("invalid wait: {e}")))?,
    };
    let d = d.min(std::time::Duration::from_secs(600));
    // A little jitter (up to wait/16), as Consul does, so watchers spread out.
    let jitter = d.as_millis() as u64 / 16;
    let extra = if jitter > 0 { rand_below(jitter) } else { 0 };
    Ok(d + std::time::Duration::from_millis(extra))
}

fn rand_below(n: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    nanos % n
}

/// `?index=`, if this is a blocking query.
pub fn index_of(q: &crate::extract::Query) -> Result<Option<u64>, ConsulError> {
    q.one("index")
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| ConsulError(StatusCode::BAD_REQUEST, format!("invalid index {v:?}")))
        })
        .transpose()
}
