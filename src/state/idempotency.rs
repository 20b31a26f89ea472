//! Exactly-once side effects: claim, run with a fence, complete by compare-and-set.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{Claim, ClaimRequest, Fence, StateStore};
use crate::cache::LruTtlCache;
use crate::error::{ErrorClass, GuardrailError, Result};

/// How [`Idempotency`] claims keys.
///
/// | field | default | meaning |
/// |---|---|---|
/// | `prefix` | `"effect"` | keys are `PREFIX:TYPE:ENTITY` |
/// | `ttl` | 72 h | how long a completed result is served |
/// | `lease` | 30 s | how long a claim holds without renewal (renewed every third of it while the effect runs) |
/// | `fail_open` | `false` | when the store cannot be reached: `false` the effect does not run (the store's error), `true` it runs unguarded |
/// | `local_cache` | 1 024 | completed keys kept in this process, answered without the store |
/// | `max_result_bytes` | 1 MiB | the largest serialized result stored or read back |
#[derive(Debug, Clone, PartialEq, serde::Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct IdempotencyConfig {
    /// Key prefix.
    pub prefix: String,
    /// Record lifetime.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Claim lease.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Run unguarded when the store is unreachable.
    pub fail_open: bool,
    /// Completed keys cached locally (0: none).
    pub local_cache: usize,
    /// Largest result.
    pub max_result_bytes: usize,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl IdempotencyConfig {
    /// The defaults in the table above.
    pub fn new() -> Self {
        Self {
            prefix: "effect".into(),
            ttl: Duration::from_secs(72 * 3600),
            lease: Duration::from_secs(30),
            fail_open: false,
            local_cache: 1024,
            max_result_bytes: 1 << 20,
        }
    }

    /// Record lifetime.
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Claim lease.
    #[must_use]
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Run unguarded when the store is unreachable.
    #[must_use]
    pub fn with_fail_open(mut self, on: bool) -> Self {
        self.fail_open = on;
        self
    }

    /// Key prefix.
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Completed keys cached locally (0: none).
    #[must_use]
    pub fn with_local_cache(mut self, entries: usize) -> Self {
        self.local_cache = entries;
        self
    }

    /// Refuses a zero lease or TTL, a lease longer than the TTL, and an empty prefix.
    pub fn validate(&self) -> Result<()> {
        if self.lease.is_zero() || self.ttl.is_zero() {
            return Err(GuardrailError::config(
                "idempotency.lease",
                "lease and ttl must be more than 0",
            ));
        }
        if self.lease > self.ttl {
            return Err(GuardrailError::config(
                "idempotency.lease",
                format!(
                    "the lease ({:?}) cannot outlive the record's ttl ({:?})",
                    self.lease, self.ttl
                ),
            ));
        }
        if self.prefix.is_empty() {
            return Err(GuardrailError::config(
                "idempotency.prefix",
                "must not be empty",
            ));
        }
        Ok(())
    }
}

/// A completed key as the local cache keeps it: its fingerprint and serialized result.
type CompletedKey = (String, Arc<Vec<u8>>);

/// What [`Idempotency::run`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome<T> {
    /// This call ran the effect and recorded its result.
    Executed(T),
    /// The key completed before with the same payload: the stored result.
    Cached(T),
    /// Another worker is running it; ask again after this.
    InProgress {
        /// When its lease ends.
        retry_after: Duration,
    },
    /// The key was used with another payload; nothing ran.
    Mismatch {
        /// The fingerprint stored with the key.
        stored: String,
    },
    /// The effect failed before with an error retrying does not fix.
    Failed {
        /// The recorded error.
        message: String,
    },
}

/// Runs side effects at most once per key across every worker sharing a [`StateStore`].
///
/// `run` claims the key (a lease with a fence), runs the effect with the fence, and records
/// its result by compare-and-set on the fence. A later call with the same key and payload
/// gets the stored result ([`Outcome::Cached`]); with another payload
/// [`Outcome::Mismatch`]; while another worker's lease is live [`Outcome::InProgress`]. A
/// retryable or recoverable error releases the claim (the next call runs it); a fatal or
/// validation error is recorded ([`Outcome::Failed`] afterwards).
///
/// See [`MemoryStore`](super::MemoryStore) for an example.
#[derive(Debug)]
pub struct Idempotency {
    store: Arc<dyn StateStore>,
    config: IdempotencyConfig,
    owner: String,
    cache: Option<LruTtlCache<String, CompletedKey>>,
    renewer: Arc<Renewer>,
}

impl Idempotency {
    /// Claims on `store` with the default config.
    pub fn new(store: Arc<dyn StateStore>) -> Self {
        Self::build(store, IdempotencyConfig::new())
    }

