//! Exec probes: run argv directly (no shell); exit 0 is passing, 1 warning,
//! anything else critical. The output is stdout and stderr as they arrive.
//!
//! The command runs in a process group of its own so that whatever it
//! starts (a shell's children) is killed with it, both at the timeout and
//! after it exits: a check must not leave processes behind, and a leftover
//! child holding the output pipe open would otherwise stall the probe.

use super::{OUTPUT_LIMIT, ProbeOutcome};
use muster_core::Status;
use rustix::process::{Pid, Signal, kill_process_group};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::time::{Instant, sleep_until};

pub(crate) async fn probe(argv: &[String], deadline: Instant, timeout: Duration) -> ProbeOutcome {
    let Some((program, args)) = argv.split_first() else {
        return ProbeOutcome::failed("exec check has an empty argv".into());
    };
    let what = format!("exec {program:?}");
    let mut child = match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        // If the probe itself is dropped (server shutdown), so is the child.
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return ProbeOutcome::failed(format!("{what} could not start: {e}")),
    };
    let mut group = Group(child.id().and_then(|id| Pid::from_raw(id as i32)));
    let (mut stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
    let mut output = Vec::new();
    let (mut out_buf, mut err_buf) = ([0u8; 4096], [0u8; 4096]);
    let mut exit: Option<std::io::Result<ExitStatus>> = None;
    // Until the child has exited and both pipes are closed, or the deadline.
    while exit.is_none() || stdout.is_some() || stderr.is_some() {
        tokio::select! {
            status = child.wait(), if exit.is_none() => {
                group.kill();
                exit = Some(status);
            }
            n = read_some(&mut stdout, &mut out_buf) => keep(&mut output, &out_buf[..n]),
            n = read_some(&mut stderr, &mut err_buf) => keep(&mut output, &err_buf[..n]),
            () = sleep_until(deadline) => break,
        }
    }
    let text = String::from_utf8_lossy(&output).into_owned();
    match exit {
        // It exited in time. (If something outside its process group kept
        // a pipe open until the deadline, the exit status still answers.)
        Some(Ok(status)) => judge(status, text),
        Some(Err(e)) => ProbeOutcome::failed(format!("{what}: waiting for it failed: {e}")),
        None => {
            group.kill();
            // Reaps it too, so no zombie is left behind.
            let _ = child.kill().await;
            let mut out = ProbeOutcome::timed_out(&what, timeout);
            out.output.push_str(", killed");
            if !text.is_empty() {
                out.output.push('\n');
                out.output.push_str(&text);
            }
            out
        }
    }
}

/// The command's process group, killed once: after the command exits, at
/// the timeout, or when the probe is dropped midway (server shutdown), where
/// `kill_on_drop` alone would reach only the command itself.
struct Group(Option<Pid>);

impl Group {
    fn kill(&mut self) {
        if let Some(pid) = self.0.take() {
            // ESRCH (nobody left in the group) is the usual, fine answer.
            // The group id stays reserved while any member lives, so this
            // cannot reach another program's group unless all are gone and
            // the id was reused in between, which a probe's lifetime makes
            // vanishingly unlikely.
            let _ = kill_process_group(pid, Signal::KILL);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads once from a pipe and returns how many bytes came; closes the pipe
/// (sets it to None) at end of file. A closed pipe never completes, so the
/// `select!` above simply stops polling it.
async fn read_some<R: AsyncReadExt + Unpin>(pipe: &mut Option<R>, buf: &mut [u8]) -> usize {
    let Some(reader) = pipe else {
        return std::future::pending().await;
    };
    match reader.read(buf).await {
        Ok(n) if n > 0 => n,
        _ => {
            *pipe = None;
            0
        }
    }
}

/// Keeps the first [`OUTPUT_LIMIT`] bytes; later output is read and dropped
/// so the command never blocks on a full pipe.
fn keep(output: &mut Vec<u8>, bytes: &[u8]) {
    let room = OUTPUT_LIMIT.saturating_sub(output.len());
    output.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

fn judge(status: ExitStatus, output: String) -> ProbeOutcome {
    let Some(code) = status.code() else {
        // Killed by a signal: there is no exit code to report.
        let mut text = format!("terminated by {status}");
        if !output.is_empty() {
            text.push('\n');
            text.push_str(&output);
        }
        return ProbeOutcome::answered(Status::Critical, None, text);
    };
    let verdict = match code {
        0 => Status::Passing,
        1 => Status::Warning,
        _ => Status::Critical,
    };
    ProbeOutcome::answered(verdict, u16::try_from(code).ok(), output)
}
