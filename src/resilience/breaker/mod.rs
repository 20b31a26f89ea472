//! A circuit breaker with resilience4j's feature set, far cheaper per call.
//!
//! # States
//!
//! | state | calls | leaves when |
//! |---|---|---|
//! | closed | permitted and recorded | failure or slow-call rate reaches its threshold (after `minimum_calls`) → open |
//! | open | rejected with [`GuardrailError::CircuitOpen`] | `wait_in_open` has passed → half-open |
//! | half-open | exactly `half_open_calls` trial calls permitted | all trials recorded: rates under threshold → closed, else → open; `max_wait_in_half_open` passed → open |
//! | disabled | permitted, not recorded | [`reset`](CircuitBreaker::reset) |
//! | forced open | rejected | [`reset`](CircuitBreaker::reset) |
//! | metrics only | permitted and recorded, never opens | [`reset`](CircuitBreaker::reset) |
//!
//! Open → half-open happens on the first look at the breaker after the wait (a call,
//! [`state`](CircuitBreaker::state) or [`metrics`](CircuitBreaker::metrics)), so no timer
//! thread is needed and listeners hear of it at that moment.
//!
//! # What counts as a failure
//!
//! By default ([`default_classifier`]): rejections by a bulkhead, a rate limiter or another
//! breaker, and cancellations, are not recorded at all; validation errors (the input was
//! wrong, the dependency answered) count as successes; every other error is a failure.
//! [`CircuitBreaker::with_classifier`] replaces the rule.
//!
//! # Cost
//!
//! A closed, count-based breaker without slow-call detection spends three atomic loads per
//! successful call while its window holds no failure: no write, no lock, no clock read, no
//! allocation. While failures are in the window, a success also adds to a per-thread stripe
//! (one uncontended atomic add). Failures, slow calls and half-open trials take a short mutex.
//!
//! ```
//! use guardrails::prelude::*;
//! use guardrails::resilience::{BreakerConfig, BreakerState, CircuitBreaker};
//! use std::time::Duration;
//!
//! let clock = ManualClock::new();
//! let config = BreakerConfig::new()
//!     .with_minimum_calls(4)
//!     .with_wait_in_open(Duration::from_secs(30))
//!     .with_half_open_calls(1);
//! let breaker = CircuitBreaker::new("llm", config)?.with_clock(clock.clone());
//!
//! let failing = || -> guardrails::Result<()> {
//!     Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into())
//! };
//! for _ in 0..4 {
//!     let _ = breaker.call(failing);
//! }
//! assert_eq!(breaker.state(), BreakerState::Open);
//! assert_eq!(breaker.call(|| Ok(1)).unwrap_err().kind(), ErrorKind::CircuitOpen);
//!
//! clock.advance(Duration::from_secs(30));
//! assert_eq!(breaker.state(), BreakerState::HalfOpen);
//! assert_eq!(breaker.call(|| Ok(1))?, 1); // the one trial call succeeds
//! assert_eq!(breaker.state(), BreakerState::Closed);
//! # Ok::<(), GuardrailError>(())
//! ```

mod config;
mod fallback;
mod fleet;
mod registry;
mod window;

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::clock::{Clock, SharedClock, SystemClock};
use crate::error::{ErrorClass, ErrorKind, GuardrailError, Result};

pub use config::{BreakerConfig, BreakerOverride, WindowKind};
pub use fallback::{Downshift, FallbackChain, Served};
pub use fleet::{FleetBreaker, FleetConfig, FleetView, SharedBreakerState};
pub use registry::{BreakerRegistry, BreakerRegistryConfig};

use window::{FAILED, SLOW, Tally, Window};

/// The state of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls flow and are recorded.
    Closed,
    /// Calls are rejected until the wait has passed.
    Open,
    /// A fixed number of trial calls decide between closed and open.
    HalfOpen,
    /// Calls flow and nothing is recorded.
    Disabled,
    /// Calls are rejected until reset.
    ForcedOpen,
    /// Calls flow and are recorded, but the breaker never opens.
    MetricsOnly,
}

