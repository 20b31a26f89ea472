//! Time-to-exhaustion from a sample history, predictive alerts with hysteresis, and the
//! background sampler that feeds them.
//!
//! For each gauge (memory against its limit, used disk against the filesystem's size, open
//! file descriptors against their limit) the last samples are fitted with a least-squares
//! line, as Prometheus' `predict_linear` does; a positive slope gives the time until the
//! gauge meets its limit. An alert is raised when that time falls under the horizon and
//! cleared only when it rises above 1.5 × the horizon (or the gauge stops growing), so a
//! noisy trend near the threshold does not flap.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{DiskUsage, HealthReport, HealthStatus, ResourceMonitor, ResourceSnapshot};
use crate::clock::{Clock, SharedClock, SystemClock};
use crate::error::{GuardrailError, Result};

/// A least-squares line through `(t, value)` points: `value ≈ intercept + slope × t`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trend {
    /// Change per second.
    pub slope: f64,
    /// Value at t = 0.
    pub intercept: f64,
}

impl Trend {
    /// Fits the points; `None` with fewer than two distinct times or non-finite input.
    pub fn fit(points: &[(f64, f64)]) -> Option<Self> {
        let n = points.len() as f64;
        if points.len() < 2 {
            return None;
        }
        let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n;
        let mean_v = points.iter().map(|p| p.1).sum::<f64>() / n;
        let (mut cov, mut var) = (0.0, 0.0);
        for &(t, v) in points {
            cov += (t - mean_t) * (v - mean_v);
            var += (t - mean_t) * (t - mean_t);
        }
        if var <= 0.0 || !var.is_finite() || !cov.is_finite() {
            return None;
        }
        let slope = cov / var;
        Some(Self {
            slope,
            intercept: mean_v - slope * mean_t,
        })
    }

    /// Seconds from `t` until the line reaches `limit`; `None` when it never does (flat or
    /// falling), zero when it already has.
    pub fn seconds_until(&self, t: f64, limit: f64) -> Option<f64> {
        let now = self.intercept + self.slope * t;
        if now >= limit {
            return Some(0.0);
        }
        (self.slope > 0.0).then(|| (limit - now) / self.slope)
    }
}

/// One gauge at one moment: a figure that exhausts its resource when it reaches `limit`.
#[derive(Debug, Clone, PartialEq)]
pub struct Gauge {
    /// `"memory"`, `"disk <path>"` or `"open_files"`.
    pub resource: String,
    /// The figure.
    pub value: f64,
    /// Where it runs out.
    pub limit: f64,
}

/// The gauges of a snapshot: RSS against the smaller of the configured limit and what the
/// machine or cgroup allows, used disk against the filesystem's size, and open files against
/// the smaller of the configured limit and `RLIMIT_NOFILE`.
pub fn gauges(snapshot: &ResourceSnapshot, limits: &super::ResourceLimits) -> Vec<Gauge> {
    let mut out = Vec::new();
    if let Some(rss) = snapshot.process.rss_bytes {
        let limit = snapshot
            .memory
            .effective_total
            .map_or(limits.max_memory_bytes, |t| t.min(limits.max_memory_bytes));
        out.push(Gauge {
            resource: "memory".into(),
            value: rss as f64,
            limit: limit as f64,
        });
    }
    for d in &snapshot.disks {
        if let DiskUsage::Available {
            path, total, free, ..
        } = d
        {
            // Used as seen by unprivileged writers, so "full" is when they can write no more.
            out.push(Gauge {
                resource: format!("disk {}", path.display()),
                value: total.saturating_sub(*free) as f64,
                limit: *total as f64,
            });
        }
    }
    if let Some(fds) = snapshot.process.open_fds {
        let limit = snapshot
            .process
            .fd_limit
            .map_or(limits.max_open_files, |l| l.min(limits.max_open_files));
        out.push(Gauge {
            resource: "open_files".into(),
            value: fds as f64,
            limit: limit as f64,
        });
    }
    out
}

