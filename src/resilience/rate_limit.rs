//! A GCRA rate limiter: `governor` underneath, our clock, config and error on top.
//!
//! governor is the well-kept crate of the field and its GCRA cell is one atomic
//! compare-and-swap per check, so there is nothing to gain by writing our own; this module
//! adds the config section, [`GuardrailError::RateLimited`] with the exact `retry_after`, a
//! name for logs, and the injectable [`Clock`].
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `rate` | `100` | calls allowed per `period` on average |
//! | `period` | `"1s"` | the period `rate` is measured over |
//! | `burst` | `rate` | calls allowed at once after a quiet spell |

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use governor::clock::{Clock as GovernorClock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter as Gcra};
use serde::{Deserialize, Serialize};

use crate::clock::{Clock, SharedClock};
use crate::error::{GuardrailError, Result};

/// Settings of a [`RateLimiter`]; see the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct RateLimitConfig {
    /// Calls per period.
    pub rate: u32,
    /// The period.
    #[serde(with = "humantime_serde")]
    pub period: Duration,
    /// Calls allowed at once; `None` means `rate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl RateLimitConfig {
    /// 100 calls per second, burst 100.
    pub const fn new() -> Self {
        Self {
            rate: 100,
            period: Duration::from_secs(1),
            burst: None,
        }
    }

    /// `rate` calls per `period`.
    pub const fn per(rate: u32, period: Duration) -> Self {
        Self {
            rate,
            period,
            burst: None,
        }
    }

    /// Sets the burst.
    #[must_use]
    pub const fn with_burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// Rejects zero rates, bursts and periods.
    pub fn validate(&self) -> Result<()> {
        self.quota().map(|_| ())
    }

    fn quota(&self) -> Result<Quota> {
        let rate = NonZeroU32::new(self.rate)
            .ok_or_else(|| GuardrailError::config("rate", "must be at least 1"))?;
        let burst = NonZeroU32::new(self.burst.unwrap_or(self.rate))
            .ok_or_else(|| GuardrailError::config("burst", "must be at least 1"))?;
        let per_cell = self.period / rate.get();
        let quota = Quota::with_period(per_cell).ok_or_else(|| {
            GuardrailError::config(
                "period",
                format!(
                    "{:?} / {} calls leaves no time per call",
                    self.period, self.rate
                ),
            )
        })?;
        Ok(quota.allow_burst(burst))
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// Adapts our [`Clock`] to governor's, as time since the limiter was made.
#[derive(Debug, Clone)]
struct AdaptedClock {
    clock: SharedClock,
    origin: Instant,
}

impl GovernorClock for AdaptedClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.clock.now().saturating_duration_since(self.origin)
    }
}

enum Cell {
    /// governor's own clock (quanta: a few ns per read) when no clock was injected.
    Default(
        Gcra<
            NotKeyed,
            InMemoryState,
            DefaultClock,
            NoOpMiddleware<<DefaultClock as GovernorClock>::Instant>,
        >,
        DefaultClock,
    ),
    Injected(
        Gcra<NotKeyed, InMemoryState, AdaptedClock, NoOpMiddleware<Duration>>,
        AdaptedClock,
    ),
}

/// Where a fleet-wide [`RateLimiter`] keeps its allowance, so that every worker sharing it
/// draws from one budget. The crate implements it on Redis (`RedisRateLimit` in `state`,
/// feature `redis`: GCRA in one Lua script, or Redis's own `GCRA` command where the server
/// has it); the limiter does not know which.
pub trait SharedRateState: Send + Sync + std::fmt::Debug {
    /// Takes `cost` calls of the allowance of the limiter `name` under GCRA with the rate,
    /// period and burst of `config`: `Ok(None)` allowed, `Ok(Some(wait))` refused until
    /// `wait` from now. An error (the store unreachable) makes the limiter fall back to its
    /// local allowance.
    fn acquire(&self, name: &str, config: &RateLimitConfig, cost: u32) -> Result<Option<Duration>>;
}

/// A shared allowance and whether the limiter fell back from it.
struct Shared {
    state: Arc<dyn SharedRateState>,
    local_only: AtomicBool,
}

