//! The scenarios: each starts fresh processes, loads them the same way, and
//! returns rows for the report. muster and etcd get the equivalent work:
//! what an etcd-backed registry would do for the same request.

use crate::load::{self, Conn, MakeRequest, Recorder, Window, http_load, run_workers};
use crate::procs::Proc;
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use etcd_client::{Client, GetOptions, PutOptions, Txn, TxnOp};
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
    let window = Window::new(s.warmup, s.measure);
    let pid_cpu = {
        let pid = proc.pid;
        let warm = window.warm_until;
        let end = window.end;
        tokio::spawn(async move {
            tokio::time::sleep_until(warm).await;
            let a = crate::procs::cpu_of(pid);
            tokio::time::sleep_until(end).await;
            crate::procs::cpu_of(pid) - a
        })
    };
    let rec = load(window).await?;
    let cpu = pid_cpu.await?;
    Ok((rec, cpu))
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
