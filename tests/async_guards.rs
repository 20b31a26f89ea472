//! Async variants on tokio's paused clock: no test waits in real time.
#![cfg(feature = "async")]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use guardrails::prelude::*;
use guardrails::resilience::{
    BreakerConfig, BreakerState, Bulkhead, BulkheadConfig, CircuitBreaker, GuardEvent, GuardPolicy,
    RetryPolicy, guarded_execution_async, run_with_timeout_async,
};

fn transient() -> GuardrailError {
    std::io::Error::from(std::io::ErrorKind::ConnectionReset).into()
}

#[tokio::test(start_paused = true)]
async fn async_retry_sleeps_on_tokio_time_with_the_seed_schedule() {
    let start = tokio::time::Instant::now();
    let calls = AtomicU32::new(0);
    let err = RetryPolicy::new(RetryConfig::new())
        .unwrap()
        .call_async(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(transient())
        })
        .await
        .unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert!(matches!(
        err,
        GuardrailError::RetriesExhausted { attempts: 4, .. }
    ));
    // 1 + 2 + 4 s of backoff, on the paused clock.
    assert_eq!(start.elapsed(), Duration::from_secs(7));
}

#[tokio::test(start_paused = true)]
async fn async_retry_respects_the_budget() {
    let start = tokio::time::Instant::now();
    let calls = AtomicU32::new(0);
    let cfg = RetryConfig::new()
        .with_max_retries(10)
        .with_total_budget(Duration::from_secs(5));
    let _ = RetryPolicy::new(cfg)
        .unwrap()
        .call_async(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(transient())
        })
        .await;
    // Sleeps 1 and 2 fit (t = 3); 3 + 4 > 5, so it stops without sleeping.
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(start.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn with_timeout_cancels_the_future() {
    let dropped = Arc::new(AtomicU32::new(0));
    struct OnDrop(Arc<AtomicU32>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let guard = OnDrop(Arc::clone(&dropped));
    let err = run_with_timeout_async("hang", Duration::from_secs(2), async move {
        let _guard = guard;
        std::future::pending::<guardrails::Result<()>>().await
    })
    .await
    .unwrap_err();
    match err {
        GuardrailError::Timeout { elapsed, limit, .. } => {
            assert_eq!(limit, Duration::from_secs(2));
            assert_eq!(elapsed, Duration::from_secs(2));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(dropped.load(Ordering::SeqCst), 1, "the future was dropped");
}

#[tokio::test(start_paused = true)]
async fn async_bulkhead_waits_for_a_released_slot_then_gives_up() {
    let b = Arc::new(
        Bulkhead::new(
            "gpu",
            BulkheadConfig::new()
                .with_max_concurrent(1)
                .with_max_wait(Duration::from_secs(10)),
        )
        .unwrap(),
    );
    let holder = {
        let b = Arc::clone(&b);
        tokio::spawn(async move {
            b.call_async(async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                Ok(())
            })
            .await
        })
    };
    tokio::task::yield_now().await;
    let start = tokio::time::Instant::now();
    b.call_async(async { Ok(()) }).await.unwrap();
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(3),
        "got the slot when it was freed"
    );
    holder.await.unwrap().unwrap();

    let _slot = b.acquire_async().await.unwrap();
    let start = tokio::time::Instant::now();
    let err = b.acquire_async().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BulkheadFull);
    assert_eq!(start.elapsed(), Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn async_guarded_execution_composes_in_order() {
    use GuardEvent::*;
    let events = Arc::new(Mutex::new(Vec::new()));
    let e = Arc::clone(&events);
    let breaker = Arc::new(
        CircuitBreaker::new("dep", BreakerConfig::new().with_minimum_calls(2))
            .unwrap()
            .with_clock(guardrails::TokioClock),
    );
    let policy = GuardPolicy::new("dep")
        .with_retry(RetryPolicy::new(RetryConfig::new().with_max_retries(1)).unwrap())
        .with_breaker(Arc::clone(&breaker))
        .with_timeout(Duration::from_secs(1))
        .with_bulkhead(Arc::new(
            Bulkhead::new("dep", BulkheadConfig::new()).unwrap(),
        ))
        .on_event(move |ev| e.lock().unwrap().push(ev.clone()));
    let err = guarded_execution_async(
        || async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(())
        },
        &policy,
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RetriesExhausted);
    let one = |n| {
        vec![
            Attempt(n),
            BreakerPermitted,
            TimeoutStarted,
            BulkheadEntered,
            AttemptFinished { ok: false },
        ]
    };
    assert_eq!(*events.lock().unwrap(), [one(1), one(2)].concat());
    assert_eq!(
        breaker.state(),
        BreakerState::Open,
        "both timeouts were counted"
    );
}

/// The preflight is blocking code (a resource check can wait on a hung mount): under tokio
/// it runs on the blocking pool, never on the executor's thread, and its refusal still ends
/// the attempt.
#[tokio::test(flavor = "current_thread")]
async fn async_preflight_runs_off_the_executor_thread() {
    let executor = std::thread::current().id();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let refuse = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let r = Arc::clone(&refuse);
    let policy = GuardPolicy::new("load").with_preflight(move || {
        s.lock().unwrap().push(std::thread::current().id());
        if r.load(Ordering::SeqCst) {
            Err(GuardrailError::config("disk", "full"))
        } else {
            Ok(())
        }
    });
    assert_eq!(policy.call_async(|| async { Ok(1) }).await.unwrap(), 1);
    refuse.store(true, Ordering::SeqCst);
    let calls = AtomicU32::new(0);
    let err = policy
        .call_async(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(2)
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter().all(|t| *t != executor),
        "the preflight ran on the executor"
    );
}
