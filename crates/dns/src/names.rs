//! Query names → what they ask for. Pure: no registry, no I/O, so the name
//! grammar is tested on its own (see the crate docs for the names).

use hickory_proto::rr::Name;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The domains answered, as lowercase labels (`["muster"]`, `["consul"]`).
#[derive(Debug, Clone)]
pub(crate) struct Domains {
    domains: Vec<Domain>,
}

#[derive(Debug, Clone)]
struct Domain {
    labels: Vec<Box<[u8]>>,
    name: Name,
}

/// What a name in one of our domains asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Asked {
    /// The domain itself.
    Apex,
    /// `….service.<domain>`.
    Service(ServiceName),
    /// `<hex>.addr.<domain>`: an SRV target.
    Addr(IpAddr),
    /// In our domain but nothing we answer: NXDOMAIN.
    Nothing,
}

/// The part before `.service.`, lowercased.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ServiceName {
    /// `[<tag>.]<service>`. Service names may hold dots, so which it is
    /// depends on what the registry knows: the whole as a service first,
    /// then the first label as a tag and the rest as the service.
    Plain(Vec<String>),
    /// RFC 2782 `_<service>._<proto>`: `_tcp` means any tag, another
    /// `_<tag>` filters on that tag (Consul's reading).
    Rfc2782 {
        service: String,
        tag: Option<String>,
    },
}

impl Domains {
    /// `domain` (already normalized by [`crate::parse_domain`]) and `consul.`.
    pub(crate) fn new(domain: &str) -> Domains {
        let mut domains = Vec::new();
        for d in [domain, "consul."] {
            let labels: Vec<Box<[u8]>> = d
                .trim_end_matches('.')
                .split('.')
                .map(|l| l.to_ascii_lowercase().into_bytes().into_boxed_slice())
                .collect();
            if domains.iter().any(|x: &Domain| x.labels == labels) {
                continue;
            }
            // Normalized by `parse_domain`; a name that still fails is left out.
            if let Ok(name) = Name::from_ascii(d) {
                domains.push(Domain { labels, name });
            }
        }
        Domains { domains }
    }

    /// The domain `name` lies in (its index, for [`Domains::name`]) and what
    /// it asks for; `None` when it is not one of ours.
    pub(crate) fn parse(&self, name: &Name) -> Option<(usize, Asked)> {
        let labels: Vec<&[u8]> = name.iter().collect();
        let (i, d) = self.domains.iter().enumerate().find(|(_, d)| {
            labels.len() >= d.labels.len()
                && labels[labels.len() - d.labels.len()..]
                    .iter()
                    .zip(&d.labels)
                    .all(|(a, b)| a.eq_ignore_ascii_case(b))
        })?;
        let rest = &labels[..labels.len() - d.labels.len()];
        Some((i, asked(rest)))
    }

    /// Every domain's name, in index order.
    pub(crate) fn names(&self) -> impl Iterator<Item = &Name> {
        self.domains.iter().map(|d| &d.name)
    }

    /// The domain's name (`muster.`).
    pub(crate) fn name(&self, i: usize) -> &Name {
        &self.domains[i].name
    }
}

/// What the labels before the domain ask for.
fn asked(rest: &[&[u8]]) -> Asked {
    let Some((last, before)) = rest.split_last() else {
        return Asked::Apex;
    };
    if last.eq_ignore_ascii_case(b"addr") {
        return match before {
            [hex] => addr_of_hex(hex).map_or(Asked::Nothing, Asked::Addr),
            _ => Asked::Nothing,
        };
    }
    if !last.eq_ignore_ascii_case(b"service") || before.is_empty() {
        return Asked::Nothing;
    }
    // Service names and tags are text; a label that is not is no service.
    let Some(labels) = before
        .iter()
        .map(|l| std::str::from_utf8(l).ok().map(str::to_ascii_lowercase))
        .collect::<Option<Vec<String>>>()
    else {
        return Asked::Nothing;
    };
    // Service names cannot start with '_' (muster_core::name), so a leading
    // underscore on the first and last labels is unambiguously RFC 2782.
    if let [first, .., proto] = &labels[..]
        && let (Some(_), Some(proto)) = (first.strip_prefix('_'), proto.strip_prefix('_'))
    {
        let service = labels[..labels.len() - 1].join(".")[1..].to_string();
        let tag = (proto != "tcp").then(|| proto.to_string());
        return Asked::Service(ServiceName::Rfc2782 { service, tag });
    }
    Asked::Service(ServiceName::Plain(labels))
}

