//! A fleet-wide breaker: each worker's breaker keeps its local hot path, and its outcomes are
//! folded into shared time buckets off the call path.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use super::window::{Padded, stripe_index};
use super::{BreakerState, CircuitBreaker};
use crate::error::{GuardrailError, Result};

/// Where a fleet of [`FleetBreaker`]s keeps its shared window and its open flag. The crate
/// implements it on Redis (`RedisBreakerState` in `state`, feature `redis`).
pub trait SharedBreakerState: Send + Sync + std::fmt::Debug {
    /// Adds one worker's `calls` and `failures` since its last flush to the current bucket
    /// of the breaker `name` (buckets of `config.interval`) and answers the fleet's totals
    /// over the last `config.buckets` buckets, and how long the fleet stays open. While it
    /// is open the counts are dropped, not added: they would reopen it after its recovery.
    fn flush(
        &self,
        name: &str,
        calls: u64,
        failures: u64,
        config: &FleetConfig,
    ) -> Result<FleetView>;

    /// Says the breaker `name` is open for the fleet for `wait`, unless it already is, and
    /// starts the fleet's window over (the failures that opened it must not reopen it after
    /// its recovery). Answers how long it is open from now.
    fn publish_open(&self, name: &str, wait: Duration, config: &FleetConfig) -> Result<Duration>;
}

/// The fleet as the shared state saw it at a flush.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FleetView {
    /// Calls of every worker in the window.
    pub calls: u64,
    /// Failed calls of every worker in the window.
    pub failures: u64,
    /// How long the fleet stays open; `None` when it is not open.
    pub open_for: Option<Duration>,
}

/// Settings of a [`FleetBreaker`].
///
/// | field | default | meaning |
/// |---|---|---|
/// | `interval` | 1 s | how often a worker flushes its outcomes and reads the fleet's (and the bucket size) |
/// | `buckets` | 10 | buckets in the fleet's window (10 s at the default interval) |
/// | `minimum_calls` | the breaker's `minimum_calls` | fleet calls in the window before its rate is judged |
/// | `failure_rate_threshold` | the breaker's | fleet failure rate that opens every worker |
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct FleetConfig {
    /// Flush period and bucket size.
    pub interval: Duration,
    /// Buckets in the window.
    pub buckets: u32,
    /// Fleet calls before the rate is judged; `None` takes the breaker's.
    pub minimum_calls: Option<u64>,
    /// Fleet failure rate that opens; `None` takes the breaker's.
    pub failure_rate_threshold: Option<f64>,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            buckets: 10,
            minimum_calls: None,
            failure_rate_threshold: None,
        }
    }
}

impl FleetConfig {
    /// Flushes every `interval` (also the bucket size).
    #[must_use]
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// `buckets` buckets in the window.
    #[must_use]
    pub fn with_buckets(mut self, buckets: u32) -> Self {
        self.buckets = buckets;
        self
    }

    /// Judges the fleet's rate from `calls` calls in the window.
    #[must_use]
    pub fn with_minimum_calls(mut self, calls: u64) -> Self {
        self.minimum_calls = Some(calls);
        self
    }

    /// Opens the fleet at failure rate `rate`, in (0, 1].
    #[must_use]
    pub fn with_failure_rate_threshold(mut self, rate: f64) -> Self {
        self.failure_rate_threshold = Some(rate);
        self
    }

    fn validate(&self) -> Result<()> {
        if self.interval < Duration::from_millis(1) {
            return Err(GuardrailError::config("fleet.interval", "at least 1 ms"));
        }
        if self.buckets == 0 || self.buckets > 3600 {
            return Err(GuardrailError::config("fleet.buckets", "1 to 3600 buckets"));
        }
        if let Some(r) = self.failure_rate_threshold
            && !(r > 0.0 && r <= 1.0)
        {
            return Err(GuardrailError::config(
                "fleet.failure_rate_threshold",
                format!("a rate in (0, 1], not {r}"),
            ));
        }
        Ok(())
    }
}

/// One worker's outcomes, striped per thread. Each thread bumps its own stripe with a plain
/// load and store (no locked instruction: the call path pays about a nanosecond); the
/// counters only grow, and a flush takes the difference from the sums it saw last. Two
/// threads that share a stripe (more threads than stripes) can lose an increment now and
/// then, which an estimate of a failure rate can afford; a reset racing with the owner's
/// store could count a call twice, which is why nothing resets them.
pub(super) struct FleetCounts {
    calls: Box<[Padded]>,
    failures: Box<[Padded]>,
    /// The sums at the last flush (only the flush touches them).
    seen: Mutex<(u64, u64)>,
}

