//! The front of a durable engine's writer thread, shared by the embedded
//! (redb) and the log engines: queueing commands, lease grants answered
//! before their record is durable, keepalives in memory, and watchers.

use crate::lease::LeaseClock;
use crate::{Change, LeaseId, Result, StoreError};
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;
use tokio::sync::{broadcast, oneshot};

/// The writer's queue; `None` once the store is closed.
pub(crate) type Commands<C> = Mutex<Option<mpsc::Sender<C>>>;

pub(crate) fn send<C>(commands: &Commands<C>, cmd: C) -> Result<()> {
    match &*commands.lock() {
        Some(tx) => tx.send(cmd).map_err(|_| StoreError::Closed),
        None => Err(StoreError::Closed),
    }
}

/// The writer's answer; a writer gone before answering means closed.
pub(crate) async fn answer<T>(rx: oneshot::Receiver<Result<T>>) -> Result<T> {
    rx.await.unwrap_or(Err(StoreError::Closed))
}

/// A grant is live in memory at once and answered without waiting for the
/// disk: its record (`persist`) is queued to the writer ahead of any
/// transaction that can name it, so no durable key ever refers to a lease
/// that is not durable too. A grant lost in a crash was never referenced by
/// an acknowledged write.
pub(crate) fn grant<C>(
    commands: &Commands<C>,
    next_lease: &AtomicU64,
    leases: &LeaseClock,
    ttl: Duration,
    persist: impl FnOnce(LeaseId, Duration) -> C,
) -> Result<LeaseId> {
    let commands = commands.lock();
    let tx = commands.as_ref().ok_or(StoreError::Closed)?;
    let id = LeaseId(next_lease.fetch_add(1, Ordering::AcqRel));
    leases.leases.lock().insert(id, ttl);
    tx.send(persist(id, ttl)).map_err(|_| StoreError::Closed)?;
    leases.changed.notify_one();
    Ok(id)
}

/// Renews a lease in memory only: its TTL restarts from now.
pub(crate) fn keepalive<C>(
    commands: &Commands<C>,
    leases: &LeaseClock,
    id: LeaseId,
) -> Result<Duration> {
    if commands.lock().is_none() {
        return Err(StoreError::Closed);
    }
    leases
        .leases
        .lock()
        .keepalive(id)
        .ok_or(StoreError::LeaseNotFound(id))
}

/// A receiver of committed changes; `Closed` once the store is.
pub(crate) fn subscribe(
    live: &Mutex<Option<broadcast::Sender<Arc<Change>>>>,
) -> Result<broadcast::Receiver<Arc<Change>>> {
    live.lock()
        .as_ref()
        .map(|l| l.subscribe())
        .ok_or(StoreError::Closed)
}
