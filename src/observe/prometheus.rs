//! The Prometheus exporter, set up the way a guard's metrics need (feature `metrics`).
//!
//! [`PrometheusExporter::install`] installs `metrics-exporter-prometheus`'s recorder as the
//! process's `metrics` recorder, behind a [`CardinalityLayer`], with:
//! - buckets for every `_seconds` histogram (so they export as histograms, not summaries),
//! - its upkeep running on a thread of its own (without upkeep, histogram samples pile up
//!   without bound between scrapes),
//! - [`GuardMetrics`] subscribed to the guard events, sharing the layer's cardinality guard.
//!
//! The exporter does not listen on a port itself: [`render`](PrometheusExporter::render)
//! gives the text exposition format, which `guardrails serve`'s `/metrics` (feature `http`)
//! or any HTTP handler of the user's serves. `examples/observe.rs` shows both.
//!
//! ```no_run
//! use guardrails::observe::prometheus::{PrometheusConfig, PrometheusExporter};
//!
//! let exporter = PrometheusExporter::install(PrometheusConfig::default())?;
//! // ... guards run ...
//! let text = exporter.render();
//! assert!(text.contains("# TYPE"));
//! # Ok::<(), guardrails::GuardrailError>(())
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::layers::Layer;
use parking_lot::{Condvar, Mutex};
use serde::Deserialize;

use super::cardinality::{CardinalityConfig, CardinalityGuard, CardinalityLayer, CardinalityMode};
use super::metrics::GuardMetrics;
use crate::error::{GuardrailError, Result};
use crate::events::Subscription;

/// Buckets (seconds) for latency histograms: 1 ms to 60 s.
pub const DEFAULT_SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// How the exporter is set up.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrometheusConfig {
    /// Buckets of every `_seconds` histogram.
    pub seconds_buckets: Vec<f64>,
    /// How often upkeep drains histogram samples.
    #[serde(with = "humantime_serde")]
    pub upkeep_interval: Duration,
    /// The cardinality guard in front of the recorder (the crate's and the user's metrics).
    pub cardinality: CardinalityConfig,
    /// Labels added to every series (e.g. `service`, `env`).
    pub global_labels: Vec<(String, String)>,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        Self {
            seconds_buckets: DEFAULT_SECONDS_BUCKETS.to_vec(),
            upkeep_interval: Duration::from_secs(5),
            cardinality: CardinalityConfig {
                mode: CardinalityMode::Overflow,
                ..CardinalityConfig::default()
            },
            global_labels: Vec::new(),
        }
    }
}

struct Upkeep {
    stop: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

/// The installed Prometheus recorder, its upkeep thread and the guard metrics; see the
/// [module docs](self). Dropping it stops the upkeep and the guard-event subscription (the
/// recorder stays installed: `metrics` cannot uninstall one).
pub struct PrometheusExporter {
    handle: PrometheusHandle,
    metrics: GuardMetrics,
    upkeep: Arc<Upkeep>,
    thread: Option<JoinHandle<()>>,
    _subscription: Subscription,
}

impl std::fmt::Debug for PrometheusExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrometheusExporter")
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

impl PrometheusExporter {
    /// Installs the recorder as the process's `metrics` recorder and starts upkeep.
    ///
    /// # Errors
    /// [`GuardrailError::Config`] for empty or unsorted buckets, a zero upkeep interval, a
    /// bad cardinality pattern, or when a recorder is installed already.
    pub fn install(config: PrometheusConfig) -> Result<Self> {
        if config.upkeep_interval.is_zero() {
            return Err(GuardrailError::config(
                "metrics.upkeep_interval",
                "must be above zero",
            ));
        }
        if config.seconds_buckets.is_empty()
            || config.seconds_buckets.windows(2).any(|w| w[0] >= w[1])
            || config.seconds_buckets.iter().any(|b| !b.is_finite())
        {
            return Err(GuardrailError::config(
                "metrics.seconds_buckets",
                "must be finite, increasing and not empty",
            ));
        }
        let guard = Arc::new(CardinalityGuard::new(config.cardinality.clone())?);
        let mut builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &config.seconds_buckets)
            .map_err(|e| GuardrailError::config("metrics.seconds_buckets", e.to_string()))?;
        for (k, v) in &config.global_labels {
            builder = builder.add_global_label(k, v);
        }
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let layered = CardinalityLayer::new(Arc::clone(&guard)).layer(recorder);
        metrics::set_global_recorder(layered).map_err(|_| {
            GuardrailError::config("metrics", "a metrics recorder is installed already")
        })?;

        let metrics = GuardMetrics::with_cardinality(guard);
        let subscription = metrics.subscribe();
        let upkeep = Arc::new(Upkeep {
            stop: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let thread = {
            let upkeep = Arc::clone(&upkeep);
            let handle = handle.clone();
            let interval = config.upkeep_interval;
            std::thread::Builder::new()
                .name("guardrails-metrics-upkeep".into())
                .spawn(move || {
                    let mut lock = upkeep.lock.lock();
                    while !upkeep.stop.load(Ordering::Acquire) {
                        upkeep.wake.wait_for(&mut lock, interval);
                        handle.run_upkeep();
                    }
                })
                .map_err(|source| GuardrailError::Io { path: None, source })?
        };
        Ok(Self {
            handle,
            metrics,
            upkeep,
            thread: Some(thread),
            _subscription: subscription,
        })
    }

    /// The guard metrics (to [`watch_cache`](GuardMetrics::watch_cache) or
    /// [`watch_breaker`](GuardMetrics::watch_breaker)).
    pub fn metrics(&self) -> &GuardMetrics {
        &self.metrics
    }

    /// The exporter's handle (for a custom scrape endpoint).
    pub fn handle(&self) -> &PrometheusHandle {
        &self.handle
    }

    /// Every series in Prometheus's text format, watched guards read first.
    pub fn render(&self) -> String {
        self.metrics.refresh();
        self.handle.render()
    }
}

impl Drop for PrometheusExporter {
    fn drop(&mut self) {
        self.upkeep.stop.store(true, Ordering::Release);
        {
            let _lock = self.upkeep.lock.lock();
            self.upkeep.wake.notify_all();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
