//! Retry analytics: retry windows (first attempt to final result), a histogram of attempts,
//! anomalies of single windows, and a spike detector on the retry rate.
//!
//! [`RetryAnalytics::subscribe`] feeds itself from the retry policies' guard events: each
//! `retry` event opens or extends the window of that policy on that thread (a retry loop
//! runs on one thread), `retry_ended` closes it. A call that succeeds on its first attempt
//! emits nothing (its cost stays one relaxed load), so bucket `1` of an event-fed histogram
//! stays empty; feed it by hand where the total of calls matters. Everything can be fed by hand
//! ([`RetryWindowTracker`], [`RetryHistogram`], [`RetrySpikeDetector`]).
//!
//! A fleet shares its retry counts through a [`SharedWindowCounts`] (Redis, or memory for
//! threads of one process; [`RetryAnalytics::with_fleet`]): each worker adds its retries
//! per interval and judges the fleet's, so a storm spread thin over many workers, none of
//! which spikes alone, is a [`RetryAnomaly::FleetSpike`].
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use guardrails::ManualClock;
//! use guardrails::observe::retry_analytics::{RetryAnalytics, RetryAnalyticsConfig};
//! use guardrails::resilience::{RetryConfig, RetryPolicy};
//!
//! let clock = ManualClock::new();
//! let analytics = Arc::new(RetryAnalytics::new(RetryAnalyticsConfig::default())?.with_clock(Arc::new(clock.clone())));
//! let _subscription = analytics.subscribe();
//! let policy = RetryPolicy::new(RetryConfig::new().with_max_retries(3))?
//!     .with_name("doc-upload")
//!     .with_clock(clock.clone());
//! let mut failures = 2;
//! policy.call(|| {
//!     if failures > 0 {
//!         failures -= 1;
//!         Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into())
//!     } else {
//!         Ok(())
//!     }
//! })?;
//! let report = analytics.report("doc-upload").unwrap();
//! assert_eq!(report.histogram.count("3"), 1); // one loop, three attempts
//! assert_eq!(report.windows_closed, 1);
//! # Ok::<(), guardrails::GuardrailError>(())
//! ```

use std::collections::VecDeque;

use crate::clock::unix_ms;
use crate::state::SharedWindowCounts;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashbrown::HashMap;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::clock::{SharedClock, SystemClock};
use crate::error::{GuardrailError, Result};
use crate::events::{self, Decision, GuardKind, Subscription};

/// The histogram's buckets of attempts per retry window: 1, 2, 3, 4–5, 6–10, 11–20, 21+.
pub const ATTEMPT_BUCKETS: [(&str, u32, u32); 7] = [
    ("1", 1, 1),
    ("2", 2, 2),
    ("3", 3, 3),
    ("4-5", 4, 5),
    ("6-10", 6, 10),
    ("11-20", 11, 20),
    ("21+", 21, u32::MAX),
];

/// Attempts per retry window, in [`ATTEMPT_BUCKETS`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RetryHistogram {
    counts: [u64; 7],
}

impl RetryHistogram {
    /// Counts one window of `attempts` attempts.
    pub fn add(&mut self, attempts: u32) {
        let i = ATTEMPT_BUCKETS
            .iter()
            .position(|(_, lo, hi)| (*lo..=*hi).contains(&attempts))
            .unwrap_or(0);
        self.counts[i] += 1;
    }

    /// The count of the bucket labelled `bucket` (`"4-5"`, `"21+"`, …); 0 for an unknown one.
    pub fn count(&self, bucket: &str) -> u64 {
        ATTEMPT_BUCKETS
            .iter()
            .position(|(label, ..)| *label == bucket)
            .map_or(0, |i| self.counts[i])
    }

    /// Every bucket with its count, in order.
    pub fn buckets(&self) -> Vec<(&'static str, u64)> {
        ATTEMPT_BUCKETS
            .iter()
            .zip(self.counts)
            .map(|((label, ..), n)| (*label, n))
            .collect()
    }
}

/// A retry window that ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedWindow {
    /// What it was keyed by.
    pub key: String,
    /// First attempt to final result.
    pub duration: Duration,
    /// Attempts made.
    pub attempts: u32,
    /// Whether it ended in success.
    pub succeeded: bool,
}

