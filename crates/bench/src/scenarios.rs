//! The scenarios: each starts fresh processes, loads them the same way, and
//! returns rows for the report. muster and etcd get the equivalent work:
//! what an etcd-backed registry would do for the same request.

use crate::load::{self, Conn, MakeRequest, Recorder, Window, http_load, run_workers};
use crate::procs::{Proc, cpu_of};
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use etcd_client::{Client, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use hdrhistogram::Histogram;
use hyper::Method;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub struct Settings {
    pub quick: bool,
    pub warmup: Duration,
    pub measure: Duration,
    pub muster_bin: PathBuf,
    /// The soft open-file limit this harness (and every server it starts) has.
    pub nofile: u64,
}

/// One measured run of one target.
#[derive(Clone, Debug)]
pub struct Row {
    pub scenario: &'static str,
    pub target: &'static str,
    pub clients: usize,
    pub rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub cpu_s: f64,
    pub peak_rss: u64,
    pub errors: u64,
}

#[derive(Clone, Debug)]
pub struct ScaleRow {
    pub instances: usize,
    pub muster_load_rate: f64,
    pub muster_rss: u64,
    pub muster_ready: Duration,
    /// RSS of the restarted server once it lists every instance.
    pub muster_rss_restarted: u64,
    pub muster_disk: u64,
    pub etcd_load_rate: f64,
    pub etcd_rss: u64,
}

/// The instance a registry stores: ~300 bytes of JSON, as in the etcd value.
fn instance_json(n: u64, ttl: Option<&str>) -> String {
    let ttl = ttl.map(|t| format!(r#","ttl":"{t}""#)).unwrap_or_default();
    format!(
        r#"{{"address":"10.{}.{}.{}","port":{},"tags":["v2","eu","canary"],"meta":{{"version":"2.1.{}","zone":"eu-west-1a","commit":"9f8e7d6c5b4a39281706","owner":"payments-team","region":"eu-west-1"}},"weight":1{ttl}}}"#,
        (n >> 16) & 255,
        (n >> 8) & 255,
        n & 255,
        1024 + (n >> 24) % 60000,
        n % 100,
    )
}

fn row(
    scenario: &'static str,
    target: &'static str,
    clients: usize,
    rec: &Recorder,
    secs: f64,
    proc: &Proc,
    cpu: f64,
) -> Row {
    let q = |p: f64| rec.hist.value_at_quantile(p) as f64 / 1000.0;
    if rec.errors > 0 {
        eprintln!(
            "\n{scenario}/{target}/{clients}: {} errors, first: {}",
            rec.errors,
            rec.first_error.as_deref().unwrap_or("?")
        );
    }
    Row {
        scenario,
        target,
        clients,
        rate: rec.hist.len() as f64 / secs,
        p50_ms: q(0.5),
        p99_ms: q(0.99),
        p999_ms: q(0.999),
        cpu_s: cpu,
        peak_rss: proc.peak_rss(),
        errors: rec.errors,
    }
}

/// Runs a load against `proc` and samples its CPU over the measured part of the window.
async fn measured<F>(
    s: &Settings,
    proc: &Proc,
    load: impl FnOnce(Window) -> F,
) -> Result<(Recorder, f64)>
where
    F: Future<Output = Result<Recorder>>,
{
    measured_in(Window::new(s.warmup, s.measure), proc, load).await
}

/// `measured`, in a window already set.
async fn measured_in<F>(
    window: Window,
    proc: &Proc,
    load: impl FnOnce(Window) -> F,
) -> Result<(Recorder, f64)>
where
    F: Future<Output = Result<Recorder>>,
{
    let pid_cpu = cpu_over(proc.pid, window);
    let rec = load(window).await?;
    let cpu = pid_cpu.await?;
    Ok((rec, cpu))
}

/// The CPU seconds process `pid` uses over the measured part of `window`.
fn cpu_over(pid: u32, window: Window) -> tokio::task::JoinHandle<f64> {
    tokio::spawn(async move {
        tokio::time::sleep_until(window.warm_until).await;
        let a = cpu_of(pid);
        tokio::time::sleep_until(window.end).await;
        cpu_of(pid) - a
    })
}

async fn etcd_client(p: &Proc) -> Result<Client> {
    Ok(Client::connect([p.addr.as_str()], None).await?)
}

async fn fresh_muster(s: &Settings) -> Result<(Proc, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let (p, _) = Proc::muster(&s.muster_bin, &dir.path().join("data")).await?;
    Ok((p, dir))
}

/// The ceiling: a trivial server's GET rate at each concurrency.
pub async fn ceiling(s: &Settings, clients: &[usize]) -> Result<Vec<Row>> {
    let p = Proc::ceiling().await?;
    let mut rows = Vec::new();
    for &c in clients {
        crate::progress::set(format!("ceiling GET, {c} clients"));
        let make: MakeRequest = Arc::new(|_, _| (Method::GET, "/".to_string(), None));
        let (rec, cpu) = measured(s, &p, |w| http_load(&p.addr, c, w, make)).await?;
        rows.push(row(
            "ceiling GET",
            "ceiling",
            c,
            &rec,
            s.measure.as_secs_f64(),
            &p,
            cpu,
        ));
    }
    Ok(rows)
}

/// Durable registration of unique instances: muster POST vs etcd LeaseGrant + Put with that lease.
pub async fn registration(s: &Settings, clients: &[usize]) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &c in clients {
        crate::progress::set(format!("registration: muster, {c} clients"));
        let (p, _dir) = fresh_muster(s).await?;
        let counter = Arc::new(AtomicU64::new(0));
        let make: MakeRequest = Arc::new(move |_, _| {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            let body = instance_json(n, Some("60s"));
            (
                Method::POST,
                "/api/v1/services/bench/instances".to_string(),
                Some(Bytes::from(body)),
            )
        });
        let (rec, cpu) = measured(s, &p, |w| http_load(&p.addr, c, w, make)).await?;
        rows.push(row(
            "registration",
            "muster",
            c,
            &rec,
            s.measure.as_secs_f64(),
            &p,
            cpu,
        ));
        drop(p);

        crate::progress::set(format!("registration: etcd, {c} clients"));
        let e = Proc::etcd().await?;
        let client = etcd_client(&e).await?;
        let counter = Arc::new(AtomicU64::new(0));
        let states: Vec<(Client, Arc<AtomicU64>)> =
            (0..c).map(|_| (client.clone(), counter.clone())).collect();
        let (rec, cpu) = measured(s, &e, |w| {
            run_workers(w, states, |(cl, counter), _| {
                Box::pin(async move {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let lease = cl.lease_grant(60, None).await?;
                    let opts = PutOptions::new().with_lease(lease.id());
                    cl.put(
                        format!("/registry/bench/{n}"),
                        instance_json(n, None),
                        Some(opts),
                    )
                    .await?;
                    Ok(())
                })
            })
        })
        .await?;
        rows.push(row(
            "registration",
            "etcd",
            c,
            &rec,
            s.measure.as_secs_f64(),
            &e,
            cpu,
        ));
    }
    Ok(rows)
}

/// Registers `total` instances through `conns` connections as fast as they go; returns the rate.
async fn bulk_register(
    addr: &str,
    conns: usize,
    total: u64,
    path_for: impl Fn(u64) -> (Method, String, String) + Send + Sync + 'static,
) -> Result<f64> {
    let next = Arc::new(AtomicU64::new(0));
    let path_for = Arc::new(path_for);
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let mut conn = Conn::open(addr).await?;
        let next = next.clone();
        let path_for = path_for.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                let (m, path, body) = path_for(n);
                conn.ok(m, &path, Some(Bytes::from(body))).await?;
                load::PROGRESS.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Heartbeats of 10k ttl instances: muster PUT heartbeat vs etcd LeaseKeepAlive round trips.
pub async fn heartbeat(s: &Settings, clients: usize) -> Result<Vec<Row>> {
    let n: u64 = 10_000;
    crate::progress::set("heartbeat: registering 10k ttl instances in muster".into());
    let (p, _dir) = fresh_muster(s).await?;
    bulk_register(&p.addr, 64, n, |i| {
        (
            Method::PUT,
            format!("/api/v1/services/hb/instances/hb-{i}"),
            instance_json(i, Some("60s")),
        )
    })
    .await?;
    crate::progress::set(format!("heartbeat: muster, {clients} clients"));
    let make: MakeRequest = Arc::new(move |w, seq| {
        let id = (w as u64 + seq * clients as u64) % n;
        (
            Method::PUT,
            format!("/api/v1/services/hb/instances/hb-{id}/heartbeat"),
            None,
        )
    });
    let (rec, cpu) = measured(s, &p, |w| http_load(&p.addr, clients, w, make)).await?;
    let mut rows = vec![row(
        "heartbeat (10k ttl)",
        "muster",
        clients,
        &rec,
        s.measure.as_secs_f64(),
        &p,
        cpu,
    )];
    drop(p);

    crate::progress::set("heartbeat: granting 10k etcd leases".into());
    let e = Proc::etcd().await?;
    let client = etcd_client(&e).await?;
    let mut leases = Vec::with_capacity(n as usize);
    let grants: Vec<_> = (0..64)
        .map(|w| {
            let mut cl = client.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in (w..n).step_by(64) {
                    ids.push(cl.lease_grant(60, None).await?.id());
                }
                Ok::<_, etcd_client::Error>(ids)
            })
        })
        .collect();
    for g in grants {
        leases.extend(g.await??);
    }
    crate::progress::set(format!("heartbeat: etcd, {clients} keepalive streams"));
    // etcd-client binds a keepalive stream to one lease, so each stream renews
    // its own lease in a loop: the round-trip rate is what is measured.
    let mut states = Vec::new();
    for w in 0..clients {
        let mut cl = client.clone();
        states.push(cl.lease_keep_alive(leases[w % leases.len()]).await?);
    }
    let (rec, cpu) = measured(s, &e, |w| {
        run_workers(w, states, |(keeper, stream), _| {
            Box::pin(async move {
                keeper.keep_alive().await?;
                stream.message().await?.context("keepalive stream ended")?;
                Ok(())
            })
        })
    })
    .await?;
    rows.push(row(
        "heartbeat (10k ttl)",
        "etcd",
        clients,
        &rec,
        s.measure.as_secs_f64(),
        &e,
        cpu,
    ));
    Ok(rows)
}

/// Discovery: all instances of a 100-instance service. muster GET vs etcd Range over the prefix.
pub async fn discovery(s: &Settings, clients: usize) -> Result<Vec<Row>> {
    crate::progress::set("discovery: registering 100 instances".into());
    let (p, _dir) = fresh_muster(s).await?;
    bulk_register(&p.addr, 8, 100, |i| {
        (
            Method::POST,
            "/api/v1/services/disco/instances".into(),
            instance_json(i, None),
        )
    })
    .await?;
    let (st, body) = load::get_once(&p.addr, "/api/v1/services/disco/instances").await?;
    let listed = serde_json::from_slice::<serde_json::Value>(&body)?
        .as_array()
        .map_or(0, |a| a.len());
    if st != 200 || listed != 100 {
        bail!("discovery setup: expected 100 instances, got {listed} (HTTP {st})");
    }
    crate::progress::set(format!("discovery: muster, {clients} clients"));
    let make: MakeRequest = Arc::new(|_, _| {
        (
            Method::GET,
            "/api/v1/services/disco/instances".to_string(),
            None,
        )
    });
    let (rec, cpu) = measured(s, &p, |w| http_load(&p.addr, clients, w, make)).await?;
    let mut rows = vec![row(
        "discovery (100 instances)",
        "muster",
        clients,
        &rec,
        s.measure.as_secs_f64(),
        &p,
        cpu,
    )];
    drop(p);

    let e = Proc::etcd().await?;
    let mut client = etcd_client(&e).await?;
    for i in 0..100 {
        client
            .put(format!("/registry/disco/{i}"), instance_json(i, None), None)
            .await?;
    }
    crate::progress::set(format!("discovery: etcd, {clients} clients"));
    let states: Vec<Client> = (0..clients).map(|_| client.clone()).collect();
    let (rec, cpu) = measured(s, &e, |w| {
        run_workers(w, states, |cl, _| {
            Box::pin(async move {
                let r = cl
                    .get("/registry/disco/", Some(GetOptions::new().with_prefix()))
                    .await?;
                if r.kvs().len() != 100 {
                    bail!("etcd range returned {} keys", r.kvs().len());
                }
                Ok(())
            })
        })
    })
    .await?;
    rows.push(row(
        "discovery (100 instances)",
        "etcd",
        clients,
        &rec,
        s.measure.as_secs_f64(),
        &e,
        cpu,
    ));
    Ok(rows)
}

fn dir_size(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Scale: RSS with `n` registered instances, and time from start to /ready after a restart.
pub async fn scale(s: &Settings, n: usize) -> Result<ScaleRow> {
    crate::progress::set(format!("scale: loading {n} instances into muster"));
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let (p, _) = Proc::muster(&s.muster_bin, &data).await?;
    let muster_load_rate = bulk_register(&p.addr, 64, n as u64, |i| {
        (
            Method::POST,
            "/api/v1/services/scale/instances".into(),
            instance_json(i, None),
        )
    })
    .await?;
    let muster_rss = p.rss();
    p.terminate().await?;
    let muster_disk = dir_size(&data);
    crate::progress::set(format!("scale: restarting muster with {n} instances"));
    let (p, muster_ready) = Proc::muster(&s.muster_bin, &data).await?;
    let (_, body) = load::get_once(&p.addr, "/api/v1/services").await?;
    let count = serde_json::from_slice::<serde_json::Value>(&body)?[0]["instances"]
        .as_u64()
        .unwrap_or(0);
    if count != n as u64 {
        bail!("after restart muster lists {count} instances, expected {n}");
    }
    let muster_rss_restarted = p.rss();
    drop(p);

    crate::progress::set(format!("scale: loading {n} keys into etcd"));
    let e = Proc::etcd().await?;
    let client = etcd_client(&e).await?;
    let started = tokio::time::Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let mut cl = client.clone();
            let next = next.clone();
            tokio::spawn(async move {
                loop {
                    let from = next.fetch_add(100, Ordering::Relaxed);
                    if from >= n as u64 {
                        return Ok::<_, etcd_client::Error>(());
                    }
                    let ops: Vec<TxnOp> = (from..(from + 100).min(n as u64))
                        .map(|i| {
                            TxnOp::put(format!("/registry/scale/{i}"), instance_json(i, None), None)
                        })
                        .collect();
                    let k = ops.len() as u64;
                    cl.txn(Txn::new().and_then(ops)).await?;
                    load::PROGRESS.fetch_add(k, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let etcd_load_rate = n as f64 / started.elapsed().as_secs_f64();
    Ok(ScaleRow {
        instances: n,
        muster_load_rate,
        muster_rss,
        muster_ready,
        muster_rss_restarted,
        muster_disk,
        etcd_load_rate,
        etcd_rss: e.rss(),
    })
}

/// What the health-check scenario measured.
#[derive(Clone, Debug)]
pub struct ProbeRun {
    pub checks: usize,
    pub secs: f64,
    pub probes_per_sec: f64,
    /// muster's CPU over the window, in cores (1.0 = one core busy).
    pub cpu_cores: f64,
    /// Upper bounds of the lag histogram buckets holding p50 and p99.
    pub lag_p50_ms: f64,
    pub lag_p99_ms: f64,
    /// From a target's death until its instance left `?healthy=true`.
    pub detect_ms: f64,
    pub detect_budget_ms: f64,
}

/// Sums a counter family and reads a histogram's cumulative buckets from /metrics text.
fn scrape(text: &str) -> (f64, Vec<(f64, f64)>) {
    let mut probes = 0.0;
    let mut buckets = Vec::new();
    for line in text.lines() {
        let value = || {
            line.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        if line.starts_with("muster_probes_total{") {
            probes += value();
        } else if let Some(rest) =
            line.strip_prefix("muster_probe_schedule_lag_seconds_bucket{le=\"")
        {
            let le = rest.split('"').next().unwrap_or("+Inf");
            buckets.push((le.parse::<f64>().unwrap_or(f64::INFINITY), value()));
        }
    }
    (probes, buckets)
}

/// The bucket bound under which `q` of the observations between two scrapes fall.
fn bucket_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| {
            (
                *le,
                n - before
                    .iter()
                    .find(|(l, _)| l == le)
                    .map_or(0.0, |(_, m)| *m),
            )
        })
        .collect();
    let total = delta.last().map_or(0.0, |(_, n)| *n);
    delta
        .iter()
        .find(|(_, n)| *n >= q * total)
        .map_or(f64::INFINITY, |(le, _)| *le)
}

/// 10,000 HTTP checks at a 1 s interval against a local keep-alive target;
/// then how fast a dead target's instance leaves the healthy list.
pub async fn probes(s: &Settings) -> Result<ProbeRun> {
    let checks: u64 = if s.quick { 1_000 } else { 10_000 };
    let measure = if s.quick {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(60)
    };
    let target = Proc::ceiling().await?;
    let (p, _dir) = fresh_muster(s).await?;
    crate::progress::set(format!(
        "health: registering {checks} instances with an http check each"
    ));
    let url = format!("http://{}/health", target.addr);
    bulk_register(&p.addr, 64, checks, move |i| {
        let body = format!(
            r#"{{"address":"10.9.{}.{}","port":8080,"checks":[{{"http":"{url}","interval":"1s","timeout":"1s"}}]}}"#,
            (i >> 8) & 255,
            i & 255
        );
        (Method::PUT, format!("/api/v1/services/probed/instances/p-{i}"), body)
    })
    .await?;
    crate::progress::set(format!(
        "health: {checks} checks at 1 s for {}s",
        measure.as_secs()
    ));
    tokio::time::sleep(s.warmup.max(Duration::from_secs(2))).await;
    let metrics = |addr: String| async move {
        let (_, body) = load::get_once(&addr, "/metrics").await?;
        Ok::<_, anyhow::Error>(scrape(&String::from_utf8_lossy(&body)))
    };
    let (n0, b0) = metrics(p.addr.clone()).await?;
    let cpu0 = crate::procs::cpu_of(p.pid);
    let t0 = tokio::time::Instant::now();
    tokio::time::sleep(measure).await;
    let (n1, b1) = metrics(p.addr.clone()).await?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = crate::procs::cpu_of(p.pid) - cpu0;

    crate::progress::set(
        "health: time from a target dying to its instance leaving the healthy list".into(),
    );
    let dying = Proc::ceiling().await?;
    let mut conn = Conn::open(&p.addr).await?;
    let body = format!(
        r#"{{"address":"127.0.0.1","port":1,"checks":[{{"http":"http://{}/health","interval":"1s","timeout":"1s"}}]}}"#,
        dying.addr
    );
    conn.ok(
        Method::PUT,
        "/api/v1/services/dying/instances/d-1",
        Some(Bytes::from(body)),
    )
    .await?;
    let healthy = "/api/v1/services/dying/instances?healthy=true";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while conn.ok(Method::GET, healthy, None).await?.len() <= 2 {
        if tokio::time::Instant::now() > deadline {
            bail!("the dying target's instance never became healthy");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(dying); // SIGKILL: the port refuses connections from now on
    let died = tokio::time::Instant::now();
    while conn.ok(Method::GET, healthy, None).await?.len() > 2 {
        if died.elapsed() > Duration::from_secs(10) {
            bail!("the dead target's instance stayed healthy for 10 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let detect_ms = died.elapsed().as_secs_f64() * 1000.0;
    drop(target);
    Ok(ProbeRun {
        checks: checks as usize,
        secs,
        probes_per_sec: (n1 - n0) / secs,
        cpu_cores: cpu / secs,
        lag_p50_ms: bucket_quantile(&b0, &b1, 0.5) * 1000.0,
        lag_p99_ms: bucket_quantile(&b0, &b1, 0.99) * 1000.0,
        detect_ms,
        // interval × failures_before_critical + 100 ms
        detect_budget_ms: 1100.0,
    })
}

/// One side (muster or etcd) of the fan-out scenario.
#[derive(Clone, Debug)]
pub struct FanoutSide {
    /// Per round: from sending the change to the LAST watcher's copy arriving.
    pub last_p50_ms: f64,
    pub last_p99_ms: f64,
    /// Over every delivery of every round: from sending the change to that copy arriving.
    pub all_p50_ms: f64,
    pub all_p99_ms: f64,
    /// The server's RSS added by opening the watchers, divided by their number.
    pub bytes_per_watcher: f64,
    /// CPU time per change over the rounds, of the server and of this harness
    /// (which reads every watcher's copy on the same cores).
    pub server_cpu_ms: f64,
    pub harness_cpu_ms: f64,
}

#[derive(Clone, Debug)]
pub struct FanoutRow {
    pub watchers: usize,
    /// What was asked for (more than `watchers` when the open-file limit capped it).
    pub requested: usize,
    pub rounds: usize,
    /// Connections (clients) etcd's watches were spread over.
    pub etcd_clients: usize,
    pub muster: FanoutSide,
    /// The harness's fan-out ceiling server: one pre-encoded frame written to every socket.
    pub ceiling: FanoutSide,
    /// Bytes of the event's payload muster sent (and the ceiling copies).
    pub payload: usize,
    pub etcd: FanoutSide,
}

/// What a watcher-reading task reports to the scenario.
pub(crate) enum Seen {
    /// A watcher is open (muster: snapshot read; etcd: watch created).
    Ready,
    /// Watchers received the change, each at this time, with a payload of
    /// this many bytes (0 for etcd's): what a reader read in one look.
    Arrived(Vec<(tokio::time::Instant, usize)>),
    Failed(String),
}

const FAN_PREFIX: &str = "/registry/fan/";

/// Waits until `n` watchers have reported `Ready`.
async fn await_ready(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Seen>,
    n: usize,
    within: Duration,
) -> Result<()> {
    let mut ready = 0;
    let deadline = tokio::time::Instant::now() + within;
    while ready < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Seen::Ready)) => ready += 1,
            Ok(Some(Seen::Arrived(..))) => {}
            Ok(Some(Seen::Failed(e))) => bail!("opening watchers: {e}"),
            Ok(None) => bail!("every watcher task ended"),
            Err(_) => bail!("only {ready} of {n} watchers open after {within:?}"),
        }
    }
    Ok(())
}

/// Waits until `n` watchers have received the change; their arrival times
/// and payload sizes.
async fn await_arrivals(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Seen>,
    n: usize,
) -> Result<Vec<(tokio::time::Instant, usize)>> {
    let mut got = Vec::with_capacity(n);
    let within = Duration::from_secs(30);
    let deadline = tokio::time::Instant::now() + within;
    while got.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Seen::Arrived(copies))) => got.extend(copies),
            Ok(Some(Seen::Ready)) => {}
            Ok(Some(Seen::Failed(e))) => bail!("a watcher failed: {e}"),
            Ok(None) => bail!("every watcher task ended"),
            Err(_) => bail!(
                "only {} of {n} watchers got the change within {within:?}",
                got.len()
            ),
        }
    }
    Ok(got)
}

/// How a round's change is made.
enum Changer {
    Muster(Conn),
    /// The fan-out ceiling server: `POST /fire`.
    Ceiling(Conn),
    Etcd(Box<Client>),
}

impl Changer {
    async fn change(&mut self, id: &str, n: u64) -> Result<()> {
        match self {
            Changer::Muster(conn) => {
                conn.ok(
                    Method::PUT,
                    &format!("/api/v1/services/fan/instances/{id}"),
                    Some(Bytes::from(instance_json(n, None))),
                )
                .await?;
            }
            Changer::Ceiling(conn) => {
                conn.ok(Method::POST, "/fire", None).await?;
            }
            Changer::Etcd(client) => {
                client
                    .put(format!("{FAN_PREFIX}{id}"), instance_json(n, None), None)
                    .await?;
            }
        }
        Ok(())
    }
}

/// `rounds` changes, one at a time, each waited for at every watcher of
/// `server`; `rss` is the server's memory before and after opening them.
async fn fan_rounds(
    server: &Proc,
    changer: &mut Changer,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Seen>,
    watchers: usize,
    rounds: usize,
    rss: (u64, u64),
) -> Result<FanoutSide> {
    let hist = || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3);
    let (mut last, mut all) = (hist()?, hist()?);
    let me = std::process::id();
    let (server_cpu, harness_cpu) = (cpu_of(server.pid), cpu_of(me));
    for r in 0..rounds {
        let sent = tokio::time::Instant::now();
        changer.change(&format!("f-{r}"), r as u64).await?;
        let arrivals = await_arrivals(rx, watchers).await?;
        let us = |(t, _): &(tokio::time::Instant, usize)| {
            (t.duration_since(sent).as_micros() as u64).max(1)
        };
        for t in &arrivals {
            all.record(us(t))?;
        }
        last.record(arrivals.iter().map(us).max().unwrap_or(1))?;
        load::PROGRESS.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let per_change = |cpu: f64| cpu * 1000.0 / rounds as f64;
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(FanoutSide {
        last_p50_ms: ms(&last, 0.5),
        last_p99_ms: ms(&last, 0.99),
        all_p50_ms: ms(&all, 0.5),
        all_p99_ms: ms(&all, 0.99),
        bytes_per_watcher: rss.1.saturating_sub(rss.0) as f64 / watchers as f64,
        server_cpu_ms: per_change(cpu_of(server.pid) - server_cpu),
        harness_cpu_ms: per_change(cpu_of(me) - harness_cpu),
    })
}

/// `share` watches on the prefix over one etcd connection, all on one gRPC
/// watch stream (as etcd's Go client multiplexes watches), reported like the
/// WebSocket watchers.
async fn spawn_etcd_watchers(
    addr: &str,
    share: usize,
    tx: &tokio::sync::mpsc::UnboundedSender<Seen>,
) -> Result<tokio::task::JoinHandle<()>> {
    let mut client = Client::connect([addr], None).await?;
    let opts = || Some(WatchOptions::new().with_prefix());
    let stream = client.watch(FAN_PREFIX, opts()).await?;
    let tx = tx.clone();
    Ok(tokio::spawn(async move {
        let _client = client;
        let (mut sender, mut responses) = stream.split();
        let creating = async {
            for _ in 1..share {
                if let Err(e) = sender.watch(FAN_PREFIX, opts()).await {
                    let _ = tx.send(Seen::Failed(format!("etcd watch create: {e}")));
                    return;
                }
            }
        };
        let reading = async {
            loop {
                let seen = match responses.message().await {
                    Ok(Some(r)) if r.canceled() => {
                        Seen::Failed(format!("etcd canceled a watch: {}", r.cancel_reason()))
                    }
                    Ok(Some(r)) if r.created() => {
                        load::PROGRESS.fetch_add(1, Ordering::Relaxed);
                        Seen::Ready
                    }
                    Ok(Some(r)) if !r.events().is_empty() => {
                        Seen::Arrived(vec![(tokio::time::Instant::now(), 0)])
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) => Seen::Failed("etcd watch stream ended".into()),
                    Err(e) => Seen::Failed(format!("etcd watch stream: {e}")),
                };
                let failed = matches!(seen, Seen::Failed(_));
                let _ = tx.send(seen);
                if failed {
                    return;
                }
            }
        };
        tokio::join!(creating, reading);
    }))
}

/// One change fanned out to `watchers` watchers: muster's WebSocket feed, the
/// fan-out ceiling server (read the same way), then etcd's watch, each on a
/// fresh server. Latency from sending the change to
/// each copy arriving; memory as the server's RSS growth per watcher.
pub async fn fanout(s: &Settings, watchers: usize) -> Result<FanoutRow> {
    // Each side holds one descriptor per watcher, plus some to spare.
    let limit = usize::try_from(s.nofile).unwrap_or(usize::MAX);
    let n = watchers.min(limit.saturating_sub(256)).max(1);
    if n < watchers {
        eprintln!(
            "\nfanout: the open-file limit is {limit}; measuring {n} watchers instead of {watchers}"
        );
    }
    // Enough rounds that the last watcher's p99 is a percentile (the
    // second-worst round of 100), not the worst round of a few.
    let rounds = if s.quick { 5 } else { 100 };
    let settle = Duration::from_millis(if s.quick { 100 } else { 500 });

    // ---- muster ----
    crate::progress::set(format!("fanout: muster, opening {n} WebSocket watchers"));
    let (p, _dir) = fresh_muster(s).await?;
    let mut changer = Changer::Muster(Conn::open(&p.addr).await?);
    let (muster, payload) = ws_side(&p, &mut changer, n, rounds, settle).await?;
    drop(changer);
    drop(p);

    // ---- ceiling: the same watchers and reader, one frame of muster's size ----
    crate::progress::set(format!("fanout: ceiling, opening {n} WebSocket watchers"));
    let c = Proc::ceiling_fanout(payload).await?;
    let mut changer = Changer::Ceiling(Conn::open(&c.addr).await?);
    let (ceiling, _) = ws_side(&c, &mut changer, n, rounds, settle).await?;
    drop(changer);
    drop(c);

    // ---- etcd ----
    let clients = n.div_ceil(1000);
    crate::progress::set(format!(
        "fanout: etcd, opening {n} watches over {clients} connections"
    ));
    let e = Proc::etcd().await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut changer = Changer::Etcd(Box::new(etcd_client(&e).await?));
    let warm = spawn_etcd_watchers(&e.addr, 1, &tx).await?;
    await_ready(&mut rx, 1, Duration::from_secs(30)).await?;
    changer.change("warm", 0).await?;
    await_arrivals(&mut rx, 1).await?;
    warm.abort();
    tokio::time::sleep(settle).await;
    let before = e.rss();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let share = n / clients + usize::from(c < n % clients);
        tasks.push(spawn_etcd_watchers(&e.addr, share, &tx).await?);
    }
    await_ready(&mut rx, n, Duration::from_secs(300)).await?;
    tokio::time::sleep(settle).await;
    let after = e.rss();
    crate::progress::set(format!("fanout: etcd, {rounds} puts to {n} watches"));
    let etcd = fan_rounds(&e, &mut changer, &mut rx, n, rounds, (before, after)).await?;
    tasks.iter().for_each(|h| h.abort());
    Ok(FanoutRow {
        watchers: n,
        requested: watchers,
        rounds,
        etcd_clients: clients,
        muster,
        ceiling,
        payload,
        etcd,
    })
}

/// One WebSocket side of the fan-out scenario (muster, or the ceiling that
/// mimics it): a warm-up watcher and change, then `n` watchers and `rounds`
/// changes. Also returns the size of the event payload the watchers got.
async fn ws_side(
    p: &Proc,
    changer: &mut Changer,
    n: usize,
    rounds: usize,
    settle: Duration,
) -> Result<(FanoutSide, usize)> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // Warm-up: one watcher, one change, so code and pools first touched by
    // the feed are not counted against the watchers.
    let warm = crate::watchers::spawn(&p.addr, 1, &tx)?;
    await_ready(&mut rx, 1, Duration::from_secs(30)).await?;
    changer.change("warm", 0).await?;
    let payload = await_arrivals(&mut rx, 1).await?[0].1;
    drop(warm);
    tokio::time::sleep(settle).await;
    let before = p.rss();
    let watchers = crate::watchers::spawn(&p.addr, n, &tx)?;
    await_ready(&mut rx, n, Duration::from_secs(300)).await?;
    tokio::time::sleep(settle).await;
    let after = p.rss();
    crate::progress::set(format!(
        "fanout: {}, {rounds} changes to {n} watchers",
        p.name
    ));
    let side = fan_rounds(p, changer, &mut rx, n, rounds, (before, after)).await?;
    drop(watchers);
    Ok((side, payload))
}

