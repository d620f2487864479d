//! Consul's service registration body, read the way Consul reads it: keys
//! matched case-insensitively (`Name`/`name`), snake_case aliases
//! (`deregister_critical_service_after`), unknown keys tolerated, `"Check":
//! null` accepted. It becomes a native `RegisterBody` with Consul's check ids.

use super::ConsulError;
use axum::http::StatusCode;
use muster_core::{CheckSpec, RegisterBody};
use serde_json::{Map, Value};

/// Keys lower-cased with `_` and `-` removed, so every spelling meets.
fn normalize(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let key: String = k
                    .chars()
                    .filter(|c| *c != '_' && *c != '-')
                    .flat_map(char::to_lowercase)
                    .collect();
                // Meta keys and header names are data, not field names: keep them as sent.
                let v = if key == "meta" || key == "header" || key == "servicemeta" {
                    v
                } else {
                    normalize(v)
                };
                out.insert(key, v);
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(normalize).collect()),
        other => other,
    }
}

fn bad(m: impl Into<String>) -> ConsulError {
    ConsulError(StatusCode::BAD_REQUEST, m.into())
}

fn string(m: &Map<String, Value>, key: &str) -> Result<Option<String>, ConsulError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(bad(format!("{key}: expected a string, got {other}"))),
    }
}

fn duration(m: &Map<String, Value>, key: &str) -> Result<Option<muster_core::Millis>, ConsulError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => muster_core::duration::parse(s)
            .map(Some)
            .map_err(|e| bad(format!("{key}: {e}"))),
        // Go's encoding of a time.Duration: nanoseconds.
        Some(Value::Number(n)) => Ok(n.as_u64().map(|ns| muster_core::Millis(ns / 1_000_000))),
        Some(other) => Err(bad(format!("{key}: expected a duration, got {other}"))),
    }
}

fn count(m: &Map<String, Value>, key: &str) -> Result<Option<u32>, ConsulError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|v| Some(v.min(u32::MAX as u64) as u32))
            .ok_or_else(|| bad(format!("{key}: expected a number"))),
        Some(other) => Err(bad(format!("{key}: expected a number, got {other}"))),
    }
}

/// The parts of a Consul registration muster keeps.
pub struct Registration {
    pub service: String,
    pub body: RegisterBody,
}

