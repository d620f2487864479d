//! The WebSocket connection of the feed and of sessions, framed here
//! (RFC 6455) instead of through axum's tungstenite socket.
//!
//! Why our own: a server→client frame is unmasked, so an event's complete
//! frame (header and payload) is the same bytes for every watcher. Encoded
//! once and shared, each watcher then costs one write of those bytes, where
//! tungstenite framed and copied the payload into a per-socket buffer and
//! flushed it per watcher. Reading stays strict: client frames must be
//! masked, control frames short and whole, text valid UTF-8, messages
//! bounded; pings are answered by the caller, closes echoed.
//!
//! The handshake is axum's: [`upgrade`] lets `WebSocketUpgrade` check the
//! request and sign `Sec-WebSocket-Accept`, and keeps the connection's
//! upgrade (the raw IO) for us.

use axum::extract::FromRequestParts;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::request::Parts;
use axum::response::Response;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use std::io::{self, IoSlice};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FIN: u8 = 0x80;
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Close codes (RFC 6455 §7.4.1).
pub(crate) const GOING_AWAY: u16 = 1001;
pub(crate) const PROTOCOL_ERROR: u16 = 1002;
pub(crate) const INVALID_DATA: u16 = 1007;
pub(crate) const POLICY: u16 = 1008;
pub(crate) const TOO_BIG: u16 = 1009;

/// The largest message a client may send (a session's register body is the
/// biggest thing anyone sends us).
pub(crate) const MAX_MESSAGE: usize = 1024 * 1024;
/// Frames gathered into one vectored write.
const MAX_SLICES: usize = 16;
/// Read in steps of this much; an idle watcher holds little more.
const READ_STEP: usize = 512;
/// How long the closing handshake may wait for the peer's close.
const CLOSE_WITHIN: Duration = Duration::from_secs(1);

/// Checks the upgrade request with axum's extractor, which also computes
/// `Sec-WebSocket-Accept` for the 101 it returns, while the connection's
/// upgrade stays ours: axum is handed an inert one, so the task its
/// `on_upgrade` spawns ends at once without touching the connection.
/// `Err` says why the request is not a WebSocket upgrade.
pub(crate) async fn upgrade<S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
) -> Result<(Response, OnUpgrade), String> {
    let real = parts.extensions.remove::<OnUpgrade>();
    if real.is_some() {
        parts
            .extensions
            .insert(hyper::upgrade::on(axum::http::Request::new(())));
    }
    // Without an upgrade, the extractor refuses (ConnectionNotUpgradable).
    let ws = WebSocketUpgrade::from_request_parts(parts, state)
        .await
        .map_err(|e| e.body_text())?;
    let real = real.ok_or("the connection cannot be upgraded")?;
    let response = ws.on_failed_upgrade(|_| {}).on_upgrade(|_| async {});
    Ok((response, real))
}

/// One server→client frame, encoded whole: FIN set, unmasked.
pub(crate) fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    out.extend_from_slice(&header(opcode, payload.len()));
    out.extend_from_slice(payload);
    out.freeze()
}

/// A text frame of `json` (the feed's messages).
pub(crate) fn text_frame(json: &[u8]) -> Bytes {
    frame(TEXT, json)
}

fn header(opcode: u8, len: usize) -> Vec<u8> {
    let mut h = Vec::with_capacity(10);
    h.push(FIN | opcode);
    match len {
        0..=125 => h.push(len as u8),
        126..=0xFFFF => {
            h.push(126);
            h.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            h.push(127);
            h.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    h
}

fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut p = code.to_be_bytes().to_vec();
    // A control frame carries at most 125 bytes.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    p.extend_from_slice(&reason.as_bytes()[..end]);
    frame(CLOSE, &p)
}

/// What a client sent.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming {
    Text(String),
    Binary(Bytes),
    Ping(Bytes),
    Pong(Bytes),
    /// The peer's close, with its status code if it gave one.
    Close(Option<u16>),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum WsError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the peer closed the connection without a close frame")]
    Eof,
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("a text message is not valid UTF-8")]
    Utf8,
    #[error("a message is larger than {MAX_MESSAGE} bytes")]
    TooBig,
    #[error("the peer did not take our frames within {0:?}")]
    Stalled(Duration),
}

