//! Results: a table on stdout, docs/BENCHMARKS.md (between markers, so the
//! hand-written analysis around them stays) and SVG charts.

use crate::scenarios::{BlockingRow, DnsRow, FanoutRow, Row, ScaleRow};
use anyhow::Result;
use plotters::prelude::*;
use std::fmt::Write;
use std::path::Path;

pub struct Env {
    pub date: String,
    pub commit: String,
    pub nproc: String,
    pub cpu: String,
    pub etcd: String,
    pub command: String,
    pub warmup_s: f64,
    pub measure_s: f64,
}

fn sh(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

impl Env {
    pub fn collect(command: String, warmup_s: f64, measure_s: f64) -> Env {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
            })
            .unwrap_or_default();
        let dirty = if sh("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty() {
            ""
        } else {
            " (with uncommitted changes)"
        };
        Env {
            date: sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            commit: format!("{}{dirty}", sh("git", &["rev-parse", "--short", "HEAD"])),
            nproc: sh("nproc", &[]),
            cpu,
            etcd: sh("etcd", &["--version"])
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
            command,
            warmup_s,
            measure_s,
        }
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

/// muster's rate over etcd's in the same scenario and concurrency.
fn vs(rows: &[Row], r: &Row, target: &str) -> Option<f64> {
    let other = rows.iter().find(|o| {
        o.target == target
            && o.clients == r.clients
            && (o.scenario == r.scenario || target == "ceiling")
    })?;
    (other.rate > 0.0).then(|| r.rate / other.rate)
}

fn ratio(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{v:.2}×"))
}

pub fn table(rows: &[Row], scale: &[ScaleRow]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| scenario | target | clients | ops/s | p50 ms | p99 ms | p99.9 ms | server CPU s | peak RSS | errors | vs etcd | vs ceiling |"
    );
    let _ = writeln!(t, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for r in rows {
        let vs_etcd = if r.target == "muster" {
            ratio(vs(rows, r, "etcd"))
        } else {
            "–".into()
        };
        let vs_ceiling = if r.target == "ceiling" {
            "1.00×".into()
        } else {
            ratio(vs(rows, r, "ceiling"))
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} |",
            r.scenario,
            r.target,
            r.clients,
            r.rate,
            r.p50_ms,
            r.p99_ms,
            r.p999_ms,
            r.cpu_s,
            mib(r.peak_rss),
            r.errors,
            vs_etcd,
            vs_ceiling
        );
    }
    if !scale.is_empty() {
        let _ = writeln!(
            t,
            "\n| instances | muster load/s | muster RSS | muster data on disk | muster restart → /ready | muster RSS after restart | etcd load/s (txn of 100 puts) | etcd RSS | RSS muster/etcd |"
        );
        let _ = writeln!(t, "|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
        for s in scale {
            let _ = writeln!(
                t,
                "| {} | {:.0} | {} | {} | {:.2} s | {} | {:.0} | {} | {:.2}× |",
                s.instances,
                s.muster_load_rate,
                mib(s.muster_rss),
                mib(s.muster_disk),
                s.muster_ready.as_secs_f64(),
                mib(s.muster_rss_restarted),
                s.etcd_load_rate,
                mib(s.etcd_rss),
                s.muster_rss as f64 / s.etcd_rss.max(1) as f64
            );
        }
    }
    t
}

pub fn markdown(env: &Env, rows: &[Row], scale: &[ScaleRow], charts: &[String]) -> String {
    let mut m = String::new();
    let _ = writeln!(
        m,
        "Run {} on commit `{}`: {} × {} (nproc {}), load generator on the same machine; {}.",
        env.date, env.commit, env.nproc, env.cpu, env.nproc, env.etcd
    );
    let _ = writeln!(
        m,
        "Each figure: {:.0} s warm-up, then {:.0} s measured; latency from the client's side.\n",
        env.warmup_s, env.measure_s
    );
    let _ = writeln!(m, "Command: `{}`\n", env.command);
    m.push_str(&table(rows, scale));
    m.push('\n');
    for c in charts {
        let _ = writeln!(m, "![{c}](bench/{c})");
    }
    m
}

const BEGIN: &str = "<!-- bench:begin (generated by muster-bench; edit outside these markers) -->";
const END: &str = "<!-- bench:end -->";

/// Replaces the generated part of `path`, keeping everything around the markers.
pub fn write_markdown(path: &Path, generated: &str) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{BEGIN}\n{generated}\n{END}");
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => format!("{}{block}{}", &old[..b], &old[e + END.len()..]),
        _ => format!("# Benchmarks\n\n{block}\n"),
    };
    std::fs::write(path, new)?;
    Ok(())
}

