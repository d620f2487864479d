//! Exec probes running real processes through `sh`.

use crate::support::{TIMEOUT, prober};
use muster_core::{CheckKind, Status};
use std::time::Duration;

fn sh(script: &str) -> CheckKind {
    CheckKind::Exec {
        argv: vec!["sh".into(), "-c".into(), script.into()],
    }
}

/// Whether `pid` is still a live process (a zombie waiting for a reaper
/// that may never come in a container counts as dead).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        // Format: "pid (comm) state ..."; comm may hold spaces.
        Ok(stat) => {
            !matches!(stat.rsplit(") ").next(), Some(s) if s.starts_with('Z') || s.starts_with('X'))
        }
    }
}

/// Waits (bounded) for a SIGKILLed process to disappear: the kernel tears
/// it down asynchronously, and there is no signal to wait on for a process
/// that is not our child.
async fn gone(pid: u32) -> bool {
    for _ in 0..200 {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn exit_codes_map_to_statuses() {
    let prober = prober(&[], true);
    for (script, status, code) in [
        ("exit 0", Status::Passing, 0),
        ("exit 1", Status::Warning, 1),
        ("exit 3", Status::Critical, 3),
    ] {
        let out = prober.probe(&sh(script), TIMEOUT).await;
        assert_eq!(
            (out.status, out.status_code),
            (status, Some(code)),
            "{script}: {out:?}"
        );
        assert!(out.is_up && out.is_responsive);
    }
}

#[tokio::test]
async fn output_combines_stdout_and_stderr_and_is_cut_to_4_kib() {
    let prober = prober(&[], true);
    let out = prober
        .probe(&sh("echo out; echo err >&2; exit 1"), TIMEOUT)
        .await;
    assert_eq!(out.status, Status::Warning);
    assert!(
        out.output.contains("out\n") && out.output.contains("err\n"),
        "{out:?}"
    );

    // 100 KiB: more than a pipe holds, so it must keep being drained.
    let out = prober
        .probe(&sh("head -c 102400 /dev/zero | tr '\\0' x"), TIMEOUT)
        .await;
    assert_eq!(out.status, Status::Passing, "{out:?}");
    assert_eq!(out.output, "x".repeat(4096));
}

#[tokio::test]
async fn a_timeout_kills_the_command_and_what_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let script = format!(
        "echo $$ > {p}; sleep 30 & echo $! >> {p}; echo started; wait",
        p = pids.display()
    );
    let out = prober(&[], true)
        .probe(&sh(&script), Duration::from_millis(500))
        .await;
    assert_eq!((out.status, out.status_code), (Status::Critical, None));
    assert!(!out.is_up && !out.is_responsive, "{out:?}");
    assert!(
        out.output
            .starts_with("exec \"sh\": timed out after 500 ms, killed"),
        "{out:?}"
    );
    assert!(out.output.ends_with("started\n"), "{out:?}");
    for pid in std::fs::read_to_string(&pids).unwrap().lines() {
        assert!(
            gone(pid.parse().unwrap()).await,
            "process {pid} survived the timeout"
        );
    }
}

#[tokio::test]
async fn leftovers_are_killed_when_the_command_exits() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    // The background sleep keeps stdout open; the probe must not wait for it.
    let script = format!("sleep 30 & echo $! > {}; exit 0", pids.display());
    let out = prober(&[], true).probe(&sh(&script), TIMEOUT).await;
    assert_eq!(out.status, Status::Passing, "{out:?}");
    let pid = std::fs::read_to_string(&pids).unwrap();
    assert!(
        gone(pid.trim().parse().unwrap()).await,
        "background process survived"
    );
}

#[tokio::test]
async fn dropping_a_probe_midway_kills_what_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let script = format!(
        "sleep 30 & echo $! > {p}.tmp; echo $$ >> {p}.tmp; mv {p}.tmp {p}; wait",
        p = pids.display()
    );
    let prober = prober(&[], true);
    let check = sh(&script);
    // Run the probe until the script has written its pids, then drop it,
    // as a server shutting down drops its probes.
    let started = async {
        for _ in 0..500 {
            if let Ok(text) = std::fs::read_to_string(&pids) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the script never wrote its pids");
    };
    let text = tokio::select! {
        out = prober.probe(&check, TIMEOUT) => panic!("the probe finished: {out:?}"),
        text = started => text,
    };
    for pid in text.lines() {
        assert!(
            gone(pid.parse().unwrap()).await,
            "process {pid} survived the drop"
        );
    }
}

#[tokio::test]
async fn disabled_by_default_and_missing_programs_are_critical() {
    let out = prober(&[], false).probe(&sh("exit 0"), TIMEOUT).await;
    assert_eq!(out.status, Status::Critical);
    assert!(!out.is_up);
    assert!(
        out.output.starts_with("exec checks are disabled"),
        "{out:?}"
    );

    let missing = CheckKind::Exec {
        argv: vec!["/nonexistent/check".into()],
    };
    let out = prober(&[], true).probe(&missing, TIMEOUT).await;
    assert_eq!(out.status, Status::Critical);
    assert!(!out.is_up);
    assert!(out.output.contains("could not start"), "{out:?}");
}
