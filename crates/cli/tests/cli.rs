//! Black-box tests of the real `muster` binary: each test starts
//! `muster server --in-memory` as a child process on port 0 and drives it with
//! the client subcommands, checking what a person or a script would see:
//! stdout, the one-line error on stderr, and the exit status.

mod common;

use common::{BIN, Server, clean_env, listening_addr};
use serde_json::{Value, json};
use std::process::{Command, Stdio};

/// The client commands, run against a server started by `common`.
trait Client {
    fn run(&self, args: &[&str]) -> Run;
    fn ok(&self, args: &[&str]) -> String;
    fn json(&self, args: &[&str]) -> Value;
    fn fails(&self, args: &[&str]) -> String;
}

impl Client for Server {
    fn run(&self, args: &[&str]) -> Run {
        run(&self.addr, args)
    }

    /// Runs a command that must succeed and returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert!(
            r.success,
            "`muster {}` failed: {}\nserver log:\n{}",
            args.join(" "),
            r.stderr,
            self.log()
        );
        r.stdout
    }

    /// Runs a command with `--json` that must succeed and parses its stdout.
    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let out = self.ok(&args);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("`muster {}` printed no JSON ({e}):\n{out}", args.join(" ")))
    }

    /// Runs a command that must fail with a one-line reason; returns it.
    fn fails(&self, args: &[&str]) -> String {
        self.run(args).one_line_failure(args)
    }
}

/// What one client invocation printed and how it ended.
struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn one_line_failure(self, args: &[&str]) -> String {
        assert!(
            !self.success,
            "`muster {}` should have failed; stdout:\n{}",
            args.join(" "),
            self.stdout
        );
        let err = self.stderr.trim_end();
        assert_eq!(
            err.lines().count(),
            1,
            "`muster {}` should fail with one line, got:\n{err}",
            args.join(" ")
        );
        assert!(!err.ends_with('.'), "no trailing period: {err}");
        err.to_string()
    }
}

/// Runs the client against `addr` (given as `MUSTER_ADDR`, as a user would
/// set it once per shell).
fn run(addr: &str, args: &[&str]) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(Stdio::null());
    clean_env(&mut cmd);
    cmd.env("MUSTER_ADDR", addr);
    let out = cmd.output().expect("cannot run `muster`");
    Run {
        success: out.status.success(),
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(out.stderr).expect("stderr is UTF-8"),
    }
}

/// A local port nothing listens on: bound, then released.
fn unused_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// The rows of a table, split on whitespace (no cell in these tests has spaces).
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}

fn row<'a>(table: &'a [Vec<String>], first: &str) -> &'a [String] {
    table
        .iter()
        .find(|r| r.first().is_some_and(|c| c == first))
        .unwrap_or_else(|| panic!("no row {first:?} in {table:?}"))
}

/// The `id`s of a JSON list of instances, sorted.
fn ids(list: &Value) -> Vec<String> {
    let mut ids: Vec<String> = list
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|i| i["id"].as_str().expect("instance id").to_string())
        .collect();
    ids.sort();
    ids
}