impl BreakerState {
    /// The snake_case name used in logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
            Self::Disabled => "disabled",
            Self::ForcedOpen => "forced_open",
            Self::MetricsOnly => "metrics_only",
        }
    }

    /// Whether calls may go through in this state (half-open: some of them).
    pub const fn admits_calls(self) -> bool {
        !matches!(self, Self::Open | Self::ForcedOpen)
    }

    const fn code(self) -> u64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
            Self::Disabled => 3,
            Self::ForcedOpen => 4,
            Self::MetricsOnly => 5,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a finished call is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallOutcome {
    /// The dependency worked.
    Success,
    /// The dependency failed; counts toward the failure rate.
    Failure,
    /// Not about the dependency (a rejection, a cancellation): not recorded.
    Ignored,
}

/// The default rule for which errors count; see the [module docs](self).
pub fn default_classifier(err: &GuardrailError) -> CallOutcome {
    match err.kind() {
        ErrorKind::BulkheadFull
        | ErrorKind::RateLimited
        | ErrorKind::CircuitOpen
        | ErrorKind::Cancelled => CallOutcome::Ignored,
        _ if err.class() == ErrorClass::Validation => CallOutcome::Success,
        _ => CallOutcome::Failure,
    }
}

/// One state change, as listeners receive it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StateTransition {
    /// The breaker's name.
    pub name: Arc<str>,
    /// State before.
    pub from: BreakerState,
    /// State after.
    pub to: BreakerState,
    /// Failure rate that caused it, when rates caused it.
    pub failure_rate: Option<f64>,
    /// Slow-call rate that caused it, when rates caused it.
    pub slow_call_rate: Option<f64>,
}

/// A point-in-time view of a breaker for dashboards and health checks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BreakerMetrics {
    /// Current state.
    pub state: BreakerState,
    /// Failed / buffered calls; `None` until `minimum_calls` are buffered.
    pub failure_rate: Option<f64>,
    /// Slow / buffered calls; `None` until `minimum_calls` are buffered.
    pub slow_call_rate: Option<f64>,
    /// Calls in the window (in half-open: trial calls recorded so far).
    pub buffered_calls: u64,
    /// Failed calls in the window.
    pub failed_calls: u64,
    /// Slow calls in the window.
    pub slow_calls: u64,
    /// Calls rejected since the breaker was created.
    pub not_permitted_calls: u64,
}

type Classifier = Arc<dyn Fn(&GuardrailError) -> CallOutcome + Send + Sync>;

// State word layout: bits 0..3 state code, bit 3 "warming" (closed and minimum calls not yet
// reached: successes go through the lock so the crossing is judged), bits 8.. generation.
const STATE_MASK: u64 = 0b111;
const WARMING: u64 = 0b1000;
const GEN_SHIFT: u32 = 8;

#[inline]
fn state_of(word: u64) -> BreakerState {
    match word & STATE_MASK {
        0 => BreakerState::Closed,
        1 => BreakerState::Open,
        2 => BreakerState::HalfOpen,
        3 => BreakerState::Disabled,
        4 => BreakerState::ForcedOpen,
        _ => BreakerState::MetricsOnly,
    }
}

fn generation_of(word: u64) -> u64 {
    word >> GEN_SHIFT
}

/// A circuit breaker; share it by reference or `Arc`. See the [module docs](self).
pub struct CircuitBreaker {
    name: Arc<str>,
    config: BreakerConfig,
    state: AtomicU64,
    window: Window,
    clock: SharedClock,
    origin: Instant,
    opened_at_nanos: AtomicU64,
    half_open_since_nanos: AtomicU64,
    /// `(generation << 32) | available` trial permits, so that a permit released late
    /// cannot add to a later half-open period.
    half_open_permits: AtomicU64,
    half_open_tally: Mutex<Tally>,
    not_permitted: AtomicU64,
    timed: bool,
    classifier: Classifier,
    pub(super) listeners: crate::listeners::Listeners<StateTransition>,
    transition_lock: Mutex<()>,
    /// This worker's outcomes for a fleet-wide breaker ([`FleetBreaker`]), when it is one.
    fleet: std::sync::OnceLock<Arc<fleet::FleetCounts>>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.name)
            .field("state", &state_of(self.state.load(Ordering::Relaxed)))
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What a permit remembers about the moment it was granted.
#[derive(Debug, Clone, Copy)]
struct Grant {
    word: u64,
    start: Option<Instant>,
}

