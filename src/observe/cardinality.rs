//! The cardinality guard: metric labels that would explode a time-series database are
//! refused, warned about or folded into one overflow series before they reach an exporter.
//!
//! Two things make a metric's cardinality explode: a label whose values are unbounded by
//! nature (an order id, a job id, a timestamp) and a label set that grows without bound
//! anyway (a model name taken from user input). The guard refuses the first by name — an
//! exact list plus glob patterns (`*_id`, `*_uuid`, `*_guid`, `*timestamp*`) — and caps
//! the second: each metric may have at most [`CardinalityConfig::max_series_per_metric`]
//! distinct label sets. What happens to a refused set is the [`CardinalityMode`]:
//!
//! | mode | forbidden label | label set over the cap |
//! |---|---|---|
//! | `Strict` | error | error |
//! | `Warn` | passes, one warning per metric and label | passes, one warning per metric |
//! | `Overflow` | the set is folded into the overflow series | folded into the overflow series |
//!
//! The overflow series is the metric with the single label `overflow="true"`, as
//! OpenTelemetry's SDKs fold attribute sets past their limit: totals stay right, and the
//! series count stays bounded.
//!
//! The guard judges every label the crate's own metrics emit (see
//! `observe::metrics::GuardMetrics`), and [`CardinalityLayer`] enforces it in front of any
//! `metrics` recorder, so a user's own `counter!` calls are judged too (feature `metrics`).
//!
//! ```
//! use guardrails::observe::cardinality::{CardinalityConfig, CardinalityGuard, CardinalityMode, Verdict};
//!
//! let guard = CardinalityGuard::new(CardinalityConfig {
//!     mode: CardinalityMode::Overflow,
//!     max_series_per_metric: 2,
//!     ..CardinalityConfig::default()
//! })?;
//! assert_eq!(guard.check("orders_total", &[("region", "eu")])?, Verdict::Allowed);
//! assert_eq!(guard.check("orders_total", &[("order_id", "A-17")])?, Verdict::Overflow);
//! assert_eq!(guard.check("orders_total", &[("region", "us")])?, Verdict::Allowed);
//! assert_eq!(guard.check("orders_total", &[("region", "ap")])?, Verdict::Overflow);
//! // A set seen before passes again.
//! assert_eq!(guard.check("orders_total", &[("region", "eu")])?, Verdict::Allowed);
//!
//! let strict = CardinalityGuard::new(CardinalityConfig::default())?;
//! let err = strict.check("orders_total", &[("order_id", "A-17")]).unwrap_err();
//! assert!(err.to_string().contains("order_id"));
//! # Ok::<(), guardrails::GuardrailError>(())
//! ```

use std::hash::{BuildHasher, Hash, Hasher};

use hashbrown::{HashMap, HashSet};
use parking_lot::{Mutex, RwLock};
use serde::Deserialize;

use crate::error::{GuardrailError, Result};

/// The label names refused by default: ids and timestamps, whose values never repeat.
pub const DEFAULT_FORBIDDEN_LABELS: &[&str] = &[
    "id",
    "job_id",
    "order_id",
    "user_id",
    "request_id",
    "trace_id",
    "span_id",
    "session_id",
    "uuid",
    "timestamp",
    "email",
];

/// The label-name patterns refused by default (`*` matches any run of characters).
pub const DEFAULT_FORBIDDEN_PATTERNS: &[&str] = &["*_id", "*_uuid", "*_guid", "*timestamp*"];

/// What the guard does with a label set it refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CardinalityMode {
    /// Refuse with [`GuardrailError::Cardinality`] (tests, CI, strict services).
    #[default]
    Strict,
    /// Let it through and log one warning per metric (and label).
    Warn,
    /// Fold it into the metric's one `overflow="true"` series.
    Overflow,
}

