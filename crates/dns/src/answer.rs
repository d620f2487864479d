//! One question → the records that answer it, from the registry's index.
//! The wire format (parsing, truncation, error codes) is `wire.rs`'s.

use crate::catalog::{Addr, Catalog, Target};
use crate::names::{self, Asked, Domains, ServiceName};
use crate::server::Transport;
use crate::{DnsConfig, wire};
use hickory_proto::op::{Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use muster_core::Status;
use muster_registry::Registry;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

/// Answers DNS queries from the registry; shared by every UDP worker and
/// TCP connection. Until [`Answerer::set_registry`] is called every query
/// in our domains is SERVFAIL.
pub struct Answerer {
    domains: Domains,
    /// `ns.<domain>` and `hostmaster.<domain>` for each domain's SOA.
    soa_names: Vec<(Name, Name)>,
    ttl: u32,
    only_passing: bool,
    catalog: OnceLock<Catalog>,
}

/// The records answering one question, and its response code.
#[derive(Debug)]
pub(crate) struct Answer {
    pub rcode: ResponseCode,
    /// The name is in one of our domains: we are its authority.
    pub authoritative: bool,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    pub additionals: Vec<Record>,
}

impl Answer {
    pub(crate) fn code(rcode: ResponseCode, authoritative: bool) -> Answer {
        Answer {
            rcode,
            authoritative,
            answers: Vec::new(),
            authority: Vec::new(),
            additionals: Vec::new(),
        }
    }
}

impl Answerer {
    pub fn new(config: &DnsConfig) -> Answerer {
        let domain = crate::parse_domain(&config.domain).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "dns: using {}", crate::DEFAULT_DOMAIN);
            crate::DEFAULT_DOMAIN.to_string()
        });
        let domains = Domains::new(&domain);
        let soa_names = domains
            .names()
            .map(|d| {
                let under = |label: &str| {
                    Name::from_labels([label])
                        .and_then(|n| n.append_domain(d))
                        .unwrap_or_else(|_| d.clone())
                };
                (under("ns"), under("hostmaster"))
            })
            .collect();
        Answerer {
            domains,
            soa_names,
            ttl: config.ttl.as_secs().try_into().unwrap_or(u32::MAX),
            only_passing: config.only_passing,
            catalog: OnceLock::new(),
        }
    }

    /// Starts answering from `registry` (once it has loaded). Later calls
    /// are ignored: the registry of a running server does not change.
    pub fn set_registry(&self, registry: Arc<Registry>) {
        let _ = self.catalog.set(Catalog::new(registry));
    }

    /// The response to one DNS message as it came off the wire; `None` when
    /// nothing must be sent (a response, or fewer bytes than a header).
    pub fn answer(&self, request: &[u8], transport: Transport) -> Option<Vec<u8>> {
        wire::respond(self, request, transport)
    }

    pub(crate) fn lookup(&self, query: &Query) -> Answer {
        let Some((d, asked)) = self.domains.parse(query.name()) else {
            // Not ours, and we do not recurse.
            return Answer::code(ResponseCode::Refused, false);
        };
        if !matches!(query.query_class(), DNSClass::IN | DNSClass::ANY) {
            return Answer::code(ResponseCode::Refused, false);
        }
        let Some(catalog) = self.catalog.get() else {
            return Answer::code(ResponseCode::ServFail, false);
        };
        let qtype = query.query_type();
        let owner = query.name();
        let mut a = Answer::code(ResponseCode::NoError, true);
        match asked {
            Asked::Apex => {
                if matches!(qtype, RecordType::SOA | RecordType::ANY) {
                    a.answers.push(self.soa(d, catalog));
                }
            }
            Asked::Addr(ip) => {
                if wants(qtype, ip) {
                    a.answers.push(self.address(owner.clone(), ip));
                }
            }
            Asked::Nothing => a.rcode = ResponseCode::NXDomain,
            Asked::Service(name) => match resolve(catalog, name) {
                Some((targets, tag)) => {
                    self.service(&mut a, owner, d, &targets, tag.as_deref(), qtype)
                }
                None => a.rcode = ResponseCode::NXDomain,
            },
        }
        if a.answers.is_empty() {
            // RFC 2308: the SOA lets resolvers cache the absence for its minimum.
            a.authority.push(self.soa(d, catalog));
        }
        a
    }

    /// A service's records of `qtype`, for the instances that may be
    /// answered (status and tag).
    fn service(
        &self,
        a: &mut Answer,
        owner: &Name,
        d: usize,
        targets: &[Target],
        tag: Option<&str>,
        qtype: RecordType,
    ) {
        let answerable = |t: &&Target| {
            let status_ok = match t.status {
                Status::Passing => true,
                Status::Warning => !self.only_passing,
                Status::Critical | Status::Maintenance => false,
            };
            status_ok && tag.is_none_or(|tag| t.has_tag(tag))
        };
        match qtype {
            RecordType::A | RecordType::AAAA | RecordType::ANY => {
                let mut ips: Vec<IpAddr> = targets
                    .iter()
                    .filter(answerable)
                    .filter_map(|t| match t.addr {
                        Addr::Ip(ip) if wants(qtype, ip) => Some(ip),
                        _ => None,
                    })
                    .collect();
                // Instances on other ports of one host share an address; an
                // RRset holds each record once (RFC 2181 §5).
                ips.sort_unstable();
                ips.dedup();
                fastrand::shuffle(&mut ips);
                a.answers
                    .extend(ips.into_iter().map(|ip| self.address(owner.clone(), ip)));
            }
            RecordType::SRV => {
                let mut picked: Vec<&Target> = targets.iter().filter(answerable).collect();
                fastrand::shuffle(&mut picked);
                let mut ips = Vec::new();
                for t in picked {
                    let target = match &t.addr {
                        Addr::Ip(ip) => {
                            let Some(name) = names::addr_target(*ip, self.domains.name(d)) else {
                                continue;
                            };
                            ips.push((*ip, name.clone()));
                            name
                        }
                        Addr::Host(host) => host.clone(),
                    };
                    let srv = SRV::new(1, t.weight, t.port, target);
                    a.answers
                        .push(Record::from_rdata(owner.clone(), self.ttl, RData::SRV(srv)));
                }
                ips.sort_unstable_by_key(|(ip, _)| *ip);
                ips.dedup_by_key(|(ip, _)| *ip);
                a.additionals
                    .extend(ips.into_iter().map(|(ip, name)| self.address(name, ip)));
            }
            _ => {}
        }
    }

    fn address(&self, owner: Name, ip: IpAddr) -> Record {
        let data = match ip {
            IpAddr::V4(v4) => RData::A(A(v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
        };
        Record::from_rdata(owner, self.ttl, data)
    }

    fn soa(&self, d: usize, catalog: &Catalog) -> Record {
        let (ns, hostmaster) = self.soa_names[d].clone();
        // The serial follows the index, so it moves whenever an answer may.
        let serial = (catalog.revision() % u64::from(u32::MAX)) as u32;
        let soa = SOA::new(ns, hostmaster, serial, 3600, 600, 86_400, self.ttl);
        Record::from_rdata(self.domains.name(d).clone(), self.ttl, RData::SOA(soa))
    }
}

/// Whether a query of `qtype` takes an address record for `ip`.
fn wants(qtype: RecordType, ip: IpAddr) -> bool {
    match qtype {
        RecordType::A => ip.is_ipv4(),
        RecordType::AAAA => ip.is_ipv6(),
        RecordType::ANY => true,
        _ => false,
    }
}

/// The service a name means and the tag it filters on; `None` when the
/// registry knows no such service.
fn resolve(catalog: &Catalog, name: ServiceName) -> Option<(Arc<[Target]>, Option<String>)> {
    match name {
        ServiceName::Rfc2782 { service, tag } => catalog.service(&service).map(|t| (t, tag)),
        ServiceName::Plain(labels) => {
            let whole = match &labels[..] {
                [one] => catalog.service(one),
                _ => catalog.service(&labels.join(".")),
            };
            if let Some(t) = whole {
                return Some((t, None));
            }
            let (tag, service) = labels.split_first()?;
            if service.is_empty() {
                return None;
            }
            catalog
                .service(&service.join("."))
                .map(|t| (t, Some(tag.clone())))
        }
    }
}
