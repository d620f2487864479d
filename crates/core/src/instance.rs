//! Instances: the register body a client sends, the validated registration,
//! the record the store keeps and the view the API returns.

use crate::Timestamp;
use crate::check::{CheckPolicy, CheckRecord, CheckRefusal, CheckSpec};
use crate::duration::Millis;
use crate::error::{Errors, ValidationError};
use crate::id::derive_instance_id;
use crate::name::{validate_address, validate_instance_id, validate_service_name};
use crate::service::validate_tags_meta;
use crate::status::{self, Status};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How an instance stays registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Lifetime {
    /// Until deregistered (or critical for longer than `deregister_critical_after`).
    Persistent,
    /// Removed when heartbeats stop for longer than its `ttl`.
    Ttl,
    /// Bound to an open WebSocket session.
    Session,
}

/// The register body (`POST /api/v1/services/{service}/instances`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    /// Optional; must equal the service in the path when given.
    pub service: Option<String>,
    /// Optional; derived from service, address and port when absent.
    pub id: Option<String>,
    pub address: String,
    pub port: i64,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// Free-form JSON the instance wants to publish.
    #[serde(default)]
    pub data: serde_json::Value,
    pub weight: Option<i64>,
    /// Makes the instance ephemeral: removed when heartbeats stop for this long.
    #[schema(value_type = Option<Millis>)]
    pub ttl: Option<Millis>,
    #[schema(value_type = Option<Millis>)]
    pub deregister_critical_after: Option<Millis>,
    #[serde(default)]
    pub checks: Vec<CheckSpec>,
    /// A health URL (the core.io seed's `health.url`): becomes an http check
    /// named `health` with the default interval, unless a check has that name.
    pub health: Option<String>,
    /// Port 0 means "no port" (Consul allows registrations without one); the
    /// native API requires a port, so this is never read from a request.
    #[serde(skip)]
    pub allow_no_port: bool,
}

/// A validated registration, ready to become a record.
#[derive(Debug, Clone)]
pub struct Registration {
    pub service: String,
    pub id: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub data: serde_json::Value,
    pub weight: u32,
    pub lifetime: Lifetime,
    pub ttl: Option<Millis>,
    pub deregister_critical_after: Option<Millis>,
    pub checks: Vec<CheckRecord>,
}

/// Why a registration was refused.
#[derive(Debug)]
pub enum RegisterError {
    Invalid(ValidationError),
    Forbidden(String),
}

impl From<ValidationError> for RegisterError {
    fn from(e: ValidationError) -> Self {
        RegisterError::Invalid(e)
    }
}

pub const MAX_CHECKS: usize = 32;
pub const MIN_TTL: Millis = Millis(1000);
pub const MAX_TTL: Millis = Millis(24 * 3600 * 1000);

