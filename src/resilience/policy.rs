//! `guarded_execution`: every guard around one call, in one documented order.
//!
//! ```text
//! retry                       outermost: each attempt below runs again on a retryable error
//! └─ preflight                a check before each attempt (resource limits of a check path)
//!    └─ circuit breaker       refuses while open; records the attempt's outcome
//!       └─ rate limiter       refuses past the rate; never counted by the breaker
//!          └─ timeout         bounds the wait for a slot and the call together
//!             └─ bulkhead     at most N attempts at once
//!                └─ f()
//! ```
//!
//! Why this order: retry outside the breaker lets the breaker see every attempt and lets an
//! open breaker end the retries at once (`CircuitOpen` is not retryable by default); the rate
//! limiter sits inside the breaker so that its refusals cost no breaker trial and are not
//! failures; the timeout covers the bulkhead wait so that a call never waits longer than its
//! limit in all. Every part is optional.
//!
//! ```
//! use guardrails::prelude::*;
//! use guardrails::resilience::{BreakerConfig, CircuitBreaker, GuardPolicy, RetryPolicy};
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! let policy = GuardPolicy::new("embed")
//!     .with_retry(RetryPolicy::new(RetryConfig::new().with_initial_delay(Duration::from_millis(1)))?)
//!     .with_breaker(Arc::new(CircuitBreaker::new("embed", BreakerConfig::new())?))
//!     .with_timeout(Duration::from_secs(30));
//! let v = guardrails::resilience::guarded_execution(|| Ok(21 * 2), &policy)?;
//! assert_eq!(v, 42);
//! # Ok::<(), GuardrailError>(())
//! ```

use std::sync::Arc;
use std::time::Duration;

use super::breaker::{BreakerPermit, CircuitBreaker};
use super::bulkhead::Bulkhead;
use super::rate_limit::RateLimiter;
use super::retry::RetryPolicy;
use super::timeout::run_with_timeout;
use crate::error::Result;

/// One step of a guarded call, in the order it happened; see [`GuardPolicy::on_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GuardEvent {
    /// An attempt begins (1-based).
    Attempt(u32),
    /// The preflight check passed.
    PreflightPassed,
    /// The breaker permitted the attempt.
    BreakerPermitted,
    /// The rate limiter allowed the attempt.
    RateAllowed,
    /// The timeout started for the rest of the attempt.
    TimeoutStarted,
    /// The bulkhead gave the attempt a slot.
    BulkheadEntered,
    /// The attempt ended; `ok` says how.
    AttemptFinished {
        /// Whether it succeeded.
        ok: bool,
    },
}

type Preflight = Arc<dyn Fn() -> Result<()> + Send + Sync>;
type EventListener = Arc<dyn Fn(&GuardEvent) + Send + Sync>;

/// Which guards run around a call; see the [module docs](self) for the order.
#[derive(Clone, Default)]
pub struct GuardPolicy {
    name: String,
    retry: Option<RetryPolicy>,
    preflight: Option<Preflight>,
    breaker: Option<Arc<CircuitBreaker>>,
    rate_limiter: Option<Arc<RateLimiter>>,
    timeout: Option<Duration>,
    bulkhead: Option<Arc<Bulkhead>>,
    listener: Option<EventListener>,
}

impl std::fmt::Debug for GuardPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardPolicy")
            .field("name", &self.name)
            .field("retry", &self.retry)
            .field("preflight", &self.preflight.is_some())
            .field(
                "breaker",
                &self.breaker.as_ref().map(|b| b.name().to_string()),
            )
            .field(
                "rate_limiter",
                &self.rate_limiter.as_ref().map(|r| r.name().to_string()),
            )
            .field("timeout", &self.timeout)
            .field(
                "bulkhead",
                &self.bulkhead.as_ref().map(|b| b.name().to_string()),
            )
            .finish()
    }
}

impl GuardPolicy {
    /// A policy with no guards; `name` labels timeouts and logs.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Retries attempts under `retry`.
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Runs `check` before each attempt; an error ends the attempt without calling `f`.
    /// This is where a resource check of a path plugs in.
    #[must_use]
    pub fn with_preflight<P>(mut self, check: P) -> Self
    where
        P: Fn() -> Result<()> + Send + Sync + 'static,
    {
        self.preflight = Some(Arc::new(check));
        self
    }

