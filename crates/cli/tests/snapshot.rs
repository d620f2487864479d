//! Black-box test of `muster snapshot save` / `restore` with the real
//! binary: save from a server on a data dir, restore onto a second, fresh
//! server, and both answer the same lists.

mod common;

use common::{BIN, Server, clean_env};
use serde_json::Value;
use std::process::{Command, Output, Stdio};

fn muster(server: &Server, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(Stdio::null());
    clean_env(&mut cmd);
    cmd.env("MUSTER_ADDR", &server.addr);
    cmd.output().expect("cannot run `muster`")
}

fn ok(server: &Server, args: &[&str]) -> String {
    let out = muster(server, args);
    assert!(
        out.status.success(),
        "`muster {}` failed: {}\nserver log:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(server: &Server, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    serde_json::from_str(&ok(server, &args)).unwrap()
}

#[test]
fn a_saved_snapshot_restores_onto_a_fresh_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let source = Server::start_with(&["--data-dir", data.to_str().unwrap()]);
    ok(&source, &["service", "put", "web", "--tag", "frontend"]);
    for port in ["80", "81", "82"] {
        ok(
            &source,
            &[
                "register",
                "web",
                "--address",
                "10.0.0.1",
                "--port",
                port,
                "--tag",
                "v1",
            ],
        );
    }
    ok(
        &source,
        &[
            "register",
            "api",
            "--address",
            "10.0.0.2",
            "--port",
            "8080",
            "--ttl",
            "1h",
        ],
    );

    let file = dir.path().join("backup").with_extension("json");
    let file_arg = file.to_str().unwrap();
    let said = ok(&source, &["snapshot", "save", file_arg]);
    assert!(
        said.starts_with("saved 5 keys at revision ") && said.trim_end().ends_with(file_arg),
        "{said}"
    );
    let doc: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(doc["format"], "muster-snapshot");
    // Only the snapshot is left in the directory: no temporary file behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");

    let target = Server::start();
    let said = ok(&target, &["snapshot", "restore", file_arg]);
    assert!(said.starts_with("restored 5 keys from "), "{said}");
    for args in [
        &["services"][..],
        &["instances", "web"][..],
        &["instances", "api"][..],
        &["service", "get", "web"][..],
    ] {
        let (mut a, mut b) = (json(&source, args), json(&target, args));
        if let (Some(a), Some(b)) = (a.as_object_mut(), b.as_object_mut()) {
            // Each store counts its own revisions.
            a.remove("revision");
            b.remove("revision");
        }
        assert_eq!(a, b, "muster {}", args.join(" "));
    }

    // The target is not fresh any more: a second restore is refused.
    let out = muster(&target, &["snapshot", "restore", file_arg]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("409") && err.contains("not empty"), "{err}");

    // A file that is not a snapshot is refused before anything is sent.
    let junk = dir.path().join("junk");
    std::fs::write(&junk, "not json").unwrap();
    let out = muster(&target, &["snapshot", "restore", junk.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("not a snapshot")
    );
}
