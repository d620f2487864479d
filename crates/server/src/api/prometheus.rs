//! `/api/v1/prometheus/targets`: the registry as Prometheus HTTP service
//! discovery (`http_sd_configs`), so Prometheus scrapes what muster knows
//! without a Consul shim.
//!
//! The answer is a list of target groups, one per instance, because the
//! labels (id, status, tags, meta) belong to the instance. Every label is a
//! `__meta_muster_*` label: Prometheus drops those after relabeling, so
//! nothing lands on the scraped series unless the operator's
//! `relabel_configs` asks for it, and `job` and `instance` stay Prometheus's.

use crate::acl::Caller;
use crate::app::{ApiResult, AppState, json};
use crate::extract::Query;
use crate::problem::ProblemDoc;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use muster_core::InstanceRecord;
use muster_registry::InstanceFilter;
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa_axum::{router::OpenApiRouter, routes};

/// The prefix of every label this endpoint sets.
const META: &str = "__meta_muster_";

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(targets))
}

/// One Prometheus target group: here always one target, the instance.
#[derive(Serialize, utoipa::ToSchema)]
struct TargetGroup {
    /// `["host:port"]`; an IPv6 address is bracketed (`[::1]:80`).
    targets: Vec<String>,
    labels: BTreeMap<String, String>,
}

/// Scrape targets in Prometheus's HTTP SD format, for `http_sd_configs`.
///
/// One group per instance of every service, or of `?service=NAME` only (an
/// unknown service has none: `[]`). **Every instance is listed, whatever its
/// status**: Prometheus should scrape unhealthy instances too (that is often
/// when their metrics matter), and the status is a label to filter on with
/// `relabel_configs` when a job wants only healthy ones.
///
/// Labels of each group:
/// - `__meta_muster_service`: the service name;
/// - `__meta_muster_instance_id`: the instance id;
/// - `__meta_muster_status`: `passing`, `warning`, `critical` or `maintenance`;
/// - `__meta_muster_address`, `__meta_muster_port`: the registered address
///   and port, as they are (for relabeling to another port);
/// - `__meta_muster_tags`: the tags joined by commas, with a leading and a
///   trailing comma (`,a,b,`; `,,` without tags), as Consul SD does, so a
///   relabel regex `.*,v2,.*` matches tag `v2`;
/// - `__meta_muster_meta_<key>` for each meta entry, the key with every
///   character outside `[a-zA-Z0-9_]` replaced by `_`. When two keys become
///   the same name, a key that needed no change wins, else the first in byte
///   order.
///
/// No `job`, `instance` or other plain label is set: those stay Prometheus's
/// (its `job_name` and the target address). An instance registered through
/// the Consul-compatible API without a port is listed as `host:0`, as Consul
/// SD lists it; relabel `__address__` to scrape it.
#[utoipa::path(get, path = "/api/v1/prometheus/targets", tag = "discovery",
    params(("service" = Option<String>, Query, description = "only this service's instances")),
    responses(
        (status = 200, body = Vec<TargetGroup>),
        (status = 503, body = ProblemDoc, content_type = "application/problem+json"),
    ))]
async fn targets(State(s): State<AppState>, caller: Caller, q: Query) -> ApiResult<Response> {
    let registry = s.registry()?;
    let services = match q.one("service") {
        Some(name) => {
            caller.require_read(name)?;
            vec![name.to_string()]
        }
        None => registry
            .services()
            .into_iter()
            .map(|s| s.name)
            .filter(|name| caller.may_read(name))
            .collect(),
    };
    let groups: Vec<TargetGroup> = services
        .iter()
        .flat_map(|name| registry.instances(name, &InstanceFilter::default()))
        .map(|i| group(&i.record()))
        .collect();
    Ok(json(StatusCode::OK, &groups))
}

fn group(rec: &InstanceRecord) -> TargetGroup {
    let mut labels = BTreeMap::new();
    let mut label = |name: &str, value: String| labels.insert(format!("{META}{name}"), value);
    label("service", rec.service.clone());
    label("instance_id", rec.id.clone());
    label("status", rec.status.as_str().to_string());
    label("address", rec.address.clone());
    label("port", rec.port.to_string());
    label("tags", format!(",{},", rec.tags.join(",")));
    for (key, value) in &rec.meta {
        let sanitized = sanitize(key);
        let clean = sanitized == *key;
        let name = format!("{META}meta_{sanitized}");
        if clean || !labels.contains_key(&name) {
            labels.insert(name, value.clone());
        }
    }
    TargetGroup {
        targets: vec![host_port(&rec.address, rec.port)],
        labels,
    }
}

/// A label name may hold only `[a-zA-Z0-9_]`; meta keys may also hold `-` and `.`.
fn sanitize(key: &str) -> String {
    key.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// `host:port`, bracketing an IPv6 literal, the only address form with a colon.
fn host_port(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_targets() {
        let check = |address: &str, expect: &str| assert_eq!(host_port(address, 80), expect);
        check("10.0.0.5", "10.0.0.5:80");
        check("db-1.internal", "db-1.internal:80");
        check("::1", "[::1]:80");
        check("2001:db8::7", "[2001:db8::7]:80");
    }

    #[test]
    fn meta_keys_become_label_names() {
        let check = |key: &str, expect: &str| assert_eq!(sanitize(key), expect);
        check("version", "version");
        check("build-id", "build_id");
        check("app.kubernetes.io", "app_kubernetes_io");
        check("Zone_2", "Zone_2");
    }
}
