//! The probe target guard: which addresses a probe may connect to.
//!
//! Validation in `muster-core` refuses denied ranges written as literal IPs.
//! A host name can still resolve to one (a DNS record pointing at
//! 169.254.169.254 reaches the cloud metadata service), so every probe
//! resolves names here and is refused if *any* resolved address is denied:
//! picking an allowed one would leave the outcome to the resolver's order.

use muster_core::net::IpNet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// The configured deny ranges.
#[derive(Debug)]
pub(crate) struct Guard {
    deny: Vec<IpNet>,
}

/// A target refused by the guard. It is an error type so that it can travel
/// through reqwest's resolver and redirect hooks and be found again in the
/// error's source chain.
#[derive(Debug, Clone)]
pub(crate) struct Denied {
    host: String,
    ip: IpAddr,
    net: IpNet,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host == self.ip.to_string() {
            write!(
                f,
                "probe target {} is inside the denied range {}",
                self.ip, self.net
            )
        } else {
            write!(
                f,
                "probe target {} resolves to {}, inside the denied range {}",
                self.host, self.ip, self.net
            )
        }
    }
}

impl std::error::Error for Denied {}

/// Why a host could not be turned into addresses to probe.
#[derive(Debug)]
pub(crate) enum ResolveError {
    Denied(Denied),
    Lookup(String),
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolveError::Denied(d) => d.fmt(f),
            ResolveError::Lookup(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ResolveError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            // Lets `find_denied` see through this wrapper.
            ResolveError::Denied(d) => Some(d),
            ResolveError::Lookup(_) => None,
        }
    }
}

impl Guard {
    pub(crate) fn new(deny: Vec<IpNet>) -> Guard {
        Guard { deny }
    }

    /// Refuses `ip` if a deny range holds it; `host` is what the check named.
    pub(crate) fn check(&self, host: &str, ip: IpAddr) -> Result<(), Denied> {
        match self.deny.iter().find(|net| net.contains(ip)) {
            Some(net) => Err(Denied {
                host: host.to_string(),
                ip,
                net: *net,
            }),
            None => Ok(()),
        }
    }

    /// Refuses a URL whose host is a literal IP in a deny range. Such URLs
    /// never reach a resolver, so the resolver hook cannot catch them.
    pub(crate) fn check_url(&self, url: &url::Url) -> Result<(), Denied> {
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            Some(url::Host::Domain(_)) | None => return Ok(()),
        };
        self.check(&ip.to_string(), ip)
    }

    /// Resolves `host` (a name or a literal IP) and returns its addresses,
    /// or refuses them all if any is denied.
    pub(crate) async fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, ResolveError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| ResolveError::Lookup(format!("cannot resolve {host}: {e}")))?
            .collect();
        if addrs.is_empty() {
            return Err(ResolveError::Lookup(format!(
                "{host} resolves to no address"
            )));
        }
        for addr in &addrs {
            self.check(host, addr.ip()).map_err(ResolveError::Denied)?;
        }
        Ok(addrs)
    }
}

/// The guard's refusal somewhere in an error's source chain, if any.
pub(crate) fn find_denied<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Denied> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(d) = e.downcast_ref::<Denied>() {
            return Some(d);
        }
        cur = e.source();
    }
    None
}

/// Splits `host:port` (`[v6]:port` for IPv6) as checks write it.
pub(crate) fn split_host_port(target: &str) -> Result<(&str, u16), String> {
    let (host, port) = target
        .rsplit_once(':')
        .ok_or_else(|| format!("target {target:?} must be host:port"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("port in {target:?} must be 1-65535"))?;
    if host.is_empty() {
        return Err(format!("target {target:?} has no host"));
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(nets: &[&str]) -> Guard {
        Guard::new(nets.iter().map(|n| n.parse().unwrap()).collect())
    }

    #[test]
    fn split_host_port_cases() {
        for (input, expect) in [
            ("a:1", Ok(("a", 1))),
            ("10.0.0.1:80", Ok(("10.0.0.1", 80))),
            ("[::1]:8080", Ok(("::1", 8080))),
            ("a", Err("must be host:port")),
            ("a:0", Err("must be 1-65535")),
            ("a:x", Err("must be 1-65535")),
            (":80", Err("has no host")),
        ] {
            match (split_host_port(input), expect) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{input}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{input}: {got}"),
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn literal_urls_are_checked() {
        let g = guard(&["169.254.0.0/16", "fe80::/10"]);
        let denied = |u: &str| g.check_url(&url::Url::parse(u).unwrap()).is_err();
        assert!(denied("http://169.254.169.254/latest/meta-data"));
        assert!(denied("http://[fe80::1]:8080/"));
        assert!(denied("http://[::ffff:169.254.1.1]/"));
        assert!(!denied("http://10.0.0.1/"));
        assert!(
            !denied("http://metadata.example/"),
            "names go to the resolver"
        );
        let err = g
            .check_url(&url::Url::parse("http://169.254.169.254/").unwrap())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "probe target 169.254.169.254 is inside the denied range 169.254.0.0/16"
        );
    }

    #[tokio::test]
    async fn names_are_refused_after_resolution() {
        let g = guard(&["127.0.0.0/8", "::1/128"]);
        let err = g.resolve("localhost", 80).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("probe target localhost resolves to "),
            "{text}"
        );
        assert!(find_denied(&err).is_some());
        let open = guard(&["169.254.0.0/16"]);
        assert!(!open.resolve("localhost", 80).await.unwrap().is_empty());
    }
}
