//! The model manifest: what an agent must know about a `model.onnx` before it trusts it.
//!
//! A model directory holds `model.onnx` and `manifest.json`. The agent refuses a model whose
//! file checksum, feature schema or input shape disagrees with this manifest, and keeps the model
//! it had.

use crate::features::FeatureSpec;
use serde::{Deserialize, Serialize};

/// File name of the ONNX graph in a model directory.
pub const MODEL_FILE: &str = "model.onnx";
/// File name of the manifest in a model directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// When an alarm becomes an anomaly: at least `k` of the last `n` scored samples above threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmRule {
    /// Alarms needed.
    pub k: u32,
    /// Out of this many consecutive samples.
    pub n: u32,
}

impl Default for AlarmRule {
    fn default() -> Self {
        AlarmRule { k: 3, n: 5 }
    }
}

impl AlarmRule {
    /// The rule actually applied: `n` at least 1 and `k` within `1..=n`, so that a malformed rule
    /// neither alarms on every sample (`k = 0`) nor never alarms (`k > n`).
    pub fn normalized(self) -> AlarmRule {
        let n = self.n.max(1);
        AlarmRule {
            k: self.k.clamp(1, n),
            n,
        }
    }
}

/// Applies an [`AlarmRule`] to a stream of samples, one call per scored sample.
///
/// This is THE alarm decision: the agent runs it on the node, and the trainer runs it when it
/// scores, evaluates and picks thresholds, so both take the same decision on the same scores.
/// A sample alarms when at least `k` of the last `n` samples (itself included) scored at or
/// above the threshold. Before `n` samples have been seen the window is simply shorter, so a
/// burst at start-up can alarm as soon as `k` samples are above. The rule gives hysteresis both
/// ways: a lone spike does not alarm when `k > 1`, and an alarm holds for up to `n - k` samples
/// after the score falls back.
#[derive(Debug, Clone)]
pub struct AlarmState {
    rule: AlarmRule,
    /// Bit `i` is set when the sample `i` steps back was above threshold (bit 0 = newest).
    history: u128,
    /// Window mask: the low `n` bits (n is capped at 128, far beyond any useful rule).
    mask: u128,
}

impl AlarmState {
    /// Largest `n` honoured; longer windows are cut to this.
    pub const MAX_N: u32 = 128;

    /// A fresh state (no sample seen) for `rule`, normalized by [`AlarmRule::normalized`] with
    /// `n` capped at [`AlarmState::MAX_N`].
    pub fn new(rule: AlarmRule) -> Self {
        let n = rule.n.clamp(1, Self::MAX_N);
        let rule = AlarmRule { k: rule.k, n }.normalized();
        let mask = if n == 128 {
            u128::MAX
        } else {
            (1u128 << n) - 1
        };
        AlarmState {
            rule,
            history: 0,
            mask,
        }
    }

    /// The rule in force.
    pub fn rule(&self) -> AlarmRule {
        self.rule
    }

    /// Records one sample's score and says whether it alarms (see the type's docs).
    pub fn push(&mut self, score: f64, threshold: f64) -> bool {
        self.push_above(score >= threshold)
    }

    /// Records whether one sample was at or above threshold and says whether it alarms.
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
    }
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
    /// Score at or above which a sample alarms.
    pub threshold: f64,
    /// k-of-n rule that turns alarms into anomalies.
    pub alarm: AlarmRule,
    /// Trees in the forest.
    pub n_trees: usize,
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
        let rule = AlarmRule { k: 2, n: 3 };
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
        let mut st = AlarmState::new(AlarmRule { k: 1, n: 1 });
        assert!(st.push(0.7, 0.7), "at threshold alarms");
        assert!(!st.push(0.69, 0.7));
    }

    #[test]
    fn malformed_rules_are_normalized() {
        assert_eq!(
            AlarmState::new(AlarmRule { k: 0, n: 0 }).rule(),
            AlarmRule { k: 1, n: 1 }
        );
        assert_eq!(
            AlarmState::new(AlarmRule { k: 9, n: 4 }).rule(),
            AlarmRule { k: 4, n: 4 }
        );
        let mut st = AlarmState::new(AlarmRule { k: 128, n: 500 });
        assert_eq!(st.rule().n, 128);
        let alarms: Vec<bool> = (0..128).map(|_| st.push_above(true)).collect();
        assert!(!alarms[126] && alarms[127]);
        st.reset();
        assert!(!st.push_above(true));
    }
}
