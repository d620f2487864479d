//! The registry's operations: validate, write through the store, wait until
//! the index has applied the write, answer from the index.

use crate::error::RegistryError;
use crate::index::{Index, InstanceEntry, ServiceSummary};
use crate::keys::{self, Note, NoteKind};
use crate::view::{InstanceJson, list_json};
use bytes::Bytes;
use muster_core::Registration;
use muster_core::check::CheckPolicy;
use muster_core::health::{Flap, Transition};
use muster_core::{CheckRecord, CheckSpec};
use muster_core::{
    DeregisterBody, HeartbeatBody, InstanceRecord, MaintenanceBody, RegisterBody, RegisterError,
    Reported, ServiceBody, ServiceRecord, Status,
};
use muster_store::{Change, Compare, DynStore, Revision, StoreError, Txn};
use parking_lot::RwLock;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

/// How long a write waits for the index to apply it before giving up.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Compare-and-set retries before a write reports a conflict.
const CAS_ATTEMPTS: usize = 8;

pub struct Registry {
    store: DynStore,
    /// Written only by the follower task; never held across an `.await`.
    index: RwLock<Index>,
    /// The revision the index has applied.
    applied: watch::Sender<Revision>,
    /// Every change, once the index has applied it (see [`Registry::subscribe`]).
    changes: broadcast::Sender<Arc<Change>>,
    /// One wake-up per watched service, created by the first waiter
    /// (Consul blocking queries): a change wakes only its own service's waiters.
    service_wakers: parking_lot::Mutex<std::collections::HashMap<String, watch::Sender<Revision>>>,
    policy: CheckPolicy,
    cancel: CancellationToken,
}

/// The outcome of a registration.
pub struct Registered {
    pub instance: InstanceJson,
    /// False when it replaced an instance with the same id.
    pub created: bool,
    pub revision: Revision,
    /// The lease it lives on (ttl and session instances).
    pub lease: Option<muster_store::LeaseId>,
}

/// `GET /api/v1/services/{name}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ServiceDetail {
    pub name: String,
    pub tags: Vec<String>,
    pub meta: std::collections::BTreeMap<String, String>,
    pub spec: serde_json::Value,
    pub revision: Revision,
    #[serde(skip)]
    #[schema(value_type = Vec<muster_core::InstanceDoc>)]
    pub instances: Vec<InstanceJson>,
}

impl ServiceDetail {
    /// The definition's fields, then `"instances"` written from the stored bytes.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec());
        out.pop();
        if out.len() > 1 {
            out.push(b',');
        }
        out.extend_from_slice(br#""instances":"#);
        out.extend_from_slice(&list_json(&self.instances));
        out.push(b'}');
        out
    }
}

/// A check and where it belongs.
#[derive(Debug, Clone)]
pub struct OwnedCheck {
    pub service: String,
    pub instance: String,
    pub check: CheckRecord,
    pub deregister_critical_after: Option<muster_core::Millis>,
}

impl OwnedCheck {
    fn of(rec: &InstanceRecord, check: CheckRecord) -> OwnedCheck {
        OwnedCheck {
            service: rec.service.clone(),
            instance: rec.id.clone(),
            check,
            deregister_critical_after: rec.deregister_critical_after,
        }
    }

    fn find(rec: &InstanceRecord, check_id: &str) -> Option<OwnedCheck> {
        rec.checks
            .iter()
            .find(|c| c.id == check_id)
            .map(|c| OwnedCheck::of(rec, c.clone()))
    }
}

/// Filters of `GET .../instances`.
#[derive(Debug, Default, Clone)]
pub struct InstanceFilter {
    /// Any of these (empty: all).
    pub statuses: Vec<Status>,
    /// All of these.
    pub tags: Vec<String>,
    /// Healthy (or not): passing, plus warning unless `strict`.
    pub healthy: Option<bool>,
    pub strict: bool,
}

impl InstanceFilter {
    fn matches(&self, e: &InstanceEntry) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&e.status))
            && e.has_tags(&self.tags)
            && self
                .healthy
                .is_none_or(|h| e.status.is_healthy(self.strict) == h)
    }
}

