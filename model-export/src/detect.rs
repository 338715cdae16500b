//! From series to a detector and back: training a model end to end, scoring, alarming, and
//! choosing the threshold.
//!
//! The decision a trained model takes is exactly the agent's: features from
//! `selfheal_core::features` (a fresh extractor per series), the reference score
//! `IsolationForest::score` on the `f32` features, `score >= threshold`, then the k-of-n rule of
//! `selfheal_core::model::AlarmState`. [`train_model`] grows the forest on
//! every series' rows (after each series' feature warm-up) and picks the threshold either from a
//! contamination rate over the training scores or, given labels, as the one that maximizes
//! point-wise F1 on a held-back validation tail of each series under a false-alarm ceiling.

use crate::dataset::{DataError, Series, Windows, features, spec_for};
use crate::eval::{Counts, Metrics};
use crate::train::{
    FeatureMatrix, ForestLayout, ForestParams, NORMALIZE_SCALE_RANGE, TrainError, train_forest,
};
use selfheal_core::features::FeatureSpec;
use selfheal_core::forest::{ForestSet, Member, RangeGuard};
use selfheal_core::model::{AlarmRule, AlarmState, quantile_of_sorted, smooth_scores};
use serde::{Deserialize, Serialize};

/// How the alarm threshold is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ThresholdRule {
    /// The score quantile that leaves this share of training points above it (scikit-learn's
    /// `contamination`, e.g. 0.01).
    Contamination(f64),
    /// With labels: the threshold maximizing point-wise F1 (after the k-of-n rule) on the last
    /// `validation_fraction` of each series, among those whose false-alarm events per 1000
    /// points stay at or below `max_false_alarm_events_per_1000`. The forest is grown on the
    /// rest. Without labels, or when no candidate meets the ceiling, `fallback_contamination`.
    BestF1 {
        /// Share of each series held back for validation, in (0, 1).
        validation_fraction: f64,
        /// False-alarm ceiling, in events per 1000 points.
        max_false_alarm_events_per_1000: f64,
        /// Contamination used when F1 cannot be measured or the ceiling cannot be met.
        fallback_contamination: f64,
    },
}

/// Everything `train_model` needs besides the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Forest shape and seed (of each forest, with the per-signal layout).
    pub forest: ForestParams,
    /// One forest over every feature, or one per signal; absent means joint.
    #[serde(default)]
    pub layout: ForestLayout,
    /// Feature shape; its `signals` are replaced by the input's columns.
    pub features: FeatureSpec,
    /// k-of-n rule applied after the threshold.
    pub alarm: AlarmRule,
    /// Threshold choice.
    pub threshold: ThresholdRule,
    /// Weight of the range guard over each signal's value (`selfheal_core::forest::RangeGuard`:
    /// how many training spans a value lies outside the range it held in training, which an
    /// isolation forest cannot see). 0, the value when absent from a config file, trains no
    /// guard; so does a feature spec without `value`.
    #[serde(default)]
    pub range_weight: f32,
    /// Share of the raw training scores at or above the spike threshold
    /// (`ModelManifest::spike_threshold`): one raw score that high alarms at once. 0, the value
    /// when absent from a config file, sets none; so does training data too small to hold
    /// [`SPIKE_MIN_ROWS_ABOVE`] rows above it.
    #[serde(default)]
    pub spike_contamination: f64,
}

/// Default `--sensitivity` (docs/benchmarks.md, "Detection quality": chosen by
/// leave-one-machine-out).
pub const DEFAULT_SENSITIVITY: f64 = 0.8;

/// Least and most contamination `--sensitivity` reaches (at 0 and at 1).
pub const SENSITIVITY_CONTAMINATION: (f64, f64) = (0.001, 0.1);

/// The contamination of sensitivity `s` in `[0, 1]` (clamped): log-linear from 0.001 of the
/// training scores above the threshold at 0 to 0.1 at 1, so each step of 0.1 lets about 1.6×
/// as many ordinary samples reach the threshold. Sensitivity is what a user turns to move
/// along the operating curve (windows hit against false alarms, docs/benchmarks.md).
pub fn sensitivity_contamination(s: f64) -> f64 {
    let (lo, hi) = SENSITIVITY_CONTAMINATION;
    lo * (hi / lo).powf(s.clamp(0.0, 1.0))
}

/// Default alarm rule: scores smoothed over a half-life of 5 samples, then 2 smoothed scores at
/// or above threshold within the last 5, the threshold adapting to a new normal over 1000
/// samples (a score level held for three quarters of them: about 83 minutes at the agent's 5 s
/// interval). Chosen leave-one-machine-out with [`DEFAULT_SENSITIVITY`] and [`DEFAULT_LAYOUT`]
/// on 26 machines (docs/benchmarks.md, "Detection quality"): a short half-life lets a two- or
/// three-sample incident reach the threshold, 2-of-5 drops a lone smoothed crossing.
pub const DEFAULT_ALARM: AlarmRule = AlarmRule::k_of_n(2, 5).smoothed(5).adapting(1000);

/// Default forest layout: one forest per signal, offsets at the 99th training percentile,
/// level-free (each forest reads its signal's delta and rolling statistics, not its value;
/// the range guard reads the value), not normalized (docs/benchmarks.md, "Detection quality":
/// chosen by leave-one-machine-out). A test split's ordinary level drift inside the training
/// range is what the value feature made the forests alarm on.
pub const DEFAULT_LAYOUT: ForestLayout = ForestLayout::PerSignal {
    offset_quantile: crate::train::PER_SIGNAL_OFFSET_QUANTILE,
    normalize: false,
    level_free: true,
};

