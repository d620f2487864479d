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
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub async fn serve(
    listener: TcpListener,
    app: Router,
    max_connections: usize,
    header_timeout: Duration,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
) {
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
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
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
                let conn = builder
                    .serve_connection_with_upgrades(
                        TokioIo::new(stream),
                        TowerToHyperService::new(app),
                    )
                    .into_owned();
                let _ = watcher.watch(conn).await;
            }
            drop(permit);
            metrics.connections(-1);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
