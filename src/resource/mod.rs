//! Will this machine hold? Process and system memory (cgroup-aware), CPU, disk, file
//! descriptors and NVIDIA GPUs; limits, violations, a health status, and RAII scopes.
//!
//! On Linux every figure is read directly (`/proc`, cgroup files, `statvfs`, `getrlimit`),
//! which costs microseconds. Elsewhere (and on Linux by choice, [`Backend::Portable`]) the
//! figures come from `sysinfo` with targeted refreshes, `statvfs` and `getrlimit`.
//!
//! # Health levels
//!
//! [`check`](ResourceSnapshot::check) returns [`Violation`]s of three severities:
//!
//! | severity | when |
//! |---|---|
//! | warning | a figure is past `warning_fraction` of its limit (free disk: under minimum / fraction) |
//! | exceeded | a configured limit is passed (free disk under the minimum) |
//! | critical | *severe exhaustion*: memory at ≥ 95 % of what the machine or the cgroup allows, file descriptors at ≥ 95 % of `RLIMIT_NOFILE`, free disk under half the minimum, or a configured limit passed by half again |
//!
//! and [`HealthStatus`] follows the seed: **healthy** with no issue, **degraded** with one
//! limit exceeded or only warnings, **unhealthy** with several limits exceeded, **critical**
//! with any critical violation.
//!
//! ```
//! use guardrails::resource::{HealthStatus, ResourceLimits, ResourceMonitor};
//!
//! let monitor = ResourceMonitor::new(ResourceLimits::new())?;
//! let report = monitor.full_health_check(std::env::temp_dir())?;
//! println!("{}: {}", report.status, report.message);
//! # #[cfg(target_os = "linux")]
//! assert!(report.snapshot.process.rss_bytes.unwrap() > 0);
//!
//! // Limits below current use produce violations.
//! let strict = ResourceLimits::new().with_max_memory_bytes(1);
//! let snapshot = monitor.snapshot();
//! # #[cfg(target_os = "linux")]
//! assert!(snapshot.check(&strict).iter().any(|v| v.resource == "memory"));
//! # Ok::<(), guardrails::GuardrailError>(())
//! ```

mod gpu;
mod guard;
mod limits;
#[cfg(target_os = "linux")]
mod linux;
mod trend;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Instant, SystemTime};

use serde::Serialize;

use crate::error::{GuardrailError, Result};

pub use gpu::{GpuDevice, GpuStatus};
pub use guard::{ResourceGuard, UsageDelta, resource_guard};
pub use limits::ResourceLimits;
#[cfg(target_os = "linux")]
pub use linux::CgroupLimits;
pub use trend::{
    Gauge, PredictiveAlert, Predictor, ResourceSampler, SamplerBuilder, SamplerConfig,
    SamplerEvent, Trend, gauges,
};

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

/// Every figure at one moment; see the [module docs](self).
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

/// How bad a violation is; see the [module docs](self).
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
    /// The status for a set of violations; see the [module docs](self).
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
    /// Holds every figure against `limits`; see the [module docs](self) for severities.
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

/// Previous CPU counters, so the next snapshot can compute a rate.
#[derive(Debug, Clone, Copy)]
struct CpuSample {
    at: Instant,
    process_ticks: u64,
    system_busy: u64,
    system_total: u64,
}

/// Takes snapshots and judges them against its limits. Cheap to call in a loop: a
/// snapshot reads a handful of small files.
#[derive(Debug)]
pub struct ResourceMonitor {
    limits: ResourceLimits,
    paths: Vec<PathBuf>,
    previous_cpu: Mutex<Option<CpuSample>>,
    /// Per checked path: whether its filesystem can hang (network, FUSE), decided once.
    can_hang: Mutex<std::collections::HashMap<PathBuf, bool>>,
    #[cfg(target_os = "linux")]
    files: Mutex<linux::ProcFiles>,
    backend: Backend,
    portable: Mutex<portable::State>,
    /// What [`ResourceGuard`](guard::ResourceGuard)s time their scope with.
    clock: crate::clock::SharedClock,
}

