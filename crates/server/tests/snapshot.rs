//! Snapshots over real HTTP: save a registry while a writer keeps writing,
//! restore it onto a fresh server, and the refusals (a registry that is not
//! empty, malformed documents).

mod common;

use common::{Server, start_ready};
use muster_server::Config;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

async fn server() -> Server {
    start_ready(Config::for_tests()).await
}

impl Server {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, value)
    }

    async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method.clone(), path, body).await;
        assert!(status.is_success(), "{method} {path}: {status} {v}");
        v
    }

    async fn register(&self, service: &str, body: Value) {
        self.ok(
            Method::POST,
            &format!("/api/v1/services/{service}/instances"),
            Some(body),
        )
        .await;
    }
}

/// Services, instances (persistent, ttl, with a ttl check) and an election.
async fn populate(s: &Server) {
    s.ok(
        Method::PUT,
        "/api/v1/services/web",
        Some(json!({"tags": ["frontend"], "meta": {"team": "a"}})),
    )
    .await;
    for i in 0..20 {
        s.register(
            "web",
            json!({"address": format!("10.0.0.{i}"), "port": 80, "tags": ["v1"]}),
        )
        .await;
    }
    s.register(
        "api",
        json!({"id": "api-ttl", "address": "10.1.0.1", "port": 8080, "ttl": "1h"}),
    )
    .await;
    s.register(
        "api",
        json!({"id": "api-checked", "address": "10.1.0.2", "port": 8080,
               "checks": [{"name": "hb", "ttl": "1h"}]}),
    )
    .await;
    s.ok(
        Method::POST,
        "/api/v1/elections/leader-x/campaign",
        Some(json!({"candidate": "node-1", "ttl": "1m"})),
    )
    .await;
}

fn keys_of(doc: &Value) -> Vec<String> {
    doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_snapshot_taken_under_writes_restores_onto_a_fresh_server() {
    let a = Arc::new(server().await);
    populate(&a).await;

    // A writer registers load-0, load-1, ... one after the other while the
    // snapshot is taken; `acked` counts the registrations answered.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn({
        let (a, stop, acked) = (a.clone(), stop.clone(), acked.clone());
        async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                a.register(
                    "load",
                    json!({"id": format!("load-{n}"), "address": "10.2.0.1", "port": 1000 + n}),
                )
                .await;
                n += 1;
                acked.store(n, Ordering::SeqCst);
            }
        }
    });
    while acked.load(Ordering::SeqCst) < 5 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let before = acked.load(Ordering::SeqCst);
    let doc = a.ok(Method::GET, "/api/v1/snapshot", None).await;
    let after = acked.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();

    assert_eq!(doc["format"], "muster-snapshot");
    assert_eq!(doc["version"], 1);
    assert!(doc["revision"].as_u64().unwrap() > 0);
    assert!(doc["taken_at"].as_str().unwrap().contains('T'));
    let keys = keys_of(&doc);
    assert_eq!(
        keys.iter().collect::<BTreeSet<_>>().len(),
        keys.len(),
        "keys are unique"
    );

    // Consistency: a sequential writer's keys at one revision are a prefix
    // load-0..load-k, holding every registration answered before the
    // snapshot was asked for and at most the one in flight after.
    let load: BTreeSet<usize> = keys
        .iter()
        .filter_map(|k| k.strip_prefix("inst/load/load-"))
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(load, (0..load.len()).collect(), "not a prefix: {load:?}");
    assert!(
        load.len() >= before && load.len() <= after + 1,
        "{before} <= {} <= {after} + 1",
        load.len()
    );

    // Leased keys: the ttl instance keeps its TTL; the election leader is
    // left out, its term counter kept.
    let ttl = doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key"] == "inst/api/api-ttl")
        .unwrap();
    assert_eq!(ttl["lease_ttl_ms"], 3_600_000);
    assert!(!keys.contains(&"elect/leader-x".to_string()));
    assert!(keys.contains(&"elect-term/leader-x".to_string()));
    assert!(keys.contains(&"svc/web".to_string()));
    for k in doc["keys"].as_array().unwrap() {
        assert!(k["value"].is_string(), "{k}");
    }

    // Restore onto a fresh server.
    let b = server().await;
    let restored = b
        .ok(Method::PUT, "/api/v1/snapshot", Some(doc.clone()))
        .await;
    assert_eq!(restored["restored"], keys.len());
    assert!(restored["revision"].as_u64().unwrap() > 0);

    for service in ["web", "api"] {
        let path = format!("/api/v1/services/{service}/instances");
        assert_eq!(
            a.ok(Method::GET, &path, None).await,
            b.ok(Method::GET, &path, None).await,
            "{service}"
        );
    }
    // The same definition and instances; the revision is each store's own.
    let detail = |mut v: Value| {
        v.as_object_mut().unwrap().remove("revision");
        v
    };
    assert_eq!(
        detail(a.ok(Method::GET, "/api/v1/services/web", None).await),
        detail(b.ok(Method::GET, "/api/v1/services/web", None).await)
    );
    let b_load = b
        .ok(Method::GET, "/api/v1/services/load/instances", None)
        .await;
    assert_eq!(b_load.as_array().unwrap().len(), load.len());
    let names = |v: Value| -> Vec<Value> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].clone())
            .collect()
    };
    assert_eq!(
        names(b.ok(Method::GET, "/api/v1/services", None).await),
        names(a.ok(Method::GET, "/api/v1/services", None).await)
    );

    // Nobody leads after a restore, and the next term follows the saved one.
    let e = b.ok(Method::GET, "/api/v1/elections/leader-x", None).await;
    assert!(e["holder"].is_null(), "{e}");
    let c = b
        .ok(
            Method::POST,
            "/api/v1/elections/leader-x/campaign",
            Some(json!({"candidate": "node-2", "ttl": "1m"})),
        )
        .await;
    assert_eq!(c["term"], 2, "{c}");

    // Neither server is fresh any more.
    for s in [&*a, &b] {
        let (status, v) = s
            .call(Method::PUT, "/api/v1/snapshot", Some(doc.clone()))
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{v}");
        assert_eq!(v["code"], "conflict", "{v}");
    }
}

