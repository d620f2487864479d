//! DNS A-record queries per second over UDP for a 100-instance service,
//! against an in-process server on the in-memory store: our own load
//! generator, N tasks each with its own UDP socket and one query in flight,
//! for a fixed duration. Prints qps and latency percentiles.
//!
//! `cargo run --release -p muster-dns --example qps -- [--tasks N] [--seconds S] [--instances N]`
//!
//! Server and load generator share the machine's cores, so the figure is a
//! floor for the server alone.

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RecordType};
use muster_core::check::CheckPolicy;
use muster_dns::{DnsConfig, DnsServer};
use muster_registry::Registry;
use muster_store::MemoryStore;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

struct Args {
    tasks: usize,
    seconds: u64,
    instances: u16,
}

fn args() -> Args {
    let mut a = Args {
        tasks: 32,
        seconds: 5,
        instances: 100,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let value = pair.get(1).and_then(|v| v.parse::<u64>().ok());
        match (pair[0].as_str(), value) {
            ("--tasks", Some(v)) => a.tasks = v.max(1) as usize,
            ("--seconds", Some(v)) => a.seconds = v.max(1),
            ("--instances", Some(v)) => a.instances = v.clamp(1, 60_000) as u16,
            _ => {
                eprintln!("usage: qps [--tasks N] [--seconds S] [--instances N]");
                std::process::exit(2);
            }
        }
    }
    a
}

/// An A query for `name` advertising 4096 bytes, so all records fit UDP.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii(name).expect("a valid name"),
        RecordType::A,
    ));
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    m.set_edns(edns);
    m.to_vec().expect("the query encodes")
}

/// Sends queries one after another until `deadline`; returns each
/// round trip in microseconds.
async fn client(server: SocketAddr, name: &'static str, deadline: Instant) -> Vec<u32> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    socket.connect(server).await.expect("connect");
    let mut latencies = Vec::with_capacity(100_000);
    let mut buf = vec![0u8; 4096];
    // Built once; only the id changes (bytes 0-1), to keep the generator cheap.
    let mut q = query(0, name);
    let mut id: u16 = 0;
    while Instant::now() < deadline {
        id = id.wrapping_add(1);
        q[..2].copy_from_slice(&id.to_be_bytes());
        let sent = Instant::now();
        socket.send(&q).await.expect("send");
        // A lost datagram is retried with a new query, not waited out.
        match tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf)).await {
            Ok(Ok(n)) if n >= 12 && buf[..2] == id.to_be_bytes() => {
                latencies.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
            }
            _ => {}
        }
    }
    latencies
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() {
    let a = args();
    let registry = Registry::open(Arc::new(MemoryStore::new(10_000)), CheckPolicy::default())
        .await
        .expect("registry");
    for i in 0..a.instances {
        let body = serde_json::from_value(serde_json::json!({
            "address": format!("10.{}.{}.{}", i / 65_025, (i / 255) % 255, i % 255 + 1),
            "port": 8080,
        }))
        .expect("body");
        registry
            .register("web", body, None)
            .await
            .expect("register");
    }
    let server = DnsServer::bind(([127, 0, 0, 1], 0).into(), &DnsConfig::default())
        .await
        .expect("bind");
    server.answerer().set_registry(registry);
    let addr = server.local_addr();
    let (tracker, stop) = (TaskTracker::new(), CancellationToken::new());
    server.serve(&tracker, stop.clone());

    // One query first: the answer must carry every instance, untruncated.
    let probe = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    probe
        .send_to(&query(1, "web.service.muster."), addr)
        .await
        .expect("send");
    let mut buf = vec![0u8; 4096];
    let n = probe.recv(&mut buf).await.expect("answer");
    let m = Message::from_vec(&buf[..n]).expect("a DNS answer");
    assert_eq!(m.answers.len(), usize::from(a.instances), "all instances");
    assert!(!m.metadata.truncation);
    println!(
        "answer: {} A records, {} bytes; {} client tasks for {}s",
        m.answers.len(),
        n,
        a.tasks,
        a.seconds
    );

    let started = Instant::now();
    let deadline = started + Duration::from_secs(a.seconds);
    let clients: Vec<_> = (0..a.tasks)
        .map(|_| tokio::spawn(client(addr, "web.service.muster.", deadline)))
        .collect();
    let mut all = Vec::new();
    for c in clients {
        all.extend(c.await.expect("client task"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    println!(
        "{} answers in {:.1}s: {:.0} qps; latency p50 {} µs, p99 {} µs, max {} µs",
        all.len(),
        elapsed,
        all.len() as f64 / elapsed,
        percentile(&all, 0.50),
        percentile(&all, 0.99),
        all.last().copied().unwrap_or(0),
    );
    stop.cancel();
    tracker.close();
    tracker.wait().await;
}
