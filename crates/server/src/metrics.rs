//! Prometheus metrics: requests by route, method and status with latencies,
//! and instances by service and status (computed at scrape time).

use muster_registry::Registry;
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry as PromRegistry;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    service: String,
    status: String,
}

pub struct Metrics {
    /// Encoding needs `&PromRegistry` while gauges are refreshed; the lock
    /// serialises scrapes, never requests.
    registry: Mutex<PromRegistry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    instances: Family<InstanceLabels, Gauge>,
    revision: Gauge,
    watchers: Gauge,
    sessions: Gauge,
    connections: Gauge,
    connection_limit: Counter,
    refused: Family<RefusedLabels, Counter>,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ])
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = PromRegistry::with_prefix("muster");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let instances = Family::<InstanceLabels, Gauge>::default();
        let revision = Gauge::default();
        registry.register("http_requests", "HTTP requests answered", requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            latency.clone(),
        );
        registry.register(
            "instances",
            "Registered instances by service and status",
            instances.clone(),
        );
        registry.register(
            "store_revision",
            "Store revision the index reflects",
            revision.clone(),
        );
        let watchers = Gauge::default();
        registry.register(
            "feed_watchers",
            "Open change-feed subscriptions (WebSocket and SSE)",
            watchers.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "http_connections",
            "Open HTTP connections",
            connections.clone(),
        );
        let connection_limit = Counter::default();
        registry.register(
            "http_connection_limit_reached",
            "Times every connection permit was in use (limits.connections)",
            connection_limit.clone(),
        );
        let sessions = Gauge::default();
        registry.register(
            "sessions",
            "Open WebSocket sessions (session-bound instances)",
            sessions.clone(),
        );
        let refused = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "refused_requests",
            "Requests refused by access control or a limit, by reason \
             (unauthorized, forbidden, rate_limited, watcher_cap, session_cap)",
            refused.clone(),
        );
        Metrics {
            refused,
            registry: Mutex::new(registry),
            requests,
            latency,
            instances,
            revision,
            watchers,
            sessions,
            connections,
            connection_limit,
        }
    }

    pub fn watchers(&self, delta: i64) {
        self.watchers.inc_by(delta);
    }

    pub fn connections(&self, delta: i64) {
        self.connections.inc_by(delta);
    }

    pub fn connection_limit_reached(&self) {
        self.connection_limit.inc();
    }

    /// A request refused by access control or a limit.
    pub fn refused(&self, reason: &str) {
        self.refused
            .get_or_create(&RefusedLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn sessions(&self, delta: i64) {
        self.sessions.inc_by(delta);
    }

    /// Lets another component (the health engine) add its metrics.
    pub fn register(&self, f: impl FnOnce(&mut PromRegistry)) {
        f(&mut self.registry.lock());
    }

    pub fn observe_request(&self, method: &str, route: &str, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_string(),
                route: route.to_string(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                method: method.to_string(),
                route: route.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// The text exposition, with registry gauges refreshed first.
    pub fn render(&self, registry: Option<&Registry>) -> String {
        if let Some(r) = registry {
            self.instances.clear();
            for (service, c) in r.status_counts() {
                for (status, n) in [
                    ("passing", c.passing),
                    ("warning", c.warning),
                    ("critical", c.critical),
                    ("maintenance", c.maintenance),
                ] {
                    self.instances
                        .get_or_create(&InstanceLabels {
                            service: service.clone(),
                            status: status.to_string(),
                        })
                        .set(n as i64);
                }
            }
            self.revision.set(r.revision() as i64);
        }
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry.lock());
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
