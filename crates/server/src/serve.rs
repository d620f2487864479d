//! The server's lifecycle: bind, open the store and load the index, serve,
//! and on shutdown stop accepting, finish in-flight requests within the grace
//! period, stop the index, close the store. Teardown is logged in order.

use crate::app::{AppState, Ready, router};
use crate::config::{Config, StoreConfig, StoreEngine};
use crate::metrics::Metrics;
use muster_dns::DnsServer;
use muster_feed::Hub;
use muster_feed::webhooks::Webhooks;
use muster_health::history::ProbeHistory;
use muster_health::influx::InfluxExporter;
use muster_health::metrics::HealthMetrics;
use muster_health::probe::{Prober, ProberConfig};
use muster_health::{Health, HealthConfig, HealthParts};
use muster_registry::Registry;
use muster_store::{DynStore, EmbeddedOptions, EmbeddedStore, LogOptions, LogStore, MemoryStore};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Errors that stop the server from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Dns(#[from] muster_dns::DnsError),
    #[error("cannot open the store: {0}")]
    Store(String),
    #[error("server failed: {0}")]
    Serve(std::io::Error),
    #[error("{0}")]
    Exposed(String),
}

use ServerError as Error;

/// Probe history is saved here (inside the data dir) on a graceful stop.
pub const HISTORY_FILE: &str = "probe-history.json";

/// Loads the probe history, registers the engine's metrics and starts it.
fn start_health(
    config: &Config,
    state: &AppState,
    registry: Arc<Registry>,
    history_file: Option<&std::path::Path>,
    workers: &TaskTracker,
    stop: CancellationToken,
) -> Health {
    let h = &config.health;
    let history = match history_file.map(|p| ProbeHistory::load(p, h.history_retain)) {
        Some(Ok(history)) => history,
        Some(Err(e)) => {
            tracing::warn!(error = %e, "cannot read the saved probe history; starting empty");
            ProbeHistory::new(h.history_retain)
        }
        None => ProbeHistory::new(h.history_retain),
    };
    let metrics = Arc::new(HealthMetrics::default());
    state.metrics.register(|r| metrics.register(r));
    let prober = Prober::new(ProberConfig {
        deny_targets: config.checks.deny_targets.clone(),
        allow_exec: config.checks.allow_exec,
        user_agent: format!("muster/{}", env!("CARGO_PKG_VERSION")),
    });
    let exporter = h
        .influx
        .clone()
        .map(|cfg| InfluxExporter::start(cfg, stop.clone()));
    Health::start(
        HealthParts {
            registry,
            prober,
            history: Arc::new(history),
            exporter,
            metrics,
            cfg: HealthConfig {
                concurrency: h.concurrency,
                flap: h.flap,
            },
        },
        workers,
        stop,
    )
}

