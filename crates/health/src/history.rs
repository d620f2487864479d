//! Probe history: every probe of every check, the newest `retain` of each
//! check kept in memory, answered newest first, summarised over a window, and
//! saved to a file across a graceful restart.
//!
//! Memory is what shapes this module: 10,000 checks × 1,000 probes must fit
//! in a few hundred MB. A probe is therefore kept as a 24-byte [`Slot`]
//! (time as i64 ms, small integers, flags in a byte), its id is implied by
//! its position, its check id is the map key, and the parts that almost never
//! change from one probe to the next — output and timeout — live in one
//! shared allocation that consecutive probes reuse while they repeat. The
//! API's [`ProbeRecord`] is built only when someone asks.
//!
//! The file written by [`ProbeHistory::save`] is JSON lines: a header
//! `{"format":"muster-probe-history","version":1}`, then one line per check
//! (see `FileProbe` for the columns). A file of another version is refused
//! with a message, never misread.

use muster_core::{Millis, Status};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

use crate::probe::ProbeOutcome;

/// Probes kept per check unless configured otherwise.
pub const DEFAULT_RETAIN: usize = 1000;

/// What the first line of a history file says it is.
const FORMAT: &str = "muster-probe-history";
/// The file format this code writes and reads.
const VERSION: u32 = 1;

/// One probe as the API returns it (`GET /api/v1/checks/{id}/probes`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct ProbeRecord {
    /// Per check, increasing from 1.
    pub id: u64,
    pub check_id: String,
    /// When the probe started, to the millisecond.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub requested_at: OffsetDateTime,
    pub timeout_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    pub is_up: bool,
    pub is_responsive: bool,
    pub response_ms: u64,
    pub status: Status,
    pub output: String,
}

/// A check's probes over a window (`GET /api/v1/checks/{id}/stats`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct ProbeStats {
    /// The window, as durations are written: `"1h"`, `"15m"`.
    pub window: String,
    /// Probes that started within the window.
    pub probes: u64,
    /// Share of those probes whose status was passing or warning; `None`
    /// when there were none.
    pub uptime_ratio: Option<f64>,
    pub response_ms: Percentiles,
}

/// Nearest-rank percentiles; `None` when there is nothing to rank.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Percentiles {
    pub p50: Option<u64>,
    pub p95: Option<u64>,
    pub p99: Option<u64>,
}

/// The probe history of every check. `Send + Sync`; share it as
/// `Arc<ProbeHistory>`.
pub struct ProbeHistory {
    /// Probes kept per check, at least 1 so `last` answers for every
    /// probed check.
    retain: usize,
    /// Checks come and go rarely while probes land all the time, so the map
    /// is write-locked only to add or forget a check; recording takes its
    /// read lock and that one check's mutex, never contending with probes of
    /// other checks. No lock here is ever held across an `.await` (there are
    /// none in this module) or during file I/O.
    checks: RwLock<HashMap<Box<str>, Mutex<Series>>>,
}

/// One check's retained probes, oldest first.
struct Series {
    /// The id the next probe gets. Ids are consecutive and only the oldest
    /// are dropped, so the stored probes hold the `slots.len()` ids before it.
    next_id: u64,
    slots: VecDeque<Slot>,
}

/// One stored probe: 24 bytes (a unit test holds this). Everything
/// [`ProbeRecord`] has, but the id (its position) and the check id (the map
/// key).
#[derive(Clone)]
struct Slot {
    /// `requested_at` as Unix milliseconds.
    at_ms: i64,
    /// Output and timeout, the same allocation as the previous probe's
    /// while they do not change.
    shared: Arc<Shared>,
    /// Saturates at ~49 days: a probe lasts at most its timeout, and no real
    /// check waits that long; the four bytes saved are 40 MB at full load.
    response_ms: u32,
    /// Meaningful only with [`HAS_CODE`] set.
    status_code: u16,
    status: Status,
    /// [`IS_UP`] | [`IS_RESPONSIVE`] | [`HAS_CODE`].
    flags: u8,
}

