//! Snapshots: a consistent point-in-time copy of the whole registry, and its
//! restore onto a fresh server.
//!
//! A snapshot is one `Store::snapshot(b"")` call, so every key in it is as of
//! one revision while the server keeps serving. Values are the stored JSON
//! envelopes, kept as strings so a restore writes exactly what was read.
//!
//! Leases: the store does not expose a lease's TTL without renewing it (a
//! keepalive would keep a dead holder alive), so a leased key is kept only
//! when its own record says its TTL: a ttl instance (`inst/`, lifetime
//! `ttl`) carries its `ttl` as `lease_ttl_ms` and comes back on a fresh
//! lease of that TTL. Session instances (bound to a socket that does not
//! exist on the restored server) and election leaders (`elect/`, whose
//! record has no TTL) are left out; the term counters (`elect-term/`) are
//! kept, so terms keep increasing after a restore.

use crate::elections::{ELECTION_PREFIX, TERM_PREFIX};
use crate::error::RegistryError;
use crate::keys::{self, INSTANCE_PREFIX, SERVICE_PREFIX};
use crate::registry::Registry;
use muster_core::{Lifetime, Timestamp, ValidationError};
use muster_store::{Compare, LeaseId, Revision, Txn};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::time::Duration;

/// The `format` every snapshot document carries.
pub const SNAPSHOT_FORMAT: &str = "muster-snapshot";
/// The document version this server writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Puts per restore transaction: etcd's default `max-txn-ops`, so the same
/// batches fit the etcd engine.
const RESTORE_BATCH: usize = 128;
/// The longest lease a restored key may ask for (30 days).
const MAX_LEASE_TTL_MS: u64 = 30 * 24 * 3_600_000;

/// Prefixes whose keys make a registry "not fresh" for a restore.
const REGISTRY_PREFIXES: [&str; 4] = [
    SERVICE_PREFIX,
    INSTANCE_PREFIX,
    ELECTION_PREFIX,
    TERM_PREFIX,
];

/// `GET /api/v1/snapshot`: every registry key as of one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotDoc {
    /// Always `muster-snapshot`.
    pub format: String,
    /// The document version: 1.
    pub version: u32,
    /// The store revision every key is taken at.
    pub revision: Revision,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub taken_at: Timestamp,
    pub keys: Vec<SnapshotKey>,
}

/// One stored key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotKey {
    pub key: String,
    /// The stored value (a JSON envelope) as a string.
    pub value: String,
    /// Present when the key lives on a lease: restored on a fresh lease of this TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ttl_ms: Option<u64>,
}

/// The answer to a restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Restored {
    /// Keys written.
    pub restored: usize,
    /// The revision after the last of them, which the index has applied.
    pub revision: Revision,
}

impl Registry {
    /// A consistent copy of every registry key at one revision (see the module
    /// doc for which leased keys are left out).
    pub async fn export_snapshot(&self) -> Result<SnapshotDoc, RegistryError> {
        let snap = self.store().snapshot(b"").await?;
        let mut out = Vec::with_capacity(snap.kvs.len());
        let mut left_out = 0usize;
        for kv in snap.kvs {
            let (Ok(key), Ok(value)) = (
                String::from_utf8(kv.key.to_vec()),
                String::from_utf8(kv.value.to_vec()),
            ) else {
                tracing::warn!(key = ?kv.key, "snapshot leaves out a key or value that is not UTF-8");
                continue;
            };
            let lease_ttl_ms = match kv.lease {
                None => None,
                Some(_) => match lease_ttl_of(&key, &value) {
                    Some(ttl) => Some(ttl),
                    None => {
                        left_out += 1;
                        continue;
                    }
                },
            };
            out.push(SnapshotKey {
                key,
                value,
                lease_ttl_ms,
            });
        }
        tracing::info!(
            revision = snap.revision,
            keys = out.len(),
            left_out,
            "snapshot taken (session instances and election leaders left out)"
        );
        Ok(SnapshotDoc {
            format: SNAPSHOT_FORMAT.into(),
            version: SNAPSHOT_VERSION,
            revision: snap.revision,
            taken_at: time::OffsetDateTime::now_utc(),
            keys: out,
        })
    }

    /// Writes a snapshot into an empty registry, then waits until the index
    /// has applied it. `Conflict` when the registry holds anything already.
    pub async fn restore_snapshot(&self, doc: SnapshotDoc) -> Result<Restored, RegistryError> {
        validate(&doc)?;
        for prefix in REGISTRY_PREFIXES {
            let existing = self.store().snapshot(prefix.as_bytes()).await?;
            if !existing.kvs.is_empty() {
                return Err(RegistryError::Conflict(format!(
                    "the registry is not empty ({} keys under {prefix:?}); restore onto a fresh server",
                    existing.kvs.len()
                )));
            }
        }
        let mut restored = 0;
        let mut revision = self.store().current_revision();
        for batch in doc.keys.chunks(RESTORE_BATCH) {
            let mut txn = Txn::new();
            let mut leases = Vec::new();
            for k in batch {
                let lease = match k.lease_ttl_ms {
                    Some(ms) => {
                        let l = self.store().lease_grant(Duration::from_millis(ms)).await;
                        match l {
                            Ok(l) => {
                                leases.push(l);
                                Some(l)
                            }
                            Err(e) => {
                                self.revoke(&leases).await;
                                return Err(e.into());
                            }
                        }
                    }
                    None => None,
                };
                // Guards against a write racing the restore: nothing is overwritten.
                txn = txn.when(Compare::Missing(k.key.clone().into())).put(
                    k.key.clone(),
                    k.value.clone(),
                    lease,
                );
            }
            let res = match self.store().txn(txn).await {
                Ok(res) => res,
                Err(e) => {
                    self.revoke(&leases).await;
                    return Err(e.into());
                }
            };
            if !res.succeeded {
                self.revoke(&leases).await;
                return Err(RegistryError::Conflict(format!(
                    "a write raced the restore after {restored} keys were restored; \
                     restore onto a fresh server that nothing else writes to"
                )));
            }
            restored += batch.len();
            revision = res.revision;
        }
        self.caught_up(revision).await?;
        tracing::info!(
            restored,
            revision,
            taken_at_revision = doc.revision,
            "snapshot restored"
        );
        Ok(Restored { restored, revision })
    }