/// Open retry windows by key; at most `max_open` (the oldest is dropped past it).
#[derive(Debug)]
pub struct RetryWindowTracker {
    open: HashMap<String, (Instant, u32)>,
    max_open: usize,
    clock: SharedClock,
}

impl RetryWindowTracker {
    /// A tracker of at most `max_open` open windows.
    pub fn new(max_open: usize, clock: SharedClock) -> Self {
        Self {
            open: HashMap::new(),
            max_open: max_open.max(1),
            clock,
        }
    }

    /// Opens the window `key` with its first attempt (a window already open restarts).
    pub fn start(&mut self, key: &str) {
        self.make_room();
        self.open.insert(key.to_string(), (self.clock.now(), 1));
    }

    /// Counts one more attempt in `key`'s window, opening it (with the failed first attempt
    /// counted) when it is not open.
    pub fn increment(&mut self, key: &str) {
        if let Some((_, attempts)) = self.open.get_mut(key) {
            *attempts = attempts.saturating_add(1);
            return;
        }
        self.make_room();
        self.open.insert(key.to_string(), (self.clock.now(), 2));
    }

    /// Closes `key`'s window; `None` when none was open.
    pub fn close(&mut self, key: &str, succeeded: bool) -> Option<ClosedWindow> {
        let (started, attempts) = self.open.remove(key)?;
        Some(ClosedWindow {
            key: key.to_string(),
            duration: self.clock.now().saturating_duration_since(started),
            attempts,
            succeeded,
        })
    }

    /// Windows open now.
    pub fn open_windows(&self) -> usize {
        self.open.len()
    }

    fn make_room(&mut self) {
        if self.open.len() >= self.max_open
            && let Some(oldest) = self
                .open
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone())
        {
            self.open.remove(&oldest);
        }
    }
}

/// Thresholds of one retry window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryAnomalyConfig {
    /// A window longer than this is anomalous.
    #[serde(with = "humantime_serde")]
    pub max_window: Duration,
    /// A window with more attempts than this is anomalous.
    pub max_attempts: u32,
    /// Retries per call (over an interval) above this are anomalous.
    pub max_retry_rate: f64,
}

impl Default for RetryAnomalyConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryAnomalyConfig {
    /// The defaults: windows past 60 s or 10 attempts, over 0.5 retries per call.
    pub const fn new() -> Self {
        Self {
            max_window: Duration::from_secs(60),
            max_attempts: 10,
            max_retry_rate: 0.5,
        }
    }
}

/// What was anomalous.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RetryAnomaly {
    /// Retries per call over an interval.
    HighRetryRate {
        /// The rate.
        rate: f64,
    },
    /// A window that took too long.
    LongWindow {
        /// Its length.
        #[serde(with = "humantime_serde")]
        duration: Duration,
    },
    /// A window with too many attempts.
    ExcessiveAttempts {
        /// Its attempts.
        attempts: u32,
    },
    /// The retry count of an interval spiked over its sliding baseline.
    Spike {
        /// Retries in the interval.
        count: u64,
        /// The baseline's mean per interval.
        baseline: f64,
    },
    /// The fleet's retry count of an interval (every worker sharing the
    /// [`SharedWindowCounts`]) spiked over the fleet's baseline.
    FleetSpike {
        /// The fleet's retries in the interval so far.
        count: u64,
        /// The fleet's baseline mean per interval.
        baseline: f64,
    },
}

/// Judges single windows and rates against [`RetryAnomalyConfig`].
#[derive(Debug, Clone)]
pub struct RetryAnomalyDetector {
    config: RetryAnomalyConfig,
}

impl RetryAnomalyDetector {
    /// A detector with `config`.
    pub fn new(config: RetryAnomalyConfig) -> Self {
        Self { config }
    }

    /// What is anomalous about `window`.
    pub fn judge_window(&self, window: &ClosedWindow) -> Vec<RetryAnomaly> {
        let mut found = Vec::new();
        if window.duration > self.config.max_window {
            found.push(RetryAnomaly::LongWindow {
                duration: window.duration,
            });
        }
        if window.attempts > self.config.max_attempts {
            found.push(RetryAnomaly::ExcessiveAttempts {
                attempts: window.attempts,
            });
        }
        found
    }

