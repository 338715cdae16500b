//! The model manifest: what an agent must know about a `model.onnx` before it trusts it.
//!
//! A model directory holds `model.onnx` and `manifest.json`. The agent refuses a model whose
//! file checksum, feature schema or input shape disagrees with this manifest, and keeps the model
//! it had.

use crate::family::{Family, Metric};
use crate::features::FeatureSpec;
use serde::{Deserialize, Serialize};

/// File name of the ONNX graph in a model directory.
pub const MODEL_FILE: &str = "model.onnx";
/// File name of the manifest in a model directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// When an alarm becomes an anomaly: at least `k` of the last `n` scored samples above threshold,
/// where a sample's score is first smoothed by an exponentially weighted moving average when
/// `smoothing_half_life` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmRule {
    /// Alarms needed.
    pub k: u32,
    /// Out of this many consecutive samples.
    pub n: u32,
    /// Half-life, in samples, of the exponentially weighted moving average of the score that is
    /// compared with the threshold; 0 (the default, and omitted from `manifest.json`) compares
    /// each raw score. Smoothing lets a sustained moderate rise alarm and a lone spike fade.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub smoothing_half_life: u32,
    /// Samples over which the alarm learns a new normal; 0 (the default, and omitted from
    /// `manifest.json`) never adapts. When set, a score level that the (smoothed) score held for
    /// at least three quarters of the last `adapt_window` samples, its 25th percentile there
    /// ([`RecentLevel`]), raises the threshold by as much as that level exceeds the model's
    /// ordinary score (`ModelManifest::ordinary_score`). A series that moved to a new level for
    /// good (a deployment, a resized instance) stops alarming after about `adapt_window`
    /// samples, while an incident shorter than three quarters of the window cannot teach the
    /// alarm to ignore it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub adapt_window: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

fn one() -> usize {
    1
}

fn is_one(v: &usize) -> bool {
    *v == 1
}

impl Default for AlarmRule {
    fn default() -> Self {
        AlarmRule::k_of_n(3, 5)
    }
}

impl AlarmRule {
    /// `k` of `n` on raw (unsmoothed) scores.
    pub const fn k_of_n(k: u32, n: u32) -> AlarmRule {
        AlarmRule {
            k,
            n,
            smoothing_half_life: 0,
            adapt_window: 0,
        }
    }

    /// This rule adapting to a new normal over `window` samples (0 turns adaptation off).
    pub const fn adapting(self, window: u32) -> AlarmRule {
        AlarmRule {
            adapt_window: window,
            ..self
        }
    }

    /// This rule with scores smoothed over `half_life` samples (0 turns smoothing off).
    pub const fn smoothed(self, half_life: u32) -> AlarmRule {
        AlarmRule {
            smoothing_half_life: half_life,
            ..self
        }
    }

    /// The rule actually applied: `n` at least 1 and `k` within `1..=n`, so that a malformed rule
    /// neither alarms on every sample (`k = 0`) nor never alarms (`k > n`).
    pub fn normalized(self) -> AlarmRule {
        let n = self.n.max(1);
        AlarmRule {
            k: self.k.clamp(1, n),
            n,
            ..self
        }
    }
}

/// The exponentially weighted moving average of a score series (see
/// [`AlarmRule::smoothing_half_life`]).
///
/// The first score starts the average; each later score `s` moves it by `alpha * (s - avg)`
/// with `alpha = 1 - 2^(-1 / half_life)`, so a score's weight halves every `half_life` samples.
/// O(1) per sample. Half-life 0 passes scores through unchanged. A NaN score is skipped (the
/// average keeps its value), so one failed score does not poison the series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreSmoother {
    alpha: f64,
    avg: Option<f64>,
}

impl ScoreSmoother {
    /// A fresh smoother over `half_life` samples.
    pub fn new(half_life: u32) -> Self {
        let alpha = if half_life == 0 {
            1.0
        } else {
            1.0 - 0.5f64.powf(1.0 / f64::from(half_life))
        };
        ScoreSmoother { alpha, avg: None }
    }

    /// Adds one score and returns the smoothed score (NaN only while no finite score was seen).
    pub fn push(&mut self, score: f64) -> f64 {
        if score.is_nan() {
            return self.avg.unwrap_or(f64::NAN);
        }
        let next = match self.avg {
            Some(avg) if self.alpha < 1.0 => avg + self.alpha * (score - avg),
            _ => score,
        };
        self.avg = Some(next);
        next
    }