    /// Claims on `store` with `config`.
    pub fn with_config(store: Arc<dyn StateStore>, config: IdempotencyConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self::build(store, config))
    }

    fn build(store: Arc<dyn StateStore>, config: IdempotencyConfig) -> Self {
        let cache = match config.local_cache {
            0 => None,
            n => LruTtlCache::builder(n).ttl(config.ttl).build().ok(),
        };
        Self {
            store,
            owner: owner_id(),
            config,
            cache,
            renewer: Arc::new(Renewer::default()),
        }
    }

    /// This worker's owner id: host, process and a random part, so that two workers never
    /// share one and one worker's repeated claim is recognised as its own.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The key of an effect: `PREFIX:TYPE:ENTITY`.
    pub fn key(&self, effect_type: &str, entity_id: &str) -> String {
        format!("{}:{effect_type}:{entity_id}", self.config.prefix)
    }

    /// Runs `effect` once for `key` and `fingerprint` (see [`fingerprint`] for a payload's);
    /// the effect gets the claim's fence to hand to a sink that refuses stale writers.
    pub fn run<T, F>(&self, key: &str, fingerprint: &str, effect: F) -> Result<Outcome<T>>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(Fence) -> Result<T>,
    {
        let result = self.run_claimed(key, fingerprint, effect);
        if crate::events::enabled() {
            let outcome = match &result {
                Ok(Outcome::Executed(_)) => "executed",
                Ok(Outcome::Cached(_)) => "cached",
                Ok(Outcome::InProgress { .. }) => "in_progress",
                Ok(Outcome::Mismatch { .. }) => "mismatch",
                Ok(Outcome::Failed { .. }) => "failed",
                Err(e) if e.to_string().contains("no longer holds the key") => "stale_fence",
                Err(e) => match e.class() {
                    ErrorClass::Retryable | ErrorClass::Recoverable => "released",
                    _ => "failed",
                },
            };
            // The effect's type names it, never the entity: keys are unbounded.
            let name = effect_type(&self.config.prefix, key);
            crate::events::emit(|| crate::events::GuardEvent {
                guard: crate::events::GuardKind::Idempotency,
                name,
                decision: crate::events::Decision::Idempotency { outcome },
            });
        }
        result
    }

    fn run_claimed<T, F>(&self, key: &str, fingerprint: &str, effect: F) -> Result<Outcome<T>>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(Fence) -> Result<T>,
    {
        if let Some(cache) = &self.cache
            && let Some((stored, bytes)) = cache.get(key)
        {
            return Ok(if stored == fingerprint {
                Outcome::Cached(self.decode(key, &bytes)?)
            } else {
                Outcome::Mismatch { stored }
            });
        }
        let request = ClaimRequest {
            key,
            fingerprint,
            owner: &self.owner,
            lease: self.config.lease,
            ttl: self.config.ttl,
        };
        let claim = match self.store.claim(&request) {
            Ok(c) => c,
            Err(e) if self.config.fail_open && e.class() == ErrorClass::Retryable => {
                tracing::warn!(key, error = %e.report(), "idempotency store unreachable; running the effect unguarded (fail-open)");
                return effect(Fence(0)).map(Outcome::Executed);
            }
            Err(e) => return Err(e),
        };
        let (fence, takeover) = match claim {
            Claim::Acquired { fence, takeover } => (fence, takeover),
            Claim::Completed { result } => {
                let value = self.decode(key, &result)?;
                self.remember(key, fingerprint, result);
                return Ok(Outcome::Cached(value));
            }
            Claim::Failed { message } => return Ok(Outcome::Failed { message }),
            Claim::InProgress { retry_after } => {
                tracing::debug!(key, ?retry_after, "effect in progress elsewhere");
                return Ok(Outcome::InProgress { retry_after });
            }
            Claim::Mismatch { stored } => return Ok(Outcome::Mismatch { stored }),
        };
        tracing::info!(key, fence = fence.0, takeover, "effect claimed");
        // A result that cannot be stored fails like the effect did: recorded, not left to
        // expire and run again.
        let result = self
            .with_renewal(key, fence, || effect(fence))
            .and_then(|value| Ok((self.encode(key, &value)?, value)));
        match result {
            Ok((bytes, value)) => {
                self.complete(key, fence, &bytes)?;
                tracing::info!(key, fence = fence.0, "effect completed");
                self.remember(key, fingerprint, bytes);
                Ok(Outcome::Executed(value))
            }
            Err(e) => {
                match e.class() {
                    ErrorClass::Retryable | ErrorClass::Recoverable => {
                        tracing::warn!(key, fence = fence.0, error = %e.report(), "effect failed; claim released for a retry");
                        if let Err(release) = self.store.release(key, fence) {
                            tracing::warn!(key, error = %release.report(), "could not release the claim; it expires with its lease");
                        }
                    }
                    ErrorClass::Fatal | ErrorClass::Validation => {
                        tracing::error!(key, fence = fence.0, error = %e.report(), "effect failed; failure recorded");
                        if let Err(record) =
                            self.store.fail(key, fence, &e.to_string(), self.config.ttl)
                        {
                            tracing::warn!(key, error = %record.report(), "could not record the failure");
                        }
                    }
                }
                Err(e)
            }
        }
    }

    /// Records the result, retrying a store that does not answer for up to one lease: the
    /// effect ran, and a completion lost to a store restart would let it run again once
    /// the lease expires. Past the lease another worker may hold the key, and the fence
    /// decides.
    fn complete(&self, key: &str, fence: Fence, bytes: &[u8]) -> Result<()> {
        let backoff =
            crate::backoff::Backoff::new(Duration::from_millis(25), Duration::from_secs(1), 2.0);
        let deadline = Instant::now() + self.config.lease;
        let mut attempt = 0;
        loop {
            match self.store.complete(key, fence, bytes, self.config.ttl) {
                Ok(()) => return Ok(()),
                Err(e) if e.class() == ErrorClass::Retryable => {
                    let delay = backoff.delay(attempt);
                    if Instant::now() + delay >= deadline {
                        tracing::error!(key, fence = fence.0, error = %e.report(), "effect ran but its result could not be recorded within its lease");
                        return Err(e);
                    }
                    tracing::warn!(key, fence = fence.0, error = %e.report(), "recording the result failed; retrying");
                    std::thread::sleep(delay);
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn encode<T: Serialize>(&self, key: &str, value: &T) -> Result<Vec<u8>> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| GuardrailError::external_with_class(e, ErrorClass::Fatal))?;
        if bytes.len() > self.config.max_result_bytes {
            return Err(GuardrailError::config(
                "idempotency.max_result_bytes",
                format!(
                    "the result of {key} takes {} bytes, more than the {} stored",
                    bytes.len(),
                    self.config.max_result_bytes
                ),
            ));
        }
        Ok(bytes)
    }

    fn decode<T: DeserializeOwned>(&self, key: &str, bytes: &[u8]) -> Result<T> {
        if bytes.len() > self.config.max_result_bytes {
            return Err(GuardrailError::Store {
                store: "idempotency".into(),
                operation: format!("read the result of {key}"),
                reason: format!(
                    "{} bytes, more than max_result_bytes = {}",
                    bytes.len(),
                    self.config.max_result_bytes
                ),
                class: ErrorClass::Fatal,
                source: None,
            });
        }
        serde_json::from_slice(bytes).map_err(|e| GuardrailError::Store {
            store: "idempotency".into(),
            operation: format!("read the result of {key}"),
            reason: format!("the stored result does not deserialize as the type asked for: {e}"),
            class: ErrorClass::Fatal,
            source: None,
        })
    }

    fn remember(&self, key: &str, fingerprint: &str, bytes: Vec<u8>) {
        if let Some(cache) = &self.cache {
            cache.insert(key.to_string(), (fingerprint.to_string(), Arc::new(bytes)));
        }
    }

    /// Runs `f` while the renewer thread extends the lease every third of it.
    fn with_renewal<R>(&self, key: &str, fence: Fence, f: impl FnOnce() -> R) -> R {
        let _registered = self
            .renewer
            .register(&self.store, key, fence, self.config.lease);
        f()
    }
}

impl Drop for Idempotency {
    fn drop(&mut self) {
        self.renewer.shut_down();
    }
}

/// Extends the leases of the claims whose effects are running, from one thread per
/// [`Idempotency`] started on first use: a claim costs a map entry, not a thread.
#[derive(Debug, Default)]
struct Renewer {
    state: Mutex<RenewState>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct RenewState {
    active: HashMap<u64, Active>,
    next_id: u64,
    started: bool,
    shutdown: bool,
}

#[derive(Debug)]
struct Active {
    key: String,
    fence: Fence,
    due: Instant,
    every: Duration,
    lease: Duration,
}

/// Takes a claim off the renewer when its effect returns (or panics).
struct Registered<'a> {
    renewer: &'a Arc<Renewer>,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.renewer.state.lock().active.remove(&self.id);
    }
}

