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
    let metrics = s
        .http
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let reached: f64 = metrics
        .lines()
        .find(|l| l.starts_with("muster_http_connection_limit_reached_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(reached >= 1.0, "the limit shows in /metrics:\n{metrics}");
}
