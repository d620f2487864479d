//! The server's lifecycle: bind, open the store and load the index, serve,
//! and on shutdown stop accepting, finish in-flight requests within the grace
//! period, stop the index, close the store. Teardown is logged in order.

use crate::app::{AppState, router};
use crate::config::{Config, StoreConfig};
use crate::metrics::Metrics;
use muster_registry::Registry;
use muster_store::{DynStore, EmbeddedOptions, EmbeddedStore, MemoryStore};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Errors that stop the server from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open the store: {0}")]
    Store(String),
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

use ServerError as Error;

/// A server that is up; `wait` returns once it has shut down.
pub struct Running {
    pub http_addr: SocketAddr,
    task: JoinHandle<Result<(), Error>>,
}

impl Running {
    pub async fn wait(self) -> Result<(), Error> {
        self.task.await.unwrap_or(Ok(()))
    }
}

fn open_store(config: &Config) -> Result<DynStore, Error> {
    Ok(match &config.store {
        StoreConfig::Memory => Arc::new(MemoryStore::new(config.retain)),
        StoreConfig::Embedded { data_dir } => {
            let opts = EmbeddedOptions {
                retain: config.retain,
                ..Default::default()
            };
            Arc::new(EmbeddedStore::open(data_dir, opts).map_err(|e| Error::Store(e.to_string()))?)
        }
    })
}

/// Binds the HTTP listener and starts serving. The API answers 503 until
/// the store is open and the index loaded; `/ready` turns 200 then.
/// Cancelling `shutdown` stops the server.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, Error> {
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .map_err(|source| Error::Bind {
            addr: config.http_addr,
            source,
        })?;
    let http_addr = listener.local_addr().map_err(Error::Serve)?;
    // Open the store before serving: a locked or unreadable data dir should
    // fail the start, not leave a server that is never ready.
    let store = open_store(&config)?;
    let state = AppState::new(Arc::new(Metrics::new()));
    let app = router(state.clone(), config.body_limit);
    tracing::info!(addr = %http_addr, "listening on http://{http_addr}");
    let task = tokio::spawn(async move {
        let loading = {
            let state = state.clone();
            let store = store.clone();
            let checks = config.checks.clone();
            tokio::spawn(async move {
                let t = tokio::time::Instant::now();
                match Registry::open(store, checks).await {
                    Ok(r) => {
                        tracing::info!(
                            revision = r.revision(),
                            took_ms = t.elapsed().as_millis() as u64,
                            "registry ready"
                        );
                        state.set_registry(r);
                    }
                    Err(e) => tracing::error!(error = %e, "cannot load the registry index"),
                }
            })
        };
        let serve = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown({
            let s = shutdown.clone();
            async move { s.cancelled().await }
        });
        let serve = tokio::spawn(async move { serve.await });
        shutdown.cancelled().await;
        tracing::info!(
            grace_ms = config.grace.as_millis() as u64,
            "shutting down: no new connections, finishing in-flight requests"
        );
        let result = match tokio::time::timeout(config.grace, serve).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(Error::Serve(e)),
            Ok(Err(_)) => Ok(()),
            Err(_) => {
                tracing::warn!("grace period over; dropping the connections still open");
                Ok(())
            }
        };
        loading.abort();
        if let Ok(r) = state.registry() {
            r.close();
            tracing::info!("index stopped");
        }
        store.close().await;
        tracing::info!("store closed");
        result
    });
    Ok(Running { http_addr, task })
}
