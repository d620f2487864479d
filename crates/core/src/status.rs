//! Health status and how an instance's status follows from its checks.

use serde::{Deserialize, Serialize};

/// Ordered from best to worst so `max` is "the worst of".
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Passing,
    Warning,
    Critical,
    Maintenance,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passing => "passing",
            Status::Warning => "warning",
            Status::Critical => "critical",
            Status::Maintenance => "maintenance",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "passing" => Status::Passing,
            "warning" => Status::Warning,
            "critical" => Status::Critical,
            "maintenance" => Status::Maintenance,
            _ => return None,
        })
    }

    /// Healthy for discovery: passing, and warning unless `strict`.
    pub fn is_healthy(self, strict: bool) -> bool {
        match self {
            Status::Passing => true,
            Status::Warning => !strict,
            Status::Critical | Status::Maintenance => false,
        }
    }
}

/// An instance's status: `maintenance` when an operator says so, otherwise the
/// worst of its check statuses; an instance with no status source at all is
/// passing.
pub fn aggregate(maintenance: bool, statuses: impl IntoIterator<Item = Status>) -> Status {
    if maintenance {
        return Status::Maintenance;
    }
    statuses.into_iter().max().unwrap_or(Status::Passing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Status::*;

    #[test]
    fn worst_of_checks_or_maintenance() {
        let cases: &[(bool, &[Status], Status)] = &[
            (false, &[], Passing),
            (false, &[Passing, Passing], Passing),
            (false, &[Passing, Warning], Warning),
            (false, &[Critical, Warning, Passing], Critical),
            (true, &[Passing], Maintenance),
            (true, &[], Maintenance),
        ];
        for (maint, checks, expect) in cases {
            assert_eq!(
                aggregate(*maint, checks.iter().copied()),
                *expect,
                "{checks:?}"
            );
        }
    }

    #[test]
    fn healthy_means_passing_and_warning_unless_strict() {
        assert!(Passing.is_healthy(true));
        assert!(Warning.is_healthy(false));
        assert!(!Warning.is_healthy(true));
        assert!(!Critical.is_healthy(false));
        assert!(!Maintenance.is_healthy(false));
    }
}
