//! A model-serving tower stack guarded by a circuit breaker, a rate limiter and a bulkhead.
//!
//! Run with `cargo run --example tower_service --features tower`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use guardrails::prelude::*;
use guardrails::resilience::{
    BreakerConfig, Bulkhead, BulkheadConfig, CircuitBreaker, RateLimitConfig, RateLimiter,
};
use guardrails::tower::{BulkheadLayer, CircuitBreakerLayer, RateLimitLayer};
use tower::{ServiceBuilder, ServiceExt};

#[tokio::main(flavor = "current_thread")]
async fn main() -> guardrails::Result<()> {
    let breaker = Arc::new(CircuitBreaker::new(
        "llama",
        BreakerConfig::new().with_minimum_calls(5),
    )?);
    breaker.on_state_change(|t| println!("breaker {}: {} -> {}", t.name, t.from, t.to));
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    let svc = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new(Arc::clone(&breaker)))
        .layer(RateLimitLayer::new(Arc::new(RateLimiter::new(
            "llama",
            RateLimitConfig::new(),
        )?)))
        .layer(BulkheadLayer::new(Arc::new(Bulkhead::new(
            "llama",
            BulkheadConfig::new().with_max_concurrent(4),
        )?)))
        .service_fn(move |prompt: String| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                // The model server falls over after its third request.
                if n < 3 {
                    Ok(format!("completion for {prompt:?}"))
                } else {
                    Err(GuardrailError::external_with_class(
                        std::io::Error::other("model server returned 503"),
                        ErrorClass::Retryable,
                    ))
                }
            }
        });
    for i in 0..10 {
        match svc.clone().oneshot(format!("prompt {i}")).await {
            Ok(text) => println!("{i}: {text}"),
            Err(e) => println!("{i}: {} ({})", e, e.class()),
        }
    }
    println!("model server saw {} requests", calls.load(Ordering::SeqCst));
    println!("{:?}", breaker.metrics());
    Ok(())
}
