//! What the log engine promises on disk, beyond the conformance suite: a torn
//! last record is cut off, damage before it refuses to open, the other
//! engine's data dir is refused, compaction and restarts keep data, leases
//! and watch history, a failed write changes nothing and writes resume when
//! the disk does, and acknowledged writes survive `kill -9`.
//!
//! All on a real disk (and a real tmpfs for the full-disk case).

use bytes::Bytes;
use muster_store::{
    Change, EmbeddedOptions, EmbeddedStore, LogOptions, LogStore, Store, StoreError, Txn,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn opts(retain: usize) -> LogOptions {
    LogOptions {
        retain,
        ..Default::default()
    }
}

fn files(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    v.sort();
    v
}

fn only_wal(dir: &Path) -> PathBuf {
    let w = files(dir, "wal-");
    assert_eq!(w.len(), 1, "one WAL: {w:?}");
    w[0].clone()
}

async fn keys(s: &LogStore) -> Vec<(Bytes, Bytes)> {
    s.snapshot(b"")
        .await
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| (kv.key, kv.value))
        .collect()
}

/// Every retained change, read through a watcher.
async fn retained(s: &LogStore) -> Vec<Arc<Change>> {
    let mut w = s.watch(s.oldest_revision()).await.unwrap();
    let mut out = Vec::new();
    while out.last().map_or(0, |c: &Arc<Change>| c.revision) < s.current_revision() {
        out.push(w.next().await.unwrap().unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_record_is_cut_off_and_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = LogStore::open(dir.path(), opts(100)).unwrap();
        for k in ["a", "b", "c"] {
            s.txn(Txn::new().put(b(k), b("v"), None)).await.unwrap();
        }
        s.close().await;
    }
    let wal = only_wal(dir.path());
    let len = std::fs::metadata(&wal).unwrap().len();
    // A crash in the middle of appending the third record.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let s = LogStore::open(dir.path(), opts(100)).unwrap();
    assert_eq!(s.current_revision(), 2);
    assert_eq!(keys(&s).await, vec![(b("a"), b("v")), (b("b"), b("v"))]);
    let r = s.txn(Txn::new().put(b("d"), b("v"), None)).await.unwrap();
    assert_eq!(r.revision, 3, "the cut record's revision is reused");
    s.close().await;
    drop(s);
    // Zeros after the last record (a file extended but not written): torn too.
    let mut f = std::fs::OpenOptions::new().append(true).open(&wal).unwrap();
    std::io::Write::write_all(&mut f, &[0u8; 100]).unwrap();
    drop(f);
    let s = LogStore::open(dir.path(), opts(100)).unwrap();
    assert_eq!(s.current_revision(), 3);
    assert_eq!(keys(&s).await.len(), 3);
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_before_the_last_record_refuses_to_open_and_names_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = LogStore::open(dir.path(), opts(100)).unwrap();
        for k in ["a", "b", "c"] {
            s.txn(Txn::new().put(b(k), b("value"), None)).await.unwrap();
        }
        s.close().await;
    }
    let wal = only_wal(dir.path());
    let mut data = std::fs::read(&wal).unwrap();
    // Inside the first record's payload (8 bytes magic + 8 bytes frame header).
    data[8 + 8 + 20] ^= 0x40;
    std::fs::write(&wal, &data).unwrap();
    let err = LogStore::open(dir.path(), opts(100))
        .err()
        .expect("must refuse");
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Corrupt(_)), "{msg}");
    assert!(msg.contains(&wal.display().to_string()), "{msg}");
    assert!(msg.contains("offset 8"), "{msg}");
    assert_eq!(
        std::fs::read(&wal).unwrap(),
        data,
        "a refused WAL is left as it was"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_engine_refuses_the_other_engines_data_dir() {
    let redb = tempfile::tempdir().unwrap();
    let e = EmbeddedStore::open(redb.path(), EmbeddedOptions::default()).unwrap();
    e.close().await;
    drop(e);
    let err = LogStore::open(redb.path(), opts(100))
        .err()
        .expect("must refuse");
    assert!(err.to_string().contains("--store-engine redb"), "{err}");

    let log = tempfile::tempdir().unwrap();
    let s = LogStore::open(log.path(), opts(100)).unwrap();
    s.close().await;
    drop(s);
    let err = EmbeddedStore::open(log.path(), EmbeddedOptions::default())
        .err()
        .expect("must refuse");
    assert!(err.to_string().contains("--store-engine log"), "{err}");
    assert!(
        !log.path().join(muster_store::embedded::DB_FILE).exists(),
        "nothing of redb's is created"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_data_leases_and_history_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let small = LogOptions {
        retain: 300,
        compact_bytes: 32 << 10,
        ..Default::default()
    };
    let (before_keys, before_hist, lease);
    {
        let s = LogStore::open(dir.path(), small.clone()).unwrap();
        lease = s.lease_grant(Duration::from_secs(3600)).await.unwrap();
        for i in 0..1000 {
            let mut t = Txn::new().put(format!("k/{:04}", i % 400), format!("v{i}"), None);
            if i % 7 == 0 {
                t = t.put(format!("l/{i}"), "leased", Some(lease));
            }
            if i % 11 == 0 {
                t = t.delete(format!("k/{:04}", (i + 1) % 400)).note("n");
            }
            s.txn(t).await.unwrap();
            if i == 500 {
                // Compactions started by size have run by now; one by hand too.
                s.compact().await.unwrap();
            }
        }
        // Writes while a snapshot is being written land in the overlay.
        s.compact().await.unwrap();
        for i in 0..50 {
            s.txn(Txn::new().put(format!("k/{:04}", i), "late", None))
                .await
                .unwrap();
        }
        before_keys = keys(&s).await;
        before_hist = retained(&s).await;
        assert_eq!(before_hist.len(), 300);
        s.close().await;
    }
    assert_eq!(files(dir.path(), "snap-").len(), 1, "old snapshots removed");
    assert_eq!(files(dir.path(), "wal-").len(), 1, "old WALs removed");
    for _ in 0..2 {
        let s = LogStore::open(dir.path(), small.clone()).unwrap();
        assert_eq!(keys(&s).await, before_keys);
        assert_eq!(s.current_revision(), 1050);
        assert_eq!(retained(&s).await, before_hist, "watch replays the same");
        assert_eq!(
            s.lease_keepalive(lease).await.unwrap(),
            Duration::from_secs(3600)
        );
        s.close().await;
    }
    let s = LogStore::open(dir.path(), small).unwrap();
    s.lease_revoke(lease).await.unwrap();
    let left = keys(&s).await;
    assert!(left.iter().all(|(k, _)| !k.starts_with(b"l/")));
    assert!(left.len() < before_keys.len());
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_after_a_restart_replays_what_was_retained_and_follows_on() {
    let dir = tempfile::tempdir().unwrap();
    let before;
    {
        let s = LogStore::open(dir.path(), opts(50)).unwrap();
        for i in 0..120 {
            s.txn(Txn::new().put(format!("k{}", i % 30), format!("v{i}"), None))
                .await
                .unwrap();
        }
        before = retained(&s).await;
        assert_eq!(s.oldest_revision(), 71);
        s.close().await;
    }
    let s = LogStore::open(dir.path(), opts(50)).unwrap();
    assert_eq!(s.oldest_revision(), 71);
    assert!(matches!(
        s.watch(70).await.err(),
        Some(StoreError::Compacted { oldest: 71, .. })
    ));
    let mut w = s.watch(71).await.unwrap();
    for want in &before {
        assert_eq!(&w.next().await.unwrap().unwrap(), want);
    }
    s.txn(Txn::new().put(b("k0"), b("after"), None))
        .await
        .unwrap();
    let next = w.next().await.unwrap().unwrap();
    assert_eq!(next.revision, 121);
    assert_eq!(
        next.events[0].prev.as_ref().unwrap().value,
        b("v90"),
        "prev values survive the restart"
    );
    s.close().await;
}

// ---- a full disk: the batch fails whole, and writes resume without a restart

/// A small tmpfs, unmounted on drop; `None` (with the reason printed) when
/// this environment may not mount.
struct TinyFs(PathBuf);

impl TinyFs {
    fn mount(at: &Path) -> Option<TinyFs> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
            .arg(at)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(TinyFs(at.to_path_buf())),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs (needs root with CAP_SYS_ADMIN): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Fills the filesystem holding `path` to the last byte.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0xAAu8; 4096];
    loop {
        match std::io::Write::write(&mut f, &chunk) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let _ = f.sync_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_batch_whole_and_writes_resume_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let Some(_fs) = TinyFs::mount(&mnt) else {
        return;
    };
    let data = mnt.join("data");
    let s = LogStore::open(&data, opts(100)).unwrap();
    let lease = s.lease_grant(Duration::from_secs(3600)).await.unwrap();
    s.txn(Txn::new().put(b("a"), b("1"), Some(lease)))
        .await
        .unwrap();
    s.txn(Txn::new().put(b("b"), b("1"), None)).await.unwrap();
    let wal = only_wal(&data);
    let wal_len = std::fs::metadata(&wal).unwrap().len();
    let before = keys(&s).await;
    let mut w = s.watch(3).await.unwrap();

    let filler = mnt.join("filler");
    fill(&filler);
    let big = Bytes::from(vec![b'x'; 64 << 10]);
    let err = s
        .txn(
            Txn::new()
                .put(b("a"), b("2"), None)
                .delete(b("b"))
                .put(b("big"), big.clone(), None),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains("No space left"), "{err}");
    assert_eq!(
        std::fs::metadata(&wal).unwrap().len(),
        wal_len,
        "the failed append was cut off"
    );
    // A grant made now is answered at once; its record may fit in the WAL's
    // last page or fail with the transaction below, then be retried.
    let late = s.lease_grant(Duration::from_secs(60)).await.unwrap();
    assert!(
        s.txn(Txn::new().put(b("c"), big.clone(), Some(late)))
            .await
            .is_err()
    );
    assert_eq!(s.current_revision(), 2, "no revision was taken");
    assert_eq!(keys(&s).await, before, "memory is as before the batch");
    assert!(
        tokio::time::timeout(Duration::from_millis(100), w.next())
            .await
            .is_err(),
        "watchers saw nothing"
    );
    assert!(s.lease_keepalive(lease).await.is_ok(), "the lease is back");

    std::fs::remove_file(&filler).unwrap();
    let r = s
        .txn(Txn::new().put(b("c"), b("3"), Some(late)))
        .await
        .unwrap();
    assert_eq!(r.revision, 3, "writes resume without a restart");
    assert_eq!(w.next().await.unwrap().unwrap().revision, 3);
    s.lease_revoke(lease).await.unwrap();
    s.close().await;
    drop(s);
    let s = LogStore::open(&data, opts(100)).unwrap();
    assert_eq!(s.current_revision(), 4);
    assert_eq!(
        keys(&s).await,
        vec![(b("b"), b("1")), (b("c"), b("3"))],
        "the grant retried with a later batch is durable"
    );
    assert!(s.lease_keepalive(late).await.is_ok());
    s.close().await;
}

// ---- kill -9 at random moments: every acknowledged key survives

const CHILD_ENV: &str = "MUSTER_LOG_CRASH_CHILD";

/// The child side of the crash loop (this same test binary, re-executed with
/// `CHILD_ENV` naming a data dir): writes keys from 8 tasks and prints each
/// one once its write is acknowledged. Without `CHILD_ENV` it returns at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let round: u64 = std::env::var("MUSTER_LOG_CRASH_ROUND")
        .unwrap()
        .parse()
        .unwrap();
    let s = LogStore::open(
        Path::new(&dir),
        LogOptions {
            retain: 1000,
            // Small, so crashes land in and around compactions too.
            compact_bytes: 256 << 10,
            ..Default::default()
        },
    )
    .unwrap();
    // On its own line: the test harness has just printed "test crash_child ... ".
    println!("\nready");
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let (s, out) = (s.clone(), out.clone());
        tasks.push(tokio::spawn(async move {
            for n in 0.. {
                let key = format!("r{round}/t{t}/{n}");
                let lease = s.lease_grant(Duration::from_secs(3600)).await.unwrap();
                s.txn(Txn::new().put(key.clone(), vec![b'v'; 200], Some(lease)))
                    .await
                    .unwrap();
                let mut o = out.lock().unwrap();
                std::io::Write::write_all(&mut *o, format!("ack {key}\n").as_bytes()).unwrap();
                std::io::Write::flush(&mut *o).unwrap();
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_at_random_moments() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    if let Ok(s) = std::env::var("CRASH_LOOP_SEED") {
        seed = s.parse().unwrap();
    }
    eprintln!("seed {seed} (set CRASH_LOOP_SEED to replay)");
    let mut acked: Vec<String> = Vec::new();
    for round in 0..20u64 {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        let wait_ms = 20 + seed.wrapping_mul(0x2545_F491_4F6C_DD1D) % 400;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .env("MUSTER_LOG_CRASH_ROUND", round.to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut acks = Vec::new();
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line == "ready" {
                    let _ = ready_tx.send(());
                }
                if let Some(k) = line.strip_prefix("ack ") {
                    acks.push(k.to_string());
                }
            }
            acks
        });
        let ready = ready_rx.recv_timeout(Duration::from_secs(60));
        if ready.is_ok() {
            std::thread::sleep(Duration::from_millis(wait_ms));
        }
        child.kill().unwrap(); // SIGKILL
        let _ = child.wait();
        let acks = reader.join().unwrap();
        assert!(
            ready.is_ok(),
            "round {round}: the store did not open after a crash"
        );
        acked.extend(acks);
        let s = LogStore::open(dir.path(), opts(1000))
            .unwrap_or_else(|e| panic!("round {round}: cannot reopen after kill -9: {e}"));
        let have: std::collections::HashSet<Bytes> =
            keys(&s).await.into_iter().map(|(k, _)| k).collect();
        for k in &acked {
            assert!(
                have.contains(k.as_bytes()),
                "round {round}: acknowledged key {k} lost (seed {seed})"
            );
        }
        s.close().await;
    }
    assert!(
        acked.len() > 100,
        "the child wrote too little to prove anything: {}",
        acked.len()
    );
}