/// What the blocking-query scenario measured.
#[derive(Clone, Debug)]
pub struct BlockingRow {
    /// Blocking queries held open at once, one connection each.
    pub queries: usize,
    /// What was asked for (more than `queries` when the open-file limit capped it).
    pub requested: usize,
    /// Harness tasks the connections were spread over.
    pub tasks: usize,
    /// muster's VmRSS before opening the queries and once they all wait.
    pub rss_before: u64,
    pub rss_after: u64,
    /// muster's CPU seconds over `idle_secs` with every query waiting.
    pub idle_secs: f64,
    pub idle_cpu_s: f64,
    /// Queries that returned before their own service changed: after
    /// another service's change (within `quiet_ms`), or at all earlier.
    pub early: usize,
    pub quiet_ms: u64,
    /// From sending the change of `blk` to each query's whole answer arriving.
    pub wake_p50_ms: f64,
    pub wake_p99_ms: f64,
    pub wake_max_ms: f64,
    /// muster's CPU from the change until the last answer arrived.
    pub wake_cpu_ms: f64,
}

/// What a blocking-query task reports.
enum Blk {
    /// A query was handed to its connection.
    Ready,
    /// A query's whole answer arrived, at this time, with this X-Consul-Index.
    Returned(tokio::time::Instant, u64),
    Failed(String),
}

