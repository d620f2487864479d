//! Snapshots: the whole state at the start of one WAL generation, so the
//! WALs before it can be deleted.
//!
//! A snapshot is written to a temporary file, fsynced, renamed into place
//! and the directory fsynced; only then is it trusted, and only then are
//! older files removed. Layout: `MAGIC`, then framed records: a header
//! (format, revision, next lease id, leases), chunks of key-values, chunks of
//! retained history, and an end record with the counts, so a snapshot that
//! lost its end is never mistaken for a whole one.

use super::frame::{self, snap_path, sync_dir};
use super::kvmap::{Entry, Map};
use super::retained::Retained;
use crate::codec::{FORMAT, decode_change, encode_change, put_record_kv, take_record_kv};
use crate::{Change, LeaseId, StoreError};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub(crate) const MAGIC: &[u8; 8] = b"MUSTSNP\x01";
const TAG_HEADER: u8 = 0;
const TAG_KVS: u8 = 1;
const TAG_HISTORY: u8 = 2;
const TAG_END: u8 = 3;
/// Entries per framed chunk: big enough to amortise framing, small enough
/// that reading never holds much more than one chunk.
const CHUNK: usize = 4096;

/// Everything a snapshot holds.
pub(crate) struct Image {
    pub revision: u64,
    pub next_lease: u64,
    pub leases: Vec<(LeaseId, Duration)>,
    pub map: Arc<Map>,
    pub history: Retained,
}

/// Writes generation `g`'s snapshot durably; returns its size in bytes.
pub(crate) fn write(dir: &Path, g: u64, image: &Image) -> io::Result<u64> {
    let path = snap_path(dir, g);
    let tmp = path.with_extension("snap.tmp");
    let file = File::create(&tmp)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    out.write_all(MAGIC)?;
    let mut size = MAGIC.len() as u64;
    let mut framed = Vec::new();
    let mut emit = |out: &mut BufWriter<File>, payload: &[u8]| -> io::Result<()> {
        framed.clear();
        frame::frame(&mut framed, payload);
        size += framed.len() as u64;
        out.write_all(&framed)
    };
    let mut p = vec![FORMAT, TAG_HEADER];
    p.extend_from_slice(&image.revision.to_le_bytes());
    p.extend_from_slice(&image.next_lease.to_le_bytes());
    p.extend_from_slice(&(image.leases.len() as u64).to_le_bytes());
    for (id, ttl) in &image.leases {
        p.extend_from_slice(&id.0.to_le_bytes());
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        p.extend_from_slice(&ms.to_le_bytes());
    }
    emit(&mut out, &p)?;
    let kvs: Vec<_> = image.map.iter().collect();
    for chunk in kvs.chunks(CHUNK) {
        p.clear();
        p.push(TAG_KVS);
        p.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
        for (k, e) in chunk {
            put_record_kv(&mut p, &e.to_kv(k));
        }
        emit(&mut out, &p)?;
    }
    let history: Vec<&Arc<Change>> = image.history.iter().collect();
    for chunk in history.chunks(CHUNK) {
        p.clear();
        p.push(TAG_HISTORY);
        p.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
        for c in chunk {
            let body = encode_change(c);
            p.extend_from_slice(&c.revision.to_le_bytes());
            p.extend_from_slice(&(body.len() as u32).to_le_bytes());
            p.extend_from_slice(&body);
        }
        emit(&mut out, &p)?;
    }
    p.clear();
    p.push(TAG_END);
    p.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    p.extend_from_slice(&(image.history.len() as u64).to_le_bytes());
    emit(&mut out, &p)?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, &path)?;
    sync_dir(dir)?;
    Ok(size)
}

fn corrupt(path: &Path, at: u64, what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!(
        "snapshot {} is damaged at offset {at}: {what}; restore the data dir from a backup",
        path.display()
    ))
}

fn u64_at(p: &[u8], at: usize) -> Option<u64> {
    p.get(at..at + 8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
}

fn u32_at(p: &[u8], at: usize) -> Option<u32> {
    p.get(at..at + 4)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()))
}

