//! What the DNS tests share: a real registry on the in-memory store with a
//! known set of instances, and a real DNS server on a free port.
#![allow(dead_code)] // each test binary uses its own part of this

use muster_core::check::CheckPolicy;
use muster_dns::{DnsConfig, DnsServer};
use muster_registry::Registry;
use muster_store::MemoryStore;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub async fn registry() -> Arc<Registry> {
    Registry::open(Arc::new(MemoryStore::new(10_000)), CheckPolicy::default())
        .await
        .unwrap()
}

pub async fn add(
    reg: &Registry,
    service: &str,
    id: &str,
    address: &str,
    port: u16,
    tags: &[&str],
    weight: u32,
) {
    let body = serde_json::from_value(serde_json::json!({
        "id": id, "address": address, "port": port, "tags": tags, "weight": weight,
    }))
    .unwrap();
    reg.register(service, body, None).await.unwrap();
}

/// The instance reports `status` about itself (a heartbeat with a status).
pub async fn report(reg: &Registry, service: &str, id: &str, status: &str) {
    let body = serde_json::from_value(serde_json::json!({"status": status})).unwrap();
    reg.heartbeat(service, id, body).await.unwrap();
}

/// The registry every test reads:
///
/// | service | instance | address | port | status | tags | weight |
/// | --- | --- | --- | --- | --- | --- | --- |
/// | web | web-a | 10.0.0.1 | 80 | passing | Primary, v1 | 10 |
/// | web | web-b | 10.0.0.2 | 81 | warning | v2 | 1 |
/// | web | web-c | 10.0.0.3 | 80 | critical | v2 | 1 |
/// | web | web-d | 10.0.0.4 | 80 | maintenance | v2 | 1 |
/// | web | web-e | 2001:db8::5 | 8080 | passing | v2 | 3 |
/// | web | web-f | db.example.org | 9000 | passing | | 1 |
/// | down | down-a | 10.0.1.1 | 80 | critical | | 1 |
/// | empty | (a definition, no instance) | | | | | |
/// | db.main | db-1 | 10.0.2.1 | 5432 | passing | ro | 1 |
pub async fn seeded() -> Arc<Registry> {
    let reg = registry().await;
    add(&reg, "web", "web-a", "10.0.0.1", 80, &["Primary", "v1"], 10).await;
    add(&reg, "web", "web-b", "10.0.0.2", 81, &["v2"], 1).await;
    add(&reg, "web", "web-c", "10.0.0.3", 80, &["v2"], 1).await;
    add(&reg, "web", "web-d", "10.0.0.4", 80, &["v2"], 1).await;
    add(&reg, "web", "web-e", "2001:db8::5", 8080, &["v2"], 3).await;
    add(&reg, "web", "web-f", "db.example.org", 9000, &[], 1).await;
    report(&reg, "web", "web-b", "warning").await;
    report(&reg, "web", "web-c", "critical").await;
    let maintenance = serde_json::from_value(serde_json::json!({"enabled": true})).unwrap();
    reg.maintenance("web", "web-d", maintenance).await.unwrap();
    add(&reg, "down", "down-a", "10.0.1.1", 80, &[], 1).await;
    report(&reg, "down", "down-a", "critical").await;
    reg.put_service("empty", Default::default()).await.unwrap();
    add(&reg, "db.main", "db-1", "10.0.2.1", 5432, &["ro"], 1).await;
    reg
}

/// `count` passing instances of `service` at 10.1.x.y:8000.
pub async fn many(reg: &Registry, service: &str, count: u16) {
    for i in 0..count {
        let address = format!("10.1.{}.{}", i / 250, i % 250 + 1);
        add(
            reg,
            service,
            &format!("{service}-{i}"),
            &address,
            8000,
            &[],
            1,
        )
        .await;
    }
}

/// A DNS server on a free port; stops when dropped.
pub struct Dns {
    pub addr: SocketAddr,
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop.cancel();
        self.tracker.close();
    }
}

pub fn config() -> DnsConfig {
    DnsConfig {
        ttl: Duration::from_secs(7),
        ..DnsConfig::default()
    }
}

pub async fn serve(registry: Option<Arc<Registry>>, config: DnsConfig) -> Dns {
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    let server = DnsServer::bind(any_port, &config).await.unwrap();
    if let Some(r) = registry {
        server.answerer().set_registry(r);
    }
    let (stop, tracker) = (CancellationToken::new(), TaskTracker::new());
    let addr = server.local_addr();
    server.serve(&tracker, stop.clone());
    Dns {
        addr,
        stop,
        tracker,
    }
}
