//! Webhooks over real HTTP: a registry on the memory store, the real hub,
//! and an axum endpoint on 127.0.0.1:0 that records every request it gets
//! and answers as the test tells it to.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use muster_core::check::CheckPolicy;
use muster_core::{BROADCAST, CustomEventBody, DeregisterBody, EventKind, RegisterBody};
use muster_feed::Hub;
use muster_feed::webhooks::{Backoff, Secret, WebhookConfig, WebhookStats, Webhooks};
use muster_registry::Registry;
use muster_store::MemoryStore;
use sha2::Sha256;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use url::Url;

/// Far more than anything that works needs; reached only when it hangs.
const PATIENCE: Duration = Duration::from_secs(5);

/// One request as the endpoint saw it, and what it answered.
#[derive(Debug)]
struct Hit {
    headers: HeaderMap,
    body: Bytes,
    answered: StatusCode,
}

impl Hit {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn revision(&self) -> u64 {
        self.header("x-muster-revision").parse().unwrap()
    }

    /// (kind, service) as the body says.
    fn what(&self) -> (String, String) {
        let e = self.json();
        (
            e["kind"].as_str().unwrap().to_string(),
            e["service"].as_str().unwrap().to_string(),
        )
    }
}

#[derive(Clone, Copy)]
enum Answer {
    /// 200 to everything.
    Ok,
    /// 500 to the first N requests, 200 after.
    FailFirst(usize),
    /// Records the request and never answers.
    Hang,
}

struct Shared {
    hits: mpsc::UnboundedSender<Hit>,
    failures_left: AtomicUsize,
    hang: bool,
}

async fn receive(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let fail = s
        .failures_left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let answered = match fail {
        true => StatusCode::INTERNAL_SERVER_ERROR,
        false => StatusCode::OK,
    };
    let _ = s.hits.send(Hit {
        headers,
        body,
        answered,
    });
    if s.hang {
        std::future::pending::<()>().await;
    }
    answered
}

struct Endpoint {
    url: Url,
    hits: mpsc::UnboundedReceiver<Hit>,
}

impl Endpoint {
    async fn start(answer: Answer) -> Endpoint {
        let (tx, hits) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            hits: tx,
            failures_left: AtomicUsize::new(match answer {
                Answer::FailFirst(n) => n,
                _ => 0,
            }),
            hang: matches!(answer, Answer::Hang),
        });
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Endpoint {
            url: format!("http://{addr}/hook").parse().unwrap(),
            hits,
        }
    }

    async fn next(&mut self) -> Hit {
        timeout(PATIENCE, self.hits.recv())
            .await
            .expect("the endpoint got no request in time")
            .unwrap()
    }
}

/// A URL on which nothing listens.
fn dead_url() -> Url {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}/hook").parse().unwrap()
}

struct World {
    registry: Arc<Registry>,
    hub: Hub,
    tracker: TaskTracker,
    stop: CancellationToken,
}

async fn world() -> World {
    let registry = Registry::open(Arc::new(MemoryStore::new(10_000)), CheckPolicy::default())
        .await
        .unwrap();
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    let hub = Hub::start(registry.clone(), &tracker, stop.clone());
    // The hub reads the revision it follows from when its task first runs;
    // until one of our own events comes through, a write could go unseen.
    let mut rx = hub.subscribe();
    loop {
        custom(&registry, "warm-up", None).await;
        if let Ok(Ok(_)) = timeout(Duration::from_millis(50), rx.recv()).await {
            break;
        }
    }
    World {
        registry,
        hub,
        tracker,
        stop,
    }
}

impl World {
    /// Starts `configs`; they see only what happens from now on.
    fn webhooks(&self, configs: Vec<WebhookConfig>) -> Webhooks {
        Webhooks::start(&self.hub, configs, &self.tracker, self.stop.clone())
    }

    async fn register(&self, service: &str, port: u16) -> u64 {
        let body: RegisterBody =
            serde_json::from_value(serde_json::json!({"address": "10.0.0.1", "port": port}))
                .unwrap();
        self.registry
            .register(service, body, None)
            .await
            .unwrap()
            .revision
    }
}

