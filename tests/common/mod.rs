//! Helpers shared by the integrity tests.
#![allow(dead_code)] // each test crate uses its own subset

#[cfg(feature = "http")]
pub(crate) mod http;
pub(crate) mod process;
#[cfg(feature = "redis")]
pub(crate) mod redis;

use std::path::PathBuf;

use guardrails::integrity::{FindingSeverity, Report};

/// A file under tests/fixtures/<area>/.
pub(crate) fn fixture(area: &str, name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(area)
        .join(name)
}

/// The checks of a report's error findings, in order.
pub(crate) fn failed_checks(r: &Report) -> Vec<&str> {
    r.findings
        .iter()
        .filter(|f| f.severity == FindingSeverity::Error)
        .map(|f| f.check.as_str())
        .collect()
}

/// The checks of a report's warnings, in order.
pub(crate) fn warnings(r: &Report) -> Vec<&str> {
    r.findings
        .iter()
        .filter(|f| f.severity == FindingSeverity::Warning)
        .map(|f| f.check.as_str())
        .collect()
}
