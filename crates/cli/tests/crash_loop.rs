//! Acknowledged writes survive repeated `kill -9` under load: 8 writers
//! register unique instances against the real binary on the embedded store,
//! the server is SIGKILLed at a random moment, restarted on the same data dir
//! (it must reach /ready every time), and every registration answered 2xx so
//! far must be listed. Twenty rounds.
//!
//! The kill moments come from a small PRNG whose seed is printed; set
//! `CRASH_LOOP_SEED` to replay a failing run.

mod common;

use common::Server;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const ROUNDS: usize = 20;
const WRITERS: u64 = 8;
const SERVICE: &str = "crashloop";

/// xorshift64*: enough to spread kill moments; no dependency for ten lines.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn seed() -> u64 {
    if let Ok(s) = std::env::var("CRASH_LOOP_SEED") {
        return s.parse().expect("CRASH_LOOP_SEED is a u64");
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    // xorshift must not start at zero.
    nanos | 1
}

/// Unique per `n` (below 15 million): `10.a.b.c`, never `.0` as last octet.
fn address(n: u64) -> String {
    format!(
        "10.{}.{}.{}",
        (n / 62_500) % 250 + 1,
        (n / 250) % 250,
        n % 250 + 1
    )
}

/// Every instance id the server lists for the test's service.
async fn listed(http: &reqwest::Client, addr: &str) -> HashSet<String> {
    let resp = http
        .get(format!("{addr}/api/v1/services/{SERVICE}/instances"))
        .send()
        .await
        .expect("list instances");
    assert_eq!(resp.status(), 200, "listing after restart");
    let list: Value = resp.json().await.unwrap();
    list.as_array()
        .expect("a JSON array of instances")
        .iter()
        .map(|i| i["id"].as_str().expect("instance id").to_string())
        .collect()
}

/// `muster server --data-dir DIR`, off the async runtime: starting blocks
/// until `/ready` answers 200, i.e. the store opened.
async fn start(data: &str) -> Result<Server, tokio::task::JoinError> {
    let data = data.to_string();
    tokio::task::spawn_blocking(move || Server::start_with(&["--data-dir", &data])).await
}

/// One writer: registers fresh instances until told to stop or the server
/// goes away. Only a 2xx answer counts as acknowledged.
async fn writer(
    http: reqwest::Client,
    addr: String,
    w: u64,
    next: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
) {
    while !stop.load(Ordering::Relaxed) {
        let n = next.fetch_add(1, Ordering::Relaxed);
        let id = format!("w{w}-{n}");
        let body = json!({"id": id, "address": address(n), "port": 8080});
        let sent = http
            .post(format!("{addr}/api/v1/services/{SERVICE}/instances"))
            .json(&body)
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status().is_success() => acked.lock().unwrap().push(id),
            Ok(resp) => {
                let status = resp.status();
                // A live server must accept every fresh registration.
                let text = resp.text().await.unwrap_or_default();
                assert!(
                    stop.load(Ordering::Relaxed),
                    "registration {id} refused: {status} {text}"
                );
            }
            // The kill: connection reset or refused.
            Err(_) => break,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_registrations_survive_repeated_kill_9_under_load() {
    let seed = seed();
    eprintln!("crash_loop seed = {seed} (replay with CRASH_LOOP_SEED={seed})");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap().to_string();
    // A short timeout: a request to a killed server must not hang the round.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let next = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut per_round = Vec::with_capacity(ROUNDS);

    for round in 0..ROUNDS {
        // Server::start_with blocks until /ready: the store opened.
        let mut server = start(&data).await.unwrap_or_else(|e| {
            panic!("round {round} (seed {seed}): the store did not reopen: {e}")
        });

        // Everything acknowledged in earlier rounds is back.
        let have = listed(&http, &server.addr).await;
        let want = acked.lock().unwrap().clone();
        let lost: Vec<_> = want.iter().filter(|id| !have.contains(*id)).collect();
        assert!(
            lost.is_empty(),
            "round {round} (seed {seed}): {} of {} acknowledged registrations lost, e.g. {:?}",
            lost.len(),
            want.len(),
            &lost[..lost.len().min(5)]
        );

        let before = want.len();
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                tokio::spawn(writer(
                    http.clone(),
                    server.addr.clone(),
                    w,
                    Arc::clone(&next),
                    Arc::clone(&stop),
                    Arc::clone(&acked),
                ))
            })
            .collect();
        let delay = rng.between(50, 400);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        // SIGKILL while the writers are mid-flight: no shutdown, no flush.
        stop.store(true, Ordering::Relaxed);
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        for w in writers {
            w.await.unwrap();
        }
        drop(server);
        let after = acked.lock().unwrap().len();
        per_round.push((delay, after - before));
    }

    // A last restart checks the final round too.
    let server = start(&data)
        .await
        .unwrap_or_else(|e| panic!("final restart (seed {seed}): the store did not reopen: {e}"));
    let have = listed(&http, &server.addr).await;
    let want = acked.lock().unwrap().clone();
    eprintln!("rounds (kill delay ms, acknowledged): {per_round:?}");
    // Without load the test would prove nothing.
    assert!(
        want.len() >= 10 * ROUNDS,
        "too few acknowledged writes ({}) to mean anything",
        want.len()
    );
    let lost: Vec<_> = want.iter().filter(|id| !have.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "seed {seed}: {} of {} acknowledged registrations lost, e.g. {:?}",
        lost.len(),
        want.len(),
        &lost[..lost.len().min(5)]
    );
}
