//! `resource_guard`: a scope that checks on entry and reports what it consumed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{DiskUsage, ResourceMonitor, ResourceSnapshot, Severity};
use crate::error::Result;

/// What a scope consumed: differences between its entry and exit figures (negative when it
/// gave back more than it took).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct UsageDelta {
    /// RSS growth, bytes.
    pub memory_bytes: Option<i64>,
    /// File descriptors opened and not closed.
    pub open_fds: Option<i64>,
    /// Free space consumed on the checked path, bytes.
    pub disk_bytes: Option<i64>,
    /// Wall time in the scope.
    pub wall: Duration,
}

/// A checked scope; see [`resource_guard`].
#[derive(Debug)]
#[must_use = "the scope is checked when the guard is finished or dropped"]
pub struct ResourceGuard<'a> {
    monitor: &'a ResourceMonitor,
    path: Option<PathBuf>,
    start: Instant,
    rss: Option<u64>,
    fds: Option<u64>,
    free: Option<u64>,
    finished: bool,
}

fn diff(after: Option<u64>, before: Option<u64>) -> Option<i64> {
    let (a, b) = (i64::try_from(after?).ok()?, i64::try_from(before?).ok()?);
    a.checked_sub(b)
}

/// Enters a scope after checking the machine (and `check_path`'s filesystem, if given).
/// Fails with [`GuardrailError::ResourceExhausted`](crate::GuardrailError::ResourceExhausted)
/// for the worst violation when a limit is exceeded or health is critical; warnings pass.
///
/// ```
/// use guardrails::resource::{resource_guard, ResourceLimits, ResourceMonitor};
///
/// let monitor = ResourceMonitor::new(ResourceLimits::new().with_min_free_disk_bytes(1))?;
/// let guard = resource_guard(&monitor, Some(std::env::temp_dir().as_path()))?;
/// let buffer = vec![1u8; 1 << 20];
/// let delta = guard.finish();
/// println!("grew by {:?} bytes in {:?}", delta.memory_bytes, delta.wall);
/// # drop(buffer);
/// # Ok::<(), guardrails::GuardrailError>(())
/// ```
pub fn resource_guard<'a>(
    monitor: &'a ResourceMonitor,
    check_path: Option<&Path>,
) -> Result<ResourceGuard<'a>> {
    let snapshot = match check_path {
        Some(p) => monitor.snapshot_with(&[p]),
        None => monitor.snapshot(),
    };
    let violations = snapshot.check(monitor.limits());
    if let Some(worst) = violations
        .iter()
        .filter(|v| v.severity >= Severity::Exceeded)
        .max_by_key(|v| v.severity)
    {
        tracing::warn!(resource = %worst.resource, used = worst.used, limit = worst.limit, "resource guard refused entry");
        if crate::events::enabled() {
            let resource = worst.resource.to_string();
            crate::events::emit(|| crate::events::GuardEvent {
                guard: crate::events::GuardKind::Resources,
                name: "resource_guard",
                decision: crate::events::Decision::LimitHit {
                    resource: &resource,
                },
            });
        }
        return Err(worst.to_error());
    }
    let (rss, fds, free) = usage_point(&snapshot, check_path);
    Ok(ResourceGuard {
        monitor,
        path: check_path.map(Path::to_path_buf),
        start: monitor.clock().now(),
        rss,
        fds,
        free,
        finished: false,
    })
}

impl ResourceGuard<'_> {
    fn delta(&self) -> UsageDelta {
        let snapshot = match &self.path {
            Some(p) => self.monitor.snapshot_with(&[p.as_path()]),
            None => self.monitor.snapshot(),
        };
        let (rss, fds, free) = usage_point(&snapshot, self.path.as_deref());
        UsageDelta {
            memory_bytes: diff(rss, self.rss),
            open_fds: diff(fds, self.fds),
            // Consumed space is free space lost.
            disk_bytes: diff(self.free, free),
            wall: self
                .monitor
                .clock()
                .now()
                .saturating_duration_since(self.start),
        }
    }

    /// Leaves the scope and returns what it consumed.
    pub fn finish(mut self) -> UsageDelta {
        self.finished = true;
        self.delta()
    }
}

impl Drop for ResourceGuard<'_> {
    fn drop(&mut self) {
        if !self.finished {
            let d = self.delta();
            tracing::warn!(
                memory_bytes = d.memory_bytes,
                open_fds = d.open_fds,
                disk_bytes = d.disk_bytes,
                wall_ms = u64::try_from(d.wall.as_millis()).unwrap_or(u64::MAX),
                "resource guard dropped without finish"
            );
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
