//! Property tests for every parser in `muster-core` that reads client input:
//! durations, names and addresses, IP networks and the register body. Each
//! parser must refuse bad input with an error, never panic, and accept
//! exactly what its documentation says.

use muster_core::RegisterBody;
use muster_core::check::CheckPolicy;
use muster_core::duration::{self, MAX_MILLIS, Millis};
use muster_core::id::derive_instance_id;
use muster_core::name::{
    validate_address, validate_hostname, validate_instance_id, validate_meta_entry,
    validate_service_name, validate_tag,
};
use muster_core::net::IpNet;
use proptest::prelude::*;
use serde_json::{Map, Value};
use std::net::IpAddr;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Integration tests have no lib.rs to store failures beside; a
        // failure prints its minimal input instead.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Text that is mostly near the grammar under test, sometimes anything.
fn text(near: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![3 => near, 1 => any::<String>()]
}

// ---- durations ----

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn duration_parse_never_panics(t in text("[0-9hms \t.+-]{0,40}")) {
        let _ = duration::parse(&t);
    }

    #[test]
    fn duration_display_reads_back(n in 0..=MAX_MILLIS) {
        prop_assert_eq!(duration::parse(&Millis(n).to_string()), Ok(Millis(n)));
    }

    #[test]
    fn duration_digits_are_milliseconds(t in "[0-9]{1,25}") {
        let value: u128 = t.parse().unwrap();
        match duration::parse(&t) {
            Ok(Millis(v)) => prop_assert_eq!(u128::from(v), value),
            Err(_) => prop_assert!(value > u128::from(MAX_MILLIS)),
        }
    }

    #[test]
    fn duration_units_add_up(
        h in proptest::option::of(0u64..100_000),
        m in proptest::option::of(0u64..10_000),
        s in proptest::option::of(0u64..100_000),
        ms in proptest::option::of(0u64..1_000_000),
    ) {
        // With no part at all the text is empty, which is refused.
        let mut t = String::new();
        let mut total: u64 = 0;
        for (part, unit, ms_per) in [(h, "h", 3_600_000), (m, "m", 60_000), (s, "s", 1000), (ms, "ms", 1)] {
            if let Some(n) = part {
                t.push_str(&format!("{n}{unit}"));
                total += n * ms_per;
            }
        }
        if !t.is_empty() && total <= MAX_MILLIS {
            prop_assert_eq!(duration::parse(&t), Ok(Millis(total)));
        } else {
            prop_assert!(duration::parse(&t).is_err());
        }
    }
}

// ---- names and addresses ----

/// The documented service-name grammar, written out independently:
/// `[a-z0-9][a-z0-9._-]{0,62}`.
fn service_name_grammar(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=63).contains(&b.len())
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"-._".contains(&c))
}

/// Instance ids: `[A-Za-z0-9][A-Za-z0-9._:-]{0,127}`.
fn instance_id_grammar(id: &str) -> bool {
    let b = id.as_bytes();
    (1..=128).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || b"-._:".contains(&c))
}

fn service_name() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9._-]{0,62}"
}

/// RFC 1123 host names as `validate_hostname` documents them.
fn hostname() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec("[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", 1..5),
        any::<bool>(),
    )
        .prop_map(|(labels, dot)| {
            let mut h = labels.join(".");
            if dot {
                h.push('.');
            }
            h
        })
        .prop_filter("253 characters at most, not all-numeric", |h| {
            let bare = h.trim_end_matches('.');
            bare.len() <= 253
                && !bare
                    .split('.')
                    .all(|l| l.bytes().all(|b| b.is_ascii_digit()))
        })
}

