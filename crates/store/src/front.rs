//! The front of a durable engine's writer thread, shared by the embedded
//! (redb) and the log engines: queueing commands, lease grants answered
//! before their record is durable, keepalives in memory, and watchers.

use crate::lease::LeaseClock;
use crate::{Change, LeaseId, Result, StoreError};
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{broadcast, oneshot};

/// The writer's queue; `None` once the store is closed.
pub(crate) type Commands<C> = Mutex<Option<mpsc::Sender<C>>>;

/// Where the writer answers a command.
pub(crate) type Reply<T> = oneshot::Sender<Result<T>>;

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

/// Queues the command `make` builds around its reply, now; the future is
/// the writer's answer.
pub(crate) fn request<C, T: Send + 'static>(
    commands: &Commands<C>,
    make: impl FnOnce(Reply<T>) -> C,
) -> BoxFuture<'static, Result<T>> {
    let (reply, rx) = oneshot::channel();
    let sent = send(commands, make(reply));
    Box::pin(async move {
        sent?;
        answer(rx).await
    })
}

/// Revokes lease `id` through the writer, whose answer says whether there
/// was such a lease.
pub(crate) fn revoke<C>(
    commands: &Commands<C>,
    id: LeaseId,
    make: impl FnOnce(Reply<bool>) -> C,
) -> BoxFuture<'static, Result<()>> {
    let asked = request(commands, make);
    Box::pin(async move {
        match asked.await? {
            true => Ok(()),
            false => Err(StoreError::LeaseNotFound(id)),
        }
    })
}

/// The lease-expiry task's action for an engine whose shared state is
/// `shared`: asks the writer to revoke a lease past its deadline, if it still
/// is (`revoke_expired` builds that command; a late keepalive may have
/// overtaken the deadline). `true` once answered, or once the store is gone;
/// `false` to retry later.
pub(crate) fn expire_via<S, C>(
    shared: Weak<S>,
    commands: fn(&S) -> &Commands<C>,
    revoke_expired: fn(LeaseId, Reply<bool>) -> C,
) -> impl Fn(LeaseId) -> BoxFuture<'static, bool> + Send + Sync + 'static
where
    S: Send + Sync + 'static,
    C: Send + 'static,
{
    move |id| {
        let shared = shared.clone();
        Box::pin(async move {
            let Some(shared) = shared.upgrade() else {
                return true;
            };
            let (reply, rx) = oneshot::channel();
            if send(commands(&shared), revoke_expired(id, reply)).is_err() {
                return true;
            }
            matches!(rx.await, Ok(Ok(_)))
        })
    }
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