impl CircuitBreaker {
    /// A closed breaker on the system clock; `config` is validated.
    pub fn new(name: impl Into<String>, config: BreakerConfig) -> Result<Self> {
        Self::with_shared_clock(name, config, Arc::new(SystemClock))
    }

    /// Reads time from `clock` (a [`ManualClock`](crate::ManualClock) in tests). Meant
    /// right after [`new`](Self::new), like every `with_*`: the breaker starts over, closed
    /// and with an empty window, on the new clock (times from two clocks cannot be mixed);
    /// its name, config, classifier and listeners are kept.
    #[must_use]
    pub fn with_clock(self, clock: impl Clock + 'static) -> Self {
        Self::fresh(
            self.name,
            self.config,
            Arc::new(clock),
            self.classifier,
            self.listeners,
        )
    }

    pub(crate) fn with_shared_clock(
        name: impl Into<String>,
        config: BreakerConfig,
        clock: SharedClock,
    ) -> Result<Self> {
        config.validate()?;
        Ok(Self::fresh(
            Arc::from(name.into()),
            config,
            clock,
            Arc::new(default_classifier),
            Default::default(),
        ))
    }

    fn fresh(
        name: Arc<str>,
        config: BreakerConfig,
        clock: SharedClock,
        classifier: Classifier,
        listeners: crate::listeners::Listeners<StateTransition>,
    ) -> Self {
        let window = Window::new(&config);
        let timed = config.slow_call_duration.is_some() || window.needs_time();
        Self {
            name,
            state: AtomicU64::new(BreakerState::Closed.code() | WARMING),
            window,
            origin: clock.now(),
            clock,
            opened_at_nanos: AtomicU64::new(0),
            half_open_since_nanos: AtomicU64::new(0),
            half_open_permits: AtomicU64::new(0),
            half_open_tally: Mutex::new(Tally::default()),
            not_permitted: AtomicU64::new(0),
            timed,
            classifier,
            listeners,
            transition_lock: Mutex::new(()),
            fleet: std::sync::OnceLock::new(),
            config,
        }
    }

