//! Growing an isolation forest: feature rows in, a [`selfheal_core::forest::IsolationForest`] out.
//!
//! The trees are grown the way scikit-learn's `IsolationForest` grows them (an
//! `ExtraTreeRegressor` with `max_features=1` and `splitter="random"` per tree): each tree sees
//! `ψ` rows drawn without replacement; a node picks a random feature among those that are not
//! constant on its rows and a split value uniform between that feature's minimum and maximum
//! there; growth stops at one row, at rows that are all equal, or at `max_depth`
//! (`ceil(log2 ψ)` by default). Each leaf stores `depth + c(rows at leaf)`, which is what the
//! core's reference scorer and the ONNX export sum.
//!
//! Rows are `f32`, as the model sees them on the node. A split value `t` drawn in `f64` is
//! stored as the largest `f32` not above it, so `x <= t` and `x <= t as stored` agree for every
//! `f32` input. Growth is deterministic for a seed (PCG-64 from `rand_pcg`).

use rand_core::{Rng, SeedableRng};
use rand_pcg::Pcg64;
use selfheal_core::forest::{IsolationForest, Node, Tree, average_path_length};
use serde::{Deserialize, Serialize};

/// Row-major `f32` feature rows, all of one width.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeatureMatrix {
    n_features: usize,
    values: Vec<f32>,
}

impl FeatureMatrix {
    /// An empty matrix whose rows will have `n_features` values.
    pub fn new(n_features: usize) -> Self {
        FeatureMatrix {
            n_features,
            values: Vec::new(),
        }
    }

    /// Appends a row; values are narrowed to `f32`, as the model reads them.
    ///
    /// # Panics
    /// If the row's width differs from the matrix's (a caller bug, not bad input).
    pub fn push_row(&mut self, row: &[f64]) {
        assert_eq!(row.len(), self.n_features, "row width");
        self.values.extend(row.iter().map(|&v| v as f32));
    }

    /// Appends every row of `other`.
    ///
    /// # Panics
    /// If the widths differ.
    pub fn extend(&mut self, other: &FeatureMatrix) {
        assert_eq!(other.n_features, self.n_features, "row width");
        self.values.extend_from_slice(&other.values);
    }

    /// Row width.
    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// Number of rows.
    pub fn n_rows(&self) -> usize {
        self.values.len().checked_div(self.n_features).unwrap_or(0)
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.n_features..(i + 1) * self.n_features]
    }

    /// Columns `range` of every row as a new matrix.
    ///
    /// # Panics
    /// If `range` reaches past the row width.
    pub fn columns(&self, range: std::ops::Range<usize>) -> FeatureMatrix {
        assert!(range.end <= self.n_features, "column range");
        let mut values = Vec::with_capacity(self.n_rows() * range.len());
        for i in 0..self.n_rows() {
            values.extend_from_slice(&self.row(i)[range.clone()]);
        }
        FeatureMatrix {
            n_features: range.len(),
            values,
        }
    }

    /// Rows `range` as a new matrix.
    pub fn slice(&self, range: std::ops::Range<usize>) -> FeatureMatrix {
        FeatureMatrix {
            n_features: self.n_features,
            values: self.values[range.start * self.n_features..range.end * self.n_features]
                .to_vec(),
        }
    }
}

/// How to grow a forest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForestParams {
    /// Number of trees.
    pub n_trees: usize,
    /// Sub-sample size ψ per tree; capped at the number of rows.
    pub max_samples: usize,
    /// Deepest split level; `None` means `ceil(log2 ψ)`, as scikit-learn.
    pub max_depth: Option<usize>,
    /// Seed of the random generator; the same seed and rows give the same forest.
    pub seed: u64,
}

/// Default trees per forest (per signal, with the per-signal layout): with [`DEFAULT_MAX_SAMPLES`],
/// the size chosen leave-one-machine-out among those whose 13-signal model fits 256 KB
/// (docs/benchmarks.md, "Detection quality"; 97 KB for the cpu family's 13 signals).
pub const DEFAULT_TREES: usize = 10;
/// Default sub-sample size ψ.
pub const DEFAULT_MAX_SAMPLES: usize = 64;