/// Which readers a monitor uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Backend {
    /// Direct reads of /proc, cgroup files, statvfs and getrlimit (Linux; the default there).
    #[cfg_attr(target_os = "linux", default)]
    Direct,
    /// `sysinfo`, with targeted refreshes (the default elsewhere). No cgroup CPU quota.
    #[cfg_attr(not(target_os = "linux"), default)]
    Portable,
}

impl ResourceMonitor {
    /// A monitor for `limits` (validated), checking no disk path by default.
    pub fn new(limits: ResourceLimits) -> Result<Self> {
        limits.validate()?;
        Ok(Self {
            limits,
            paths: Vec::new(),
            previous_cpu: Mutex::new(None),
            can_hang: Mutex::new(std::collections::HashMap::new()),
            #[cfg(target_os = "linux")]
            files: Mutex::new(linux::ProcFiles::open()),
            backend: Backend::default(),
            portable: Mutex::new(portable::State::new()),
            clock: std::sync::Arc::new(crate::clock::SystemClock),
        })
    }

    /// Times [`resource_guard`](guard::resource_guard) scopes with `clock` (a
    /// [`ManualClock`](crate::ManualClock) in tests). Snapshots still read the OS's own
    /// counters and CPU time against real elapsed time: those figures come from the kernel.
    #[must_use]
    pub fn with_clock(mut self, clock: impl crate::clock::Clock + 'static) -> Self {
        self.clock = std::sync::Arc::new(clock);
        self
    }

    pub(crate) fn clock(&self) -> &dyn crate::clock::Clock {
        self.clock.as_ref()
    }