/// What the guard checks.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CardinalityConfig {
    /// Exact label names refused (compared without case).
    pub forbidden_labels: Vec<String>,
    /// Glob patterns of label names refused: `*` matches any run of characters, nothing
    /// else is special (compared without case).
    pub forbidden_patterns: Vec<String>,
    /// The most distinct label sets one metric may have; 0 = no cap.
    pub max_series_per_metric: usize,
    /// The most distinct metric names the guard tracks; names past it are judged by their
    /// labels' names only (a guard must itself stay bounded).
    pub max_metrics: usize,
    /// What happens to a refused set.
    pub mode: CardinalityMode,
}

impl Default for CardinalityConfig {
    fn default() -> Self {
        Self {
            forbidden_labels: DEFAULT_FORBIDDEN_LABELS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            forbidden_patterns: DEFAULT_FORBIDDEN_PATTERNS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            max_series_per_metric: 1_000,
            max_metrics: 10_000,
            mode: CardinalityMode::Strict,
        }
    }
}

/// The guard's answer for one label set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Record it as it is.
    Allowed,
    /// Record it in the metric's overflow series instead (mode `Overflow`).
    Overflow,
}

/// The label name of the overflow series.
pub const OVERFLOW_LABEL: &str = "overflow";

/// A glob of label names: literal pieces between `*`s.
#[derive(Debug, Clone)]
struct Glob {
    pieces: Vec<String>,
    anchored_start: bool,
    anchored_end: bool,
}

impl Glob {
    fn parse(pattern: &str) -> Result<Self> {
        if pattern.is_empty() || pattern.len() > 256 {
            return Err(GuardrailError::config(
                "cardinality.forbidden_patterns",
                format!("pattern {pattern:?} must be 1 to 256 characters"),
            ));
        }
        Ok(Self::compile(pattern))
    }

    /// A pattern already known to be valid (the defaults).
    fn compile(pattern: &str) -> Self {
        let lower = pattern.to_ascii_lowercase();
        Self {
            anchored_start: !lower.starts_with('*'),
            anchored_end: !lower.ends_with('*'),
            pieces: lower
                .split('*')
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect(),
        }
    }

    /// `name` is lowercase already.
    fn matches(&self, name: &str) -> bool {
        let mut rest = name;
        let last = self.pieces.len().saturating_sub(1);
        for (i, piece) in self.pieces.iter().enumerate() {
            if i == 0 && self.anchored_start {
                match rest.strip_prefix(piece.as_str()) {
                    Some(r) => rest = r,
                    None => return false,
                }
                if i == last && self.anchored_end {
                    return rest.is_empty();
                }
            } else if i == last && self.anchored_end {
                return rest.ends_with(piece.as_str());
            } else {
                match rest.find(piece.as_str()) {
                    Some(at) => rest = &rest[at + piece.len()..],
                    None => return false,
                }
            }
        }
        // Only `*`s (or nothing): `*` matches all, `` matches only the empty name.
        !self.pieces.is_empty() || !self.anchored_start || rest.is_empty()
    }
}

#[derive(Debug, Default)]
struct MetricSeries {
    seen: HashSet<u64>,
}

/// Judges metric label sets; see the [module docs](self). Cheap to share behind an `Arc`;
/// a set seen before costs a hash of its labels and a read-locked lookup.
#[derive(Debug)]
pub struct CardinalityGuard {
    config: CardinalityConfig,
    exact: HashSet<String>,
    globs: Vec<Glob>,
    series: RwLock<HashMap<String, MetricSeries>>,
    /// (metric, label) pairs already warned about, bounded like `series`.
    warned: Mutex<HashSet<(String, String)>>,
    hasher: hashbrown::DefaultHashBuilder,
}

