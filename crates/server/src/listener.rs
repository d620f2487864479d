//! The HTTP listener, written out instead of `axum::serve` for the limits it
//! needs: a permit from a semaphore is taken *before* each accept (as in
//! mini-redis), so at most `max_connections` are open and the next client
//! waits in the kernel's backlog instead of costing memory here; hyper reads
//! every request's headers under a timeout, so an idle keep-alive socket or
//! a half-sent request cannot pin a connection forever. Graceful shutdown
//! stops accepting and lets in-flight requests finish (the caller bounds it).

use crate::metrics::Metrics;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// What the listener enforces.
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    /// HTTPS when set: the handshake must finish within `header_timeout`.
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
}

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

const PLAINTEXT_TO_TLS: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: text/plain\r\nConnection: close\r\nContent-Length: 44\r\n\r\n\
this port speaks TLS: use https:// instead\r\n";

pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
) {
    let Limits {
        max_connections,
        header_timeout,
        tls,
    } = limits;
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let permits = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
        if permits.available_permits() == 0 {
            metrics.connection_limit_reached();
        }
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: keep serving the
                    // connections we have and try again shortly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let (builder, app, watcher) = (builder.clone(), app.clone(), graceful.watcher());
        let acceptor = acceptor.clone();
        metrics.connections(1);
        let metrics = metrics.clone();
        tokio::spawn(async move {
            // A client that connects and sends nothing would sit in hyper's
            // protocol detection, which has no timeout of its own.
            // (`peek` waits for a real byte; readiness alone may be spurious.)
            let mut first = [0u8; 1];
            if let Ok(Ok(n)) = tokio::time::timeout(header_timeout, stream.peek(&mut first)).await
                && n > 0
            {
                // Handlers (and per-client limits) see who is calling.
                let app = tower::ServiceExt::map_request(
                    app,
                    move |mut req: axum::http::Request<hyper::body::Incoming>| {
                        req.extensions_mut()
                            .insert(axum::extract::ConnectInfo(peer));
                        req
                    },
                );
                let service = TowerToHyperService::new(app);
                match acceptor {
                    None => {
                        let conn = builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .into_owned();
                        let _ = watcher.watch(conn).await;
                    }
                    Some(_) if first[0] != TLS_HANDSHAKE => {
                        // Plain HTTP to the TLS port: say so, in plain HTTP.
                        metrics.refused("plaintext_to_tls");
                        let mut stream = stream;
                        let _ = stream.write_all(PLAINTEXT_TO_TLS).await;
                        let _ = stream.shutdown().await;
                    }
                    Some(acceptor) => {
                        match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => {
                                let conn = builder
                                    .serve_connection_with_upgrades(TokioIo::new(tls), service)
                                    .into_owned();
                                let _ = watcher.watch(conn).await;
                            }
                            Ok(Err(e)) => {
                                // No certificate, one the CA did not sign, a bad hello.
                                metrics.refused("tls_handshake");
                                tracing::debug!(error = %e, "TLS handshake refused");
                            }
                            Err(_) => metrics.refused("tls_handshake"),
                        }
                    }
                }
            }
            drop(permit);
            metrics.connections(-1);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