/// `0a000005` → 10.0.0.5; 32 hex digits → an IPv6 address.
fn addr_of_hex(hex: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(hex).ok()?;
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    match text.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(text, 16).ok()?,
        ))),
        32 => Some(IpAddr::V6(Ipv6Addr::from(
            u128::from_str_radix(text, 16).ok()?,
        ))),
        _ => None,
    }
}

/// The SRV target naming an IP: `<hex>.addr.<domain>`.
pub(crate) fn addr_target(ip: IpAddr, domain: &Name) -> Option<Name> {
    let hex = match ip {
        IpAddr::V4(v4) => format!("{:08x}", u32::from(v4)),
        IpAddr::V6(v6) => format!("{:032x}", u128::from(v6)),
    };
    Name::from_labels([hex.as_bytes(), b"addr"])
        .ok()?
        .append_domain(domain)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, expect: Option<(usize, Asked)>) {
        let d = Domains::new("muster.");
        let n = Name::from_ascii(name).unwrap();
        assert_eq!(d.parse(&n), expect, "{name}");
    }

    fn plain(labels: &[&str]) -> Asked {
        Asked::Service(ServiceName::Plain(
            labels.iter().map(|s| s.to_string()).collect(),
        ))
    }

    #[test]
    fn names_parse() {
        use Asked::*;
        check("web.service.muster.", Some((0, plain(&["web"]))));
        check("WEB.Service.MUSTER.", Some((0, plain(&["web"]))));
        check("web.service.consul.", Some((1, plain(&["web"]))));
        check("v2.web.service.muster.", Some((0, plain(&["v2", "web"]))));
        check(
            "_web._tcp.service.muster.",
            Some((
                0,
                Service(ServiceName::Rfc2782 {
                    service: "web".into(),
                    tag: None,
                }),
            )),
        );
        check(
            "_a.b._v2.service.consul.",
            Some((
                1,
                Service(ServiceName::Rfc2782 {
                    service: "a.b".into(),
                    tag: Some("v2".into()),
                }),
            )),
        );
        check("muster.", Some((0, Apex)));
        check(
            "0a000005.addr.muster.",
            Some((0, Addr("10.0.0.5".parse().unwrap()))),
        );
        check(
            "20010db8000000000000000000000001.addr.muster.",
            Some((0, Addr("2001:db8::1".parse().unwrap()))),
        );
        check("zz000005.addr.muster.", Some((0, Nothing)));
        check("service.muster.", Some((0, Nothing)));
        check("web.node.muster.", Some((0, Nothing)));
        check("web.service.example.org.", None);
        check("musterx.", None);
        check("example.", None);
    }

    #[test]
    fn addr_targets_round_trip() {
        let d = Domains::new("muster.");
        for ip in ["10.0.0.5", "2001:db8::1", "::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            let t = addr_target(ip, d.name(0)).unwrap();
            assert_eq!(d.parse(&t), Some((0, Asked::Addr(ip))), "{t}");
        }
        assert_eq!(
            addr_target("10.0.0.5".parse().unwrap(), d.name(0))
                .unwrap()
                .to_string(),
            "0a000005.addr.muster."
        );
    }

    #[test]
    fn the_configured_domain_may_be_consul() {
        let d = Domains::new("consul.");
        assert_eq!(d.domains.len(), 1);
    }
}
