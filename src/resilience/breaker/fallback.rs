//! Ordered alternatives behind breakers: the seed's creative → balanced → fast downshift.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::{BreakerRegistry, CallOutcome, CircuitBreaker};
use crate::error::{GuardrailError, Result};

/// A value and the alternative that produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct Served<T> {
    /// Name of the alternative (its breaker's name).
    pub alternative: String,
    /// Its position in the chain; above 0 means the chain downshifted.
    pub index: usize,
    /// What it returned.
    pub value: T,
}

/// A downshift, as listeners receive it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Downshift {
    /// The chain's name.
    pub chain: String,
    /// The preferred alternative.
    pub preferred: String,
    /// The one that served the call.
    pub served: String,
}

/// Sends each call to the first alternative whose breaker permits it; if that call fails
/// (as its breaker counts failures), the next one is tried. Serving from any but the first
/// is a downshift: a WARN event and a call to the listeners.
///
/// ```
/// use guardrails::prelude::*;
/// use guardrails::resilience::{BreakerConfig, BreakerRegistry, BreakerRegistryConfig, FallbackChain};
///
/// let registry = BreakerRegistry::new(BreakerRegistryConfig::new(BreakerConfig::new()))?;
/// let chain = FallbackChain::from_registry("generate", &registry, &["creative", "balanced", "fast"])?;
/// registry.get("creative")?.force_open();
///
/// let served = chain.call(|model| Ok(format!("answer from {model}")))?;
/// assert_eq!(served.alternative, "balanced");
/// assert_eq!(served.index, 1);
/// # Ok::<(), GuardrailError>(())
/// ```
pub struct FallbackChain {
    name: String,
    alternatives: Vec<Arc<CircuitBreaker>>,
    listeners: crate::listeners::Listeners<Downshift>,
}

impl std::fmt::Debug for FallbackChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.alternatives.iter().map(|b| b.name()).collect();
        f.debug_struct("FallbackChain")
            .field("name", &self.name)
            .field("alternatives", &names)
            .finish_non_exhaustive()
    }
}

impl FallbackChain {
    /// A chain over `alternatives`, most preferred first; at least one is needed.
    pub fn new(name: impl Into<String>, alternatives: Vec<Arc<CircuitBreaker>>) -> Result<Self> {
        let name = name.into();
        if alternatives.is_empty() {
            return Err(GuardrailError::config(
                format!("fallback.{name}"),
                "a fallback chain needs at least one alternative",
            ));
        }
        Ok(Self {
            name,
            alternatives,
            listeners: Default::default(),
        })
    }

    /// A chain over the registry's breakers of these names, in this order.
    pub fn from_registry(
        name: impl Into<String>,
        registry: &BreakerRegistry,
        names: &[&str],
    ) -> Result<Self> {
        let alternatives = names
            .iter()
            .map(|n| registry.get(n))
            .collect::<Result<Vec<_>>>()?;
        Self::new(name, alternatives)
    }

    /// Calls `listener` on every downshift.
    pub fn on_downshift<F>(&self, listener: F)
    where
        F: Fn(&Downshift) + Send + Sync + 'static,
    {
        self.listeners.add(listener);
    }

    /// Runs `f(alternative_name)` on the first alternative that permits it and succeeds.
    ///
    /// An error its breaker does not count as a failure (bad input, say) is returned at once:
    /// another alternative would not do better. When every alternative is open the result is
    /// [`GuardrailError::CircuitOpen`] for the chain, retrying after the soonest reopening;
    /// when some were tried and failed, the last failure.
    pub fn call<T, F>(&self, mut f: F) -> Result<Served<T>>
    where
        F: FnMut(&str) -> Result<T>,
    {
        let mut last_failure = None;
        let mut soonest: Option<Duration> = None;
        for (index, breaker) in self.alternatives.iter().enumerate() {
            let permit = match breaker.try_acquire() {
                Ok(p) => p,
                Err(GuardrailError::CircuitOpen { retry_after, .. }) => {
                    soonest = match (soonest, retry_after) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    continue;
                }
                Err(e) => return Err(e),
            };
            match f(breaker.name()) {
                Ok(value) => {
                    permit.record_success();
                    if index > 0 {
                        self.downshifted(breaker.name());
                    }
                    return Ok(Served {
                        alternative: breaker.name().to_string(),
                        index,
                        value,
                    });
                }
                Err(e) => {
                    let counts = (breaker.classifier)(&e) == CallOutcome::Failure;
                    permit.record_error(&e);
                    if !counts {
                        return Err(e);
                    }
                    tracing::warn!(chain = %self.name, alternative = breaker.name(), error = %e.report(), "alternative failed, trying the next");
                    last_failure = Some(e);
                }
            }
        }
        Err(last_failure.unwrap_or_else(|| GuardrailError::CircuitOpen {
            name: self.name.clone(),
            retry_after: soonest,
        }))
    }

    fn downshifted(&self, served: &str) {
        let event = Downshift {
            chain: self.name.clone(),
            preferred: self.alternatives[0].name().to_string(),
            served: served.to_string(),
        };
        tracing::warn!(chain = %event.chain, preferred = %event.preferred, served = %event.served, "downshift");
        crate::events::emit(|| crate::events::GuardEvent {
            guard: crate::events::GuardKind::Fallback,
            name: &event.chain,
            decision: crate::events::Decision::Downshift {
                preferred: &event.preferred,
                served: &event.served,
            },
        });
        self.listeners.notify(&event);
    }
}
