//! `muster server`: flags and environment laid over the config file, then
//! validated once into the server's typed config.

use anyhow::{Context, Result};
use muster_server::{Config, RawConfig};
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// TOML config file; flags and MUSTER_* environment override it
    #[arg(long, env = "MUSTER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// HTTP listen address [default: 127.0.0.1:8500]
    #[arg(long, env = "MUSTER_HTTP_ADDR", value_name = "ADDR")]
    http_addr: Option<String>,
    /// DNS listen address [default: 127.0.0.1:8600]
    #[arg(long, env = "MUSTER_DNS_ADDR", value_name = "ADDR")]
    dns_addr: Option<String>,
    /// Data directory of the embedded store [default: ./muster-data]
    #[arg(
        long,
        env = "MUSTER_DATA_DIR",
        value_name = "DIR",
        conflicts_with = "in_memory"
    )]
    data_dir: Option<PathBuf>,
    /// Engine of the data directory's store: log or redb [default: the one
    /// whose data the directory holds; log for a new directory]
    #[arg(long, env = "MUSTER_STORE_ENGINE", value_name = "ENGINE", value_parser = ["redb", "log"])]
    store_engine: Option<String>,
    /// Keep everything in memory (nothing survives a restart)
    #[arg(long, env = "MUSTER_IN_MEMORY")]
    in_memory: bool,
    /// Store URL: etcd://host:port,... (cluster mode; not in this build)
    #[arg(long, env = "MUSTER_STORE", value_name = "URL")]
    store: Option<String>,
}

impl ServerArgs {
    fn into_config(self) -> Result<Config> {
        let mut raw = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                RawConfig::from_toml(&text)
                    .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?
            }
            None => RawConfig::default(),
        };
        if let Some(store) = self.store {
            anyhow::bail!(
                "--store {store}: etcd cluster mode is not available in this build yet; use --data-dir or --in-memory"
            );
        }
        if self.http_addr.is_some() {
            raw.http_addr = self.http_addr;
        }
        if self.dns_addr.is_some() {
            raw.dns_addr = self.dns_addr;
        }
        if self.in_memory {
            raw.in_memory = Some(true);
            raw.data_dir = None;
        }
        if self.store_engine.is_some() {
            raw.store.engine = self.store_engine;
        }
        if self.data_dir.is_some() {
            raw.data_dir = self.data_dir;
            raw.in_memory = Some(false);
        }
        Config::try_from(raw).map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

/// Runs until SIGINT or SIGTERM, then shuts down in order and returns.
pub async fn run(args: ServerArgs) -> Result<()> {
    let config = args.into_config()?;
    init_logging();
    let shutdown = CancellationToken::new();
    let running = muster_server::start(config, shutdown.clone()).await?;
    wait_for_signal().await;
    tracing::info!("signal received");
    shutdown.cancel();
    running.wait().await?;
    tracing::info!("bye");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