impl RegisterBody {
    /// Validates everything at once. `path_id` is the id from a
    /// `PUT .../instances/{id}` path, which wins over (and must match) the body's.
    pub fn validate(
        self,
        service: &str,
        path_id: Option<&str>,
        policy: &CheckPolicy,
    ) -> Result<Registration, RegisterError> {
        let mut errs = Errors::default();
        errs.take("service", validate_service_name(service));
        if let Some(s) = &self.service
            && s != service
        {
            errs.push(
                "service",
                format!("body names service {s:?} but the path names {service:?}"),
            );
        }
        errs.take("address", validate_address(&self.address));
        let port = match u16::try_from(self.port) {
            Ok(p) if p > 0 || self.allow_no_port => p,
            _ => {
                errs.push("port", format!("port must be 1-65535, got {}", self.port));
                0
            }
        };
        if let (Some(p), Some(b)) = (path_id, &self.id)
            && p != b
        {
            errs.push("id", format!("body id {b:?} differs from the path's {p:?}"));
        }
        let id = match path_id.or(self.id.as_deref()) {
            Some(id) => {
                errs.take("id", validate_instance_id(id));
                id.to_string()
            }
            None => derive_instance_id(service, &self.address, port),
        };
        validate_tags_meta(&self.tags, &self.meta, &mut errs);
        let weight = match self.weight {
            None => 1,
            Some(w) if (1..=65535).contains(&w) => w as u32,
            Some(w) => {
                errs.push("weight", format!("weight must be 1-65535, got {w}"));
                1
            }
        };
        if let Some(ttl) = self.ttl
            && !(MIN_TTL..=MAX_TTL).contains(&ttl)
        {
            errs.push("ttl", "ttl must be between 1s and 24h");
        }
        if let Some(d) = self.deregister_critical_after
            && d.0 < 1000
        {
            errs.push(
                "deregister_critical_after",
                "deregister_critical_after must be at least 1s",
            );
        }
        if self.checks.len() > MAX_CHECKS {
            errs.push(
                "checks",
                format!("at most {MAX_CHECKS} checks per instance"),
            );
        }
        let mut checks: Vec<CheckRecord> = Vec::with_capacity(self.checks.len() + 1);
        let mut per_kind: BTreeMap<&'static str, usize> = BTreeMap::new();
        let prefix = format!("{service}:{id}");
        let mut specs = self.checks.clone();
        if let Some(url) = &self.health
            && !specs.iter().any(|c| c.name.as_deref() == Some("health"))
        {
            specs.push(CheckSpec {
                name: Some("health".into()),
                http: Some(url.clone()),
                ..Default::default()
            });
        }
        for (i, spec) in specs.iter().enumerate() {
            if spec.service.is_some() || spec.instance.is_some() {
                errs.push(
                    format!("checks[{i}].service"),
                    "service and instance are implied inside a registration; leave them out",
                );
            }
            let kind = spec_kind(spec);
            let n = per_kind.entry(kind).or_default();
            *n += 1;
            let default_name = if *n == 1 {
                kind.to_string()
            } else {
                format!("{kind}-{n}")
            };
            let field = if i == self.checks.len() {
                "health".to_string()
            } else {
                format!("checks[{i}]")
            };
            match spec.resolve(&field, &default_name, &prefix, policy, &mut errs) {
                Err(CheckRefusal::Forbidden(m)) => return Err(RegisterError::Forbidden(m)),
                Ok(Some(c)) => {
                    if checks.iter().any(|o| o.name == c.name) {
                        errs.push(
                            format!("{field}.name"),
                            format!("check name {:?} is used twice", c.name),
                        );
                    }
                    checks.push(c);
                }
                Ok(None) => {}
            }
        }
        errs.finish()?;
        Ok(Registration {
            service: service.to_string(),
            id,
            address: self.address,
            port,
            tags: self.tags,
            meta: self.meta,
            data: self.data,
            weight,
            lifetime: if self.ttl.is_some() {
                Lifetime::Ttl
            } else {
                Lifetime::Persistent
            },
            ttl: self.ttl,
            deregister_critical_after: self.deregister_critical_after,
            checks,
        })
    }
}

fn spec_kind(s: &CheckSpec) -> &'static str {
    if s.http.is_some() {
        "http"
    } else if s.tcp.is_some() {
        "tcp"
    } else if s.grpc.is_some() {
        "grpc"
    } else if s.mqtt.is_some() {
        "mqtt"
    } else if s.ttl.is_some() {
        "ttl"
    } else if s.exec.is_some() {
        "exec"
    } else {
        "check"
    }
}

/// Status an instance reports about itself through heartbeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Reported {
    pub status: Status,
    #[serde(default)]
    pub output: String,
}

/// An instance as the store keeps it, and as the API returns it: its JSON is
/// the API's instance object, less the volatile data (last heartbeat,
/// metrics) that the server adds from memory: heartbeats never touch the disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub id: String,
    pub service: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub data: serde_json::Value,
    pub weight: u32,
    pub lifetime: Lifetime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deregister_critical_after: Option<Millis>,
    /// Derived from the checks, the reported status and maintenance, and kept
    /// current by [`InstanceRecord::refresh_status`] before every write, so
    /// readers serve the stored JSON as it is.
    pub status: Status,
    #[serde(default)]
    pub checks: Vec<CheckRecord>,
    /// `Some(reason)` while in maintenance.
    #[serde(
        default,
        rename = "maintenance_reason",
        skip_serializing_if = "Option::is_none"
    )]
    pub maintenance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<Reported>,
    #[serde(with = "time::serde::rfc3339")]
    pub registered_at: Timestamp,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: Timestamp,
}

impl InstanceRecord {
    /// A new record; `previous` keeps `registered_at` and the operator's
    /// maintenance flag across an idempotent re-registration.
    pub fn new(r: Registration, now: Timestamp, previous: Option<&InstanceRecord>) -> Self {
        let mut rec = InstanceRecord {
            id: r.id,
            service: r.service,
            address: r.address,
            port: r.port,
            tags: r.tags,
            meta: r.meta,
            data: r.data,
            weight: r.weight,
            lifetime: r.lifetime,
            ttl: r.ttl,
            deregister_critical_after: r.deregister_critical_after,
            status: Status::Passing,
            checks: merge_check_status(r.checks, previous),
            maintenance: previous.and_then(|p| p.maintenance.clone()),
            reported: None,
            registered_at: previous.map_or(now, |p| p.registered_at),
            updated_at: now,
        };
        rec.refresh_status();
        rec
    }

    /// The stored status (see [`InstanceRecord::refresh_status`]).
    pub fn status(&self) -> Status {
        self.status
    }

