//! The backoff schedule every waiting loop in the crate uses: exponential growth from an
//! initial delay, capped, and randomised by a [`Jitter`] so that clients that failed together
//! do not retry together.
//!
//! [`RetryConfig`](crate::resilience::RetryConfig) builds its delays here, and so does the
//! JSON guard's transport backoff.
//!
//! ```
//! use guardrails::backoff::Backoff;
//! use std::time::Duration;
//!
//! let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 2.0);
//! let delays: Vec<_> = (0..5).map(|n| b.delay(n)).collect();
//! assert_eq!(delays, [100, 200, 400, 800, 1000].map(Duration::from_millis));
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How much randomness is added to each delay.
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

impl Jitter {
    /// `delay` randomised by this jitter, drawing from `rng`.
    pub(crate) fn apply(self, delay: Duration, rng: &mut fastrand::Rng) -> Duration {
        let nanos = duration_nanos(delay);
        let nanos = match self {
            Jitter::None => nanos,
            Jitter::Full => rng.u64(0..=nanos),
            Jitter::Equal => {
                let half = nanos / 2;
                half + rng.u64(0..=nanos - half)
            }
        };
        Duration::from_nanos(nanos)
    }
}

/// `delay` plus a uniform random addition of at most `max_extra` (the JSON guard's
/// transport jitter: it never shortens a wait).
pub(crate) fn with_added_jitter(
    delay: Duration,
    max_extra: Duration,
    rng: &mut fastrand::Rng,
) -> Duration {
    delay.saturating_add(Duration::from_nanos(rng.u64(0..=duration_nanos(max_extra))))
}

/// Exponential delays: `initial × base^n`, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The first delay (`n = 0`).
    pub initial: Duration,
    /// The cap on any delay.
    pub max: Duration,
    /// Growth per step (≥ 1.0 for a growing schedule).
    pub base: f64,
}

impl Backoff {
    /// A schedule from `initial`, growing by `base`, capped at `max`.
    pub const fn new(initial: Duration, max: Duration, base: f64) -> Self {
        Self { initial, max, base }
    }

    /// The delay of step `n` (0-based), without jitter. A NaN or overflowing product (an
    /// unvalidated config) is capped at `max` rather than allowed to panic.
    pub fn delay(&self, n: u32) -> Duration {
        let exp = i32::try_from(n).unwrap_or(i32::MAX);
        let secs = self.initial.as_secs_f64() * self.base.powi(exp);
        let max = self.max.as_secs_f64();
        if secs.is_finite() && secs < max {
            Duration::from_secs_f64(secs.max(0.0))
        } else {
            self.max
        }
    }
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
