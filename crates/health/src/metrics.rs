//! The health engine's Prometheus metrics: per check, its status, last
//! response time and probe durations; overall, probes by kind and status and
//! the scheduling lag (actual start − planned start).

use crate::probe::ProbeOutcome;
use muster_core::Status;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    check: String,
    service: String,
    instance: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    kind: String,
    status: String,
}

fn duration_buckets() -> Histogram {
    // Few buckets: this family has one histogram per check.
    Histogram::new([0.005, 0.025, 0.1, 0.5, 2.5])
}

pub struct HealthMetrics {
    status: Family<CheckLabels, Gauge>,
    last_response: Family<CheckLabels, Gauge<f64, AtomicU64>>,
    duration: Family<CheckLabels, Histogram, fn() -> Histogram>,
    probes: Family<ProbeLabels, Counter>,
    lag: Histogram,
}

impl Default for HealthMetrics {
    fn default() -> Self {
        HealthMetrics {
            status: Family::default(),
            last_response: Family::default(),
            duration: Family::new_with_constructor(duration_buckets),
            probes: Family::default(),
            lag: Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]),
        }
    }
}

fn labels(check: &str, service: &str, instance: &str) -> CheckLabels {
    CheckLabels {
        check: check.to_string(),
        service: service.to_string(),
        instance: instance.to_string(),
    }
}

impl HealthMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "check_status",
            "Check status: 0 passing, 1 warning, 2 critical",
            self.status.clone(),
        );
        r.register(
            "check_last_response_seconds",
            "Response time of the check's last probe",
            self.last_response.clone(),
        );
        r.register(
            "check_probe_duration_seconds",
            "Probe durations per check",
            self.duration.clone(),
        );
        r.register(
            "probes",
            "Probes run, by kind and resulting status",
            self.probes.clone(),
        );
        r.register(
            "probe_schedule_lag_seconds",
            "How late probes start after their planned time",
            self.lag.clone(),
        );
    }

    pub fn lag(&self, d: Duration) {
        self.lag.observe(d.as_secs_f64());
    }

    pub fn probed(&self, check: &str, service: &str, instance: &str, kind: &str, o: &ProbeOutcome) {
        let l = labels(check, service, instance);
        let code = match o.status {
            Status::Passing => 0,
            Status::Warning => 1,
            _ => 2,
        };
        self.status.get_or_create(&l).set(code);
        let secs = o.response_ms as f64 / 1000.0;
        self.last_response.get_or_create(&l).set(secs);
        self.duration.get_or_create(&l).observe(secs);
        self.probes
            .get_or_create(&ProbeLabels {
                kind: kind.to_string(),
                status: o.status.as_str().to_string(),
            })
            .inc();
    }

    /// Drops a removed check's series.
    pub fn forget(&self, check: &str, service: &str, instance: &str) {
        let l = labels(check, service, instance);
        self.status.remove(&l);
        self.last_response.remove(&l);
        self.duration.remove(&l);
    }
}