impl FleetCounts {
    fn new() -> Self {
        let stripes = std::thread::available_parallelism()
            .map_or(4, |n| n.get())
            .next_power_of_two()
            .clamp(4, 64)
            * 2;
        Self {
            calls: (0..stripes).map(|_| Padded::default()).collect(),
            failures: (0..stripes).map(|_| Padded::default()).collect(),
            seen: Mutex::new((0, 0)),
        }
    }

    #[inline]
    pub(super) fn add(&self, failed: bool) {
        let i = stripe_index(self.calls.len());
        let bump = |c: &AtomicU64| c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        bump(&self.calls[i].0);
        if failed {
            bump(&self.failures[i].0);
        }
    }

    /// The calls and failures since the last `take`.
    fn take(&self) -> (u64, u64) {
        let sum = |s: &[Padded]| -> u64 { s.iter().map(|p| p.0.load(Ordering::Relaxed)).sum() };
        let now = (sum(&self.calls), sum(&self.failures));
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let delta = (now.0.saturating_sub(seen.0), now.1.saturating_sub(seen.1));
        *seen = now;
        delta
    }
}

struct Inner {
    breaker: Arc<CircuitBreaker>,
    state: Arc<dyn SharedBreakerState>,
    config: FleetConfig,
    counts: Arc<FleetCounts>,
    /// The local breaker opened by itself: tell the fleet at the next flush.
    publish: AtomicBool,
    /// Whether the last flush failed (the breaker runs local-only meanwhile).
    local_only: AtomicBool,
    flushes: AtomicU64,
    stop: Mutex<bool>,
    wake: Condvar,
}

