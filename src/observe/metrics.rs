//! Every guard decision as a metric, through the `metrics` facade (feature `metrics`).
//!
//! [`GuardMetrics`] subscribes to the crate's [guard events](crate::events) and records each
//! one in the metric the [table in the README](https://docs.rs/guardrails) names
//! ([`METRICS`] holds the same table). Handles are registered once per label set and cached,
//! so a decision costs a hash of its labels, a read-locked lookup and an atomic add — no
//! allocation, no `counter!` registration on the hot path. Calls that decide nothing (a
//! closed breaker's success, a cache hit) emit no event and cost nothing here; their
//! totals are read from the guards' own counters when metrics are exported
//! ([`GuardMetrics::watch_cache`], [`GuardMetrics::watch_breaker`], [`GuardMetrics::refresh`]).
//!
//! Every label set is judged by a [`CardinalityGuard`] before it is registered (default:
//! mode `Overflow`, 1 000 sets per metric), so a guard named from user input cannot grow the
//! series count without bound.
//!
//! Handles come from the recorder installed when a label set is first seen: install the
//! recorder (e.g. [`PrometheusExporter`](super::prometheus::PrometheusExporter)) first.
//!
//! ```
//! use std::time::Duration;
//! use guardrails::observe::metrics::GuardMetrics;
//! use guardrails::resilience::{RateLimitConfig, RateLimiter};
//! use metrics_util::debugging::DebuggingRecorder;
//!
//! let recorder = DebuggingRecorder::new();
//! let snapshotter = recorder.snapshotter();
//! metrics::with_local_recorder(&recorder, || -> guardrails::Result<()> {
//!     let metrics = GuardMetrics::new();
//!     let _subscription = metrics.subscribe();
//!     let limiter = RateLimiter::new("doc-metrics", RateLimitConfig::per(1, Duration::from_secs(60)))?;
//!     limiter.check()?;
//!     assert!(limiter.check().is_err());
//!     Ok(())
//! })?;
//! let names: Vec<String> = snapshotter
//!     .snapshot()
//!     .into_vec()
//!     .into_iter()
//!     .map(|(key, ..)| key.key().name().to_string())
//!     .collect();
//! assert!(names.contains(&"guardrails_rate_limited_total".to_string()));
//! # Ok::<(), guardrails::GuardrailError>(())
//! ```

use std::hash::Hash;
use std::sync::{Arc, Weak};

use metrics::{Counter, Gauge, Histogram, Key, Label, Unit};
use parking_lot::Mutex;

use super::cardinality::{CardinalityGuard, OVERFLOW_LABEL, Verdict};
use super::series::{SeriesKey, SeriesTable};
use crate::cache::LruTtlCache;
use crate::events::{self, Decision, GuardEvent, GuardKind, Subscription};
use crate::resilience::breaker::{BreakerState, CircuitBreaker};

/// What kind of metric a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// A monotonically increasing total (`_total`).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A distribution, exported with buckets.
    Histogram,
}

/// One documented metric: its name, kind, labels and meaning.
#[derive(Debug, Clone, Copy)]
pub struct MetricDoc {
    /// The exported name.
    pub name: &'static str,
    /// Its kind.
    pub kind: MetricKind,
    /// Its label names.
    pub labels: &'static [&'static str],
    /// What it counts or measures.
    pub help: &'static str,
}

macro_rules! metric_docs {
    ($($const:ident = $name:literal, $kind:ident, [$($label:literal),*], $help:literal;)*) => {
        $(
            #[doc = concat!("`", $name, "`: ", $help)]
            pub const $const: &str = $name;
        )*
        /// Every metric the crate exports, in the order of the README's table.
        pub const METRICS: &[MetricDoc] = &[
            $(MetricDoc { name: $name, kind: MetricKind::$kind, labels: &[$($label),*], help: $help },)*
        ];
    };
}

