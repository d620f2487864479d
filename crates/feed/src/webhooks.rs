//! Webhooks: the events a webhook asks for, POSTed to its URL one at a time,
//! in revision order, signed with HMAC-SHA256 when it has a secret.
//!
//! Each webhook is one task subscribed to the [`Hub`]. The hub's broadcast
//! never waits for a receiver, and the task keeps its own bounded queue, so
//! a slow or dead endpoint costs at most `queue` events of memory and never
//! slows a registry write. What does not fit (the queue is full, or the task
//! fell further behind the broadcast than its ring holds) is dropped,
//! counted and logged with the revisions it covered.
//!
//! Delivery is strictly ordered and at least once: the event at the head of
//! the queue is retried with exponential backoff (with jitter) until the
//! endpoint answers 2xx, and nothing behind it is sent before. An event
//! whose answer was lost (a timeout) may arrive twice; receivers deduplicate
//! on `X-Muster-Revision` with the event's content. A webhook starts from
//! the live feed: events that happen while muster is down are not sent.
//!
//! Each request carries one event object (the bytes the feed serialized,
//! exactly) with `Content-Type: application/json`, `X-Muster-Event: <kind>`,
//! `X-Muster-Revision: <revision>` and, with a secret,
//! `X-Muster-Signature: sha256=<hex HMAC-SHA256(secret, body)>`.

use crate::hub::{FeedItem, Hub};
use hmac::{Hmac, Mac};
use muster_core::EventKind;
use muster_store::Revision;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as PromRegistry;
use serde::Deserialize;
use sha2::Sha256;
use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use url::Url;

/// Events a webhook holds at most (the one being delivered included).
pub const DEFAULT_QUEUE: usize = 10_000;
/// How long one delivery attempt may take, answer included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

pub const EVENT_HEADER: &str = "x-muster-event";
pub const REVISION_HEADER: &str = "x-muster-revision";
pub const SIGNATURE_HEADER: &str = "x-muster-signature";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// An endpoint's answer is read (so its connection can be reused) up to this.
const ANSWER_READ_LIMIT: usize = 64 * 1024;
/// How much of a refusal goes into the log.
const ANSWER_LOG_LIMIT: usize = 200;

/// How long to wait before retrying a failed delivery: `first`, doubling up
/// to `max`; each wait is spread over its second half (jitter), so webhooks
/// of one recovering endpoint do not all retry at the same instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_millis(200),
            max: Duration::from_secs(30),
        }
    }
}

/// The key of a webhook's signature. Its `Debug` does not show it, so a
/// logged configuration does not leak it.
#[derive(Clone)]
pub struct Secret(Arc<[u8]>);

impl Secret {
    pub fn new(key: impl Into<Vec<u8>>) -> Secret {
        Secret(key.into().into())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// One webhook, validated.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Its name in logs and metric labels.
    pub name: String,
    pub url: Url,
    /// The kinds it receives; `None`: every kind the feed sends.
    pub kinds: Option<Vec<EventKind>>,
    /// The services it hears about; `None`: all. Broadcast custom events
    /// reach every webhook that receives `custom`.
    pub services: Option<HashSet<String>>,
    pub secret: Option<Secret>,
    pub timeout: Duration,
    pub queue: usize,
    pub backoff: Backoff,
}

impl WebhookConfig {
    /// A webhook for every event, unsigned, with the default timeout, queue
    /// and backoff, named after its URL (without credentials).
    pub fn new(url: Url) -> WebhookConfig {
        WebhookConfig {
            name: default_name(&url),
            url,
            kinds: None,
            services: None,
            secret: None,
            timeout: DEFAULT_TIMEOUT,
            queue: DEFAULT_QUEUE,
            backoff: Backoff::default(),
        }
    }

