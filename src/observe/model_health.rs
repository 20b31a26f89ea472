//! Per-model LLM health: passive signals first, an optional cached probe last.
//!
//! A model is judged, in this order, by
//! 1. its circuit breaker: open (or forced open) → unhealthy, reason `circuit_breaker_open`;
//! 2. its recent real calls ([`ModelHealthCheck::record_call`]): an error rate at or above
//!    [`ModelHealthConfig::max_error_rate`] over at least `min_calls` calls in the window →
//!    `error_rate_high`; a mean latency above `max_latency` → `latency_high`;
//! 3. an optional probe inference (a closure returning the model's answer) under a timeout
//!    → `probe_timeout` / `probe_failed`, and an optional check of the answer (the JSON guard,
//!    say) → `invalid_answer`.
//!
//! Probes cost money, and `max_tokens = 1` probes break reasoning models, so the passive
//! signals decide first and a probe's result is cached for
//! [`ModelHealthConfig::probe_interval`]: a storm of health requests runs at most one probe
//! per interval, and a probe that hangs holds one thread, not one per request.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use guardrails::observe::model_health::{ModelHealthCheck, ModelHealthConfig};
//! use guardrails::resilience::breaker::{BreakerConfig, CircuitBreaker};
//!
//! let breaker = Arc::new(CircuitBreaker::new("qwen", BreakerConfig::default())?);
//! let check = ModelHealthCheck::new("qwen", ModelHealthConfig::default())?
//!     .with_breaker(Arc::clone(&breaker))
//!     .with_probe(|| Ok(r#"{"ok": true}"#.to_string()));
//! assert!(check.check().healthy);
//!
//! breaker.force_open();
//! let health = check.check();
//! assert!(!health.healthy);
//! assert_eq!(health.reason.as_deref(), Some("circuit_breaker_open"));
//! # Ok::<(), guardrails::GuardrailError>(())
//! ```

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::clock::{SharedClock, SystemClock};
use crate::error::{ErrorKind, GuardrailError, Result};
use crate::resilience::breaker::{BreakerState, CircuitBreaker};

/// Thresholds and intervals of one model's check.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelHealthConfig {
    /// How far back real calls count.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Calls needed in the window before its error rate is judged.
    pub min_calls: usize,
    /// Error rate (0..=1) at or above which the model is unhealthy.
    pub max_error_rate: f64,
    /// Mean latency of the window's calls above which the model is unhealthy; none = not
    /// judged.
    #[serde(with = "humantime_serde")]
    pub max_latency: Option<Duration>,
    /// The probe's timeout.
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Duration,
    /// How long a probe's result is reused.
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
}

impl Default for ModelHealthConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            min_calls: 5,
            max_error_rate: 0.5,
            max_latency: None,
            probe_timeout: Duration::from_secs(10),
            probe_interval: Duration::from_secs(30),
        }
    }
}

