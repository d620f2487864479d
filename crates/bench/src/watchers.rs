//! The fan-out scenario's WebSocket watchers (muster's feed, and the ceiling
//! server that mimics it): opened by runtime tasks (handshake, then the
//! opening snapshot), then read by two plain threads that look at their
//! sockets every [`NAP`] rather than sleeping until one is readable.
//!
//! Why: the harness reads every watcher's copy on the same two cores as the
//! server it measures, so what the reading costs lands on the server's
//! delivery latency. A reader that sleeps until a socket is readable is woken
//! by the server's own `send` (the loopback delivers in the sender's context:
//! the wake-up, and on a VM the interrupt to the other core, are paid inside
//! the server's system call), once per copy whenever the reader keeps up. A
//! reader that naps between looks is never waiting in `epoll_wait` when a copy
//! lands, so the server's send wakes nobody; each look reads every socket that
//! became ready meanwhile. Measured at 10k watchers (5 interleaved pairs, see
//! docs/BENCHMARKS.md): the server's CPU per change and the harness's both
//! fall. The price is timing: a copy is timed when it is read, so at most one
//! nap (plus the timer's slack) after it arrived. That only ever overstates
//! latency, never understates it.

use crate::load;
use crate::scenarios::Seen;
use anyhow::{Context, Result, bail};
use bytes::{Buf, Bytes, BytesMut};
use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

/// Reader threads: one per core of the machine this harness was built for.
pub(crate) const READERS: usize = 2;

/// How long a reader sleeps when a look finds no socket ready.
pub(crate) const NAP: Duration = Duration::from_micros(250);

/// A WebSocket connection to a watch endpoint, read without a WebSocket
/// library: the handshake by hand, then the server's frames straight off the
/// socket. A client that only reads needs little of RFC 6455 (server frames
/// are unmasked); it answers pings with masked pongs so muster keeps it.
struct RawWs {
    io: tokio::net::TcpStream,
    frames: Frames,
}

/// Server frames as they come off a socket.
struct Frames {
    buf: BytesMut,
}

impl Frames {
    /// One whole frame off the buffer: (opcode, payload).
    fn next(&mut self) -> Result<Option<(u8, Bytes)>> {
        let b = &self.buf;
        if b.len() < 2 {
            return Ok(None);
        }
        if b[0] & 0x80 == 0 || b[1] & 0x80 != 0 {
            bail!("the server sent a fragmented or masked frame");
        }
        let (len, at) = match b[1] {
            126 if b.len() >= 4 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => (
                usize::try_from(u64::from_be_bytes(b[2..10].try_into()?))?,
                10,
            ),
            126 | 127 => return Ok(None),
            n => (usize::from(n), 2),
        };
        if b.len() < at + len {
            return Ok(None);
        }
        let opcode = b[0] & 0x0F;
        self.buf.advance(at);
        Ok(Some((opcode, self.buf.split_to(len).freeze())))
    }
}

/// A pong echoing a ping's payload (at most 125 bytes), masked with key 0 so
/// the payload goes unchanged.
fn pong(payload: &[u8]) -> Vec<u8> {
    let mut pong = vec![0x8A, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    pong.extend_from_slice(payload);
    pong
}

impl RawWs {
    async fn open(addr: &str, path: &str) -> Result<RawWs> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut io = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        io.set_nodelay(true)?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        io.write_all(req.as_bytes()).await?;
        let mut buf = BytesMut::with_capacity(1024);
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 8192 || io.read_buf(&mut buf).await? == 0 {
                bail!("no handshake answer from {addr}");
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        // The accept value of the RFC 6455 example key.
        if !head.starts_with("http/1.1 101")
            || !head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=")
        {
            bail!("not a WebSocket handshake: {head}");
        }
        let _ = buf.split_to(end);
        Ok(RawWs {
            io,
            frames: Frames { buf },
        })
    }

    /// The next text message's payload, answering pings on the way.
    async fn text(&mut self) -> Result<Bytes> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            while let Some((opcode, payload)) = self.frames.next()? {
                match opcode {
                    0x1 => return Ok(payload),
                    0x8 => bail!(
                        "the server closed a watcher: {}",
                        String::from_utf8_lossy(&payload)
                    ),
                    0x9 => self.io.write_all(&pong(&payload)).await?,
                    _ => {}
                }
            }
            let buf = &mut self.frames.buf;
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(4096);
            }
            if self.io.read_buf(buf).await? == 0 {
                bail!("the server ended a watcher's connection");
            }
        }
    }
}

