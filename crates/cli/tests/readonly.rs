//! A data dir that cannot be written (on each store engine): writes answer 503 with a reason the
//! operator can act on, reads keep being served from the index, and once
//! writing is possible again the server takes writes again and a restart finds every acknowledged write intact
//! and takes new ones.
//!
//! Two ways the disk refuses, both real (the tests run as root, for whom
//! file permissions block nothing): a full disk (a 4 MiB tmpfs filled with a
//! filler file, so this needs the right to mount) and a data file made
//! immutable (`chattr +i`, which refuses writes even through a descriptor
//! opened before; needs a filesystem with attribute support such as ext4).

mod common;

use common::Server;
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

const SERVICE: &str = "ro";

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{cmd}`: {e}"));
    assert!(
        out.status.success(),
        "`{cmd} {}` failed (this test needs root with CAP_SYS_ADMIN and a filesystem that supports it): {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A tiny tmpfs mounted for the test; unmounted when dropped, which must be
/// after the server using it has been killed.
struct TinyFs(PathBuf);

impl TinyFs {
    fn mount(at: &Path) -> TinyFs {
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                "size=4m",
                "tmpfs",
                at.to_str().unwrap(),
            ],
        );
        TinyFs(at.to_path_buf())
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// `chattr +i` on one file; lifted when dropped so the temporary directory
/// can be removed even after a failed assertion.
struct Immutable(PathBuf);

impl Immutable {
    fn set(file: &Path) -> Immutable {
        run("chattr", &["+i", file.to_str().unwrap()]);
        Immutable(file.to_path_buf())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

/// Writes zeros until the filesystem holding `path` has no space left.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let block = [0u8; 4096];
    loop {
        if let Err(e) = f.write_all(&block).and_then(|()| f.sync_all()) {
            assert_eq!(e.raw_os_error(), Some(28), "filling stopped with {e}");
            return;
        }
    }
}

/// Registers instance `n`; the status and the answer's body.
async fn register(http: &reqwest::Client, addr: &str, n: usize) -> (u16, Value) {
    // Padding makes each record big enough that the database file has to
    // grow soon after the disk is full, instead of reusing free pages.
    let body = json!({"id": format!("i{n}"), "address": format!("10.0.{}.{}", n / 250, n % 250 + 1),
                      "port": 8080, "meta": {"pad": "x".repeat(400)}});
    let resp = http
        .post(format!("{addr}/api/v1/services/{SERVICE}/instances"))
        .json(&body)
        .send()
        .await
        .expect("the server answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The instance ids listed for the test's service.
async fn listed(http: &reqwest::Client, addr: &str) -> Vec<String> {
    let resp = http
        .get(format!("{addr}/api/v1/services/{SERVICE}/instances"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "reads keep working");
    let list: Value = resp.json().await.unwrap();
    let mut ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// The store engines; each test runs on both.
#[derive(Clone, Copy)]
enum Engine {
    Log,
    Redb,
}

impl Engine {
    fn flag(self) -> &'static str {
        match self {
            Engine::Log => "log",
            Engine::Redb => "redb",
        }
    }

    /// The file the engine writes acknowledged data to (once it has some).
    fn data_file(self, data: &Path) -> PathBuf {
        match self {
            Engine::Redb => data.join("muster.redb"),
            Engine::Log => std::fs::read_dir(data)
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.extension().is_some_and(|x| x == "log"))
                .expect("the log engine has a WAL file"),
        }
    }
}

async fn start(data: &Path, engine: Engine) -> Server {
    let data = data.to_str().unwrap().to_string();
    tokio::task::spawn_blocking(move || {
        Server::start_with(&["--data-dir", &data, "--store-engine", engine.flag()])
    })
    .await
    .expect("the store opens")
}

/// The shared scenario: `acked` registrations exist; `break_disk` makes
/// writing impossible, `reason` is what the 503 must say; `heal_disk` makes
/// it possible again.
async fn refuses_then_recovers(
    data: &Path,
    engine: Engine,
    break_disk: impl FnOnce(),
    reason: &str,
    heal_disk: impl FnOnce(),
) {
    let http = reqwest::Client::new();
    let mut server = start(data, engine).await;
    let mut acked = Vec::new();
    for n in 0..20 {
        let (status, body) = register(&http, &server.addr, n).await;
        assert_eq!(status, 201, "{body}");
        acked.push(format!("i{n}"));
    }

    break_disk();
    // A write may still fit in pages the file already owns; the first one
    // that needs the disk must be refused, and cleanly.
    let mut refusal = None;
    for n in 20..220 {
        match register(&http, &server.addr, n).await {
            (201, _) => acked.push(format!("i{n}")),
            other => {
                refusal = Some(other);
                break;
            }
        }
    }
    let (status, problem) = refusal.expect("no write was refused although the disk refuses them");
    assert_eq!(status, 503, "{problem}");
    assert_eq!(problem["code"], "unavailable", "{problem}");
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(reason),
        "the problem names the cause ({reason:?}): {problem}"
    );
    // Further writes are refused too, and reads still answer everything
    // acknowledged, as does readiness.
    let (status, problem) = register(&http, &server.addr, 1_000).await;
    assert_eq!(status, 503, "{problem}");
    assert_eq!(
        problem["code"], "unavailable",
        "still a store refusal, not 'not ready': {problem}"
    );
    acked.sort();
    assert_eq!(listed(&http, &server.addr).await, acked);
    assert!(server.ready(), "/ready stays 200 while the disk refuses");

    heal_disk();
    // Space (or write access) returns: the same process takes writes again
    // (the store reopens itself after the I/O error).
    let mut recovered = false;
    for n in 3_000..3_050 {
        match register(&http, &server.addr, n).await {
            (201, _) => {
                acked.push(format!("i{n}"));
                recovered = true;
                break;
            }
            (503, _) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            (status, body) => panic!("unexpected {status}: {body}"),
        }
    }
    assert!(
        recovered,
        "writes work again without a restart once the disk does"
    );
    acked.sort();
    assert_eq!(listed(&http, &server.addr).await, acked);
    // SIGKILL: whatever the failed commits left behind must not matter.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    drop(server);

    let server = start(data, engine).await;
    assert_eq!(
        listed(&http, &server.addr).await,
        acked,
        "every acknowledged write is back, nothing else"
    );
    let (status, body) = register(&http, &server.addr, 2_000).await;
    assert_eq!(status, 201, "writes work again: {body}");
    acked.push("i2000".to_string());
    acked.sort();
    assert_eq!(listed(&http, &server.addr).await, acked);
}

async fn full_disk(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    // Declared before the server, so it is unmounted after the server dies.
    let _fs = TinyFs::mount(&mnt);
    let filler = mnt.join("filler");
    refuses_then_recovers(
        &mnt.join("data"),
        engine,
        || fill(&filler),
        "No space left on device",
        || std::fs::remove_file(&filler).unwrap(),
    )
    .await;
}

async fn immutable_data_file(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let guard = std::cell::RefCell::new(None);
    refuses_then_recovers(
        &data,
        engine,
        || *guard.borrow_mut() = Some(Immutable::set(&engine.data_file(&data))),
        "Operation not permitted",
        || drop(guard.borrow_mut().take()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_refuses_writes_with_503_keeps_reads_and_loses_nothing() {
    full_disk(Engine::Log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_refuses_writes_with_503_keeps_reads_and_loses_nothing_on_redb() {
    full_disk(Engine::Redb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immutable_data_file_refuses_writes_with_503_keeps_reads_and_loses_nothing() {
    immutable_data_file(Engine::Log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immutable_data_file_refuses_writes_with_503_keeps_reads_and_loses_nothing_on_redb() {
    immutable_data_file(Engine::Redb).await;
}
