//! The embedded engine's on-disk encoding: small, versioned binary records.
//!
//! Every record starts with a format byte (`FORMAT`). A reader meeting a
//! newer format refuses to guess and reports it.

use crate::{Change, EventType, KeyValue, KvEvent, LeaseId, Result, StoreError};
use bytes::Bytes;

pub(crate) const FORMAT: u8 = 1;

struct Writer(Vec<u8>);

impl Writer {
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(&(b.len() as u32).to_le_bytes());
        self.0.extend_from_slice(b);
    }
}

struct Reader<'a>(&'a [u8]);

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("truncated or malformed {what} record"))
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(corrupt(what));
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Ok(h)
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().map_err(|_| corrupt(what))?))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes(b.try_into().map_err(|_| corrupt(what))?))
    }
    fn bytes(&mut self, what: &str) -> Result<Bytes> {
        let n = self.u32(what)? as usize;
        Ok(Bytes::copy_from_slice(self.take(n, what)?))
    }
}

fn check_format(r: &mut Reader<'_>, what: &str) -> Result<()> {
    let f = r.u8(what)?;
    if f != FORMAT {
        return Err(StoreError::Corrupt(format!(
            "{what} record has format {f}, this muster reads format {FORMAT}; use a newer muster"
        )));
    }
    Ok(())
}

fn put_kv_fields(w: &mut Writer, kv: &KeyValue) {
    w.u64(kv.create_revision);
    w.u64(kv.mod_revision);
    w.u64(kv.version);
    w.u64(kv.lease.map_or(0, |l| l.0));
}

/// The value stored under a key in the `kv` table (the key is the table key).
pub(crate) fn encode_kv(kv: &KeyValue) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(33 + kv.value.len()));
    w.0.push(FORMAT);
    put_kv_fields(&mut w, kv);
    w.0.extend_from_slice(&kv.value);
    w.0
}

pub(crate) fn decode_kv(key: &[u8], data: &[u8]) -> Result<KeyValue> {
    let mut r = Reader(data);
    check_format(&mut r, "kv")?;
    let create_revision = r.u64("kv")?;
    let mod_revision = r.u64("kv")?;
    let version = r.u64("kv")?;
    let lease = r.u64("kv")?;
    Ok(KeyValue {
        key: Bytes::copy_from_slice(key),
        value: Bytes::copy_from_slice(r.0),
        create_revision,
        mod_revision,
        version,
        lease: (lease != 0).then_some(LeaseId(lease)),
    })
}

/// The lease id stored in a `kv` value, without decoding the rest.
pub(crate) fn kv_lease(data: &[u8]) -> Result<Option<LeaseId>> {
    let mut r = Reader(data);
    check_format(&mut r, "kv")?;
    r.take(24, "kv")?;
    let lease = r.u64("kv")?;
    Ok((lease != 0).then_some(LeaseId(lease)))
}

fn put_full_kv(w: &mut Writer, kv: &KeyValue) {
    w.bytes(&kv.key);
    w.bytes(&kv.value);
    put_kv_fields(w, kv);
}

fn get_full_kv(r: &mut Reader<'_>) -> Result<KeyValue> {
    let key = r.bytes("history")?;
    let value = r.bytes("history")?;
    let create_revision = r.u64("history")?;
    let mod_revision = r.u64("history")?;
    let version = r.u64("history")?;
    let lease = r.u64("history")?;
    Ok(KeyValue {
        key,
        value,
        create_revision,
        mod_revision,
        version,
        lease: (lease != 0).then_some(LeaseId(lease)),
    })
}

/// A whole key-value (key, value and bookkeeping) appended to `out`: the log
/// engine's snapshot entries.
pub(crate) fn put_record_kv(out: &mut Vec<u8>, kv: &KeyValue) {
    let mut w = Writer(std::mem::take(out));
    put_full_kv(&mut w, kv);
    *out = w.0;
}

