//! `muster services` and `muster service get|put|delete`: service summaries
//! and definitions.

use super::http::Api;
use super::instances::{InstanceRow, instance_table};
use super::table::Table;
use super::{decode, join_or_dash, json_out, meta_map};
use anyhow::{Result, anyhow};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;

/// One item of `GET /api/v1/services`.
#[derive(Debug, Deserialize)]
struct ServiceSummary {
    name: String,
    #[serde(default)]
    tags: Vec<String>,
    instances: u64,
    passing: u64,
    warning: u64,
    critical: u64,
    maintenance: u64,
}

/// A definition as `GET` and `PUT /api/v1/services/{name}` return it; the
/// fields only one of them carries are optional.
#[derive(Debug, Deserialize)]
struct ServiceDefinition {
    name: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    meta: BTreeMap<String, String>,
    #[serde(default)]
    spec: Value,
    instances: Option<Vec<InstanceRow>>,
    revision: Option<u64>,
}

pub async fn list(api: &Api, json: bool) -> Result<String> {
    let answer = api.get(&["services"], &[]).await?;
    if json {
        return Ok(json_out(&answer));
    }
    render_list(decode(answer)?)
}

fn render_list(services: Vec<ServiceSummary>) -> Result<String> {
    let mut t = Table::new(&[
        "NAME",
        "TAGS",
        "INSTANCES",
        "PASSING",
        "WARNING",
        "CRITICAL",
        "MAINTENANCE",
    ]);
    for s in services {
        t.row(vec![
            s.name,
            join_or_dash(&s.tags),
            s.instances.to_string(),
            s.passing.to_string(),
            s.warning.to_string(),
            s.critical.to_string(),
            s.maintenance.to_string(),
        ]);
    }
    Ok(t.render())
}

pub async fn get(api: &Api, name: &str, json: bool) -> Result<String> {
    let answer = api.get(&["services", name], &[]).await?;
    if json {
        return Ok(json_out(&answer));
    }
    Ok(render_definition(decode(answer)?))
}

/// The `PUT` body; the spec file is parsed here so a syntax error points at
/// the file rather than coming back as a 400 about the request.
pub fn put_body(
    spec: Option<&Path>,
    tags: Vec<String>,
    meta: Vec<(String, String)>,
) -> Result<Value> {
    let mut body = json!({ "tags": tags, "meta": meta_map(meta)? });
    if let Some(path) = spec {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow!("cannot read spec file {}: {e}", path.display()))?;
        let spec: Value = serde_json::from_str(&text)
            .map_err(|e| anyhow!("spec file {} is not valid JSON: {e}", path.display()))?;
        body["spec"] = spec;
    }
    Ok(body)
}

pub async fn put(api: &Api, name: &str, body: &Value, json: bool) -> Result<String> {
    let url = api.url(&["services", name], &[])?;
    let answer = api.send(Method::PUT, url, Some(body)).await?;
    if json {
        return Ok(json_out(&answer));
    }
    Ok(render_definition(decode(answer)?))
}

pub async fn delete(api: &Api, name: &str, cascade: bool, json: bool) -> Result<String> {
    let query: &[(&str, &str)] = if cascade { &[("cascade", "true")] } else { &[] };
    let url = api.url(&["services", name], query)?;
    let answer = api.send(Method::DELETE, url, None).await?;
    Ok(match (json, answer) {
        (true, Value::Null) => String::new(),
        (true, answer) => json_out(&answer),
        (false, _) => format!("deleted service {name}\n"),
    })
}

/// Field/value lines, then the instances when the answer lists them.
fn render_definition(d: ServiceDefinition) -> String {
    let meta: Vec<String> = d.meta.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let spec = match &d.spec {
        Value::Null => "-".to_string(),
        // Compact, so the spec stays on its line; `--json` shows it in full.
        other => other.to_string(),
    };
    let mut t = Table::default();
    t.row(vec!["name".into(), d.name]);
    t.row(vec!["tags".into(), join_or_dash(&d.tags)]);
    t.row(vec!["meta".into(), join_or_dash(&meta)]);
    t.row(vec!["spec".into(), spec]);
    if let Some(rev) = d.revision {
        t.row(vec!["revision".into(), rev.to_string()]);
    }
    let mut out = t.render();
    if let Some(instances) = d.instances {
        out.push('\n');
        out.push_str(&instance_table(instances));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_table_has_the_contract_columns() {
        let answer = json!([
            {"name": "web", "tags": ["a", "b"], "meta": {}, "instances": 3, "passing": 1,
             "warning": 1, "critical": 1, "maintenance": 0},
            {"name": "db", "tags": [], "meta": {}, "instances": 0, "passing": 0,
             "warning": 0, "critical": 0, "maintenance": 0}
        ]);
        assert_eq!(
            render_list(decode(answer).unwrap()).unwrap(),
            "NAME  TAGS  INSTANCES  PASSING  WARNING  CRITICAL  MAINTENANCE\n\
             web   a,b   3          1        1        1         0\n\
             db    -     0          0        0        0         0\n"
        );
    }

    #[test]
    fn definition_shows_fields_then_instances() {
        let answer = json!({
            "name": "web", "tags": ["x"], "meta": {"owner": "team", "tier": "1"},
            "spec": {"replicas": 3}, "revision": 7,
            "instances": [{"id": "web-1", "service": "web", "address": "10.0.0.1", "port": 80,
                           "tags": [], "status": "passing", "lifetime": "ttl"}]
        });
        assert_eq!(
            render_definition(decode(answer).unwrap()),
            "name      web\n\
             tags      x\n\
             meta      owner=team,tier=1\n\
             spec      {\"replicas\":3}\n\
             revision  7\n\
             \n\
             ID     ADDRESS   PORT  STATUS   LIFETIME  TAGS\n\
             web-1  10.0.0.1  80    passing  ttl       -\n"
        );
    }

    #[test]
    fn stored_definition_without_instances_has_no_instance_table() {
        let answer = json!({"name": "web", "tags": [], "meta": {}, "spec": null,
                            "created_at": "2026-01-01T00:00:00Z"});
        assert_eq!(
            render_definition(decode(answer).unwrap()),
            "name  web\ntags  -\nmeta  -\nspec  -\n"
        );
    }

    #[test]
    fn put_body_reads_the_spec_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("spec.json");
        std::fs::write(&good, r#"{"replicas": 2}"#).unwrap();
        let body = put_body(
            Some(&good),
            vec!["a".into()],
            vec![("k".into(), "v".into())],
        )
        .unwrap();
        assert_eq!(
            body,
            json!({"tags": ["a"], "meta": {"k": "v"}, "spec": {"replicas": 2}})
        );

        assert_eq!(
            put_body(None, vec![], vec![]).unwrap(),
            json!({"tags": [], "meta": {}})
        );

        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{replicas").unwrap();
        let err = put_body(Some(&bad), vec![], vec![])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("spec file ") && err.contains("not valid JSON"),
            "{err}"
        );
        let err = put_body(Some(&dir.path().join("missing")), vec![], vec![]).unwrap_err();
        assert!(
            err.to_string().starts_with("cannot read spec file "),
            "{err}"
        );
    }
}
