//! muster's registry: the operations on services and instances, written
//! through a [`muster_store::Store`], and the in-memory index every read is
//! answered from.
//!
//! The shape is an informer's: writes go to the store; the index follows the
//! store's own change stream (`Store::watch`) and is the only thing reads
//! touch. A write answers only once the index has applied its revision, so a
//! client reads its own writes. The etcd engine later changes where writes
//! land, not how reads work.
//!
//! Architecture Invariant: no HTTP here. The server crate maps these calls
//! and [`RegistryError`] to the wire.
#![forbid(unsafe_code)]

mod elections;
mod error;
mod events;
mod index;
mod keys;
mod registry;
mod snapshot;
mod view;

pub use elections::{Campaign, CampaignBody, CandidateBody, Election, election_event};
pub use error::RegistryError;
pub use events::events_of;
pub use index::CheckOwner;
pub use index::{ServiceSummary, StatusCounts};
pub use registry::{InstanceFilter, OwnedCheck, Registered, Registry, ServiceDetail};
pub use snapshot::{Restored, SNAPSHOT_FORMAT, SNAPSHOT_VERSION, SnapshotDoc, SnapshotKey};
pub use view::{InstanceJson, Volatile, list_json};

/// `(service, instance id)` when a store key names an instance.
pub fn instance_of_key(key: &[u8]) -> Option<(&str, &str)> {
    match keys::parse_key(key) {
        keys::Key::Instance { service, id } => Some((service, id)),
        _ => None,
    }
}