/// One watcher of service `fan`, its opening snapshot read.
async fn open_watcher(addr: &str) -> Result<RawWs> {
    let mut ws = RawWs::open(addr, "/api/v1/watch?services=fan").await?;
    match tokio::time::timeout(Duration::from_secs(30), ws.text()).await {
        Ok(Ok(t)) if contains(&t, br#""kind":"snapshot""#) => Ok(ws),
        Ok(Ok(t)) => bail!(
            "expected a snapshot first, got {}",
            String::from_utf8_lossy(&t)
        ),
        Ok(Err(e)) => Err(e),
        Err(_) => bail!("no snapshot within 30 s"),
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A watcher handed from the task that opened it to a reader thread: its
/// socket and whatever was read past the snapshot.
type Opened = (std::net::TcpStream, BytesMut);

/// `n` watchers being opened, then read; each `registered` message any of
/// them gets is reported through the scenario's channel with the time it was
/// read. Dropped, it closes them all.
pub(crate) struct Watchers {
    opening: Vec<tokio::task::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Watchers {
    fn drop(&mut self) {
        self.opening.iter().for_each(|h| h.abort());
        self.stop.store(true, Ordering::Release);
        // Each reader sees the flag within a nap.
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

/// Opens `n` watchers of `addr`'s feed over a few tasks (16 handshakes in
/// flight each), dealing them out to the reader threads once each has read
/// its snapshot (and then reporting it `Ready`).
pub(crate) fn spawn(addr: &str, n: usize, tx: &UnboundedSender<Seen>) -> Result<Watchers> {
    use futures_util::StreamExt;
    // Built as it goes: if a reader cannot start, dropping it stops the rest.
    let mut watchers = Watchers {
        opening: Vec::new(),
        stop: Arc::new(AtomicBool::new(false)),
        readers: Vec::with_capacity(READERS),
    };
    let mut hand_to: Vec<Sender<Opened>> = Vec::with_capacity(READERS);
    for r in 0..READERS {
        let (opened_tx, opened) = std::sync::mpsc::channel::<Opened>();
        let (tx, stop) = (tx.clone(), watchers.stop.clone());
        watchers.readers.push(
            std::thread::Builder::new()
                .name(format!("fanout-reader-{r}"))
                .spawn(move || {
                    if let Err(e) = read(&opened, &tx, &stop) {
                        let _ = tx.send(Seen::Failed(format!("watcher: {e:#}")));
                    }
                })?,
        );
        hand_to.push(opened_tx);
    }
    let tasks = 4.min(n.max(1));
    watchers.opening = (0..tasks)
        .map(|t| {
            let share = n / tasks + usize::from(t < n % tasks);
            let (addr, tx, hand_to) = (addr.to_string(), tx.clone(), hand_to.clone());
            tokio::spawn(async move {
                let mut opening = futures_util::stream::iter(0..share)
                    .map(|_| open_watcher(&addr))
                    .buffer_unordered(16);
                let mut i = t;
                while let Some(r) = opening.next().await {
                    let handed = r.and_then(|ws| {
                        let to = &hand_to[i % hand_to.len()];
                        i += 1;
                        to.send((ws.io.into_std()?, ws.frames.buf))
                            .ok()
                            .context("a reader thread ended")
                    });
                    match handed {
                        Ok(()) => {
                            load::PROGRESS.fetch_add(1, Ordering::Relaxed);
                            let _ = tx.send(Seen::Ready);
                        }
                        Err(e) => {
                            let _ = tx.send(Seen::Failed(format!("{e:#}")));
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    Ok(watchers)
}

/// A reader thread: takes in the watchers handed to it, reads whichever are
/// ready, reports each look's copies in one message, and naps when a look
/// finds nothing.
fn read(opened: &Receiver<Opened>, tx: &UnboundedSender<Seen>, stop: &AtomicBool) -> Result<()> {
    let mut poll = mio::Poll::new()?;
    let mut watchers: Vec<Watcher> = Vec::new();
    let mut events = mio::Events::with_capacity(1024);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut copies = Vec::new();
    while !stop.load(Ordering::Acquire) {
        for (io, buf) in opened.try_iter() {
            let mut w = Watcher {
                io: mio::net::TcpStream::from_std(io),
                frames: Frames { buf },
            };
            // Edge-triggered; data already waiting raises the first event.
            poll.registry().register(
                &mut w.io,
                mio::Token(watchers.len()),
                mio::Interest::READABLE,
            )?;
            // Frames read past the snapshot, if any.
            w.handle_frames(tokio::time::Instant::now(), &mut copies)?;
            watchers.push(w);
        }
        match poll.poll(&mut events, Some(Duration::ZERO)) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            r => r?,
        }
        for event in &events {
            let w = &mut watchers[event.token().0];
            // Read until the socket is drained: a short read drains it, and
            // data arriving after it raises a new event.
            loop {
                let n = match w.io.read(&mut chunk) {
                    Ok(0) => bail!("the server ended a watcher's connection"),
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e.into()),
                };
                w.frames.buf.extend_from_slice(&chunk[..n]);
                w.handle_frames(tokio::time::Instant::now(), &mut copies)?;
                if n < chunk.len() {
                    break;
                }
            }
        }
        if !copies.is_empty() {
            let _ = tx.send(Seen::Arrived(std::mem::take(&mut copies)));
        }
        if events.is_empty() {
            std::thread::sleep(NAP);
        }
    }
    Ok(())
}

/// A watcher as its reader thread holds it.
struct Watcher {
    io: mio::net::TcpStream,
    frames: Frames,
}

impl Watcher {
    /// Handles the whole frames read so far: a `registered` event is a copy
    /// read `at`; a ping is answered; a close ends the reader.
    fn handle_frames(
        &mut self,
        at: tokio::time::Instant,
        copies: &mut Vec<(tokio::time::Instant, usize)>,
    ) -> Result<()> {
        while let Some((opcode, payload)) = self.frames.next()? {
            match opcode {
                0x1 if contains(&payload, br#""kind":"registered""#) => {
                    copies.push((at, payload.len()));
                }
                0x8 => bail!(
                    "the server closed a watcher: {}",
                    String::from_utf8_lossy(&payload)
                ),
                0x9 => write_all(&mut self.io, &pong(&payload))?,
                _ => {}
            }
        }
        Ok(())
    }
}

/// A few bytes (a pong) to a non-blocking socket whose send buffer is all but
/// empty: taken at once nearly always, else retried for up to 5 s.
fn write_all(io: &mut mio::net::TcpStream, mut bytes: &[u8]) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !bytes.is_empty() {
        match io.write(bytes) {
            Ok(0) => bail!("a watcher's socket takes no more bytes"),
            Ok(n) => bytes = &bytes[n..],
            Err(e)
                if e.kind() == ErrorKind::WouldBlock && tokio::time::Instant::now() < deadline =>
            {
                std::thread::sleep(NAP);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
