//! Retry schedules, jitter bounds, the time budget and error handling, all on ManualClock.

use std::cell::Cell;
use std::io;
use std::time::Duration;

use guardrails::prelude::*;
use guardrails::resilience::{RetryPolicy, retry_with_backoff};
use proptest::prelude::*;

fn transient() -> GuardrailError {
    io::Error::from(io::ErrorKind::ConnectionReset).into()
}

fn policy(config: RetryConfig, clock: &ManualClock) -> RetryPolicy {
    RetryPolicy::new(config).unwrap().with_clock(clock.clone())
}

#[test]
fn succeeds_after_transient_failures_with_the_seed_schedule() {
    let clock = ManualClock::new();
    let calls = Cell::new(0);
    let v = policy(RetryConfig::new(), &clock)
        .call(|| {
            calls.set(calls.get() + 1);
            if calls.get() <= 3 {
                Err(transient())
            } else {
                Ok(42)
            }
        })
        .unwrap();
    assert_eq!(v, 42);
    assert_eq!(calls.get(), 4);
    assert_eq!(clock.sleeps(), [1, 2, 4].map(Duration::from_secs));
}

#[test]
fn exhaustion_wraps_the_last_error_with_the_attempt_count() {
    let clock = ManualClock::new();
    let calls = Cell::new(0);
    let err = policy(RetryConfig::new().with_max_retries(2), &clock)
        .call(|| -> guardrails::Result<()> {
            calls.set(calls.get() + 1);
            Err(GuardrailError::Timeout {
                operation: format!("call {}", calls.get()),
                elapsed: Duration::from_secs(2),
                limit: Duration::from_secs(1),
            })
        })
        .unwrap_err();
    assert_eq!(calls.get(), 3);
    match &err {
        GuardrailError::RetriesExhausted { attempts, last } => {
            assert_eq!(*attempts, 3);
            assert!(last.to_string().contains("call 3"), "{last}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(err.class(), ErrorClass::Recoverable);
    assert_eq!(clock.sleeps(), [1, 2].map(Duration::from_secs));
}

#[test]
fn non_retryable_errors_return_at_once_unchanged() {
    let clock = ManualClock::new();
    let calls = Cell::new(0);
    let err = policy(RetryConfig::new(), &clock)
        .call(|| -> guardrails::Result<()> {
            calls.set(calls.get() + 1);
            Err(io::Error::from(io::ErrorKind::NotFound).into())
        })
        .unwrap_err();
    assert_eq!(calls.get(), 1);
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(clock.sleeps().is_empty());
}

#[test]
fn custom_predicate_replaces_the_class_rule() {
    let clock = ManualClock::new();
    let calls = Cell::new(0);
    // Retry a validation error (say, a flaky upstream export) but nothing else.
    let p = policy(RetryConfig::new().with_max_retries(1), &clock)
        .retry_if(|e| e.kind() == ErrorKind::DataIntegrity);
    let err = p
        .call(|| -> guardrails::Result<()> {
            calls.set(calls.get() + 1);
            Err(GuardrailError::DataIntegrity {
                path: "x.csv".into(),
                check: "rows".into(),
                expected: ">0".into(),
                found: "0".into(),
            })
        })
        .unwrap_err();
    assert_eq!(calls.get(), 2);
    assert_eq!(err.kind(), ErrorKind::RetriesExhausted);
    assert!(!p.should_retry(&transient()));
}

#[test]
fn budget_stops_before_a_sleep_that_would_end_past_it() {
    let clock = ManualClock::new();
    let calls = Cell::new(0);
    // Each attempt takes 1 s; delays 1, 2, 4, 8. Budget 10 s:
    // t=1 fail, sleep 1 -> t=2; t=3 fail, sleep 2 -> t=5; t=6 fail, 6+4=10 <= 10 sleep -> t=10;
    // t=11 fail, 11+8 > 10: give up without sleeping.
    let cfg = RetryConfig::new()
        .with_max_retries(10)
        .with_total_budget(Duration::from_secs(10));
    let err = policy(cfg, &clock)
        .call(|| -> guardrails::Result<()> {
            calls.set(calls.get() + 1);
            clock.advance(Duration::from_secs(1));
            Err(transient())
        })
        .unwrap_err();
    assert_eq!(calls.get(), 4);
    assert_eq!(clock.sleeps(), [1, 2, 4].map(Duration::from_secs));
    assert_eq!(clock.elapsed(), Duration::from_secs(11));
    assert!(matches!(
        err,
        GuardrailError::RetriesExhausted { attempts: 4, .. }
    ));
}

#[test]
fn retry_on_result_returns_the_last_value_when_exhausted() {
    let clock = ManualClock::new();
    let calls = Cell::new(0);
    let p = policy(RetryConfig::new().with_max_retries(2), &clock);
    let v = p
        .call_with_result_check(
            || {
                calls.set(calls.get() + 1);
                Ok(503)
            },
            |status| *status == 503,
        )
        .unwrap();
    assert_eq!((v, calls.get()), (503, 3));

    calls.set(0);
    let v = p
        .call_with_result_check(
            || {
                calls.set(calls.get() + 1);
                Ok(if calls.get() < 2 { 503 } else { 200 })
            },
            |status| *status == 503,
        )
        .unwrap();
    assert_eq!((v, calls.get()), (200, 2));
}

#[test]
fn invalid_config_is_refused_before_any_call() {
    let err = retry_with_backoff(&RetryConfig::new().with_base(f64::NAN), || Ok(())).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
}

#[test]
fn seeded_jitter_is_reproducible() {
    let run = |seed| {
        let clock = ManualClock::new();
        let _ = policy(RetryConfig::new().with_jitter(Jitter::Full), &clock)
            .with_seed(seed)
            .call(|| -> guardrails::Result<()> { Err(transient()) });
        clock.sleeps()
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn jittered_delays_stay_within_their_bounds(
        seed in any::<u64>(),
        retries in 1u32..12,
        initial_ms in 1u64..5_000,
        max_ms in 5_000u64..120_000,
        base in 1.0f64..4.0,
        jitter in prop_oneof![Just(Jitter::None), Just(Jitter::Full), Just(Jitter::Equal)],
    ) {
        let cfg = RetryConfig::new()
            .with_max_retries(retries)
            .with_initial_delay(Duration::from_millis(initial_ms))
            .with_max_delay(Duration::from_millis(max_ms))
            .with_base(base)
            .with_jitter(jitter);
        let clock = ManualClock::new();
        let _ = policy(cfg.clone(), &clock)
            .with_seed(seed)
            .call(|| -> guardrails::Result<()> { Err(transient()) });
        let sleeps = clock.sleeps();
        prop_assert_eq!(sleeps.len() as u32, retries);
        for (n, slept) in sleeps.into_iter().enumerate() {
            let nominal = cfg.delay_for(n as u32);
            prop_assert!(nominal <= cfg.max_delay);
            let low = match jitter {
                Jitter::None => nominal,
                Jitter::Full => Duration::ZERO,
                Jitter::Equal => nominal / 2,
            };
            prop_assert!(slept >= low && slept <= nominal, "retry {}: {:?} not in {:?}..={:?}", n, slept, low, nominal);
        }
    }

    #[test]
    fn no_sleep_ever_ends_past_the_budget(
        seed in any::<u64>(),
        budget_ms in 1u64..20_000,
        work_ms in 0u64..3_000,
    ) {
        let cfg = RetryConfig::new()
            .with_max_retries(50)
            .with_initial_delay(Duration::from_millis(100))
            .with_jitter(Jitter::Equal)
            .with_total_budget(Duration::from_millis(budget_ms));
        let clock = ManualClock::new();
        let _ = policy(cfg, &clock).with_seed(seed).call(|| -> guardrails::Result<()> {
            clock.advance(Duration::from_millis(work_ms));
            Err(transient())
        });
        // Every sleep began and ended inside the budget, so the last one did too; the time
        // after it is one attempt's work at most.
        let slept: Duration = clock.sleeps().iter().sum();
        let attempts = clock.sleeps().len() as u64 + 1;
        prop_assert_eq!(clock.elapsed(), slept + Duration::from_millis(work_ms * attempts));
        prop_assert!(clock.elapsed() <= Duration::from_millis(budget_ms + work_ms));
    }
}

/// The async loop waits on the policy's clock: a manual clock records the delays and the
/// loop never touches tokio's timer (this test runs without paused time).
#[cfg(feature = "async")]
#[tokio::test]
async fn async_retry_waits_on_the_injected_clock() {
    let clock = ManualClock::new();
    let policy = RetryPolicy::new(RetryConfig::new().with_initial_delay(Duration::from_secs(10)))
        .unwrap()
        .with_clock(clock.clone());
    let calls = std::sync::atomic::AtomicU32::new(0);
    let start = std::time::Instant::now();
    let v = policy
        .call_async(|| async {
            if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
                Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into())
            } else {
                Ok(7)
            }
        })
        .await
        .unwrap();
    assert_eq!(v, 7);
    assert_eq!(
        clock.sleeps(),
        [Duration::from_secs(10), Duration::from_secs(20)]
    );
    assert!(start.elapsed() < Duration::from_secs(5));
}
