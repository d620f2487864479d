//! Registry behaviour over the in-memory store, with paused time for
//! everything TTL-driven.

use muster_core::check::CheckPolicy;
use muster_core::{
    DeregisterBody, EventKind, HeartbeatBody, MaintenanceBody, RegisterBody, ServiceBody, Status,
};
use muster_registry::{InstanceFilter, Registry, RegistryError, events_of};
use muster_store::MemoryStore;
use std::sync::Arc;
use std::time::Duration;

async fn registry() -> Arc<Registry> {
    Registry::open(Arc::new(MemoryStore::new(10_000)), CheckPolicy::default())
        .await
        .unwrap()
}

fn body(json: serde_json::Value) -> RegisterBody {
    serde_json::from_value(json).unwrap()
}

/// Every registry event recorded in the store so far.
async fn events(reg: &Registry) -> Vec<muster_core::Event> {
    let store = reg.store();
    let mut w = store.watch(1).await.unwrap();
    let mut out = Vec::new();
    while w.next_revision() <= store.current_revision() {
        out.extend(events_of(&w.next().await.unwrap().unwrap()));
    }
    out
}

/// Lets the background tasks (lease expiry, the index follower) run.
async fn settle(reg: &Registry) {
    for _ in 0..100 {
        if reg.revision() == reg.store().current_revision() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("index did not catch up");
}

#[tokio::test(start_paused = true)]
async fn register_is_idempotent_and_ids_are_derived() {
    let reg = registry().await;
    let first = reg
        .register(
            "web",
            body(serde_json::json!({"address": "10.0.0.5", "port": 80})),
            None,
        )
        .await
        .unwrap();
    assert!(first.created);
    assert_eq!(first.instance.record().id, "web-10.0.0.5-80");
    let again = reg
        .register(
            "web",
            body(serde_json::json!({"address": "10.0.0.5", "port": 80})),
            None,
        )
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(
        again.revision, first.revision,
        "an identical re-registration writes nothing"
    );
    let changed = reg
        .register(
            "web",
            body(serde_json::json!({"address": "10.0.0.5", "port": 80, "tags": ["v2"]})),
            None,
        )
        .await
        .unwrap();
    assert!(!changed.created);
    assert_eq!(changed.revision, first.revision + 1);
    assert_eq!(
        changed.instance.record().registered_at,
        first.instance.record().registered_at
    );
    assert_eq!(reg.instances("web", &InstanceFilter::default()).len(), 1);
    let kinds: Vec<_> = events(&reg).await.into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::Registered, EventKind::Registered]);
}

#[tokio::test(start_paused = true)]
async fn ttl_instances_expire_on_the_servers_clock_unless_heartbeated() {
    let reg = registry().await;
    reg.register(
        "api",
        body(serde_json::json!({"address": "10.0.0.1", "port": 1, "ttl": "10s"})),
        None,
    )
    .await
    .unwrap();
    reg.register(
        "api",
        body(serde_json::json!({"address": "10.0.0.2", "port": 1, "ttl": "10s"})),
        None,
    )
    .await
    .unwrap();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(4)).await;
        let hb = HeartbeatBody {
            metrics: Some(serde_json::json!({"cpu": 0.25})),
            ..Default::default()
        };
        reg.heartbeat("api", "api-10.0.0.1-1", hb).await.unwrap();
    }
    settle(&reg).await;
    let left: Vec<_> = reg
        .instances("api", &InstanceFilter::default())
        .into_iter()
        .map(|v| v.record().id.clone())
        .collect();
    assert_eq!(
        left,
        ["api-10.0.0.1-1"],
        "the silent instance expired after 10s, the heartbeated one lives"
    );
    let kept = reg.instance("api", "api-10.0.0.1-1").unwrap();
    assert_eq!(kept.metrics(), Some(serde_json::json!({"cpu": 0.25})));
    assert!(kept.last_heartbeat_at().is_some());
    let err = reg
        .heartbeat("api", "api-10.0.0.2-1", HeartbeatBody::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::NotFound(_)),
        "a heartbeat for an unknown instance is 404"
    );
    tokio::time::sleep(Duration::from_secs(11)).await;
    settle(&reg).await;
    assert!(reg.instances("api", &InstanceFilter::default()).is_empty());
    let expired: Vec<_> = events(&reg)
        .await
        .into_iter()
        .filter(|e| e.kind == EventKind::Expired)
        .map(|e| e.instance.unwrap().id.clone())
        .collect();
    assert_eq!(expired, ["api-10.0.0.2-1", "api-10.0.0.1-1"]);
}