/// Throughput against concurrency for the registration scenario, plus the ceiling.
pub fn chart_throughput(path: &Path, rows: &[Row]) -> Result<()> {
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = rows.iter().map(|r| r.rate).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "durable registration: ops/s against concurrent clients",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d((1f64..256f64).log_scale(), 0f64..max)?;
    chart
        .configure_mesh()
        .x_desc("concurrent clients")
        .y_desc("ops/s")
        .draw()?;
    for (target, scenario, color) in [
        ("muster", "registration", BLUE),
        ("etcd", "registration", RED),
        ("ceiling", "ceiling GET", BLACK),
    ] {
        let pts: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.target == target && r.scenario == scenario)
            .map(|r| (r.clients as f64, r.rate))
            .collect();
        let label = if target == "ceiling" {
            "ceiling (trivial GET)".to_string()
        } else {
            target.to_string()
        };
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// p50/p99/p99.9 latency per scenario and target.
pub fn chart_latency(path: &Path, rows: &[Row]) -> Result<()> {
    let picked: Vec<&Row> = rows
        .iter()
        .filter(|r| r.target != "ceiling" && (r.scenario != "registration" || r.clients == 64))
        .collect();
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = picked.iter().map(|r| r.p999_ms).fold(0.1, f64::max) * 1.5;
    let mut chart = ChartBuilder::on(&root)
        .caption("latency percentiles (ms, log scale)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..2.2f64, (0.01f64..max).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(3)
        .x_label_formatter(&|x| match x.round() as i64 {
            0 => "p50".into(),
            1 => "p99".into(),
            2 => "p99.9".into(),
            _ => String::new(),
        })
        .y_desc("ms")
        .draw()?;
    let palette = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    for (i, r) in picked.iter().enumerate() {
        let color = palette[i % palette.len()];
        let pts = vec![
            (0.0, r.p50_ms.max(0.01)),
            (1.0, r.p99_ms.max(0.01)),
            (2.0, r.p999_ms.max(0.01)),
        ];
        let label = format!("{} · {} · {} clients", r.scenario, r.target, r.clients);
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// The health-check scenario.
pub fn probe_table(p: &crate::scenarios::ProbeRun) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| http checks at 1 s | probes/s | muster CPU (cores) | schedule lag p50 | schedule lag p99 | dead target → out of healthy list | budget (interval × failures_before_critical + 100 ms) |"
    );
    let _ = writeln!(t, "|--:|--:|--:|--:|--:|--:|--:|");
    let _ = writeln!(
        t,
        "| {} | {:.0} | {:.2} | ≤ {:.0} ms | ≤ {:.0} ms | {:.0} ms | {:.0} ms |",
        p.checks,
        p.probes_per_sec,
        p.cpu_cores,
        p.lag_p50_ms,
        p.lag_p99_ms,
        p.detect_ms,
        p.detect_budget_ms
    );
    let _ = writeln!(
        t,
        "\n(measured over {:.0} s; lag percentiles are the upper bounds of muster's own lag histogram buckets)",
        p.secs
    );
    t
}

/// The fan-out scenario: one change to N watchers, muster's WebSocket feed and etcd's watch.
pub fn fanout_table(rows: &[FanoutRow]) -> String {
    let kb = |b: f64| format!("{:.1} KB", b / 1000.0);
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| watchers | target | last watcher p50 ms | last watcher p99 ms | all deliveries p50 ms | all deliveries p99 ms | server memory per watcher | server CPU per change | harness CPU per change |"
    );
    let _ = writeln!(t, "|--:|---|--:|--:|--:|--:|--:|--:|--:|");
    for r in rows {
        for (target, s) in [
            ("muster", &r.muster),
            ("ceiling", &r.ceiling),
            ("etcd", &r.etcd),
        ] {
            let _ = writeln!(
                t,
                "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.1} ms | {:.1} ms |",
                r.watchers,
                target,
                s.last_p50_ms,
                s.last_p99_ms,
                s.all_p50_ms,
                s.all_p99_ms,
                kb(s.bytes_per_watcher),
                s.server_cpu_ms,
                s.harness_cpu_ms
            );
        }
    }
    for r in rows {
        let ratio = |m: f64, c: f64| if c > 0.0 { m / c } else { f64::NAN };
        let _ = writeln!(
            t,
            "\nmuster / ceiling at {} watchers: last-watcher p50 {:.2}×, p99 {:.2}×; ceiling last-watcher p99 {:.1} ms ({} 100 ms).",
            r.watchers,
            ratio(r.muster.last_p50_ms, r.ceiling.last_p50_ms),
            ratio(r.muster.last_p99_ms, r.ceiling.last_p99_ms),
            r.ceiling.last_p99_ms,
            if r.ceiling.last_p99_ms <= 100.0 {
                "≤"
            } else {
                "above"
            }
        );
    }
    let verdict = |ok: bool| if ok { "met" } else { "**not met**" };
    match rows.iter().find(|r| r.watchers >= 10_000) {
        Some(r) => {
            let _ = writeln!(
                t,
                "\nTargets (issue 5), muster at {} watchers: last-watcher p99 ≤ 100 ms ({:.1} ms: {}); ≤ 20 KB per watcher ({}: {}).",
                r.watchers,
                r.muster.last_p99_ms,
                verdict(r.muster.last_p99_ms <= 100.0),
                kb(r.muster.bytes_per_watcher),
                verdict(r.muster.bytes_per_watcher <= 20_000.0)
            );
        }
        None => {
            let _ = writeln!(
                t,
                "\nTargets (issue 5): at 10,000 watchers, last-watcher p99 ≤ 100 ms and ≤ 20 KB per watcher (no 10,000-watcher row in this run)."
            );
        }
    }
    let rounds = rows.first().map_or(0, |r| r.rounds);
    // The rank HdrHistogram's 0.99 quantile lands on, counted from the worst.
    let from_worst = rounds + 1 - (rounds * 99).div_ceil(100).max(1);
    let p99_is = match from_worst {
        0 | 1 => "worst round".to_string(),
        2 => "second-worst round".to_string(),
        k => format!("{k}th-worst round"),
    };
    let clients: Vec<String> = rows
        .iter()
        .map(|r| format!("{} over {}", r.watchers, r.etcd_clients))
        .collect();
    let _ = writeln!(
        t,
        "\nEach of {rounds} rounds makes one change and waits until every watcher has it (then 100 ms): \
         muster `PUT /api/v1/services/fan/instances/f-R` (acknowledged after fsync), etcd one `Put` under `/registry/fan/`. \
         Latency runs from just before the change is sent to the harness reading a watcher's copy; \
         \"last watcher\" is per round (p99 of {rounds} rounds: the {}), \"all deliveries\" is over every copy of every round. \
         The harness reads every socket on the same cores as the server, so the last-watcher figure includes reading N messages. \
         Its {readers} reader threads look at their sockets every {nap} µs instead of sleeping until one is readable (so the server's sends do not pay for waking them); \
         a copy is timed when it is read, at most one look (plus the timer's slack) after it arrived: that overstates latency by about that much at most, never understates it. \
         Memory: the server's VmRSS after opening every watcher minus before (both after one warm-up watcher and change, and a pause), over the number of watchers; KB = 1000 bytes. \
         CPU per change: user + system time over the rounds (from /proc), divided by the rounds.",
        p99_is,
        readers = crate::watchers::READERS,
        nap = crate::watchers::NAP.as_micros(),
    );
    let _ = writeln!(
        t,
        "\nmuster: one WebSocket connection per watcher (`GET /api/v1/watch?services=fan`, the opening snapshot read before measuring), read by the harness's reader threads. \
         etcd: watches on the prefix `/registry/fan/` spread over connections ({}), each connection carrying its share on one gRPC watch stream, as etcd's Go client multiplexes watches; \
         so etcd's memory per watcher does not include a connection per watcher, and muster's does.",
        clients.join(", ")
    );
    let payload = rows.first().map_or(0, |r| r.payload);
    let _ = writeln!(
        t,
        "\nceiling: the harness's own fan-out server (`muster-bench ceiling-fanout-server`), the cheapest server doing muster's job here: \
         it accepts the same WebSocket watchers (RFC 6455 handshake, a small snapshot frame) read by the same reader, and on each `POST /fire` \
         writes one pre-encoded unmasked text frame with a {payload}-byte payload (the size of muster's event in this run) to every socket, \
         from one task per socket woken by a broadcast (two runtime workers, one per core). No registry, no JSON, no store: \
         what it measures is the cost of one write per watcher plus the harness's reading, on this machine."
    );
    for r in rows.iter().filter(|r| r.watchers < r.requested) {
        let _ = writeln!(
            t,
            "\n**{} watchers were asked for; the open-file limit allowed {}.**",
            r.requested, r.watchers
        );
    }
    t
}

/// The blocking-query scenario: N idle Consul blocking queries on one service.
pub fn blocking_table(b: &BlockingRow) -> String {
    let per_query = b.rss_after.saturating_sub(b.rss_before) as f64 / b.queries.max(1) as f64;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| waiting blocking queries | server memory per query | server RSS before → after | server CPU while idle | woken by another service's change | all woken: p50 ms | p99 ms | max ms | server CPU for the wake-up |"
    );
    let _ = writeln!(t, "|--:|--:|--:|--:|---|--:|--:|--:|--:|");
    let _ = writeln!(
        t,
        "| {} | {:.1} KB | {} → {} | {:.2} s over {:.0} s | {} ({} of {}) | {:.2} | {:.2} | {:.2} | {:.0} ms |",
        b.queries,
        per_query / 1000.0,
        mib(b.rss_before),
        mib(b.rss_after),
        b.idle_cpu_s,
        b.idle_secs,
        if b.early == 0 { "no" } else { "**yes**" },
        b.early,
        b.queries,
        b.wake_p50_ms,
        b.wake_p99_ms,
        b.wake_max_ms,
        b.wake_cpu_ms
    );
    let _ = writeln!(
        t,
        "\nmuster with one instance in `blk` and one in `other`; {} keep-alive HTTP/1.1 connections (opened by {} tasks of the harness), each holding one \
         `GET /v1/health/service/blk?index=I&wait=5m` with I the service's current `X-Consul-Index`. \
         Memory: muster's VmRSS once every query was sent and 1 s had passed, minus before opening them (after one warm-up blocking query on a service of its own), over the number of queries; \
         a connection's socket and buffers are part of it; KB = 1000 bytes. \
         Idle CPU: user + system time (from /proc, 10 ms ticks) while they wait. \
         Then an instance is registered in `other`: \"woken\" counts the queries that returned within {} ms of that (or at all before `blk` changed). \
         Then an instance is registered in `blk` (`PUT`, acknowledged after fsync): the time from just before sending it until each query's whole answer (with an `X-Consul-Index` past I) was read; \
         the harness reads every answer on the same cores as the server.",
        b.queries, b.tasks, b.quiet_ms
    );
    if b.queries < b.requested {
        let _ = writeln!(
            t,
            "\n**{} blocking queries were asked for; the open-file limit allowed {}.**",
            b.requested, b.queries
        );
    }
    t
}

