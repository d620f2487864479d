//! Opening a log engine's directory: load the newest snapshot, replay the
//! WALs after it, cut off a torn last record, refuse anything else damaged.

use super::frame::{self, Kind, Next, parse_name, snap_path, wal_path};
use super::kvmap::{Entry, Map};
use super::retained::Retained;
use super::snapshot::{self, Image};
use super::wal::{self, Wal};
use crate::codec::{FORMAT, decode_change};
use crate::{Change, EventType, KvEvent, LeaseId, Result, StoreError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub(crate) struct Recovered {
    pub map: Map,
    pub history: Retained,
    pub revision: u64,
    pub next_lease: u64,
    pub leases: BTreeMap<LeaseId, Duration>,
    /// The generation of the WAL now appended to.
    pub generation: u64,
    pub wal: Wal,
    pub snapshot_bytes: u64,
}

fn io_err(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("cannot read {}: {e}", path.display()))
}

pub(crate) fn recover(dir: &Path, retain: usize) -> Result<Recovered> {
    let mut snaps = Vec::new();
    let mut wals = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".snap.tmp") {
            // A snapshot that never got its name: never trusted.
            let _ = std::fs::remove_file(entry.path());
            continue;
        }
        match parse_name(&name) {
            Some((Kind::Snap, g)) => snaps.push(g),
            Some((Kind::Wal, g)) => wals.push(g),
            None => {}
        }
    }
    snaps.sort_unstable();
    wals.sort_unstable();
    let (base_gen, image, snapshot_bytes) = match snaps.last() {
        Some(&g) => {
            let path = snap_path(dir, g);
            let size = std::fs::metadata(&path).map_or(0, |m| m.len());
            (g, snapshot::read(&path)?, size)
        }
        None => (
            wals.first().copied().unwrap_or(0),
            Image {
                revision: 0,
                next_lease: 1,
                leases: Vec::new(),
                map: Arc::new(Map::new()),
                history: Retained::default(),
            },
            0,
        ),
    };
    let mut st = Replay {
        map: Arc::try_unwrap(image.map).unwrap_or_else(|m| (*m).clone()),
        history: image.history,
        revision: image.revision,
        next_lease: image.next_lease,
        leases: image.leases.into_iter().collect(),
        retain: retain.max(1),
    };
    snapshot::share_history(&st.map, &mut st.history);
    let live: Vec<u64> = wals.iter().copied().filter(|&g| g >= base_gen).collect();
    for (i, g) in live.iter().enumerate() {
        if *g != base_gen + i as u64 {
            return Err(StoreError::Corrupt(format!(
                "{} is missing (the WALs after the snapshot must be consecutive); restore the data dir from a backup",
                wal_path(dir, base_gen + i as u64).display()
            )));
        }
    }
    let mut wal = None;
    for (i, &g) in live.iter().enumerate() {
        let last = i + 1 == live.len();
        let path = wal_path(dir, g);
        let good = st.replay_file(&path, last)?;
        if last {
            wal = Some(match good {
                Some(good) => Wal::open(path.clone(), good).map_err(|e| io_err(&path, e))?,
                None => Wal::create(dir, g).map_err(|e| io_err(&path, e))?,
            });
        }
    }
    let (generation, wal) = match wal {
        Some(w) => (*live.last().unwrap_or(&base_gen), w),
        None => (
            base_gen,
            Wal::create(dir, base_gen).map_err(|e| io_err(&wal_path(dir, base_gen), e))?,
        ),
    };
    // Files a finished compaction had not yet removed when the process stopped.
    for g in snaps.iter().filter(|&&g| g < base_gen) {
        let _ = std::fs::remove_file(snap_path(dir, *g));
    }
    for g in wals.iter().filter(|&&g| g < base_gen) {
        let _ = std::fs::remove_file(wal_path(dir, *g));
    }
    Ok(Recovered {
        map: st.map,
        history: st.history,
        revision: st.revision,
        next_lease: st.next_lease,
        leases: st.leases,
        generation,
        wal,
        snapshot_bytes,
    })
}

struct Replay {
    map: Map,
    history: Retained,
    revision: u64,
    next_lease: u64,
    leases: BTreeMap<LeaseId, Duration>,
    retain: usize,
}

fn damaged(path: &Path, at: usize, what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!(
        "WAL {} is damaged at offset {at}: {what}; acknowledged writes follow it, so muster will not cut it off; restore the data dir from a backup",
        path.display()
    ))
}

