//! `HealthRegistry`: named checks, each with a timeout, aggregated into one status.
//!
//! A check returns a [`HealthStatus`] (or an error, which counts as unhealthy). The
//! registry's status is the worst of its required checks; an optional check counts at most
//! as degraded. A check that does not answer within its timeout is unhealthy; its thread is
//! left to finish on its own (a thread cannot be killed), and until it does, that check is
//! not started again: each poll reports it unhealthy at once, so a hung check holds one
//! thread however often it is polled. Each result carries its latency
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

#[cfg(feature = "async")]
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
#[cfg(feature = "async")]
use std::time::Instant;

use serde::Serialize;

#[cfg(feature = "async")]
use crate::error::GuardrailError;
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
#[cfg(feature = "async")]
type AsyncCheckFn = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<HealthStatus>> + Send>>
        + Send
        + Sync,
>;

enum Probe {
    Sync(CheckFn),
    #[cfg(feature = "async")]
    Async(AsyncCheckFn),
}

struct Check {
    name: String,
    options: CheckOptions,
    probe: Probe,
    last_error: Arc<Mutex<Option<String>>>,
}

/// What one check's run came to, before aggregation.
type Answer = Option<(Result<HealthStatus>, Duration)>;

/// A check's run handed off, not yet collected.
enum Waiting {
    Sync(crate::worker::Pending<(Result<HealthStatus>, Duration)>),
    #[cfg(feature = "async")]
    Async(mpsc::Receiver<(Result<HealthStatus>, Duration)>, Instant),
    Refused(crate::error::GuardrailError),
}

/// The runtime that drives async checks for [`HealthRegistry::run`]: one per process, a
/// current-thread runtime driven by one thread of its own, built on first use.
#[cfg(feature = "async")]
fn async_runtime() -> Option<&'static tokio::runtime::Handle> {
    static RUNTIME: std::sync::OnceLock<Option<tokio::runtime::Handle>> =
        std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            let handle = rt.handle().clone();
            std::thread::Builder::new()
                .name("guardrails-health-async".into())
                .spawn(move || rt.block_on(std::future::pending::<()>()))
                .ok()?;
            Some(handle)
        })
        .as_ref()
}

/// Named health checks; see the [module docs](self).
pub struct HealthRegistry {
    checks: Vec<Check>,
    /// What a sync check's latency is read from under [`run`](Self::run).
    clock: crate::clock::SharedClock,
}

impl Default for HealthRegistry {
    fn default() -> Self {
        Self {
            checks: Vec::new(),
            clock: Arc::new(crate::clock::SystemClock),
        }
    }
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