    /// Replaces the rule that decides which errors count as failures.
    #[must_use]
    pub fn with_classifier<F>(mut self, classifier: F) -> Self
    where
        F: Fn(&GuardrailError) -> CallOutcome + Send + Sync + 'static,
    {
        self.classifier = Arc::new(classifier);
        self
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its configuration.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// Calls `listener` once for every state change, after the change, on the thread that
    /// made it. Keep it short: it runs inside the call that tripped the breaker.
    pub fn on_state_change<F>(&self, listener: F)
    where
        F: Fn(&StateTransition) + Send + Sync + 'static,
    {
        self.listeners.add(listener);
    }

    /// The current state (this may move an open breaker whose wait is over to half-open).
    pub fn state(&self) -> BreakerState {
        self.advance_time();
        state_of(self.state.load(Ordering::Acquire))
    }

    /// Runs `f` if the breaker permits it and records the outcome.
    #[inline]
    pub fn call<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> Result<T>,
    {
        // The common case gets a path of its own: closed, count-based, no slow-call timing.
        // No permit is needed, since a closed breaker has no trial slot to give back.
        let word = self.state.load(Ordering::Acquire);
        if word & (STATE_MASK | WARMING) == BreakerState::Closed.code() && !self.timed {
            let result = f();
            match &result {
                Ok(_) => {
                    // A change of state or generation since the start voids the record.
                    if self.state.load(Ordering::Acquire) == word {
                        self.window.record_fast_success(0);
                        if let Some(fleet) = self.fleet.get() {
                            fleet.add(false);
                        }
                    }
                }
                Err(e) => self.complete(Grant { word, start: None }, (self.classifier)(e)),
            }
            return result;
        }
        // The permit gives a half-open slot back if `f` panics.
        let mut permit = self.try_acquire()?;
        let result = f();
        permit.finish(|b| match &result {
            Ok(_) => CallOutcome::Success,
            Err(e) => (b.classifier)(e),
        });
        result
    }

    /// Awaits `fut` if the breaker permits it and records the outcome. Dropping the returned
    /// future before it finishes releases a half-open trial permit without recording.
    pub async fn call_async<T, Fut>(&self, fut: Fut) -> Result<T>
    where
        Fut: Future<Output = Result<T>>,
    {
        let permit = self.try_acquire()?;
        let result = fut.await;
        match &result {
            Ok(_) => permit.record_success(),
            Err(e) => permit.record_error(e),
        }
        result
    }

    /// Asks for permission to make one call. The permit records the call's outcome; dropped
    /// unrecorded (a panic, a cancelled future) it records nothing and gives a half-open
    /// trial slot back.
    #[inline]
    pub fn try_acquire(&self) -> Result<BreakerPermit<'_>> {
        Ok(Permit {
            breaker: self,
            grant: Some(self.acquire()?),
        })
    }

    /// Like [`try_acquire`](Self::try_acquire), for a breaker behind an `Arc`: the permit
    /// owns a reference and can move into a spawned task.
    pub fn try_acquire_owned(self: &Arc<Self>) -> Result<OwnedBreakerPermit> {
        let grant = self.acquire()?;
        Ok(Permit {
            breaker: Arc::clone(self),
            grant: Some(grant),
        })
    }

    /// Counts, rates and state; see [`BreakerMetrics`].
    pub fn metrics(&self) -> BreakerMetrics {
        let state = self.state();
        let tally = match state {
            BreakerState::HalfOpen => *self
                .half_open_tally
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
            _ => self.window.tally(self.now_sec()),
        };
        let judged = match state {
            BreakerState::HalfOpen => tally.calls > 0,
            _ => tally.calls >= self.config.effective_minimum_calls(),
        };
        BreakerMetrics {
            state,
            failure_rate: judged.then(|| tally.failure_rate()),
            slow_call_rate: judged.then(|| tally.slow_rate()),
            buffered_calls: tally.calls,
            failed_calls: tally.failures,
            slow_calls: tally.slow,
            not_permitted_calls: self.not_permitted.load(Ordering::Relaxed),
        }
    }

    /// Back to closed with an empty window, from any state.
    pub fn reset(&self) {
        self.force(BreakerState::Closed);
    }

    /// Rejects every call until [`reset`](Self::reset).
    pub fn force_open(&self) {
        self.force(BreakerState::ForcedOpen);
    }

    /// Permits every call and records nothing until [`reset`](Self::reset).
    pub fn disable(&self) {
        self.force(BreakerState::Disabled);
    }

    /// Permits every call and records them, but never opens, until [`reset`](Self::reset).
    pub fn metrics_only(&self) {
        self.force(BreakerState::MetricsOnly);
    }

    fn force(&self, to: BreakerState) {
        let word = self.state.load(Ordering::Acquire);
        self.transition(word, to, None);
    }

    /// Makes this breaker count its outcomes into `counts` for a fleet; `false` when it
    /// already counts for one.
    fn attach_fleet(&self, counts: Arc<fleet::FleetCounts>) -> bool {
        self.fleet.set(counts).is_ok()
    }