/// Reads a Consul register body (any Content-Type, or none).
pub fn parse(bytes: &[u8]) -> Result<Registration, ConsulError> {
    let raw: Value =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("request decode failed: {e}")))?;
    let Value::Object(m) = normalize(raw) else {
        return Err(bad("request decode failed: expected a JSON object"));
    };
    let service = string(&m, "name")?.ok_or_else(|| bad("Missing service name"))?;
    let id = string(&m, "id")?
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| service.clone());
    let address = string(&m, "address")?
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| super::NODE_ADDRESS.to_string());
    let port = match m.get("port") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => n.as_i64().unwrap_or(-1),
        Some(other) => return Err(bad(format!("Port: expected a number, got {other}"))),
    };
    let tags: Vec<String> = match m.get("tags") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|_| bad("Tags: expected a list of strings"))?,
    };
    let meta = match m.get("meta") {
        None | Some(Value::Null) => Default::default(),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|_| bad("Meta: expected an object of strings"))?,
    };
    let weight = match m.get("weights") {
        Some(Value::Object(w)) => w.get("passing").and_then(Value::as_i64),
        _ => None,
    };
    let mut check_values: Vec<Map<String, Value>> = Vec::new();
    if let Some(Value::Object(c)) = m.get("check") {
        check_values.push(c.clone());
    }
    if let Some(Value::Array(list)) = m.get("checks") {
        for c in list {
            if let Value::Object(c) = c {
                check_values.push(c.clone());
            }
        }
    }
    let several = check_values.len() > 1;
    let mut checks = Vec::new();
    let mut deregister_after = None;
    for (i, c) in check_values.iter().enumerate() {
        // Consul's ids: `service:<id>` for one check, `service:<id>:<n>` for several.
        let check_id = string(c, "checkid")?
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| {
                if several {
                    format!("service:{id}:{}", i + 1)
                } else {
                    format!("service:{id}")
                }
            });
        let name = format!("check-{}", i + 1);
        let headers = match c.get("header") {
            Some(Value::Object(h)) => Some(
                h.iter()
                    .filter_map(|(k, v)| {
                        let v = match v {
                            Value::Array(a) => {
                                a.first().and_then(Value::as_str).map(str::to_string)
                            }
                            Value::String(s) => Some(s.clone()),
                            _ => None,
                        }?;
                        Some((k.clone(), v))
                    })
                    .collect(),
            ),
            _ => None,
        };
        if let Some(d) = duration(c, "deregistercriticalserviceafter")? {
            deregister_after = Some(deregister_after.map_or(d, |p: muster_core::Millis| p.min(d)));
        }
        let mut spec = CheckSpec {
            id: Some(check_id),
            name: Some(name),
            http: string(c, "http")?,
            method: string(c, "method")?,
            headers,
            tls_skip_verify: c.get("tlsskipverify").and_then(Value::as_bool),
            tcp: string(c, "tcp")?,
            grpc: string(c, "grpc")?,
            ttl: duration(c, "ttl")?,
            interval: duration(c, "interval")?,
            timeout: duration(c, "timeout")?,
            success_before_passing: count(c, "successbeforepassing")?.filter(|n| *n > 0),
            failures_before_critical: count(c, "failuresbeforecritical")?.filter(|n| *n > 0),
            failures_before_warning: count(c, "failuresbeforewarning")?.filter(|n| *n > 0),
            ..Default::default()
        };
        // Consul ties a check's timeout to its interval loosely; muster wants timeout <= interval.
        if let (Some(t), Some(iv)) = (spec.timeout, spec.interval)
            && t > iv
        {
            spec.timeout = Some(iv);
        }
        if spec.http.is_none() && spec.tcp.is_none() && spec.grpc.is_none() && spec.ttl.is_none() {
            // Script and alias checks have no muster equivalent; skip them.
            continue;
        }
        checks.push(spec);
    }
    Ok(Registration {
        service,
        body: RegisterBody {
            service: None,
            id: Some(id),
            address,
            port,
            tags,
            meta,
            data: Value::Null,
            weight,
            ttl: None,
            deregister_critical_after: deregister_after,
            checks,
            health: None,
            allow_no_port: true,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_in_any_case_and_spelling() {
        let r = parse(br#"{"name":"web","ID":"w1","address":"10.0.0.1","Port":80,"tags":["a"],"Meta":{"Version":"1"},
            "Check":{"HTTP":"http://10.0.0.1/h","interval":"10s","DeregisterCriticalServiceAfter":"1m"},"Unknown":{"x":1}}"#)
        .unwrap();
        assert_eq!(
            (r.service.as_str(), r.body.id.as_deref(), r.body.port),
            ("web", Some("w1"), 80)
        );
        assert_eq!(
            r.body.meta.get("Version").map(String::as_str),
            Some("1"),
            "meta keys keep their case"
        );
        assert_eq!(r.body.checks[0].id.as_deref(), Some("service:w1"));
        assert_eq!(
            r.body.deregister_critical_after,
            Some(muster_core::Millis(60_000))
        );
        let r = parse(br#"{"Name":"api","Check":null,"checks":[{"ttl":"15s"},{"tcp":"10.0.0.1:80","Interval":"5s"}],"success_before_passing":1}"#).unwrap();
        assert_eq!(
            r.body.id.as_deref(),
            Some("api"),
            "the id defaults to the name"
        );
        let ids: Vec<_> = r
            .body
            .checks
            .iter()
            .map(|c| c.id.clone().unwrap())
            .collect();
        assert_eq!(ids, ["service:api:1", "service:api:2"]);
        assert!(parse(br#"{"ID":"x"}"#).is_err());
        assert!(parse(b"not json").is_err());
    }

    use proptest::prelude::*;

    /// Depth-limited arbitrary JSON, biased towards the keys the parser reads.
    fn json() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            Just("Name".to_string()),
            Just("ID".to_string()),
            Just("Port".to_string()),
            Just("Check".to_string()),
            Just("Checks".to_string()),
            Just("TTL".to_string()),
            Just("HTTP".to_string()),
            Just("Interval".to_string()),
            Just("Header".to_string()),
            Just("Weights".to_string()),
            Just("Meta".to_string()),
            Just("Tags".to_string()),
            "[a-zA-Z_]{1,12}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            ".{0,20}".prop_map(Value::String),
            "[0-9]{1,4}(ms|s|m|h)?".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(key.clone(), inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn any_json_body_is_parsed_or_refused_never_a_panic(v in json()) {
            let bytes = serde_json::to_vec(&v).unwrap();
            let _ = parse(&bytes);
        }

        #[test]
        fn any_bytes_are_refused_or_parsed(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&bytes);
        }
    }
}
