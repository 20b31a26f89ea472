//! What every guard decides, as one event type delivered to registered sinks.
//!
//! A guard that refuses, retries, trips, falls back, evicts or fails a check says so here
//! (and in a `tracing` event, as before). The primitives do not know who listens: metrics,
//! alert hooks and the history (`observe/`) subscribe, and so can a user. With no sink
//! subscribed, emitting costs one relaxed atomic load and builds nothing.
//!
//! Sinks are process-wide, as a `metrics` recorder or a `tracing` subscriber is: subscribe
//! once at start-up, keep the [`Subscription`] (dropping it unsubscribes). A sink runs on the
//! thread of the guard that decided, inside its call: keep it short and never block (hand
//! slow work to a queue, as the alert hooks do).
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use std::time::Duration;
//! use guardrails::events::{self, Decision, GuardKind};
//! use guardrails::resilience::{RateLimitConfig, RateLimiter};
//!
//! let seen = Arc::new(Mutex::new(Vec::new()));
//! let sink = Arc::clone(&seen);
//! let _subscription = events::subscribe(move |e| {
//!     if e.name == "doc-llm" {
//!         sink.lock().unwrap().push((e.guard, e.decision.label()));
//!     }
//! });
//! let limiter = RateLimiter::new("doc-llm", RateLimitConfig::per(1, Duration::from_secs(60)))?;
//! limiter.check()?;
//! assert!(limiter.check().is_err());
//! assert_eq!(*seen.lock().unwrap(), [(GuardKind::RateLimiter, "rate_limited")]);
//! # Ok::<(), guardrails::GuardrailError>(())
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

/// Which kind of guard decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum GuardKind {
    /// A circuit breaker (local or fleet-wide).
    Breaker,
    /// A fallback chain of breakers.
    Fallback,
    /// A retry policy.
    Retry,
    /// A timeout.
    Timeout,
    /// A rate limiter.
    RateLimiter,
    /// A bulkhead.
    Bulkhead,
    /// The cache.
    Cache,
    /// The resource guard.
    Resources,
    /// The LLM JSON guard.
    JsonGuard,
    /// Exactly-once effects.
    Idempotency,
    /// A pipeline stage (gates, quarantine).
    Stage,
    /// A supervisor (task failures, recovery actions, restarts, giving up).
    Supervisor,
}

impl GuardKind {
    /// The kind in snake case (`"rate_limiter"`), for labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Breaker => "breaker",
            Self::Fallback => "fallback",
            Self::Retry => "retry",
            Self::Timeout => "timeout",
            Self::RateLimiter => "rate_limiter",
            Self::Bulkhead => "bulkhead",
            Self::Cache => "cache",
            Self::Resources => "resources",
            Self::JsonGuard => "json_guard",
            Self::Idempotency => "idempotency",
            Self::Stage => "stage",
            Self::Supervisor => "supervisor",
        }
    }
}

/// What was decided.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Decision<'a> {
    /// A breaker changed state (`closed`, `open`, `half_open`, …).
    BreakerTransition {
        /// State before.
        from: &'static str,
        /// State after.
        to: &'static str,
        /// The failure rate that caused it, when rates did.
        failure_rate: Option<f64>,
    },
    /// A call was refused because the breaker is open.
    CallNotPermitted,
    /// A fallback chain served another alternative than its preferred one.
    Downshift {
        /// The alternative it prefers.
        preferred: &'a str,
        /// The one that answered.
        served: &'a str,
    },
    /// A failed attempt is retried after `delay`.
    Retry {
        /// The attempt that failed (1 = the first call).
        attempt: u32,
        /// The wait before the next.
        delay: Duration,
    },
    /// A retry loop that retried at least once ended (after [`RetriesExhausted`] when they
    /// ran out): the close of its retry window.
    ///
    /// [`RetriesExhausted`]: Decision::RetriesExhausted
    RetryEnded {
        /// Attempts made, the first included.
        attempts: u32,
        /// Whether the last attempt succeeded.
        succeeded: bool,
    },
    /// The retries ran out.
    RetriesExhausted {
        /// Attempts made.
        attempts: u32,
    },
    /// A call ran past its timeout.
    TimedOut {
        /// The timeout.
        after: Duration,
    },
    /// A rate limiter refused a call.
    RateLimited {
        /// When a call would be allowed.
        retry_after: Duration,
    },
    /// A bulkhead had no free slot.
    BulkheadFull {
        /// Its limit.
        max_concurrent: usize,
    },
    /// A cache entry was evicted for room.
    CacheEviction,
    /// Cache entries expired (their TTL).
    CacheExpiry {
        /// How many.
        count: u64,
    },
    /// The resource guard refused entry.
    LimitHit {
        /// The resource (`memory`, `disk`, `gpu_memory`, …).
        resource: &'a str,
    },
    /// The JSON guard repaired an answer into valid JSON.
    JsonRepaired,
    /// The JSON guard gave up and served its fallback (or an error).
    JsonFallback,
    /// A data or answer check failed.
    ValidationFailed {
        /// Which check.
        check: &'a str,
    },
    /// A stage's gate was judged.
    GateResult {
        /// The gate.
        gate: &'a str,
        /// Whether it passed.
        passed: bool,
        /// Whether a failure stops the stage.
        mandatory: bool,
    },
    /// An item was quarantined by a stage.
    Quarantined,
    /// What an idempotent effect's call came to: `executed`, `cached`, `in_progress`,
    /// `mismatch`, `failed`, `released` or `stale_fence`.
    Idempotency {
        /// The outcome.
        outcome: &'static str,
    },
    /// A supervised task failed.
    TaskFailed {
        /// The attempt (1 = the first run).
        attempt: u32,
        /// The failure kind its recovery actions are looked up by.
        kind: &'a str,
    },
    /// A supervisor ran a recovery action.
    RecoveryAction {
        /// The action.
        action: &'a str,
        /// Whether it succeeded.
        ok: bool,
    },
    /// A supervisor restarts its task after `delay`.
    Restart {
        /// The attempt about to run.
        attempt: u32,
        /// The wait before it.
        delay: Duration,
    },
    /// A supervisor gave up (restart intensity exceeded, or a fatal failure).
    GaveUp,
}