/// Reads a snapshot written by [`write`]. Any damage is an error: a snapshot
/// was whole and fsynced before it got its name.
pub(crate) fn read(path: &PathBuf) -> Result<Image, StoreError> {
    let file = File::open(path).map_err(|e| corrupt(path, 0, e))?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(|e| corrupt(path, 0, e))?;
    if &magic != MAGIC {
        return Err(corrupt(path, 0, "not a muster snapshot (bad magic)"));
    }
    let mut at = MAGIC.len() as u64;
    let mut payload = Vec::new();
    let mut image = Image {
        revision: 0,
        next_lease: 1,
        leases: Vec::new(),
        map: Arc::new(Map::new()),
        history: Retained::default(),
    };
    let mut map = Map::new();
    let mut seen_header = false;
    loop {
        let mut head = [0u8; frame::HEADER];
        r.read_exact(&mut head)
            .map_err(|e| corrupt(path, at, format!("no end record ({e})")))?;
        let len = u32::from_le_bytes(head[0..4].try_into().unwrap_or_default()) as usize;
        let crc = u32::from_le_bytes(head[4..8].try_into().unwrap_or_default());
        if len > frame::MAX_PAYLOAD {
            return Err(corrupt(path, at, "record length out of range"));
        }
        payload.resize(len, 0);
        r.read_exact(&mut payload)
            .map_err(|e| corrupt(path, at, e))?;
        if frame::crc32(&payload) != crc {
            return Err(corrupt(path, at, "checksum mismatch"));
        }
        let bad = |what: &str| corrupt(path, at, what);
        match payload.first().copied() {
            Some(FORMAT) if !seen_header => {
                if payload.get(1) != Some(&TAG_HEADER) {
                    return Err(bad("missing header"));
                }
                seen_header = true;
                image.revision = u64_at(&payload, 2).ok_or_else(|| bad("short header"))?;
                image.next_lease = u64_at(&payload, 10).ok_or_else(|| bad("short header"))?;
                let n = u64_at(&payload, 18).ok_or_else(|| bad("short header"))? as usize;
                for i in 0..n {
                    let id = u64_at(&payload, 26 + 16 * i).ok_or_else(|| bad("short header"))?;
                    let ms = u64_at(&payload, 34 + 16 * i).ok_or_else(|| bad("short header"))?;
                    image.leases.push((LeaseId(id), Duration::from_millis(ms)));
                }
            }
            Some(f) if !seen_header => {
                return Err(bad(&format!(
                    "format {f}, this muster reads format {FORMAT}; use a newer muster"
                )));
            }
            Some(TAG_KVS) => {
                let n = u32_at(&payload, 1).ok_or_else(|| bad("short chunk"))?;
                let mut rest = &payload[5..];
                for _ in 0..n {
                    let kv = take_record_kv(&mut rest).map_err(|e| corrupt(path, at, e))?;
                    let entry = Entry::of(&kv);
                    map.insert(kv.key[..].into(), entry);
                }
            }
            Some(TAG_HISTORY) => {
                let n = u32_at(&payload, 1).ok_or_else(|| bad("short chunk"))?;
                let mut off = 5;
                for _ in 0..n {
                    let rev = u64_at(&payload, off).ok_or_else(|| bad("short chunk"))?;
                    let len = u32_at(&payload, off + 8).ok_or_else(|| bad("short chunk"))? as usize;
                    let body = payload
                        .get(off + 12..off + 12 + len)
                        .ok_or_else(|| bad("short chunk"))?;
                    let c = decode_change(rev, body).map_err(|e| corrupt(path, at, e))?;
                    image.history.push_back(Arc::new(c));
                    off += 12 + len;
                }
            }
            Some(TAG_END) => {
                let kvs = u64_at(&payload, 1).ok_or_else(|| bad("short end"))?;
                let hist = u64_at(&payload, 9).ok_or_else(|| bad("short end"))?;
                if kvs != map.len() as u64 || hist != image.history.len() as u64 {
                    return Err(bad("counts in the end record do not match"));
                }
                image.map = Arc::new(map);
                return Ok(image);
            }
            _ => return Err(bad("unknown record")),
        }
        at += (frame::HEADER + len) as u64;
    }
}

/// Re-points the values of retained history at the map's own `Bytes` (and at
/// each other), so a restart does not hold every retained value twice.
/// (Keys are not shared: the map holds its own, see [`super::kvmap::Key`].)
pub(crate) fn share_history(map: &Map, history: &mut Retained) {
    use std::collections::HashMap;
    let mut seen: HashMap<(bytes::Bytes, u64), bytes::Bytes> = HashMap::new();
    history.for_each_unshared(|c| {
        for e in &mut c.events {
            if let Some(p) = &mut e.prev
                && let Some(v) = seen.get(&(p.key.clone(), p.mod_revision))
            {
                p.value = v.clone();
            }
            if e.kind == crate::EventType::Put {
                if let Some(cur) = map.get(&e.kv.key[..])
                    && cur.mod_revision == e.kv.mod_revision
                {
                    e.kv.value = cur.value.clone();
                }
                seen.insert((e.kv.key.clone(), e.kv.mod_revision), e.kv.value.clone());
            }
        }
    });
}