impl WsError {
    /// The close code to tell the peer, when it is still worth telling.
    fn close_code(&self) -> Option<u16> {
        match self {
            WsError::Protocol(_) => Some(PROTOCOL_ERROR),
            WsError::Utf8 => Some(INVALID_DATA),
            WsError::TooBig => Some(TOO_BIG),
            WsError::Io(_) | WsError::Eof | WsError::Stalled(_) => None,
        }
    }
}

/// One frame as parsed from the client, its payload unmasked.
struct Frame {
    fin: bool,
    opcode: u8,
    payload: Bytes,
}

/// Parses one whole frame off the front of `buf`, or `None` until there is one.
fn parse(buf: &mut BytesMut) -> Result<Option<Frame>, WsError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(WsError::Protocol("reserved bits set without an extension"));
    }
    let (fin, opcode) = (b0 & FIN != 0, b0 & 0x0F);
    if !matches!(opcode, CONTINUATION | TEXT | BINARY | CLOSE | PING | PONG) {
        return Err(WsError::Protocol("unknown opcode"));
    }
    if b1 & 0x80 == 0 {
        return Err(WsError::Protocol("a client frame must be masked"));
    }
    let (len, at) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (u64::from(n), 2),
    };
    if opcode >= CLOSE && (!fin || len > 125) {
        return Err(WsError::Protocol(
            "a control frame must be whole and at most 125 bytes",
        ));
    }
    if len > MAX_MESSAGE as u64 {
        return Err(WsError::TooBig);
    }
    let len = len as usize;
    if buf.len() < at + 4 + len {
        buf.reserve(at + 4 + len - buf.len());
        return Ok(None);
    }
    let mut key = [0u8; 4];
    key.copy_from_slice(&buf[at..at + 4]);
    buf.advance(at + 4);
    let mut payload = buf.split_to(len);
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
    Ok(Some(Frame {
        fin,
        opcode,
        payload: payload.freeze(),
    }))
}

/// An upgraded connection speaking WebSocket as the server.
pub(crate) struct WebSocket {
    io: TokioIo<Upgraded>,
    buf: BytesMut,
    /// A fragmented message being assembled: its opcode and the bytes so far.
    partial: Option<(u8, Vec<u8>)>,
    /// A peer that takes no bytes for this long is dropped.
    write_within: Duration,
}

impl WebSocket {
    pub(crate) fn new(io: Upgraded, write_within: Duration) -> WebSocket {
        WebSocket {
            io: TokioIo::new(io),
            buf: BytesMut::new(),
            partial: None,
            write_within,
        }
    }

