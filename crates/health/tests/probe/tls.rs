//! `tls_skip_verify` against a real HTTPS server with a self-signed
//! certificate, which normal verification must refuse.

use crate::support::{TIMEOUT, open_prober};
use axum::Router;
use axum::routing::get;
use muster_core::{CheckKind, Status};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, pki_types};

/// TLS on top of a TCP listener, for `axum::serve`. Handshakes run one at a
/// time inside `accept`, which is plenty for a test; failed ones (the
/// verifying client hangs up) are skipped.
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// An HTTPS server for `localhost` with a certificate nobody signed.
async fn self_signed_server() -> SocketAddr {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key = pki_types::PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
    // An explicit provider: the workspace may enable more than one, and
    // then rustls will not pick a default by itself.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key.into())
        .unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let listener = TlsListener {
        tcp,
        acceptor: TlsAcceptor::from(Arc::new(config)),
    };
    let app = Router::new().route("/", get(|| async { "secure enough" }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn https(addr: SocketAddr, skip_verify: bool) -> CheckKind {
    CheckKind::Http {
        target: format!("https://localhost:{}/", addr.port()),
        method: "GET".into(),
        headers: BTreeMap::new(),
        tls_skip_verify: skip_verify,
    }
}

#[tokio::test]
async fn tls_skip_verify_accepts_a_self_signed_certificate_and_only_then() {
    let addr = self_signed_server().await;
    let prober = open_prober();

    let out = prober.probe(&https(addr, false), TIMEOUT).await;
    assert_eq!(out.status, Status::Critical);
    assert!(!out.is_up, "{out:?}");
    assert!(out.output.contains("certificate"), "{out:?}");

    let out = prober.probe(&https(addr, true), TIMEOUT).await;
    assert_eq!(
        (out.status, out.status_code),
        (Status::Passing, Some(200)),
        "{out:?}"
    );
    assert!(out.output.ends_with("200 OK\nsecure enough"), "{out:?}");

    // The unverified connection now pooled must not serve a verifying check.
    let out = prober.probe(&https(addr, false), TIMEOUT).await;
    assert_eq!(out.status, Status::Critical, "{out:?}");
}