impl Default for ForestParams {
    fn default() -> Self {
        ForestParams {
            n_trees: DEFAULT_TREES,
            max_samples: DEFAULT_MAX_SAMPLES,
            max_depth: None,
            seed: 0,
        }
    }
}

/// How a model's features are split among isolation forests.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ForestLayout {
    /// One forest over every feature of every signal.
    #[default]
    Joint,
    /// One forest per signal, over that signal's features (a contiguous block of the feature
    /// vector, `FeatureSpec::per_signal` wide), each grown with the same [`ForestParams`] but
    /// its own seed (the seed plus the signal's index). A forest's score has its
    /// `offset_quantile` over its training rows
    /// subtracted, and the model's score is the largest of these excesses: an anomaly that moves
    /// two of 38 signals is as plain to its signals' forests as one that moves all of them.
    PerSignal {
        /// Quantile of each forest's training scores that becomes its offset, in (0, 1).
        offset_quantile: f64,
        /// Scale each forest's excess so that its training spread (offset minus median
        /// training score) is the median spread of the model's forests
        /// (`selfheal_core::forest::Member::scale`, within [`NORMALIZE_SCALE_RANGE`]): every
        /// signal's score is then in units of its own ordinary variation, so no signal wins
        /// the maximum on ordinary data by varying more. False when absent.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        normalize: bool,
        /// The forests read a signal's derived features (delta, rolling statistics) but not
        /// its raw value: a level the signal did not hold in training is then left to the
        /// range guard, and a level inside the training range that the signal holds for a
        /// while no longer scores at all. A no-op for features without a value or with
        /// nothing but the value. False when absent.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        level_free: bool,
    },
}

impl ForestLayout {
    /// The default per-signal layout: offsets at [`PER_SIGNAL_OFFSET_QUANTILE`], no
    /// normalization, forests reading every feature.
    pub const fn per_signal() -> ForestLayout {
        ForestLayout::PerSignal {
            offset_quantile: PER_SIGNAL_OFFSET_QUANTILE,
            normalize: false,
            level_free: false,
        }
    }

    /// Whether the layout normalizes its forests' excesses (false for the joint layout).
    pub const fn normalizes(self) -> bool {
        matches!(
            self,
            ForestLayout::PerSignal {
                normalize: true,
                ..
            }
        )
    }

    /// Whether the layout's forests leave the value out (false for the joint layout).
    pub const fn is_level_free(self) -> bool {
        matches!(
            self,
            ForestLayout::PerSignal {
                level_free: true,
                ..
            }
        )
    }
}

/// Least and most scale [`ForestLayout::PerSignal::normalize`] gives a forest: a signal
/// whose training scores barely vary (a constant) gets at most ten times the median's weight,
/// not an unbounded one.
pub const NORMALIZE_SCALE_RANGE: (f64, f64) = (0.1, 10.0);

/// The offset quantile of the default per-signal layout: a forest's 99th-percentile training
/// score is its ordinary ceiling.
pub const PER_SIGNAL_OFFSET_QUANTILE: f64 = 0.99;

/// A forest that cannot be grown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrainError {
    /// No rows to learn from.
    #[error("no training rows")]
    NoRows,
    /// Rows of width zero.
    #[error("training rows have no features")]
    NoFeatures,
    /// Zero trees or a zero sub-sample size was asked for.
    #[error("n_trees and max_samples must be at least 1 (got {n_trees} and {max_samples})")]
    BadParams {
        /// Trees asked for.
        n_trees: usize,
        /// Sub-sample size asked for.
        max_samples: usize,
    },
    /// A row holds NaN or an infinity, which no split can place.
    #[error("training row {row} holds a value that is not a finite number")]
    NonFinite {
        /// Row index.
        row: usize,
    },
}