impl ModelHealthConfig {
    /// Checks the ranges.
    ///
    /// # Errors
    /// [`GuardrailError::Config`] naming the key.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.max_error_rate) {
            return Err(GuardrailError::config(
                "model_health.max_error_rate",
                "must be within 0..=1",
            ));
        }
        if self.window.is_zero() || self.probe_timeout.is_zero() {
            return Err(GuardrailError::config(
                "model_health.window",
                "window and probe_timeout must be above zero",
            ));
        }
        if self.min_calls == 0 {
            return Err(GuardrailError::config(
                "model_health.min_calls",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// One model's health, as `/health/llm` reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelHealth {
    /// The model.
    pub model: String,
    /// `"healthy"` or `"unhealthy"`.
    pub status: &'static str,
    /// Whether it is healthy.
    pub healthy: bool,
    /// The probe's latency, or else the mean latency of recent calls, in milliseconds.
    pub latency_ms: Option<f64>,
    /// The breaker's state, when the check has a breaker.
    pub circuit_state: Option<&'static str>,
    /// Why it is unhealthy: `circuit_breaker_open`, `error_rate_high`, `latency_high`,
    /// `probe_timeout`, `probe_failed`, `invalid_answer`.
    pub reason: Option<&'static str>,
    /// The failure behind the reason, in words (hidden by the server without details).
    pub detail: Option<String>,
    /// Error rate of the window's calls, once `min_calls` were made.
    pub error_rate: Option<f64>,
    /// Real calls in the window.
    pub calls: usize,
    /// Whether the probe result came from the cache.
    pub probe_cached: bool,
}

type ProbeFn = Arc<dyn Fn() -> Result<String> + Send + Sync>;
type AnswerCheck = Arc<dyn Fn(&str) -> std::result::Result<(), String> + Send + Sync>;

#[derive(Debug, Clone)]
struct ProbeResult {
    at: Instant,
    latency: Duration,
    failure: Option<(&'static str, String)>,
}

/// One model's health check; see the [module docs](self).
pub struct ModelHealthCheck {
    model: String,
    config: ModelHealthConfig,
    breaker: Option<Arc<CircuitBreaker>>,
    probe: Option<ProbeFn>,
    answer_check: Option<AnswerCheck>,
    calls: Mutex<VecDeque<(Instant, bool, Duration)>>,
    probed: Mutex<Option<ProbeResult>>,
    clock: SharedClock,
}

impl std::fmt::Debug for ModelHealthCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelHealthCheck")
            .field("model", &self.model)
            .field("config", &self.config)
            .field(
                "breaker",
                &self.breaker.as_ref().map(|b| b.name().to_string()),
            )
            .field("probe", &self.probe.is_some())
            .finish_non_exhaustive()
    }
}

/// The most calls kept per model, however many the window holds.
const MAX_CALLS: usize = 10_000;

impl ModelHealthCheck {
    /// A check of `model` with nothing to judge yet (healthy until told otherwise).
    ///
    /// # Errors
    /// [`GuardrailError::Config`] for an invalid `config`.
    pub fn new(model: impl Into<String>, config: ModelHealthConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            model: model.into(),
            config,
            breaker: None,
            probe: None,
            answer_check: None,
            calls: Mutex::new(VecDeque::new()),
            probed: Mutex::new(None),
            clock: Arc::new(SystemClock),
        })
    }

    /// Judges the model's breaker first.
    pub fn with_breaker(mut self, breaker: Arc<CircuitBreaker>) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// A probe inference: the closure calls the model and returns its answer's text.
    pub fn with_probe<F>(mut self, probe: F) -> Self
    where
        F: Fn() -> Result<String> + Send + Sync + 'static,
    {
        self.probe = Some(Arc::new(probe));
        self
    }

    /// Checks the probe's answer: `Err(reason)` makes the model unhealthy
    /// (`invalid_answer`).
    pub fn with_answer_check<F>(mut self, check: F) -> Self
    where
        F: Fn(&str) -> std::result::Result<(), String> + Send + Sync + 'static,
    {
        self.answer_check = Some(Arc::new(check));
        self
    }

    /// Checks the probe's answer with the JSON guard (extraction, repair, schema).
    pub fn with_json_guard(self, guard: Arc<crate::json_guard::JsonHardGuard>) -> Self {
        self.with_answer_check(move |answer| match guard.parse_value(answer) {
            Ok(_) => Ok(()),
            Err(problems) => Err(problems.first().map_or_else(
                || "no valid JSON".to_string(),
                |p| match &p.path {
                    Some(path) => format!("{path}: {}", p.message),
                    None => p.message.clone(),
                },
            )),
        })
    }

    /// Reads time from `clock` (tests use a [`ManualClock`](crate::ManualClock)).
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// The model's name.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Records one real call to the model: whether it succeeded and how long it took.
    pub fn record_call(&self, ok: bool, latency: Duration) {
        let now = self.clock.now();
        let mut calls = self.calls.lock();
        if calls.len() >= MAX_CALLS {
            calls.pop_front();
        }
        calls.push_back((now, ok, latency));
    }

    /// Judges the model now (the probe runs only when its cached result is older than
    /// `probe_interval`).
    pub fn check(&self) -> ModelHealth {
        #[cfg(feature = "metrics")]
        let began = self.clock.now();
        let health = self.judge();
        #[cfg(feature = "metrics")]
        {
            let elapsed = self.clock.now().saturating_duration_since(began);
            metrics::gauge!(super::metrics::LLM_HEALTH_STATUS, "model" => self.model.clone())
                .set(if health.healthy { 1.0 } else { 0.0 });
            metrics::histogram!(super::metrics::LLM_HEALTH_DURATION, "model" => self.model.clone())
                .record(elapsed.as_secs_f64());
        }
        health
    }

    fn judge(&self) -> ModelHealth {
        let circuit_state = self.breaker.as_ref().map(|b| b.state());
        let (calls, errors, mean_latency) = self.window();
        let error_rate = (calls >= self.config.min_calls).then(|| errors as f64 / calls as f64);
        let mut health = ModelHealth {
            model: self.model.clone(),
            status: "healthy",
            healthy: true,
            latency_ms: mean_latency.map(|d| d.as_secs_f64() * 1e3),
            circuit_state: circuit_state.map(BreakerState::as_str),
            reason: None,
            detail: None,
            error_rate,
            calls,
            probe_cached: false,
        };
        if circuit_state.is_some_and(|s| !s.admits_calls()) {
            return unhealthy(health, "circuit_breaker_open", None);
        }
        if let Some(rate) = error_rate.filter(|r| *r >= self.config.max_error_rate) {
            let detail = format!(
                "{errors} of {calls} calls failed ({:.0} %, limit {:.0} %)",
                rate * 100.0,
                self.config.max_error_rate * 100.0
            );
            return unhealthy(health, "error_rate_high", Some(detail));
        }
        if let (Some(limit), Some(mean)) = (self.config.max_latency, mean_latency)
            && calls >= self.config.min_calls
            && mean > limit
        {
            let detail = format!("mean latency {mean:?} over {calls} calls, limit {limit:?}");
            return unhealthy(health, "latency_high", Some(detail));
        }
        if self.probe.is_some() {
            let (probe, cached) = self.probe_result();
            health.latency_ms = Some(probe.latency.as_secs_f64() * 1e3);
            health.probe_cached = cached;
            if let Some((reason, detail)) = probe.failure {
                return unhealthy(health, reason, Some(detail));
            }
        }
        health
    }

    /// (calls, failed calls, mean latency) in the window; older calls are dropped.
    fn window(&self) -> (usize, usize, Option<Duration>) {
        let now = self.clock.now();
        let mut calls = self.calls.lock();
        while calls
            .front()
            .is_some_and(|(at, ..)| now.saturating_duration_since(*at) > self.config.window)
        {
            calls.pop_front();
        }
        let errors = calls.iter().filter(|(_, ok, _)| !ok).count();
        let total: Duration = calls.iter().map(|(.., l)| *l).sum();
        let mean = (!calls.is_empty()).then(|| total / calls.len() as u32);
        (calls.len(), errors, mean)
    }

    fn probe_result(&self) -> (ProbeResult, bool) {
        // The lock is held across the probe: concurrent checks wait for this probe's
        // result instead of each starting one.
        let mut probed = self.probed.lock();
        let now = self.clock.now();
        if let Some(p) = probed.as_ref()
            && now.saturating_duration_since(p.at) < self.config.probe_interval
        {
            return (p.clone(), true);
        }
        let result = self.run_probe();
        *probed = Some(result.clone());
        (result, false)
    }

    fn run_probe(&self) -> ProbeResult {
        let began = self.clock.now();
        let Some(probe) = self.probe.clone() else {
            return ProbeResult {
                at: began,
                latency: Duration::ZERO,
                failure: None,
            };
        };
        let key = format!("model-probe:{:p}", Arc::as_ptr(&probe));
        let answer = crate::worker::start(
            &format!("health probe of {}", self.model),
            Some(&key),
            self.config.probe_timeout,
            move || Ok(probe()),
        )
        .and_then(|pending| pending.wait())
        .and_then(|inner| inner);
        let latency = self.clock.now().saturating_duration_since(began);
        let failure = match answer {
            Ok(text) => self
                .answer_check
                .as_ref()
                .and_then(|check| check(&text).err())
                .map(|why| ("invalid_answer", why)),
            Err(e) if e.kind() == ErrorKind::Timeout => {
                Some(("probe_timeout", e.report().to_string()))
            }
            Err(e) => Some(("probe_failed", e.report().to_string())),
        };
        ProbeResult {
            at: self.clock.now(),
            latency,
            failure,
        }
    }
}

