//! Server configuration in two stages: [`RawConfig`] as the operator wrote it
//! (TOML file, then flags and `MUSTER_*` environment laid over it), and
//! [`Config`], validated once, typed, every error reported together.

use crate::acl::{AclConfig, Right, TokenSpec};
use muster_core::check::CheckPolicy;
use muster_core::duration::{self, Millis};
use muster_core::health::FlapRule;
use muster_core::net::IpNet;
use muster_dns::DnsConfig;
use muster_feed::webhooks::{self, Secret, WebhookConfig};
use muster_health::influx::InfluxConfig;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// As written in the TOML file. Unknown keys are errors: a misspelt setting
/// must not be silently ignored (and `[acl]`/`[tls]` must not be accepted by a
/// build that cannot enforce them).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub http_addr: Option<String>,
    pub dns_addr: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub in_memory: Option<bool>,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub feed: RawFeed,
    #[serde(default)]
    pub checks: RawChecks,
    #[serde(default)]
    pub shutdown: RawShutdown,
    pub influxdb: Option<RawInflux>,
    #[serde(default)]
    pub webhooks: Vec<RawWebhook>,
    #[serde(default)]
    pub dns: RawDns,
    #[serde(default)]
    pub acl: RawAcl,
    #[serde(default)]
    pub tls: crate::tls::RawTls,
    #[serde(default)]
    pub store: RawStore,
}

/// `[store]`: how an on-disk store keeps its data.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// "log" or "redb"; unset: the engine whose data is in the directory,
    /// "log" for a new one.
    pub engine: Option<String>,
}

/// The engine behind an on-disk store.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum StoreEngine {
    /// Not configured: the engine whose data the directory holds; the log
    /// engine for a new directory. (Data dirs made before the log engine
    /// became the default keep opening with redb.)
    #[default]
    Detect,
    /// redb B-tree, one commit per batch.
    Redb,
    /// State in memory, write-ahead log and snapshots (`muster_store::LogStore`).
    Log,
}

impl StoreEngine {
    /// The engine to open `data_dir` with.
    pub fn for_dir(self, data_dir: &std::path::Path) -> StoreEngine {
        match self {
            StoreEngine::Detect if data_dir.join(muster_store::embedded::DB_FILE).exists() => {
                StoreEngine::Redb
            }
            StoreEngine::Detect => StoreEngine::Log,
            chosen => chosen,
        }
    }
}

/// `[acl]`: tokens and what they may do (see [`crate::acl`]).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcl {
    pub enabled: Option<bool>,
    /// Without ACLs the server binds loopback only, unless this says the
    /// operator means to expose it.
    pub allow_open: Option<bool>,
    /// What a request without a token may do: "none" (default) or "read".
    pub anonymous: Option<String>,
    #[serde(default)]
    pub tokens: Vec<RawToken>,
}

/// `[[acl.tokens]]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToken {
    pub name: Option<String>,
    pub secret: Option<String>,
    /// Read at startup, trailing newline trimmed.
    pub secret_file: Option<PathBuf>,
    /// Service-name prefix (or "*") → "read" | "write" | "none".
    #[serde(default)]
    pub services: std::collections::BTreeMap<String, String>,
    pub operator: Option<bool>,
}