    /// Opens a closed or half-open breaker because the fleet is open, for `wait_left` (at
    /// most its own `wait_in_open`). `false` when it was not closed or half-open.
    fn open_from_fleet(&self, wait_left: Duration, failure_rate: Option<f64>) -> bool {
        let word = self.state.load(Ordering::Acquire);
        if !matches!(
            state_of(word),
            BreakerState::Closed | BreakerState::HalfOpen
        ) {
            return false;
        }
        let tally = failure_rate.map(|rate| Tally {
            calls: 1_000_000,
            failures: (rate.clamp(0.0, 1.0) * 1_000_000.0) as u64,
            slow: 0,
        });
        if !self.transition(word, BreakerState::Open, tally) {
            return false;
        }
        // Backdate the opening so the wait left is the fleet's.
        let served = self.config.wait_in_open.saturating_sub(wait_left);
        let served = u64::try_from(served.as_nanos()).unwrap_or(u64::MAX);
        let opened = self.nanos_since_origin().saturating_sub(served);
        self.opened_at_nanos.store(opened, Ordering::Release);
        true
    }

    fn nanos_since_origin(&self) -> u64 {
        let elapsed = self.clock.now().saturating_duration_since(self.origin);
        u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
    }

    fn now_sec(&self) -> u64 {
        self.clock
            .now()
            .saturating_duration_since(self.origin)
            .as_secs()
    }

    /// Moves open → half-open after the wait, and half-open → open after its max wait.
    fn advance_time(&self) {
        let word = self.state.load(Ordering::Acquire);
        match state_of(word) {
            BreakerState::Open if self.open_wait_left() == Duration::ZERO => {
                self.transition(word, BreakerState::HalfOpen, None);
            }
            BreakerState::HalfOpen => {
                if let Some(max) = self.config.max_wait_in_half_open {
                    let since = self.half_open_since_nanos.load(Ordering::Acquire);
                    let waited = self.nanos_since_origin().saturating_sub(since);
                    if Duration::from_nanos(waited) >= max {
                        self.transition(word, BreakerState::Open, None);
                    }
                }
            }
            _ => {}
        }
    }

    fn open_wait_left(&self) -> Duration {
        let opened = self.opened_at_nanos.load(Ordering::Acquire);
        let waited = Duration::from_nanos(self.nanos_since_origin().saturating_sub(opened));
        self.config.wait_in_open.saturating_sub(waited)
    }

    #[inline]
    fn acquire(&self) -> Result<Grant> {
        let word = self.state.load(Ordering::Acquire);
        match state_of(word) {
            BreakerState::Closed | BreakerState::MetricsOnly | BreakerState::Disabled => {
                Ok(self.grant(word))
            }
            _ => self.acquire_slow(),
        }
    }

    #[inline]
    fn grant(&self, word: u64) -> Grant {
        let start =
            (self.timed && state_of(word) != BreakerState::Disabled).then(|| self.clock.now());
        Grant { word, start }
    }

    #[cold]
    fn acquire_slow(&self) -> Result<Grant> {
        self.advance_time();
        let word = self.state.load(Ordering::Acquire);
        let rejected = |retry_after: Option<Duration>| {
            self.not_permitted.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(name = %self.name, state = %state_of(word), "call not permitted");
            crate::events::emit(|| crate::events::GuardEvent {
                guard: crate::events::GuardKind::Breaker,
                name: &self.name,
                decision: crate::events::Decision::CallNotPermitted,
            });
            Err(GuardrailError::CircuitOpen {
                name: self.name.to_string(),
                retry_after,
            })
        };
        match state_of(word) {
            BreakerState::Closed | BreakerState::MetricsOnly | BreakerState::Disabled => {
                Ok(self.grant(word))
            }
            BreakerState::Open => rejected(Some(self.open_wait_left())),
            BreakerState::ForcedOpen => rejected(None),
            BreakerState::HalfOpen => {
                let generation = generation_of(word) & 0xFFFF_FFFF;
                let took = self.half_open_permits.fetch_update(
                    Ordering::AcqRel,
                    Ordering::Acquire,
                    |packed| {
                        let available = packed & 0xFFFF_FFFF;
                        (packed >> 32 == generation && available > 0).then(|| packed - 1)
                    },
                );
                match took {
                    Ok(_) => Ok(self.grant(word)),
                    // All trial calls are out; they will decide shortly.
                    Err(_) => rejected(Some(Duration::ZERO)),
                }
            }
        }
    }

