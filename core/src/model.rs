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
