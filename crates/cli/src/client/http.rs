//! The HTTP side of the client: builds URLs under the server address, sends
//! JSON, and turns every failure into one line a person can act on.
//!
//! Failures come in three kinds and each gets its own wording: the server
//! could not be reached (`cannot reach muster at ADDR: connection refused`),
//! it answered with a problem document (`HTTP 404 Not Found: detail`), or it
//! answered with something that is not the JSON we expected.

use anyhow::{Result, anyhow, bail};
use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;
use std::time::Duration;

/// A connection to one muster server.
pub struct Api {
    client: reqwest::Client,
    /// For long-lived streams (the change feed): no overall timeout.
    streams: reqwest::Client,
    /// Parsed address every path is appended to.
    base: Url,
    /// The address as the user wrote it (less a trailing `/`), for messages.
    shown: String,
    auth: Option<HeaderValue>,
}

/// How long to wait for a TCP/TLS connection: long enough for a slow network,
/// short enough that a wrong `--addr` fails while the user is still looking.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// No single API call should take this long; a hung server must not hang the CLI.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl Api {
    /// Validates the address and token up front, so a malformed flag is
    /// reported as such instead of as a network error.
    pub fn new(addr: &str, token: Option<&str>, tls: &super::TlsOpts) -> Result<Api> {
        let base = parse_addr(addr)?;
        // An empty `MUSTER_TOKEN=` means "no token", not "the empty token".
        let auth = match token.filter(|t| !t.is_empty()) {
            Some(t) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                    anyhow!("--token contains characters that cannot be sent in an HTTP header")
                })?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let client = with_tls(reqwest::Client::builder(), tls)?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("muster-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| anyhow!("cannot set up the HTTP client: {}", chain(&e)))?;
        let streams = with_tls(reqwest::Client::builder(), tls)?
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("muster-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| anyhow!("cannot set up the HTTP client: {}", chain(&e)))?;
        Ok(Api {
            client,
            streams,
            base,
            shown: addr.trim_end_matches('/').to_string(),
            auth,
        })
    }

    /// `/api/v1/` followed by `segments`, each percent-encoded as one path
    /// segment, then `query` pairs (repeated keys allowed).
    pub fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Result<Url> {
        for s in segments {
            // The URL library drops `.` and `..` segments and an empty one
            // changes the route, so any of them would silently address a
            // different resource than the user named.
            if s.is_empty() || *s == "." || *s == ".." {
                bail!("{s:?} cannot be used as a name or id");
            }
        }
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| anyhow!("--addr {} cannot take a path", self.shown))?
            .pop_if_empty()
            .extend(["api", "v1"])
            .extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    /// Sends one request and returns the JSON answer (`Null` for an empty
    /// body, as a 204 has).
    pub async fn send(&self, method: Method, url: Url, body: Option<&Value>) -> Result<Value> {
        let mut req = self.client.request(method, url);
        if let Some(auth) = &self.auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.transport_error(&e))?;
        if !status.is_success() {
            bail!("{}", problem_line(status, &bytes));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            anyhow!(
                "muster at {} answered {} with a body that is not JSON: {e}",
                self.shown,
                status.as_u16()
            )
        })
    }

    /// Opens a Server-Sent Events stream; a non-2xx answer is an error
    /// carrying its status (`Err` text starts with `HTTP 410` for a gone revision).
    pub async fn sse(&self, url: Url) -> Result<reqwest::Response> {
        let mut req = self.streams.get(url).header("accept", "text/event-stream");
        if let Some(auth) = &self.auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp.bytes().await.unwrap_or_default();
            bail!("{}", problem_line(status, &bytes));
        }
        Ok(resp)
    }

    pub async fn get(&self, segments: &[&str], query: &[(&str, &str)]) -> Result<Value> {
        self.send(Method::GET, self.url(segments, query)?, None)
            .await
    }

    fn transport_error(&self, e: &reqwest::Error) -> anyhow::Error {
        if e.is_connect() {
            anyhow!(
                "cannot reach muster at {}: {}",
                self.shown,
                connect_reason(e)
            )
        } else if e.is_timeout() {
            anyhow!(
                "muster at {} did not answer within {}s",
                self.shown,
                REQUEST_TIMEOUT.as_secs()
            )
        } else {
            anyhow!("request to muster at {} failed: {}", self.shown, chain(e))
        }
    }
}

