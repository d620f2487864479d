//! HTTP probes: 2xx passing, 429 warning, anything else critical.
//!
//! All HTTP checks of a server share one pooled client, so a target probed
//! every few seconds keeps one keep-alive connection instead of paying a
//! handshake (and a TIME_WAIT socket) per probe. Checks with
//! `tls_skip_verify` use a second client, so a connection made without
//! verification is never handed to a check that asked for it.

use super::guard::{Guard, find_denied};
use super::{OUTPUT_LIMIT, ProbeOutcome, error_chain};
use muster_core::Status;
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url, dns, redirect};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, timeout_at};

/// Redirects followed before the redirect itself is taken as the answer.
const MAX_REDIRECTS: usize = 5;

/// Body bytes read after the status. Reading a body to its end is what
/// returns the connection to the pool; a larger body is cut off and its
/// connection dropped rather than spending the probe on it.
const BODY_READ_LIMIT: usize = 64 * 1024;

/// One HTTP check, borrowed from its `CheckKind`.
pub(crate) struct Request<'a> {
    pub url: &'a str,
    pub method: &'a str,
    pub headers: &'a BTreeMap<String, String>,
    pub tls_skip_verify: bool,
}

/// The two shared clients. Building one fails only if the TLS backend
/// cannot start; that is reported by every HTTP probe instead of making
/// `Prober::new` fallible for a condition no caller could handle.
pub(crate) struct Clients {
    verified: Result<reqwest::Client, String>,
    unverified: Result<reqwest::Client, String>,
}

impl Clients {
    pub(crate) fn new(guard: &Arc<Guard>, user_agent: &str) -> Clients {
        Clients {
            verified: build(guard, user_agent, false),
            unverified: build(guard, user_agent, true),
        }
    }

    pub(crate) async fn probe(
        &self,
        guard: &Guard,
        req: &Request<'_>,
        deadline: Instant,
        timeout: Duration,
    ) -> ProbeOutcome {
        let what = format!("HTTP {} {}", req.method, req.url);
        let client = match (&self.verified, &self.unverified, req.tls_skip_verify) {
            (Ok(c), _, false) | (_, Ok(c), true) => c,
            (Err(e), _, false) | (_, Err(e), true) => {
                return ProbeOutcome::failed(format!("{what}: HTTP client unavailable: {e}"));
            }
        };
        let request = match build_request(client, guard, req) {
            Ok(r) => r,
            Err(m) => return ProbeOutcome::failed(format!("{what}: {m}")),
        };
        let response = match timeout_at(deadline, request.send()).await {
            Err(_) => return ProbeOutcome::timed_out(&what, timeout),
            Ok(Err(e)) => return ProbeOutcome::failed(format!("{what}: {}", describe(&e))),
            Ok(Ok(r)) => r,
        };
        let code = response.status();
        let head = format!("{what}: {code}");
        match timeout_at(deadline, read_body(response)).await {
            Ok(body) => {
                let output = if body.is_empty() {
                    head
                } else {
                    format!("{head}\n{body}")
                };
                ProbeOutcome::answered(judge(code), Some(code.as_u16()), output)
            }
            // The status came in time but the body did not: it answered, yet
            // not within the timeout, which a check must treat as a failure.
            Err(_) => ProbeOutcome {
                is_responsive: false,
                ..ProbeOutcome::answered(
                    Status::Critical,
                    Some(code.as_u16()),
                    format!(
                        "{head}, but the body did not arrive within {} ms",
                        timeout.as_millis()
                    ),
                )
            },
        }
    }
}

fn build(
    guard: &Arc<Guard>,
    user_agent: &str,
    skip_verify: bool,
) -> Result<reqwest::Client, String> {
    let policy_guard = Arc::clone(guard);
    reqwest::Client::builder()
        .user_agent(user_agent)
        // A proxy would resolve the target itself, out of the guard's sight.
        .no_proxy()
        .dns_resolver(GuardedResolver {
            guard: Arc::clone(guard),
        })
        .redirect(redirect::Policy::custom(move |attempt| {
            // A redirect to a literal IP skips the resolver: check it here.
            if let Err(denied) = policy_guard.check_url(attempt.url()) {
                attempt.error(denied)
            } else if attempt.previous().len() > MAX_REDIRECTS {
                attempt.stop()
            } else {
                attempt.follow()
            }
        }))
        .danger_accept_invalid_certs(skip_verify)
        .build()
        .map_err(|e| error_chain(&e))
}

fn build_request(
    client: &reqwest::Client,
    guard: &Guard,
    req: &Request<'_>,
) -> Result<reqwest::RequestBuilder, String> {
    let url = Url::parse(req.url).map_err(|e| format!("invalid URL: {e}"))?;
    guard.check_url(&url).map_err(|d| d.to_string())?;
    let method = Method::from_bytes(req.method.as_bytes())
        .map_err(|_| format!("invalid HTTP method {:?}", req.method))?;
    let mut builder = client.request(method, url);
    for (name, value) in req.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid header name {name:?}"))?;
        let value =
            HeaderValue::from_str(value).map_err(|_| format!("invalid value for header {name}"))?;
        builder = builder.header(name, value);
    }
    Ok(builder)
}

/// The contract's mapping from HTTP status to check status.
fn judge(code: StatusCode) -> Status {
    if code.is_success() {
        Status::Passing
    } else if code == StatusCode::TOO_MANY_REQUESTS {
        Status::Warning
    } else {
        Status::Critical
    }
}

/// The start of the body as text (lossy: it may be binary or cut mid-way).
async fn read_body(mut response: reqwest::Response) -> String {
    let mut kept = Vec::new();
    let mut read = 0;
    while read < BODY_READ_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                read += chunk.len();
                let room = OUTPUT_LIMIT.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            // A body that breaks off still leaves its status as the answer.
            Ok(None) | Err(_) => break,
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// A request error as one line, naming the guard's refusal when it is one.
fn describe(err: &reqwest::Error) -> String {
    match find_denied(err) {
        Some(denied) => denied.to_string(),
        None => error_chain(err),
    }
}

/// Resolves through the guard, so a name that points into a denied range
/// fails before any connection is attempted.
struct GuardedResolver {
    guard: Arc<Guard>,
}

impl dns::Resolve for GuardedResolver {
    fn resolve(&self, name: dns::Name) -> dns::Resolving {
        let guard = Arc::clone(&self.guard);
        Box::pin(async move {
            // reqwest puts the URL's port on the addresses it gets back.
            let addrs = guard.resolve(name.as_str(), 0).await?;
            Ok(Box::new(addrs.into_iter()) as dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_mapping() {
        for (code, expect) in [
            (200, Status::Passing),
            (204, Status::Passing),
            (299, Status::Passing),
            (301, Status::Critical),
            (404, Status::Critical),
            (429, Status::Warning),
            (500, Status::Critical),
            (503, Status::Critical),
        ] {
            assert_eq!(judge(StatusCode::from_u16(code).unwrap()), expect, "{code}");
        }
    }
}
