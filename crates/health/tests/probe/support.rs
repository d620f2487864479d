//! Shared test helpers: building probers and check kinds.

use muster_core::CheckKind;
use muster_health::probe::{Prober, ProberConfig};
use std::collections::BTreeMap;
use std::time::Duration;

/// Generous: these probes hit loopback and should answer in microseconds;
/// the tests that exercise timeouts pass their own short one.
pub const TIMEOUT: Duration = Duration::from_secs(5);

pub const USER_AGENT: &str = "muster-test-probe/1";

/// A prober refusing `deny` (CIDR strings), with exec on or off.
pub fn prober(deny: &[&str], allow_exec: bool) -> Prober {
    Prober::new(ProberConfig {
        deny_targets: deny.iter().map(|n| n.parse().unwrap()).collect(),
        allow_exec,
        user_agent: USER_AGENT.into(),
    })
}

pub fn open_prober() -> Prober {
    prober(&[], false)
}

pub fn http_get(url: &str) -> CheckKind {
    CheckKind::Http {
        target: url.into(),
        method: "GET".into(),
        headers: BTreeMap::new(),
        tls_skip_verify: false,
    }
}

pub fn tcp(target: &str) -> CheckKind {
    CheckKind::Tcp {
        target: target.into(),
    }
}

/// A loopback port that was free a moment ago, for servers (Mosquitto)
/// that cannot be handed a bound socket.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}