    /// Whether `retries` over `calls` is too high.
    pub fn judge_rate(&self, retries: u64, calls: u64) -> Option<RetryAnomaly> {
        let rate = retries as f64 / calls.max(1) as f64;
        (calls > 0 && rate > self.config.max_retry_rate)
            .then_some(RetryAnomaly::HighRetryRate { rate })
    }
}

/// How the spike detector slides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SpikeConfig {
    /// One interval of the sliding window.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Intervals the baseline averages.
    pub baseline_intervals: usize,
    /// How many times the baseline counts as a spike.
    pub multiplier: f64,
    /// The fewest retries in an interval that can be a spike (a quiet baseline of 0.1 would
    /// call 1 retry a spike otherwise).
    pub min_count: u64,
}

impl Default for SpikeConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl SpikeConfig {
    /// Checks the ranges.
    ///
    /// # Errors
    /// [`GuardrailError::Config`] naming the key.
    pub fn validate(&self) -> Result<()> {
        if self.interval.is_zero() {
            return Err(GuardrailError::config("interval", "must be above zero"));
        }
        // The fleet reads baseline_intervals + 2 buckets at once.
        if self.baseline_intervals == 0 || self.baseline_intervals > 1000 {
            return Err(GuardrailError::config(
                "baseline_intervals",
                "must be within 1..=1000",
            ));
        }
        if !(self.multiplier.is_finite() && self.multiplier > 1.0) {
            return Err(GuardrailError::config(
                "multiplier",
                "must be finite and above 1",
            ));
        }
        Ok(())
    }

    /// The defaults: 10 s intervals, a baseline of 12, 3 × it and at least 5 retries.
    pub const fn new() -> Self {
        Self {
            interval: Duration::from_secs(10),
            baseline_intervals: 12,
            multiplier: 3.0,
            min_count: 5,
        }
    }
}

/// Retries per interval against the mean of the intervals before; see [`SpikeConfig`].
#[derive(Debug)]
pub struct RetrySpikeDetector {
    config: SpikeConfig,
    history: VecDeque<u64>,
    current: u64,
    current_start: Option<Instant>,
    spiking: bool,
}

impl RetrySpikeDetector {
    /// A detector with `config`.
    ///
    /// # Errors
    /// [`GuardrailError::Config`] for a zero interval or baseline, or a multiplier ≤ 1.
    pub fn new(config: SpikeConfig) -> Result<Self> {
        config
            .validate()
            .map_err(|e| crate::config::in_section("retry_spike", e))?;
        Ok(Self {
            history: VecDeque::with_capacity(config.baseline_intervals),
            config,
            current: 0,
            current_start: None,
            spiking: false,
        })
    }

    /// Counts `n` retries at `now`; a spike when this interval passes `multiplier` × the
    /// baseline (and `min_count`), raised once per storm: intervals that stay over it do not
    /// raise it again, the first one under it clears it.
    pub fn record(&mut self, now: Instant, n: u64) -> Option<RetryAnomaly> {
        self.roll(now);
        self.current += n;
        let baseline = self.baseline()?;
        let threshold = (baseline * self.config.multiplier).max(self.config.min_count as f64);
        if !self.spiking && self.current as f64 >= threshold {
            self.spiking = true;
            return Some(RetryAnomaly::Spike {
                count: self.current,
                baseline,
            });
        }
        None
    }

    /// Whether the current interval is spiking (after rolling to `now`).
    pub fn is_spiking(&mut self, now: Instant) -> bool {
        self.roll(now);
        self.spiking
    }

    /// The mean per interval of the full baseline; `None` until it has every interval.
    pub fn baseline(&self) -> Option<f64> {
        (self.history.len() >= self.config.baseline_intervals)
            .then(|| self.history.iter().sum::<u64>() as f64 / self.history.len() as f64)
    }