fn consul_index(reply: &load::Reply) -> Result<u64> {
    let h = reply
        .headers
        .get("x-consul-index")
        .context("no X-Consul-Index header")?;
    h.to_str()?
        .parse()
        .with_context(|| format!("X-Consul-Index {h:?} is not a number"))
}

/// A Consul health read of `service`: its X-Consul-Index.
async fn health_index(conn: &mut Conn, service: &str) -> Result<u64> {
    let r = conn
        .send_full(Method::GET, &format!("/v1/health/service/{service}"), None)
        .await?;
    if r.status != 200 {
        bail!(
            "GET /v1/health/service/{service}: HTTP {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    consul_index(&r)
}

async fn put_instance(conn: &mut Conn, service: &str, id: &str, n: u64) -> Result<()> {
    conn.ok(
        Method::PUT,
        &format!("/api/v1/services/{service}/instances/{id}"),
        Some(Bytes::from(instance_json(n, None))),
    )
    .await?;
    Ok(())
}

/// Opens `n` keep-alive connections over `tasks` tasks, each sending one
/// `GET /v1/health/service/{service}?index={after}&wait=5m`, and reports
/// each once handed to its connection and once answered.
fn spawn_blocking_queries(
    addr: &str,
    service: &str,
    after: u64,
    n: usize,
    tasks: usize,
    tx: &tokio::sync::mpsc::UnboundedSender<Blk>,
) -> Vec<tokio::task::JoinHandle<()>> {
    use futures_util::StreamExt;
    let tasks = tasks.clamp(1, n.max(1));
    (0..tasks)
        .map(|t| {
            let share = n / tasks + usize::from(t < n % tasks);
            let addr = addr.to_string();
            let path = format!("/v1/health/service/{service}?index={after}&wait=5m");
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut waiting = futures_util::stream::FuturesUnordered::new();
                // One connection at a time per task: a few connects in
                // flight at once, never a burst past the listen backlog.
                // The requests are written by each connection's own task,
                // so they wait at the server while the rest open.
                for _ in 0..share {
                    let opened = async {
                        let mut conn = Conn::open(&addr).await?;
                        let reply = conn.start(Method::GET, &path, None).await?;
                        Ok::<_, anyhow::Error>(async move {
                            let r = reply.await;
                            drop(conn);
                            (tokio::time::Instant::now(), r)
                        })
                    };
                    match opened.await {
                        Ok(query) => {
                            waiting.push(query);
                            load::PROGRESS.fetch_add(1, Ordering::Relaxed);
                            let _ = tx.send(Blk::Ready);
                        }
                        Err(e) => {
                            let _ = tx.send(Blk::Failed(format!("opening a query: {e:#}")));
                            return;
                        }
                    }
                }
                while let Some((at, r)) = waiting.next().await {
                    let seen = match r {
                        Ok(reply) if reply.status == 200 => match consul_index(&reply) {
                            Ok(i) => Blk::Returned(at, i),
                            Err(e) => Blk::Failed(format!("{e:#}")),
                        },
                        Ok(reply) => Blk::Failed(format!(
                            "a blocking query got HTTP {}: {}",
                            reply.status,
                            String::from_utf8_lossy(&reply.body)
                        )),
                        Err(e) => Blk::Failed(format!("a blocking query: {e:#}")),
                    };
                    let _ = tx.send(seen);
                }
            })
        })
        .collect()
}

