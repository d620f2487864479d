//! Leases, shared by the engines: TTLs and deadlines in memory, the keys
//! attached to each lease, and the expiry task.
//!
//! Keepalives only move a deadline in memory. Expiry uses a lazy min-heap: a
//! lease has one heap entry at or before its real deadline; when an entry
//! comes due and the lease was renewed meanwhile, it is pushed back with the
//! real deadline. So a keepalive is O(1) and the heap holds one entry per lease.

use crate::{BoxFuture, LeaseId};
use bytes::Bytes;
use parking_lot::Mutex;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
pub(crate) struct Lease {
    pub ttl: Duration,
    pub deadline: Instant,
    pub keys: HashSet<Bytes>,
}

#[derive(Default)]
pub(crate) struct Leases {
    pub map: HashMap<LeaseId, Lease>,
    heap: BinaryHeap<Reverse<(Instant, LeaseId)>>,
}

impl Leases {
    /// Inserts a lease whose TTL starts now (a grant, or reopening after a restart).
    pub fn insert(&mut self, id: LeaseId, ttl: Duration) {
        let deadline = Instant::now() + ttl;
        self.map.insert(
            id,
            Lease {
                ttl,
                deadline,
                keys: HashSet::new(),
            },
        );
        self.heap.push(Reverse((deadline, id)));
    }

    pub fn keepalive(&mut self, id: LeaseId) -> Option<Duration> {
        let l = self.map.get_mut(&id)?;
        l.deadline = Instant::now() + l.ttl;
        Some(l.ttl)
    }

    /// Puts back a lease exactly as it was (undoing a revoke whose batch
    /// failed to reach the disk).
    pub fn restore(&mut self, id: LeaseId, lease: Lease) {
        self.heap.push(Reverse((lease.deadline, id)));
        self.map.insert(id, lease);
    }

    pub fn remove(&mut self, id: LeaseId) -> Option<Lease> {
        self.map.remove(&id)
    }

    pub fn attach(&mut self, id: LeaseId, key: &Bytes) {
        if let Some(l) = self.map.get_mut(&id) {
            l.keys.insert(key.clone());
        }
    }

    pub fn detach(&mut self, id: LeaseId, key: &[u8]) {
        if let Some(l) = self.map.get_mut(&id) {
            l.keys.remove(key);
        }
    }

    pub fn is_expired(&self, id: LeaseId, now: Instant) -> bool {
        self.map.get(&id).is_some_and(|l| l.deadline <= now)
    }

    /// Pops the leases due at `now` and returns them with the next deadline.
    fn take_due(&mut self, now: Instant) -> (Vec<LeaseId>, Option<Instant>) {
        let mut due = Vec::new();
        while let Some(Reverse((at, id))) = self.heap.peek().copied() {
            if at > now {
                return (due, Some(at));
            }
            self.heap.pop();
            match self.map.get(&id) {
                None => {}
                Some(l) if l.deadline > now => self.heap.push(Reverse((l.deadline, id))),
                Some(_) => due.push(id),
            }
        }
        (due, None)
    }

    /// Re-arms a lease whose revocation failed, so expiry retries later.
    fn retry_later(&mut self, id: LeaseId, at: Instant) {
        if self.map.contains_key(&id) {
            self.heap.push(Reverse((at, id)));
        }
    }
}

/// The leases of one engine, with the wake-up for the expiry task.
#[derive(Default)]
pub(crate) struct LeaseClock {
    pub leases: Mutex<Leases>,
    /// Woken when a lease with a possibly earlier deadline appears.
    pub changed: Notify,
}

/// Sleeps until the next lease deadline and asks the engine to expire what is
/// due. `expire` re-checks the deadline under the engine's write lock, so a
/// keepalive that wins the race keeps the lease.
pub(crate) fn spawn_expiry<F>(clock: Arc<LeaseClock>, cancel: CancellationToken, expire: F)
where
    F: Fn(LeaseId) -> BoxFuture<'static, bool> + Send + Sync + 'static,
{
    tokio::spawn(async move {
        loop {
            let (due, next) = clock.leases.lock().take_due(Instant::now());
            for id in due {
                if !expire(id).await {
                    clock
                        .leases
                        .lock()
                        .retry_later(id, Instant::now() + Duration::from_secs(1));
                    clock.changed.notify_one();
                }
            }
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sleep => {}
                _ = clock.changed.notified() => {}
                _ = cancel.cancelled() => return,
            }
        }
    });
}
