//! Per-client limits: a request rate (token bucket, 429 with Retry-After)
//! and caps on long-lived streams (feed watchers, sessions). A client is
//! its token when it presents one, else its address; loopback clients are
//! exempt unless `[limits] limit_loopback = true` (a sidecar or the
//! operator on the same host — but note that behind a reverse proxy on the
//! same host every client looks like loopback).

use crate::acl::Caller;
use crate::problem::Problem;
use axum::http::StatusCode;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// `[limits]` settings for clients.
#[derive(Debug, Clone)]
pub struct ClientLimitSettings {
    /// Requests per second per client; 0 turns the rate limit off.
    pub rate: u32,
    /// Requests a client may send at once before the rate applies.
    pub burst: u32,
    pub watchers_per_client: usize,
    pub sessions_per_client: usize,
    pub limit_loopback: bool,
}

impl Default for ClientLimitSettings {
    fn default() -> Self {
        ClientLimitSettings {
            rate: 1000,
            burst: 2000,
            watchers_per_client: 1000,
            sessions_per_client: 1000,
            limit_loopback: false,
        }
    }
}

/// Who a limit is counted against.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub enum ClientKey {
    Token(Arc<str>),
    Addr(IpAddr),
}

/// The stream kinds with a per-client cap.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Stream {
    Watcher,
    Session,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets idle this long are full again and can be forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(60);
/// Past this many buckets, idle ones are swept on the next insert.
const SWEEP_ABOVE: usize = 10_000;

pub struct ClientLimits {
    settings: ClientLimitSettings,
    buckets: Mutex<HashMap<ClientKey, Bucket>>,
    open: Mutex<HashMap<(ClientKey, Stream), usize>>,
}

