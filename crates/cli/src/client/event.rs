//! `muster event send TYPE BODY (--service S... | --broadcast)`.

use super::http::Api;
use super::json_out;
use anyhow::Result;
use reqwest::Method;
use serde_json::{Value, json};

/// BODY is JSON when it parses as JSON, else sent as a JSON string.
pub fn body(event_type: &str, body: &str, services: &[String], broadcast: bool) -> Value {
    let body: Value =
        serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_string()));
    let mut v = json!({"type": event_type, "body": body});
    if broadcast {
        v["broadcast"] = json!(true);
    } else {
        v["services"] = json!(services);
    }
    v
}

pub async fn send(api: &Api, body: &Value, json: bool) -> Result<String> {
    let answer = api
        .send(Method::POST, api.url(&["events"], &[])?, Some(body))
        .await?;
    if json {
        return Ok(json_out(&answer));
    }
    Ok(format!("sent at revision {}\n", answer["revision"]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        assert_eq!(
            body("deploy", r#"{"v":2}"#, &["web".into()], false),
            json!({"type": "deploy", "body": {"v": 2}, "services": ["web"]})
        );
        assert_eq!(
            body("note", "hello there", &[], true),
            json!({"type": "note", "body": "hello there", "broadcast": true})
        );
    }
}
