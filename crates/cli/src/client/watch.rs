//! `muster watch [SERVICE]... [--from REV]`: follows the change feed over
//! Server-Sent Events, one line per event (NDJSON with `--json`), and
//! reconnects after a drop, resuming after the last revision it printed.

use super::http::Api;
use anyhow::{Result, bail};
use serde_json::Value;
use std::io::Write;
use std::time::Duration;

/// One event as a line for people: `REV KIND SERVICE INSTANCE DETAIL`.
pub fn line(v: &Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    let kind = s("kind");
    let detail = match kind.as_str() {
        "snapshot" => format!(
            "{} instance(s)",
            v["instances"].as_array().map_or(0, Vec::len)
        ),
        "status_changed" => {
            let mut d = format!("{} -> {}", s("from"), s("to"));
            if let Some(c) = v["check"].as_str() {
                d.push_str(&format!(" ({c})"));
            }
            d
        }
        "deregistered" => [s("reason"), s("error")]
            .into_iter()
            .filter(|x| !x.is_empty())
            .collect::<Vec<_>>()
            .join(": "),
        "custom" => format!("{} {}", s("type"), v["body"]),
        _ => String::new(),
    };
    let instance = v["instance"]["id"].as_str().unwrap_or("-");
    format!(
        "{} {kind} {} {instance} {detail}",
        v["revision"],
        s("service")
    )
    .trim_end()
    .to_string()
}

/// Follows the feed until interrupted or until it cannot resume.
pub async fn follow(api: &Api, services: &[String], from: Option<u64>, json: bool) -> Result<()> {
    let joined = services.join(",");
    let mut resume = from;
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut query: Vec<(&str, String)> = Vec::new();
        if !joined.is_empty() {
            query.push(("services", joined.clone()));
        }
        if let Some(r) = resume {
            query.push(("from", r.to_string()));
        }
        let q: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut resp = match api.sse(api.url(&["watch"], &q)?).await {
            Ok(r) => r,
            Err(e) if e.to_string().starts_with("HTTP 410") => {
                bail!(
                    "{e} (the revision is no longer retained: run without --from to start from a snapshot)"
                )
            }
            Err(e) if e.to_string().starts_with("HTTP 4") => return Err(e),
            Err(e) => {
                eprintln!("muster watch: {e}; retrying in {}ms", backoff.as_millis());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        let mut buf = String::new();
        let mut event = String::new();
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) | Err(_) => break,
            };
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find('\n') {
                let raw = buf[..end].trim_end_matches('\r').to_string();
                buf.drain(..=end);
                if let Some(e) = raw.strip_prefix("event:") {
                    event = e.trim().to_string();
                } else if let Some(data) = raw.strip_prefix("data:") {
                    let v: Value = serde_json::from_str(data.trim()).unwrap_or(Value::Null);
                    if event == "error" {
                        match v["resume_from"].as_u64() {
                            Some(r) => {
                                eprintln!(
                                    "muster watch: {}; resuming",
                                    v["detail"].as_str().unwrap_or("dropped")
                                );
                                resume = Some(r);
                            }
                            None => bail!("{}", v["detail"].as_str().unwrap_or("the feed ended")),
                        }
                    } else {
                        if let Some(r) = v["revision"].as_u64() {
                            // Snapshots stand at their revision; deltas move it on.
                            resume = Some(r);
                        }
                        let out = if json { v.to_string() } else { line(&v) };
                        let mut stdout = std::io::stdout().lock();
                        if writeln!(stdout, "{out}")
                            .and_then(|_| stdout.flush())
                            .is_err()
                        {
                            return Ok(()); // stdout closed (e.g. `| head`)
                        }
                    }
                } else if raw.is_empty() {
                    event.clear();
                }
            }
        }
        eprintln!("muster watch: the feed dropped; reconnecting");
        tokio::time::sleep(backoff).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lines_for_people() {
        assert_eq!(
            line(
                &json!({"revision": 7, "kind": "registered", "service": "web", "instance": {"id": "w1"}})
            ),
            "7 registered web w1"
        );
        assert_eq!(
            line(
                &json!({"revision": 8, "kind": "deregistered", "service": "web", "instance": {"id": "w1"}, "reason": "shutdown", "error": "exit 3"})
            ),
            "8 deregistered web w1 shutdown: exit 3"
        );
        assert_eq!(
            line(
                &json!({"revision": 9, "kind": "status_changed", "service": "web", "instance": {"id": "w1"}, "from": "passing", "to": "critical", "check": "web:w1:http"})
            ),
            "9 status_changed web w1 passing -> critical (web:w1:http)"
        );
        assert_eq!(
            line(
                &json!({"revision": 3, "kind": "snapshot", "service": "web", "instances": [{}, {}]})
            ),
            "3 snapshot web - 2 instance(s)"
        );
    }
}