/// Accepts `host:port` as a shorthand for `http://host:port`, since that is
/// what people type; anything else must be an http(s) URL.
/// Adds `--ca-cert` to the trusted roots and `--client-cert`/`--client-key`
/// as our identity; files are read now so a wrong path is reported as such.
fn with_tls(
    mut builder: reqwest::ClientBuilder,
    tls: &super::TlsOpts,
) -> Result<reqwest::ClientBuilder> {
    let read = |flag: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| anyhow!("{flag} {}: {e}", path.display()))
    };
    if let Some(path) = &tls.ca_cert {
        let pem = read("--ca-cert", path)?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            anyhow!(
                "--ca-cert {}: not a PEM certificate: {}",
                path.display(),
                chain(&e)
            )
        })?;
        if certs.is_empty() {
            bail!("--ca-cert {}: holds no PEM certificate", path.display());
        }
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
    }
    if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
        let mut pem = read("--client-cert", cert)?;
        pem.push(b'\n');
        pem.extend(read("--client-key", key)?);
        let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
            anyhow!(
                "--client-cert/--client-key: not a PEM certificate and key: {}",
                chain(&e)
            )
        })?;
        builder = builder.identity(identity);
    }
    Ok(builder)
}

fn parse_addr(addr: &str) -> Result<Url> {
    let full = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let url = Url::parse(&full).map_err(|e| anyhow!("--addr {addr:?} is not a valid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("--addr {addr:?} must be an http:// or https:// URL");
    }
    if url.query().is_some() || url.fragment().is_some() {
        bail!("--addr {addr:?} must not carry a query or fragment");
    }
    Ok(url)
}

/// One line for an error answer, from its RFC 9457 problem document when it
/// has one: `HTTP 409 Conflict: service web still has 2 instances (field: cascade)`.
pub fn problem_line(status: StatusCode, body: &[u8]) -> String {
    let reason = status.canonical_reason().unwrap_or("");
    let head = format!("HTTP {} {reason}", status.as_u16())
        .trim_end()
        .to_string();
    let problem: Option<Value> = serde_json::from_slice(body).ok();
    let text = |key: &str| {
        problem
            .as_ref()
            .and_then(|p| p.get(key))
            .and_then(Value::as_str)
            .map(one_line)
            .filter(|s| !s.is_empty())
    };
    let detail = text("detail").or_else(|| text("title")).or_else(|| {
        // Not a problem document (a proxy's error page, say): show the start
        // of it rather than nothing.
        let raw = one_line(&String::from_utf8_lossy(body));
        (problem.is_none() && !raw.is_empty()).then(|| truncate(&raw, 200))
    });
    let mut line = match detail {
        Some(d) => format!("{head}: {d}"),
        None => head,
    };
    if let Some(field) = text("field") {
        line.push_str(&format!(" (field: {field})"));
    }
    line
}

/// Why a connection failed, as the operating system put it: the first I/O
/// error in the chain, in lower case without the `(os error N)` suffix.
fn connect_reason(e: &reqwest::Error) -> String {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            return match io.kind() {
                K::ConnectionRefused => "connection refused".into(),
                K::ConnectionReset => "connection reset".into(),
                K::TimedOut => format!("no connection within {}s", CONNECT_TIMEOUT.as_secs()),
                K::HostUnreachable => "host unreachable".into(),
                K::NetworkUnreachable => "network unreachable".into(),
                K::AddrNotAvailable => "address not available".into(),
                _ => strip_os_error(&io.to_string()),
            };
        }
        cur = err.source();
    }
    if e.is_timeout() {
        return format!("no connection within {}s", CONNECT_TIMEOUT.as_secs());
    }
    chain(e)
}

