//! Microbenchmark of the embedded engine alone: N concurrent writers putting
//! ~300-byte values for a few seconds. Shows what group commit buys before
//! HTTP and the registry add their share.
//!
//! `cargo run --release -p muster-store --example group_commit -- 64 3`

use muster_store::{EmbeddedOptions, EmbeddedStore, Store, Txn};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let writers: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(64);
    let secs: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap());
    let value = vec![b'x'; 300];
    let n = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (store, n, value) = (store.clone(), n.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < end {
                let i = n.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                store
                    .txn(Txn::new().put(format!("inst/bench/{i}"), value.clone(), None))
                    .await
                    .unwrap();
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
        "{writers} writers: {:.0} txn/s, p50 {:.2} ms, p99 {:.2} ms",
        all.len() as f64 / secs as f64,
        q(0.5),
        q(0.99)
    );
    store.close().await;
}
