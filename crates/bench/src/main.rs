//! `muster-bench`: measures muster side by side with etcd and a ceiling HTTP
//! server, all started fresh on loopback by the harness itself, and writes
//! the figures to docs/BENCHMARKS.md with SVG charts.
//!
//! `cargo run --release -p muster-bench -- all` for a full run;
//! `--quick` runs every scenario for about a second (the CI smoke test) and
//! writes its report under target/ instead of docs/.
#![forbid(unsafe_code)]

mod ceiling;
mod ceiling_fanout;
mod load;
mod procs;
mod progress;
mod report;
mod scenarios;
mod watchers;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use scenarios::Settings;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "muster-bench",
    about = "muster against etcd and a ceiling server, on this machine, in one run"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every scenario
    All(RunArgs),
    /// Run some scenarios
    Run {
        #[arg(value_enum, required = true)]
        scenarios: Vec<Scenario>,
        #[command(flatten)]
        args: RunArgs,
    },
    /// The ceiling server (started by the harness itself)
    #[command(hide = true)]
    CeilingServer {
        #[arg(long)]
        addr: String,
    },
    /// The fan-out ceiling server (started by the harness itself)
    #[command(hide = true)]
    CeilingFanoutServer {
        #[arg(long)]
        addr: String,
        /// Bytes of the event's payload
        #[arg(long)]
        payload: usize,
    },
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// About a second per scenario, small scale; the report goes under target/
    #[arg(long)]
    quick: bool,
    /// Where the markdown report goes (charts go beside it, under bench/)
    #[arg(long)]
    out: Option<PathBuf>,
    /// Concurrency levels of the registration scenario and the ceiling
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    clients: Vec<usize>,
    /// Instance counts of the scale scenario [default: 100000,1000000; 10000 with --quick]
    #[arg(long, value_delimiter = ',')]
    sizes: Option<Vec<usize>>,
    /// Watcher counts of the fanout scenario [default: 1000,10000; 100 with --quick]
    #[arg(long, value_delimiter = ',')]
    watchers: Option<Vec<usize>>,
}

#[derive(ValueEnum, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Registration,
    Heartbeat,
    Discovery,
    Health,
    Scale,
    Fanout,
    Blocking,
    Dns,
}

const ALL: [Scenario; 8] = [
    Scenario::Registration,
    Scenario::Heartbeat,
    Scenario::Discovery,
    Scenario::Health,
    Scenario::Scale,
    Scenario::Fanout,
    Scenario::Blocking,
    Scenario::Dns,
];

/// Closed-loop UDP senders of the DNS scenario.
const DNS_SENDERS: usize = 32;

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    match cli.cmd {
        Cmd::CeilingServer { addr } => rt.block_on(ceiling::serve(&addr)),
        Cmd::CeilingFanoutServer { addr, payload } => {
            rt.block_on(ceiling_fanout::serve(&addr, payload))
        }
        Cmd::All(args) => rt.block_on(run(ALL.to_vec(), args)),
        Cmd::Run { scenarios, args } => rt.block_on(run(scenarios, args)),
    }
}

async fn run(scenarios: Vec<Scenario>, args: RunArgs) -> Result<()> {
    // Children are killed on drop: returning from here (error or Ctrl-C)
    // stops every server the harness started.
    tokio::select! {
        r = run_inner(scenarios, args) => r,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("\ninterrupted; stopping every server started");
            Ok(())
        }
    }
}

