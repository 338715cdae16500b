//! The bounds a model's manifest must respect before anything trusts it: the limits on every
//! field of [`ModelManifest`] and on the sizes of the files around it, checked by
//! [`check_manifest`] before any allocation those fields size (a feature extractor sizes its
//! rolling windows from `features.windows`, the scorer its forests from `n_trees`), so a
//! hostile or broken manifest is an error naming the field, never an abort.
//!
//! Bounds cannot tell a malicious threshold from a legitimate one inside the score range: a
//! signature does ([`crate::signature`]). They stop what no signed model would carry and what
//! would take the agent down: non-finite numbers, windows of 10^12 samples, versions of a
//! megabyte (carried by every anomaly, they push each one over the 1 MiB record limit).
//! The graph itself (nodes, targets, depth, operators) is bounded where it is parsed; the
//! limits it shares with the manifest are here.

use crate::features::FEATURE_SCHEMA_VERSION;
use crate::model::ModelManifest;
use crate::store::is_plain_name;

/// Longest family or version name, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Most signals (model inputs before feature extraction) in one manifest.
pub const MAX_SIGNALS: usize = 64;
/// Longest signal name, in bytes.
pub const MAX_SIGNAL_NAME_LEN: usize = 128;
/// Most rolling windows per signal.
pub const MAX_WINDOWS: usize = 8;
/// Longest rolling window, in samples: two hours at the agent's 5 s interval.
pub const MAX_WINDOW_SAMPLES: usize = 1440;
/// Most values one series keeps for its windows (signals times the sum of the windows): 32 KiB
/// of f64 per series, so 500 series cost at most 16 MiB. The default cpu features (13 signals,
/// windows 12 and 60) keep 936.
pub const MAX_WINDOW_VALUES: usize = 4096;
/// Most trees per forest.
pub const MAX_TREES: usize = 1000;
/// Most forests in one model (one per signal at most).
pub const MAX_FORESTS: usize = MAX_SIGNALS;
/// Largest sub-sample a tree is grown on; bounds its depth to about log2 of it and its nodes
/// to twice it.
pub const MAX_SAMPLES: usize = 65_536;
/// Most tree nodes in the whole model (forests x trees x (2 x max_samples - 1)).
pub const MAX_TOTAL_NODES: usize = 8 * 1024 * 1024;
/// Largest `alarm.n` (the alarm state keeps one bit per sample of the window).
pub const MAX_ALARM_N: u32 = 128;
/// Largest `alarm.smoothing_half_life`, in samples.
pub const MAX_HALF_LIFE: u32 = 100_000;
/// Largest `alarm.adapt_window`, in samples (about 58 days at 5 s).
pub const MAX_ADAPT_WINDOW: u32 = 1_000_000;
/// Scores of every model lie strictly inside this range: one isolation forest's in (0, 1], a
/// per-signal model's (the largest excess of a forest's score over its offset) in (-1, 1).
/// A threshold at or beyond either end alarms on everything or on nothing.
pub const SCORE_RANGE: (f64, f64) = (-1.0, 1.0);
/// Largest `model.onnx`: a 13-forest, 100-tree model is about 3.3 MB; the agent's pod is
/// limited to 128 MiB. Downloads stop as soon as more bytes than this arrive.
pub const MAX_MODEL_BYTES: u64 = 16 * 1024 * 1024;
/// Largest `manifest.json`.
pub const MAX_MANIFEST_BYTES: u64 = 256 * 1024;
/// Largest `signature.json`.
pub const MAX_SIGNATURE_BYTES: u64 = 4 * 1024;
/// Largest `latest` pointer (one version name and a newline).
pub const MAX_LATEST_BYTES: u64 = 1024;

/// Most targets (regressor outputs) or classes of one tree ensemble in the graph: the trainer
/// writes one target per forest, so [`MAX_FORESTS`] with room for other exporters. Every row's
/// sums are `n_targets` wide, so this is checked before anything is sized by it.
pub const MAX_TARGETS: usize = 256;
/// Deepest tree in the graph, in branches from the root to a leaf. An isolation tree is cut
/// at ceil(log2 ψ), 16 at [`MAX_SAMPLES`]; each row walks every tree this many steps, so a
/// degenerate chain of a million nodes would make one score cost seconds.
pub const MAX_TREE_DEPTH: u32 = 64;
/// Most tree-ensemble nodes (branches and leaves) in one graph: [`MAX_TOTAL_NODES`], also the
/// bound on leaf-weight entries.
pub const MAX_GRAPH_TREE_NODES: usize = MAX_TOTAL_NODES;
/// Most operator nodes in one graph (the trainer writes at most a dozen).
pub const MAX_GRAPH_OPS: usize = 1024;
/// Most elements of any value the graph computes, per input row (at a batch of one): each is
/// allocated per batch of series. The trainer's widest is one per feature (the range guard),
/// at most [`MAX_SIGNALS`] x 26.
pub const MAX_GRAPH_ROW_VALUES: usize = 16 * 1024;
/// Most elements of one constant tensor in the graph (an initializer or a `Constant`).
pub const MAX_TENSOR_ELEMENTS: usize = 4 * 1024 * 1024;