impl Replay {
    /// Replays one WAL; returns where the next append goes (`None`: the file
    /// is the last one and was never fully created, so start it afresh).
    fn replay_file(&mut self, path: &PathBuf, last: bool) -> Result<Option<u64>> {
        let data = std::fs::read(path).map_err(|e| io_err(path, e))?;
        if data.len() < wal::MAGIC.len() || data[..wal::MAGIC.len()] != wal::MAGIC[..] {
            if last && data.len() < wal::MAGIC.len() {
                // Created but never made whole: nothing in it was acknowledged.
                return Ok(None);
            }
            return Err(damaged(path, 0, "not a muster WAL (bad magic)"));
        }
        let mut at = wal::MAGIC.len();
        loop {
            match frame::read(&data, at) {
                Next::End => return Ok(Some(at as u64)),
                Next::Record(payload) => {
                    self.apply(payload).map_err(|e| damaged(path, at, e))?;
                    at += frame::HEADER + payload.len();
                }
                Next::Bad if last && frame::is_torn_tail(&data, at) => {
                    tracing::warn!(path = %path.display(), offset = at, cut = data.len() - at, "cutting off a torn WAL record (a write interrupted before it was acknowledged)");
                    return Ok(Some(at as u64));
                }
                Next::Bad => return Err(damaged(path, at, "checksum or length mismatch")),
            }
        }
    }

    fn apply(&mut self, p: &[u8]) -> Result<()> {
        let short = || StoreError::Corrupt("short record".into());
        let u64_at = |at: usize| -> Result<u64> {
            p.get(at..at + 8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
                .ok_or_else(short)
        };
        if p.first() != Some(&FORMAT) {
            return Err(StoreError::Corrupt(format!(
                "record format {:?}, this muster reads format {FORMAT}; use a newer muster",
                p.first()
            )));
        }
        self.next_lease = self.next_lease.max(u64_at(1)?);
        let n = p
            .get(9..13)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()))
            .ok_or_else(short)?;
        let mut at = 13;
        for _ in 0..n {
            let tag = *p.get(at).ok_or_else(short)?;
            at += 1;
            match tag {
                wal::TAG_GRANT => {
                    let id = LeaseId(u64_at(at)?);
                    self.leases
                        .insert(id, Duration::from_millis(u64_at(at + 8)?));
                    self.next_lease = self.next_lease.max(id.0 + 1);
                    at += 16;
                }
                wal::TAG_LEASE_GONE => {
                    self.leases.remove(&LeaseId(u64_at(at)?));
                    at += 8;
                }
                wal::TAG_CHANGE => {
                    let rev = u64_at(at)?;
                    let len = p
                        .get(at + 8..at + 12)
                        .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()))
                        .ok_or_else(short)? as usize;
                    let body = p.get(at + 12..at + 12 + len).ok_or_else(short)?;
                    if rev != self.revision + 1 {
                        return Err(StoreError::Corrupt(format!(
                            "revision {rev} follows {}",
                            self.revision
                        )));
                    }
                    let change = decode_change(rev, body)?;
                    self.apply_change(change);
                    at += 12 + len;
                }
                t => return Err(StoreError::Corrupt(format!("unknown entry tag {t}"))),
            }
        }
        Ok(())
    }

    /// Applies a logged change; `prev` is taken from the map, so history
    /// shares its values with the map instead of holding copies.
    fn apply_change(&mut self, mut change: Change) {
        for e in &mut change.events {
            match e.kind {
                EventType::Put => {
                    e.prev = self.map.get(&e.kv.key[..]).map(|en| {
                        let mut prev = en.to_kv(&e.kv.key);
                        prev.key = e.kv.key.clone();
                        prev
                    });
                    self.map.insert(e.kv.key[..].into(), Entry::of(&e.kv));
                }
                EventType::Delete => {
                    e.prev = self.map.remove(&e.kv.key[..]).map(|en| {
                        let mut prev = en.to_kv(b"");
                        prev.key = e.kv.key.clone();
                        prev
                    });
                }
            }
        }
        let change = Change {
            events: change.events.into_iter().map(share_delete_key).collect(),
            ..change
        };
        self.revision = change.revision;
        self.history.push_back(Arc::new(change));
        self.history.keep_last(self.retain);
    }
}

fn share_delete_key(mut e: KvEvent) -> KvEvent {
    if let Some(p) = &e.prev
        && e.kind == EventType::Delete
    {
        e.kv.key = p.key.clone();
    }
    e
}