fn now() -> muster_core::Timestamp {
    time::OffsetDateTime::now_utc()
}

fn record_of(e: &InstanceEntry) -> Result<InstanceRecord, RegistryError> {
    e.record().map_err(RegistryError::Unavailable)
}

fn not_found(service: &str, id: &str) -> RegistryError {
    RegistryError::NotFound(format!(
        "instance {id:?} of service {service:?} is not registered; register it (again)"
    ))
}

impl Registry {
    /// Loads the index from a store snapshot and starts following the store.
    pub async fn open(
        store: DynStore,
        policy: CheckPolicy,
    ) -> Result<Arc<Registry>, RegistryError> {
        let snap = store.snapshot(b"").await?;
        let index = Index::from_snapshot(&snap);
        let (applied, _) = watch::channel(snap.revision);
        let reg = Arc::new(Registry {
            store,
            index: RwLock::new(index),
            applied,
            changes: broadcast::channel(4096).0,
            service_wakers: Default::default(),
            policy,
            cancel: CancellationToken::new(),
        });
        let watcher = reg.store.watch(snap.revision + 1).await?;
        tokio::spawn(follow(reg.clone(), watcher));
        Ok(reg)
    }

    /// Stops following the store. The store itself is closed by its owner.
    pub fn close(&self) {
        self.cancel.cancel();
    }

    pub fn store(&self) -> &DynStore {
        &self.store
    }

    /// The revision the index reflects.
    pub fn revision(&self) -> Revision {
        *self.applied.borrow()
    }

    /// Waits until the index has applied `rev`, so the caller reads its write.
    async fn applied(&self, rev: Revision) -> Result<(), RegistryError> {
        let mut rx = self.applied.subscribe();
        match tokio::time::timeout(APPLY_TIMEOUT, rx.wait_for(|&r| r >= rev)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(RegistryError::NotReady),
            Err(_) => Err(RegistryError::Unavailable(format!(
                "the write at revision {rev} is durable but the index has not applied it yet; retry the read"
            ))),
        }
    }

    /// Waits until the index reflects revision `rev` (for readers that learn
    /// of a change from the store before the index applied it).
    pub async fn caught_up(&self, rev: Revision) -> Result<(), RegistryError> {
        self.applied(rev).await
    }

    /// After a lost compare-and-set: let the index catch up with the store.
    async fn catch_up(&self) -> Result<(), RegistryError> {
        self.applied(self.store.current_revision()).await
    }

    fn entry(&self, service: &str, id: &str) -> Option<InstanceEntry> {
        self.index.read().instance(service, id).cloned()
    }

    // ----- services -----

    pub fn services(&self) -> Vec<ServiceSummary> {
        self.index.read().summaries()
    }

    pub fn service(&self, name: &str) -> Result<ServiceDetail, RegistryError> {
        let idx = self.index.read();
        let e = idx.services.get(name).ok_or_else(|| {
            RegistryError::NotFound(format!(
                "service {name:?} has neither a definition nor instances"
            ))
        })?;
        let def = e.def.as_deref();
        Ok(ServiceDetail {
            name: name.to_string(),
            tags: def.map(|d| d.tags.clone()).unwrap_or_default(),
            meta: def.map(|d| d.meta.clone()).unwrap_or_default(),
            spec: def.map(|d| d.spec.clone()).unwrap_or_default(),
            instances: e.instances.values().map(InstanceEntry::to_json).collect(),
            revision: idx.revision,
        })
    }

    /// Creates or replaces a definition; `true` when it was created.
    pub async fn put_service(
        &self,
        name: &str,
        body: ServiceBody,
    ) -> Result<(ServiceRecord, bool, Revision), RegistryError> {
        muster_core::name::validate_service_name(name)
            .map_err(|m| muster_core::ValidationError::field("name", m))?;
        let key = keys::service_key(name);
        for _ in 0..CAS_ATTEMPTS {
            let prev = self
                .index
                .read()
                .services
                .get(name)
                .and_then(|e| e.def.clone());
            let rec = body
                .clone()
                .into_record(name, now(), prev.as_ref().map(|p| p.created_at))?;
            let guard = match &prev {
                Some(_) => Compare::Exists(key.clone().into()),
                None => Compare::Missing(key.clone().into()),
            };
            let res = self
                .store
                .txn(
                    Txn::new()
                        .when(guard)
                        .put(key.clone(), keys::encode(&rec), None),
                )
                .await?;
            if res.succeeded {
                self.applied(res.revision).await?;
                return Ok((rec, prev.is_none(), res.revision));
            }
            self.catch_up().await?;
        }
        Err(RegistryError::Conflict(format!(
            "service {name:?} kept changing concurrently; retry"
        )))
    }

