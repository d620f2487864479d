//! Session-bound registration over a real WebSocket.

use futures_util::{SinkExt, StreamExt};
use muster_server::{Config, start};
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn server() -> (String, CancellationToken) {
    let stop = CancellationToken::new();
    let mut config = Config::for_tests();
    // Short pings so a silent peer is noticed in about a second.
    config.ping = Duration::from_millis(300);
    let running = start(config, stop.clone()).await.unwrap();
    let addr = running.http_addr.to_string();
    // Ready once a session can be opened; the loop is bounded.
    for _ in 0..200 {
        if let Ok((mut ws, _)) =
            tokio_tungstenite::connect_async(format!("ws://{addr}/api/v1/watch")).await
        {
            let _ = ws.close(None).await;
            return (addr, stop);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not ready");
}

async fn next(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(120), ws.next())
            .await
            .expect("a message")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// Skips messages until one of `kind` arrives.
async fn until(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let v = next(ws).await;
        if v["kind"] == kind {
            return v;
        }
    }
}

async fn open(addr: &str, hello: Value) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/v1/sessions"))
        .await
        .unwrap();
    ws.send(Message::Text(hello.to_string().into()))
        .await
        .unwrap();
    ws
}

async fn watcher(addr: &str, services: &str) -> Ws {
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/api/v1/watch?services={services}"))
            .await
            .unwrap();
    until(&mut ws, "snapshot").await;
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_lives_while_its_socket_is_open() {
    let (addr, _stop) = server().await;
    let mut chat_watch = watcher(&addr, "chat").await;
    let mut session = open(&addr, json!({"service": "chat", "id": "c1", "address": "10.0.0.9", "port": 7000, "monitor": ["web"]})).await;
    let hello = until(&mut session, "session").await;
    assert_eq!(
        (
            hello["instance"]["id"].clone(),
            hello["instance"]["lifetime"].clone()
        ),
        (json!("c1"), json!("session"))
    );
    let reg = until(&mut chat_watch, "registered").await;
    assert_eq!(reg["instance"]["id"], "c1");
    // Events of monitored services come down the session's socket.
    let client = reqwest::Client::new();
    let r = client
        .put(format!("http://{addr}/api/v1/services/web/instances/w1"))
        .json(&json!({"address": "10.0.0.1", "port": 80}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let own = until(&mut session, "registered").await;
    assert_eq!(
        own["instance"]["id"], "c1",
        "its own registration comes first"
    );
    let ev = until(&mut session, "registered").await;
    assert_eq!(
        (ev["service"].clone(), ev["instance"]["id"].clone()),
        (json!("web"), json!("w1"))
    );
    // Custom events addressed to it, too.
    client
        .post(format!("http://{addr}/api/v1/events"))
        .json(&json!({"type": "hello", "services": ["chat"], "body": {"x": 1}}))
        .send()
        .await
        .unwrap();
    let custom = until(&mut session, "custom").await;
    assert_eq!(custom["type"], "hello");
    // Closing the socket removes the instance as `expired`.
    session.close(None).await.unwrap();
    let gone = until(&mut chat_watch, "expired").await;
    assert_eq!(gone["instance"]["id"], "c1");
    let list: Value = client
        .get(format!("http://{addr}/api/v1/services/chat/instances"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_hello_is_refused_with_the_field() {
    let (addr, _stop) = server().await;
    for (hello, field) in [
        (json!({"address": "10.0.0.1", "port": 1}), "service"),
        (
            json!({"service": "chat", "address": "10.0.0.1", "port": 0}),
            "port",
        ),
        (
            json!({"service": "chat", "address": "10.0.0.1", "port": 1, "ttl": "10s"}),
            "ttl",
        ),
        (
            json!({"service": "chat", "address": "10.0.0.1", "port": 1, "monitor": ["Bad"]}),
            "monitor[0]",
        ),
        (
            json!({"service": "chat", "address": "10.0.0.1", "port": 1, "colour": "red"}),
            "colour",
        ),
    ] {
        let mut s = open(&addr, hello.clone()).await;
        let v = until(&mut s, "error").await;
        assert_eq!(v["field"], field, "{hello}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_loses_its_instance() {
    let (addr, _stop) = server().await;
    let mut watch = watcher(&addr, "quiet").await;
    // A raw WebSocket that never reads again: it answers no ping.
    let (mut session, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/v1/sessions"))
        .await
        .unwrap();
    session
        .send(Message::Text(
            json!({"service": "quiet", "id": "q1", "address": "10.0.0.2", "port": 1})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    until(&mut watch, "registered").await;
    // Pings every 300 ms, silence tolerated for three: about a second later it is gone.
    let gone = until(&mut watch, "expired").await;
    assert_eq!(gone["instance"]["id"], "q1");
    drop(session);
}
