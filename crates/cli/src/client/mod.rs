//! The client half of the `muster` binary: every subcommand except `server`.
//!
//! Each command is one HTTP call (or two) against the native API under
//! `/api/v1`. Flags are parsed by clap into the types below, turned into a
//! request by [`services`] or [`instances`], sent through [`http::Api`], and
//! the answer is rendered as a table for people or printed as JSON with
//! `--json`. Rendering produces a `String` so it can be unit-tested without a
//! server; only [`run`] touches stdout.
//!
//! Errors are returned as one `anyhow::Error` whose top-level message is the
//! whole one-line reason, because `main` prints it with `{e}`, which shows
//! only the outermost context of a chain.

mod checks;
mod coord;
mod event;
mod http;
mod instances;
mod services;
mod snapshot;
mod table;
mod watch;

use anyhow::Result;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

/// Where the server is and how to talk to it; flattened into the top-level
/// parser so the flags work before or after the subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct ClientOpts {
    /// Server address
    #[arg(
        long,
        env = "MUSTER_ADDR",
        default_value = "http://127.0.0.1:8500",
        global = true
    )]
    pub addr: String,
    /// Bearer token sent with every request
    #[arg(long, env = "MUSTER_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of a table
    #[arg(long, global = true)]
    pub json: bool,
    #[command(flatten)]
    pub tls: TlsOpts,
}

/// How to trust an https:// server and prove who we are to it.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsOpts {
    /// PEM file of the CA that signed the server's certificate (added to the system roots)
    #[arg(long, env = "MUSTER_CA_CERT", global = true, value_name = "FILE")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// PEM client certificate, for servers that require mutual TLS
    #[arg(
        long,
        env = "MUSTER_CLIENT_CERT",
        global = true,
        value_name = "FILE",
        requires = "client_key"
    )]
    pub client_cert: Option<std::path::PathBuf>,
    /// PEM private key of --client-cert
    #[arg(
        long,
        env = "MUSTER_CLIENT_KEY",
        global = true,
        value_name = "FILE",
        requires = "client_cert"
    )]
    pub client_key: Option<std::path::PathBuf>,
}

// The client subcommands, flattened next to `server` in `main`. A plain
// comment, not a doc comment: clap would show a doc comment here as the
// binary's own description.
#[derive(clap::Subcommand, Debug)]
pub enum ClientCommand {
    /// List services with their health counts
    Services,
    /// Read, write or delete a service definition
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// List the instances of a service
    Instances {
        /// Service name
        service: String,
        /// Only instances with this status (repeatable: any of them)
        #[arg(long = "status", value_name = "S", value_parser = STATUSES)]
        statuses: Vec<String>,
        /// Only instances with this tag (repeatable: all of them)
        #[arg(long = "tag", value_name = "T")]
        tags: Vec<String>,
    },
    /// Register an instance; prints its id
    Register {
        #[command(flatten)]
        args: RegisterArgs,
    },
    /// Deregister an instance
    Deregister {
        /// Service name
        service: String,
        /// Instance id
        id: String,
        /// Why, recorded on the deregistration event
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Send a custom event
    Event {
        #[command(subcommand)]
        command: EventCommand,
    },
    /// Follow the change feed (one line per event; NDJSON with --json)
    Watch {
        /// Services to watch (default all)
        services: Vec<String>,
        /// Resume after this revision instead of starting from a snapshot
        #[arg(long, value_name = "REV")]
        from: Option<u64>,
    },
    /// List health checks with their status
    Checks {
        /// Only the checks of this service
        #[arg(long, value_name = "S")]
        service: Option<String>,
    },
    /// Show a check's probe history, newest first
    Probes {
        /// Check id
        check: String,
        /// At most this many probes
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
    },
    /// Show who leads an election, since when, and its term
    Leader {
        /// Election name
        name: String,
    },
    /// Show this server's cluster: mode, node, leader and members
    Cluster,
    /// Save the whole registry to a file, or restore it onto a fresh server
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
}

/// `muster snapshot ...`
#[derive(clap::Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Save a consistent copy of every key, taken while the server keeps serving
    Save {
        /// File to write (replaced atomically)
        file: PathBuf,
    },
    /// Restore a saved snapshot; the server must hold no services, instances or elections
    Restore {
        /// File `muster snapshot save` wrote
        file: PathBuf,
    },
}