    /// Gives back a half-open trial permit that was not used.
    fn release(&self, grant: Grant) {
        if state_of(grant.word) != BreakerState::HalfOpen {
            return;
        }
        let generation = generation_of(grant.word) & 0xFFFF_FFFF;
        let _ =
            self.half_open_permits
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |packed| {
                    (packed >> 32 == generation).then(|| packed + 1)
                });
    }

    #[inline]
    fn complete(&self, grant: Grant, outcome: CallOutcome) {
        let word = self.state.load(Ordering::Acquire);
        // A call that began under another state (or generation) says nothing about now.
        if generation_of(word) != generation_of(grant.word) {
            return;
        }
        let state = state_of(grant.word);
        if state == BreakerState::Disabled {
            return;
        }
        if outcome == CallOutcome::Ignored {
            self.release(grant);
            return;
        }
        if let Some(fleet) = self.fleet.get() {
            fleet.add(outcome == CallOutcome::Failure);
        }
        let mut flags = if outcome == CallOutcome::Failure {
            FAILED
        } else {
            0
        };
        let now = grant.start.map(|start| {
            let now = self.clock.now();
            if let Some(slow) = self.config.slow_call_duration
                && now.saturating_duration_since(start) >= slow
            {
                flags |= SLOW;
            }
            now
        });
        let now_sec = now.map_or(0, |n| n.saturating_duration_since(self.origin).as_secs());
        match state {
            BreakerState::Closed | BreakerState::MetricsOnly => {
                if flags == 0 && word & WARMING == 0 {
                    self.window.record_fast_success(now_sec);
                } else {
                    self.record_closed(word, flags, now_sec);
                }
            }
            BreakerState::HalfOpen => self.record_half_open(word, flags),
            _ => {}
        }
    }

    #[cold]
    fn record_closed(&self, word: u64, flags: u8, now_sec: u64) {
        let tally = self.window.record(flags, now_sec);
        if flags & FAILED != 0 {
            tracing::debug!(name = %self.name, slow = flags & SLOW != 0, "call failed");
        }
        if tally.calls < self.config.effective_minimum_calls() {
            return;
        }
        if word & WARMING != 0 {
            let _ = self.state.compare_exchange(
                word,
                word & !WARMING,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
        if state_of(word) == BreakerState::Closed && self.exceeds_thresholds(&tally) {
            self.transition(word, BreakerState::Open, Some(tally));
        }
    }

    fn record_half_open(&self, word: u64, flags: u8) {
        let decided = {
            let mut tally = self
                .half_open_tally
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if generation_of(self.state.load(Ordering::Acquire)) != generation_of(word) {
                return;
            }
            tally.add(flags);
            (tally.calls >= u64::from(self.config.half_open_calls)).then_some(*tally)
        };
        if let Some(tally) = decided {
            let to = if self.exceeds_thresholds(&tally) {
                BreakerState::Open
            } else {
                BreakerState::Closed
            };
            self.transition(word, to, Some(tally));
        }
    }

    fn exceeds_thresholds(&self, tally: &Tally) -> bool {
        tally.failure_rate() >= self.config.failure_rate_threshold
            || (self.config.slow_call_duration.is_some()
                && tally.slow_rate() >= self.config.slow_call_rate_threshold)
    }

    /// Moves from the state in `from` to `to`, unless another thread changed the state or
    /// generation first. The target state's structures are prepared under a lock before the
    /// new word is published, so no call sees the new state with stale counters.
    fn transition(&self, from: u64, to: BreakerState, tally: Option<Tally>) -> bool {
        let event = {
            let _lock = self
                .transition_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let current = self.state.load(Ordering::Acquire);
            if generation_of(current) != generation_of(from) || state_of(current) != state_of(from)
            {
                return false;
            }
            let generation = generation_of(current).wrapping_add(1) & (u64::MAX >> GEN_SHIFT);
            let mut next = (generation << GEN_SHIFT) | to.code();
            let now = self.nanos_since_origin();
            match to {
                BreakerState::Open => self.opened_at_nanos.store(now, Ordering::Release),
                BreakerState::HalfOpen => {
                    *self
                        .half_open_tally
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = Tally::default();
                    self.half_open_since_nanos.store(now, Ordering::Release);
                    self.half_open_permits.store(
                        ((generation & 0xFFFF_FFFF) << 32) | u64::from(self.config.half_open_calls),
                        Ordering::Release,
                    );
                }
                BreakerState::Closed | BreakerState::MetricsOnly => {
                    self.window.reset();
                    next |= WARMING;
                }
                BreakerState::Disabled | BreakerState::ForcedOpen => {}
            }
            self.state.store(next, Ordering::Release);
            StateTransition {
                name: Arc::clone(&self.name),
                from: state_of(current),
                to,
                failure_rate: tally.map(|t| t.failure_rate()),
                slow_call_rate: tally.map(|t| t.slow_rate()),
            }
        };
        self.announce(&event);
        true
    }

    fn announce(&self, event: &StateTransition) {
        crate::events::emit(|| crate::events::GuardEvent {
            guard: crate::events::GuardKind::Breaker,
            name: &event.name,
            decision: crate::events::Decision::BreakerTransition {
                from: event.from.as_str(),
                to: event.to.as_str(),
                failure_rate: event.failure_rate,
            },
        });
        match event.to {
            BreakerState::Open | BreakerState::ForcedOpen => tracing::warn!(
                name = %event.name,
                from = %event.from,
                to = %event.to,
                failure_rate = event.failure_rate,
                slow_call_rate = event.slow_call_rate,
                "circuit breaker state change"
            ),
            _ => tracing::info!(
                name = %event.name,
                from = %event.from,
                to = %event.to,
                failure_rate = event.failure_rate,
                slow_call_rate = event.slow_call_rate,
                "circuit breaker state change"
            ),
        }
        self.listeners.notify(event);
    }
}

/// Permission for one call; record its outcome or drop it to give the slot back.
///
/// [`BreakerPermit`] borrows its breaker; [`OwnedBreakerPermit`] holds an `Arc` of it and can
/// move into a spawned task.
#[must_use = "a permit dropped unrecorded gives its call back without an outcome"]
pub struct Permit<B: Deref<Target = CircuitBreaker>> {
    breaker: B,
    grant: Option<Grant>,
}

/// A permit that borrows its breaker.
pub type BreakerPermit<'a> = Permit<&'a CircuitBreaker>;

/// A permit that owns a reference to its breaker.
pub type OwnedBreakerPermit = Permit<Arc<CircuitBreaker>>;

impl<B: Deref<Target = CircuitBreaker>> Permit<B> {
    fn finish(&mut self, outcome: impl FnOnce(&CircuitBreaker) -> CallOutcome) {
        if let Some(grant) = self.grant.take() {
            let outcome = outcome(&self.breaker);
            self.breaker.complete(grant, outcome);
        }
    }

    /// The call worked.
    pub fn record_success(mut self) {
        self.finish(|_| CallOutcome::Success);
    }

    /// The call failed, whatever the error.
    pub fn record_failure(mut self) {
        self.finish(|_| CallOutcome::Failure);
    }

    /// The call returned `err`; the breaker's classifier decides how it counts.
    pub fn record_error(mut self, err: &GuardrailError) {
        self.finish(|b| (b.classifier)(err));
    }
}

impl<B: Deref<Target = CircuitBreaker>> Drop for Permit<B> {
    fn drop(&mut self) {
        if let Some(grant) = self.grant.take() {
            self.breaker.release(grant);
        }
    }
}

impl<B: Deref<Target = CircuitBreaker>> fmt::Debug for Permit<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("breaker", &self.breaker.name)
            .finish_non_exhaustive()
    }
}
