//! Metrics history: [`MetricsHistory`], recent samples of (component, metric, value, tags)
//! in memory, bounded by count and by age, queried by component, metric and time range;
//! and, with feature `history`, [`SqliteHistory`], the same samples batched into an SQLite
//! file that keeps them across restarts, downsampled and bounded by age and size, with
//! baselines learned per series ([`HistoryReader`] reads it, also from another process).
//!
//! Samples come from user calls ([`MetricsHistory::record_metric`]) and, once
//! [subscribed](MetricsHistory::subscribe), from the guard events: component = the guard's
//! kind (`"retry"`), metric = the decision (`"retry"`, `"rate_limited"`), value 1 (a retry's
//! delay in seconds, a cache expiry's count), tag `name` = the guard's name.
//!
//! ```
//! use std::time::Duration;
//! use guardrails::ManualClock;
//! use guardrails::observe::history::{HistoryConfig, MetricsHistory};
//!
//! let clock = ManualClock::new();
//! let history = MetricsHistory::new(HistoryConfig::default()).with_clock(clock.clone());
//! history.record_metric("training", "accuracy", 0.91, &[("run", "r1")]);
//! clock.advance(Duration::from_secs(60));
//! history.record_metric("training", "accuracy", 0.95, &[("run", "r1")]);
//! let last_30s = history.query("training", "accuracy", Duration::from_secs(30));
//! assert_eq!(last_30s.iter().map(|s| s.value).collect::<Vec<_>>(), [0.95]);
//! ```

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::clock::{Clock, SharedClock, SystemClock};
use crate::events::{self, Decision, GuardEvent, Subscription};

#[cfg(feature = "history")]
mod sqlite;
#[cfg(feature = "history")]
#[cfg_attr(docsrs, doc(cfg(feature = "history")))]
pub use sqlite::{
    AnomalyRecord, BaselineRecord, HistoryReader, HistoryStats, MAX_QUERY_POINTS, Maintenance,
    Point, SeriesHandle, SqliteHistory, SqliteHistoryConfig,
};

/// The sample a guard decision makes: component = the guard's kind, metric = the
/// decision, value 1 (a retry's delay in seconds, a cache expiry's count).
pub(crate) fn event_sample(e: &GuardEvent<'_>) -> (&'static str, &'static str, f64) {
    let value = match &e.decision {
        Decision::Retry { delay, .. } => delay.as_secs_f64(),
        Decision::CacheExpiry { count } => *count as f64,
        _ => 1.0,
    };
    (e.guard.as_str(), e.decision.label(), value)
}

/// One sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// What it is about (`"training"`, `"retry"`).
    pub component: String,
    /// What was measured (`"accuracy"`, `"rate_limited"`).
    pub metric: String,
    /// The value.
    pub value: f64,
    /// Extra dimensions (`name`, `run`, …).
    pub tags: Vec<(String, String)>,
    /// When (wall clock, from the history's clock).
    pub at: SystemTime,
}

/// How much is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// The most samples kept (the oldest go first).
    pub max_samples: usize,
    /// Samples older than this are dropped.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            max_samples: 100_000,
            max_age: Duration::from_secs(24 * 3600),
        }
    }
}

/// Recent samples; see the [module docs](self).
pub struct MetricsHistory {
    config: HistoryConfig,
    ring: Mutex<VecDeque<Sample>>,
    clock: SharedClock,
}

impl std::fmt::Debug for MetricsHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsHistory")
            .field("config", &self.config)
            .field("samples", &self.len())
            .finish_non_exhaustive()
    }
}

impl MetricsHistory {
    /// An empty history.
    pub fn new(config: HistoryConfig) -> Self {
        Self {
            ring: Mutex::new(VecDeque::with_capacity(config.max_samples.min(4096))),
            config,
            clock: Arc::new(SystemClock),
        }
    }

    /// Reads time from `clock`.
    pub fn with_clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Records one sample now.
    pub fn record_metric(&self, component: &str, metric: &str, value: f64, tags: &[(&str, &str)]) {
        let sample = Sample {
            component: component.to_string(),
            metric: metric.to_string(),
            value,
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            at: self.clock.system_time(),
        };
        let mut ring = self.ring.lock();
        if self.config.max_samples == 0 {
            return;
        }
        while ring.len() >= self.config.max_samples {
            ring.pop_front();
        }
        ring.push_back(sample);
    }

    /// Samples kept now (after dropping the expired ones).
    pub fn len(&self) -> usize {
        let mut ring = self.ring.lock();
        self.expire(&mut ring);
        ring.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The samples of `component` / `metric` from the last `since`, oldest first.
    pub fn query(&self, component: &str, metric: &str, since: Duration) -> Vec<Sample> {
        let now = self.clock.system_time();
        let from = now.checked_sub(since).unwrap_or(SystemTime::UNIX_EPOCH);
        let mut ring = self.ring.lock();
        self.expire(&mut ring);
        ring.iter()
            .filter(|s| s.at >= from && s.component == component && s.metric == metric)
            .cloned()
            .collect()
    }

    /// Records every guard decision as a sample (see the [module docs](self)).
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        let this = Arc::clone(self);
        events::subscribe(move |e| {
            let (component, metric, value) = event_sample(e);
            this.record_metric(component, metric, value, &[("name", e.name)]);
        })
    }

    fn expire(&self, ring: &mut VecDeque<Sample>) {
        let Some(oldest) = self.clock.system_time().checked_sub(self.config.max_age) else {
            return;
        };
        while ring.front().is_some_and(|s| s.at < oldest) {
            ring.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;

    #[test]
    fn retention_by_count_and_by_age() {
        let clock = ManualClock::new();
        let h = MetricsHistory::new(HistoryConfig {
            max_samples: 3,
            max_age: Duration::from_secs(10),
        })
        .with_clock(clock.clone());
        for i in 0..5 {
            h.record_metric("c", "m", i as f64, &[]);
        }
        let values: Vec<f64> = h
            .query("c", "m", Duration::from_secs(60))
            .iter()
            .map(|s| s.value)
            .collect();
        assert_eq!(values, [2.0, 3.0, 4.0]);
        clock.advance(Duration::from_secs(11));
        assert!(h.is_empty());
    }
}
