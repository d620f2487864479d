//! One subscriber's view of the feed: an opening (a snapshot per watched
//! service, or a replay from a revision), then live events, filtered to the
//! services it watches, with no gap and no repeat at the seam.

use crate::hub::{FeedItem, Hub};
use bytes::Bytes;
use muster_core::{Event, EventKind};
use muster_registry::{Registry, list_json};
use muster_store::{Revision, StoreError};
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::broadcast;

/// Which services a subscriber may hear about at all (its token's read
/// rights), whatever it asked for.
pub type Allow = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Which services a subscriber hears about (`None`: all it may read).
#[derive(Clone, Default)]
pub struct Filter {
    pub services: Option<HashSet<String>>,
    /// Attach the service's current instance list to every delta.
    pub full: bool,
    /// `None`: every service may be read.
    pub allow: Option<Allow>,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter")
            .field("services", &self.services)
            .field("full", &self.full)
            .field("restricted", &self.allow.is_some())
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SubscriptionError {
    /// The requested revision is older than the retained history.
    #[error(
        "revision {requested} is no longer retained (oldest: {oldest}); resync from a snapshot"
    )]
    Gone {
        requested: Revision,
        oldest: Revision,
    },
    /// The subscriber fell further behind than its buffer allows.
    #[error("too slow: more than {buffer} events behind; reconnect with from={resume_from}")]
    Lagged {
        resume_from: Revision,
        buffer: usize,
    },
    #[error("the feed is closed")]
    Closed,
    #[error("{0}")]
    Store(StoreError),
}

/// One message of the feed: a JSON object and the revision it belongs to.
#[derive(Debug, Clone)]
pub struct Message {
    pub revision: Revision,
    body: Body,
}

#[derive(Debug, Clone)]
enum Body {
    /// A live item sent as the hub published it: its bytes, and its wire
    /// form, are shared with every other subscriber (one reference count
    /// per subscriber, not one per buffer).
    Shared(Arc<FeedItem>),
    /// Rendered for this subscriber alone (an opening, a replay, `full`).
    Own(Bytes),
}

impl Message {
    fn own(revision: Revision, json: Bytes) -> Message {
        Message {
            revision,
            body: Body::Own(json),
        }
    }

    /// The message's JSON object.
    pub fn json(&self) -> &[u8] {
        match &self.body {
            Body::Shared(item) => &item.json,
            Body::Own(json) => json,
        }
    }

    /// The message as `encode` puts it on the wire; encoded once for all
    /// subscribers when the message is a live item sent unchanged. Every
    /// caller must pass the same `encode`.
    pub fn into_wire(self, encode: fn(&[u8]) -> Bytes) -> Wire {
        match self.body {
            Body::Shared(item) => {
                item.wire(encode);
                Wire(Body::Shared(item))
            }
            Body::Own(json) => Wire(Body::Own(encode(&json))),
        }
    }
}

/// A message in its transport's encoding ([`Message::into_wire`]).
#[derive(Debug, Clone)]
pub struct Wire(Body);

impl AsRef<[u8]> for Wire {
    fn as_ref(&self) -> &[u8] {
        match &self.0 {
            // Encoded by `into_wire` before this was made.
            Body::Shared(item) => item.encoded().map_or(&[], |b| b),
            Body::Own(bytes) => bytes,
        }
    }
}

pub struct Subscription {
    registry: Arc<Registry>,
    rx: broadcast::Receiver<Arc<FeedItem>>,
    /// Openings and replayed history, delivered before anything live.
    backlog: VecDeque<Message>,
    /// Live items below this revision were already delivered from history.
    live_from: Revision,
    /// The last revision delivered in full: where a reconnect resumes.
    delivered: Revision,
    filter: Filter,
    /// The hub's count of items sent live, and how many of them this
    /// subscriber has taken off its channel (at least): equal, nothing waits.
    sent: Arc<AtomicU64>,
    taken: u64,
    /// `filter.services`, as live items are matched against it.
    watched: Watched,
}

/// The services a subscriber watches, laid out for matching every live item
/// per subscriber: the usual single name inline (no pointer to follow, no
/// hash to compute), several sorted and searched.
enum Watched {
    All,
    One { len: u8, name: [u8; 63] },
    Many(Box<[Box<str>]>),
}

