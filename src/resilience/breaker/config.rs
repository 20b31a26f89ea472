//! Breaker settings, with resilience4j's defaults and names where they exist.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{GuardrailError, Result};

/// Largest count-based window; a larger one only costs memory.
pub(crate) const MAX_WINDOW_CALLS: u32 = 1_000_000;
/// Largest time-based window in seconds (one day).
pub(crate) const MAX_WINDOW_SECS: u32 = 86_400;

/// How the breaker remembers past calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    /// The last `window_size` calls.
    #[default]
    CountBased,
    /// The calls of the last `window_size` seconds, in one-second buckets.
    TimeBased,
}

/// Settings of one [`CircuitBreaker`](super::CircuitBreaker).
///
/// | key | default | meaning |
/// |---|---|---|
/// | `window` | `"count_based"` | `"count_based"` or `"time_based"` |
/// | `window_size` | `100` | calls (count-based) or seconds (time-based) |
/// | `minimum_calls` | `100` | calls in the window before rates are judged (count-based: capped at `window_size`) |
/// | `failure_rate_threshold` | `0.5` | open when failed / buffered ≥ this, in (0, 1] |
/// | `slow_call_duration` | off | a call taking at least this long is slow |
/// | `slow_call_rate_threshold` | `1.0` | open when slow / buffered ≥ this, in (0, 1] |
/// | `wait_in_open` | `"60s"` | how long open lasts before trial calls are let through |
/// | `half_open_calls` | `10` | trial calls permitted in half-open |
/// | `max_wait_in_half_open` | off | reopen if the trial calls have not finished by then |
///
/// Slow-call detection is off by default (resilience4j: 60 s), because timing every call
/// costs two clock reads on the hot path; set `slow_call_duration` to turn it on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct BreakerConfig {
    /// Count- or time-based window.
    pub window: WindowKind,
    /// Calls or seconds in the window.
    pub window_size: u32,
    /// Calls needed before the rates are judged.
    pub minimum_calls: u32,
    /// Failure rate that opens the breaker, in (0, 1].
    pub failure_rate_threshold: f64,
    /// Duration from which a call counts as slow; `None` turns slow-call detection off.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub slow_call_duration: Option<Duration>,
    /// Slow-call rate that opens the breaker, in (0, 1].
    pub slow_call_rate_threshold: f64,
    /// How long the breaker stays open.
    #[serde(with = "humantime_serde")]
    pub wait_in_open: Duration,
    /// Trial calls permitted in half-open.
    pub half_open_calls: u32,
    /// Longest half-open period before the breaker reopens.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub max_wait_in_half_open: Option<Duration>,
}

impl BreakerConfig {
    /// resilience4j's defaults, with slow-call detection off.
    pub const fn new() -> Self {
        Self {
            window: WindowKind::CountBased,
            window_size: 100,
            minimum_calls: 100,
            failure_rate_threshold: 0.5,
            slow_call_duration: None,
            slow_call_rate_threshold: 1.0,
            wait_in_open: Duration::from_secs(60),
            half_open_calls: 10,
            max_wait_in_half_open: None,
        }
    }

    /// Sets the window kind and size (calls or seconds).
    #[must_use]
    pub const fn with_window(mut self, kind: WindowKind, size: u32) -> Self {
        self.window = kind;
        self.window_size = size;
        self
    }

    /// Sets the calls needed before rates are judged.
    #[must_use]
    pub const fn with_minimum_calls(mut self, n: u32) -> Self {
        self.minimum_calls = n;
        self
    }

    /// Sets the failure rate threshold, in (0, 1].
    #[must_use]
    pub const fn with_failure_rate_threshold(mut self, rate: f64) -> Self {
        self.failure_rate_threshold = rate;
        self
    }

    /// Turns on slow-call detection: calls of at least `duration` are slow, and the breaker
    /// opens when their share reaches `rate`.
    #[must_use]
    pub const fn with_slow_calls(mut self, duration: Duration, rate: f64) -> Self {
        self.slow_call_duration = Some(duration);
        self.slow_call_rate_threshold = rate;
        self
    }

    /// Sets how long the breaker stays open.
    #[must_use]
    pub const fn with_wait_in_open(mut self, wait: Duration) -> Self {
        self.wait_in_open = wait;
        self
    }