    pub async fn delete_service(
        &self,
        name: &str,
        cascade: bool,
    ) -> Result<Revision, RegistryError> {
        let (has_def, count) = {
            let idx = self.index.read();
            let e = idx.services.get(name).ok_or_else(|| {
                RegistryError::NotFound(format!("service {name:?} does not exist"))
            })?;
            (e.def.is_some(), e.instances.len())
        };
        if count > 0 && !cascade {
            return Err(RegistryError::Conflict(format!(
                "service {name:?} still has {count} instance(s); deregister them first or delete with ?cascade=true"
            )));
        }
        let mut note = Note::new(NoteKind::ServiceDeleted);
        note.reason = Some("service deleted".into());
        let mut txn = Txn::new().note(note.encode());
        if has_def {
            txn = txn.delete(keys::service_key(name));
        }
        if cascade {
            txn = txn.delete_prefix(keys::instance_prefix(name));
        }
        let res = self.store.txn(txn).await?;
        self.applied(res.revision).await?;
        Ok(res.revision)
    }

    // ----- instances -----

    pub fn instances(&self, service: &str, filter: &InstanceFilter) -> Vec<InstanceJson> {
        let idx = self.index.read();
        match idx.services.get(service) {
            None => Vec::new(),
            Some(e) => e
                .instances
                .values()
                .filter(|i| filter.matches(i))
                .map(InstanceEntry::to_json)
                .collect(),
        }
    }

    pub fn instance(&self, service: &str, id: &str) -> Result<InstanceJson, RegistryError> {
        self.index
            .read()
            .instance(service, id)
            .map(InstanceEntry::to_json)
            .ok_or_else(|| not_found(service, id))
    }

    /// Registers (or idempotently re-registers) an instance.
    pub async fn register(
        &self,
        service: &str,
        body: RegisterBody,
        path_id: Option<&str>,
    ) -> Result<Registered, RegistryError> {
        let reg = self.validate(service, body, path_id)?;
        let lease_ttl = reg.ttl.map(|t| t.as_duration());
        self.write_registration(service, reg, lease_ttl, false)
            .await
    }

    fn validate(
        &self,
        service: &str,
        body: RegisterBody,
        path_id: Option<&str>,
    ) -> Result<Registration, RegistryError> {
        body.validate(service, path_id, &self.policy)
            .map_err(|e| match e {
                RegisterError::Invalid(v) => RegistryError::Invalid(v),
                RegisterError::Forbidden(m) => RegistryError::Forbidden(m),
            })
    }

    /// Registers an instance bound to a session: it lives on a lease of
    /// `lease_ttl` that the session keeps alive and revokes when it ends.
    pub async fn register_session(
        &self,
        service: &str,
        body: RegisterBody,
        lease_ttl: std::time::Duration,
    ) -> Result<Registered, RegistryError> {
        if body.ttl.is_some() {
            return Err(muster_core::ValidationError::field(
                "ttl",
                "a session instance lives as long as its socket; leave ttl out",
            )
            .into());
        }
        let mut reg = self.validate(service, body, None)?;
        reg.lifetime = muster_core::Lifetime::Session;
        self.write_registration(service, reg, Some(lease_ttl), true)
            .await
    }

