//! MQTT probes: an MQTT 3.1.1 CONNECT answered by a CONNACK with return
//! code 0 is passing; any other code is critical and reported.
//!
//! Why the packets are written here rather than with `rumqttc`: the probe
//! needs one CONNECT (a dozen fixed bytes and a client id, MQTT 3.1.1
//! §3.1), one 4-byte CONNACK (§3.2) and a 2-byte DISCONNECT (§3.14).
//! rumqttc is a whole client (event loop, keep-alive pinger, reconnects,
//! in-flight state) that dials the broker by host name itself, which would
//! bypass the probe target guard's check of the resolved addresses, and it
//! brings its own TLS stack. Writing ~20 bytes on a connection the guard
//! made is smaller and keeps one code path for every probe; the tests run
//! it against a real Mosquitto broker.
//!
//! `mqtts://` is not supported yet and reports a critical outcome saying
//! so: it needs a TLS client configuration (roots, verification, the
//! `tls_skip_verify` question) that HTTP checks keep inside reqwest.

use super::guard::Guard;
use super::{ProbeOutcome, tcp};
use muster_core::Status;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout_at};

const DEFAULT_PORT: u16 = 1883;
/// Keep-alive announced in CONNECT. The probe disconnects long before it
/// matters; it is not 0 because some brokers refuse "no keep-alive".
const KEEP_ALIVE_SECS: u16 = 30;
/// DISCONNECT: packet type 14, no payload.
const DISCONNECT: [u8; 2] = [0xE0, 0x00];

pub(crate) async fn probe(
    guard: &Guard,
    target: &str,
    deadline: Instant,
    timeout: Duration,
) -> ProbeOutcome {
    let what = format!("MQTT CONNECT to {target}");
    let (host, port) = match parse_target(target) {
        Ok(hp) => hp,
        Err(m) => return ProbeOutcome::failed(format!("{what}: {m}")),
    };
    let mut stream = match tcp::connect_host(guard, &host, port, deadline).await {
        Ok((stream, _addr)) => stream,
        Err(e) => return e.into_outcome(&what, timeout),
    };
    let exchange = async {
        stream.write_all(&connect_packet(&client_id())).await?;
        let mut connack = [0u8; 4];
        stream.read_exact(&mut connack).await?;
        Ok::<_, std::io::Error>(connack)
    };
    let connack = match timeout_at(deadline, exchange).await {
        Err(_) => return ProbeOutcome::timed_out(&what, timeout),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return ProbeOutcome::failed(format!(
                "{what}: the broker closed the connection without a CONNACK"
            ));
        }
        Ok(Err(e)) => return ProbeOutcome::failed(format!("{what}: {e}")),
        Ok(Ok(bytes)) => bytes,
    };
    let Some(code) = parse_connack(connack) else {
        return ProbeOutcome::failed(format!(
            "{what}: the answer is not an MQTT 3.1.1 CONNACK ({connack:02x?})"
        ));
    };
    if code == 0 {
        // A polite goodbye so the broker does not log a lost client. Its
        // failure changes nothing: the broker already said yes.
        let _ = timeout_at(deadline, stream.write_all(&DISCONNECT)).await;
        ProbeOutcome::answered(Status::Passing, Some(0), format!("{what}: accepted"))
    } else {
        ProbeOutcome::answered(
            Status::Critical,
            Some(u16::from(code)),
            format!("{what}: refused with code {code} ({})", refusal(code)),
        )
    }
}

/// `mqtt://host:port`, `tcp://host:port` (port defaults to 1883).
fn parse_target(target: &str) -> Result<(String, u16), String> {
    let url = url::Url::parse(target).map_err(|e| format!("invalid URL: {e}"))?;
    match url.scheme() {
        "mqtt" | "tcp" => {}
        "mqtts" => return Err("mqtts (MQTT over TLS) is not supported yet".into()),
        other => return Err(format!("unsupported scheme {other:?}; use mqtt://")),
    }
    let host = match url.host() {
        Some(url::Host::Domain(d)) => d.to_string(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => return Err("the URL has no host".into()),
    };
    Ok((host, url.port().unwrap_or(DEFAULT_PORT)))
}

/// A short client id, unique enough that two probes never take over each
/// other's session (a broker drops the older of two equal ids). 3.1.1
/// brokers must accept ids of up to 23 characters; this one has 21.
fn client_id() -> String {
    // RandomState is seeded from the OS; no RNG crate needed for 32 bits.
    let n = RandomState::new().hash_one(Instant::now()) as u32;
    format!("muster-probe-{n:08x}")
}

/// CONNECT with the clean-session flag and no credentials (§3.1).
fn connect_packet(client_id: &str) -> Vec<u8> {
    let id = client_id.as_bytes();
    // Variable header (10 bytes) + the id's length prefix (2) + the id.
    // The remaining length fits one byte while that stays under 128.
    let remaining = 10 + 2 + id.len();
    debug_assert!(remaining < 128, "client id too long for a one-byte length");
    let mut p = Vec::with_capacity(2 + remaining);
    p.push(0x10); // CONNECT
    p.push(remaining as u8);
    p.extend_from_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T']); // protocol name
    p.push(0x04); // protocol level 4 = 3.1.1
    p.push(0x02); // flags: clean session only
    p.extend_from_slice(&KEEP_ALIVE_SECS.to_be_bytes());
    p.extend_from_slice(&(id.len() as u16).to_be_bytes());
    p.extend_from_slice(id);
    p
}

/// The return code of a CONNACK, or None if these bytes are not one.
fn parse_connack(bytes: [u8; 4]) -> Option<u8> {
    match bytes {
        [0x20, 0x02, _session_present, code] => Some(code),
        _ => None,
    }
}

/// MQTT 3.1.1 §3.2.2.3.
fn refusal(code: u8) -> &'static str {
    match code {
        1 => "unacceptable protocol version",
        2 => "identifier rejected",
        3 => "server unavailable",
        4 => "bad user name or password",
        5 => "not authorized",
        _ => "reserved code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_packet_bytes() {
        let p = connect_packet("abc");
        assert_eq!(
            p,
            [
                0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30, 0, 3, b'a', b'b', b'c'
            ]
        );
        let id = client_id();
        assert!(id.starts_with("muster-probe-") && id.len() <= 23, "{id}");
    }

    #[test]
    fn connack_parsing() {
        assert_eq!(parse_connack([0x20, 2, 0, 0]), Some(0));
        assert_eq!(parse_connack([0x20, 2, 1, 5]), Some(5));
        assert_eq!(parse_connack([0x30, 2, 0, 0]), None);
        assert_eq!(parse_connack([0x20, 3, 0, 0]), None);
    }

    #[test]
    fn targets() {
        for (input, expect) in [
            ("mqtt://broker:1884", Ok(("broker", 1884))),
            ("tcp://broker", Ok(("broker", 1883))),
            ("mqtt://10.0.0.1", Ok(("10.0.0.1", 1883))),
            ("mqtt://[::1]:1885", Ok(("::1", 1885))),
            ("mqtts://broker:8883", Err("not supported yet")),
            ("http://broker", Err("unsupported scheme")),
        ] {
            match (parse_target(input), expect) {
                (Ok((h, p)), Ok((eh, ep))) => assert_eq!((h.as_str(), p), (eh, ep), "{input}"),
                (Err(m), Err(e)) => assert!(m.contains(e), "{input}: {m}"),
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }
}