/// Grows an isolation forest on `rows`.
pub fn train_forest(
    rows: &FeatureMatrix,
    params: &ForestParams,
) -> Result<IsolationForest, TrainError> {
    if params.n_trees == 0 || params.max_samples == 0 {
        return Err(TrainError::BadParams {
            n_trees: params.n_trees,
            max_samples: params.max_samples,
        });
    }
    if rows.n_features() == 0 {
        return Err(TrainError::NoFeatures);
    }
    let n_rows = rows.n_rows();
    if n_rows == 0 {
        return Err(TrainError::NoRows);
    }
    if let Some(row) = (0..n_rows).find(|&i| rows.row(i).iter().any(|v| !v.is_finite())) {
        return Err(TrainError::NonFinite { row });
    }
    let psi = params.max_samples.min(n_rows);
    let max_depth = params
        .max_depth
        .unwrap_or_else(|| (psi.max(2) as f64).log2().ceil() as usize);
    let mut rng = Pcg64::seed_from_u64(params.seed);
    let mut all: Vec<usize> = (0..n_rows).collect();
    let mut trees = Vec::with_capacity(params.n_trees);
    for _ in 0..params.n_trees {
        // Partial Fisher–Yates: the first ψ entries become a uniform sample without replacement.
        for i in 0..psi {
            let j = i + below(&mut rng, n_rows - i);
            all.swap(i, j);
        }
        let mut sample = all[..psi].to_vec();
        let mut grower = Grower {
            rows,
            rng: &mut rng,
            max_depth,
            nodes: Vec::new(),
            features: (0..rows.n_features()).collect(),
        };
        grower.grow(&mut sample, 0);
        trees.push(Tree {
            nodes: grower.nodes,
        });
    }
    Ok(IsolationForest {
        n_features: rows.n_features(),
        max_samples: psi,
        trees,
    })
}

struct Grower<'a> {
    rows: &'a FeatureMatrix,
    rng: &'a mut Pcg64,
    max_depth: usize,
    nodes: Vec<Node>,
    /// Scratch list of feature indices, shuffled lazily per node.
    features: Vec<usize>,
}

impl Grower<'_> {
    /// Grows the subtree over `idx` at `depth` (pre-order, so children follow their parent) and
    /// returns its root's index.
    fn grow(&mut self, idx: &mut [usize], depth: usize) -> u32 {
        let at = self.nodes.len();
        let leaf = Node::Leaf {
            path_length: depth as f64 + average_path_length(idx.len() as f64),
        };
        self.nodes.push(leaf);
        if idx.len() <= 1 || depth >= self.max_depth {
            return at as u32;
        }
        let Some((feature, threshold)) = self.pick_split(idx) else {
            return at as u32;
        };
        // Partition in place: rows going left first.
        let mut split = 0;
        for i in 0..idx.len() {
            if self.rows.row(idx[i])[feature] <= threshold {
                idx.swap(i, split);
                split += 1;
            }
        }
        let (l, r) = idx.split_at_mut(split);
        let left = self.grow(l, depth + 1);
        let right = self.grow(r, depth + 1);
        self.nodes[at] = Node::Split {
            feature: feature as u32,
            threshold,
            left,
            right,
        };
        at as u32
    }

    /// A random non-constant feature and a split value inside its range on `idx`, or `None`
    /// when every feature is constant there (scikit-learn then makes a leaf too).
    fn pick_split(&mut self, idx: &[usize]) -> Option<(usize, f32)> {
        let n = self.features.len();
        for drawn in 0..n {
            let j = drawn + below(self.rng, n - drawn);
            self.features.swap(drawn, j);
            let f = self.features[drawn];
            let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
            for &i in idx {
                let v = self.rows.row(i)[f];
                lo = lo.min(v);
                hi = hi.max(v);
            }
            if hi > lo {
                let (lo64, hi64) = (f64::from(lo), f64::from(hi));
                let mut t = lo64 + unit(self.rng) * (hi64 - lo64);
                if t >= hi64 {
                    // Rounding can reach the maximum, which would send every row left.
                    t = lo64;
                }
                return Some((f, f32_at_or_below(t)));
            }
        }
        None
    }
}

