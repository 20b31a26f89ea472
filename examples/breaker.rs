//! Per-model circuit breakers and a downshift chain: creative → balanced → fast.
//!
//! Run with `cargo run --example breaker`.

use std::time::Duration;

use guardrails::prelude::*;
use guardrails::resilience::{
    BreakerConfig, BreakerOverride, BreakerRegistry, BreakerRegistryConfig, FallbackChain,
};

fn main() -> guardrails::Result<()> {
    let clock = ManualClock::new(); // the example moves time by hand instead of waiting
    let mut creative = BreakerOverride::default();
    creative.wait_in_open = Some(Duration::from_secs(30));
    let config = BreakerRegistryConfig::new(
        BreakerConfig::new()
            .with_minimum_calls(3)
            .with_half_open_calls(1),
    )
    .with_override("creative", creative);
    let registry = BreakerRegistry::new(config)?.with_clock(clock.clone());
    registry.on_state_change(|t| println!("  breaker {}: {} -> {}", t.name, t.from, t.to));
    let chain =
        FallbackChain::from_registry("answer", &registry, &["creative", "balanced", "fast"])?;
    chain.on_downshift(|d| println!("  downshift: {} -> {}", d.preferred, d.served));

    // The creative model is down for a while.
    let mut creative_up = false;
    for request in 0..6 {
        let served = chain.call(|model| {
            if model == "creative" && !creative_up {
                Err(GuardrailError::external_with_class(
                    std::io::Error::other("503 from creative"),
                    ErrorClass::Retryable,
                ))
            } else {
                Ok(format!("answer {request} from {model}"))
            }
        })?;
        println!("{}", served.value);
    }
    println!("available now: {:?}", registry.available());

    // It recovers; after the wait, one trial call closes its breaker again.
    creative_up = true;
    clock.advance(Duration::from_secs(30));
    let served = chain.call(|model| Ok(format!("answer from {model}")))?;
    println!("{} (creative_up = {creative_up})", served.value);
    println!("metrics: {:?}", registry.metrics()["creative"]);
    Ok(())
}
