//! The in-memory engine: for tests and `--in-memory`. Same semantics as the
//! embedded engine, nothing on disk.

use crate::apply::{Applied, KvTable, apply_txn, revoke_lease};
use crate::lease::{LeaseClock, spawn_expiry};
use crate::watch::{History, Watcher};
use crate::{
    BoxFuture, Change, KeyValue, LeaseId, Result, Revision, Snapshot, Store, StoreError, Txn,
    TxnResult, now_ms, prefix_end,
};
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Default number of revisions kept for watch replay.
pub const DEFAULT_RETAIN: usize = 100_000;

struct State {
    kv: BTreeMap<Bytes, KeyValue>,
    history: VecDeque<Arc<Change>>,
    next_lease: u64,
    /// Dropped on close, which ends every watcher.
    live: Option<broadcast::Sender<Arc<Change>>>,
}

struct Inner {
    /// Held for the whole of a write so revisions are assigned in commit order;
    /// never held across an `.await`.
    state: Mutex<State>,
    leases: Arc<LeaseClock>,
    revision: AtomicU64,
    retain: usize,
    closed: AtomicBool,
    cancel: CancellationToken,
}

/// The in-memory engine. Cheap to clone; clones share the store.
#[derive(Clone)]
pub struct MemoryStore(Arc<Inner>);

struct MemTable<'a>(&'a mut BTreeMap<Bytes, KeyValue>);

impl KvTable for MemTable<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<KeyValue>> {
        Ok(self.0.get(key).cloned())
    }
    fn put(&mut self, kv: &KeyValue) -> Result<()> {
        self.0.insert(kv.key.clone(), kv.clone());
        Ok(())
    }
    fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.0.remove(key);
        Ok(())
    }
    fn keys_with_prefix(&mut self, prefix: &[u8]) -> Result<Vec<KeyValue>> {
        Ok(range(self.0, prefix).cloned().collect())
    }
}

fn range<'a>(
    kv: &'a BTreeMap<Bytes, KeyValue>,
    prefix: &[u8],
) -> impl Iterator<Item = &'a KeyValue> {
    let start = Bound::Included(Bytes::copy_from_slice(prefix));
    let end = prefix_end(prefix).map_or(Bound::Unbounded, |e| Bound::Excluded(Bytes::from(e)));
    kv.range((start, end)).map(|(_, v)| v)
}

impl MemoryStore {
    /// Opens an empty store keeping the last `retain` revisions. Must be called
    /// inside a tokio runtime (lease expiry runs as a task).
    pub fn new(retain: usize) -> Self {
        let (live, _) = broadcast::channel(4096);
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                kv: BTreeMap::new(),
                history: VecDeque::new(),
                next_lease: 1,
                live: Some(live),
            }),
            leases: Arc::new(LeaseClock::default()),
            revision: AtomicU64::new(0),
            retain: retain.max(1),
            closed: AtomicBool::new(false),
            cancel: CancellationToken::new(),
        });
        let weak = Arc::downgrade(&inner);
        spawn_expiry(inner.leases.clone(), inner.cancel.clone(), move |id| {
            let weak = weak.clone();
            Box::pin(async move {
                match weak.upgrade() {
                    Some(inner) => MemoryStore(inner).expire(id).is_ok(),
                    None => true,
                }
            })
        });
        MemoryStore(inner)
    }

    fn check_open(&self) -> Result<()> {
        if self.0.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        Ok(())
    }

    /// Runs one write under the state lock and publishes its change.
    fn write<T>(
        &self,
        f: impl FnOnce(
            &mut MemTable<'_>,
            &mut crate::lease::Leases,
            Revision,
            u64,
        ) -> Result<(T, Option<Applied>)>,
    ) -> Result<(T, Revision, Vec<crate::KvEvent>, bool)> {
        self.check_open()?;
        let mut st = self.0.state.lock();
        let rev = self.0.revision.load(Ordering::Acquire) + 1;
        let mut leases = self.0.leases.leases.lock();
        let (out, applied) = f(&mut MemTable(&mut st.kv), &mut leases, rev, now_ms())?;
        drop(leases);
        match applied {
            Some(Applied::Changed(change)) => {
                let change = Arc::new(change);
                st.history.push_back(change.clone());
                while st.history.len() > self.0.retain {
                    st.history.pop_front();
                }
                self.0.revision.store(rev, Ordering::Release);
                let events = change.events.clone();
                if let Some(live) = &st.live {
                    let _ = live.send(change);
                }
                Ok((out, rev, events, true))
            }
            Some(Applied::Failed) => Ok((out, rev - 1, Vec::new(), false)),
            Some(Applied::Unchanged) | None => Ok((out, rev - 1, Vec::new(), true)),
        }
    }

    fn expire(&self, id: LeaseId) -> Result<()> {
        self.write(|t, leases, rev, at| {
            if !leases.is_expired(id, Instant::now()) {
                return Ok(((), None));
            }
            Ok(((), revoke_lease(t, leases, id, rev, at)?))
        })
        .map(|_| ())
    }
}