/// A resource predicted to run out within the horizon.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PredictiveAlert {
    /// The gauge.
    pub resource: String,
    /// Predicted time until it runs out.
    pub time_to_exhaustion: Duration,
    /// Growth per hour, in the gauge's unit.
    pub slope_per_hour: f64,
    /// For people: "disk /data full in ~3 h".
    pub message: String,
}

/// What the sampler tells its listeners.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SamplerEvent {
    /// The health status changed.
    StatusChanged {
        /// Before.
        from: HealthStatus,
        /// After.
        to: HealthStatus,
    },
    /// A resource is predicted to run out within the horizon.
    Alert(PredictiveAlert),
    /// A raised alert no longer holds.
    AlertCleared {
        /// The gauge.
        resource: String,
    },
}

fn humanize(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 3600.0 {
        format!("~{} min", (s / 60.0).round().max(1.0))
    } else if s < 48.0 * 3600.0 {
        format!("~{} h", (s / 3600.0).round())
    } else {
        format!("~{} days", (s / 86400.0).round())
    }
}

fn describe(resource: &str, tte: Duration) -> String {
    let what = if resource.starts_with("disk ") {
        format!("{resource} full")
    } else {
        format!("{resource} exhausted")
    };
    if tte.is_zero() {
        format!("{what} now")
    } else {
        format!("{what} in {}", humanize(tte))
    }
}

/// Settings of the predictor and the sampler.
///
/// | key | default | meaning |
/// |---|---|---|
/// | `interval` | `"10s"` | time between samples |
/// | `history` | `360` | samples kept per gauge (an hour at the default interval) |
/// | `min_samples` | `6` | samples needed before a trend is trusted |
/// | `horizon` | `"6h"` | alert when exhaustion is predicted sooner than this |
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct SamplerConfig {
    /// Time between samples.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Samples kept per gauge.
    pub history: usize,
    /// Samples needed before a trend is trusted.
    pub min_samples: usize,
    /// Alert horizon.
    #[serde(with = "humantime_serde")]
    pub horizon: Duration,
}

impl SamplerConfig {
    /// The defaults in the table.
    pub const fn new() -> Self {
        Self {
            interval: Duration::from_secs(10),
            history: 360,
            min_samples: 6,
            horizon: Duration::from_secs(6 * 3600),
        }
    }

    /// Sets the interval.
    #[must_use]
    pub const fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Sets the horizon.
    #[must_use]
    pub const fn with_horizon(mut self, horizon: Duration) -> Self {
        self.horizon = horizon;
        self
    }

    /// Sets the samples needed before a trend is trusted.
    #[must_use]
    pub const fn with_min_samples(mut self, n: usize) -> Self {
        self.min_samples = n;
        self
    }