/// A circuit breaker shared by a fleet of workers (feature-free; the shared state comes
/// from a [`SharedBreakerState`], e.g. Redis).
///
/// Each worker keeps its own [`CircuitBreaker`] with its hot path untouched but for one
/// counter bump per call on a stripe of its thread's own: outcomes are counted locally and flushed into the
/// fleet's time buckets at most once per `interval` by one background thread. At each flush
/// the worker reads the fleet's window: when the fleet's failure rate passes the threshold
/// (after `minimum_calls`), it publishes "open" and opens; when another worker published
/// it, it opens for the time left. A local breaker that opens by itself publishes too, so
/// the fleet follows within one interval. Recovery is each worker's half-open trials, as
/// without a fleet. When the shared state cannot be reached the breaker works locally and
/// says so once (a warning): the call path never waits on the store.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use guardrails::resilience::{
///     BreakerConfig, CircuitBreaker, FleetBreaker, FleetConfig, FleetView, SharedBreakerState,
/// };
///
/// // A stand-in for the Redis state: the fleet is said to be open.
/// #[derive(Debug)]
/// struct OpenFleet;
/// impl SharedBreakerState for OpenFleet {
///     fn flush(&self, _: &str, _: u64, _: u64, _: &FleetConfig) -> guardrails::Result<FleetView> {
///         Ok(FleetView { calls: 100, failures: 80, open_for: Some(Duration::from_secs(30)) })
///     }
///     fn publish_open(&self, _: &str, wait: Duration, _: &FleetConfig) -> guardrails::Result<Duration> {
///         Ok(wait)
///     }
/// }
///
/// let breaker = Arc::new(CircuitBreaker::new("llm", BreakerConfig::new())?);
/// let fleet = FleetBreaker::manual(breaker.clone(), Arc::new(OpenFleet), FleetConfig::default())?;
/// fleet.flush_now();
/// assert!(breaker.call(|| Ok(1)).is_err()); // open because the fleet is
/// # Ok::<(), guardrails::GuardrailError>(())
/// ```
pub struct FleetBreaker {
    inner: Arc<Inner>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for FleetBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetBreaker")
            .field("breaker", &self.inner.breaker.name())
            .field("state", &self.inner.state)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl FleetBreaker {
    /// Makes `breaker` fleet-wide over `state`, flushing every `config.interval` on a
    /// background thread of its own (stopped when this is dropped).
    pub fn new(
        breaker: Arc<CircuitBreaker>,
        state: Arc<dyn SharedBreakerState>,
        config: FleetConfig,
    ) -> Result<Self> {
        let mut me = Self::manual(breaker, state, config)?;
        let inner = Arc::clone(&me.inner);
        let thread = std::thread::Builder::new()
            .name(format!("guardrails-fleet-{}", inner.breaker.name()))
            .spawn(move || {
                let mut stopped = inner.stop.lock().unwrap_or_else(PoisonError::into_inner);
                while !*stopped {
                    let (guard, _) = inner
                        .wake
                        .wait_timeout(stopped, inner.config.interval)
                        .unwrap_or_else(PoisonError::into_inner);
                    stopped = guard;
                    if *stopped {
                        break;
                    }
                    drop(stopped);
                    flush(&inner);
                    stopped = inner.stop.lock().unwrap_or_else(PoisonError::into_inner);
                }
            })
            .map_err(|e| GuardrailError::Store {
                store: "fleet breaker".to_string(),
                operation: "start its flush thread".to_string(),
                reason: e.to_string(),
                class: crate::error::ErrorClass::Recoverable,
                source: None,
            })?;
        me.thread = Some(thread);
        Ok(me)
    }

    /// Like [`new`](Self::new) without the background thread: the caller flushes with
    /// [`flush_now`](Self::flush_now) (tests, or a program with a scheduler of its own).
    pub fn manual(
        breaker: Arc<CircuitBreaker>,
        state: Arc<dyn SharedBreakerState>,
        config: FleetConfig,
    ) -> Result<Self> {
        config.validate()?;
        let counts = Arc::new(FleetCounts::new());
        if !breaker.attach_fleet(Arc::clone(&counts)) {
            return Err(GuardrailError::config(
                "fleet",
                format!("breaker {} already belongs to a fleet", breaker.name()),
            ));
        }
        let inner = Arc::new(Inner {
            breaker,
            state,
            config,
            counts,
            publish: AtomicBool::new(false),
            local_only: AtomicBool::new(false),
            flushes: AtomicU64::new(0),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        // A local opening is told to the fleet by the flush thread, never on the call path.
        let weak = Arc::downgrade(&inner);
        inner.breaker.on_state_change(move |t| {
            if t.to == BreakerState::Open
                && let Some(inner) = weak.upgrade()
            {
                inner.publish.store(true, Ordering::Release);
                inner.wake.notify_all();
            }
        });
        Ok(Self {
            inner,
            thread: None,
        })
    }

    /// The worker's breaker.
    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        &self.inner.breaker
    }

    /// Flushes now: adds this worker's outcomes to the fleet's window, publishes a local
    /// opening, and opens when the fleet is open or its rate passes the threshold. Returns
    /// what the fleet looked like, or `None` when the shared state did not answer.
    pub fn flush_now(&self) -> Option<FleetView> {
        flush(&self.inner)
    }

    /// Whether the last flush failed, so the breaker judges this worker's calls alone.
    pub fn is_local_only(&self) -> bool {
        self.inner.local_only.load(Ordering::Relaxed)
    }

    /// Flushes done (answered or not).
    pub fn flushes(&self) -> u64 {
        self.inner.flushes.load(Ordering::Relaxed)
    }
}

impl Drop for FleetBreaker {
    fn drop(&mut self) {
        *self
            .inner
            .stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.inner.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn flush(inner: &Inner) -> Option<FleetView> {
    inner.flushes.fetch_add(1, Ordering::Relaxed);
    let name = inner.breaker.name();
    let breaker_config = inner.breaker.config();
    let wait = breaker_config.wait_in_open;
    let (calls, failures) = inner.counts.take();
    let answer = (|| -> Result<FleetView> {
        if inner.publish.swap(false, Ordering::AcqRel)
            && inner.breaker.state() == BreakerState::Open
        {
            inner.state.publish_open(name, wait, &inner.config)?;
        }
        let view = inner.state.flush(name, calls, failures, &inner.config)?;
        if let Some(left) = view.open_for {
            if inner
                .breaker
                .open_from_fleet(left, ratio(view.failures, view.calls))
            {
                // The fleet's opening, not this worker's: nothing to publish.
                inner.publish.store(false, Ordering::Release);
            }
            return Ok(view);
        }
        let minimum = inner
            .config
            .minimum_calls
            .unwrap_or(u64::from(breaker_config.minimum_calls))
            .max(1);
        let threshold = inner
            .config
            .failure_rate_threshold
            .unwrap_or(breaker_config.failure_rate_threshold);
        let rate = ratio(view.failures, view.calls);
        if view.calls >= minimum && rate.is_some_and(|r| r >= threshold) {
            let left = inner.state.publish_open(name, wait, &inner.config)?;
            // Its own opening announced, so the listener does not publish it again.
            inner.breaker.open_from_fleet(left, rate);
            inner.publish.store(false, Ordering::Release);
            return Ok(FleetView {
                open_for: Some(left),
                ..view
            });
        }
        Ok(view)
    })();
    match answer {
        Ok(view) => {
            if inner.local_only.swap(false, Ordering::Relaxed) {
                tracing::info!(name, "fleet breaker state answers again");
            }
            Some(view)
        }
        Err(e) => {
            // The outcomes of this interval are dropped: stale by the time the state is
            // back, they would land in the wrong bucket.
            if !inner.local_only.swap(true, Ordering::Relaxed) {
                tracing::warn!(name, error = %e.report(), "fleet breaker state unreachable; this worker judges its own calls alone");
            }
            None
        }
    }
}

fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}