metric_docs! {
    BREAKER_STATE = "circuit_breaker_state", Gauge, ["model"],
        "the breaker's state: 0 closed, 1 open, 2 half_open, 3 disabled, 4 forced_open, 5 metrics_only";
    BREAKER_TRANSITIONS = "guardrails_breaker_transitions_total", Counter, ["name", "from", "to"],
        "breaker state changes";
    BREAKER_NOT_PERMITTED = "guardrails_breaker_calls_not_permitted_total", Counter, ["name"],
        "calls an open breaker refused";
    BREAKER_FAILURE_RATE = "guardrails_breaker_failure_rate", Gauge, ["name"],
        "failed / buffered calls in the breaker's window (watched breakers; -1 before minimum_calls)";
    DOWNSHIFTS = "llm_mode_downshift_total", Counter, ["name", "from", "to"],
        "calls a fallback chain served from another alternative than its preferred one";
    RETRIES = "guardrails_retries_total", Counter, ["name"],
        "failed attempts that were retried";
    RETRY_DELAY = "guardrails_retry_delay_seconds", Histogram, ["name"],
        "the wait before each retry";
    RETRIES_EXHAUSTED = "guardrails_retries_exhausted_total", Counter, ["name"],
        "retry loops that gave up";
    RETRY_RECOVERIES = "guardrails_retry_recoveries_total", Counter, ["name"],
        "retry loops that succeeded after at least one retry";
    TIMEOUTS = "guardrails_timeouts_total", Counter, ["name"],
        "operations that ran past their timeout";
    RATE_LIMITED = "guardrails_rate_limited_total", Counter, ["name"],
        "calls a rate limiter refused";
    BULKHEAD_FULL = "guardrails_bulkhead_full_total", Counter, ["name"],
        "calls a full bulkhead refused";
    CACHE_HITS = "cache_hits_total", Counter, ["name"],
        "reads that found a live entry (watched caches)";
    CACHE_MISSES = "cache_misses_total", Counter, ["name"],
        "reads that did not (watched caches)";
    CACHE_EVICTIONS = "cache_evictions_total", Counter, ["name"],
        "entries evicted for room";
    CACHE_EXPIRATIONS = "cache_ttl_expirations_total", Counter, ["name"],
        "entries removed because their TTL passed";
    CACHE_SIZE = "cache_size", Gauge, ["name"],
        "entries held (watched caches)";
    RESOURCE_LIMIT_HITS = "guardrails_resource_limit_hits_total", Counter, ["name", "resource"],
        "times the resource guard refused entry";
    JSON_PARSE_FAILURES = "llm_json_parse_failures_total", Counter, ["name"],
        "LLM answers the JSON guard could not turn into valid JSON";
    JSON_REPAIRS = "guardrails_json_repairs_total", Counter, ["name"],
        "LLM answers the JSON guard repaired into valid JSON";
    JSON_FALLBACKS = "llm_json_fallback_used_total", Counter, ["name"],
        "calls the JSON guard answered with its fallback (or an error) after its attempts";
    GATE_RESULTS = "guardrails_stage_gate_results_total", Counter, ["stage", "gate", "result"],
        "stage gates judged (result = passed, failed or warned)";
    QUARANTINED = "guardrails_stage_quarantined_total", Counter, ["stage"],
        "items a stage quarantined";
    IDEMPOTENCY = "guardrails_idempotency_outcomes_total", Counter, ["effect", "outcome"],
        "what each exactly-once call came to (executed, cached, in_progress, mismatch, failed, released, stale_fence)";
    SUPERVISOR_FAILURES = "guardrails_supervisor_task_failures_total", Counter, ["name", "kind"],
        "supervised task failures, by failure kind";
    SUPERVISOR_ACTIONS = "guardrails_supervisor_recovery_actions_total", Counter, ["name", "action", "result"],
        "recovery actions run (result = ok or failed)";
    SUPERVISOR_RESTARTS = "guardrails_supervisor_restarts_total", Counter, ["name"],
        "supervised task restarts";
    SUPERVISOR_GAVE_UP = "guardrails_supervisor_gave_up_total", Counter, ["name"],
        "supervisors that gave up (restart intensity exceeded or a fatal failure)";
    ALERTS = "guardrails_alerts_total", Counter, ["alertname", "severity", "status"],
        "alerts delivered by the alert hooks' metric sink (status = firing or resolved)";
    LLM_HEALTH_STATUS = "llm_health_status", Gauge, ["model"],
        "a model's health: 1 healthy, 0 unhealthy";
    LLM_HEALTH_DURATION = "llm_health_check_duration_seconds", Histogram, ["model"],
        "how long a model's health check took (probe included)";
}