#[tokio::test(start_paused = true)]
async fn reregistering_a_ttl_instance_moves_it_to_a_fresh_lease() {
    let reg = registry().await;
    let b = || body(serde_json::json!({"address": "10.0.0.1", "port": 1, "ttl": "10s"}));
    reg.register("api", b(), None).await.unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let again = reg.register("api", b(), None).await.unwrap();
    assert!(!again.created, "re-registration renews the lease");
    tokio::time::sleep(Duration::from_secs(8)).await;
    settle(&reg).await;
    assert_eq!(reg.instances("api", &InstanceFilter::default()).len(), 1);
    // Switching to persistent detaches it from its lease.
    reg.register(
        "api",
        body(serde_json::json!({"address": "10.0.0.1", "port": 1})),
        None,
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    settle(&reg).await;
    assert_eq!(reg.instances("api", &InstanceFilter::default()).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn deregistration_keeps_reason_and_error_on_the_event() {
    let reg = registry().await;
    reg.register(
        "web",
        body(serde_json::json!({"address": "h", "port": 80, "id": "w1"})),
        None,
    )
    .await
    .unwrap();
    let bye = DeregisterBody {
        reason: Some("shutdown".into()),
        error: Some("exit status 3".into()),
    };
    reg.deregister("web", "w1", bye.clone()).await.unwrap();
    assert!(matches!(
        reg.deregister("web", "w1", bye).await,
        Err(RegistryError::NotFound(_))
    ));
    let ev = events(&reg).await.pop().unwrap();
    assert_eq!(ev.kind, EventKind::Deregistered);
    assert_eq!(
        (ev.reason.as_deref(), ev.error.as_deref()),
        (Some("shutdown"), Some("exit status 3"))
    );
    assert_eq!(ev.instance.unwrap().id, "w1");
}

#[tokio::test(start_paused = true)]
async fn status_changes_filters_and_maintenance() {
    let reg = registry().await;
    for (id, tags) in [
        ("a", vec!["eu"]),
        ("b", vec!["eu", "v2"]),
        ("c", vec!["us"]),
    ] {
        reg.register(
            "svc",
            body(serde_json::json!({"id": id, "address": "h", "port": 1, "tags": tags})),
            None,
        )
        .await
        .unwrap();
    }
    let hb = HeartbeatBody {
        status: Some(Status::Warning),
        output: Some("disk 91%".into()),
        ..Default::default()
    };
    assert_eq!(
        reg.heartbeat("svc", "b", hb.clone())
            .await
            .unwrap()
            .record()
            .status(),
        Status::Warning
    );
    let rev = reg.revision();
    reg.heartbeat("svc", "b", hb).await.unwrap();
    assert_eq!(
        reg.revision(),
        rev,
        "repeating the same status writes nothing"
    );
    reg.maintenance(
        "svc",
        "c",
        MaintenanceBody {
            enabled: true,
            reason: Some("deploy".into()),
        },
    )
    .await
    .unwrap();
    let ids = |f: InstanceFilter| -> Vec<String> {
        reg.instances("svc", &f)
            .into_iter()
            .map(|v| v.record().id.clone())
            .collect()
    };
    assert_eq!(
        ids(InstanceFilter {
            statuses: vec![Status::Warning],
            ..Default::default()
        }),
        ["b"]
    );
    assert_eq!(
        ids(InstanceFilter {
            statuses: vec![Status::Warning, Status::Maintenance],
            ..Default::default()
        }),
        ["b", "c"]
    );
    assert_eq!(
        ids(InstanceFilter {
            tags: vec!["eu".into(), "v2".into()],
            ..Default::default()
        }),
        ["b"]
    );
    assert_eq!(
        ids(InstanceFilter {
            healthy: Some(true),
            ..Default::default()
        }),
        ["a", "b"]
    );
    assert_eq!(
        ids(InstanceFilter {
            healthy: Some(true),
            strict: true,
            ..Default::default()
        }),
        ["a"]
    );
    let evs = events(&reg).await;
    let sc: Vec<_> = evs
        .iter()
        .filter(|e| e.kind == EventKind::StatusChanged)
        .collect();
    assert_eq!(sc.len(), 2);
    assert_eq!(
        (
            sc[0].from,
            sc[0].to,
            sc[0].check.as_deref(),
            sc[0].output.as_deref()
        ),
        (
            Some(Status::Passing),
            Some(Status::Warning),
            Some("heartbeat"),
            Some("disk 91%")
        )
    );
    assert_eq!(
        (sc[1].from, sc[1].to),
        (Some(Status::Passing), Some(Status::Maintenance))
    );
    reg.maintenance(
        "svc",
        "c",
        MaintenanceBody {
            enabled: false,
            reason: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        reg.instance("svc", "c").unwrap().record().status(),
        Status::Passing
    );
}

#[tokio::test(start_paused = true)]
async fn services_delete_refuses_while_instances_exist_unless_cascade() {
    let reg = registry().await;
    let (_, created, _) = reg
        .put_service(
            "pay",
            ServiceBody {
                tags: vec!["t".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(created);
    let (_, created, _) = reg
        .put_service("pay", ServiceBody::default())
        .await
        .unwrap();
    assert!(!created);
    reg.register(
        "pay",
        body(serde_json::json!({"address": "h", "port": 1})),
        None,
    )
    .await
    .unwrap();
    assert!(matches!(
        reg.delete_service("pay", false).await,
        Err(RegistryError::Conflict(_))
    ));
    assert_eq!(reg.services()[0].instances, 1);
    reg.delete_service("pay", true).await.unwrap();
    assert!(reg.services().is_empty());
    assert!(matches!(
        reg.service("pay"),
        Err(RegistryError::NotFound(_))
    ));
    assert!(matches!(
        reg.delete_service("pay", true).await,
        Err(RegistryError::NotFound(_))
    ));
    let kinds: Vec<_> = events(&reg).await.into_iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EventKind::ServiceUpdated,
            EventKind::ServiceUpdated,
            EventKind::Registered,
            EventKind::ServiceDeleted,
            EventKind::Deregistered
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn invalid_and_forbidden_registrations_write_nothing() {
    let reg = registry().await;
    let bad = reg
        .register(
            "web",
            body(serde_json::json!({"address": "h", "port": 0})),
            None,
        )
        .await;
    assert!(matches!(bad, Err(RegistryError::Invalid(e)) if e.first_field() == "port"));
    let exec = reg
        .register(
            "web",
            body(serde_json::json!({"address": "h", "port": 1, "checks": [{"exec": ["true"]}]})),
            None,
        )
        .await;
    assert!(matches!(exec, Err(RegistryError::Forbidden(_))));
    let bad_name = reg
        .register(
            "Web",
            body(serde_json::json!({"address": "h", "port": 1})),
            None,
        )
        .await;
    assert!(matches!(bad_name, Err(RegistryError::Invalid(e)) if e.first_field() == "service"));
    assert_eq!(reg.store().current_revision(), 0);
}

#[tokio::test]
async fn the_index_reloads_an_existing_store() {
    let store: muster_store::DynStore = Arc::new(MemoryStore::new(100));
    let first = Registry::open(store.clone(), CheckPolicy::default())
        .await
        .unwrap();
    first
        .register(
            "web",
            body(serde_json::json!({"address": "h", "port": 1})),
            None,
        )
        .await
        .unwrap();
    first.close();
    let second = Registry::open(store, CheckPolicy::default()).await.unwrap();
    assert_eq!(second.instances("web", &InstanceFilter::default()).len(), 1);
    assert_eq!(second.revision(), 1);
}