#[tokio::test]
async fn malformed_snapshots_are_refused_naming_the_field() {
    let s = server().await;
    let good = json!({"format": "muster-snapshot", "version": 1, "revision": 3,
        "taken_at": "2026-01-01T00:00:00Z", "keys": []});
    let with = |f: &dyn Fn(&mut Value)| {
        let mut d = good.clone();
        f(&mut d);
        d
    };
    let cases = [
        (with(&|d| d["format"] = json!("tarball")), "format"),
        (with(&|d| d["version"] = json!(2)), "version"),
        (
            with(&|d| {
                d.as_object_mut().unwrap().remove("keys");
            }),
            "keys",
        ),
        (
            with(&|d| d["keys"] = json!([{"key": "svc/web", "value": "garbage"}])),
            "keys[0].value",
        ),
        (
            with(&|d| d["keys"] = json!([{"key": "svc/web", "value": {"v": 1}}])),
            "keys[0].value",
        ),
        (
            with(&|d| {
                d["keys"] = json!([
                    {"key": "elect-term/x", "value": "{\"v\":1,\"r\":{\"term\":1}}"},
                    {"key": "elect-term/x", "value": "{\"v\":1,\"r\":{\"term\":1}}"},
                ])
            }),
            "keys[1].key",
        ),
    ];
    for (doc, field) in cases {
        let (status, v) = s.call(Method::PUT, "/api/v1/snapshot", Some(doc)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {v}");
        assert!(v.to_string().contains(field), "{field}: {v}");
    }
    let resp = s
        .http
        .put(format!("{}/api/v1/snapshot", s.base))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // Nothing was written: the good (empty) document still restores.
    assert_eq!(s.ok(Method::GET, "/api/v1/services", None).await, json!([]));
    let r = s.ok(Method::PUT, "/api/v1/snapshot", Some(good)).await;
    assert_eq!(r["restored"], 0);
}

#[tokio::test]
async fn the_snapshot_route_takes_bodies_over_the_default_limit() {
    let s = server().await;
    // A ~2 MiB document: over the default 1 MiB body limit, under the route's.
    let value = serde_json::to_string(&json!({"v": 1, "r": {"term": 1}})).unwrap();
    let keys: Vec<Value> = (0..40_000)
        .map(|i| json!({"key": format!("elect-term/e{i:06}"), "value": value}))
        .collect();
    let doc = json!({"format": "muster-snapshot", "version": 1, "revision": 1,
        "taken_at": "2026-01-01T00:00:00Z", "keys": keys});
    assert!(doc.to_string().len() > 2 * 1024 * 1024);
    let r = s.ok(Method::PUT, "/api/v1/snapshot", Some(doc)).await;
    assert_eq!(r["restored"], 40_000);
    // ... and saves it again (more than one restore batch, read back whole).
    let saved = s.ok(Method::GET, "/api/v1/snapshot", None).await;
    assert_eq!(saved["keys"].as_array().unwrap().len(), 40_000);
}