    /// Writes a validated registration; with `lease_ttl` the instance lives on
    /// a fresh lease. `always_write` skips the "identical, just renew" shortcut
    /// (a session must own its lease).
    async fn write_registration(
        &self,
        service: &str,
        reg: Registration,
        lease_ttl: Option<std::time::Duration>,
        always_write: bool,
    ) -> Result<Registered, RegistryError> {
        let key = keys::instance_key(service, &reg.id);
        for _ in 0..CAS_ATTEMPTS {
            let prev = self.entry(service, &reg.id);
            let prev_rec = prev.as_ref().map(record_of).transpose()?;
            let rec = InstanceRecord::new(reg.clone(), now(), prev_rec.as_ref());
            if let (Some(p), Some(pr)) = (&prev, &prev_rec)
                && !always_write
                && pr.same_definition(&rec)
            {
                // Nothing a reader sees would change: renew instead of writing.
                let unchanged = match p.lease() {
                    None => true,
                    Some(l) => self.store.lease_keepalive(l).await.is_ok(),
                };
                if unchanged {
                    return Ok(Registered {
                        instance: p.to_json(),
                        created: false,
                        revision: self.revision(),
                        lease: p.lease(),
                    });
                }
            }
            let lease = match lease_ttl {
                Some(ttl) => Some(self.store.lease_grant(ttl).await?),
                None => None,
            };
            let expected = prev.as_ref().map_or(0, |p| p.mod_revision);
            let txn = Txn::new()
                .when(Compare::ModRevision(key.clone().into(), expected))
                .put(key.clone(), keys::encode(&rec), lease);
            let res = match self.store.txn(txn).await {
                Ok(r) => r,
                Err(e) => {
                    if let Some(l) = lease {
                        let _ = self.store.lease_revoke(l).await;
                    }
                    return Err(e.into());
                }
            };
            if !res.succeeded {
                if let Some(l) = lease {
                    let _ = self.store.lease_revoke(l).await;
                }
                self.catch_up().await?;
                continue;
            }
            if let Some(old) = prev.as_ref().and_then(|p| p.lease())
                && Some(old) != lease
            {
                // The key has moved to the new lease; this deletes nothing.
                let _ = self.store.lease_revoke(old).await;
            }
            self.applied(res.revision).await?;
            // Normally the index's copy; if the instance already expired, what was written.
            let instance = self
                .instance(service, &reg.id)
                .unwrap_or_else(|_| InstanceJson {
                    json: Bytes::from(serde_json::to_vec(&rec).unwrap_or_default()),
                    volatile: Default::default(),
                });
            return Ok(Registered {
                instance,
                created: prev.is_none(),
                revision: res.revision,
                lease,
            });
        }
        Err(RegistryError::Conflict(format!(
            "instance {:?} kept changing concurrently; retry",
            reg.id
        )))
    }

    pub async fn deregister(
        &self,
        service: &str,
        id: &str,
        body: DeregisterBody,
    ) -> Result<Revision, RegistryError> {
        body.validate()?;
        let key = keys::instance_key(service, id);
        let lease = self.entry(service, id).and_then(|e| e.lease());
        let mut note = Note::new(NoteKind::Deregistered);
        note.reason = body.reason;
        note.error = body.error;
        let res = self
            .store
            .txn(
                Txn::new()
                    .when(Compare::Exists(key.clone().into()))
                    .delete(key)
                    .note(note.encode()),
            )
            .await?;
        if !res.succeeded {
            return Err(not_found(service, id));
        }
        if let Some(l) = lease {
            let _ = self.store.lease_revoke(l).await;
        }
        self.applied(res.revision).await?;
        Ok(res.revision)
    }