fn address() -> impl Strategy<Value = String> {
    prop_oneof![any::<IpAddr>().prop_map(|ip| ip.to_string()), hostname(),]
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn service_names_follow_the_grammar(name in text("[a-zA-Z0-9._ /:-]{0,70}")) {
        prop_assert_eq!(
            validate_service_name(&name).is_ok(),
            service_name_grammar(&name),
            "{:?}", name
        );
    }

    #[test]
    fn instance_ids_follow_the_grammar(id in text("[a-zA-Z0-9._ /:%-]{0,140}")) {
        prop_assert_eq!(validate_instance_id(&id).is_ok(), instance_id_grammar(&id), "{:?}", id);
    }

    #[test]
    fn address_validators_never_panic(addr in text("[a-zA-Z0-9.:%\\[\\]/_ -]{0,80}")) {
        let _ = validate_address(&addr);
        let _ = validate_hostname(&addr);
    }

    #[test]
    fn generated_addresses_are_valid(addr in address()) {
        prop_assert!(validate_address(&addr).is_ok(), "{:?}", addr);
    }

    #[test]
    fn tag_and_meta_validators_never_panic(
        tag in any::<String>(),
        key in text("[a-zA-Z0-9._ -]{0,140}"),
        value in any::<String>(),
    ) {
        let _ = validate_tag(&tag);
        let _ = validate_meta_entry(&key, &value);
    }

    #[test]
    fn derived_ids_are_valid(service in service_name(), addr in address(), port in any::<u16>()) {
        let id = derive_instance_id(&service, &addr, port);
        prop_assert!(validate_instance_id(&id).is_ok(), "{:?} from {:?} {:?} {}", id, service, addr, port);
    }

    #[test]
    fn derived_ids_are_valid_for_any_valid_address(
        service in service_name(),
        addr in text("[a-fA-F0-9.:-]{1,60}"),
        port in any::<u16>(),
    ) {
        // Most of these are not addresses; those that are must give a valid id.
        if validate_address(&addr).is_ok() {
            let id = derive_instance_id(&service, &addr, port);
            prop_assert!(validate_instance_id(&id).is_ok(), "{:?} from {:?}", id, addr);
        }
    }
}

// ---- IP networks ----

/// Bit `i` (from the most significant) of an address, IPv4 as 32 bits.
fn bit(ip: IpAddr, i: u32) -> bool {
    match ip {
        IpAddr::V4(a) => (u32::from(a) >> (31 - i)) & 1 == 1,
        IpAddr::V6(a) => (u128::from(a) >> (127 - i)) & 1 == 1,
    }
}

/// `contains`, one bit at a time; an IPv4-mapped IPv6 address belongs to an
/// IPv4 network, an IPv4 address never to an IPv6 one.
fn naive_contains(net: IpAddr, prefix: u32, ip: IpAddr) -> bool {
    let ip = match (net, ip) {
        (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => return false,
        },
        (IpAddr::V6(_), IpAddr::V4(_)) => return false,
        _ => ip,
    };
    (0..prefix).all(|i| bit(net, i) == bit(ip, i))
}

/// A network and an address that often shares a prefix with it.
fn net_and_ip() -> impl Strategy<Value = (IpAddr, u32, IpAddr)> {
    (
        any::<IpAddr>(),
        any::<u128>(),
        0u32..=129,
        any::<u8>(),
        0u8..4,
    )
        .prop_map(|(net, noise, keep, prefix, how)| {
            let max = if net.is_ipv4() { 32 } else { 128 };
            let prefix = u32::from(prefix) % (max + 1);
            let ip = match (net, how) {
                // Keep the first `keep` bits of the network, flip some after.
                (IpAddr::V4(a), 0 | 1) => {
                    let flip = (noise as u32).checked_shr(keep).unwrap_or(0);
                    IpAddr::V4((u32::from(a) ^ flip).into())
                }
                (IpAddr::V6(a), 0 | 1) => {
                    let flip = noise.checked_shr(keep).unwrap_or(0);
                    IpAddr::V6((u128::from(a) ^ flip).into())
                }
                // The IPv4 network's neighbourhood, IPv4-mapped.
                (IpAddr::V4(a), 2) => {
                    let flip = (noise as u32).checked_shr(keep).unwrap_or(0);
                    IpAddr::V6(std::net::Ipv4Addr::from(u32::from(a) ^ flip).to_ipv6_mapped())
                }
                // Anything, of either family.
                _ => {
                    if noise & 1 == 0 {
                        IpAddr::V4((noise as u32).into())
                    } else {
                        IpAddr::V6(noise.into())
                    }
                }
            };
            (net, prefix, ip)
        })
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn ipnet_parse_never_panics(t in text("[0-9a-fA-F.:/%]{0,50}")) {
        let _ = t.parse::<IpNet>();
    }

    #[test]
    fn ipnet_prefixes_are_checked(addr in any::<IpAddr>(), prefix in text("[0-9+-]{0,5}")) {
        let max: u128 = if addr.is_ipv4() { 32 } else { 128 };
        let parsed = format!("{addr}/{prefix}").parse::<IpNet>();
        let valid = prefix.parse::<u8>().is_ok_and(|p| u128::from(p) <= max);
        prop_assert_eq!(parsed.is_ok(), valid);
    }

    #[test]
    fn ipnet_contains_agrees_with_bits((net, prefix, ip) in net_and_ip()) {
        let parsed: IpNet = format!("{net}/{prefix}").parse().unwrap();
        prop_assert_eq!(parsed.contains(ip), naive_contains(net, prefix, ip), "{} {}", parsed, ip);
    }

    #[test]
    fn ipnet_display_reads_back(net in any::<IpAddr>(), prefix in any::<u8>()) {
        let max = if net.is_ipv4() { 33 } else { 129 };
        let parsed: IpNet = format!("{net}/{}", prefix % max).parse().unwrap();
        prop_assert_eq!(parsed.to_string().parse::<IpNet>(), Ok(parsed));
    }
}

