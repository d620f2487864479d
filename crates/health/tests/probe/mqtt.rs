//! MQTT probes against real Mosquitto brokers (Debian package `mosquitto`).
//! A missing broker binary fails these tests: the project's test script
//! installs it, and a silently skipped probe kind would hide breakage.

use crate::support::{TIMEOUT, free_port, open_prober};
use muster_core::{CheckKind, Status};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running Mosquitto on 127.0.0.1, killed when dropped.
pub struct Broker {
    pub port: u16,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// A broker that accepts anonymous clients.
    pub async fn anonymous() -> Broker {
        Broker::start("allow_anonymous true\n", false).await
    }

    /// A broker that wants a user name and password (which probes do not send).
    pub async fn with_passwords() -> Broker {
        Broker::start("allow_anonymous false\n", true).await
    }

    async fn start(extra: &str, password_file: bool) -> Broker {
        let bin = find_binary("mosquitto");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut config =
            format!("listener {port} 127.0.0.1\n{extra}log_dest stderr\npersistence false\n");
        if running_as_root() {
            // Started as root, Mosquitto switches to the `mosquitto` user,
            // which cannot read this test's private directory.
            config.push_str("user root\n");
        }
        if password_file {
            let pw = dir.path().join("passwords");
            let status = std::process::Command::new(find_binary("mosquitto_passwd"))
                .args(["-b", "-c"])
                .arg(&pw)
                .args(["alice", "secret"])
                .status()
                .unwrap();
            assert!(status.success(), "mosquitto_passwd failed");
            config.push_str(&format!("password_file {}\n", pw.display()));
        }
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(&conf, config).unwrap();
        let mut child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // Mosquitto logs "... running" once every listener is open: wait for
        // that line instead of polling the port.
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut log = String::new();
        let ready = tokio::time::timeout(Duration::from_secs(10), async {
            while let Ok(Some(line)) = lines.next_line().await {
                log.push_str(&line);
                log.push('\n');
                if line.contains(" running") {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(
            matches!(ready, Ok(true)),
            "mosquitto did not start on port {port}; its log:\n{log}"
        );
        // Keep draining its log so the broker never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Broker {
            port,
            _child: child,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

/// The broker's binaries live in /usr/sbin and /usr/bin, not always on PATH.
fn find_binary(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed; the MQTT probe tests need a real broker: \
                 apt-get install -y mosquitto (the project's test script does this)"
            )
        })
}

fn running_as_root() -> bool {
    let out = std::process::Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

pub fn mqtt(target: &str) -> CheckKind {
    CheckKind::Mqtt {
        target: target.into(),
    }
}

#[tokio::test]
async fn an_accepting_broker_passes() {
    let broker = Broker::anonymous().await;
    let prober = open_prober();
    let out = prober.probe(&mqtt(&broker.url()), TIMEOUT).await;
    assert_eq!(
        (out.status, out.status_code),
        (Status::Passing, Some(0)),
        "{out:?}"
    );
    assert!(out.is_up && out.is_responsive);
    assert_eq!(
        out.output,
        format!("MQTT CONNECT to {}: accepted", broker.url())
    );
    // The other spellings of the target reach it too.
    for target in [
        format!("tcp://127.0.0.1:{}", broker.port),
        format!("mqtt://localhost:{}", broker.port),
    ] {
        let out = prober.probe(&mqtt(&target), TIMEOUT).await;
        assert_eq!(out.status, Status::Passing, "{target}: {out:?}");
    }
}

#[tokio::test]
async fn a_refusing_broker_is_critical_with_its_code() {
    let broker = Broker::with_passwords().await;
    let out = open_prober().probe(&mqtt(&broker.url()), TIMEOUT).await;
    assert_eq!(
        (out.status, out.status_code),
        (Status::Critical, Some(5)),
        "{out:?}"
    );
    assert!(out.is_up && out.is_responsive, "the broker answered");
    assert!(
        out.output.ends_with("refused with code 5 (not authorized)"),
        "{out:?}"
    );
}

#[tokio::test]
async fn no_broker_and_mqtts_are_critical() {
    let prober = open_prober();
    let out = prober
        .probe(&mqtt(&format!("mqtt://127.0.0.1:{}", free_port())), TIMEOUT)
        .await;
    assert_eq!(out.status, Status::Critical);
    assert!(
        !out.is_up && out.output.contains("onnection refused"),
        "{out:?}"
    );
    let out = prober.probe(&mqtt("mqtts://127.0.0.1:8883"), TIMEOUT).await;
    assert_eq!(out.status, Status::Critical);
    assert!(out.output.contains("not supported yet"), "{out:?}");
}

#[tokio::test]
async fn a_silent_listener_times_out() {
    // Accepts the connection but never answers the CONNECT.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _held = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        std::future::pending::<()>().await;
        drop(socket);
    });
    let out = open_prober()
        .probe(&mqtt(&format!("mqtt://{addr}")), Duration::from_millis(300))
        .await;
    assert_eq!(out.status, Status::Critical);
    assert!(!out.is_up && !out.is_responsive, "{out:?}");
    assert!(out.output.ends_with("timed out after 300 ms"), "{out:?}");
}
