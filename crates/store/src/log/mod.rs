//! The log engine: authoritative state in memory, durability from an
//! append-only write-ahead log, periodic snapshots to bound the log (the way
//! etcd and Consul keep their state).
//!
//! One writer thread takes whatever commands have queued (group commit),
//! applies them to the in-memory map through an undo log (`kvmap::Staged`),
//! appends one framed, checksummed WAL record for the whole batch and
//! `fdatasync`s it; only then does it publish the changes and answer. If the
//! append fails, the batch is undone in memory and cut off the file, every
//! caller gets `Unavailable`, and the next batch tries again.
//!
//! When the WAL outgrows `compact_bytes` (and the last snapshot), the writer
//! starts a new WAL generation, freezes the map (an `Arc`, O(1)), copies the
//! lease table and the retained history (shared blocks: one reference per
//! block), and a background thread writes the snapshot; writes meanwhile land
//! in an overlay. Older files are deleted once the snapshot is durable.
//!
//! Files in the data dir: `LOCK_FILE` (marks the dir as this engine's and
//! holds the process lock), `snap-G.snap`, `wal-G.log`. Leases: as in the
//! embedded engine, deadlines live only in memory and restart on open.

mod frame;
mod kvmap;
mod recover;
mod retained;
mod snapshot;
mod wal;

use crate::apply::{Applied, apply_txn, revoke_lease};
use crate::front::{self, Reply, answer};
use crate::lease::{LeaseClock, Leases, spawn_expiry};
use crate::watch::{History, Watcher};
use crate::{
    BoxFuture, Change, LeaseId, Result, Revision, Snapshot, Store, StoreError, Txn, TxnResult,
    now_ms,
};
use kvmap::{KvMap, Staged};
use parking_lot::Mutex;
use retained::Retained;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;
use tokio::sync::{broadcast, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wal::{Record, Wal};

/// Marks a data dir as the log engine's and holds its process lock.
pub const LOCK_FILE: &str = "muster-log.lock";

#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Revisions kept for watch replay and the event log.
    pub retain: usize,
    /// Most commands applied in one commit.
    pub max_batch: usize,
    /// A WAL bigger than this (and than the last snapshot) is compacted.
    pub compact_bytes: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            retain: crate::memory::DEFAULT_RETAIN,
            max_batch: 1024,
            compact_bytes: 64 << 20,
        }
    }
}

enum Cmd {
    Txn(Txn, Reply<TxnResult>),
    PersistGrant(LeaseId, Duration),
    Revoke {
        id: LeaseId,
        only_if_expired: bool,
        reply: Reply<bool>,
    },
    /// Compact now, whatever the WAL's size (tests and benchmarks); answered
    /// with how long writers were held up.
    Compact(Reply<Duration>),
}

struct Shared {
    dir: PathBuf,
    /// Held by the writer for a whole batch, fsync included, so a snapshot
    /// read never sees a write that is not durable. Never held across `.await`.
    kv: Mutex<KvMap>,
    history: Mutex<Retained>,
    commands: front::Commands<Cmd>,
    leases: Arc<LeaseClock>,
    revision: AtomicU64,
    oldest: AtomicU64,
    next_lease: AtomicU64,
    live: Mutex<Option<broadcast::Sender<Arc<Change>>>>,
    cancel: CancellationToken,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Holds the advisory lock on `LOCK_FILE` until the store is closed.
    lock: Mutex<Option<File>>,
}