impl Renewer {
    fn register<'a>(
        self: &'a Arc<Self>,
        store: &Arc<dyn StateStore>,
        key: &str,
        fence: Fence,
        lease: Duration,
    ) -> Registered<'a> {
        let every = lease / 3;
        let mut state = self.state.lock();
        let id = state.next_id;
        state.next_id += 1;
        state.active.insert(
            id,
            Active {
                key: key.to_string(),
                fence,
                due: Instant::now() + every,
                every,
                lease,
            },
        );
        if !state.started {
            state.started = true;
            let (me, store) = (Arc::clone(self), Arc::clone(store));
            let spawned = std::thread::Builder::new()
                .name("guardrails-lease-renewer".into())
                .spawn(move || me.run(store.as_ref()));
            if let Err(e) = spawned {
                // Without the thread leases still hold for their length; long effects may
                // be taken over, which the fence makes safe.
                tracing::warn!(error = %e, "cannot start the lease renewer");
            }
        }
        self.wake.notify_one();
        Registered { renewer: self, id }
    }

    fn shut_down(&self) {
        self.state.lock().shutdown = true;
        self.wake.notify_one();
    }

    fn run(&self, store: &dyn StateStore) {
        let mut state = self.state.lock();
        loop {
            if state.shutdown {
                return;
            }
            let now = Instant::now();
            let due: Vec<(u64, String, Fence, Duration)> = state
                .active
                .iter()
                .filter(|(_, a)| a.due <= now)
                .map(|(id, a)| (*id, a.key.clone(), a.fence, a.lease))
                .collect();
            if due.is_empty() {
                match state.active.values().map(|a| a.due).min() {
                    Some(next) => {
                        self.wake.wait_until(&mut state, next);
                    }
                    None => self.wake.wait(&mut state),
                }
                continue;
            }
            drop(state);
            let mut lost = Vec::new();
            for (id, key, fence, lease) in &due {
                match store.renew(key, *fence, *lease) {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(
                            key,
                            fence = fence.0,
                            "lease lost: another worker took the key over"
                        );
                        lost.push(*id);
                    }
                    Err(e) => tracing::warn!(key, error = %e.report(), "lease renewal failed"),
                }
            }
            state = self.state.lock();
            for (id, ..) in &due {
                if lost.contains(id) {
                    state.active.remove(id);
                } else if let Some(a) = state.active.get_mut(id) {
                    a.due = Instant::now() + a.every;
                }
            }
        }
    }
}

