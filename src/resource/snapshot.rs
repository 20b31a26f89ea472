//! What a snapshot holds (process, memory, CPU, disks, GPUs) and how it is judged against
//! limits: violations and their severities.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

#[cfg(target_os = "linux")]
use super::CgroupLimits;
use super::{GpuStatus, ResourceLimits};
use crate::error::GuardrailError;

/// This process's own use.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessUsage {
    /// Resident set size, bytes.
    pub rss_bytes: Option<u64>,
    /// CPU since the previous snapshot, percent of one core (may pass 100 on several
    /// cores); `None` on the first snapshot, which has no baseline yet.
    pub cpu_percent: Option<f64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// `RLIMIT_NOFILE` soft limit.
    pub fd_limit: Option<u64>,
}

/// Memory of the machine, as far as this process may use it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryUsage {
    /// The machine's memory, bytes.
    pub machine_total: Option<u64>,
    /// The machine's available memory, bytes.
    pub machine_available: Option<u64>,
    /// The cgroup's limits, when in one that sets any.
    #[cfg(target_os = "linux")]
    pub cgroup: Option<CgroupLimits>,
    /// The smaller of the machine's memory and the cgroup's limit: what this process's
    /// world really has.
    pub effective_total: Option<u64>,
    /// What is left of `effective_total`.
    pub effective_available: Option<u64>,
}

/// CPU of the machine.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuUsage {
    /// System-wide busy share since the previous snapshot, percent; `None` without a
    /// baseline.
    pub system_percent: Option<f64>,
    /// CPUs this process may run on.
    pub cores: usize,
    /// The cgroup's CPU quota in cores, when limited.
    pub quota_cores: Option<f64>,
}

/// Space on the filesystem of one checked path.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum DiskUsage {
    /// The filesystem answered.
    Available {
        /// The checked path.
        path: PathBuf,
        /// Size, bytes.
        total: u64,
        /// Used, bytes.
        used: u64,
        /// Free to unprivileged users, bytes.
        free: u64,
    },
    /// It did not (missing path, dead network mount), and why.
    Unavailable {
        /// The checked path.
        path: PathBuf,
        /// The reason.
        reason: String,
    },
}

impl DiskUsage {
    /// The checked path.
    pub fn path(&self) -> &Path {
        match self {
            Self::Available { path, .. } | Self::Unavailable { path, .. } => path,
        }
    }

    /// Free bytes, when known.
    pub fn free(&self) -> Option<u64> {
        match self {
            Self::Available { free, .. } => Some(*free),
            Self::Unavailable { .. } => None,
        }
    }
}

/// Every figure at one moment; see the [module docs](crate::resource).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResourceSnapshot {
    /// When it was taken.
    pub taken_at: SystemTime,
    /// This process.
    pub process: ProcessUsage,
    /// Memory.
    pub memory: MemoryUsage,
    /// CPU.
    pub cpu: CpuUsage,
    /// One entry per checked path.
    pub disks: Vec<DiskUsage>,
    /// GPUs.
    pub gpu: GpuStatus,
}

/// How bad a violation is; see the [module docs](crate::resource).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Close to the limit.
    Warning,
    /// Past the limit.
    Exceeded,
    /// Severe exhaustion.
    Critical,
}

/// A figure past (or near) its limit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Violation {
    /// `"memory"`, `"cpu"`, `"open_files"`, `"disk_free <path>"`, `"disk_used <path>"`,
    /// `"gpu_memory <index>"`.
    pub resource: String,
    /// The figure.
    pub used: f64,
    /// The limit it is held against.
    pub limit: f64,
    /// `"bytes"`, `"percent"` or `"fds"`.
    pub unit: &'static str,
    /// How bad.
    pub severity: Severity,
}

impl Violation {
    /// As the error a guard returns.
    pub fn to_error(&self) -> GuardrailError {
        GuardrailError::ResourceExhausted {
            resource: self.resource.clone(),
            used: self.used,
            limit: self.limit,
            unit: self.unit.to_string(),
        }
    }
}

fn judge(used: f64, limit: f64, fraction: f64, severe: bool) -> Option<Severity> {
    if severe {
        Some(Severity::Critical)
    } else if used > limit {
        Some(Severity::Exceeded)
    } else if used >= limit * fraction {
        Some(Severity::Warning)
    } else {
        None
    }
}

impl ResourceSnapshot {
    /// Holds every figure against `limits`; see the [module docs](crate::resource) for severities.
    pub fn check(&self, limits: &ResourceLimits) -> Vec<Violation> {
        let f = limits.warning_fraction;
        let mut out = Vec::new();
        let mut push =
            |resource: String, used: f64, limit: f64, unit, severity: Option<Severity>| {
                if let Some(severity) = severity {
                    out.push(Violation {
                        resource,
                        used,
                        limit,
                        unit,
                        severity,
                    });
                }
            };
        if let Some(rss) = self.process.rss_bytes {
            let (used, limit) = (rss as f64, limits.max_memory_bytes as f64);
            let near_oom = self
                .memory
                .effective_total
                .is_some_and(|total| used >= total as f64 * 0.95);
            let severe = near_oom || used >= limit * 1.5;
            push(
                "memory".into(),
                used,
                limit,
                "bytes",
                judge(used, limit, f, severe),
            );
        }
        if let Some(cpu) = self.cpu.system_percent {
            let limit = limits.max_cpu_percent;
            push(
                "cpu".into(),
                cpu,
                limit,
                "percent",
                judge(cpu, limit, f, false),
            );
        }
        if let Some(fds) = self.process.open_fds {
            let (used, limit) = (fds as f64, limits.max_open_files as f64);
            let severe = self
                .process
                .fd_limit
                .is_some_and(|os| used >= os as f64 * 0.95)
                || used >= limit * 1.5;
            push(
                "open_files".into(),
                used,
                limit,
                "fds",
                judge(used, limit, f, severe),
            );
        }
        for disk in &self.disks {
            let DiskUsage::Available {
                path, used, free, ..
            } = disk
            else {
                continue;
            };
            let min = limits.min_free_disk_bytes as f64;
            let free = *free as f64;
            let severity = if free < min / 2.0 {
                Some(Severity::Critical)
            } else if free < min {
                Some(Severity::Exceeded)
            } else if free * f < min {
                Some(Severity::Warning)
            } else {
                None
            };
            push(
                format!("disk_free {}", path.display()),
                free,
                min,
                "bytes",
                severity,
            );
            let (used, limit) = (*used as f64, limits.max_disk_bytes as f64);
            let severe = used >= limit * 1.5;
            push(
                format!("disk_used {}", path.display()),
                used,
                limit,
                "bytes",
                judge(used, limit, f, severe),
            );
        }
        if let GpuStatus::Available { devices } = &self.gpu {
            for d in devices {
                // The limit is about this process when the driver says what it uses.
                let used = d.process_memory.unwrap_or(d.memory_used) as f64;
                let limit = limits.max_gpu_memory_bytes as f64;
                let severe = used >= d.memory_total as f64 * 0.95 || used >= limit * 1.5;
                push(
                    format!("gpu_memory {}", d.index),
                    used,
                    limit,
                    "bytes",
                    judge(used, limit, f, severe),
                );
            }
        }
        out
    }
}
