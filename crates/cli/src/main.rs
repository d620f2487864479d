//! The `muster` binary: `muster server` runs the registry; every other
//! subcommand is a client of a running server (see [`client`]).
#![forbid(unsafe_code)]

// jemalloc instead of glibc malloc: with the log engine, 27% less server CPU
// per registration and 2.5% less memory at 1M instances (docs/BENCHMARKS.md).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod client;
mod server;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// muster: a service registry with health checks, a change feed, DNS and a
/// Consul-compatible API in one binary
#[derive(Parser, Debug)]
#[command(name = "muster", version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    client: client::ClientOpts,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the registry server in the foreground
    Server(server::ServerArgs),
    #[command(flatten)]
    Client(client::ClientCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Server(args) => runtime.block_on(server::run(args)),
        Command::Client(cmd) => runtime.block_on(client::run(&cli.client, cmd)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
