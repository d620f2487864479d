//! `/v1/catalog/...` and `/v1/health/service/...`, with blocking queries.

use super::{ConsulResult, DATACENTER, NODE, NODE_ADDRESS, NODE_ID, index_of, reply, wait_of};
use crate::acl::Caller;
use crate::app::AppState;
use crate::extract::Query;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use muster_core::{CheckKind, InstanceRecord, Status};
use serde_json::{Value, json};
use std::collections::BTreeMap;

fn status_str(s: Status) -> &'static str {
    match s {
        Status::Passing => "passing",
        Status::Warning => "warning",
        _ => "critical",
    }
}

fn weights(rec: &InstanceRecord) -> Value {
    json!({"Passing": rec.weight, "Warning": 1})
}

/// An instance as `/v1/agent/services` shows it.
pub fn agent_service(rec: &InstanceRecord) -> Value {
    json!({
        "ID": rec.id, "Service": rec.service, "Tags": rec.tags, "Meta": rec.meta, "Port": rec.port,
        "Address": rec.address, "Weights": weights(rec), "EnableTagOverride": false, "Datacenter": DATACENTER,
    })
}

fn node() -> Value {
    json!({"ID": NODE_ID, "Node": NODE, "Address": NODE_ADDRESS, "Datacenter": DATACENTER,
           "TaggedAddresses": {"lan": NODE_ADDRESS, "wan": NODE_ADDRESS}, "Meta": {}, "CreateIndex": 1, "ModifyIndex": 1})
}

/// The instance's checks as Consul shows them; maintenance is Consul's
/// `_service_maintenance:<id>` critical check.
fn checks(rec: &InstanceRecord, index: u64) -> Vec<Value> {
    let mut out: Vec<Value> = rec
        .checks
        .iter()
        .map(|c| {
            let kind = match c.kind {
                CheckKind::Http { .. } => "http",
                CheckKind::Tcp { .. } => "tcp",
                CheckKind::Grpc { .. } => "grpc",
                CheckKind::Ttl { .. } => "ttl",
                CheckKind::Mqtt { .. } => "mqtt",
                CheckKind::Exec { .. } => "script",
            };
            json!({"Node": NODE, "CheckID": c.id, "Name": c.name, "Status": status_str(c.status), "Notes": "",
                   "Output": c.output, "ServiceID": rec.id, "ServiceName": rec.service, "ServiceTags": rec.tags,
                   "Type": kind, "CreateIndex": index, "ModifyIndex": index})
        })
        .collect();
    if let Some(reason) = &rec.maintenance {
        out.push(json!({"Node": NODE, "CheckID": format!("_service_maintenance:{}", rec.id), "Name": "Service Maintenance Mode",
                        "Status": "critical", "Notes": reason, "Output": "", "ServiceID": rec.id, "ServiceName": rec.service,
                        "ServiceTags": rec.tags, "Type": "maintenance", "CreateIndex": index, "ModifyIndex": index}));
    }
    if let Some(r) = &rec.reported {
        out.push(json!({"Node": NODE, "CheckID": format!("muster:reported:{}", rec.id), "Name": "Reported by the instance",
                        "Status": status_str(r.status), "Notes": "", "Output": r.output, "ServiceID": rec.id,
                        "ServiceName": rec.service, "ServiceTags": rec.tags, "Type": "ttl", "CreateIndex": index, "ModifyIndex": index}));
    }
    out
}

/// Waits as a blocking query asks, on the service's own wake-up.
async fn block_on_service(s: &AppState, name: &str, q: &Query) -> Result<u64, super::ConsulError> {
    let registry = s.registry()?;
    if let Some(after) = index_of(q)? {
        let wait = wait_of(q)?;
        registry.wait_service(name, after, wait).await;
    }
    Ok(registry.service_index(name).max(1))
}

fn tags_match(rec: &InstanceRecord, q: &Query) -> bool {
    q.all("tag").all(|t| rec.tags.iter().any(|mine| mine == t))
}

/// `GET /v1/catalog/services`: `{"name": ["tag", ...]}`.
pub async fn services(State(s): State<AppState>, caller: Caller, q: Query) -> ConsulResult {
    let registry = s.registry()?;
    if let Some(after) = index_of(&q)? {
        registry.wait_any(after, wait_of(&q)?).await;
    }
    let index = registry.revision().max(1);
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for summary in registry.services() {
        if !caller.may_read(&summary.name) {
            continue;
        }
        let mut tags: Vec<String> = Vec::new();
        for (rec, _) in registry.records(&summary.name) {
            for t in rec.tags {
                if !tags.contains(&t) {
                    tags.push(t);
                }
            }
        }
        tags.sort();
        out.insert(summary.name, tags);
    }
    Ok(reply(StatusCode::OK, index, &out))
}

/// `GET /v1/catalog/service/{name}`.
pub async fn service(
    State(s): State<AppState>,
    Path(name): Path<String>,
    q: Query,
) -> ConsulResult {
    let index = block_on_service(&s, &name, &q).await?;
    let list: Vec<Value> = s
        .registry()?
        .records(&name)
        .into_iter()
        .filter(|(rec, _)| tags_match(rec, &q))
        .map(|(rec, rev)| {
            json!({"ID": NODE_ID, "Node": NODE, "Address": NODE_ADDRESS, "Datacenter": DATACENTER,
                   "TaggedAddresses": {"lan": NODE_ADDRESS, "wan": NODE_ADDRESS}, "NodeMeta": {},
                   "ServiceKind": "", "ServiceID": rec.id, "ServiceName": rec.service, "ServiceTags": rec.tags,
                   "ServiceAddress": rec.address, "ServicePort": rec.port, "ServiceMeta": rec.meta,
                   "ServiceWeights": weights(&rec), "ServiceEnableTagOverride": false,
                   "CreateIndex": rev, "ModifyIndex": rev})
        })
        .collect();
    Ok(reply(StatusCode::OK, index, &list))
}

/// `GET /v1/health/service/{name}`: `[{Node, Service, Checks}]`; `?passing`
/// keeps instances whose checks all pass; repeated `?tag=` are ANDed.
pub async fn health(State(s): State<AppState>, Path(name): Path<String>, q: Query) -> ConsulResult {
    let index = block_on_service(&s, &name, &q).await?;
    let passing_only = q.one("passing").is_some_and(|v| v != "false" && v != "0");
    let list: Vec<Value> = s
        .registry()?
        .records(&name)
        .into_iter()
        .filter(|(rec, _)| tags_match(rec, &q))
        .filter(|(rec, _)| !passing_only || rec.status() == Status::Passing)
        .map(|(rec, rev)| {
            let service = json!({"ID": rec.id, "Service": rec.service, "Tags": rec.tags, "Address": rec.address,
                                 "Meta": rec.meta, "Port": rec.port, "Weights": weights(&rec),
                                 "EnableTagOverride": false, "CreateIndex": rev, "ModifyIndex": rev});
            json!({"Node": node(), "Service": service, "Checks": checks(&rec, rev)})
        })
        .collect();
    Ok(reply(StatusCode::OK, index, &list))
}

/// `GET /v1/catalog/datacenters`.
pub async fn datacenters(State(s): State<AppState>) -> ConsulResult {
    let index = s.registry().map(|r| r.revision()).unwrap_or(1);
    Ok(reply(StatusCode::OK, index, &[DATACENTER]))
}
