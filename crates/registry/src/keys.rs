//! How the registry lays itself out in the store's key space, and how its
//! records and change notes are encoded.
//!
//! Keys: `svc/{name}` holds a service definition, `inst/{service}/{id}` an
//! instance. Values are JSON envelopes `{"v": FORMAT, "r": record}` so a
//! future format can be told apart and an operator can read them in etcd.

use muster_core::{InstanceRecord, ServiceRecord};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

pub const FORMAT: u32 = 1;
pub const SERVICE_PREFIX: &str = "svc/";
pub const INSTANCE_PREFIX: &str = "inst/";

pub fn service_key(name: &str) -> String {
    format!("{SERVICE_PREFIX}{name}")
}

pub fn instance_prefix(service: &str) -> String {
    format!("{INSTANCE_PREFIX}{service}/")
}

pub fn instance_key(service: &str, id: &str) -> String {
    format!("{INSTANCE_PREFIX}{service}/{id}")
}

/// What a key names.
#[derive(Debug, PartialEq, Eq)]
pub enum Key<'a> {
    Service(&'a str),
    Instance { service: &'a str, id: &'a str },
    Other,
}

pub fn parse_key(key: &[u8]) -> Key<'_> {
    let Ok(k) = std::str::from_utf8(key) else {
        return Key::Other;
    };
    if let Some(name) = k.strip_prefix(SERVICE_PREFIX) {
        return Key::Service(name);
    }
    if let Some(rest) = k.strip_prefix(INSTANCE_PREFIX)
        && let Some((service, id)) = rest.split_once('/')
    {
        return Key::Instance { service, id };
    }
    Key::Other
}

#[derive(Serialize)]
struct EnvelopeRef<'a, T> {
    v: u32,
    r: &'a T,
}

#[derive(Deserialize)]
struct Envelope<T> {
    v: u32,
    r: T,
}

/// Exact-size: the store and the index share this buffer for as long as the
/// record lives, so the growth slack of `to_vec` would be kept per instance.
pub fn encode<T: Serialize>(rec: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec(&EnvelopeRef { v: FORMAT, r: rec }).unwrap_or_default();
    out.shrink_to_fit();
    out
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let env: Envelope<T> =
        serde_json::from_slice(bytes).map_err(|e| format!("unreadable record: {e}"))?;
    if env.v != FORMAT {
        return Err(format!(
            "record format {} is not {FORMAT}; use a newer muster",
            env.v
        ));
    }
    Ok(env.r)
}

pub fn decode_instance(bytes: &[u8]) -> Result<InstanceRecord, String> {
    decode(bytes)
}

const ENVELOPE_HEAD: &[u8] = br#"{"v":1,"r":"#;

/// The record inside an envelope written by [`encode`], without decoding it.
pub fn record_slice(bytes: &[u8]) -> Result<&[u8], String> {
    if bytes.starts_with(ENVELOPE_HEAD)
        && bytes.ends_with(b"}")
        && bytes.len() > ENVELOPE_HEAD.len()
    {
        return Ok(&bytes[ENVELOPE_HEAD.len()..bytes.len() - 1]);
    }
    // Not the shape this version writes: let the full decoder say why.
    decode::<serde::de::IgnoredAny>(bytes)?;
    Err("record envelope is not in the expected form".into())
}

pub fn decode_service(bytes: &[u8]) -> Result<ServiceRecord, String> {
    decode(bytes)
}

/// Why a change happened, recorded with it (see `Txn::note`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    pub kind: NoteKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// A check's own status change: before and after, and how it relates to flapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<muster_core::Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<muster_core::Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flap: Option<muster_core::health::Flap>,
    /// A custom event: its type, body and audience.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoteKind {
    #[default]
    Write,
    Deregistered,
    ServiceDeleted,
    StatusReported,
    CheckStatus,
    Custom,
}

impl Note {
    pub fn new(kind: NoteKind) -> Self {
        Note {
            kind,
            ..Default::default()
        }
    }
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
    pub fn decode(bytes: &[u8]) -> Option<Note> {
        serde_json::from_slice(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        assert_eq!(
            parse_key(service_key("web").as_bytes()),
            Key::Service("web")
        );
        assert_eq!(
            parse_key(instance_key("web", "web-10.0.0.1-80").as_bytes()),
            Key::Instance {
                service: "web",
                id: "web-10.0.0.1-80"
            }
        );
        assert_eq!(parse_key(b"other/x"), Key::Other);
        assert_eq!(parse_key(b"inst/noslash"), Key::Other);
        assert_eq!(parse_key(&[0xff, 0xfe]), Key::Other);
    }

    #[test]
    fn envelopes_carry_the_format() {
        let bytes = encode(&vec![1, 2]);
        assert_eq!(std::str::from_utf8(&bytes).unwrap(), r#"{"v":1,"r":[1,2]}"#);
        assert_eq!(decode::<Vec<i32>>(&bytes).unwrap(), vec![1, 2]);
        assert!(
            decode::<Vec<i32>>(br#"{"v":2,"r":[1]}"#)
                .unwrap_err()
                .contains("newer muster")
        );
        assert!(decode::<Vec<i32>>(b"garbage").is_err());
        assert_eq!(record_slice(&bytes).unwrap(), b"[1,2]");
        assert!(
            record_slice(br#"{"v":2,"r":[1]}"#)
                .unwrap_err()
                .contains("newer muster")
        );
        assert!(record_slice(b"{}").is_err());
    }
}