/// The gauge value of a breaker state in [`BREAKER_STATE`].
pub fn breaker_state_value(state: &str) -> f64 {
    match state {
        "closed" => 0.0,
        "open" => 1.0,
        "half_open" => 2.0,
        "disabled" => 3.0,
        "forced_open" => 4.0,
        "metrics_only" => 5.0,
        _ => -1.0,
    }
}

type Watch = Box<dyn Fn(&Inner) -> bool + Send + Sync>;

struct Inner {
    guard: Arc<CardinalityGuard>,
    counters: SeriesTable<Counter>,
    gauges: SeriesTable<Gauge>,
    histograms: SeriesTable<Histogram>,
    watches: Mutex<Vec<Watch>>,
}

/// Records every guard decision as a metric; see the [module docs](self). Cheap to clone
/// (one `Arc`).
#[derive(Clone)]
pub struct GuardMetrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for GuardMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardMetrics")
            .field("series", &self.inner.counters.len())
            .field("watches", &self.inner.watches.lock().len())
            .finish_non_exhaustive()
    }
}

impl Default for GuardMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl GuardMetrics {
    /// Metrics judged by the default cardinality guard in mode `Overflow` (totals are kept,
    /// label sets past 1 000 per metric fold into `overflow="true"`).
    pub fn new() -> Self {
        Self::with_cardinality(Arc::new(CardinalityGuard::default_overflow()))
    }