    /// Sets the number of trial calls in half-open.
    #[must_use]
    pub const fn with_half_open_calls(mut self, n: u32) -> Self {
        self.half_open_calls = n;
        self
    }

    /// Reopens a half-open breaker whose trial calls take longer than `wait` in all.
    #[must_use]
    pub const fn with_max_wait_in_half_open(mut self, wait: Duration) -> Self {
        self.max_wait_in_half_open = Some(wait);
        self
    }

    /// Minimum calls as the window applies it.
    pub(crate) fn effective_minimum_calls(&self) -> u64 {
        match self.window {
            WindowKind::CountBased => u64::from(self.minimum_calls.min(self.window_size)),
            WindowKind::TimeBased => u64::from(self.minimum_calls),
        }
    }

    /// Rejects settings that cannot describe a breaker; field names are relative
    /// (`"window_size"`).
    pub fn validate(&self) -> Result<()> {
        let rate = |field: &str, v: f64| {
            if v.is_finite() && v > 0.0 && v <= 1.0 {
                Ok(())
            } else {
                Err(GuardrailError::config(
                    field,
                    format!("must be a rate in (0, 1], got {v}"),
                ))
            }
        };
        rate("failure_rate_threshold", self.failure_rate_threshold)?;
        rate("slow_call_rate_threshold", self.slow_call_rate_threshold)?;
        let max = match self.window {
            WindowKind::CountBased => MAX_WINDOW_CALLS,
            WindowKind::TimeBased => MAX_WINDOW_SECS,
        };
        if self.window_size == 0 || self.window_size > max {
            return Err(GuardrailError::config(
                "window_size",
                format!("must be in 1..={max}, got {}", self.window_size),
            ));
        }
        for (field, v) in [
            ("minimum_calls", self.minimum_calls),
            ("half_open_calls", self.half_open_calls),
        ] {
            if v == 0 {
                return Err(GuardrailError::config(field, "must be at least 1"));
            }
        }
        if self.slow_call_duration == Some(Duration::ZERO) {
            return Err(GuardrailError::config(
                "slow_call_duration",
                "must be greater than zero when set (every call would be slow)",
            ));
        }
        if self.max_wait_in_half_open == Some(Duration::ZERO) {
            return Err(GuardrailError::config(
                "max_wait_in_half_open",
                "must be greater than zero when set",
            ));
        }
        Ok(())
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// Per-name changes to the registry's defaults: each key set here replaces the default's,
/// the rest is inherited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct BreakerOverride {
    /// See [`BreakerConfig::window`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowKind>,
    /// See [`BreakerConfig::window_size`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_size: Option<u32>,
    /// See [`BreakerConfig::minimum_calls`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minimum_calls: Option<u32>,
    /// See [`BreakerConfig::failure_rate_threshold`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_rate_threshold: Option<f64>,
    /// See [`BreakerConfig::slow_call_duration`].
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub slow_call_duration: Option<Duration>,
    /// See [`BreakerConfig::slow_call_rate_threshold`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_call_rate_threshold: Option<f64>,
    /// See [`BreakerConfig::wait_in_open`].
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub wait_in_open: Option<Duration>,
    /// See [`BreakerConfig::half_open_calls`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub half_open_calls: Option<u32>,
    /// See [`BreakerConfig::max_wait_in_half_open`].
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub max_wait_in_half_open: Option<Duration>,
}

impl BreakerOverride {
    /// `base` with the keys set here replaced.
    pub fn apply(&self, base: &BreakerConfig) -> BreakerConfig {
        BreakerConfig {
            window: self.window.unwrap_or(base.window),
            window_size: self.window_size.unwrap_or(base.window_size),
            minimum_calls: self.minimum_calls.unwrap_or(base.minimum_calls),
            failure_rate_threshold: self
                .failure_rate_threshold
                .unwrap_or(base.failure_rate_threshold),
            slow_call_duration: self.slow_call_duration.or(base.slow_call_duration),
            slow_call_rate_threshold: self
                .slow_call_rate_threshold
                .unwrap_or(base.slow_call_rate_threshold),
            wait_in_open: self.wait_in_open.unwrap_or(base.wait_in_open),
            half_open_calls: self.half_open_calls.unwrap_or(base.half_open_calls),
            max_wait_in_half_open: self.max_wait_in_half_open.or(base.max_wait_in_half_open),
        }
    }
}
