//! The processes under test: the release `muster server`, etcd and the
//! ceiling server. Each is started fresh on loopback with its own data dir,
//! killed when dropped (so an error or Ctrl-C leaves nothing behind), and
//! read from /proc for CPU time and memory.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

pub struct Proc {
    pub name: &'static str,
    child: Child,
    pub pid: u32,
    /// `host:port` it serves on.
    pub addr: String,
    /// muster's DNS `host:port` (UDP and TCP), as it logged it.
    pub dns_addr: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

/// Clock ticks per second for /proc/PID/stat, from `getconf CLK_TCK`.
fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// User + system CPU seconds process `pid` has used so far.
pub fn cpu_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / clk_tck()
}

pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The address logged after `marker` on `line`, if the line has it.
fn logged_addr(line: &str, marker: &str) -> Option<String> {
    let i = line.find(marker)?;
    let addr: String = line[i + marker.len()..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    (!addr.is_empty()).then_some(addr)
}

const HTTP_MARKER: &str = "listening on http://";
const DNS_MARKER: &str = "dns listening on ";

/// Reads lines from a child's output until one says `listening on http://ADDR`;
/// with `dns`, also the `dns listening on ADDR` line muster logs beside it
/// (`None` when it does not come within 2 s of the HTTP line).
async fn await_listening(
    name: &str,
    out: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    dns: bool,
) -> Result<(String, Option<String>)> {
    let mut lines = BufReader::new(out).lines();
    let mut dns_addr = None;
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(a) = logged_addr(&line, DNS_MARKER) {
                dns_addr = Some(a);
            } else if let Some(a) = logged_addr(&line, HTTP_MARKER) {
                return Ok::<_, std::io::Error>(Some(a));
            }
        }
        Ok(None)
    })
    .await
    .with_context(|| format!("{name} did not start within 30s"))??;
    if dns && dns_addr.is_none() && found.is_some() {
        dns_addr = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(a) = logged_addr(&line, DNS_MARKER) {
                    return Some(a);
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
    }
    // Keep draining so the child never blocks on a full pipe; with
    // MUSTER_BENCH_LOG set, show what it says.
    let show = std::env::var_os("MUSTER_BENCH_LOG").is_some();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if show {
                eprintln!("{line}");
            }
        }
    });
    let http = found.with_context(|| format!("{name} exited before listening"))?;
    Ok((http, dns_addr))
}

