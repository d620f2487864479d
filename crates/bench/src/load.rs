//! The load generator: closed-loop workers, each with its own keep-alive
//! connection (HTTP/1.1 via hyper for muster and the ceiling; etcd-client over
//! gRPC for etcd), recording latencies after a warm-up into HDR histograms.

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// When measuring starts and stops.
#[derive(Clone, Copy)]
pub struct Window {
    pub warm_until: Instant,
    pub end: Instant,
}

impl Window {
    pub fn new(warmup: Duration, measure: Duration) -> Window {
        let now = Instant::now();
        Window {
            warm_until: now + warmup,
            end: now + warmup + measure,
        }
    }
}

/// What one worker (and, merged, one run) measured.
pub struct Recorder {
    /// Latencies in microseconds.
    pub hist: Histogram<u64>,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            hist: Histogram::new_with_bounds(1, 60_000_000, 3)
                .unwrap_or_else(|_| Histogram::new(3).unwrap()),
            errors: 0,
            first_error: None,
        }
    }

    fn error(&mut self, e: String) {
        self.errors += 1;
        self.first_error.get_or_insert(e);
    }

    pub fn merge(&mut self, other: Recorder) {
        let _ = self.hist.add(&other.hist);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Counts completed operations for the progress line.
pub static PROGRESS: AtomicU64 = AtomicU64::new(0);

pub type OpFuture<'a> = Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>;

/// Runs `op` on the worker's own `state` (a connection, a client) in a
/// closed loop until the window ends; records what completes after warm-up.
pub async fn drive<S, F>(window: Window, mut state: S, mut op: F) -> Recorder
where
    F: for<'a> FnMut(&'a mut S, u64) -> OpFuture<'a>,
{
    let mut rec = Recorder::new();
    let mut seq = 0u64;
    while Instant::now() < window.end {
        let t = Instant::now();
        let r = op(&mut state, seq).await;
        seq += 1;
        PROGRESS.fetch_add(1, Ordering::Relaxed);
        if t < window.warm_until {
            if let Err(e) = r {
                rec.error(format!("{e:#}"));
            }
            continue;
        }
        match r {
            Ok(()) => {
                let _ = rec.hist.record((t.elapsed().as_micros() as u64).max(1));
            }
            Err(e) => rec.error(format!("{e:#}")),
        }
    }
    rec
}

/// A whole HTTP answer.
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

/// The answer to a request already handed to its connection.
pub type ReplyFuture = Pin<Box<dyn Future<Output = Result<Reply>> + Send + 'static>>;

/// One HTTP/1.1 keep-alive connection.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl Conn {
    pub async fn open(addr: &str) -> Result<Conn> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Conn {
            sender,
            host: addr.to_string(),
        })
    }

    /// Sends one request and reads the whole answer: (status, body).
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(u16, Bytes)> {
        let reply = self.start(method, path, body).await?.await?;
        Ok((reply.status, reply.body))
    }

    /// Like `send`, with the response's headers.
    pub async fn send_full(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Reply> {
        self.start(method, path, body).await?.await
    }

    /// Hands one request to the connection once it is ready, and returns at
    /// once: the connection's task writes it while the returned future (the
    /// whole answer) is pending. Keep the `Conn` until that future is done.
    pub async fn start(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<ReplyFuture> {
        self.sender.ready().await?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host);
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(body.unwrap_or_default()))?;
        let resp = self.sender.send_request(req);
        Ok(Box::pin(async move {
            let resp = resp.await?;
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok(Reply {
                status,
                headers,
                body,
            })
        }))
    }

    /// Like `send`, but a non-2xx status is an error.
    pub async fn ok(&mut self, method: Method, path: &str, body: Option<Bytes>) -> Result<Bytes> {
        let (status, body) = self.send(method, path, body).await?;
        if !(200..300).contains(&status) {
            bail!("HTTP {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(body)
    }
}

/// One GET on a fresh connection (readiness polling).
pub async fn get_once(addr: &str, path: &str) -> Result<(u16, Bytes)> {
    Conn::open(addr).await?.send(Method::GET, path, None).await
}

/// A request a worker sends: method, path and body for the `seq`-th request of worker `w`.
pub type MakeRequest = Arc<dyn Fn(usize, u64) -> (Method, String, Option<Bytes>) + Send + Sync>;

/// `conns` workers, each on its own connection, for one window.
pub async fn http_load(
    addr: &str,
    conns: usize,
    window: Window,
    make: MakeRequest,
) -> Result<Recorder> {
    let mut tasks = Vec::new();
    for w in 0..conns {
        let conn = Conn::open(addr).await?;
        let make = make.clone();
        tasks.push(tokio::spawn(drive(window, conn, move |conn, seq| {
            let (m, p, b) = make(w, seq);
            Box::pin(async move { conn.ok(m, &p, b).await.map(|_| ()) })
        })));
    }
    merge(tasks).await
}

/// Runs per-worker states through `drive` concurrently and merges what they measured.
pub async fn run_workers<S, F>(window: Window, states: Vec<S>, op: F) -> Result<Recorder>
where
    S: Send + 'static,
    F: for<'a> FnMut(&'a mut S, u64) -> OpFuture<'a> + Clone + Send + 'static,
{
    let tasks = states
        .into_iter()
        .map(|s| tokio::spawn(drive(window, s, op.clone())))
        .collect();
    merge(tasks).await
}

async fn merge(tasks: Vec<tokio::task::JoinHandle<Recorder>>) -> Result<Recorder> {
    let mut all = Recorder::new();
    for t in tasks {
        all.merge(t.await?);
    }
    Ok(all)
}
