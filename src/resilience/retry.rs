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
//!
//! [`retry_with_backoff`] runs a closure under such a config; [`RetryPolicy`] adds a clock,
//! a predicate, retry on result and a name for the logs. `backon` drives the loop; this module
//! supplies the delays (with jitter and the time budget) and the error handling:
//!
//! - Which errors are retried: by default those whose [`ErrorClass`] is
//!   [`Retryable`](ErrorClass::Retryable); [`RetryPolicy::retry_if`] replaces that.
//! - An error that is not retried comes back unchanged, at once.
//! - When the attempts or the budget run out on a retryable error, the result is
//!   [`GuardrailError::RetriesExhausted`] with the attempt count and the last error as its
//!   source.
//! - Before every sleep the budget is checked: a sleep that would end past it is not
//!   started, the loop gives up instead.
//! - Every retry emits a WARN event with the attempt number, the delay and the error.
//!
//! ```
//! use guardrails::prelude::*;
//! use guardrails::resilience::RetryPolicy;
//! use std::time::Duration;
//!
//! let clock = ManualClock::new(); // sleeps return at once and are recorded
//! let policy = RetryPolicy::new(RetryConfig::new())?.with_clock(clock.clone());
//! let mut calls = 0;
//! let value = policy.call(|| {
//!     calls += 1;
//!     if calls < 3 {
//!         Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset).into())
//!     } else {
//!         Ok("loaded")
//!     }
//! })?;
//! assert_eq!(value, "loaded");
//! assert_eq!(clock.sleeps(), [Duration::from_secs(1), Duration::from_secs(2)]);
//! # Ok::<(), GuardrailError>(())
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::BlockingRetryable;
use serde::{Deserialize, Serialize};

use crate::backoff::Backoff;
use crate::clock::{Clock, SharedClock, SystemClock};
use crate::error::{ErrorClass, GuardrailError, Result};

pub use crate::backoff::Jitter;

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
    #[must_use]
    pub const fn with_max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// Sets the delay before the first retry.
    #[must_use]
    pub const fn with_initial_delay(mut self, d: Duration) -> Self {
        self.initial_delay = d;
        self
    }

    /// Sets the cap on any single delay.
    #[must_use]
    pub const fn with_max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }

    /// Sets the growth factor.
    #[must_use]
    pub const fn with_base(mut self, base: f64) -> Self {
        self.base = base;
        self
    }

    /// Sets the jitter.
    #[must_use]
    pub const fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets a time limit for the whole loop.
    #[must_use]
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
        Backoff::new(self.initial_delay, self.max_delay, self.base).delay(n)
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs `f` until it succeeds, returns an error that is not retryable, or the retries or the
/// time budget of `config` run out. See the [module docs](self).
///
/// ```
/// use guardrails::prelude::*;
/// use guardrails::resilience::retry_with_backoff;
///
/// let config = RetryConfig::new().with_max_retries(0);
/// let err = retry_with_backoff(&config, || -> guardrails::Result<()> {
///     Err(GuardrailError::config("model", "unknown model"))
/// })
/// .unwrap_err();
/// assert_eq!(err.kind(), ErrorKind::Config); // fatal: returned as is, not retried
/// # Ok::<(), GuardrailError>(())
/// ```
pub fn retry_with_backoff<T, F>(config: &RetryConfig, f: F) -> Result<T>
where
    F: FnMut() -> Result<T>,
{
    RetryPolicy::new(config.clone())?.call(f)
}

type ErrorPredicate = Arc<dyn Fn(&GuardrailError) -> bool + Send + Sync>;

/// A validated [`RetryConfig`] with the clock, predicate and name a retry loop runs with.
///
/// Cheap to clone; one policy can serve many calls and threads.
#[derive(Clone)]
pub struct RetryPolicy {
    config: RetryConfig,
    clock: Option<SharedClock>,
    retry_if: Option<ErrorPredicate>,
    seed: Option<u64>,
    name: Arc<str>,
}

impl std::fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("clock", &self.clock)
            .field("custom_predicate", &self.retry_if.is_some())
            .finish()
    }
}

