//! The embedded engine: redb on disk, one writer thread, group commit.
//!
//! Every write is a command on a channel to the writer thread. The thread
//! takes whatever has queued up (up to `max_batch`), applies it in one redb
//! write transaction with `Durability::Immediate` (fsync), and only then
//! publishes the changes and answers. While one batch is being fsynced the
//! next one queues, so concurrent writers share commits and durable
//! throughput follows the CPU, not the disk's fsync rate.
//!
//! Tables: `kv` (key → versioned record), `history` (revision → change, the
//! last `retain` revisions), `leases` (id → TTL), `meta` (format, revision,
//! next lease id). Lease deadlines live only in memory: after a restart every
//! lease starts a fresh TTL, as etcd does on a leader change. Keepalives never
//! touch the disk.

use crate::apply::{Applied, KvTable, apply_txn, revoke_lease};
use crate::codec::{FORMAT, decode_change, decode_kv, encode_change, encode_kv, kv_lease};
use crate::front::{self, Reply};
use crate::lease::{LeaseClock, Leases, spawn_expiry};
use crate::watch::{History, Watcher};
use crate::{
    BoxFuture, Change, KeyValue, LeaseId, Result, Revision, Snapshot, Store, StoreError, Txn,
    TxnResult, now_ms, prefix_end,
};
use parking_lot::{Mutex, RwLock};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("history");
const LEASES: TableDefinition<u64, u64> = TableDefinition::new("leases");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The file inside the data directory.
pub const DB_FILE: &str = "muster.redb";

#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Revisions kept for watch replay and the event log.
    pub retain: usize,
    /// redb's page cache.
    pub cache_bytes: usize,
    /// Most commands applied in one commit.
    pub max_batch: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            retain: crate::memory::DEFAULT_RETAIN,
            cache_bytes: 64 << 20,
            max_batch: 1024,
        }
    }
}

enum Cmd {
    Txn(Txn, Reply<TxnResult>),
    /// Persist a lease already live in memory (see `lease_grant`).
    PersistGrant(LeaseId, Duration),
    /// Revoke a lease; with `only_if_expired`, only if its deadline has passed
    /// (the expiry task's request, which a late keepalive may have overtaken).
    Revoke {
        id: LeaseId,
        only_if_expired: bool,
        reply: Reply<bool>,
    },
}

struct Shared {
    path: PathBuf,
    /// `None` once closed; reads clone the `Arc` and never hold the lock for long.
    db: RwLock<Option<Arc<Database>>>,
    /// `None` once closed.
    commands: front::Commands<Cmd>,
    leases: Arc<LeaseClock>,
    revision: AtomicU64,
    oldest: AtomicU64,
    next_lease: AtomicU64,
    /// `None` once closed, which ends every watcher.
    live: Mutex<Option<broadcast::Sender<Arc<Change>>>>,
    cancel: CancellationToken,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// The embedded engine. Cheap to clone; clones share the store.
#[derive(Clone)]
pub struct EmbeddedStore(Arc<Shared>);

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

struct RedbTable<'a, 't>(&'a mut redb::Table<'t, &'static [u8], &'static [u8]>);

impl KvTable for RedbTable<'_, '_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<KeyValue>> {
        match self.0.get(key).map_err(unavailable)? {
            Some(v) => Ok(Some(decode_kv(key, v.value())?)),
            None => Ok(None),
        }
    }
    fn put(&mut self, kv: &KeyValue) -> Result<()> {
        self.0
            .insert(kv.key.as_ref(), encode_kv(kv).as_slice())
            .map_err(unavailable)?;
        Ok(())
    }
    fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.0.remove(key).map_err(unavailable)?;
        Ok(())
    }
    fn keys_with_prefix(&mut self, prefix: &[u8]) -> Result<Vec<KeyValue>> {
        scan_prefix(&*self.0, prefix)
    }
}

fn scan_prefix(
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    prefix: &[u8],
) -> Result<Vec<KeyValue>> {
    let end = prefix_end(prefix);
    let iter = match &end {
        Some(end) => t.range::<&[u8]>(prefix..end.as_slice()),
        None => t.range::<&[u8]>(prefix..),
    }
    .map_err(unavailable)?;
    let mut out = Vec::new();
    for item in iter {
        let (k, v) = item.map_err(unavailable)?;
        out.push(decode_kv(k.value(), v.value())?);
    }
    Ok(out)
}

