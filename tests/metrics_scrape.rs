//! A scripted scenario that makes every guard decide, then a scrape of `/metrics` over
//! loopback: every documented metric name is there, with the counts the scenario implies,
//! and a user metric with a forbidden label is folded into its overflow series.
//!
//! One test per binary: the Prometheus recorder is process-wide.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use guardrails::ManualClock;
use guardrails::cache::LruTtlCache;
use guardrails::health::HealthRegistry;
use guardrails::json_guard::{JsonGuardConfig, JsonHardGuard};
use guardrails::observe::alerts::{AlertHooks, AlertSink};
use guardrails::observe::metrics::{METRICS, MetricKind};
use guardrails::observe::model_health::{ModelHealthCheck, ModelHealthConfig};
use guardrails::observe::prometheus::{PrometheusConfig, PrometheusExporter};
use guardrails::pipeline::{DataSpec, GateSpec, OnValidation, PipelineGuardrails, StageSpec};
use guardrails::resilience::{
    BreakerConfig, Bulkhead, BulkheadConfig, CircuitBreaker, FallbackChain, RateLimitConfig,
    RateLimiter, RetryConfig, RetryPolicy, TimeoutHandler,
};
use guardrails::resource::{ResourceLimits, ResourceMonitor, resource_guard};
use guardrails::server::{HealthServer, ServerConfig};
use guardrails::state::{Idempotency, MemoryStore};
use guardrails::{GuardrailError, Result};

fn timeout_err() -> Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into())
}

fn run_pipeline(root: &Path) {
    let plan = PipelineGuardrails::builder("scrape")
        .root(root)
        .registry("state/registry.db")
        .resources(
            ResourceLimits::new()
                .with_min_free_disk_bytes(1 << 20)
                .with_max_disk_bytes(u64::MAX / 2)
                .with_max_memory_bytes(u64::MAX / 2),
        )
        .stage(
            "extract",
            StageSpec::new()
                .with_output("rows", DataSpec::table("out/rows.csv"))
                .with_gate("enough", GateSpec::new("rows.rows").with_min(3.0))
                .with_on_validation(OnValidation::Skip),
        )
        .plan()
        .unwrap();
    let mut pipeline = PipelineGuardrails::open(plan).unwrap();
    let failed = pipeline.run_stage("extract", |ctx| {
        ctx.item("bad-row", || -> Result<()> {
            Err(GuardrailError::DataIntegrity {
                path: "row".into(),
                check: "score".into(),
                expected: "a number".into(),
                found: "x".into(),
            })
        })?;
        std::fs::write(ctx.output("rows")?, "id\n1\n")?;
        Ok(())
    });
    assert!(failed.is_err(), "the gate wants 3 rows");
}

/// Every `# TYPE name kind` line of a scrape.
fn types(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, k)| (n.to_string(), k.to_string()))
        .collect()
}

/// The value of the sample `series` (name and labels exactly as rendered).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.rsplit_once(' ').filter(|(s, _)| *s == series))
        .and_then(|(_, v)| v.parse().ok())
}

