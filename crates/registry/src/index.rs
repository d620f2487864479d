//! The read index: every service and instance in memory, as of one store
//! revision. Fed only by the store's change stream.
//!
//! An instance is kept as its stored JSON (exactly what the API returns),
//! plus what filters and counts need (status, tags). Reads write the bytes
//! out as they are; only writes decode a record. That keeps an instance to
//! well under a kilobyte and a restart to one light parse per instance.

use crate::keys::{self, Key};
use crate::view::{InstanceJson, Volatile};
use bytes::Bytes;
use muster_core::{ServiceRecord, Status};
use muster_store::{Change, EventType, KeyValue, LeaseId, Revision, Snapshot};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::NonZeroU64;
use std::sync::{Arc, OnceLock};

/// One instance in the index. Kept to 96 bytes: a million of them sit in
/// B-tree nodes that jemalloc rounds up to its next size class (1,280 bytes
/// for 11 entries of 96 + 16, 1,536 from 104 on).
#[derive(Debug, Clone)]
pub struct InstanceEntry {
    /// The record's JSON object.
    pub json: Bytes,
    pub status: Status,
    /// Shared with every instance carrying the same tags ([`TagSets`]).
    pub tags: Arc<[Box<str>]>,
    pub mod_revision: Revision,
    /// Lease ids start at 1.
    lease: Option<NonZeroU64>,
    /// Ids of its checks (`None` for most instances: no allocation).
    check_ids: Option<Box<CheckIds>>,
    /// Created at the first heartbeat; carried across updates of the instance.
    pub volatile: OnceLock<Arc<Mutex<Volatile>>>,
}

#[derive(Debug, Clone)]
struct CheckIds(Box<[Box<str>]>);

impl InstanceEntry {
    pub fn lease(&self) -> Option<LeaseId> {
        self.lease.map(|l| LeaseId(l.get()))
    }

    /// Ids of its checks.
    pub fn check_ids(&self) -> &[Box<str>] {
        self.check_ids.as_deref().map_or(&[], |c| &c.0)
    }

    pub fn record(&self) -> Result<muster_core::InstanceRecord, String> {
        serde_json::from_slice(&self.json).map_err(|e| format!("unreadable instance record: {e}"))
    }

    pub fn to_json(&self) -> InstanceJson {
        InstanceJson {
            json: self.json.clone(),
            volatile: self
                .volatile
                .get()
                .map(|v| v.lock().clone())
                .unwrap_or_default(),
        }
    }

    pub fn has_tags(&self, tags: &[String]) -> bool {
        tags.iter()
            .all(|t| self.tags.iter().any(|mine| **mine == **t))
    }
}

/// What the index reads of a record without decoding all of it.
#[derive(Deserialize)]
struct Filterable {
    status: Status,
    #[serde(default)]
    tags: Vec<Box<str>>,
    #[serde(default)]
    checks: Vec<CheckId>,
}

#[derive(Deserialize)]
struct CheckId {
    id: Box<str>,
}

/// Where a check lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOwner {
    pub service: Box<str>,
    pub instance: Box<str>,
}

#[derive(Debug, Default)]
pub struct ServiceEntry {
    pub def: Option<Arc<ServiceRecord>>,
    pub instances: BTreeMap<Box<str>, InstanceEntry>,
}

impl ServiceEntry {
    fn is_empty(&self) -> bool {
        self.def.is_none() && self.instances.is_empty()
    }

    pub fn counts(&self) -> StatusCounts {
        let mut c = StatusCounts::default();
        for i in self.instances.values() {
            c.add(i.status);
        }
        c
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
    /// Every check id and the instance it belongs to.
    pub checks: HashMap<Box<str>, CheckOwner>,
    /// The revision that last changed each service (its definition or any
    /// instance), kept after the service is gone: Consul's per-resource index.
    pub modified: HashMap<String, Revision>,
    tag_sets: TagSets,
}

/// Instances' tag lists, each distinct list held once: most instances of a
/// fleet carry the same few tags, and a list of its own (an array and a heap
/// string per tag) cost ~150 bytes an instance, ~140 MiB at a million.
/// A list no instance uses any more is dropped by a sweep that runs each
/// time the set has doubled since the last one, so the set stays within
/// twice the lists in use (plus 64) whatever tags clients send.
#[derive(Debug, Default)]
struct TagSets {
    sets: HashSet<Arc<[Box<str>]>>,
    swept_at: usize,
}

impl TagSets {
    fn intern(&mut self, tags: Vec<Box<str>>) -> Arc<[Box<str>]> {
        if let Some(shared) = self.sets.get(tags.as_slice()) {
            return shared.clone();
        }
        if self.sets.len() >= 2 * self.swept_at + 64 {
            // Held only here: no instance uses it.
            self.sets.retain(|s| Arc::strong_count(s) > 1);
            self.swept_at = self.sets.len();
        }
        let shared: Arc<[Box<str>]> = tags.into();
        self.sets.insert(shared.clone());
        shared
    }
}

impl Index {
    pub fn from_snapshot(snap: &Snapshot) -> Index {
        let mut idx = Index {
            revision: snap.revision,
            ..Default::default()
        };
        for kv in &snap.kvs {
            idx.put(kv);
            if let Some(service) = Self::service_of(&kv.key) {
                let m = idx.modified.entry(service.to_string()).or_insert(0);
                *m = (*m).max(kv.mod_revision);
            }
        }
        idx
    }