impl History for Inner {
    fn read(&self, from: Revision, max: usize) -> Result<Vec<Arc<Change>>> {
        let st = self.state.lock();
        let oldest = st
            .history
            .front()
            .map_or(self.revision.load(Ordering::Acquire) + 1, |c| c.revision);
        if from < oldest {
            return Err(StoreError::Compacted {
                requested: from,
                oldest,
            });
        }
        let skip = (from - oldest) as usize;
        Ok(st.history.iter().skip(skip).take(max).cloned().collect())
    }
    fn current(&self) -> Revision {
        self.revision.load(Ordering::Acquire)
    }
}

impl Store for MemoryStore {
    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnResult>> {
        let r = self
            .write(|t, leases, rev, at| Ok(((), Some(apply_txn(t, leases, &txn, rev, at)?))))
            .map(|((), revision, events, succeeded)| TxnResult {
                succeeded,
                revision,
                events,
            });
        Box::pin(async move { r })
    }

    fn snapshot(&self, prefix: &[u8]) -> BoxFuture<'_, Result<Snapshot>> {
        let st = self.0.state.lock();
        let snap = Snapshot {
            revision: self.0.revision.load(Ordering::Acquire),
            kvs: range(&st.kv, prefix).cloned().collect(),
        };
        Box::pin(async move { Ok(snap) })
    }

    fn watch(&self, from: Revision) -> BoxFuture<'_, Result<Watcher>> {
        let live = self.0.state.lock().live.as_ref().map(|l| l.subscribe());
        let w = match live {
            Some(live) => Watcher::new(from, live, self.0.clone()),
            None => Err(StoreError::Closed),
        };
        Box::pin(async move { w })
    }

    fn lease_grant(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId>> {
        let r = self.check_open().map(|()| {
            let mut st = self.0.state.lock();
            let id = LeaseId(st.next_lease);
            st.next_lease += 1;
            self.0.leases.leases.lock().insert(id, ttl);
            self.0.leases.changed.notify_one();
            id
        });
        Box::pin(async move { r })
    }

    fn lease_keepalive(&self, id: LeaseId) -> BoxFuture<'_, Result<Duration>> {
        let r = self.check_open().and_then(|()| {
            self.0
                .leases
                .leases
                .lock()
                .keepalive(id)
                .ok_or(StoreError::LeaseNotFound(id))
        });
        Box::pin(async move { r })
    }

    fn lease_revoke(&self, id: LeaseId) -> BoxFuture<'_, Result<()>> {
        let r = self
            .write(|t, leases, rev, at| {
                let applied = revoke_lease(t, leases, id, rev, at)?;
                Ok((applied.is_some(), applied))
            })
            .and_then(|(found, ..)| {
                if found {
                    Ok(())
                } else {
                    Err(StoreError::LeaseNotFound(id))
                }
            });
        Box::pin(async move { r })
    }

    fn current_revision(&self) -> Revision {
        self.0.revision.load(Ordering::Acquire)
    }

    fn oldest_revision(&self) -> Revision {
        let st = self.0.state.lock();
        st.history
            .front()
            .map_or(self.0.revision.load(Ordering::Acquire) + 1, |c| c.revision)
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.0.closed.store(true, Ordering::Release);
        self.0.cancel.cancel();
        self.0.state.lock().live = None;
        Box::pin(async {})
    }
}