    /// Rejects zero intervals and horizons and a history too short to fit a line.
    pub fn validate(&self) -> Result<()> {
        if self.interval.is_zero() {
            return Err(GuardrailError::config(
                "interval",
                "must be greater than zero",
            ));
        }
        if self.horizon.is_zero() {
            return Err(GuardrailError::config(
                "horizon",
                "must be greater than zero",
            ));
        }
        if self.min_samples < 2 || self.history < self.min_samples {
            return Err(GuardrailError::config(
                "history",
                format!(
                    "need history >= min_samples >= 2, got {} and {}",
                    self.history, self.min_samples
                ),
            ));
        }
        Ok(())
    }
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// Keeps the history of each gauge and decides alerts with hysteresis. The sampler drives
/// one; tests drive one by hand on a [`ManualClock`](crate::ManualClock).
#[derive(Debug)]
pub struct Predictor {
    config: SamplerConfig,
    origin: Option<Instant>,
    history: HashMap<String, VecDeque<(f64, f64)>>,
    active: HashMap<String, PredictiveAlert>,
}

impl Predictor {
    /// A predictor with no history; `config` is validated.
    pub fn new(config: SamplerConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            origin: None,
            history: HashMap::new(),
            active: HashMap::new(),
        })
    }

    /// The alerts in force.
    pub fn active_alerts(&self) -> Vec<PredictiveAlert> {
        let mut v: Vec<_> = self.active.values().cloned().collect();
        v.sort_by(|a, b| a.resource.cmp(&b.resource));
        v
    }

    /// Adds one sample of each gauge taken at `now` and returns the alerts raised and
    /// cleared by it.
    pub fn observe(&mut self, now: Instant, gauges: &[Gauge]) -> Vec<SamplerEvent> {
        let origin = *self.origin.get_or_insert(now);
        let t = now.saturating_duration_since(origin).as_secs_f64();
        let horizon = self.config.horizon.as_secs_f64();
        let mut events = Vec::new();
        for g in gauges {
            if !(g.value.is_finite() && g.limit.is_finite()) {
                continue;
            }
            let h = self.history.entry(g.resource.clone()).or_default();
            h.push_back((t, g.value));
            while h.len() > self.config.history {
                h.pop_front();
            }
            if h.len() < self.config.min_samples {
                continue;
            }
            let points: Vec<(f64, f64)> = h.iter().copied().collect();
            let tte = Trend::fit(&points)
                .and_then(|tr| tr.seconds_until(t, g.limit).map(|s| (s, tr.slope * 3600.0)));
            let raised = self.active.contains_key(&g.resource);
            match tte {
                Some((secs, slope)) if secs < horizon => {
                    let alert = PredictiveAlert {
                        resource: g.resource.clone(),
                        time_to_exhaustion: Duration::from_secs_f64(secs.max(0.0)),
                        slope_per_hour: slope,
                        message: describe(&g.resource, Duration::from_secs_f64(secs.max(0.0))),
                    };
                    if !raised {
                        tracing::warn!(resource = %alert.resource, message = %alert.message, "predictive resource alert");
                        events.push(SamplerEvent::Alert(alert.clone()));
                    }
                    self.active.insert(g.resource.clone(), alert);
                }
                // Hysteresis: an alert stays until the prediction is well clear of the horizon.
                Some((secs, _)) if raised && secs < horizon * 1.5 => {}
                _ if raised => {
                    self.active.remove(&g.resource);
                    tracing::info!(resource = %g.resource, "predictive resource alert cleared");
                    events.push(SamplerEvent::AlertCleared {
                        resource: g.resource.clone(),
                    });
                }
                _ => {}
            }
        }
        events
    }
}

struct Shared {
    listeners: crate::listeners::Listeners<SamplerEvent>,
    latest: Mutex<Option<HealthReport>>,
    alerts: Mutex<Vec<PredictiveAlert>>,
}

/// One sampling step, shared by the thread and the tokio task.
struct Core {
    monitor: Arc<ResourceMonitor>,
    predictor: Predictor,
    clock: SharedClock,
    last_status: Option<HealthStatus>,
    shared: Arc<Shared>,
}

impl Core {
    fn tick(&mut self) {
        let report = self.monitor.health();
        let mut events = Vec::new();
        if let Some(from) = self.last_status
            && from != report.status
        {
            events.push(SamplerEvent::StatusChanged {
                from,
                to: report.status,
            });
        }
        self.last_status = Some(report.status);
        events.extend(self.predictor.observe(
            self.clock.now(),
            &gauges(&report.snapshot, self.monitor.limits()),
        ));
        *self
            .shared
            .alerts
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = self.predictor.active_alerts();
        *self
            .shared
            .latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(report);
        for e in &events {
            self.shared.listeners.notify(e);
        }
    }
}

enum Runner {
    Thread {
        stop: Option<mpsc::Sender<()>>,
        handle: Option<JoinHandle<()>>,
    },
    #[cfg(feature = "async")]
    Task(tokio::task::JoinHandle<()>),
}