    async fn revoke(&self, leases: &[LeaseId]) {
        for &l in leases {
            let _ = self.store().lease_revoke(l).await;
        }
    }
}

/// The TTL a leased key is restored with, or `None` to leave it out.
fn lease_ttl_of(key: &str, value: &str) -> Option<u64> {
    if !key.starts_with(INSTANCE_PREFIX) {
        return None;
    }
    let rec = keys::decode_instance(value.as_bytes()).ok()?;
    match rec.lifetime {
        Lifetime::Ttl => rec.ttl.map(|t| t.0),
        Lifetime::Persistent | Lifetime::Session => None,
    }
}

/// Checks the document before anything is written: format, version, and each
/// key, naming the field at fault.
fn validate(doc: &SnapshotDoc) -> Result<(), ValidationError> {
    if doc.format != SNAPSHOT_FORMAT {
        return Err(ValidationError::field(
            "format",
            format!("format must be {SNAPSHOT_FORMAT:?}, got {:?}", doc.format),
        ));
    }
    if doc.version != SNAPSHOT_VERSION {
        return Err(ValidationError::field(
            "version",
            format!(
                "snapshot version {} is not {SNAPSHOT_VERSION}; use the muster that saved it",
                doc.version
            ),
        ));
    }
    let mut seen = HashSet::with_capacity(doc.keys.len());
    for (i, k) in doc.keys.iter().enumerate() {
        if k.key.is_empty() {
            return Err(ValidationError::field(
                format!("keys[{i}].key"),
                "key must not be empty",
            ));
        }
        if !seen.insert(k.key.as_str()) {
            return Err(ValidationError::field(
                format!("keys[{i}].key"),
                format!("key {:?} appears more than once", k.key),
            ));
        }
        let decoded = match keys::parse_key(k.key.as_bytes()) {
            keys::Key::Service(_) => keys::decode_service(k.value.as_bytes()).map(drop),
            keys::Key::Instance { .. } => keys::decode_instance(k.value.as_bytes()).map(drop),
            keys::Key::Other => Ok(()),
        };
        if let Err(e) = decoded {
            return Err(ValidationError::field(
                format!("keys[{i}].value"),
                format!(
                    "the value of {:?} is not a record this muster reads: {e}",
                    k.key
                ),
            ));
        }
        if let Some(ms) = k.lease_ttl_ms
            && !(1..=MAX_LEASE_TTL_MS).contains(&ms)
        {
            return Err(ValidationError::field(
                format!("keys[{i}].lease_ttl_ms"),
                format!("lease_ttl_ms must be between 1 and {MAX_LEASE_TTL_MS}, got {ms}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(keys: Vec<SnapshotKey>) -> SnapshotDoc {
        SnapshotDoc {
            format: SNAPSHOT_FORMAT.into(),
            version: SNAPSHOT_VERSION,
            revision: 1,
            taken_at: time::OffsetDateTime::UNIX_EPOCH,
            keys,
        }
    }

    fn key(k: &str, v: &str, ttl: Option<u64>) -> SnapshotKey {
        SnapshotKey {
            key: k.into(),
            value: v.into(),
            lease_ttl_ms: ttl,
        }
    }

    fn field_of(d: &SnapshotDoc) -> String {
        validate(d).unwrap_err().errors[0].field.clone()
    }

    #[test]
    fn validation_names_the_field() {
        assert!(
            validate(&doc(vec![key(
                "elect-term/x",
                r#"{"v":1,"r":{"term":1}}"#,
                None
            )]))
            .is_ok()
        );
        let mut d = doc(vec![]);
        d.format = "other".into();
        assert_eq!(field_of(&d), "format");
        let mut d = doc(vec![]);
        d.version = 2;
        assert_eq!(field_of(&d), "version");
        assert_eq!(field_of(&doc(vec![key("", "x", None)])), "keys[0].key");
        assert_eq!(
            field_of(&doc(vec![key("a", "x", None), key("a", "x", None)])),
            "keys[1].key"
        );
        assert_eq!(
            field_of(&doc(vec![key("svc/web", "garbage", None)])),
            "keys[0].value"
        );
        assert_eq!(
            field_of(&doc(vec![key("a", "x", Some(0))])),
            "keys[0].lease_ttl_ms"
        );
    }

    #[test]
    fn only_ttl_instances_keep_their_lease() {
        assert_eq!(lease_ttl_of("elect/x", "{}"), None);
        assert_eq!(lease_ttl_of("inst/web/a", "garbage"), None);
    }
}
