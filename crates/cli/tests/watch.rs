//! `muster watch` against the real binary: a snapshot, then events; after
//! the server dies and comes back, it resumes with no gap and no repeat.

mod common;

use common::{BIN, Server};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn register(addr: &str, id: &str) {
    let out = Command::new(BIN)
        .args([
            "register",
            "web",
            "--address",
            "10.0.0.1",
            "--port",
            "80",
            "--id",
            id,
        ])
        .env("MUSTER_ADDR", addr)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn watch_follows_and_resumes_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let http = format!("127.0.0.1:{port}");
    let server = Server::start_with(&["--http-addr", &http, "--data-dir", &data]);
    register(&server.addr, "w1");
    let mut watch = Command::new(BIN)
        .args(["watch", "web", "--json"])
        .env("MUSTER_ADDR", &server.addr)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<Value>();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                return;
            }
        }
    });
    let next = || {
        rx.recv_timeout(Duration::from_secs(20))
            .expect("an event line")
    };
    let snap = next();
    assert_eq!(
        (snap["kind"].clone(), snap["instances"][0]["id"].clone()),
        (json!("snapshot"), json!("w1"))
    );
    register(&server.addr, "w2");
    let e = next();
    assert_eq!(
        (e["kind"].clone(), e["instance"]["id"].clone()),
        (json!("registered"), json!("w2"))
    );
    // The server dies; a change happens while the watcher is cut off.
    drop(server);
    let server = Server::start_with(&["--http-addr", &http, "--data-dir", &data]);
    register(&server.addr, "w3");
    let e = next();
    assert_eq!(
        e["instance"]["id"], "w3",
        "resumed after w2: no repeat, no gap"
    );
    register(&server.addr, "w4");
    assert_eq!(next()["instance"]["id"], "w4");
    // `muster event send` reaches the watcher in order with the rest.
    let out = Command::new(BIN)
        .args([
            "event",
            "send",
            "deploy",
            r#"{"version":"2.1"}"#,
            "--service",
            "web",
        ])
        .env("MUSTER_ADDR", &server.addr)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e = next();
    assert_eq!(
        (
            e["kind"].clone(),
            e["type"].clone(),
            e["body"]["version"].clone()
        ),
        (json!("custom"), json!("deploy"), json!("2.1"))
    );
    let usage = Command::new(BIN)
        .args(["event", "send", "x", "y"])
        .env("MUSTER_ADDR", &server.addr)
        .output()
        .unwrap();
    assert!(
        !usage.status.success(),
        "a service or --broadcast is required"
    );
    let _ = watch.kill();
    let _ = watch.wait();
}
