//! What observability costs a guarded call: the breaker's closed path and a cache hit with
//! and without the Prometheus recorder (and the guard metrics) installed, a recorded
//! decision through cached handles against `metrics`' own `counter!` registration, and the
//! cardinality guard's check of a 4-label set; an anomaly check per sample.
//!
//! `cargo bench --features http --bench observe`
// criterion_group! generates undocumented functions.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use guardrails::cache::LruTtlCache;
use guardrails::events::{Decision, GuardEvent, GuardKind};
use guardrails::observe::cardinality::{CardinalityConfig, CardinalityGuard};
use guardrails::observe::prometheus::{PrometheusConfig, PrometheusExporter};
use guardrails::resilience::{BreakerConfig, CircuitBreaker};

fn guarded_calls(c: &mut Criterion) {
    let breaker = CircuitBreaker::new("bench-llm", BreakerConfig::new()).unwrap();
    let cache: LruTtlCache<u64, u64> = LruTtlCache::new(100_000).unwrap();
    for k in 0..100_000 {
        cache.insert(k, k);
    }
    let mut key = 0u64;

    // No recorder and no sink yet: the baseline of the same process.
    let mut g = c.benchmark_group("observe_breaker_closed_call");
    g.bench_function("no_recorder", |b| {
        b.iter(|| black_box(breaker.call(|| Ok(black_box(1u64)))))
    });
    let exporter = PrometheusExporter::install(PrometheusConfig::default()).unwrap();
    exporter.metrics().watch_breaker(&Arc::new(
        CircuitBreaker::new("bench-watched", BreakerConfig::new()).unwrap(),
    ));
    g.bench_function("prometheus_recorder", |b| {
        b.iter(|| black_box(breaker.call(|| Ok(black_box(1u64)))))
    });
    g.finish();

    // The recorder stays installed (metrics cannot uninstall one), so the cache's baseline
    // runs with events off: the exporter's subscription dropped, then taken again.
    let metrics = exporter.metrics().clone();
    drop(exporter);
    let mut g = c.benchmark_group("observe_cache_hit");
    g.bench_function("no_sink", |b| {
        b.iter(|| {
            key = (key + 7919) % 100_000;
            black_box(cache.get(&key))
        })
    });
    let _subscription = metrics.subscribe();
    g.bench_function("prometheus_recorder", |b| {
        b.iter(|| {
            key = (key + 7919) % 100_000;
            black_box(cache.get(&key))
        })
    });
    g.finish();

    let event = GuardEvent {
        guard: GuardKind::RateLimiter,
        name: "bench-rate",
        decision: Decision::RateLimited {
            retry_after: Duration::from_millis(5),
        },
    };
    let mut g = c.benchmark_group("observe_decision_recorded");
    g.bench_function("guardrails_cached_handle", |b| {
        b.iter(|| metrics.record(black_box(&event)))
    });
    g.bench_function("metrics_counter_macro", |b| {
        b.iter(|| {
            metrics::counter!("guardrails_rate_limited_total", "name" => black_box("bench-rate"))
                .increment(1)
        })
    });
    g.finish();
}

fn cardinality(c: &mut Criterion) {
    let guard = CardinalityGuard::new(CardinalityConfig::default()).unwrap();
    let labels = [
        ("model", "qwen-72b"),
        ("region", "eu-west-1"),
        ("stage", "score"),
        ("status", "ok"),
    ];
    guard.check("requests_total", &labels).unwrap();
    let mut g = c.benchmark_group("cardinality_check_4_labels");
    g.bench_function("guardrails_seen_set", |b| {
        b.iter(|| black_box(guard.check(black_box("requests_total"), black_box(&labels))))
    });
    g.finish();
}

fn detect(c: &mut Criterion) {
    use guardrails::observe::detect::{Baseline, DetectorConfig, Judge};
    let samples: Vec<f64> = (0..4096)
        .map(|i| 100.0 + ((i * 7919) % 97) as f64 / 10.0)
        .collect();
    let mut g = c.benchmark_group("anomaly_check_per_sample");
    let mut z = Baseline::new(DetectorConfig::default()).unwrap();
    let mut i = 0usize;
    g.bench_function("guardrails_zscore", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            black_box(z.observe(black_box(samples[i])))
        })
    });
    let mut p = Baseline::new(DetectorConfig {
        judge: Judge::Percentile {
            quantile: 0.99,
            factor: 1.0,
        },
        ..DetectorConfig::default()
    })
    .unwrap();
    g.bench_function("guardrails_percentile", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            black_box(p.observe(black_box(samples[i])))
        })
    });
    // The floor: Welford's update and a z-score, by hand.
    let (mut n, mut mean, mut m2) = (0f64, 0f64, 0f64);
    g.bench_function("bare_welford_zscore", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            let x = black_box(samples[i]);
            let sd = if n > 1.0 {
                (m2 / (n - 1.0)).sqrt()
            } else {
                0.0
            };
            let z = if sd > 0.0 { (x - mean) / sd } else { 0.0 };
            n += 1.0;
            let d = x - mean;
            mean += d / n;
            m2 += d * (x - mean);
            black_box(z.abs() > 3.0)
        })
    });
    g.finish();
}

criterion_group!(benches, guarded_calls, cardinality, detect);
criterion_main!(benches);