/// Samples a monitor in the background (a std thread, or a tokio task under `async`),
/// tells listeners of status changes and predictive alerts, and stops when dropped.
///
/// ```
/// use guardrails::resource::{ResourceLimits, ResourceMonitor, ResourceSampler, SamplerConfig};
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// let monitor = Arc::new(ResourceMonitor::new(ResourceLimits::new())?);
/// let sampler = ResourceSampler::start(monitor, SamplerConfig::new().with_interval(Duration::from_millis(10)))?;
/// sampler.on_event(|e| println!("{e:?}"));
/// drop(sampler); // stops the thread
/// # Ok::<(), guardrails::GuardrailError>(())
/// ```
pub struct ResourceSampler {
    shared: Arc<Shared>,
    runner: Runner,
}

impl std::fmt::Debug for ResourceSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceSampler").finish_non_exhaustive()
    }
}

impl ResourceSampler {
    fn core(
        monitor: Arc<ResourceMonitor>,
        config: &SamplerConfig,
        clock: SharedClock,
    ) -> Result<(Core, Arc<Shared>)> {
        let shared = Arc::new(Shared {
            listeners: Default::default(),
            latest: Mutex::new(None),
            alerts: Mutex::new(Vec::new()),
        });
        let core = Core {
            monitor,
            predictor: Predictor::new(config.clone())?,
            clock,
            last_status: None,
            shared: Arc::clone(&shared),
        };
        Ok((core, shared))
    }

    /// Starts sampling `monitor` every `config.interval` on a thread, on the system clock;
    /// [`builder`](Self::builder) takes a clock.
    pub fn start(monitor: Arc<ResourceMonitor>, config: SamplerConfig) -> Result<Self> {
        Self::builder(monitor, config).start()
    }

    /// A sampler to configure before it starts.
    ///
    /// ```
    /// use guardrails::prelude::*;
    /// use guardrails::resource::{ResourceLimits, ResourceMonitor, ResourceSampler, SamplerConfig};
    /// use std::sync::Arc;
    ///
    /// let monitor = Arc::new(ResourceMonitor::new(ResourceLimits::new())?);
    /// let sampler = ResourceSampler::builder(monitor, SamplerConfig::new())
    ///     .with_clock(ManualClock::new())
    ///     .start()?;
    /// # drop(sampler);
    /// # Ok::<(), GuardrailError>(())
    /// ```
    pub fn builder(monitor: Arc<ResourceMonitor>, config: SamplerConfig) -> SamplerBuilder {
        SamplerBuilder {
            monitor,
            config,
            clock: None,
        }
    }