impl RetryPolicy {
    /// A policy for `config`, which is validated first.
    pub fn new(config: RetryConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            clock: None,
            retry_if: None,
            seed: None,
            name: Arc::from("retry"),
        })
    }

    /// Measures the budget and sleeps with `clock` (default: the system clock; under
    /// `call_async`, tokio's clock, so that paused time works).
    #[must_use]
    pub fn with_clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Retries exactly the errors for which `predicate` is true, instead of the retryable
    /// class.
    pub fn retry_if<P>(mut self, predicate: P) -> Self
    where
        P: Fn(&GuardrailError) -> bool + Send + Sync + 'static,
    {
        self.retry_if = Some(Arc::new(predicate));
        self
    }

    /// Makes the jitter reproducible (tests, simulations).
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The name in log events (default `"retry"`).
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Arc::from(name.into());
        self
    }

    /// The configuration.
    pub fn config(&self) -> &RetryConfig {
        &self.config
    }

    /// Whether `err` would be retried.
    pub fn should_retry(&self, err: &GuardrailError) -> bool {
        match &self.retry_if {
            Some(p) => p(err),
            None => err.class() == ErrorClass::Retryable,
        }
    }

    /// Runs `f` under the policy.
    pub fn call<T, F>(&self, mut f: F) -> Result<T>
    where
        F: FnMut() -> Result<T>,
    {
        self.call_checked(move || f().map_err(Failure::Error))
    }

    /// Runs `f` under the policy and also retries when `retry_on` rejects a successful
    /// value (a 503 response, an empty batch). When the retries run out on a rejected value,
    /// that last value is returned, as resilience4j does, with a WARN event.
    pub fn call_with_result_check<T, F, R>(&self, mut f: F, retry_on: R) -> Result<T>
    where
        F: FnMut() -> Result<T>,
        R: Fn(&T) -> bool,
    {
        self.call_checked(move || match f() {
            Ok(v) if retry_on(&v) => Err(Failure::Rejected(v)),
            Ok(v) => Ok(v),
            Err(e) => Err(Failure::Error(e)),
        })
    }

    /// Awaits `f()` under the policy, waiting with the clock's
    /// [`sleep_async`](Clock::sleep_async) (tokio's sleep unless a clock was set). The budget is
    /// measured on the policy's clock when one was set, else on tokio's, so paused time works.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> guardrails::Result<()> {
    /// use guardrails::prelude::*;
    /// use guardrails::resilience::RetryPolicy;
    /// use std::sync::atomic::{AtomicU32, Ordering};
    ///
    /// let calls = AtomicU32::new(0);
    /// let v = RetryPolicy::new(RetryConfig::new())?
    ///     .call_async(|| async {
    ///         if calls.fetch_add(1, Ordering::SeqCst) < 2 {
    ///             Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into())
    ///         } else {
    ///             Ok("ok")
    ///         }
    ///     })
    ///     .await?;
    /// assert_eq!((v, calls.load(Ordering::SeqCst)), ("ok", 3));
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "async")]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub async fn call_async<T, F, Fut>(&self, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        use backon::Retryable;
        let clock: &dyn Clock = match &self.clock {
            Some(c) => &**c,
            None => &crate::clock::TokioClock,
        };
        let schedule = self.schedule(clock);
        // backon keeps its sleeper for 'static: it holds its own handle on the clock.
        let sleeper = self.clock.clone();
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let outcome = (|| {
            attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let fut = f();
            async move { fut.await.map_err(Failure::Error) }
        })
        .retry(schedule)
        .sleep(move |delay| -> crate::clock::AsyncSleep {
            match &sleeper {
                Some(c) => c.sleep_async(delay),
                None => Box::pin(tokio::time::sleep(delay)),
            }
        })
        .when(|failure| self.failure_retryable(failure))
        .notify(|failure, delay| {
            self.log_retry(
                attempts.load(std::sync::atomic::Ordering::Relaxed),
                failure,
                delay,
            )
        })
        .await;
        self.finish(outcome, attempts.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn call_checked<T, F>(&self, mut f: F) -> Result<T>
    where
        F: FnMut() -> std::result::Result<T, Failure<T>>,
    {
        let clock: &dyn Clock = match &self.clock {
            Some(c) => &**c,
            None => &SystemClock,
        };
        let schedule = self.schedule(clock);
        let attempts = std::cell::Cell::new(0u32);
        let outcome = (|| {
            attempts.set(attempts.get().saturating_add(1));
            f()
        })
        .retry(schedule)
        // The sleep happens in `notify`, through our clock, which backon calls right before
        // its own (no-op) sleep: a clock borrowed for the call cannot be captured by backon's
        // 'static sleeper without an Arc clone per call.
        .sleep(|_| {})
        .when(|failure| self.failure_retryable(failure))
        .notify(|failure, delay| {
            self.log_retry(attempts.get(), failure, delay);
            clock.sleep(delay);
        })
        .call();
        self.finish(outcome, attempts.get())
    }

    #[inline]
    fn schedule<'a>(&'a self, clock: &'a dyn Clock) -> Schedule<'a> {
        Schedule {
            config: &self.config,
            clock,
            // Read the clock only when a budget needs it: it is most of the cost of a call
            // that succeeds at once.
            start: self.config.total_budget.map(|_| clock.now()),
            retry: 0,
            seed: self.seed,
            rng: None,
        }
    }

    fn failure_retryable<T>(&self, failure: &Failure<T>) -> bool {
        match failure {
            Failure::Error(e) => self.should_retry(e),
            Failure::Rejected(_) => true,
        }
    }

    fn log_retry<T>(&self, attempt: u32, failure: &Failure<T>, delay: Duration) {
        crate::events::emit(|| crate::events::GuardEvent {
            guard: crate::events::GuardKind::Retry,
            name: &self.name,
            decision: crate::events::Decision::Retry { attempt, delay },
        });
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        match failure {
            Failure::Error(e) => tracing::warn!(
                name = %self.name,
                attempt,
                delay_ms,
                error = %e.report(),
                class = %e.class(),
                "retrying after error"
            ),
            Failure::Rejected(_) => tracing::warn!(
                name = %self.name,
                attempt,
                delay_ms,
                "retrying after rejected result"
            ),
        }
    }

    fn finish<T>(&self, outcome: std::result::Result<T, Failure<T>>, attempts: u32) -> Result<T> {
        let exhausted = || {
            crate::events::emit(|| crate::events::GuardEvent {
                guard: crate::events::GuardKind::Retry,
                name: &self.name,
                decision: crate::events::Decision::RetriesExhausted { attempts },
            });
        };
        let succeeded = outcome.is_ok();
        let result = match outcome {
            Ok(v) => Ok(v),
            Err(Failure::Rejected(v)) => {
                tracing::warn!(name = %self.name, attempts, "retries exhausted on rejected result, returning the last one");
                exhausted();
                Ok(v)
            }
            Err(Failure::Error(e)) if self.should_retry(&e) => {
                tracing::warn!(name = %self.name, attempts, error = %e.report(), "retries exhausted");
                exhausted();
                Err(GuardrailError::RetriesExhausted {
                    attempts,
                    last: Box::new(e),
                })
            }
            Err(Failure::Error(e)) => Err(e),
        };
        if attempts > 1 {
            crate::events::emit(|| crate::events::GuardEvent {
                guard: crate::events::GuardKind::Retry,
                name: &self.name,
                decision: crate::events::Decision::RetryEnded {
                    attempts,
                    succeeded,
                },
            });
        }
        result
    }
}

/// Why one attempt did not end the loop.
enum Failure<T> {
    Error(GuardrailError),
    Rejected(T),
}

/// The delays backon sleeps between attempts: exponential, jittered, and ending early
/// rather than sleeping past the budget.
struct Schedule<'a> {
    config: &'a RetryConfig,
    clock: &'a dyn Clock,
    start: Option<Instant>,
    retry: u32,
    seed: Option<u64>,
    rng: Option<fastrand::Rng>,
}

impl Schedule<'_> {
    fn rng(&mut self) -> &mut fastrand::Rng {
        let seed = self.seed;
        self.rng.get_or_insert_with(|| match seed {
            Some(seed) => fastrand::Rng::with_seed(seed),
            None => fastrand::Rng::new(),
        })
    }

    fn jittered(&mut self, delay: Duration) -> Duration {
        match self.config.jitter {
            // No generator is made for an exact schedule.
            Jitter::None => delay,
            jitter => jitter.apply(delay, self.rng()),
        }
    }
}

impl Iterator for Schedule<'_> {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.retry >= self.config.max_retries {
            return None;
        }
        let base = self.config.delay_for(self.retry);
        let delay = self.jittered(base);
        if let (Some(budget), Some(start)) = (self.config.total_budget, self.start) {
            let elapsed = self.clock.now().saturating_duration_since(start);
            if elapsed.saturating_add(delay) > budget {
                tracing::warn!(
                    budget_ms = u64::try_from(budget.as_millis()).unwrap_or(u64::MAX),
                    elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
                    delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "retry budget would be exceeded by the next sleep, giving up"
                );
                return None;
            }
        }
        self.retry += 1;
        Some(delay)
    }
}
