//! Property tests for DNS query parsing. The name grammar (`names.rs`) and
//! the wire decoding (`wire.rs`) are private, so they are driven through the
//! one public door every datagram takes: [`Answerer::answer`], which decodes
//! the message, parses its question name and looks it up. Whatever the
//! bytes, it must not panic, and a query with a readable header must get a
//! well-formed response with the same id.

mod common;

use hickory_proto::op::Message;
use muster_dns::{Answerer, DnsConfig, Transport};
use proptest::prelude::*;
use std::sync::OnceLock;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Integration tests have no lib.rs to store failures beside; a
        // failure prints its minimal input instead.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// An answerer over the seeded registry of `common` (services `web`,
/// `down`, `empty`, `db.main`), and one whose registry is not ready yet.
/// The runtime stays alive for the registry's background tasks.
fn answerers() -> &'static (tokio::runtime::Runtime, Answerer, Answerer) {
    static ANSWERERS: OnceLock<(tokio::runtime::Runtime, Answerer, Answerer)> = OnceLock::new();
    ANSWERERS.get_or_init(|| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let registry = rt.block_on(common::seeded());
        let config = DnsConfig {
            domain: "sd.example.org.".into(),
            ..DnsConfig::default()
        };
        let ready = Answerer::new(&config);
        ready.set_registry(registry);
        let not_ready = Answerer::new(&DnsConfig::default());
        (rt, ready, not_ready)
    })
}

/// Labels that mean something to the name parser, and arbitrary bytes.
fn label() -> impl Strategy<Value = Vec<u8>> {
    let words = proptest::sample::select(vec![
        "service",
        "SERVICE",
        "addr",
        "_tcp",
        "_udp",
        "_web",
        "_db",
        "web",
        "WEB",
        "db",
        "main",
        "down",
        "empty",
        "v1",
        "v2",
        "Primary",
        "_",
        "__",
        "muster",
        "consul",
        "sd",
        "example",
        "org",
        "0a000001",
        "0A000002",
        "20010db8000000000000000000000005",
        "zz000001",
    ])
    .prop_map(|w| w.as_bytes().to_vec());
    prop_oneof![
        6 => words,
        2 => "[0-9a-fA-F]{1,33}".prop_map(String::into_bytes),
        1 => proptest::collection::vec(any::<u8>(), 0..70),
    ]
}

/// A question name: some labels, usually under one of the domains answered.
fn qname() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let suffix = proptest::sample::select(vec![
        vec!["muster"],
        vec!["consul"],
        vec!["sd", "example", "org"],
        vec!["SD", "Example", "ORG"],
        vec!["example", "com"],
        vec![],
    ]);
    (proptest::collection::vec(label(), 0..6), suffix).prop_map(|(mut labels, suffix)| {
        labels.extend(suffix.iter().map(|l| l.as_bytes().to_vec()));
        labels
    })
}

/// A query message on the wire, written by hand so that names hickory's
/// own encoder would refuse (empty, overlong or binary labels) get through.
fn query(id: u16, labels: &[Vec<u8>], qtype: u16, qclass: u16, edns: Option<(u16, u8)>) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x01, 0x00]); // a query, recursion desired
    m.extend_from_slice(&1u16.to_be_bytes()); // one question
    m.extend_from_slice(&[0, 0, 0, 0]);
    m.extend_from_slice(&u16::from(edns.is_some()).to_be_bytes());
    for l in labels {
        // A length over 63 is a compression pointer or reserved: on purpose.
        m.push(l.len().min(255) as u8);
        m.extend_from_slice(&l[..l.len().min(255)]);
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&qclass.to_be_bytes());
    if let Some((size, version)) = edns {
        m.push(0); // root
        m.extend_from_slice(&41u16.to_be_bytes()); // OPT
        m.extend_from_slice(&size.to_be_bytes());
        m.extend_from_slice(&[0, version, 0, 0]); // rcode, version, flags
        m.extend_from_slice(&0u16.to_be_bytes());
    }
    m
}

