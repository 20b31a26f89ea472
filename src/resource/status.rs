//! The seed's health levels and the report a health check returns.

use std::fmt;

use serde::Serialize;

use super::{ResourceSnapshot, Severity, Violation};

/// The seed's health levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HealthStatus {
    /// No issue.
    Healthy,
    /// One limit exceeded, or warnings only.
    Degraded,
    /// Several limits exceeded.
    Unhealthy,
    /// Severe exhaustion.
    Critical,
}

impl HealthStatus {
    /// The status for a set of violations; see the [module docs](crate::resource).
    pub fn from_violations(violations: &[Violation]) -> Self {
        let exceeded = violations
            .iter()
            .filter(|v| v.severity >= Severity::Exceeded)
            .count();
        if violations.iter().any(|v| v.severity == Severity::Critical) {
            Self::Critical
        } else if exceeded >= 2 {
            Self::Unhealthy
        } else if exceeded == 1 || !violations.is_empty() {
            Self::Degraded
        } else {
            Self::Healthy
        }
    }

    /// `"HEALTHY"`, `"DEGRADED"`, `"UNHEALTHY"`, `"CRITICAL"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "HEALTHY",
            Self::Degraded => "DEGRADED",
            Self::Unhealthy => "UNHEALTHY",
            Self::Critical => "CRITICAL",
        }
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `health()` answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthReport {
    /// The level.
    pub status: HealthStatus,
    /// One line for people.
    pub message: String,
    /// Everything past or near its limit.
    pub violations: Vec<Violation>,
    /// The figures judged.
    pub snapshot: ResourceSnapshot,
}