    /// Checks the machine (and `path`'s filesystem) before each attempt: an attempt is not
    /// made while a resource limit is exceeded or health is critical, and the caller gets
    /// [`GuardrailError::ResourceExhausted`](crate::GuardrailError::ResourceExhausted)
    /// (recoverable, so not retried by default).
    pub fn with_resource_check(
        self,
        monitor: Arc<crate::resource::ResourceMonitor>,
        path: Option<std::path::PathBuf>,
    ) -> Self {
        self.with_preflight(move || {
            crate::resource::resource_guard(&monitor, path.as_deref()).map(|guard| {
                // Only the entry check matters here; the scope's delta is not wanted.
                let _ = guard.finish();
            })
        })
    }

    /// Guards attempts with `breaker`.
    #[must_use]
    pub fn with_breaker(mut self, breaker: Arc<CircuitBreaker>) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// Limits the rate of attempts.
    #[must_use]
    pub fn with_rate_limiter(mut self, limiter: Arc<RateLimiter>) -> Self {
        self.rate_limiter = Some(limiter);
        self
    }

    /// Bounds each attempt (bulkhead wait included) by `limit`.
    #[must_use]
    pub fn with_timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// Limits concurrent attempts.
    #[must_use]
    pub fn with_bulkhead(mut self, bulkhead: Arc<Bulkhead>) -> Self {
        self.bulkhead = Some(bulkhead);
        self
    }

    /// Calls `listener` at each step; tests and tracing of the composition use it.
    pub fn on_event<L>(mut self, listener: L) -> Self
    where
        L: Fn(&GuardEvent) + Send + Sync + 'static,
    {
        self.listener = Some(Arc::new(listener));
        self
    }

    fn emit(&self, event: GuardEvent) {
        tracing::trace!(policy = %self.name, ?event, "guard step");
        if let Some(l) = &self.listener {
            l(&event);
        }
    }

    /// Runs `f` under every configured guard; see [`guarded_execution`].
    pub fn call<T, F>(&self, f: F) -> Result<T>
    where
        F: Fn() -> Result<T> + Send + Sync + 'static,
        T: Send + 'static,
    {
        let f = Arc::new(f);
        let mut attempt = 0u32;
        let mut one_attempt = || {
            attempt = attempt.saturating_add(1);
            self.emit(GuardEvent::Attempt(attempt));
            let result = self.attempt(&f);
            self.emit(GuardEvent::AttemptFinished { ok: result.is_ok() });
            result
        };
        match &self.retry {
            Some(retry) => retry.call(one_attempt),
            None => one_attempt(),
        }
    }

    /// The steps before the call, shared by both flavours: preflight, breaker, rate limiter.
    /// A refusal after the breaker's permit drops the unrecorded permit, which gives a
    /// half-open trial back.
    fn admit(&self) -> Result<Option<BreakerPermit<'_>>> {
        if let Some(check) = &self.preflight {
            check()?;
            self.emit(GuardEvent::PreflightPassed);
        }
        self.admit_after_preflight()
    }

    fn admit_after_preflight(&self) -> Result<Option<BreakerPermit<'_>>> {
        let permit = match &self.breaker {
            Some(b) => {
                let p = b.try_acquire()?;
                self.emit(GuardEvent::BreakerPermitted);
                Some(p)
            }
            None => None,
        };
        if let Some(limiter) = &self.rate_limiter {
            limiter.check()?;
            self.emit(GuardEvent::RateAllowed);
        }
        Ok(permit)
    }

    fn attempt<T, F>(&self, f: &Arc<F>) -> Result<T>
    where
        F: Fn() -> Result<T> + Send + Sync + 'static,
        T: Send + 'static,
    {
        let permit = self.admit()?;
        let result = match self.timeout {
            Some(limit) => {
                self.emit(GuardEvent::TimeoutStarted);
                let f = Arc::clone(f);
                let bulkhead = self.bulkhead.clone();
                let listener = self.listener.clone();
                run_with_timeout(&self.name, limit, move || {
                    in_bulkhead(bulkhead.as_deref(), listener.as_deref(), &*f)
                })
            }
            None => in_bulkhead(self.bulkhead.as_deref(), self.listener.as_deref(), &**f),
        };
        record(permit, &result);
        result
    }
}

