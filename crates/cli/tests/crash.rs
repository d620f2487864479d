//! Acknowledged writes survive `kill -9`: register 300 instances against the
//! real binary on the embedded store (each engine), SIGKILL it, restart it on
//! the same data dir, and find all 300.

mod common;

use common::Server;
use serde_json::{Value, json};

async fn count(http: &reqwest::Client, addr: &str) -> usize {
    let list: Value = http
        .get(format!("{addr}/api/v1/services/crash/instances"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list.as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_registrations_survive_kill_9() {
    // The default engine (log, for a new data dir).
    survive_kill_9(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_registrations_survive_kill_9_on_redb() {
    // Restarted without the flag: a data dir holding redb's store opens with redb.
    survive_kill_9(&["--store-engine", "redb"]).await;
}

async fn survive_kill_9(engine: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let http = reqwest::Client::new();
    let mut server = Server::start_with(&[&["--data-dir", data], engine].concat());
    // 300 registrations from 16 concurrent clients, so commits are shared.
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let http = http.clone();
            let addr = server.addr.clone();
            tokio::spawn(async move {
                for i in (t..300).step_by(16) {
                    let body = json!({"address": format!("10.0.{}.{}", i / 250, i % 250 + 1), "port": 8080,
                                      "meta": {"n": i.to_string()}});
                    let resp = http
                        .post(format!("{addr}/api/v1/services/crash/instances"))
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(count(&http, &server.addr).await, 300);
    server.child.kill().unwrap(); // SIGKILL: no shutdown, no flush
    server.child.wait().unwrap();
    drop(server);
    // start_with returns once /ready answers: the store reopened.
    let server = Server::start_with(&["--data-dir", data]);
    assert_eq!(
        count(&http, &server.addr).await,
        300,
        "every acknowledged registration is back"
    );
}
