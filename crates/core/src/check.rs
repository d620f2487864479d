//! Health checks: what a client declares (`CheckSpec`) and what is stored
//! (`CheckRecord`). Running them is the health engine's job, not this crate's.

use crate::duration::Millis;
use crate::error::Errors;
use crate::net::IpNet;
use crate::status::Status;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A check as a client declares it, inside a registration or on its own.
/// Exactly one of `http`, `tcp`, `grpc`, `mqtt`, `ttl`, `exec` is given.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    /// `POST /api/v1/checks` only: the service of the instance it belongs to.
    pub service: Option<String>,
    /// `POST /api/v1/checks` only: the instance it belongs to.
    pub instance: Option<String>,
    /// An explicit check id (unique on the server); default
    /// `{service}:{instance}:{name}`. The Consul-compatible API sets Consul's ids.
    pub id: Option<String>,
    /// Name unique within the instance; defaults to the kind (`http`, `tcp-2`, ...).
    pub name: Option<String>,
    /// URL probed with an HTTP request: 2xx passing, 429 warning, else critical.
    pub http: Option<String>,
    pub method: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
    pub tls_skip_verify: Option<bool>,
    /// `host:port` that must accept a TCP connection.
    pub tcp: Option<String>,
    /// `host:port` of a grpc.health.v1 server.
    pub grpc: Option<String>,
    pub grpc_service: Option<String>,
    /// `mqtt://host:port` of a broker that must accept a CONNECT.
    pub mqtt: Option<String>,
    /// Passive: critical unless passed within this duration.
    #[schema(value_type = Option<Millis>)]
    pub ttl: Option<Millis>,
    /// argv of a command: exit 0 passing, 1 warning, else critical.
    pub exec: Option<Vec<String>>,
    #[schema(value_type = Option<Millis>)]
    pub interval: Option<Millis>,
    #[schema(value_type = Option<Millis>)]
    pub timeout: Option<Millis>,
    pub success_before_passing: Option<u32>,
    pub failures_before_warning: Option<u32>,
    pub failures_before_critical: Option<u32>,
}

/// What a check probes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CheckKind {
    Http {
        target: String,
        method: String,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        headers: BTreeMap<String, String>,
        #[serde(default)]
        tls_skip_verify: bool,
    },
    Tcp {
        target: String,
    },
    Grpc {
        target: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grpc_service: Option<String>,
    },
    Mqtt {
        target: String,
    },
    Ttl {
        #[schema(value_type = Millis)]
        ttl: Millis,
    },
    Exec {
        argv: Vec<String>,
    },
}

impl CheckKind {
    pub fn name(&self) -> &'static str {
        match self {
            CheckKind::Http { .. } => "http",
            CheckKind::Tcp { .. } => "tcp",
            CheckKind::Grpc { .. } => "grpc",
            CheckKind::Mqtt { .. } => "mqtt",
            CheckKind::Ttl { .. } => "ttl",
            CheckKind::Exec { .. } => "exec",
        }
    }
}

/// A check as stored on its instance, with its current status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckRecord {
    pub id: String,
    pub name: String,
    #[serde(flatten)]
    pub kind: CheckKind,
    #[schema(value_type = Millis)]
    pub interval: Millis,
    #[schema(value_type = Millis)]
    pub timeout: Millis,
    pub success_before_passing: u32,
    pub failures_before_warning: u32,
    pub failures_before_critical: u32,
    pub status: Status,
    #[serde(default)]
    pub output: String,
    /// Changing state too often; see [`crate::health`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flapping: bool,
}

impl CheckRecord {
    /// What the check probes, as text: a URL, `host:port`, argv, or the ttl.
    pub fn target(&self) -> String {
        match &self.kind {
            CheckKind::Http { target, .. }
            | CheckKind::Tcp { target }
            | CheckKind::Grpc { target, .. }
            | CheckKind::Mqtt { target } => target.clone(),
            CheckKind::Ttl { ttl } => ttl.to_string(),
            CheckKind::Exec { argv } => argv.join(" "),
        }
    }

