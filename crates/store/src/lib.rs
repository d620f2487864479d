//! muster's storage: one trait shaped after etcd's data model, and its engines.
//!
//! The model: a flat ordered key space; a store-wide revision that every change
//! increments by exactly one; atomic multi-key transactions guarded by
//! compares; leases with a TTL that delete the keys attached to them when they
//! expire; an ordered stream of changes from any retained revision; bounded
//! retention of that history, with an explicit [`StoreError::Compacted`] for a
//! revision no longer kept.
//!
//! Engines: [`memory::MemoryStore`] (tests, `--in-memory`),
//! [`embedded::EmbeddedStore`] (redb on disk, group commit) and
//! [`log::LogStore`] (state in memory, a write-ahead log and snapshots on
//! disk, group commit). A later etcd
//! engine implements the same trait; `tests/conformance.rs` runs one suite
//! against every engine.
//!
//! Architecture Invariant: this crate knows nothing of services, instances or
//! HTTP. Keys and values are bytes; the registry gives them meaning.
#![forbid(unsafe_code)]

mod apply;
mod codec;
pub mod embedded;
mod front;
mod lease;
pub mod log;
pub mod memory;
mod watch;

use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use embedded::{EmbeddedOptions, EmbeddedStore};
pub use log::{LogOptions, LogStore};
pub use memory::MemoryStore;
pub use watch::Watcher;

/// The store-wide revision. 0 is the empty store; the first change is 1.
pub type Revision = u64;

/// A lease: keys attached to it are deleted when it expires or is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub u64);

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A key with its value and bookkeeping, as etcd reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Bytes,
    pub value: Bytes,
    /// Revision of the change that created the key (since its last deletion).
    pub create_revision: Revision,
    /// Revision of the change that last wrote the key.
    pub mod_revision: Revision,
    /// Number of writes since creation, starting at 1.
    pub version: u64,
    pub lease: Option<LeaseId>,
}

/// A condition a transaction checks before applying its operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    Exists(Bytes),
    Missing(Bytes),
    /// The key's `mod_revision` equals this (0 means the key must not exist).
    ModRevision(Bytes, Revision),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: Bytes,
        value: Bytes,
        lease: Option<LeaseId>,
    },
    Delete(Bytes),
    DeletePrefix(Bytes),
}

/// An atomic write: if every compare holds, every op applies under one new
/// revision; otherwise nothing applies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
    /// Opaque bytes recorded with the change (why it happened: a
    /// deregistration's reason, a custom event). A transaction with a note
    /// makes a change even when its ops change nothing. (The etcd engine
    /// writes it as a reserved key in the same transaction.)
    pub note: Option<Bytes>,
}

impl Txn {
    pub fn new() -> Self {
        Txn::default()
    }
    pub fn when(mut self, c: Compare) -> Self {
        self.compares.push(c);
        self
    }
    pub fn put(
        mut self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        lease: Option<LeaseId>,
    ) -> Self {
        self.ops.push(Op::Put {
            key: key.into(),
            value: value.into(),
            lease,
        });
        self
    }
    pub fn delete(mut self, key: impl Into<Bytes>) -> Self {
        self.ops.push(Op::Delete(key.into()));
        self
    }
    pub fn delete_prefix(mut self, prefix: impl Into<Bytes>) -> Self {
        self.ops.push(Op::DeletePrefix(prefix.into()));
        self
    }
    pub fn note(mut self, note: impl Into<Bytes>) -> Self {
        self.note = Some(note.into());
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Put,
    Delete,
}

/// One key's change within a [`Change`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEvent {
    pub kind: EventType,
    /// For a delete: the key, an empty value and `mod_revision` = the change's revision.
    pub kv: KeyValue,
    /// The key as it was before this change, if it existed.
    pub prev: Option<KeyValue>,
}

/// Everything one revision changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub revision: Revision,
    /// Wall-clock time of the change, milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub events: Vec<KvEvent>,
    pub note: Option<Bytes>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResult {
    pub succeeded: bool,
    /// The revision this transaction made, or the current one if it made none.
    pub revision: Revision,
    /// The key changes it made (empty when the compares failed).
    pub events: Vec<KvEvent>,
}

/// All keys under a prefix, as of one revision.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub revision: Revision,
    pub kvs: Vec<KeyValue>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("revision {requested} is no longer retained; the oldest retained revision is {oldest}")]
    Compacted {
        requested: Revision,
        oldest: Revision,
    },
    #[error("lease {} not found (expired or revoked)", .0.0)]
    LeaseNotFound(LeaseId),
    #[error("the store cannot accept writes: {0}")]
    Unavailable(String),
    #[error("the store is closed")]
    Closed,
    #[error("the stored data is unreadable: {0}")]
    Corrupt(String),
    #[error("invalid request to the store: {0}")]
    Invalid(String),
}

/// The storage trait. Writes return once durable (per engine) and visible to
/// watchers; every read the registry serves comes from its own index, fed by
/// [`Store::watch`].
pub trait Store: Send + Sync + 'static {
    /// Applies a transaction atomically.
    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnResult>>;
    /// A consistent copy of every key under `prefix` and the revision it reflects.
    fn snapshot(&self, prefix: &[u8]) -> BoxFuture<'_, Result<Snapshot>>;
    /// The ordered changes from revision `from` on (inclusive), replaying the
    /// retained history first and then following live changes with no gap and
    /// no repeat. `Err(Compacted)` when `from` is older than what is retained.
    fn watch(&self, from: Revision) -> BoxFuture<'_, Result<Watcher>>;
    /// Creates a lease; it expires `ttl` after its grant or last keepalive.
    fn lease_grant(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId>>;
    /// Renews a lease without touching the disk; returns its TTL.
    fn lease_keepalive(&self, id: LeaseId) -> BoxFuture<'_, Result<Duration>>;
    /// Deletes the lease and every key attached to it, as one change.
    fn lease_revoke(&self, id: LeaseId) -> BoxFuture<'_, Result<()>>;
    /// The latest committed revision: at least that of every change already
    /// handed to a watcher (the feed relies on it at a subscriber's seam).
    fn current_revision(&self) -> Revision;
    /// The oldest revision [`Store::watch`] can still replay.
    fn oldest_revision(&self) -> Revision;
    /// Stops lease expiry and writes; later calls answer `Closed`.
    fn close(&self) -> BoxFuture<'_, ()>;
}

pub type DynStore = Arc<dyn Store>;

/// Wall-clock milliseconds for change timestamps.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `[prefix, prefix+1)`: the end of a prefix range, or `None` for "to the end".
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}
