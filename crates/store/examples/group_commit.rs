//! Microbenchmark of the embedded engine alone: N concurrent writers putting
//! ~300-byte values for a few seconds. Shows what group commit buys before
//! HTTP and the registry add their share.
//!
//! `cargo run --release -p muster-store --example group_commit -- 64 3 [redb|log]`
//!
//! Also prints the process CPU time per 1,000 transactions, which says more
//! than throughput on a machine shared with other work.

use muster_store::{DynStore, EmbeddedOptions, EmbeddedStore, LogOptions, LogStore, Txn};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let writers: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(64);
    let secs: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    let engine = args.get(3).map_or("redb", |s| s.as_str());
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let store: DynStore = match engine {
        "log" => Arc::new(LogStore::open(dir.path(), LogOptions::default()).unwrap()),
        _ => Arc::new(EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap()),
    };
    let cpu_before = cpu_seconds();
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
    let cpu = cpu_seconds() - cpu_before;
    println!(
        "{engine}, {writers} writers: {:.0} txn/s, p50 {:.2} ms, p99 {:.2} ms, {:.1} ms CPU per 1k txns",
        all.len() as f64 / secs as f64,
        q(0.5),
        q(0.99),
        cpu * 1e6 / all.len() as f64
    );
    store.close().await;
}

/// User + system CPU time of this process, from /proc (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    (ticks(11) + ticks(12)) / 100.0
}