/// The blocking queries' answers that arrive until `deadline`, or until
/// `want` have; a failure ends the scenario.
async fn blk_returns(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Blk>,
    want: usize,
    deadline: tokio::time::Instant,
) -> Result<Vec<(tokio::time::Instant, u64)>> {
    let mut got = Vec::new();
    while got.len() < want {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Blk::Returned(at, i))) => got.push((at, i)),
            Ok(Some(Blk::Ready)) => {}
            Ok(Some(Blk::Failed(e))) => bail!("{e}"),
            Ok(None) => bail!("every blocking-query task ended"),
            Err(_) => break,
        }
    }
    Ok(got)
}

/// Waits until `n` blocking queries have been handed to their connections;
/// any answer before that is an early return.
async fn blk_ready(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Blk>,
    n: usize,
    within: Duration,
) -> Result<usize> {
    let (mut ready, mut early) = (0, 0);
    let deadline = tokio::time::Instant::now() + within;
    while ready < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Blk::Ready)) => ready += 1,
            Ok(Some(Blk::Returned(..))) => early += 1,
            Ok(Some(Blk::Failed(e))) => bail!("{e}"),
            Ok(None) => bail!("every blocking-query task ended"),
            Err(_) => bail!("only {ready} of {n} blocking queries open after {within:?}"),
        }
    }
    Ok(early)
}