    fn wants(&self, item: &FeedItem) -> bool {
        self.kinds.as_ref().is_none_or(|k| k.contains(&item.kind))
            && (item.is_broadcast()
                || self
                    .services
                    .as_ref()
                    .is_none_or(|s| s.contains(&*item.service)))
    }
}

/// The URL without user name and password: a name that may end up in logs
/// and metric labels.
fn default_name(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

/// Parses an event kind as the feed writes it (`status_changed`). `snapshot`
/// is refused: it opens a subscription and is never a change.
pub fn parse_kind(name: &str) -> Result<EventKind, String> {
    use serde::de::IntoDeserializer;
    let de: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
        name.into_deserializer();
    match EventKind::deserialize(de) {
        Ok(EventKind::Snapshot) => {
            Err("snapshot is not a change and is never sent to webhooks; leave it out".to_string())
        }
        Ok(kind) => Ok(kind),
        Err(e) => Err(format!("{name:?} is not an event kind: {e}")),
    }
}

/// The kind as the feed and the `X-Muster-Event` header write it.
fn kind_name(kind: EventKind) -> String {
    match serde_json::to_value(kind) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{kind:?}"),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    webhook: String,
}

#[derive(Default)]
struct Metrics {
    delivered: Family<WebhookLabels, Counter>,
    failed_attempts: Family<WebhookLabels, Counter>,
    dropped: Family<WebhookLabels, Counter>,
    queued: Family<WebhookLabels, Gauge>,
}

/// One webhook's series, looked up once.
#[derive(Clone)]
struct Series {
    delivered: Counter,
    failed_attempts: Counter,
    dropped: Counter,
    queued: Gauge,
}

impl Metrics {
    fn series(&self, name: &str) -> Series {
        let l = WebhookLabels {
            webhook: name.to_string(),
        };
        Series {
            delivered: self.delivered.get_or_create(&l).clone(),
            failed_attempts: self.failed_attempts.get_or_create(&l).clone(),
            dropped: self.dropped.get_or_create(&l).clone(),
            queued: self.queued.get_or_create(&l).clone(),
        }
    }
}

/// What one webhook has done so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookStats {
    pub name: String,
    /// Events the endpoint accepted (2xx).
    pub delivered: u64,
    /// Attempts that failed (no connection, timeout, not 2xx); each is retried.
    pub failed_attempts: u64,
    /// Events that will never be sent: no room in the queue, or skipped
    /// because the webhook fell behind the feed.
    pub dropped: u64,
    /// Events waiting, the one being delivered included.
    pub queued: u64,
}

/// The running webhooks: their metrics and stats. Cloning is cheap.
#[derive(Clone)]
pub struct Webhooks {
    metrics: Arc<Metrics>,
    hooks: Arc<[(String, Series)]>,
}

impl Webhooks {
    /// Subscribes one task per webhook to `hub` (before returning, so every
    /// event published from now on is seen) and runs them on `tracker` until
    /// `cancel` fires. If the HTTP client cannot be built, that is logged
    /// and no webhook runs.
    pub fn start(
        hub: &Hub,
        configs: Vec<WebhookConfig>,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Webhooks {
        let metrics = Arc::new(Metrics::default());
        let mut hooks = Vec::new();
        // One pooled client for every webhook: endpoints on one host share
        // its connections.
        let client = match configs.is_empty() {
            true => None,
            false => client()
                .inspect_err(|e| {
                    let error = error_chain(e);
                    tracing::error!(%error, "cannot build the webhook HTTP client; webhooks disabled");
                })
                .ok(),
        };
        if let Some(client) = client {
            for cfg in configs {
                let series = metrics.series(&cfg.name);
                hooks.push((cfg.name.clone(), series.clone()));
                tracing::info!(webhook = %cfg.name, url = %default_name(&cfg.url), "webhook started");
                let hook = Arc::new(Dispatcher {
                    mac: cfg.secret.as_ref().map(|s| keyed(&s.0)),
                    client: client.clone(),
                    series,
                    cfg,
                });
                tracker.spawn(hook.run(hub.subscribe(), cancel.clone()));
            }
        }
        Webhooks {
            metrics,
            hooks: hooks.into(),
        }
    }

    /// Adds `webhook_delivered_total`, `webhook_failed_attempts_total`,
    /// `webhook_dropped_total` and `webhook_queue_length`, labelled by
    /// webhook name.
    pub fn register_metrics(&self, r: &mut PromRegistry) {
        let m = &self.metrics;
        r.register(
            "webhook_delivered",
            "Events webhook endpoints accepted",
            m.delivered.clone(),
        );
        r.register(
            "webhook_failed_attempts",
            "Webhook delivery attempts that failed and will be retried",
            m.failed_attempts.clone(),
        );
        r.register(
            "webhook_dropped",
            "Events never sent to a webhook: its queue was full or it fell behind the feed",
            m.dropped.clone(),
        );
        r.register(
            "webhook_queue_length",
            "Events waiting for a webhook, the one being delivered included",
            m.queued.clone(),
        );
    }

    /// One entry per running webhook, in configuration order.
    pub fn stats(&self) -> Vec<WebhookStats> {
        self.hooks
            .iter()
            .map(|(name, s)| WebhookStats {
                name: name.clone(),
                delivered: s.delivered.get(),
                failed_attempts: s.failed_attempts.get(),
                dropped: s.dropped.get(),
                queued: s.queued.get().max(0) as u64,
            })
            .collect()
    }
}

fn client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        // The URL is the operator's choice; an ambient HTTP_PROXY meant for
        // other tools must not reroute it.
        .no_proxy()
        // A signed body must not be replayed to wherever a 3xx points; a
        // redirect counts as a failed attempt.
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("muster/", env!("CARGO_PKG_VERSION")))
        .build()
}

