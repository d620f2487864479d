//! The feed's WebSocket on the wire, spoken byte by byte over a raw TCP
//! socket: the handshake, unmasked server frames of every length encoding,
//! masked client frames, ping/pong, both closing handshakes, refusal of
//! unmasked client frames, and a peer that stops answering pings.

use muster_server::Config;
use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;

async fn server(ping: Duration) -> common::Server {
    let mut config = Config::for_tests();
    config.ping = ping;
    common::start_ready(config).await
}

/// The RFC 6455 §1.3 example key and its accept value.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Opens `/api/v1/watch{query}` and checks the 101.
async fn open(addr: &str, query: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /api/v1/watch{query} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(s.read_u8().await.unwrap());
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains(&format!(
            "sec-websocket-accept: {}",
            ACCEPT.to_ascii_lowercase()
        )),
        "{head}"
    );
    s
}

/// One server frame: (fin, opcode, payload); server frames are never masked.
async fn frame(s: &mut TcpStream) -> (bool, u8, Vec<u8>) {
    let read = async {
        let b0 = s.read_u8().await.unwrap();
        let b1 = s.read_u8().await.unwrap();
        assert_eq!(b1 & 0x80, 0, "a server frame must not be masked");
        let len = match b1 & 0x7F {
            126 => {
                let n = u64::from(s.read_u16().await.unwrap());
                assert!(n >= 126, "126..=65535 only for lengths that need it");
                n
            }
            127 => {
                let n = s.read_u64().await.unwrap();
                assert!(n > 0xFFFF, "64-bit lengths only for lengths that need it");
                n
            }
            n => u64::from(n),
        };
        let mut payload = vec![0; len as usize];
        s.read_exact(&mut payload).await.unwrap();
        (b0 & 0x80 != 0, b0 & 0x0F, payload)
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("a frame")
}

/// The next text frame as JSON, skipping the server's pings.
async fn event(s: &mut TcpStream) -> Value {
    loop {
        let (fin, op, p) = frame(s).await;
        assert!(fin);
        if op == 0x1 {
            return serde_json::from_slice(&p).unwrap();
        }
        assert_eq!(op, 0x9, "only pings besides events");
    }
}

/// A client frame, masked.
fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mut v = vec![b0];
    match payload.len() {
        n @ 0..=125 => v.push(0x80 | n as u8),
        n => {
            v.push(0x80 | 126);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    v.extend_from_slice(&key);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    v
}

/// A custom event for `service` whose body is a string of `len` bytes.
async fn custom(srv: &common::Server, service: &str, len: usize) {
    let r = srv
        .http
        .post(format!("{}/api/v1/events", srv.base))
        .json(&serde_json::json!({"type": "t", "services": [service], "body": "x".repeat(len)}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
}

async fn eof(s: &mut TcpStream) {
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("the server ends the connection")
        .unwrap();
    assert!(rest.is_empty(), "nothing after the close: {rest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_as_unmasked_text_frames_of_every_length_encoding() {
    let srv = server(Duration::from_secs(10)).await;
    let mut s = open(&srv.addr, "?services=wire").await;
    let snap = event(&mut s).await;
    assert_eq!(snap["kind"], "snapshot");
    // Events are past 125 bytes: the 16-bit length, then the 64-bit one
    // (a custom body near its 64 KiB limit makes an event past 65535 bytes).
    for (len, long) in [(10, false), (65_500, true)] {
        custom(&srv, "wire", len).await;
        let (fin, op, p) = frame(&mut s).await;
        assert!(fin && op == 0x1);
        assert_eq!(p.len() > 0xFFFF, long, "{} bytes", p.len());
        let e: Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(e["kind"], "custom");
        assert_eq!(e["body"].as_str().map(str::len), Some(len));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_masked_ping_is_answered_and_a_close_is_echoed() {
    let srv = server(Duration::from_secs(10)).await;
    let mut s = open(&srv.addr, "?services=wire").await;
    event(&mut s).await;
    // A ping split over two writes: parsed only once whole.
    let ping = masked(0x89, b"are you there");
    s.write_all(&ping[..3]).await.unwrap();
    s.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(&ping[3..]).await.unwrap();
    assert_eq!(frame(&mut s).await, (true, 0xA, b"are you there".to_vec()));
    // A fragmented text message (ignored by the feed) does not break framing.
    s.write_all(&masked(0x01, b"hel")).await.unwrap();
    s.write_all(&masked(0x80, b"lo")).await.unwrap();
    s.write_all(&masked(0x89, b"again")).await.unwrap();
    assert_eq!(frame(&mut s).await, (true, 0xA, b"again".to_vec()));
    // Close with 1000 and a reason: the server echoes the code, then ends.
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"bye");
    s.write_all(&masked(0x88, &close)).await.unwrap();
    let (fin, op, p) = frame(&mut s).await;
    assert!(fin);
    assert_eq!((op, &p[..2]), (0x8, &1000u16.to_be_bytes()[..]));
    eof(&mut s).await;
}

/// The watcher's loop polls the socket and its ping timer only on wake-ups
/// that bring no event: with events streaming in, a client's ping is still
/// answered, the server still pings, and a close still ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_and_closes_are_served_while_events_stream() {
    let srv = server(Duration::from_millis(150)).await;
    let mut s = open(&srv.addr, "?services=wire").await;
    event(&mut s).await;
    // Two senders back to back: events as fast as the server takes them, so
    // most of the watcher's wake-ups bring one.
    let senders: Vec<_> = (0..2)
        .map(|_| {
            let (http, base) = (srv.http.clone(), srv.base.clone());
            tokio::spawn(async move {
                loop {
                    let body = serde_json::json!({"type": "t", "services": ["wire"], "body": "x"});
                    let _ = http
                        .post(format!("{base}/api/v1/events"))
                        .json(&body)
                        .send()
                        .await;
                }
            })
        })
        .collect();
    let (mut events, mut pings, mut pongs) = (0, 0, 0);
    let start = tokio::time::Instant::now();
    let mut asked = false;
    while start.elapsed() < Duration::from_millis(1500) || pongs == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no pong in 10 s ({events} events, {pings} pings)"
        );
        if !asked && events >= 10 {
            s.write_all(&masked(0x89, b"still there?")).await.unwrap();
            asked = true;
        }
        let (_, op, p) = frame(&mut s).await;
        match op {
            0x1 => events += 1,
            0x9 => {
                pings += 1;
                s.write_all(&masked(0x8A, &p)).await.unwrap();
            }
            0xA => {
                assert_eq!(p, b"still there?");
                pongs += 1;
            }
            op => panic!("unexpected opcode {op:#x}"),
        }
    }
    assert!(events >= 20, "{events} events");
    // One every 150 ms: about 10, unless the timer was lost under the events.
    assert!(pings >= 5, "pinged {pings} times among {events} events");
    assert_eq!(pongs, 1);
    s.write_all(&masked(0x88, &1000u16.to_be_bytes()))
        .await
        .unwrap();
    // Events may still be on their way before the close's echo.
    loop {
        let (_, op, p) = frame(&mut s).await;
        if op == 0x8 {
            assert_eq!(&p[..2], &1000u16.to_be_bytes()[..]);
            break;
        }
    }
    senders.iter().for_each(|t| t.abort());
    eof(&mut s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmasked_client_frame_is_a_protocol_error() {
    let srv = server(Duration::from_secs(10)).await;
    let mut s = open(&srv.addr, "?services=wire").await;
    event(&mut s).await;
    s.write_all(&[0x89, 0]).await.unwrap();
    let (_, op, p) = frame(&mut s).await;
    assert_eq!((op, &p[..2]), (0x8, &1002u16.to_be_bytes()[..]));
    // Our close ends the handshake.
    s.write_all(&masked(0x88, &1002u16.to_be_bytes()))
        .await
        .unwrap();
    eof(&mut s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_answers_no_ping_is_dropped() {
    let srv = server(Duration::from_millis(200)).await;
    let mut s = open(&srv.addr, "?services=wire").await;
    event(&mut s).await;
    // We read the pings but never answer: after three silent intervals the
    // server ends the connection.
    let start = tokio::time::Instant::now();
    let mut pings = 0;
    loop {
        let mut b0 = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b0))
            .await
            .expect("the server acts within seconds")
            .unwrap();
        if n == 0 {
            break;
        }
        assert_eq!(b0[0], 0x89, "only pings");
        assert_eq!(s.read_u8().await.unwrap(), 0, "empty ping");
        pings += 1;
    }
    assert!(pings >= 2, "pinged {pings} times before giving up");
    assert!(start.elapsed() >= Duration::from_millis(500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_handshake_is_refused_before_any_upgrade() {
    let srv = server(Duration::from_secs(10)).await;
    let get = |version: &'static str, key: Option<&'static str>| {
        let mut req = srv
            .http
            .get(format!("{}/api/v1/watch?services=wire", srv.base))
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", version);
        if let Some(k) = key {
            req = req.header("sec-websocket-key", k);
        }
        req.send()
    };
    for (version, key) in [("8", Some(KEY)), ("13", None)] {
        let r = get(version, key).await.unwrap();
        assert_eq!(r.status(), 400, "version {version}, key {key:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "invalid");
    }
    // The refused attempts left no watcher behind.
    let metrics = srv.metrics().await;
    let watchers = metrics
        .lines()
        .find(|l| l.starts_with("muster_feed_watchers") || l.starts_with("muster_watchers"))
        .unwrap_or_else(|| panic!("a watcher gauge in {metrics}"));
    assert!(watchers.ends_with(" 0"), "{watchers}");
}