#[test]
fn register_list_filter_and_deregister() {
    let s = Server::start();

    // Without --id the id is derived from service, address and port, and it
    // is all that is printed, so scripts can capture it.
    let derived = muster_core::id::derive_instance_id("web", "10.0.0.1", 8080);
    let out = s.ok(&[
        "register",
        "web",
        "--address",
        "10.0.0.1",
        "--port",
        "8080",
        "--tag",
        "v2",
        "--meta",
        "version=2.1.0",
    ]);
    assert_eq!(out, format!("{derived}\n"));
    let out = s.ok(&[
        "register",
        "web",
        "--address",
        "10.0.0.2",
        "--port",
        "8080",
        "--id",
        "web-b",
        "--tag",
        "v2",
        "--tag",
        "eu",
    ]);
    assert_eq!(out, "web-b\n");
    // A TCP check against a port nothing listens on keeps this one critical:
    // it starts critical and its first probe is refused.
    let dead = unused_port().to_string();
    let tcp = format!("127.0.0.1:{dead}");
    let instance = s.json(&[
        "register",
        "web",
        "--address",
        "127.0.0.1",
        "--port",
        &dead,
        "--id",
        "web-dead",
        "--tcp",
        &tcp,
        "--interval",
        "1s",
    ]);
    assert_eq!(instance["id"], "web-dead");
    assert_eq!(instance["status"], "critical");

    let table = rows(&s.ok(&["instances", "web"]));
    assert_eq!(
        table[0],
        ["ID", "ADDRESS", "PORT", "STATUS", "LIFETIME", "TAGS"]
    );
    assert_eq!(table.len(), 4, "{table:?}");
    assert_eq!(
        row(&table, "web-b"),
        [
            "web-b",
            "10.0.0.2",
            "8080",
            "passing",
            "persistent",
            "v2,eu"
        ]
    );
    assert_eq!(row(&table, "web-dead")[3], "critical");

    let list = s.json(&["instances", "web"]);
    assert_eq!(ids(&list), [derived.as_str(), "web-b", "web-dead"]);
    let first = list
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == derived.as_str())
        .unwrap();
    assert_eq!(first["service"], "web");
    assert_eq!(first["port"], 8080);
    assert_eq!(first["tags"], json!(["v2"]));
    assert_eq!(first["meta"], json!({"version": "2.1.0"}));

    // Filters: tags must all match, statuses any.
    assert_eq!(
        ids(&s.json(&["instances", "web", "--tag", "eu"])),
        ["web-b"]
    );
    assert_eq!(
        ids(&s.json(&["instances", "web", "--tag", "v2", "--tag", "eu"])),
        ["web-b"]
    );
    assert_eq!(
        ids(&s.json(&["instances", "web", "--status", "critical"])),
        ["web-dead"]
    );
    assert_eq!(
        ids(&s.json(&["instances", "web", "--status", "passing", "--tag", "v2"])),
        [derived.as_str(), "web-b"]
    );
    assert_eq!(
        ids(&s.json(&[
            "instances",
            "web",
            "--status",
            "passing",
            "--status",
            "critical"
        ]))
        .len(),
        3
    );

    let table = rows(&s.ok(&["services"]));
    assert_eq!(
        table[0],
        [
            "NAME",
            "TAGS",
            "INSTANCES",
            "PASSING",
            "WARNING",
            "CRITICAL",
            "MAINTENANCE"
        ]
    );
    assert_eq!(row(&table, "web")[2..], ["3", "2", "0", "1", "0"]);
    let services = s.json(&["services"]);
    let web = services
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "web")
        .expect("web in the services list");
    assert_eq!(
        (&web["instances"], &web["passing"], &web["critical"]),
        (&json!(3), &json!(2), &json!(1))
    );

    assert_eq!(
        s.ok(&["deregister", "web", "web-b", "--reason", "moving to eu-2"]),
        "deregistered web-b\n"
    );
    s.ok(&["deregister", "web", "web-dead"]);
    assert_eq!(ids(&s.json(&["instances", "web"])), [derived.as_str()]);
    let err = s.fails(&["deregister", "web", "web-b"]);
    assert!(err.contains("HTTP 404 Not Found"), "{err}");
}

