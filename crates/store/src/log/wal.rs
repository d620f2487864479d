//! The write-ahead log: one framed record per committed batch, appended and
//! `fdatasync`ed before any caller of the batch is answered.
//!
//! A record carries the lease grants the batch persists, every change it
//! made (as `codec::encode_change`), the leases it removed, and the next
//! lease id. An append that fails is cut back off the file, so the log never
//! holds half a batch that was answered with an error.

use super::frame::{self, sync_dir, wal_path};
use crate::codec::{FORMAT, encode_change};
use crate::{Change, LeaseId};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// First bytes of every WAL file.
pub(crate) const MAGIC: &[u8; 8] = b"MUSTWAL\x01";

pub(crate) const TAG_GRANT: u8 = 0;
pub(crate) const TAG_CHANGE: u8 = 1;
pub(crate) const TAG_LEASE_GONE: u8 = 2;

/// One batch's record, being built.
pub(crate) struct Record {
    payload: Vec<u8>,
    entries: u32,
}

impl Record {
    pub fn new(next_lease: u64) -> Self {
        let mut payload = Vec::with_capacity(4096);
        payload.push(FORMAT);
        payload.extend_from_slice(&next_lease.to_le_bytes());
        payload.extend_from_slice(&0u32.to_le_bytes());
        Record {
            payload,
            entries: 0,
        }
    }
    pub fn grant(&mut self, id: LeaseId, ttl: Duration) {
        self.payload.push(TAG_GRANT);
        self.payload.extend_from_slice(&id.0.to_le_bytes());
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.payload.extend_from_slice(&ms.to_le_bytes());
        self.entries += 1;
    }
    pub fn change(&mut self, c: &Change) {
        let body = encode_change(c);
        self.payload.push(TAG_CHANGE);
        self.payload.extend_from_slice(&c.revision.to_le_bytes());
        self.payload
            .extend_from_slice(&(body.len() as u32).to_le_bytes());
        self.payload.extend_from_slice(&body);
        self.entries += 1;
    }
    pub fn lease_gone(&mut self, id: LeaseId) {
        self.payload.push(TAG_LEASE_GONE);
        self.payload.extend_from_slice(&id.0.to_le_bytes());
        self.entries += 1;
    }
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }
    /// The framed bytes to append.
    pub fn finish(mut self) -> Vec<u8> {
        self.payload[9..13].copy_from_slice(&self.entries.to_le_bytes());
        let mut out = Vec::with_capacity(self.payload.len() + frame::HEADER);
        frame::frame(&mut out, &self.payload);
        out
    }
}

/// The WAL file being appended to.
pub(crate) struct Wal {
    file: File,
    pub path: PathBuf,
    /// End of the last record known to be on disk.
    pub good: u64,
    /// A failed append could not be cut off yet; cut before the next one.
    dirty: bool,
}

impl Wal {
    /// Creates generation `g`'s empty WAL, durable (file and directory entry).
    pub fn create(dir: &Path, g: u64) -> io::Result<Wal> {
        let path = wal_path(dir, g);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        file.write_all(MAGIC)?;
        file.sync_all()?;
        sync_dir(dir)?;
        Ok(Wal {
            file,
            path,
            good: MAGIC.len() as u64,
            dirty: false,
        })
    }

    /// Opens an existing WAL for appending after its last good record,
    /// cutting off whatever follows (a torn tail found by recovery).
    pub fn open(path: PathBuf, good: u64) -> io::Result<Wal> {
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        if file.metadata()?.len() != good {
            file.set_len(good)?;
            file.sync_all()?;
        }
        Ok(Wal {
            file,
            path,
            good,
            dirty: false,
        })
    }

    /// Appends and fdatasyncs `bytes`; on failure cuts the file back to the
    /// last good record (or remembers to before the next append).
    pub fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.dirty {
            self.file.set_len(self.good)?;
            self.file.sync_data()?;
            self.dirty = false;
        }
        let r = self
            .file
            .write_all_at(bytes, self.good)
            .and_then(|()| self.file.sync_data());
        match r {
            Ok(()) => {
                self.good += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                let cut = self
                    .file
                    .set_len(self.good)
                    .and_then(|()| self.file.sync_data());
                if let Err(cut) = cut {
                    tracing::warn!(path = %self.path.display(), error = %cut, "cannot cut a failed append off the WAL yet; retrying before the next write");
                    self.dirty = true;
                }
                Err(e)
            }
        }
    }
}
