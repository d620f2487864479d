//! Shared by the black-box tests: start the real `muster server` as a child
//! process and find the address it listens on.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_muster");

/// Generous, because the first test to run may share the machine with a
/// cold build; a healthy server prints its address in milliseconds.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `muster server`; killed when dropped, so a failing assertion
/// does not leave it behind.
pub struct Server {
    pub child: Child,
    pub addr: String,
    /// Everything the server wrote to stderr, shown when a test fails.
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// `muster server --in-memory` on free ports.
    pub fn start() -> Server {
        Server::start_with(&["--in-memory"])
    }

    /// `muster server` with `extra` flags (e.g. `--data-dir DIR`) on free
    /// ports, unless `extra` names an `--http-addr`.
    pub fn start_with(extra: &[&str]) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.arg("server");
        if !extra.contains(&"--http-addr") {
            cmd.args(["--http-addr", "127.0.0.1:0"]);
        }
        cmd.args(extra)
            // Port 0 for DNS too: the default 8600 would make tests running in
            // parallel collide with each other.
            .args(["--dns-addr", "127.0.0.1:0"])
            // Plain log lines, so the address can be read without escape codes.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        clean_env(&mut cmd);
        let mut child = cmd.spawn().expect("cannot start `muster server`");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let lines = Arc::clone(&log);
        // Keeps draining after the address is found: a server blocked on a
        // full stderr pipe would stall mid-test.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let addr = listening_addr(&line);
                lines.lock().unwrap().push(line);
                // (Taken only with the address: a line before it must not
                // drop the sender.)
                if let Some(addr) = addr
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr);
                }
            }
        });
        // The guard exists before the wait, so the child is killed on timeout.
        let mut server = Server {
            child,
            addr: String::new(),
            log,
        };
        match rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(addr) => server.addr = addr,
            Err(e) => panic!(
                "`muster server` printed no `listening on http://...` line ({e}); its stderr:\n{}",
                server.log()
            ),
        }
        // Listening comes first; the API answers once the store is loaded.
        // (Counted in polls, not clock time: this is blocking code.)
        let polls = STARTUP_TIMEOUT.as_millis() / 10;
        let mut n = 0;
        while !server.ready() {
            n += 1;
            assert!(n < polls, "never ready:\n{}", server.log());
            std::thread::sleep(Duration::from_millis(10));
        }
        server
    }

    /// `GET /ready` answers 200. (Over TLS this cannot be asked in plain
    /// HTTP: the caller polls with its own client.)
    pub fn ready(&self) -> bool {
        use std::io::{Read, Write};
        if self.addr.starts_with("https://") {
            return true;
        }
        let host = self.addr.trim_start_matches("http://");
        let Ok(mut c) = std::net::TcpStream::connect(host) else {
            return false;
        };
        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
        let req = format!("GET /ready HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let mut answer = String::new();
        c.write_all(req.as_bytes()).is_ok()
            && c.read_to_string(&mut answer).is_ok()
            && answer.starts_with("HTTP/1.1 200")
    }

    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- muster server stderr ---\n{}", self.log());
        }
    }
}

/// `... listening on http://127.0.0.1:PORT ...` → `http://127.0.0.1:PORT`.
pub fn listening_addr(line: &str) -> Option<String> {
    let start = line
        .find("listening on http://")
        .or_else(|| line.find("listening on https://"))?
        + "listening on ".len();
    let addr: String = line[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '/' | '.' | '[' | ']'))
        .collect();
    Some(addr.trim_end_matches(['.', '/']).to_string())
}

/// The caller's environment must not steer the binary: a stray token or a
/// proxy setting would change what these tests see.
pub fn clean_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("MUSTER_") || k.to_ascii_lowercase().ends_with("_proxy") {
            cmd.env_remove(&key);
        }
    }
}
