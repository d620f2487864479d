//! Connection limits and header timeouts over real sockets.

mod common;

use muster_server::Config;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn health(addr: &str) -> u16 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf)[9..12].parse().unwrap()
}

/// Reads until the server closes the socket (or `within` passes).
async fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    matches!(
        tokio::time::timeout(within, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await,
        Ok(())
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_do_not_stall_a_normal_request() {
    let s = common::start_ready(Config::for_tests()).await;
    let mut idle = Vec::new();
    for _ in 0..1500 {
        idle.push(TcpStream::connect(&s.addr).await.unwrap());
    }
    let status = tokio::time::timeout(Duration::from_secs(5), health(&s.addr))
        .await
        .expect("answered despite 1,500 idle sockets");
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_and_idle_connections_are_closed_and_the_limit_holds() {
    let mut config = Config::for_tests();
    config.max_connections = 2;
    config.header_timeout = Duration::from_millis(300);
    let s = common::start_ready(config).await;
    // Two connections take both permits: one idle, one with half a request.
    let mut idle = TcpStream::connect(&s.addr).await.unwrap();
    let mut half = TcpStream::connect(&s.addr).await.unwrap();
    half.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // A third client waits for a permit, which the header timeout frees.
    let status = tokio::time::timeout(Duration::from_secs(5), health(&s.addr))
        .await
        .expect("served once a permit frees");
    assert_eq!(status, 200);
    assert!(
        closed_by_server(&mut idle, Duration::from_secs(2)).await,
        "the idle socket was closed"
    );
    assert!(
        closed_by_server(&mut half, Duration::from_secs(2)).await,
        "the half-sent request was closed"
    );
    let metrics = s.metrics().await;
    let reached: f64 = metrics
        .lines()
        .find(|l| l.starts_with("muster_http_connection_limit_reached_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(reached >= 1.0, "the limit shows in /metrics:\n{metrics}");
}

#[tokio::test]
async fn a_client_over_its_rate_gets_429_with_retry_after() {
    let mut c = Config::for_tests();
    c.client_limits.rate = 5;
    c.client_limits.burst = 5;
    c.client_limits.limit_loopback = true;
    let s = common::start_ready(c).await;
    let url = format!("{}/api/v1/services", s.base);
    for i in 0..5 {
        let r = s.http.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i} is within the burst");
    }
    let r = s.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&wait), "Retry-After: {wait}");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited");
    // Liveness is never rate limited.
    assert_eq!(
        s.http
            .get(format!("{}/health", s.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // One request's worth refills in 1/rate (the refill itself is the
    // bucket's unit test, with paused time): enough to read the metrics.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let text = s.metrics().await;
    assert!(
        text.contains("muster_refused_requests_total{reason=\"rate_limited\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn loopback_clients_are_exempt_by_default() {
    let mut c = Config::for_tests();
    c.client_limits.rate = 2;
    c.client_limits.burst = 2;
    let s = common::start_ready(c).await;
    for _ in 0..20 {
        let r = s
            .http
            .get(format!("{}/api/v1/services", s.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

fn instance_with_meta(bytes: usize) -> serde_json::Value {
    serde_json::json!({"address": "10.0.0.1", "port": 80, "data": {"blob": "x".repeat(bytes)}})
}

#[tokio::test]
async fn bodies_are_bounded_per_route() {
    let mut small = Config::for_tests();
    small.body_limit = 2048;
    let s = common::start_ready(small).await;
    let post = format!("{}/api/v1/services/web/instances", s.base);
    let r = s
        .http
        .post(&post)
        .json(&instance_with_meta(4096))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let r = s
        .http
        .post(&post)
        .json(&instance_with_meta(100))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // A snapshot larger than the usual limit is still restorable...
    let mut source = Config::for_tests();
    source.body_limit = 1 << 20;
    let src = common::start_ready(source).await;
    for port in 1..40 {
        let url = format!("{}/api/v1/services/web/instances", src.base);
        let body =
            serde_json::json!({"address": "10.0.0.1", "port": port, "tags": ["a-rather-long-tag"]});
        assert_eq!(
            src.http
                .post(&url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status(),
            201
        );
    }
    let snap = src
        .http
        .get(format!("{}/api/v1/snapshot", src.base))
        .send()
        .await
        .unwrap();
    let snap = snap.bytes().await.unwrap();
    assert!(snap.len() > 4096, "{} bytes", snap.len());
    let restore = |srv: &common::Server| {
        srv.http
            .put(format!("{}/api/v1/snapshot", srv.base))
            .header("content-type", "application/json")
            .body(snap.clone())
            .send()
    };
    let mut fresh = Config::for_tests();
    fresh.body_limit = 2048;
    let f = common::start_ready(fresh).await;
    assert_eq!(restore(&f).await.unwrap().status(), 200);
    // ...up to its own limit.
    let mut tight = Config::for_tests();
    tight.snapshot_limit = 2048;
    let t = common::start_ready(tight).await;
    assert_eq!(restore(&t).await.unwrap().status(), 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_body_times_out() {
    let mut c = Config::for_tests();
    c.body_timeout = Duration::from_millis(300);
    let s = common::start_ready(c).await;
    let mut conn = TcpStream::connect(&s.addr).await.unwrap();
    conn.write_all(
        b"POST /api/v1/services/web/instances HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"address\":",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(3), conn.read(&mut buf))
        .await
        .expect("the server answers a stalled body instead of waiting forever")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 4"), "{head}");
}
