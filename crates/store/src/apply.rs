//! The transaction state machine both engines share: evaluate compares, apply
//! ops, keep lease attachments in step, and describe the result as a [`Change`].

use crate::lease::Leases;
use crate::{
    Change, Compare, EventType, KeyValue, KvEvent, LeaseId, Op, Result, Revision, StoreError, Txn,
};
use bytes::Bytes;

/// The key space an engine applies transactions to.
pub(crate) trait KvTable {
    fn get(&mut self, key: &[u8]) -> Result<Option<KeyValue>>;
    fn put(&mut self, kv: &KeyValue) -> Result<()>;
    fn delete(&mut self, key: &[u8]) -> Result<()>;
    fn keys_with_prefix(&mut self, prefix: &[u8]) -> Result<Vec<KeyValue>>;
}

pub(crate) enum Applied {
    /// A compare failed; nothing changed.
    Failed,
    /// Compares held but nothing changed (e.g. deleting a missing key).
    Unchanged,
    Changed(Change),
}

/// Applies `txn` as revision `rev`. Validates everything that can fail before
/// the first write, so a transaction is all or nothing.
pub(crate) fn apply_txn(
    table: &mut impl KvTable,
    leases: &mut Leases,
    txn: &Txn,
    rev: Revision,
    at_ms: u64,
) -> Result<Applied> {
    for c in &txn.compares {
        let ok = match c {
            Compare::Exists(k) => table.get(k)?.is_some(),
            Compare::Missing(k) => table.get(k)?.is_none(),
            Compare::ModRevision(k, want) => table.get(k)?.map_or(0, |kv| kv.mod_revision) == *want,
        };
        if !ok {
            return Ok(Applied::Failed);
        }
    }
    for op in &txn.ops {
        match op {
            Op::Put { key, lease, .. } => {
                if key.is_empty() {
                    return Err(StoreError::Invalid("empty key".into()));
                }
                if let Some(id) = lease
                    && !leases.map.contains_key(id)
                {
                    return Err(StoreError::LeaseNotFound(*id));
                }
            }
            Op::Delete(key) if key.is_empty() => {
                return Err(StoreError::Invalid("empty key".into()));
            }
            _ => {}
        }
    }
    // Exact-size: a change is retained in the history (100k of them by
    // default), where `Vec`'s first growth to 4 slots would hold 3 empty ones.
    let mut events = Vec::with_capacity(txn.ops.len());
    for op in &txn.ops {
        match op {
            Op::Put { key, value, lease } => {
                let prev = table.get(key)?;
                let kv = KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                    create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                    mod_revision: rev,
                    version: prev.as_ref().map_or(1, |p| p.version + 1),
                    lease: *lease,
                };
                table.put(&kv)?;
                if let Some(old) = prev.as_ref().and_then(|p| p.lease)
                    && Some(old) != *lease
                {
                    leases.detach(old, key);
                }
                if let Some(l) = lease {
                    leases.attach(*l, key);
                }
                events.push(KvEvent {
                    kind: EventType::Put,
                    kv,
                    prev,
                });
            }
            Op::Delete(key) => {
                if let Some(prev) = table.get(key)? {
                    delete_one(table, leases, prev, rev, &mut events)?;
                }
            }
            Op::DeletePrefix(prefix) => {
                for prev in table.keys_with_prefix(prefix)? {
                    delete_one(table, leases, prev, rev, &mut events)?;
                }
            }
        }
    }
    if events.is_empty() && txn.note.is_none() {
        return Ok(Applied::Unchanged);
    }
    events.shrink_to_fit();
    Ok(Applied::Changed(Change {
        revision: rev,
        at_ms,
        events,
        note: txn.note.clone(),
    }))
}

/// Revokes a lease: one change deleting every key attached to it. `None`
/// when the lease is unknown; a lease with no keys left makes no change.
pub(crate) fn revoke_lease(
    table: &mut impl KvTable,
    leases: &mut Leases,
    id: LeaseId,
    rev: Revision,
    at_ms: u64,
) -> Result<Option<Applied>> {
    let Some(lease) = leases.remove(id) else {
        return Ok(None);
    };
    let mut keys: Vec<Bytes> = lease.keys.into_iter().collect();
    keys.sort();
    let mut events = Vec::new();
    for key in keys {
        if let Some(prev) = table.get(&key)?
            && prev.lease == Some(id)
        {
            delete_one(table, leases, prev, rev, &mut events)?;
        }
    }
    if events.is_empty() {
        return Ok(Some(Applied::Unchanged));
    }
    events.shrink_to_fit();
    Ok(Some(Applied::Changed(Change {
        revision: rev,
        at_ms,
        events,
        note: None,
    })))
}

fn delete_one(
    table: &mut impl KvTable,
    leases: &mut Leases,
    prev: KeyValue,
    rev: Revision,
    events: &mut Vec<KvEvent>,
) -> Result<()> {
    table.delete(&prev.key)?;
    if let Some(l) = prev.lease {
        leases.detach(l, &prev.key);
    }
    events.push(KvEvent {
        kind: EventType::Delete,
        kv: KeyValue {
            key: prev.key.clone(),
            value: Bytes::new(),
            create_revision: 0,
            mod_revision: rev,
            version: 0,
            lease: None,
        },
        prev: Some(prev),
    });
    Ok(())
}
