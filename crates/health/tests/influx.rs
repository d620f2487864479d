//! The InfluxDB exporter against a real InfluxDB 1.x (Debian package
//! `influxdb`), started per test in a temporary directory. A missing
//! `influxd` fails these tests: the project's test script installs it, and a
//! silently skipped test would hide breakage.

use muster_core::Status;
use muster_health::history::ProbeRecord;
use muster_health::influx::{ExportStats, InfluxConfig, InfluxExporter, ProbePoint};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use time::OffsetDateTime;
use time::macros::datetime;
use tokio_util::sync::CancellationToken;

/// How long anything here may take before the test gives up.
const PATIENCE: Duration = Duration::from_secs(20);

/// A running `influxd` on 127.0.0.1, killed when dropped.
struct Influxd {
    port: u16,
    dir: PathBuf,
    child: Child,
    client: reqwest::Client,
}

impl Influxd {
    /// Starts `influxd` keeping everything in `dir`, serving HTTP on `port`,
    /// and waits until it answers `/ping`.
    async fn start(dir: &Path, port: u16) -> Influxd {
        let bin = find_binary("influxd");
        let config = format!(
            r#"reporting-enabled = false
bind-address = "127.0.0.1:{rpc}"
[meta]
  dir = "{dir}/meta"
[data]
  dir = "{dir}/data"
  wal-dir = "{dir}/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:{port}"
  log-enabled = false
[ifql]
  enabled = false
[continuous_queries]
  enabled = false
[logging]
  level = "warn"
  suppress-logo = true
"#,
            rpc = free_port(),
            dir = dir.display(),
        );
        let conf = dir.join("influxdb.conf");
        std::fs::write(&conf, config).unwrap();
        // Its log goes to a file (no pipe to drain), shown if it fails.
        let log = std::fs::File::create(dir.join("influxd.log")).unwrap();
        let child = Command::new(bin)
            .arg("-config")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut influxd = Influxd {
            port,
            dir: dir.to_path_buf(),
            child,
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
        };
        influxd.wait_ready().await;
        influxd
    }

    async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("influxd exited ({status}); its log:\n{}", self.log());
            }
            let ping = self.client.get(format!("{}/ping", self.url())).send().await;
            if ping.is_ok_and(|r| r.status() == 204) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "influxd did not answer /ping on port {} within {PATIENCE:?}; its log:\n{}",
                self.port,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("influxd.log")).unwrap_or_default()
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs an InfluxQL statement; times come back as Unix milliseconds.
    async fn query(&self, db: &str, q: &str) -> Value {
        let mut url = url::Url::parse(&format!("{}/query", self.url())).unwrap();
        url.query_pairs_mut()
            .append_pair("db", db)
            .append_pair("q", q)
            .append_pair("epoch", "ms");
        let resp = self.client.post(url).send().await.unwrap();
        assert!(resp.status().is_success(), "{q}: HTTP {}", resp.status());
        resp.json().await.unwrap()
    }

    /// The rows of `SELECT * FROM probe` as column → value maps, oldest first.
    async fn probes(&self, db: &str) -> Vec<serde_json::Map<String, Value>> {
        let answer = self.query(db, "SELECT * FROM probe").await;
        let Some(series) = answer["results"][0]["series"][0].as_object() else {
            return Vec::new();
        };
        let columns: Vec<String> = series["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect();
        series["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                columns
                    .iter()
                    .cloned()
                    .zip(row.as_array().unwrap().iter().cloned())
                    .collect()
            })
            .collect()
    }

    /// Polls until `n` probes are stored (or gives up).
    async fn wait_for_probes(&self, db: &str, n: usize) -> Vec<serde_json::Map<String, Value>> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let rows = self.probes(db).await;
            if rows.len() >= n || tokio::time::Instant::now() >= deadline {
                assert_eq!(rows.len(), n, "probes stored: {rows:?}");
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills it and waits until it is gone.
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Influxd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Debian installs `influxd` in /usr/bin; look there too, PATH or not.
fn find_binary(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/usr/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed; the InfluxDB export tests need a real InfluxDB 1.x: \
                 apt-get install -y influxdb (the project's test script does this)"
            )
        })
}

/// A loopback port that was free a moment ago, for `influxd`, which cannot
/// be handed a bound socket.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn record(
    at: OffsetDateTime,
    status: Status,
    status_code: Option<u16>,
    response_ms: u64,
) -> ProbeRecord {
    ProbeRecord {
        id: 1,
        check_id: "unused: the point carries its own check".into(),
        requested_at: at,
        timeout_ms: 2000,
        status_code,
        is_up: status_code.is_some(),
        is_responsive: status_code.is_some(),
        response_ms,
        status,
        output: "not exported".into(),
    }
}

fn point<'a>(check: &'a str, service: &'a str, r: &'a ProbeRecord) -> ProbePoint<'a> {
    ProbePoint {
        check,
        service,
        instance: "10.0.0.5:80",
        record: r,
    }
}

/// Quick batches so the tests do not wait out the one-second default.
fn config(url: String, db: &str) -> InfluxConfig {
    InfluxConfig {
        batch: 2,
        flush_every: Duration::from_millis(50),
        ..InfluxConfig::new(url, db)
    }
}

/// Cancels and waits for the sender to stop, which must be prompt.
async fn shut_down(exporter: &InfluxExporter, cancel: &CancellationToken) {
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), exporter.finished())
        .await
        .expect("the exporter stops within its 2 s last flush");
}

const T0: OffsetDateTime = datetime!(2024-05-01 12:00:00.123 UTC);