/// Default weight of the range guard: a value one training span outside its range scores 0.6,
/// several times the largest excess a forest's score reaches over its offset on ordinary
/// data, so a value clearly outside the range it held in training alarms by itself. With the
/// level-free layout the guard is the only part of the model that sees a signal's level;
/// leave-one-machine-out chose 0.6 among 0.15, 0.3 and 0.6.
pub const DEFAULT_RANGE_WEIGHT: f32 = 0.6;
/// Default spike share, as a fraction of the threshold's contamination: 0, no spike threshold
/// (leave-one-machine-out chose none at the default sensitivity, whose smoothing half-life of 5
/// samples already lets a short incident through; `--spike-contamination` sets one).
pub const DEFAULT_SPIKE_RATIO: f64 = 0.0;

/// The contamination of [`DEFAULT_SENSITIVITY`].
pub fn default_contamination() -> f64 {
    sensitivity_contamination(DEFAULT_SENSITIVITY)
}
/// Training rows that must lie at or above the spike threshold for it to be set: an extreme
/// quantile estimated from fewer rows is little more than the training set's largest score,
/// and on a short training set that alarms on every new high.
pub const SPIKE_MIN_ROWS_ABOVE: f64 = 20.0;

impl Default for TrainConfig {
    /// The configuration chosen leave-one-machine-out (docs/benchmarks.md, "Detection
    /// quality"): one forest per signal of [`crate::train::DEFAULT_TREES`] trees at ψ =
    /// [`crate::train::DEFAULT_MAX_SAMPLES`] in [`DEFAULT_LAYOUT`] (level-free), the standard
    /// features (value, delta, std and z-score over 12 and 60 samples), the contamination of [`DEFAULT_SENSITIVITY`] over the
    /// smoothed training scores, [`DEFAULT_ALARM`], the range guard ([`DEFAULT_RANGE_WEIGHT`]),
    /// and no spike threshold ([`DEFAULT_SPIKE_RATIO`]).
    fn default() -> Self {
        TrainConfig {
            forest: ForestParams::default(),
            layout: DEFAULT_LAYOUT,
            features: FeatureSpec::standard(Vec::new()),
            alarm: DEFAULT_ALARM,
            threshold: ThresholdRule::Contamination(default_contamination()),
            range_weight: DEFAULT_RANGE_WEIGHT,
            spike_contamination: default_contamination() * DEFAULT_SPIKE_RATIO,
        }
    }
}

/// Training that failed.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// Reading or featurizing data failed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Growing the forest failed.
    #[error(transparent)]
    Train(#[from] TrainError),
    /// The feature spec yields no feature.
    #[error("the feature spec yields no feature")]
    NoFeatures,
    /// A contamination or validation fraction outside (0, 1).
    #[error("{name} must be in (0, 1), got {value}")]
    BadFraction {
        /// Parameter name.
        name: &'static str,
        /// Value given.
        value: f64,
    },
    /// The range guard's weight is negative or not a number.
    #[error("range_weight must be a finite number >= 0, got {value}")]
    BadRangeWeight {
        /// Value given.
        value: f32,
    },
    /// Too few training rows to place the threshold (see [`MIN_ROWS_ABOVE_THRESHOLD`]).
    #[error(
        "{rows} training rows (after the feature warm-up) cannot place a threshold at \
         contamination {contamination}: at least {needed} are needed; observe the node longer \
         or raise the sensitivity"
    )]
    TooFewTrainingRows {
        /// Training rows.
        rows: usize,
        /// Rows needed.
        needed: usize,
        /// The contamination asked for.
        contamination: f64,
    },
    /// Label windows were given for a different number of series.
    #[error("{labels} label sets for {series} series")]
    LabelCount {
        /// Label sets.
        labels: usize,
        /// Series.
        series: usize,
    },
}

/// A trained detector: forest, features, threshold and alarm rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Detector {
    /// The forest, or forests (per-signal layout).
    pub forest: ForestSet,
    /// The features it reads (signals = the input's columns).
    pub spec: FeatureSpec,
    /// Alarm when `score >= threshold` (before the k-of-n rule).
    pub threshold: f64,
    /// k-of-n rule.
    pub alarm: AlarmRule,
    /// Median of the smoothed training scores, against which an adapting rule measures a
    /// series' recent level (NaN when unknown: the rule then never adapts).
    pub ordinary: f64,
    /// Raw score at which one sample alarms at once, if the model has one.
    pub spike: Option<f64>,
}

/// How a threshold was chosen, for the log and the manifest's reader.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThresholdReport {
    /// `contamination` or `best_f1`.
    pub method: &'static str,
    /// Validation metrics at the chosen threshold (best F1 only).
    pub validation: Option<Metrics>,
}

/// Scores and alarms for one series.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// One score per row.
    pub scores: Vec<f64>,
    /// One alarm per row, after the k-of-n rule.
    pub alarms: Vec<bool>,
}

