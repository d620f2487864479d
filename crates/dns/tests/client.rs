//! The DNS server as a DNS client library sees it: hickory's client over
//! UDP and TCP against a real server on a real registry, and raw datagrams
//! for what no well-behaved client sends.

mod common;

use common::{Dns, config, many, seeded, serve};
use hickory_net::client::{Client, ClientHandle};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::udp::UdpClientStream;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use muster_dns::DnsConfig;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Copy, PartialEq)]
enum Via {
    Udp,
    /// UDP without EDNS: answers must fit 512 bytes.
    UdpPlain,
    Tcp,
}

async fn ask_via(addr: SocketAddr, name: &str, rtype: RecordType, via: Via) -> Message {
    let provider = TokioRuntimeProvider::default();
    // The background half multiplexes requests over the socket.
    let mut client = match via {
        Via::Udp | Via::UdpPlain => {
            let stream = UdpClientStream::builder(addr, provider).build();
            let (client, bg) = Client::<TokioRuntimeProvider>::from_sender(stream);
            tokio::spawn(bg);
            client
        }
        Via::Tcp => {
            let (connect, handle) = TcpClientStream::new(addr, None, None, provider);
            let (client, bg) = Client::<TokioRuntimeProvider>::new(connect.await.unwrap(), handle);
            tokio::spawn(bg);
            client
        }
    };
    if via == Via::UdpPlain {
        client.disable_edns();
    }
    let name = Name::from_str(name).unwrap();
    client
        .query(name, DNSClass::IN, rtype)
        .await
        .unwrap_or_else(|e| panic!("{rtype} query failed: {e}"))
        .into_message()
}

async fn ask(dns: &Dns, name: &str, rtype: RecordType) -> Message {
    ask_via(dns.addr, name, rtype, Via::Udp).await
}

