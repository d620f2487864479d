//! The probe target guard, end to end: a deny range covering loopback must
//! refuse every kind of probe, whether the target is written as an address
//! or as a host name that resolves into the range, before any connection.

use crate::grpc::grpc;
use crate::http::Server;
use crate::mqtt::mqtt;
use crate::support::{TIMEOUT, http_get, prober, tcp};
use muster_core::Status;

const LOOPBACK: &[&str] = &["127.0.0.0/8", "::1/128"];

/// A listener that must never see a connection; checked without waiting,
/// since a refused probe returns only after deciding not to connect.
struct Untouched(std::net::TcpListener);

impl Untouched {
    fn new() -> Untouched {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        Untouched(l)
    }

    fn port(&self) -> u16 {
        self.0.local_addr().unwrap().port()
    }

    fn assert_untouched(&self) {
        let err = self
            .0
            .accept()
            .expect_err("the guard let a connection through");
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    }
}

#[track_caller]
fn assert_refused(out: &muster_health::probe::ProbeOutcome, expect: &str) {
    assert_eq!(out.status, Status::Critical, "{out:?}");
    assert!(!out.is_up, "{out:?}");
    assert!(out.output.contains(expect), "want {expect:?} in {out:?}");
}

#[tokio::test]
async fn http_names_and_literals_in_a_denied_range_are_refused() {
    let server = Server::start().await;
    let port = server.addr.port();
    let prober = prober(LOOPBACK, false);

    let out = prober
        .probe(&http_get(&format!("http://localhost:{port}/")), TIMEOUT)
        .await;
    // "localhost" is resolved, and its address found inside the range.
    assert_refused(&out, "probe target localhost resolves to ");
    assert_refused(&out, ", inside the denied range ");

    let out = prober
        .probe(&http_get(&format!("http://127.0.0.1:{port}/")), TIMEOUT)
        .await;
    assert_refused(
        &out,
        "probe target 127.0.0.1 is inside the denied range 127.0.0.0/8",
    );
    assert_eq!(server.connections(), 0, "no connection was made");
}

#[tokio::test]
async fn a_redirect_into_a_denied_range_is_refused() {
    let server = Server::start().await;
    let out = prober(&["169.254.0.0/16"], false)
        .probe(&http_get(&server.url("/metadata")), TIMEOUT)
        .await;
    assert_refused(
        &out,
        "probe target 169.254.169.254 is inside the denied range 169.254.0.0/16",
    );
}

#[tokio::test]
async fn tcp_grpc_and_mqtt_targets_in_a_denied_range_are_refused() {
    let target = Untouched::new();
    let port = target.port();
    let prober = prober(LOOPBACK, false);
    for check in [
        tcp(&format!("127.0.0.1:{port}")),
        tcp(&format!("localhost:{port}")),
        grpc(&format!("localhost:{port}"), None),
        mqtt(&format!("mqtt://localhost:{port}")),
        mqtt(&format!("mqtt://127.0.0.1:{port}")),
    ] {
        let out = prober.probe(&check, TIMEOUT).await;
        assert_refused(&out, "inside the denied range");
    }
    target.assert_untouched();
}

#[tokio::test]
async fn ranges_that_do_not_match_let_probes_through() {
    let server = Server::start().await;
    let out = prober(&["169.254.0.0/16", "fe80::/10"], false)
        .probe(
            &http_get(&format!("http://localhost:{}/", server.addr.port())),
            TIMEOUT,
        )
        .await;
    assert_eq!(out.status, Status::Passing, "{out:?}");
}