#[tokio::test]
async fn probes_arrive_with_their_tags_and_fields() {
    let dir = tempfile::tempdir().unwrap();
    let influxd = Influxd::start(dir.path(), free_port()).await;
    influxd.query("", "CREATE DATABASE muster").await;
    let cancel = CancellationToken::new();
    let exporter = InfluxExporter::start(config(influxd.url(), "muster"), cancel.clone());

    let ok = record(T0, Status::Passing, Some(200), 34);
    let down = record(T0 + Duration::from_secs(1), Status::Critical, None, 2000);
    let slow = record(T0 + Duration::from_secs(2), Status::Warning, Some(429), 7);
    exporter.export(point("web:1", "web", &ok));
    // Every character a tag value must escape.
    exporter.export(point("db:1", "db, primary=yes", &down));
    exporter.export(point("web:1", "web", &slow));

    let rows = influxd.wait_for_probes("muster", 3).await;
    let expect = [
        serde_json::json!({
            "time": 1714564800123u64, "check": "web:1", "service": "web", "instance": "10.0.0.5:80",
            "up": 1, "responsive": 1, "response_ms": 34, "status_code": 200, "status": "passing",
        }),
        serde_json::json!({
            "time": 1714564801123u64, "check": "db:1", "service": "db, primary=yes",
            "instance": "10.0.0.5:80",
            "up": 0, "responsive": 0, "response_ms": 2000, "status_code": null, "status": "critical",
        }),
        serde_json::json!({
            "time": 1714564802123u64, "check": "web:1", "service": "web", "instance": "10.0.0.5:80",
            "up": 1, "responsive": 1, "response_ms": 7, "status_code": 429, "status": "warning",
        }),
    ];
    for (row, expect) in rows.into_iter().zip(expect) {
        assert_eq!(Value::Object(row), expect);
    }

    shut_down(&exporter, &cancel).await;
    assert_eq!(
        exporter.stats(),
        ExportStats {
            sent: 3,
            dropped: 0,
            failed_batches: 0,
            queued: 0
        }
    );
}

#[tokio::test]
async fn a_batch_influxdb_refuses_is_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let influxd = Influxd::start(dir.path(), free_port()).await;
    let cancel = CancellationToken::new();
    // No such database: InfluxDB answers 404, which no retry would change.
    let exporter = InfluxExporter::start(config(influxd.url(), "absent"), cancel.clone());
    let r = record(T0, Status::Passing, Some(200), 1);
    for _ in 0..3 {
        exporter.export(point("web:1", "web", &r));
    }
    // Batches of 2: one full, one sent when `flush_every` passes.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while exporter.stats().queued > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        exporter.stats(),
        ExportStats {
            sent: 0,
            dropped: 3,
            failed_batches: 2,
            queued: 0
        }
    );
    shut_down(&exporter, &cancel).await;
}

#[tokio::test]
async fn a_batch_waits_out_an_outage() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut influxd = Influxd::start(dir.path(), port).await;
    influxd.query("", "CREATE DATABASE muster").await;
    influxd.stop();

    let cancel = CancellationToken::new();
    let exporter = InfluxExporter::start(config(influxd.url(), "muster"), cancel.clone());
    let r = record(T0, Status::Passing, Some(200), 1);
    exporter.export(point("web:1", "web", &r));
    exporter.export(point("web:2", "web", &r));
    // Real time, as InfluxDB is a real process: a few refused connections.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        exporter.stats(),
        ExportStats {
            sent: 0,
            dropped: 0,
            failed_batches: 0,
            queued: 2
        },
        "a failed connection keeps the batch"
    );

    // The same server again, with the database it already had.
    let influxd = Influxd::start(dir.path(), port).await;
    let rows = influxd.wait_for_probes("muster", 2).await;
    let checks: Vec<&Value> = rows.iter().map(|r| &r["check"]).collect();
    assert_eq!(checks, ["web:1", "web:2"]);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while exporter.stats().sent < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(exporter.stats().sent, 2);
    shut_down(&exporter, &cancel).await;
}

#[tokio::test]
async fn a_dead_influxdb_never_slows_probing() {
    // Nothing listens here: every connection is refused.
    let cfg = InfluxConfig::new(format!("http://127.0.0.1:{}", free_port()), "muster");
    let (buffer, batch) = (cfg.buffer as u64, cfg.batch as u64);
    let cancel = CancellationToken::new();
    let exporter = InfluxExporter::start(cfg, cancel.clone());
    const N: u64 = 200_000;

    // `export` is synchronous; if it ever waited for room it would hang here
    // (the queue never drains), which the timeout turns into a failure.
    let e = exporter.clone();
    let exports = tokio::task::spawn_blocking(move || {
        let r = record(T0, Status::Passing, Some(200), 1);
        for _ in 0..N {
            e.export(point("web:1", "web", &r));
        }
    });
    tokio::time::timeout(Duration::from_secs(60), exports)
        .await
        .expect("export never blocks")
        .unwrap();

    let s = exporter.stats();
    assert_eq!(s.sent, 0);
    assert_eq!(s.dropped + s.queued as u64, N, "{s:?}");
    // The queue holds `buffer`; the sender holds at most one batch more.
    assert!(s.queued as u64 <= buffer + batch, "{s:?}");
    assert!(s.dropped >= N - buffer - batch, "{s:?}");

    shut_down(&exporter, &cancel).await;
    assert_eq!(
        exporter.stats(),
        ExportStats {
            sent: 0,
            dropped: N,
            failed_batches: 0,
            queued: 0
        },
        "what could not be flushed at shutdown is counted as dropped"
    );
    // A stopped exporter still answers at once, and counts.
    let r = record(T0, Status::Passing, Some(200), 1);
    exporter.export(point("web:1", "web", &r));
    assert_eq!(exporter.stats().dropped, N + 1);
}