const IS_UP: u8 = 1;
const IS_RESPONSIVE: u8 = 2;
const HAS_CODE: u8 = 4;

fn flags(is_up: bool, is_responsive: bool, has_code: bool) -> u8 {
    let mut flags = 0;
    if is_up {
        flags |= IS_UP;
    }
    if is_responsive {
        flags |= IS_RESPONSIVE;
    }
    if has_code {
        flags |= HAS_CODE;
    }
    flags
}

/// The part of a probe that repeats: one thin pointer in each [`Slot`]
/// instead of a copy of the output per probe.
#[derive(Debug, PartialEq)]
struct Shared {
    timeout_ms: u64,
    output: Box<str>,
}

impl Slot {
    fn to_record(&self, id: u64, check_id: &str) -> ProbeRecord {
        ProbeRecord {
            id,
            check_id: check_id.to_owned(),
            requested_at: from_unix_ms(self.at_ms),
            timeout_ms: self.shared.timeout_ms,
            status_code: (self.flags & HAS_CODE != 0).then_some(self.status_code),
            is_up: self.flags & IS_UP != 0,
            is_responsive: self.flags & IS_RESPONSIVE != 0,
            response_ms: u64::from(self.response_ms),
            status: self.status,
            output: self.shared.output.to_string(),
        }
    }
}

impl Series {
    fn new(next_id: u64) -> Series {
        Series {
            next_id,
            slots: VecDeque::new(),
        }
    }

    /// Appends a probe, drops the oldest beyond `retain`, returns the new
    /// probe's id.
    fn push(&mut self, retain: usize, slot: Slot) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.slots.push_back(slot);
        while self.slots.len() > retain {
            self.slots.pop_front();
        }
        id
    }

    /// The shared part for a probe with this timeout and output: the previous
    /// probe's when it is the same, so a steady check stores its output once.
    fn shared_for(&self, timeout_ms: u64, output: &str) -> Arc<Shared> {
        match self.slots.back() {
            Some(prev)
                if prev.shared.timeout_ms == timeout_ms && *prev.shared.output == *output =>
            {
                Arc::clone(&prev.shared)
            }
            _ => Arc::new(Shared {
                timeout_ms,
                output: output.into(),
            }),
        }
    }

    /// The id of the oldest stored probe.
    fn first_id(&self) -> u64 {
        self.next_id - self.slots.len() as u64
    }
}

impl ProbeHistory {
    /// An empty history keeping the newest `retain` probes of each check
    /// (at least one).
    pub fn new(retain: usize) -> ProbeHistory {
        ProbeHistory {
            retain: retain.max(1),
            checks: RwLock::new(HashMap::new()),
        }
    }

    /// Records a probe outcome of `check_id` taken at `requested_at` with
    /// `timeout`; returns the stored record (with its id). The time is kept
    /// to the millisecond, and the returned record says so.
    pub fn record(
        &self,
        check_id: &str,
        requested_at: OffsetDateTime,
        timeout: Duration,
        outcome: &ProbeOutcome,
    ) -> ProbeRecord {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let flags = flags(
            outcome.is_up,
            outcome.is_responsive,
            outcome.status_code.is_some(),
        );
        let store = |series: &mut Series| {
            let slot = Slot {
                at_ms: unix_ms(requested_at),
                shared: series.shared_for(timeout_ms, &outcome.output),
                response_ms: u32::try_from(outcome.response_ms).unwrap_or(u32::MAX),
                status_code: outcome.status_code.unwrap_or(0),
                status: outcome.status,
                flags,
            };
            let record = slot.to_record(series.next_id, check_id);
            series.push(self.retain, slot);
            record
        };
        {
            let checks = self.checks.read();
            if let Some(series) = checks.get(check_id) {
                return store(&mut series.lock());
            }
        }
        // First probe of this check: the only time recording writes the map.
        let mut checks = self.checks.write();
        let series = checks
            .entry(check_id.into())
            .or_insert_with(|| Mutex::new(Series::new(1)));
        store(series.get_mut())
    }