impl Watched {
    fn of(services: Option<&HashSet<String>>) -> Watched {
        let Some(services) = services else {
            return Watched::All;
        };
        if services.len() == 1
            && let Some(only) = services.iter().next()
            && let Ok(len @ 0..=63) = u8::try_from(only.len())
        {
            let mut name = [0; 63];
            name[..only.len()].copy_from_slice(only.as_bytes());
            return Watched::One { len, name };
        }
        let mut v: Vec<Box<str>> = services.iter().map(|n| n.as_str().into()).collect();
        v.sort();
        Watched::Many(v.into_boxed_slice())
    }

    fn contains(&self, service: &str) -> bool {
        match self {
            Watched::All => true,
            Watched::One { len, name } => name[..usize::from(*len)] == *service.as_bytes(),
            Watched::Many(names) => names.binary_search_by(|n| (**n).cmp(service)).is_ok(),
        }
    }
}

fn now() -> muster_core::Timestamp {
    time::OffsetDateTime::now_utc()
}

fn instances_raw(registry: &Registry, service: &str) -> Option<Box<serde_json::value::RawValue>> {
    let list = registry.instances(service, &Default::default());
    serde_json::value::RawValue::from_string(String::from_utf8(list_json(&list)).ok()?).ok()
}

impl Subscription {
    /// Opens a subscription. Without `from`, it starts with one `snapshot`
    /// message per watched service; with `from`, it replays the retained
    /// events after `from`.
    pub async fn open(
        hub: &Hub,
        registry: Arc<Registry>,
        filter: Filter,
        from: Option<Revision>,
    ) -> Result<Subscription, SubscriptionError> {
        // Subscribe first: whatever the hub publishes from now on is caught.
        // (An item sent in between is on the channel but counted as taken:
        // `try_next` may then leave it to `next`, which is all it means.)
        let rx = hub.subscribe();
        let sent = hub.sent().clone();
        let taken = sent.load(Ordering::Acquire);
        let mut sub = Subscription {
            registry,
            rx,
            backlog: VecDeque::new(),
            // Both set below, once the store's revision is read.
            live_from: 0,
            delivered: 0,
            watched: Watched::of(filter.services.as_ref()),
            sent,
            taken,
            filter,
        };
        let start = match from {
            Some(rev) => {
                let oldest = hub.store().oldest_revision();
                if rev + 1 < oldest {
                    return Err(SubscriptionError::Gone {
                        requested: rev,
                        oldest,
                    });
                }
                rev
            }
            None => {
                let services: Option<Vec<String>> = sub.filter.services.as_ref().map(|s| {
                    let mut v: Vec<String> = s.iter().cloned().collect();
                    v.sort();
                    v
                });
                let (rev, snap) = sub.registry.snapshot(services.as_deref());
                for (service, instances) in snap {
                    if !sub.wants(&service) {
                        continue;
                    }
                    let mut e = Event::new(rev, EventKind::Snapshot, service, now());
                    e.instances = serde_json::value::RawValue::from_string(
                        String::from_utf8(list_json(&instances)).unwrap_or_else(|_| "[]".into()),
                    )
                    .ok();
                    sub.backlog.push_back(Message::own(
                        rev,
                        Bytes::from(serde_json::to_vec(&e).unwrap_or_default()),
                    ));
                }
                rev
            }
        };
        // Fill from history up to what the store has now; live takes over after.
        let upto = hub.store().current_revision();
        let history = hub.history(start + 1, upto).await.map_err(|e| match e {
            StoreError::Compacted { requested, oldest } => {
                SubscriptionError::Gone { requested, oldest }
            }
            e => SubscriptionError::Store(e),
        })?;
        sub.live_from = upto + 1;
        sub.delivered = upto;
        for item in history {
            if sub.matches(&item) {
                let json = sub.render(&item);
                sub.backlog.push_back(Message::own(item.revision, json));
            }
        }
        Ok(sub)
    }

    /// The revision a reconnect should pass as `from`.
    pub fn resume_from(&self) -> Revision {
        self.delivered
    }

    /// Whether this subscriber sends `item` exactly as the hub serialized it.
    fn unchanged(&self, item: &FeedItem) -> bool {
        !self.filter.full || item.is_broadcast() || item.kind == EventKind::Custom
    }