fn strip_os_error(s: &str) -> String {
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s.to_string(),
    }
}

/// An error and its sources on one line, skipping a source whose text its
/// parent already includes (reqwest and hyper often repeat themselves).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.last().is_some_and(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    one_line(&parts.join(": "))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(addr: &str) -> Api {
        Api::new(addr, None, &Default::default()).unwrap()
    }

    #[test]
    fn urls_encode_each_segment_and_keep_a_base_path() {
        let cases = [
            (
                "http://127.0.0.1:8500",
                &["services"][..],
                "http://127.0.0.1:8500/api/v1/services",
            ),
            (
                "http://h:1/",
                &["services", "web"][..],
                "http://h:1/api/v1/services/web",
            ),
            ("h:1", &["services"][..], "http://h:1/api/v1/services"),
            (
                "https://h/muster/",
                &["services"][..],
                "https://h/muster/api/v1/services",
            ),
            (
                "http://h",
                &["services", "a/b", "instances", "x y?%"][..],
                "http://h/api/v1/services/a%2Fb/instances/x%20y%3F%25",
            ),
        ];
        for (addr, segs, expect) in cases {
            assert_eq!(
                api(addr).url(segs, &[]).unwrap().as_str(),
                expect,
                "{addr} {segs:?}"
            );
        }
    }

    #[test]
    fn query_pairs_repeat_and_encode() {
        let url = api("http://h")
            .url(
                &["services", "web", "instances"],
                &[("status", "passing"), ("status", "warning"), ("tag", "a&b")],
            )
            .unwrap();
        assert_eq!(url.query(), Some("status=passing&status=warning&tag=a%26b"));
    }

    #[test]
    fn dot_segments_and_empty_names_are_refused() {
        for bad in ["", ".", ".."] {
            assert!(
                api("http://h").url(&["services", bad], &[]).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn bad_addresses_and_tokens_are_refused_before_any_request() {
        for bad in ["ftp://h", "http://", "http://h/?x=1", "http://h/#f"] {
            assert!(Api::new(bad, None, &Default::default()).is_err(), "{bad}");
        }
        assert!(Api::new("http://h", Some("a\nb"), &Default::default()).is_err());
        assert!(
            Api::new("http://h", Some(""), &Default::default())
                .unwrap()
                .auth
                .is_none()
        );
    }

    #[test]
    fn problem_documents_become_one_line() {
        let cases: &[(u16, &str, &str)] = &[
            (
                404,
                r#"{"status":404,"title":"Not Found","detail":"no service \"web\""}"#,
                r#"HTTP 404 Not Found: no service "web""#,
            ),
            (
                400,
                r#"{"status":400,"title":"Bad Request","detail":"port must be 1-65535,\ngot 0","field":"port"}"#,
                "HTTP 400 Bad Request: port must be 1-65535, got 0 (field: port)",
            ),
            (
                409,
                r#"{"status":409,"title":"Conflict"}"#,
                "HTTP 409 Conflict: Conflict",
            ),
            (
                502,
                "<html>\n<b>Bad gateway</b></html>",
                "HTTP 502 Bad Gateway: <html> <b>Bad gateway</b></html>",
            ),
            (503, "", "HTTP 503 Service Unavailable"),
            (599, "{}", "HTTP 599"),
        ];
        for (code, body, expect) in cases {
            let status = StatusCode::from_u16(*code).unwrap();
            assert_eq!(problem_line(status, body.as_bytes()), *expect);
        }
    }

    #[test]
    fn os_error_suffix_is_dropped() {
        assert_eq!(
            strip_os_error("Permission denied (os error 13)"),
            "Permission denied"
        );
        assert_eq!(strip_os_error("plain"), "plain");
    }

    #[tokio::test]
    async fn refused_connection_names_the_address() {
        // Bind then drop to get a port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("http://127.0.0.1:{port}");
        let err = api(&addr).get(&["services"], &[]).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot reach muster at {addr}: connection refused")
        );
    }
}