/// `[dns]`: what the DNS interface answers (its address is `dns_addr`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    /// The domain answered besides `consul.`: "muster." by default.
    pub domain: Option<String>,
    /// TTL of every record: "5s" or milliseconds, whole seconds.
    pub ttl: Option<toml::Value>,
    /// Answer passing instances only, leaving warning ones out too.
    pub only_passing: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Largest request body accepted, in bytes (413 beyond).
    pub body_bytes: Option<usize>,
    /// Open HTTP connections at most; the next waits before it is accepted.
    pub connections: Option<usize>,
    /// How long a client may take to send a request's headers (idle
    /// keep-alive connections included) before the connection is closed.
    pub header_timeout: Option<toml::Value>,
    /// How long a client may take to send a request's body.
    pub body_timeout: Option<toml::Value>,
    /// Largest snapshot accepted by `PUT /api/v1/snapshot`, in bytes.
    pub snapshot_bytes: Option<usize>,
    /// Requests per second per client (its token, else its address); 0: off.
    pub rate: Option<u32>,
    /// Requests a client may send in a burst before `rate` applies.
    pub burst: Option<u32>,
    /// Open feed watchers (WebSocket or SSE) per client.
    pub watchers_per_client: Option<usize>,
    /// Open sessions per client.
    pub sessions_per_client: Option<usize>,
    /// Apply the per-client limits to loopback clients too (off by default).
    pub limit_loopback: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFeed {
    /// Revisions kept for `?from=` resumption and the event log.
    pub retain: Option<usize>,
    /// How often WebSocket peers (watchers, sessions) are pinged; one silent
    /// for three intervals is dropped.
    pub ping: Option<toml::Value>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChecks {
    pub allow_exec: Option<bool>,
    pub deny_targets: Option<Vec<String>>,
    /// Probes running at once.
    pub concurrency: Option<usize>,
    /// Probes kept per check.
    pub history: Option<usize>,
    /// More status changes than this within `flap_window` make a check flapping.
    pub flap_threshold: Option<u32>,
    pub flap_window: Option<toml::Value>,
}

/// `[influxdb]`: export every probe to an InfluxDB 1.x server.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInflux {
    /// Base URL, e.g. `http://127.0.0.1:8086`.
    pub url: Option<String>,
    pub db: Option<String>,
    pub batch: Option<usize>,
    pub flush_every: Option<toml::Value>,
    pub buffer: Option<usize>,
}

/// One `[[webhooks]]` entry: where to POST which events.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    /// Its name in logs and metrics; defaults to the URL.
    pub name: Option<String>,
    pub url: Option<String>,
    /// Event kinds sent; default: every kind but `snapshot`.
    pub events: Option<Vec<String>>,
    /// Services whose events are sent; default: all.
    pub services: Option<Vec<String>>,
    /// Key of the `X-Muster-Signature` HMAC; or `secret_file`, read at
    /// startup with its trailing newline trimmed.
    pub secret: Option<String>,
    pub secret_file: Option<PathBuf>,
    /// How long one delivery attempt may take: "10s" or milliseconds.
    pub timeout: Option<toml::Value>,
    /// Events held at most while the endpoint is slow or down.
    pub queue: Option<usize>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShutdown {
    /// How long in-flight requests get to finish: "10s" or milliseconds.
    pub grace: Option<toml::Value>,
}

impl RawConfig {
    pub fn from_toml(text: &str) -> Result<RawConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

#[derive(Debug, Clone)]
pub enum StoreConfig {
    Memory,
    Embedded { data_dir: PathBuf },
}

/// The validated configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub http_addr: SocketAddr,
    pub dns_addr: SocketAddr,
    pub store: StoreConfig,
    /// The engine of an `Embedded` store.
    pub store_engine: StoreEngine,
    pub body_limit: usize,
    /// Body limit of a snapshot restore.
    pub snapshot_limit: usize,
    /// Time allowed for a request's body.
    pub body_timeout: Duration,
    pub client_limits: crate::limits::ClientLimitSettings,
    /// Open HTTP connections at most.
    pub max_connections: usize,
    /// Time allowed for a request's headers (and idle keep-alive time).
    pub header_timeout: Duration,
    pub retain: usize,
    pub checks: CheckPolicy,
    pub health: HealthSettings,
    /// WebSocket ping interval (a peer silent for 3 of them is dropped).
    pub ping: Duration,
    pub grace: Duration,
    pub webhooks: Vec<WebhookConfig>,
    pub dns: DnsConfig,
    /// Bind non-loopback addresses although no ACLs protect them.
    pub allow_open: bool,
    pub acl: AclConfig,
    /// HTTPS (and mutual TLS) when `[tls]` is set.
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
}

/// The health engine's settings.
#[derive(Debug, Clone)]
pub struct HealthSettings {
    pub concurrency: usize,
    pub history_retain: usize,
    pub flap: FlapRule,
    pub influx: Option<InfluxConfig>,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            concurrency: 256,
            history_retain: 1000,
            flap: FlapRule::default(),
            influx: None,
        }
    }
}

