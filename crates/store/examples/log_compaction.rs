//! What a compaction costs the log engine's writers at scale: loads N keys
//! (~300-byte values), then keeps 64 writers busy while a snapshot is taken,
//! and prints how long the writer held the state, the slowest write during
//! the snapshot, how long writing the snapshot took, and the reopen time.
//!
//! `cargo run --release -p muster-store --example log_compaction -- 1000000`

use muster_store::{LogOptions, LogStore, Store, Txn};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

fn opts() -> LogOptions {
    LogOptions {
        // Only the compaction asked for below.
        compact_bytes: u64::MAX,
        ..Default::default()
    }
}

#[tokio::main]
async fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir_in(std::env::var("TMPDIR").unwrap_or("/var/tmp".into())).unwrap();
    let store = Arc::new(LogStore::open(dir.path(), opts()).unwrap());
    let value = bytes::Bytes::from(vec![b'x'; 300]);
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (store, next, value) = (store.clone(), next.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                store
                    .txn(Txn::new().put(format!("inst/svc{}/{i:08}", i % 100), value.clone(), None))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    println!(
        "loaded {n} keys in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Writers keep going while the snapshot is written.
    let stop = Arc::new(AtomicBool::new(false));
    let worst = Arc::new(AtomicU64::new(0));
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..64u64 {
        let (store, stop, worst, count, value) = (
            store.clone(),
            stop.clone(),
            worst.clone(),
            count.clone(),
            value.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                store
                    .txn(Txn::new().put(format!("inst/svc{w}/{i:08}"), value.clone(), None))
                    .await
                    .unwrap();
                worst.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                count.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_worst = worst.swap(0, Ordering::Relaxed);
    let t = Instant::now();
    let held = store.compact().await.unwrap();
    // The snapshot is written in the background; wait for it to be renamed.
    let snap_written = loop {
        let done = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().ends_with(".snap"));
        if done {
            break t.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let during_worst = worst.load(Ordering::Relaxed);
    let writes = count.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    println!(
        "compaction held the writer for {:.2} ms",
        held.as_secs_f64() * 1000.0
    );
    println!(
        "snapshot written in {:.2} s; slowest write while it was written {:.1} ms (before it: {:.1} ms); {writes} writes meanwhile",
        snap_written.as_secs_f64(),
        during_worst as f64 / 1000.0,
        before_worst as f64 / 1000.0
    );
    let snap_bytes: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".snap"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    println!(
        "snapshot size {:.1} MiB",
        snap_bytes as f64 / (1 << 20) as f64
    );
    store.close().await;
    drop(store);
    let t = Instant::now();
    let store = LogStore::open(dir.path(), opts()).unwrap();
    println!(
        "reopened ({} revisions) in {:.2} s",
        store.current_revision(),
        t.elapsed().as_secs_f64()
    );
    store.close().await;
}