    /// Renews a ttl instance's lease, keeps its metrics, and records a status
    /// it reports about itself. Touches the disk only when that status changes.
    pub async fn heartbeat(
        &self,
        service: &str,
        id: &str,
        body: HeartbeatBody,
    ) -> Result<InstanceJson, RegistryError> {
        body.validate()?;
        let entry = self
            .entry(service, id)
            .ok_or_else(|| not_found(service, id))?;
        if let Some(l) = entry.lease() {
            match self.store.lease_keepalive(l).await {
                Ok(_) => {}
                Err(StoreError::LeaseNotFound(_)) => return Err(not_found(service, id)),
                Err(e) => return Err(e.into()),
            }
        }
        // Created under the index lock, so the follower carries it over when
        // it replaces the entry.
        let volatile = {
            let idx = self.index.read();
            idx.instance(service, id)
                .map(|e| e.volatile.get_or_init(Default::default).clone())
        };
        if let Some(v) = volatile {
            let mut v = v.lock();
            v.last_heartbeat_at = Some(now());
            if let Some(m) = &body.metrics {
                v.metrics = Some(Bytes::from(serde_json::to_vec(m).unwrap_or_default()));
            }
        }
        if let Some(status) = body.status {
            let reported = Reported {
                status,
                output: body.output.unwrap_or_default(),
            };
            let mut note = Note::new(NoteKind::StatusReported);
            note.check = Some("heartbeat".into());
            note.output = Some(reported.output.clone());
            self.update(service, id, note, |rec| {
                if rec.reported.as_ref() == Some(&reported) {
                    return false;
                }
                rec.reported = Some(reported.clone());
                true
            })
            .await?;
        }
        self.instance(service, id)
    }

    pub async fn maintenance(
        &self,
        service: &str,
        id: &str,
        body: MaintenanceBody,
    ) -> Result<InstanceJson, RegistryError> {
        body.validate()?;
        let want = body
            .enabled
            .then(|| body.reason.clone().unwrap_or_default());
        let mut note = Note::new(NoteKind::Write);
        note.check = Some("maintenance".into());
        note.output = body.reason.clone();
        self.update(service, id, note, |rec| {
            if rec.maintenance == want {
                return false;
            }
            rec.maintenance = want.clone();
            true
        })
        .await?;
        self.instance(service, id)
    }

    /// Read-modify-write of one instance record under compare-and-set.
    /// `change` returns false when there is nothing to write.
    async fn update(
        &self,
        service: &str,
        id: &str,
        note: Note,
        change: impl Fn(&mut InstanceRecord) -> bool,
    ) -> Result<(), RegistryError> {
        let key = keys::instance_key(service, id);
        for _ in 0..CAS_ATTEMPTS {
            let entry = self
                .entry(service, id)
                .ok_or_else(|| not_found(service, id))?;
            let mut rec = record_of(&entry)?;
            if !change(&mut rec) {
                return Ok(());
            }
            rec.refresh_status();
            rec.updated_at = now();
            let txn = Txn::new()
                .when(Compare::ModRevision(key.clone().into(), entry.mod_revision))
                .put(key.clone(), keys::encode(&rec), entry.lease())
                .note(note.encode());
            match self.store.txn(txn).await {
                Ok(res) if res.succeeded => return self.applied(res.revision).await,
                Ok(_) => self.catch_up().await?,
                // The lease expired under us: the instance is gone.
                Err(StoreError::LeaseNotFound(_)) => return Err(not_found(service, id)),
                Err(e) => return Err(e.into()),
            }
        }
        Err(RegistryError::Conflict(format!(
            "instance {id:?} kept changing concurrently; retry"
        )))
    }

    // ----- custom events -----

    /// Records a custom event; it reaches watchers of its services (or all)
    /// through the change feed, in order with every other change.
    pub async fn custom_event(
        &self,
        body: muster_core::CustomEventBody,
    ) -> Result<Revision, RegistryError> {
        body.validate()?;
        let mut note = Note::new(NoteKind::Custom);
        note.event_type = Some(body.event_type);
        note.body = Some(body.body);
        note.services = if body.broadcast { None } else { body.services };
        let res = self.store.txn(Txn::new().note(note.encode())).await?;
        Ok(res.revision)
    }

    /// Every instance of each service (all services when `services` is
    /// `None`), and the revision that view reflects: a feed's opening snapshot.
    pub fn snapshot(
        &self,
        services: Option<&[String]>,
    ) -> (Revision, Vec<(String, Vec<InstanceJson>)>) {
        let idx = self.index.read();
        let list = |e: Option<&crate::index::ServiceEntry>| -> Vec<InstanceJson> {
            e.map(|e| e.instances.values().map(InstanceEntry::to_json).collect())
                .unwrap_or_default()
        };
        let out = match services {
            Some(names) => names
                .iter()
                .map(|n| (n.clone(), list(idx.services.get(n))))
                .collect(),
            None => idx
                .services
                .iter()
                .map(|(n, e)| (n.clone(), list(Some(e))))
                .collect(),
        };
        (idx.revision, out)
    }