    /// The old form of `builder(monitor, config).with_clock(clock).start()`.
    #[deprecated(
        since = "0.1.0",
        note = "use `ResourceSampler::builder(monitor, config).with_clock(clock).start()`"
    )]
    pub fn start_with_clock(
        monitor: Arc<ResourceMonitor>,
        config: SamplerConfig,
        clock: impl Clock + 'static,
    ) -> Result<Self> {
        Self::builder(monitor, config).with_clock(clock).start()
    }

    fn start_thread(
        monitor: Arc<ResourceMonitor>,
        config: SamplerConfig,
        clock: SharedClock,
    ) -> Result<Self> {
        let (mut core, shared) = Self::core(monitor, &config, clock)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let handle = std::thread::Builder::new()
            .name("guardrails-resource-sampler".into())
            .spawn(move || {
                loop {
                    core.tick();
                    // The channel is the sleep: dropping the sampler wakes the thread at once.
                    match stopped.recv_timeout(config.interval) {
                        Err(RecvTimeoutError::Timeout) => continue,
                        _ => break,
                    }
                }
            })
            .map_err(|e| GuardrailError::Io {
                path: None,
                source: e,
            })?;
        Ok(Self {
            shared,
            runner: Runner::Thread {
                stop: Some(stop),
                handle: Some(handle),
            },
        })
    }

    /// Starts sampling as a tokio task on the current runtime; samples are taken on tokio's
    /// blocking pool (a snapshot may wait on a slow filesystem) and timestamped on tokio's
    /// clock, so paused time drives it in tests. Must be called within a runtime.
    #[cfg(feature = "async")]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub fn spawn_tokio(monitor: Arc<ResourceMonitor>, config: SamplerConfig) -> Result<Self> {
        Self::builder(monitor, config).spawn_tokio()
    }

    #[cfg(feature = "async")]
    fn spawn_task(
        monitor: Arc<ResourceMonitor>,
        config: SamplerConfig,
        clock: SharedClock,
    ) -> Result<Self> {
        let (core, shared) = Self::core(monitor, &config, clock)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            GuardrailError::config("sampler", format!("spawn_tokio needs a tokio runtime: {e}"))
        })?;
        let task = runtime.spawn(async move {
            let mut core = Some(core);
            loop {
                let Some(mut c) = core.take() else { break };
                match tokio::task::spawn_blocking(move || {
                    c.tick();
                    c
                })
                .await
                {
                    Ok(c) => core = Some(c),
                    Err(_) => break,
                }
                tokio::time::sleep(config.interval).await;
            }
        });
        Ok(Self {
            shared,
            runner: Runner::Task(task),
        })
    }

    /// Calls `listener` for every status change and alert from now on, on the sampler's
    /// thread.
    pub fn on_event<F>(&self, listener: F)
    where
        F: Fn(&SamplerEvent) + Send + Sync + 'static,
    {
        self.shared.listeners.add(listener);
    }

    /// The latest report, once the first sample is in.
    pub fn latest(&self) -> Option<HealthReport> {
        self.shared
            .latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The predictive alerts in force.
    pub fn alerts(&self) -> Vec<PredictiveAlert> {
        self.shared
            .alerts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether the sampling thread or task is still running.
    pub fn is_running(&self) -> bool {
        match &self.runner {
            Runner::Thread { handle, .. } => handle.as_ref().is_some_and(|h| !h.is_finished()),
            #[cfg(feature = "async")]
            Runner::Task(task) => !task.is_finished(),
        }
    }
}

/// A [`ResourceSampler`] before it starts; from [`ResourceSampler::builder`].
#[derive(Debug)]
#[must_use = "a sampler builder does nothing until started"]
pub struct SamplerBuilder {
    monitor: Arc<ResourceMonitor>,
    config: SamplerConfig,
    clock: Option<SharedClock>,
}

impl SamplerBuilder {
    /// Timestamps samples with `clock` (a [`ManualClock`](crate::ManualClock) in tests);
    /// the wait between samples stays real time on a thread, tokio's time in a task.
    pub fn with_clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Starts sampling on a thread (system clock unless one was given).
    pub fn start(self) -> Result<ResourceSampler> {
        let clock = self.clock.unwrap_or_else(|| Arc::new(SystemClock));
        ResourceSampler::start_thread(self.monitor, self.config, clock)
    }

    /// Starts sampling as a tokio task on the current runtime, timestamped on tokio's clock
    /// unless one was given (see [`ResourceSampler::spawn_tokio`]).
    #[cfg(feature = "async")]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub fn spawn_tokio(self) -> Result<ResourceSampler> {
        let clock = self
            .clock
            .unwrap_or_else(|| Arc::new(crate::clock::TokioClock));
        ResourceSampler::spawn_task(self.monitor, self.config, clock)
    }
}

impl Drop for ResourceSampler {
    fn drop(&mut self) {
        match &mut self.runner {
            Runner::Thread { stop, handle } => {
                drop(stop.take());
                if let Some(h) = handle.take() {
                    let _ = h.join();
                }
            }
            #[cfg(feature = "async")]
            Runner::Task(task) => task.abort(),
        }
    }
}