/// 5,000 idle Consul blocking queries on one service (`--quick`: 200):
/// muster's memory per waiting query, its CPU while they wait, whether a
/// change to another service wakes any, and how long waking them all takes.
pub async fn blocking(s: &Settings) -> Result<BlockingRow> {
    let requested = if s.quick { 200 } else { 5_000 };
    // The server holds one descriptor per query, plus some to spare.
    let limit = usize::try_from(s.nofile).unwrap_or(usize::MAX);
    let n = requested.min(limit.saturating_sub(256)).max(1);
    if n < requested {
        eprintln!(
            "\nblocking: the open-file limit is {limit}; measuring {n} queries instead of {requested}"
        );
    }
    let tasks = 8;
    let settle = Duration::from_secs(1);
    let idle = Duration::from_secs(if s.quick { 1 } else { 5 });
    let quiet = Duration::from_millis(500);

    crate::progress::set(format!("blocking: muster, opening {n} blocking queries"));
    let (p, _dir) = fresh_muster(s).await?;
    let mut conn = Conn::open(&p.addr).await?;
    put_instance(&mut conn, "blk", "b-1", 1).await?;
    put_instance(&mut conn, "other", "o-1", 2).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // Warm-up: one blocking query of a service of its own, woken by a
    // change, so code and pools a blocking query first touches are not
    // counted against the queries measured.
    let warm_index = health_index(&mut conn, "warm").await?;
    let warm = spawn_blocking_queries(&p.addr, "warm", warm_index, 1, 1, &tx);
    blk_ready(&mut rx, 1, Duration::from_secs(30)).await?;
    put_instance(&mut conn, "warm", "w-1", 3).await?;
    let woke = blk_returns(
        &mut rx,
        1,
        tokio::time::Instant::now() + Duration::from_secs(30),
    )
    .await?;
    if woke.len() != 1 {
        bail!("the warm-up blocking query did not return on its service's change");
    }
    warm.iter().for_each(|h| h.abort());
    tokio::time::sleep(settle).await;

    let index = health_index(&mut conn, "blk").await?;
    let rss_before = p.rss();
    let handles = spawn_blocking_queries(&p.addr, "blk", index, n, tasks, &tx);
    let mut early = blk_ready(&mut rx, n, Duration::from_secs(300)).await?;
    tokio::time::sleep(settle).await;
    let rss_after = p.rss();

    crate::progress::set(format!(
        "blocking: {n} queries waiting, {}s idle",
        idle.as_secs()
    ));
    let cpu0 = cpu_of(p.pid);
    tokio::time::sleep(idle).await;
    let idle_cpu_s = cpu_of(p.pid) - cpu0;

    crate::progress::set(format!(
        "blocking: another service changes, then blk wakes {n} queries"
    ));
    // A fresh connection: the first has sat idle for longer than the
    // server keeps an idle keep-alive connection (its header timeout, 10 s).
    let mut conn = Conn::open(&p.addr).await?;
    put_instance(&mut conn, "other", "o-2", 4).await?;
    let quiet_until = tokio::time::Instant::now() + quiet;
    early += blk_returns(&mut rx, n, quiet_until).await?.len();

    let cpu0 = cpu_of(p.pid);
    let sent = tokio::time::Instant::now();
    put_instance(&mut conn, "blk", "b-2", 5).await?;
    let want = n - early.min(n);
    let got = blk_returns(&mut rx, want, sent + Duration::from_secs(60)).await?;
    let wake_cpu_ms = (cpu_of(p.pid) - cpu0) * 1000.0;
    if got.len() < want {
        bail!(
            "only {} of {want} blocking queries returned within 60 s of their service's change",
            got.len()
        );
    }
    if let Some((_, i)) = got.iter().find(|(_, i)| *i <= index) {
        bail!("a blocking query returned X-Consul-Index {i}, not past {index}");
    }
    handles.iter().for_each(|h| h.abort());
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for (at, _) in &got {
        hist.record((at.duration_since(sent).as_micros() as u64).max(1))?;
    }
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(BlockingRow {
        queries: n,
        requested,
        tasks,
        rss_before,
        rss_after,
        idle_secs: idle.as_secs_f64(),
        idle_cpu_s,
        early,
        quiet_ms: quiet.as_millis() as u64,
        wake_p50_ms: ms(0.5),
        wake_p99_ms: ms(0.99),
        wake_max_ms: hist.max() as f64 / 1000.0,
        wake_cpu_ms,
    })
}

