//! Optional export of every probe to InfluxDB 1.x, in line protocol, to its
//! `/write?db=…&precision=ms` endpoint.
//!
//! Probing must never wait for InfluxDB. [`InfluxExporter::export`] formats
//! the point and hands it to a bounded queue without blocking or awaiting;
//! when the queue is full the point is dropped and counted. One background
//! sender takes points off the queue in batches and posts them, retrying a
//! batch with exponential backoff while InfluxDB is unreachable or answers
//! 5xx, and dropping it (logged, counted) when InfluxDB refuses it with a
//! 4xx, which no retry would change. While it retries, new points wait in the
//! queue, so memory stays bounded by `buffer + batch` points.
//!
//! A point sent twice (a retry after an answer that was lost) is harmless:
//! InfluxDB keeps one point per series and timestamp.

use crate::history::{ProbeRecord, unix_ms};
use crate::probe::error_chain;
use bytes::Bytes;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, sleep_until, timeout_at};
use tokio_util::sync::CancellationToken;

/// Points per request unless configured otherwise.
pub const DEFAULT_BATCH: usize = 500;
/// How long a batch waits to fill up before it is sent anyway.
pub const DEFAULT_FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Points queued at most; beyond this they are dropped.
pub const DEFAULT_BUFFER: usize = 100_000;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// What shutdown grants the last flush.
const LAST_FLUSH: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A write of one batch takes milliseconds; a request still open after this
/// is as good as failed, and is retried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of a refusal's body goes into the log.
const BODY_LOG_LIMIT: usize = 300;

/// Where and how to export.
#[derive(Debug, Clone)]
pub struct InfluxConfig {
    /// The server's base URL, e.g. `http://127.0.0.1:8086`.
    pub url: String,
    /// The database written to; it must exist (muster does not create it).
    pub db: String,
    /// Points per request.
    pub batch: usize,
    /// How long a batch waits to fill up before it is sent anyway.
    pub flush_every: Duration,
    /// Points queued at most.
    pub buffer: usize,
}

impl InfluxConfig {
    /// Exports to database `db` of the server at `url`, with default batch,
    /// flush interval and buffer.
    pub fn new(url: impl Into<String>, db: impl Into<String>) -> InfluxConfig {
        InfluxConfig {
            url: url.into(),
            db: db.into(),
            batch: DEFAULT_BATCH,
            flush_every: DEFAULT_FLUSH_EVERY,
            buffer: DEFAULT_BUFFER,
        }
    }

    /// The write endpoint, `{url}/write?db={db}&precision=ms`. Configuration
    /// validation calls this so a bad URL is reported at startup.
    pub fn write_url(&self) -> Result<url::Url, String> {
        let mut url = url::Url::parse(&self.url)
            .map_err(|e| format!("InfluxDB url {:?} is not a URL: {e}", self.url))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(format!(
                "InfluxDB url {:?} must be http:// or https:// with a host, e.g. http://127.0.0.1:8086",
                self.url
            ));
        }
        if self.db.is_empty() {
            return Err("the InfluxDB database name must not be empty".into());
        }
        // Keep a path prefix (InfluxDB behind a reverse proxy) and add to it.
        let path = format!("{}/write", url.path().trim_end_matches('/'));
        url.set_path(&path);
        url.query_pairs_mut()
            .clear()
            .append_pair("db", &self.db)
            .append_pair("precision", "ms");
        url.set_fragment(None);
        Ok(url)
    }
}

/// One probe to export, with the names its tags carry.
#[derive(Debug, Clone, Copy)]
pub struct ProbePoint<'a> {
    pub check: &'a str,
    pub service: &'a str,
    pub instance: &'a str,
    pub record: &'a ProbeRecord,
}

/// What the exporter has done so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExportStats {
    /// Points InfluxDB accepted.
    pub sent: u64,
    /// Points that will never be sent: the queue was full, InfluxDB refused
    /// their batch, or they were still unsent when the exporter stopped.
    pub dropped: u64,
    /// Batches InfluxDB refused (4xx); their points count in `dropped`.
    pub failed_batches: u64,
    /// Points waiting: in the queue or in the batch being sent.
    pub queued: usize,
}

/// Exports probes to InfluxDB. Cloning is cheap and shares the queue.
#[derive(Clone)]
pub struct InfluxExporter {
    tx: mpsc::Sender<String>,
    counters: Arc<Counters>,
    /// Cancelled when the background sender has stopped.
    done: CancellationToken,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    dropped: AtomicU64,
    failed_batches: AtomicU64,
    queued: AtomicUsize,
    /// Set while points are being dropped for lack of room, so that is
    /// logged once when it starts instead of once per point.
    overflowing: AtomicBool,
}