    /// The next message or control frame from the client. Cancel-safe: a
    /// frame is consumed only whole.
    pub(crate) async fn recv(&mut self) -> Result<Incoming, WsError> {
        loop {
            while let Some(f) = parse(&mut self.buf)? {
                if let Some(m) = self.assemble(f)? {
                    return Ok(m);
                }
            }
            if self.buf.capacity() - self.buf.len() < READ_STEP {
                self.buf.reserve(READ_STEP);
            }
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Err(WsError::Eof);
            }
        }
    }

    fn assemble(&mut self, f: Frame) -> Result<Option<Incoming>, WsError> {
        match f.opcode {
            PING => return Ok(Some(Incoming::Ping(f.payload))),
            PONG => return Ok(Some(Incoming::Pong(f.payload))),
            CLOSE => {
                return match f.payload.len() {
                    0 => Ok(Some(Incoming::Close(None))),
                    1 => Err(WsError::Protocol("a close payload of one byte")),
                    _ => {
                        std::str::from_utf8(&f.payload[2..]).map_err(|_| WsError::Utf8)?;
                        let code = u16::from_be_bytes([f.payload[0], f.payload[1]]);
                        Ok(Some(Incoming::Close(Some(code))))
                    }
                };
            }
            _ => {}
        }
        let (opcode, data) = match (f.opcode, self.partial.take()) {
            (CONTINUATION, None) => {
                return Err(WsError::Protocol("a continuation with nothing to continue"));
            }
            (CONTINUATION, Some((op, mut so_far))) => {
                if so_far.len() + f.payload.len() > MAX_MESSAGE {
                    return Err(WsError::TooBig);
                }
                so_far.extend_from_slice(&f.payload);
                (op, so_far)
            }
            (_, Some(_)) => {
                return Err(WsError::Protocol("a new message before the last one ended"));
            }
            (op, None) if f.fin => {
                return Ok(Some(message(op, f.payload.to_vec())?));
            }
            (op, None) => (op, f.payload.to_vec()),
        };
        if f.fin {
            Ok(Some(message(opcode, data)?))
        } else {
            self.partial = Some((opcode, data));
            Ok(None)
        }
    }

    /// Writes `frames` whole, as few writes as the socket allows. Their
    /// bytes may be shared with other sockets: they are only borrowed.
    pub(crate) async fn send<F: AsRef<[u8]>>(&mut self, frames: &[F]) -> Result<(), WsError> {
        // Bytes of `frames` written so far, kept across the two attempts.
        let mut done = 0;
        // The socket nearly always takes everything at once. Only when it
        // does not is a timer armed: creating and dropping one takes a lock
        // of the runtime's timer wheel, per watcher per event otherwise.
        if let Some(r) = self.write_all(frames, &mut done).now_or_never() {
            return r;
        }
        let within = self.write_within;
        tokio::time::timeout(within, self.write_all(frames, &mut done))
            .await
            .map_err(|_| WsError::Stalled(within))?
    }

    /// Writes what is left of `frames` after their first `done` bytes,
    /// counting progress in `done`, so a dropped call is resumed by the next.
    async fn write_all<F: AsRef<[u8]>>(
        &mut self,
        frames: &[F],
        done: &mut usize,
    ) -> Result<(), WsError> {
        loop {
            // Skip what is written: whole frames, then part of one.
            let mut skip = *done;
            let mut rest = frames.iter().map(AsRef::as_ref);
            let first = loop {
                match rest.next() {
                    Some(f) if skip >= f.len() => skip -= f.len(),
                    Some(f) => break Some(&f[skip..]),
                    None => break None,
                }
            };
            let Some(first) = first else { break };
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            slices[0] = IoSlice::new(first);
            let mut k = 1;
            for (s, f) in slices[1..].iter_mut().zip(rest) {
                *s = IoSlice::new(f);
                k += 1;
            }
            // One frame (the usual case): a plain write, which the kernel
            // takes with less work than a one-element writev.
            let n = if k == 1 {
                self.io.write(first).await?
            } else {
                self.io.write_vectored(&slices[..k]).await?
            };
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero).into());
            }
            *done += n;
        }
        self.io.flush().await?;
        Ok(())
    }

    pub(crate) async fn send_text(&mut self, text: &str) -> Result<(), WsError> {
        self.send(&[frame(TEXT, text.as_bytes())]).await
    }

    pub(crate) async fn ping(&mut self) -> Result<(), WsError> {
        self.send(&[frame(PING, b"")]).await
    }

    /// Answers a ping with its payload.
    pub(crate) async fn pong(&mut self, payload: &[u8]) -> Result<(), WsError> {
        self.send(&[frame(PONG, payload)]).await
    }

    /// The peer closed: echo its code (RFC 6455 §5.5.1) and end.
    pub(crate) async fn close_reply(mut self, code: Option<u16>) {
        let f = match code {
            // 1005 and 1006 are never sent on the wire.
            Some(c) if c != 1005 && c != 1006 => close_frame(c, ""),
            _ => frame(CLOSE, b""),
        };
        let _ = self.send(&[f]).await;
        let _ = self.io.shutdown().await;
    }

    /// We close: send our close, wait a little for the peer's, then end.
    pub(crate) async fn close(mut self, code: u16, reason: &str) {
        if self.send(&[close_frame(code, reason)]).await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(CLOSE_WITHIN, async {
            while let Ok(m) = self.recv().await {
                if matches!(m, Incoming::Close(_)) {
                    break;
                }
            }
        })
        .await;
        let _ = self.io.shutdown().await;
    }

    /// Ends the connection after a read error, telling the peer why when
    /// the connection can still carry it.
    pub(crate) async fn fail(self, e: &WsError) {
        if let Some(code) = e.close_code() {
            self.close(code, &e.to_string()).await;
        }
    }
}