/// The addresses of the A/AAAA answers, sorted.
fn ips(m: &Message) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `(target, port, weight, priority)` of the SRV answers, sorted.
fn srvs(m: &Message) -> Vec<(String, u16, u16, u16)> {
    let mut out: Vec<_> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((s.target.to_string(), s.port, s.weight, s.priority)),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

/// `name → address` of the additional section, sorted.
fn additionals(m: &Message) -> Vec<(String, IpAddr)> {
    let mut out: Vec<_> = m
        .additionals
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some((r.name.to_string(), IpAddr::V4(a.0))),
            RData::AAAA(a) => Some((r.name.to_string(), IpAddr::V6(a.0))),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn a_and_aaaa_answer_passing_and_warning_instances_over_udp_and_tcp() {
    let dns = serve(Some(seeded().await), config()).await;
    for via in [Via::Udp, Via::Tcp] {
        let m = ask_via(dns.addr, "web.service.muster.", RecordType::A, via).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        // Not web-c (critical), web-d (maintenance), nor web-f (a host name).
        assert_eq!(ips(&m), [ip("10.0.0.1"), ip("10.0.0.2")]);
        assert!(m.answers.iter().all(|r| r.ttl == 7), "the configured ttl");
        let m = ask_via(dns.addr, "web.service.muster.", RecordType::AAAA, via).await;
        assert_eq!(ips(&m), [ip("2001:db8::5")]);
    }
    // ANY: both families.
    let m = ask(&dns, "web.service.muster.", RecordType::ANY).await;
    assert_eq!(ips(&m), [ip("10.0.0.1"), ip("10.0.0.2"), ip("2001:db8::5")]);
}

#[tokio::test]
async fn srv_names_targets_and_carries_their_addresses() {
    let dns = serve(Some(seeded().await), config()).await;
    let m = ask(&dns, "web.service.muster.", RecordType::SRV).await;
    assert_eq!(
        srvs(&m),
        [
            ("0a000001.addr.muster.".to_string(), 80, 10, 1),
            ("0a000002.addr.muster.".to_string(), 81, 1, 1),
            (
                "20010db8000000000000000000000005.addr.muster.".to_string(),
                8080,
                3,
                1
            ),
            ("db.example.org.".to_string(), 9000, 1, 1),
        ]
    );
    assert_eq!(
        additionals(&m),
        [
            ("0a000001.addr.muster.".to_string(), ip("10.0.0.1")),
            ("0a000002.addr.muster.".to_string(), ip("10.0.0.2")),
            (
                "20010db8000000000000000000000005.addr.muster.".to_string(),
                ip("2001:db8::5")
            ),
        ]
    );
    // The target names resolve on their own too.
    let m = ask(&dns, "0a000001.addr.muster.", RecordType::A).await;
    assert_eq!(ips(&m), [ip("10.0.0.1")]);
    let m = ask(
        &dns,
        "20010db8000000000000000000000005.addr.muster.",
        RecordType::AAAA,
    )
    .await;
    assert_eq!(ips(&m), [ip("2001:db8::5")]);
}

#[tokio::test]
async fn tags_rfc2782_dotted_services_and_case_are_understood() {
    let dns = serve(Some(seeded().await), config()).await;
    let m = ask(&dns, "v2.web.service.muster.", RecordType::A).await;
    assert_eq!(
        ips(&m),
        [ip("10.0.0.2")],
        "critical and maintenance left out"
    );
    let m = ask(&dns, "v2.web.service.muster.", RecordType::AAAA).await;
    assert_eq!(ips(&m), [ip("2001:db8::5")]);
    // Tags and names compare without case.
    let m = ask(&dns, "PRIMARY.Web.SERVICE.Muster.", RecordType::A).await;
    assert_eq!(ips(&m), [ip("10.0.0.1")]);

    let all = srvs(&ask(&dns, "web.service.muster.", RecordType::SRV).await);
    let m = ask(&dns, "_web._tcp.service.muster.", RecordType::SRV).await;
    assert_eq!(srvs(&m), all, "_tcp: any tag");
    let m = ask(&dns, "_web._v2.service.muster.", RecordType::SRV).await;
    let ports: Vec<u16> = srvs(&m).iter().map(|s| s.1).collect();
    assert_eq!(ports, [81, 8080]);

    let m = ask(&dns, "db.main.service.muster.", RecordType::A).await;
    assert_eq!(ips(&m), [ip("10.0.2.1")], "a service name with a dot");
    let m = ask(&dns, "ro.db.main.service.muster.", RecordType::A).await;
    assert_eq!(ips(&m), [ip("10.0.2.1")]);
}

#[tokio::test]
async fn the_consul_domain_is_answered_too() {
    let dns = serve(Some(seeded().await), config()).await;
    let m = ask(&dns, "web.service.consul.", RecordType::A).await;
    assert_eq!(ips(&m), [ip("10.0.0.1"), ip("10.0.0.2")]);
    let m = ask(&dns, "_web._tcp.service.consul.", RecordType::SRV).await;
    assert!(
        srvs(&m).iter().any(|s| s.0 == "0a000001.addr.consul."),
        "targets in the domain asked: {:?}",
        srvs(&m)
    );
    // A configured domain replaces muster., consul. stays.
    let custom = DnsConfig {
        domain: "sd.example.".into(),
        ..config()
    };
    let dns = serve(Some(seeded().await), custom).await;
    let m = ask(&dns, "web.service.sd.example.", RecordType::A).await;
    assert_eq!(ips(&m).len(), 2);
    let m = ask(&dns, "web.service.consul.", RecordType::A).await;
    assert_eq!(ips(&m).len(), 2);
    let m = ask(&dns, "web.service.muster.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
}

#[tokio::test]
async fn unknown_services_are_nxdomain_and_known_ones_without_answers_are_empty() {
    let dns = serve(Some(seeded().await), config()).await;
    for name in [
        "nope.service.muster.",
        "v9.nope.service.muster.",
        "web.node.muster.",
    ] {
        let m = ask(&dns, name, RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert!(m.answers.is_empty());
        assert!(
            matches!(m.authorities.first().map(|r| &r.data), Some(RData::SOA(_))),
            "{name}: the SOA lets resolvers cache the absence"
        );
    }
    for (name, rtype) in [
        ("down.service.muster.", RecordType::A), // only a critical instance
        ("empty.service.muster.", RecordType::A), // a definition, no instance
        ("v9.web.service.muster.", RecordType::A), // no instance has the tag
        ("web.service.muster.", RecordType::MX), // no such records
        ("muster.", RecordType::A),
    ] {
        let m = ask(&dns, name, rtype).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
        assert!(m.answers.is_empty(), "{name}: {:?}", m.answers);
    }
    let m = ask(&dns, "muster.", RecordType::SOA).await;
    assert!(matches!(m.answers[0].data, RData::SOA(_)));
    // Not ours: we do not recurse.
    let m = ask(&dns, "example.org.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
}

#[tokio::test]
async fn only_passing_leaves_warning_instances_out() {
    let strict = DnsConfig {
        only_passing: true,
        ..config()
    };
    let dns = serve(Some(seeded().await), strict).await;
    let m = ask(&dns, "web.service.muster.", RecordType::A).await;
    assert_eq!(ips(&m), [ip("10.0.0.1")]);
    let m = ask(&dns, "web.service.muster.", RecordType::SRV).await;
    assert!(srvs(&m).iter().all(|s| s.1 != 81), "{:?}", srvs(&m));
}

#[tokio::test]
async fn answers_follow_the_registry() {
    let reg = seeded().await;
    let dns = serve(Some(reg.clone()), config()).await;
    let m = ask(&dns, "web.service.muster.", RecordType::A).await;
    assert_eq!(ips(&m).len(), 2);
    common::report(&reg, "web", "web-c", "passing").await;
    let m = ask(&dns, "web.service.muster.", RecordType::A).await;
    assert_eq!(ips(&m), [ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3")]);
}

#[tokio::test]
async fn a_big_answer_is_truncated_over_udp_and_whole_over_tcp() {
    let reg = seeded().await;
    many(&reg, "big", 60).await;
    let dns = serve(Some(reg), config()).await;
    let m = ask_via(
        dns.addr,
        "big.service.muster.",
        RecordType::A,
        Via::UdpPlain,
    )
    .await;
    assert!(m.metadata.truncation, "60 A records do not fit 512 bytes");
    assert!(
        !m.answers.is_empty() && m.answers.len() < 60,
        "{}",
        m.answers.len()
    );
    let m = ask_via(dns.addr, "big.service.muster.", RecordType::A, Via::Tcp).await;
    assert!(!m.metadata.truncation);
    assert_eq!(ips(&m).len(), 60);
    // SRV with its additional records is larger still; TCP carries it all.
    let m = ask_via(dns.addr, "big.service.muster.", RecordType::SRV, Via::Udp).await;
    assert!(m.metadata.truncation);
    let m = ask_via(dns.addr, "big.service.muster.", RecordType::SRV, Via::Tcp).await;
    assert_eq!((srvs(&m).len(), additionals(&m).len()), (60, 60));
}

#[tokio::test]
async fn answers_are_shuffled() {
    let reg = seeded().await;
    many(&reg, "big", 20).await;
    let dns = serve(Some(reg), config()).await;
    let order =
        |m: Message| -> Vec<String> { m.answers.iter().map(|r| r.data.to_string()).collect() };
    let first = order(ask(&dns, "big.service.muster.", RecordType::A).await);
    let mut differed = false;
    // 20! orders: two equal in a row by chance is all but impossible.
    for _ in 0..10 {
        if order(ask(&dns, "big.service.muster.", RecordType::A).await) != first {
            differed = true;
            break;
        }
    }
    assert!(differed, "ten answers came back in the same order");
}

#[tokio::test]
async fn before_the_registry_is_ready_queries_get_servfail() {
    let dns = serve(None, config()).await;
    let m = ask(&dns, "web.service.muster.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
}

/// One raw datagram to the server and its raw answer.
async fn raw_udp(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(bytes, addr).await.unwrap();
    let mut buf = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.recv(&mut buf))
        .await
        .expect("no answer within 5s")
        .unwrap();
    buf.truncate(n);
    buf
}

/// A query header (id 0x1234, one question) followed by a broken name.
const GARBAGE: &[u8] = &[
    0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0x3f, b'x', b'y', 0xff, 0xfe,
];

#[tokio::test]
async fn malformed_queries_get_formerr_and_the_server_keeps_answering() {
    let dns = serve(Some(seeded().await), config()).await;
    let answer = raw_udp(dns.addr, GARBAGE).await;
    let m = Message::from_vec(&answer).unwrap();
    assert_eq!(m.metadata.id, 0x1234);
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);

    // Random bytes of random lengths (queries, by their header bit), and
    // datagrams too short to carry a header (no answer possible).
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    for i in 0..300 {
        let mut junk: Vec<u8> = (0..rng.usize(0..600)).map(|_| rng.u8(..)).collect();
        if let Some(flags) = junk.get_mut(2) {
            *flags &= 0x7f;
        }
        if i % 10 == 0 {
            junk.truncate(5);
        }
        s.send_to(&junk, dns.addr).await.unwrap();
    }
    let m = ask(&dns, "web.service.muster.", RecordType::A).await;
    assert_eq!(ips(&m).len(), 2, "still answering");

    // Over TCP too, on the same connection.
    let mut tcp = tokio::net::TcpStream::connect(dns.addr).await.unwrap();
    for _ in 0..2 {
        tcp.write_all(&(GARBAGE.len() as u16).to_be_bytes())
            .await
            .unwrap();
        tcp.write_all(GARBAGE).await.unwrap();
        let len = tcp.read_u16().await.unwrap();
        let mut buf = vec![0; usize::from(len)];
        tcp.read_exact(&mut buf).await.unwrap();
        let m = Message::from_vec(&buf).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    }
}

#[tokio::test]
async fn the_edns_size_the_client_advertises_is_honoured() {
    let reg = seeded().await;
    many(&reg, "big", 60).await;
    let dns = serve(Some(reg), config()).await;
    // hickory's client advertises more than 512 bytes: all 60 fit.
    let m = ask(&dns, "big.service.muster.", RecordType::A).await;
    assert!(!m.metadata.truncation);
    assert_eq!(ips(&m).len(), 60);
    assert!(m.edns.is_some(), "EDNS is answered with EDNS");
    let m = ask_via(
        dns.addr,
        "big.service.muster.",
        RecordType::A,
        Via::UdpPlain,
    )
    .await;
    assert!(m.edns.is_none(), "and plain DNS with plain DNS");
}
