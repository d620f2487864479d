//! The native API over real HTTP: a server started on port 0, spoken to with
//! reqwest. Every route, every error case, idempotency and filters.

use muster_server::Config;
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

mod common;

use common::Server;

async fn server_with(config: Config) -> Server {
    common::start_ready(config).await
}

async fn server() -> Server {
    server_with(Config::for_tests()).await
}

impl Server {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Response {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap()
    }

    /// Sends a request and returns status and JSON body, checking the headers
    /// every response must carry.
    async fn json(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let resp = self.call(method.clone(), path, body).await;
        let status = resp.status();
        assert!(
            resp.headers().contains_key("x-muster-revision"),
            "{method} {path}: no X-Muster-Revision"
        );
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let text = resp.text().await.unwrap();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_client_error() || status.is_server_error() {
            assert_eq!(
                ct, "application/problem+json",
                "{method} {path}: errors are problem documents"
            );
            assert_eq!(value["status"], status.as_u16(), "{text}");
            assert!(
                value["title"].is_string() && value["detail"].is_string(),
                "{text}"
            );
        } else {
            assert_eq!(ct, "application/json", "{method} {path}");
        }
        (status, value)
    }

    async fn register(&self, service: &str, body: Value) -> (StatusCode, Value) {
        self.json(
            Method::POST,
            &format!("/api/v1/services/{service}/instances"),
            Some(body),
        )
        .await
    }

    async fn ids(&self, path: &str) -> Vec<String> {
        let (status, v) = self.json(Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {v}");
        v.as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect()
    }
}

/// A 400 that names `field`.
fn assert_invalid(status: StatusCode, v: &Value, field: &str) {
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["field"], field, "{v}");
}