impl CardinalityGuard {
    /// A guard with `config`; a pattern that is empty or over 256 characters is refused.
    pub fn new(config: CardinalityConfig) -> Result<Self> {
        let globs = config
            .forbidden_patterns
            .iter()
            .map(|p| Glob::parse(p))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::with_globs(config, globs))
    }

    /// The default guard in mode `Overflow`: what the crate's own metrics are judged by.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn default_overflow() -> Self {
        let config = CardinalityConfig {
            mode: CardinalityMode::Overflow,
            ..CardinalityConfig::default()
        };
        let globs = config
            .forbidden_patterns
            .iter()
            .map(|p| Glob::compile(p))
            .collect();
        Self::with_globs(config, globs)
    }

    fn with_globs(config: CardinalityConfig, globs: Vec<Glob>) -> Self {
        Self {
            exact: config
                .forbidden_labels
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect(),
            globs,
            config,
            series: RwLock::new(HashMap::new()),
            warned: Mutex::new(HashSet::new()),
            hasher: hashbrown::DefaultHashBuilder::default(),
        }
    }

    /// Whether this is the first warning about `label` of `metric` (the memory of warnings
    /// stays bounded like the series').
    fn first_warning(&self, metric: &str, label: &str) -> bool {
        let mut warned = self.warned.lock();
        warned.len() < self.config.max_metrics
            && warned.insert((metric.to_string(), label.to_string()))
    }

    /// The configuration.
    pub fn config(&self) -> &CardinalityConfig {
        &self.config
    }

    /// Whether `label` is a forbidden label name.
    pub fn is_forbidden(&self, label: &str) -> bool {
        // Label names are short; a stack copy would do, but the common names are already
        // lowercase and skip the allocation.
        if label.bytes().any(|b| b.is_ascii_uppercase()) {
            let lower = label.to_ascii_lowercase();
            self.forbidden_lower(&lower)
        } else {
            self.forbidden_lower(label)
        }
    }

    fn forbidden_lower(&self, label: &str) -> bool {
        self.exact.contains(label) || self.globs.iter().any(|g| g.matches(label))
    }

    /// How many distinct label sets `metric` has been allowed.
    pub fn series_count(&self, metric: &str) -> usize {
        self.series.read().get(metric).map_or(0, |s| s.seen.len())
    }

    /// Judges `labels` (name, value pairs, in any order) of `metric`: a set seen before is
    /// allowed again, a new one counts against the metric's cap.
    ///
    /// # Errors
    /// [`GuardrailError::Cardinality`] in mode `Strict`, naming the metric and the
    /// forbidden label or the cap.
    pub fn check(&self, metric: &str, labels: &[(&str, &str)]) -> Result<Verdict> {
        // A set allowed before had its names judged then: the hot path is one hash and
        // one read-locked lookup.
        let hash = self.label_set_hash(labels);
        if self
            .series
            .read()
            .get(metric)
            .is_some_and(|s| s.seen.contains(&hash))
        {
            return Ok(Verdict::Allowed);
        }
        if let Some((name, _)) = labels.iter().find(|(name, _)| self.is_forbidden(name)) {
            return self.refuse(metric, Some(name), || {
                format!("label {name:?} is forbidden (its values are unbounded: ids, timestamps)")
            });
        }
        let cap = self.config.max_series_per_metric;
        if cap == 0 {
            // No cap: nothing to count, and nothing remembered (the names are judged each time).
            return Ok(Verdict::Allowed);
        }
        let over = {
            let mut all = self.series.write();
            let tracked = all.len();
            match all.get_mut(metric) {
                Some(series) => {
                    if series.seen.contains(&hash) {
                        false
                    } else if series.seen.len() >= cap {
                        true
                    } else {
                        series.seen.insert(hash);
                        false
                    }
                }
                // Past `max_metrics` a new metric is not tracked: its names were judged.
                None if tracked >= self.config.max_metrics => false,
                None => {
                    let mut series = MetricSeries::default();
                    series.seen.insert(hash);
                    all.insert(metric.to_string(), series);
                    false
                }
            }
        };
        if over {
            return self.refuse(metric, None, || {
                format!("more than {cap} distinct label sets (max_series_per_metric)")
            });
        }
        Ok(Verdict::Allowed)
    }

    fn refuse(
        &self,
        metric: &str,
        label: Option<&str>,
        reason: impl FnOnce() -> String,
    ) -> Result<Verdict> {
        match self.config.mode {
            CardinalityMode::Strict => Err(GuardrailError::Cardinality {
                metric: metric.to_string(),
                reason: reason(),
            }),
            CardinalityMode::Overflow => Ok(Verdict::Overflow),
            CardinalityMode::Warn => {
                if self.first_warning(metric, label.unwrap_or("")) {
                    tracing::warn!(metric, reason = %reason(), "metric cardinality");
                }
                Ok(Verdict::Allowed)
            }
        }
    }

    /// A hash of the set that does not depend on the labels' order (sum of pair hashes).
    fn label_set_hash(&self, labels: &[(&str, &str)]) -> u64 {
        labels.iter().fold(0u64, |acc, (k, v)| {
            let mut h = self.hasher.build_hasher();
            k.hash(&mut h);
            v.hash(&mut h);
            acc.wrapping_add(h.finish())
        })
    }
}