    /// Reads each sync check's latency from `clock` (a [`ManualClock`](crate::ManualClock)
    /// in tests). The timeouts stay real: they bound real threads that nothing else would
    /// stop. Async checks under [`run_async`](Self::run_async) are timed on tokio's clock,
    /// which paused time drives.
    #[must_use]
    pub fn with_clock(mut self, clock: impl crate::clock::Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
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
            probe: Probe::Sync(Arc::new(check)),
            last_error: Arc::new(Mutex::new(None)),
        });
    }

    /// Adds an async check (an LLM endpoint's ping, say); [`run_async`](Self::run_async)
    /// awaits it, [`run`](Self::run) drives it on a small runtime of its own.
    #[cfg(feature = "async")]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub fn register_async<F, Fut>(
        &mut self,
        name: impl Into<String>,
        options: CheckOptions,
        check: F,
    ) where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<HealthStatus>> + Send + 'static,
    {
        let name = name.into();
        self.checks.retain(|c| c.name != name);
        self.checks.push(Check {
            name,
            options,
            probe: Probe::Async(Arc::new(move || Box::pin(check()))),
            last_error: Arc::new(Mutex::new(None)),
        });
    }

    /// Runs every check at once on tokio, each bounded by its timeout (sync checks on the
    /// blocking pool), and aggregates.
    #[cfg(feature = "async")]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub async fn run_async(&self) -> RegistryReport {
        let tasks: Vec<_> = self
            .checks
            .iter()
            .map(|c| {
                let timeout = c.options.timeout;
                let fut: std::pin::Pin<
                    Box<dyn std::future::Future<Output = Result<HealthStatus>> + Send>,
                > = match &c.probe {
                    Probe::Async(f) => f(),
                    Probe::Sync(f) => {
                        let f = Arc::clone(f);
                        Box::pin(async move {
                            tokio::task::spawn_blocking(move || f())
                                .await
                                .unwrap_or_else(|e| {
                                    Err(GuardrailError::Cancelled {
                                        operation: format!("health check: {e}"),
                                    })
                                })
                        })
                    }
                };
                tokio::spawn(async move {
                    let began = tokio::time::Instant::now();
                    tokio::time::timeout(timeout, fut)
                        .await
                        .ok()
                        .map(|r| (r, began.elapsed()))
                })
            })
            .collect();
        let mut answers = Vec::with_capacity(tasks.len());
        for t in tasks {
            answers.push(t.await.ok().flatten());
        }
        self.aggregate(answers.into_iter().map(|a| (a, true)).collect())
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
    ///
    /// Sync checks run on the crate's bounded pool of deadline threads; a check whose
    /// previous run has not returned yet is not started again but reported unhealthy at once
    /// ("an earlier run has not returned yet"), so a hung check costs one thread however
    /// often it is polled. Async checks run on one small tokio runtime shared by every
    /// registry and are dropped (cancelled) at their timeout.
    pub fn run(&self) -> RegistryReport {
        let pending: Vec<Waiting> = self
            .checks
            .iter()
            .map(|c| match &c.probe {
                Probe::Sync(f) => {
                    let run = Arc::clone(f);
                    let clock = Arc::clone(&self.clock);
                    // The probe's address names this check of this registry, not another
                    // registry's check of the same name.
                    let key = format!("health:{:p}", Arc::as_ptr(f));
                    let started = crate::worker::start(
                        &format!("health check {}", c.name),
                        Some(&key),
                        c.options.timeout,
                        move || {
                            let began = clock.now();
                            let result = run();
                            Ok((result, clock.now().saturating_duration_since(began)))
                        },
                    );
                    match started {
                        Ok(p) => Waiting::Sync(p),
                        Err(e) => Waiting::Refused(e),
                    }
                }
                #[cfg(feature = "async")]
                Probe::Async(f) => match async_runtime() {
                    Some(rt) => {
                        let (tx, rx) = mpsc::sync_channel(1);
                        let fut = f();
                        let timeout = c.options.timeout;
                        rt.spawn(async move {
                            let began = tokio::time::Instant::now();
                            if let Ok(result) = tokio::time::timeout(timeout, fut).await {
                                let _ = tx.send((result, began.elapsed()));
                            }
                        });
                        Waiting::Async(rx, Instant::now() + timeout)
                    }
                    None => Waiting::Refused(GuardrailError::Cancelled {
                        operation: "health check: no tokio runtime could be built".into(),
                    }),
                },
            })
            .collect();
        let answers = pending
            .into_iter()
            .map(|waiting| match waiting {
                Waiting::Sync(p) => match p.wait() {
                    Ok(answer) => (Some(answer), true),
                    // A refusal (a run still in flight, a full pool) came at start; a
                    // timeout here is this run's own.
                    Err(e) if e.kind() == crate::error::ErrorKind::Timeout => (None, true),
                    Err(e) => (Some((Err(e), Duration::ZERO)), true),
                },
                #[cfg(feature = "async")]
                Waiting::Async(rx, deadline) => (
                    rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                        .ok(),
                    true,
                ),
                Waiting::Refused(e) => (Some((Err(e), Duration::ZERO)), true),
            })
            .collect();
        self.aggregate(answers)
    }

    fn aggregate(&self, answers: Vec<(Answer, bool)>) -> RegistryReport {
        let checks: Vec<CheckResult> = self
            .checks
            .iter()
            .zip(answers)
            .map(|(c, (waited, spawned))| {
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
                        Some("could not start the check".into()),
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
