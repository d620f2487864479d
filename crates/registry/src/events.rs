//! Registry events derived from store changes. Pure: the same change always
//! gives the same events, whether it arrives live or is replayed from history.

use crate::keys::{self, Key, Note, NoteKind};
use muster_core::health::Flap;
use muster_core::{Event, EventKind};
use muster_store::{Change, EventType};
use std::sync::Arc;

fn timestamp(at_ms: u64) -> muster_core::Timestamp {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at_ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// The events one change stands for, in key order. A put that creates an
/// instance or changes its definition is `registered`; one that only moves
/// its status is `status_changed`; a delete is `deregistered` when a client
/// or operator asked for it and `expired` when a lease ran out.
pub fn events_of(change: &Change) -> Vec<Event> {
    let note = change
        .note
        .as_deref()
        .and_then(Note::decode)
        .unwrap_or_default();
    let at = timestamp(change.at_ms);
    let mut out = Vec::new();
    if note.kind == NoteKind::Custom {
        // One event per service told, or one for everybody.
        let targets = match &note.services {
            Some(s) if !s.is_empty() => s.clone(),
            _ => vec![muster_core::BROADCAST.to_string()],
        };
        for service in targets {
            let mut e = Event::new(change.revision, EventKind::Custom, service, at);
            e.event_type = note.event_type.clone();
            e.body = note.body.clone();
            out.push(e);
        }
    }
    for ev in &change.events {
        match keys::parse_key(&ev.kv.key) {
            Key::Service(name) => {
                let kind = match ev.kind {
                    EventType::Put => EventKind::ServiceUpdated,
                    EventType::Delete => EventKind::ServiceDeleted,
                };
                out.push(Event::new(change.revision, kind, name, at));
            }
            Key::Instance { service, .. } => {
                let prev = ev
                    .prev
                    .as_ref()
                    .and_then(|p| keys::decode_instance(&p.value).ok());
                let mut e = Event::new(change.revision, EventKind::Registered, service, at);
                match ev.kind {
                    EventType::Put => {
                        let Ok(rec) = keys::decode_instance(&ev.kv.value) else {
                            continue;
                        };
                        match prev {
                            Some(p) if p.same_definition(&rec) => {
                                if note.kind == NoteKind::CheckStatus {
                                    // A check's own transition; changes while it
                                    // flaps are recorded but not announced.
                                    // Output-only updates are not status changes.
                                    if note.flap == Some(Flap::During) || note.to.is_none() {
                                        continue;
                                    }
                                    e.from = note.from;
                                    e.to = note.to;
                                    e.flapping = match note.flap {
                                        Some(Flap::Started) => Some(true),
                                        Some(Flap::Settled) => Some(false),
                                        _ => None,
                                    };
                                } else if p.status() != rec.status() {
                                    e.from = Some(p.status());
                                    e.to = Some(rec.status());
                                } else {
                                    continue;
                                }
                                e.kind = EventKind::StatusChanged;
                                e.check = note.check.clone();
                                e.output = note.output.clone();
                            }
                            _ => {}
                        }
                        e.instance = Some(Arc::new(rec));
                    }
                    EventType::Delete => {
                        e.kind = match note.kind {
                            NoteKind::Deregistered | NoteKind::ServiceDeleted => {
                                EventKind::Deregistered
                            }
                            _ => EventKind::Expired,
                        };
                        e.reason = note.reason.clone();
                        e.error = note.error.clone();
                        e.instance = prev.map(Arc::new);
                    }
                }
                out.push(e);
            }
            Key::Other => out.extend(crate::elections::election_event(ev, at, change.revision)),
        }
    }
    out
}
