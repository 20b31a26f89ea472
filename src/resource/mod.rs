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

#[cfg(target_os = "linux")]
mod direct;
mod gpu;
mod guard;
mod limits;
#[cfg(target_os = "linux")]
mod linux;
mod monitor;
mod portable;
mod snapshot;
mod status;
mod trend;

pub use gpu::{GpuDevice, GpuStatus};
pub use guard::{ResourceGuard, UsageDelta, resource_guard};
pub use limits::ResourceLimits;
#[cfg(target_os = "linux")]
pub use linux::CgroupLimits;
use monitor::CpuSample;
pub use monitor::{Backend, ResourceMonitor};
pub use snapshot::{
    CpuUsage, DiskUsage, MemoryUsage, ProcessUsage, ResourceSnapshot, Severity, Violation,
};
pub use status::{HealthReport, HealthStatus};
pub use trend::{
    Gauge, PredictiveAlert, Predictor, ResourceSampler, SamplerBuilder, SamplerConfig,
    SamplerEvent, Trend, gauges,
};