// ---- register bodies ----

const BODY_FIELDS: &[&str] = &[
    "service",
    "id",
    "address",
    "port",
    "tags",
    "meta",
    "data",
    "weight",
    "ttl",
    "deregister_critical_after",
    "checks",
    "health",
    "allow_no_port",
];

const CHECK_FIELDS: &[&str] = &[
    "service",
    "instance",
    "id",
    "name",
    "http",
    "method",
    "headers",
    "tls_skip_verify",
    "tcp",
    "grpc",
    "grpc_service",
    "mqtt",
    "ttl",
    "exec",
    "interval",
    "timeout",
    "success_before_passing",
    "failures_before_warning",
    "failures_before_critical",
];

/// Strings a field might hold: names, addresses, durations, URLs, junk.
fn json_string() -> impl Strategy<Value = String> {
    prop_oneof![
        service_name(),
        address(),
        "[0-9]{1,6}(ms|s|m|h)?",
        "(http|https|mqtt|ftp)://[a-zA-Z0-9.:\\[\\]@%/?#-]{0,30}",
        "[a-z0-9.]{0,12}:[0-9]{0,6}",
        "(169\\.254\\.169\\.254|\\[fe80::1\\]|localhost|10\\.0\\.0\\.1):[0-9]{1,5}",
        any::<String>(),
    ]
}

fn json_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        (-5i64..70_000).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from), // NaN and infinities become null
    ]
}

/// Any JSON value, at most a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        json_number(),
        json_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    json_string(),
                    proptest::sample::select(CHECK_FIELDS).prop_map(String::from)
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A value of the type `field` holds (usually), or anything.
fn typed_value(field: &str) -> BoxedStrategy<Value> {
    let typed: BoxedStrategy<Value> = match field {
        "port"
        | "weight"
        | "success_before_passing"
        | "failures_before_warning"
        | "failures_before_critical" => json_number().boxed(),
        "ttl" | "interval" | "timeout" | "deregister_critical_after" => {
            prop_oneof![json_string().prop_map(Value::String), json_number(),].boxed()
        }
        "tls_skip_verify" => any::<bool>().prop_map(Value::Bool).boxed(),
        "tags" | "exec" => proptest::collection::vec(json_string().prop_map(Value::String), 0..4)
            .prop_map(Value::Array)
            .boxed(),
        "meta" | "headers" => proptest::collection::btree_map(json_string(), json_string(), 0..4)
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k, v.into())).collect()))
            .boxed(),
        "checks" => proptest::collection::vec(check_json(), 0..4)
            .prop_map(Value::Array)
            .boxed(),
        "data" => json_value().boxed(),
        _ => json_string().prop_map(Value::String).boxed(),
    };
    prop_oneof![4 => typed, 1 => json_value()].boxed()
}

/// An object with some of `fields` (and sometimes another key), each value
/// usually of the field's type.
fn object_of(
    fields: &'static [&'static str],
    size: std::ops::Range<usize>,
) -> impl Strategy<Value = Value> {
    proptest::collection::vec(
        prop_oneof![
            19 => proptest::sample::select(fields).prop_flat_map(|f| (Just(f.to_string()), typed_value(f))),
            1 => ("[a-z_]{1,8}", json_value()),
        ],
        size,
    )
    .prop_map(|entries| Value::Object(entries.into_iter().collect::<Map<_, _>>()))
}