/// `muster event ...`
#[derive(clap::Subcommand, Debug)]
pub enum EventCommand {
    /// Send a custom event to watchers of some services, or to all
    #[command(group = clap::ArgGroup::new("audience").required(true))]
    Send {
        /// Event type, e.g. deploy
        #[arg(value_name = "TYPE")]
        event_type: String,
        /// Body: JSON, or text sent as a JSON string
        body: String,
        /// A service to tell (repeatable)
        #[arg(long = "service", value_name = "S", group = "audience")]
        services: Vec<String>,
        /// Tell every watcher
        #[arg(long, group = "audience")]
        broadcast: bool,
    },
}

/// `muster service ...`
#[derive(clap::Subcommand, Debug)]
pub enum ServiceCommand {
    /// Show a service's definition and its instances
    Get {
        /// Service name
        name: String,
    },
    /// Create or replace a service definition; prints what was stored
    Put {
        /// Service name
        name: String,
        /// JSON file stored as the definition's free-form `spec`
        #[arg(long, value_name = "FILE")]
        spec: Option<PathBuf>,
        /// Tag (repeatable)
        #[arg(long = "tag", value_name = "T")]
        tags: Vec<String>,
        /// Metadata entry (repeatable)
        #[arg(long = "meta", value_name = "K=V", value_parser = parse_key_value)]
        meta: Vec<(String, String)>,
    },
    /// Delete a service definition
    Delete {
        /// Service name
        name: String,
        /// Also deregister its instances; without it the server refuses while
        /// instances exist
        #[arg(long)]
        cascade: bool,
    },
}

/// `muster register SERVICE --address A --port P ...`
#[derive(clap::Args, Debug)]
#[command(group = clap::ArgGroup::new("probe").multiple(true))]
pub struct RegisterArgs {
    /// Service name
    pub service: String,
    /// Address other services reach the instance at (IP or host name)
    #[arg(long, value_name = "A")]
    pub address: String,
    /// Port other services reach the instance at
    #[arg(long, value_name = "P", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// Instance id; derived from service, address and port when absent
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Tag (repeatable)
    #[arg(long = "tag", value_name = "T")]
    pub tags: Vec<String>,
    /// Metadata entry (repeatable)
    #[arg(long = "meta", value_name = "K=V", value_parser = parse_key_value)]
    pub meta: Vec<(String, String)>,
    /// Make the instance ephemeral: removed when heartbeats stop for this long
    #[arg(long, value_name = "D")]
    pub ttl: Option<String>,
    /// Add an HTTP check against this URL
    #[arg(long, value_name = "URL", group = "probe")]
    pub http: Option<String>,
    /// Add a TCP connect check against this host:port
    #[arg(long, value_name = "ADDR", group = "probe")]
    pub tcp: Option<String>,
    /// How often the checks run (needs --http or --tcp)
    #[arg(long, value_name = "D", requires = "probe")]
    pub interval: Option<String>,
}

/// The statuses the server filters on; checked here so a typo is a usage
/// error listing the choices rather than a round trip.
const STATUSES: [&str; 4] = ["passing", "warning", "critical", "maintenance"];

/// Runs one client command and prints its result on stdout.
pub async fn run(opts: &ClientOpts, cmd: ClientCommand) -> Result<()> {
    let api = http::Api::new(&opts.addr, opts.token.as_deref(), &opts.tls)?;
    let out = match cmd {
        ClientCommand::Services => services::list(&api, opts.json).await?,
        ClientCommand::Service { command } => match command {
            ServiceCommand::Get { name } => services::get(&api, &name, opts.json).await?,
            ServiceCommand::Put {
                name,
                spec,
                tags,
                meta,
            } => {
                let body = services::put_body(spec.as_deref(), tags, meta)?;
                services::put(&api, &name, &body, opts.json).await?
            }
            ServiceCommand::Delete { name, cascade } => {
                services::delete(&api, &name, cascade, opts.json).await?
            }
        },
        ClientCommand::Instances {
            service,
            statuses,
            tags,
        } => instances::list(&api, &service, &statuses, &tags, opts.json).await?,
        ClientCommand::Register { args } => {
            let body = instances::register_body(&args)?;
            instances::register(&api, &args.service, &body, opts.json).await?
        }
        ClientCommand::Deregister {
            service,
            id,
            reason,
        } => instances::deregister(&api, &service, &id, reason.as_deref(), opts.json).await?,
        ClientCommand::Event {
            command:
                EventCommand::Send {
                    event_type,
                    body,
                    services,
                    broadcast,
                },
        } => {
            event::send(
                &api,
                &event::body(&event_type, &body, &services, broadcast),
                opts.json,
            )
            .await?
        }
        ClientCommand::Watch { services, from } => {
            watch::follow(&api, &services, from, opts.json).await?;
            String::new()
        }
        ClientCommand::Checks { service } => {
            checks::list(&api, service.as_deref(), opts.json).await?
        }
        ClientCommand::Probes { check, limit } => {
            checks::probes(&api, &check, limit, opts.json).await?
        }
        ClientCommand::Leader { name } => coord::leader(&api, &name, opts.json).await?,
        ClientCommand::Cluster => coord::cluster(&api, opts.json).await?,
        ClientCommand::Snapshot { command } => match command {
            SnapshotCommand::Save { file } => snapshot::save(&api, &file, opts.json).await?,
            SnapshotCommand::Restore { file } => snapshot::restore(&api, &file, opts.json).await?,
        },
    };
    print(&out)
}

