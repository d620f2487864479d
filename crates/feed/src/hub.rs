//! The hub: one follower of the store, one serialization per event, one
//! broadcast to every subscriber.

use bytes::Bytes;
use muster_core::{BROADCAST, Event, EventKind};
use muster_registry::{Registry, events_of};
use muster_store::{DynStore, Revision, StoreError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// One event as every subscriber receives it.
///
/// Aligned to a cache line of its own: every subscriber clones and drops the
/// `Arc` around it, from every core, and the counts sit just before it; the
/// fields read per subscriber stay off that contended line.
#[derive(Debug)]
#[repr(align(64))]
pub struct FeedItem {
    pub revision: Revision,
    pub kind: EventKind,
    /// The service it concerns; [`BROADCAST`] for a broadcast custom event.
    pub service: Arc<str>,
    /// The event as a JSON object, serialized once.
    pub json: Bytes,
    /// Its place among the items the hub has sent live (0 for history).
    seq: u64,
    /// `service` is [`BROADCAST`]: decided once, read per subscriber.
    broadcast: bool,
    /// The event as a transport puts it on the wire (a WebSocket frame),
    /// encoded by the first subscriber that sends it and shared by the rest.
    wire: OnceLock<Bytes>,
}

impl FeedItem {
    pub fn of(e: &Event) -> FeedItem {
        FeedItem {
            revision: e.revision,
            kind: e.kind,
            service: e.service.as_str().into(),
            seq: 0,
            broadcast: e.service == BROADCAST,
            json: Bytes::from(serde_json::to_vec(e).unwrap_or_default()),
            wire: OnceLock::new(),
        }
    }

    /// The item's wire form: `encode(json)`, computed once per item. Every
    /// caller must pass the same encoding.
    pub fn wire(&self, encode: impl FnOnce(&[u8]) -> Bytes) -> &Bytes {
        self.wire.get_or_init(|| encode(&self.json))
    }

    /// The wire form, once some subscriber has encoded it.
    pub fn encoded(&self) -> Option<&Bytes> {
        self.wire.get()
    }

    /// How many items the hub had sent live before this one.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    pub fn is_broadcast(&self) -> bool {
        self.broadcast
    }
}

/// Fans every change out to the feed's subscribers.
#[derive(Clone)]
pub struct Hub {
    store: DynStore,
    registry: Arc<Registry>,
    tx: broadcast::Sender<Arc<FeedItem>>,
    /// How many items have been sent live: lets a subscriber tell, without
    /// taking the channel's lock, whether anything more is waiting for it.
    sent: Arc<AtomicU64>,
}

/// Items a subscriber may fall behind before it is cut off (shared ring).
pub const BUFFER: usize = 16 * 1024;

impl Hub {
    /// Starts following the registry's store from its current revision.
    pub fn start(registry: Arc<Registry>, tracker: &TaskTracker, cancel: CancellationToken) -> Hub {
        let (tx, _) = broadcast::channel(BUFFER);
        let hub = Hub {
            store: registry.store().clone(),
            registry,
            tx,
            sent: Arc::new(AtomicU64::new(0)),
        };
        let h = hub.clone();
        // Taken now, not when the task first runs: a write in between is kept.
        let from = hub.store.current_revision() + 1;
        tracker.spawn(async move { h.follow(from, cancel).await });
        hub
    }

    async fn follow(self, mut from: Revision, cancel: CancellationToken) {
        loop {
            let mut watcher = match self.store.watch(from).await {
                Ok(w) => w,
                Err(StoreError::Closed) => return,
                Err(e) => {
                    // Fell behind retained history: subscribers resync by themselves.
                    tracing::warn!(error = %e, "feed hub cannot resume; continuing from the current revision");
                    from = self.store.current_revision() + 1;
                    continue;
                }
            };
            loop {
                let next = tokio::select! {
                    n = watcher.next() => n,
                    _ = cancel.cancelled() => return,
                };
                match next {
                    Some(Ok(change)) => {
                        from = change.revision + 1;
                        // Nobody subscribed: nothing to build. One who
                        // subscribes from now on reads this change from
                        // history (`Subscription::open` takes the store's
                        // current revision after subscribing, and the store
                        // counts a change before handing it to a watcher).
                        if self.tx.receiver_count() == 0 {
                            continue;
                        }
                        // Announce a change only once the index shows it, so a
                        // watcher that reads right after an event sees it too.
                        let _ = self.registry.caught_up(change.revision).await;
                        for e in events_of(&change) {
                            // The only writer of `sent`.
                            let seq = self.sent.load(Ordering::Relaxed);
                            let item = FeedItem {
                                seq,
                                ..FeedItem::of(&e)
                            };
                            let _ = self.tx.send(Arc::new(item));
                            self.sent.store(seq + 1, Ordering::Release);
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "feed hub's watch ended; resuming");
                        break;
                    }
                    None => return,
                }
            }
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<FeedItem>> {
        self.tx.subscribe()
    }

    /// How many items have been sent live so far.
    pub(crate) fn sent(&self) -> &Arc<AtomicU64> {
        &self.sent
    }

    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    pub fn store(&self) -> &DynStore {
        &self.store
    }

    /// Events of the retained history from revision `from` through `upto`.
    /// `Err(Compacted)` when `from` is no longer retained.
    pub async fn history(
        &self,
        from: Revision,
        upto: Revision,
    ) -> Result<Vec<Arc<FeedItem>>, StoreError> {
        let mut out = Vec::new();
        if from > upto {
            return Ok(out);
        }
        let mut w = self.store.watch(from).await?;
        while w.next_revision() <= upto {
            match w.next().await {
                Some(Ok(change)) => {
                    out.extend(events_of(&change).iter().map(|e| Arc::new(FeedItem::of(e))))
                }
                Some(Err(e)) => return Err(e),
                None => return Err(StoreError::Closed),
            }
        }
        Ok(out)
    }
}
