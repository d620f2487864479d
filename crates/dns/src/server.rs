//! The DNS listeners: one UDP socket and one TCP listener on the same port,
//! served by a few UDP workers and a task per TCP connection, all tracked
//! and stopped by one token.
//!
//! Why not `hickory_server::Server`: its request path logs two `info!`
//! lines for every query (a busy resolver would flood the server's log at
//! the default level), and it spawns a task and goes through a channel per
//! UDP datagram. Answering in place in a handful of `recv_from` loops is
//! less code than working around that, and hickory-proto still does all the
//! parsing and encoding.

use crate::{Answerer, DnsConfig, DnsError};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How a query arrived: it decides how large the answer may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// TCP connections served at once; more wait in the kernel's backlog.
const MAX_TCP_CONNECTIONS: usize = 512;
/// A TCP connection silent this long is closed (RFC 7766 §6.2.3 asks for
/// seconds, not minutes).
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Attempts at finding a port free for both UDP and TCP when asked for port 0.
const PORT_ATTEMPTS: usize = 32;

/// Bound, not yet serving.
pub struct DnsServer {
    udp: Arc<UdpSocket>,
    tcp: TcpListener,
    addr: SocketAddr,
    answerer: Arc<Answerer>,
}

impl DnsServer {
    /// Binds UDP and TCP on `addr`. With port 0 both get the same free
    /// port, so a client told of the address can retry a truncated answer
    /// over TCP at the same place.
    pub async fn bind(addr: SocketAddr, config: &DnsConfig) -> Result<DnsServer, DnsError> {
        let (udp, tcp) = bind_both(addr).await?;
        let addr = udp.local_addr().map_err(|error| DnsError::Bind {
            proto: "udp",
            addr,
            error,
        })?;
        Ok(DnsServer {
            udp: Arc::new(udp),
            tcp,
            addr,
            answerer: Arc::new(Answerer::new(config)),
        })
    }

    /// The address both listeners are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Shared with whoever supplies the registry once it is ready.
    pub fn answerer(&self) -> Arc<Answerer> {
        self.answerer.clone()
    }

    /// Serves until `stop` is cancelled; every task is tracked on `tracker`.
    pub fn serve(self, tracker: &TaskTracker, stop: CancellationToken) {
        // One worker per core: each answers in place, so this is the most
        // that can make progress at once.
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
        for _ in 0..workers {
            tracker.spawn(udp_worker(
                self.udp.clone(),
                self.answerer.clone(),
                stop.clone(),
            ));
        }
        tracker.spawn(tcp_listener(self.tcp, self.answerer, tracker.clone(), stop));
    }
}

async fn bind_both(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    let err = |proto, addr| move |error| DnsError::Bind { proto, addr, error };
    if addr.port() != 0 {
        let udp = UdpSocket::bind(addr).await.map_err(err("udp", addr))?;
        let tcp = TcpListener::bind(addr).await.map_err(err("tcp", addr))?;
        return Ok((udp, tcp));
    }
    // The system picks UDP's port; another process may hold that number
    // for TCP, so try again with a new one.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let udp = UdpSocket::bind(addr).await.map_err(err("udp", addr))?;
        let picked = udp.local_addr().map_err(err("udp", addr))?;
        match TcpListener::bind(picked).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && attempt < PORT_ATTEMPTS => {}
            Err(e) => return Err(err("tcp", picked)(e)),
        }
    }
}

async fn udp_worker(socket: Arc<UdpSocket>, answerer: Arc<Answerer>, stop: CancellationToken) {
    // The largest datagram there is: a longer query must not be cut into
    // something that parses.
    let mut buf = vec![0u8; 65_535];
    loop {
        let received = tokio::select! {
            r = socket.recv_from(&mut buf) => r,
            _ = stop.cancelled() => return,
        };
        let (len, peer) = match received {
            Ok(r) => r,
            // An ICMP error for an earlier answer can surface here; the
            // socket itself is fine.
            Err(e) => {
                tracing::debug!(error = %e, "dns: udp receive failed");
                continue;
            }
        };
        if let Some(response) = answerer.answer(&buf[..len], Transport::Udp)
            && let Err(e) = socket.send_to(&response, peer).await
        {
            tracing::debug!(%peer, error = %e, "dns: udp send failed");
        }
    }
}

async fn tcp_listener(
    listener: TcpListener,
    answerer: Arc<Answerer>,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    loop {
        // The permit before accept: past the limit, connections wait in the
        // backlog instead of each costing a task.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p,
            _ = stop.cancelled() => return,
        };
        let Ok(permit) = permit else { return };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of
                // spinning on an error that persists.
                tracing::warn!(error = %e, "dns: tcp accept failed");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    _ = stop.cancelled() => return,
                }
            }
        };
        let (answerer, stop) = (answerer.clone(), stop.clone());
        tracker.spawn(async move {
            let _permit = permit;
            tokio::select! {
                _ = connection(stream, &answerer) => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// Length-prefixed messages (RFC 1035 §4.2.2), as many as the client sends.
async fn connection(mut stream: TcpStream, answerer: &Answerer) {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    loop {
        let read = async {
            let len = stream.read_u16().await?;
            buf.resize(usize::from(len), 0);
            stream.read_exact(&mut buf).await
        };
        match tokio::time::timeout(TCP_IDLE, read).await {
            Ok(Ok(_)) => {}
            // Closed, broken or idle: nothing more to answer.
            _ => return,
        }
        let Some(response) = answerer.answer(&buf, Transport::Tcp) else {
            continue;
        };
        out.clear();
        // The encoder caps TCP answers at u16::MAX, so the length fits.
        out.extend_from_slice(&(response.len() as u16).to_be_bytes());
        out.extend_from_slice(&response);
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}
