//! The storage conformance suite: every engine must pass every test here.
//! A new engine (etcd) adds one line to the `engines!` list at the bottom.

use bytes::Bytes;
use muster_store::{
    Compare, DynStore, EmbeddedOptions, EmbeddedStore, EventType, LeaseId, LogOptions, LogStore,
    MemoryStore, StoreError, Txn,
};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A store under test, and whatever must outlive it.
struct Harness {
    store: DynStore,
    _dir: Option<tempfile::TempDir>,
}

fn memory(retain: usize) -> Harness {
    Harness {
        store: Arc::new(MemoryStore::new(retain)),
        _dir: None,
    }
}

fn embedded(retain: usize) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let opts = EmbeddedOptions {
        retain,
        ..Default::default()
    };
    Harness {
        store: Arc::new(EmbeddedStore::open(dir.path(), opts).unwrap()),
        _dir: Some(dir),
    }
}

fn log(retain: usize) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    Harness {
        store: open_log(dir.path(), retain).unwrap(),
        _dir: Some(dir),
    }
}

type Open = fn(usize) -> Harness;

/// Opens a durable engine on a data dir (for the reopen tests).
type OpenDir = fn(&Path, usize) -> Result<DynStore, StoreError>;

fn open_embedded(dir: &Path, retain: usize) -> Result<DynStore, StoreError> {
    let opts = EmbeddedOptions {
        retain,
        ..Default::default()
    };
    Ok(Arc::new(EmbeddedStore::open(dir, opts)?))
}

fn open_log(dir: &Path, retain: usize) -> Result<DynStore, StoreError> {
    let opts = LogOptions {
        retain,
        ..Default::default()
    };
    Ok(Arc::new(LogStore::open(dir, opts)?))
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn revisions_increase_by_one_per_change(open: Open) {
    let h = open(100);
    let s = &h.store;
    assert_eq!(s.current_revision(), 0);
    let r1 = s.txn(Txn::new().put(b("a"), b("1"), None)).await.unwrap();
    let r2 = s
        .txn(
            Txn::new()
                .put(b("b"), b("2"), None)
                .put(b("c"), b("3"), None),
        )
        .await
        .unwrap();
    assert_eq!((r1.revision, r2.revision), (1, 2));
    assert!(r1.succeeded && r2.succeeded);
    assert_eq!(r2.events.len(), 2, "a multi-key txn is one change");
    let r3 = s.txn(Txn::new().put(b("a"), b("1b"), None)).await.unwrap();
    let kv = &r3.events[0];
    assert_eq!(kv.kv.create_revision, 1);
    assert_eq!(kv.kv.mod_revision, 3);
    assert_eq!(kv.kv.version, 2);
    assert_eq!(kv.prev.as_ref().unwrap().value, b("1"));
    let snap = s.snapshot(b"").await.unwrap();
    assert_eq!(snap.revision, 3);
    let keys: Vec<_> = snap
        .kvs
        .iter()
        .map(|k| (k.key.clone(), k.value.clone()))
        .collect();
    assert_eq!(
        keys,
        vec![(b("a"), b("1b")), (b("b"), b("2")), (b("c"), b("3"))]
    );
    assert_eq!(s.current_revision(), 3);
}

async fn compare_and_set_conflicts_apply_nothing(open: Open) {
    let h = open(100);
    let s = &h.store;
    let put = s
        .txn(
            Txn::new()
                .when(Compare::Missing(b("k")))
                .put(b("k"), b("v1"), None),
        )
        .await
        .unwrap();
    assert!(put.succeeded);
    let again = s
        .txn(
            Txn::new()
                .when(Compare::Missing(b("k")))
                .put(b("k"), b("v2"), None),
        )
        .await
        .unwrap();
    assert!(!again.succeeded, "put-if-absent must fail when present");
    assert_eq!(again.revision, 1, "a failed compare makes no revision");
    let stale = s
        .txn(
            Txn::new()
                .when(Compare::ModRevision(b("k"), 99))
                .put(b("k"), b("v3"), None)
                .put(b("other"), b("x"), None),
        )
        .await
        .unwrap();
    assert!(!stale.succeeded);
    let cas = s
        .txn(
            Txn::new()
                .when(Compare::ModRevision(b("k"), 1))
                .put(b("k"), b("v4"), None),
        )
        .await
        .unwrap();
    assert!(cas.succeeded);
    assert!(
        s.txn(Txn::new().when(Compare::Exists(b("k"))).delete(b("k")))
            .await
            .unwrap()
            .succeeded
    );
    assert!(
        s.txn(
            Txn::new()
                .when(Compare::ModRevision(b("k"), 0))
                .put(b("k"), b("v5"), None)
        )
        .await
        .unwrap()
        .succeeded
    );
    let snap = s.snapshot(b"").await.unwrap();
    assert_eq!(
        snap.kvs.len(),
        1,
        "nothing of the failed txns applied: {:?}",
        snap.kvs
    );
    assert_eq!(snap.kvs[0].value, b("v5"));
    assert_eq!(
        snap.kvs[0].version, 1,
        "a re-created key starts a new version count"
    );
}

async fn deletes_prefixes_and_notes(open: Open) {
    let h = open(100);
    let s = &h.store;
    s.txn(
        Txn::new()
            .put(b("i/a/1"), b("x"), None)
            .put(b("i/a/2"), b("x"), None)
            .put(b("i/ab/1"), b("x"), None),
    )
    .await
    .unwrap();
    let missing = s.txn(Txn::new().delete(b("nope"))).await.unwrap();
    assert!(missing.succeeded);
    assert_eq!(missing.revision, 1, "deleting nothing makes no revision");
    let del = s.txn(Txn::new().delete_prefix(b("i/a/"))).await.unwrap();
    assert_eq!(del.revision, 2);
    assert_eq!(del.events.len(), 2);
    assert!(
        del.events
            .iter()
            .all(|e| e.kind == EventType::Delete && e.prev.is_some())
    );
    let noted = s.txn(Txn::new().note(b("custom"))).await.unwrap();
    assert_eq!(noted.revision, 3, "a note alone makes a change");
    let snap = s.snapshot(b"i/").await.unwrap();
    assert_eq!(snap.kvs.len(), 1);
    assert_eq!(snap.kvs[0].key, b("i/ab/1"));
    let mut w = s.watch(3).await.unwrap();
    let c = w.next().await.unwrap().unwrap();
    assert_eq!((c.revision, c.note.clone()), (3, Some(b("custom"))));
    assert!(
        s.txn(Txn::new().put(Bytes::new(), b("x"), None))
            .await
            .is_err()
    );
}

async fn watch_replays_then_follows_live_without_gaps(open: Open) {
    let h = open(1000);
    let s = h.store.clone();
    for i in 0..50 {
        s.txn(Txn::new().put(b(&format!("k{i}")), b("v"), None))
            .await
            .unwrap();
    }
    let mut w = s.watch(11).await.unwrap();
    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            for i in 50..300 {
                s.txn(Txn::new().put(b(&format!("k{i}")), b("v"), None))
                    .await
                    .unwrap();
            }
        })
    };
    for want in 11..=300u64 {
        let c = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(c.revision, want, "no gap, no repeat");
        assert_eq!(c.events[0].kv.key, b(&format!("k{}", want - 1)));
    }
    writer.await.unwrap();
}