    /// Forgets the average.
    pub fn reset(&mut self) {
        self.avg = None;
    }
}

/// `scores` smoothed as [`AlarmState`] smooths them under `rule` (a fresh [`ScoreSmoother`]).
pub fn smooth_scores(scores: &[f64], rule: AlarmRule) -> Vec<f64> {
    let mut sm = ScoreSmoother::new(rule.smoothing_half_life);
    scores.iter().map(|&s| sm.push(s)).collect()
}

/// The `q` quantile (`0..=1`) of ascending `sorted` values, linearly interpolated between the
/// closest ranks as `numpy.percentile` (and so scikit-learn's `offset_`) computes it; NaN when
/// `sorted` is empty.
pub fn quantile_of_sorted(sorted: &[f64], q: f64) -> f64 {
    let Some(last) = sorted.len().checked_sub(1) else {
        return f64::NAN;
    };
    let pos = q.clamp(0.0, 1.0) * last as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// The level a score series has recently held: the 25th percentile of its last `window` values,
/// i.e. a level the series stayed at or above for three quarters of the window.
///
/// O(1) memory per series whatever the window: one value in every `window / 100` (at least 1)
/// is kept, at most 100 of them, and the percentile is recomputed when one enters. Until the
/// kept values span the whole window there is no level, so a series that starts out anomalous
/// is not taken for normal.
#[derive(Debug, Clone, PartialEq)]
pub struct RecentLevel {
    every: u32,
    capacity: usize,
    since: u32,
    kept: std::collections::VecDeque<f64>,
    level: Option<f64>,
}

impl RecentLevel {
    /// Values kept at most.
    pub const MAX_KEPT: u32 = 100;
    /// The percentile reported.
    pub const PERCENTILE: f64 = 25.0;

    /// An empty tracker over `window` samples (at least 1).
    pub fn new(window: u32) -> Self {
        let window = window.max(1);
        let every = window.div_ceil(Self::MAX_KEPT);
        let capacity = window.div_ceil(every) as usize;
        RecentLevel {
            every,
            capacity,
            since: 0,
            kept: std::collections::VecDeque::with_capacity(capacity),
            level: None,
        }
    }

    /// The level over the window before the latest push, once the window has filled.
    pub fn level(&self) -> Option<f64> {
        self.level
    }

    /// Adds one value; NaN is skipped.
    pub fn push(&mut self, v: f64) {
        if v.is_nan() {
            return;
        }
        self.since += 1;
        if self.since < self.every {
            return;
        }
        self.since = 0;
        if self.kept.len() == self.capacity {
            self.kept.pop_front();
        }
        self.kept.push_back(v);
        if self.kept.len() == self.capacity {
            let mut sorted: Vec<f64> = self.kept.iter().copied().collect();
            sorted.sort_by(f64::total_cmp);
            self.level = Some(quantile_of_sorted(&sorted, Self::PERCENTILE / 100.0));
        }
    }

    /// Forgets everything.
    pub fn reset(&mut self) {
        self.since = 0;
        self.kept.clear();
        self.level = None;
    }
}

/// Applies an [`AlarmRule`] to a stream of samples, one call per scored sample.
///
/// This is THE alarm decision: the agent runs it on the node, and the trainer runs it when it
/// scores, evaluates and picks thresholds, so both take the same decision on the same scores.
/// A sample alarms when at least `k` of the last `n` samples (itself included) scored at or
/// above the threshold, each sample's score being first smoothed by the rule's
/// [`ScoreSmoother`] (a no-op at half-life 0). Before `n` samples have been seen the window is simply shorter, so a
/// burst at start-up can alarm as soon as `k` samples are above. The rule gives hysteresis both
/// ways: a lone spike does not alarm when `k > 1`, and an alarm holds for up to `n - k` samples
/// after the score falls back. A model with a spike threshold ([`AlarmState::with_spike`]) also
/// alarms on any single raw score that reaches it: a sharp incident of one or two samples that
/// is far rarer than the k-of-n rule's threshold.
#[derive(Debug, Clone)]
pub struct AlarmState {
    rule: AlarmRule,
    smoother: ScoreSmoother,
    /// Bit `i` is set when the sample `i` steps back was above threshold (bit 0 = newest).
    history: u128,
    /// Window mask: the low `n` bits (n is capped at 128, far beyond any useful rule).
    mask: u128,
    /// The recent level of smoothed scores, when the rule adapts and the ordinary score is known.
    level: Option<(RecentLevel, f64)>,
    /// The model's spike threshold ([`ModelManifest::spike_threshold`]), when it has one.
    spike: Option<f64>,
}

/// What one sample did to an [`AlarmState`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// Its smoothed score reached the (possibly raised) threshold.
    pub above: bool,
    /// Its raw score reached the (possibly raised) spike threshold.
    pub spike: bool,
    /// The sample alarms: `k` of the last `n` smoothed scores were above, or it is a spike.
    pub alarms: bool,
    /// The score that decided: the raw score when only the spike threshold was reached, else
    /// the smoothed score (the raw one when the rule does not smooth). An anomaly record
    /// carries this score...
    pub score: f64,
    /// ...and this threshold: the one `score` was compared with, raised by adaptation.
    pub threshold: f64,
}

