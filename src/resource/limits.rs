//! Resource limits, with the seed's defaults.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{GuardrailError, Result};

const GB: u64 = 1_000_000_000;

/// What the machine may use before a guard objects. Sizes are bytes (decimal GB in the
/// defaults, as the seed states them).
///
/// | key | default | meaning |
/// |---|---|---|
/// | `max_memory_bytes` | 200 GB | process RSS |
/// | `max_disk_bytes` | 1000 GB | space used on a checked path's filesystem |
/// | `max_cpu_percent` | 95 | system CPU |
/// | `max_open_files` | 10 000 | this process's file descriptors |
/// | `min_free_disk_bytes` | 50 GB | free space required on a checked path |
/// | `max_gpu_memory_bytes` | 20 GB | this process's GPU memory where known, else the device's |
/// | `warning_fraction` | 0.9 | a figure past this share of its limit is a warning |
/// | `statvfs_timeout` | `"2s"` | a filesystem that does not answer in time is unavailable |
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct ResourceLimits {
    /// Process RSS limit.
    pub max_memory_bytes: u64,
    /// Used-space limit per checked filesystem.
    pub max_disk_bytes: u64,
    /// System CPU limit, percent.
    pub max_cpu_percent: f64,
    /// Open file descriptor limit.
    pub max_open_files: u64,
    /// Free space required on each checked path.
    pub min_free_disk_bytes: u64,
    /// GPU memory limit.
    pub max_gpu_memory_bytes: u64,
    /// Share of a limit from which a figure is a warning, in (0, 1].
    pub warning_fraction: f64,
    /// Bound on one `statvfs` call.
    #[serde(with = "humantime_serde")]
    pub statvfs_timeout: Duration,
}

impl ResourceLimits {
    /// The seed defaults.
    pub const fn new() -> Self {
        Self {
            max_memory_bytes: 200 * GB,
            max_disk_bytes: 1000 * GB,
            max_cpu_percent: 95.0,
            max_open_files: 10_000,
            min_free_disk_bytes: 50 * GB,
            max_gpu_memory_bytes: 20 * GB,
            warning_fraction: 0.9,
            statvfs_timeout: Duration::from_secs(2),
        }
    }

    /// Sets the process memory limit.
    #[must_use]
    pub const fn with_max_memory_bytes(mut self, v: u64) -> Self {
        self.max_memory_bytes = v;
        self
    }

    /// Sets the used-disk limit.
    #[must_use]
    pub const fn with_max_disk_bytes(mut self, v: u64) -> Self {
        self.max_disk_bytes = v;
        self
    }

    /// Sets the CPU limit.
    #[must_use]
    pub const fn with_max_cpu_percent(mut self, v: f64) -> Self {
        self.max_cpu_percent = v;
        self
    }

    /// Sets the open-files limit.
    #[must_use]
    pub const fn with_max_open_files(mut self, v: u64) -> Self {
        self.max_open_files = v;
        self
    }

    /// Sets the free-disk minimum.
    #[must_use]
    pub const fn with_min_free_disk_bytes(mut self, v: u64) -> Self {
        self.min_free_disk_bytes = v;
        self
    }

    /// Sets the GPU memory limit.
    #[must_use]
    pub const fn with_max_gpu_memory_bytes(mut self, v: u64) -> Self {
        self.max_gpu_memory_bytes = v;
        self
    }

    /// Sets the warning fraction.
    #[must_use]
    pub const fn with_warning_fraction(mut self, v: f64) -> Self {
        self.warning_fraction = v;
        self
    }

    /// Rejects NaN or negative CPU, a warning fraction outside (0, 1] and zero limits.
    pub fn validate(&self) -> Result<()> {
        if !(self.max_cpu_percent.is_finite() && self.max_cpu_percent > 0.0) {
            return Err(GuardrailError::config(
                "max_cpu_percent",
                format!("must be a positive number, got {}", self.max_cpu_percent),
            ));
        }
        if !(self.warning_fraction.is_finite()
            && self.warning_fraction > 0.0
            && self.warning_fraction <= 1.0)
        {
            return Err(GuardrailError::config(
                "warning_fraction",
                format!("must be in (0, 1], got {}", self.warning_fraction),
            ));
        }
        for (field, v) in [
            ("max_memory_bytes", self.max_memory_bytes),
            ("max_disk_bytes", self.max_disk_bytes),
            ("max_open_files", self.max_open_files),
            ("max_gpu_memory_bytes", self.max_gpu_memory_bytes),
        ] {
            if v == 0 {
                return Err(GuardrailError::config(field, "must be greater than zero"));
            }
        }
        if self.statvfs_timeout.is_zero() {
            return Err(GuardrailError::config(
                "statvfs_timeout",
                "must be greater than zero",
            ));
        }
        Ok(())
    }
}

impl Default for ResourceLimits {
    fn default() -> Self {
        Self::new()
    }
}