/// Reads the leases table and attaches every key that names a lease; deadlines restart now.
fn load_leases(db: &Database) -> Result<Leases> {
    let rtx = db.begin_read().map_err(unavailable)?;
    let lt = rtx.open_table(LEASES).map_err(unavailable)?;
    let mut leases = Leases::default();
    for item in lt.iter().map_err(unavailable)? {
        let (id, ttl) = item.map_err(unavailable)?;
        leases.insert(LeaseId(id.value()), Duration::from_millis(ttl.value()));
    }
    if !leases.map.is_empty() {
        let kv = rtx.open_table(KV).map_err(unavailable)?;
        for item in kv.iter().map_err(unavailable)? {
            let (k, v) = item.map_err(unavailable)?;
            if let Some(l) = kv_lease(v.value())? {
                leases.attach(l, &bytes::Bytes::copy_from_slice(k.value()));
            }
        }
    }
    Ok(leases)
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`. Must be called inside a tokio
    /// runtime. Fails if another process has the directory open.
    pub fn open(dir: &Path, opts: EmbeddedOptions) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| unavailable(format!("cannot create data dir {}: {e}", dir.display())))?;
        let marker = dir.join(crate::log::LOCK_FILE);
        if marker.exists() {
            return Err(StoreError::Invalid(format!(
                "{} holds the log engine's store ({}); open it with --store-engine log",
                dir.display(),
                marker.display()
            )));
        }
        let path = dir.join(DB_FILE);
        let db = Database::builder()
            .set_cache_size(opts.cache_bytes)
            .create(&path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => unavailable(format!(
                    "{} is in use by another muster process",
                    path.display()
                )),
                e => unavailable(format!("cannot open {}: {e}", path.display())),
            })?;
        let (revision, next_lease, oldest) = {
            let mut wtx = db.begin_write().map_err(unavailable)?;
            wtx.set_durability(Durability::Immediate)
                .map_err(unavailable)?;
            let out;
            {
                wtx.open_table(KV).map_err(unavailable)?;
                wtx.open_table(LEASES).map_err(unavailable)?;
                let hist = wtx.open_table(HISTORY).map_err(unavailable)?;
                let mut meta = wtx.open_table(META).map_err(unavailable)?;
                let format = meta.get("format").map_err(unavailable)?.map(|v| v.value());
                match format {
                    None => {
                        meta.insert("format", u64::from(FORMAT))
                            .map_err(unavailable)?;
                    }
                    Some(f) if f == u64::from(FORMAT) => {}
                    Some(f) => {
                        return Err(StoreError::Corrupt(format!(
                            "{} has format {f}, this muster reads format {FORMAT}; use a newer muster",
                            path.display()
                        )));
                    }
                }
                let rev = meta
                    .get("revision")
                    .map_err(unavailable)?
                    .map_or(0, |v| v.value());
                let next = meta
                    .get("next_lease")
                    .map_err(unavailable)?
                    .map_or(1, |v| v.value());
                let oldest = hist
                    .first()
                    .map_err(unavailable)?
                    .map_or(rev + 1, |(k, _)| k.value());
                out = (rev, next, oldest);
            }
            wtx.commit().map_err(unavailable)?;
            out
        };
        let db = Arc::new(db);
        let leases = Arc::new(LeaseClock {
            leases: Mutex::new(load_leases(&db)?),
            changed: Default::default(),
        });
        let (tx, rx) = mpsc::channel();
        let (live, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            path,
            db: RwLock::new(Some(db.clone())),
            commands: Mutex::new(Some(tx)),
            leases,
            revision: AtomicU64::new(revision),
            oldest: AtomicU64::new(oldest),
            next_lease: AtomicU64::new(next_lease),
            live: Mutex::new(Some(live)),
            cancel: CancellationToken::new(),
            writer: Mutex::new(None),
        });
        let writer = Writer {
            db: Some(db),
            shared: shared.clone(),
            opts,
        };
        let handle = std::thread::Builder::new()
            .name("muster-store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(unavailable)?;
        *shared.writer.lock() = Some(handle);
        let store = EmbeddedStore(shared);
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

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.0.path
    }

    fn db(&self) -> Result<Arc<Database>> {
        self.0.db.read().clone().ok_or(StoreError::Closed)
    }
}

impl History for Shared {
    fn read(&self, from: Revision, max: usize) -> Result<Vec<Arc<Change>>> {
        let oldest = self.oldest.load(Ordering::Acquire);
        if from < oldest {
            return Err(StoreError::Compacted {
                requested: from,
                oldest,
            });
        }
        let db = self.db.read().clone().ok_or(StoreError::Closed)?;
        let rtx = db.begin_read().map_err(unavailable)?;
        let hist = rtx.open_table(HISTORY).map_err(unavailable)?;
        let mut out = Vec::new();
        for item in hist.range(from..).map_err(unavailable)?.take(max) {
            let (k, v) = item.map_err(unavailable)?;
            out.push(Arc::new(decode_change(k.value(), v.value())?));
        }
        Ok(out)
    }
    fn current(&self) -> Revision {
        self.revision.load(Ordering::Acquire)
    }
}

impl Store for EmbeddedStore {
    fn txn(&self, txn: Txn) -> BoxFuture<'_, Result<TxnResult>> {
        front::request(&self.0.commands, |reply| Cmd::Txn(txn, reply))
    }

    fn snapshot(&self, prefix: &[u8]) -> BoxFuture<'_, Result<Snapshot>> {
        let prefix = prefix.to_vec();
        Box::pin(async move {
            let db = self.db()?;
            tokio::task::spawn_blocking(move || {
                let rtx = db.begin_read().map_err(unavailable)?;
                let meta = rtx.open_table(META).map_err(unavailable)?;
                let revision = meta
                    .get("revision")
                    .map_err(unavailable)?
                    .map_or(0, |v| v.value());
                let kv = rtx.open_table(KV).map_err(unavailable)?;
                Ok(Snapshot {
                    revision,
                    kvs: scan_prefix(&kv, &prefix)?,
                })
            })
            .await
            .map_err(unavailable)?
        })
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
            // Dropping the sender lets the writer drain what is queued and exit.
            self.0.commands.lock().take();
            let handle = self.0.writer.lock().take();
            if let Some(h) = handle {
                let _ = tokio::task::spawn_blocking(move || h.join()).await;
            }
            self.0.live.lock().take();
            self.0.db.write().take();
        })
    }
}

/// The writer thread's state.
struct Writer {
    /// `None` after an I/O error until the database is reopened.
    db: Option<Arc<Database>>,
    shared: Arc<Shared>,
    opts: EmbeddedOptions,
}

/// A command with its answer moved into the batch's `pending` list (at `slot`),
/// so every caller is answered whatever fails, and however early.
enum Work {
    Txn(Txn, usize),
    PersistGrant(LeaseId, Duration),
    Revoke {
        id: LeaseId,
        only_if_expired: bool,
        slot: usize,
    },
}

fn not_applied() -> StoreError {
    StoreError::Unavailable("the batch was not applied".into())
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

/// Errors that concern one request, not the batch: the table is untouched.
fn is_request_error(e: &StoreError) -> bool {
    matches!(e, StoreError::LeaseNotFound(_) | StoreError::Invalid(_))
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
        }
    }

    fn commit_batch(&mut self, batch: Vec<Cmd>) {
        let base = self.shared.revision.load(Ordering::Acquire);
        let mut pending = Vec::with_capacity(batch.len());
        let work: Vec<Work> = batch
            .into_iter()
            .map(|cmd| match cmd {
                Cmd::Txn(txn, reply) => {
                    pending.push(Pending::Txn(reply, Err(not_applied())));
                    Work::Txn(txn, pending.len() - 1)
                }
                Cmd::PersistGrant(id, ttl) => Work::PersistGrant(id, ttl),
                Cmd::Revoke {
                    id,
                    only_if_expired,
                    reply,
                } => {
                    pending.push(Pending::Revoke(reply, Err(not_applied())));
                    Work::Revoke {
                        id,
                        only_if_expired,
                        slot: pending.len() - 1,
                    }
                }
            })
            .collect();
        let size = work.len();
        let started = Instant::now();
        let outcome = match self.db.clone().or_else(|| self.reopen()) {
            Some(db) => self.apply_batch(&db, work, base, &mut pending),
            None => Err(StoreError::Unavailable(format!(
                "{} could not be reopened after an I/O error; writes are refused until it can be",
                self.shared.path.display()
            ))),
        };
        tracing::trace!(
            commands = size,
            took_us = started.elapsed().as_micros() as u64,
            "batch committed"
        );
        match outcome {
            Ok((rev, oldest, changes)) => {
                self.shared.oldest.store(oldest, Ordering::Release);
                self.shared.revision.store(rev, Ordering::Release);
                if let Some(live) = &*self.shared.live.lock() {
                    for c in changes {
                        let _ = live.send(c);
                    }
                }
                for p in pending {
                    p.send();
                }
            }
            Err(e) => {
                tracing::error!(error = %e, path = %self.shared.path.display(), "store commit failed; writes are refused until it succeeds");
                for p in pending {
                    p.fail(e.clone());
                }
                // After an I/O error redb wants to be reopened; the failed batch
                // left nothing on disk. Lease changes it made in memory are
                // reloaded from what is on disk (grants not yet persisted are
                // lost: writes naming them answer LeaseNotFound).
                self.db = None;
                if let Some(db) = self.reopen() {
                    match load_leases(&db) {
                        Ok(l) => *self.shared.leases.leases.lock() = l,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot reload leases after a failed commit")
                        }
                    }
                }
            }
        }
    }

    /// Drops every handle on the database and opens it again.
    fn reopen(&mut self) -> Option<Arc<Database>> {
        self.db = None;
        self.shared.db.write().take();
        let opened = Database::builder()
            .set_cache_size(self.opts.cache_bytes)
            .create(&self.shared.path);
        match opened {
            Ok(db) => {
                let db = Arc::new(db);
                *self.shared.db.write() = Some(db.clone());
                self.db = Some(db.clone());
                tracing::info!(path = %self.shared.path.display(), "store reopened");
                Some(db)
            }
            Err(e) => {
                tracing::warn!(error = %e, path = %self.shared.path.display(), "cannot reopen the store yet");
                None
            }
        }
    }

    /// Applies a batch in one write transaction and commits it. Answers are
    /// collected in `pending`; the caller sends them once this returns.
    fn apply_batch(
        &mut self,
        db: &Database,
        batch: Vec<Work>,
        base: Revision,
        pending: &mut [Pending],
    ) -> Result<(Revision, Revision, Vec<Arc<Change>>)> {
        let mut wtx = db.begin_write().map_err(unavailable)?;
        wtx.set_durability(Durability::Immediate)
            .map_err(unavailable)?;
        let mut rev = base;
        let mut changes = Vec::new();
        let oldest;
        {
            let mut kv = wtx.open_table(KV).map_err(unavailable)?;
            let mut hist = wtx.open_table(HISTORY).map_err(unavailable)?;
            let mut lt = wtx.open_table(LEASES).map_err(unavailable)?;
            let mut meta = wtx.open_table(META).map_err(unavailable)?;
            let mut leases = self.shared.leases.leases.lock();
            let now = Instant::now();
            let at = now_ms();
            let mut record = |applied: Applied,
                              rev: &mut Revision,
                              hist: &mut redb::Table<u64, &[u8]>|
             -> Result<Vec<crate::KvEvent>> {
                if let Applied::Changed(c) = applied {
                    *rev += 1;
                    hist.insert(*rev, encode_change(&c).as_slice())
                        .map_err(unavailable)?;
                    let events = c.events.clone();
                    changes.push(Arc::new(c));
                    return Ok(events);
                }
                Ok(Vec::new())
            };
            for work in batch {
                match work {
                    Work::Txn(txn, slot) => {
                        let answer = match apply_txn(
                            &mut RedbTable(&mut kv),
                            &mut leases,
                            &txn,
                            rev + 1,
                            at,
                        ) {
                            Ok(applied) => {
                                let succeeded = !matches!(applied, Applied::Failed);
                                let events = record(applied, &mut rev, &mut hist)?;
                                Ok(TxnResult {
                                    succeeded,
                                    revision: rev,
                                    events,
                                })
                            }
                            Err(e) if is_request_error(&e) => Err(e),
                            Err(e) => return Err(e),
                        };
                        if let Pending::Txn(_, result) = &mut pending[slot] {
                            *result = answer;
                        }
                    }
                    Work::PersistGrant(id, ttl) => {
                        // Revoked or expired before it reached the disk: nothing to keep.
                        if leases.map.contains_key(&id) {
                            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
                            lt.insert(id.0, ttl_ms).map_err(unavailable)?;
                        }
                    }
                    Work::Revoke {
                        id,
                        only_if_expired,
                        slot,
                    } => {
                        let answer = if only_if_expired && !leases.is_expired(id, now) {
                            false
                        } else {
                            match revoke_lease(
                                &mut RedbTable(&mut kv),
                                &mut leases,
                                id,
                                rev + 1,
                                at,
                            )? {
                                None => false,
                                Some(applied) => {
                                    lt.remove(id.0).map_err(unavailable)?;
                                    record(applied, &mut rev, &mut hist)?;
                                    true
                                }
                            }
                        };
                        if let Pending::Revoke(_, result) = &mut pending[slot] {
                            *result = Ok(answer);
                        }
                    }
                }
            }
            drop(leases);
            meta.insert("revision", rev).map_err(unavailable)?;
            meta.insert("next_lease", self.shared.next_lease.load(Ordering::Acquire))
                .map_err(unavailable)?;
            let cutoff = (rev + 1).saturating_sub(self.opts.retain.max(1) as u64);
            // Trimmed in strides of `slack` revisions rather than a few per
            // commit: each commit touching the oldest leaf again cost a page
            // copy and a descent per entry. (Small retentions stay exact.)
            let slack = (self.opts.retain / 64).min(4096) as u64;
            let first = hist.first().map_err(unavailable)?.map(|(k, _)| k.value());
            if first.is_some_and(|k| k + slack < cutoff) {
                loop {
                    let first = hist.first().map_err(unavailable)?.map(|(k, _)| k.value());
                    match first {
                        Some(k) if k < cutoff => drop(hist.pop_first().map_err(unavailable)?),
                        _ => break,
                    }
                }
            }
            oldest = hist
                .first()
                .map_err(unavailable)?
                .map_or(rev + 1, |(k, _)| k.value());
        }
        wtx.commit().map_err(unavailable)?;
        Ok((rev, oldest, changes))
    }
}