    /// Recomputes `status`: the worst of the checks and the self-reported
    /// status, or maintenance. Call after changing any of them.
    pub fn refresh_status(&mut self) {
        self.status = status::aggregate(
            self.maintenance.is_some(),
            self.checks
                .iter()
                .map(|c| c.status)
                .chain(self.reported.as_ref().map(|r| r.status)),
        );
    }

    /// Same registration (checks compared by definition, not status): a
    /// re-registration of it changes nothing a reader sees.
    pub fn same_definition(&self, other: &InstanceRecord) -> bool {
        self.address == other.address
            && self.port == other.port
            && self.tags == other.tags
            && self.meta == other.meta
            && self.data == other.data
            && self.weight == other.weight
            && self.lifetime == other.lifetime
            && self.ttl == other.ttl
            && self.deregister_critical_after == other.deregister_critical_after
            && self.checks.len() == other.checks.len()
            && self
                .checks
                .iter()
                .zip(&other.checks)
                .all(|(a, b)| a.same_definition(b))
    }
}

/// A re-registered check with the same id and definition keeps its status,
/// so an idempotent re-registration does not flip a passing instance to critical.
fn merge_check_status(
    mut checks: Vec<CheckRecord>,
    previous: Option<&InstanceRecord>,
) -> Vec<CheckRecord> {
    if let Some(prev) = previous {
        for c in &mut checks {
            if let Some(old) = prev
                .checks
                .iter()
                .find(|o| o.id == c.id && o.kind == c.kind)
            {
                c.status = old.status;
                c.output = old.output.clone();
            }
        }
    }
    checks
}

/// The documented shape of an instance in the API: an [`InstanceRecord`]
/// plus the volatile fields the server adds (OpenAPI only).
#[derive(utoipa::ToSchema)]
#[schema(as = Instance)]
#[allow(dead_code)]
pub struct InstanceDoc {
    id: String,
    service: String,
    address: String,
    port: u16,
    tags: Vec<String>,
    meta: BTreeMap<String, String>,
    data: serde_json::Value,
    weight: u32,
    lifetime: Lifetime,
    #[schema(value_type = Option<Millis>)]
    ttl: Option<Millis>,
    #[schema(value_type = Option<Millis>)]
    deregister_critical_after: Option<Millis>,
    status: Status,
    checks: Vec<CheckRecord>,
    maintenance_reason: Option<String>,
    reported: Option<Reported>,
    #[schema(format = DateTime)]
    registered_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
    #[schema(format = DateTime)]
    last_heartbeat_at: Option<String>,
    metrics: Option<serde_json::Value>,
}

/// `DELETE .../instances/{id}` optional body: kept on the `deregistered` event.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeregisterBody {
    pub reason: Option<String>,
    pub error: Option<String>,
}

/// `PUT .../instances/{id}/heartbeat` optional body.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBody {
    /// Host and process metrics to show with the instance (kept in memory).
    pub metrics: Option<serde_json::Value>,
    /// The instance's own view of its health: passing, warning or critical.
    pub status: Option<Status>,
    pub output: Option<String>,
}

/// `PUT .../instances/{id}/maintenance` body.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceBody {
    pub enabled: bool,
    pub reason: Option<String>,
}

pub const MAX_TEXT: usize = 4096;

impl DeregisterBody {
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut errs = Errors::default();
        for (f, v) in [("reason", &self.reason), ("error", &self.error)] {
            if v.as_ref().is_some_and(|v| v.len() > MAX_TEXT) {
                errs.push(f, format!("at most {MAX_TEXT} bytes"));
            }
        }
        errs.finish()
    }
}

impl HeartbeatBody {
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut errs = Errors::default();
        if self.metrics.as_ref().is_some_and(|m| !m.is_object()) {
            errs.push("metrics", "metrics must be a JSON object");
        }
        if self.status == Some(Status::Maintenance) {
            errs.push("status", "status must be passing, warning or critical; maintenance is set through /maintenance");
        }
        if self.output.as_ref().is_some_and(|v| v.len() > MAX_TEXT) {
            errs.push("output", format!("at most {MAX_TEXT} bytes"));
        }
        if self.output.is_some() && self.status.is_none() {
            errs.push("output", "output needs a status");
        }
        errs.finish()
    }
}