async fn run_inner(scenarios: Vec<Scenario>, args: RunArgs) -> Result<()> {
    let (warmup, measure) = if args.quick {
        (Duration::from_millis(200), Duration::from_millis(800))
    } else {
        (Duration::from_secs(2), Duration::from_secs(8))
    };
    if procs::which("etcd").is_none() {
        anyhow::bail!(
            "etcd not found on PATH: install Debian's etcd-server (apt-get install etcd-server), or run ./scripts/test once"
        );
    }
    // Before any server starts: they inherit it (fanout holds 10k sockets).
    let nofile = procs::raise_nofile();
    let settings = Settings {
        quick: args.quick,
        warmup,
        measure,
        muster_bin: procs::muster_binary()?,
        nofile,
    };
    let command = format!(
        "cargo run --release -p muster-bench -- {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    let env = report::Env::collect(command, warmup.as_secs_f64(), measure.as_secs_f64());
    progress::spawn();
    let clients = args.clients.clone();
    let mut rows = scenarios::ceiling(&settings, &clients).await?;
    let mut scale = Vec::new();
    let mut probes = None;
    let mut fanout = Vec::new();
    let mut blocking = None;
    let mut dns = Vec::new();
    for s in &scenarios {
        match s {
            Scenario::Registration => {
                rows.extend(scenarios::registration(&settings, &clients).await?)
            }
            Scenario::Heartbeat => rows.extend(scenarios::heartbeat(&settings, 64).await?),
            Scenario::Discovery => rows.extend(scenarios::discovery(&settings, 64).await?),
            Scenario::Health => probes = Some(scenarios::probes(&settings).await?),
            Scenario::Scale => {
                let default: &[usize] = if settings.quick {
                    &[10_000]
                } else {
                    &[100_000, 1_000_000]
                };
                for &n in args.sizes.as_deref().unwrap_or(default) {
                    scale.push(scenarios::scale(&settings, n).await?);
                }
            }
            Scenario::Fanout => {
                let default: &[usize] = if settings.quick {
                    &[100]
                } else {
                    &[1_000, 10_000]
                };
                for &n in args.watchers.as_deref().unwrap_or(default) {
                    fanout.push(scenarios::fanout(&settings, n).await?);
                }
            }
            Scenario::Blocking => blocking = Some(scenarios::blocking(&settings).await?),
            Scenario::Dns => dns = scenarios::dns(&settings, DNS_SENDERS).await?,
        }
    }
    progress::done();
    println!("{}", report::table(&rows, &scale));
    if let Some(p) = &probes {
        println!("{}", report::probe_table(p));
    }
    if !fanout.is_empty() {
        println!("{}", report::fanout_table(&fanout));
    }
    if let Some(b) = &blocking {
        println!("{}", report::blocking_table(b));
    }
    if !dns.is_empty() {
        println!("{}", report::dns_table(&dns));
    }
    let out = args.out.unwrap_or_else(|| {
        if settings.quick {
            PathBuf::from("target/bench-quick/BENCHMARKS.md")
        } else {
            PathBuf::from("docs/BENCHMARKS.md")
        }
    });
    let dir = out.parent().map(|p| p.to_path_buf()).unwrap_or_default();
    std::fs::create_dir_all(dir.join("bench"))?;
    let mut charts = Vec::new();
    if rows.iter().any(|r| r.scenario == "registration") {
        report::chart_throughput(&dir.join("bench/throughput.svg"), &rows)?;
        charts.push("throughput.svg".to_string());
    }
    if rows.iter().any(|r| r.target != "ceiling") {
        report::chart_latency(&dir.join("bench/latency.svg"), &rows)?;
        charts.push("latency.svg".to_string());
    }
    let mut md = report::markdown(&env, &rows, &scale, &charts);
    if let Some(p) = &probes {
        md.push('\n');
        md.push_str(&report::probe_table(p));
    }
    if !fanout.is_empty() {
        md.push('\n');
        md.push_str(&report::fanout_table(&fanout));
    }
    if let Some(b) = &blocking {
        md.push('\n');
        md.push_str(&report::blocking_table(b));
    }
    if !dns.is_empty() {
        md.push('\n');
        md.push_str(&report::dns_table(&dns));
    }
    report::write_markdown(&out, &md)?;
    eprintln!("report written to {}", out.display());
    Ok(())
}