/// A duration written as "10s" or as integer milliseconds.
fn toml_duration(
    key: &str,
    v: Option<toml::Value>,
    default: Millis,
    errs: &mut Vec<String>,
) -> Millis {
    match v {
        None => default,
        Some(toml::Value::Integer(ms)) if ms >= 0 => Millis(ms as u64),
        Some(toml::Value::String(s)) => duration::parse(&s).unwrap_or_else(|e| {
            errs.push(format!("{key}: {e}"));
            default
        }),
        Some(other) => {
            errs.push(format!("{key}: {other} is not a duration such as \"10s\""));
            default
        }
    }
}

/// `[[webhooks]]`, validated; each problem is added to `errs`.
/// `secret` or `secret_file` (trailing newline trimmed), not both.
fn read_secret(
    key: &str,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    errs: &mut Vec<String>,
) -> Option<Vec<u8>> {
    match (secret, secret_file) {
        (Some(_), Some(_)) => {
            errs.push(format!(
                "{key}: secret and secret_file exclude each other: pick one"
            ));
            None
        }
        (Some(s), None) => Some(s.into_bytes()),
        (None, Some(path)) => match std::fs::read(&path) {
            Ok(mut bytes) => {
                // Files written by `echo` or an editor end in a newline
                // that is not part of the secret.
                while bytes.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
                    bytes.pop();
                }
                Some(bytes)
            }
            Err(e) => {
                errs.push(format!(
                    "{key}.secret_file: cannot read {}: {e}",
                    path.display()
                ));
                None
            }
        },
        (None, None) => None,
    }
}

fn validate_acl(raw: RawAcl, errs: &mut Vec<String>) -> AclConfig {
    let anonymous = match raw.anonymous.as_deref() {
        None | Some("none") => Right::None,
        Some("read") => Right::Read,
        Some(other) => {
            errs.push(format!(
                "acl.anonymous: {other:?} is not \"none\" or \"read\""
            ));
            Right::None
        }
    };
    let mut tokens: Vec<TokenSpec> = Vec::new();
    for (i, t) in raw.tokens.into_iter().enumerate() {
        let key = format!("acl.tokens[{i}]");
        let name = match t.name {
            Some(n) if !n.trim().is_empty() => n,
            _ => {
                errs.push(format!("{key}.name: every token needs a name"));
                String::new()
            }
        };
        let secret = match read_secret(&key, t.secret, t.secret_file, errs) {
            Some(s) if !s.is_empty() => s,
            Some(_) => {
                errs.push(format!("{key}: the secret is empty"));
                Vec::new()
            }
            None => {
                errs.push(format!("{key}: needs secret or secret_file"));
                Vec::new()
            }
        };
        let mut services = Vec::new();
        for (prefix, right) in t.services {
            let r = match right.as_str() {
                "read" => Right::Read,
                "write" => Right::Write,
                "none" => Right::None,
                other => {
                    errs.push(format!(
                        "{key}.services.{prefix}: {other:?} is not \"read\", \"write\" or \"none\""
                    ));
                    continue;
                }
            };
            services.push((prefix, r));
        }
        if tokens.iter().any(|o| o.name == name) {
            errs.push(format!("{key}.name: {name:?} is used twice"));
        }
        if !secret.is_empty() && tokens.iter().any(|o| o.secret == secret) {
            errs.push(format!("{key}: two tokens have the same secret"));
        }
        tokens.push(TokenSpec {
            name,
            secret,
            services,
            operator: t.operator.unwrap_or(false),
        });
    }
    let enabled = raw.enabled.unwrap_or(false);
    if !enabled && !tokens.is_empty() {
        errs.push(
            "acl.tokens: tokens are configured but acl.enabled is not true; \
             set enabled = true (tokens would otherwise be silently ignored)"
                .to_string(),
        );
    }
    AclConfig {
        enabled,
        anonymous,
        tokens,
    }
}

