//! Serves health and Prometheus metrics for a small guarded process: a model behind a
//! breaker with a cached probe, a cache, a rate limiter, and alert hooks logging what fires.
//!
//! `cargo run --example observe --features http` answers its own requests and exits;
//! `OBSERVE_SECONDS=300 cargo run --example observe --features http` keeps serving so that
//! `curl http://127.0.0.1:9898/health/llm?model=all` and `curl …/metrics` can be tried.

use std::sync::Arc;
use std::time::Duration;

use guardrails::cache::LruTtlCache;
use guardrails::health::{CheckOptions, HealthRegistry};
use guardrails::observe::alerts::{AlertHooks, AlertSink};
use guardrails::observe::model_health::{ModelHealthCheck, ModelHealthConfig};
use guardrails::observe::prometheus::{PrometheusConfig, PrometheusExporter};
use guardrails::resilience::{BreakerConfig, CircuitBreaker, RateLimitConfig, RateLimiter};
use guardrails::resource::HealthStatus;
use guardrails::server::{HealthServer, ServerConfig};

fn main() -> guardrails::Result<()> {
    // The recorder first: guard metrics register their handles with it.
    let exporter = Arc::new(PrometheusExporter::install(PrometheusConfig::default())?);
    // Alerts to the log (for a `tracing` subscriber) and, here, to stderr.
    let hooks = Arc::new(
        AlertHooks::new(AlertHooks::default_rules())
            .with_sink(AlertSink::log())
            .with_sink(AlertSink::event(|a| {
                eprintln!(
                    "ALERT {:?} {}: {}",
                    a.status, a.name, a.annotations["summary"]
                )
            })),
    );
    let _alerts = hooks.subscribe();

    let breaker = Arc::new(CircuitBreaker::new(
        "qwen",
        BreakerConfig::new().with_minimum_calls(3),
    )?);
    exporter.metrics().watch_breaker(&breaker);
    let cache: Arc<LruTtlCache<String, String>> = Arc::new(LruTtlCache::new(1_000)?);
    exporter.metrics().watch_cache("answers", &cache);
    let limiter = RateLimiter::new("qwen-api", RateLimitConfig::per(5, Duration::from_secs(1)))?;

    // Some traffic: cached answers, a burst past the rate limit, a model that fails.
    for i in 0..20 {
        let prompt = format!("prompt {}", i % 4);
        if cache.get(&prompt).is_none() && limiter.check().is_ok() {
            let answer = breaker.call(|| -> guardrails::Result<String> {
                Err(std::io::Error::other("model server refused the connection").into())
            });
            if let Ok(a) = answer {
                cache.insert(prompt, a);
            }
        }
    }

    let model = ModelHealthCheck::new("qwen", ModelHealthConfig::default())?
        .with_breaker(Arc::clone(&breaker))
        .with_probe(|| Ok(r#"{"ok": true}"#.to_string()));
    let mut registry = HealthRegistry::new();
    registry.register(
        "config",
        CheckOptions::required(Duration::from_secs(1)),
        || Ok(HealthStatus::Healthy),
    );
    let seconds: u64 = std::env::var("OBSERVE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let bind = if seconds > 0 {
        "127.0.0.1:9898"
    } else {
        "127.0.0.1:0"
    };
    let server = HealthServer::new(
        ServerConfig {
            bind: bind
                .parse()
                .map_err(|e| guardrails::GuardrailError::config("bind", format!("{e}")))?,
            ..ServerConfig::default()
        },
        registry,
    )?
    .with_model(Arc::new(model))
    .with_metrics(Arc::clone(&exporter))
    .start_background()?;
    let base = format!("http://{}", server.local_addr());
    println!("serving on {base}");

    let agent = ureq_agent();
    for path in ["/health", "/health/ready", "/health/llm?model=all"] {
        let (code, body) = fetch(&agent, &format!("{base}{path}"));
        println!("GET {path} -> {code} {body}");
    }
    let (_, metrics) = fetch(&agent, &format!("{base}/metrics"));
    println!("GET /metrics (guard series):");
    for line in metrics.lines().filter(|l| {
        !l.starts_with('#')
            && (l.starts_with("circuit_breaker")
                || l.starts_with("guardrails_rate")
                || l.starts_with("cache_hits"))
    }) {
        println!("  {line}");
    }
    if seconds > 0 {
        println!("serving for {seconds} s");
        std::thread::sleep(Duration::from_secs(seconds));
    }
    server.shutdown();
    Ok(())
}

fn ureq_agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build(),
    )
}

fn fetch(agent: &ureq::Agent, url: &str) -> (u16, String) {
    match agent.get(url).call() {
        Ok(mut r) => {
            let code = r.status().as_u16();
            (code, r.body_mut().read_to_string().unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}