impl AlarmState {
    /// Largest `n` honoured; longer windows are cut to this.
    pub const MAX_N: u32 = 128;

    /// A fresh state (no sample seen) for `rule`, normalized by [`AlarmRule::normalized`] with
    /// `n` capped at [`AlarmState::MAX_N`].
    pub fn new(rule: AlarmRule) -> Self {
        let n = rule.n.clamp(1, Self::MAX_N);
        let rule = AlarmRule { n, ..rule }.normalized();
        let mask = if n == 128 {
            u128::MAX
        } else {
            (1u128 << n) - 1
        };
        AlarmState {
            rule,
            smoother: ScoreSmoother::new(rule.smoothing_half_life),
            history: 0,
            mask,
            level: None,
            spike: None,
        }
    }

    /// This state with the model's spike threshold ([`ModelManifest::spike_threshold`]): a
    /// sample whose raw score reaches it alarms at once, whatever the smoothing and the k-of-n
    /// rule say. `None`, or a non-finite threshold, sets none.
    pub fn with_spike(mut self, spike_threshold: Option<f64>) -> Self {
        self.spike = spike_threshold.filter(|t| t.is_finite());
        self
    }

    /// This state with the model's ordinary score ([`ModelManifest::ordinary_score`]), which
    /// lets a rule with an [`AlarmRule::adapt_window`] adapt; without it the rule never adapts.
    pub fn with_ordinary(mut self, ordinary: f64) -> Self {
        if self.rule.adapt_window > 0 && ordinary.is_finite() {
            self.level = Some((RecentLevel::new(self.rule.adapt_window), ordinary));
        }
        self
    }

    /// How far the threshold is currently raised by adaptation (0 when it is not).
    pub fn raised_by(&self) -> f64 {
        match &self.level {
            Some((recent, ordinary)) => recent.level().map_or(0.0, |l| (l - ordinary).max(0.0)),
            None => 0.0,
        }
    }

    /// The rule in force.
    pub fn rule(&self) -> AlarmRule {
        self.rule
    }

    /// Records one sample's score and says whether it alarms (see the type's docs).
    pub fn push(&mut self, score: f64, threshold: f64) -> bool {
        self.push_smoothed(score, threshold).1
    }

    /// Records one sample's score; returns whether its smoothed score reached `threshold` and
    /// whether the sample alarms. A NaN score (a failed score) never reaches the threshold and
    /// leaves the smoothed score as it was.
    pub fn push_smoothed(&mut self, score: f64, threshold: f64) -> (bool, bool) {
        let v = self.push_scored(score, threshold);
        (v.above, v.alarms)
    }

    /// As [`AlarmState::push_smoothed`], saying also which score and threshold decided (see
    /// [`Verdict`]).
    pub fn push_scored(&mut self, score: f64, threshold: f64) -> Verdict {
        let smoothed = self.smoother.push(score);
        let raised = self.raised_by();
        let above = !score.is_nan() && smoothed >= threshold + raised;
        let spike_at = self.spike.map(|t| t + raised);
        let spike = spike_at.is_some_and(|t| score >= t);
        if let Some((recent, _)) = &mut self.level
            && !score.is_nan()
        {
            recent.push(smoothed);
        }
        let sustained = self.push_above(above);
        let (score, threshold) = match spike_at {
            Some(t) if spike && !sustained => (score, t),
            _ => (smoothed, threshold + raised),
        };
        Verdict {
            above,
            spike,
            alarms: sustained || spike,
            score,
            threshold,
        }
    }