impl Detector {
    /// Scores every row of `series` and applies the threshold and the k-of-n rule, as an agent
    /// watching the series from its first row would (rows in the feature warm-up never alarm).
    pub fn run(&self, series: &Series) -> Result<Scored, DataError> {
        let rows = features(series, &self.spec)?;
        let scores = score_rows(&self.forest, &rows);
        let alarms = alarms_after_warmup(
            &scores,
            self.spec.warmup(),
            self.threshold,
            self.alarm_state(),
        );
        Ok(Scored { scores, alarms })
    }

    /// A fresh [`AlarmState`] for a new series, with this detector's rule, ordinary score and
    /// spike threshold.
    pub fn alarm_state(&self) -> AlarmState {
        AlarmState::new(self.alarm)
            .with_ordinary(self.ordinary)
            .with_spike(self.spike)
    }

    /// Alarms of a score series under this detector's threshold, spike threshold and rule
    /// (a fresh [`AlarmState`], as for a new series on the node).
    pub fn alarms(&self, scores: &[f64]) -> Vec<bool> {
        alarms(scores, self.threshold, self.alarm_state())
    }
}

/// Alarms of a series' scores as the node decides them: the first `warmup` rows, whose features
/// come from windows not yet full, are scored but neither alarm nor feed `state`.
pub fn alarms_after_warmup(
    scores: &[f64],
    warmup: usize,
    threshold: f64,
    state: AlarmState,
) -> Vec<bool> {
    let warm = warmup.min(scores.len());
    let mut out = vec![false; warm];
    out.extend(alarms(&scores[warm..], threshold, state));
    out
}

/// Reference scores of every row.
pub fn score_rows(forest: &ForestSet, rows: &FeatureMatrix) -> Vec<f64> {
    (0..rows.n_rows())
        .map(|i| forest.score(rows.row(i)))
        .collect()
}

/// Alarms of a score series under `threshold`, starting from `state` (a fresh
/// [`AlarmState`] with the model's rule, ordinary score and spike threshold).
pub fn alarms(scores: &[f64], threshold: f64, mut state: AlarmState) -> Vec<bool> {
    scores.iter().map(|&s| state.push(s, threshold)).collect()
}

/// The score above which a share `contamination` of `scores` lies (linear-interpolated
/// quantile, as `numpy.percentile` and so scikit-learn's `offset_`).
pub fn contamination_threshold(scores: &[f64], contamination: f64) -> f64 {
    if scores.is_empty() {
        return f64::INFINITY;
    }
    let mut s = scores.to_vec();
    s.sort_by(f64::total_cmp);
    quantile_of_sorted(&s, 1.0 - contamination)
}

/// The threshold maximizing pooled point-wise F1 of the alarms (after `rule`) over
/// `validation` (scores and windows per series), among thresholds whose false-alarm events per
/// 1000 points are at most `max_events_per_1000`. Candidates are 400 quantiles of the pooled
/// scores as the rule compares them (smoothed per series). `None` when nothing is labelled or no candidate meets the ceiling.
pub fn best_f1_threshold(
    validation: &[(Vec<f64>, Windows)],
    state: &AlarmState,
    max_events_per_1000: f64,
) -> Option<(f64, Metrics)> {
    let rule = state.rule();
    let mut pooled: Vec<f64> = validation
        .iter()
        .flat_map(|(s, _)| smooth_scores(s, rule))
        .collect();
    if pooled.is_empty() {
        return None;
    }
    pooled.sort_by(f64::total_cmp);
    let mut candidates: Vec<f64> = (0..400)
        .map(|i| pooled[(pooled.len() - 1) * i / 399])
        .collect();
    candidates.dedup();
    let mut best: Option<(f64, Metrics)> = None;
    for t in candidates {
        let mut c = Counts::default();
        for (scores, windows) in validation {
            c.add(&Counts::of(&alarms(scores, t, state.clone()), windows));
        }
        if c.labelled_points == 0 {
            return None;
        }
        let m = c.metrics();
        if m.false_alarm_events_per_1000 > max_events_per_1000 {
            continue;
        }
        if best.as_ref().is_none_or(|(_, b)| m.f1 > b.f1) {
            best = Some((t, m));
        }
    }
    best
}

/// Rows of a series used for training: all of them but the feature warm-up, unless the series
/// is too short to spare it.
fn training_rows(rows: &FeatureMatrix, warmup: usize) -> FeatureMatrix {
    if rows.n_rows() > 2 * warmup {
        rows.slice(warmup..rows.n_rows())
    } else {
        rows.clone()
    }
}

