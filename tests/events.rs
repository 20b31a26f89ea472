//! Every guard's decisions reach a subscribed sink as one `GuardEvent` type; a dropped
//! subscription stops them, and a sink that panics does not break the guarded call.
//!
//! Sinks are process-wide and the tests of this file run in parallel: each test names its
//! guards uniquely and keeps only the events of its own names.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use guardrails::events::{self, Decision, GuardKind};
use guardrails::json_guard::{JsonGuardConfig, JsonHardGuard};
use guardrails::resilience::{
    BreakerConfig, Bulkhead, BulkheadConfig, CircuitBreaker, RateLimitConfig, RateLimiter,
    RetryConfig, RetryPolicy, TimeoutHandler,
};
use guardrails::state::{Idempotency, MemoryStore, Outcome};
use guardrails::{GuardrailError, ManualClock, Result};

type Seen = Arc<Mutex<Vec<(GuardKind, String, String)>>>;

/// Collects `(guard, name, decision label + detail)` of the events whose name is in `names`.
fn collect(names: &'static [&'static str]) -> (Seen, events::Subscription) {
    let seen: Seen = Arc::default();
    let sink = Arc::clone(&seen);
    let sub = events::subscribe(move |e| {
        if names.contains(&e.name) {
            let detail = match &e.decision {
                Decision::BreakerTransition { from, to, .. } => format!("{from}->{to}"),
                Decision::Retry { attempt, .. } => format!("retry {attempt}"),
                Decision::RetriesExhausted { attempts } => format!("exhausted {attempts}"),
                Decision::Idempotency { outcome } => (*outcome).to_string(),
                other => other.label().to_string(),
            };
            sink.lock()
                .unwrap()
                .push((e.guard, e.name.to_string(), detail));
        }
    });
    (seen, sub)
}

fn timeout_err() -> Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into())
}

#[test]
fn resilience_guards_report_their_decisions() {
    let (seen, _sub) = collect(&[
        "ev-breaker",
        "ev-rate",
        "ev-bulkhead",
        "ev-retry",
        "ev-deadline",
    ]);
    let clock = ManualClock::new();

    let breaker = CircuitBreaker::new("ev-breaker", BreakerConfig::new().with_minimum_calls(2))
        .unwrap()
        .with_clock(clock.clone());
    let _ = breaker.call(timeout_err);
    let _ = breaker.call(timeout_err);
    assert!(breaker.call(|| Ok(1)).is_err());

    let limiter = RateLimiter::new("ev-rate", RateLimitConfig::per(1, Duration::from_secs(60)))
        .unwrap()
        .with_clock(clock.clone());
    limiter.check().unwrap();
    assert!(limiter.check().is_err());

    let bulkhead =
        Bulkhead::new("ev-bulkhead", BulkheadConfig::new().with_max_concurrent(1)).unwrap();
    bulkhead
        .call(|| {
            assert!(bulkhead.call(|| Ok(())).is_err());
            Ok(())
        })
        .unwrap();

    let retry = RetryPolicy::new(
        RetryConfig::new()
            .with_max_retries(2)
            .with_initial_delay(Duration::from_millis(10)),
    )
    .unwrap()
    .with_name("ev-retry")
    .with_clock(clock.clone());
    assert!(retry.call(timeout_err).is_err());

    let deadline =
        TimeoutHandler::new("ev-deadline", Duration::from_secs(1)).with_clock(clock.clone());
    clock.advance(Duration::from_secs(2));
    assert!(deadline.check().is_err());

    let seen = seen.lock().unwrap().clone();
    let expect = |g: GuardKind, n: &str, d: &str| (g, n.to_string(), d.to_string());
    assert_eq!(
        seen,
        vec![
            expect(GuardKind::Breaker, "ev-breaker", "closed->open"),
            expect(GuardKind::Breaker, "ev-breaker", "call_not_permitted"),
            expect(GuardKind::RateLimiter, "ev-rate", "rate_limited"),
            expect(GuardKind::Bulkhead, "ev-bulkhead", "bulkhead_full"),
            expect(GuardKind::Retry, "ev-retry", "retry 1"),
            expect(GuardKind::Retry, "ev-retry", "retry 2"),
            expect(GuardKind::Retry, "ev-retry", "exhausted 3"),
            expect(GuardKind::Retry, "ev-retry", "retry_ended"),
            expect(GuardKind::Timeout, "ev-deadline", "timed_out"),
        ]
    );
}