/// A manifest field outside its bounds.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("manifest field `{field}`: {reason}")]
pub struct BoundsError {
    /// The field, dotted from the manifest's root (`features.windows`).
    pub field: &'static str,
    /// What is wrong with it, with the value and the bound.
    pub reason: String,
}

fn bad<T>(field: &'static str, reason: String) -> Result<T, BoundsError> {
    Err(BoundsError { field, reason })
}

fn name(field: &'static str, v: &str) -> Result<(), BoundsError> {
    if v.len() > MAX_NAME_LEN {
        return bad(field, format!("{} bytes, at most {MAX_NAME_LEN}", v.len()));
    }
    if !is_plain_name(v) {
        return bad(
            field,
            format!("{v:?} is not a plain name (letters, digits, '-', '_', '.'; no leading '.')"),
        );
    }
    Ok(())
}

fn sha256_hex(field: &'static str, v: &str) -> Result<(), BoundsError> {
    if v.len() == 64 && v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        bad(
            field,
            format!("must be 64 lowercase hex digits, got {} bytes", v.len()),
        )
    }
}

fn in_score_range(field: &'static str, v: f64) -> Result<(), BoundsError> {
    let (lo, hi) = SCORE_RANGE;
    if v.is_finite() && v > lo && v < hi {
        Ok(())
    } else {
        bad(field, format!("{v} is not a finite score in ({lo}, {hi})"))
    }
}

fn at_most(field: &'static str, v: usize, max: usize) -> Result<(), BoundsError> {
    if v > max {
        bad(field, format!("{v} is more than {max}"))
    } else {
        Ok(())
    }
}