/// A server that is up; `wait` returns once it has shut down.
pub struct Running {
    pub http_addr: SocketAddr,
    /// Where DNS is answered, over UDP and TCP alike.
    pub dns_addr: SocketAddr,
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
        StoreConfig::Embedded { data_dir }
            if config.store_engine.for_dir(data_dir) == StoreEngine::Log =>
        {
            let opts = LogOptions {
                retain: config.retain,
                ..Default::default()
            };
            Arc::new(LogStore::open(data_dir, opts).map_err(|e| Error::Store(e.to_string()))?)
        }
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
    config.check_exposure().map_err(Error::Exposed)?;
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .map_err(|source| Error::Bind {
            addr: config.http_addr,
            source,
        })?;
    let http_addr = listener.local_addr().map_err(Error::Serve)?;
    // Bound now so a taken port fails the start; answered (SERVFAIL until
    // the registry is ready) once the background work starts below.
    let dns = DnsServer::bind(config.dns_addr, &config.dns).await?;
    let dns_addr = dns.local_addr();
    let dns_answerer = dns.answerer();
    // Open the store before serving: a locked or unreadable data dir should
    // fail the start, not leave a server that is never ready.
    let store = open_store(&config)?;
    let state = AppState::new(Arc::new(Metrics::new()), &config);
    let app = router(state.clone());
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(addr = %http_addr, "listening on {scheme}://{http_addr}");
    tracing::info!(addr = %dns_addr, "dns listening on {dns_addr}");
    let task = tokio::spawn(async move {
        // Background work (the health engine) is tracked and stopped in order.
        let workers = TaskTracker::new();
        let stop_workers = CancellationToken::new();
        // DNS stops with the background work, after HTTP has drained.
        dns.serve(&workers, stop_workers.clone());
        let history_file = match &config.store {
            StoreConfig::Embedded { data_dir } => Some(data_dir.join(HISTORY_FILE)),
            StoreConfig::Memory => None,
        };
        let loading = {
            let (state, store, config) = (state.clone(), store.clone(), config.clone());
            let (workers, stop) = (workers.clone(), stop_workers.clone());
            let history_file = history_file.clone();
            tokio::spawn(async move {
                let t = tokio::time::Instant::now();
                let registry = match Registry::open(store, config.checks.clone()).await {
                    Ok(r) => r,
                    Err(e) => return tracing::error!(error = %e, "cannot load the registry index"),
                };
                let stop_hub = stop.clone();
                let health = start_health(
                    &config,
                    &state,
                    registry.clone(),
                    history_file.as_deref(),
                    &workers,
                    stop,
                );
                tracing::info!(
                    revision = registry.revision(),
                    took_ms = t.elapsed().as_millis() as u64,
                    "registry ready"
                );
                let stop_webhooks = stop_hub.clone();
                let hub = Hub::start(registry.clone(), &workers, stop_hub);
                let hooks = config.webhooks.clone();
                let webhooks = Webhooks::start(&hub, hooks, &workers, stop_webhooks);
                state.metrics.register(|r| webhooks.register_metrics(r));
                dns_answerer.set_registry(registry.clone());
                state.set_ready(Ready {
                    registry,
                    health,
                    hub,
                });
            })
        };
        let serve = tokio::spawn(crate::listener::serve(
            listener,
            app,
            crate::listener::Limits {
                max_connections: config.max_connections,
                header_timeout: config.header_timeout,
                tls: config.tls.clone(),
            },
            shutdown.clone(),
            state.metrics.clone(),
        ));
        shutdown.cancelled().await;
        tracing::info!(
            grace_ms = config.grace.as_millis() as u64,
            "shutting down: no new connections, finishing in-flight requests"
        );
        let result = match tokio::time::timeout(config.grace, serve).await {
            Ok(_) => Ok(()),
            Err(_) => {
                tracing::warn!("grace period over; dropping the connections still open");
                Ok(())
            }
        };
        loading.abort();
        stop_workers.cancel();
        workers.close();
        if tokio::time::timeout(config.grace, workers.wait())
            .await
            .is_err()
        {
            tracing::warn!("background work did not stop within the grace period");
        }
        tracing::info!("background work stopped: health engine, feed hub, webhooks, dns");
        if let (Ok(h), Some(path)) = (state.health(), &history_file) {
            match h.history().save(path) {
                Ok(()) => tracing::info!(path = %path.display(), "probe history saved"),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot save the probe history")
                }
            }
        }
        if let Ok(r) = state.registry() {
            r.close();
            tracing::info!("index stopped");
        }
        store.close().await;
        tracing::info!("store closed");
        result
    });
    Ok(Running {
        http_addr,
        dns_addr,
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A DNS query for `name` (type A, class IN), by hand: the server crate
    /// has no DNS client, and this is all a smoke test needs.
    fn query(id: u16, name: &str) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.trim_end_matches('.').split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        q
    }

    /// The response code of the answer to `name`.
    async fn rcode(addr: SocketAddr, name: &str) -> u8 {
        let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        s.send_to(&query(7, name), addr).await.unwrap();
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(5), s.recv(&mut buf))
            .await
            .expect("the DNS listener did not answer")
            .unwrap();
        assert!(n >= 12 && buf[..2] == 7u16.to_be_bytes());
        buf[3] & 0x0f
    }

    #[tokio::test]
    async fn dns_is_answered_from_the_registry_once_it_is_ready() {
        let stop = CancellationToken::new();
        let running = start(Config::for_tests(), stop.clone()).await.unwrap();
        assert_ne!(running.dns_addr.port(), 0);
        // SERVFAIL (2) until the index has loaded; then an unknown service
        // is NXDOMAIN (3).
        let mut code = 2;
        for _ in 0..100 {
            code = rcode(running.dns_addr, "nope.service.muster.").await;
            if code != 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(code, 3);
        // TCP listens on the same port.
        tokio::net::TcpStream::connect(running.dns_addr)
            .await
            .unwrap();
        stop.cancel();
        running.wait().await.unwrap();
    }

    #[tokio::test]
    async fn a_taken_dns_port_fails_the_start_and_says_so() {
        let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let config = Config {
            dns_addr: taken.local_addr().unwrap(),
            ..Config::for_tests()
        };
        let Err(e) = start(config, CancellationToken::new()).await else {
            panic!("started on a taken DNS port");
        };
        let e = e.to_string();
        assert!(e.contains("cannot listen for DNS on udp"), "{e}");
        assert!(e.contains("--dns-addr"), "{e}");
    }
}