/// The log engine. Cheap to clone; clones share the store.
#[derive(Clone)]
pub struct LogStore(Arc<Shared>);

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl LogStore {
    /// Opens (or creates) the store in `dir`. Must be called inside a tokio
    /// runtime. Fails if another process has the directory open, if it holds
    /// another engine's data, or if acknowledged data is damaged.
    pub fn open(dir: &Path, opts: LogOptions) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| unavailable(format!("cannot create data dir {}: {e}", dir.display())))?;
        let redb = dir.join(crate::embedded::DB_FILE);
        if redb.exists() {
            return Err(StoreError::Invalid(format!(
                "{} holds the redb engine's store ({}); open it with --store-engine redb",
                dir.display(),
                redb.display()
            )));
        }
        let lock_path = dir.join(LOCK_FILE);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| unavailable(format!("cannot open {}: {e}", lock_path.display())))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(unavailable(format!(
                    "{} is in use by another muster process",
                    dir.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(unavailable(format!(
                    "cannot lock {}: {e}",
                    lock_path.display()
                )));
            }
        }
        let started = Instant::now();
        let r = recover::recover(dir, opts.retain)?;
        let mut leases = Leases::default();
        for (id, ttl) in &r.leases {
            leases.insert(*id, *ttl);
        }
        let keys = r.map.len();
        let kv = KvMap::from_map(r.map);
        if !leases.map.is_empty() {
            kv.for_each(|key, e| {
                if e.lease != 0 {
                    leases.attach(LeaseId(e.lease), &bytes::Bytes::copy_from_slice(key));
                }
            });
        }
        tracing::info!(
            dir = %dir.display(),
            revision = r.revision,
            keys,
            took_ms = started.elapsed().as_millis() as u64,
            "log store recovered"
        );
        let oldest = r.history.front().map_or(r.revision + 1, |c| c.revision);
        let (tx, rx) = mpsc::channel();
        let (live, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            kv: Mutex::new(kv),
            history: Mutex::new(r.history),
            commands: Mutex::new(Some(tx)),
            leases: Arc::new(LeaseClock {
                leases: Mutex::new(leases),
                changed: Default::default(),
            }),
            revision: AtomicU64::new(r.revision),
            oldest: AtomicU64::new(oldest),
            next_lease: AtomicU64::new(r.next_lease.max(1)),
            live: Mutex::new(Some(live)),
            cancel: CancellationToken::new(),
            writer: Mutex::new(None),
            lock: Mutex::new(Some(lock)),
        });
        let writer = Writer {
            shared: shared.clone(),
            opts,
            wal: r.wal,
            generation: r.generation,
            snapshot_bytes: r.snapshot_bytes,
            unpersisted: Vec::new(),
            compaction: None,
            retry_at: 0,
        };
        let handle = std::thread::Builder::new()
            .name("muster-log-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(unavailable)?;
        *shared.writer.lock() = Some(handle);
        let store = LogStore(shared);
        spawn_expiry(
            store.0.leases.clone(),
            store.0.cancel.clone(),
            front::expire_via(
                Arc::downgrade(&store.0),
                |s| &s.commands,
                |id, reply| Cmd::Revoke {
                    id,
                    only_if_expired: true,
                    reply,
                },
            ),
        );
        Ok(store)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.0.dir
    }

    /// Writes a snapshot and starts a new WAL now; returns how long writers
    /// were held up (the snapshot itself is written in the background).
    pub async fn compact(&self) -> Result<Duration> {
        let (reply, rx) = oneshot::channel();
        self.send(Cmd::Compact(reply))?;
        answer(rx).await
    }

    fn send(&self, cmd: Cmd) -> Result<()> {
        front::send(&self.0.commands, cmd)
    }
}

impl History for Shared {
    fn read(&self, from: Revision, max: usize) -> Result<Vec<Arc<Change>>> {
        let h = self.history.lock();
        let oldest = h
            .front()
            .map_or(self.revision.load(Ordering::Acquire) + 1, |c| c.revision);
        if from < oldest {
            return Err(StoreError::Compacted {
                requested: from,
                oldest,
            });
        }
        let skip = usize::try_from(from - oldest).unwrap_or(usize::MAX);
        Ok(h.iter_from(skip).take(max).cloned().collect())
    }
    fn current(&self) -> Revision {
        self.revision.load(Ordering::Acquire)
    }
}

impl Store for LogStore {
    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnResult>> {
        front::request(&self.0.commands, |reply| Cmd::Txn(txn, reply))
    }

    fn snapshot(&self, prefix: &[u8]) -> BoxFuture<'_, Result<Snapshot>> {
        let r = if self.0.commands.lock().is_none() {
            Err(StoreError::Closed)
        } else {
            let kv = self.0.kv.lock();
            Ok(Snapshot {
                revision: self.0.revision.load(Ordering::Acquire),
                kvs: kv.range(prefix),
            })
        };
        Box::pin(async move { r })
    }

    fn watch(&self, from: Revision) -> BoxFuture<'_, Result<Watcher>> {
        let w = front::subscribe(&self.0.live)
            .and_then(|live| Watcher::new(from, live, self.0.clone()));
        Box::pin(async move { w })
    }

    /// Answered before its record is durable; see [`front::grant`].
    fn lease_grant(&self, ttl: Duration) -> BoxFuture<'_, Result<LeaseId>> {
        let s = &self.0;
        let r = front::grant(
            &s.commands,
            &s.next_lease,
            &s.leases,
            ttl,
            Cmd::PersistGrant,
        );
        Box::pin(async move { r })
    }

    fn lease_keepalive(&self, id: LeaseId) -> BoxFuture<'_, Result<Duration>> {
        let r = front::keepalive(&self.0.commands, &self.0.leases, id);
        Box::pin(async move { r })
    }

    fn lease_revoke(&self, id: LeaseId) -> BoxFuture<'_, Result<()>> {
        front::revoke(&self.0.commands, id, |reply| Cmd::Revoke {
            id,
            only_if_expired: false,
            reply,
        })
    }

    fn current_revision(&self) -> Revision {
        self.0.revision.load(Ordering::Acquire)
    }

    fn oldest_revision(&self) -> Revision {
        self.0.oldest.load(Ordering::Acquire)
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.0.cancel.cancel();
            // Dropping the sender lets the writer drain what is queued,
            // finish a running compaction and exit.
            self.0.commands.lock().take();
            let handle = self.0.writer.lock().take();
            if let Some(h) = handle {
                let _ = tokio::task::spawn_blocking(move || h.join()).await;
            }
            self.0.live.lock().take();
            // Another process may open the dir now, even if watchers linger.
            self.0.lock.lock().take();
        })
    }
}