/// The `TYPE` of a key `PREFIX:TYPE:ENTITY`, or the prefix for a key of another shape.
fn effect_type<'a>(prefix: &'a str, key: &'a str) -> &'a str {
    key.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix(':'))
        .and_then(|rest| rest.split(':').next())
        .filter(|t| !t.is_empty())
        .unwrap_or(prefix)
}

fn owner_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().chars().take(64).collect::<String>())
        .unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let unique = twox_hash::XxHash3_64::oneshot(
        format!("{host}{}{nanos}{:p}", std::process::id(), &nanos).as_bytes(),
    );
    format!("{host}:{}:{unique:016x}", std::process::id())
}

/// The fingerprint of a JSON payload: XXH3-128 of its canonical text (object keys sorted,
/// no whitespace), so the same payload written in another key order matches.
///
/// ```
/// use guardrails::state::fingerprint;
/// use serde_json::json;
///
/// assert_eq!(fingerprint(&json!({"a": 1, "b": [2]})), fingerprint(&json!({"b": [2], "a": 1})));
/// assert_ne!(fingerprint(&json!({"a": 1})), fingerprint(&json!({"a": 2})));
/// ```
pub fn fingerprint(payload: &Value) -> String {
    let mut text = String::new();
    canonical(payload, &mut text);
    format!("{:032x}", twox_hash::XxHash3_128::oneshot(text.as_bytes()))
}

fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The entity id at `pointer` (RFC 6901, e.g. `/order/id`) of a JSON payload, as text.
///
/// ```
/// use guardrails::state::key_from_json;
/// use serde_json::json;
///
/// let payload = json!({"order": {"id": 17, "amount": 3}});
/// assert_eq!(key_from_json(&payload, "/order/id")?, "17");
/// assert!(key_from_json(&payload, "/order/missing").is_err());
/// # Ok::<(), guardrails::GuardrailError>(())
/// ```
pub fn key_from_json(payload: &Value, pointer: &str) -> Result<String> {
    match payload.pointer(pointer) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(v.to_string()),
        Some(other) => Err(GuardrailError::config(
            "idempotency.key_pointer",
            format!("{pointer} holds {other}, not a string, number or boolean"),
        )),
        None => Err(GuardrailError::config(
            "idempotency.key_pointer",
            format!("the payload has nothing at {pointer}"),
        )),
    }
}