/// One run of the DNS load generator.
#[derive(Clone, Debug)]
pub struct DnsRow {
    /// How the query asked: without EDNS (512-byte UDP answers) or with an
    /// EDNS0 OPT record advertising 4096 bytes.
    pub edns: Option<u16>,
    pub instances: usize,
    pub senders: usize,
    pub qps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// muster's CPU seconds over the measured window, and this harness's.
    pub cpu_s: f64,
    pub harness_cpu_s: f64,
    pub secs: f64,
    /// Measured NOERROR responses, those with TC set, and their A records.
    pub responses: u64,
    pub truncated: u64,
    pub answers: u64,
    pub errors: u64,
}

/// A query for `name`'s A records, id 0 (set per query), built by hand: the
/// 12-byte header (RD set, one question, an additional record with EDNS),
/// QNAME, QTYPE A, QCLASS IN, then the OPT record when asked.
fn dns_query(name: &str, edns: Option<u16>) -> Vec<u8> {
    let mut q = vec![
        0,
        0,
        0x01,
        0x00,
        0,
        1,
        0,
        0,
        0,
        0,
        0,
        u8::from(edns.is_some()),
    ];
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&[0, 1, 0, 1]);
    if let Some(size) = edns {
        // Root owner, TYPE OPT (41), CLASS = UDP payload size, TTL = extended
        // RCODE 0, version 0, no flags; no options.
        q.extend_from_slice(&[0, 0, 41]);
        q.extend_from_slice(&size.to_be_bytes());
        q.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    }
    q
}