#[cfg(feature = "metrics")]
pub use layer::{CardinalityLayer, CardinalityRecorder};

#[cfg(feature = "metrics")]
mod layer {
    use std::sync::Arc;

    use metrics::{
        Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit,
    };

    use super::{CardinalityGuard, OVERFLOW_LABEL, Verdict};

    /// A `metrics-util` layer that puts a [`CardinalityGuard`] in front of any recorder:
    /// every series registered through it is judged once, when it is registered.
    ///
    /// A recorder cannot fail a `counter!` call, so a refusal in mode `Strict` registers a
    /// no-op handle and logs an error once per metric and label (the guard's check says
    /// what); `Overflow` registers the metric's `overflow="true"` series instead.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use guardrails::observe::cardinality::{CardinalityConfig, CardinalityGuard, CardinalityLayer};
    /// use metrics_util::debugging::DebuggingRecorder;
    /// use metrics_util::layers::Layer;
    ///
    /// let guard = Arc::new(CardinalityGuard::new(CardinalityConfig::default())?);
    /// let debugging = DebuggingRecorder::new();
    /// let snapshotter = debugging.snapshotter();
    /// let recorder = CardinalityLayer::new(guard).layer(debugging);
    /// metrics::with_local_recorder(&recorder, || {
    ///     metrics::counter!("orders_total", "region" => "eu").increment(1);
    ///     metrics::counter!("orders_total", "order_id" => "A-17").increment(1); // refused
    /// });
    /// let series: Vec<String> = snapshotter
    ///     .snapshot()
    ///     .into_vec()
    ///     .into_iter()
    ///     .map(|(key, ..)| format!("{:?}", key.key().labels().collect::<Vec<_>>()))
    ///     .collect();
    /// assert_eq!(series.len(), 1);
    /// assert!(series[0].contains("eu"));
    /// # Ok::<(), guardrails::GuardrailError>(())
    /// ```
    #[derive(Debug, Clone)]
    pub struct CardinalityLayer {
        guard: Arc<CardinalityGuard>,
    }

    impl CardinalityLayer {
        /// A layer judging with `guard`.
        pub fn new(guard: Arc<CardinalityGuard>) -> Self {
            Self { guard }
        }
    }

    impl<R> metrics_util::layers::Layer<R> for CardinalityLayer {
        type Output = CardinalityRecorder<R>;

        fn layer(&self, inner: R) -> Self::Output {
            CardinalityRecorder {
                inner,
                guard: Arc::clone(&self.guard),
            }
        }
    }

    /// The recorder [`CardinalityLayer`] makes.
    #[derive(Debug)]
    pub struct CardinalityRecorder<R> {
        inner: R,
        guard: Arc<CardinalityGuard>,
    }

    impl<R> CardinalityRecorder<R> {
        /// The guard it judges with.
        pub fn guard(&self) -> &Arc<CardinalityGuard> {
            &self.guard
        }