    /// Newest first; only probes with `requested_at >= since`; at most
    /// `limit`. An unknown check has no probes.
    pub fn list(
        &self,
        check_id: &str,
        since: Option<OffsetDateTime>,
        limit: usize,
    ) -> Vec<ProbeRecord> {
        let since_ns = since.map(OffsetDateTime::unix_timestamp_nanos);
        // Copy the matching slots (a pointer bump each) under the lock and
        // build the records after it, so a large answer never delays probes.
        let (first_id, picked): (u64, Vec<(usize, Slot)>) = {
            let checks = self.checks.read();
            let Some(series) = checks.get(check_id) else {
                return Vec::new();
            };
            let series = series.lock();
            let picked = series
                .slots
                .iter()
                .enumerate()
                .rev()
                // Filter rather than stop at the first older probe: after a
                // clock step, times need not follow ids.
                .filter(|(_, s)| since_ns.is_none_or(|since| unix_ms_to_ns(s.at_ms) >= since))
                .take(limit)
                .map(|(i, s)| (i, s.clone()))
                .collect();
            (series.first_id(), picked)
        };
        picked
            .iter()
            .map(|(i, s)| s.to_record(first_id + *i as u64, check_id))
            .collect()
    }

    /// The newest probe of `check_id`, if it has any.
    pub fn last(&self, check_id: &str) -> Option<ProbeRecord> {
        let checks = self.checks.read();
        let series = checks.get(check_id)?.lock();
        let slot = series.slots.back()?;
        Some(slot.to_record(series.next_id - 1, check_id))
    }

    /// Probe count, uptime ratio and response-time percentiles of the probes
    /// of `check_id` that started within `window` before `now`.
    pub fn stats(&self, check_id: &str, window: Duration, now: OffsetDateTime) -> ProbeStats {
        let from_ns = now.unix_timestamp_nanos() - window.as_nanos() as i128;
        let mut times = Vec::new();
        let mut up = 0u64;
        if let Some(series) = self.checks.read().get(check_id) {
            for slot in series.lock().slots.iter() {
                if unix_ms_to_ns(slot.at_ms) >= from_ns {
                    times.push(u64::from(slot.response_ms));
                    if slot.status.is_healthy(false) {
                        up += 1;
                    }
                }
            }
        }
        times.sort_unstable();
        let probes = times.len() as u64;
        ProbeStats {
            window: Millis(u64::try_from(window.as_millis()).unwrap_or(u64::MAX)).to_string(),
            probes,
            uptime_ratio: (probes > 0).then(|| up as f64 / probes as f64),
            response_ms: Percentiles {
                p50: nearest_rank(&times, 50),
                p95: nearest_rank(&times, 95),
                p99: nearest_rank(&times, 99),
            },
        }
    }

    /// Forgets a removed check. A check later added under the same id starts
    /// again from probe id 1.
    pub fn remove(&self, check_id: &str) {
        self.checks.write().remove(check_id);
    }

