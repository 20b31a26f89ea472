//! The breaker's state machine on ManualClock, its windows, permits, listeners, registry
//! and fallback chain.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use guardrails::prelude::*;
use guardrails::resilience::{
    BreakerConfig, BreakerOverride, BreakerRegistry, BreakerRegistryConfig, BreakerState,
    CallOutcome, CircuitBreaker, FallbackChain, StateTransition, WindowKind,
};

fn failure() -> GuardrailError {
    std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into()
}

fn fail(b: &CircuitBreaker) -> guardrails::Result<()> {
    b.call(|| Err(failure()))
}

fn succeed(b: &CircuitBreaker) -> guardrails::Result<()> {
    b.call(|| Ok(()))
}

fn small(
    clock: &ManualClock,
    config: BreakerConfig,
) -> (CircuitBreaker, Arc<Mutex<Vec<StateTransition>>>) {
    let b = CircuitBreaker::new("dep", config)
        .unwrap()
        .with_clock(clock.clone());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    b.on_state_change(move |t| s.lock().unwrap().push(t.clone()));
    (b, seen)
}

fn transitions(seen: &Mutex<Vec<StateTransition>>) -> Vec<(BreakerState, BreakerState)> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|t| (t.from, t.to))
        .collect()
}

fn count_config() -> BreakerConfig {
    BreakerConfig::new()
        .with_window(WindowKind::CountBased, 10)
        .with_minimum_calls(4)
        .with_failure_rate_threshold(0.5)
        .with_wait_in_open(Duration::from_secs(30))
        .with_half_open_calls(3)
}

