//! The tower layers around real tower services.
#![cfg(feature = "tower")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use guardrails::prelude::*;
use guardrails::resilience::{
    BreakerConfig, BreakerState, Bulkhead, BulkheadConfig, CircuitBreaker, RateLimitConfig,
    RateLimiter,
};
use guardrails::tower::{BulkheadLayer, CircuitBreakerLayer, RateLimitLayer};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

#[tokio::test]
async fn breaker_layer_records_outcomes_and_refuses_when_open() {
    let clock = ManualClock::new();
    let breaker = Arc::new(
        CircuitBreaker::new("model", BreakerConfig::new().with_minimum_calls(3))
            .unwrap()
            .with_clock(clock.clone()),
    );
    let reached = Arc::new(AtomicU32::new(0));
    let r = Arc::clone(&reached);
    // The inner service speaks tower's BoxError; guard errors inside it survive the trip.
    let mut svc = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new(Arc::clone(&breaker)))
        .service_fn(move |_: ()| {
            r.fetch_add(1, Ordering::SeqCst);
            async {
                Err::<(), BoxError>(Box::new(GuardrailError::Timeout {
                    operation: "generate".into(),
                    elapsed: Duration::from_secs(31),
                    limit: Duration::from_secs(30),
                }))
            }
        });
    for _ in 0..3 {
        let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout);
    }
    assert_eq!(breaker.state(), BreakerState::Open);
    let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CircuitOpen);
    assert_eq!(
        reached.load(Ordering::SeqCst),
        3,
        "the refused call never reached the service"
    );
}

#[tokio::test]
async fn bulkhead_layer_holds_a_slot_for_the_whole_call() {
    let bulkhead =
        Arc::new(Bulkhead::new("gpu", BulkheadConfig::new().with_max_concurrent(1)).unwrap());
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let release_rx = Arc::new(tokio::sync::Mutex::new(Some(release_rx)));
    let svc = ServiceBuilder::new()
        .layer(BulkheadLayer::new(Arc::clone(&bulkhead)))
        .service_fn(move |wait: bool| {
            let rx = Arc::clone(&release_rx);
            async move {
                if wait && let Some(rx) = rx.lock().await.take() {
                    let _ = rx.await;
                }
                Ok::<_, GuardrailError>("done")
            }
        });
    let first = tokio::spawn(svc.clone().oneshot(true));
    while bulkhead.in_use() == 0 {
        tokio::task::yield_now().await;
    }
    let err = svc.clone().oneshot(false).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BulkheadFull);
    release_tx.send(()).unwrap();
    assert_eq!(first.await.unwrap().unwrap(), "done");
    assert_eq!(bulkhead.in_use(), 0);
    assert_eq!(svc.oneshot(false).await.unwrap(), "done");
}

#[tokio::test]
async fn rate_limit_layer_refuses_past_the_rate() {
    let clock = ManualClock::new();
    let limiter = Arc::new(
        RateLimiter::new("api", RateLimitConfig::per(2, Duration::from_secs(1)))
            .unwrap()
            .with_clock(clock.clone()),
    );
    let svc = ServiceBuilder::new()
        .layer(RateLimitLayer::new(limiter))
        .service_fn(|x: u32| async move { Ok::<_, GuardrailError>(x * 2) });
    assert_eq!(svc.clone().oneshot(1).await.unwrap(), 2);
    assert_eq!(svc.clone().oneshot(2).await.unwrap(), 4);
    match svc.clone().oneshot(3).await.unwrap_err() {
        GuardrailError::RateLimited { retry_after, .. } => {
            assert_eq!(retry_after, Duration::from_millis(500))
        }
        other => panic!("unexpected {other:?}"),
    }
    clock.advance(Duration::from_millis(500));
    assert_eq!(svc.oneshot(3).await.unwrap(), 6);
}

#[test]
fn foreign_boxed_errors_become_external() {
    let boxed: BoxError = Box::new(std::fmt::Error);
    let err = GuardrailError::from(boxed);
    assert_eq!(err.kind(), ErrorKind::External);
    assert_eq!(err.class(), ErrorClass::Fatal);
}