/// Writes the rendered answer. A closed pipe (`muster services | head -1`)
/// is not a failure of the command, so it ends quietly instead of panicking
/// the way `print!` would.
fn print(out: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::anyhow!("cannot write to stdout: {e}"))
        }
        _ => Ok(()),
    }
}

/// clap value parser for `--meta K=V`: a missing `=` or an empty key is a
/// usage error naming the expected shape.
fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        Some(_) => Err(format!(
            "expected KEY=VALUE with a non-empty KEY, got {s:?}"
        )),
        None => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// Collects `--meta` pairs into the JSON object the API takes. A key given
/// twice is refused: the later value silently winning would hide a typo.
fn meta_map(pairs: Vec<(String, String)>) -> Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for (k, v) in pairs {
        if map.contains_key(&k) {
            anyhow::bail!("--meta key {k:?} is given more than once");
        }
        map.insert(k, v);
    }
    Ok(map)
}

/// Tags joined for a table cell; `-` keeps an empty cell visible.
fn join_or_dash<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() {
        return "-".to_string();
    }
    items
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads an answer into the shape a table needs; a mismatch means client and
/// server disagree about the contract, which the message says.
fn decode<T: serde::de::DeserializeOwned>(answer: serde_json::Value) -> Result<T> {
    serde_json::from_value(answer)
        .map_err(|e| anyhow::anyhow!("muster answered with an unexpected shape: {e}"))
}

/// `--json` output: pretty-printed, with a final newline.
fn json_out(v: &serde_json::Value) -> String {
    // Serializing a `Value` cannot fail: its keys are always strings.
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};

    /// Mirrors how `main` mounts the client: options flattened at the top,
    /// commands flattened into the subcommand enum.
    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        opts: ClientOpts,
        #[command(subcommand)]
        cmd: ClientCommand,
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let mut argv = vec!["muster"];
        argv.extend_from_slice(args);
        let matches = Cli::command().try_get_matches_from(argv)?;
        Cli::from_arg_matches(&matches)
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn key_value_needs_an_equals_sign_and_a_key() {
        assert_eq!(
            parse_key_value("a=b=c"),
            Ok(("a".to_string(), "b=c".to_string()))
        );
        assert_eq!(parse_key_value("a="), Ok(("a".to_string(), String::new())));
        assert!(
            parse_key_value("novalue")
                .unwrap_err()
                .contains("KEY=VALUE")
        );
        assert!(parse_key_value("=v").unwrap_err().contains("non-empty KEY"));
    }

    #[test]
    fn duplicate_meta_keys_are_refused() {
        let pairs = vec![("a".into(), "1".into()), ("a".into(), "2".into())];
        assert!(meta_map(pairs).unwrap_err().to_string().contains("\"a\""));
    }

    #[test]
    fn bad_meta_is_a_usage_error() {
        let err = parse(&[
            "register",
            "web",
            "--address",
            "h",
            "--port",
            "1",
            "--meta",
            "x",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
    }

    #[test]
    fn interval_needs_a_check() {
        let err = parse(&[
            "register",
            "web",
            "--address",
            "h",
            "--port",
            "1",
            "--interval",
            "5s",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        parse(&[
            "register",
            "web",
            "--address",
            "h",
            "--port",
            "1",
            "--tcp",
            "h:1",
            "--http",
            "http://h/",
            "--interval",
            "5s",
        ])
        .unwrap();
    }

    #[test]
    fn port_zero_and_unknown_status_are_usage_errors() {
        assert!(parse(&["register", "web", "--address", "h", "--port", "0"]).is_err());
        assert!(parse(&["instances", "web", "--status", "pasing"]).is_err());
    }

    #[test]
    fn global_flags_go_after_the_subcommand() {
        let cli = parse(&["services", "--json", "--addr", "http://x:1"]).unwrap();
        assert!(cli.opts.json);
        assert_eq!(cli.opts.addr, "http://x:1");
    }
}
