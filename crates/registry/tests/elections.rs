//! Elections over the in-memory store, with paused time so leases lapse on
//! the store's clock without real waiting.

use muster_core::check::CheckPolicy;
use muster_core::{EventKind, Millis};
use muster_registry::{
    Campaign, CampaignBody, CandidateBody, Registry, RegistryError, election_event,
};
use muster_store::MemoryStore;
use std::sync::Arc;
use std::time::Duration;

const TTL: Duration = Duration::from_secs(10);

async fn registry() -> Arc<Registry> {
    Registry::open(Arc::new(MemoryStore::new(10_000)), CheckPolicy::default())
        .await
        .unwrap()
}

async fn campaign(reg: &Registry, name: &str, who: &str) -> Campaign {
    reg.campaign(
        name,
        CampaignBody {
            candidate: who.into(),
            ttl: Millis(TTL.as_millis() as u64),
        },
    )
    .await
    .unwrap()
}

fn candidate(who: &str) -> CandidateBody {
    CandidateBody {
        candidate: who.into(),
    }
}

/// Lets the store's lease-expiry task run once time has moved past a deadline.
async fn let_tasks_run() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

fn won(holder: &str, term: u64) -> Campaign {
    Campaign {
        leader: true,
        holder: holder.into(),
        term,
    }
}

#[tokio::test(start_paused = true)]
async fn leadership_is_exclusive_kept_by_heartbeats_and_handed_over_on_lapse() {
    let reg = registry().await;
    let unknown = reg.election("db").await.unwrap();
    assert_eq!((unknown.holder, unknown.term), (None, 0));

    assert_eq!(campaign(&reg, "db", "a").await, won("a", 1));
    assert_eq!(
        campaign(&reg, "db", "b").await,
        Campaign {
            leader: false,
            holder: "a".into(),
            term: 1
        }
    );
    // Campaigning again while leading keeps the same term.
    assert_eq!(campaign(&reg, "db", "a").await, won("a", 1));

    // Heartbeats every half ttl keep it far past the ttl.
    for _ in 0..8 {
        tokio::time::sleep(TTL / 2).await;
        let_tasks_run().await;
        let e = reg.heartbeat_leader("db", candidate("a")).await.unwrap();
        assert_eq!((e.holder.as_deref(), e.term), (Some("a"), 1));
    }
    assert!(!campaign(&reg, "db", "b").await.leader);

    // Heartbeats stop: the lease lapses on the server's clock.
    tokio::time::sleep(TTL + Duration::from_millis(1)).await;
    let_tasks_run().await;
    let lapsed = reg.election("db").await.unwrap();
    assert_eq!(
        (lapsed.holder, lapsed.term, lapsed.since),
        (None, 1, None),
        "the term survives the lapse"
    );
    assert!(matches!(
        reg.heartbeat_leader("db", candidate("a")).await,
        Err(RegistryError::NotFound(_))
    ));

    assert_eq!(campaign(&reg, "db", "b").await, won("b", 2));
    let now = reg.election("db").await.unwrap();
    assert_eq!((now.holder.as_deref(), now.term), (Some("b"), 2));
    assert!(now.since.is_some());
    assert!(matches!(
        reg.heartbeat_leader("db", candidate("a")).await,
        Err(RegistryError::Conflict(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn only_the_holder_can_resign() {
    let reg = registry().await;
    assert!(matches!(
        reg.resign("db", candidate("a")).await,
        Err(RegistryError::NotFound(_))
    ));
    campaign(&reg, "db", "a").await;
    assert!(matches!(
        reg.resign("db", candidate("b")).await,
        Err(RegistryError::Conflict(_))
    ));
    assert_eq!(
        reg.election("db").await.unwrap().holder.as_deref(),
        Some("a")
    );

    let after = reg.resign("db", candidate("a")).await.unwrap();
    assert_eq!((after.holder, after.term), (None, 1));
    assert_eq!(reg.election("db").await.unwrap().holder, None);
    assert_eq!(campaign(&reg, "db", "b").await, won("b", 2));
}

#[tokio::test(start_paused = true)]
async fn elections_are_independent_and_names_are_exact() {
    let reg = registry().await;
    assert_eq!(campaign(&reg, "db2", "a").await, won("a", 1));
    // `elect/db` is a prefix of `elect/db2`: it must still read as empty.
    assert_eq!(reg.election("db").await.unwrap().holder, None);
    assert_eq!(campaign(&reg, "db", "b").await, won("b", 1));
}

#[tokio::test(start_paused = true)]
async fn a_new_ttl_applies_to_the_held_leadership() {
    let reg = registry().await;
    campaign(&reg, "db", "a").await;
    let longer = CampaignBody {
        candidate: "a".into(),
        ttl: Millis(60_000),
    };
    assert_eq!(reg.campaign("db", longer).await.unwrap(), won("a", 1));
    // Past the first ttl, still held under the new one.
    tokio::time::sleep(TTL * 3).await;
    let_tasks_run().await;
    assert_eq!(
        reg.election("db").await.unwrap().holder.as_deref(),
        Some("a")
    );
    tokio::time::sleep(Duration::from_secs(31)).await;
    let_tasks_run().await;
    assert_eq!(reg.election("db").await.unwrap().holder, None);
}

/// The field a validation error names first.
fn field<T>(r: Result<T, RegistryError>) -> String {
    match r {
        Err(RegistryError::Invalid(v)) => v.first_field().to_string(),
        Err(e) => panic!("not a validation error: {e}"),
        Ok(_) => panic!("accepted"),
    }
}

#[tokio::test(start_paused = true)]
async fn invalid_requests_name_the_field() {
    let reg = registry().await;
    let body = |c: &str, ms| CampaignBody {
        candidate: c.into(),
        ttl: Millis(ms),
    };
    assert_eq!(field(reg.campaign("Bad!", body("a", 5000)).await), "name");
    assert_eq!(field(reg.campaign("db", body("", 5000)).await), "candidate");
    assert_eq!(field(reg.campaign("db", body("a", 500)).await), "ttl");
    assert_eq!(field(reg.campaign("db", body("a", 3_600_001)).await), "ttl");
    assert_eq!(
        field(reg.heartbeat_leader("db", candidate("a\u{7}")).await),
        "candidate"
    );
    assert_eq!(field(reg.resign("", candidate("a")).await), "name");
    assert_eq!(field(reg.election("UPPER").await), "name");
}

#[tokio::test(start_paused = true)]
async fn changes_become_custom_events() {
    let reg = registry().await;
    campaign(&reg, "db", "a").await;
    reg.resign("db", candidate("a")).await.unwrap();
    campaign(&reg, "db", "b").await;
    tokio::time::sleep(TTL * 2).await;
    let_tasks_run().await;

    let store = reg.store();
    let mut w = store.watch(1).await.unwrap();
    let mut holders = Vec::new();
    while w.next_revision() <= store.current_revision() {
        let change = w.next().await.unwrap().unwrap();
        let at = time::OffsetDateTime::UNIX_EPOCH;
        for ev in &change.events {
            if let Some(e) = election_event(ev, at, change.revision) {
                assert_eq!(e.kind, EventKind::Custom);
                assert_eq!(e.service, muster_core::BROADCAST);
                assert_eq!(e.revision, change.revision);
                let body = e.body.unwrap();
                assert_eq!(body["name"], "db");
                holders.push(body["holder"].as_str().unwrap_or("").to_string());
            }
        }
    }
    // Took, resigned, took, lapsed.
    assert_eq!(holders, ["a", "", "b", ""]);
}
