//! Framing shared by the log engine's files: every record is
//! `[len: u32 LE][crc32: u32 LE][payload]`, so a reader can tell a record cut
//! short by a crash (never acknowledged) from damage to one that was.

use std::path::{Path, PathBuf};

/// Bytes before each payload.
pub(crate) const HEADER: usize = 8;

/// The largest payload a reader accepts; a bigger length is damage.
pub(crate) const MAX_PAYLOAD: usize = 1 << 30;

/// CRC-32 (IEEE, reflected), slicing by eight: ~8x a byte-wise table, and the
/// WAL checksums every byte it writes.
const TABLES: [[u32; 256]; 8] = {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut i = 0;
    while i < 256 {
        let mut s = 1;
        while s < 8 {
            let prev = t[s - 1][i];
            t[s][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            s += 1;
        }
        i += 1;
    }
    t
};

pub(crate) fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    let mut chunks = data.chunks_exact(8);
    for ch in &mut chunks {
        let lo = u32::from_le_bytes([ch[0], ch[1], ch[2], ch[3]]) ^ c;
        c = TABLES[7][(lo & 0xff) as usize]
            ^ TABLES[6][((lo >> 8) & 0xff) as usize]
            ^ TABLES[5][((lo >> 16) & 0xff) as usize]
            ^ TABLES[4][(lo >> 24) as usize]
            ^ TABLES[3][ch[4] as usize]
            ^ TABLES[2][ch[5] as usize]
            ^ TABLES[1][ch[6] as usize]
            ^ TABLES[0][ch[7] as usize];
    }
    for &b in chunks.remainder() {
        c = TABLES[0][((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// Appends a framed `payload` to `out`.
pub(crate) fn frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// What the reader found at an offset.
pub(crate) enum Next<'a> {
    Record(&'a [u8]),
    End,
    /// A record that does not check out; whether that is a torn tail or
    /// damage depends on what follows (see [`is_torn_tail`]).
    Bad,
}

/// The record at `data[at..]`.
pub(crate) fn read(data: &[u8], at: usize) -> Next<'_> {
    let rest = &data[at..];
    if rest.is_empty() {
        return Next::End;
    }
    if rest.len() < HEADER {
        return Next::Bad;
    }
    let len = u32::from_le_bytes(rest[0..4].try_into().unwrap_or_default()) as usize;
    let crc = u32::from_le_bytes(rest[4..8].try_into().unwrap_or_default());
    // No record is empty: a zero length is a hole, not a record.
    if len == 0 || len > MAX_PAYLOAD || rest.len() - HEADER < len {
        return Next::Bad;
    }
    let payload = &rest[HEADER..HEADER + len];
    if crc32(payload) != crc {
        return Next::Bad;
    }
    Next::Record(payload)
}

/// A bad record at `at` is the torn tail of an interrupted append (never
/// acknowledged, safe to cut) when nothing valid can follow it: its length
/// runs past the end, it ends exactly at the end, or everything after `at`
/// is zeros (a file extended but not yet written).
pub(crate) fn is_torn_tail(data: &[u8], at: usize) -> bool {
    let rest = &data[at..];
    if rest.len() < HEADER || rest.iter().all(|&b| b == 0) {
        return true;
    }
    let len = u32::from_le_bytes(rest[0..4].try_into().unwrap_or_default()) as usize;
    len > MAX_PAYLOAD || HEADER + len >= rest.len()
}

/// Names of the files in a log engine's data directory. Generation `g`'s
/// snapshot holds the state at the start of WAL `g`.
pub(crate) fn wal_path(dir: &Path, g: u64) -> PathBuf {
    dir.join(format!("wal-{g:020}.log"))
}

pub(crate) fn snap_path(dir: &Path, g: u64) -> PathBuf {
    dir.join(format!("snap-{g:020}.snap"))
}

/// The generation in a file name made by [`wal_path`] or [`snap_path`].
pub(crate) fn parse_name(name: &str) -> Option<(Kind, u64)> {
    if let Some(g) = name
        .strip_prefix("wal-")
        .and_then(|r| r.strip_suffix(".log"))
    {
        return g.parse().ok().map(|g| (Kind::Wal, g));
    }
    if let Some(g) = name
        .strip_prefix("snap-")
        .and_then(|r| r.strip_suffix(".snap"))
    {
        return g.parse().ok().map(|g| (Kind::Snap, g));
    }
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Wal,
    Snap,
}

/// Makes a rename or a new file in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        let long: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let bytewise = {
            let mut c = !0u32;
            for &b in &long {
                c = TABLES[0][((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
            }
            !c
        };
        assert_eq!(crc32(&long), bytewise);
    }

    #[test]
    fn torn_tails_are_told_from_damage() {
        let mut f = Vec::new();
        frame(&mut f, b"first");
        let second = f.len();
        frame(&mut f, b"second");
        assert!(matches!(read(&f, 0), Next::Record(b"first")));
        assert!(matches!(read(&f, second), Next::Record(b"second")));
        assert!(matches!(read(&f, f.len()), Next::End));
        // Cut anywhere inside the last record: torn.
        for cut in second + 1..f.len() {
            assert!(matches!(read(&f[..cut], second), Next::Bad));
            assert!(is_torn_tail(&f[..cut], second), "cut at {cut}");
        }
        // A flipped byte in the first record with a good one after it: damage.
        let mut bad = f.clone();
        bad[HEADER + 1] ^= 1;
        assert!(matches!(read(&bad, 0), Next::Bad));
        assert!(!is_torn_tail(&bad, 0));
        assert_eq!(
            parse_name("wal-00000000000000000007.log"),
            Some((Kind::Wal, 7))
        );
        assert_eq!(
            parse_name("snap-00000000000000000003.snap"),
            Some((Kind::Snap, 3))
        );
        assert_eq!(parse_name("muster.redb"), None);
    }
}
