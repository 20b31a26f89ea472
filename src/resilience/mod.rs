//! Timeouts, retries and the other guards that keep a call from taking a pipeline down.
//!
//! | component | what it guards against |
//! |---|---|
//! | [`timeout`] | work that runs too long: deadlines, blocking closures, child processes |
//! | [`retry`] | transient failures: exponential backoff with jitter and a time budget |
//! | [`bulkhead`] | too many calls at once: a concurrency limit with a bounded wait |
//! | [`rate_limit`] | too many calls per second: GCRA through governor |
//! | [`policy`] | all of the above around one call: [`guarded_execution`] |
//! | [`breaker`] | a failing dependency: stop calling it, probe, recover; per-name registry, fallback chains |

pub mod breaker;
pub mod bulkhead;
pub mod policy;
pub mod rate_limit;
pub mod retry;
pub mod timeout;

pub use breaker::{
    BreakerConfig, BreakerMetrics, BreakerOverride, BreakerPermit, BreakerRegistry,
    BreakerRegistryConfig, BreakerState, CallOutcome, CircuitBreaker, Downshift, FallbackChain,
    FleetBreaker, FleetConfig, FleetView, OwnedBreakerPermit, Permit, Served, SharedBreakerState,
    StateTransition, WindowKind,
};
pub use bulkhead::{Bulkhead, BulkheadConfig, BulkheadPermit, OwnedBulkheadPermit};
#[cfg(feature = "async")]
pub use policy::guarded_execution_async;
pub use policy::{GuardEvent, GuardPolicy, guarded_execution};
pub use rate_limit::{RateLimitConfig, RateLimiter, SharedRateState};
pub use retry::{Jitter, RetryConfig, RetryPolicy, retry_with_backoff};
pub use timeout::{
    CommandOutput, TimeoutHandler, run_command_with_grace, run_command_with_timeout,
    run_with_timeout,
};
#[cfg(feature = "async")]
#[allow(deprecated)]
pub use timeout::{run_with_timeout_async, with_timeout};