    /// Writes everything to `path` atomically: to `<path>.tmp`, fsynced, then
    /// renamed over `path`, so a crash leaves the old file or the new one.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let tmp = tmp_path(path)?;
        let written = self
            .write_file(&tmp)
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io::Error::new(
                e.kind(),
                format!("cannot save probe history to {}: {e}", path.display()),
            ));
        }
        // Make the rename itself durable. Best effort: some filesystems
        // refuse to fsync a directory, and the data is already in place.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }

    fn write_file(&self, tmp: &Path) -> io::Result<()> {
        let mut out = BufWriter::new(File::create(tmp)?);
        serde_json::to_writer(
            &mut out,
            &Header {
                format: FORMAT.into(),
                version: VERSION,
            },
        )?;
        out.write_all(b"\n")?;
        // Take the ids first, then each check's slots under its own lock, and
        // write with no lock held: probing goes on during a save.
        let ids: Vec<Box<str>> = self.checks.read().keys().cloned().collect();
        for id in ids {
            let (next_id, slots) = {
                let checks = self.checks.read();
                let Some(series) = checks.get(&id) else {
                    continue; // removed meanwhile
                };
                let series = series.lock();
                (series.next_id, series.slots.clone())
            };
            let mut prev: Option<&Slot> = None;
            let probes = slots
                .iter()
                .map(|s| {
                    let (prev_ms, repeated) =
                        prev.map_or((0, false), |p| (p.at_ms, *p.shared == *s.shared));
                    prev = Some(s);
                    FileProbe(
                        s.at_ms - prev_ms,
                        (s.flags & HAS_CODE != 0).then_some(s.status_code),
                        s.flags & (IS_UP | IS_RESPONSIVE),
                        s.response_ms,
                        s.status,
                        (!repeated).then(|| (s.shared.timeout_ms, s.shared.output.to_string())),
                    )
                })
                .collect();
            let line = FileCheck {
                check: id.to_string(),
                next_id,
                probes,
            };
            serde_json::to_writer(&mut out, &line)?;
            out.write_all(b"\n")?;
        }
        out.into_inner()
            .map_err(io::IntoInnerError::into_error)?
            .sync_all()
    }

    /// Reads a file written by [`save`](Self::save), keeping the newest
    /// `retain` probes of each check. A missing file is an empty history; a
    /// file of an unknown format version is an error naming the version.
    pub fn load(path: &Path, retain: usize) -> io::Result<ProbeHistory> {
        let history = ProbeHistory::new(retain);
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(history),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot read probe history {}: {e}", path.display()),
                ));
            }
        };
        let bad = |line: usize, why: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("probe history {} line {line}: {why}", path.display()),
            )
        };
        let mut lines = BufReader::new(file).lines();
        let header = lines.next().transpose()?.ok_or_else(|| {
            bad(
                1,
                "the file is empty; delete it to start with no history".into(),
            )
        })?;
        let header: Header = serde_json::from_str(&header)
            .map_err(|e| bad(1, format!("not a probe history header: {e}")))?;
        if header.format != FORMAT {
            return Err(bad(
                1,
                format!("format {:?} is not {FORMAT:?}", header.format),
            ));
        }
        if header.version != VERSION {
            return Err(bad(
                1,
                format!(
                    "format version {} is not supported (this muster reads version {VERSION}); \
                     start with the muster that wrote it, or delete the file to lose the history",
                    header.version
                ),
            ));
        }
        let mut checks = HashMap::new();
        for (n, line) in lines.enumerate() {
            let n = n + 2;
            let line = line?;
            let file: FileCheck = serde_json::from_str(&line).map_err(|e| bad(n, e.to_string()))?;
            let id: Box<str> = file.check.as_str().into();
            let series = file
                .into_series(history.retain)
                .map_err(|why| bad(n, why))?;
            if checks.insert(id, Mutex::new(series)).is_some() {
                return Err(bad(n, "a check appears twice".into()));
            }
        }
        *history.checks.write() = checks;
        Ok(history)
    }
}

impl std::fmt::Debug for ProbeHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeHistory")
            .field("retain", &self.retain)
            .field("checks", &self.checks.read().len())
            .finish()
    }
}

/// The first line of a history file.
#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
}

/// One line of a history file: a check and its probes, oldest first. The
/// probes' ids are the `probes.len()` ids before `next_id`.
#[derive(Serialize, Deserialize)]
struct FileCheck {
    check: String,
    next_id: u64,
    probes: Vec<FileProbe>,
}

