//! How probe results become a check's status: thresholds, and flap damping.
//!
//! Thresholds (as in Consul): a check turns passing after
//! `success_before_passing` consecutive passing results; it turns warning
//! after `failures_before_warning` consecutive failing results and critical
//! after `failures_before_critical` (a result of warning, such as HTTP 429,
//! never makes it worse than warning). Passive updates (ttl pass/warn/fail, a
//! ttl running out) set the status directly.
//!
//! Flap damping: a check whose status changes more than
//! [`FlapRule::threshold`] times within [`FlapRule::window_ms`] is
//! *flapping*. Its status keeps updating (discovery always sees the truth),
//! but the change that starts the flapping is the last one announced: the
//! changes during it are recorded as [`Flap::During`], which the event log
//! and feed leave out, until the check has gone a whole window without a
//! change. Then it *settles* and one more change announces where it ended up.

use crate::status::Status;
use std::collections::VecDeque;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub success_before_passing: u32,
    pub failures_before_warning: u32,
    pub failures_before_critical: u32,
}

impl From<&crate::check::CheckRecord> for Thresholds {
    fn from(c: &crate::check::CheckRecord) -> Self {
        Thresholds {
            success_before_passing: c.success_before_passing,
            failures_before_warning: c.failures_before_warning,
            failures_before_critical: c.failures_before_critical,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlapRule {
    /// More changes than this within the window make a check flapping.
    pub threshold: u32,
    pub window_ms: u64,
}

impl Default for FlapRule {
    /// More than 4 changes within a minute.
    fn default() -> Self {
        FlapRule {
            threshold: 4,
            window_ms: 60_000,
        }
    }
}

/// How a status change relates to flapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flap {
    /// An ordinary change.
    No,
    /// This change made the check flapping: announced, with `flapping: true`.
    Started,
    /// A change while flapping: recorded, not announced.
    During,
    /// The check went a window without changing: announced, with `flapping: false`.
    Settled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: Status,
    pub to: Status,
    pub flap: Flap,
}

/// The part of a check's life that lives between probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckState {
    pub status: Status,
    pub flapping: bool,
    successes: u32,
    failures: u32,
    /// When the status changed, within the last flap window, oldest first.
    changes: VecDeque<u64>,
}

impl CheckState {
    pub fn new(status: Status, flapping: bool) -> Self {
        CheckState {
            status,
            flapping,
            successes: 0,
            failures: 0,
            changes: VecDeque::new(),
        }
    }

    /// One probe result, through the thresholds. `Some` when the status changes.
    pub fn observe(
        &mut self,
        result: Status,
        now_ms: u64,
        t: &Thresholds,
        rule: &FlapRule,
    ) -> Option<Transition> {
        let target = match result {
            Status::Passing => {
                self.successes = self.successes.saturating_add(1);
                self.failures = 0;
                (self.successes >= t.success_before_passing).then_some(Status::Passing)
            }
            Status::Warning | Status::Critical => {
                self.failures = self.failures.saturating_add(1);
                self.successes = 0;
                if result == Status::Critical && self.failures >= t.failures_before_critical {
                    Some(Status::Critical)
                } else if self.failures >= t.failures_before_warning {
                    Some(Status::Warning)
                } else {
                    None
                }
            }
            Status::Maintenance => None,
        }?;
        self.change(target, now_ms, rule)
    }

    /// A status set directly (ttl pass/warn/fail, a ttl running out).
    pub fn set(&mut self, status: Status, now_ms: u64, rule: &FlapRule) -> Option<Transition> {
        self.successes = 0;
        self.failures = 0;
        self.change(status, now_ms, rule)
    }

    fn change(&mut self, to: Status, now_ms: u64, rule: &FlapRule) -> Option<Transition> {
        if to == self.status {
            return None;
        }
        let from = self.status;
        self.status = to;
        self.changes.push_back(now_ms);
        while self
            .changes
            .front()
            .is_some_and(|&t| t + rule.window_ms <= now_ms)
        {
            self.changes.pop_front();
        }
        let flap = if self.flapping {
            Flap::During
        } else if self.changes.len() > rule.threshold as usize {
            self.flapping = true;
            Flap::Started
        } else {
            Flap::No
        };
        Some(Transition { from, to, flap })
    }