/// A snapshot being written in the background.
struct Compaction {
    generation: u64,
    handle: std::thread::JoinHandle<std::io::Result<u64>>,
}

struct Writer {
    shared: Arc<Shared>,
    opts: LogOptions,
    wal: Wal,
    generation: u64,
    snapshot_bytes: u64,
    /// Grants whose record failed to reach the disk: retried with the next batch.
    unpersisted: Vec<(LeaseId, Duration)>,
    compaction: Option<Compaction>,
    /// After a failed attempt to start a compaction, the WAL size to retry at.
    retry_at: u64,
}

/// An answer held back until the batch is durable.
enum Pending {
    Txn(Reply<TxnResult>, Result<TxnResult>),
    Revoke(Reply<bool>, Result<bool>),
}

impl Pending {
    fn fail(self, e: StoreError) {
        match self {
            Pending::Txn(r, _) => drop(r.send(Err(e))),
            Pending::Revoke(r, _) => drop(r.send(Err(e))),
        }
    }
    fn send(self) {
        match self {
            Pending::Txn(r, v) => drop(r.send(v)),
            Pending::Revoke(r, v) => drop(r.send(v)),
        }
    }
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < self.opts.max_batch {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            self.commit_batch(batch);
            self.reap_compaction(false);
            if self.compaction.is_none()
                && self.wal.good > self.opts.compact_bytes
                && self.wal.good > self.snapshot_bytes
                && self.wal.good >= self.retry_at
                && let Err(e) = self.start_compaction()
            {
                tracing::error!(error = %e, "cannot start a compaction; will retry");
            }
        }
        self.reap_compaction(true);
    }

    /// Collects a finished snapshot (or waits for it, when closing): removes
    /// the files it replaces and folds the overlay back into the map.
    fn reap_compaction(&mut self, wait: bool) {
        let Some(c) = &self.compaction else { return };
        if !wait && !c.handle.is_finished() {
            return;
        }
        let Some(c) = self.compaction.take() else {
            return;
        };
        match c.handle.join() {
            Ok(Ok(size)) => {
                self.snapshot_bytes = size;
                let dir = &self.shared.dir;
                if let Ok(entries) = std::fs::read_dir(dir) {
                    for e in entries.flatten() {
                        let name = e.file_name().to_string_lossy().into_owned();
                        if let Some((_, g)) = frame::parse_name(&name)
                            && g < c.generation
                        {
                            let _ = std::fs::remove_file(e.path());
                        }
                    }
                }
                tracing::info!(
                    generation = c.generation,
                    bytes = size,
                    "snapshot written; older WAL removed"
                );
            }
            Ok(Err(e)) => {
                tracing::error!(generation = c.generation, error = %e, "snapshot failed; the WAL is kept and replayed instead");
                self.retry_at = self.wal.good + self.opts.compact_bytes / 4;
            }
            Err(_) => tracing::error!("snapshot thread panicked"),
        }
        self.shared.kv.lock().thaw();
    }

    /// Starts a new WAL generation and writes the state as of its start in
    /// the background; returns how long the writer held the state.
    fn start_compaction(&mut self) -> Result<Duration> {
        self.reap_compaction(true);
        let next = self.generation + 1;
        let wal = Wal::create(&self.shared.dir, next).map_err(|e| {
            self.retry_at = self.wal.good + self.opts.compact_bytes / 4;
            unavailable(format!("cannot start a new WAL: {e}"))
        })?;
        let held = Instant::now();
        let image = {
            let mut kv = self.shared.kv.lock();
            let leases = self.shared.leases.leases.lock();
            snapshot::Image {
                revision: self.shared.revision.load(Ordering::Acquire),
                next_lease: self.shared.next_lease.load(Ordering::Acquire),
                leases: leases.map.iter().map(|(id, l)| (*id, l.ttl)).collect(),
                map: kv.freeze(),
                history: self.shared.history.lock().clone(),
            }
        };
        let held = held.elapsed();
        self.wal = wal;
        self.generation = next;
        let dir = self.shared.dir.clone();
        let handle = std::thread::Builder::new()
            .name("muster-log-snapshot".into())
            .spawn(move || {
                let started = Instant::now();
                let r = snapshot::write(&dir, next, &image);
                tracing::info!(
                    generation = next,
                    keys = image.map.len(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "snapshot write finished"
                );
                r
            })
            .map_err(unavailable)?;
        self.compaction = Some(Compaction {
            generation: next,
            handle,
        });
        tracing::info!(
            generation = next,
            held_us = held.as_micros() as u64,
            "compaction started"
        );
        Ok(held)
    }

    fn commit_batch(&mut self, batch: Vec<Cmd>) {
        let mut pending = Vec::with_capacity(batch.len());
        let mut compacts = Vec::new();
        let base = self.shared.revision.load(Ordering::Acquire);
        let mut rev = base;
        let mut changes = Vec::new();
        let mut record = Record::new(self.shared.next_lease.load(Ordering::Acquire));
        let mut grants = std::mem::take(&mut self.unpersisted);
        let mut kv = self.shared.kv.lock();
        let mut staged = Staged::new(&mut kv);
        let mut leases = self.shared.leases.leases.lock();
        let now = Instant::now();
        let at = now_ms();
        for cmd in &batch {
            if let Cmd::PersistGrant(id, ttl) = cmd {
                grants.push((*id, *ttl));
            }
        }
        // Revoked or expired before reaching the disk: nothing to keep.
        grants.retain(|(id, _)| leases.map.contains_key(id));
        for (id, ttl) in &grants {
            record.grant(*id, *ttl);
        }
        for cmd in batch {
            match cmd {
                Cmd::PersistGrant(..) => {}
                Cmd::Compact(reply) => compacts.push(reply),
                Cmd::Txn(txn, reply) => {
                    let result =
                        apply_txn(&mut staged, &mut leases, &txn, rev + 1, at).map(|applied| {
                            let succeeded = !matches!(applied, Applied::Failed);
                            let mut events = Vec::new();
                            if let Applied::Changed(c) = applied {
                                rev += 1;
                                record.change(&c);
                                events = c.events.clone();
                                changes.push(Arc::new(c));
                            }
                            TxnResult {
                                succeeded,
                                revision: rev,
                                events,
                            }
                        });
                    pending.push(Pending::Txn(reply, result));
                }
                Cmd::Revoke {
                    id,
                    only_if_expired,
                    reply,
                } => {
                    let result = if only_if_expired && !leases.is_expired(id, now) {
                        Ok(false)
                    } else {
                        staged.save_lease(&leases, id);
                        revoke_lease(&mut staged, &mut leases, id, rev + 1, at).map(|applied| {
                            match applied {
                                None => false,
                                Some(applied) => {
                                    record.lease_gone(id);
                                    if let Applied::Changed(c) = applied {
                                        rev += 1;
                                        record.change(&c);
                                        changes.push(Arc::new(c));
                                    }
                                    true
                                }
                            }
                        })
                    };
                    pending.push(Pending::Revoke(reply, result));
                }
            }
        }
        drop(leases);
        if !record.is_empty() {
            let bytes = record.finish();
            if let Err(e) = self.wal.append(&bytes) {
                let err = StoreError::Unavailable(format!(
                    "cannot write the WAL {}: {e}; nothing in this batch was applied",
                    self.wal.path.display()
                ));
                tracing::error!(error = %err, "WAL append failed; the batch is undone and refused");
                staged.undo(&mut self.shared.leases.leases.lock());
                drop(kv);
                self.unpersisted = grants;
                for p in pending {
                    p.fail(err.clone());
                }
                for c in compacts {
                    let _ = c.send(Err(err.clone()));
                }
                return;
            }
        }
        drop(staged);
        {
            let mut h = self.shared.history.lock();
            for c in &changes {
                h.push_back(c.clone());
            }
            h.keep_last(self.opts.retain.max(1));
            let oldest = h.front().map_or(rev + 1, |c| c.revision);
            self.shared.oldest.store(oldest, Ordering::Release);
            self.shared.revision.store(rev, Ordering::Release);
        }
        drop(kv);
        if let Some(live) = &*self.shared.live.lock() {
            for c in changes {
                let _ = live.send(c);
            }
        }
        for p in pending {
            p.send();
        }
        for c in compacts {
            let _ = c.send(self.start_compaction());
        }
    }
}
