//! HTTP probes against a real axum server whose answers the tests steer.

use crate::support::{TIMEOUT, USER_AGENT, http_get, open_prober};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get};
use axum::serve::ListenerExt;
use futures_util::StreamExt;
use muster_core::{CheckKind, Status};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

/// A test HTTP server on 127.0.0.1:0.
pub struct Server {
    pub addr: SocketAddr,
    /// Status code `/` answers with.
    answer: Arc<AtomicU16>,
    /// TCP connections accepted so far.
    connections: Arc<AtomicUsize>,
}

impl Server {
    pub async fn start() -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(AtomicU16::new(200));
        let connections = Arc::new(AtomicUsize::new(0));
        let app = Router::new()
            .route("/", get(flip))
            .route("/echo", any(echo))
            .route("/big", get(|| async { "x".repeat(10_000) }))
            .route("/slow", get(std::future::pending::<&'static str>))
            .route("/stalled-body", get(stalled_body))
            .route("/redirect/{n}", get(redirect))
            .route(
                "/metadata",
                get(|| async { Redirect::temporary("http://169.254.169.254/latest/meta-data") }),
            )
            .with_state(Arc::clone(&answer));
        let counter = Arc::clone(&connections);
        let listener = listener.tap_io(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        Server {
            addr,
            answer,
            connections,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn answer_with(&self, code: u16) {
        self.answer.store(code, Ordering::SeqCst);
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn flip(State(answer): State<Arc<AtomicU16>>) -> (StatusCode, String) {
    let code = answer.load(Ordering::SeqCst);
    (
        StatusCode::from_u16(code).unwrap(),
        format!("answer {code}"),
    )
}

/// 204 when the probe sent what the check asked for, else 400 saying what
/// was missing.
async fn echo(method: Method, headers: HeaderMap) -> (StatusCode, String) {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let mut wrong = Vec::new();
    if method != Method::POST {
        wrong.push(format!("method {method}"));
    }
    if header("x-probe") != Some("yes") {
        wrong.push("x-probe header".to_string());
    }
    if header("user-agent") != Some(USER_AGENT) {
        wrong.push(format!("user-agent {:?}", header("user-agent")));
    }
    if wrong.is_empty() {
        (StatusCode::NO_CONTENT, String::new())
    } else {
        (
            StatusCode::BAD_REQUEST,
            format!("wrong: {}", wrong.join(", ")),
        )
    }
}

/// Status and a first chunk at once, then a body that never ends.
async fn stalled_body() -> Response {
    let first = futures_util::stream::once(async { Ok::<_, std::io::Error>("partial") });
    let body = Body::from_stream(first.chain(futures_util::stream::pending()));
    (StatusCode::OK, body).into_response()
}

/// `/redirect/n` redirects n times before answering 200.
async fn redirect(Path(n): Path<u32>) -> Response {
    if n == 0 {
        "arrived".into_response()
    } else {
        Redirect::temporary(&format!("/redirect/{}", n - 1)).into_response()
    }
}

#[tokio::test]
async fn status_codes_map_to_check_statuses_over_one_kept_alive_connection() {
    let server = Server::start().await;
    let prober = open_prober();
    let check = http_get(&server.url("/"));
    for (code, status, line) in [
        (200, Status::Passing, "200 OK"),
        (429, Status::Warning, "429 Too Many Requests"),
        (500, Status::Critical, "500 Internal Server Error"),
        (404, Status::Critical, "404 Not Found"),
        (200, Status::Passing, "200 OK"),
    ] {
        server.answer_with(code);
        // A clone shares the pool: the scheduler hands clones to its tasks.
        let out = prober.clone().probe(&check, TIMEOUT).await;
        assert_eq!(out.status, status, "{out:?}");
        assert_eq!(out.status_code, Some(code));
        assert!(out.is_up && out.is_responsive, "{out:?}");
        assert_eq!(
            out.output,
            format!("HTTP GET {}: {line}\nanswer {code}", server.url("/"))
        );
    }
    assert_eq!(server.connections(), 1, "every probe reused one connection");
}

#[tokio::test]
async fn method_headers_and_user_agent_are_sent() {
    let server = Server::start().await;
    let prober = open_prober();
    let check = CheckKind::Http {
        target: server.url("/echo"),
        method: "POST".into(),
        headers: BTreeMap::from([("X-Probe".to_string(), "yes".to_string())]),
        tls_skip_verify: false,
    };
    let out = prober.probe(&check, TIMEOUT).await;
    assert_eq!(
        (out.status, out.status_code),
        (Status::Passing, Some(204)),
        "{out:?}"
    );
    // The same endpoint with the defaults is refused by the server.
    let out = prober.probe(&http_get(&server.url("/echo")), TIMEOUT).await;
    assert_eq!(out.status_code, Some(400));
    assert!(out.output.contains("method GET, x-probe header"), "{out:?}");
}

#[tokio::test]
async fn a_slow_answer_times_out() {
    let server = Server::start().await;
    let out = open_prober()
        .probe(&http_get(&server.url("/slow")), Duration::from_millis(300))
        .await;
    assert_eq!((out.status, out.status_code), (Status::Critical, None));
    assert!(!out.is_up && !out.is_responsive, "{out:?}");
    assert!(out.output.ends_with("timed out after 300 ms"), "{out:?}");
}

#[tokio::test]
async fn a_body_that_stalls_is_up_but_not_responsive() {
    let server = Server::start().await;
    let out = open_prober()
        .probe(
            &http_get(&server.url("/stalled-body")),
            Duration::from_millis(300),
        )
        .await;
    assert_eq!((out.status, out.status_code), (Status::Critical, Some(200)));
    assert!(out.is_up && !out.is_responsive, "{out:?}");
    assert!(out.output.contains("did not arrive"), "{out:?}");
}

#[tokio::test]
async fn output_is_cut_to_4_kib() {
    let server = Server::start().await;
    let out = open_prober()
        .probe(&http_get(&server.url("/big")), TIMEOUT)
        .await;
    assert_eq!(out.status, Status::Passing);
    assert_eq!(out.output.len(), 4096);
    assert!(
        out.output
            .starts_with(&format!("HTTP GET {}: 200 OK\nxxx", server.url("/big")))
    );
}

#[tokio::test]
async fn redirects_are_followed_up_to_five() {
    let server = Server::start().await;
    let prober = open_prober();
    let out = prober
        .probe(&http_get(&server.url("/redirect/5")), TIMEOUT)
        .await;
    assert_eq!(out.status, Status::Passing, "{out:?}");
    assert!(out.output.ends_with("200 OK\narrived"), "{out:?}");
    // The sixth redirect is not followed: the redirect is the answer.
    let out = prober
        .probe(&http_get(&server.url("/redirect/6")), TIMEOUT)
        .await;
    assert_eq!(
        (out.status, out.status_code),
        (Status::Critical, Some(307)),
        "{out:?}"
    );
}

#[tokio::test]
async fn a_closed_port_is_critical_and_down() {
    let port = crate::support::free_port();
    let url = format!("http://127.0.0.1:{port}/");
    let out = open_prober().probe(&http_get(&url), TIMEOUT).await;
    assert_eq!(out.status, Status::Critical);
    assert!(!out.is_up, "{out:?}");
    assert!(
        out.output.starts_with(&format!("HTTP GET {url}: ")),
        "{out:?}"
    );
    assert!(out.output.contains("onnection refused"), "{out:?}");
}

#[tokio::test]
async fn invalid_checks_are_reported_not_panicked_on() {
    let prober = open_prober();
    for (check, expect) in [
        (http_get("not a url"), "invalid URL"),
        (
            CheckKind::Http {
                target: "http://127.0.0.1:1/".into(),
                method: "GET".into(),
                headers: BTreeMap::from([("bad header".to_string(), "v".to_string())]),
                tls_skip_verify: false,
            },
            "invalid header name",
        ),
    ] {
        let out = prober.probe(&check, TIMEOUT).await;
        assert_eq!(out.status, Status::Critical);
        assert!(out.output.contains(expect), "{out:?}");
    }
}