/// Trains a detector on `series` (all with the same columns), with optional `labels` (one
/// [`Windows`] per series, in the same order) for [`ThresholdRule::BestF1`].
pub fn train_model(
    series: &[Series],
    labels: Option<&[Windows]>,
    cfg: &TrainConfig,
) -> Result<(Detector, ThresholdReport), DetectError> {
    let Some(first) = series.first() else {
        return Err(DetectError::Train(TrainError::NoRows));
    };
    let spec = spec_for(&cfg.features, first);
    if spec.is_empty() {
        return Err(DetectError::NoFeatures);
    }
    if let Some(l) = labels
        && l.len() != series.len()
    {
        return Err(DetectError::LabelCount {
            labels: l.len(),
            series: series.len(),
        });
    }
    let check = |name, value: f64| {
        if value > 0.0 && value < 1.0 {
            Ok(())
        } else {
            Err(DetectError::BadFraction { name, value })
        }
    };
    if let ForestLayout::PerSignal {
        offset_quantile, ..
    } = cfg.layout
    {
        check("offset_quantile", offset_quantile)?;
    }
    if cfg.spike_contamination != 0.0 {
        check("spike_contamination", cfg.spike_contamination)?;
    }
    if !(cfg.range_weight.is_finite() && cfg.range_weight >= 0.0) {
        return Err(DetectError::BadRangeWeight {
            value: cfg.range_weight,
        });
    }
    let (validation_fraction, contamination) = match cfg.threshold {
        ThresholdRule::Contamination(c) => {
            check("contamination", c)?;
            (None, c)
        }
        ThresholdRule::BestF1 {
            validation_fraction,
            fallback_contamination,
            ..
        } => {
            check("validation_fraction", validation_fraction)?;
            check("fallback_contamination", fallback_contamination)?;
            (labels.map(|_| validation_fraction), fallback_contamination)
        }
    };
    let grown = grow_forests(series, labels, validation_fraction, &spec, cfg)?;
    let Calibration {
        threshold: by_contamination,
        ordinary,
        spike,
        training_rows,
    } = calibrate(
        &grown.train_scores,
        cfg.alarm,
        contamination,
        cfg.spike_contamination,
    )?;
    let Grown {
        forest, held_back, ..
    } = grown;
    tracing::info!(training_rows, "calibrated");
    let state = AlarmState::new(cfg.alarm)
        .with_ordinary(ordinary)
        .with_spike(spike);
    let (threshold, report) = match (&cfg.threshold, held_back.is_empty()) {
        (
            ThresholdRule::BestF1 {
                max_false_alarm_events_per_1000,
                ..
            },
            false,
        ) => {
            let scored: Vec<(Vec<f64>, Windows)> = held_back
                .iter()
                .map(|(rows, w)| (score_rows(&forest, rows), w.clone()))
                .collect();
            match best_f1_threshold(&scored, &state, *max_false_alarm_events_per_1000) {
                Some((t, m)) => (
                    t,
                    ThresholdReport {
                        method: "best_f1",
                        validation: Some(m),
                    },
                ),
                None => {
                    tracing::warn!(
                        "no labelled validation point or no threshold under the false-alarm \
                         ceiling; falling back to the contamination threshold"
                    );
                    (
                        by_contamination,
                        ThresholdReport {
                            method: "contamination",
                            validation: None,
                        },
                    )
                }
            }
        }
        _ => (
            by_contamination,
            ThresholdReport {
                method: "contamination",
                validation: None,
            },
        ),
    };
    tracing::info!(threshold, method = report.method, spike_threshold = ?spike, "threshold chosen");
    Ok((
        Detector {
            forest,
            spec,
            threshold,
            alarm: cfg.alarm,
            ordinary,
            spike,
        },
        report,
    ))
}

/// What [`grow_forests`] leaves for calibration.
#[derive(Debug, Clone)]
pub struct Grown {
    /// The forests, with the range guard when the configuration asks for one.
    pub forest: ForestSet,
    /// Raw scores of each series' training rows (after its feature warm-up), series by series.
    pub train_scores: Vec<Vec<f64>>,
    /// Each labelled series' held-back validation tail (best-F1 thresholds only).
    pub held_back: Vec<(FeatureMatrix, Windows)>,
}

/// Featurizes every series, splits off the validation tails (`validation_fraction`, with
/// `labels`), grows the forests of `cfg` on the rest, and scores the training rows.
pub fn grow_forests(
    series: &[Series],
    labels: Option<&[Windows]>,
    validation_fraction: Option<f64>,
    spec: &FeatureSpec,
    cfg: &TrainConfig,
) -> Result<Grown, DetectError> {
    let mut train = FeatureMatrix::new(spec.len());
    // Training rows per series, so that scores are smoothed series by series.
    let mut train_lens: Vec<usize> = Vec::with_capacity(series.len());
    let mut held_back: Vec<(FeatureMatrix, Windows)> = Vec::new();
    for (i, s) in series.iter().enumerate() {
        let rows = features(s, spec)?;
        let n = rows.n_rows();
        let cut = validation_fraction.map_or(n, |f| n - ((n as f64 * f).round() as usize).min(n));
        let part = training_rows(&rows.slice(0..cut), spec.warmup());
        train_lens.push(part.n_rows());
        train.extend(&part);
        if let (Some(l), true) = (labels, cut < n) {
            held_back.push((rows.slice(cut..n), l[i].slice(cut..n)));
        }
        tracing::info!(series = %s.name, rows = n, training_rows = cut, "featurized");
    }
    tracing::info!(
        rows = train.n_rows(),
        features = spec.len(),
        trees = cfg.forest.n_trees,
        layout = ?cfg.layout,
        "growing forest"
    );
    let mut forest = grow(&train, spec, cfg)?;
    if let Some(guard) = range_guard(&train, spec, cfg.range_weight) {
        forest = forest.with_range(guard);
    }
    let raw = score_rows(&forest, &train);
    let mut train_scores = Vec::with_capacity(train_lens.len());
    let mut at = 0;
    for len in train_lens {
        train_scores.push(raw[at..at + len].to_vec());
        at += len;
    }
    Ok(Grown {
        forest,
        train_scores,
        held_back,
    })
}