async fn history_is_bounded_and_compacted_revisions_are_errors(open: Open) {
    let h = open(10);
    let s = &h.store;
    for i in 0..30 {
        s.txn(Txn::new().put(b("k"), b(&i.to_string()), None))
            .await
            .unwrap();
    }
    assert_eq!(s.oldest_revision(), 21);
    match s.watch(5).await {
        Err(StoreError::Compacted {
            requested: 5,
            oldest: 21,
        }) => {}
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a compacted revision must be an error, not silence"),
    }
    let mut w = s.watch(21).await.unwrap();
    assert_eq!(w.next().await.unwrap().unwrap().revision, 21);
    let mut future = s.watch(31).await.unwrap();
    s.txn(Txn::new().put(b("k"), b("new"), None)).await.unwrap();
    assert_eq!(future.next().await.unwrap().unwrap().revision, 31);
}

async fn leases_expire_and_delete_their_keys(open: Open) {
    let h = open(100);
    let s = &h.store;
    let unknown = s
        .txn(Txn::new().put(b("k"), b("v"), Some(LeaseId(999))))
        .await;
    assert_eq!(
        unknown.unwrap_err(),
        StoreError::LeaseNotFound(LeaseId(999))
    );
    assert_eq!(
        s.lease_keepalive(LeaseId(999)).await.unwrap_err(),
        StoreError::LeaseNotFound(LeaseId(999))
    );
    let lease = s.lease_grant(Duration::from_millis(300)).await.unwrap();
    let put = s
        .txn(
            Txn::new()
                .put(b("eph/1"), b("v"), Some(lease))
                .put(b("eph/2"), b("v"), Some(lease))
                .put(b("keep"), b("v"), None),
        )
        .await
        .unwrap();
    let mut w = s.watch(put.revision + 1).await.unwrap();
    let c = tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("lease expiry")
        .unwrap()
        .unwrap();
    assert_eq!(
        c.events.len(),
        2,
        "one change deletes every key of the lease"
    );
    assert!(c.events.iter().all(|e| e.kind == EventType::Delete));
    assert!(c.note.is_none(), "expiry carries no note");
    let keys: Vec<_> = s
        .snapshot(b"")
        .await
        .unwrap()
        .kvs
        .into_iter()
        .map(|k| k.key)
        .collect();
    assert_eq!(keys, vec![b("keep")]);
    assert!(
        s.lease_keepalive(lease).await.is_err(),
        "an expired lease is gone"
    );
}

