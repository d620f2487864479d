//! The progress line on stderr: what runs now and how many operations completed.

use crate::load::PROGRESS;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

static CURRENT: Mutex<String> = Mutex::new(String::new());

fn tty() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stderr())
}

pub fn set(what: String) {
    if !tty() {
        // A log (CI) gets one line per step instead of a redrawn line.
        eprintln!("{what}");
    }
    if let Ok(mut c) = CURRENT.lock() {
        *c = what;
    }
    PROGRESS.store(0, Ordering::Relaxed);
}

/// Redraws the line twice a second until the process ends (on a terminal).
pub fn spawn() {
    if !tty() {
        return;
    }
    tokio::spawn(async {
        let mut last = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let n = PROGRESS.load(Ordering::Relaxed);
            let rate = n.saturating_sub(last) * 2;
            last = n;
            let what = CURRENT.lock().map(|c| c.clone()).unwrap_or_default();
            eprint!("\r\x1b[2K{what}: {n} ops ({rate}/s)");
        }
    });
}

pub fn done() {
    if tty() {
        eprintln!("\r\x1b[2Kdone");
    }
}
