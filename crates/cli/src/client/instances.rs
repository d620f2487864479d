//! `muster instances`, `muster register` and `muster deregister`.

use super::http::Api;
use super::table::Table;
use super::{RegisterArgs, decode, join_or_dash, json_out, meta_map};
use anyhow::{Result, anyhow};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

/// The columns of an instance table, read from an instance as the API
/// returns it (which carries much more).
#[derive(Debug, Deserialize)]
pub struct InstanceRow {
    id: String,
    address: String,
    port: u16,
    status: String,
    lifetime: String,
    #[serde(default)]
    tags: Vec<String>,
}

pub fn instance_table(rows: Vec<InstanceRow>) -> String {
    let mut t = Table::new(&["ID", "ADDRESS", "PORT", "STATUS", "LIFETIME", "TAGS"]);
    for i in rows {
        t.row(vec![
            i.id,
            i.address,
            i.port.to_string(),
            i.status,
            i.lifetime,
            join_or_dash(&i.tags),
        ]);
    }
    t.render()
}

pub async fn list(
    api: &Api,
    service: &str,
    statuses: &[String],
    tags: &[String],
    json: bool,
) -> Result<String> {
    let query: Vec<(&str, &str)> = statuses
        .iter()
        .map(|s| ("status", s.as_str()))
        .chain(tags.iter().map(|t| ("tag", t.as_str())))
        .collect();
    let answer = api.get(&["services", service, "instances"], &query).await?;
    if json {
        return Ok(json_out(&answer));
    }
    Ok(instance_table(decode(answer)?))
}

/// The register body. Durations go through as the user wrote them: the
/// server owns their syntax and reports a bad one with the field it was in.
pub fn register_body(a: &RegisterArgs) -> Result<Value> {
    let with_interval = |mut check: Value| {
        if let Some(i) = &a.interval {
            check["interval"] = json!(i);
        }
        check
    };
    let mut checks = Vec::new();
    if let Some(url) = &a.http {
        checks.push(with_interval(json!({ "http": url })));
    }
    if let Some(addr) = &a.tcp {
        checks.push(with_interval(json!({ "tcp": addr })));
    }
    let mut body = json!({
        "address": a.address,
        "port": a.port,
        "tags": a.tags,
        "meta": meta_map(a.meta.clone())?,
        "checks": checks,
    });
    if let Some(id) = &a.id {
        body["id"] = json!(id);
    }
    if let Some(ttl) = &a.ttl {
        body["ttl"] = json!(ttl);
    }
    Ok(body)
}

/// Prints the id alone, so `ID=$(muster register ...)` works.
pub async fn register(api: &Api, service: &str, body: &Value, json: bool) -> Result<String> {
    let url = api.url(&["services", service, "instances"], &[])?;
    let answer = api.send(Method::POST, url, Some(body)).await?;
    if json {
        return Ok(json_out(&answer));
    }
    let id = answer
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("muster answered the registration without an instance id"))?;
    Ok(format!("{id}\n"))
}

pub async fn deregister(
    api: &Api,
    service: &str,
    id: &str,
    reason: Option<&str>,
    json: bool,
) -> Result<String> {
    let url = api.url(&["services", service, "instances", id], &[])?;
    let body = reason.map(|r| json!({ "reason": r }));
    let answer = api.send(Method::DELETE, url, body.as_ref()).await?;
    Ok(match (json, answer) {
        (true, Value::Null) => String::new(),
        (true, answer) => json_out(&answer),
        (false, _) => format!("deregistered {id}\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> RegisterArgs {
        use clap::{FromArgMatches, Parser};
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: RegisterArgs,
        }
        let mut argv = vec!["register", "web", "--address", "10.0.0.5", "--port", "7331"];
        argv.extend_from_slice(extra);
        let m = <Cli as clap::CommandFactory>::command().get_matches_from(argv);
        Cli::from_arg_matches(&m).unwrap().args
    }

    #[test]
    fn minimal_register_body() {
        assert_eq!(
            register_body(&args(&[])).unwrap(),
            json!({"address": "10.0.0.5", "port": 7331, "tags": [], "meta": {}, "checks": []})
        );
    }

    #[test]
    fn full_register_body_passes_durations_through() {
        let a = args(&[
            "--id",
            "web-a",
            "--tag",
            "v2",
            "--tag",
            "eu",
            "--meta",
            "version=2.1.0",
            "--ttl",
            "30s",
            "--http",
            "http://10.0.0.5:7331/health",
            "--tcp",
            "10.0.0.5:7331",
            "--interval",
            "1m30s",
        ]);
        assert_eq!(
            register_body(&a).unwrap(),
            json!({
                "id": "web-a",
                "address": "10.0.0.5",
                "port": 7331,
                "tags": ["v2", "eu"],
                "meta": {"version": "2.1.0"},
                "ttl": "30s",
                "checks": [
                    {"http": "http://10.0.0.5:7331/health", "interval": "1m30s"},
                    {"tcp": "10.0.0.5:7331", "interval": "1m30s"}
                ]
            })
        );
    }

    #[test]
    fn instance_table_has_the_contract_columns() {
        let answer = json!([
            {"id": "web-10.0.0.5-7331", "service": "web", "address": "10.0.0.5", "port": 7331,
             "tags": ["v2", "eu"], "meta": {}, "data": null, "weight": 1, "lifetime": "persistent",
             "status": "critical", "checks": []}
        ]);
        assert_eq!(
            instance_table(decode(answer).unwrap()),
            "ID                 ADDRESS   PORT  STATUS    LIFETIME    TAGS\n\
             web-10.0.0.5-7331  10.0.0.5  7331  critical  persistent  v2,eu\n"
        );
    }

    #[test]
    fn a_changed_shape_is_reported_not_shown_blank() {
        let err = decode::<Vec<InstanceRow>>(json!([{"id": "x"}])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("muster answered with an unexpected shape: "),
            "{err}"
        );
    }
}