    /// Records whether one sample was at or above threshold and says whether it alarms. This
    /// bypasses the smoother: use it only for rules without smoothing, or in tests.
    pub fn push_above(&mut self, above: bool) -> bool {
        self.history = ((self.history << 1) | u128::from(above)) & self.mask;
        self.history.count_ones() >= self.rule.k
    }

    /// Samples at or above threshold among the last `n`.
    pub fn alarms_in_window(&self) -> u32 {
        self.history.count_ones()
    }

    /// Forgets every sample seen, as after a model swap or a gap in the series.
    pub fn reset(&mut self) {
        self.history = 0;
        self.smoother.reset();
        if let Some((recent, _)) = &mut self.level {
            recent.reset();
        }
    }
}

/// A model's signal list that a family cannot feed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    /// A signal that is not one of the family's metrics.
    #[error("{signal:?} is not a {family} metric (the {family} metrics are {})", metric_names(*family))]
    NotInFamily {
        /// The family.
        family: Family,
        /// The signal.
        signal: String,
    },
    /// A metric named twice.
    #[error("{signal:?} appears twice")]
    Duplicate {
        /// The signal.
        signal: String,
    },
}

fn metric_names(family: Family) -> String {
    family
        .metrics()
        .map(Metric::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The metric of `family` each of `signals` names, in the order given. A model may take any
/// subset of its family's metrics in any order (a CSV of a node's records has none of the pod
/// metrics), since the agent reads each row by metric name; the trainer refuses a column that
/// is not a metric of the family, and the agent a model that names one.
pub fn family_metrics(family: Family, signals: &[String]) -> Result<Vec<Metric>, SignalError> {
    let mut out: Vec<Metric> = Vec::with_capacity(signals.len());
    for signal in signals {
        let Some(metric) = family.metrics().find(|m| m.as_str() == signal) else {
            return Err(SignalError::NotInFamily {
                family,
                signal: signal.clone(),
            });
        };
        if out.contains(&metric) {
            return Err(SignalError::Duplicate {
                signal: signal.clone(),
            });
        }
        out.push(metric);
    }
    Ok(out)
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelManifest {
    /// Metric family (`cpu`, `memory`, ...) or, for models trained on a CSV, its series name.
    pub family: String,
    /// Model version, unique per family; the agent reports it with every anomaly.
    pub version: String,
    /// How features are computed from signals; its `schema_version` must equal the agent's
    /// [`crate::features::FEATURE_SCHEMA_VERSION`].
    pub features: FeatureSpec,
    /// Feature names in input order (`features.names()`, written out for people and tools).
    pub feature_names: Vec<String>,
    /// Score at or above which a sample alarms (the smoothed score when
    /// `alarm.smoothing_half_life` is set).
    pub threshold: f64,
    /// k-of-n rule that turns alarms into anomalies.
    pub alarm: AlarmRule,
    /// The median of the training scores as the alarm rule compares them (smoothed): the level
    /// an adapting rule ([`AlarmRule::adapt_window`]) measures a series' recent level against.
    /// Absent in manifests written before adaptation existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordinary_score: Option<f64>,
    /// Raw score at or above which a single sample alarms at once, bypassing smoothing and
    /// the k-of-n rule (raised by adaptation like `threshold`): the score exceeded by a small
    /// share of the raw training scores, for a short, sharp incident that smoothing would
    /// average away. Absent when the model has none (too little training data to estimate so
    /// extreme a quantile, or turned off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spike_threshold: Option<f64>,
    /// Trees in the forest (in each forest, when there are several).
    pub n_trees: usize,
    /// Forests in the model: 1 (the default, omitted from `manifest.json`) for one forest over
    /// every feature; with the per-signal layout, one per signal, each over that signal's
    /// features, the score being the largest excess of a forest's score over its offset
    /// (`selfheal_core::forest::ForestSet`). The ONNX graph computes it; the agent reads one
    /// score either way.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub forests: usize,
    /// Sub-sample size each tree was grown on.
    pub max_samples: usize,
    /// Seed the forest was grown with.
    pub seed: u64,
    /// sha256 (hex) of the training data, for provenance.
    pub training_data_sha256: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// sha256 (hex) of `model.onnx`.
    pub model_sha256: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rule: AlarmRule, above: &[u8]) -> Vec<u8> {
        let mut st = AlarmState::new(rule);
        above
            .iter()
            .map(|&a| u8::from(st.push_above(a == 1)))
            .collect()
    }

    #[test]
    fn k_of_n_needs_k_and_holds_for_n_minus_k() {
        let rule = AlarmRule::k_of_n(2, 3);
        assert_eq!(
            run(rule, &[1, 0, 0, 0]),
            [0, 0, 0, 0],
            "a lone spike is not an alarm"
        );
        assert_eq!(run(rule, &[1, 0, 1, 0, 0]), [0, 0, 1, 0, 0]);
        assert_eq!(run(rule, &[1, 1, 0, 0]), [0, 1, 1, 0]);
    }

    #[test]
    fn one_of_one_is_the_plain_threshold() {
        let mut st = AlarmState::new(AlarmRule::k_of_n(1, 1));
        assert!(st.push(0.7, 0.7), "at threshold alarms");
        assert!(!st.push(0.69, 0.7));
    }

    #[test]
    fn smoothing_lets_a_sustained_rise_alarm_and_a_lone_spike_fade() {
        let rule = AlarmRule::k_of_n(1, 1).smoothed(2);
        let decide = |scores: &[f64]| {
            let mut st = AlarmState::new(rule);
            scores.iter().map(|&s| st.push(s, 0.6)).collect::<Vec<_>>()
        };
        // A lone spike far above threshold is averaged away...
        assert_eq!(decide(&[0.4, 0.4, 0.9, 0.4, 0.4]), [false; 5]);
        // ...while a sustained, moderate rise crosses it after a few samples.
        let sustained = decide(&[0.4, 0.7, 0.7, 0.7, 0.7, 0.7]);
        assert_eq!(sustained, [false, false, false, false, true, true]);
        // Half-life 0 is the raw score; the smoother's first value is the first score.
        assert_eq!(
            smooth_scores(&[0.1, 0.9], AlarmRule::k_of_n(1, 1)),
            [0.1, 0.9]
        );
        let s = smooth_scores(
            &[0.0, 1.0, f64::NAN, 1.0],
            AlarmRule::k_of_n(1, 1).smoothed(1),
        );
        assert_eq!(s, [0.0, 0.5, 0.5, 0.75], "alpha 1/2; NaN skipped");
    }

    #[test]
    fn smoothing_is_omitted_from_json_when_off_and_read_when_absent() {
        let raw = AlarmRule::k_of_n(6, 60);
        let json = serde_json::to_string(&raw).expect("serialize");
        assert_eq!(json, r#"{"k":6,"n":60}"#, "older agents still read it");
        assert_eq!(
            serde_json::from_str::<AlarmRule>(&json).expect("parse"),
            raw
        );
        let smoothed = raw.smoothed(10);
        let json = serde_json::to_string(&smoothed).expect("serialize");
        assert_eq!(
            serde_json::from_str::<AlarmRule>(&json).expect("parse"),
            smoothed
        );
    }

    #[test]
    fn malformed_rules_are_normalized() {
        assert_eq!(
            AlarmState::new(AlarmRule::k_of_n(0, 0)).rule(),
            AlarmRule::k_of_n(1, 1)
        );
        assert_eq!(
            AlarmState::new(AlarmRule::k_of_n(9, 4)).rule(),
            AlarmRule::k_of_n(4, 4)
        );
        let mut st = AlarmState::new(AlarmRule::k_of_n(128, 500));
        assert_eq!(st.rule().n, 128);
        let alarms: Vec<bool> = (0..128).map(|_| st.push_above(true)).collect();
        assert!(!alarms[126] && alarms[127]);
        st.reset();
        assert!(!st.push_above(true));
    }

    #[test]
    fn recent_level_is_the_25th_percentile_of_a_full_window() {
        let mut r = RecentLevel::new(8);
        for v in 0..7 {
            r.push(f64::from(v));
            assert_eq!(r.level(), None, "window not full yet");
        }
        r.push(7.0);
        assert_eq!(r.level(), Some(1.75), "25th percentile of 0..=7");
        r.push(f64::NAN);
        assert_eq!(r.level(), Some(1.75), "NaN skipped");
        // A long window keeps one value in every window/100.
        let mut r = RecentLevel::new(1000);
        for i in 0..999 {
            r.push(f64::from(i % 2));
        }
        assert_eq!(r.level(), None);
        r.push(1.0);
        assert!(r.level().is_some());
        r.reset();
        assert_eq!(r.level(), None);
    }

    #[test]
    fn an_adapting_rule_learns_a_new_normal_but_not_a_short_incident() {
        let rule = AlarmRule::k_of_n(1, 1).adapting(100);
        let mut st = AlarmState::new(rule).with_ordinary(0.4);
        // Ordinary scores, then an incident of 40 samples: it alarms throughout.
        for _ in 0..200 {
            assert!(!st.push(0.4, 0.6));
        }
        assert!(
            (0..40).all(|_| st.push(0.7, 0.6)),
            "a short incident alarms"
        );
        // A lasting move to 0.7: alarms at first, then the threshold rises by about 0.3.
        let alarms: Vec<bool> = (0..300).map(|_| st.push(0.7, 0.6)).collect();
        assert!(alarms[..30].iter().all(|&a| a));
        assert!(
            alarms[150..].iter().all(|&a| !a),
            "the new normal stops alarming"
        );
        assert!((st.raised_by() - 0.3).abs() < 1e-9);
        // A rise above the new normal alarms again.
        assert!(st.push(1.1, 0.6));
        // Without the ordinary score, or with window 0, the rule never adapts.
        let mut plain = AlarmState::new(rule);
        assert!((0..500).all(|_| plain.push(0.7, 0.6)));
        let mut off = AlarmState::new(AlarmRule::k_of_n(1, 1)).with_ordinary(0.4);
        assert!((0..500).all(|_| off.push(0.7, 0.6)));
        assert_eq!(off.raised_by(), 0.0);
    }

    #[test]
    fn a_spike_alarms_at_once_and_reports_its_own_score_and_threshold() {
        let rule = AlarmRule::k_of_n(3, 5).smoothed(10);
        let mut st = AlarmState::new(rule).with_spike(Some(0.9));
        for _ in 0..20 {
            assert!(!st.push(0.4, 0.6));
        }
        // One raw score at the spike threshold alarms although its smoothed score is far below
        // the threshold; the verdict carries the raw score and the spike threshold.
        let v = st.push_scored(0.95, 0.6);
        assert!(v.spike && v.alarms && !v.above);
        assert_eq!((v.score, v.threshold), (0.95, 0.9));
        // The next ordinary score does not alarm; without a spike threshold nothing did.
        assert!(!st.push(0.4, 0.6));
        let mut plain = AlarmState::new(rule).with_spike(Some(f64::NAN));
        assert!((0..20).all(|_| !plain.push(0.4, 0.6)));
        assert!(!plain.push(0.95, 0.6));
        // A sustained alarm reports the smoothed score against the threshold.
        let mut st = AlarmState::new(AlarmRule::k_of_n(1, 1)).with_spike(Some(0.9));
        let v = st.push_scored(0.95, 0.6);
        assert!(v.above && v.spike && v.alarms);
        assert_eq!((v.score, v.threshold), (0.95, 0.6));
    }

    #[test]
    fn a_model_may_take_any_subset_of_its_family_in_any_order() {
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            family_metrics(Family::Cpu, &names(&["cpu_load1", "cpu_user_ratio"])),
            Ok(vec![Metric::CpuLoad1, Metric::CpuUserRatio])
        );
        let err = family_metrics(Family::Cpu, &names(&["cpu_load1", "memory_used_bytes"]))
            .expect_err("not cpu");
        assert_eq!(
            err,
            SignalError::NotInFamily {
                family: Family::Cpu,
                signal: "memory_used_bytes".into()
            }
        );
        assert!(
            err.to_string()
                .contains("\"memory_used_bytes\" is not a cpu metric")
        );
        assert_eq!(
            family_metrics(Family::Cpu, &names(&["cpu_load1", "cpu_load1"])),
            Err(SignalError::Duplicate {
                signal: "cpu_load1".into()
            })
        );
    }

    #[test]
    fn adaptation_is_omitted_from_json_when_off() {
        let rule = AlarmRule::k_of_n(3, 30).smoothed(10);
        assert_eq!(
            serde_json::to_string(&rule).expect("serialize"),
            r#"{"k":3,"n":30,"smoothing_half_life":10}"#
        );
        let adapting = rule.adapting(1000);
        let json = serde_json::to_string(&adapting).expect("serialize");
        assert_eq!(
            serde_json::from_str::<AlarmRule>(&json).expect("parse"),
            adapting
        );
    }
}