    fn render(&self, item: &FeedItem) -> Bytes {
        if self.unchanged(item) {
            return item.json.clone();
        }
        // `full`: the event plus the service's current instance list.
        let Some(raw) = instances_raw(&self.registry, &item.service) else {
            return item.json.clone();
        };
        let mut out = item.json[..item.json.len().saturating_sub(1)].to_vec();
        out.extend_from_slice(br#","instances":"#);
        out.extend_from_slice(raw.get().as_bytes());
        out.push(b'}');
        Bytes::from(out)
    }

    /// A live item this subscriber has not seen yet: `Some` when it is
    /// to be sent, `None` when filtered out or already delivered.
    fn take(&mut self, item: Arc<FeedItem>) -> Option<Arc<FeedItem>> {
        self.taken = self.taken.max(item.seq() + 1);
        if item.revision < self.live_from {
            return None;
        }
        // Items of one revision arrive together; the revision is complete
        // once a later one shows up.
        self.delivered = self.delivered.max(item.revision.saturating_sub(1));
        self.matches(&item).then_some(item)
    }

    /// Broadcast events reach everyone; others only watchers of their
    /// service that may read it. Per live item per subscriber, so `watched`
    /// is laid out for it.
    fn matches(&self, item: &FeedItem) -> bool {
        item.is_broadcast() || self.wants(&item.service)
    }

    /// Whether the subscriber watches `service` and may read it.
    fn wants(&self, service: &str) -> bool {
        self.watched.contains(service)
            && self
                .filter
                .allow
                .as_ref()
                .is_none_or(|allow| allow(service))
    }

    fn live(&self, item: Arc<FeedItem>) -> Message {
        if self.unchanged(&item) {
            Message {
                revision: item.revision,
                body: Body::Shared(item),
            }
        } else {
            Message::own(item.revision, self.render(&item))
        }
    }

    fn lagged(&self) -> SubscriptionError {
        SubscriptionError::Lagged {
            resume_from: self.delivered,
            buffer: crate::hub::BUFFER,
        }
    }

    /// The next message.
    pub async fn next(&mut self) -> Result<Message, SubscriptionError> {
        if let Some(b) = self.backlog.pop_front() {
            return Ok(b);
        }
        loop {
            match self.rx.recv().await {
                Ok(item) => {
                    if let Some(item) = self.take(item) {
                        if self.filter.full {
                            // The list must include this very change.
                            let _ = self.registry.caught_up(item.revision).await;
                        }
                        return Ok(self.live(item));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => return Err(self.lagged()),
                Err(broadcast::error::RecvError::Closed) => return Err(SubscriptionError::Closed),
            }
        }
    }

    /// The next message if one is ready now, so a transport can put several
    /// into one write. `None` when nothing is ready, and always with `full`
    /// (whose messages may have to wait for the index).
    pub fn try_next(&mut self) -> Option<Result<Message, SubscriptionError>> {
        if let Some(b) = self.backlog.pop_front() {
            return Some(Ok(b));
        }
        // Nothing sent that this subscriber has not taken: nothing to try
        // (and no lock of the channel taken to find that out).
        if self.filter.full || self.taken >= self.sent.load(Ordering::Acquire) {
            return None;
        }
        loop {
            match self.rx.try_recv() {
                Ok(item) => {
                    if let Some(item) = self.take(item) {
                        return Some(Ok(self.live(item)));
                    }
                }
                Err(broadcast::error::TryRecvError::Lagged(_)) => return Some(Err(self.lagged())),
                Err(_) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Watched;
    use std::collections::HashSet;

    fn watched(names: &[&str]) -> Watched {
        let set: HashSet<String> = names.iter().map(|n| n.to_string()).collect();
        Watched::of(Some(&set))
    }

    #[test]
    fn watched_services_match_exactly_in_every_layout() {
        assert!(Watched::of(None).contains("anything"));

        let one = watched(&["web"]);
        assert!(matches!(one, Watched::One { .. }));
        assert!(one.contains("web"));
        for other in ["we", "web2", "webx", "", "api"] {
            assert!(!one.contains(other), "{other}");
        }

        let longest = "a".repeat(63);
        let one = watched(&[&longest]);
        assert!(matches!(one, Watched::One { .. }));
        assert!(one.contains(&longest));
        assert!(!one.contains(&"a".repeat(62)));

        // Longer than any valid name: kept, matched, just not inline.
        let long = "b".repeat(70);
        let w = watched(&[&long]);
        assert!(matches!(w, Watched::Many(_)));
        assert!(w.contains(&long) && !w.contains("b"));

        let few = watched(&["api", "db", "web"]);
        assert!(few.contains("db") && few.contains("web") && !few.contains("cache"));

        let names: Vec<String> = (0..40).map(|i| format!("svc-{i:02}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let many = watched(&refs);
        assert!(refs.iter().all(|n| many.contains(n)));
        assert!(!many.contains("svc-40") && !many.contains("svc-") && !many.contains("a"));
    }
}