fn unhealthy(mut h: ModelHealth, reason: &'static str, detail: Option<String>) -> ModelHealth {
    h.status = "unhealthy";
    h.healthy = false;
    h.reason = Some(reason);
    h.detail = detail;
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn the_error_rate_counts_only_the_window_and_only_past_min_calls() {
        let clock = Arc::new(ManualClock::new());
        let check = ModelHealthCheck::new("m", ModelHealthConfig::default())
            .unwrap()
            .with_clock(clock.clone());
        for _ in 0..4 {
            check.record_call(false, Duration::from_millis(10));
        }
        assert!(check.check().healthy, "4 calls are under min_calls");
        check.record_call(false, Duration::from_millis(10));
        let h = check.check();
        assert_eq!(h.reason, Some("error_rate_high"));
        assert_eq!(h.error_rate, Some(1.0));
        clock.advance(Duration::from_secs(61));
        let h = check.check();
        assert!(h.healthy, "{h:?}");
        assert_eq!(h.calls, 0);
    }

    #[test]
    fn a_probe_result_is_reused_within_its_interval() {
        let clock = Arc::new(ManualClock::new());
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&runs);
        let check = ModelHealthCheck::new("m", ModelHealthConfig::default())
            .unwrap()
            .with_clock(clock.clone())
            .with_probe(move || {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok("not json".into())
            })
            .with_answer_check(|a| {
                if a.starts_with('{') {
                    Ok(())
                } else {
                    Err("not an object".into())
                }
            });
        for _ in 0..5 {
            assert_eq!(check.check().reason, Some("invalid_answer"));
        }
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
        clock.advance(Duration::from_secs(31));
        assert!(!check.check().probe_cached);
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
