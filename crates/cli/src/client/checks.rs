//! `muster checks` and `muster probes`.

use super::http::Api;
use super::table::Table;
use super::{decode, json_out};
use anyhow::Result;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct CheckRow {
    id: String,
    service: String,
    instance: String,
    kind: String,
    target: String,
    status: String,
    #[serde(default)]
    flapping: bool,
    #[serde(default)]
    output: String,
}

pub fn check_table(rows: Vec<CheckRow>) -> String {
    let mut t = Table::new(&[
        "ID", "SERVICE", "INSTANCE", "KIND", "TARGET", "STATUS", "OUTPUT",
    ]);
    for c in rows {
        let status = if c.flapping {
            format!("{} (flapping)", c.status)
        } else {
            c.status
        };
        // One line per check: the first line of the output, shortened.
        let mut output: String = c
            .output
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(60)
            .collect();
        if output.is_empty() {
            output = "-".into();
        }
        t.row(vec![
            c.id, c.service, c.instance, c.kind, c.target, status, output,
        ]);
    }
    t.render()
}

pub async fn list(api: &Api, service: Option<&str>, json: bool) -> Result<String> {
    let query: Vec<(&str, &str)> = service.map(|s| ("service", s)).into_iter().collect();
    let answer = api.get(&["checks"], &query).await?;
    if json {
        return Ok(json_out(&answer));
    }
    Ok(check_table(decode(answer)?))
}

#[derive(Debug, Deserialize)]
pub struct ProbeRow {
    requested_at: String,
    status: String,
    #[serde(default)]
    status_code: Option<u16>,
    response_ms: u64,
    is_up: bool,
    #[serde(default)]
    output: String,
}

pub fn probe_table(rows: Vec<ProbeRow>) -> String {
    let mut t = Table::new(&["REQUESTED_AT", "STATUS", "CODE", "MS", "UP", "OUTPUT"]);
    for p in rows {
        let output: String = p
            .output
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(60)
            .collect();
        t.row(vec![
            p.requested_at,
            p.status,
            p.status_code.map_or("-".into(), |c| c.to_string()),
            p.response_ms.to_string(),
            if p.is_up { "yes".into() } else { "no".into() },
            if output.is_empty() {
                "-".into()
            } else {
                output
            },
        ]);
    }
    t.render()
}

pub async fn probes(api: &Api, check: &str, limit: Option<u32>, json: bool) -> Result<String> {
    let limit = limit.map(|l| l.to_string());
    let query: Vec<(&str, &str)> = limit.as_deref().map(|l| ("limit", l)).into_iter().collect();
    let answer = api.get(&["checks", check, "probes"], &query).await?;
    if json {
        return Ok(json_out(&answer));
    }
    Ok(probe_table(decode(answer)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_show_one_line_per_row() {
        let rows: Vec<CheckRow> = serde_json::from_value(serde_json::json!([
            {"id": "web:a:http", "service": "web", "instance": "a", "kind": "http", "target": "http://h/health",
             "status": "passing", "flapping": true, "output": "HTTP GET: 200 OK\nbody"}
        ]))
        .unwrap();
        let t = check_table(rows);
        assert!(t.contains("passing (flapping)"));
        assert!(!t.contains("body"));
        let probes: Vec<ProbeRow> = serde_json::from_value(serde_json::json!([
            {"requested_at": "2026-11-22T10:00:00Z", "status": "critical", "response_ms": 3, "is_up": false, "output": ""}
        ]))
        .unwrap();
        let t = probe_table(probes);
        assert!(t.lines().nth(1).unwrap().contains("critical"));
    }
}
