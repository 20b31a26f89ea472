//! Bulkhead and rate limiter.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use guardrails::prelude::*;
use guardrails::resilience::{Bulkhead, BulkheadConfig, RateLimitConfig, RateLimiter};

#[test]
fn bulkhead_never_exceeds_its_limit_under_contention() {
    let bulkhead =
        Arc::new(Bulkhead::new("gpu", BulkheadConfig::new().with_max_concurrent(3)).unwrap());
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let rejected = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (b, running, peak, rejected, barrier) = (
                Arc::clone(&bulkhead),
                Arc::clone(&running),
                Arc::clone(&peak),
                Arc::clone(&rejected),
                Arc::clone(&barrier),
            );
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..2_000 {
                    let r = b.call(|| {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        std::hint::spin_loop();
                        running.fetch_sub(1, Ordering::SeqCst);
                        Ok(())
                    });
                    if let Err(e) = r {
                        assert_eq!(e.kind(), ErrorKind::BulkheadFull);
                        assert_eq!(e.class(), ErrorClass::Retryable);
                        rejected.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert!(peak.load(Ordering::SeqCst) <= 3);
    assert_eq!(bulkhead.in_use(), 0);
    assert_eq!(bulkhead.available(), 3);
}

#[test]
fn bulkhead_waits_for_a_slot_within_max_wait() {
    let bulkhead = Arc::new(
        Bulkhead::new(
            "io",
            BulkheadConfig::new()
                .with_max_concurrent(1)
                .with_max_wait(Duration::from_secs(30)),
        )
        .unwrap(),
    );
    let (taken_tx, taken_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = {
        let b = Arc::clone(&bulkhead);
        std::thread::spawn(move || {
            let _slot = b.try_acquire().unwrap();
            taken_tx.send(()).unwrap();
            release_rx.recv().unwrap();
        })
    };
    taken_rx.recv().unwrap();
    assert!(bulkhead.try_acquire().is_err());
    let waiter = {
        let b = Arc::clone(&bulkhead);
        std::thread::spawn(move || b.call(|| Ok(Instant::now())))
    };
    release_tx.send(()).unwrap();
    holder.join().unwrap();
    // The waiter got the slot once it was freed, long before its 30 s wait ran out.
    assert!(waiter.join().unwrap().is_ok());
}

#[test]
fn bulkhead_without_wait_refuses_at_once_and_config_is_validated() {
    let b = Bulkhead::new("x", BulkheadConfig::new().with_max_concurrent(1)).unwrap();
    let _slot = b.acquire().unwrap();
    match b.acquire().unwrap_err() {
        GuardrailError::BulkheadFull {
            name,
            max_concurrent,
        } => {
            assert_eq!((name.as_str(), max_concurrent), ("x", 1))
        }
        other => panic!("unexpected {other:?}"),
    }
    let err = Bulkhead::new("x", BulkheadConfig::new().with_max_concurrent(0)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
}

#[test]
fn rate_limiter_allows_the_burst_then_the_rate() {
    let clock = ManualClock::new();
    let limiter = RateLimiter::new(
        "api",
        RateLimitConfig::per(10, Duration::from_secs(1)).with_burst(3),
    )
    .unwrap()
    .with_clock(clock.clone());
    for _ in 0..3 {
        limiter.check().unwrap();
    }
    let err = limiter.check().unwrap_err();
    assert_eq!(err.class(), ErrorClass::Retryable);
    match err {
        GuardrailError::RateLimited { name, retry_after } => {
            assert_eq!(name, "api");
            assert_eq!(retry_after, Duration::from_millis(100));
        }
        other => panic!("unexpected {other:?}"),
    }
    // Over 10 s, exactly 100 more calls are allowed.
    let mut allowed = 0;
    for _ in 0..1_000 {
        clock.advance(Duration::from_millis(10));
        if limiter.call(|| Ok(())).is_ok() {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 100);
}

#[test]
fn rate_limiter_on_the_real_clock_refuses_past_the_burst() {
    let limiter =
        RateLimiter::new("real", RateLimitConfig::per(5, Duration::from_secs(3600))).unwrap();
    let ok = (0..20).filter(|_| limiter.check().is_ok()).count();
    assert_eq!(ok, 5);
}

#[test]
fn rate_limit_and_bulkhead_sections_load_and_validate() {
    let cfg: GuardrailsConfig = r#"
        [bulkheads.gpu]
        max_concurrent = 2
        max_wait = "5s"

        [rate_limits.openai]
        rate = 60
        period = "1m"
        burst = 5
    "#
    .parse()
    .unwrap();
    assert_eq!(cfg.bulkheads["gpu"].max_concurrent, 2);
    assert_eq!(cfg.rate_limits["openai"].period, Duration::from_secs(60));
    let limiter = RateLimiter::new("openai", cfg.rate_limits["openai"].clone()).unwrap();
    assert_eq!(limiter.config().burst, Some(5));

    for (text, field) in [
        (
            "[bulkheads.gpu]\nmax_concurrent = 0\n",
            "bulkheads.gpu.max_concurrent",
        ),
        ("[rate_limits.api]\nrate = 0\n", "rate_limits.api.rate"),
        ("[rate_limits.api]\nburst = 0\n", "rate_limits.api.burst"),
        (
            "[rate_limits.api]\nperiod = \"0s\"\n",
            "rate_limits.api.period",
        ),
    ] {
        match text.parse::<GuardrailsConfig>().unwrap_err() {
            GuardrailError::Config { field: f, .. } => assert_eq!(f, field, "{text}"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
