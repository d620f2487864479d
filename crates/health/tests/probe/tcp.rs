//! TCP probes against a real listener, open and then closed.

use crate::support::{TIMEOUT, open_prober, tcp};
use muster_core::Status;

#[tokio::test]
async fn an_open_port_passes_and_a_closed_one_is_refused() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let prober = open_prober();

    let out = prober.probe(&tcp(&addr.to_string()), TIMEOUT).await;
    assert_eq!(
        (out.status, out.status_code),
        (Status::Passing, None),
        "{out:?}"
    );
    assert!(out.is_up && out.is_responsive);
    assert_eq!(
        out.output,
        format!("TCP connect to {addr}: connected to {addr}")
    );

    // A host name goes through resolution and reaches the same listener.
    let by_name = format!("localhost:{}", addr.port());
    let out = prober.probe(&tcp(&by_name), TIMEOUT).await;
    assert_eq!(out.status, Status::Passing, "{out:?}");

    drop(listener);
    let out = prober.probe(&tcp(&addr.to_string()), TIMEOUT).await;
    assert_eq!(out.status, Status::Critical);
    assert!(!out.is_up && !out.is_responsive, "{out:?}");
    assert!(out.output.contains("onnection refused"), "{out:?}");
}

#[tokio::test]
async fn malformed_targets_are_critical() {
    // No case here needs a DNS server: tests stay on loopback and /etc/hosts.
    let prober = open_prober();
    for (target, expect) in [
        ("no-port", "must be host:port"),
        ("127.0.0.1:0", "must be 1-65535"),
    ] {
        let out = prober.probe(&tcp(target), TIMEOUT).await;
        assert_eq!(out.status, Status::Critical);
        assert!(out.output.contains(expect), "{target}: {out:?}");
    }
}
