//! The read index: every service and instance, decoded, in memory, as of
//! one store revision. Fed only by the store's change stream.

use crate::keys::{self, Key};
use muster_core::{InstanceRecord, ServiceRecord, Status, Timestamp};
use muster_store::{Change, EventType, KeyValue, LeaseId, Revision, Snapshot};
use parking_lot::Mutex;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Heartbeat data: held in memory only (heartbeats never touch the disk).
#[derive(Debug, Default, Clone)]
pub struct Volatile {
    pub last_heartbeat_at: Option<Timestamp>,
    pub metrics: Option<Arc<serde_json::Value>>,
}

#[derive(Debug, Clone)]
pub struct InstanceEntry {
    pub rec: Arc<InstanceRecord>,
    pub mod_revision: Revision,
    pub lease: Option<LeaseId>,
    /// Shared across updates of the same instance, dropped with it.
    pub volatile: Arc<Mutex<Volatile>>,
}

#[derive(Debug, Default)]
pub struct ServiceEntry {
    pub def: Option<Arc<ServiceRecord>>,
    pub instances: BTreeMap<String, InstanceEntry>,
}

impl ServiceEntry {
    fn is_empty(&self) -> bool {
        self.def.is_none() && self.instances.is_empty()
    }
}

#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct StatusCounts {
    pub passing: usize,
    pub warning: usize,
    pub critical: usize,
    pub maintenance: usize,
}

impl StatusCounts {
    pub fn add(&mut self, s: Status) {
        match s {
            Status::Passing => self.passing += 1,
            Status::Warning => self.warning += 1,
            Status::Critical => self.critical += 1,
            Status::Maintenance => self.maintenance += 1,
        }
    }
}

/// One row of `GET /api/v1/services`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ServiceSummary {
    pub name: String,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub instances: usize,
    pub passing: usize,
    pub warning: usize,
    pub critical: usize,
    pub maintenance: usize,
}

#[derive(Debug, Default)]
pub struct Index {
    pub revision: Revision,
    pub services: BTreeMap<String, ServiceEntry>,
}

impl Index {
    pub fn from_snapshot(snap: &Snapshot) -> Index {
        let mut idx = Index {
            revision: snap.revision,
            services: BTreeMap::new(),
        };
        for kv in &snap.kvs {
            idx.put(kv);
        }
        idx
    }

    pub fn instance(&self, service: &str, id: &str) -> Option<&InstanceEntry> {
        self.services.get(service)?.instances.get(id)
    }

    /// Applies one change. Changes must arrive in revision order.
    pub fn apply(&mut self, change: &Change) {
        for ev in &change.events {
            match ev.kind {
                EventType::Put => self.put(&ev.kv),
                EventType::Delete => self.delete(&ev.kv.key),
            }
        }
        self.revision = change.revision;
    }

    fn put(&mut self, kv: &KeyValue) {
        match keys::parse_key(&kv.key) {
            Key::Service(name) => match keys::decode_service(&kv.value) {
                Ok(rec) => {
                    self.services.entry(name.to_string()).or_default().def = Some(Arc::new(rec))
                }
                Err(e) => {
                    tracing::warn!(service = name, error = %e, "skipping unreadable service record")
                }
            },
            Key::Instance { service, id } => match keys::decode_instance(&kv.value) {
                Ok(rec) => {
                    let entry = self.services.entry(service.to_string()).or_default();
                    let volatile = entry
                        .instances
                        .get(id)
                        .map(|e| e.volatile.clone())
                        .unwrap_or_default();
                    entry.instances.insert(
                        id.to_string(),
                        InstanceEntry {
                            rec: Arc::new(rec),
                            mod_revision: kv.mod_revision,
                            lease: kv.lease,
                            volatile,
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(service, instance = id, error = %e, "skipping unreadable instance record")
                }
            },
            Key::Other => {}
        }
    }

    fn delete(&mut self, key: &[u8]) {
        let name = match keys::parse_key(key) {
            Key::Service(name) => {
                if let Some(e) = self.services.get_mut(name) {
                    e.def = None;
                }
                name
            }
            Key::Instance { service, id } => {
                if let Some(e) = self.services.get_mut(service) {
                    e.instances.remove(id);
                }
                service
            }
            Key::Other => return,
        };
        if self.services.get(name).is_some_and(ServiceEntry::is_empty) {
            self.services.remove(name);
        }
    }

    pub fn summaries(&self) -> Vec<ServiceSummary> {
        self.services
            .iter()
            .map(|(name, e)| {
                let mut c = StatusCounts::default();
                for i in e.instances.values() {
                    c.add(i.rec.status());
                }
                ServiceSummary {
                    name: name.clone(),
                    tags: e.def.as_ref().map(|d| d.tags.clone()).unwrap_or_default(),
                    meta: e.def.as_ref().map(|d| d.meta.clone()).unwrap_or_default(),
                    instances: e.instances.len(),
                    passing: c.passing,
                    warning: c.warning,
                    critical: c.critical,
                    maintenance: c.maintenance,
                }
            })
            .collect()
    }
}
