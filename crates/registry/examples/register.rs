//! Microbenchmark of the registry alone (no HTTP): N concurrent tasks
//! registering unique ttl instances on the embedded store.
//!
//! `cargo run --release -p muster-registry --example register -- 64 3`

use muster_core::RegisterBody;
use muster_core::check::CheckPolicy;
use muster_registry::Registry;
use muster_store::{EmbeddedOptions, EmbeddedStore};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let writers: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(64);
    let secs: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    let ttl = args.get(3).map(String::as_str) != Some("persistent");
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap());
    let reg = Registry::open(store, CheckPolicy::default()).await.unwrap();
    let n = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (reg, n) = (reg.clone(), n.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < end {
                let i = n.fetch_add(1, Ordering::Relaxed);
                let body: RegisterBody = serde_json::from_value(serde_json::json!({
                    "address": format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
                    "port": 8080, "tags": ["v2", "eu"], "meta": {"version": "2.1.0", "zone": "eu-west-1a"},
                    "ttl": if ttl { serde_json::json!("60s") } else { serde_json::Value::Null },
                }))
                .unwrap();
                let t = Instant::now();
                reg.register("bench", body, None).await.unwrap();
                lat.push(t.elapsed().as_micros() as u64);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    let q = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)] as f64 / 1000.0;
    println!(
        "{writers} writers ({}): {:.0} registrations/s, p50 {:.2} ms, p99 {:.2} ms",
        if ttl { "ttl" } else { "persistent" },
        all.len() as f64 / secs as f64,
        q(0.5),
        q(0.99)
    );
}