#[test]
fn service_definitions_put_get_and_delete() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let spec_file = dir.path().join("spec.json");
    std::fs::write(&spec_file, r#"{"replicas": 3, "image": "api:2"}"#).unwrap();
    let spec_path = spec_file.to_str().unwrap();
    let spec = json!({"replicas": 3, "image": "api:2"});

    let stored = s.json(&[
        "service",
        "put",
        "api",
        "--spec",
        spec_path,
        "--tag",
        "x",
        "--meta",
        "owner=team",
    ]);
    assert_eq!(stored["name"], "api");
    assert_eq!(stored["tags"], json!(["x"]));
    assert_eq!(stored["meta"], json!({"owner": "team"}));
    assert_eq!(stored["spec"], spec);

    let got = s.json(&["service", "get", "api"]);
    assert_eq!((&got["tags"], &got["spec"]), (&json!(["x"]), &spec));
    assert_eq!(got["instances"], json!([]));

    // Without --json: the definition as field/value lines, then the instances.
    s.ok(&[
        "register",
        "api",
        "--address",
        "10.0.0.9",
        "--port",
        "9000",
        "--id",
        "api-1",
    ]);
    let table = rows(&s.ok(&["service", "get", "api"]));
    assert_eq!(row(&table, "tags"), ["tags", "x"]);
    assert_eq!(row(&table, "meta"), ["meta", "owner=team"]);
    assert_eq!(row(&table, "ID")[1], "ADDRESS");
    assert_eq!(row(&table, "api-1")[1..3], ["10.0.0.9", "9000"]);

    // Refused while an instance exists, and nothing is deleted.
    let err = s.fails(&["service", "delete", "api"]);
    assert!(err.contains("HTTP 409 Conflict"), "{err}");
    assert_eq!(ids(&s.json(&["instances", "api"])), ["api-1"]);

    assert_eq!(
        s.ok(&["service", "delete", "api", "--cascade"]),
        "deleted service api\n"
    );
    let err = s.fails(&["service", "get", "api"]);
    assert!(err.contains("HTTP 404 Not Found"), "{err}");
    assert_eq!(s.json(&["instances", "api"]), json!([]));
}

#[test]
fn invalid_input_is_a_one_line_error_naming_the_field() {
    let s = Server::start();
    let err = s.fails(&[
        "register",
        "web",
        "--address",
        "not an address!",
        "--port",
        "80",
    ]);
    assert!(
        err.contains("HTTP 400 Bad Request") && err.contains("address"),
        "{err}"
    );
    let err = s.fails(&[
        "register",
        "web",
        "--address",
        "10.0.0.1",
        "--port",
        "80",
        "--ttl",
        "soon",
    ]);
    assert!(
        err.contains("HTTP 400 Bad Request") && err.contains("ttl"),
        "{err}"
    );
}

#[test]
fn unreachable_server_is_a_one_line_error() {
    let addr = format!("http://127.0.0.1:{}", unused_port());
    let expect = format!("cannot reach muster at {addr}: connection refused");

    let err = run(&addr, &["services"]).one_line_failure(&["services"]);
    assert!(err.contains(&expect), "{err}");

    // --addr after the subcommand wins over MUSTER_ADDR.
    let args = ["instances", "web", "--addr", addr.as_str()];
    let err = run("http://127.0.0.1:1", &args).one_line_failure(&args);
    assert!(err.contains(&expect), "{err}");
}

#[test]
fn meta_without_equals_is_a_usage_error() {
    let addr = format!("http://127.0.0.1:{}", unused_port());
    let r = run(
        &addr,
        &[
            "register",
            "web",
            "--address",
            "10.0.0.1",
            "--port",
            "80",
            "--meta",
            "novalue",
        ],
    );
    assert!(!r.success);
    assert!(
        r.stderr.contains("--meta") && r.stderr.contains("KEY=VALUE"),
        "{}",
        r.stderr
    );
    // Refused while parsing: no request was attempted.
    assert!(!r.stderr.contains("cannot reach"), "{}", r.stderr);
}

#[test]
fn listening_line_parses_with_or_without_decoration() {
    let cases = [
        (
            "INFO muster: listening on http://127.0.0.1:41234",
            "http://127.0.0.1:41234",
        ),
        (
            "listening on http://127.0.0.1:80/ (http)",
            "http://127.0.0.1:80",
        ),
        (
            "\x1b[2mlistening on http://[::1]:9\x1b[0m",
            "http://[::1]:9",
        ),
    ];
    for (line, expect) in cases {
        assert_eq!(listening_addr(line).as_deref(), Some(expect), "{line}");
    }
    assert_eq!(listening_addr("dns listening on 127.0.0.1:8600"), None);
}
