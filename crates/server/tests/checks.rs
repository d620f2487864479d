//! The checks API over real HTTP, with a real HTTP target whose answer the
//! test flips.

use muster_server::Config;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

mod common;

use common::Server;

async fn server() -> Server {
    let mut config = Config::for_tests();
    config.checks.deny_targets = muster_core::net::IpNet::default_deny();
    common::start_ready(config).await
}

impl Server {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

async fn target() -> (String, Arc<AtomicU16>) {
    let code = Arc::new(AtomicU16::new(200));
    let c = code.clone();
    let app = axum::Router::new().route(
        "/health",
        axum::routing::get(move || {
            let c = c.clone();
            async move { axum::http::StatusCode::from_u16(c.load(Ordering::SeqCst)).unwrap() }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/health", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, code)
}

async fn wait_for(s: &Server, path: &str, key: &str, want: &str) -> Value {
    for _ in 0..300 {
        let (st, v) = s.call(Method::GET, path, None).await;
        if st == StatusCode::OK && v[key] == want {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{path}: {key} never became {want}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_history_and_stats() {
    let s = server().await;
    let (url, code) = target().await;
    let (st, v) = s
        .call(
            Method::POST,
            "/api/v1/services/web/instances",
            Some(json!({"id": "w1", "address": "127.0.0.1", "port": 80,
            "checks": [{"name": "health", "http": url, "interval": "200ms", "timeout": "150ms"}]})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["status"], "critical", "a new check starts critical");
    let check = "/api/v1/checks/web:w1:health";
    let v = wait_for(&s, check, "status", "passing").await;
    assert_eq!(
        (
            v["kind"].clone(),
            v["target"].clone(),
            v["service"].clone(),
            v["instance"].clone()
        ),
        (json!("http"), json!(url), json!("web"), json!("w1"))
    );
    assert!(v["last_probe"]["response_ms"].is_u64());
    let (_, inst) = s
        .call(Method::GET, "/api/v1/services/web/instances/w1", None)
        .await;
    assert_eq!(inst["status"], "passing");
    code.store(500, Ordering::SeqCst);
    wait_for(&s, check, "status", "critical").await;
    let (_, healthy) = s
        .call(
            Method::GET,
            "/api/v1/services/web/instances?healthy=true",
            None,
        )
        .await;
    assert_eq!(
        healthy,
        json!([]),
        "a critical instance leaves the healthy list"
    );
    let mut probes = Vec::new();
    for _ in 0..100 {
        let (st, v) = s
            .call(Method::GET, &format!("{check}/probes?limit=3"), None)
            .await;
        assert_eq!(st, StatusCode::OK);
        probes = v.as_array().unwrap().clone();
        if probes.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(probes.len(), 3, "limit caps the answer");
    assert_eq!(probes[0]["status_code"], 500, "newest first");
    for k in [
        "id",
        "check_id",
        "requested_at",
        "timeout_ms",
        "is_up",
        "is_responsive",
        "response_ms",
        "status",
        "output",
    ] {
        assert!(!probes[0][k].is_null(), "probe record lacks {k}");
    }
    assert!(probes[0]["id"].as_u64() > probes[1]["id"].as_u64());
    let since = probes[1]["requested_at"].as_str().unwrap().to_string();
    let (_, newer) = s
        .call(Method::GET, &format!("{check}/probes?since={since}"), None)
        .await;
    assert!(newer.as_array().unwrap().len() >= 2);
    let (st, stats) = s
        .call(Method::GET, &format!("{check}/stats?window=1h"), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{stats}");
    let ratio = stats["uptime_ratio"].as_f64().unwrap();
    assert!(
        ratio > 0.0 && ratio < 1.0,
        "some passing, some critical: {stats}"
    );
    assert!(stats["response_ms"]["p99"].is_u64());
    let metrics = s.metrics().await;
    for want in [
        "muster_check_status{check=\"web:w1:health\",service=\"web\",instance=\"w1\"} 2",
        "muster_check_last_response_seconds{check=\"web:w1:health\"",
        "muster_check_probe_duration_seconds_bucket{",
        "muster_probe_schedule_lag_seconds_bucket{",
        "muster_probes_total{kind=\"http\",status=\"critical\"}",
    ] {
        assert!(metrics.contains(want), "/metrics lacks {want}:\n{metrics}");
    }
    let (st, list) = s
        .call(
            Method::GET,
            "/api/v1/checks?service=web&status=critical",
            None,
        )
        .await;
    assert_eq!((st, list.as_array().unwrap().len()), (StatusCode::OK, 1));
    for (q, field) in [
        ("probes?limit=0", "limit"),
        ("probes?since=yesterday", "since"),
        ("stats?window=forever", "window"),
    ] {
        let (st, v) = s.call(Method::GET, &format!("{check}/{q}"), None).await;
        assert_eq!(
            (st, v["field"].clone()),
            (StatusCode::BAD_REQUEST, json!(field)),
            "{q}"
        );
    }
    let (st, _) = s.call(Method::PUT, &format!("{check}/pass"), None).await;
    assert_eq!(
        st,
        StatusCode::CONFLICT,
        "pass/warn/fail are for ttl checks"
    );
    let (st, _) = s.call(Method::DELETE, check, None).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = s.call(Method::GET, check, None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (_, inst) = s
        .call(Method::GET, "/api/v1/services/web/instances/w1", None)
        .await;
    assert_eq!(
        (inst["status"].clone(), inst["checks"].clone()),
        (json!("passing"), json!([]))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_url_becomes_the_default_check() {
    let s = server().await;
    let (url, _code) = target().await;
    let (st, v) = s
        .call(
            Method::POST,
            "/api/v1/services/core/instances",
            Some(json!({"id": "c1", "address": "127.0.0.1", "port": 7331, "health": url})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(
        (v["checks"][0]["id"].clone(), v["checks"][0]["kind"].clone()),
        (json!("core:c1:health"), json!("http"))
    );
    wait_for(&s, "/api/v1/checks/core:c1:health", "status", "passing").await;
    let (st, v) = s
        .call(
            Method::POST,
            "/api/v1/services/core/instances",
            Some(json!({"address": "127.0.0.1", "port": 1, "health": "ftp://x/"})),
        )
        .await;
    assert_eq!(
        (st, v["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("health.http"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_checks_added_later_and_passed() {
    let s = server().await;
    s.call(
        Method::POST,
        "/api/v1/services/api/instances",
        Some(json!({"id": "a1", "address": "10.0.0.1", "port": 1})),
    )
    .await;
    let (st, v) = s
        .call(
            Method::POST,
            "/api/v1/checks",
            Some(json!({"service": "api", "instance": "a1", "name": "alive", "ttl": "30s"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(
        (v["id"].clone(), v["status"].clone()),
        (json!("api:a1:alive"), json!("critical"))
    );
    let (st, v) = s
        .call(
            Method::PUT,
            "/api/v1/checks/api:a1:alive/warn",
            Some(json!({"output": "disk 91%"})),
        )
        .await;
    assert_eq!(
        (st, v["status"].clone(), v["output"].clone()),
        (StatusCode::OK, json!("warning"), json!("disk 91%"))
    );
    let (_, inst) = s
        .call(Method::GET, "/api/v1/services/api/instances/a1", None)
        .await;
    assert_eq!(inst["status"], "warning");
    let (st, v) = s
        .call(Method::PUT, "/api/v1/checks/api:a1:alive/pass", None)
        .await;
    assert_eq!(
        (st, v["status"].clone()),
        (StatusCode::OK, json!("passing"))
    );
    // A heartbeat passes ttl checks too.
    s.call(Method::PUT, "/api/v1/checks/api:a1:alive/fail", None)
        .await;
    let (st, _) = s
        .call(
            Method::PUT,
            "/api/v1/services/api/instances/a1/heartbeat",
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (_, v) = s
        .call(Method::GET, "/api/v1/checks/api:a1:alive", None)
        .await;
    assert_eq!(v["status"], "passing");
    for (body, status, field) in [
        (
            json!({"instance": "a1", "ttl": "30s"}),
            StatusCode::BAD_REQUEST,
            "service",
        ),
        (
            json!({"service": "api", "ttl": "30s"}),
            StatusCode::BAD_REQUEST,
            "instance",
        ),
        (
            json!({"service": "api", "instance": "a1", "ttl": "30s", "bogus": 1}),
            StatusCode::BAD_REQUEST,
            "bogus",
        ),
        (
            json!({"service": "api", "instance": "a1", "ttl": "10ms"}),
            StatusCode::BAD_REQUEST,
            "ttl",
        ),
        (
            json!({"service": "api", "instance": "a1", "http": "http://169.254.169.254/"}),
            StatusCode::BAD_REQUEST,
            "http",
        ),
        (
            json!({"service": "api", "instance": "a1"}),
            StatusCode::BAD_REQUEST,
            "body",
        ),
    ] {
        let (st, v) = s
            .call(Method::POST, "/api/v1/checks", Some(body.clone()))
            .await;
        assert_eq!(
            (st, v["field"].clone()),
            (status, json!(field)),
            "{body}: {v}"
        );
    }
    let (st, _) = s
        .call(
            Method::POST,
            "/api/v1/checks",
            Some(json!({"service": "api", "instance": "a1", "exec": ["true"]})),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = s
        .call(
            Method::POST,
            "/api/v1/checks",
            Some(json!({"service": "api", "instance": "nope", "ttl": "30s"})),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = s
        .call(
            Method::POST,
            "/api/v1/checks",
            Some(json!({"service": "api", "instance": "a1", "name": "alive", "ttl": "30s"})),
        )
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "names are unique per instance");
    let (st, _) = s.call(Method::PUT, "/api/v1/checks/nope/pass", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}
