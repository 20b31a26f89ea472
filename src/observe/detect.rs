//! Anomaly detection on metric series: learned baselines, z-score and percentile judges, a
//! warm-up before judging, and hysteresis so one odd sample does not flap an alarm.
//!
//! A [`Baseline`] learns one series. Its mean and variance come from Welford's algorithm
//! (every sample counts the same) or, with [`DetectorConfig::ewma_alpha`], an exponentially
//! weighted estimate that follows a drifting series; its percentiles come from a DDSketch
//! (`sketches-ddsketch`, relative error 1 %). A sample is judged only after `warmup`
//! samples; it is *out of line* when its z-score passes `z_threshold` ([`Judge::ZScore`]) or
//! it is above the baseline's `quantile` ([`Judge::Percentile`]). The series turns
//! anomalous after `enter_after` out-of-line samples in a row and normal again after
//! `clear_after` in-line ones; out-of-line samples never teach the baseline, so a storm does
//! not become the new normal. No seasonality is modelled.
//!
//! A baseline is serde-serializable, so it can be kept (in the metrics history) and
//! restored after a restart.
//!
//! ```
//! use guardrails::observe::detect::{AnomalyState, Baseline, DetectorConfig};
//!
//! let mut latency = Baseline::new(DetectorConfig { warmup: 20, ..DetectorConfig::default() })?;
//! for i in 0..200 {
//!     let j = latency.observe(100.0 + (i % 7) as f64); // 100..106 ms
//!     assert_ne!(j.state, AnomalyState::Anomalous);
//! }
//! let j = latency.observe(400.0);
//! assert_eq!(j.state, AnomalyState::Anomalous);
//! assert!(j.changed && j.z.unwrap() > 3.0);
//! # Ok::<(), guardrails::GuardrailError>(())
//! ```

use serde::{Deserialize, Serialize};
use sketches_ddsketch::{Config as SketchConfig, DDSketch};

use crate::error::{GuardrailError, Result};

/// How a sample is judged against its baseline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Judge {
    /// `|x - mean| / stddev` above `z_threshold` (or only above / below, per `direction`).
    ZScore,
    /// Above the baseline's `quantile` (e.g. 0.99) times `factor`.
    Percentile {
        /// The quantile, in (0, 1).
        quantile: f64,
        /// How far above it counts (1.0 = anything above the quantile).
        factor: f64,
    },
}

/// Which side of the baseline is anomalous (z-score judge).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Too high or too low.
    #[default]
    Both,
    /// Too high only (latency, error rate, retries).
    Above,
    /// Too low only (throughput, accuracy).
    Below,
}

/// How a baseline learns and judges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectorConfig {
    /// The judge.
    pub judge: Judge,
    /// Which side counts (z-score).
    pub direction: Direction,
    /// z-score past which a sample is out of line.
    pub z_threshold: f64,
    /// Samples learned before any is judged.
    pub warmup: u64,
    /// `Some(α)`: an exponentially weighted mean and variance (α in (0, 1]; larger adapts
    /// faster); `None`: every in-line sample weighs the same.
    pub ewma_alpha: Option<f64>,
    /// Out-of-line samples in a row that make the series anomalous.
    pub enter_after: u32,
    /// In-line samples in a row that make it normal again.
    pub clear_after: u32,
    /// The smallest standard deviation used (a flat series would otherwise call any change
    /// infinitely anomalous).
    pub min_stddev: f64,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            judge: Judge::ZScore,
            direction: Direction::Both,
            z_threshold: 3.0,
            warmup: 30,
            ewma_alpha: None,
            enter_after: 1,
            clear_after: 3,
            min_stddev: 1e-9,
        }
    }
}

