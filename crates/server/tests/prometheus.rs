//! Prometheus service discovery against muster, with Prometheus itself
//! (Debian package `prometheus`) started per test in a temporary directory:
//! one job through `http_sd_configs` (`/api/v1/prometheus/targets`), one
//! through `consul_sd_configs` (the Consul-compatible API). Its
//! `/api/v1/targets` must show exactly the registered instances and drop a
//! deregistered one. The instances need not be scrapeable: Prometheus lists a
//! discovered target whether or not its scrapes succeed.
//!
//! A missing `prometheus` fails these tests: the project's test script
//! installs it, and a silently skipped test would hide breakage.

use muster_server::{Config, start};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long Prometheus may take to start, or to see a change, before the
/// test gives up. Its discovery manager batches updates every 5 s and its
/// scrape manager applies them every 5 s, so a change takes up to ~11 s.
const PATIENCE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);

/// A muster server on 127.0.0.1:0, stopped when dropped.
struct Muster {
    addr: SocketAddr,
    http: Client,
    stop: CancellationToken,
}

impl Drop for Muster {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Muster {
    async fn start() -> Muster {
        let stop = CancellationToken::new();
        let running = start(Config::for_tests(), stop.clone()).await.unwrap();
        let m = Muster {
            addr: running.http_addr,
            http: Client::builder().no_proxy().build().unwrap(),
            stop,
        };
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while m.get("/ready").await.status() != StatusCode::OK {
            assert!(
                tokio::time::Instant::now() < deadline,
                "muster never became ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        m
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    /// Registers an instance and returns its id.
    async fn register(&self, service: &str, body: Value) -> String {
        let resp = self
            .http
            .post(self.url(&format!("/api/v1/services/{service}/instances")))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let v: Value = resp.json().await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "registering {body}: {v}");
        v["id"].as_str().unwrap().to_string()
    }

    async fn deregister(&self, service: &str, id: &str) {
        let resp = self
            .http
            .delete(self.url(&format!("/api/v1/services/{service}/instances/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "deregistering {service}/{id}"
        );
    }

    /// `GET /api/v1/prometheus/targets{query}`, checked to be 200 JSON.
    async fn targets(&self, query: &str) -> Value {
        let resp = self
            .get(&format!("/api/v1/prometheus/targets{query}"))
            .await;
        assert_eq!(resp.status(), StatusCode::OK, "targets{query}");
        assert_eq!(
            resp.headers()["content-type"],
            "application/json",
            "Prometheus refuses HTTP SD answers of another content type"
        );
        resp.json().await.unwrap()
    }
}

/// A running `prometheus` on 127.0.0.1, killed when dropped.
struct Prometheus {
    /// What runs: Prometheus itself, or vmagent for Consul SD (see below).
    kind: Scraper,
    port: u16,
    dir: tempfile::TempDir,
    child: Child,
    http: Client,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian builds its `prometheus` without Consul service discovery
/// ("Disable Consul SD until its Debian package is back in shape"), and no
/// registry this project can reach ships one with it. vmagent (Debian's
/// `victoria-metrics`) reads the same `scrape_configs`, has Consul SD built
/// in and serves the same `/api/v1/targets`: it is the real Consul SD client
/// the Consul test runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scraper {
    Prometheus,
    Vmagent,
}

impl Prometheus {
    /// Starts Prometheus with these `scrape_configs` (YAML list items) and
    /// waits until it answers `/-/ready`.
    async fn start(scrape_configs: &str) -> Prometheus {
        Self::start_with(Scraper::Prometheus, scrape_configs).await
    }

    async fn start_with(kind: Scraper, scrape_configs: &str) -> Prometheus {
        let bin = match kind {
            Scraper::Prometheus => prometheus_binary(),
            Scraper::Vmagent => {
                let p = PathBuf::from("/usr/bin/vmagent");
                assert!(
                    p.is_file(),
                    "`vmagent` is not installed; the Consul SD test runs it: \
                     apt-get install -y --no-install-recommends victoria-metrics \
                     (Debian package `victoria-metrics`; scripts/test does this)"
                );
                p
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, format!("scrape_configs:\n{scrape_configs}")).unwrap();
        // Prometheus cannot be handed a bound socket: take a port that was
        // free a moment ago.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // Its log goes to a file (no pipe to drain), shown if it fails.
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let mut cmd = Command::new(bin);
        match kind {
            Scraper::Prometheus => {
                cmd.arg(format!("--config.file={}", config.display()))
                    .arg(format!(
                        "--storage.tsdb.path={}",
                        dir.path().join("data").display()
                    ))
                    .arg(format!("--web.listen-address=127.0.0.1:{port}"));
            }
            Scraper::Vmagent => {
                cmd.arg(format!("-promscrape.config={}", config.display()))
                    .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
                    // Nothing is written anywhere: scraped samples go to a
                    // closed port and are dropped; only discovery matters here.
                    .arg("-remoteWrite.url=http://127.0.0.1:9/api/v1/write")
                    .arg(format!(
                        "-remoteWrite.tmpDataPath={}",
                        dir.path().join("vm").display()
                    ))
                    // vmagent's refresh interval is a flag, not a config key.
                    .arg("-promscrape.consulSDCheckInterval=1s");
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut p = Prometheus {
            kind,
            port,
            dir,
            child,
            http: Client::builder().no_proxy().build().unwrap(),
        };
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            p.assert_running();
            let path = if p.kind == Scraper::Vmagent {
                "/health"
            } else {
                "/-/ready"
            };
            let ready = p.http.get(p.url(path)).send().await;
            if ready.is_ok_and(|r| r.status() == StatusCode::OK) {
                return p;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "prometheus did not answer /-/ready on port {port} within {PATIENCE:?}; its log:\n{}",
                p.log()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            let log = self.log();
            // Debian builds its `prometheus` without Consul SD ("Disable
            // Consul SD until its Debian package is back in shape").
            let hint = if log.contains("field consul_sd_configs not found") {
                "this prometheus was built without Consul service discovery \
                 (Debian's package `prometheus` leaves it out), so it cannot run \
                 a consul_sd_configs job\n"
            } else {
                ""
            };
            panic!("prometheus exited ({status}); {hint}its log:\n{log}");
        }
    }

    /// The discovered labels of the active targets of scrape pool `job`.
    async fn discovered(&self, job: &str) -> Vec<Value> {
        let v: Value = self
            .http
            .get(self.url("/api/v1/targets?state=active"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["status"], "success", "{v}");
        v["data"]["activeTargets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["scrapePool"] == job)
            .map(|t| t["discoveredLabels"].clone())
            .collect()
    }

    /// Waits until job `job` has exactly the targets `addresses` (compared
    /// by `__address__`) and returns their discovered labels.
    async fn wait_for(&mut self, job: &str, addresses: &[&str]) -> Vec<Value> {
        let want: BTreeSet<&str> = addresses.iter().copied().collect();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            self.assert_running();
            let targets = self.discovered(job).await;
            let seen: BTreeSet<&str> = targets
                .iter()
                .map(|l| l["__address__"].as_str().unwrap())
                .collect();
            if seen == want && targets.len() == want.len() {
                return targets;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {job}: prometheus still shows {seen:?}, not {want:?}, after {PATIENCE:?}; \
                 discovered labels: {targets:#?}\nits log:\n{}",
                self.log()
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

fn prometheus_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin".into()])
        .map(|dir| dir.join("prometheus"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`prometheus` is not installed; these tests run the real Prometheus: \
                 apt-get install -y --no-install-recommends prometheus \
                 (Debian package `prometheus`; scripts/test does this)"
            )
        })
}

/// The label `name` of the target at `address`.
fn label<'a>(targets: &'a [Value], address: &str, name: &str) -> &'a Value {
    let t = targets
        .iter()
        .find(|t| t["__address__"] == address)
        .unwrap_or_else(|| panic!("no target {address} in {targets:#?}"));
    &t[name]
}

#[tokio::test]
async fn targets_carry_one_group_per_instance_with_meta_labels() {
    let m = Muster::start().await;
    assert_eq!(
        m.targets("").await,
        json!([]),
        "no instances: [] (never null)"
    );

    let a = m
        .register(
            "web",
            json!({"address": "10.0.0.5", "port": 8080, "tags": ["v2", "eu"],
                   "meta": {"version": "2.1.0", "build-id": "b7", "zone.name": "z1", "zone_name": "exact"}}),
        )
        .await;
    let b = m
        .register("web", json!({"address": "::1", "port": 9100}))
        .await;
    let c = m
        .register("api", json!({"address": "db-1.internal", "port": 80}))
        .await;
    // Unhealthy instances are listed too; the status is a label.
    let resp = m
        .http
        .put(m.url(&format!("/api/v1/services/web/instances/{b}/maintenance")))
        .json(&json!({"enabled": true, "reason": "disk swap"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    let group_a = json!({
        "targets": ["10.0.0.5:8080"],
        "labels": {
            "__meta_muster_service": "web",
            "__meta_muster_instance_id": a,
            "__meta_muster_status": "passing",
            "__meta_muster_address": "10.0.0.5",
            "__meta_muster_port": "8080",
            "__meta_muster_tags": ",v2,eu,",
            "__meta_muster_meta_version": "2.1.0",
            "__meta_muster_meta_build_id": "b7",
            // `zone.name` and `zone_name` meet; the key needing no change wins.
            "__meta_muster_meta_zone_name": "exact",
        },
    });
    let group_b = json!({
        "targets": ["[::1]:9100"],
        "labels": {
            "__meta_muster_service": "web",
            "__meta_muster_instance_id": b,
            "__meta_muster_status": "maintenance",
            "__meta_muster_address": "::1",
            "__meta_muster_port": "9100",
            "__meta_muster_tags": ",,",
        },
    });
    let group_c = json!({
        "targets": ["db-1.internal:80"],
        "labels": {
            "__meta_muster_service": "api",
            "__meta_muster_instance_id": c,
            "__meta_muster_status": "passing",
            "__meta_muster_address": "db-1.internal",
            "__meta_muster_port": "80",
            "__meta_muster_tags": ",,",
        },
    });

    let web = m.targets("?service=web").await;
    let mut web_groups = web.as_array().unwrap().clone();
    web_groups.sort_by_key(|g| g["targets"][0].as_str().unwrap().to_string());
    assert_eq!(web_groups, [group_a.clone(), group_b.clone()]);

    let all = m.targets("").await;
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 3, "{all:#?}");
    for g in [&group_a, &group_b, &group_c] {
        assert!(all.contains(g), "{g} missing from {all:#?}");
    }

    assert_eq!(m.targets("?service=nope").await, json!([]));
}

#[tokio::test]
async fn prometheus_http_sd_shows_exactly_the_registered_instances() {
    let m = Muster::start().await;
    let web1 = m
        .register(
            "web",
            json!({"address": "127.0.0.1", "port": 19101, "tags": ["v2"], "meta": {"team": "core"}}),
        )
        .await;
    let web2 = m
        .register("web", json!({"address": "::1", "port": 19102}))
        .await;
    let api = m
        .register("api", json!({"address": "127.0.0.1", "port": 19103}))
        .await;

    let all = m.url("/api/v1/prometheus/targets");
    let mut p = Prometheus::start(&format!(
        r#"  - job_name: muster-all
    http_sd_configs:
      - url: "{all}"
        refresh_interval: 1s
  - job_name: muster-web
    http_sd_configs:
      - url: "{all}?service=web"
        refresh_interval: 1s
"#
    ))
    .await;

    let targets = p
        .wait_for(
            "muster-all",
            &["127.0.0.1:19101", "[::1]:19102", "127.0.0.1:19103"],
        )
        .await;
    for (address, service, id) in [
        ("127.0.0.1:19101", "web", &web1),
        ("[::1]:19102", "web", &web2),
        ("127.0.0.1:19103", "api", &api),
    ] {
        assert_eq!(label(&targets, address, "__meta_muster_service"), service);
        assert_eq!(label(&targets, address, "__meta_muster_instance_id"), id);
        assert_eq!(label(&targets, address, "__meta_muster_status"), "passing");
    }
    assert_eq!(
        label(&targets, "127.0.0.1:19101", "__meta_muster_tags"),
        ",v2,"
    );
    assert_eq!(
        label(&targets, "127.0.0.1:19101", "__meta_muster_meta_team"),
        "core"
    );
    p.wait_for("muster-web", &["127.0.0.1:19101", "[::1]:19102"])
        .await;

    m.deregister("web", &web2).await;
    p.wait_for("muster-all", &["127.0.0.1:19101", "127.0.0.1:19103"])
        .await;
    p.wait_for("muster-web", &["127.0.0.1:19101"]).await;
}

#[tokio::test]
async fn prometheus_consul_sd_shows_exactly_the_registered_instances() {
    let m = Muster::start().await;
    let _web1 = m
        .register(
            "web",
            json!({"address": "127.0.0.1", "port": 19201, "tags": ["v2"]}),
        )
        .await;
    let web2 = m
        .register("web", json!({"address": "::1", "port": 19202}))
        .await;
    let _api = m
        .register("api", json!({"address": "127.0.0.1", "port": 19203}))
        .await;

    // No datacenter: the client asks `/v1/agent/self` for it, as with Consul.
    let mut p = Prometheus::start_with(
        Scraper::Vmagent,
        &format!(
            r#"  - job_name: consul-all
    consul_sd_configs:
      - server: "{addr}"
  - job_name: consul-web
    consul_sd_configs:
      - server: "{addr}"
        services: [web]
"#,
            addr = m.addr
        ),
    )
    .await;

    let targets = p
        .wait_for(
            "consul-all",
            &["127.0.0.1:19201", "[::1]:19202", "127.0.0.1:19203"],
        )
        .await;
    for (address, service) in [
        ("127.0.0.1:19201", "web"),
        ("[::1]:19202", "web"),
        ("127.0.0.1:19203", "api"),
    ] {
        assert_eq!(label(&targets, address, "__meta_consul_service"), service);
    }
    assert_eq!(
        label(&targets, "127.0.0.1:19201", "__meta_consul_tags"),
        ",v2,"
    );
    p.wait_for("consul-web", &["127.0.0.1:19201", "[::1]:19202"])
        .await;

    m.deregister("web", &web2).await;
    p.wait_for("consul-all", &["127.0.0.1:19201", "127.0.0.1:19203"])
        .await;
    p.wait_for("consul-web", &["127.0.0.1:19201"]).await;
}