fn keyed(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC hashes keys longer than a block and pads shorter ones: every
    // length is valid, so this cannot fail.
    <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC accepts keys of any length")
}

/// `sha256=<hex>` over `body`, with the key already in `mac`.
fn signature(mac: &Hmac<Sha256>, body: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let sum = mac.clone().chain_update(body).finalize().into_bytes();
    let mut out = String::with_capacity(7 + sum.len() * 2);
    out.push_str("sha256=");
    for b in sum {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// Between half and all of `d`, at random.
fn jitter(d: Duration) -> Duration {
    // A fresh `RandomState` is keyed differently each time: randomness
    // enough to spread retries, without a dependency for it.
    let r = RandomState::new().hash_one(0u8);
    let half = d / 2;
    let spread = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(r % spread.saturating_add(1))
}

/// An error with its causes ("error sending request: connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// Events dropped since the last one queued. Logged when dropping starts,
/// and once more with the whole range when an event is queued again.
#[derive(Default)]
struct Gap {
    events: u64,
    first: Revision,
    last: Revision,
    /// Skipped by a lag: `last` is the revision of the next event received.
    open_ended: bool,
}

impl Gap {
    fn add(&mut self, first: Revision, last: Revision, events: u64) {
        if self.events == 0 {
            self.first = first;
        }
        self.last = self.last.max(last);
        self.events += events;
    }

    /// Called with every event received, so a lag's range ends at the first
    /// event seen after it.
    fn saw(&mut self, revision: Revision) {
        if self.open_ended {
            self.last = self.last.max(revision);
            self.open_ended = false;
        }
    }

    fn close(&mut self, webhook: &str) {
        if self.events > 0 {
            tracing::warn!(
                webhook,
                dropped = self.events,
                from_revision = self.first,
                to_revision = self.last,
                "webhook is queueing events again; the events dropped in between will never be sent"
            );
        }
        *self = Gap::default();
    }
}

type Delivery = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One webhook's task.
struct Dispatcher {
    cfg: WebhookConfig,
    client: reqwest::Client,
    /// Keyed once with the secret; cloned per signature.
    mac: Option<Hmac<Sha256>>,
    series: Series,
}

impl Dispatcher {
    async fn run(
        self: Arc<Self>,
        mut rx: broadcast::Receiver<Arc<FeedItem>>,
        cancel: CancellationToken,
    ) {
        let mut queue: VecDeque<Arc<FeedItem>> = VecDeque::new();
        // Delivery of the queue's head; receiving goes on meanwhile.
        let mut sending: Option<Delivery> = None;
        let mut gap = Gap::default();
        let mut last_seen: Revision = 0;
        let mut open = true;
        loop {
            if sending.is_none() {
                match queue.front() {
                    Some(item) => sending = Some(Box::pin(self.clone().deliver(item.clone()))),
                    None if !open => break,
                    None => {}
                }
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                // Before delivery: the task must keep up with the broadcast
                // however slow the endpoint is.
                r = rx.recv(), if open => match r {
                    Ok(item) => {
                        last_seen = item.revision;
                        gap.saw(item.revision);
                        self.offer(item, &mut queue, &mut gap);
                    }
                    Err(RecvError::Lagged(n)) => self.lagged(n, last_seen, &mut gap),
                    Err(RecvError::Closed) => open = false,
                },
                () = async { if let Some(d) = sending.as_mut() { d.await } }, if sending.is_some() => {
                    sending = None;
                    queue.pop_front();
                    self.series.queued.set(queue.len() as i64);
                }
            }
        }
        tracing::info!(webhook = %self.cfg.name, unsent = queue.len(), "webhook stopped");
    }

    /// Queues `item` if the webhook wants it and there is room.
    fn offer(&self, item: Arc<FeedItem>, queue: &mut VecDeque<Arc<FeedItem>>, gap: &mut Gap) {
        if !self.cfg.wants(&item) {
            return;
        }
        if queue.len() >= self.cfg.queue {
            if gap.events == 0 {
                tracing::warn!(
                    webhook = %self.cfg.name,
                    queue = self.cfg.queue,
                    revision = item.revision,
                    "webhook queue is full; dropping events until it drains"
                );
            }
            self.series.dropped.inc();
            gap.add(item.revision, item.revision, 1);
            return;
        }
        gap.close(&self.cfg.name);
        queue.push_back(item);
        self.series.queued.set(queue.len() as i64);
    }

    /// The task fell more than the hub's ring behind and `n` events are
    /// gone. They count as dropped whether or not this webhook wanted them:
    /// nobody can tell any more.
    fn lagged(&self, n: u64, last_seen: Revision, gap: &mut Gap) {
        tracing::warn!(
            webhook = %self.cfg.name,
            skipped = n,
            after_revision = last_seen,
            "webhook fell behind the feed; events were skipped"
        );
        self.series.dropped.inc_by(n);
        gap.add(last_seen + 1, last_seen + 1, n);
        gap.open_ended = true;
    }

    /// Posts `item` until the endpoint accepts it; only cancellation (which
    /// drops this future) stops it.
    async fn deliver(self: Arc<Self>, item: Arc<FeedItem>) {
        let kind = kind_name(item.kind);
        let mut backoff = self.cfg.backoff.first;
        let mut attempt: u32 = 1;
        loop {
            match self.post(&item, &kind).await {
                Ok(()) => {
                    self.series.delivered.inc();
                    if attempt > 1 {
                        tracing::info!(
                            webhook = %self.cfg.name,
                            revision = item.revision,
                            attempts = attempt,
                            "webhook delivered after retries"
                        );
                    }
                    return;
                }
                Err(error) => {
                    self.series.failed_attempts.inc();
                    let wait = jitter(backoff);
                    tracing::warn!(
                        webhook = %self.cfg.name,
                        revision = item.revision,
                        kind = %kind,
                        attempt,
                        retry_in_ms = wait.as_millis() as u64,
                        %error,
                        "webhook delivery failed; retrying"
                    );
                    tokio::time::sleep(wait).await;
                    backoff = backoff.saturating_mul(2).min(self.cfg.backoff.max);
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    /// One attempt: `Err` says why it failed.
    async fn post(&self, item: &FeedItem, kind: &str) -> Result<(), String> {
        let mut req = self
            .client
            .post(self.cfg.url.clone())
            .timeout(self.cfg.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(EVENT_HEADER, kind)
            .header(REVISION_HEADER, item.revision)
            .body(item.json.clone());
        if let Some(mac) = &self.mac {
            req = req.header(SIGNATURE_HEADER, signature(mac, &item.json));
        }
        // Without the URL: it may carry credentials.
        let mut resp = req
            .send()
            .await
            .map_err(|e| error_chain(&e.without_url()))?;
        let status = resp.status();
        // Read the answer so the connection goes back to the pool.
        let mut answer = Vec::new();
        while answer.len() < ANSWER_READ_LIMIT {
            match resp.chunk().await {
                Ok(Some(c)) => answer.extend_from_slice(&c),
                Ok(None) => break,
                Err(e) if status.is_success() => {
                    tracing::debug!(webhook = %self.cfg.name, error = %error_chain(&e.without_url()), "cannot read a webhook's answer");
                    break;
                }
                Err(e) => {
                    return Err(format!(
                        "answered {status}, then {}",
                        error_chain(&e.without_url())
                    ));
                }
            }
        }
        if status.is_success() {
            return Ok(());
        }
        answer.truncate(ANSWER_LOG_LIMIT);
        Err(format!(
            "answered {status}: {}",
            String::from_utf8_lossy(&answer).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_as_the_feed_writes_them() {
        assert_eq!(parse_kind("status_changed"), Ok(EventKind::StatusChanged));
        assert_eq!(parse_kind("custom"), Ok(EventKind::Custom));
        assert!(parse_kind("snapshot").unwrap_err().contains("never sent"));
        assert!(
            parse_kind("StatusChanged")
                .unwrap_err()
                .contains("not an event kind")
        );
        assert_eq!(kind_name(EventKind::ServiceDeleted), "service_deleted");
    }

    #[test]
    fn signature_is_hex_hmac_sha256() {
        // RFC 4231, test case 2.
        let mac = keyed(b"Jefe");
        assert_eq!(
            signature(&mac, b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn default_names_leave_credentials_out() {
        let url = Url::parse("https://user:pw@hooks.example/x?y=1").unwrap();
        assert_eq!(WebhookConfig::new(url).name, "https://hooks.example/x?y=1");
        assert!(!format!("{:?}", Secret::new("s3cret")).contains("s3cret"));
    }

    #[test]
    fn jitter_stays_within_the_second_half() {
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(200));
            assert!(j >= Duration::from_millis(100) && j <= Duration::from_millis(200));
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }
}