#[tokio::test]
async fn registration_is_idempotent_and_reads_see_writes() {
    let s = server().await;
    let body = json!({"address": "10.0.0.5", "port": 7331, "tags": ["v2", "eu"], "meta": {"version": "2.1.0"},
                      "data": {"repl": {"port": 8989}}, "weight": 3});
    let (st, v) = s.register("payments", body.clone()).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["id"], "payments-10.0.0.5-7331");
    for (k, want) in [
        ("service", json!("payments")),
        ("address", json!("10.0.0.5")),
        ("port", json!(7331)),
        ("weight", json!(3)),
        ("lifetime", json!("persistent")),
        ("status", json!("passing")),
        ("data", json!({"repl": {"port": 8989}})),
    ] {
        assert_eq!(v[k], want, "{k}");
    }
    assert!(v["registered_at"].as_str().unwrap().ends_with('Z'));
    let (st, again) = s.register("payments", body).await;
    assert_eq!(st, StatusCode::OK, "re-registering the same id answers 200");
    assert_eq!(again["registered_at"], v["registered_at"]);
    // A GET right after the write sees it.
    let (st, one) = s
        .json(
            Method::GET,
            "/api/v1/services/payments/instances/payments-10.0.0.5-7331",
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(one["meta"]["version"], "2.1.0");
    // Explicit id.
    let path = "/api/v1/services/payments/instances/p-1";
    let (st, v) = s
        .json(
            Method::PUT,
            path,
            Some(json!({"address": "10.0.0.6", "port": 1})),
        )
        .await;
    assert_eq!((st, v["id"].clone()), (StatusCode::CREATED, json!("p-1")));
    let (st, _) = s
        .json(
            Method::PUT,
            path,
            Some(json!({"address": "10.0.0.6", "port": 1})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, v) = s
        .json(
            Method::PUT,
            path,
            Some(json!({"id": "other", "address": "10.0.0.6", "port": 1})),
        )
        .await;
    assert_invalid(st, &v, "id");
    assert_eq!(
        s.ids("/api/v1/services/payments/instances").await,
        ["p-1", "payments-10.0.0.5-7331"]
    );
}

#[tokio::test]
async fn instance_filters() {
    let s = server().await;
    for (id, tags) in [
        ("a", json!(["eu"])),
        ("b", json!(["eu", "v2"])),
        ("c", json!(["us"])),
        ("d", json!([])),
    ] {
        let (st, _) = s
            .register(
                "web",
                json!({"id": id, "address": "10.0.0.1", "port": 80, "tags": tags}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED);
    }
    let hb = json!({"status": "warning", "output": "slow"});
    let (st, v) = s
        .json(
            Method::PUT,
            "/api/v1/services/web/instances/b/heartbeat",
            Some(hb),
        )
        .await;
    assert_eq!(
        (st, v["status"].clone()),
        (StatusCode::OK, json!("warning"))
    );
    let (st, _) = s
        .json(
            Method::PUT,
            "/api/v1/services/web/instances/c/heartbeat",
            Some(json!({"status": "critical"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, v) = s
        .json(
            Method::PUT,
            "/api/v1/services/web/instances/d/maintenance",
            Some(json!({"enabled": true, "reason": "deploy"})),
        )
        .await;
    assert_eq!(
        (st, v["status"].clone()),
        (StatusCode::OK, json!("maintenance"))
    );
    let base = "/api/v1/services/web/instances";
    assert_eq!(s.ids(&format!("{base}?status=passing")).await, ["a"]);
    assert_eq!(
        s.ids(&format!("{base}?status=warning&status=critical"))
            .await,
        ["b", "c"]
    );
    assert_eq!(s.ids(&format!("{base}?status=maintenance")).await, ["d"]);
    assert_eq!(s.ids(&format!("{base}?tag=eu")).await, ["a", "b"]);
    assert_eq!(s.ids(&format!("{base}?tag=eu&tag=v2")).await, ["b"]);
    assert_eq!(s.ids(&format!("{base}?healthy=true")).await, ["a", "b"]);
    assert_eq!(
        s.ids(&format!("{base}?healthy=true&strict=true")).await,
        ["a"]
    );
    assert_eq!(s.ids(&format!("{base}?healthy=true&tag=v2")).await, ["b"]);
    assert!(
        s.ids("/api/v1/services/nobody/instances").await.is_empty(),
        "an unknown service has no instances: 200 []"
    );
    let (st, v) = s
        .json(Method::GET, &format!("{base}?status=sleepy"), None)
        .await;
    assert_invalid(st, &v, "status");
    let (st, v) = s
        .json(Method::GET, &format!("{base}?healthy=maybe"), None)
        .await;
    assert_invalid(st, &v, "healthy");
    let (st, _) = s
        .json(
            Method::PUT,
            "/api/v1/services/web/instances/d/maintenance",
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(s.ids(&format!("{base}?status=passing")).await, ["a", "d"]);
    let (st, v) = s.json(Method::GET, "/api/v1/services", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        v,
        json!([{"name": "web", "tags": [], "meta": {}, "instances": 4, "passing": 2, "warning": 1, "critical": 1, "maintenance": 0}])
    );
}

#[tokio::test]
async fn heartbeats_deregistration_and_404s() {
    let s = server().await;
    let (st, _) = s
        .register(
            "api",
            json!({"id": "i1", "address": "h.example", "port": 1, "ttl": "30s"}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let hb = "/api/v1/services/api/instances/i1/heartbeat";
    let (st, v) = s
        .json(
            Method::PUT,
            hb,
            Some(json!({"metrics": {"cpu": 0.5, "rss": 1024}})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["metrics"]["rss"], 1024);
    assert!(v["last_heartbeat_at"].is_string());
    let resp = s.call(Method::PUT, hb, None).await;
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "the heartbeat body is optional"
    );
    let (st, v) = s
        .json(Method::GET, "/api/v1/services/api/instances/i1", None)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        v["metrics"]["cpu"], 0.5,
        "the last metrics are shown with the instance"
    );
    let (st, v) = s
        .json(Method::PUT, hb, Some(json!({"metrics": [1, 2]})))
        .await;
    assert_invalid(st, &v, "metrics");
    let (st, v) = s
        .json(Method::PUT, hb, Some(json!({"status": "maintenance"})))
        .await;
    assert_invalid(st, &v, "status");
    let (st, _) = s
        .json(
            Method::PUT,
            "/api/v1/services/api/instances/nope/heartbeat",
            None,
        )
        .await;
    assert_eq!(
        st,
        StatusCode::NOT_FOUND,
        "so the client knows to re-register"
    );
    let (st, _) = s
        .json(Method::GET, "/api/v1/services/api/instances/nope", None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, v) = s
        .json(
            Method::DELETE,
            "/api/v1/services/api/instances/i1",
            Some(json!({"reason": "shutdown", "error": "exit 2"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(v["revision"].as_u64().unwrap() > 0);
    let (st, _) = s
        .json(Method::DELETE, "/api/v1/services/api/instances/i1", None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = s.json(Method::PUT, hb, None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, v) = s
        .json(
            Method::DELETE,
            "/api/v1/services/api/instances/i1",
            Some(json!({"why": "x"})),
        )
        .await;
    assert_invalid(st, &v, "why");
    let (st, _) = s
        .json(
            Method::PUT,
            "/api/v1/services/api/instances/nope/maintenance",
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn services_crud() {
    let s = server().await;
    let def = json!({"tags": ["core"], "meta": {"team": "pay"}, "spec": {"cpu": "500m", "image": "sha256:abc"}});
    let (st, v) = s
        .json(Method::PUT, "/api/v1/services/payments", Some(def.clone()))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["spec"]["cpu"], "500m");
    let (st, _) = s
        .json(Method::PUT, "/api/v1/services/payments", Some(def))
        .await;
    assert_eq!(st, StatusCode::OK);
    s.register("payments", json!({"address": "10.0.0.1", "port": 80}))
        .await;
    let (st, v) = s.json(Method::GET, "/api/v1/services/payments", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        (
            v["name"].clone(),
            v["tags"].clone(),
            v["meta"]["team"].clone()
        ),
        (json!("payments"), json!(["core"]), json!("pay"))
    );
    assert_eq!(v["spec"]["image"], "sha256:abc");
    assert_eq!(v["instances"].as_array().unwrap().len(), 1);
    assert!(v["revision"].as_u64().unwrap() >= 2);
    let (st, v) = s.json(Method::GET, "/api/v1/services", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v[0]["tags"], json!(["core"]));
    let (st, v) = s
        .json(Method::DELETE, "/api/v1/services/payments", None)
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("cascade"));
    let (st, _) = s
        .json(
            Method::DELETE,
            "/api/v1/services/payments?cascade=true",
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = s.json(Method::GET, "/api/v1/services/payments", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(
        s.ids("/api/v1/services/payments/instances")
            .await
            .is_empty()
    );
    let (st, _) = s
        .json(Method::DELETE, "/api/v1/services/payments", None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    // A service known only through its instances.
    s.register("implicit", json!({"address": "10.0.0.1", "port": 80}))
        .await;
    let (st, v) = s.json(Method::GET, "/api/v1/services/implicit", None).await;
    assert_eq!((st, v["spec"].clone()), (StatusCode::OK, Value::Null));
    for (name, field) in [("Payments", "name"), ("-x", "name"), ("a_b", "")] {
        let (st, v) = s
            .json(
                Method::PUT,
                &format!("/api/v1/services/{name}"),
                Some(json!({})),
            )
            .await;
        if field.is_empty() {
            assert!(st.is_success(), "{name}: {v}");
        } else {
            assert_invalid(st, &v, field);
        }
    }
    let (st, v) = s
        .json(
            Method::PUT,
            "/api/v1/services/x",
            Some(json!({"tags": "core"})),
        )
        .await;
    assert_invalid(st, &v, "tags");
    let (st, v) = s
        .json(
            Method::PUT,
            "/api/v1/services/x",
            Some(json!({"spec": {}, "owner": "me"})),
        )
        .await;
    assert_invalid(st, &v, "owner");
}

#[tokio::test]
async fn bad_input_is_a_4xx_naming_the_field_and_changes_nothing() {
    let mut config = Config::for_tests();
    config.body_limit = 4096;
    let s = server_with(config).await;
    let cases: &[(Value, &str)] = &[
        (json!({"address": "10.0.0.1"}), "port"),
        (json!({"port": 80}), "address"),
        (json!({"address": "10.0.0.1", "port": 0}), "port"),
        (json!({"address": "10.0.0.1", "port": 65536}), "port"),
        (json!({"address": "10.0.0.1", "port": -1}), "port"),
        (json!({"address": "10.0.0.1", "port": "80"}), "port"),
        (json!({"address": "not an address", "port": 80}), "address"),
        (
            json!({"address": "10.0.0.1", "port": 80, "colour": "red"}),
            "colour",
        ),
        (
            json!({"address": "10.0.0.1", "port": 80, "ttl": "soon"}),
            "ttl",
        ),
        (
            json!({"address": "10.0.0.1", "port": 80, "ttl": "10ms"}),
            "ttl",
        ),
        (
            json!({"address": "10.0.0.1", "port": 80, "tags": ["a b"]}),
            "tags[0]",
        ),
        (
            json!({"address": "10.0.0.1", "port": 80, "meta": {"k": 1}}),
            "meta.k",
        ),
        (
            json!({"address": "10.0.0.1", "port": 80, "weight": 0}),
            "weight",
        ),
        (
            json!({"address": "10.0.0.1", "port": 80, "id": "has space"}),
            "id",
        ),
        (
            json!({"address": "10.0.0.1", "port": 80, "checks": [{"tcp": "a:1", "interval": "fast"}]}),
            "checks[0].interval",
        ),
        (
            json!({"address": "10.0.0.1", "port": 80, "checks": [{}]}),
            "checks[0]",
        ),
        (
            json!({"address": "10.0.0.1", "port": 80, "checks": [{"http": "http://169.254.169.254/"}]}),
            "checks[0].http",
        ),
        (
            json!({"address": "10.0.0.1", "port": 80, "checks": [{"tcp": "[fe80::1]:22"}]}),
            "checks[0].tcp",
        ),
        (
            json!({"address": "10.0.0.1", "port": 80, "checks": [{"tcp": "a:1", "sideways": true}]}),
            "checks[0].sideways",
        ),
        (json!([1, 2]), "body"),
    ];
    for (body, field) in cases {
        let (st, v) = s.register("web", body.clone()).await;
        assert_invalid(st, &v, field);
    }
    let (st, v) = s
        .register("Bad_Name", json!({"address": "10.0.0.1", "port": 80}))
        .await;
    assert_invalid(st, &v, "service");
    let (st, v) = s
        .register(
            "web",
            json!({"address": "10.0.0.1", "port": 80, "checks": [{"exec": ["/bin/true"]}]}),
        )
        .await;
    assert_eq!(
        st,
        StatusCode::FORBIDDEN,
        "exec checks are off unless the server enables them: {v}"
    );
    for raw in [
        "{",
        "",
        "null",
        "{\"address\": \"10.0.0.1\", \"port\": 80,}",
        "\u{0}",
    ] {
        let resp = s
            .http
            .post(format!("{}/api/v1/services/web/instances", s.base))
            .header("content-type", "application/json")
            .body(raw.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{raw:?}");
    }
    let big = json!({"address": "10.0.0.1", "port": 80, "data": "x".repeat(8192)});
    let (st, v) = s.register("web", big).await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    let (st, v) = s.json(Method::GET, "/api/v1/services", None).await;
    assert_eq!(
        (st, v),
        (StatusCode::OK, json!([])),
        "nothing was half-written"
    );
    let (st, _) = s.json(Method::GET, "/no/such/route", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = s.json(Method::PATCH, "/api/v1/services", None).await;
    assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn operations_routes() {
    let s = server().await;
    let (st, v) = s.json(Method::GET, "/health", None).await;
    assert_eq!((st, v["status"].clone()), (StatusCode::OK, json!("ok")));
    let (st, _) = s.json(Method::GET, "/ready", None).await;
    assert_eq!(st, StatusCode::OK);
    s.register("web", json!({"address": "10.0.0.1", "port": 80}))
        .await;
    let resp = s.call(Method::GET, "/api/v1/services", None).await;
    assert_eq!(resp.headers()["x-muster-revision"], "1");
    let metrics = s
        .call(Method::GET, "/metrics", None)
        .await
        .text()
        .await
        .unwrap();
    for want in [
        "muster_instances{service=\"web\",status=\"passing\"} 1",
        "muster_http_requests_total{method=\"POST\",route=\"/api/v1/services/{service}/instances\",status=\"201\"} 1",
        "muster_http_request_duration_seconds_bucket",
        "muster_store_revision 1",
    ] {
        assert!(metrics.contains(want), "/metrics lacks {want}:\n{metrics}");
    }
    let (st, doc) = s.json(Method::GET, "/api/openapi.json", None).await;
    assert_eq!(st, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/api/v1/services", &["get"][..]),
        ("/api/v1/services/{name}", &["get", "put", "delete"][..]),
        ("/api/v1/services/{service}/instances", &["get", "post"][..]),
        (
            "/api/v1/services/{service}/instances/{id}",
            &["get", "put", "delete"][..],
        ),
        (
            "/api/v1/services/{service}/instances/{id}/heartbeat",
            &["put"][..],
        ),
        (
            "/api/v1/services/{service}/instances/{id}/maintenance",
            &["put"][..],
        ),
        ("/health", &["get"][..]),
        ("/ready", &["get"][..]),
        ("/metrics", &["get"][..]),
    ] {
        for m in methods {
            assert!(
                paths.get(path).and_then(|p| p.get(*m)).is_some(),
                "openapi lacks {m} {path}"
            );
        }
    }
    assert!(doc["components"]["schemas"]["RegisterBody"].is_object());
    assert!(doc["components"]["schemas"]["Instance"].is_object());
}