    /// Same check, whatever its current status.
    pub fn same_definition(&self, other: &CheckRecord) -> bool {
        self.id == other.id
            && self.name == other.name
            && self.kind == other.kind
            && self.interval == other.interval
            && self.timeout == other.timeout
            && self.success_before_passing == other.success_before_passing
            && self.failures_before_warning == other.failures_before_warning
            && self.failures_before_critical == other.failures_before_critical
    }
}

/// Server-side rules a check must satisfy.
#[derive(Debug, Clone)]
pub struct CheckPolicy {
    pub allow_exec: bool,
    pub deny_targets: Vec<IpNet>,
}

impl Default for CheckPolicy {
    fn default() -> Self {
        CheckPolicy {
            allow_exec: false,
            deny_targets: IpNet::default_deny(),
        }
    }
}

pub const DEFAULT_INTERVAL: Millis = Millis(10_000);
pub const DEFAULT_TIMEOUT: Millis = Millis(5_000);
const MIN_INTERVAL: Millis = Millis(100);

/// Why a check was refused: bad input (400) or not allowed here (403).
#[derive(Debug)]
pub enum CheckRefusal {
    Forbidden(String),
}

impl CheckSpec {
    /// Validates the spec into a record. `field` is the path used in error
    /// messages (`checks[0]`), `ordinal` makes default names unique, `id_prefix`
    /// is the owning instance's check-id prefix.
    pub fn resolve(
        &self,
        field: &str,
        default_name: &str,
        id_prefix: &str,
        policy: &CheckPolicy,
        errs: &mut Errors,
    ) -> Result<Option<CheckRecord>, CheckRefusal> {
        let mut kinds = Vec::new();
        if let Some(url) = &self.http {
            let f = format!("{field}.http");
            if let Some(target) = errs.take(&f, validate_url(url, &["http", "https"], policy)) {
                let method = self.method.clone().unwrap_or_else(|| "GET".into());
                if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                    errs.push(
                        format!("{field}.method"),
                        "method must be an upper-case HTTP method such as GET or HEAD",
                    );
                }
                kinds.push(CheckKind::Http {
                    target,
                    method,
                    headers: self.headers.clone().unwrap_or_default(),
                    tls_skip_verify: self.tls_skip_verify.unwrap_or(false),
                });
            } else {
                kinds.push(CheckKind::Tcp {
                    target: String::new(),
                });
            }
        }
        if let Some(addr) = &self.tcp {
            let t = errs.take(format!("{field}.tcp"), validate_host_port(addr, policy));
            kinds.push(CheckKind::Tcp {
                target: t.unwrap_or_default(),
            });
        }
        if let Some(addr) = &self.grpc {
            let t = errs.take(format!("{field}.grpc"), validate_host_port(addr, policy));
            kinds.push(CheckKind::Grpc {
                target: t.unwrap_or_default(),
                grpc_service: self.grpc_service.clone(),
            });
        }
        if let Some(url) = &self.mqtt {
            let t = errs.take(
                format!("{field}.mqtt"),
                validate_url(url, &["mqtt", "mqtts", "tcp"], policy),
            );
            kinds.push(CheckKind::Mqtt {
                target: t.unwrap_or_default(),
            });
        }
        if let Some(ttl) = self.ttl {
            if ttl.0 < 1000 {
                errs.push(format!("{field}.ttl"), "ttl must be at least 1s");
            }
            kinds.push(CheckKind::Ttl { ttl });
        }
        if let Some(argv) = &self.exec {
            if !policy.allow_exec {
                return Err(CheckRefusal::Forbidden(format!(
                    "{field}.exec: exec checks are disabled on this server; an operator enables them with [checks] allow_exec = true"
                )));
            }
            if argv.is_empty() || argv[0].is_empty() {
                errs.push(
                    format!("{field}.exec"),
                    "exec needs a non-empty argv such as [\"/bin/check\", \"--quick\"]",
                );
            }
            kinds.push(CheckKind::Exec { argv: argv.clone() });
        }
        if self.http.is_none()
            && (self.method.is_some() || self.headers.is_some() || self.tls_skip_verify.is_some())
        {
            errs.push(
                format!("{field}.method"),
                "method, headers and tls_skip_verify apply only to http checks",
            );
        }
        if self.grpc.is_none() && self.grpc_service.is_some() {
            errs.push(
                format!("{field}.grpc_service"),
                "grpc_service applies only to grpc checks",
            );
        }
        let kind = match kinds.len() {
            1 => kinds.pop().unwrap_or(CheckKind::Tcp {
                target: String::new(),
            }),
            0 => {
                errs.push(
                    field,
                    "a check needs exactly one of http, tcp, grpc, mqtt, ttl, exec",
                );
                return Ok(None);
            }
            _ => {
                errs.push(
                    field,
                    "a check takes exactly one of http, tcp, grpc, mqtt, ttl, exec",
                );
                return Ok(None);
            }
        };
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| default_name.to_string());
        if let Err(m) = validate_check_name(&name) {
            errs.push(format!("{field}.name"), m);
        }
        let interval = self.interval.unwrap_or(DEFAULT_INTERVAL);
        if interval < MIN_INTERVAL {
            errs.push(
                format!("{field}.interval"),
                "interval must be at least 100ms",
            );
        }
        let timeout = self.timeout.unwrap_or(DEFAULT_TIMEOUT.min(interval));
        if timeout.0 == 0 || timeout > interval {
            errs.push(
                format!("{field}.timeout"),
                "timeout must be above 0 and at most the interval",
            );
        }
        let success = self.success_before_passing.unwrap_or(1);
        let critical = self.failures_before_critical.unwrap_or(1);
        let warning = self.failures_before_warning.unwrap_or(critical);
        for (f, v) in [
            ("success_before_passing", success),
            ("failures_before_critical", critical),
            ("failures_before_warning", warning),
        ] {
            if !(1..=100).contains(&v) {
                errs.push(format!("{field}.{f}"), "must be between 1 and 100");
            }
        }
        if warning > critical {
            errs.push(
                format!("{field}.failures_before_warning"),
                "must not exceed failures_before_critical",
            );
        }
        let id = match &self.id {
            Some(id) => {
                if id.is_empty()
                    || id.len() > 256
                    || id
                        .chars()
                        .any(|c| c.is_whitespace() || c.is_control() || c == '/')
                {
                    errs.push(
                        format!("{field}.id"),
                        "a check id is 1-256 characters without spaces or '/'",
                    );
                }
                id.clone()
            }
            None => format!("{id_prefix}:{name}"),
        };
        Ok(Some(CheckRecord {
            id,
            name,
            kind,
            interval,
            timeout,
            success_before_passing: success,
            failures_before_warning: warning,
            failures_before_critical: critical,
            status: Status::Critical,
            output: String::new(),
            flapping: false,
        }))
    }
}