    /// When a flapping check settles if nothing changes before then.
    pub fn settles_at(&self, rule: &FlapRule) -> Option<u64> {
        if !self.flapping {
            return None;
        }
        self.changes.back().map(|&t| t + rule.window_ms)
    }

    /// Ends flapping once a whole window passed without a change.
    pub fn settle(&mut self, now_ms: u64, rule: &FlapRule) -> bool {
        match self.settles_at(rule) {
            Some(at) if at <= now_ms => {
                self.flapping = false;
                self.changes.clear();
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Status::*;

    const T1: Thresholds = Thresholds {
        success_before_passing: 1,
        failures_before_warning: 1,
        failures_before_critical: 1,
    };

    /// Feeds results one second apart; returns the status after each.
    fn check(start: Status, t: Thresholds, results: &[Status]) -> Vec<Status> {
        let mut s = CheckState::new(start, false);
        let rule = FlapRule {
            threshold: 100,
            window_ms: 60_000,
        };
        results
            .iter()
            .enumerate()
            .map(|(i, r)| {
                s.observe(*r, i as u64 * 1000, &t, &rule);
                s.status
            })
            .collect()
    }

    #[test]
    fn default_thresholds_follow_every_result() {
        assert_eq!(
            check(Critical, T1, &[Passing, Critical, Warning, Passing]),
            [Passing, Critical, Warning, Passing]
        );
    }

    #[test]
    fn success_before_passing_needs_consecutive_passes() {
        let t = Thresholds {
            success_before_passing: 3,
            ..T1
        };
        assert_eq!(
            check(
                Critical,
                t,
                &[Passing, Passing, Critical, Passing, Passing, Passing]
            ),
            [Critical, Critical, Critical, Critical, Critical, Passing]
        );
    }

    #[test]
    fn failures_go_warning_then_critical() {
        let t = Thresholds {
            success_before_passing: 1,
            failures_before_warning: 2,
            failures_before_critical: 4,
        };
        assert_eq!(
            check(
                Passing,
                t,
                &[Critical, Critical, Critical, Critical, Passing]
            ),
            [Passing, Warning, Warning, Critical, Passing]
        );
        // A warning result never makes it worse than warning.
        assert_eq!(
            check(Passing, t, &[Warning, Warning, Warning, Warning, Warning]),
            [Passing, Warning, Warning, Warning, Warning]
        );
        // A pass in between resets the count.
        assert_eq!(
            check(Passing, t, &[Critical, Passing, Critical, Passing]),
            [Passing, Passing, Passing, Passing]
        );
    }

    #[test]
    fn flapping_starts_collapses_and_settles() {
        let rule = FlapRule {
            threshold: 3,
            window_ms: 10_000,
        };
        let mut s = CheckState::new(Critical, false);
        let mut flaps = Vec::new();
        for (i, r) in [Passing, Critical, Passing, Critical, Passing, Critical]
            .iter()
            .enumerate()
        {
            let tr = s.observe(*r, i as u64 * 1000, &T1, &rule).unwrap();
            flaps.push(tr.flap);
        }
        assert_eq!(
            flaps,
            [
                Flap::No,
                Flap::No,
                Flap::No,
                Flap::Started,
                Flap::During,
                Flap::During
            ]
        );
        assert!(s.flapping);
        assert_eq!(s.status, Critical, "the status still follows the results");
        assert_eq!(s.settles_at(&rule), Some(15_000));
        assert!(!s.settle(14_999, &rule));
        assert!(s.settle(15_000, &rule));
        assert!(!s.flapping);
        // Changes spread wider than the window never flap.
        let mut s = CheckState::new(Critical, false);
        for i in 0..10u64 {
            let r = if i % 2 == 0 { Passing } else { Critical };
            assert_eq!(s.observe(r, i * 4000, &T1, &rule).unwrap().flap, Flap::No);
        }
    }

    #[test]
    fn direct_sets_skip_thresholds() {
        let t = Thresholds {
            success_before_passing: 5,
            ..T1
        };
        let mut s = CheckState::new(Critical, false);
        assert!(s.observe(Passing, 0, &t, &FlapRule::default()).is_none());
        let tr = s.set(Passing, 1, &FlapRule::default()).unwrap();
        assert_eq!((tr.from, tr.to), (Critical, Passing));
        assert!(s.set(Passing, 2, &FlapRule::default()).is_none());
    }
}
