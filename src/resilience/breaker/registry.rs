//! Named breakers with shared defaults and per-name overrides.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock};

use serde::{Deserialize, Serialize};

use super::{BreakerConfig, BreakerMetrics, BreakerOverride, CircuitBreaker, StateTransition};
use crate::clock::{Clock, SharedClock, SystemClock};
use crate::error::{GuardrailError, Result};

/// The `[breakers]` section: defaults for every breaker and changes for some names.
///
/// ```toml
/// [breakers.defaults]
/// failure_rate_threshold = 0.5
/// wait_in_open = "30s"
///
/// [breakers.per_name.llama]
/// wait_in_open = "2m"      # the rest comes from the defaults
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct BreakerRegistryConfig {
    /// Settings of every breaker not named in `per_name`, and the base of those that are.
    pub defaults: BreakerConfig,
    /// Changes per breaker name.
    pub per_name: BTreeMap<String, BreakerOverride>,
}

impl BreakerRegistryConfig {
    /// Defaults only.
    pub fn new(defaults: BreakerConfig) -> Self {
        Self {
            defaults,
            per_name: BTreeMap::new(),
        }
    }

    /// Adds an override for `name`.
    #[must_use]
    pub fn with_override(mut self, name: impl Into<String>, changes: BreakerOverride) -> Self {
        self.per_name.insert(name.into(), changes);
        self
    }

    /// The settings `name` gets.
    pub fn config_for(&self, name: &str) -> BreakerConfig {
        match self.per_name.get(name) {
            Some(changes) => changes.apply(&self.defaults),
            None => self.defaults.clone(),
        }
    }

    /// Validates the defaults and every name's resulting settings. Field names are relative
    /// to the section (`"defaults.window_size"`, `"per_name.qwen.failure_rate_threshold"`).
    pub fn validate(&self) -> Result<()> {
        self.defaults
            .validate()
            .map_err(|e| prefixed("defaults", e))?;
        for name in self.per_name.keys() {
            self.config_for(name)
                .validate()
                .map_err(|e| prefixed(&format!("per_name.{name}"), e))?;
        }
        Ok(())
    }
}

fn prefixed(prefix: &str, err: GuardrailError) -> GuardrailError {
    match err {
        GuardrailError::Config { field, reason } => {
            GuardrailError::config(format!("{prefix}.{field}"), reason)
        }
        other => other,
    }
}

/// Breakers by name, made on first use (the seed's per-model breakers: qwen, mistral,
/// llama…).
///
/// ```
/// use guardrails::resilience::{BreakerConfig, BreakerOverride, BreakerRegistry, BreakerRegistryConfig};
///
/// let mut strict = BreakerOverride::default();
/// strict.failure_rate_threshold = Some(0.2);
/// let registry = BreakerRegistry::new(
///     BreakerRegistryConfig::new(BreakerConfig::new()).with_override("llama", strict),
/// )?;
/// let llama = registry.get("llama")?;
/// assert_eq!(llama.config().failure_rate_threshold, 0.2);
/// assert_eq!(registry.get("qwen")?.config().failure_rate_threshold, 0.5);
/// assert_eq!(registry.available(), ["llama", "qwen"]);
/// # Ok::<(), guardrails::GuardrailError>(())
/// ```
pub struct BreakerRegistry {
    config: BreakerRegistryConfig,
    clock: SharedClock,
    breakers: RwLock<HashMap<String, Arc<CircuitBreaker>>>,
    listeners: crate::listeners::Listeners<StateTransition>,
}

impl std::fmt::Debug for BreakerRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BreakerRegistry")
            .field("config", &self.config)
            .field("names", &self.names())
            .finish_non_exhaustive()
    }
}

impl BreakerRegistry {
    /// A registry on the system clock; `config` is validated.
    pub fn new(config: BreakerRegistryConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            clock: Arc::new(SystemClock),
            breakers: RwLock::new(HashMap::new()),
            listeners: Default::default(),
        })
    }

    /// Makes the breakers it creates read time from `clock` (a
    /// [`ManualClock`](crate::ManualClock) in tests). Meant right after [`new`](Self::new),
    /// like every `with_*`: breakers it made already keep the clock they started on.
    #[must_use]
    pub fn with_clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The breaker called `name`, made with its settings on first use.
    pub fn get(&self, name: &str) -> Result<Arc<CircuitBreaker>> {
        if let Some(b) = self
            .breakers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
        {
            return Ok(Arc::clone(b));
        }
        let mut map = self
            .breakers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(b) = map.get(name) {
            return Ok(Arc::clone(b));
        }
        let breaker = CircuitBreaker::with_shared_clock(
            name,
            self.config.config_for(name),
            Arc::clone(&self.clock),
        )?;
        for listener in self.listeners.snapshot() {
            breaker.listeners.add_shared(listener);
        }
        let breaker = Arc::new(breaker);
        map.insert(name.to_string(), Arc::clone(&breaker));
        Ok(breaker)
    }

    /// Calls `listener` on every state change of every breaker, present and future.
    pub fn on_state_change<F>(&self, listener: F)
    where
        F: Fn(&StateTransition) + Send + Sync + 'static,
    {
        let listener: crate::listeners::Listener<StateTransition> = Arc::new(listener);
        // Hold the map lock so a breaker made concurrently gets the listener exactly once.
        let map = self.breakers.read().unwrap_or_else(PoisonError::into_inner);
        self.listeners.add_shared(Arc::clone(&listener));
        for breaker in map.values() {
            breaker.listeners.add_shared(Arc::clone(&listener));
        }
    }

    /// Names of the breakers made so far, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .breakers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// Names whose breakers admit calls now (closed, half-open, disabled, metrics-only),
    /// sorted.
    pub fn available(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .snapshot()
            .iter()
            .filter(|b| b.state().admits_calls())
            .map(|b| b.name().to_string())
            .collect();
        names.sort();
        names
    }

    /// Metrics of every breaker, by name.
    pub fn metrics(&self) -> BTreeMap<String, BreakerMetrics> {
        self.snapshot()
            .iter()
            .map(|b| (b.name().to_string(), b.metrics()))
            .collect()
    }

    /// The breakers, copied out so that no lock is held while their state is read (reading
    /// can fire listeners, which may call back into the registry).
    fn snapshot(&self) -> Vec<Arc<CircuitBreaker>> {
        self.breakers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }
}
