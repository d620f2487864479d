//! Probe executors: run one check once and report what was found.
//!
//! [`Prober::probe`] is the single entry point. It never fails and never
//! panics: an unreachable target, a refused address, a bad header or a
//! timeout are all findings, returned as a critical [`ProbeOutcome`] whose
//! output says why. Each kind lives in its own module; `guard` decides
//! which addresses may be probed at all.

mod exec;
mod grpc;
mod guard;
mod http;
mod mqtt;
mod tcp;

use muster_core::net::IpNet;
use muster_core::{CheckKind, Status};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use guard::Guard;

/// The most output a probe keeps, in bytes.
pub const OUTPUT_LIMIT: usize = 4096;

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOutcome {
    /// Passing, warning or critical; a probe never says maintenance.
    pub status: Status,
    /// The HTTP status, the gRPC serving status, the MQTT CONNACK return
    /// code or the exit code of an exec check, when there was one.
    pub status_code: Option<u16>,
    /// The target gave an answer: any HTTP status, a TCP connection, a gRPC
    /// reply, a CONNACK, an exit status.
    pub is_up: bool,
    /// It gave that answer within the timeout.
    pub is_responsive: bool,
    /// Wall time of the probe, resolution and connection included.
    pub response_ms: u64,
    /// Human-readable result, at most [`OUTPUT_LIMIT`] bytes.
    pub output: String,
}

impl ProbeOutcome {
    /// The target answered in time; `status` is what the answer means.
    fn answered(status: Status, status_code: Option<u16>, output: String) -> Self {
        ProbeOutcome {
            status,
            status_code,
            is_up: true,
            is_responsive: true,
            response_ms: 0,
            output,
        }
    }

    /// No answer at all: refused, unreachable, denied, misconfigured.
    fn failed(output: String) -> Self {
        ProbeOutcome {
            status: Status::Critical,
            status_code: None,
            is_up: false,
            is_responsive: false,
            response_ms: 0,
            output,
        }
    }

    /// The deadline passed before an answer came.
    fn timed_out(what: &str, timeout: Duration) -> Self {
        Self::failed(format!(
            "{what}: timed out after {} ms",
            timeout.as_millis()
        ))
    }
}

/// Server-wide probe settings, from the `[checks]` configuration.
#[derive(Debug, Clone)]
pub struct ProberConfig {
    /// Targets in these ranges are refused, after DNS resolution too.
    pub deny_targets: Vec<IpNet>,
    /// Exec checks run commands on the server, so they are off unless enabled.
    pub allow_exec: bool,
    /// Sent with every HTTP probe unless the check sets its own.
    pub user_agent: String,
}

/// Runs probes. One per server: it owns the pooled HTTP clients, so cloning
/// it (cheap, an `Arc`) shares their connections.
#[derive(Clone)]
pub struct Prober {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober")
            .field("guard", &self.inner.guard)
            .field("allow_exec", &self.inner.allow_exec)
            .finish_non_exhaustive()
    }
}

struct Inner {
    guard: Arc<Guard>,
    http: http::Clients,
    allow_exec: bool,
}

impl Prober {
    pub fn new(cfg: ProberConfig) -> Prober {
        let guard = Arc::new(Guard::new(cfg.deny_targets));
        Prober {
            inner: Arc::new(Inner {
                http: http::Clients::new(&guard, &cfg.user_agent),
                guard,
                allow_exec: cfg.allow_exec,
            }),
        }
    }

    /// Runs one probe; never panics, never returns Err: every failure is a
    /// critical outcome with an output that says why.
    pub async fn probe(&self, kind: &CheckKind, timeout: Duration) -> ProbeOutcome {
        let started = Instant::now();
        // A timeout too large to add is as good as none (and must not panic).
        let deadline = started
            .checked_add(timeout)
            .unwrap_or_else(|| started + Duration::from_secs(100 * 365 * 86_400));
        let guard = &self.inner.guard;
        let mut outcome = match kind {
            CheckKind::Http {
                target,
                method,
                headers,
                tls_skip_verify,
            } => {
                let req = http::Request {
                    url: target,
                    method,
                    headers,
                    tls_skip_verify: *tls_skip_verify,
                };
                self.inner.http.probe(guard, &req, deadline, timeout).await
            }
            CheckKind::Tcp { target } => tcp::probe(guard, target, deadline, timeout).await,
            CheckKind::Grpc {
                target,
                grpc_service,
            } => {
                let service = grpc_service.as_deref().unwrap_or("");
                grpc::probe(guard, target, service, deadline, timeout).await
            }
            CheckKind::Mqtt { target } => mqtt::probe(guard, target, deadline, timeout).await,
            CheckKind::Exec { argv } if self.inner.allow_exec => {
                exec::probe(argv, deadline, timeout).await
            }
            CheckKind::Exec { .. } => ProbeOutcome::failed(
                "exec checks are disabled on this server ([checks] allow_exec = false)".into(),
            ),
            CheckKind::Ttl { .. } => ProbeOutcome::failed("ttl checks are passive".into()),
        };
        outcome.response_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        truncate(&mut outcome.output, OUTPUT_LIMIT);
        outcome
    }
}

/// Cuts `s` to at most `limit` bytes without splitting a character.
fn truncate(s: &mut String, limit: usize) {
    if s.len() > limit {
        let mut end = limit;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// An error and its causes on one line: `a: b: c`. Libraries wrap the
/// useful part ("connection refused") several layers down.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(e) = cause {
        let part = e.to_string();
        // Some wrappers repeat their cause's message in their own.
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_keeps_whole_characters() {
        for (input, limit, expect) in [
            ("hello", 10, "hello"),
            ("hello", 5, "hello"),
            ("hello", 3, "hel"),
            ("héllo", 2, "h"),
            ("héllo", 3, "hé"),
            ("日本", 4, "日"),
            ("", 0, ""),
        ] {
            let mut s = input.to_string();
            truncate(&mut s, limit);
            assert_eq!(s, expect, "{input:?} cut to {limit}");
        }
    }

    #[test]
    fn error_chain_joins_causes_once() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let outer = std::io::Error::other(inner);
        // io::Error::other displays its payload and also returns it as source.
        assert_eq!(error_chain(&outer), "refused");
    }

    #[tokio::test]
    async fn ttl_and_disabled_exec_are_critical_without_running_anything() {
        let prober = Prober::new(ProberConfig {
            deny_targets: Vec::new(),
            allow_exec: false,
            user_agent: "t".into(),
        });
        let t = Duration::from_secs(1);
        let ttl = prober
            .probe(
                &CheckKind::Ttl {
                    ttl: muster_core::Millis(1000),
                },
                t,
            )
            .await;
        assert_eq!(
            (ttl.status, ttl.output.as_str()),
            (Status::Critical, "ttl checks are passive")
        );
        let exec = prober
            .probe(
                &CheckKind::Exec {
                    argv: vec!["true".into()],
                },
                t,
            )
            .await;
        assert_eq!(exec.status, Status::Critical);
        assert!(exec.output.contains("exec checks are disabled"), "{exec:?}");
    }
}