impl ClientLimits {
    pub fn new(settings: ClientLimitSettings) -> Arc<ClientLimits> {
        Arc::new(ClientLimits {
            settings,
            buckets: Mutex::new(HashMap::new()),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// The key limits are counted against; `None`: this client is exempt.
    pub fn key(&self, caller: &Caller, peer: Option<IpAddr>) -> Option<ClientKey> {
        if let Some(ip) = peer
            && ip.is_loopback()
            && !self.settings.limit_loopback
        {
            return None;
        }
        match caller {
            Caller::Token(g) => Some(ClientKey::Token(g.name.clone())),
            _ => peer.map(ClientKey::Addr),
        }
    }

    /// Takes one request from the client's bucket, or says how long to wait.
    pub fn admit(&self, key: &ClientKey) -> Result<(), Problem> {
        let s = &self.settings;
        if s.rate == 0 {
            return Ok(());
        }
        let (rate, burst) = (f64::from(s.rate), f64::from(s.burst.max(1)));
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        if buckets.len() > SWEEP_ABOVE && !buckets.contains_key(key) {
            buckets.retain(|_, b| now.duration_since(b.at) < FORGET_AFTER);
        }
        let b = buckets.entry(key.clone()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        let wait = ((1.0 - b.tokens) / rate).max(0.001);
        Err(Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "more than {} requests per second from this client; retry after the time in Retry-After",
                s.rate
            ),
        )
        .retry_after(Duration::from_secs_f64(wait)))
    }

    /// Counts an open stream against the client's cap until the guard drops.
    pub fn open(
        self: &Arc<Self>,
        key: Option<ClientKey>,
        kind: Stream,
    ) -> Result<StreamGuard, Problem> {
        let Some(key) = key else {
            return Ok(StreamGuard(None));
        };
        let cap = match kind {
            Stream::Watcher => self.settings.watchers_per_client,
            Stream::Session => self.settings.sessions_per_client,
        };
        let mut open = self.open.lock();
        let n = open.entry((key.clone(), kind)).or_insert(0);
        if *n >= cap {
            let what = match kind {
                Stream::Watcher => "feed watchers",
                Stream::Session => "sessions",
            };
            return Err(Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                match kind {
                    Stream::Watcher => "watcher_cap",
                    Stream::Session => "session_cap",
                },
                format!(
                    "this client already has {cap} open {what}, the most allowed; close one first"
                ),
            )
            .retry_after(Duration::from_secs(1)));
        }
        *n += 1;
        Ok(StreamGuard(Some((self.clone(), key, kind))))
    }
}

/// One open stream, counted until dropped.
pub struct StreamGuard(Option<(Arc<ClientLimits>, ClientKey, Stream)>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some((limits, key, kind)) = self.0.take() {
            let mut open = limits.open.lock();
            let k = (key, kind);
            if let Some(n) = open.get_mut(&k) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    open.remove(&k);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: u32, burst: u32) -> Arc<ClientLimits> {
        ClientLimits::new(ClientLimitSettings {
            rate,
            burst,
            watchers_per_client: 2,
            sessions_per_client: 1,
            limit_loopback: false,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_refills_at_the_rate() {
        let l = limits(10, 5);
        let k = ClientKey::Addr("10.0.0.1".parse().unwrap());
        for _ in 0..5 {
            assert!(l.admit(&k).is_ok());
        }
        let refused = l.admit(&k).unwrap_err();
        assert_eq!(refused.status, 429);
        assert_eq!(refused.retry_after, Some(Duration::from_millis(100)));
        // Another client has its own bucket.
        assert!(
            l.admit(&ClientKey::Addr("10.0.0.2".parse().unwrap()))
                .is_ok()
        );
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(l.admit(&k).is_ok());
        assert!(l.admit(&k).is_err());
        tokio::time::advance(Duration::from_secs(10)).await;
        for _ in 0..5 {
            assert!(l.admit(&k).is_ok(), "refilled up to the burst, no further");
        }
        assert!(l.admit(&k).is_err());
        assert!(limits(0, 0).admit(&k).is_ok(), "rate 0 is off");
    }

    #[test]
    fn loopback_is_exempt_unless_asked_and_tokens_are_their_own_key() {
        let l = limits(10, 5);
        let anon = Caller::Anonymous { read: true };
        assert_eq!(l.key(&anon, Some("127.0.0.1".parse().unwrap())), None);
        assert_eq!(
            l.key(&anon, Some("10.1.1.1".parse().unwrap())),
            Some(ClientKey::Addr("10.1.1.1".parse().unwrap()))
        );
    }

    #[test]
    fn streams_are_capped_per_client_and_released_on_drop() {
        let l = limits(10, 5);
        let k = || Some(ClientKey::Addr("10.0.0.1".parse().unwrap()));
        let a = l.open(k(), Stream::Watcher).unwrap();
        let _b = l.open(k(), Stream::Watcher).unwrap();
        assert_eq!(
            l.open(k(), Stream::Watcher).err().unwrap().code,
            "watcher_cap"
        );
        let _s = l.open(k(), Stream::Session).unwrap();
        assert!(l.open(k(), Stream::Session).is_err());
        drop(a);
        assert!(l.open(k(), Stream::Watcher).is_ok());
        assert!(
            l.open(None, Stream::Watcher).is_ok(),
            "exempt clients are not counted"
        );
    }
}

/// Body limits per route and the time a body may take to arrive.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Every route but the snapshot restore.
    pub normal: usize,
    pub snapshot: usize,
    pub timeout: Duration,
}

impl BodyLimits {
    fn of(&self, route: Option<&str>) -> usize {
        match route {
            Some("/api/v1/snapshot") => self.snapshot,
            _ => self.normal,
        }
    }
}

/// Bounds a request body by its route's limit (413 beyond) and by the body
/// timeout (a half-sent body cannot pin a connection).
pub fn limit_body(
    limits: BodyLimits,
    route: Option<&str>,
    req: axum::extract::Request,
) -> axum::extract::Request {
    let limit = limits.of(route);
    req.map(|body| {
        axum::body::Body::new(http_body_util::Limited::new(
            tower_http::timeout::TimeoutBody::new(limits.timeout, body),
            limit,
        ))
    })
}