fn validate_webhooks(raw: Vec<RawWebhook>, errs: &mut Vec<String>) -> Vec<WebhookConfig> {
    let mut out: Vec<WebhookConfig> = Vec::new();
    for (i, w) in raw.into_iter().enumerate() {
        let key = format!("webhooks[{i}]");
        let before = errs.len();
        let url = match w.url.as_deref().map(url::Url::parse) {
            Some(Ok(u)) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
            Some(_) => {
                errs.push(format!(
                    "{key}.url: {:?} is not an http:// or https:// URL with a host",
                    w.url.unwrap_or_default()
                ));
                None
            }
            None => {
                errs.push(format!("{key}: needs url = \"https://host/path\""));
                None
            }
        };
        let kinds = w.events.map(|names| {
            if names.is_empty() {
                errs.push(format!(
                    "{key}.events: name at least one kind, or leave it out for all"
                ));
            }
            let mut kinds = Vec::new();
            for k in names {
                match webhooks::parse_kind(&k) {
                    Ok(kind) => kinds.push(kind),
                    Err(e) => errs.push(format!("{key}.events: {e}")),
                }
            }
            kinds
        });
        let services = w.services.map(|names| {
            if names.is_empty() {
                errs.push(format!(
                    "{key}.services: name at least one service, or leave it out for all"
                ));
            }
            for n in &names {
                if let Err(e) = muster_core::name::validate_service_name(n) {
                    errs.push(format!("{key}.services: {e}"));
                }
            }
            names.into_iter().collect()
        });
        let secret = read_secret(&key, w.secret, w.secret_file, errs);
        if secret.as_ref().is_some_and(|s| s.is_empty()) {
            errs.push(format!("{key}: the secret is empty"));
        }
        let default_timeout = Millis(webhooks::DEFAULT_TIMEOUT.as_millis() as u64);
        let timeout = toml_duration(&format!("{key}.timeout"), w.timeout, default_timeout, errs);
        if timeout.0 == 0 {
            errs.push(format!("{key}.timeout must be more than 0"));
        }
        let queue = w.queue.unwrap_or(webhooks::DEFAULT_QUEUE);
        if !(1..=1_000_000).contains(&queue) {
            errs.push(format!("{key}.queue must be 1-1000000"));
        }
        // Every problem of this entry is reported; a broken entry is not kept.
        let Some(url) = url.filter(|_| errs.len() == before) else {
            continue;
        };
        let mut hook = WebhookConfig::new(url);
        if let Some(name) = w.name {
            hook.name = name;
        }
        // The name labels its metrics: two webhooks must not share a series.
        if hook.name.is_empty() || out.iter().any(|o| o.name == hook.name) {
            errs.push(format!(
                "{key}.name: {:?} is empty or already used; give each webhook its own name",
                hook.name
            ));
            continue;
        }
        hook.kinds = kinds;
        hook.services = services;
        hook.secret = secret.map(Secret::new);
        hook.timeout = timeout.as_duration();
        hook.queue = queue;
        out.push(hook);
    }
    out
}

/// `[dns]`, validated; each problem is added to `errs`.
fn validate_dns(raw: RawDns, errs: &mut Vec<String>) -> DnsConfig {
    let d = DnsConfig::default();
    let domain = match raw.domain.as_deref().map(muster_dns::parse_domain) {
        None => d.domain,
        Some(Ok(domain)) => domain,
        Some(Err(e)) => {
            errs.push(format!("dns.domain: {e}"));
            d.domain
        }
    };
    let default_ttl = Millis(d.ttl.as_millis() as u64);
    let ttl = toml_duration("dns.ttl", raw.ttl, default_ttl, errs).as_duration();
    // DNS carries TTLs in seconds: a fraction would be silently dropped.
    if ttl.subsec_millis() != 0 {
        errs.push(format!(
            "dns.ttl: {}ms is not a whole number of seconds",
            ttl.as_millis()
        ));
    }
    if ttl > muster_dns::MAX_TTL {
        errs.push(format!(
            "dns.ttl must be at most {}s: longer keeps gone instances in caches",
            muster_dns::MAX_TTL.as_secs()
        ));
    }
    DnsConfig {
        domain,
        ttl,
        only_passing: raw.only_passing.unwrap_or(d.only_passing),
    }
}

pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8500";
pub const DEFAULT_DNS_ADDR: &str = "127.0.0.1:8600";
pub const DEFAULT_DATA_DIR: &str = "./muster-data";
pub const DEFAULT_BODY_LIMIT: usize = 1 << 20;
/// Snapshots carry the whole registry.
pub const DEFAULT_SNAPSHOT_LIMIT: usize = 256 * 1024 * 1024;