impl Proc {
    /// `muster server` on the embedded store in `data_dir` (created if absent).
    /// Returns once `/ready` answers 200, with the time that took.
    pub async fn muster(bin: &Path, data_dir: &Path) -> Result<(Proc, Duration)> {
        let started = Instant::now();
        let mut child = Command::new(bin)
            .args([
                "server",
                "--http-addr",
                "127.0.0.1:0",
                "--dns-addr",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir)
            .env(
                "RUST_LOG",
                std::env::var("MUSTER_BENCH_LOG")
                    .unwrap_or_else(|_| "warn,muster_server::serve=info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let pid = child.id().context("muster has no pid")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (addr, dns_addr) = await_listening("muster", stderr, true).await?;
        let p = Proc {
            name: "muster",
            child,
            pid,
            addr,
            dns_addr,
            _dir: None,
        };
        p.wait_http_ok("/ready", Duration::from_secs(120)).await?;
        Ok((p, started.elapsed()))
    }

    /// etcd from PATH on free loopback ports with a fresh data dir.
    pub async fn etcd() -> Result<Proc> {
        let etcd = which("etcd").context(
            "etcd not found on PATH: install Debian's etcd-server (apt-get install etcd-server) or run ./scripts/test once",
        )?;
        let dir = tempfile::tempdir()?;
        let (client, peer) = (free_port()?, free_port()?);
        let child = Command::new(etcd)
            .arg("--data-dir")
            .arg(dir.path().join("etcd"))
            .args(["--name", "bench"])
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{client}"),
            ])
            .args([
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{client}"),
            ])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args([
                "--initial-cluster",
                &format!("bench=http://127.0.0.1:{peer}"),
            ])
            .args(["--log-level", "error", "--logger", "zap"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start etcd")?;
        let pid = child.id().context("etcd has no pid")?;
        let addr = format!("127.0.0.1:{client}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut c) = etcd_client::Client::connect([addr.as_str()], None).await
                && c.status().await.is_ok()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("etcd did not answer on {addr} within 30s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Proc {
            name: "etcd",
            child,
            pid,
            addr,
            dns_addr: None,
            _dir: Some(dir),
        })
    }

    /// This harness's own trivial HTTP server, in a process of its own.
    pub async fn ceiling() -> Result<Proc> {
        Self::own("ceiling", &["ceiling-server", "--addr", "127.0.0.1:0"]).await
    }

    /// This harness's fan-out ceiling server (WebSocket watchers, one
    /// pre-encoded frame of `payload` bytes each per `POST /fire`).
    pub async fn ceiling_fanout(payload: usize) -> Result<Proc> {
        let payload = payload.to_string();
        let args = [
            "ceiling-fanout-server",
            "--addr",
            "127.0.0.1:0",
            "--payload",
            &payload,
        ];
        Self::own("ceiling", &args).await
    }

    /// A subcommand of this harness, in a process of its own.
    async fn own(name: &'static str, args: &[&str]) -> Result<Proc> {
        let me = std::env::current_exe()?;
        let mut child = Command::new(me)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start the {name} server"))?;
        let pid = child.id().with_context(|| format!("{name} has no pid"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (addr, _) = await_listening(name, stdout, false).await?;
        Ok(Proc {
            name,
            child,
            pid,
            addr,
            dns_addr: None,
            _dir: None,
        })
    }

    async fn wait_http_ok(&self, path: &str, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok((200, _)) = crate::load::get_once(&self.addr, path).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not answer 200 on {path} within {within:?}",
                    self.name
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn proc_file(&self, file: &str) -> String {
        std::fs::read_to_string(format!("/proc/{}/{file}", self.pid)).unwrap_or_default()
    }

    fn status_kib(&self, key: &str) -> u64 {
        self.proc_file("status")
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Resident memory now, bytes.
    pub fn rss(&self) -> u64 {
        self.status_kib("VmRSS:") * 1024
    }

    /// Peak resident memory since start, bytes.
    pub fn peak_rss(&self) -> u64 {
        self.status_kib("VmHWM:") * 1024
    }

    /// SIGTERM, then wait (a graceful stop: muster closes its store).
    pub async fn terminate(mut self) -> Result<()> {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => {
                self.child.kill().await?;
            }
        }
        Ok(())
    }
}

pub fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(cmd))
        .find(|p| p.is_file())
}

/// The `muster` binary of the same profile as this harness, built if needed.
pub fn muster_binary() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let dir = me.parent().context("no exe dir")?;
    let release = dir.ends_with("release");
    let mut cmd =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // Build in this workspace, wherever the harness was started from.
    cmd.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    cmd.args(["build", "-q", "-p", "muster", "--bin", "muster"]);
    if release {
        cmd.arg("--release");
    }
    eprintln!(
        "building muster ({})...",
        if release { "release" } else { "debug" }
    );
    let status = cmd.status().context("cannot run cargo build")?;
    if !status.success() {
        bail!("cargo build -p muster failed");
    }
    let bin = dir.join("muster");
    if !bin.is_file() {
        bail!("{} not found after building", bin.display());
    }
    Ok(bin)
}

/// Raises this process's soft limit on open files towards its hard limit
/// (children started afterwards inherit it: the fan-out scenario holds 10k
/// sockets on each side). Returns the soft limit now in force.
pub fn raise_nofile() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    const WANT: u64 = 1 << 16;
    let lim = getrlimit(Resource::Nofile);
    let current = lim.current.unwrap_or(u64::MAX);
    let target = lim.maximum.map_or(WANT, |max| max.min(WANT));
    if current >= target {
        return current;
    }
    let raised = Rlimit {
        current: Some(target),
        maximum: lim.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => target,
        Err(e) => {
            eprintln!("cannot raise the open-file limit from {current} to {target}: {e}");
            current
        }
    }
}