    fn roll(&mut self, now: Instant) {
        let start = *self.current_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        let steps = (elapsed.as_nanos() / self.config.interval.as_nanos().max(1)) as u64;
        if steps == 0 {
            return;
        }
        // A spike lasts while its intervals stay over the threshold: it is raised once per
        // storm and cleared by the first interval under it (or by an empty one).
        let threshold = self
            .baseline()
            .map(|b| (b * self.config.multiplier).max(self.config.min_count as f64));
        let still = steps == 1 && threshold.is_some_and(|t| self.current as f64 >= t);
        // A spiking interval does not join the baseline: a storm must not become normal.
        let closed = if self.spiking {
            None
        } else {
            Some(self.current)
        };
        let empty = steps
            .saturating_sub(1)
            .min(self.config.baseline_intervals as u64);
        for v in closed
            .into_iter()
            .chain(std::iter::repeat_n(0, empty as usize))
        {
            if self.history.len() >= self.config.baseline_intervals {
                self.history.pop_front();
            }
            self.history.push_back(v);
        }
        self.current = 0;
        self.spiking = self.spiking && still;
        self.current_start = Some(start + self.config.interval * steps.min(u32::MAX as u64) as u32);
    }
}

/// The thread of [`RetryAnalytics::start_fleet_flusher`]; dropping it stops the thread.
#[derive(Debug)]
pub struct FleetFlusher {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for FleetFlusher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One worker's view of the fleet's spike of one policy.
#[derive(Debug, Default)]
struct FleetSpikeState {
    /// The first bucket this worker shared: the baseline is judged once it spans only
    /// buckets since then (a fresh worker does not judge on half a window).
    first_bucket: Option<u64>,
    spiking: bool,
    /// Buckets judged spiking, left out of the baseline (a storm must not become normal).
    spiking_buckets: VecDeque<u64>,
}

impl FleetSpikeState {
    /// Judges the fleet's `counts`: the `baseline_intervals` buckets before the last
    /// complete one, the last complete one, then `bucket` (so far). The storm is on while
    /// the last complete interval or the current one is past the threshold (a worker that
    /// flushed early in the storm's interval sees it complete at its next flush); it is
    /// raised once per storm.
    fn judge(&mut self, bucket: u64, counts: &[u64], config: &SpikeConfig) -> Option<RetryAnomaly> {
        let first = *self.first_bucket.get_or_insert(bucket);
        let [baseline_counts @ .., previous, current] = counts else {
            return None;
        };
        let n = baseline_counts.len() as u64;
        // The baseline must span buckets this worker saw: a fresh one waits a window.
        if bucket < first.saturating_add(n + 1) {
            return None;
        }
        let start = bucket - n - 1;
        while self.spiking_buckets.front().is_some_and(|b| *b < start) {
            self.spiking_buckets.pop_front();
        }
        let calm: Vec<u64> = baseline_counts
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.spiking_buckets.contains(&(start + *i as u64)))
            .map(|(_, c)| *c)
            .collect();
        if calm.is_empty() {
            return None;
        }
        let baseline = calm.iter().sum::<u64>() as f64 / calm.len() as f64;
        let threshold = (baseline * config.multiplier).max(config.min_count as f64);
        let mut on = None;
        for (b, count) in [(bucket - 1, *previous), (bucket, *current)] {
            if count as f64 >= threshold {
                if !self.spiking_buckets.contains(&b) {
                    self.spiking_buckets.push_back(b);
                }
                on = Some(count);
            }
        }
        match on {
            Some(count) if !self.spiking => {
                self.spiking = true;
                Some(RetryAnomaly::FleetSpike { count, baseline })
            }
            Some(_) => None,
            None => {
                self.spiking = false;
                None
            }
        }
    }
}

/// Settings of [`RetryAnalytics`]; the `[retry_analytics]` section of the
/// [config document](crate::config::GuardrailsConfig).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryAnalyticsConfig {
    /// Thresholds of single windows.
    pub anomalies: RetryAnomalyConfig,
    /// The spike detector of each policy.
    pub spike: SpikeConfig,
}

impl RetryAnalyticsConfig {
    /// The defaults of both parts.
    pub const fn new() -> Self {
        Self {
            anomalies: RetryAnomalyConfig::new(),
            spike: SpikeConfig::new(),
        }
    }

