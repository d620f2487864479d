//! The health engine end to end over a real registry (in-memory store):
//! ttl deadlines, thresholds, flap damping and deregister-after with paused
//! time; active probes against a real HTTP target with real time.

use muster_core::check::CheckPolicy;
use muster_core::health::FlapRule;
use muster_core::{EventKind, RegisterBody, Status};
use muster_health::history::ProbeHistory;
use muster_health::metrics::HealthMetrics;
use muster_health::probe::{Prober, ProberConfig};
use muster_health::{Health, HealthConfig, HealthParts};
use muster_registry::{InstanceFilter, Registry, events_of};
use muster_store::MemoryStore;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

struct Engine {
    registry: Arc<Registry>,
    health: Health,
    stop: CancellationToken,
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn engine(flap: FlapRule) -> Engine {
    let registry = Registry::open(
        Arc::new(MemoryStore::new(100_000)),
        CheckPolicy {
            allow_exec: false,
            deny_targets: vec![],
        },
    )
    .await
    .unwrap();
    let stop = CancellationToken::new();
    let health = Health::start(
        HealthParts {
            registry: registry.clone(),
            prober: Prober::new(ProberConfig {
                deny_targets: vec![],
                allow_exec: false,
                user_agent: "muster-test".into(),
            }),
            history: Arc::new(ProbeHistory::new(1000)),
            exporter: None,
            metrics: Arc::new(HealthMetrics::default()),
            cfg: HealthConfig {
                concurrency: 8,
                flap,
            },
        },
        &TaskTracker::new(),
        stop.clone(),
    );
    Engine {
        registry,
        health,
        stop,
    }
}

fn body(v: serde_json::Value) -> RegisterBody {
    serde_json::from_value(v).unwrap()
}

/// Lets the engine's tasks and the index catch up (paused time: no real waiting).
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

fn status(e: &Engine, service: &str, id: &str) -> Status {
    e.registry.instance_record(service, id).unwrap().status()
}

async fn events(e: &Engine) -> Vec<muster_core::Event> {
    let store = e.registry.store();
    let mut w = store.watch(1).await.unwrap();
    let mut out = Vec::new();
    while w.next_revision() <= store.current_revision() {
        out.extend(events_of(&w.next().await.unwrap().unwrap()));
    }
    out
}

#[tokio::test(start_paused = true)]
async fn ttl_checks_go_critical_on_the_servers_clock() {
    let e = engine(FlapRule::default()).await;
    e.registry
        .register("api", body(serde_json::json!({"id": "a", "address": "10.0.0.1", "port": 1, "checks": [{"ttl": "10s"}]})), None)
        .await
        .unwrap();
    settle().await;
    assert_eq!(
        status(&e, "api", "a"),
        Status::Critical,
        "a new ttl check starts critical"
    );
    e.health
        .ttl_update("api:a:ttl", Status::Passing, Some("ok".into()))
        .await
        .unwrap();
    settle().await;
    assert_eq!(status(&e, "api", "a"), Status::Passing);
    // Heartbeats keep it passing.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_secs(6)).await;
        e.health.heartbeat("api", "a", None, None).await;
    }
    settle().await;
    assert_eq!(status(&e, "api", "a"), Status::Passing);
    tokio::time::sleep(Duration::from_secs(11)).await;
    settle().await;
    let rec = e.registry.instance_record("api", "a").unwrap();
    assert_eq!(rec.status(), Status::Critical, "nothing arrived for 10s");
    assert!(
        rec.checks[0].output.contains("TTL expired"),
        "{}",
        rec.checks[0].output
    );
    let sc: Vec<_> = events(&e)
        .await
        .into_iter()
        .filter(|ev| ev.kind == EventKind::StatusChanged)
        .collect();
    assert_eq!(sc.len(), 2);
    assert_eq!(
        (sc[1].from, sc[1].to, sc[1].check.as_deref()),
        (
            Some(Status::Passing),
            Some(Status::Critical),
            Some("api:a:ttl")
        )
    );
    let err = e.health.ttl_update("api:nope", Status::Passing, None).await;
    assert!(err.is_err());
}

