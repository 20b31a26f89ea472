//! The first program a new user runs: a config, classified errors, the machine's health,
//! a guarded call and a cache.
//!
//! Run it with `cargo run --example quickstart`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use guardrails::cache::LruTtlCache;
use guardrails::prelude::*;
use guardrails::resilience::{BreakerConfig, CircuitBreaker, GuardPolicy, RetryPolicy};

fn read_manifest(path: &str) -> guardrails::Result<String> {
    std::fs::read_to_string(path)
        .path(path)
        .stage("ingest")
        .hint("run the export stage first")
}

fn main() -> guardrails::Result<()> {
    // 1. One config document; typos and bad values are refused with the key that caused them.
    let config: GuardrailsConfig = r#"
        [retry]
        max_retries = 4
        initial_delay = "50ms"
        max_delay = "1s"
        jitter = "full"

        [resources]
        min_free_disk_bytes = 1_000_000_000
    "#
    .parse()?;
    println!(
        "retry delays before jitter: {:?}",
        config.retry.delays().collect::<Vec<_>>()
    );
    if let Err(e) = "[retry]\nbase = 0.5\n".parse::<GuardrailsConfig>() {
        println!("bad config refused: {e}");
    }

    // 2. Errors carry a class and context, and serialize for logs.
    if let Err(err) = read_manifest("/nonexistent/manifest.csv") {
        println!("error: {} (class {})", err.report(), err.class());
        println!("as json: {}", err.to_json());
    }

    // 3. Will this machine hold?
    let monitor = Arc::new(ResourceMonitor::new(config.resources.clone())?);
    let report = monitor.full_health_check(std::env::temp_dir())?;
    println!("health: {} ({})", report.status, report.message);
    let s = &report.snapshot;
    println!(
        "rss {:?} bytes, {:?} open files, gpu {}",
        s.process.rss_bytes, s.process.open_fds, s.gpu
    );

    // 4. A flaky call under retry, a breaker and a resource check.
    let policy = GuardPolicy::new("embed")
        .with_retry(RetryPolicy::new(config.retry.clone())?)
        .with_breaker(Arc::new(CircuitBreaker::new(
            "embed",
            BreakerConfig::new(),
        )?))
        .with_resource_check(Arc::clone(&monitor), Some(std::env::temp_dir()))
        .with_timeout(Duration::from_secs(5));
    let attempts = Arc::new(AtomicU32::new(0));
    let a = Arc::clone(&attempts);
    let answer = policy.call(move || {
        if a.fetch_add(1, Ordering::SeqCst) < 2 {
            Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset).into())
        } else {
            Ok("embedding ready")
        }
    });
    println!(
        "guarded call: {answer:?} after {} attempts",
        attempts.load(Ordering::SeqCst)
    );

    // 5. A cache whose loads run once per key.
    let cache: LruTtlCache<String, Arc<Vec<f32>>> = LruTtlCache::builder(1_000)
        .ttl(Duration::from_secs(600))
        .build()?;
    let v = cache.get_or_insert_with("doc-1".to_string(), || Ok(Arc::new(vec![0.1, 0.2])))?;
    println!("cached {} floats; stats {:?}", v.len(), cache.stats());
    Ok(())
}