    /// Adds disk paths that every snapshot measures.
    #[must_use]
    pub fn with_paths<I, P>(mut self, paths: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<PathBuf>,
    {
        self.paths.extend(paths.into_iter().map(Into::into));
        self
    }

    /// Uses `backend`'s readers; [`Backend::Direct`] is only available on Linux and falls
    /// back to [`Backend::Portable`] elsewhere.
    #[must_use]
    pub fn with_backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// The limits.
    pub fn limits(&self) -> &ResourceLimits {
        &self.limits
    }

    /// Every figure now, for the configured paths.
    pub fn snapshot(&self) -> ResourceSnapshot {
        self.snapshot_with(&[])
    }

    /// Every figure now, for the configured paths and `extra` ones.
    pub fn snapshot_with(&self, extra: &[&Path]) -> ResourceSnapshot {
        let paths: Vec<&Path> = self
            .paths
            .iter()
            .map(PathBuf::as_path)
            .chain(extra.iter().copied())
            .collect();
        match self.backend {
            #[cfg(target_os = "linux")]
            Backend::Direct => platform::snapshot(self, &paths),
            _ => portable::snapshot(self, &paths),
        }
    }

    /// Judges a snapshot of the configured paths.
    pub fn health(&self) -> HealthReport {
        self.report(self.snapshot())
    }

    /// Judges a snapshot that includes `path`'s filesystem. A path that does not exist is an
    /// error (it is what the caller asked about); an unresponsive one is reported as
    /// unavailable in the snapshot.
    pub fn full_health_check(&self, path: impl AsRef<Path>) -> Result<HealthReport> {
        let path = path.as_ref();
        std::fs::metadata(path).map_err(|e| GuardrailError::io(path, e))?;
        Ok(self.report(self.snapshot_with(&[path])))
    }

    fn report(&self, snapshot: ResourceSnapshot) -> HealthReport {
        let violations = snapshot.check(&self.limits);
        let status = HealthStatus::from_violations(&violations);
        let message = match violations.iter().max_by_key(|v| v.severity) {
            None => "all resources within limits".to_string(),
            Some(worst) => format!(
                "{} issue(s); worst: {} at {} {} against {} ({:?})",
                violations.len(),
                worst.resource,
                worst.used,
                worst.unit,
                worst.limit,
                worst.severity
            ),
        };
        match status {
            HealthStatus::Healthy => tracing::info!(%status, "resource health"),
            _ => tracing::warn!(%status, issues = violations.len(), %message, "resource health"),
        }
        HealthReport {
            status,
            message,
            violations,
            snapshot,
        }
    }

    /// Whether `statvfs` on `path` could block: on Linux, when the path is on a network or
    /// FUSE filesystem (decided once per path from `/proc/self/mountinfo`, without touching
    /// the mount); elsewhere, always.
    fn can_hang(&self, path: &Path) -> bool {
        let mut known = self.can_hang.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(&v) = known.get(path) {
            return v;
        }
        #[cfg(target_os = "linux")]
        let v = {
            let absolute = std::env::current_dir()
                .map(|cwd| cwd.join(path))
                .unwrap_or_else(|_| path.to_path_buf());
            std::fs::read_to_string("/proc/self/mountinfo")
                .map_or(true, |m| linux::is_network_mount(&m, &absolute))
        };
        #[cfg(not(target_os = "linux"))]
        let v = true;
        known.insert(path.to_path_buf(), v);
        v
    }

    /// `statvfs(path)`: directly on local filesystems; on those that can hang, on the
    /// crate's deadline pool, bounded by the limits' timeout. A call that does not return in
    /// time leaves its worker blocked in the kernel (a thread cannot be cancelled); until it
    /// returns, later calls for the same path answer "unavailable" at once instead of
    /// blocking another thread.
    fn disk_usage(&self, path: &Path) -> DiskUsage {
        if !self.can_hang(path) {
            return statvfs(path);
        }
        let owned = path.to_path_buf();
        let key = format!("statvfs:{}", path.display());
        match crate::worker::run(
            "statvfs",
            Some(&key),
            self.limits.statvfs_timeout,
            move || Ok(statvfs(&owned)),
        ) {
            Ok(usage) => usage,
            Err(e) => {
                tracing::warn!(path = %path.display(), timeout = ?self.limits.statvfs_timeout, "filesystem did not answer");
                DiskUsage::Unavailable {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                }
            }
        }
    }
}

#[cfg(target_os = "linux")]
mod platform {
    use std::path::Path;
    use std::sync::PoisonError;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Instant, SystemTime};

    use super::linux;
    use super::{
        CpuSample, CpuUsage, MemoryUsage, ProcessUsage, ResourceMonitor, ResourceSnapshot, gpu,
    };

    fn sysconf_u64(var: nix::unistd::SysconfVar, fallback: u64) -> u64 {
        // Cached: sysconf values do not change while the process runs.
        static CACHE: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
        let slot = match var {
            nix::unistd::SysconfVar::PAGE_SIZE => &CACHE[0],
            _ => &CACHE[1],
        };
        match slot.load(Ordering::Relaxed) {
            0 => {
                let v = nix::unistd::sysconf(var)
                    .ok()
                    .flatten()
                    .and_then(|v| u64::try_from(v).ok())
                    .filter(|v| *v > 0)
                    .unwrap_or(fallback);
                slot.store(v, Ordering::Relaxed);
                v
            }
            v => v,
        }
    }

