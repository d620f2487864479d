//! gRPC probes: `grpc.health.v1.Health/Check` over plain-text HTTP/2.
//! SERVING is passing; NOT_SERVING, UNKNOWN, SERVICE_UNKNOWN and any error
//! status are critical.
//!
//! Each probe makes its own connection: the guard's TCP connect is done
//! first and its stream handed to tonic, so resolution and the deny ranges
//! are applied on every probe exactly as for tcp checks. A probe every few
//! seconds gains little from a pooled channel, and a long-lived channel
//! would reconnect later on tonic's terms.

use super::guard::Guard;
use super::{ProbeOutcome, error_chain, tcp};
use hyper_util::rt::TokioIo;
use muster_core::Status;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::{Instant, timeout_at};
use tonic::transport::{Endpoint, Uri};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How a call that got past the TCP connect went wrong.
enum CallError {
    /// No HTTP/2 connection: nothing answered the gRPC way.
    Connection(String),
    /// The server answered with an error status.
    Status(tonic::Status),
}

pub(crate) async fn probe(
    guard: &Guard,
    target: &str,
    service: &str,
    deadline: Instant,
    timeout: Duration,
) -> ProbeOutcome {
    let what = if service.is_empty() {
        format!("gRPC health of {target}")
    } else {
        format!("gRPC health of {target} service {service:?}")
    };
    let stream = match tcp::connect(guard, target, deadline).await {
        Ok((stream, _addr)) => stream,
        Err(e) => return e.into_outcome(&what, timeout),
    };
    // The URI gives requests their :authority; the connection is ours.
    let endpoint = match Endpoint::from_shared(format!("http://{target}")) {
        Ok(e) => e,
        Err(e) => return ProbeOutcome::failed(format!("{what}: {}", error_chain(&e))),
    };
    let call = async {
        let channel = endpoint
            .connect_with_connector(handover(stream))
            .await
            .map_err(|e| CallError::Connection(error_chain(&e)))?;
        let request = HealthCheckRequest {
            service: service.to_string(),
        };
        HealthClient::new(channel)
            .check(request)
            .await
            .map(|r| r.into_inner().status)
            .map_err(|s| {
                // tonic reports client-side failures (the connection broke)
                // as a status too; those carry the error as their source,
                // while a status the server sent has none.
                match std::error::Error::source(&s) {
                    Some(cause) => CallError::Connection(error_chain(cause)),
                    None => CallError::Status(s),
                }
            })
    };
    match timeout_at(deadline, call).await {
        Err(_) => ProbeOutcome::timed_out(&what, timeout),
        Ok(Ok(code)) => {
            let (status, name) = match ServingStatus::try_from(code) {
                Ok(ServingStatus::Serving) => (Status::Passing, "SERVING"),
                Ok(s) => (Status::Critical, s.as_str_name()),
                Err(_) => (Status::Critical, "an unknown serving status"),
            };
            let code = u16::try_from(code).ok();
            ProbeOutcome::answered(status, code, format!("{what}: {name}"))
        }
        Ok(Err(CallError::Connection(m))) => {
            ProbeOutcome::failed(format!("{what}: no gRPC answer: {m}"))
        }
        // An error status is still an answer from the server (NOT_FOUND is
        // how servers say the service name is unknown to them). The gRPC
        // code is not put in `status_code`, where it would read as a
        // serving status.
        Ok(Err(CallError::Status(s))) => ProbeOutcome::answered(
            Status::Critical,
            None,
            format!("{what}: error {:?}: {}", s.code(), s.message()),
        ),
    }
}

/// A connector that yields the already-connected stream once. tonic asks
/// for a connection only when the channel is built; a second request means
/// a reconnect, which this one-shot channel refuses.
fn handover(
    stream: tokio::net::TcpStream,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<tokio::net::TcpStream>,
    Error = std::io::Error,
    Future = std::future::Ready<std::io::Result<TokioIo<tokio::net::TcpStream>>>,
> + Send
+ 'static {
    let slot = Arc::new(Mutex::new(Some(stream)));
    tower::service_fn(move |_uri: Uri| {
        let taken = slot.lock().ok().and_then(|mut s| s.take());
        std::future::ready(taken.map(TokioIo::new).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "the server closed the connection and a probe does not reconnect",
            )
        }))
    })
}