    // ----- blocking reads (Consul-compatible API) -----

    fn wake_services(&self, touched: &[String], rev: Revision) {
        let mut wakers = self.service_wakers.lock();
        for s in touched {
            if let Some(tx) = wakers.get(s) {
                if tx.receiver_count() == 0 {
                    wakers.remove(s);
                } else {
                    tx.send_replace(rev);
                }
            }
        }
    }

    /// The revision that last changed `service` (0 if never seen).
    pub fn service_index(&self, service: &str) -> Revision {
        self.index
            .read()
            .modified
            .get(service)
            .copied()
            .unwrap_or(0)
    }

    /// Waits until `service` changes past `index`, or `wait` passes.
    pub async fn wait_service(&self, service: &str, index: Revision, wait: std::time::Duration) {
        let mut rx = {
            let mut wakers = self.service_wakers.lock();
            wakers
                .entry(service.to_string())
                .or_insert_with(|| watch::channel(0).0)
                .subscribe()
        };
        if self.service_index(service) > index {
            return;
        }
        let _ = tokio::time::timeout(wait, rx.wait_for(|&r| r > index)).await;
    }

    /// Waits until anything changes past `index`, or `wait` passes.
    pub async fn wait_any(&self, index: Revision, wait: std::time::Duration) {
        let mut rx = self.applied.subscribe();
        let _ = tokio::time::timeout(wait, rx.wait_for(|&r| r > index)).await;
    }

    /// The service an instance id belongs to (ids are unique per service;
    /// the first match wins, in service-name order).
    pub fn find_instance(&self, id: &str) -> Option<String> {
        let idx = self.index.read();
        idx.services
            .iter()
            .find(|(_, e)| e.instances.contains_key(id))
            .map(|(name, _)| name.clone())
    }

    /// The decoded instances of a service with the revision each was last written at.
    pub fn records(&self, service: &str) -> Vec<(InstanceRecord, Revision)> {
        let idx = self.index.read();
        idx.services
            .get(service)
            .map(|e| {
                e.instances
                    .values()
                    .filter_map(|i| i.record().ok().map(|r| (r, i.mod_revision)))
                    .collect()
            })
            .unwrap_or_default()
    }

    // ----- checks -----

