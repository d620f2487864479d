//! Elections and the cluster endpoint over real HTTP: a server started on
//! port 0, spoken to with reqwest. Every route, its status codes and
//! problems, and the OpenAPI document. Lapsing on the server's clock is
//! covered with paused time in `crates/registry/tests/elections.rs`.

use muster_server::{Config, start};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

struct Server {
    base: String,
    http: Client,
    stop: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn server() -> Server {
    let stop = CancellationToken::new();
    let running = start(Config::for_tests(), stop.clone()).await.unwrap();
    let s = Server {
        base: format!("http://{}", running.http_addr),
        http: Client::new(),
        stop,
    };
    for _ in 0..100 {
        let resp = s.http.get(format!("{}/ready", s.base)).send().await;
        if resp.is_ok_and(|r| r.status() == StatusCode::OK) {
            return s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("server never became ready");
}

impl Server {
    /// Sends a request and returns status and JSON body; errors must be
    /// problem documents.
    async fn json(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let text = resp.text().await.unwrap();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            assert_eq!(ct, "application/json", "{method} {path}");
        } else {
            assert_eq!(ct, "application/problem+json", "{method} {path}: {text}");
            assert_eq!(value["status"], status.as_u16(), "{text}");
        }
        (status, value)
    }

    async fn campaign(&self, name: &str, body: Value) -> (StatusCode, Value) {
        self.json(
            Method::POST,
            &format!("/api/v1/elections/{name}/campaign"),
            Some(body),
        )
        .await
    }

    async fn heartbeat(&self, name: &str, who: &str) -> (StatusCode, Value) {
        self.json(
            Method::PUT,
            &format!("/api/v1/elections/{name}/heartbeat"),
            Some(json!({"candidate": who})),
        )
        .await
    }

    async fn resign(&self, name: &str, who: &str) -> (StatusCode, Value) {
        self.json(
            Method::DELETE,
            &format!("/api/v1/elections/{name}/leader"),
            Some(json!({"candidate": who})),
        )
        .await
    }

    async fn election(&self, name: &str) -> (StatusCode, Value) {
        self.json(Method::GET, &format!("/api/v1/elections/{name}"), None)
            .await
    }
}

/// A 400 that names `field`.
fn assert_invalid((status, v): (StatusCode, Value), field: &str) {
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["field"], field, "{v}");
}

#[tokio::test]
async fn campaign_heartbeat_resign_and_read() {
    let s = server().await;
    let (st, v) = s.election("db").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v, json!({"term": 0}), "an unknown election has no holder");

    let (st, v) = s
        .campaign("db", json!({"candidate": "node-a", "ttl": "30s"}))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v, json!({"leader": true, "holder": "node-a", "term": 1}));

    let (st, v) = s
        .campaign("db", json!({"candidate": "node-b", "ttl": 30000}))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v, json!({"leader": false, "holder": "node-a", "term": 1}));

    let (st, v) = s.election("db").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        (v["holder"].as_str(), v["term"].as_u64()),
        (Some("node-a"), Some(1))
    );
    assert!(
        v["since"].as_str().is_some_and(|t| t.ends_with('Z')),
        "since is RFC 3339 UTC: {v}"
    );

    let (st, v) = s.heartbeat("db", "node-a").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["holder"], "node-a");
    assert_eq!(s.heartbeat("db", "node-b").await.0, StatusCode::CONFLICT);
    assert_eq!(
        s.heartbeat("other", "node-a").await.0,
        StatusCode::NOT_FOUND
    );

    assert_eq!(s.resign("db", "node-b").await.0, StatusCode::CONFLICT);
    let (st, v) = s.resign("db", "node-a").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v, json!({"term": 1}));
    assert_eq!(s.resign("db", "node-a").await.0, StatusCode::NOT_FOUND);
    assert_eq!(s.heartbeat("db", "node-a").await.0, StatusCode::NOT_FOUND);
    assert_eq!(s.election("db").await.1, json!({"term": 1}));

    let (st, v) = s
        .campaign("db", json!({"candidate": "node-b", "ttl": "1m"}))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v, json!({"leader": true, "holder": "node-b", "term": 2}));
}

#[tokio::test]
async fn bad_requests_are_problems_naming_the_field() {
    let s = server().await;
    let ok = json!({"candidate": "a", "ttl": "10s"});
    assert_invalid(s.campaign("Bad_Name!", ok.clone()).await, "name");
    assert_invalid(s.election("UPPER").await, "name");
    assert_invalid(
        s.campaign("db", json!({"candidate": "", "ttl": "10s"}))
            .await,
        "candidate",
    );
    assert_invalid(
        s.campaign("db", json!({"candidate": "x".repeat(129), "ttl": "10s"}))
            .await,
        "candidate",
    );
    assert_invalid(
        s.campaign("db", json!({"candidate": "a", "ttl": "500ms"}))
            .await,
        "ttl",
    );
    assert_invalid(
        s.campaign("db", json!({"candidate": "a", "ttl": "2h"}))
            .await,
        "ttl",
    );
    assert_invalid(
        s.campaign("db", json!({"candidate": "a", "ttl": "soon"}))
            .await,
        "ttl",
    );
    assert_invalid(s.campaign("db", json!({"candidate": "a"})).await, "ttl");
    assert_invalid(
        s.campaign("db", json!({"candidate": "a", "ttl": "10s", "priority": 1}))
            .await,
        "priority",
    );
    assert_invalid(
        s.json(
            Method::PUT,
            "/api/v1/elections/db/heartbeat",
            Some(json!({"candidate": "a", "ttl": "10s"})),
        )
        .await,
        "ttl",
    );
    assert_invalid(
        s.json(Method::DELETE, "/api/v1/elections/db/leader", None)
            .await,
        "body",
    );
    // Nothing was taken by the refused requests.
    assert_eq!(s.election("db").await.1, json!({"term": 0}));
}

#[tokio::test]
async fn cluster_names_this_node_as_its_only_member_and_leader() {
    let s = server().await;
    let (st, v) = s.json(Method::GET, "/api/v1/cluster", None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["mode"], "standalone");
    let node = v["node"].as_str().unwrap();
    let host = s.base.trim_start_matches("http://");
    assert!(
        node.ends_with(&format!("@{host}")),
        "node {node:?} names the address it was reached at"
    );
    assert!(!node.starts_with('@'), "node {node:?} names the machine");
    assert_eq!(v["members"], json!([node]));
    assert_eq!(v["leader"], node);
}

#[tokio::test]
async fn openapi_lists_the_coordination_routes() {
    let s = server().await;
    let (st, doc) = s.json(Method::GET, "/api/openapi.json", None).await;
    assert_eq!(st, StatusCode::OK);
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/v1/elections/{name}/campaign", "post"),
        ("/api/v1/elections/{name}/heartbeat", "put"),
        ("/api/v1/elections/{name}/leader", "delete"),
        ("/api/v1/elections/{name}", "get"),
        ("/api/v1/cluster", "get"),
    ] {
        let op = paths.get(path).and_then(|p| p.get(method));
        assert!(op.is_some(), "openapi lacks {method} {path}");
        assert_eq!(op.unwrap()["tags"], json!(["coordination"]), "{path}");
    }
    for schema in [
        "CampaignBody",
        "CandidateBody",
        "Campaign",
        "Election",
        "Cluster",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "openapi lacks schema {schema}"
        );
    }
}