/// Sends a custom event to `services`, or to everybody with `None`.
async fn custom(registry: &Registry, event_type: &str, services: Option<&[&str]>) -> u64 {
    registry
        .custom_event(CustomEventBody {
            event_type: event_type.to_string(),
            body: serde_json::json!({"n": 1}),
            services: services.map(|s| s.iter().map(|s| s.to_string()).collect()),
            broadcast: services.is_none(),
        })
        .await
        .unwrap()
}

/// A webhook that retries within milliseconds, so tests stay fast.
fn quick(name: &str, url: Url) -> WebhookConfig {
    let mut c = WebhookConfig::new(url);
    c.name = name.to_string();
    c.backoff = Backoff {
        first: Duration::from_millis(5),
        max: Duration::from_millis(40),
    };
    c
}

/// Waits until the stats satisfy `done`, and returns them.
async fn until(hooks: &Webhooks, done: impl Fn(&[WebhookStats]) -> bool) -> Vec<WebhookStats> {
    timeout(PATIENCE, async {
        loop {
            let s = hooks.stats();
            if done(&s) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("webhook stats never got there: {:?}", hooks.stats()))
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test]
async fn deliveries_are_signed_and_say_what_they_carry() {
    let w = world().await;
    let mut signed = Endpoint::start(Answer::Ok).await;
    let mut plain = Endpoint::start(Answer::Ok).await;
    let mut with_secret = quick("signed", signed.url.clone());
    with_secret.secret = Some(Secret::new("s3cret"));
    let hooks = w.webhooks(vec![with_secret, quick("plain", plain.url.clone())]);

    let rev = w.register("web", 80).await;
    let hit = signed.next().await;
    assert_eq!(hit.header("content-type"), "application/json");
    assert_eq!(hit.header("x-muster-event"), "registered");
    assert_eq!(hit.header("x-muster-revision"), rev.to_string());
    let event = hit.json();
    assert_eq!(event["kind"], "registered");
    assert_eq!(event["revision"], rev);
    assert_eq!(event["service"], "web");
    assert_eq!(event["instance"]["id"], "web-10.0.0.1-80");

    let sig = hit
        .header("x-muster-signature")
        .strip_prefix("sha256=")
        .expect("signature is sha256=<hex>");
    assert_eq!(sig.len(), 64);
    let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
    mac.update(&hit.body);
    mac.verify_slice(&unhex(sig))
        .expect("the signature is HMAC-SHA256 of the body with the secret");
    let mut wrong = Hmac::<Sha256>::new_from_slice(b"other").unwrap();
    wrong.update(&hit.body);
    assert!(wrong.verify_slice(&unhex(sig)).is_err());

    let unsigned = plain.next().await;
    assert!(unsigned.headers.get("x-muster-signature").is_none());
    assert_eq!(unsigned.body, hit.body, "every webhook gets the same bytes");

    let stats = until(&hooks, |s| s.iter().all(|h| h.delivered == 1)).await;
    assert_eq!(stats[0].name, "signed");
    assert_eq!((stats[0].failed_attempts, stats[0].dropped), (0, 0));
}

#[tokio::test]
async fn webhooks_get_only_the_kinds_and_services_they_ask_for() {
    let w = world().await;
    let mut picky = Endpoint::start(Answer::Ok).await;
    let mut all = Endpoint::start(Answer::Ok).await;
    let mut c = quick("picky", picky.url.clone());
    c.kinds = Some(vec![EventKind::Registered, EventKind::Custom]);
    c.services = Some(["web".to_string()].into());
    let _hooks = w.webhooks(vec![c, quick("all", all.url.clone())]);

    w.register("web", 1).await;
    w.register("api", 1).await;
    w.registry
        .deregister("web", "web-10.0.0.1-1", DeregisterBody::default())
        .await
        .unwrap();
    custom(&w.registry, "only-api", Some(&["api"])).await;
    custom(&w.registry, "everybody", None).await;
    custom(&w.registry, "both", Some(&["web", "api"])).await;
    // Delivery is in order: once this arrives, everything before it has
    // been either sent or filtered out.
    let last = w.register("web", 2).await;

    let mut got = Vec::new();
    loop {
        let hit = picky.next().await;
        got.push(hit.what());
        if hit.revision() == last {
            break;
        }
    }
    let want = [
        ("registered", "web"),
        ("custom", BROADCAST),
        ("custom", "web"),
        ("registered", "web"),
    ];
    assert_eq!(
        got,
        want.map(|(k, s)| (k.to_string(), s.to_string())),
        "a broadcast reaches every webhook that takes custom events"
    );
    assert!(picky.hits.try_recv().is_err());

    // No filter: every event, including both of the two-service custom event.
    let mut kinds = Vec::new();
    for _ in 0..8 {
        kinds.push(all.next().await.what());
    }
    assert_eq!(kinds[2], ("deregistered".to_string(), "web".to_string()));
    assert_eq!(kinds[3], ("custom".to_string(), "api".to_string()));
    assert_eq!(kinds.last().unwrap().0, "registered");
}

#[tokio::test]
async fn failed_attempts_are_retried_and_order_is_kept() {
    let w = world().await;
    let mut ep = Endpoint::start(Answer::FailFirst(3)).await;
    let hooks = w.webhooks(vec![quick("flaky", ep.url.clone())]);

    let mut revisions = Vec::new();
    for port in 1..=20 {
        revisions.push(w.register("web", port).await);
    }
    for _ in 0..3 {
        let hit = ep.next().await;
        assert_eq!(hit.answered, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            hit.revision(),
            revisions[0],
            "nothing passes the event being retried"
        );
    }
    for &rev in &revisions {
        let hit = ep.next().await;
        assert_eq!(hit.answered, StatusCode::OK);
        assert_eq!(hit.revision(), rev);
        assert_eq!(hit.json()["revision"], rev);
    }
    let stats = until(&hooks, |s| s[0].delivered == 20).await;
    assert_eq!(stats[0].failed_attempts, 3);
    assert_eq!((stats[0].dropped, stats[0].queued), (0, 0));
    assert!(
        ep.hits.try_recv().is_err(),
        "each event is sent once it is accepted"
    );
}

#[tokio::test]
async fn a_dead_endpoint_never_holds_up_the_registry() {
    let w = world().await;
    let mut c = quick("dead", dead_url());
    c.queue = 50;
    let hooks = w.webhooks(vec![c]);

    timeout(PATIENCE, async {
        for port in 1..=200 {
            w.register("web", port).await;
        }
    })
    .await
    .expect("registry writes must not wait for a webhook");

    let stats = until(&hooks, |s| s[0].queued + s[0].dropped == 200).await;
    assert_eq!(stats[0].queued, 50, "the queue is bounded");
    assert_eq!(stats[0].dropped, 150);
    assert_eq!(stats[0].delivered, 0);
    until(&hooks, |s| s[0].failed_attempts >= 2).await;

    let mut registry = prometheus_client::registry::Registry::with_prefix("muster");
    hooks.register_metrics(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for line in [
        "muster_webhook_dropped_total{webhook=\"dead\"} 150",
        "muster_webhook_queue_length{webhook=\"dead\"} 50",
        "muster_webhook_delivered_total{webhook=\"dead\"} 0",
        "muster_webhook_failed_attempts_total{webhook=\"dead\"}",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
}

#[tokio::test]
async fn cancelling_stops_every_webhook_promptly() {
    let w = world().await;
    let mut hanging = Endpoint::start(Answer::Hang).await;
    let mut slow = quick("hanging", hanging.url.clone());
    slow.timeout = Duration::from_secs(60);
    let mut dead = quick("dead", dead_url());
    dead.backoff.first = Duration::from_secs(60);
    let hooks = w.webhooks(vec![slow, dead]);

    w.register("web", 80).await;
    hanging.next().await;
    // One request in flight, one webhook waiting out a long backoff.
    until(&hooks, |s| s[1].failed_attempts == 1).await;

    w.stop.cancel();
    w.tracker.close();
    timeout(Duration::from_secs(1), w.tracker.wait())
        .await
        .expect("webhooks stop on cancel without finishing their deliveries");
}
