//! Elections: named leadership slots with at most one leader at a time,
//! built on the store's transactions and leases.
//!
//! `elect/{name}` holds the leader's record and is attached to a lease whose
//! TTL is the campaign's `ttl`; a heartbeat is a `lease_keepalive`, so
//! leadership lapses on the server's clock when heartbeats stop (the lease
//! expires and the store deletes the key). The term counter must survive
//! that deletion, so it lives in a second key, `elect-term/{name}`, without a
//! lease, written in the same transaction as the leader key.
//!
//! Elections are not in the registry's index (they are neither services nor
//! instances): reads go straight to the store. Every write answers once the
//! store has committed it.

use crate::error::RegistryError;
use crate::keys::{self, Note, NoteKind};
use crate::registry::Registry;
use muster_core::error::Errors;
use muster_core::{Event, EventKind, Millis, Timestamp, ValidationError};
use muster_store::{Compare, EventType, KeyValue, KvEvent, StoreError, Txn};
use serde::{Deserialize, Serialize};

/// Prefix of the leader keys (`elect/{name}`), attached to the leader's lease.
pub const ELECTION_PREFIX: &str = "elect/";
/// Prefix of the term counters (`elect-term/{name}`), which outlive leases.
pub const TERM_PREFIX: &str = "elect-term/";

const MIN_TTL: Millis = Millis(1000);
const MAX_TTL: Millis = Millis(3_600_000);
const MAX_CANDIDATE: usize = 128;
/// Compare-and-set retries before a write reports a conflict.
const CAS_ATTEMPTS: usize = 8;

/// `POST /api/v1/elections/{name}/campaign`.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CampaignBody {
    /// Who asks to lead: 1-128 printable characters.
    pub candidate: String,
    /// How long leadership lasts without a heartbeat: 1s to 1h.
    pub ttl: Millis,
}

/// `PUT .../heartbeat` and `DELETE .../leader`.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CandidateBody {
    pub candidate: String,
}

/// The answer to a campaign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Campaign {
    /// Whether the candidate holds the leadership now.
    pub leader: bool,
    /// Who holds it (the candidate itself when `leader`).
    pub holder: String,
    /// The holder's term: it increases by one each time leadership is taken.
    pub term: u64,
}

/// An election as it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Election {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// The latest term; 0 when nobody ever led.
    pub term: u64,
    /// When the holder took the leadership.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub since: Option<Timestamp>,
}

/// What `elect/{name}` stores.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaderRecord {
    holder: String,
    term: u64,
    #[serde(with = "time::serde::rfc3339")]
    since: Timestamp,
}

/// What `elect-term/{name}` stores.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct TermRecord {
    term: u64,
}

fn leader_key(name: &str) -> String {
    format!("{ELECTION_PREFIX}{name}")
}

fn term_key(name: &str) -> String {
    format!("{TERM_PREFIX}{name}")
}

/// Election names follow the service-name rule (safe in URLs and keys); the
/// message says "election name" so it matches what the user typed.
fn validate_name(errs: &mut Errors, name: &str) {
    let r = muster_core::name::validate_service_name(name)
        .map_err(|m| m.replacen("service name", "election name", 1));
    errs.take("name", r);
}

fn validate_candidate(errs: &mut Errors, candidate: &str) {
    let n = candidate.chars().count();
    if n == 0 || n > MAX_CANDIDATE {
        errs.push(
            "candidate",
            format!("candidate must be 1-{MAX_CANDIDATE} characters, got {n}"),
        );
    } else if candidate.chars().any(char::is_control) {
        errs.push(
            "candidate",
            "candidate must be printable: no control characters",
        );
    }
}

fn validate_ttl(errs: &mut Errors, ttl: Millis) {
    if ttl < MIN_TTL || ttl > MAX_TTL {
        errs.push(
            "ttl",
            format!("ttl must be between {MIN_TTL} and {MAX_TTL}, got {ttl}"),
        );
    }
}

fn check(f: impl FnOnce(&mut Errors)) -> Result<(), ValidationError> {
    let mut errs = Errors::default();
    f(&mut errs);
    errs.finish()
}

fn decode_leader(kv: &KeyValue) -> Result<LeaderRecord, RegistryError> {
    keys::decode(&kv.value).map_err(|e| {
        RegistryError::Unavailable(format!(
            "election record {:?}: {e}",
            String::from_utf8_lossy(&kv.key)
        ))
    })
}

fn now() -> Timestamp {
    time::OffsetDateTime::now_utc()
}