    pub(super) fn snapshot(monitor: &ResourceMonitor, paths: &[&Path]) -> ResourceSnapshot {
        let page = sysconf_u64(nix::unistd::SysconfVar::PAGE_SIZE, 4096);
        let tck = sysconf_u64(nix::unistd::SysconfVar::CLK_TCK, 100);
        let now = Instant::now();
        let (rss, ticks, system, meminfo, cgroup) = {
            let mut files = monitor.files.lock().unwrap_or_else(PoisonError::into_inner);
            (
                files.statm().and_then(|t| linux::parse_statm_rss(&t, page)),
                files.stat().and_then(|t| linux::parse_stat_cpu_ticks(&t)),
                files
                    .system_stat()
                    .and_then(|t| linux::parse_proc_stat_cpu(&t)),
                files.meminfo().and_then(|t| linux::parse_meminfo(&t)),
                files.cgroup(),
            )
        };
        let fd_limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .ok()
            .map(|(soft, _hard)| soft);

        let (process_cpu, system_cpu) = {
            let mut prev = monitor
                .previous_cpu
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let rates = prev.and_then(|p| {
                let wall = now.saturating_duration_since(p.at).as_secs_f64();
                let process = ticks
                    .filter(|_| wall > 0.0)
                    .map(|t| t.saturating_sub(p.process_ticks) as f64 / tck as f64 / wall * 100.0);
                let system = system.and_then(|(busy, total)| {
                    let dt = total.saturating_sub(p.system_total);
                    (dt > 0).then(|| busy.saturating_sub(p.system_busy) as f64 / dt as f64 * 100.0)
                });
                Some((process, system))
            });
            if let (Some(t), Some((busy, total))) = (ticks, system) {
                *prev = Some(CpuSample {
                    at: now,
                    process_ticks: t,
                    system_busy: busy,
                    system_total: total,
                });
            }
            rates.unwrap_or((None, None))
        };

        let cg_limit = cgroup.and_then(|c| c.memory_limit);
        let machine_total = meminfo.map(|m| m.total);
        let effective_total = match (machine_total, cg_limit) {
            (Some(m), Some(c)) => Some(m.min(c)),
            (m, c) => m.or(c),
        };
        let cg_left = cgroup.and_then(|c| Some(c.memory_limit?.saturating_sub(c.memory_usage?)));
        let machine_available = meminfo.map(|m| m.available);
        let effective_available = match (machine_available, cg_left) {
            (Some(m), Some(c)) => Some(m.min(c)),
            (m, c) => m.or(c),
        };

        ResourceSnapshot {
            taken_at: SystemTime::now(),
            process: ProcessUsage {
                rss_bytes: rss,
                cpu_percent: process_cpu,
                open_fds: linux::count_open_fds(),
                fd_limit,
            },
            memory: MemoryUsage {
                machine_total,
                machine_available,
                cgroup,
                effective_total,
                effective_available,
            },
            cpu: CpuUsage {
                system_percent: system_cpu,
                cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
                quota_cores: cgroup.and_then(|c| c.cpu_quota),
            },
            disks: paths.iter().map(|p| monitor.disk_usage(p)).collect(),
            gpu: gpu::read(),
        }
    }
}

#[cfg(unix)]
#[allow(clippy::unnecessary_cast)]
/// Space on `path`'s filesystem. (The statvfs field types are u32 on some 32-bit targets
/// and u64 on the rest, hence the casts.)
pub(crate) fn statvfs(path: &Path) -> DiskUsage {
    match nix::sys::statvfs::statvfs(path) {
        Ok(s) => {
            let frag = s.fragment_size() as u64;
            let total = (s.blocks() as u64).saturating_mul(frag);
            let free = (s.blocks_available() as u64).saturating_mul(frag);
            let used = total.saturating_sub((s.blocks_free() as u64).saturating_mul(frag));
            DiskUsage::Available {
                path: path.to_path_buf(),
                total,
                used,
                free,
            }
        }
        Err(e) => DiskUsage::Unavailable {
            path: path.to_path_buf(),
            reason: format!("statvfs: {e}"),
        },
    }
}

#[cfg(not(unix))]
pub(crate) fn statvfs(path: &Path) -> DiskUsage {
    DiskUsage::Unavailable {
        path: path.to_path_buf(),
        reason: "statvfs is not available on this platform".into(),
    }
}