    /// Checks the ranges.
    ///
    /// # Errors
    /// [`GuardrailError::Config`] naming the key.
    pub fn validate(&self) -> Result<()> {
        self.spike
            .validate()
            .map_err(|e| crate::config::in_section("spike", e))?;
        let a = &self.anomalies;
        if !(a.max_retry_rate.is_finite() && a.max_retry_rate >= 0.0) {
            return Err(GuardrailError::config(
                "anomalies.max_retry_rate",
                "must be finite and not negative",
            ));
        }
        Ok(())
    }
}

/// What [`RetryAnalytics`] knows of one retry policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetryReport {
    /// The policy's name.
    pub name: String,
    /// Attempts per closed window.
    pub histogram: RetryHistogram,
    /// Windows closed.
    pub windows_closed: u64,
    /// Windows that ended in failure.
    pub windows_failed: u64,
    /// Retries counted.
    pub retries: u64,
    /// Anomalies found, newest last (at most 100 kept).
    pub anomalies: Vec<RetryAnomaly>,
}

struct PerPolicy {
    /// Retries counted since the last fleet flush.
    unshared: u64,
    fleet: FleetSpikeState,
    histogram: RetryHistogram,
    spikes: RetrySpikeDetector,
    closed: u64,
    failed: u64,
    retries: u64,
    anomalies: VecDeque<RetryAnomaly>,
}

/// The most retry policies tracked (names past it are not analysed).
const MAX_POLICIES: usize = 1_000;
const MAX_ANOMALIES: usize = 100;

type AnomalySink = Arc<dyn Fn(&str, &RetryAnomaly) + Send + Sync>;

/// Retry windows, histograms, anomalies and spikes per retry policy, fed by guard events;
/// see the [module docs](self).
pub struct RetryAnalytics {
    config: RetryAnalyticsConfig,
    detector: RetryAnomalyDetector,
    tracker: Mutex<RetryWindowTracker>,
    policies: Mutex<HashMap<String, PerPolicy>>,
    clock: SharedClock,
    on_anomaly: Option<AnomalySink>,
    fleet: Option<Arc<dyn SharedWindowCounts>>,
}

impl std::fmt::Debug for RetryAnalytics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryAnalytics")
            .field("config", &self.config)
            .field("policies", &self.policies.lock().len())
            .finish_non_exhaustive()
    }
}

impl RetryAnalytics {
    /// Analytics with `config`.
    ///
    /// # Errors
    /// [`GuardrailError::Config`] for an invalid spike config.
    pub fn new(config: RetryAnalyticsConfig) -> Result<Self> {
        config
            .validate()
            .map_err(|e| crate::config::in_section("retry_analytics", e))?;
        let clock: SharedClock = Arc::new(SystemClock);
        Ok(Self {
            detector: RetryAnomalyDetector::new(config.anomalies.clone()),
            tracker: Mutex::new(RetryWindowTracker::new(10_000, Arc::clone(&clock))),
            config,
            policies: Mutex::new(HashMap::new()),
            clock,
            on_anomaly: None,
            fleet: None,
        })
    }