#[test]
fn a_scrape_after_the_scenario_holds_every_documented_metric() {
    let exporter = Arc::new(PrometheusExporter::install(PrometheusConfig::default()).unwrap());
    let metrics = exporter.metrics().clone();
    let clock = ManualClock::new();
    let alerts =
        Arc::new(AlertHooks::new(AlertHooks::default_rules()).with_sink(AlertSink::metric()));
    let _alerting = alerts.subscribe();

    // Breaker: two failures open it, the third call is refused.
    let breaker = Arc::new(
        CircuitBreaker::new("scrape-llm", BreakerConfig::new().with_minimum_calls(2))
            .unwrap()
            .with_clock(clock.clone()),
    );
    metrics.watch_breaker(&breaker);
    let _ = breaker.call(timeout_err);
    let _ = breaker.call(timeout_err);
    assert!(breaker.call(|| Ok(())).is_err());

    // A chain whose preferred model is open serves the next one.
    let preferred = Arc::new(CircuitBreaker::new("scrape-big", BreakerConfig::new()).unwrap());
    preferred.force_open();
    let small = Arc::new(CircuitBreaker::new("scrape-small", BreakerConfig::new()).unwrap());
    let chain = FallbackChain::new("scrape-chain", vec![preferred, small]).unwrap();
    chain.call(|_| Ok(())).unwrap();

    let retry = RetryPolicy::new(
        RetryConfig::new()
            .with_max_retries(2)
            .with_initial_delay(Duration::from_millis(10)),
    )
    .unwrap()
    .with_name("scrape-retry")
    .with_clock(clock.clone());
    assert!(retry.call(timeout_err).is_err());
    let mut failures_left = 1;
    retry
        .call(|| {
            if failures_left > 0 {
                failures_left -= 1;
                timeout_err()
            } else {
                Ok(())
            }
        })
        .unwrap();

    let deadline =
        TimeoutHandler::new("scrape-deadline", Duration::from_secs(1)).with_clock(clock.clone());
    clock.advance(Duration::from_secs(2));
    assert!(deadline.check().is_err());

    let limiter = RateLimiter::new(
        "scrape-rate",
        RateLimitConfig::per(1, Duration::from_secs(60)),
    )
    .unwrap()
    .with_clock(clock.clone());
    limiter.check().unwrap();
    assert!(limiter.check().is_err());

    let bulkhead = Bulkhead::new(
        "scrape-bulkhead",
        BulkheadConfig::new().with_max_concurrent(1),
    )
    .unwrap();
    bulkhead
        .call(|| {
            assert!(bulkhead.call(|| Ok(())).is_err());
            Ok(())
        })
        .unwrap();

    // Cache: a miss, a hit, an eviction for room, an expiry.
    let cache: Arc<LruTtlCache<u32, u32>> = Arc::new(
        LruTtlCache::builder(1)
            .ttl(Duration::from_secs(10))
            .with_clock(clock.clone())
            .build()
            .unwrap(),
    );
    metrics.watch_cache("scrape-cache", &cache);
    assert_eq!(cache.get(&1), None);
    cache.insert(1, 1);
    assert_eq!(cache.get(&1), Some(1));
    cache.insert(2, 2);
    clock.advance(Duration::from_secs(11));
    assert_eq!(cache.get(&2), None);

    let strict = ResourceMonitor::new(
        ResourceLimits::new()
            .with_max_memory_bytes(1)
            .with_min_free_disk_bytes(0),
    )
    .unwrap();
    assert!(resource_guard(&strict, None).is_err());

    let json = JsonHardGuard::new(JsonGuardConfig::new().with_max_retries(0)).unwrap();
    json.parse_value("{\"a\": 1,}").unwrap();
    let served = json
        .run_with_fallback::<serde_json::Value, _, _>(
            |_| Ok("no json here".into()),
            || serde_json::json!({"fallback": true}),
        )
        .unwrap();
    assert!(served.fallback_used);

    let dir = tempfile::tempdir().unwrap();
    run_pipeline(dir.path());

    let fx = Idempotency::new(Arc::new(MemoryStore::new()));
    let key = fx.key("scrape_ledger", "order-1");
    fx.run(&key, "p", |_| Ok(1)).unwrap();
    fx.run(&key, "p", |_| Ok(1)).unwrap();

    // A supervised task that keeps failing: a failure, a recovery action, a restart, a
    // second failure past the intensity, the give-up.
    let supervisor = guardrails::observe::supervisor::Supervisor::new(
        "scrape-supervisor",
        guardrails::observe::supervisor::SupervisorConfig {
            max_restarts: 1,
            ..Default::default()
        },
    )
    .unwrap()
    .with_clock(ManualClock::new())
    .recover(
        "external",
        guardrails::observe::supervisor::RecoveryAction::new(
            "reset",
            Duration::from_secs(5),
            |_| Ok(()),
        ),
    );
    assert!(
        supervisor
            .run(|_| -> Result<()> {
                Err(GuardrailError::external_with_class(
                    std::io::Error::other("worker crashed"),
                    guardrails::ErrorClass::Retryable,
                ))
            })
            .is_err()
    );

    let model = Arc::new(
        ModelHealthCheck::new("scrape-model", ModelHealthConfig::default())
            .unwrap()
            .with_breaker(Arc::clone(&breaker)),
    );
    assert!(!model.check().healthy);

    // A user's own metric with an id label: folded, not exported as one series per order.
    metrics::counter!("user_orders_total", "order_id" => "A-17").increment(1);
    metrics::counter!("user_orders_total", "order_id" => "A-18").increment(1);
    metrics::counter!("user_orders_total", "region" => "eu").increment(1);

    let server = HealthServer::new(
        ServerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            ..ServerConfig::default()
        },
        HealthRegistry::new(),
    )
    .unwrap()
    .with_model(model)
    .with_metrics(Arc::clone(&exporter))
    .start_background()
    .unwrap();
    let mut response = ureq::get(&format!("http://{}/metrics", server.local_addr()))
        .call()
        .unwrap();
    assert!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/plain"))
    );
    let text = response.body_mut().read_to_string().unwrap();

    let types = types(&text);
    for m in METRICS {
        let kind = match m.kind {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        };
        assert!(
            types.iter().any(|(n, k)| n == m.name && k == kind),
            "{} ({kind}) missing from the scrape:\n{text}",
            m.name
        );
    }
    let expect = [
        ("circuit_breaker_state{model=\"scrape-llm\"}", 1.0),
        (
            "guardrails_breaker_transitions_total{name=\"scrape-llm\",from=\"closed\",to=\"open\"}",
            1.0,
        ),
        (
            "guardrails_breaker_calls_not_permitted_total{name=\"scrape-llm\"}",
            1.0,
        ),
        (
            "llm_mode_downshift_total{name=\"scrape-chain\",from=\"scrape-big\",to=\"scrape-small\"}",
            1.0,
        ),
        ("guardrails_retries_total{name=\"scrape-retry\"}", 3.0),
        (
            "guardrails_retry_delay_seconds_count{name=\"scrape-retry\"}",
            3.0,
        ),
        (
            "guardrails_retry_recoveries_total{name=\"scrape-retry\"}",
            1.0,
        ),
        (
            "guardrails_retries_exhausted_total{name=\"scrape-retry\"}",
            1.0,
        ),
        ("guardrails_timeouts_total{name=\"scrape-deadline\"}", 1.0),
        ("guardrails_rate_limited_total{name=\"scrape-rate\"}", 1.0),
        (
            "guardrails_bulkhead_full_total{name=\"scrape-bulkhead\"}",
            1.0,
        ),
        ("cache_hits_total{name=\"scrape-cache\"}", 1.0),
        ("cache_misses_total{name=\"scrape-cache\"}", 2.0),
        (
            "guardrails_idempotency_outcomes_total{effect=\"scrape_ledger\",outcome=\"executed\"}",
            1.0,
        ),
        (
            "guardrails_idempotency_outcomes_total{effect=\"scrape_ledger\",outcome=\"cached\"}",
            1.0,
        ),
        (
            "guardrails_stage_gate_results_total{stage=\"extract\",gate=\"enough\",result=\"failed\"}",
            1.0,
        ),
        ("guardrails_stage_quarantined_total{stage=\"extract\"}", 1.0),
        ("llm_health_status{model=\"scrape-model\"}", 0.0),
        ("user_orders_total{overflow=\"true\"}", 2.0),
        (
            "guardrails_alerts_total{alertname=\"CircuitBreakerOpen\",severity=\"critical\",status=\"firing\"}",
            2.0,
        ),
        ("user_orders_total{region=\"eu\"}", 1.0),
        (
            "guardrails_supervisor_task_failures_total{name=\"scrape-supervisor\",kind=\"external\"}",
            2.0,
        ),
        (
            "guardrails_supervisor_recovery_actions_total{name=\"scrape-supervisor\",action=\"reset\",result=\"ok\"}",
            1.0,
        ),
        (
            "guardrails_supervisor_restarts_total{name=\"scrape-supervisor\"}",
            1.0,
        ),
        (
            "guardrails_supervisor_gave_up_total{name=\"scrape-supervisor\"}",
            1.0,
        ),
    ];
    for (series, want) in expect {
        assert_eq!(sample(&text, series), Some(want), "{series} in:\n{text}");
    }
    assert!(
        !text.contains("A-17"),
        "a forbidden label reached the exporter"
    );
    // Histograms are histograms: buckets, not quantiles.
    assert!(
        text.contains("guardrails_retry_delay_seconds_bucket{name=\"scrape-retry\",le=\"0.01\"}")
    );
    server.shutdown();
}