    /// Changes as the index applies them, for components that follow the
    /// registry (the health scheduler). A receiver that lags must resync
    /// from [`Registry::instances_with_checks`].
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }

    /// The decoded record of one instance.
    pub fn instance_record(&self, service: &str, id: &str) -> Option<InstanceRecord> {
        self.index
            .read()
            .instance(service, id)
            .and_then(|e| e.record().ok())
    }

    /// Whether the instance has checks, and its status, without decoding its
    /// record; `None` when it is not registered.
    pub fn instance_checks_and_status(&self, service: &str, id: &str) -> Option<(bool, Status)> {
        self.index
            .read()
            .instance(service, id)
            .map(|e| (!e.check_ids().is_empty(), e.status))
    }

    /// Every instance that has checks, decoded, and the revision they reflect.
    pub fn instances_with_checks(&self) -> (Revision, Vec<InstanceRecord>) {
        let idx = self.index.read();
        let recs = idx
            .services
            .values()
            .flat_map(|s| s.instances.values())
            .filter(|e| !e.check_ids().is_empty())
            .filter_map(|e| e.record().ok())
            .collect();
        (idx.revision, recs)
    }

    pub fn check(&self, check_id: &str) -> Result<OwnedCheck, RegistryError> {
        let owner = self
            .index
            .read()
            .checks
            .get(check_id)
            .cloned()
            .ok_or_else(|| RegistryError::NotFound(format!("check {check_id:?} does not exist")))?;
        let rec = self
            .instance_record(&owner.service, &owner.instance)
            .ok_or_else(|| RegistryError::NotFound(format!("check {check_id:?} does not exist")))?;
        OwnedCheck::find(&rec, check_id)
            .ok_or_else(|| RegistryError::NotFound(format!("check {check_id:?} does not exist")))
    }

    /// The service of the instance a check belongs to.
    pub fn check_service(&self, check_id: &str) -> Option<String> {
        self.index
            .read()
            .checks
            .get(check_id)
            .map(|owner| owner.service.to_string())
    }

    /// Every check, or those of one service, in service/instance order.
    pub fn checks(&self, service: Option<&str>) -> Vec<OwnedCheck> {
        let idx = self.index.read();
        let services: Vec<&crate::index::ServiceEntry> = match service {
            Some(s) => idx.services.get(s).into_iter().collect(),
            None => idx.services.values().collect(),
        };
        services
            .into_iter()
            .flat_map(|s| s.instances.values())
            .filter(|e| !e.check_ids().is_empty())
            .filter_map(|e| e.record().ok())
            .flat_map(|rec| {
                rec.checks
                    .iter()
                    .map(|c| OwnedCheck::of(&rec, c.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Adds a check to an existing instance (`POST /api/v1/checks`).
    pub async fn add_check(&self, spec: CheckSpec) -> Result<OwnedCheck, RegistryError> {
        let mut errs = muster_core::error::Errors::default();
        if spec.service.is_none() {
            errs.push(
                "service",
                "the service of the instance the check belongs to is required",
            );
        }
        if spec.instance.is_none() {
            errs.push(
                "instance",
                "the id of the instance the check belongs to is required",
            );
        }
        errs.finish()?;
        let (service, instance) = (
            spec.service.clone().unwrap_or_default(),
            spec.instance.clone().unwrap_or_default(),
        );
        let rec = self
            .instance_record(&service, &instance)
            .ok_or_else(|| not_found(&service, &instance))?;
        let kind = if spec.http.is_some() {
            "http"
        } else if spec.tcp.is_some() {
            "tcp"
        } else if spec.grpc.is_some() {
            "grpc"
        } else if spec.mqtt.is_some() {
            "mqtt"
        } else if spec.ttl.is_some() {
            "ttl"
        } else {
            "exec"
        };
        let taken = |n: &str| rec.checks.iter().any(|c| c.name == n);
        let default_name = (1..)
            .map(|i| {
                if i == 1 {
                    kind.to_string()
                } else {
                    format!("{kind}-{i}")
                }
            })
            .find(|n| !taken(n))
            .unwrap_or_else(|| kind.to_string());
        let mut errs = muster_core::error::Errors::default();
        let prefix = format!("{service}:{instance}");
        let check = match spec.resolve("check", &default_name, &prefix, &self.policy, &mut errs) {
            Err(muster_core::check::CheckRefusal::Forbidden(m)) => {
                return Err(RegistryError::Forbidden(m));
            }
            Ok(c) => c,
        };
        // Field names of a standalone check body have no `check.` prefix.
        let strip = |e: muster_core::ValidationError| muster_core::ValidationError {
            errors: e
                .errors
                .into_iter()
                .map(|mut f| {
                    f.field = f
                        .field
                        .strip_prefix("check.")
                        .unwrap_or(&f.field)
                        .to_string();
                    if f.field == "check" {
                        f.field = "body".into();
                    }
                    f
                })
                .collect(),
        };
        errs.finish().map_err(strip)?;
        let Some(check) = check else {
            return Err(RegistryError::Invalid(muster_core::ValidationError::field(
                "body",
                "a check needs exactly one kind",
            )));
        };
        if taken(&check.name) {
            return Err(RegistryError::Conflict(format!(
                "instance {instance:?} already has a check named {:?}",
                check.name
            )));
        }
        let added = check.clone();
        self.update(
            &service,
            &instance,
            Note::new(NoteKind::Write),
            move |rec| {
                if rec.checks.iter().any(|c| c.name == added.name) {
                    return false;
                }
                rec.checks.push(added.clone());
                true
            },
        )
        .await?;
        self.check(&check.id)
    }

    pub async fn remove_check(&self, check_id: &str) -> Result<(), RegistryError> {
        let owned = self.check(check_id)?;
        let id = check_id.to_string();
        self.update(
            &owned.service,
            &owned.instance,
            Note::new(NoteKind::Write),
            move |rec| {
                let before = rec.checks.len();
                rec.checks.retain(|c| c.id != id);
                rec.checks.len() != before
            },
        )
        .await
    }

    /// Records a check's new status (a transition decided by the health
    /// engine, or a ttl pass/warn/fail). Writes nothing if nothing changed.
    pub async fn set_check_status(
        &self,
        check_id: &str,
        transition: Option<Transition>,
        status: Status,
        output: &str,
        flapping: bool,
    ) -> Result<(), RegistryError> {
        let owner = self
            .index
            .read()
            .checks
            .get(check_id)
            .cloned()
            .ok_or_else(|| RegistryError::NotFound(format!("check {check_id:?} does not exist")))?;
        let mut note = Note::new(NoteKind::CheckStatus);
        note.check = Some(check_id.to_string());
        note.output = Some(output.to_string());
        if let Some(t) = transition {
            note.from = Some(t.from);
            note.to = Some(t.to);
            note.flap = (t.flap != Flap::No).then_some(t.flap);
        }
        let id = check_id.to_string();
        let output = output.to_string();
        self.update(&owner.service, &owner.instance, note, move |rec| {
            let Some(c) = rec.checks.iter_mut().find(|c| c.id == id) else {
                return false;
            };
            if c.status == status && c.output == output && c.flapping == flapping {
                return false;
            }
            c.status = status;
            c.output = output.clone();
            c.flapping = flapping;
            true
        })
        .await
    }

    /// Instances per service and status, for `/metrics`.
    pub fn status_counts(&self) -> Vec<(String, crate::index::StatusCounts)> {
        let idx = self.index.read();
        idx.services
            .iter()
            .map(|(name, e)| (name.clone(), e.counts()))
            .collect()
    }
}

/// The follower: applies the store's changes to the index in order. If it
/// ever falls behind retained history it reloads from a fresh snapshot.
/// Most changes applied to the index before waiters are woken.
const APPLY_BATCH: usize = 1024;

async fn follow(reg: Arc<Registry>, mut watcher: muster_store::Watcher) {
    use futures_util::FutureExt;
    loop {
        let mut item = tokio::select! {
            n = watcher.next() => n,
            _ = reg.cancel.cancelled() => return,
        };
        // Whatever else is ready (a group commit delivers many changes at
        // once) is applied under one lock, and waiters are woken once for
        // all of it: every `applied` waiter re-checks on each wake-up, so
        // waking per change would cost changes × waiters wake-ups.
        let mut batch = Vec::new();
        let end = loop {
            match item {
                Some(Ok(change)) => {
                    batch.push(change);
                    if batch.len() >= APPLY_BATCH {
                        break None;
                    }
                    match watcher.next().now_or_never() {
                        Some(n) => item = n,
                        None => break None,
                    }
                }
                Some(Err(e)) => break Some(Some(e)),
                None => break Some(None),
            }
        };
        if let Some(last) = batch.last().map(|c| c.revision) {
            let mut touched = Vec::new();
            {
                let mut index = reg.index.write();
                for change in &batch {
                    touched.extend(index.apply(change));
                }
            }
            touched.sort_unstable();
            touched.dedup();
            reg.applied.send_replace(last);
            reg.wake_services(&touched, last);
            for change in batch {
                let _ = reg.changes.send(change);
            }
        }
        match end {
            None => {}
            // The store closed.
            Some(None) => return,
            Some(Some(e)) => {
                tracing::warn!(error = %e, "index fell behind the store's history; reloading from a snapshot");
                match reload(&reg).await {
                    Ok(w) => watcher = w,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot reload the index; retrying in 1s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    }
}

async fn reload(reg: &Registry) -> Result<muster_store::Watcher, StoreError> {
    let snap = reg.store.snapshot(b"").await?;
    let watcher = reg.store.watch(snap.revision + 1).await?;
    *reg.index.write() = Index::from_snapshot(&snap);
    reg.applied.send_replace(snap.revision);
    Ok(watcher)
}