impl DetectorConfig {
    /// Checks the ranges.
    ///
    /// # Errors
    /// [`GuardrailError::Config`] naming the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |k: &str, why: &str| Err(GuardrailError::config(format!("detector.{k}"), why));
        if !(self.z_threshold.is_finite() && self.z_threshold > 0.0) {
            return bad("z_threshold", "must be finite and above zero");
        }
        if let Some(a) = self.ewma_alpha
            && !(a > 0.0 && a <= 1.0)
        {
            return bad("ewma_alpha", "must be within (0, 1]");
        }
        if let Judge::Percentile { quantile, factor } = self.judge
            && !(quantile > 0.0 && quantile < 1.0 && factor.is_finite() && factor > 0.0)
        {
            return bad(
                "judge",
                "quantile must be within (0, 1) and factor above zero",
            );
        }
        if self.enter_after == 0 || self.clear_after == 0 {
            return bad(
                "enter_after",
                "enter_after and clear_after must be at least 1",
            );
        }
        if !(self.min_stddev.is_finite() && self.min_stddev >= 0.0) {
            return bad("min_stddev", "must be finite and not negative");
        }
        Ok(())
    }
}

/// Where a series stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyState {
    /// Fewer than `warmup` samples learned.
    WarmingUp,
    /// In line with its baseline.
    Normal,
    /// Out of line (past `enter_after`, not yet cleared).
    Anomalous,
}

/// What one sample came to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judgement {
    /// The sample.
    pub value: f64,
    /// Its z-score against the baseline before it (after warm-up).
    pub z: Option<f64>,
    /// The baseline's threshold it was compared with (percentile judge, after warm-up).
    pub threshold: Option<f64>,
    /// Whether this sample alone was out of line.
    pub out_of_line: bool,
    /// The series' state after it.
    pub state: AnomalyState,
    /// Whether the state changed with this sample (an alarm raised or cleared).
    pub changed: bool,
}

/// How often the percentile threshold is read from the sketch (reading walks its bins).
const QUANTILE_EVERY: u64 = 64;

/// One series' learned baseline; see the [module docs](self).
#[derive(Clone, Serialize, Deserialize)]
pub struct Baseline {
    config: DetectorConfig,
    n: u64,
    mean: f64,
    /// Welford's sum of squares, or the EWMA variance.
    m2: f64,
    sketch: Option<DDSketch>,
    threshold: Option<f64>,
    state: AnomalyState,
    streak: u32,
}