/// Checks every field of `m` against its bounds; the error names the first field outside them.
/// Allocates nothing that a field sizes, so it is safe on any manifest that parsed.
pub fn check_manifest(m: &ModelManifest) -> Result<(), BoundsError> {
    name("family", &m.family)?;
    name("version", &m.version)?;

    let f = &m.features;
    if f.schema_version != FEATURE_SCHEMA_VERSION {
        return bad(
            "features.schema_version",
            format!(
                "{} is not this build's {FEATURE_SCHEMA_VERSION}",
                f.schema_version
            ),
        );
    }
    if f.signals.is_empty() {
        return bad("features.signals", "no signals".into());
    }
    at_most("features.signals", f.signals.len(), MAX_SIGNALS)?;
    if let Some(s) = f
        .signals
        .iter()
        .find(|s| s.is_empty() || s.len() > MAX_SIGNAL_NAME_LEN || s.chars().any(char::is_control))
    {
        return bad(
            "features.signals",
            format!(
                "a signal name of {} bytes (1..={MAX_SIGNAL_NAME_LEN}, no control characters)",
                s.len()
            ),
        );
    }
    at_most("features.windows", f.windows.len(), MAX_WINDOWS)?;
    if let Some(&w) = f
        .windows
        .iter()
        .find(|&&w| !(2..=MAX_WINDOW_SAMPLES).contains(&w))
    {
        return bad(
            "features.windows",
            format!("a window of {w} samples (2..={MAX_WINDOW_SAMPLES})"),
        );
    }
    // Each window is at most MAX_WINDOW_SAMPLES and there are at most MAX_WINDOWS of them, and
    // at most MAX_SIGNALS signals: no overflow.
    let window_values = f.signals.len() * f.windows.iter().sum::<usize>();
    at_most("features.windows", window_values, MAX_WINDOW_VALUES)?;
    if f.per_signal() == 0 {
        return bad("features", "selects no feature".into());
    }
    // Bounded by the checks above (64 signals x (2 + 8 x 3) features), so `names` is cheap.
    let names = f.names();
    if m.feature_names != names {
        return bad(
            "feature_names",
            format!(
                "{} names that are not the {} the feature spec defines",
                m.feature_names.len(),
                names.len()
            ),
        );
    }

    in_score_range("threshold", m.threshold)?;
    if let Some(o) = m.ordinary_score {
        in_score_range("ordinary_score", o)?;
        // The ordinary score is the median training score: a threshold at or below it alarms
        // on half of all normal samples.
        if m.threshold <= o {
            return bad(
                "threshold",
                format!("{} is not above the ordinary score {o}", m.threshold),
            );
        }
    }
    if let Some(s) = m.spike_threshold {
        in_score_range("spike_threshold", s)?;
    }

    let a = &m.alarm;
    if !(1..=MAX_ALARM_N).contains(&a.n) {
        return bad("alarm.n", format!("{} is not in 1..={MAX_ALARM_N}", a.n));
    }
    if !(1..=a.n).contains(&a.k) {
        return bad(
            "alarm.k",
            format!("{} is not in 1..={} (alarm.n)", a.k, a.n),
        );
    }
    if a.smoothing_half_life > MAX_HALF_LIFE {
        return bad(
            "alarm.smoothing_half_life",
            format!("{} is more than {MAX_HALF_LIFE}", a.smoothing_half_life),
        );
    }
    if a.adapt_window > MAX_ADAPT_WINDOW {
        return bad(
            "alarm.adapt_window",
            format!("{} is more than {MAX_ADAPT_WINDOW}", a.adapt_window),
        );
    }

    if m.n_trees == 0 {
        return bad("n_trees", "no trees".into());
    }
    at_most("n_trees", m.n_trees, MAX_TREES)?;
    if m.forests == 0 {
        return bad("forests", "no forests".into());
    }
    at_most("forests", m.forests, MAX_FORESTS.min(f.signals.len()))?;
    if m.max_samples < 2 {
        return bad("max_samples", format!("{} is fewer than 2", m.max_samples));
    }
    at_most("max_samples", m.max_samples, MAX_SAMPLES)?;
    // All three are bounded above, so the product cannot overflow.
    let nodes = m.forests * m.n_trees * (2 * m.max_samples - 1);
    at_most("n_trees", nodes, MAX_TOTAL_NODES).map_err(|_| BoundsError {
        field: "n_trees",
        reason: format!(
            "{} forests x {} trees of up to {} nodes is {nodes} nodes, more than {MAX_TOTAL_NODES}",
            m.forests,
            m.n_trees,
            2 * m.max_samples - 1
        ),
    })?;

    // Provenance only, and empty in manifests written by hand or by older tools.
    if !m.training_data_sha256.is_empty() {
        sha256_hex("training_data_sha256", &m.training_data_sha256)?;
    }
    sha256_hex("model_sha256", &m.model_sha256)?;
    if m.created_at.len() > 64
        || !m
            .created_at
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'-' | b'+' | b'.'))
    {
        return bad(
            "created_at",
            format!("{} bytes that are not an RFC 3339 time", m.created_at.len()),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::FeatureSpec;
    use crate::model::AlarmRule;

    fn manifest() -> ModelManifest {
        let features =
            FeatureSpec::standard(vec!["cpu_usage_cores".into(), "cpu_throttled".into()]);
        ModelManifest {
            family: "cpu".into(),
            version: "cpu-2026.11.25-1".into(),
            feature_names: features.names(),
            features,
            threshold: 0.62,
            alarm: AlarmRule::k_of_n(3, 5).smoothed(10).adapting(1000),
            ordinary_score: Some(0.41),
            spike_threshold: Some(0.8),
            n_trees: 100,
            forests: 2,
            max_samples: 256,
            seed: 7,
            training_data_sha256: "ab".repeat(32),
            created_at: "2026-11-25T10:00:00Z".into(),
            model_sha256: "cd".repeat(32),
        }
    }

    fn refused(edit: impl FnOnce(&mut ModelManifest)) -> BoundsError {
        let mut m = manifest();
        edit(&mut m);
        check_manifest(&m).expect_err("out of bounds")
    }

    #[test]
    fn a_trained_manifest_is_within_bounds() {
        check_manifest(&manifest()).expect("within bounds");
        let mut raw = manifest();
        raw.features = FeatureSpec::raw(vec!["x".into()]);
        raw.feature_names = raw.features.names();
        raw.forests = 1;
        raw.ordinary_score = None;
        raw.spike_threshold = None;
        check_manifest(&raw).expect("a raw-feature model");
    }

    #[test]
    fn thresholds_are_finite_and_inside_the_score_range() {
        for t in [1e300, -1e300, f64::NAN, f64::INFINITY, 1.0, -1.0, 2.5] {
            assert_eq!(refused(|m| m.threshold = t).field, "threshold", "{t}");
            assert_eq!(
                refused(|m| m.spike_threshold = Some(t)).field,
                "spike_threshold"
            );
        }
        // Below the ordinary score, it would page on half of all normal samples.
        let e = refused(|m| m.threshold = 0.3);
        assert_eq!(e.field, "threshold");
        assert!(e.reason.contains("ordinary score"), "{e}");
        assert_eq!(
            refused(|m| m.ordinary_score = Some(f64::NAN)).field,
            "ordinary_score"
        );
        // A per-signal model's threshold may be negative.
        let mut m = manifest();
        m.threshold = -0.05;
        m.ordinary_score = Some(-0.2);
        check_manifest(&m).expect("negative, above the ordinary score");
    }

    #[test]
    fn windows_are_bounded_before_anything_sizes_them() {
        let e = refused(|m| m.features.windows = vec![1_000_000_000_000]);
        assert_eq!(e.field, "features.windows");
        assert!(e.reason.contains("1000000000000"), "{e}");
        assert_eq!(
            refused(|m| m.features.windows = vec![usize::MAX]).field,
            "features.windows"
        );
        assert_eq!(
            refused(|m| m.features.windows = vec![12; 9]).field,
            "features.windows"
        );
        assert_eq!(
            refused(|m| m.features.windows = vec![1]).field,
            "features.windows"
        );
        // Each window in range, but too many values kept per series.
        let e = refused(|m| {
            m.features.signals = (0..40).map(|i| format!("s{i}")).collect();
            m.features.windows = vec![1440];
        });
        assert!(e.reason.contains("57600"), "{e}");
    }

    #[test]
    fn names_are_short_and_plain() {
        let e = refused(|m| m.version = "v".repeat(1 << 20));
        assert_eq!(e.field, "version");
        assert!(e.reason.contains("1048576 bytes"), "{e}");
        for v in ["", "../cpu", ".hidden", "a b", "latest", "v1\n", "cpu/2"] {
            assert_eq!(refused(|m| m.version = v.into()).field, "version", "{v:?}");
        }
        assert_eq!(refused(|m| m.family = "cpu\u{0}".into()).field, "family");
        assert_eq!(
            refused(|m| m.features.signals[0] = "x".repeat(200)).field,
            "features.signals"
        );
    }

    #[test]
    fn forest_sizes_and_the_alarm_rule_are_bounded() {
        assert_eq!(refused(|m| m.n_trees = 0).field, "n_trees");
        assert_eq!(refused(|m| m.n_trees = 1 << 40).field, "n_trees");
        assert_eq!(refused(|m| m.max_samples = usize::MAX).field, "max_samples");
        assert_eq!(
            refused(|m| m.forests = 3).field,
            "forests",
            "more forests than signals"
        );
        // Each bound met, the product not.
        let e = refused(|m| {
            m.n_trees = 1000;
            m.max_samples = 65_536;
        });
        assert!(e.reason.contains("more than"), "{e}");
        assert_eq!(
            refused(|m| m.alarm = AlarmRule::k_of_n(0, 5)).field,
            "alarm.k"
        );
        assert_eq!(
            refused(|m| m.alarm = AlarmRule::k_of_n(6, 5)).field,
            "alarm.k"
        );
        assert_eq!(
            refused(|m| m.alarm = AlarmRule::k_of_n(3, 500)).field,
            "alarm.n"
        );
        assert_eq!(
            refused(|m| m.alarm = AlarmRule::k_of_n(3, 5).smoothed(u32::MAX)).field,
            "alarm.smoothing_half_life"
        );
        assert_eq!(
            refused(|m| m.alarm = AlarmRule::k_of_n(3, 5).adapting(u32::MAX)).field,
            "alarm.adapt_window"
        );
    }

    #[test]
    fn digests_times_and_the_feature_list_are_checked() {
        assert_eq!(
            refused(|m| m.model_sha256 = "AB".repeat(32)).field,
            "model_sha256"
        );
        assert_eq!(refused(|m| m.model_sha256.push('0')).field, "model_sha256");
        assert_eq!(
            refused(|m| m.training_data_sha256 = "x".repeat(64)).field,
            "training_data_sha256"
        );
        let mut m = manifest();
        m.training_data_sha256 = String::new();
        check_manifest(&m).expect("no training digest: provenance unknown, not out of bounds");
        assert_eq!(
            refused(|m| m.created_at = "x".repeat(65)).field,
            "created_at"
        );
        assert_eq!(
            refused(|m| {
                m.feature_names.pop();
            })
            .field,
            "feature_names"
        );
        assert_eq!(
            refused(|m| m.features.schema_version = FEATURE_SCHEMA_VERSION + 1).field,
            "features.schema_version"
        );
        assert_eq!(
            refused(|m| m.features.signals.clear()).field,
            "features.signals"
        );
    }
}

#[cfg(test)]
#[path = "model_bounds_fuzz.rs"]
mod fuzz;