    pub fn instance(&self, service: &str, id: &str) -> Option<&InstanceEntry> {
        self.services.get(service)?.instances.get(id)
    }

    fn service_of(key: &[u8]) -> Option<&str> {
        match keys::parse_key(key) {
            Key::Service(name) => Some(name),
            Key::Instance { service, .. } => Some(service),
            Key::Other => None,
        }
    }

    /// Applies one change (in revision order); returns the services it touched.
    pub fn apply(&mut self, change: &Change) -> Vec<String> {
        let mut touched: Vec<String> = Vec::new();
        for ev in &change.events {
            match ev.kind {
                EventType::Put => self.put(&ev.kv),
                EventType::Delete => self.delete(&ev.kv.key),
            }
            if let Some(service) = Self::service_of(&ev.kv.key)
                && !touched.iter().any(|t| t == service)
            {
                touched.push(service.to_string());
            }
        }
        for s in &touched {
            self.modified.insert(s.clone(), change.revision);
        }
        self.revision = change.revision;
        touched
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
            Key::Instance { service, id } => {
                let parsed = keys::record_slice(&kv.value).and_then(|json| {
                    serde_json::from_slice::<Filterable>(json)
                        .map(|f| (json, f))
                        .map_err(|e| format!("unreadable instance record: {e}"))
                });
                match parsed {
                    Ok((json, f)) => {
                        let entry = self.services.entry(service.to_string()).or_default();
                        let volatile = entry
                            .instances
                            .get(id)
                            .map(|e| e.volatile.clone())
                            .unwrap_or_default();
                        if let Some(old) = entry.instances.get(id) {
                            for c in old.check_ids() {
                                self.checks.remove(c);
                            }
                        }
                        let check_ids: Box<[Box<str>]> =
                            f.checks.into_iter().map(|c| c.id).collect();
                        for c in &check_ids {
                            self.checks.insert(
                                c.clone(),
                                CheckOwner {
                                    service: service.into(),
                                    instance: id.into(),
                                },
                            );
                        }
                        entry.instances.insert(
                            id.into(),
                            InstanceEntry {
                                // Shares the stored value's buffer (the engines
                                // keep values exact-size), so an instance's JSON
                                // is held once however many holders it has.
                                json: kv.value.slice_ref(json),
                                status: f.status,
                                tags: self.tag_sets.intern(f.tags),
                                mod_revision: kv.mod_revision,
                                lease: kv.lease.and_then(|l| NonZeroU64::new(l.0)),
                                check_ids: (!check_ids.is_empty())
                                    .then(|| Box::new(CheckIds(check_ids))),
                                volatile,
                            },
                        );
                    }
                    Err(e) => {
                        tracing::warn!(service, instance = id, error = %e, "skipping unreadable instance record")
                    }
                }
            }
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
                if let Some(e) = self.services.get_mut(service)
                    && let Some(old) = e.instances.remove(id)
                {
                    for c in old.check_ids() {
                        self.checks.remove(c);
                    }
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
                let c = e.counts();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(t: &[&str]) -> Vec<Box<str>> {
        t.iter().map(|s| (*s).into()).collect()
    }

    #[test]
    fn an_instance_entry_fits_its_size_class() {
        assert!(std::mem::size_of::<InstanceEntry>() <= 96);
    }

    #[test]
    fn equal_tag_lists_are_held_once_and_unused_ones_are_swept() {
        let mut sets = TagSets::default();
        let a = sets.intern(tags(&["v2", "eu"]));
        let b = sets.intern(tags(&["v2", "eu"]));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &sets.intern(tags(&["eu", "v2"]))));
        // Lists no instance holds any more are dropped once the set grows.
        for i in 0..200 {
            sets.intern(tags(&[&format!("t{i}")]));
        }
        assert!(sets.sets.len() < 100, "{} lists kept", sets.sets.len());
        assert!(sets.sets.contains(a.as_ref()), "a list in use is kept");
        assert!(Arc::ptr_eq(&a, &sets.intern(tags(&["v2", "eu"]))));
    }
}