impl std::fmt::Debug for Baseline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Baseline")
            .field("n", &self.n)
            .field("mean", &self.mean)
            .field("stddev", &self.stddev())
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Baseline {
    /// An empty baseline.
    ///
    /// # Errors
    /// [`GuardrailError::Config`] for an invalid `config`.
    pub fn new(config: DetectorConfig) -> Result<Self> {
        config.validate()?;
        let sketch = matches!(config.judge, Judge::Percentile { .. })
            .then(|| DDSketch::new(SketchConfig::defaults()));
        Ok(Self {
            config,
            n: 0,
            mean: 0.0,
            m2: 0.0,
            sketch,
            threshold: None,
            state: AnomalyState::WarmingUp,
            streak: 0,
        })
    }

    /// The config it learns and judges by.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// Samples learned.
    pub fn count(&self) -> u64 {
        self.n
    }

    /// The learned mean.
    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// The learned standard deviation (not floored).
    pub fn stddev(&self) -> f64 {
        match self.config.ewma_alpha {
            Some(_) => self.m2.max(0.0).sqrt(),
            None if self.n > 1 => (self.m2 / (self.n - 1) as f64).max(0.0).sqrt(),
            None => 0.0,
        }
    }

    /// The state after the last sample.
    pub fn state(&self) -> AnomalyState {
        self.state
    }

    /// The baseline's `q` quantile (percentile judge only).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.sketch.as_ref()?.quantile(q).ok().flatten()
    }

    /// Judges `value`, then learns it if it was in line. A NaN or infinite sample is judged
    /// out of line and never learned.
    pub fn observe(&mut self, value: f64) -> Judgement {
        let warming = self.n < self.config.warmup;
        let (z, threshold, out_of_line) = if warming {
            (None, None, false)
        } else if !value.is_finite() {
            (None, self.threshold, true)
        } else {
            self.judge(value)
        };
        let before = self.state;
        if warming {
            self.learn(value);
            self.state = if self.n >= self.config.warmup {
                AnomalyState::Normal
            } else {
                AnomalyState::WarmingUp
            };
        } else {
            self.step(out_of_line);
            if !out_of_line {
                self.learn(value);
            }
        }
        Judgement {
            value,
            z,
            threshold,
            out_of_line,
            state: self.state,
            changed: before != self.state && before != AnomalyState::WarmingUp,
        }
    }

    #[inline]
    fn judge(&mut self, value: f64) -> (Option<f64>, Option<f64>, bool) {
        let sd = self.stddev().max(self.config.min_stddev);
        let z = if sd > 0.0 {
            (value - self.mean) / sd
        } else if value == self.mean {
            0.0
        } else {
            f64::INFINITY.copysign(value - self.mean)
        };
        match self.config.judge {
            Judge::ZScore => {
                let t = self.config.z_threshold;
                let out = match self.config.direction {
                    Direction::Both => z.abs() > t,
                    Direction::Above => z > t,
                    Direction::Below => z < -t,
                };
                (Some(z), None, out)
            }
            Judge::Percentile { quantile, factor } => {
                if self.threshold.is_none() || self.n.is_multiple_of(QUANTILE_EVERY) {
                    self.threshold = self.quantile(quantile).map(|q| q * factor);
                }
                let out = self.threshold.is_some_and(|t| value > t);
                (Some(z), self.threshold, out)
            }
        }
    }

    /// Hysteresis: `streak` counts samples that disagree with the current state.
    fn step(&mut self, out_of_line: bool) {
        let disagrees = match self.state {
            AnomalyState::Anomalous => !out_of_line,
            _ => out_of_line,
        };
        if !disagrees {
            self.streak = 0;
            return;
        }
        self.streak += 1;
        match self.state {
            AnomalyState::Anomalous if self.streak >= self.config.clear_after => {
                self.state = AnomalyState::Normal;
                self.streak = 0;
            }
            AnomalyState::Normal | AnomalyState::WarmingUp
                if self.streak >= self.config.enter_after =>
            {
                self.state = AnomalyState::Anomalous;
                self.streak = 0;
            }
            _ => {}
        }
    }

    #[inline]
    fn learn(&mut self, x: f64) {
        if !x.is_finite() {
            return;
        }
        self.n += 1;
        match self.config.ewma_alpha {
            // Welford's update: stable for long series.
            None => {
                let d = x - self.mean;
                self.mean += d / self.n as f64;
                self.m2 += d * (x - self.mean);
            }
            Some(_) if self.n == 1 => {
                self.mean = x;
                self.m2 = 0.0;
            }
            // West's exponentially weighted mean and variance.
            Some(a) => {
                let d = x - self.mean;
                let incr = a * d;
                self.mean += incr;
                self.m2 = (1.0 - a) * (self.m2 + d * incr);
            }
        }
        if let Some(s) = &mut self.sketch {
            s.add(x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Standard normal samples (Box–Muller) from a fixed seed.
    fn gaussian(rng: &mut fastrand::Rng) -> f64 {
        let u1 = rng.f64().max(1e-12);
        let u2 = rng.f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    #[test]
    fn warmup_judges_nothing_and_a_flat_series_is_not_divided_by_zero() {
        let mut b = Baseline::new(DetectorConfig {
            warmup: 5,
            ..DetectorConfig::default()
        })
        .unwrap();
        for _ in 0..4 {
            assert_eq!(b.observe(1.0).state, AnomalyState::WarmingUp);
        }
        assert_eq!(b.observe(1.0).state, AnomalyState::Normal);
        assert_eq!(b.observe(1.0).state, AnomalyState::Normal);
        let j = b.observe(1.5);
        assert_eq!(j.state, AnomalyState::Anomalous);
        assert!(j.z.unwrap().is_finite());
        assert_eq!(b.observe(f64::NAN).state, AnomalyState::Anomalous);
        assert_eq!(b.count(), 6, "out-of-line samples are not learned");
    }

    #[test]
    fn hysteresis_needs_streaks_to_raise_and_to_clear() {
        let mut b = Baseline::new(DetectorConfig {
            warmup: 10,
            enter_after: 2,
            clear_after: 3,
            ..DetectorConfig::default()
        })
        .unwrap();
        for i in 0..50 {
            b.observe(10.0 + (i % 2) as f64);
        }
        assert_eq!(
            b.observe(100.0).state,
            AnomalyState::Normal,
            "one spike is not enough"
        );
        assert_eq!(b.observe(10.0).state, AnomalyState::Normal);
        b.observe(100.0);
        let j = b.observe(100.0);
        assert!(j.changed && j.state == AnomalyState::Anomalous);
        b.observe(10.0);
        b.observe(10.0);
        assert_eq!(
            b.state(),
            AnomalyState::Anomalous,
            "two in-line samples do not clear"
        );
        let j = b.observe(10.0);
        assert!(j.changed && j.state == AnomalyState::Normal);
    }

    #[test]
    fn z_score_precision_and_recall_on_noise_with_known_spikes() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut b = Baseline::new(DetectorConfig::default()).unwrap();
        let (mut tp, mut fp, mut fneg) = (0, 0, 0);
        for i in 0..20_000 {
            let spike = i > 100 && i % 97 == 0;
            let x = 50.0 + 5.0 * gaussian(&mut rng) + if spike { 40.0 } else { 0.0 };
            let out = b.observe(x).out_of_line;
            match (spike, out) {
                (true, true) => tp += 1,
                (false, true) => fp += 1,
                (true, false) => fneg += 1,
                _ => {}
            }
        }
        let precision = tp as f64 / (tp + fp) as f64;
        let recall = tp as f64 / (tp + fneg) as f64;
        println!("z-score: precision {precision:.3}, recall {recall:.3}, {fp} false alarms");
        // 8 σ spikes against a 3 σ threshold: all found; the noise's 3 σ tails (0.27 %)
        // are the false alarms.
        assert!(recall > 0.99, "recall {recall}");
        assert!(precision > 0.75, "precision {precision} ({tp} tp, {fp} fp)");
        assert!(fp < 80, "{fp} false alarms in 20 000 noise samples");
    }

    #[test]
    fn percentile_judge_flags_what_is_above_the_learned_p99() {
        let mut rng = fastrand::Rng::with_seed(11);
        let mut b = Baseline::new(DetectorConfig {
            judge: Judge::Percentile {
                quantile: 0.99,
                factor: 1.5,
            },
            warmup: 500,
            ..DetectorConfig::default()
        })
        .unwrap();
        let mut false_alarms = 0;
        for _ in 0..10_000 {
            // Exponential latencies around 20 ms: a long tail, where z-scores mislead.
            let x = -20.0 * rng.f64().max(1e-12).ln();
            false_alarms += usize::from(b.observe(x).out_of_line);
        }
        let p99 = b.quantile(0.99).unwrap();
        println!("percentile: p99 {p99:.1} (exact 92.1), {false_alarms} false alarms in 9 500");
        assert!((p99 - 92.1).abs() < 10.0, "p99 {p99}");
        assert!(false_alarms < 60, "{false_alarms}");
        assert!(b.observe(400.0).out_of_line);
    }

    #[test]
    fn a_baseline_survives_serialization() {
        let mut b = Baseline::new(DetectorConfig {
            ewma_alpha: Some(0.1),
            warmup: 3,
            ..DetectorConfig::default()
        })
        .unwrap();
        for x in [1.0, 2.0, 3.0, 2.0, 1.0] {
            b.observe(x);
        }
        let text = serde_json::to_string(&b).unwrap();
        let mut back: Baseline = serde_json::from_str(&text).unwrap();
        assert_eq!(back.count(), b.count());
        assert_eq!(back.observe(2.0), b.clone().observe(2.0));
    }
}
