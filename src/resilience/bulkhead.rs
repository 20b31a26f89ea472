//! At most N calls at once: the robustness seed's resource quotas.
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `max_concurrent` | `10` | calls allowed at the same time |
//! | `max_wait` | `"0s"` | how long a call may wait for a slot before `BulkheadFull` |

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{GuardrailError, Result};

/// Settings of a [`Bulkhead`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct BulkheadConfig {
    /// Calls allowed at the same time.
    pub max_concurrent: usize,
    /// How long a call may wait for a slot; zero refuses at once.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
}

impl BulkheadConfig {
    /// 10 concurrent calls, no waiting.
    pub const fn new() -> Self {
        Self {
            max_concurrent: 10,
            max_wait: Duration::ZERO,
        }
    }

    /// Sets the number of concurrent calls.
    #[must_use]
    pub const fn with_max_concurrent(mut self, n: usize) -> Self {
        self.max_concurrent = n;
        self
    }

    /// Lets a call wait up to `wait` for a slot.
    #[must_use]
    pub const fn with_max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = wait;
        self
    }

    /// Rejects a zero limit.
    pub fn validate(&self) -> Result<()> {
        if self.max_concurrent == 0 {
            return Err(GuardrailError::config(
                "max_concurrent",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

impl Default for BulkheadConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// Limits concurrent calls; a full bulkhead answers [`GuardrailError::BulkheadFull`]
/// (retryable, and never counted by a circuit breaker).
///
/// ```
/// use guardrails::prelude::*;
/// use guardrails::resilience::{Bulkhead, BulkheadConfig};
///
/// let gpu = Bulkhead::new("gpu", BulkheadConfig::new().with_max_concurrent(1))?;
/// let slot = gpu.try_acquire()?;
/// assert_eq!(gpu.try_acquire().unwrap_err().kind(), ErrorKind::BulkheadFull);
/// drop(slot);
/// assert_eq!(gpu.call(|| Ok(2 + 2))?, 4);
/// # Ok::<(), GuardrailError>(())
/// ```
pub struct Bulkhead {
    name: Arc<str>,
    config: BulkheadConfig,
    in_use: AtomicUsize,
    /// Waiters park here; only used when `max_wait` is non-zero.
    wait_lock: Mutex<()>,
    freed: Condvar,
    #[cfg(feature = "async")]
    freed_async: tokio::sync::Notify,
}

impl std::fmt::Debug for Bulkhead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bulkhead")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("in_use", &self.in_use())
            .finish_non_exhaustive()
    }
}

impl Bulkhead {
    /// A bulkhead; `config` is validated.
    pub fn new(name: impl Into<String>, config: BulkheadConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            name: Arc::from(name.into()),
            config,
            in_use: AtomicUsize::new(0),
            wait_lock: Mutex::new(()),
            freed: Condvar::new(),
            #[cfg(feature = "async")]
            freed_async: tokio::sync::Notify::new(),
        })
    }

    /// The bulkhead's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Calls running now.
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Acquire)
    }

    /// Free slots now.
    pub fn available(&self) -> usize {
        self.config.max_concurrent.saturating_sub(self.in_use())
    }

    fn try_take(&self) -> bool {
        self.in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.config.max_concurrent).then_some(n + 1)
            })
            .is_ok()
    }

    fn full(&self) -> GuardrailError {
        tracing::warn!(name = %self.name, max_concurrent = self.config.max_concurrent, "bulkhead full");
        crate::events::emit(|| crate::events::GuardEvent {
            guard: crate::events::GuardKind::Bulkhead,
            name: &self.name,
            decision: crate::events::Decision::BulkheadFull {
                max_concurrent: self.config.max_concurrent,
            },
        });
        GuardrailError::BulkheadFull {
            name: self.name.to_string(),
            max_concurrent: self.config.max_concurrent,
        }
    }

    /// Takes a slot now or fails.
    pub fn try_acquire(&self) -> Result<BulkheadPermit<'_>> {
        if self.try_take() {
            Ok(BulkheadPermit { bulkhead: self })
        } else {
            Err(self.full())
        }
    }

    /// Takes a slot, waiting up to the configured `max_wait` for one.
    pub fn acquire(&self) -> Result<BulkheadPermit<'_>> {
        if self.try_take() {
            return Ok(BulkheadPermit { bulkhead: self });
        }
        if self.config.max_wait.is_zero() {
            return Err(self.full());
        }
        let deadline = Instant::now() + self.config.max_wait;
        let mut guard = self
            .wait_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        loop {
            if self.try_take() {
                return Ok(BulkheadPermit { bulkhead: self });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(self.full());
            }
            guard = self
                .freed
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Runs `f` in a slot (waiting up to `max_wait` for one).
    pub fn call<T, F: FnOnce() -> Result<T>>(&self, f: F) -> Result<T> {
        let _slot = self.acquire()?;
        f()
    }

    fn release(&self) {
        self.in_use.fetch_sub(1, Ordering::AcqRel);
        if !self.config.max_wait.is_zero() {
            // Taking the lock orders this notify after a waiter's failed try, so no wakeup
            // is lost between its check and its wait.
            let _guard = self
                .wait_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.freed.notify_one();
            #[cfg(feature = "async")]
            self.freed_async.notify_one();
        }
    }

    /// Takes a slot, waiting asynchronously up to `max_wait` (on tokio's clock) for one.
    #[cfg(feature = "async")]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub async fn acquire_async(&self) -> Result<BulkheadPermit<'_>> {
        if self.try_take() {
            return Ok(BulkheadPermit { bulkhead: self });
        }
        if self.config.max_wait.is_zero() {
            return Err(self.full());
        }
        let deadline = tokio::time::Instant::now() + self.config.max_wait;
        loop {
            let notified = self.freed_async.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the retry, so a release in between still wakes us.
            notified.as_mut().enable();
            if self.try_take() {
                return Ok(BulkheadPermit { bulkhead: self });
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(self.full());
            }
        }
    }

    /// Awaits `fut` in a slot (waiting up to `max_wait` for one).
    #[cfg(feature = "async")]
    #[cfg_attr(docsrs, doc(cfg(feature = "async")))]
    pub async fn call_async<T, Fut>(&self, fut: Fut) -> Result<T>
    where
        Fut: std::future::Future<Output = Result<T>>,
    {
        let _slot = self.acquire_async().await?;
        fut.await
    }
}

/// A slot in a [`Bulkhead`] behind an `Arc`, given back on drop; it can move into a task.
#[derive(Debug)]
#[must_use = "the slot is given back as soon as the permit is dropped"]
pub struct OwnedBulkheadPermit {
    bulkhead: Arc<Bulkhead>,
}

impl Drop for OwnedBulkheadPermit {
    fn drop(&mut self) {
        self.bulkhead.release();
    }
}

impl Bulkhead {
    /// Takes a slot now or fails, for a bulkhead behind an `Arc`.
    pub fn try_acquire_owned(self: &Arc<Self>) -> Result<OwnedBulkheadPermit> {
        if self.try_take() {
            Ok(OwnedBulkheadPermit {
                bulkhead: Arc::clone(self),
            })
        } else {
            Err(self.full())
        }
    }
}

/// A slot in a [`Bulkhead`], given back on drop.
#[derive(Debug)]
#[must_use = "the slot is given back as soon as the permit is dropped"]
pub struct BulkheadPermit<'a> {
    bulkhead: &'a Bulkhead,
}

impl Drop for BulkheadPermit<'_> {
    fn drop(&mut self) {
        self.bulkhead.release();
    }
}
