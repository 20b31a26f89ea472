//! The monitor: takes snapshots through one of two backends and judges them.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use super::{DiskUsage, HealthReport, HealthStatus, ResourceLimits, ResourceSnapshot, portable};
#[cfg(target_os = "linux")]
use super::{direct, linux};
use crate::error::{GuardrailError, Result};

/// Previous CPU counters, so the next snapshot can compute a rate.
#[derive(Debug, Clone, Copy)]
pub(super) struct CpuSample {
    pub(super) at: Instant,
    pub(super) process_ticks: u64,
    pub(super) system_busy: u64,
    pub(super) system_total: u64,
}

/// Takes snapshots and judges them against its limits. Cheap to call in a loop: a
/// snapshot reads a handful of small files.
#[derive(Debug)]
pub struct ResourceMonitor {
    pub(super) limits: ResourceLimits,
    pub(super) paths: Vec<PathBuf>,
    pub(super) previous_cpu: Mutex<Option<CpuSample>>,
    /// Per checked path: whether its filesystem can hang (network, FUSE), decided once.
    pub(super) can_hang: Mutex<std::collections::HashMap<PathBuf, bool>>,
    #[cfg(target_os = "linux")]
    pub(super) files: Mutex<linux::ProcFiles>,
    pub(super) backend: Backend,
    pub(super) portable: Mutex<portable::State>,
    /// What [`ResourceGuard`](super::ResourceGuard)s time their scope with.
    pub(super) clock: crate::clock::SharedClock,
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

    /// Times [`resource_guard`](super::resource_guard) scopes with `clock` (a
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
            Backend::Direct => direct::snapshot(self, &paths),
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
    pub(super) fn disk_usage(&self, path: &Path) -> DiskUsage {
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