impl Config {
    /// A configuration for tests: in memory, on a free loopback port.
    pub fn for_tests() -> Config {
        Config {
            http_addr: "127.0.0.1:0"
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0))),
            dns_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            store: StoreConfig::Memory,
            store_engine: StoreEngine::Detect,
            body_limit: DEFAULT_BODY_LIMIT,
            snapshot_limit: DEFAULT_SNAPSHOT_LIMIT,
            body_timeout: Duration::from_secs(30),
            client_limits: Default::default(),
            max_connections: 10_000,
            header_timeout: Duration::from_secs(10),
            retain: 100_000,
            checks: CheckPolicy::default(),
            health: HealthSettings::default(),
            ping: Duration::from_secs(10),
            grace: Duration::from_secs(5),
            webhooks: Vec::new(),
            dns: DnsConfig::default(),
            allow_open: false,
            acl: AclConfig::default(),
            tls: None,
        }
    }
}

impl TryFrom<RawConfig> for Config {
    type Error = String;

    /// Validates everything and reports every problem at once.
    fn try_from(raw: RawConfig) -> Result<Config, String> {
        let mut errs = Vec::new();
        let mut addr = |key: &str, v: Option<String>, default: &str| -> SocketAddr {
            let text = v.unwrap_or_else(|| default.to_string());
            text.parse().unwrap_or_else(|_| {
                errs.push(format!(
                    "{key}: {text:?} is not an address such as 127.0.0.1:8500"
                ));
                SocketAddr::from(([127, 0, 0, 1], 0))
            })
        };
        let http_addr = addr("http_addr", raw.http_addr, DEFAULT_HTTP_ADDR);
        let dns_addr = addr("dns_addr", raw.dns_addr, DEFAULT_DNS_ADDR);
        let store = if raw.in_memory.unwrap_or(false) {
            if raw.data_dir.is_some() {
                errs.push("in_memory and data_dir exclude each other: pick one".to_string());
            }
            StoreConfig::Memory
        } else {
            StoreConfig::Embedded {
                data_dir: raw
                    .data_dir
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            }
        };
        let store_engine = match raw.store.engine.as_deref() {
            None => StoreEngine::Detect,
            Some("redb") => StoreEngine::Redb,
            Some("log") => StoreEngine::Log,
            Some(other) => {
                errs.push(format!(
                    "store.engine: {other:?} is not an engine; use \"log\" or \"redb\""
                ));
                StoreEngine::Detect
            }
        };
        let body_limit = raw.limits.body_bytes.unwrap_or(DEFAULT_BODY_LIMIT);
        let max_connections = raw.limits.connections.unwrap_or(10_000);
        if max_connections == 0 {
            errs.push("limits.connections must be at least 1".to_string());
        }
        let header_timeout = toml_duration(
            "limits.header_timeout",
            raw.limits.header_timeout.clone(),
            Millis::from_secs(10),
            &mut errs,
        );
        if header_timeout.0 < 100 {
            errs.push("limits.header_timeout must be at least 100ms".to_string());
        }
        if body_limit < 1024 {
            errs.push("limits.body_bytes must be at least 1024".to_string());
        }
        let snapshot_limit = raw.limits.snapshot_bytes.unwrap_or(DEFAULT_SNAPSHOT_LIMIT);
        if snapshot_limit < 1024 {
            errs.push("limits.snapshot_bytes must be at least 1024".to_string());
        }
        let body_timeout = toml_duration(
            "limits.body_timeout",
            raw.limits.body_timeout.clone(),
            Millis::from_secs(30),
            &mut errs,
        );
        if body_timeout.0 < 100 {
            errs.push("limits.body_timeout must be at least 100ms".to_string());
        }
        let d = crate::limits::ClientLimitSettings::default();
        let client_limits = crate::limits::ClientLimitSettings {
            rate: raw.limits.rate.unwrap_or(d.rate),
            burst: raw
                .limits
                .burst
                .unwrap_or_else(|| raw.limits.rate.map_or(d.burst, |r| r.saturating_mul(2))),
            watchers_per_client: raw
                .limits
                .watchers_per_client
                .unwrap_or(d.watchers_per_client),
            sessions_per_client: raw
                .limits
                .sessions_per_client
                .unwrap_or(d.sessions_per_client),
            limit_loopback: raw.limits.limit_loopback.unwrap_or(d.limit_loopback),
        };
        if client_limits.rate > 0 && client_limits.burst == 0 {
            errs.push("limits.burst must be at least 1 when limits.rate is set".to_string());
        }
        if client_limits.watchers_per_client == 0 || client_limits.sessions_per_client == 0 {
            errs.push(
                "limits.watchers_per_client and limits.sessions_per_client must be at least 1"
                    .to_string(),
            );
        }
        let retain = raw.feed.retain.unwrap_or(100_000);
        if retain == 0 {
            errs.push("feed.retain must be at least 1".to_string());
        }
        let mut deny = Vec::new();
        match raw.checks.deny_targets {
            None => deny = IpNet::default_deny(),
            Some(list) => {
                for t in list {
                    match t.parse::<IpNet>() {
                        Ok(n) => deny.push(n),
                        Err(e) => errs.push(format!("checks.deny_targets: {e}")),
                    }
                }
            }
        }
        let grace = toml_duration(
            "shutdown.grace",
            raw.shutdown.grace,
            Millis::from_secs(10),
            &mut errs,
        );
        let ping = toml_duration("feed.ping", raw.feed.ping, Millis::from_secs(10), &mut errs);
        if ping.0 < 100 {
            errs.push("feed.ping must be at least 100ms".to_string());
        }
        let webhooks = validate_webhooks(raw.webhooks, &mut errs);
        let dns = validate_dns(raw.dns, &mut errs);
        let mut health = HealthSettings::default();
        if let Some(c) = raw.checks.concurrency {
            if !(1..=65_536).contains(&c) {
                errs.push("checks.concurrency must be 1-65536".to_string());
            }
            health.concurrency = c;
        }
        if let Some(h) = raw.checks.history {
            if !(1..=1_000_000).contains(&h) {
                errs.push("checks.history must be 1-1000000".to_string());
            }
            health.history_retain = h;
        }
        if let Some(t) = raw.checks.flap_threshold {
            health.flap.threshold = t;
        }
        health.flap.window_ms = toml_duration(
            "checks.flap_window",
            raw.checks.flap_window,
            Millis(health.flap.window_ms),
            &mut errs,
        )
        .0;
        if let Some(i) = raw.influxdb {
            let d = InfluxConfig::new("", "");
            match (i.url, i.db) {
                (Some(url), Some(db))
                    if url.starts_with("http://") || url.starts_with("https://") =>
                {
                    let flush = toml_duration(
                        "influxdb.flush_every",
                        i.flush_every,
                        Millis(d.flush_every.as_millis() as u64),
                        &mut errs,
                    );
                    let cfg = InfluxConfig {
                        url,
                        db,
                        batch: i.batch.unwrap_or(d.batch),
                        flush_every: flush.as_duration(),
                        buffer: i.buffer.unwrap_or(d.buffer),
                    };
                    match cfg.write_url() {
                        Ok(_) => health.influx = Some(cfg),
                        Err(e) => errs.push(format!("influxdb: {e}")),
                    }
                }
                _ => errs.push(
                    "influxdb: needs url = \"http://host:8086\" and db = \"name\"".to_string(),
                ),
            }
        }
        let allow_open = raw.acl.allow_open.unwrap_or(false);
        let acl = validate_acl(raw.acl, &mut errs);
        let tls = crate::tls::server_config(&raw.tls).unwrap_or_else(|e| {
            errs.push(e);
            None
        });
        if !errs.is_empty() {
            return Err(errs.join("; "));
        }
        Ok(Config {
            http_addr,
            dns_addr,
            store,
            store_engine,
            body_limit,
            snapshot_limit,
            body_timeout: body_timeout.as_duration(),
            client_limits,
            max_connections,
            header_timeout: header_timeout.as_duration(),
            retain,
            checks: CheckPolicy {
                allow_exec: raw.checks.allow_exec.unwrap_or(false),
                deny_targets: deny,
            },
            health,
            ping: ping.as_duration(),
            grace: grace.as_duration(),
            webhooks,
            dns,
            allow_open,
            acl,
            tls,
        })
    }
}

