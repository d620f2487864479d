//! Probe history survives a graceful restart of the real binary.

mod common;

use common::Server;
use serde_json::{Value, json};
use std::time::Duration;

async fn probes(http: &reqwest::Client, addr: &str) -> Vec<Value> {
    let v: Value = http
        .get(format!("{addr}/api/v1/checks/web:w1:tcp/probes?limit=1000"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v.as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_history_survives_a_graceful_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let _ = target.accept().await;
        }
    });
    let http = reqwest::Client::new();
    let mut server = Server::start_with(&["--data-dir", data]);
    let body = json!({"id": "w1", "address": "127.0.0.1", "port": 80,
                      "checks": [{"tcp": target_addr, "interval": "100ms", "timeout": "100ms"}]});
    let mut registered = false;
    for _ in 0..100 {
        if let Ok(r) = http
            .post(format!("{}/api/v1/services/web/instances", server.addr))
            .json(&body)
            .send()
            .await
            && r.status().is_success()
        {
            registered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(registered, "{}", server.log());
    let mut before = Vec::new();
    for _ in 0..100 {
        before = probes(&http, &server.addr).await;
        if before.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(before.len() >= 3, "no probes recorded:\n{}", server.log());
    // The CLI shows the same checks and probes.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(common::BIN)
            .args(args)
            .env("MUSTER_ADDR", &server.addr)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "muster {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let table = cli(&["checks", "--service", "web"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("web:w1:tcp") && l.contains("passing")),
        "{table}"
    );
    let probes_table = cli(&["probes", "web:w1:tcp", "--limit", "2"]);
    assert_eq!(
        probes_table.lines().count(),
        3,
        "a header and two probes: {probes_table}"
    );
    let json: Value =
        serde_json::from_str(&cli(&["probes", "web:w1:tcp", "--limit", "2", "--json"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);
    // SIGTERM: a graceful stop saves the history.
    let pid = server.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = server.child.wait().unwrap();
    assert!(
        status.success(),
        "exit 0 after SIGTERM, got {status}:\n{}",
        server.log()
    );
    drop(server);
    let server = Server::start_with(&["--data-dir", data]);
    let after = probes(&http, &server.addr).await;
    let oldest_before = before.last().unwrap()["id"].clone();
    assert!(
        after.iter().any(|p| p["id"] == oldest_before),
        "the probes from before the restart are still there:\n{}",
        server.log()
    );
}
