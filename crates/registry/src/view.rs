//! Instances as the API writes them: the stored record's JSON, served as it
//! is, with the volatile fields (last heartbeat, metrics) spliced in. A list
//! of instances is a concatenation of stored bytes, not a re-serialization.

use bytes::Bytes;
use muster_core::{InstanceRecord, Timestamp};

/// Heartbeat data: held in memory only (heartbeats never touch the disk).
#[derive(Debug, Default, Clone)]
pub struct Volatile {
    pub last_heartbeat_at: Option<Timestamp>,
    /// The metrics object, already serialized.
    pub metrics: Option<Bytes>,
}

/// One instance ready to be written out.
#[derive(Debug, Clone)]
pub struct InstanceJson {
    /// The record's JSON object, as stored.
    pub(crate) json: Bytes,
    pub(crate) volatile: Volatile,
}

impl InstanceJson {
    /// Appends the instance object to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        let v = &self.volatile;
        if v.last_heartbeat_at.is_none() && v.metrics.is_none() {
            out.extend_from_slice(&self.json);
            return;
        }
        // The stored object ends with '}': reopen it for the volatile fields.
        out.extend_from_slice(&self.json[..self.json.len().saturating_sub(1)]);
        if let Some(t) = v.last_heartbeat_at {
            out.extend_from_slice(br#","last_heartbeat_at":""#);
            out.extend_from_slice(muster_core::rfc3339(t).as_bytes());
            out.push(b'"');
        }
        if let Some(m) = &v.metrics {
            out.extend_from_slice(br#","metrics":"#);
            out.extend_from_slice(m);
        }
        out.push(b'}');
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.json.len() + 128);
        self.write(&mut out);
        out
    }

    /// The record, decoded (for callers that need its fields, such as tests).
    pub fn record(&self) -> InstanceRecord {
        serde_json::from_slice(&self.json)
            .unwrap_or_else(|e| panic!("index holds an unreadable record: {e}"))
    }

    pub fn last_heartbeat_at(&self) -> Option<Timestamp> {
        self.volatile.last_heartbeat_at
    }

    pub fn metrics(&self) -> Option<serde_json::Value> {
        self.volatile
            .metrics
            .as_ref()
            .and_then(|m| serde_json::from_slice(m).ok())
    }
}

/// `[a,b,...]`.
pub fn list_json(items: &[InstanceJson]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + items.iter().map(|i| i.json.len() + 1).sum::<usize>());
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        item.write(&mut out);
    }
    out.push(b']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volatile_fields_are_spliced_into_the_stored_object() {
        let plain = InstanceJson {
            json: Bytes::from_static(br#"{"id":"a"}"#),
            volatile: Volatile::default(),
        };
        let mut live = plain.clone();
        live.volatile.last_heartbeat_at = Some(time::OffsetDateTime::UNIX_EPOCH);
        live.volatile.metrics = Some(Bytes::from_static(br#"{"cpu":1}"#));
        let list = list_json(&[plain, live]);
        let v: serde_json::Value = serde_json::from_slice(&list).unwrap();
        assert_eq!(
            v,
            serde_json::json!([{"id": "a"}, {"id": "a", "last_heartbeat_at": "1970-01-01T00:00:00Z", "metrics": {"cpu": 1}}])
        );
        assert_eq!(list_json(&[]), b"[]");
    }
}