/// What the DNS senders count besides latency (measured window only).
#[derive(Default)]
struct DnsCounts {
    responses: AtomicU64,
    truncated: AtomicU64,
    answers: AtomicU64,
}

/// One closed-loop DNS sender: its own UDP socket, connected to the server.
struct DnsSender {
    socket: tokio::net::UdpSocket,
    query: Vec<u8>,
    buf: Vec<u8>,
    warm_until: tokio::time::Instant,
    counts: Arc<DnsCounts>,
}

impl DnsSender {
    async fn open(
        server: &str,
        query: Vec<u8>,
        warm_until: tokio::time::Instant,
        counts: Arc<DnsCounts>,
    ) -> Result<DnsSender> {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        socket
            .connect(server)
            .await
            .with_context(|| format!("connect udp {server}"))?;
        Ok(DnsSender {
            socket,
            query,
            buf: vec![0; 65_535],
            warm_until,
            counts,
        })
    }

    /// One query and its answer: (TC set, ANCOUNT).
    async fn ask(&mut self, id: u16) -> Result<(bool, u16)> {
        self.query[..2].copy_from_slice(&id.to_be_bytes());
        self.socket.send(&self.query).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            let len = tokio::time::timeout_at(deadline, self.socket.recv(&mut self.buf))
                .await
                .context("no answer within 1 s")??;
            let r = &self.buf[..len];
            if len < 12 {
                bail!("a {len}-byte answer");
            }
            if u16::from_be_bytes([r[0], r[1]]) != id {
                // A late answer to a query that timed out.
                continue;
            }
            let flags = u16::from_be_bytes([r[2], r[3]]);
            if flags & 0x8000 == 0 {
                bail!("the answer is not a response (QR clear)");
            }
            let rcode = flags & 0x000f;
            if rcode != 0 {
                bail!("RCODE {rcode}");
            }
            return Ok((flags & 0x0200 != 0, u16::from_be_bytes([r[6], r[7]])));
        }
    }
}