fn not_held(name: &str) -> RegistryError {
    RegistryError::NotFound(format!(
        "nobody leads election {name:?}; campaign for it first"
    ))
}

fn held_by_other(name: &str, holder: &str) -> RegistryError {
    RegistryError::Conflict(format!(
        "election {name:?} is led by {holder:?}, not by this candidate"
    ))
}

fn contended(name: &str) -> RegistryError {
    RegistryError::Conflict(format!(
        "election {name:?} kept changing concurrently; retry"
    ))
}

impl Registry {
    /// One key exactly, read from the store (a prefix snapshot also returns
    /// longer keys, e.g. `elect/web2` for `elect/web`).
    async fn read_key(&self, key: &str) -> Result<Option<KeyValue>, RegistryError> {
        let snap = self.store().snapshot(key.as_bytes()).await?;
        Ok(snap.kvs.into_iter().find(|kv| kv.key == key.as_bytes()))
    }

    /// The current term and the `mod_revision` to guard its next write with
    /// (0 when the counter does not exist yet, which `ModRevision` reads as
    /// "must not exist").
    async fn read_term(&self, name: &str) -> Result<(u64, u64), RegistryError> {
        match self.read_key(&term_key(name)).await? {
            None => Ok((0, 0)),
            Some(kv) => {
                let t: TermRecord = keys::decode(&kv.value).map_err(|e| {
                    RegistryError::Unavailable(format!("term counter of {name:?}: {e}"))
                })?;
                Ok((t.term, kv.mod_revision))
            }
        }
    }

    /// Asks to lead `name`, without waiting: the candidate becomes leader if
    /// nobody leads (the term goes up by one), stays leader with its lease
    /// renewed if it already leads, and otherwise learns who does.
    pub async fn campaign(
        &self,
        name: &str,
        body: CampaignBody,
    ) -> Result<Campaign, RegistryError> {
        check(|e| {
            validate_name(e, name);
            validate_candidate(e, &body.candidate);
            validate_ttl(e, body.ttl);
        })?;
        let key = leader_key(name);
        let ttl = body.ttl.as_duration();
        for _ in 0..CAS_ATTEMPTS {
            if let Some(kv) = self.read_key(&key).await? {
                let rec = decode_leader(&kv)?;
                if rec.holder != body.candidate {
                    return Ok(Campaign {
                        leader: false,
                        holder: rec.holder,
                        term: rec.term,
                    });
                }
                if self.renew(&kv, &rec, ttl).await? {
                    return Ok(Campaign {
                        leader: true,
                        holder: rec.holder,
                        term: rec.term,
                    });
                }
                // The lease ran out under us or the key moved: look again.
                continue;
            }
            let (term, term_rev) = self.read_term(name).await?;
            let rec = LeaderRecord {
                holder: body.candidate.clone(),
                term: term + 1,
                since: now(),
            };
            let lease = self.store().lease_grant(ttl).await?;
            let txn = Txn::new()
                .when(Compare::Missing(key.clone().into()))
                .when(Compare::ModRevision(term_key(name).into(), term_rev))
                .put(key.clone(), keys::encode(&rec), Some(lease))
                .put(
                    term_key(name),
                    keys::encode(&TermRecord { term: rec.term }),
                    None,
                );
            let won = match self.store().txn(txn).await {
                Ok(res) => res.succeeded,
                // A lease this young can only be gone if the store is closing
                // or the ttl elapsed already; either way, look again.
                Err(StoreError::LeaseNotFound(_)) => false,
                Err(e) => return Err(e.into()),
            };
            if won {
                return Ok(Campaign {
                    leader: true,
                    holder: rec.holder,
                    term: rec.term,
                });
            }
            // Someone else got there first (or the term moved): the unused
            // lease would otherwise linger until its TTL runs out.
            let _ = self.store().lease_revoke(lease).await;
        }
        Err(contended(name))
    }