        /// The key to register, or `None` for a refused one.
        fn judge(&self, key: &Key) -> Option<Key> {
            let labels: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
            match self.guard.check(key.name(), &labels) {
                Ok(Verdict::Allowed) => Some(key.clone()),
                Ok(Verdict::Overflow) => Some(Key::from_parts(
                    key.name().to_string(),
                    vec![Label::new(OVERFLOW_LABEL, "true")],
                )),
                Err(e) => {
                    let label = labels
                        .iter()
                        .find(|(name, _)| self.guard.is_forbidden(name))
                        .map_or("", |(name, _)| *name);
                    if self.guard.first_warning(key.name(), label) {
                        tracing::error!(error = %e, "metric series refused");
                    }
                    None
                }
            }
        }
    }

    impl<R: Recorder> Recorder for CardinalityRecorder<R> {
        fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
            self.inner.describe_counter(key, unit, description);
        }

        fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
            self.inner.describe_gauge(key, unit, description);
        }

        fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
            self.inner.describe_histogram(key, unit, description);
        }

        fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
            match self.judge(key) {
                Some(key) => self.inner.register_counter(&key, metadata),
                None => Counter::noop(),
            }
        }

        fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
            match self.judge(key) {
                Some(key) => self.inner.register_gauge(&key, metadata),
                None => Gauge::noop(),
            }
        }

        fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
            match self.judge(key) {
                Some(key) => self.inner.register_histogram(&key, metadata),
                None => Histogram::noop(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_shell_patterns_of_star_only() {
        let cases = [
            ("*_id", "order_id", true),
            ("*_id", "idle", false),
            ("*_id", "_id", true),
            ("*timestamp*", "event_timestamp_ms", true),
            ("*timestamp*", "time", false),
            ("job*", "job_name", true),
            ("job*", "a_job", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyyd", false),
            ("a*b*c", "acb", false),
            ("*", "anything", true),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ];
        for (pattern, name, want) in cases {
            let glob = Glob::parse(pattern).unwrap();
            assert_eq!(glob.matches(name), want, "{pattern} vs {name}");
        }
        assert!(Glob::parse("").is_err());
    }

    #[test]
    fn label_order_does_not_make_a_new_series() {
        let guard = CardinalityGuard::new(CardinalityConfig {
            max_series_per_metric: 1,
            ..CardinalityConfig::default()
        })
        .unwrap();
        guard.check("m", &[("a", "1"), ("b", "2")]).unwrap();
        guard.check("m", &[("b", "2"), ("a", "1")]).unwrap();
        assert_eq!(guard.series_count("m"), 1);
        let err = guard.check("m", &[("a", "2"), ("b", "2")]).unwrap_err();
        assert!(err.to_string().contains("max_series_per_metric"), "{err}");
        assert_eq!(err.class(), crate::ErrorClass::Validation);
    }

    #[test]
    fn names_are_judged_without_case_and_warn_mode_lets_through() {
        let guard = CardinalityGuard::new(CardinalityConfig {
            mode: CardinalityMode::Warn,
            max_series_per_metric: 1,
            ..CardinalityConfig::default()
        })
        .unwrap();
        assert!(guard.is_forbidden("Order_ID"));
        assert!(guard.is_forbidden("createdTimestamp"));
        assert!(!guard.is_forbidden("model"));
        assert_eq!(
            guard.check("m", &[("Order_ID", "1")]).unwrap(),
            Verdict::Allowed
        );
        guard.check("m", &[("model", "a")]).unwrap();
        assert_eq!(
            guard.check("m", &[("model", "b")]).unwrap(),
            Verdict::Allowed
        );
    }

    #[test]
    fn tracked_metrics_are_bounded() {
        let guard = CardinalityGuard::new(CardinalityConfig {
            max_metrics: 3,
            ..CardinalityConfig::default()
        })
        .unwrap();
        for i in 0..10 {
            guard.check(&format!("m{i}"), &[("k", "v")]).unwrap();
        }
        assert_eq!(guard.series.read().len(), 3);
    }
}