fn validate_check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("check name must be 1-64 characters".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "check name {name:?} may hold only A-Z, a-z, 0-9, '-', '_', '.'"
        ));
    }
    Ok(())
}

fn validate_url(text: &str, schemes: &[&str], policy: &CheckPolicy) -> Result<String, String> {
    let url = url::Url::parse(text).map_err(|e| format!("{text:?} is not a valid URL: {e}"))?;
    if !schemes.contains(&url.scheme()) {
        return Err(format!("URL scheme must be one of {}", schemes.join(", ")));
    }
    let host = url
        .host_str()
        .ok_or_else(|| format!("URL {text:?} has no host"))?;
    guard_host(host.trim_start_matches('[').trim_end_matches(']'), policy)?;
    Ok(url.to_string())
}

fn validate_host_port(text: &str, policy: &CheckPolicy) -> Result<String, String> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} must be host:port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    crate::name::validate_address(host)?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(format!("port in {text:?} must be 1-65535")),
    }
    guard_host(host, policy)?;
    Ok(text.to_string())
}

/// Refuses literal IP targets inside `deny_targets`. Host names are checked
/// again after resolution, when probed.
fn guard_host(host: &str, policy: &CheckPolicy) -> Result<(), String> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>()
        && let Some(net) = policy.deny_targets.iter().find(|n| n.contains(ip))
    {
        return Err(format!(
            "probe target {ip} is inside the denied range {net}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(json: &str) -> Result<CheckRecord, String> {
        let spec: CheckSpec = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let mut errs = Errors::default();
        let r = spec
            .resolve(
                "checks[0]",
                "c",
                "svc:i",
                &CheckPolicy::default(),
                &mut errs,
            )
            .map_err(|CheckRefusal::Forbidden(m)| m)?;
        errs.finish().map_err(|e| e.to_string())?;
        r.ok_or_else(|| "none".into())
    }

    #[test]
    fn kinds_resolve_with_defaults() {
        let c =
            resolve(r#"{"http":"http://10.0.0.5:7331/health","interval":"10s","timeout":"2s"}"#)
                .unwrap();
        assert_eq!(c.kind.name(), "http");
        assert_eq!((c.interval, c.timeout), (Millis(10_000), Millis(2000)));
        assert_eq!(
            (
                c.failures_before_critical,
                c.failures_before_warning,
                c.success_before_passing
            ),
            (1, 1, 1)
        );
        assert_eq!(c.status, Status::Critical);
        assert_eq!(
            resolve(r#"{"tcp":"10.0.0.5:7331"}"#).unwrap().kind.name(),
            "tcp"
        );
        assert_eq!(
            resolve(r#"{"grpc":"10.0.0.5:9090","grpc_service":"p"}"#)
                .unwrap()
                .kind
                .name(),
            "grpc"
        );
        assert_eq!(
            resolve(r#"{"mqtt":"mqtt://10.0.0.5:1883"}"#)
                .unwrap()
                .kind
                .name(),
            "mqtt"
        );
        assert_eq!(resolve(r#"{"ttl":"15s"}"#).unwrap().kind.name(), "ttl");
        let c = resolve(r#"{"tcp":"h:1","failures_before_critical":3}"#).unwrap();
        assert_eq!(
            c.failures_before_warning, 3,
            "warning defaults to critical, as in Consul"
        );
    }

    #[test]
    fn refusals_name_the_field() {
        for (json, field) in [
            (r#"{}"#, "checks[0]"),
            (r#"{"tcp":"a:1","http":"http://a/"}"#, "checks[0]"),
            (r#"{"tcp":"nope"}"#, "checks[0].tcp"),
            (r#"{"tcp":"a:0"}"#, "checks[0].tcp"),
            (r#"{"http":"ftp://a/"}"#, "checks[0].http"),
            (
                r#"{"http":"http://169.254.169.254/latest"}"#,
                "checks[0].http",
            ),
            (r#"{"tcp":"[fe80::1]:80"}"#, "checks[0].tcp"),
            (r#"{"tcp":"a:1","interval":"10ms"}"#, "checks[0].interval"),
            (
                r#"{"tcp":"a:1","interval":"1s","timeout":"2s"}"#,
                "checks[0].timeout",
            ),
            (
                r#"{"tcp":"a:1","failures_before_warning":3,"failures_before_critical":2}"#,
                "checks[0].failures_before_warning",
            ),
            (r#"{"ttl":"10ms"}"#, "checks[0].ttl"),
        ] {
            let err = resolve(json).unwrap_err();
            assert!(err.starts_with(field), "{json}: {err}");
        }
        assert!(
            resolve(r#"{"exec":["true"]}"#)
                .unwrap_err()
                .contains("allow_exec")
        );
        assert!(
            resolve(r#"{"tcp":"a:1","bogus":1}"#)
                .unwrap_err()
                .contains("unknown field")
        );
    }
}
