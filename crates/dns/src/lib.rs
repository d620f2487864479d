//! muster's DNS interface: the registry's healthy instances as A, AAAA and
//! SRV records, over UDP and TCP, so tools that find services through DNS
//! (Consul's conventions) work unchanged.
//!
//! Names answered, under the configured domain (`muster.` by default) and
//! under `consul.`, case-insensitively:
//!
//! - `<service>.service.<domain>`: A / AAAA (the instances whose address is
//!   an IP of that family), SRV (priority 1, weight from the instance) and
//!   ANY (A and AAAA);
//! - `<tag>.<service>.service.<domain>`: the same, for instances carrying
//!   the tag;
//! - `_<service>._tcp.service.<domain>` (RFC 2782): SRV; `_<service>._<tag>`
//!   filters on the tag like Consul does (`_tcp` means any tag);
//! - `<hex>.addr.<domain>`: the address an SRV target stands for (see
//!   below);
//! - `<domain>` itself: its SOA.
//!
//! Service names may hold dots: `a.b.service.muster.` is the service `a.b`
//! when the registry knows one, else the tag `a` of the service `b`.
//!
//! **SRV targets.** An instance whose address is an IP gets the target
//! `<hex of the IP>.addr.<domain>` (`0a000005.addr.muster.` for 10.0.0.5,
//! 32 hex digits for IPv6), as Consul names them, with its A/AAAA record in
//! the additional section. The name encodes the address itself, so it is
//! collision-free, stays valid while the instance changes, and answering it
//! needs no lookup. An instance whose address is a host name has that host
//! name as its target (no additional record: it is not ours to resolve).
//! **A/AAAA skip host-name instances**: a CNAME cannot stand beside the
//! other instances' addresses (a name holding a CNAME holds nothing else),
//! and resolving the host on the client's behalf would make this server a
//! recursive resolver.
//!
//! Only passing and warning instances are answered (passing only with
//! `only_passing`); critical and maintenance never. An unknown service is
//! NXDOMAIN; a known one without an answer is NOERROR with no records (and
//! the SOA, so resolvers can cache the absence for the TTL). Answers are
//! shuffled. A UDP answer that does not fit 512 bytes (or the EDNS size the
//! client advertises, up to 4096) is cut to the records that fit and marked
//! TC, so resolvers retry over TCP. Names outside our domains are REFUSED:
//! this is not a recursive resolver. Until the registry is ready every query
//! in our domains gets SERVFAIL.
//!
//! Architecture Invariant: reads only the registry's index; never writes,
//! never blocks on the store. A malformed query is answered FORMERR (or
//! dropped when not even its header can be read), never a panic.
#![forbid(unsafe_code)]

mod answer;
mod catalog;
mod names;
mod server;
mod wire;

pub use answer::Answerer;
pub use server::{DnsServer, Transport};

use std::time::Duration;

/// The DNS settings the server runs with (`[dns]` in the config file).
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// The domain answered besides `consul.`, lowercase with the trailing dot.
    pub domain: String,
    /// TTL of every record (whole seconds are used).
    pub ttl: Duration,
    /// Answer passing instances only (warning ones are left out too).
    pub only_passing: bool,
}

pub const DEFAULT_DOMAIN: &str = "muster.";
pub const DEFAULT_TTL: Duration = Duration::from_secs(5);
/// Longest TTL accepted: a day; longer would keep dead instances in caches.
pub const MAX_TTL: Duration = Duration::from_secs(86_400);

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            domain: DEFAULT_DOMAIN.to_string(),
            ttl: DEFAULT_TTL,
            only_passing: false,
        }
    }
}

/// A domain as the operator wrote it → lowercase, with the trailing dot.
/// Refuses what cannot be a DNS name.
pub fn parse_domain(text: &str) -> Result<String, String> {
    let d = text.trim_end_matches('.').to_ascii_lowercase();
    if d.is_empty() {
        return Err(format!(
            "{text:?} is not a domain; use one such as \"muster.\""
        ));
    }
    muster_core::name::validate_hostname(&d)
        .map_err(|e| format!("{text:?} is not a domain such as \"muster.\": {e}"))?;
    Ok(format!("{d}."))
}

/// Errors that stop the DNS server from starting.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    // The cause is in the message, not a `source`: the advice must come
    // after it, and a chained source would print it twice.
    #[error(
        "cannot listen for DNS on {proto} {addr}: {error}; free the port or choose another with --dns-addr"
    )]
    Bind {
        proto: &'static str,
        addr: std::net::SocketAddr,
        error: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_normalized() {
        assert_eq!(parse_domain("Muster").unwrap(), "muster.");
        assert_eq!(parse_domain("sd.example.org.").unwrap(), "sd.example.org.");
        for bad in ["", ".", "a..b", "-x.", "a b"] {
            assert!(parse_domain(bad).is_err(), "{bad:?}");
        }
    }
}