#[tokio::test(start_paused = true)]
async fn flapping_is_marked_and_its_events_collapsed() {
    let e = engine(FlapRule {
        threshold: 3,
        window_ms: 30_000,
    })
    .await;
    e.registry
        .register("api", body(serde_json::json!({"id": "a", "address": "10.0.0.1", "port": 1, "checks": [{"ttl": "1h"}]})), None)
        .await
        .unwrap();
    settle().await;
    for i in 0..10 {
        let s = if i % 2 == 0 {
            Status::Passing
        } else {
            Status::Critical
        };
        e.health.ttl_update("api:a:ttl", s, None).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    settle().await;
    let rec = e.registry.instance_record("api", "a").unwrap();
    assert!(rec.checks[0].flapping, "10 changes in 10s flap");
    assert_eq!(rec.status(), Status::Critical, "the status still follows");
    let announced = |evs: &[muster_core::Event]| {
        evs.iter()
            .filter(|ev| ev.kind == EventKind::StatusChanged)
            .count()
    };
    let evs = events(&e).await;
    // 3 ordinary changes, then the one that started flapping; the other 6 are collapsed.
    assert_eq!(announced(&evs), 4, "{evs:#?}");
    assert_eq!(evs.iter().filter(|ev| ev.flapping == Some(true)).count(), 1);
    tokio::time::sleep(Duration::from_secs(31)).await;
    settle().await;
    let rec = e.registry.instance_record("api", "a").unwrap();
    assert!(!rec.checks[0].flapping, "a quiet window settles it");
    let evs = events(&e).await;
    assert_eq!(
        evs.iter().filter(|ev| ev.flapping == Some(false)).count(),
        1,
        "one event says where it settled"
    );
}

#[tokio::test(start_paused = true)]
async fn long_critical_instances_are_deregistered() {
    let e = engine(FlapRule::default()).await;
    e.registry
        .register(
            "api",
            body(serde_json::json!({"id": "a", "address": "10.0.0.1", "port": 1, "deregister_critical_after": "1m", "checks": [{"ttl": "10s"}]})),
            None,
        )
        .await
        .unwrap();
    e.registry
        .register("api", body(serde_json::json!({"id": "b", "address": "10.0.0.2", "port": 1, "checks": [{"ttl": "10s"}]})), None)
        .await
        .unwrap();
    settle().await;
    tokio::time::sleep(Duration::from_secs(50)).await;
    settle().await;
    assert_eq!(
        e.registry
            .instances("api", &InstanceFilter::default())
            .len(),
        2
    );
    tokio::time::sleep(Duration::from_secs(15)).await;
    settle().await;
    let left: Vec<String> = e
        .registry
        .instances("api", &InstanceFilter::default())
        .iter()
        .map(|i| i.record().id)
        .collect();
    assert_eq!(
        left,
        ["b"],
        "critical for a minute: gone; b has no deregister_critical_after"
    );
    let dereg = events(&e)
        .await
        .into_iter()
        .find(|ev| ev.kind == EventKind::Deregistered)
        .unwrap();
    assert!(dereg.reason.unwrap().contains("deregister_critical_after"));
}

/// An HTTP target whose answer the test sets; counts the requests it got.
async fn target() -> (String, Arc<AtomicU16>, Arc<AtomicUsize>) {
    let code = Arc::new(AtomicU16::new(200));
    let hits = Arc::new(AtomicUsize::new(0));
    let (c, h) = (code.clone(), hits.clone());
    let app = axum::Router::new().route(
        "/health",
        axum::routing::get(move || {
            let (c, h) = (c.clone(), h.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                axum::http::StatusCode::from_u16(c.load(Ordering::SeqCst)).unwrap()
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/health", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, code, hits)
}

async fn wait_status(e: &Engine, service: &str, id: &str, want: Status, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while status(e, service, id) != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{service}/{id} never became {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_checks_follow_the_target_with_thresholds() {
    let e = engine(FlapRule::default()).await;
    let (url, code, hits) = target().await;
    e.registry
        .register(
            "web",
            body(serde_json::json!({"id": "w", "address": "127.0.0.1", "port": 80,
                "checks": [{"http": url, "interval": "200ms", "timeout": "200ms", "failures_before_critical": 2}]})),
            None,
        )
        .await
        .unwrap();
    wait_status(&e, "web", "w", Status::Passing, Duration::from_secs(5)).await;
    code.store(429, Ordering::SeqCst);
    wait_status(&e, "web", "w", Status::Warning, Duration::from_secs(5)).await;
    code.store(500, Ordering::SeqCst);
    wait_status(&e, "web", "w", Status::Critical, Duration::from_secs(5)).await;
    let probes = e.health.history().list("web:w:http", None, 1000);
    assert!(probes.len() >= 4, "every probe is recorded");
    assert_eq!(probes[0].status_code, Some(500), "newest first");
    assert!(
        probes
            .iter()
            .any(|p| p.status_code == Some(429) && p.status == Status::Warning)
    );
    // Removing the check stops its probes at once.
    e.registry
        .register(
            "web",
            body(serde_json::json!({"id": "w", "address": "127.0.0.1", "port": 80})),
            None,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = hits.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        before,
        "no probe after the check is gone"
    );
    assert_eq!(
        status(&e, "web", "w"),
        Status::Passing,
        "no checks: passing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_checks_spread_over_their_interval() {
    let e = engine(FlapRule::default()).await;
    let (url, _code, hits) = target().await;
    for i in 0..200 {
        e.registry
            .register(
                "many",
                body(
                    serde_json::json!({"id": format!("m{i}"), "address": "127.0.0.1", "port": 80,
                    "checks": [{"http": url, "interval": "1s", "timeout": "500ms"}]}),
                ),
                None,
            )
            .await
            .unwrap();
    }
    // In the first 300 ms of a 1 s interval only about 30 % of the checks run:
    // first runs are spread, not all at once.
    let start = hits.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let early = hits.load(Ordering::SeqCst) - start;
    assert!(
        early < 150,
        "{early} of 200 checks probed in the first 300 ms"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let passing = e
        .registry
        .instances(
            "many",
            &InstanceFilter {
                statuses: vec![Status::Passing],
                ..Default::default()
            },
        )
        .len();
    assert_eq!(passing, 200, "every check ran within its interval");
}

/// Whether the engine refuses an update of ttl check `id` as unknown.
async fn unknown_ttl(e: &Engine, id: &str) -> bool {
    e.health
        .ttl_update(id, Status::Passing, None)
        .await
        .is_err()
}

/// Changes to instances without checks are skipped by the engine unless it
/// tracks something of theirs: checks added later are scheduled, checks
/// dropped by a re-registration are forgotten.
#[tokio::test(start_paused = true)]
async fn checks_added_and_dropped_by_reregistration() {
    let e = engine(FlapRule::default()).await;
    let plain = serde_json::json!({"id": "a", "address": "10.0.0.1", "port": 1});
    let with_ttl = serde_json::json!({"id": "a", "address": "10.0.0.1", "port": 1, "checks": [{"ttl": "10s"}]});
    e.registry
        .register("api", body(plain.clone()), None)
        .await
        .unwrap();
    settle().await;
    assert!(unknown_ttl(&e, "api:a:ttl").await);
    // Checks added: scheduled, and the ttl runs out on the server's clock.
    e.registry
        .register("api", body(with_ttl), None)
        .await
        .unwrap();
    settle().await;
    e.health
        .ttl_update("api:a:ttl", Status::Passing, None)
        .await
        .unwrap();
    settle().await;
    assert_eq!(status(&e, "api", "a"), Status::Passing);
    // Checks dropped: forgotten, so nothing turns the instance critical.
    e.registry.register("api", body(plain), None).await.unwrap();
    settle().await;
    assert!(unknown_ttl(&e, "api:a:ttl").await);
    tokio::time::sleep(Duration::from_secs(30)).await;
    settle().await;
    assert_eq!(status(&e, "api", "a"), Status::Passing);
}
