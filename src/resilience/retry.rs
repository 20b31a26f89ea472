//! Retry with exponential backoff.
//!
//! [`RetryConfig`] holds the seed defaults: 3 retries after the first attempt, 1 s initial
//! delay, delays multiplied by 2.0 each time and capped at 60 s, no jitter, no total budget.
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `max_retries` | `3` | retries after the first attempt (so at most 4 attempts) |
//! | `initial_delay` | `"1s"` | delay before the first retry |
//! | `max_delay` | `"60s"` | cap on any one delay |
//! | `base` | `2.0` | growth factor per retry, at least 1.0 |
//! | `jitter` | `"none"` | `"none"`, `"full"` (uniform in 0..=delay) or `"equal"` (delay/2 + uniform in 0..=delay/2) |
//! | `total_budget` | none | the whole loop's time limit; a sleep that would end past it is not started |
//!
//! ```
//! use guardrails::resilience::RetryConfig;
//! use std::time::Duration;
//!
//! let cfg = RetryConfig::new().with_initial_delay(Duration::from_millis(100));
//! let delays: Vec<_> = cfg.delays().collect();
//! assert_eq!(delays, [100, 200, 400].map(Duration::from_millis));
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{GuardrailError, Result};

/// How much randomness is added to each delay, so that many clients that failed together
/// do not retry together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    /// The exact exponential delay.
    #[default]
    None,
    /// Uniform in `0..=delay` (AWS "full jitter"): the best spread, sometimes no wait.
    Full,
    /// `delay / 2` plus uniform in `0..=delay / 2`: never waits less than half.
    Equal,
}

/// Settings of a retry loop; see the [module docs](self) for the defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct RetryConfig {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Delay before the first retry.
    #[serde(with = "humantime_serde")]
    pub initial_delay: Duration,
    /// Cap on any single delay.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Growth factor per retry (≥ 1.0).
    pub base: f64,
    /// Randomness added to each delay.
    pub jitter: Jitter,
    /// Time limit for the whole loop, attempts and sleeps together.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub total_budget: Option<Duration>,
}

impl RetryConfig {
    /// The seed defaults: 3 retries, 1 s initial, 60 s max, base 2.0, no jitter, no budget.
    pub const fn new() -> Self {
        Self {
            max_retries: 3,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            base: 2.0,
            jitter: Jitter::None,
            total_budget: None,
        }
    }

    /// Sets the number of retries after the first attempt.
    pub const fn with_max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// Sets the delay before the first retry.
    pub const fn with_initial_delay(mut self, d: Duration) -> Self {
        self.initial_delay = d;
        self
    }

    /// Sets the cap on any single delay.
    pub const fn with_max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }

    /// Sets the growth factor.
    pub const fn with_base(mut self, base: f64) -> Self {
        self.base = base;
        self
    }

    /// Sets the jitter.
    pub const fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets a time limit for the whole loop.
    pub const fn with_total_budget(mut self, budget: Duration) -> Self {
        self.total_budget = Some(budget);
        self
    }

    /// Rejects settings that cannot describe a retry loop. Field names are relative to this
    /// section (`"base"`); the config document prefixes them (`"retry.base"`).
    pub fn validate(&self) -> Result<()> {
        if !self.base.is_finite() || self.base < 1.0 {
            return Err(GuardrailError::config(
                "base",
                format!("must be a finite number >= 1.0, got {}", self.base),
            ));
        }
        if self.initial_delay > self.max_delay {
            return Err(GuardrailError::config(
                "initial_delay",
                format!(
                    "must not exceed max_delay ({:?} > {:?})",
                    self.initial_delay, self.max_delay
                ),
            ));
        }
        if self.total_budget == Some(Duration::ZERO) {
            return Err(GuardrailError::config(
                "total_budget",
                "must be greater than zero when set",
            ));
        }
        Ok(())
    }

    /// The delays before each retry, without jitter: `initial × base^n`, capped at
    /// `max_delay`, `max_retries` of them.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + '_ {
        (0..self.max_retries).map(move |n| self.delay_for(n))
    }

    /// The delay before retry number `n` (0-based), without jitter.
    pub fn delay_for(&self, n: u32) -> Duration {
        let exp = i32::try_from(n).unwrap_or(i32::MAX);
        let secs = self.initial_delay.as_secs_f64() * self.base.powi(exp);
        let max = self.max_delay.as_secs_f64();
        // A NaN or huge product (unvalidated input) is capped rather than allowed to panic
        // inside Duration::from_secs_f64.
        if secs.is_finite() && secs < max {
            Duration::from_secs_f64(secs.max(0.0))
        } else {
            self.max_delay
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self::new()
    }
}
