//! TLS and mutual TLS against the real binary: the CLI with `--ca-cert`,
//! `--client-cert` and `--client-key`, plain HTTP to the TLS port refused,
//! and clients without a certificate the CA signed stopped at the handshake.

mod common;

use common::{BIN, Server, clean_env};
use muster_server::tls::test_pki::{self, Pki};
use std::process::{Command, Output};

fn config(dir: &std::path::Path, pki: &Pki, mutual: bool) -> String {
    let mut toml = format!(
        "[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        pki.server_cert, pki.server_key
    );
    if mutual {
        toml.push_str(&format!("client_ca_file = {:?}\n", pki.ca));
    }
    let path = dir.join(if mutual { "mtls.toml" } else { "tls.toml" });
    std::fs::write(&path, toml).unwrap();
    path.to_str().unwrap().to_string()
}

fn cli(addr: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    clean_env(&mut cmd);
    cmd.args(["--addr", addr]).args(args).output().unwrap()
}

/// Runs a CLI command until the server is ready (it answers 503 while its
/// store opens), at most a few seconds.
fn cli_ready(addr: &str, args: &[&str]) -> Output {
    for _ in 0..100 {
        let out = cli(addr, args);
        if out.status.success() || !String::from_utf8_lossy(&out.stderr).contains("503") {
            return out;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    cli(addr, args)
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn https(addr: &str) -> String {
    // The certificate names localhost; the server logs 127.0.0.1.
    addr.replace("http://", "https://")
}

#[test]
fn the_cli_talks_tls_and_plaintext_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = test_pki::create(dir.path());
    let s = Server::start_with(&["--in-memory", "--config", &config(dir.path(), &pki, false)]);
    assert!(s.addr.starts_with("https://"), "{}", s.addr);
    let ca = pki.ca.to_str().unwrap();

    let reg = cli_ready(
        &s.addr,
        &[
            "--ca-cert",
            ca,
            "register",
            "web",
            "--address",
            "10.0.0.1",
            "--port",
            "80",
        ],
    );
    assert!(reg.status.success(), "{}", text(&reg));
    let list = cli(&s.addr, &["--ca-cert", ca, "--json", "instances", "web"]);
    assert!(list.status.success(), "{}", text(&list));
    assert!(String::from_utf8_lossy(&list.stdout).contains("10.0.0.1"));

    // Without the CA the server's certificate is not trusted.
    let untrusted = cli(&s.addr, &["services"]);
    assert!(!untrusted.status.success(), "{}", text(&untrusted));

    // Plain HTTP to the TLS port: a plain answer saying what to do.
    let plain = cli(&s.addr.replace("https://", "http://"), &["services"]);
    assert!(!plain.status.success());
    assert!(
        String::from_utf8_lossy(&plain.stderr).contains("400"),
        "{}",
        text(&plain)
    );
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(s.addr.trim_start_matches("https://")).unwrap();
    c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("use https://"), "{answer}");
}

#[test]
fn mutual_tls_admits_only_certificates_the_ca_signed() {
    let dir = tempfile::tempdir().unwrap();
    let pki = test_pki::create(dir.path());
    let s = Server::start_with(&["--in-memory", "--config", &config(dir.path(), &pki, true)]);
    let addr = https(&s.addr);
    let ca = pki.ca.to_str().unwrap();
    let (cert, key) = (
        pki.client_cert.to_str().unwrap(),
        pki.client_key.to_str().unwrap(),
    );
    let (rogue, rogue_key) = (
        pki.rogue_cert.to_str().unwrap(),
        pki.rogue_key.to_str().unwrap(),
    );

    let ok = cli_ready(
        &addr,
        &[
            "--ca-cert",
            ca,
            "--client-cert",
            cert,
            "--client-key",
            key,
            "services",
        ],
    );
    assert!(ok.status.success(), "{}", text(&ok));

    let none = cli(&addr, &["--ca-cert", ca, "services"]);
    assert!(
        !none.status.success(),
        "no client certificate: {}",
        text(&none)
    );
    let wrong = cli(
        &addr,
        &[
            "--ca-cert",
            ca,
            "--client-cert",
            rogue,
            "--client-key",
            rogue_key,
            "services",
        ],
    );
    assert!(
        !wrong.status.success(),
        "another CA's certificate: {}",
        text(&wrong)
    );

    // The same through the environment.
    let mut cmd = Command::new(BIN);
    clean_env(&mut cmd);
    let env = cmd
        .env("MUSTER_ADDR", &addr)
        .env("MUSTER_CA_CERT", ca)
        .env("MUSTER_CLIENT_CERT", cert)
        .env("MUSTER_CLIENT_KEY", key)
        .arg("services")
        .output()
        .unwrap();
    assert!(env.status.success(), "{}", text(&env));

    // A bad path is reported as such, before any request.
    let missing = cli(&addr, &["--ca-cert", "/nonexistent/ca.pem", "services"]);
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("--ca-cert /nonexistent/ca.pem"),
        "{}",
        text(&missing)
    );
}

#[test]
fn a_broken_tls_section_stops_the_server_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[tls]\ncert_file = \"/nonexistent.pem\"\nkey_file = \"/nonexistent-key.pem\"\n",
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    clean_env(&mut cmd);
    let out = cmd
        .args([
            "server",
            "--in-memory",
            "--http-addr",
            "127.0.0.1:0",
            "--dns-addr",
            "127.0.0.1:0",
        ])
        .args(["--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tls.cert_file") && err.contains("/nonexistent.pem"),
        "{err}"
    );
}