impl Counters {
    fn delivered(&self, n: usize) {
        self.sent.fetch_add(n as u64, Relaxed);
        self.queued.fetch_sub(n, Relaxed);
    }

    fn lost(&self, n: usize) {
        self.dropped.fetch_add(n as u64, Relaxed);
        self.queued.fetch_sub(n, Relaxed);
    }
}

impl std::fmt::Debug for InfluxExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InfluxExporter")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl InfluxExporter {
    /// Starts the background sender (on the current tokio runtime); it stops
    /// when `cancel` fires, after one last flush attempt bounded to ~2 s. A
    /// configuration [`InfluxConfig::write_url`] refuses is logged, and every
    /// point is then dropped.
    pub fn start(cfg: InfluxConfig, cancel: CancellationToken) -> InfluxExporter {
        let (tx, rx) = mpsc::channel(cfg.buffer.max(1));
        let counters = Arc::new(Counters::default());
        let done = CancellationToken::new();
        let target = cfg.write_url().and_then(|url| Ok((client()?, url)));
        if let Err(error) = &target {
            tracing::error!(url = %cfg.url, %error, "InfluxDB export disabled; probes will not be exported");
        }
        let sender = Sender {
            batch: cfg.batch.max(1),
            flush_every: cfg.flush_every,
            target,
            counters: Arc::clone(&counters),
            cancel,
        };
        let stopped = done.clone().drop_guard();
        tokio::spawn(async move {
            let _stopped = stopped;
            sender.run(rx).await;
        });
        InfluxExporter { tx, counters, done }
    }

    /// Never blocks and never awaits: formats the line and queues it; when
    /// the queue is full (or the exporter has stopped) the point is dropped
    /// and counted.
    pub fn export(&self, p: ProbePoint<'_>) {
        // No room: do not even format the line.
        if self.tx.capacity() == 0 {
            self.overflow();
            return;
        }
        // Counted before it is queued so the sender, which subtracts when it
        // is done with a point, never takes the count below zero.
        self.counters.queued.fetch_add(1, Relaxed);
        if self.tx.try_send(line(&p)).is_err() {
            self.counters.queued.fetch_sub(1, Relaxed);
            self.overflow();
        }
    }

    fn overflow(&self) {
        self.counters.dropped.fetch_add(1, Relaxed);
        if !self.counters.overflowing.swap(true, Relaxed) {
            tracing::warn!(
                buffer = self.tx.max_capacity(),
                "InfluxDB export queue is full; dropping probe points until it drains"
            );
        }
    }

    pub fn stats(&self) -> ExportStats {
        let c = &self.counters;
        ExportStats {
            sent: c.sent.load(Relaxed),
            dropped: c.dropped.load(Relaxed),
            failed_batches: c.failed_batches.load(Relaxed),
            queued: c.queued.load(Relaxed),
        }
    }

    /// Resolves once the background sender has stopped, so shutdown can
    /// wait for the last flush.
    pub async fn finished(&self) {
        self.done.cancelled().await;
    }
}

/// The background half: takes batches off the queue and posts them.
struct Sender {
    batch: usize,
    flush_every: Duration,
    /// `Err` when the configuration is unusable (already logged).
    target: Result<(reqwest::Client, url::Url), String>,
    counters: Arc<Counters>,
    cancel: CancellationToken,
}

/// How one request went.
enum Post {
    Accepted,
    /// Worth trying again: no connection, a timeout, a 5xx or a 429.
    Retry(String),
    /// InfluxDB will never take this batch (a 4xx: unknown database, bad
    /// point, no permission).
    Refused(String),
}

impl Sender {
    async fn run(self, mut rx: mpsc::Receiver<String>) {
        let mut batch = Vec::with_capacity(self.batch);
        while self.fill(&mut rx, &mut batch).await && self.deliver(&batch).await {
            batch.clear();
        }
        self.last_flush(batch, rx).await;
    }