/// A name that is valid on the wire: labels of 1-63 bytes, 255 bytes in all.
fn wire_valid(labels: &[Vec<u8>]) -> bool {
    labels.iter().all(|l| (1..=63).contains(&l.len()))
        && labels.iter().map(|l| l.len() + 1).sum::<usize>() < 255
}

fn qtype() -> impl Strategy<Value = u16> {
    prop_oneof![
        // A, NS, SOA, SRV, AAAA, ANY, TXT, PTR
        4 => proptest::sample::select(vec![1u16, 2, 6, 33, 28, 255, 16, 12]),
        1 => any::<u16>(),
    ]
}

fn qclass() -> impl Strategy<Value = u16> {
    prop_oneof![4 => Just(1u16), 1 => Just(255u16), 1 => any::<u16>()]
}

fn transport() -> impl Strategy<Value = Transport> {
    prop_oneof![Just(Transport::Udp), Just(Transport::Tcp)]
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn query_names_never_panic(
        id in any::<u16>(),
        labels in qname(),
        qtype in qtype(),
        qclass in qclass(),
        edns in proptest::option::of((any::<u16>(), prop_oneof![4 => Just(0u8), 1 => any::<u8>()])),
        transport in transport(),
        ready in any::<bool>(),
    ) {
        let (_, with_registry, without) = answerers();
        let answerer = if ready { with_registry } else { without };
        let request = query(id, &labels, qtype, qclass, edns);
        let response = answerer.answer(&request, transport);
        // A query with a whole header is always answered (FORMERR at worst).
        let response = response.expect("a query with a header gets a response");
        let m = Message::from_vec(&response);
        prop_assert!(m.is_ok(), "unreadable response {:?} to {:?}", response, request);
        let m = m.unwrap();
        prop_assert_eq!(m.metadata.id, id);
        if wire_valid(&labels) && edns.is_none() && matches!(transport, Transport::Udp) {
            prop_assert!(response.len() <= 512, "{} bytes over plain UDP", response.len());
        }
    }

    #[test]
    fn arbitrary_datagrams_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        transport in transport(),
        ready in any::<bool>(),
    ) {
        let (_, with_registry, without) = answerers();
        let answerer = if ready { with_registry } else { without };
        if let Some(response) = answerer.answer(&bytes, transport) {
            prop_assert!(bytes.len() >= 12, "answered {} bytes, less than a header", bytes.len());
            // Never answer an answer.
            prop_assert_eq!(bytes[2] & 0x80, 0);
            let m = Message::from_vec(&response);
            prop_assert!(m.is_ok(), "unreadable response to {:?}", bytes);
            prop_assert_eq!(m.unwrap().metadata.id, u16::from_be_bytes([bytes[0], bytes[1]]));
        }
    }
}

/// The fuzzing above only reaches the name parser if its queries decode and
/// land in every branch: answered, unknown (NXDOMAIN), not ours (REFUSED)
/// and malformed (FORMERR).
#[test]
fn generated_queries_reach_every_answer() {
    use hickory_proto::op::ResponseCode;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let (_, answerer, _) = answerers();
    let mut runner = TestRunner::deterministic();
    let names = qname();
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..1000u16 {
        let labels = names.new_tree(&mut runner).unwrap().current();
        let response = answerer
            .answer(&query(i, &labels, 1, 1, None), Transport::Tcp)
            .unwrap();
        let code = Message::from_vec(&response).unwrap().metadata.response_code;
        *seen.entry(format!("{code:?}")).or_default() += 1;
    }
    eprintln!("response codes of 1000 queries: {seen:?}");
    for code in [
        ResponseCode::NoError,
        ResponseCode::NXDomain,
        ResponseCode::Refused,
        ResponseCode::FormErr,
    ] {
        assert!(
            seen.get(&format!("{code:?}")).is_some_and(|&n| n >= 10),
            "{code:?} too rare in {seen:?}"
        );
    }
}