impl Config {
    /// Without ACLs, listening beyond loopback is refused unless the operator
    /// set `[acl] allow_open = true`: whoever can write to a registry can
    /// redirect traffic. Port 0 and loopback addresses are always fine.
    pub fn check_exposure(&self) -> Result<(), String> {
        if self.allow_open || self.acl.enabled {
            return Ok(());
        }
        for (what, addr) in [("http_addr", self.http_addr), ("dns_addr", self.dns_addr)] {
            if !addr.ip().is_loopback() {
                return Err(format!(
                    "{what} {addr} is not a loopback address and no ACLs protect muster; \
                     listen on 127.0.0.1, or set [acl] allow_open = true if you mean to expose it"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(toml: &str) -> Result<Config, String> {
        Config::try_from(RawConfig::from_toml(toml)?)
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = check("").unwrap();
        assert_eq!(c.http_addr.to_string(), "127.0.0.1:8500");
        assert_eq!(c.dns_addr.to_string(), "127.0.0.1:8600");
        assert!(
            matches!(c.store, StoreConfig::Embedded { ref data_dir } if data_dir == &PathBuf::from("./muster-data"))
        );
        assert_eq!(c.body_limit, 1 << 20);
        assert!(!c.checks.allow_exec);
        assert_eq!(c.checks.deny_targets.len(), 2);
    }

    #[test]
    fn every_error_is_reported_together() {
        let e =
            check("http_addr = \"nope\"\n[limits]\nbody_bytes = 1\n[shutdown]\ngrace = \"soon\"")
                .unwrap_err();
        assert!(
            e.contains("http_addr") && e.contains("body_bytes") && e.contains("shutdown.grace"),
            "{e}"
        );
    }

    #[test]
    fn without_acls_only_loopback_unless_allow_open() {
        assert!(check("").unwrap().check_exposure().is_ok());
        let open = check("http_addr = \"0.0.0.0:8500\"").unwrap();
        assert!(open.check_exposure().unwrap_err().contains("allow_open"));
        let dns = check("dns_addr = \"10.1.2.3:53\"").unwrap();
        assert!(dns.check_exposure().unwrap_err().contains("dns_addr"));
        let meant = check("http_addr = \"0.0.0.0:8500\"\n[acl]\nallow_open = true").unwrap();
        assert!(meant.check_exposure().is_ok());
        assert!(check("[acl]\nenabled = true").is_ok());
        assert!(
            check("[acl]\nallow_open = true\n[[acl.tokens]]\nname = \"x\"").is_err(),
            "tokens are not silently ignored"
        );
    }

    #[test]
    fn unknown_and_unsupported_keys_are_refused() {
        assert!(
            check("htp_addr = \"x\"")
                .unwrap_err()
                .contains("unknown field")
        );
        assert!(
            check("[tls]\ncert_file = \"x\"").is_err(),
            "TLS must not be silently ignored"
        );
    }

    #[test]
    fn webhooks_parse_with_their_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "from-file\n").unwrap();
        let c = check(&format!(
            r#"
            [[webhooks]]
            name = "ops"
            url = "http://127.0.0.1:9000/hook"
            events = ["registered", "status_changed", "custom"]
            services = ["web", "api"]
            secret = "s3cret"
            timeout = "2s"
            queue = 50

            [[webhooks]]
            url = "https://hooks.example/muster"
            secret_file = {key:?}
            "#
        ))
        .unwrap();
        let [ops, plain] = &c.webhooks[..] else {
            panic!("{:?}", c.webhooks)
        };
        assert_eq!(ops.name, "ops");
        assert_eq!(ops.url.as_str(), "http://127.0.0.1:9000/hook");
        use muster_core::EventKind::*;
        assert_eq!(ops.kinds, Some(vec![Registered, StatusChanged, Custom]));
        assert_eq!(ops.services.as_ref().map(|s| s.len()), Some(2));
        assert_eq!(ops.timeout, Duration::from_secs(2));
        assert_eq!(ops.queue, 50);
        assert!(
            !format!("{ops:?}").contains("s3cret"),
            "secrets stay out of logs"
        );

        assert_eq!(plain.name, "https://hooks.example/muster");
        assert_eq!(
            (plain.kinds.as_ref(), plain.services.as_ref()),
            (None, None)
        );
        assert_eq!(plain.timeout, webhooks::DEFAULT_TIMEOUT);
        assert_eq!(plain.queue, webhooks::DEFAULT_QUEUE);
        assert!(plain.secret.is_some());
        assert!(check("").unwrap().webhooks.is_empty());
    }

    #[test]
    fn webhook_errors_are_reported_together() {
        let e = check(
            r#"
            [[webhooks]]
            url = "ftp://example.com/x"
            events = ["registered", "snapshot", "renamed"]
            services = ["Web"]
            secret = "a"
            secret_file = "/k"
            timeout = "soon"
            queue = 0

            [[webhooks]]
            name = "a"
            url = "http://a.example/"
            [[webhooks]]
            name = "a"
            url = "http://b.example/"
            [[webhooks]]
            secret_file = "/nonexistent/muster-key"
            "#,
        )
        .unwrap_err();
        for part in [
            "webhooks[0].url",
            "snapshot",
            "\"renamed\" is not an event kind",
            "webhooks[0].services",
            "exclude each other",
            "webhooks[0].timeout",
            "webhooks[0].queue",
            "webhooks[2].name",
            "webhooks[3]: needs url",
            "webhooks[3].secret_file",
        ] {
            assert!(e.contains(part), "{part:?} missing from: {e}");
        }
        assert!(!e.contains("webhooks[1]"), "{e}");
        assert!(
            check("[[webhooks]]\nurl = \"http://a/\"\nheaders = 1")
                .unwrap_err()
                .contains("unknown field")
        );
    }

    #[test]
    fn dns_section_parses_and_reports_its_errors() {
        let c = check("").unwrap();
        assert_eq!(c.dns.domain, "muster.");
        assert_eq!(c.dns.ttl, Duration::from_secs(5));
        assert!(!c.dns.only_passing);
        let c =
            check("[dns]\ndomain = \"SD.Example\"\nttl = \"30s\"\nonly_passing = true").unwrap();
        assert_eq!(c.dns.domain, "sd.example.");
        assert_eq!(c.dns.ttl, Duration::from_secs(30));
        assert!(c.dns.only_passing);
        assert_eq!(check("[dns]\nttl = 0").unwrap().dns.ttl, Duration::ZERO);
        let e = check("[dns]\ndomain = \"a..b\"\nttl = \"1500ms\"").unwrap_err();
        assert!(e.contains("dns.domain") && e.contains("dns.ttl"), "{e}");
        assert!(
            check("[dns]\nttl = \"2d\"")
                .unwrap_err()
                .contains("dns.ttl")
        );
        assert!(
            check("[dns]\nport = 53")
                .unwrap_err()
                .contains("unknown field")
        );
    }

    #[test]
    fn sections_parse() {
        let c = check("in_memory = true\n[feed]\nretain = 5\n[checks]\nallow_exec = true\ndeny_targets = [\"10.0.0.0/8\"]\n[shutdown]\ngrace = 2500").unwrap();
        assert!(matches!(c.store, StoreConfig::Memory));
        assert_eq!(c.retain, 5);
        assert!(c.checks.allow_exec);
        assert_eq!(c.checks.deny_targets[0].to_string(), "10.0.0.0/8");
        assert_eq!(c.grace, Duration::from_millis(2500));
    }

    #[test]
    fn store_engine_defaults_to_detection_and_rejects_unknown_engines() {
        assert_eq!(check("").unwrap().store_engine, StoreEngine::Detect);
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(StoreEngine::Detect.for_dir(dir.path()), StoreEngine::Log);
        std::fs::write(dir.path().join(muster_store::embedded::DB_FILE), b"").unwrap();
        assert_eq!(StoreEngine::Detect.for_dir(dir.path()), StoreEngine::Redb);
        assert_eq!(StoreEngine::Log.for_dir(dir.path()), StoreEngine::Log);
        let log = check("[store]\nengine = \"log\"").unwrap();
        assert_eq!(log.store_engine, StoreEngine::Log);
        let e = check("[store]\nengine = \"btree\"").unwrap_err();
        assert!(e.contains("store.engine") && e.contains("\"log\""), "{e}");
    }
}