/// A probe as an array, to keep the file small (about 30 bytes a probe):
/// `[ms, status_code|null, up, response_ms, status, [timeout_ms, output]|null]`
/// where `ms` is `requested_at` in Unix milliseconds minus the previous
/// probe's (the first probe's is from 0), `up` is 1 for is_up plus 2 for
/// is_responsive, and a null last column means the previous probe's timeout
/// and output again.
#[derive(Serialize, Deserialize)]
struct FileProbe(i64, Option<u16>, u8, u32, Status, Option<(u64, String)>);

impl FileCheck {
    fn into_series(self, retain: usize) -> Result<Series, String> {
        let count = self.probes.len() as u64;
        if self.next_id <= count {
            return Err(format!(
                "next_id {} leaves no room for {count} probes numbered from 1",
                self.next_id
            ));
        }
        // Skip the probes `retain` drops, but still read them: a kept probe's
        // time and output are written relative to the one before.
        let skip = self.probes.len().saturating_sub(retain);
        let mut series = Series::new(self.next_id - count);
        let mut at_ms = 0i64;
        let mut prev: Option<Arc<Shared>> = None;
        for (i, FileProbe(delta_ms, code, up, response_ms, status, shared)) in
            self.probes.into_iter().enumerate()
        {
            at_ms = at_ms
                .checked_add(delta_ms)
                .filter(|&ms| OffsetDateTime::from_unix_timestamp_nanos(unix_ms_to_ns(ms)).is_ok())
                .ok_or_else(|| format!("probe {i}: time is out of range"))?;
            if up & !(IS_UP | IS_RESPONSIVE) != 0 {
                return Err(format!("probe {i}: unknown flags {up}"));
            }
            let shared = match (shared, prev) {
                (Some((timeout_ms, output)), _) => Arc::new(Shared {
                    timeout_ms,
                    output: output.into(),
                }),
                (None, Some(p)) => p,
                (None, None) => return Err("the first probe has no output".into()),
            };
            prev = Some(Arc::clone(&shared));
            let slot = Slot {
                at_ms,
                shared,
                response_ms,
                status_code: code.unwrap_or(0),
                status,
                flags: up | if code.is_some() { HAS_CODE } else { 0 },
            };
            if i < skip {
                series.next_id += 1;
            } else {
                series.push(retain, slot);
            }
        }
        Ok(series)
    }
}

/// `<path>.tmp`, beside `path` so the rename stays on one filesystem.
fn tmp_path(path: &Path) -> io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("probe history path {} names no file", path.display()),
        )
    })?;
    let mut tmp = name.to_os_string();
    tmp.push(".tmp");
    Ok(path.with_file_name(tmp))
}

/// Unix milliseconds, rounded down. Every `OffsetDateTime` fits: its years
/// stay within ±999,999, far inside i64 milliseconds.
pub(crate) fn unix_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000)).unwrap_or(i64::MAX)
}

fn unix_ms_to_ns(ms: i64) -> i128 {
    i128::from(ms) * 1_000_000
}