/// Allows `rate` calls per `period` with bursts of `burst`, refusing the rest with
/// [`GuardrailError::RateLimited`] and the time until the next call would be allowed.
///
/// ```
/// use guardrails::prelude::*;
/// use guardrails::resilience::{RateLimitConfig, RateLimiter};
/// use std::time::Duration;
///
/// let clock = ManualClock::new();
/// let limiter = RateLimiter::new("api", RateLimitConfig::per(2, Duration::from_secs(1)))?
///     .with_clock(clock.clone());
/// limiter.check()?;
/// limiter.check()?;
/// match limiter.check() {
///     Err(GuardrailError::RateLimited { retry_after, .. }) => {
///         assert_eq!(retry_after, Duration::from_millis(500))
///     }
///     other => panic!("{other:?}"),
/// }
/// clock.advance(Duration::from_millis(500));
/// limiter.check()?;
/// # Ok::<(), GuardrailError>(())
/// ```
pub struct RateLimiter {
    name: Arc<str>,
    config: RateLimitConfig,
    /// Kept so a new clock can be given without validating the config again.
    quota: Quota,
    cell: Cell,
    shared: Option<Shared>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// A limiter on governor's fast monotonic clock; `config` is validated.
    pub fn new(name: impl Into<String>, config: RateLimitConfig) -> Result<Self> {
        let quota = config.quota()?;
        let clock = DefaultClock::default();
        Ok(Self {
            name: Arc::from(name.into()),
            cell: Cell::Default(Gcra::direct_with_clock(quota, clock.clone()), clock),
            quota,
            config,
            shared: None,
        })
    }

    /// A fleet-wide limiter: every call draws from `state`, the allowance all workers share
    /// (`rate` per `period` for the whole fleet). When `state` cannot answer, the limiter
    /// says so once (a warning) and falls back to a local allowance of the same figures
    /// until it answers again: a store outage never blocks or fails the call path, at the
    /// price of a per-process limit meanwhile.
    pub fn shared(
        name: impl Into<String>,
        config: RateLimitConfig,
        state: Arc<dyn SharedRateState>,
    ) -> Result<Self> {
        let mut limiter = Self::new(name, config)?;
        limiter.shared = Some(Shared {
            state,
            local_only: AtomicBool::new(false),
        });
        Ok(limiter)
    }

    /// Reads time from `clock` (a [`ManualClock`](crate::ManualClock) in tests). Meant
    /// right after [`new`](Self::new), like every `with_*`: the allowance starts over full
    /// on the new clock.
    #[must_use]
    pub fn with_clock(mut self, clock: impl Clock + 'static) -> Self {
        let clock = AdaptedClock {
            origin: clock.now(),
            clock: Arc::new(clock),
        };
        self.cell = Cell::Injected(Gcra::direct_with_clock(self.quota, clock.clone()), clock);
        self
    }

    /// The limiter's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its settings.
    pub fn config(&self) -> &RateLimitConfig {
        &self.config
    }

    /// Takes one call's allowance, or says how long until one is available.
    #[inline]
    pub fn check(&self) -> Result<()> {
        if let Some(shared) = &self.shared {
            match self.check_shared(shared) {
                Some(Ok(())) => return Ok(()),
                Some(Err(e)) => return Err(e),
                None => {}
            }
        }
        let wait = match &self.cell {
            Cell::Default(gcra, clock) => match gcra.check() {
                Ok(()) => return Ok(()),
                Err(not_until) => not_until.wait_time_from(clock.now()),
            },
            Cell::Injected(gcra, clock) => match gcra.check() {
                Ok(()) => return Ok(()),
                Err(not_until) => not_until.wait_time_from(clock.now()),
            },
        };
        Err(self.limited(wait))
    }

    /// The shared allowance's answer, or `None` to use the local one.
    fn check_shared(&self, shared: &Shared) -> Option<Result<()>> {
        match shared.state.acquire(&self.name, &self.config, 1) {
            Ok(answer) => {
                if shared.local_only.swap(false, Ordering::Relaxed) {
                    tracing::info!(name = %self.name, "shared rate limit answers again");
                }
                Some(match answer {
                    None => Ok(()),
                    Some(wait) => Err(self.limited(wait)),
                })
            }
            Err(e) => {
                if !shared.local_only.swap(true, Ordering::Relaxed) {
                    tracing::warn!(name = %self.name, error = %e.report(), "shared rate limit unreachable; limiting this process alone");
                }
                None
            }
        }
    }

    /// Whether a fleet-wide limiter is on its local allowance (its store did not answer).
    pub fn is_local_only(&self) -> bool {
        self.shared
            .as_ref()
            .is_some_and(|s| s.local_only.load(Ordering::Relaxed))
    }

    #[cold]
    fn limited(&self, retry_after: Duration) -> GuardrailError {
        crate::events::emit(|| crate::events::GuardEvent {
            guard: crate::events::GuardKind::RateLimiter,
            name: &self.name,
            decision: crate::events::Decision::RateLimited { retry_after },
        });
        tracing::debug!(name = %self.name, retry_after_ms = u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX), "rate limited");
        GuardrailError::RateLimited {
            name: self.name.to_string(),
            retry_after,
        }
    }

    /// Runs `f` if the limit allows it now.
    #[inline]
    pub fn call<T, F: FnOnce() -> Result<T>>(&self, f: F) -> Result<T> {
        self.check()?;
        f()
    }
}