impl Decision<'_> {
    /// The decision in snake case (`"breaker_transition"`), for labels.
    pub fn label(&self) -> &'static str {
        match self {
            Self::BreakerTransition { .. } => "breaker_transition",
            Self::CallNotPermitted => "call_not_permitted",
            Self::Downshift { .. } => "downshift",
            Self::Retry { .. } => "retry",
            Self::RetryEnded { .. } => "retry_ended",
            Self::RetriesExhausted { .. } => "retries_exhausted",
            Self::TimedOut { .. } => "timed_out",
            Self::RateLimited { .. } => "rate_limited",
            Self::BulkheadFull { .. } => "bulkhead_full",
            Self::CacheEviction => "cache_eviction",
            Self::CacheExpiry { .. } => "cache_expiry",
            Self::LimitHit { .. } => "limit_hit",
            Self::JsonRepaired => "json_repaired",
            Self::JsonFallback => "json_fallback",
            Self::ValidationFailed { .. } => "validation_failed",
            Self::GateResult { .. } => "gate_result",
            Self::Quarantined => "quarantined",
            Self::Idempotency { .. } => "idempotency",
            Self::TaskFailed { .. } => "task_failed",
            Self::RecoveryAction { .. } => "recovery_action",
            Self::Restart { .. } => "restart",
            Self::GaveUp => "gave_up",
        }
    }
}

/// One decision of one guard.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardEvent<'a> {
    /// The kind of guard.
    pub guard: GuardKind,
    /// The guard's name (a breaker's, a limiter's, a stage's; the cache's is `"cache"`).
    pub name: &'a str,
    /// What it decided.
    pub decision: Decision<'a>,
}

type Sink = Arc<dyn Fn(&GuardEvent<'_>) + Send + Sync>;

static ANY: AtomicBool = AtomicBool::new(false);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static SINKS: RwLock<Vec<(u64, Sink)>> = RwLock::new(Vec::new());

/// A subscribed sink; dropping it unsubscribes the sink.
#[must_use = "dropping the subscription unsubscribes the sink at once"]
#[derive(Debug)]
pub struct Subscription {
    id: u64,
}

impl Subscription {
    /// Keeps the sink subscribed for the rest of the process.
    pub fn forever(self) {
        std::mem::forget(self);
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut sinks = SINKS.write().unwrap_or_else(PoisonError::into_inner);
        sinks.retain(|(id, _)| *id != self.id);
        ANY.store(!sinks.is_empty(), Ordering::Release);
    }
}

/// Subscribes `sink` to every guard's decisions, in this process.
pub fn subscribe<F>(sink: F) -> Subscription
where
    F: Fn(&GuardEvent<'_>) + Send + Sync + 'static,
{
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let mut sinks = SINKS.write().unwrap_or_else(PoisonError::into_inner);
    sinks.push((id, Arc::new(sink)));
    ANY.store(true, Ordering::Release);
    Subscription { id }
}

/// Whether any sink listens (guards skip building events when none does).
#[inline]
pub fn enabled() -> bool {
    ANY.load(Ordering::Relaxed)
}

/// Delivers the event `make` builds to every sink; builds nothing when none listens.
#[inline]
pub(crate) fn emit<'a>(make: impl FnOnce() -> GuardEvent<'a>) {
    if enabled() {
        deliver(&make());
    }
}

#[cold]
fn deliver(event: &GuardEvent<'_>) {
    // Sinks run outside the lock, so a sink may subscribe another or emit itself.
    let sinks: Vec<Sink> = SINKS
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|(_, s)| Arc::clone(s))
        .collect();
    for sink in sinks {
        // A sink that panics must not break the guarded call that decided.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink(event)));
    }
}
