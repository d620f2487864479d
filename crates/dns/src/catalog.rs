//! What DNS needs of a service's instances (address, port, weight, status,
//! tags), decoded from the registry's index once per index revision.
//!
//! The index keeps instances as their stored JSON; decoding a hundred of
//! them costs far more than answering the query. So the decoded form of
//! each service asked for is kept until the index moves to another revision
//! (any write), when the whole cache is dropped: it never serves anything
//! older than the revision it was read at, and holds at most the services
//! that exist.

use hickory_proto::rr::Name;
use muster_core::Status;
use muster_registry::{InstanceFilter, Registry};
use parking_lot::Mutex;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// One instance, as DNS sees it.
#[derive(Debug)]
pub(crate) struct Target {
    pub status: Status,
    /// Lowercased: DNS names are case-insensitive.
    pub tags: Box<[Box<str>]>,
    pub addr: Addr,
    pub port: u16,
    pub weight: u16,
}

#[derive(Debug)]
pub(crate) enum Addr {
    Ip(IpAddr),
    /// A host name, as an absolute DNS name.
    Host(Name),
}

/// The fields DNS reads of an instance record; the rest is skipped
/// without being decoded (no timestamps parsed, no checks or meta built).
#[derive(Deserialize)]
struct Fields {
    address: String,
    port: u16,
    #[serde(default)]
    tags: Vec<String>,
    weight: u32,
    status: Status,
}

impl Target {
    fn decode(json: &[u8]) -> Result<Target, String> {
        let f: Fields = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        let addr = match f.address.parse::<IpAddr>() {
            Ok(ip) => Addr::Ip(ip),
            // Validated as a host name at registration; the trailing dot
            // makes it absolute rather than relative to our zone.
            Err(_) => Addr::Host(
                Name::from_ascii(format!("{}.", f.address.trim_end_matches('.')))
                    .map_err(|e| format!("address {:?}: {e}", f.address))?,
            ),
        };
        Ok(Target {
            status: f.status,
            tags: f
                .tags
                .iter()
                .map(|t| t.to_ascii_lowercase().into_boxed_str())
                .collect(),
            addr,
            port: f.port,
            // Registration keeps weights within 1-65535.
            weight: u16::try_from(f.weight).unwrap_or(u16::MAX),
        })
    }

    pub(crate) fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| **t == *tag)
    }
}

pub(crate) struct Catalog {
    registry: Arc<Registry>,
    /// Held only to look up or swap an entry, never while decoding.
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    /// The index revision the entries were read at (a store `Revision`).
    revision: u64,
    services: HashMap<Box<str>, Arc<[Target]>>,
}

impl Catalog {
    pub(crate) fn new(registry: Arc<Registry>) -> Catalog {
        Catalog {
            registry,
            cache: Mutex::new(Cache::default()),
        }
    }

    pub(crate) fn revision(&self) -> u64 {
        self.registry.revision()
    }

    /// Every instance of `service`, whatever its status; `None` when the
    /// registry does not know the service at all.
    pub(crate) fn service(&self, service: &str) -> Option<Arc<[Target]>> {
        // Read before the instances: the index has applied at least this
        // revision when `instances` reads it, so the entry is never older
        // than the revision it is cached under.
        let revision = self.registry.revision();
        {
            let mut cache = self.cache.lock();
            if cache.revision != revision {
                cache.services.clear();
                cache.revision = revision;
            } else if let Some(found) = cache.services.get(service) {
                return Some(found.clone());
            }
        }
        let instances = self.registry.instances(service, &InstanceFilter::default());
        // A service with a definition and no instance is known: NOERROR, not
        // NXDOMAIN. Only the rare empty case pays for this second look.
        if instances.is_empty() && self.registry.service(service).is_err() {
            return None;
        }
        let targets: Arc<[Target]> = instances
            .iter()
            .filter_map(|i| match Target::decode(&i.to_vec()) {
                Ok(t) => Some(t),
                // Never a panic on the query path: one unreadable record
                // is one instance left out.
                Err(e) => {
                    tracing::warn!(service, error = %e, "dns: skipping an unreadable instance");
                    None
                }
            })
            .collect();
        let mut cache = self.cache.lock();
        if cache.revision == revision {
            cache.services.insert(service.into(), targets.clone());
        }
        Some(targets)
    }
}