/// The thresholds a model's alarm compares with, from its raw training scores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    /// The score exceeded by `contamination` of the smoothed training scores.
    pub threshold: f64,
    /// Median smoothed training score ([`Detector::ordinary`]).
    pub ordinary: f64,
    /// Spike threshold, when the training set can estimate one.
    pub spike: Option<f64>,
    /// Training rows the quantiles were taken over.
    pub training_rows: usize,
}

/// Training rows that must lie above the threshold for it to be more than the training set's
/// largest scores: with fewer, [`calibrate`] refuses (a model trained on a few minutes of a
/// node alarms on almost every cycle once anything changes).
pub const MIN_ROWS_ABOVE_THRESHOLD: f64 = 2.0;
/// Training rows above the threshold below which [`calibrate`] warns that the threshold is
/// poorly estimated.
pub const WARN_ROWS_ABOVE_THRESHOLD: f64 = 10.0;

/// Training rows (after each series' feature warm-up) that `contamination` needs: below the
/// first, training is refused; below the second, it warns.
pub fn training_rows_needed(contamination: f64) -> (usize, usize) {
    (
        (MIN_ROWS_ABOVE_THRESHOLD / contamination).ceil() as usize,
        (WARN_ROWS_ABOVE_THRESHOLD / contamination).ceil() as usize,
    )
}

/// Chooses the threshold (the `contamination` quantile of the training scores smoothed series
/// by series as `alarm` smooths them), the ordinary score and the spike threshold from raw
/// training scores, one `Vec` per series. Refuses a training set too small to place the
/// threshold ([`MIN_ROWS_ABOVE_THRESHOLD`]) and warns below [`WARN_ROWS_ABOVE_THRESHOLD`].
pub fn calibrate(
    train_scores: &[Vec<f64>],
    alarm: AlarmRule,
    contamination: f64,
    spike_contamination: f64,
) -> Result<Calibration, DetectError> {
    let raw: Vec<f64> = train_scores.iter().flatten().copied().collect();
    let (refuse, warn) = training_rows_needed(contamination);
    if raw.len() < refuse {
        return Err(DetectError::TooFewTrainingRows {
            rows: raw.len(),
            needed: refuse,
            contamination,
        });
    }
    if alarm.adapt_window > 0 && raw.len() < alarm.adapt_window as usize {
        tracing::warn!(
            rows = raw.len(),
            adapt_window = alarm.adapt_window,
            "TrainingSetSmall: fewer training rows than the alarm takes to learn a new normal; \
             every level the node did not show in training alarms until then"
        );
    }
    if raw.len() < warn {
        tracing::warn!(
            rows = raw.len(),
            recommended = warn,
            contamination,
            "TrainingSetSmall: the threshold is estimated from fewer than 10 training rows above \
             it; observe the node longer (docs/models.md, \"How long to observe\")"
        );
    }
    let smoothed: Vec<f64> = train_scores
        .iter()
        .flat_map(|s| smooth_scores(s, alarm))
        .collect();
    let ordinary = contamination_threshold(&smoothed, 0.5);
    let mut threshold = contamination_threshold(&smoothed, contamination);
    if threshold <= ordinary {
        // Half the training scores or more sit at the very top: the signals were flat in
        // training (a node observed while idle, a pod tree that never moved), so every row
        // had the same features. Anything other than that score is new; agents refuse a
        // threshold that is not above the ordinary score, so it goes just above it.
        tracing::warn!(
            rows = raw.len(),
            ordinary,
            "TrainingSetFlat: at least half the training scores equal the threshold's quantile; \
             the model alarms on any change from what training showed"
        );
        threshold = ordinary + FLAT_THRESHOLD_MARGIN;
    }
    Ok(Calibration {
        threshold,
        ordinary,
        spike: spike_threshold(&raw, spike_contamination),
        training_rows: raw.len(),
    })
}

/// How far above the ordinary score the threshold of a flat training set goes: far below the
/// smallest step a forest's score takes (one tree's path one node shorter moves a 10-tree,
/// ψ = 64 forest's score by about 0.004), far above `f32` rounding of scores near 0.
pub const FLAT_THRESHOLD_MARGIN: f64 = 1e-4;

/// The range guard over each signal's value column, from the range it held in `train`; `None`
/// when `weight` is 0 or the spec has no value feature.
fn range_guard(train: &FeatureMatrix, spec: &FeatureSpec, weight: f32) -> Option<RangeGuard> {
    if weight <= 0.0 || !spec.value {
        return None;
    }
    let width = spec.per_signal();
    let bounds = (0..spec.signals.len())
        .filter_map(|i| {
            let column = i * width;
            RangeGuard::bound(column, (0..train.n_rows()).map(|r| train.row(r)[column]))
        })
        .collect();
    Some(RangeGuard { weight, bounds })
}

/// The spike threshold: the raw score that a share `contamination` of the raw training scores
/// reach, when at least [`SPIKE_MIN_ROWS_ABOVE`] of them do (`None` otherwise, or when
/// `contamination` is 0).
fn spike_threshold(raw_train_scores: &[f64], contamination: f64) -> Option<f64> {
    let above = raw_train_scores.len() as f64 * contamination;
    if contamination <= 0.0 || above < SPIKE_MIN_ROWS_ABOVE {
        if contamination > 0.0 {
            tracing::info!(
                rows = raw_train_scores.len(),
                contamination,
                "too few training rows to set a spike threshold"
            );
        }
        return None;
    }
    Some(contamination_threshold(raw_train_scores, contamination))
}

