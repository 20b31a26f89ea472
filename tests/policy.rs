//! guarded_execution: composition order observed through events, each guard's effect.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use guardrails::prelude::*;
use guardrails::resilience::{
    BreakerConfig, BreakerState, Bulkhead, BulkheadConfig, CircuitBreaker, GuardEvent, GuardPolicy,
    RateLimitConfig, RateLimiter, RetryPolicy, guarded_execution,
};

fn recorder() -> (
    Arc<Mutex<Vec<GuardEvent>>>,
    impl Fn(&GuardEvent) + Send + Sync + 'static,
) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let e = Arc::clone(&events);
    (events, move |ev: &GuardEvent| {
        e.lock().unwrap().push(ev.clone())
    })
}

fn full_policy(clock: &ManualClock) -> GuardPolicy {
    GuardPolicy::new("op")
        .with_retry(
            RetryPolicy::new(RetryConfig::new())
                .unwrap()
                .with_clock(clock.clone()),
        )
        .with_preflight(|| Ok(()))
        .with_breaker(Arc::new(
            CircuitBreaker::new("op", BreakerConfig::new())
                .unwrap()
                .with_clock(clock.clone()),
        ))
        .with_rate_limiter(Arc::new(
            RateLimiter::new("op", RateLimitConfig::new())
                .unwrap()
                .with_clock(clock.clone()),
        ))
        .with_timeout(Duration::from_secs(60))
        .with_bulkhead(Arc::new(
            Bulkhead::new("op", BulkheadConfig::new()).unwrap(),
        ))
}

#[test]
fn guards_run_in_the_documented_order_on_every_attempt() {
    use GuardEvent::*;
    let clock = ManualClock::new();
    let (events, listener) = recorder();
    let policy = full_policy(&clock).on_event(listener);
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    let v = guarded_execution(
        move || {
            if c.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into())
            } else {
                Ok("done")
            }
        },
        &policy,
    )
    .unwrap();
    assert_eq!(v, "done");
    let one = |n, ok| {
        vec![
            Attempt(n),
            PreflightPassed,
            BreakerPermitted,
            RateAllowed,
            TimeoutStarted,
            BulkheadEntered,
            AttemptFinished { ok },
        ]
    };
    let expected: Vec<GuardEvent> = [one(1, false), one(2, true)].concat();
    assert_eq!(*events.lock().unwrap(), expected);
    assert_eq!(
        clock.sleeps(),
        [Duration::from_secs(1)],
        "one retry, one backoff sleep"
    );
}

#[test]
fn failed_preflight_skips_the_call_and_is_not_retried() {
    use GuardEvent::*;
    let clock = ManualClock::new();
    let (events, listener) = recorder();
    let policy = full_policy(&clock)
        .with_preflight(|| {
            Err(GuardrailError::ResourceExhausted {
                resource: "disk /data".into(),
                used: 10.0,
                limit: 50.0,
                unit: "GB free".into(),
            })
        })
        .on_event(listener);
    let err = policy
        .call(|| -> guardrails::Result<()> { panic!("must not run") })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
    assert_eq!(
        *events.lock().unwrap(),
        [Attempt(1), AttemptFinished { ok: false }]
    );
}

#[test]
fn open_breaker_ends_the_retries_at_once() {
    let clock = ManualClock::new();
    let breaker = Arc::new(
        CircuitBreaker::new("dep", BreakerConfig::new())
            .unwrap()
            .with_clock(clock.clone()),
    );
    breaker.force_open();
    let policy = GuardPolicy::new("dep")
        .with_retry(
            RetryPolicy::new(RetryConfig::new())
                .unwrap()
                .with_clock(clock.clone()),
        )
        .with_breaker(Arc::clone(&breaker));
    let err = policy.call(|| Ok(())).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CircuitOpen);
    assert!(clock.sleeps().is_empty());
}

#[test]
fn rate_limited_attempts_are_retried_and_not_counted_by_the_breaker() {
    let clock = ManualClock::new();
    let breaker = Arc::new(
        CircuitBreaker::new(
            "dep",
            BreakerConfig::new()
                .with_minimum_calls(1)
                .with_half_open_calls(1),
        )
        .unwrap()
        .with_clock(clock.clone()),
    );
    let limiter = Arc::new(
        RateLimiter::new("dep", RateLimitConfig::per(1, Duration::from_secs(1)))
            .unwrap()
            .with_clock(clock.clone()),
    );
    let policy = GuardPolicy::new("dep")
        .with_retry(
            RetryPolicy::new(RetryConfig::new())
                .unwrap()
                .with_clock(clock.clone()),
        )
        .with_breaker(Arc::clone(&breaker))
        .with_rate_limiter(limiter);
    policy.call(|| Ok(())).unwrap();
    // The second call is limited at once, sleeps 1 s (the first backoff) and goes through.
    policy.call(|| Ok(())).unwrap();
    assert_eq!(clock.sleeps(), [Duration::from_secs(1)]);
    let m = breaker.metrics();
    assert_eq!(
        (m.state, m.buffered_calls, m.failed_calls),
        (BreakerState::Closed, 2, 0)
    );
}

#[test]
fn timeout_applies_per_attempt_and_feeds_the_breaker() {
    let breaker =
        Arc::new(CircuitBreaker::new("slow", BreakerConfig::new().with_minimum_calls(2)).unwrap());
    let policy = GuardPolicy::new("slow")
        .with_breaker(Arc::clone(&breaker))
        .with_timeout(Duration::from_millis(20));
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..2 {
        let rx = Arc::clone(&rx);
        let err = policy
            .call(move || {
                let _ = rx.lock().unwrap().recv();
                Ok(())
            })
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
    }
    assert_eq!(breaker.state(), BreakerState::Open);
    drop(tx);
}

#[test]
fn empty_policy_just_calls() {
    assert_eq!(GuardPolicy::new("plain").call(|| Ok(3)).unwrap(), 3);
}

#[cfg(target_os = "linux")]
#[test]
fn resource_check_stops_attempts_past_a_limit() {
    use guardrails::resource::ResourceMonitor;
    let calls = Arc::new(AtomicU32::new(0));
    let strict =
        Arc::new(ResourceMonitor::new(ResourceLimits::new().with_max_memory_bytes(1)).unwrap());
    let policy = GuardPolicy::new("train").with_resource_check(strict, None);
    let c = Arc::clone(&calls);
    let err = policy
        .call(move || {
            c.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    let relaxed = Arc::new(ResourceMonitor::new(ResourceLimits::new()).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let policy =
        GuardPolicy::new("train").with_resource_check(relaxed, Some(dir.path().to_path_buf()));
    // The default minimum of 50 GB free may not hold on a small test disk; whichever way it
    // goes, the answer is a decision about resources, never a panic.
    match policy.call(|| Ok(1)) {
        Ok(v) => assert_eq!(v, 1),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ResourceExhausted),
    }
}