    /// Metrics judged by `guard` (share it with a [`CardinalityLayer`] so both count the
    /// same series).
    ///
    /// [`CardinalityLayer`]: super::cardinality::CardinalityLayer
    pub fn with_cardinality(guard: Arc<CardinalityGuard>) -> Self {
        Self {
            inner: Arc::new(Inner {
                guard,
                counters: SeriesTable::default(),
                gauges: SeriesTable::default(),
                histograms: SeriesTable::default(),
                watches: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The cardinality guard the labels are judged by.
    pub fn cardinality(&self) -> &Arc<CardinalityGuard> {
        &self.inner.guard
    }

    /// Describes every metric of [`METRICS`] to the installed recorder (its `# HELP` lines).
    pub fn describe(&self) {
        for m in METRICS {
            let unit = m.name.ends_with("_seconds").then_some(Unit::Seconds);
            metrics::with_recorder(|r| match m.kind {
                MetricKind::Counter => r.describe_counter(m.name.into(), unit, m.help.into()),
                MetricKind::Gauge => r.describe_gauge(m.name.into(), unit, m.help.into()),
                MetricKind::Histogram => r.describe_histogram(m.name.into(), unit, m.help.into()),
            });
        }
    }

    /// Subscribes to the guard events; recording stops when the subscription is dropped.
    pub fn subscribe(&self) -> Subscription {
        self.describe();
        let this = self.clone();
        events::subscribe(move |e| this.record(e))
    }

    /// Records one event (what the subscription does for each).
    pub fn record(&self, e: &GuardEvent<'_>) {
        let name = e.name;
        match &e.decision {
            Decision::BreakerTransition { from, to, .. } => {
                self.counter(
                    BREAKER_TRANSITIONS,
                    &[("name", name), ("from", from), ("to", to)],
                    1,
                );
                self.gauge(BREAKER_STATE, &[("model", name)], breaker_state_value(to));
            }
            Decision::CallNotPermitted => self.counter(BREAKER_NOT_PERMITTED, &[("name", name)], 1),
            Decision::Downshift { preferred, served } => self.counter(
                DOWNSHIFTS,
                &[("name", name), ("from", preferred), ("to", served)],
                1,
            ),
            Decision::Retry { delay, .. } => {
                self.counter(RETRIES, &[("name", name)], 1);
                self.histogram(RETRY_DELAY, &[("name", name)], delay.as_secs_f64());
            }
            Decision::RetryEnded { succeeded, .. } => {
                if *succeeded {
                    self.counter(RETRY_RECOVERIES, &[("name", name)], 1)
                }
            }
            Decision::RetriesExhausted { .. } => {
                self.counter(RETRIES_EXHAUSTED, &[("name", name)], 1)
            }
            Decision::TimedOut { .. } => self.counter(TIMEOUTS, &[("name", name)], 1),
            Decision::RateLimited { .. } => self.counter(RATE_LIMITED, &[("name", name)], 1),
            Decision::BulkheadFull { .. } => self.counter(BULKHEAD_FULL, &[("name", name)], 1),
            Decision::CacheEviction => self.counter(CACHE_EVICTIONS, &[("name", name)], 1),
            Decision::CacheExpiry { count } => {
                self.counter(CACHE_EXPIRATIONS, &[("name", name)], *count)
            }
            Decision::LimitHit { resource } => self.counter(
                RESOURCE_LIMIT_HITS,
                &[("name", name), ("resource", resource)],
                1,
            ),
            Decision::JsonRepaired => self.counter(JSON_REPAIRS, &[("name", name)], 1),
            Decision::JsonFallback => self.counter(JSON_FALLBACKS, &[("name", name)], 1),
            Decision::ValidationFailed { .. } if e.guard == GuardKind::JsonGuard => {
                self.counter(JSON_PARSE_FAILURES, &[("name", name)], 1)
            }
            // Only the JSON guard emits it today; another guard's failures get a documented
            // metric of their own when it does.
            Decision::ValidationFailed { .. } => {}
            Decision::GateResult {
                gate,
                passed,
                mandatory,
            } => {
                let result = match (passed, mandatory) {
                    (true, _) => "passed",
                    (false, true) => "failed",
                    (false, false) => "warned",
                };
                self.counter(
                    GATE_RESULTS,
                    &[("stage", name), ("gate", gate), ("result", result)],
                    1,
                )
            }
            Decision::Quarantined => self.counter(QUARANTINED, &[("stage", name)], 1),
            Decision::Idempotency { outcome } => {
                self.counter(IDEMPOTENCY, &[("effect", name), ("outcome", outcome)], 1)
            }
            Decision::TaskFailed { kind, .. } => {
                self.counter(SUPERVISOR_FAILURES, &[("name", name), ("kind", kind)], 1)
            }
            Decision::RecoveryAction { action, ok } => self.counter(
                SUPERVISOR_ACTIONS,
                &[
                    ("name", name),
                    ("action", action),
                    ("result", if *ok { "ok" } else { "failed" }),
                ],
                1,
            ),
            Decision::Restart { .. } => self.counter(SUPERVISOR_RESTARTS, &[("name", name)], 1),
            Decision::GaveUp => self.counter(SUPERVISOR_GAVE_UP, &[("name", name)], 1),
        }
    }

    /// Exports `cache`'s hits, misses and size as `name` at every [`refresh`](Self::refresh)
    /// (evictions and expiries come from its events). Holds the cache weakly: a dropped
    /// cache stops being watched.
    pub fn watch_cache<K, V>(&self, name: &str, cache: &Arc<LruTtlCache<K, V>>)
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
    {
        let cache: Weak<LruTtlCache<K, V>> = Arc::downgrade(cache);
        let name = name.to_string();
        self.watch(move |m| {
            let Some(cache) = cache.upgrade() else {
                return false;
            };
            let stats = cache.stats();
            let labels = [("name", name.as_str())];
            m.absolute(CACHE_HITS, &labels, stats.hits);
            m.absolute(CACHE_MISSES, &labels, stats.misses);
            m.set(CACHE_SIZE, &labels, stats.size as f64);
            true
        });
    }

    /// Exports `breaker`'s state and failure rate at every [`refresh`](Self::refresh), so a
    /// breaker that never changed state has a series too. Held weakly.
    pub fn watch_breaker(&self, breaker: &Arc<CircuitBreaker>) {
        let breaker = Arc::downgrade(breaker);
        self.watch(move |m| {
            let Some(breaker) = breaker.upgrade() else {
                return false;
            };
            let snapshot = breaker.metrics();
            let state: BreakerState = snapshot.state;
            m.set(
                BREAKER_STATE,
                &[("model", breaker.name())],
                breaker_state_value(state.as_str()),
            );
            m.set(
                BREAKER_FAILURE_RATE,
                &[("name", breaker.name())],
                snapshot.failure_rate.unwrap_or(-1.0),
            );
            true
        });
    }

    fn watch(&self, f: impl Fn(&Inner) -> bool + Send + Sync + 'static) {
        self.inner.watches.lock().push(Box::new(f));
    }

    /// Reads every watched cache and breaker into its metrics (the exporter calls this
    /// before each scrape); watches whose target was dropped are removed.
    pub fn refresh(&self) {
        let inner = &*self.inner;
        inner.watches.lock().retain(|w| w(inner));
    }

    /// Adds `by` to the counter `name` with `labels`.
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)], by: u64) {
        self.inner.counter_handle(name, labels, |c| c.increment(by));
    }

    /// Sets the gauge `name` with `labels` to `value`.
    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)], value: f64) {
        self.inner.set(name, labels, value);
    }

    /// Records `value` in the histogram `name` with `labels`.
    pub fn histogram(&self, name: &'static str, labels: &[(&'static str, &str)], value: f64) {
        let inner = &*self.inner;
        inner.handle(
            &inner.histograms,
            name,
            labels,
            |r, k, m| r.register_histogram(k, m),
            |h| h.record(value),
        );
    }
}

static METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

impl Inner {
    fn counter_handle(
        &self,
        name: &'static str,
        labels: &[(&'static str, &str)],
        f: impl FnOnce(&Counter),
    ) {
        self.handle(
            &self.counters,
            name,
            labels,
            |r, k, m| r.register_counter(k, m),
            f,
        );
    }

    fn absolute(&self, name: &'static str, labels: &[(&'static str, &str)], value: u64) {
        self.counter_handle(name, labels, |c| c.absolute(value));
    }

    fn set(&self, name: &'static str, labels: &[(&'static str, &str)], value: f64) {
        self.handle(
            &self.gauges,
            name,
            labels,
            |r, k, m| r.register_gauge(k, m),
            |g| g.set(value),
        );
    }

    /// Runs `use_it` on the cached handle of `name` with `labels`, registered (after the
    /// cardinality guard judged the set) on first sight; nothing where the guard refused it.
    #[inline]
    fn handle<H: Clone>(
        &self,
        handles: &SeriesTable<H>,
        name: &'static str,
        labels: &[(&'static str, &str)],
        register: impl FnOnce(&dyn metrics::Recorder, &Key, &metrics::Metadata<'_>) -> H,
        use_it: impl FnOnce(&H),
    ) {
        let key = SeriesKey {
            parts: &[name],
            labels,
        };
        let hash = handles.hash(&key);
        let mut use_it = Some(use_it);
        let found = handles.with(hash, &key, |h| {
            if let Some(f) = use_it.take() {
                f(h)
            }
        });
        if found.is_none()
            && let Some(h) = self.register_new(handles, hash, name, labels, register)
            && let Some(f) = use_it.take()
        {
            f(&h);
        }
    }

    #[cold]
    fn register_new<H: Clone>(
        &self,
        handles: &SeriesTable<H>,
        hash: u64,
        name: &'static str,
        labels: &[(&'static str, &str)],
        register: impl FnOnce(&dyn metrics::Recorder, &Key, &metrics::Metadata<'_>) -> H,
    ) -> Option<H> {
        let overflow: [(&'static str, &str); 1] = [(OVERFLOW_LABEL, "true")];
        let (hash, labels) = match self.guard.check(name, labels) {
            Ok(Verdict::Allowed) => (hash, labels),
            Ok(Verdict::Overflow) => {
                // The overflow series is cached; the refused set is not (that would grow
                // the cache as the series would have grown).
                let key = SeriesKey {
                    parts: &[name],
                    labels: &overflow,
                };
                let hash = handles.hash(&key);
                if let Some(h) = handles.with(hash, &key, H::clone) {
                    return Some(h);
                }
                (hash, &overflow[..])
            }
            Err(e) => {
                tracing::debug!(error = %e, "guard metric refused");
                return None;
            }
        };
        let key = SeriesKey {
            parts: &[name],
            labels,
        };
        // Registered under the write lock: two threads seeing a new set at once register
        // it once.
        handles.insert_with(
            hash,
            &key,
            || {
                let key = Key::from_parts(
                    name,
                    labels
                        .iter()
                        .map(|(k, v)| Label::new(*k, v.to_string()))
                        .collect::<Vec<_>>(),
                );
                Some(metrics::with_recorder(|r| register(r, &key, &METADATA)))
            },
            H::clone,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::cardinality::{CardinalityConfig, CardinalityMode};
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    #[test]
    fn handles_are_registered_once_per_label_set_and_overflow_is_bounded() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let guard = CardinalityGuard::new(CardinalityConfig {
            mode: CardinalityMode::Overflow,
            max_series_per_metric: 3,
            ..CardinalityConfig::default()
        })
        .unwrap();
        let m = GuardMetrics::with_cardinality(Arc::new(guard));
        metrics::with_local_recorder(&recorder, || {
            for i in 0..10 {
                let name = format!("limiter-{i}");
                for _ in 0..2 {
                    m.record(&GuardEvent {
                        guard: GuardKind::RateLimiter,
                        name: &name,
                        decision: Decision::RateLimited {
                            retry_after: std::time::Duration::from_secs(1),
                        },
                    });
                }
            }
        });
        let mut series: Vec<(String, u64)> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let labels: Vec<String> = key
                    .key()
                    .labels()
                    .map(|l| format!("{}={}", l.key(), l.value()))
                    .collect();
                let DebugValue::Counter(v) = value else {
                    panic!("not a counter")
                };
                (labels.join(","), v)
            })
            .collect();
        series.sort();
        assert_eq!(series.len(), 4, "{series:?}");
        assert_eq!(series.iter().map(|s| s.1).sum::<u64>(), 20);
        assert!(
            series.contains(&("overflow=true".to_string(), 14)),
            "{series:?}"
        );
        // Only the 3 allowed sets and the overflow series are cached.
        assert_eq!(m.inner.counters.len(), 4);
    }

    #[test]
    fn every_documented_name_follows_prometheus_conventions() {
        for m in METRICS {
            match m.kind {
                MetricKind::Counter => assert!(m.name.ends_with("_total"), "{}", m.name),
                MetricKind::Histogram => assert!(m.name.ends_with("_seconds"), "{}", m.name),
                MetricKind::Gauge => assert!(!m.name.ends_with("_total"), "{}", m.name),
            }
            assert!(m.labels.iter().all(|l| !l.ends_with("_id")));
        }
    }
}
