//! The change feed and the event log with real WebSocket and SSE clients
//! against a real server.

use futures_util::{SinkExt, StreamExt};
use muster_server::Config;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

mod common;

use common::Server;

async fn server_with(config: Config) -> Server {
    common::start_ready(config).await
}

impl Server {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("http://{}{path}", self.addr));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let st = resp.status();
        (
            st,
            serde_json::from_str(&resp.text().await.unwrap()).unwrap_or(Value::Null),
        )
    }

    async fn register(&self, service: &str, id: &str) -> u64 {
        let (st, _) = self
            .call(
                Method::PUT,
                &format!("/api/v1/services/{service}/instances/{id}"),
                Some(json!({"address": "10.0.0.1", "port": 80})),
            )
            .await;
        assert!(st.is_success());
        self.revision().await
    }

    async fn revision(&self) -> u64 {
        let resp = self
            .http
            .get(format!("http://{}/health", self.addr))
            .send()
            .await
            .unwrap();
        resp.headers()["x-muster-revision"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    async fn ws(&self, query: &str) -> Ws {
        let (ws, _) =
            tokio_tungstenite::connect_async(format!("ws://{}/api/v1/watch{query}", self.addr))
                .await
                .unwrap();
        Ws(ws)
    }
}

struct Ws(
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
);

impl Ws {
    async fn next(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), self.0.next())
                .await
                .expect("a feed message")
                .unwrap()
                .unwrap();
            if let Message::Text(t) = m {
                return serde_json::from_str(&t).unwrap();
            }
        }
    }

    /// Nothing arrives for a while.
    async fn quiet(&mut self) {
        let r = tokio::time::timeout(Duration::from_millis(300), self.0.next()).await;
        assert!(r.is_err(), "unexpected message: {r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_opens_with_snapshots_then_ordered_deltas() {
    let s = server_with(Config::for_tests()).await;
    s.register("web", "w1").await;
    s.register("api", "a1").await;
    let mut ws = s.ws("?services=web,api").await;
    let mut snaps = [ws.next().await, ws.next().await];
    snaps.sort_by_key(|v| v["service"].as_str().unwrap().to_string());
    assert_eq!(snaps[0]["kind"], "snapshot");
    assert_eq!(
        (
            snaps[0]["service"].clone(),
            snaps[0]["instances"][0]["id"].clone()
        ),
        (json!("api"), json!("a1"))
    );
    assert_eq!(
        (
            snaps[1]["service"].clone(),
            snaps[1]["instances"][0]["id"].clone()
        ),
        (json!("web"), json!("w1"))
    );
    let snap_rev = snaps[0]["revision"].as_u64().unwrap();
    s.register("web", "w2").await;
    s.register("other", "o1").await; // not watched
    let (st, _) = s
        .call(
            Method::DELETE,
            "/api/v1/services/web/instances/w1",
            Some(json!({"reason": "shutdown", "error": "exit 3"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let reg = ws.next().await;
    assert_eq!(
        (
            reg["kind"].clone(),
            reg["service"].clone(),
            reg["instance"]["id"].clone()
        ),
        (json!("registered"), json!("web"), json!("w2"))
    );
    assert_eq!(reg["revision"].as_u64().unwrap(), snap_rev + 1);
    let dereg = ws.next().await;
    assert_eq!(
        (
            dereg["kind"].clone(),
            dereg["reason"].clone(),
            dereg["error"].clone()
        ),
        (json!("deregistered"), json!("shutdown"), json!("exit 3"))
    );
    assert_eq!(
        dereg["revision"].as_u64().unwrap(),
        snap_rev + 3,
        "the unwatched change in between is skipped, not renumbered"
    );
    assert!(dereg["at"].as_str().unwrap().ends_with('Z'));
    ws.quiet().await;
    // full=true attaches the current instance list.
    let mut full = s.ws("?services=web&full=true").await;
    full.next().await; // snapshot
    s.register("web", "w3").await;
    let d = full.next().await;
    let ids: Vec<&str> = d["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["w2", "w3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_from_a_revision_has_no_gap_and_no_repeat() {
    let s = server_with(Config::for_tests()).await;
    let mut revs = Vec::new();
    for i in 0..10 {
        revs.push(s.register("web", &format!("w{i}")).await);
    }
    let from = revs[4];
    let mut ws = s.ws(&format!("?from={from}")).await;
    for want in &revs[5..] {
        let e = ws.next().await;
        assert_eq!(
            e["revision"].as_u64().unwrap(),
            *want,
            "replay continues right after {from}"
        );
    }
    // Live continues at the seam.
    let next = s.register("web", "live").await;
    let e = ws.next().await;
    assert_eq!(
        (e["revision"].as_u64().unwrap(), e["instance"]["id"].clone()),
        (next, json!("live"))
    );
    ws.quiet().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_no_longer_retained_is_410() {
    let mut config = Config::for_tests();
    config.retain = 5;
    let s = server_with(config).await;
    for i in 0..20 {
        s.register("web", &format!("w{i}")).await;
    }
    let resp = s
        .http
        .get(format!("http://{}/api/v1/watch?from=1", s.addr))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::GONE);
    let err = tokio_tungstenite::connect_async(format!("ws://{}/api/v1/watch?from=1", s.addr))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("410"), "{err}");
    let (st, _) = s.call(Method::GET, "/api/v1/events?since=1", None).await;
    assert_eq!(st, StatusCode::GONE);
    let (st, v) = s.call(Method::GET, "/api/v1/watch", None).await;
    assert_eq!(
        (st, v["status"].clone()),
        (StatusCode::BAD_REQUEST, json!(400)),
        "neither WebSocket nor SSE"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_carry_revisions_as_ids() {
    let s = server_with(Config::for_tests()).await;
    let r1 = s.register("web", "w1").await;
    let resp = s
        .http
        .get(format!(
            "http://{}/api/v1/watch?services=web&from=0",
            s.addr
        ))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let r2 = s.register("web", "w2").await;
    let mut resp = resp;
    let mut text = String::new();
    while text.matches("data:").count() < 2 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let ids: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id:"))
        .map(|v| v.trim().parse().unwrap())
        .collect();
    assert_eq!(ids, [r1, r2]);
    let first: Value = serde_json::from_str(
        text.lines()
            .find_map(|l| l.strip_prefix("data:"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    assert_eq!(first["kind"], "registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_events_reach_their_services_and_the_log() {
    let s = server_with(Config::for_tests()).await;
    let mut web = s.ws("?services=web").await;
    let mut api = s.ws("?services=api").await;
    web.next().await; // snapshots
    api.next().await;
    let (st, v) = s
        .call(
            Method::POST,
            "/api/v1/events",
            Some(json!({"type": "deploy", "body": {"version": "2.1"}, "services": ["web"]})),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{v}");
    let rev = v["revision"].as_u64().unwrap();
    let e = web.next().await;
    assert_eq!(
        (
            e["kind"].clone(),
            e["type"].clone(),
            e["body"]["version"].clone(),
            e["revision"].clone()
        ),
        (json!("custom"), json!("deploy"), json!("2.1"), json!(rev))
    );
    api.quiet().await;
    let (st, _) = s
        .call(
            Method::POST,
            "/api/v1/events",
            Some(json!({"type": "maintenance-window", "broadcast": true})),
        )
        .await;
    assert_eq!(st, StatusCode::ACCEPTED);
    assert_eq!(web.next().await["service"], "*");
    assert_eq!(api.next().await["type"], "maintenance-window");
    for (body, field) in [
        (json!({"body": 1, "services": ["web"]}), "type"),
        (json!({"type": "x"}), "services"),
        (json!({"type": "x", "services": ["Bad"]}), "services[0]"),
        (
            json!({"type": "x", "services": ["web"], "broadcast": true}),
            "broadcast",
        ),
        (
            json!({"type": "x", "broadcast": true, "body": "y".repeat(70_000)}),
            "body",
        ),
        (json!({"type": "x", "broadcast": true, "extra": 1}), "extra"),
    ] {
        let (st, v) = s
            .call(Method::POST, "/api/v1/events", Some(body.clone()))
            .await;
        assert_eq!(
            (st, v["field"].clone()),
            (StatusCode::BAD_REQUEST, json!(field)),
            "{body}"
        );
    }
    s.register("web", "w1").await;
    let (st, log) = s
        .call(Method::GET, "/api/v1/events?service=web", None)
        .await;
    assert_eq!(st, StatusCode::OK);
    let kinds: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["custom", "custom", "registered"],
        "targeted, broadcast, then the registration"
    );
    let (_, limited) = s
        .call(
            Method::GET,
            &format!("/api/v1/events?since={rev}&limit=1"),
            None,
        )
        .await;
    assert_eq!(limited.as_array().unwrap().len(), 1);
    assert_eq!(limited[0]["type"], "maintenance-window");
    let (st, v) = s.call(Method::GET, "/api/v1/events?limit=0", None).await;
    assert_eq!(
        (st, v["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("limit"))
    );
    // WebSocket pings are answered by the client library; the feed stays open.
    web.0.send(Message::Ping(Vec::new().into())).await.unwrap();
}