fn message(opcode: u8, data: Vec<u8>) -> Result<Incoming, WsError> {
    if opcode == TEXT {
        String::from_utf8(data)
            .map(Incoming::Text)
            .map_err(|_| WsError::Utf8)
    } else {
        Ok(Incoming::Binary(data.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_header(len: usize, expect: &[u8]) {
        let f = frame(TEXT, &vec![b'x'; len]);
        assert_eq!(&f[..expect.len()], expect, "header of a {len}-byte frame");
        assert_eq!(f.len(), expect.len() + len);
    }

    #[test]
    fn lengths_pick_the_shortest_encoding() {
        check_header(0, &[0x81, 0]);
        check_header(125, &[0x81, 125]);
        check_header(126, &[0x81, 126, 0, 126]);
        check_header(65535, &[0x81, 126, 0xFF, 0xFF]);
        check_header(65536, &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    fn masked(b0: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
        let mut v = vec![b0];
        match payload.len() {
            n @ 0..=125 => v.push(0x80 | n as u8),
            n @ 126..=0xFFFF => {
                v.push(0x80 | 126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                v.push(0x80 | 127);
                v.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        v.extend_from_slice(&key);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        v
    }

    #[test]
    fn masked_frames_parse_only_when_whole() {
        for len in [0, 5, 125, 126, 65535, 65536] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let wire = masked(0x82, &payload, [1, 2, 3, 4]);
            let mut buf = BytesMut::from(&wire[..wire.len() - 1]);
            assert!(parse(&mut buf).unwrap().is_none(), "{len}: not yet whole");
            buf.extend_from_slice(&wire[wire.len() - 1..]);
            let f = parse(&mut buf).unwrap().expect("whole");
            assert_eq!((f.fin, f.opcode), (true, BINARY));
            assert_eq!(&f.payload[..], &payload[..], "{len}: unmasked payload");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn unmasked_and_malformed_client_frames_are_refused() {
        let mut unmasked = BytesMut::from(&[0x81, 2, b'h', b'i'][..]);
        assert!(matches!(parse(&mut unmasked), Err(WsError::Protocol(_))));
        let mut rsv = BytesMut::from(&masked(0xC1, b"hi", [9; 4])[..]);
        assert!(matches!(parse(&mut rsv), Err(WsError::Protocol(_))));
        let mut opcode = BytesMut::from(&masked(0x83, b"hi", [9; 4])[..]);
        assert!(matches!(parse(&mut opcode), Err(WsError::Protocol(_))));
        let mut long_ping = BytesMut::from(&masked(0x89, &[0; 126], [9; 4])[..]);
        assert!(matches!(parse(&mut long_ping), Err(WsError::Protocol(_))));
        let mut split_ping = BytesMut::from(&masked(0x09, b"", [9; 4])[..]);
        assert!(matches!(parse(&mut split_ping), Err(WsError::Protocol(_))));
        let mut huge = BytesMut::from(&[0x82, 0xFF, 0, 0, 0, 0, 0x10, 0, 0, 0][..]);
        assert!(matches!(parse(&mut huge), Err(WsError::TooBig)));
    }

    #[test]
    fn close_reasons_stay_within_a_control_frame() {
        let f = close_frame(POLICY, &"é".repeat(100));
        assert!(f.len() - 2 <= 125);
        assert_eq!(&f[2..4], &POLICY.to_be_bytes());
        assert!(std::str::from_utf8(&f[4..]).is_ok());
    }
}