fn dns_op(s: &mut DnsSender, seq: u64) -> load::OpFuture<'_> {
    Box::pin(async move {
        let measured = tokio::time::Instant::now() >= s.warm_until;
        let (tc, answers) = s.ask(seq as u16).await?;
        if answers == 0 {
            bail!("NOERROR without answers");
        }
        if measured {
            s.counts.responses.fetch_add(1, Ordering::Relaxed);
            s.counts
                .truncated
                .fetch_add(u64::from(tc), Ordering::Relaxed);
            s.counts
                .answers
                .fetch_add(u64::from(answers), Ordering::Relaxed);
        }
        Ok(())
    })
}

/// DNS A queries over UDP for a 100-instance service: `senders` closed-loop
/// senders, each with its own socket and one query outstanding; once
/// without EDNS (answers cut to 512 bytes with TC) and once with EDNS0
/// advertising 4096 bytes (all 100 records fit).
pub async fn dns(s: &Settings, senders: usize) -> Result<Vec<DnsRow>> {
    let instances: u64 = 100;
    let name = "dnsbench.service.muster.";
    let (p, _dir) = fresh_muster(s).await?;
    let server = p
        .dns_addr
        .clone()
        .context("muster did not log `dns listening on ADDR`: cannot find its DNS port")?;
    crate::progress::set(format!("dns: registering {instances} instances"));
    bulk_register(&p.addr, 8, instances, |i| {
        (
            Method::PUT,
            format!("/api/v1/services/dnsbench/instances/d-{i}"),
            instance_json(i + 1, None),
        )
    })
    .await?;
    // Every instance answered before measuring.
    let mut probe = DnsSender::open(
        &server,
        dns_query(name, Some(4096)),
        tokio::time::Instant::now(),
        Arc::new(DnsCounts::default()),
    )
    .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match probe.ask(1).await {
            Ok((false, n)) if u64::from(n) == instances => break,
            r if tokio::time::Instant::now() > deadline => {
                bail!("{name} A over UDP with EDNS never answered {instances} records: {r:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    drop(probe);

    let mut rows = Vec::new();
    let me = std::process::id();
    for edns in [None, Some(4096)] {
        crate::progress::set(format!(
            "dns: {senders} UDP senders, A {name} {}",
            if edns.is_some() {
                "with EDNS0 4096"
            } else {
                "without EDNS"
            }
        ));
        let counts = Arc::new(DnsCounts::default());
        let window = Window::new(s.warmup, s.measure);
        let mut states = Vec::with_capacity(senders);
        for _ in 0..senders {
            states.push(
                DnsSender::open(
                    &server,
                    dns_query(name, edns),
                    window.warm_until,
                    counts.clone(),
                )
                .await?,
            );
        }
        let harness = cpu_over(me, window);
        let (rec, cpu_s) =
            measured_in(window, &p, |w| load::run_workers(w, states, dns_op)).await?;
        let harness_cpu_s = harness.await?;
        let q = |x: f64| rec.hist.value_at_quantile(x) as f64 / 1000.0;
        if rec.errors > 0 {
            eprintln!(
                "\ndns/{}: {} errors, first: {}",
                if edns.is_some() { "edns" } else { "plain" },
                rec.errors,
                rec.first_error.as_deref().unwrap_or("?")
            );
        }
        let secs = s.measure.as_secs_f64();
        rows.push(DnsRow {
            edns,
            instances: instances as usize,
            senders,
            qps: rec.hist.len() as f64 / secs,
            p50_ms: q(0.5),
            p99_ms: q(0.99),
            p999_ms: q(0.999),
            cpu_s,
            harness_cpu_s,
            secs,
            responses: counts.responses.load(Ordering::Relaxed),
            truncated: counts.truncated.load(Ordering::Relaxed),
            answers: counts.answers.load(Ordering::Relaxed),
            errors: rec.errors,
        });
    }
    Ok(rows)
}