/// The portable readers, through `sysinfo` with targeted refreshes (never a full refresh):
/// the only readers off Linux, and a choice on Linux ([`Backend::Portable`]).
mod portable {
    use std::path::Path;
    use std::time::SystemTime;

    use sysinfo::{ProcessRefreshKind, ProcessesToUpdate};

    use super::{CpuUsage, MemoryUsage, ProcessUsage, ResourceMonitor, ResourceSnapshot, gpu};

    #[derive(Debug)]
    pub(crate) struct State {
        sys: sysinfo::System,
        pid: Option<sysinfo::Pid>,
        primed: bool,
    }

    impl State {
        pub(crate) fn new() -> Self {
            Self {
                sys: sysinfo::System::new(),
                pid: sysinfo::get_current_pid().ok(),
                primed: false,
            }
        }
    }

    fn open_fds() -> Option<u64> {
        #[cfg(unix)]
        {
            let n = std::fs::read_dir("/dev/fd").ok()?.count() as u64;
            Some(n.saturating_sub(1))
        }
        #[cfg(not(unix))]
        {
            None
        }
    }

    fn fd_limit() -> Option<u64> {
        #[cfg(unix)]
        {
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .ok()
                .map(|(soft, _)| soft)
        }
        #[cfg(not(unix))]
        {
            None
        }
    }

    pub(crate) fn snapshot(monitor: &ResourceMonitor, paths: &[&Path]) -> ResourceSnapshot {
        let (rss, process_cpu, system_cpu, total, available, cgroup_total) = {
            let mut st = monitor
                .portable
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let pid = st.pid;
            st.sys.refresh_memory();
            st.sys.refresh_cpu_usage();
            if let Some(pid) = pid {
                st.sys.refresh_processes_specifics(
                    ProcessesToUpdate::Some(&[pid]),
                    false,
                    ProcessRefreshKind::nothing().with_memory().with_cpu(),
                );
            }
            // sysinfo's rates need two refreshes; the first has no baseline.
            let primed = st.primed;
            st.primed = true;
            let process = pid.and_then(|p| st.sys.process(p));
            let total = st.sys.total_memory();
            let cgroup_total = st.sys.cgroup_limits().map(|c| c.total_memory);
            (
                process.map(|p| p.memory()),
                process.filter(|_| primed).map(|p| f64::from(p.cpu_usage())),
                primed.then(|| f64::from(st.sys.global_cpu_usage())),
                (total > 0).then_some(total),
                Some(st.sys.available_memory()),
                cgroup_total,
            )
        };
        let effective_total = match (total, cgroup_total) {
            (Some(m), Some(c)) => Some(m.min(c)),
            (m, c) => m.or(c),
        };
        ResourceSnapshot {
            taken_at: SystemTime::now(),
            process: ProcessUsage {
                rss_bytes: rss,
                cpu_percent: process_cpu,
                open_fds: open_fds(),
                fd_limit: fd_limit(),
            },
            memory: MemoryUsage {
                machine_total: total,
                machine_available: available,
                #[cfg(target_os = "linux")]
                cgroup: None,
                effective_total,
                effective_available: match (available, effective_total) {
                    (Some(a), Some(t)) => Some(a.min(t)),
                    (a, _) => a,
                },
            },
            cpu: CpuUsage {
                system_percent: system_cpu,
                cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
                quota_cores: None,
            },
            disks: paths.iter().map(|p| monitor.disk_usage(p)).collect(),
            gpu: gpu::read(),
        }
    }
}

/// Used by the guard: figures a scope compares at entry and exit.
pub(crate) fn usage_point(
    snapshot: &ResourceSnapshot,
    path: Option<&Path>,
) -> (Option<u64>, Option<u64>, Option<u64>) {
    let free = path.and_then(|p| {
        snapshot
            .disks
            .iter()
            .find(|d| d.path() == p)
            .and_then(DiskUsage::free)
    });
    (snapshot.process.rss_bytes, snapshot.process.open_fds, free)
}