/// A check spec with arbitrary field values.
fn check_json() -> BoxedStrategy<Value> {
    object_of(CHECK_FIELDS, 0..4).boxed()
}

/// A register body whose fields hold anything, checks included: either
/// arbitrary JSON, an object of the body's fields, or a valid body with
/// some fields overwritten.
fn body_json() -> impl Strategy<Value = Value> {
    let mutated = (valid_body(), object_of(BODY_FIELDS, 0..3)).prop_map(|((_, mut body), over)| {
        if let (Value::Object(b), Value::Object(o)) = (&mut body, over) {
            b.extend(o);
        }
        body
    });
    prop_oneof![
        1 => json_value(),
        2 => object_of(BODY_FIELDS, 0..BODY_FIELDS.len()),
        4 => mutated,
    ]
}

/// A body that must validate: its parts drawn from what each validator accepts.
fn valid_body() -> impl Strategy<Value = (String, Value)> {
    (
        service_name(),
        address(),
        1u16..=u16::MAX,
        proptest::collection::vec("[!-+\\--~]{1,20}", 0..5),
        proptest::collection::btree_map("[A-Za-z0-9._-]{1,20}", any::<String>(), 0..5),
        proptest::option::of(1i64..=65535),
        proptest::option::of(1000u64..=86_400_000),
        proptest::option::of(1000u64..=MAX_MILLIS),
        proptest::collection::vec(1000u64..=86_400_000, 0..3),
    )
        .prop_map(
            |(service, address, port, tags, meta, weight, ttl, dca, check_ttls)| {
                let mut body = serde_json::json!({
                    "address": address,
                    "port": port,
                    "tags": tags,
                    "meta": meta,
                });
                if let Some(w) = weight {
                    body["weight"] = w.into();
                }
                if let Some(t) = ttl {
                    body["ttl"] = Millis(t).to_string().into();
                }
                if let Some(d) = dca {
                    body["deregister_critical_after"] = d.into();
                }
                body["checks"] = check_ttls
                    .iter()
                    .map(|&t| serde_json::json!({"ttl": Millis(t).to_string()}))
                    .collect();
                (service, body)
            },
        )
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn register_bodies_never_panic(
        body in body_json(),
        service in prop_oneof![3 => service_name(), 1 => any::<String>()],
        path_id in proptest::option::of(text("[a-zA-Z0-9._:-]{1,20}")),
    ) {
        if let Ok(b) = serde_json::from_value::<RegisterBody>(body.clone()) {
            let _ = b.clone().validate(&service, None, &CheckPolicy::default());
            let _ = b.clone().validate(&service, path_id.as_deref(), &CheckPolicy::default());
            let open = CheckPolicy { allow_exec: true, deny_targets: Vec::new() };
            let _ = b.validate(&service, path_id.as_deref(), &open);
        }
        // The same body as text goes through the other half of serde.
        let _ = serde_json::from_str::<RegisterBody>(&body.to_string());
    }

    #[test]
    fn valid_bodies_validate((service, body) in valid_body()) {
        let b: RegisterBody = serde_json::from_value(body.clone()).unwrap();
        let (address, port) = (b.address.clone(), b.port);
        match b.validate(&service, None, &CheckPolicy::default()) {
            Ok(r) => {
                prop_assert_eq!(&r.id, &derive_instance_id(&service, &address, port as u16));
                prop_assert!(validate_instance_id(&r.id).is_ok(), "{:?}", r.id);
            }
            Err(e) => prop_assert!(false, "{} refused: {:?}", body, e),
        }
    }
}

/// The fuzzing above is only worth its time if many of its bodies get past
/// serde into `validate` and some of those get all the way through.
#[test]
fn generated_bodies_reach_validation() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = body_json();
    let (mut decoded, mut valid) = (0, 0);
    for _ in 0..1000 {
        let body = strategy.new_tree(&mut runner).unwrap().current();
        if let Ok(b) = serde_json::from_value::<RegisterBody>(body) {
            decoded += 1;
            if b.validate("web", None, &CheckPolicy::default()).is_ok() {
                valid += 1;
            }
        }
    }
    eprintln!("of 1000 bodies: {decoded} decoded, {valid} valid");
    assert!(decoded >= 200, "only {decoded} of 1000 bodies decoded");
    assert!(valid >= 20, "only {valid} of 1000 bodies validated");
}
