//! gRPC probes against a real tonic server running tonic-health's service.

use crate::support::{TIMEOUT, open_prober};
use muster_core::{CheckKind, Status};
use std::net::SocketAddr;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Starts a health server on 127.0.0.1:0; the reporter flips its answers.
pub async fn start() -> (SocketAddr, HealthReporter) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (reporter, service) = tonic_health::server::health_reporter();
    tokio::spawn(
        Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    (addr, reporter)
}

pub fn grpc(addr: &str, service: Option<&str>) -> CheckKind {
    CheckKind::Grpc {
        target: addr.into(),
        grpc_service: service.map(str::to_string),
    }
}

#[tokio::test]
async fn serving_status_decides() {
    let (addr, reporter) = start().await;
    let prober = open_prober();
    let whole = grpc(&addr.to_string(), None);
    let named = grpc(&addr.to_string(), Some("muster.Test"));

    let out = prober.probe(&whole, TIMEOUT).await;
    assert_eq!(
        (out.status, out.status_code),
        (Status::Passing, Some(1)),
        "{out:?}"
    );
    assert!(out.is_up && out.is_responsive);
    assert_eq!(out.output, format!("gRPC health of {addr}: SERVING"));

    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    let out = prober.probe(&whole, TIMEOUT).await;
    assert_eq!(
        (out.status, out.status_code),
        (Status::Critical, Some(2)),
        "{out:?}"
    );
    assert!(out.is_up && out.output.ends_with("NOT_SERVING"), "{out:?}");

    reporter
        .set_service_status("muster.Test", ServingStatus::Serving)
        .await;
    let out = prober.probe(&named, TIMEOUT).await;
    assert_eq!(out.status, Status::Passing, "{out:?}");
    assert!(out.output.contains("service \"muster.Test\""), "{out:?}");

    reporter
        .set_service_status("muster.Test", ServingStatus::Unknown)
        .await;
    let out = prober.probe(&named, TIMEOUT).await;
    assert_eq!(
        (out.status, out.status_code),
        (Status::Critical, Some(0)),
        "{out:?}"
    );
}

#[tokio::test]
async fn an_unknown_service_is_critical() {
    let (addr, _reporter) = start().await;
    let out = open_prober()
        .probe(&grpc(&addr.to_string(), Some("nope")), TIMEOUT)
        .await;
    assert_eq!(
        (out.status, out.status_code),
        (Status::Critical, None),
        "{out:?}"
    );
    // The server answered, with an error status.
    assert!(out.is_up, "{out:?}");
    assert!(out.output.contains("NotFound"), "{out:?}");
}

#[tokio::test]
async fn no_server_is_critical_and_down() {
    let target = format!("127.0.0.1:{}", crate::support::free_port());
    let out = open_prober().probe(&grpc(&target, None), TIMEOUT).await;
    assert_eq!(out.status, Status::Critical);
    assert!(!out.is_up, "{out:?}");
    assert!(out.output.contains("onnection refused"), "{out:?}");
}

#[tokio::test]
async fn a_server_that_is_not_grpc_is_critical() {
    // Accepts and closes at once: TCP is up, HTTP/2 never is.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            drop(socket);
        }
    });
    let out = open_prober()
        .probe(&grpc(&addr.to_string(), None), TIMEOUT)
        .await;
    assert_eq!(out.status, Status::Critical, "{out:?}");
    assert!(!out.is_up, "{out:?}");
    assert!(out.output.contains("no gRPC answer"), "{out:?}");
}
