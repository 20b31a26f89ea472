//! `HealthRegistry`: named checks, each with a timeout, aggregated into one status.
//!
//! A check returns a [`HealthStatus`] (or an error, which counts as unhealthy). The
//! registry's status is the worst of its required checks; an optional check counts at most
//! as degraded. A check that does not answer within its timeout is unhealthy (its thread is
//! left to finish on its own: a thread cannot be killed). Each result carries its latency
//! and the check's last error. This is what an LLM health check is built on: one check per
//! model.
//!
//! ```
//! use guardrails::health::{CheckOptions, HealthRegistry};
//! use guardrails::resource::{HealthStatus, ResourceLimits, ResourceMonitor};
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! let mut registry = HealthRegistry::new();
//! registry.register_resources(Arc::new(ResourceMonitor::new(ResourceLimits::new())?));
//! registry.register("qwen", CheckOptions::required(Duration::from_secs(5)), || Ok(HealthStatus::Healthy));
//! registry.register("cache", CheckOptions::optional(Duration::from_secs(1)), || {
//!     Ok(HealthStatus::Unhealthy)
//! });
//! let report = registry.run();
//! assert!(report.status <= HealthStatus::Degraded); // the optional check degrades at most
//! assert_eq!(report.checks.len(), 3);
//! # Ok::<(), guardrails::GuardrailError>(())
//! ```

use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::Result;
use crate::resource::{HealthStatus, ResourceMonitor};

/// How one check counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckOptions {
    /// Whether it can make the whole registry worse than degraded.
    pub required: bool,
    /// How long it may take.
    pub timeout: Duration,
}

impl CheckOptions {
    /// A required check with `timeout`.
    pub const fn required(timeout: Duration) -> Self {
        Self {
            required: true,
            timeout,
        }
    }

    /// An optional check with `timeout`.
    pub const fn optional(timeout: Duration) -> Self {
        Self {
            required: false,
            timeout,
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckResult {
    /// Its name.
    pub name: String,
    /// What it said (an error or a timeout is unhealthy).
    pub status: HealthStatus,
    /// Whether it is required.
    pub required: bool,
    /// How long it took (the timeout, when it timed out).
    #[serde(with = "humantime_serde")]
    pub latency: Duration,
    /// The error of this run, if any.
    pub error: Option<String>,
    /// The most recent error of any run so far.
    pub last_error: Option<String>,
}

/// The registry's answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegistryReport {
    /// Worst required status; optional checks count at most as degraded.
    pub status: HealthStatus,
    /// Every check, in registration order.
    pub checks: Vec<CheckResult>,
}

type CheckFn = Arc<dyn Fn() -> Result<HealthStatus> + Send + Sync>;

struct Check {
    name: String,
    options: CheckOptions,
    run: CheckFn,
    last_error: Arc<Mutex<Option<String>>>,
}

/// Named health checks; see the [module docs](self).
#[derive(Default)]
pub struct HealthRegistry {
    checks: Vec<Check>,
}

impl std::fmt::Debug for HealthRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.checks.iter().map(|c| c.name.as_str()).collect();
        f.debug_struct("HealthRegistry")
            .field("checks", &names)
            .finish()
    }
}

impl HealthRegistry {
    /// An empty registry (healthy).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a check; a check of the same name is replaced.
    pub fn register<F>(&mut self, name: impl Into<String>, options: CheckOptions, check: F)
    where
        F: Fn() -> Result<HealthStatus> + Send + Sync + 'static,
    {
        let name = name.into();
        self.checks.retain(|c| c.name != name);
        self.checks.push(Check {
            name,
            options,
            run: Arc::new(check),
            last_error: Arc::new(Mutex::new(None)),
        });
    }

    /// Adds the resource monitor as the required check `"resources"` (timeout 5 s).
    pub fn register_resources(&mut self, monitor: Arc<ResourceMonitor>) {
        self.register(
            "resources",
            CheckOptions::required(Duration::from_secs(5)),
            move || Ok(monitor.health().status),
        );
    }

    /// Runs every check at once, each bounded by its timeout, and aggregates.
    pub fn run(&self) -> RegistryReport {
        let start = Instant::now();
        let pending: Vec<_> = self
            .checks
            .iter()
            .map(|c| {
                let (tx, rx) = mpsc::sync_channel(1);
                let run = Arc::clone(&c.run);
                let spawned = std::thread::Builder::new()
                    .name(format!("guardrails-health-{}", c.name))
                    .spawn(move || {
                        let began = Instant::now();
                        let result = run();
                        let _ = tx.send((result, began.elapsed()));
                    });
                (c, rx, spawned.is_ok())
            })
            .collect();
        let checks: Vec<CheckResult> = pending
            .into_iter()
            .map(|(c, rx, spawned)| {
                let deadline = start + c.options.timeout;
                let waited = if spawned {
                    rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                        .ok()
                } else {
                    None
                };
                let (status, latency, error) = match waited {
                    Some((Ok(status), latency)) => (status, latency, None),
                    Some((Err(e), latency)) => (
                        HealthStatus::Unhealthy,
                        latency,
                        Some(e.report().to_string()),
                    ),
                    None if spawned => (
                        HealthStatus::Unhealthy,
                        c.options.timeout,
                        Some(format!("no answer within {:?}", c.options.timeout)),
                    ),
                    None => (
                        HealthStatus::Unhealthy,
                        Duration::ZERO,
                        Some("could not start the check's thread".into()),
                    ),
                };
                let mut last = c.last_error.lock().unwrap_or_else(PoisonError::into_inner);
                if error.is_some() {
                    last.clone_from(&error);
                }
                CheckResult {
                    name: c.name.clone(),
                    status,
                    required: c.options.required,
                    latency,
                    error,
                    last_error: last.clone(),
                }
            })
            .collect();
        let status = checks
            .iter()
            .map(|c| {
                if c.required {
                    c.status
                } else {
                    c.status.min(HealthStatus::Degraded)
                }
            })
            .max()
            .unwrap_or(HealthStatus::Healthy);
        tracing::info!(%status, checks = checks.len(), "health checks run");
        RegistryReport { status, checks }
    }
}
