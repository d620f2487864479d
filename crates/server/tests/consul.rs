//! The Consul-compatible API: headers, body aliases and blocking queries
//! over HTTP, and the real `py-consul` client driving it.

use muster_server::Config;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

mod common;

use common::Server;

async fn server() -> Server {
    common::start_ready(Config::for_tests()).await
}

impl Server {
    async fn put(&self, path: &str, body: &str) -> reqwest::Response {
        // No Content-Type: Consul clients often send none.
        self.http
            .put(format!("http://{}{path}", self.addr))
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, path: &str) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let r = self
            .http
            .get(format!("http://{}{path}", self.addr))
            .send()
            .await
            .unwrap();
        let (st, h) = (r.status(), r.headers().clone());
        (st, h, r.json().await.unwrap_or(Value::Null))
    }
}

fn consul_headers(h: &reqwest::header::HeaderMap) -> u64 {
    assert_eq!(h["x-consul-knownleader"], "true");
    assert_eq!(h["x-consul-lastcontact"], "0");
    assert_eq!(h["content-type"], "application/json");
    let index: u64 = h["x-consul-index"].to_str().unwrap().parse().unwrap();
    assert!(index >= 1);
    index
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_bodies_headers_and_shapes() {
    let s = server().await;
    let r = s
        .put(
            "/v1/agent/service/register",
            r#"{"name":"web","ID":"w1","Address":"10.0.0.1","port":80,"Tags":["v2"],"Meta":{"version":"1"},
                "Weights":{"Passing":3,"Warning":1},"Check":null,"Checks":[{"TTL":"15s","CheckID":"web-ttl"},
                {"TCP":"10.0.0.1:80","Interval":"5s","DeregisterCriticalServiceAfter":"10m"}],"EnableTagOverride":false,"Kind":""}"#,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let (st, h, v) = s.get("/v1/health/service/web").await;
    assert_eq!(st, StatusCode::OK);
    consul_headers(&h);
    let entry = &v[0];
    for k in ["Node", "Service", "Checks"] {
        assert!(!entry[k].is_null(), "{k}");
    }
    assert_eq!(
        (
            entry["Service"]["ID"].clone(),
            entry["Service"]["Port"].clone(),
            entry["Service"]["Weights"]["Passing"].clone()
        ),
        (json!("w1"), json!(80), json!(3))
    );
    let ids: Vec<&str> = entry["Checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["CheckID"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["web-ttl", "service:w1:2"],
        "CheckID wins; otherwise service:<id>:<n>"
    );
    // The same instance through the native API.
    let (st, _, native) = s.get("/api/v1/services/web/instances/w1").await;
    assert_eq!(
        (st, native["deregister_critical_after"].clone()),
        (StatusCode::OK, json!("10m"))
    );
    // [] never null; 404s carry the headers too.
    let (st, h, v) = s.get("/v1/health/service/nothing").await;
    assert_eq!((st, v), (StatusCode::OK, json!([])));
    consul_headers(&h);
    let r = s.put("/v1/agent/service/deregister/nope", "").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    consul_headers(r.headers());
    let (_, _, me) = s.get("/v1/agent/self").await;
    assert!(
        me.as_object().unwrap().values().all(Value::is_object),
        "every top-level value is an object"
    );
    let (_, _, services) = s.get("/v1/catalog/services").await;
    assert_eq!(services, json!({"web": ["v2"]}));
    let r = s.put("/v1/agent/service/register", r#"{"ID":"x"}"#).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Native registrations show up in the Consul view.
    s.http
        .post(format!("http://{}/api/v1/services/api/instances", s.addr))
        .json(&json!({"address": "10.0.0.9", "port": 9}))
        .send()
        .await
        .unwrap();
    let (_, _, v) = s.get("/v1/catalog/service/api").await;
    assert_eq!(v[0]["ServiceAddress"], "10.0.0.9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_queries_wake_only_for_their_service() {
    let s = server().await;
    s.put(
        "/v1/agent/service/register",
        r#"{"Name":"a","ID":"a1","Port":1}"#,
    )
    .await;
    s.put(
        "/v1/agent/service/register",
        r#"{"Name":"b","ID":"b1","Port":1}"#,
    )
    .await;
    let (_, h, _) = s.get("/v1/health/service/a").await;
    let index = consul_headers(&h);
    let http = s.http.clone();
    let url = format!(
        "http://{}/v1/health/service/a?index={index}&wait=3s",
        s.addr
    );
    let waiter = tokio::spawn(async move {
        let r = http.get(url).send().await.unwrap();
        r.headers()["x-consul-index"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.put(
        "/v1/agent/service/register",
        r#"{"Name":"b","ID":"b2","Port":1}"#,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiter.is_finished(),
        "a change to b does not wake a watcher of a"
    );
    s.put(
        "/v1/agent/service/register",
        r#"{"Name":"a","ID":"a2","Port":1}"#,
    )
    .await;
    let new_index = tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .expect("woken by a's change")
        .unwrap();
    assert!(new_index > index);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_py_consul_client_works_unchanged() {
    let s = server().await;
    let (host, port) = s.addr.rsplit_once(':').unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/consul/py_consul_client.py"
    );
    let out = tokio::process::Command::new("python3")
        .args([script, host, port])
        .output()
        .await
        .expect("python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'consul'"),
        "py-consul is missing: pip install py-consul (./scripts/test installs it)"
    );
    assert!(
        out.status.success(),
        "py-consul run failed:\n{}\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
}
