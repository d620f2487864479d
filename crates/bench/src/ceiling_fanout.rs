//! The fan-out ceiling: the cheapest server that does the fan-out scenario's
//! job. It accepts WebSocket connections (a minimal but correct server
//! handshake, then a small snapshot frame, so the harness reads it exactly as
//! it reads muster's feed) and, on each `POST /fire`, writes one pre-encoded,
//! unmasked text frame of the size of muster's event to every socket. No
//! registry, no JSON, no store: what is left is the machine's cost of one
//! write per watcher.
//!
//! The writes: one tokio task per socket (on a runtime with a worker per
//! core), woken by a broadcast channel carrying the frame. Also tried: the
//! sockets dealt to two threads, each writing the frame to its half in a
//! tight loop of blocking writes; at 10k watchers its last-watcher p50/p99
//! were 103/159 ms against 76/127 ms for the tasks (medians of 3 interleaved
//! runs, docs/BENCHMARKS.md), so it was dropped.

use anyhow::{Result, bail};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// One unmasked, final text frame carrying `payload`.
pub fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 10);
    f.push(0x81);
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

/// The event's payload: `payload` bytes (at least the fixed part) that the
/// harness recognises as a change, like muster's `"kind":"registered"`.
pub fn event_payload(payload: usize) -> Vec<u8> {
    let head = br#"{"kind":"registered","pad":""#;
    let tail = br#""}"#;
    let pad = payload.saturating_sub(head.len() + tail.len());
    let mut p = Vec::with_capacity(head.len() + pad + tail.len());
    p.extend_from_slice(head);
    p.resize(head.len() + pad, b'x');
    p.extend_from_slice(tail);
    p
}

const SNAPSHOT: &[u8] = br#"{"kind":"snapshot","services":[]}"#;

/// Fans a frame out to every watcher's task.
type Hub = tokio::sync::broadcast::Sender<Bytes>;

pub async fn serve(addr: &str, payload: usize) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let frame = Bytes::from(text_frame(&event_payload(payload)));
    let hub: Hub = tokio::sync::broadcast::channel(16).0;
    println!("listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let (hub, frame) = (hub.clone(), frame.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(stream, hub, frame).await
                && std::env::var_os("MUSTER_BENCH_LOG").is_some()
            {
                eprintln!("ceiling-fanout: {e:#}");
            }
        });
    }
}

/// Reads one request head off `io` into `buf`; its text, `None` at EOF.
async fn head(io: &mut TcpStream, buf: &mut BytesMut) -> Result<Option<String>> {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let h = buf.split_to(i + 4);
            return Ok(Some(String::from_utf8_lossy(&h).into_owned()));
        }
        if buf.len() > 16 * 1024 {
            bail!("request head too large");
        }
        if io.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

async fn connection(mut io: TcpStream, hub: Hub, frame: Bytes) -> Result<()> {
    let mut buf = BytesMut::with_capacity(1024);
    while let Some(h) = head(&mut io, &mut buf).await? {
        let line = h.lines().next().unwrap_or_default();
        if line.starts_with("POST /fire ") {
            // Skip a body, if any, then answer: the frames are on their way.
            let len: usize = header(&h, "content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < len {
                if io.read_buf(&mut buf).await? == 0 {
                    return Ok(());
                }
            }
            let _ = buf.split_to(len);
            let _ = hub.send(frame.clone());
            io.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await?;
        } else if line.starts_with("GET ") {
            let upgrade =
                header(&h, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
            let version = header(&h, "sec-websocket-version") == Some("13");
            let Some(key) = header(&h, "sec-websocket-key").filter(|_| upgrade && version) else {
                io.write_all(
                    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await?;
                return Ok(());
            };
            let mut answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                accept_key(key)
            )
            .into_bytes();
            answer.extend_from_slice(&text_frame(SNAPSHOT));
            return websocket(io, hub, answer).await;
        } else {
            io.write_all(
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            )
            .await?;
            return Ok(());
        }
    }
    Ok(())
}

/// After the handshake: the socket only receives frames from now on.
async fn websocket(mut io: TcpStream, hub: Hub, answer: Vec<u8>) -> Result<()> {
    let mut rx = hub.subscribe();
    io.write_all(&answer).await?;
    loop {
        match rx.recv().await {
            Ok(frame) => io.write_all(&frame).await?,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_of_the_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn frames_and_payload_sizes() {
        assert_eq!(text_frame(b"hi"), b"\x81\x02hi");
        let p = event_payload(500);
        assert_eq!(p.len(), 500);
        assert!(p.windows(19).any(|w| w == br#""kind":"registered""#));
        let f = text_frame(&p);
        assert_eq!(&f[..4], &[0x81, 126, 0x01, 0xF4]);
        assert_eq!(f.len(), 504);
        let big = text_frame(&vec![b'x'; 70_000]);
        assert_eq!(big[1], 127);
        assert_eq!(big.len(), 70_010);
    }
}