/// Reads one [`put_record_kv`] entry from the front of `data`.
pub(crate) fn take_record_kv(data: &mut &[u8]) -> Result<KeyValue> {
    let mut r = Reader(data);
    let kv = get_full_kv(&mut r)?;
    *data = r.0;
    Ok(kv)
}

/// One entry of the `history` table (its key is the revision).
pub(crate) fn encode_change(c: &Change) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(64));
    w.0.push(FORMAT);
    w.u64(c.at_ms);
    match &c.note {
        Some(n) => {
            w.0.push(1);
            w.bytes(n);
        }
        None => w.0.push(0),
    }
    w.0.extend_from_slice(&(c.events.len() as u32).to_le_bytes());
    for e in &c.events {
        w.0.push(match e.kind {
            EventType::Put => 0,
            EventType::Delete => 1,
        });
        put_full_kv(&mut w, &e.kv);
        match &e.prev {
            Some(p) => {
                w.0.push(1);
                put_full_kv(&mut w, p);
            }
            None => w.0.push(0),
        }
    }
    w.0
}

pub(crate) fn decode_change(revision: u64, data: &[u8]) -> Result<Change> {
    let mut r = Reader(data);
    check_format(&mut r, "history")?;
    let at_ms = r.u64("history")?;
    let note = match r.u8("history")? {
        0 => None,
        _ => Some(r.bytes("history")?),
    };
    let n = r.u32("history")? as usize;
    let mut events = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let kind = match r.u8("history")? {
            0 => EventType::Put,
            _ => EventType::Delete,
        };
        let kv = get_full_kv(&mut r)?;
        let prev = match r.u8("history")? {
            0 => None,
            _ => Some(get_full_kv(&mut r)?),
        };
        events.push(KvEvent { kind, kv, prev });
    }
    Ok(Change {
        revision,
        at_ms,
        events,
        note,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str, lease: Option<u64>) -> KeyValue {
        KeyValue {
            key: Bytes::copy_from_slice(k.as_bytes()),
            value: Bytes::copy_from_slice(v.as_bytes()),
            create_revision: 3,
            mod_revision: 7,
            version: 2,
            lease: lease.map(LeaseId),
        }
    }

    #[test]
    fn kv_round_trips() {
        let a = kv("k", "value", Some(9));
        assert_eq!(decode_kv(b"k", &encode_kv(&a)).unwrap(), a);
        assert_eq!(kv_lease(&encode_kv(&a)).unwrap(), Some(LeaseId(9)));
        let b = kv("k", "", None);
        assert_eq!(decode_kv(b"k", &encode_kv(&b)).unwrap(), b);
    }

    #[test]
    fn change_round_trips() {
        let c = Change {
            revision: 7,
            at_ms: 123,
            note: Some(Bytes::from_static(b"why")),
            events: vec![
                KvEvent {
                    kind: EventType::Put,
                    kv: kv("a", "1", None),
                    prev: Some(kv("a", "0", Some(1))),
                },
                KvEvent {
                    kind: EventType::Delete,
                    kv: kv("b", "", None),
                    prev: None,
                },
            ],
        };
        assert_eq!(decode_change(7, &encode_change(&c)).unwrap(), c);
    }

    #[test]
    fn truncation_and_future_formats_are_errors_not_panics() {
        let enc = encode_kv(&kv("k", "v", None));
        for n in 0..33 {
            assert!(decode_kv(b"k", &enc[..n]).is_err());
        }
        let mut future = enc.clone();
        future[0] = 2;
        assert!(
            decode_kv(b"k", &future)
                .unwrap_err()
                .to_string()
                .contains("newer muster")
        );
        let ch = encode_change(&Change {
            revision: 1,
            at_ms: 1,
            note: None,
            events: vec![KvEvent {
                kind: EventType::Put,
                kv: kv("a", "1", None),
                prev: None,
            }],
        });
        for n in 0..ch.len() {
            assert!(decode_change(1, &ch[..n]).is_err());
        }
    }
}