/// Times come from [`unix_ms`] or from a file whose times `load` checked, so
/// the fallback is never taken.
fn from_unix_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(unix_ms_to_ns(ms))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The nearest-rank `p`th percentile of `sorted`: the smallest value with at
/// least p% of the values at or below it.
fn nearest_rank(sorted: &[u64], p: usize) -> Option<u64> {
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2024-05-01 12:00:00 UTC);
    const TIMEOUT: Duration = Duration::from_secs(2);

    fn outcome(status: Status, response_ms: u64, output: &str) -> ProbeOutcome {
        ProbeOutcome {
            status,
            status_code: (status != Status::Critical).then_some(200),
            is_up: status != Status::Critical,
            is_responsive: status != Status::Critical,
            response_ms,
            output: output.into(),
        }
    }

    fn passing(output: &str) -> ProbeOutcome {
        outcome(Status::Passing, 3, output)
    }

    fn secs(s: i64) -> OffsetDateTime {
        T0 + time::Duration::seconds(s)
    }

    /// Records `n` passing probes of `check`, one a second from `T0`.
    fn fill(h: &ProbeHistory, check: &str, n: i64) {
        for i in 0..n {
            h.record(check, secs(i), TIMEOUT, &passing("HTTP 200 OK"));
        }
    }

    fn ids(records: &[ProbeRecord]) -> Vec<u64> {
        records.iter().map(|r| r.id).collect()
    }

    fn shared_of(h: &ProbeHistory, check: &str) -> Vec<Arc<Shared>> {
        let checks = h.checks.read();
        let series = checks[check].lock();
        series.slots.iter().map(|s| Arc::clone(&s.shared)).collect()
    }

    #[test]
    fn one_history_serves_every_task() {
        fn shareable<T: Send + Sync>() {}
        shareable::<ProbeHistory>();
    }

    #[test]
    fn a_slot_stays_24_bytes() {
        // 10,000 checks × 1,000 probes × 24 bytes = 240 MB: the budget.
        assert_eq!(std::mem::size_of::<Slot>(), 24);
    }

    #[test]
    fn record_returns_what_is_stored() {
        let h = ProbeHistory::new(10);
        let at = T0 + time::Duration::microseconds(1_500);
        let rec = h.record(
            "c1",
            at,
            Duration::from_millis(2500),
            &ProbeOutcome {
                status: Status::Warning,
                status_code: Some(429),
                is_up: true,
                is_responsive: false,
                response_ms: 34,
                output: "HTTP 429".into(),
            },
        );
        let expect = ProbeRecord {
            id: 1,
            check_id: "c1".into(),
            // Kept to the millisecond.
            requested_at: T0 + time::Duration::milliseconds(1),
            timeout_ms: 2500,
            status_code: Some(429),
            is_up: true,
            is_responsive: false,
            response_ms: 34,
            status: Status::Warning,
            output: "HTTP 429".into(),
        };
        assert_eq!(rec, expect);
        assert_eq!(h.last("c1"), Some(expect.clone()));
        assert_eq!(h.list("c1", None, 10), vec![expect]);
        let second = h.record("c1", T0, TIMEOUT, &outcome(Status::Critical, 0, "refused"));
        assert_eq!((second.id, second.status_code), (2, None));
    }

    #[test]
    fn retention_keeps_the_newest_per_check() {
        let h = ProbeHistory::new(3);
        fill(&h, "a", 5);
        fill(&h, "b", 2);
        assert_eq!(ids(&h.list("a", None, 100)), [5, 4, 3]);
        assert_eq!(ids(&h.list("b", None, 100)), [2, 1]);
        assert_eq!(h.last("a").map(|r| r.id), Some(5));
        assert_eq!(h.record("a", secs(9), TIMEOUT, &passing("x")).id, 6);
        assert_eq!(ids(&h.list("a", None, 100)), [6, 5, 4]);
    }

    #[test]
    fn list_is_newest_first_with_since_and_limit() {
        let h = ProbeHistory::new(100);
        fill(&h, "a", 10); // ids 1..=10 at T0+0s..T0+9s
        for (since, limit, expect) in [
            (None, 100, vec![10, 9, 8, 7, 6, 5, 4, 3, 2, 1]),
            (None, 3, vec![10, 9, 8]),
            (None, 0, vec![]),
            (Some(secs(7)), 100, vec![10, 9, 8]),
            (Some(secs(2)), 2, vec![10, 9]),
            (Some(secs(10)), 100, vec![]),
            (Some(secs(-5)), 100, vec![10, 9, 8, 7, 6, 5, 4, 3, 2, 1]),
        ] {
            assert_eq!(
                ids(&h.list("a", since, limit)),
                expect,
                "since {since:?} limit {limit}"
            );
        }
        assert!(h.list("unknown", None, 10).is_empty());
        assert_eq!(h.last("unknown"), None);
    }

    #[test]
    fn repeated_output_is_stored_once() {
        let h = ProbeHistory::new(10);
        h.record("a", secs(0), TIMEOUT, &passing("HTTP 200 OK"));
        h.record("a", secs(1), TIMEOUT, &passing("HTTP 200 OK"));
        h.record("a", secs(2), TIMEOUT, &passing("HTTP 503"));
        h.record("a", secs(3), Duration::from_secs(1), &passing("HTTP 503"));
        let s = shared_of(&h, "a");
        assert!(Arc::ptr_eq(&s[0], &s[1]), "same output, same timeout");
        assert!(!Arc::ptr_eq(&s[1], &s[2]), "output changed");
        assert!(!Arc::ptr_eq(&s[2], &s[3]), "timeout changed");
        assert_eq!(h.list("a", None, 10)[3].output, "HTTP 200 OK");
    }

    #[test]
    fn stats_over_a_window() {
        let h = ProbeHistory::new(100);
        // Outside the window: must not count.
        h.record(
            "a",
            secs(-3600),
            TIMEOUT,
            &outcome(Status::Critical, 9999, "old"),
        );
        // In the window: response times 1..=20 shuffled, 16 up of 20.
        let times = [
            7, 3, 20, 1, 15, 9, 12, 2, 18, 5, 4, 19, 6, 11, 8, 17, 10, 14, 16, 13,
        ];
        for (i, ms) in times.into_iter().enumerate() {
            let status = match i {
                0..=13 => Status::Passing,
                14 | 15 => Status::Warning,
                _ => Status::Critical,
            };
            h.record("a", secs(i as i64), TIMEOUT, &outcome(status, ms, "x"));
        }
        let now = secs(30);
        assert_eq!(
            h.stats("a", Duration::from_secs(600), now),
            ProbeStats {
                window: "10m".into(),
                probes: 20,
                uptime_ratio: Some(0.8),
                response_ms: Percentiles {
                    p50: Some(10),
                    p95: Some(19),
                    p99: Some(20),
                },
            }
        );
        let all = h.stats("a", Duration::from_secs(7200), now);
        assert_eq!((all.window.as_str(), all.probes), ("2h", 21));
        assert_eq!(all.response_ms.p99, Some(9999));
        assert_eq!(
            h.stats("none", Duration::from_secs(3600), now),
            ProbeStats {
                window: "1h".into(),
                probes: 0,
                uptime_ratio: None,
                response_ms: Percentiles {
                    p50: None,
                    p95: None,
                    p99: None
                },
            }
        );
    }

    #[test]
    fn nearest_rank_percentiles() {
        for (values, p, expect) in [
            (&[][..], 50, None),
            (&[5][..], 50, Some(5)),
            (&[5][..], 99, Some(5)),
            (&[1, 2][..], 50, Some(1)),
            (&[1, 2][..], 51, Some(2)),
            (&[1, 2, 3, 4][..], 95, Some(4)),
            (&[1, 2, 3, 4][..], 0, Some(1)),
        ] {
            assert_eq!(nearest_rank(values, p), expect, "p{p} of {values:?}");
        }
    }

    #[test]
    fn remove_forgets_a_check() {
        let h = ProbeHistory::new(10);
        fill(&h, "a", 3);
        h.remove("a");
        assert!(h.list("a", None, 10).is_empty());
        assert_eq!(h.record("a", secs(0), TIMEOUT, &passing("x")).id, 1);
    }

    #[test]
    fn save_then_load_gives_the_same_history() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("probes.json");
        let h = ProbeHistory::new(4);
        fill(&h, "a", 6);
        h.record(
            "a",
            secs(7),
            Duration::from_secs(1),
            &passing("HTTP 200 OK"),
        );
        h.record(
            "b",
            secs(0),
            TIMEOUT,
            &outcome(Status::Critical, 0, "refused, \"quoted\"\n"),
        );
        h.record(
            "b",
            secs(1),
            TIMEOUT,
            &outcome(Status::Warning, 40, "HTTP 429"),
        );
        h.save(&path).unwrap();
        assert!(!dir.path().join("probes.json.tmp").exists());

        let back = ProbeHistory::load(&path, 4).unwrap();
        for check in ["a", "b"] {
            assert_eq!(
                back.list(check, None, 100),
                h.list(check, None, 100),
                "{check}"
            );
        }
        assert_eq!(ids(&back.list("a", None, 100)), [7, 6, 5, 4]);
        // Sharing survives the round trip, and ids go on where they were.
        let s = shared_of(&back, "a");
        assert!(Arc::ptr_eq(&s[0], &s[1]) && Arc::ptr_eq(&s[1], &s[2]));
        assert!(!Arc::ptr_eq(&s[2], &s[3]), "timeout changed");
        assert_eq!(back.record("a", secs(8), TIMEOUT, &passing("y")).id, 8);

        // A smaller retention keeps the newest.
        let fewer = ProbeHistory::load(&path, 2).unwrap();
        assert_eq!(ids(&fewer.list("a", None, 100)), [7, 6]);
        assert_eq!(fewer.list("a", None, 100), h.list("a", None, 2));
    }

    #[test]
    fn the_file_format_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("probes.json");
        let h = ProbeHistory::new(10);
        h.record("web-1", secs(0), TIMEOUT, &passing("ok"));
        h.record("web-1", secs(1), TIMEOUT, &passing("ok"));
        h.record(
            "web-1",
            secs(2),
            TIMEOUT,
            &outcome(Status::Critical, 0, "down"),
        );
        h.save(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            concat!(
                r#"{"format":"muster-probe-history","version":1}"#,
                "\n",
                r#"{"check":"web-1","next_id":4,"probes":["#,
                r#"[1714564800000,200,3,3,"passing",[2000,"ok"]],"#,
                r#"[1000,200,3,3,"passing",null],"#,
                r#"[1000,null,0,0,"critical",[2000,"down"]]]}"#,
                "\n"
            )
        );
    }

    #[test]
    fn an_unknown_version_is_refused_by_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("probes.json");
        std::fs::write(
            &path,
            "{\"format\":\"muster-probe-history\",\"version\":99}\n",
        )
        .unwrap();
        let err = ProbeHistory::load(&path, 10).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("format version 99"), "{err}");
    }

    #[test]
    fn damaged_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("probes.json");
        let header = "{\"format\":\"muster-probe-history\",\"version\":1}\n";
        let check = |next_id: u64, output: &str| {
            format!(
                "{header}{{\"check\":\"a\",\"next_id\":{next_id},\
                 \"probes\":[[0,null,3,1,\"passing\",{output}]]}}\n"
            )
        };
        for (content, expect) in [
            (String::new(), "empty"),
            ("{\"format\":\"other\",\"version\":1}\n".into(), "\"other\""),
            ("not json\n".into(), "line 1"),
            (format!("{header}{{\"check\":\"a\"}}\n"), "line 2"),
            (check(1, "[1,\"x\"]"), "next_id"),
            (check(2, "null"), "no output"),
            (check(2, "[1,\"x\"]").replace(",3,", ",9,"), "unknown flags"),
            (
                check(2, "[1,\"x\"]").replace("[[0,", "[[9999999999999999,"),
                "out of range",
            ),
            (
                check(2, "[1,\"x\"]") + check(2, "[1,\"y\"]").trim_start_matches(header),
                "twice",
            ),
        ] {
            std::fs::write(&path, &content).unwrap();
            let err = ProbeHistory::load(&path, 10).unwrap_err();
            assert!(err.to_string().contains(expect), "{content:?}: {err}");
        }
    }

    #[test]
    fn a_missing_file_is_an_empty_history() {
        let dir = tempfile::tempdir().unwrap();
        let h = ProbeHistory::load(&dir.path().join("absent.json"), 10).unwrap();
        assert!(h.checks.read().is_empty());
    }
}