/// The DNS scenario: A queries over UDP for a 100-instance service.
pub fn dns_table(rows: &[DnsRow]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| query (UDP) | instances | senders | queries/s | p50 ms | p99 ms | p99.9 ms | server CPU s | harness CPU s | A records per answer | truncated (TC) | errors |"
    );
    let _ = writeln!(t, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for r in rows {
        let query = match r.edns {
            None => "A, no EDNS (512-byte answers)".to_string(),
            Some(size) => format!("A, EDNS0 OPT ({size}-byte payload)"),
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} | {:.1} | {} of {} | {} |",
            query,
            r.instances,
            r.senders,
            r.qps,
            r.p50_ms,
            r.p99_ms,
            r.p999_ms,
            r.cpu_s,
            r.harness_cpu_s,
            r.answers as f64 / r.responses.max(1) as f64,
            r.truncated,
            r.responses,
            r.errors
        );
    }
    let secs = rows.first().map_or(0.0, |r| r.secs);
    let _ = writeln!(
        t,
        "\nmuster's own DNS server on UDP, service `dnsbench` with {} instances (IPv4 addresses, no checks), queried for `dnsbench.service.muster.` A by this harness's load generator: \
         each sender has its own UDP socket and one query outstanding (closed loop; the query built by hand: header, QNAME, QTYPE A, QCLASS IN, plus an OPT record in the EDNS rows), \
         checks the answer's id, QR and RCODE (NOERROR with at least one record, else an error; no answer within 1 s is an error). \
         Latency from sending a query to reading its answer, over {secs:.0} s after the warm-up; CPU is user + system time over that window (from /proc), \
         the harness's own shown too because it runs on the same cores. \
         Without EDNS, 100 A records (~1.7 KB) do not fit 512 bytes: muster sends the records that fit with TC set (a resolver would retry over TCP; this harness does not), \
         so those answers are counted apart. With an EDNS0 OPT record advertising 4096 bytes every answer holds all the records.",
        rows.first().map_or(0, |r| r.instances)
    );
    t
}