#[cfg(feature = "async")]
impl GuardPolicy {
    /// Awaits `f()` under every configured guard, in the same order as
    /// [`call`](Self::call); the timeout cancels the attempt's future, and the bulkhead and
    /// retry wait on tokio's timer. No thread is spawned, so `f` need not be `'static`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> guardrails::Result<()> {
    /// use guardrails::resilience::GuardPolicy;
    /// use std::time::Duration;
    ///
    /// let policy = GuardPolicy::new("fetch").with_timeout(Duration::from_secs(1));
    /// let v = policy.call_async(|| async { Ok(7) }).await?;
    /// assert_eq!(v, 7);
    /// # Ok(()) }
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub async fn call_async<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let attempt = std::sync::atomic::AtomicU32::new(0);
        let one_attempt = || async {
            let n = attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            self.emit(GuardEvent::Attempt(n));
            let result = self.attempt_async(&f).await;
            self.emit(GuardEvent::AttemptFinished { ok: result.is_ok() });
            result
        };
        match &self.retry {
            Some(retry) => retry.call_async(one_attempt).await,
            None => one_attempt().await,
        }
    }

    /// The preflight is a blocking closure (a resource check may wait up to its statvfs
    /// timeout on a hung mount), so under tokio it runs on the blocking pool, not on the
    /// executor; outside a tokio runtime it runs inline.
    async fn preflight_async(&self) -> Result<()> {
        let Some(check) = &self.preflight else {
            return Ok(());
        };
        let outcome = match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let check = Arc::clone(check);
                match handle.spawn_blocking(move || check()).await {
                    Ok(outcome) => outcome,
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(_) => Err(crate::error::GuardrailError::Cancelled {
                        operation: format!("{}: preflight", self.name),
                    }),
                }
            }
            Err(_) => check(),
        };
        outcome?;
        self.emit(GuardEvent::PreflightPassed);
        Ok(())
    }

    async fn attempt_async<T, F, Fut>(&self, f: &F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        self.preflight_async().await?;
        let permit = self.admit_after_preflight()?;
        let guarded = async {
            match &self.bulkhead {
                Some(b) => {
                    let _slot = b.acquire_async().await?;
                    self.emit(GuardEvent::BulkheadEntered);
                    f().await
                }
                None => f().await,
            }
        };
        let result = match self.timeout {
            Some(limit) => {
                self.emit(GuardEvent::TimeoutStarted);
                super::timeout::run_with_timeout_async(&self.name, limit, guarded).await
            }
            None => guarded.await,
        };
        record(permit, &result);
        result
    }
}

/// Awaits `f()` under every guard `policy` configures; see [`GuardPolicy::call_async`].
#[cfg(feature = "async")]
#[cfg_attr(docsrs, doc(cfg(feature = "async")))]
pub async fn guarded_execution_async<T, F, Fut>(f: F, policy: &GuardPolicy) -> Result<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    policy.call_async(f).await
}

/// Records an attempt's outcome with the breaker that permitted it.
fn record<T>(permit: Option<BreakerPermit<'_>>, result: &Result<T>) {
    if let Some(p) = permit {
        match result {
            Ok(_) => p.record_success(),
            Err(e) => p.record_error(e),
        }
    }
}

fn in_bulkhead<T>(
    bulkhead: Option<&Bulkhead>,
    listener: Option<&(dyn Fn(&GuardEvent) + Send + Sync)>,
    f: &dyn Fn() -> Result<T>,
) -> Result<T> {
    match bulkhead {
        Some(b) => {
            let _slot = b.acquire()?;
            if let Some(l) = listener {
                l(&GuardEvent::BulkheadEntered);
            }
            f()
        }
        None => f(),
    }
}

/// Runs `f` under every guard `policy` configures, in the order of the
/// [module docs](self). `f` may run several times (retries) and on another thread (timeout),
/// hence `Fn + Send + Sync + 'static`.
pub fn guarded_execution<T, F>(f: F, policy: &GuardPolicy) -> Result<T>
where
    F: Fn() -> Result<T> + Send + Sync + 'static,
    T: Send + 'static,
{
    policy.call(f)
}