    /// Renews the holder's own leadership on a repeated campaign. The same
    /// ttl is a keepalive; a different one moves the key to a fresh lease
    /// (a lease's TTL is fixed at its grant). False when the leadership
    /// lapsed or changed meanwhile.
    async fn renew(
        &self,
        kv: &KeyValue,
        rec: &LeaderRecord,
        ttl: std::time::Duration,
    ) -> Result<bool, RegistryError> {
        let Some(old) = kv.lease else {
            // Every leader key is written with a lease; one without cannot
            // lapse, so treat it as held and leave it to resign.
            return Ok(true);
        };
        match self.store().lease_keepalive(old).await {
            Ok(current) if current == ttl => return Ok(true),
            Ok(_) => {}
            Err(StoreError::LeaseNotFound(_)) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        let lease = self.store().lease_grant(ttl).await?;
        let txn = Txn::new()
            .when(Compare::ModRevision(kv.key.clone(), kv.mod_revision))
            .put(kv.key.clone(), keys::encode(rec), Some(lease));
        let moved = match self.store().txn(txn).await {
            Ok(res) => res.succeeded,
            Err(StoreError::LeaseNotFound(_)) => false,
            Err(e) => return Err(e.into()),
        };
        // The key left the old lease (or the txn failed and the new one is
        // unused): revoking deletes nothing still attached to a leadership.
        let unused = if moved { old } else { lease };
        let _ = self.store().lease_revoke(unused).await;
        Ok(moved)
    }

    /// Keeps `candidate`'s leadership of `name` alive for another ttl.
    /// NotFound when nobody leads (it lapsed), Conflict when another does.
    pub async fn heartbeat_leader(
        &self,
        name: &str,
        body: CandidateBody,
    ) -> Result<Election, RegistryError> {
        check(|e| {
            validate_name(e, name);
            validate_candidate(e, &body.candidate);
        })?;
        let kv = self
            .read_key(&leader_key(name))
            .await?
            .ok_or_else(|| not_held(name))?;
        let rec = decode_leader(&kv)?;
        if rec.holder != body.candidate {
            return Err(held_by_other(name, &rec.holder));
        }
        // No transaction needed: each leadership gets a lease of its own, so
        // a keepalive can only ever renew the leadership it was read with.
        // If that lease is gone the leadership lapsed in between.
        if let Some(lease) = kv.lease {
            match self.store().lease_keepalive(lease).await {
                Ok(_) => {}
                Err(StoreError::LeaseNotFound(_)) => return Err(not_held(name)),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Election {
            holder: Some(rec.holder),
            term: rec.term,
            since: Some(rec.since),
        })
    }

    /// Gives up `candidate`'s leadership of `name`. NotFound when nobody
    /// leads, Conflict when another does. The term is kept.
    pub async fn resign(&self, name: &str, body: CandidateBody) -> Result<Election, RegistryError> {
        check(|e| {
            validate_name(e, name);
            validate_candidate(e, &body.candidate);
        })?;
        let key = leader_key(name);
        // A delete without a note reads as a lease expiry; this one says it
        // was asked for.
        let mut note = Note::new(NoteKind::Write);
        note.reason = Some(format!("{} resigned", body.candidate));
        for _ in 0..CAS_ATTEMPTS {
            let kv = self.read_key(&key).await?.ok_or_else(|| not_held(name))?;
            let rec = decode_leader(&kv)?;
            if rec.holder != body.candidate {
                return Err(held_by_other(name, &rec.holder));
            }
            let res = self
                .store()
                .txn(
                    Txn::new()
                        .when(Compare::ModRevision(kv.key.clone(), kv.mod_revision))
                        .delete(kv.key.clone())
                        .note(note.encode()),
                )
                .await?;
            if res.succeeded {
                if let Some(lease) = kv.lease {
                    // Nothing else is attached to it; this just stops its clock.
                    let _ = self.store().lease_revoke(lease).await;
                }
                return Ok(Election {
                    holder: None,
                    term: rec.term,
                    since: None,
                });
            }
        }
        Err(contended(name))
    }

    /// Who leads `name`, since when, and the latest term (0, with no holder,
    /// for an election nobody ever campaigned in).
    pub async fn election(&self, name: &str) -> Result<Election, RegistryError> {
        check(|e| validate_name(e, name))?;
        if let Some(kv) = self.read_key(&leader_key(name)).await? {
            let rec = decode_leader(&kv)?;
            return Ok(Election {
                holder: Some(rec.holder),
                term: rec.term,
                since: Some(rec.since),
            });
        }
        let (term, _) = self.read_term(name).await?;
        Ok(Election {
            holder: None,
            term,
            since: None,
        })
    }
}

/// The change-feed event for a change to a leader key (`elect/{name}`):
/// `custom`, `service` = `election:{name}`, `reason` = the new holder, or
/// empty when the slot was freed (resigned or lapsed). `None` for any other
/// key, and for a put that keeps the same holder and term (a lease move).
pub fn election_event(ev: &KvEvent, at: Timestamp, revision: u64) -> Option<Event> {
    let name = std::str::from_utf8(&ev.kv.key)
        .ok()?
        .strip_prefix(ELECTION_PREFIX)?;
    let (holder, term) = match ev.kind {
        EventType::Put => {
            let rec: LeaderRecord = keys::decode(&ev.kv.value).ok()?;
            let prev = ev
                .prev
                .as_ref()
                .and_then(|p| keys::decode::<LeaderRecord>(&p.value).ok());
            if prev.is_some_and(|p| p.holder == rec.holder && p.term == rec.term) {
                return None;
            }
            (Some(rec.holder), Some(rec.term))
        }
        EventType::Delete => (None, None),
    };
    // Leadership concerns everybody: a broadcast custom event of type `election`.
    let mut e = Event::new(revision, EventKind::Custom, muster_core::BROADCAST, at);
    e.event_type = Some("election".into());
    e.body = Some(serde_json::json!({"name": name, "holder": holder, "term": term}));
    Some(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn errors_of(f: impl FnOnce(&mut Errors)) -> Vec<String> {
        check(f)
            .err()
            .map(|e| e.errors.into_iter().map(|f| f.field).collect())
            .unwrap_or_default()
    }

    #[test]
    fn validation_names_the_field() {
        assert!(errors_of(|e| validate_name(e, "db-primary")).is_empty());
        assert_eq!(errors_of(|e| validate_name(e, "Bad Name")), ["name"]);
        assert!(errors_of(|e| validate_candidate(e, "node-1 (pid 42)")).is_empty());
        assert_eq!(errors_of(|e| validate_candidate(e, "")), ["candidate"]);
        assert_eq!(errors_of(|e| validate_candidate(e, "a\nb")), ["candidate"]);
        assert_eq!(
            errors_of(|e| validate_candidate(e, &"x".repeat(129))),
            ["candidate"]
        );
        assert!(errors_of(|e| validate_candidate(e, &"é".repeat(128))).is_empty());
        assert!(errors_of(|e| validate_ttl(e, Millis(1000))).is_empty());
        assert!(errors_of(|e| validate_ttl(e, Millis(3_600_000))).is_empty());
        assert_eq!(errors_of(|e| validate_ttl(e, Millis(999))), ["ttl"]);
        assert_eq!(errors_of(|e| validate_ttl(e, Millis(3_600_001))), ["ttl"]);
    }

    fn kv(key: &str, value: Vec<u8>) -> KeyValue {
        KeyValue {
            key: Bytes::from(key.to_string()),
            value: Bytes::from(value),
            create_revision: 1,
            mod_revision: 1,
            version: 1,
            lease: None,
        }
    }

    fn leader(holder: &str, term: u64) -> Vec<u8> {
        keys::encode(&LeaderRecord {
            holder: holder.into(),
            term,
            since: time::OffsetDateTime::UNIX_EPOCH,
        })
    }

    #[test]
    fn leader_keys_become_custom_events() {
        let at = time::OffsetDateTime::UNIX_EPOCH;
        let put = KvEvent {
            kind: EventType::Put,
            kv: kv("elect/db", leader("a", 1)),
            prev: None,
        };
        let e = election_event(&put, at, 7).unwrap();
        assert_eq!(e.kind, EventKind::Custom);
        assert_eq!(e.service, muster_core::BROADCAST);
        assert_eq!(e.event_type.as_deref(), Some("election"));
        assert_eq!(
            e.body,
            Some(serde_json::json!({"name": "db", "holder": "a", "term": 1}))
        );
        assert_eq!(e.revision, 7);

        let moved = KvEvent {
            prev: Some(kv("elect/db", leader("a", 1))),
            ..put.clone()
        };
        assert!(election_event(&moved, at, 8).is_none(), "same leadership");

        let freed = KvEvent {
            kind: EventType::Delete,
            kv: kv("elect/db", Vec::new()),
            prev: Some(kv("elect/db", leader("a", 1))),
        };
        assert_eq!(
            election_event(&freed, at, 9).unwrap().body,
            Some(serde_json::json!({"name": "db", "holder": null, "term": null}))
        );

        let term = KvEvent {
            kind: EventType::Put,
            kv: kv("elect-term/db", keys::encode(&TermRecord { term: 1 })),
            prev: None,
        };
        assert!(election_event(&term, at, 7).is_none());
        let inst = KvEvent {
            kind: EventType::Put,
            kv: kv("inst/web/a", b"{}".to_vec()),
            prev: None,
        };
        assert!(election_event(&inst, at, 7).is_none());
    }
}