/// The scales that bring each forest's training spread (offset minus median score) to the
/// median spread, within [`NORMALIZE_SCALE_RANGE`]; a forest with no spread gets the largest
/// scale, and a set where no forest has one keeps unit scales.
pub fn normalizing_scales(spreads: &[f64]) -> Vec<f64> {
    let mut sorted: Vec<f64> = spreads.iter().copied().filter(|s| *s > 0.0).collect();
    sorted.sort_by(f64::total_cmp);
    let reference = quantile_of_sorted(&sorted, 0.5);
    let (lo, hi) = NORMALIZE_SCALE_RANGE;
    spreads
        .iter()
        .map(|&s| {
            // Only positive spreads were kept: the median is NaN exactly when none was.
            if reference.is_nan() {
                1.0
            } else if s > 0.0 {
                (reference / s).clamp(lo, hi)
            } else {
                hi
            }
        })
        .collect()
}

/// Grows the model's forests on `train` per `cfg.layout`.
fn grow(
    train: &FeatureMatrix,
    spec: &FeatureSpec,
    cfg: &TrainConfig,
) -> Result<ForestSet, DetectError> {
    let ForestLayout::PerSignal {
        offset_quantile,
        normalize,
        level_free,
    } = cfg.layout
    else {
        return Ok(ForestSet::single(train_forest(train, &cfg.forest)?));
    };
    let width = spec.per_signal();
    // The value is a signal's first feature (`FeatureSpec::names`); a level-free forest
    // starts after it. A spec without a value is level-free already, and one with nothing but
    // the value leaves the forests nothing else to read: both keep every column.
    let skip = usize::from(level_free && spec.value && width >= 2);
    if level_free && skip == 0 && spec.value {
        tracing::info!("level-free layout over value-only features: the forests read the value");
    }
    let mut members = Vec::with_capacity(spec.signals.len());
    let mut spreads = Vec::with_capacity(spec.signals.len());
    for (i, signal) in spec.signals.iter().enumerate() {
        let first_feature = i * width + skip;
        let rows = train.columns(first_feature..i * width + width);
        let params = ForestParams {
            seed: cfg.forest.seed.wrapping_add(i as u64),
            ..cfg.forest
        };
        let forest = train_forest(&rows, &params)?;
        let scores: Vec<f64> = (0..rows.n_rows())
            .map(|r| forest.score(rows.row(r)))
            .collect();
        let offset = contamination_threshold(&scores, 1.0 - offset_quantile);
        spreads.push(offset - contamination_threshold(&scores, 0.5));
        tracing::debug!(%signal, offset, "signal forest grown");
        members.push(Member {
            first_feature,
            offset,
            scale: 1.0,
            forest,
        });
    }
    if normalize {
        for (m, scale) in members.iter_mut().zip(normalizing_scales(&spreads)) {
            m.scale = scale;
        }
    }
    Ok(ForestSet {
        n_features: spec.len(),
        members,
        range: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{Series, features};
    use crate::train::PER_SIGNAL_OFFSET_QUANTILE;

    #[test]
    fn normalizing_scales_bring_spreads_to_the_median() {
        // Median of the positive spreads: 0.02.
        let scales = normalizing_scales(&[0.01, 0.02, 0.04, 0.0]);
        assert_eq!(scales, [2.0, 1.0, 0.5, NORMALIZE_SCALE_RANGE.1]);
        // Median 0.51: the quiet forest's 25.5 is capped.
        assert_eq!(
            normalizing_scales(&[0.02, 1.0]),
            [NORMALIZE_SCALE_RANGE.1, 0.51]
        );
        assert_eq!(normalizing_scales(&[0.0, 0.0]), [1.0, 1.0]);
        assert_eq!(
            normalizing_scales(&[0.3]),
            [1.0],
            "one forest is its own median"
        );
    }

    #[test]
    fn a_flat_training_set_gets_a_threshold_just_above_its_ordinary_score() {
        // Every training row alike: all scores equal, so every quantile is the same number.
        let flat = vec![vec![0.25; 500]];
        let cal = calibrate(&flat, DEFAULT_ALARM, 0.04, 0.0).expect("calibrated");
        assert_eq!(cal.ordinary, 0.25);
        assert_eq!(cal.threshold, 0.25 + FLAT_THRESHOLD_MARGIN);
        // An ordinary training set keeps its quantile.
        let varied = vec![(0..500).map(|i| f64::from(i) / 500.0).collect::<Vec<_>>()];
        let cal = calibrate(&varied, AlarmRule::k_of_n(1, 1), 0.04, 0.0).expect("calibrated");
        assert!((cal.threshold - contamination_threshold(&varied[0], 0.04)).abs() < 1e-12);
    }

    #[test]
    fn contamination_quantile_interpolates() {
        let s: Vec<f64> = (0..=100).map(f64::from).collect();
        assert_eq!(contamination_threshold(&s, 0.01), 99.0);
        assert!((contamination_threshold(&s, 0.015) - 98.5).abs() < 1e-9);
    }

    #[test]
    fn best_f1_respects_the_ceiling() {
        // Scores: a labelled bump at 10..=14 and a lone unlabelled spike at 30.
        let mut scores = vec![0.4; 50];
        for s in &mut scores[10..15] {
            *s = 0.8;
        }
        scores[30] = 0.9;
        let w = Windows::new(vec![(10, 14)]);
        let one = AlarmRule::k_of_n(1, 1);
        let (t, m) = best_f1_threshold(
            &[(scores.clone(), w.clone())],
            &AlarmState::new(one),
            1000.0,
        )
        .expect("t");
        assert!(t > 0.4 && t <= 0.8, "{t}");
        assert_eq!(m.counts.true_positives, 5);
        // The spike is one false-alarm event in 50 points = 20 per 1000: no threshold that
        // alarms at all meets a ceiling of 10 with a 1-of-1 rule.
        assert!(
            best_f1_threshold(&[(scores.clone(), w.clone())], &AlarmState::new(one), 10.0)
                .is_none()
        );
        // A 2-of-2 rule silences the lone spike, so the bump can alarm under the ceiling.
        let two = AlarmRule::k_of_n(2, 2);
        let (_, m) = best_f1_threshold(&[(scores, w)], &AlarmState::new(two), 10.0).expect("t");
        assert_eq!(m.counts.false_alarm_events, 0);
        assert_eq!(m.counts.true_positives, 4);
    }

    /// Three noisy signals; from row 1500 on, only signal 2 steps up for 40 rows.
    fn three_signals(n: usize) -> Series {
        use rand_core::{Rng, SeedableRng};
        let mut rng = rand_pcg::Pcg64::seed_from_u64(7);
        let mut noise = move || (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
        let rows = (0..n)
            .map(|i| {
                let step = if (1500..1540).contains(&i) { 3.0 } else { 0.0 };
                vec![noise(), 10.0 + noise(), 5.0 + noise() + step]
            })
            .collect();
        Series {
            name: "three".into(),
            columns: vec!["a".into(), "b".into(), "c".into()],
            timestamps: None,
            rows,
        }
    }

    #[test]
    fn a_value_held_outside_its_training_range_keeps_alarming_through_the_guard() {
        let train = three_signals(1400);
        let cfg = TrainConfig {
            forest: ForestParams {
                n_trees: 30,
                ..ForestParams::default()
            },
            ..TrainConfig::default()
        };
        let (det, _) = train_model(std::slice::from_ref(&train), None, &cfg).expect("trained");
        let width = det.spec.per_signal();
        let guard = det.forest.range.as_ref().expect("a guard by default");
        let columns: Vec<usize> = guard.bounds.iter().map(|b| b.column).collect();
        assert_eq!(columns, [0, width, 2 * width], "each signal's value");
        assert!(guard.bounds[1].low >= 9.5 && guard.bounds[1].high <= 10.5);
        // 1,340 training rows hold fewer than 20 rows above the 0.2% quantile: no spike
        // threshold; at 2% they hold 26.
        assert_eq!(det.spike, None);
        let (spiky, _) = train_model(
            std::slice::from_ref(&train),
            None,
            &TrainConfig {
                spike_contamination: 0.02,
                ..cfg.clone()
            },
        )
        .expect("trained");
        assert!(spiky.spike.is_some_and(|t| t > spiky.threshold));

        // Signal b drops from 10 to 6 at row 1500 and stays there for 300 rows: its delta
        // and rolling features settle within 60 rows, and a forest scores a value below its
        // training minimum like the minimum itself, so the forests alarm on only part of
        // it (131 of the last 200 rows at this seed); its value stays 4 training spans below
        // the range, which the guard sees on every row.
        let mut run = three_signals(1800);
        for row in &mut run.rows[1500..] {
            row[1] -= 4.0;
        }
        let held = |det: &Detector| {
            let alarms = det.run(&run).expect("scored").alarms;
            alarms[1600..1800].iter().filter(|&&a| a).count()
        };
        assert_eq!(
            held(&det),
            200,
            "the guard alarms while the value is out of range"
        );
        let (unguarded, _) = train_model(
            std::slice::from_ref(&train),
            None,
            &TrainConfig {
                range_weight: 0.0,
                ..cfg.clone()
            },
        )
        .expect("trained");
        assert!(unguarded.forest.range.is_none());
        let without = held(&unguarded);
        assert!(without < 180, "forests alone alarm on {without} of 200");
        assert!(matches!(
            train_model(
                std::slice::from_ref(&train),
                None,
                &TrainConfig {
                    range_weight: f32::NAN,
                    ..cfg
                }
            ),
            Err(DetectError::BadRangeWeight { .. })
        ));
    }

    #[test]
    fn a_training_set_too_small_to_place_the_threshold_is_refused() {
        let cfg = TrainConfig {
            forest: ForestParams {
                n_trees: 10,
                ..ForestParams::default()
            },
            // 1 %: enough rows needed that they outnumber the feature warm-up.
            threshold: ThresholdRule::Contamination(0.01),
            ..TrainConfig::default()
        };
        let ThresholdRule::Contamination(c) = cfg.threshold else {
            unreachable!("the default threshold is a contamination");
        };
        let (refuse, warn) = training_rows_needed(c);
        assert!(refuse < warn);
        // A few minutes of a node: the feature warm-up (60 rows) plus a little.
        let warmup = cfg.features.warmup();
        assert!(
            refuse > warmup,
            "the series below keep their warm-up off the training rows"
        );
        let short = three_signals(warmup + refuse - 1);
        match train_model(std::slice::from_ref(&short), None, &cfg) {
            Err(DetectError::TooFewTrainingRows { rows, needed, .. }) => {
                assert_eq!((rows, needed), (refuse - 1, refuse));
            }
            other => panic!("{other:?}"),
        }
        // One more row trains (with a warning).
        let enough = three_signals(warmup + refuse);
        assert!(train_model(std::slice::from_ref(&enough), None, &cfg).is_ok());
    }

    #[test]
    fn per_signal_layout_grows_one_forest_per_signal_with_its_offset() {
        let series = three_signals(1400);
        // The plain per-signal layout (every forest reads all its signal's features).
        let cfg = TrainConfig {
            forest: ForestParams {
                n_trees: 30,
                ..ForestParams::default()
            },
            layout: ForestLayout::per_signal(),
            ..TrainConfig::default()
        };
        let (det, _) = train_model(std::slice::from_ref(&series), None, &cfg).expect("trained");
        let width = det.spec.per_signal();
        assert_eq!(det.forest.members.len(), 3);
        assert_eq!(det.forest.n_features, 3 * width);
        for (i, m) in det.forest.members.iter().enumerate() {
            assert_eq!(m.first_feature, i * width);
            assert_eq!(m.forest.n_features, width);
            assert_eq!(m.forest.trees.len(), 30);
        }
        // Each offset is its forest's 99th training percentile: about 1% of training rows
        // score above 0 on a given forest, so at most about 3% above 0 on the set.
        let rows = features(&series, &det.spec).expect("features");
        let rows = rows.slice(det.spec.warmup()..rows.n_rows());
        let above = score_rows(&det.forest, &rows)
            .iter()
            .filter(|&&s| s > 0.0)
            .count();
        let share = above as f64 / rows.n_rows() as f64;
        assert!((0.005..=0.035).contains(&share), "{share}");
        // The step in signal 2 alone lifts the set's score above every forest's ceiling.
        let run = three_signals(1600);
        let scores = score_rows(&det.forest, &features(&run, &det.spec).expect("features"));
        let peak = scores[1500..1540].iter().copied().fold(f64::MIN, f64::max);
        assert!(peak > 0.05, "peak excess {peak}");

        // Normalized: each forest's training spread (offset minus median) times its scale is
        // the median spread, so scaled, every forest's ordinary variation is the same size.
        let normalized = TrainConfig {
            layout: ForestLayout::PerSignal {
                offset_quantile: PER_SIGNAL_OFFSET_QUANTILE,
                normalize: true,
                level_free: false,
            },
            ..cfg.clone()
        };
        let (det, _) =
            train_model(std::slice::from_ref(&series), None, &normalized).expect("trained");
        let scaled_spreads: Vec<f64> = det
            .forest
            .members
            .iter()
            .map(|m| {
                let cols = rows.columns(m.first_feature..m.first_feature + m.forest.n_features);
                let scores: Vec<f64> = (0..cols.n_rows())
                    .map(|r| m.forest.score(cols.row(r)))
                    .collect();
                (m.offset - contamination_threshold(&scores, 0.5)) * m.scale
            })
            .collect();
        assert!(det.forest.members.iter().any(|m| m.scale != 1.0));
        for s in &scaled_spreads {
            assert!((s - scaled_spreads[1]).abs() < 1e-9, "{scaled_spreads:?}");
        }
        // Level-free: each forest reads its signal's features but the value; the guard still
        // reads every value.
        let level_free = TrainConfig {
            layout: ForestLayout::PerSignal {
                offset_quantile: PER_SIGNAL_OFFSET_QUANTILE,
                normalize: false,
                level_free: true,
            },
            ..cfg.clone()
        };
        let (det, _) =
            train_model(std::slice::from_ref(&series), None, &level_free).expect("trained");
        for (i, m) in det.forest.members.iter().enumerate() {
            assert_eq!(m.first_feature, i * width + 1);
            assert_eq!(m.forest.n_features, width - 1);
        }
        let guard = det.forest.range.as_ref().expect("guard");
        assert_eq!(
            guard.bounds.iter().map(|b| b.column).collect::<Vec<_>>(),
            [0, width, 2 * width]
        );
        // Value-only features leave nothing else to read: the forests read the value.
        let only_value = TrainConfig {
            features: FeatureSpec::raw(Vec::new()),
            ..level_free
        };
        let (det, _) =
            train_model(std::slice::from_ref(&series), None, &only_value).expect("trained");
        for (i, m) in det.forest.members.iter().enumerate() {
            assert_eq!((m.first_feature, m.forest.n_features), (i, 1));
        }

        let joint = TrainConfig {
            layout: ForestLayout::Joint,
            ..cfg.clone()
        };
        let (det, _) = train_model(std::slice::from_ref(&series), None, &joint).expect("trained");
        assert!(det.forest.as_single().is_some());
        let bad = TrainConfig {
            layout: ForestLayout::PerSignal {
                offset_quantile: 1.0,
                normalize: false,
                level_free: false,
            },
            ..cfg
        };
        assert!(matches!(
            train_model(std::slice::from_ref(&series), None, &bad),
            Err(DetectError::BadFraction {
                name: "offset_quantile",
                ..
            })
        ));
    }
}