    /// Reads time from `clock`.
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.tracker = Mutex::new(RetryWindowTracker::new(10_000, Arc::clone(&clock)));
        self.clock = clock;
        self
    }

    /// Calls `f(policy, anomaly)` for every anomaly found (on the retrying thread: keep it
    /// short).
    pub fn on_anomaly(mut self, f: impl Fn(&str, &RetryAnomaly) + Send + Sync + 'static) -> Self {
        self.on_anomaly = Some(Arc::new(f));
        self
    }

    /// Shares every policy's retry counts through `counts` (per `spike.interval` bucket),
    /// so each worker also judges the fleet's retries: [`flush_fleet`](Self::flush_fleet)
    /// (or the thread of [`start_fleet_flusher`](Self::start_fleet_flusher)) adds this
    /// worker's counts and raises [`RetryAnomaly::FleetSpike`] when the fleet's interval
    /// passes `multiplier` × the fleet's baseline (and `min_count`).
    pub fn with_fleet(mut self, counts: Arc<dyn SharedWindowCounts>) -> Self {
        self.fleet = Some(counts);
        self
    }

    /// Adds this worker's retries since the last flush to the fleet's counts and judges
    /// the fleet's current interval, for every policy seen. Does nothing without
    /// [`with_fleet`](Self::with_fleet).
    ///
    /// # Errors
    /// The first error of the shared counts (the counts it could not add are kept for
    /// the next flush).
    pub fn flush_fleet(&self) -> Result<()> {
        let Some(counts) = &self.fleet else {
            return Ok(());
        };
        let spike = &self.config.spike;
        let interval_ms = u64::try_from(spike.interval.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let bucket = u64::try_from(unix_ms(self.clock.system_time())).unwrap_or(0) / interval_ms;
        let window = u32::try_from(spike.baseline_intervals + 2).unwrap_or(u32::MAX);
        let pending: Vec<(String, u64)> = self
            .policies
            .lock()
            .iter_mut()
            .map(|(name, p)| (name.clone(), std::mem::take(&mut p.unshared)))
            .collect();
        let mut first_error = None;
        for (policy, n) in pending {
            match counts.add(
                &format!("retry:{policy}"),
                bucket,
                n,
                window,
                spike.interval,
            ) {
                Ok(fleet) => {
                    let found = self
                        .with_policy(&policy, |p| p.fleet.judge(bucket, &fleet, spike))
                        .flatten();
                    if let Some(a) = found {
                        self.found(&policy, a);
                    }
                }
                Err(e) => {
                    self.with_policy(&policy, |p| p.unshared += n);
                    tracing::warn!(policy, error = %e, "retry analytics: the fleet's counts could not be shared");
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Whether the fleet's retries of `policy` were spiking at the last flush.
    pub fn is_fleet_spiking(&self, policy: &str) -> bool {
        self.policies
            .lock()
            .get(policy)
            .is_some_and(|p| p.fleet.spiking)
    }

    /// Runs [`flush_fleet`](Self::flush_fleet) every `spike.interval` on a thread of its
    /// own, until the returned handle is dropped (store errors are logged).
    ///
    /// # Errors
    /// [`GuardrailError::Io`] when the thread cannot start.
    pub fn start_fleet_flusher(self: &Arc<Self>) -> Result<FleetFlusher> {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let this = Arc::downgrade(self);
        let every = self.config.spike.interval;
        let thread = std::thread::Builder::new()
            .name("guardrails-retry-fleet".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(every)
                {
                    let Some(analytics) = this.upgrade() else {
                        return;
                    };
                    // Logged by flush_fleet; the next round tries again.
                    let _ = analytics.flush_fleet();
                }
            })
            .map_err(|e| GuardrailError::io("guardrails-retry-fleet thread", e))?;
        Ok(FleetFlusher {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Subscribes to the retry policies' guard events.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        let this = Arc::clone(self);
        events::subscribe(move |e| {
            if e.guard != GuardKind::Retry {
                return;
            }
            match e.decision {
                Decision::Retry { .. } => this.retried(e.name),
                Decision::RetryEnded {
                    attempts,
                    succeeded,
                } => this.ended(e.name, attempts, succeeded),
                _ => {}
            }
        })
    }

    fn window_key(name: &str) -> String {
        format!("{name}@{:?}", std::thread::current().id())
    }

    /// Counts one retry of `policy` on this thread.
    pub fn retried(&self, policy: &str) {
        self.tracker.lock().increment(&Self::window_key(policy));
        let now = self.clock.now();
        let spike = self
            .with_policy(policy, |p| {
                p.retries += 1;
                p.unshared += 1;
                p.spikes.record(now, 1)
            })
            .flatten();
        if let Some(a) = spike {
            self.found(policy, a);
        }
    }

    /// Closes `policy`'s window on this thread.
    pub fn ended(&self, policy: &str, attempts: u32, succeeded: bool) {
        let window = self
            .tracker
            .lock()
            .close(&Self::window_key(policy), succeeded);
        let anomalies = window
            .as_ref()
            .map(|w| self.detector.judge_window(w))
            .unwrap_or_default();
        self.with_policy(policy, |p| {
            p.histogram.add(attempts);
            p.closed += 1;
            p.failed += u64::from(!succeeded);
        });
        for a in anomalies {
            self.found(policy, a);
        }
    }

    /// Whether `policy`'s retries are spiking now.
    pub fn is_spiking(&self, policy: &str) -> bool {
        let now = self.clock.now();
        self.policies
            .lock()
            .get_mut(policy)
            .is_some_and(|p| p.spikes.is_spiking(now))
    }

    /// What is known of `policy`.
    pub fn report(&self, policy: &str) -> Option<RetryReport> {
        self.policies.lock().get(policy).map(|p| RetryReport {
            name: policy.to_string(),
            histogram: p.histogram,
            windows_closed: p.closed,
            windows_failed: p.failed,
            retries: p.retries,
            anomalies: p.anomalies.iter().cloned().collect(),
        })
    }

    fn found(&self, policy: &str, anomaly: RetryAnomaly) {
        tracing::warn!(policy, ?anomaly, "retry anomaly");
        if let Some(f) = &self.on_anomaly {
            f(policy, &anomaly);
        }
        self.with_policy(policy, |p| {
            if p.anomalies.len() >= MAX_ANOMALIES {
                p.anomalies.pop_front();
            }
            p.anomalies.push_back(anomaly);
        });
    }

    fn with_policy<T>(&self, policy: &str, f: impl FnOnce(&mut PerPolicy) -> T) -> Option<T> {
        let mut all = self.policies.lock();
        if !all.contains_key(policy) {
            if all.len() >= MAX_POLICIES {
                return None;
            }
            let spikes = RetrySpikeDetector::new(self.config.spike.clone()).ok()?;
            all.insert(
                policy.to_string(),
                PerPolicy {
                    unshared: 0,
                    fleet: FleetSpikeState::default(),
                    histogram: RetryHistogram::default(),
                    spikes,
                    closed: 0,
                    failed: 0,
                    retries: 0,
                    anomalies: VecDeque::new(),
                },
            );
        }
        all.get_mut(policy).map(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_has_the_seed_buckets() {
        let mut h = RetryHistogram::default();
        for a in [1, 2, 3, 4, 5, 6, 10, 11, 20, 21, 500] {
            h.add(a);
        }
        assert_eq!(
            h.buckets(),
            [
                ("1", 1),
                ("2", 1),
                ("3", 1),
                ("4-5", 2),
                ("6-10", 2),
                ("11-20", 2),
                ("21+", 2)
            ]
        );
    }

    #[test]
    fn a_spike_needs_a_full_baseline_and_does_not_join_it() {
        let t0 = Instant::now();
        let mut d = RetrySpikeDetector::new(SpikeConfig {
            interval: Duration::from_secs(1),
            baseline_intervals: 3,
            multiplier: 3.0,
            min_count: 5,
        })
        .unwrap();
        let at = |s: u64| t0 + Duration::from_millis(s);
        // Baseline 2 per interval.
        for i in 0..3 {
            assert!(d.record(at(i * 1000), 2).is_none());
        }
        assert_eq!(d.record(at(3000), 5), None, "5 < 3 × 2");
        let spike = d.record(at(3500), 1).unwrap();
        assert_eq!(
            spike,
            RetryAnomaly::Spike {
                count: 6,
                baseline: 2.0
            }
        );
        assert!(d.record(at(3600), 10).is_none(), "once per storm");
        assert!(
            d.record(at(4100), 20).is_none(),
            "the storm goes on: not raised again"
        );
        assert!(d.is_spiking(at(4900)));
        assert!(
            d.is_spiking(at(5000)),
            "the storm's last interval was over the threshold"
        );
        assert!(!d.is_spiking(at(6000)), "a quiet interval clears it");
        assert_eq!(d.baseline(), Some(2.0), "the spiking intervals stayed out");
    }

    #[test]
    fn windows_measure_first_attempt_to_result_and_stay_bounded() {
        let clock = Arc::new(crate::ManualClock::new());
        let mut t = RetryWindowTracker::new(2, clock.clone());
        t.increment("a");
        clock.advance(Duration::from_secs(3));
        t.increment("a");
        let w = t.close("a", true).unwrap();
        assert_eq!((w.attempts, w.duration), (3, Duration::from_secs(3)));
        assert!(t.close("a", true).is_none());
        t.start("x");
        clock.advance(Duration::from_millis(1));
        t.start("y");
        t.start("z");
        assert_eq!(t.open_windows(), 2);
        assert!(t.close("x", false).is_none(), "the oldest was dropped");
    }
}