async fn keepalive_extends_and_revoke_deletes(open: Open) {
    let h = open(100);
    let s = &h.store;
    let lease = s.lease_grant(Duration::from_millis(1500)).await.unwrap();
    s.txn(Txn::new().put(b("eph"), b("v"), Some(lease)))
        .await
        .unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(
            s.lease_keepalive(lease).await.unwrap(),
            Duration::from_millis(1500)
        );
    }
    assert_eq!(
        s.snapshot(b"eph").await.unwrap().kvs.len(),
        1,
        "kept alive past its TTL"
    );
    // Moving a key to another lease detaches it from the first.
    let other = s.lease_grant(Duration::from_secs(60)).await.unwrap();
    s.txn(Txn::new().put(b("moved"), b("v"), Some(lease)))
        .await
        .unwrap();
    s.txn(Txn::new().put(b("moved"), b("v2"), Some(other)))
        .await
        .unwrap();
    s.lease_revoke(lease).await.unwrap();
    let keys: Vec<_> = s
        .snapshot(b"")
        .await
        .unwrap()
        .kvs
        .into_iter()
        .map(|k| k.key)
        .collect();
    assert_eq!(keys, vec![b("moved")]);
    assert_eq!(
        s.lease_revoke(lease).await.unwrap_err(),
        StoreError::LeaseNotFound(lease)
    );
}

async fn concurrent_writers_each_get_their_own_revision(open: Open) {
    let h = open(10_000);
    let s = h.store.clone();
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let s = s.clone();
            tokio::spawn(async move {
                let mut revs = Vec::new();
                for i in 0..20 {
                    let r = s
                        .txn(Txn::new().put(b(&format!("t{t}/{i}")), b("v"), None))
                        .await
                        .unwrap();
                    revs.push(r.revision);
                }
                revs
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    assert_eq!(all, (1..=1280).collect::<Vec<u64>>());
    assert_eq!(s.snapshot(b"t").await.unwrap().kvs.len(), 1280);
}

async fn closed_store_refuses_writes(open: Open) {
    let h = open(100);
    let s = &h.store;
    s.txn(Txn::new().put(b("a"), b("1"), None)).await.unwrap();
    let mut w = s.watch(2).await.unwrap();
    s.close().await;
    assert_eq!(
        s.txn(Txn::new().put(b("a"), b("2"), None))
            .await
            .unwrap_err(),
        StoreError::Closed
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .unwrap()
            .is_none(),
        "watchers end on close"
    );
}

macro_rules! engines {
    ($($engine:ident),*) => {
        $(
            mod $engine {
                macro_rules! t {
                    ($name:ident) => {
                        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                        async fn $name() {
                            super::$name(super::$engine).await
                        }
                    };
                }
                t!(revisions_increase_by_one_per_change);
                t!(compare_and_set_conflicts_apply_nothing);
                t!(deletes_prefixes_and_notes);
                t!(watch_replays_then_follows_live_without_gaps);
                t!(history_is_bounded_and_compacted_revisions_are_errors);
                t!(leases_expire_and_delete_their_keys);
                t!(keepalive_extends_and_revoke_deletes);
                t!(concurrent_writers_each_get_their_own_revision);
                t!(closed_store_refuses_writes);
            }
        )*
    };
}

engines!(memory, embedded, log);

// What the durable engines promise across a restart.

async fn reopens_with_data_history_and_fresh_lease_ttls(open: OpenDir) {
    let dir = tempfile::tempdir().unwrap();
    let lease;
    {
        let s = open(dir.path(), 100).unwrap();
        assert!(
            open(dir.path(), 100).is_err(),
            "a data dir is used by one process"
        );
        lease = s.lease_grant(Duration::from_secs(3600)).await.unwrap();
        s.txn(Txn::new().put(b("persist"), b("v"), None))
            .await
            .unwrap();
        s.txn(Txn::new().put(b("eph"), b("v"), Some(lease)).note(b("n")))
            .await
            .unwrap();
        s.close().await;
    }
    let s = open(dir.path(), 100).unwrap();
    assert_eq!(s.current_revision(), 2);
    assert_eq!(s.snapshot(b"").await.unwrap().kvs.len(), 2);
    let mut w = s.watch(1).await.unwrap();
    assert_eq!(w.next().await.unwrap().unwrap().revision, 1);
    assert_eq!(
        w.next().await.unwrap().unwrap().note,
        Some(b("n")),
        "history survives"
    );
    assert_eq!(
        s.lease_keepalive(lease).await.unwrap(),
        Duration::from_secs(3600),
        "leases survive"
    );
    let next = s.lease_grant(Duration::from_secs(5)).await.unwrap();
    assert!(next.0 > lease.0, "lease ids are not reused");
    s.lease_revoke(lease).await.unwrap();
    assert_eq!(
        s.snapshot(b"").await.unwrap().kvs.len(),
        1,
        "a reopened lease still owns its keys"
    );
    s.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_reopens_with_data_history_and_fresh_lease_ttls() {
    reopens_with_data_history_and_fresh_lease_ttls(open_embedded).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_reopens_with_data_history_and_fresh_lease_ttls() {
    reopens_with_data_history_and_fresh_lease_ttls(open_log).await
}