#[test]
fn full_cycle_closed_open_half_open_closed() {
    use BreakerState::*;
    let clock = ManualClock::new();
    let (b, seen) = small(&clock, count_config());
    assert_eq!(b.state(), Closed);
    succeed(&b).unwrap();
    succeed(&b).unwrap();
    fail(&b).unwrap_err();
    assert_eq!(b.state(), Closed, "3 calls are under the minimum of 4");
    fail(&b).unwrap_err(); // 2 of 4 failed = 50 %
    assert_eq!(b.state(), Open);

    let err = succeed(&b).unwrap_err();
    match &err {
        GuardrailError::CircuitOpen { name, retry_after } => {
            assert_eq!(name, "dep");
            assert_eq!(*retry_after, Some(Duration::from_secs(30)));
        }
        other => panic!("unexpected {other:?}"),
    }
    clock.advance(Duration::from_secs(10));
    match succeed(&b).unwrap_err() {
        GuardrailError::CircuitOpen { retry_after, .. } => {
            assert_eq!(retry_after, Some(Duration::from_secs(20)))
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(b.metrics().not_permitted_calls, 2);

    clock.advance(Duration::from_secs(20));
    assert_eq!(b.state(), HalfOpen);
    for _ in 0..3 {
        succeed(&b).unwrap();
    }
    assert_eq!(b.state(), Closed);
    assert_eq!(
        b.metrics().buffered_calls,
        0,
        "closing starts a fresh window"
    );
    assert_eq!(
        transitions(&seen),
        [(Closed, Open), (Open, HalfOpen), (HalfOpen, Closed)]
    );
    let opened = &seen.lock().unwrap()[0];
    assert_eq!(opened.failure_rate, Some(0.5));
}

#[test]
fn failed_trials_reopen_and_restart_the_wait() {
    use BreakerState::*;
    let clock = ManualClock::new();
    let (b, seen) = small(&clock, count_config());
    for _ in 0..4 {
        fail(&b).unwrap_err();
    }
    clock.advance(Duration::from_secs(30));
    succeed(&b).unwrap();
    fail(&b).unwrap_err();
    assert_eq!(b.state(), HalfOpen, "2 of 3 trials recorded");
    fail(&b).unwrap_err(); // 2 of 3 failed ≥ 50 %
    assert_eq!(b.state(), Open);
    clock.advance(Duration::from_secs(29));
    assert_eq!(b.state(), Open, "the wait restarts when it reopens");
    clock.advance(Duration::from_secs(1));
    assert_eq!(b.state(), HalfOpen);
    assert_eq!(
        transitions(&seen),
        [
            (Closed, Open),
            (Open, HalfOpen),
            (HalfOpen, Open),
            (Open, HalfOpen)
        ]
    );
}

#[test]
fn half_open_permits_exactly_n_and_rejects_the_rest() {
    let clock = ManualClock::new();
    let (b, _) = small(&clock, count_config());
    for _ in 0..4 {
        fail(&b).unwrap_err();
    }
    clock.advance(Duration::from_secs(30));
    let permits: Vec<_> = (0..3).map(|_| b.try_acquire().unwrap()).collect();
    let err = b.try_acquire().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CircuitOpen);
    // Dropping an unrecorded permit gives its slot back.
    drop(permits);
    let again: Vec<_> = (0..3).map(|_| b.try_acquire().unwrap()).collect();
    assert!(b.try_acquire().is_err());
    for p in again {
        p.record_success();
    }
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn half_open_permits_are_exact_under_contention() {
    const N: u32 = 5;
    let clock = ManualClock::new();
    let config = count_config().with_half_open_calls(N);
    let b = Arc::new(
        CircuitBreaker::new("hammer", config)
            .unwrap()
            .with_clock(clock.clone()),
    );
    for round in 0..20 {
        b.force_open();
        b.reset();
        for _ in 0..4 {
            let _ = b.call(|| -> guardrails::Result<()> { Err(failure()) });
        }
        assert_eq!(b.state(), BreakerState::Open, "round {round}");
        clock.advance(Duration::from_secs(30));
        let threads = 4;
        let barrier = Arc::new(Barrier::new(threads));
        let granted = Arc::new(Mutex::new(Vec::new()));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let b = Arc::clone(&b);
                let barrier = Arc::clone(&barrier);
                let granted = Arc::clone(&granted);
                std::thread::spawn(move || {
                    barrier.wait();
                    for _ in 0..1_000 {
                        if let Ok(p) = b.try_acquire_owned() {
                            granted.lock().unwrap().push(p);
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let granted = Arc::try_unwrap(granted).unwrap().into_inner().unwrap();
        assert_eq!(granted.len(), N as usize, "round {round}");
        for p in granted {
            p.record_success();
        }
        assert_eq!(b.state(), BreakerState::Closed, "round {round}");
    }
}

#[test]
fn listeners_see_each_transition_once_under_contention() {
    let clock = ManualClock::new();
    let config = BreakerConfig::new()
        .with_window(WindowKind::CountBased, 50)
        .with_minimum_calls(10)
        .with_wait_in_open(Duration::from_secs(5));
    let b = Arc::new(
        CircuitBreaker::new("busy", config)
            .unwrap()
            .with_clock(clock.clone()),
    );
    let opens = Arc::new(AtomicUsize::new(0));
    let o = Arc::clone(&opens);
    b.on_state_change(move |t| {
        if t.to == BreakerState::Open {
            o.fetch_add(1, Ordering::SeqCst);
        }
    });
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let b = Arc::clone(&b);
            std::thread::spawn(move || {
                for _ in 0..500 {
                    let _ = b.call(|| -> guardrails::Result<()> { Err(failure()) });
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(opens.load(Ordering::SeqCst), 1);
    // The 10th recorded failure opens it; each of the other three threads may hold one call
    // that was let through while it was still closed (admission and recording are two
    // steps), so 10 to 13 calls get through, never more.
    let through = 2_000 - b.metrics().not_permitted_calls;
    assert!((10..=13).contains(&through), "{through} calls got through");
}

#[test]
fn minimum_calls_reached_by_a_success_is_judged() {
    let clock = ManualClock::new();
    let (b, _) = small(&clock, count_config());
    fail(&b).unwrap_err();
    fail(&b).unwrap_err();
    succeed(&b).unwrap();
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(
        b.metrics().failure_rate,
        None,
        "below the minimum, no rate yet"
    );
    succeed(&b).unwrap(); // 4th call: 2/4 = 50 %
    assert_eq!(b.state(), BreakerState::Open);
}

#[test]
fn count_window_forgets_calls_older_than_its_size() {
    let clock = ManualClock::new();
    let (b, _) = small(&clock, count_config()); // window 10, threshold 50 %
    for _ in 0..4 {
        succeed(&b).unwrap();
        succeed(&b).unwrap();
        fail(&b).unwrap_err();
    }
    // 12 calls (s s f ×4): the window holds the last 10, f s s f s s f s s f.
    let m = b.metrics();
    assert_eq!(
        (m.buffered_calls, m.failed_calls, m.failure_rate),
        (10, 4, Some(0.4))
    );
    fail(&b).unwrap_err();
    // The failure at call 3 left as call 13 came in: still 4 of 10.
    let m = b.metrics();
    assert_eq!((m.failed_calls, m.state), (4, BreakerState::Closed));
    fail(&b).unwrap_err(); // 5 of 10
    assert_eq!(b.state(), BreakerState::Open);
}

#[test]
fn time_window_counts_only_recent_seconds() {
    let clock = ManualClock::new();
    let config = BreakerConfig::new()
        .with_window(WindowKind::TimeBased, 10)
        .with_minimum_calls(4)
        .with_failure_rate_threshold(0.5);
    let (b, _) = small(&clock, config);
    fail(&b).unwrap_err();
    fail(&b).unwrap_err();
    fail(&b).unwrap_err();
    clock.advance(Duration::from_secs(11)); // those three leave the window
    succeed(&b).unwrap();
    succeed(&b).unwrap();
    fail(&b).unwrap_err();
    let m = b.metrics();
    assert_eq!((m.buffered_calls, m.failed_calls), (3, 1));
    assert_eq!(b.state(), BreakerState::Closed);
    clock.advance(Duration::from_secs(3));
    fail(&b).unwrap_err(); // 2 of 4 in the last 10 s
    assert_eq!(b.state(), BreakerState::Open);
}

#[test]
fn slow_calls_open_the_breaker_even_when_they_succeed() {
    let clock = ManualClock::new();
    let config = count_config().with_slow_calls(Duration::from_secs(2), 0.5);
    let (b, seen) = small(&clock, config);
    let slow = || {
        b.call(|| {
            clock.advance(Duration::from_secs(3));
            Ok(())
        })
    };
    slow().unwrap();
    succeed(&b).unwrap();
    slow().unwrap();
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.metrics().slow_calls, 2);
    succeed(&b).unwrap(); // 2 of 4 slow = 50 %
    assert_eq!(b.state(), BreakerState::Open);
    let t = seen.lock().unwrap()[0].clone();
    assert_eq!((t.failure_rate, t.slow_call_rate), (Some(0.0), Some(0.5)));
}

#[test]
fn rejections_and_cancellations_are_ignored_and_validation_counts_as_success() {
    let clock = ManualClock::new();
    let (b, _) = small(&clock, count_config());
    for _ in 0..10 {
        let _ = b.call(|| -> guardrails::Result<()> {
            Err(GuardrailError::BulkheadFull {
                name: "x".into(),
                max_concurrent: 1,
            })
        });
        let _ = b.call(|| -> guardrails::Result<()> {
            Err(GuardrailError::Cancelled {
                operation: "x".into(),
            })
        });
    }
    assert_eq!(b.metrics().buffered_calls, 0);
    for _ in 0..4 {
        let _ = b.call(|| -> guardrails::Result<()> {
            Err(GuardrailError::DataIntegrity {
                path: "a".into(),
                check: "c".into(),
                expected: "e".into(),
                found: "f".into(),
            })
        });
    }
    let m = b.metrics();
    assert_eq!((m.buffered_calls, m.failed_calls), (4, 0));
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn custom_classifier_decides_what_counts() {
    let clock = ManualClock::new();
    let b = CircuitBreaker::new("strict", count_config())
        .unwrap()
        .with_clock(clock)
        .with_classifier(|_| CallOutcome::Failure);
    for _ in 0..4 {
        let _ = b.call(|| -> guardrails::Result<()> {
            Err(GuardrailError::DataIntegrity {
                path: "a".into(),
                check: "c".into(),
                expected: "e".into(),
                found: "f".into(),
            })
        });
    }
    assert_eq!(b.state(), BreakerState::Open);
}

#[test]
fn forced_open_disabled_metrics_only_and_reset() {
    use BreakerState::*;
    let clock = ManualClock::new();
    let (b, seen) = small(&clock, count_config());
    b.force_open();
    assert_eq!(succeed(&b).unwrap_err().kind(), ErrorKind::CircuitOpen);
    clock.advance(Duration::from_secs(3600));
    assert_eq!(b.state(), ForcedOpen, "forced open never times out");

    b.disable();
    for _ in 0..20 {
        fail(&b).unwrap_err();
    }
    assert_eq!(b.state(), Disabled);
    assert_eq!(b.metrics().buffered_calls, 0, "disabled records nothing");

    b.metrics_only();
    for _ in 0..20 {
        fail(&b).unwrap_err();
    }
    let m = b.metrics();
    assert_eq!(
        (m.state, m.failed_calls, m.failure_rate),
        (MetricsOnly, 10, Some(1.0))
    );

    b.reset();
    assert_eq!(b.metrics().buffered_calls, 0);
    succeed(&b).unwrap();
    assert_eq!(
        transitions(&seen),
        [
            (Closed, ForcedOpen),
            (ForcedOpen, Disabled),
            (Disabled, MetricsOnly),
            (MetricsOnly, Closed)
        ]
    );
}

#[test]
fn max_wait_in_half_open_reopens() {
    let clock = ManualClock::new();
    let config = count_config().with_max_wait_in_half_open(Duration::from_secs(10));
    let (b, _) = small(&clock, config);
    for _ in 0..4 {
        fail(&b).unwrap_err();
    }
    clock.advance(Duration::from_secs(30));
    let _stuck = b.try_acquire().unwrap();
    clock.advance(Duration::from_secs(10));
    assert_eq!(b.state(), BreakerState::Open);
}

#[test]
fn late_outcomes_from_an_earlier_state_are_not_recorded() {
    let clock = ManualClock::new();
    let (b, _) = small(&clock, count_config());
    let early = b.try_acquire().unwrap(); // granted while closed
    for _ in 0..4 {
        fail(&b).unwrap_err();
    }
    assert_eq!(b.state(), BreakerState::Open);
    early.record_failure();
    clock.advance(Duration::from_secs(30));
    assert_eq!(b.state(), BreakerState::HalfOpen);
    assert_eq!(b.metrics().buffered_calls, 0);
}

#[test]
fn dropped_async_call_releases_its_trial_permit() {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    let clock = ManualClock::new();
    let (b, _) = small(&clock, count_config().with_half_open_calls(1));
    for _ in 0..4 {
        fail(&b).unwrap_err();
    }
    clock.advance(Duration::from_secs(30));
    {
        let mut fut = pin!(b.call_async(std::future::pending::<guardrails::Result<()>>()));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert!(
            b.try_acquire().is_err(),
            "the pending call holds the only permit"
        );
    } // the future is dropped here, as a timeout or cancellation would
    let mut fut = pin!(b.call_async(async { Ok(5) }));
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(fut.as_mut().poll(&mut cx), Poll::Ready(Ok(5))));
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn invalid_configs_are_refused() {
    let cases = [
        (
            BreakerConfig::new().with_failure_rate_threshold(0.0),
            "failure_rate_threshold",
        ),
        (
            BreakerConfig::new().with_failure_rate_threshold(f64::NAN),
            "failure_rate_threshold",
        ),
        (
            BreakerConfig::new().with_failure_rate_threshold(1.5),
            "failure_rate_threshold",
        ),
        (
            BreakerConfig::new().with_window(WindowKind::CountBased, 0),
            "window_size",
        ),
        (
            BreakerConfig::new().with_window(WindowKind::TimeBased, 100_000),
            "window_size",
        ),
        (BreakerConfig::new().with_minimum_calls(0), "minimum_calls"),
        (
            BreakerConfig::new().with_half_open_calls(0),
            "half_open_calls",
        ),
        (
            BreakerConfig::new().with_slow_calls(Duration::ZERO, 0.5),
            "slow_call_duration",
        ),
        (
            BreakerConfig::new().with_slow_calls(Duration::from_secs(1), -0.1),
            "slow_call_rate_threshold",
        ),
    ];
    for (config, key) in cases {
        match CircuitBreaker::new("x", config).unwrap_err() {
            GuardrailError::Config { field, .. } => assert_eq!(field, key),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn registry_applies_overrides_and_reports_available_names() {
    let clock = ManualClock::new();
    let mut llama = BreakerOverride::default();
    llama.minimum_calls = Some(2);
    llama.wait_in_open = Some(Duration::from_secs(120));
    let config = BreakerRegistryConfig::new(count_config()).with_override("llama", llama);
    let registry = BreakerRegistry::new(config)
        .unwrap()
        .with_clock(clock.clone());
    let events = Arc::new(Mutex::new(Vec::new()));
    let e = Arc::clone(&events);
    registry.on_state_change(move |t| e.lock().unwrap().push(t.name.to_string()));

    let qwen = registry.get("qwen").unwrap();
    let llama = registry.get("llama").unwrap();
    assert!(Arc::ptr_eq(&qwen, &registry.get("qwen").unwrap()));
    assert_eq!(llama.config().minimum_calls, 2);
    assert_eq!(llama.config().wait_in_open, Duration::from_secs(120));
    assert_eq!(
        llama.config().half_open_calls,
        3,
        "inherited from the defaults"
    );
    fail(&llama).unwrap_err();
    fail(&llama).unwrap_err();
    assert_eq!(registry.available(), ["qwen"]);
    let mistral = registry.get("mistral").unwrap(); // made after the listener was added
    mistral.force_open();
    assert_eq!(registry.available(), ["qwen"]);
    assert_eq!(registry.names(), ["llama", "mistral", "qwen"]);
    assert_eq!(*events.lock().unwrap(), ["llama", "mistral"]);
    assert_eq!(registry.metrics()["llama"].state, BreakerState::Open);
}

#[test]
fn breakers_section_loads_from_the_config_document() {
    let cfg: GuardrailsConfig = r#"
        [breakers.defaults]
        window = "time_based"
        window_size = 60
        wait_in_open = "30s"
        slow_call_duration = "5s"

        [breakers.per_name.llama]
        failure_rate_threshold = 0.25
    "#
    .parse()
    .unwrap();
    let llama = cfg.breakers.config_for("llama");
    assert_eq!(llama.window, WindowKind::TimeBased);
    assert_eq!(llama.failure_rate_threshold, 0.25);
    assert_eq!(llama.slow_call_duration, Some(Duration::from_secs(5)));
    assert_eq!(cfg.breakers.config_for("qwen").failure_rate_threshold, 0.5);

    let err = "[breakers.per_name.qwen]\nfailure_rate_threshold = 2.0\n"
        .parse::<GuardrailsConfig>()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid config: breakers.per_name.qwen.failure_rate_threshold: must be a rate in (0, 1], got 2"
    );
    let err = "[breakers.per_name.qwen]\nwait_in_opne = \"1s\"\n"
        .parse::<GuardrailsConfig>()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("breakers.per_name.qwen.wait_in_opne: unknown key"),
        "{err}"
    );
}

#[test]
fn fallback_chain_downshifts_and_reports_it() {
    let clock = ManualClock::new();
    let registry = BreakerRegistry::new(BreakerRegistryConfig::new(count_config()))
        .unwrap()
        .with_clock(clock.clone());
    let chain =
        FallbackChain::from_registry("gen", &registry, &["creative", "balanced", "fast"]).unwrap();
    let shifts = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&shifts);
    chain.on_downshift(move |d| {
        s.lock()
            .unwrap()
            .push((d.preferred.clone(), d.served.clone()))
    });

    let served = chain.call(|m| Ok(m.len())).unwrap();
    assert_eq!(
        (served.alternative.as_str(), served.index, served.value),
        ("creative", 0, 8)
    );
    assert!(shifts.lock().unwrap().is_empty());

    // creative fails: the same call goes on to balanced.
    let served = chain
        .call(|m| {
            if m == "creative" {
                Err(failure())
            } else {
                Ok(m.to_string())
            }
        })
        .unwrap();
    assert_eq!(served.value, "balanced");
    assert_eq!(registry.get("creative").unwrap().metrics().failed_calls, 1);

    // Bad input is not the alternative's fault: no downshift, the error comes back.
    let err = chain
        .call(|_| -> guardrails::Result<()> {
            Err(GuardrailError::DataIntegrity {
                path: "p".into(),
                check: "c".into(),
                expected: "e".into(),
                found: "f".into(),
            })
        })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DataIntegrity);

    registry.get("creative").unwrap().force_open();
    registry.get("balanced").unwrap().force_open();
    let fast = registry.get("fast").unwrap();
    for _ in 0..4 {
        fail(&fast).unwrap_err();
    }
    match chain.call(|_| Ok(())).unwrap_err() {
        GuardrailError::CircuitOpen { name, retry_after } => {
            assert_eq!(name, "gen");
            assert_eq!(retry_after, Some(Duration::from_secs(30)));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        *shifts.lock().unwrap(),
        [("creative".to_string(), "balanced".to_string())]
    );
}

/// `with_clock` is a setter like every other: a classifier set before it and listeners
/// added before it are kept, and the breaker's waits run on the new clock.
#[test]
fn with_clock_keeps_the_classifier_and_listeners() {
    let clock = ManualClock::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let b = CircuitBreaker::new("dep", count_config())
        .unwrap()
        // Refused connections are ignored; any other error counts.
        .with_classifier(|e| {
            if std::error::Error::source(e).is_some_and(|s| s.to_string().contains("refused")) {
                CallOutcome::Ignored
            } else {
                CallOutcome::Failure
            }
        });
    let s = Arc::clone(&seen);
    b.on_state_change(move |t| s.lock().unwrap().push(t.clone()));
    let b = b.with_clock(clock.clone());
    for _ in 0..10 {
        let _ = fail(&b);
    }
    assert_eq!(b.state(), BreakerState::Closed, "ignored errors opened it");
    for _ in 0..4 {
        let _ = b.call(|| -> guardrails::Result<()> {
            Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into())
        });
    }
    assert_eq!(b.state(), BreakerState::Open);
    clock.advance(Duration::from_secs(30));
    succeed(&b).unwrap();
    assert_eq!(
        transitions(&seen),
        [
            (BreakerState::Closed, BreakerState::Open),
            (BreakerState::Open, BreakerState::HalfOpen)
        ]
    );
}