    /// Gathers the next batch: waits for a first point, then for more until
    /// the batch is full or `flush_every` has passed. False on shutdown, with
    /// what was gathered left in `batch`.
    async fn fill(&self, rx: &mut mpsc::Receiver<String>, batch: &mut Vec<String>) -> bool {
        // `recv_many` is cancel-safe: a point is never lost to a select.
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => return false,
            n = rx.recv_many(batch, self.batch) => if n == 0 { return false },
        }
        let now = Instant::now();
        let deadline = now
            .checked_add(self.flush_every)
            .unwrap_or(now + MAX_BACKOFF);
        while batch.len() < self.batch {
            let room = self.batch - batch.len();
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return false,
                () = sleep_until(deadline) => break,
                n = rx.recv_many(batch, room) => if n == 0 { return false },
            }
        }
        true
    }

    /// Sends `lines`, retrying until they are accepted or refused. False
    /// when shutdown came first; the batch is then still unsent.
    async fn deliver(&self, lines: &[String]) -> bool {
        let n = lines.len();
        let Ok((client, url)) = &self.target else {
            self.counters.lost(n);
            return true;
        };
        let body = Bytes::from(lines.join("\n"));
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let result = tokio::select! {
                biased;
                () = self.cancel.cancelled() => return false,
                r = post(client, url, body.clone()) => r,
            };
            match result {
                Post::Accepted => {
                    self.counters.delivered(n);
                    self.counters.overflowing.store(false, Relaxed);
                    return true;
                }
                Post::Refused(error) => {
                    self.refused(url, n, &error);
                    return true;
                }
                Post::Retry(error) => {
                    tracing::warn!(
                        %url, points = n, attempt, retry_in_ms = backoff.as_millis() as u64, %error,
                        "cannot send probe points to InfluxDB; retrying"
                    );
                    tokio::select! {
                        biased;
                        () = self.cancel.cancelled() => return false,
                        () = sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn refused(&self, url: &url::Url, points: usize, error: &str) {
        tracing::warn!(%url, points, %error, "InfluxDB refused a batch of probe points; dropping it");
        self.counters.failed_batches.fetch_add(1, Relaxed);
        self.counters.lost(points);
    }

    /// On shutdown: one attempt for the batch in hand and everything queued,
    /// all within [`LAST_FLUSH`]; whatever is left then is lost.
    async fn last_flush(&self, mut batch: Vec<String>, mut rx: mpsc::Receiver<String>) {
        // From here on `export` finds the queue closed and counts a drop.
        rx.close();
        let deadline = Instant::now() + LAST_FLUSH;
        loop {
            while batch.len() < self.batch {
                match rx.try_recv() {
                    Ok(line) => batch.push(line),
                    Err(_) => break,
                }
            }
            let n = batch.len();
            if n == 0 {
                return;
            }
            let error = match &self.target {
                Err(_) => None,
                Ok((client, url)) => {
                    let body = Bytes::from(batch.join("\n"));
                    match timeout_at(deadline, post(client, url, body)).await {
                        Ok(Post::Accepted) => {
                            self.counters.delivered(n);
                            batch.clear();
                            continue;
                        }
                        Ok(Post::Refused(error)) => {
                            self.refused(url, n, &error);
                            batch.clear();
                            continue;
                        }
                        Ok(Post::Retry(error)) => Some(error),
                        Err(_) => Some(format!("no answer within {} s", LAST_FLUSH.as_secs())),
                    }
                }
            };
            // No point trying the rest: count it all as lost and stop.
            let mut rest = 0;
            while rx.try_recv().is_ok() {
                rest += 1;
            }
            self.counters.lost(n + rest);
            if let Some(error) = error {
                tracing::warn!(points = n + rest, %error, "InfluxDB export stopped with probe points unsent");
            }
            return;
        }
    }
}

fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        // The URL is the operator's choice; an ambient HTTP_PROXY meant for
        // other tools must not reroute it.
        .no_proxy()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| error_chain(&e))
}

async fn post(client: &reqwest::Client, url: &url::Url, body: Bytes) -> Post {
    let resp = match client.post(url.clone()).body(body).send().await {
        Ok(resp) => resp,
        Err(e) => return Post::Retry(error_chain(&e)),
    };
    let status = resp.status();
    if status.is_success() {
        return Post::Accepted;
    }
    let mut text = resp.text().await.unwrap_or_default();
    if text.len() > BODY_LOG_LIMIT {
        let mut end = BODY_LOG_LIMIT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    let error = format!("HTTP {status}: {}", text.trim());
    // 429 is InfluxDB (or a proxy) asking to slow down, not refusing the points.
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        Post::Retry(error)
    } else {
        Post::Refused(error)
    }
}

/// The point in line protocol:
/// `probe,check=…,service=…,instance=… up=1i,responsive=1i,response_ms=34i,status_code=200i,status="passing" <ms>`.
fn line(p: &ProbePoint<'_>) -> String {
    let r = p.record;
    let mut s = String::with_capacity(160);
    s.push_str("probe");
    for (key, value) in [
        ("check", p.check),
        ("service", p.service),
        ("instance", p.instance),
    ] {
        // An empty tag value is a syntax error that would sink the whole
        // batch; a missing tag reads the same in InfluxQL.
        if !value.is_empty() {
            s.push(',');
            s.push_str(key);
            s.push('=');
            escape_tag(&mut s, value);
        }
    }
    // Writing to a String cannot fail.
    let _ = write!(
        s,
        " up={}i,responsive={}i,response_ms={}i",
        u8::from(r.is_up),
        u8::from(r.is_responsive),
        // InfluxDB integers are i64.
        r.response_ms.min(i64::MAX as u64),
    );
    if let Some(code) = r.status_code {
        let _ = write!(s, ",status_code={code}i");
    }
    s.push_str(",status=\"");
    for c in r.status.as_str().chars() {
        if matches!(c, '"' | '\\') {
            s.push('\\');
        }
        s.push(c);
    }
    let _ = write!(s, "\" {}", unix_ms(r.requested_at));
    s
}

/// Escapes a tag value: commas, spaces and equals signs take a backslash.
/// A line break cannot be escaped and would end the line, so it becomes an
/// escaped space (names are validated and never hold one anyway).
fn escape_tag(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            ',' | ' ' | '=' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push_str("\\ "),
            _ => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_core::Status;
    use time::macros::datetime;

    fn record(status_code: Option<u16>, status: Status) -> ProbeRecord {
        ProbeRecord {
            id: 1,
            check_id: "c".into(),
            requested_at: datetime!(2024-05-01 12:00:00.123 UTC),
            timeout_ms: 2000,
            status_code,
            is_up: status_code.is_some(),
            is_responsive: status_code.is_some(),
            response_ms: 34,
            status,
            output: "ignored".into(),
        }
    }

    fn check(check: &str, service: &str, instance: &str, r: &ProbeRecord, expect: &str) {
        let p = ProbePoint {
            check,
            service,
            instance,
            record: r,
        };
        assert_eq!(line(&p), expect);
    }

    #[test]
    fn lines_in_line_protocol() {
        check(
            "web:10.0.0.5:80:0",
            "web",
            "10.0.0.5:80",
            &record(Some(200), Status::Passing),
            "probe,check=web:10.0.0.5:80:0,service=web,instance=10.0.0.5:80 \
             up=1i,responsive=1i,response_ms=34i,status_code=200i,status=\"passing\" 1714564800123",
        );
        check(
            "c",
            "s",
            "i",
            &record(None, Status::Critical),
            "probe,check=c,service=s,instance=i \
             up=0i,responsive=0i,response_ms=34i,status=\"critical\" 1714564800123",
        );
    }

    #[test]
    fn tag_values_are_escaped() {
        check(
            "a,b c=d",
            "",
            "x\ny",
            &record(None, Status::Warning),
            "probe,check=a\\,b\\ c\\=d,instance=x\\ y \
             up=0i,responsive=0i,response_ms=34i,status=\"warning\" 1714564800123",
        );
    }

    #[test]
    fn write_url() {
        for (url, expect) in [
            (
                "http://127.0.0.1:8086",
                Ok("http://127.0.0.1:8086/write?db=mu+ster&precision=ms"),
            ),
            (
                "https://influx.example/",
                Ok("https://influx.example/write?db=mu+ster&precision=ms"),
            ),
            (
                "http://proxy/influx/?x=1",
                Ok("http://proxy/influx/write?db=mu+ster&precision=ms"),
            ),
            ("localhost:8086", Err("http:// or https://")),
            ("not a url", Err("is not a URL")),
        ] {
            let got = InfluxConfig::new(url, "mu ster")
                .write_url()
                .map(String::from);
            match (got, expect) {
                (Ok(got), Ok(expect)) => assert_eq!(got, expect),
                (Err(got), Err(expect)) => assert!(got.contains(expect), "{url}: {got}"),
                (got, expect) => panic!("{url}: got {got:?}, expected {expect:?}"),
            }
        }
        assert!(InfluxConfig::new("http://h", "").write_url().is_err());
    }
}
