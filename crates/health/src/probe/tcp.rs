//! TCP probes, and the guarded connect that grpc and mqtt probes share.

use super::ProbeOutcome;
use super::guard::{Guard, ResolveError, split_host_port};
use muster_core::Status;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

/// Why no connection was made; each becomes a critical outcome.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// The target is not `host:port`.
    Target(String),
    Resolve(ResolveError),
    /// Every allowed address refused or was unreachable; the last reason.
    Connect(SocketAddr, std::io::Error),
    TimedOut,
}

impl ConnectError {
    /// The outcome of a probe that could not connect; `what` names the
    /// probe in the output (`TCP connect to db:5432`).
    pub(crate) fn into_outcome(self, what: &str, timeout: Duration) -> ProbeOutcome {
        match self {
            ConnectError::Target(m) => ProbeOutcome::failed(format!("{what}: {m}")),
            ConnectError::Resolve(e) => ProbeOutcome::failed(format!("{what}: {e}")),
            ConnectError::Connect(addr, e) => {
                ProbeOutcome::failed(format!("{what}: connecting to {addr} failed: {e}"))
            }
            ConnectError::TimedOut => ProbeOutcome::timed_out(what, timeout),
        }
    }
}

/// Resolves `target` (`host:port`) through the guard and connects to the
/// first address that accepts, in the resolver's order, before `deadline`.
pub(crate) async fn connect(
    guard: &Guard,
    target: &str,
    deadline: Instant,
) -> Result<(TcpStream, SocketAddr), ConnectError> {
    let (host, port) = split_host_port(target).map_err(ConnectError::Target)?;
    connect_host(guard, host, port, deadline).await
}

/// [`connect`] for a host and port already split apart.
pub(crate) async fn connect_host(
    guard: &Guard,
    host: &str,
    port: u16,
    deadline: Instant,
) -> Result<(TcpStream, SocketAddr), ConnectError> {
    let attempt = async {
        let addrs = guard
            .resolve(host, port)
            .await
            .map_err(ConnectError::Resolve)?;
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    // Probes write a few bytes and wait for the answer;
                    // Nagle's delay would only add latency to the figure.
                    let _ = stream.set_nodelay(true);
                    return Ok((stream, addr));
                }
                Err(e) => last = Some(ConnectError::Connect(addr, e)),
            }
        }
        // `resolve` never returns an empty list, so `last` is set here.
        Err(last.unwrap_or_else(|| ConnectError::Target(format!("{host} resolves to no address"))))
    };
    timeout_at(deadline, attempt)
        .await
        .unwrap_or(Err(ConnectError::TimedOut))
}

pub(crate) async fn probe(
    guard: &Guard,
    target: &str,
    deadline: Instant,
    timeout: Duration,
) -> ProbeOutcome {
    let what = format!("TCP connect to {target}");
    match connect(guard, target, deadline).await {
        Ok((_stream, addr)) => ProbeOutcome::answered(
            Status::Passing,
            None,
            format!("{what}: connected to {addr}"),
        ),
        Err(e) => e.into_outcome(&what, timeout),
    }
}