/// A uniform integer in `0..n` (`n >= 1`), unbiased (rejection on the widening product).
fn below(rng: &mut Pcg64, n: usize) -> usize {
    let n = n as u64;
    let zone = n.wrapping_neg() % n;
    loop {
        let m = u128::from(rng.next_u64()) * u128::from(n);
        if (m as u64) >= zone {
            return (m >> 64) as usize;
        }
    }
}

/// A uniform `f64` in `[0, 1)` with 53 random bits.
fn unit(rng: &mut Pcg64) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// The largest `f32` that is `<= t`, so that `x <= t` ⟺ `x <= result` for every `f32` `x`.
fn f32_at_or_below(t: f64) -> f32 {
    let r = t as f32;
    if f64::from(r) <= t { r } else { r.next_down() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(n: usize, seed: u64) -> FeatureMatrix {
        let mut rng = Pcg64::seed_from_u64(seed);
        let mut m = FeatureMatrix::new(3);
        for _ in 0..n {
            let row = [unit(&mut rng), unit(&mut rng) * 10.0, 5.0];
            m.push_row(&row);
        }
        m
    }

    #[test]
    fn same_seed_same_forest_other_seed_other_forest() {
        let rows = blob(1000, 1);
        let p = ForestParams {
            n_trees: 20,
            seed: 7,
            ..ForestParams::default()
        };
        let a = train_forest(&rows, &p).expect("train");
        let b = train_forest(&rows, &p).expect("train");
        assert_eq!(a, b);
        let c = train_forest(&rows, &ForestParams { seed: 8, ..p }).expect("train");
        assert_ne!(a, c);
        a.validate().expect("valid structure");
    }

    #[test]
    fn never_splits_constant_feature_and_respects_depth() {
        let rows = blob(500, 2);
        let p = ForestParams {
            max_samples: 256,
            ..ForestParams::default()
        };
        let f = train_forest(&rows, &p).expect("train");
        assert_eq!(f.max_samples, 256);
        for t in &f.trees {
            let mut depth = vec![0usize; t.nodes.len()];
            for (i, n) in t.nodes.iter().enumerate() {
                if let Node::Split {
                    feature,
                    left,
                    right,
                    ..
                } = *n
                {
                    assert_ne!(feature, 2, "feature 2 is constant");
                    depth[left as usize] = depth[i] + 1;
                    depth[right as usize] = depth[i] + 1;
                }
            }
            assert!(depth.iter().all(|&d| d <= 8), "ceil(log2 256) = 8");
        }
    }

    #[test]
    fn outlier_scores_higher() {
        let mut rows = blob(500, 3);
        rows.push_row(&[5.0, 50.0, 5.0]);
        let f = train_forest(&rows, &ForestParams::default()).expect("train");
        let inlier = f.score(&[0.5, 5.0, 5.0]);
        let outlier = f.score(&[5.0, 50.0, 5.0]);
        assert!(outlier > 0.6 && inlier < 0.5, "{outlier} vs {inlier}");
    }

    #[test]
    fn f32_threshold_keeps_the_f64_comparison() {
        for t in [0.1f64, -0.1, 1e-40, -1e-40, 0.0, 3.3333333333, 16777217.0] {
            let r = f32_at_or_below(t);
            assert!(f64::from(r) <= t);
            let up = if r >= 0.0 {
                f32::from_bits(r.to_bits() + 1)
            } else {
                f32::from_bits(r.to_bits() - 1)
            };
            assert!(f64::from(up) > t || r == 0.0, "{t}: {r} is not the largest");
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        assert_eq!(
            train_forest(&FeatureMatrix::new(2), &ForestParams::default()),
            Err(TrainError::NoRows)
        );
        let mut m = FeatureMatrix::new(1);
        m.push_row(&[f64::NAN]);
        assert_eq!(
            train_forest(&m, &ForestParams::default()),
            Err(TrainError::NonFinite { row: 0 })
        );
    }
}