#[test]
fn idempotency_and_the_json_guard_report_outcomes_by_type_not_by_entity() {
    let (seen, _sub) = collect(&["ev_ledger", "json_guard"]);
    let fx = Idempotency::new(Arc::new(MemoryStore::new()));
    let key = fx.key("ev_ledger", "order-1");
    assert_eq!(fx.run(&key, "p", |_| Ok(1)).unwrap(), Outcome::Executed(1));
    assert_eq!(fx.run(&key, "p", |_| Ok(2)).unwrap(), Outcome::Cached(1));
    assert!(matches!(
        fx.run(&key, "other", |_| Ok(3)).unwrap(),
        Outcome::Mismatch { .. }
    ));
    let json = JsonHardGuard::new(JsonGuardConfig::new()).unwrap();
    json.parse_value("{\"a\": 1,}").unwrap();
    assert!(json.parse_value("no json at all").is_err());
    let seen: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(g, _, _)| matches!(g, GuardKind::Idempotency | GuardKind::JsonGuard))
        .map(|(_, n, d)| format!("{n} {d}"))
        .collect();
    // Other tests' JSON guard events may interleave; ours are in this order among them.
    let ours: Vec<&String> = seen.iter().filter(|s| s.starts_with("ev_ledger")).collect();
    assert_eq!(
        ours,
        [
            "ev_ledger executed",
            "ev_ledger cached",
            "ev_ledger mismatch"
        ]
    );
    assert!(
        seen.iter().any(|s| s == "json_guard json_repaired"),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|s| s == "json_guard validation_failed"),
        "{seen:?}"
    );
}

#[test]
fn a_dropped_subscription_stops_and_a_panicking_sink_breaks_nothing() {
    let (seen, sub) = collect(&["ev-dropped"]);
    let _panics = events::subscribe(|e| {
        if e.name == "ev-dropped" {
            panic!("a broken sink");
        }
    });
    let limiter = RateLimiter::new(
        "ev-dropped",
        RateLimitConfig::per(1, Duration::from_secs(60)),
    )
    .unwrap();
    limiter.check().unwrap();
    match limiter.check() {
        Err(GuardrailError::RateLimited { .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(seen.lock().unwrap().len(), 1);
    drop(sub);
    assert!(limiter.check().is_err());
    assert_eq!(seen.lock().unwrap().len(), 1, "no event after the drop");
}

#[test]
fn the_cache_reports_evictions_for_room() {
    let (seen, _sub) = collect(&["cache"]);
    let cache: guardrails::cache::LruTtlCache<u64, u64> =
        guardrails::cache::LruTtlCache::new(1).unwrap();
    cache.insert(1, 1);
    cache.insert(2, 2);
    cache.insert(2, 3); // replaced: not an eviction
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [(
            GuardKind::Cache,
            "cache".to_string(),
            "cache_eviction".to_string()
        )]
    );
}

#[test]
fn the_resource_guard_reports_the_limit_it_refused_on() {
    use guardrails::resource::{ResourceLimits, ResourceMonitor, resource_guard};
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let _sub = events::subscribe(move |e| {
        if let Decision::LimitHit { resource } = &e.decision {
            sink.lock().unwrap().push(format!("{} {resource}", e.name));
        }
    });
    let strict = ResourceMonitor::new(
        ResourceLimits::new()
            .with_max_memory_bytes(1)
            .with_min_free_disk_bytes(0),
    )
    .unwrap();
    assert!(resource_guard(&strict, None).is_err());
    assert_eq!(*seen.lock().unwrap(), ["resource_guard memory"]);
}