impl MaintenanceBody {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.reason.as_ref().is_some_and(|v| v.len() > MAX_TEXT) {
            return Err(ValidationError::field(
                "reason",
                format!("at most {MAX_TEXT} bytes"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(json: &str) -> Result<Registration, String> {
        let body: RegisterBody = serde_json::from_str(json).map_err(|e| e.to_string())?;
        body.validate("web", None, &CheckPolicy::default())
            .map_err(|e| match e {
                RegisterError::Invalid(v) => v.to_string(),
                RegisterError::Forbidden(m) => format!("forbidden: {m}"),
            })
    }

    #[test]
    fn the_contract_example_validates() {
        let r = validate(
            r#"{"address":"10.0.0.5","port":7331,"tags":["v2","eu"],"meta":{"version":"2.1.0"},
                "data":{"repl":{"port":8989}},"weight":1,"ttl":"30s","deregister_critical_after":"10m",
                "checks":[{"name":"health","http":"http://10.0.0.5:7331/health","interval":"10s","timeout":"2s"},
                          {"tcp":"10.0.0.5:7331","interval":"5s"},{"grpc":"10.0.0.5:9090","grpc_service":"payments"},
                          {"mqtt":"mqtt://10.0.0.5:1883"},{"ttl":"15s"}]}"#,
        )
        .unwrap();
        assert_eq!(r.id, "web-10.0.0.5-7331");
        assert_eq!(r.lifetime, Lifetime::Ttl);
        let ids: Vec<_> = r.checks.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "web:web-10.0.0.5-7331:health",
                "web:web-10.0.0.5-7331:tcp",
                "web:web-10.0.0.5-7331:grpc",
                "web:web-10.0.0.5-7331:mqtt",
                "web:web-10.0.0.5-7331:ttl"
            ]
        );
    }

    #[test]
    fn every_bad_field_is_named() {
        for (json, field) in [
            (r#"{"address":"","port":80}"#, "address"),
            (r#"{"address":"a","port":0}"#, "port"),
            (r#"{"address":"a","port":65536}"#, "port"),
            (r#"{"address":"a","port":80,"id":"a/b"}"#, "id"),
            (r#"{"address":"a","port":80,"tags":["a b"]}"#, "tags[0]"),
            (
                r#"{"address":"a","port":80,"meta":{"a b":"x"}}"#,
                "meta.a b",
            ),
            (r#"{"address":"a","port":80,"weight":0}"#, "weight"),
            (r#"{"address":"a","port":80,"ttl":"10ms"}"#, "ttl"),
            (r#"{"address":"a","port":80,"service":"other"}"#, "service"),
            (
                r#"{"address":"a","port":80,"checks":[{"tcp":"a:1","name":"x"},{"tcp":"a:2","name":"x"}]}"#,
                "checks[1].name",
            ),
        ] {
            let err = validate(json).unwrap_err();
            assert!(err.starts_with(field), "{json}: {err}");
        }
        assert!(
            validate(r#"{"address":"a","port":80,"colour":"red"}"#)
                .unwrap_err()
                .contains("unknown field")
        );
    }

    #[test]
    fn reregistration_keeps_history_and_check_status() {
        let now = time::OffsetDateTime::UNIX_EPOCH;
        let later = now + time::Duration::seconds(5);
        let reg = validate(r#"{"address":"a","port":80,"checks":[{"ttl":"10s"}]}"#).unwrap();
        let mut first = InstanceRecord::new(reg.clone(), now, None);
        assert_eq!(first.status(), Status::Critical);
        first.checks[0].status = Status::Passing;
        first.maintenance = Some("deploy".into());
        let second = InstanceRecord::new(reg, later, Some(&first));
        assert_eq!(second.registered_at, now);
        assert_eq!(second.updated_at, later);
        assert_eq!(second.checks[0].status, Status::Passing);
        assert_eq!(second.status(), Status::Maintenance);
        assert!(first.same_definition(&second));
    }

    #[test]
    fn record_json_is_the_documented_instance() {
        let reg = validate(r#"{"address":"a","port":80,"ttl":"30s"}"#).unwrap();
        let mut rec = InstanceRecord::new(reg, time::OffsetDateTime::UNIX_EPOCH, None);
        rec.maintenance = Some("deploy".into());
        rec.refresh_status();
        let v = serde_json::to_value(&rec).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        keys.extend(["last_heartbeat_at", "metrics"]);
        use utoipa::PartialSchema;
        let schema = serde_json::to_value(InstanceDoc::schema()).unwrap();
        let props = schema["properties"].as_object().unwrap();
        for k in &keys {
            assert!(
                props.contains_key(*k),
                "{k} is serialized but not documented"
            );
        }
        assert_eq!(v["status"], "maintenance");
        assert_eq!(v["maintenance_reason"], "deploy");
        assert_eq!(v["lifetime"], "ttl");
        assert_eq!(v["ttl"], "30s");
        assert_eq!(v["registered_at"], "1970-01-01T00:00:00Z");
        let back: InstanceRecord = serde_json::from_value(v).unwrap();
        assert_eq!(back, rec);
    }

    #[test]
    fn no_checks_means_passing() {
        let reg = validate(r#"{"address":"a","port":80}"#).unwrap();
        let rec = InstanceRecord::new(reg, time::OffsetDateTime::UNIX_EPOCH, None);
        assert_eq!(rec.status(), Status::Passing);
    }
}
