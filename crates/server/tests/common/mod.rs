//! Shared by the server's integration tests: a real server on port 0, in
//! this process, stopped when dropped.
#![allow(dead_code)]

use muster_server::{Config, start};
use reqwest::{Client, StatusCode};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub struct Server {
    /// `host:port`.
    pub addr: String,
    /// `http://host:port`.
    pub base: String,
    pub http: Client,
    stop: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Server {
    /// The text of `/metrics` (answered 200, or the test fails).
    pub async fn metrics(&self) -> String {
        let r = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.text().await.unwrap()
    }
}

/// Starts a server and returns once `/ready` answers 200.
pub async fn start_ready(config: Config) -> Server {
    let stop = CancellationToken::new();
    let running = start(config, stop.clone()).await.unwrap();
    let addr = running.http_addr.to_string();
    let s = Server {
        base: format!("http://{addr}"),
        addr,
        http: Client::new(),
        stop,
    };
    for _ in 0..500 {
        if let Ok(r) = s.http.get(format!("{}/ready", s.base)).send().await
            && r.status() == StatusCode::OK
        {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the server never became ready");
}
