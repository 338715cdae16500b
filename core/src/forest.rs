//! The isolation forest as data, and its reference scorer.
//!
//! The trainer (model-export) builds an [`IsolationForest`], the exporter writes it as a standard
//! ONNX `ai.onnx.ml` tree ensemble, and the agent runs that file with tract. This type and
//! [`IsolationForest::score`] are the reference all of them are checked against.
//!
//! Comparisons are done in `f32`, as ONNX tree ensembles do: a feature goes left when
//! `x as f32 <= threshold` (ONNX `BRANCH_LEQ`, scikit-learn's convention). Each leaf stores its
//! full path length `depth + c(samples at leaf)`, so scoring is a sum of leaf values.

use serde::{Deserialize, Serialize};

/// Euler–Mascheroni constant, for the harmonic-number approximation in [`average_path_length`].
const EULER_GAMMA: f64 = 0.577_215_664_901_532_9;

/// `c(n)`: the average path length of an unsuccessful search in a binary search tree of `n`
/// points, which normalizes isolation depths (Liu et al. 2008; scikit-learn's `_average_path_length`).
pub fn average_path_length(n: f64) -> f64 {
    if n <= 1.0 {
        0.0
    } else if n <= 2.0 {
        1.0
    } else {
        2.0 * ((n - 1.0).ln() + EULER_GAMMA) - 2.0 * (n - 1.0) / n
    }
}

/// One node of a tree.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Node {
    /// An internal node: go to `left` when `x[feature] <= threshold`, else `right`.
    Split {
        /// Feature index.
        feature: u32,
        /// Split value.
        threshold: f32,
        /// Index of the left child in [`Tree::nodes`].
        left: u32,
        /// Index of the right child in [`Tree::nodes`].
        right: u32,
    },
    /// A leaf: the path length credited to a sample that ends here (depth + c(samples here)).
    Leaf {
        /// Path length.
        path_length: f64,
    },
}

/// One isolation tree; the root is `nodes[0]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tree {
    /// Nodes, root first.
    pub nodes: Vec<Node>,
}

/// A trained isolation forest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IsolationForest {
    /// Length of the feature vectors it scores.
    pub n_features: usize,
    /// Sub-sample size ψ each tree was grown on; scores are normalized by `c(ψ)`.
    pub max_samples: usize,
    /// The trees.
    pub trees: Vec<Tree>,
}

/// A forest whose structure is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForestError {
    /// No trees.
    #[error("forest has no trees")]
    Empty,
    /// A tree with no nodes.
    #[error("tree {tree} has no nodes")]
    EmptyTree {
        /// Tree index.
        tree: usize,
    },
    /// A split on a feature the forest does not have.
    #[error("tree {tree} node {node} splits on feature {feature}, but there are {n_features}")]
    FeatureOutOfRange {
        /// Tree index.
        tree: usize,
        /// Node index.
        node: usize,
        /// Feature index.
        feature: u32,
        /// Features in the forest.
        n_features: usize,
    },
    /// A child index that points backwards or outside the tree (which could loop or panic).
    #[error("tree {tree} node {node} has a bad child index {child}")]
    BadChild {
        /// Tree index.
        tree: usize,
        /// Node index.
        node: usize,
        /// The offending child index.
        child: u32,
    },
    /// A leaf value or threshold that is not a finite number.
    #[error("tree {tree} node {node} holds a non-finite value")]
    NonFinite {
        /// Tree index.
        tree: usize,
        /// Node index.
        node: usize,
    },
}

impl IsolationForest {
    /// Checks the structure: children point forward and inside the tree, features are in range,
    /// values are finite. A forest that passes cannot loop or index out of bounds when scored.
    pub fn validate(&self) -> Result<(), ForestError> {
        if self.trees.is_empty() {
            return Err(ForestError::Empty);
        }
        for (t, tree) in self.trees.iter().enumerate() {
            if tree.nodes.is_empty() {
                return Err(ForestError::EmptyTree { tree: t });
            }
            for (i, node) in tree.nodes.iter().enumerate() {
                match *node {
                    Node::Split {
                        feature,
                        threshold,
                        left,
                        right,
                    } => {
                        if feature as usize >= self.n_features {
                            return Err(ForestError::FeatureOutOfRange {
                                tree: t,
                                node: i,
                                feature,
                                n_features: self.n_features,
                            });
                        }
                        if !threshold.is_finite() {
                            return Err(ForestError::NonFinite { tree: t, node: i });
                        }
                        for child in [left, right] {
                            if child as usize <= i || child as usize >= tree.nodes.len() {
                                return Err(ForestError::BadChild {
                                    tree: t,
                                    node: i,
                                    child,
                                });
                            }
                        }
                    }
                    Node::Leaf { path_length } => {
                        if !path_length.is_finite() {
                            return Err(ForestError::NonFinite { tree: t, node: i });
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Mean path length of `x` over the trees.
    ///
    /// # Panics
    /// If `x` is shorter than `n_features` or the forest fails [`IsolationForest::validate`].
    pub fn mean_path_length(&self, x: &[f32]) -> f64 {
        let mut total = 0.0;
        for tree in &self.trees {
            let mut i = 0usize;
            loop {
                match tree.nodes[i] {
                    Node::Split {
                        feature,
                        threshold,
                        left,
                        right,
                    } => {
                        i = if x[feature as usize] <= threshold {
                            left as usize
                        } else {
                            right as usize
                        };
                    }
                    Node::Leaf { path_length } => {
                        total += path_length;
                        break;
                    }
                }
            }
        }
        total / self.trees.len() as f64
    }

    /// Anomaly score in (0, 1]: `2^(-E[h(x)] / c(ψ))`. Higher is more anomalous; about 0.5 is
    /// ordinary. This is the negation of scikit-learn's `score_samples`.
    pub fn score(&self, x: &[f32]) -> f64 {
        let c = average_path_length(self.max_samples as f64);
        if c == 0.0 {
            return 1.0;
        }
        (-self.mean_path_length(x) / c * std::f64::consts::LN_2).exp()
    }
}

/// One forest of a [`ForestSet`]: an isolation forest over the contiguous block of feature
/// columns `first_feature .. first_feature + forest.n_features`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// The first feature column this forest reads.
    pub first_feature: usize,
    /// Subtracted from this forest's score before the set takes the largest: a high quantile of
    /// the forest's scores on its training rows, so that every member's ordinary level is about
    /// 0 and no member dominates the maximum just by scoring higher on everything.
    pub offset: f64,
    /// Multiplies the excess over `offset`: a forest whose ordinary scores spread widely above
    /// its median would otherwise dominate the maximum on ordinary data, one whose scores are
    /// tightly bunched would never be heard. The trainer sets it so that every member's
    /// training spread (offset minus median score) is the set's median spread
    /// (`normalize` in the per-signal layout). 1 (the default, omitted from JSON) in sets
    /// written before it existed.
    #[serde(default = "unit_scale", skip_serializing_if = "is_unit_scale")]
    pub scale: f64,
    /// The forest; its feature indices are relative to `first_feature`.
    pub forest: IsolationForest,
}

fn unit_scale() -> f64 {
    1.0
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's `skip_serializing_if` passes a reference
fn is_unit_scale(s: &f64) -> bool {
    *s == 1.0
}

impl Member {
    /// Largest scale a member may have: bounds how loud one forest can make the set.
    pub const MAX_SCALE: f64 = 100.0;
}

/// The model a detector scores with: one or more isolation forests over blocks of the feature
/// vector, combined by the largest excess over each member's offset.
///
/// A single member over all columns with offset 0 is a plain isolation forest, scored exactly as
/// [`IsolationForest::score`]. One member per signal (the per-signal layout) lets an anomaly that
/// moves only a few of a family's many signals stand out: in one forest over every signal's
/// features, random splits rarely pick the few columns that moved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForestSet {
    /// Length of the feature vectors the set scores.
    pub n_features: usize,
    /// The forests, in feature-column order.
    pub members: Vec<Member>,
    /// How far a signal's value lies outside the range it held in training, when set:
    /// [`RangeGuard::score`] is then added to the forests' score. Absent
    /// (the default, omitted from JSON) in sets written before the guard existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<RangeGuard>,
}

/// The range one feature column held in training (see [`RangeGuard`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bound {
    /// The feature column (a signal's value).
    pub column: usize,
    /// Smallest training value.
    pub low: f32,
    /// Largest training value.
    pub high: f32,
    /// `1 / span`, span being `high - low` (floored, so a signal constant in training still
    /// has a finite scale): excesses are measured in spans.
    pub scale: f32,
}

/// Scores how far a sample's signal values lie outside the ranges they held in training.
///
/// An isolation forest cannot: a split threshold is drawn between the smallest and largest
/// training values of a node, so a value far below the training minimum takes the same path
/// as the minimum itself and scores like an ordinary extreme. A signal that falls to a level it
/// never showed in training (a queue that stopped draining, traffic that collapsed) then scores
/// as ordinary once its rolling features settle. The guard adds what the forest misses:
/// `weight * min(MAX_EXCESS, max_j excess_j)`, where `excess_j` is how many training spans
/// column `j` lies beyond its training range. Inside every range it adds 0, so the score of a
/// sample like the training data is the forests' score unchanged (and an adapting alarm rule
/// still sees a series' whole score distribution move).
///
/// The arithmetic is `f32`, exactly as the ONNX graph computes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeGuard {
    /// Score per span of excess; comparable to a forest's score excess over its offset.
    pub weight: f32,
    /// One bound per guarded column.
    pub bounds: Vec<Bound>,
}

impl RangeGuard {
    /// Largest excess counted, in spans: a signal constant in training that moves gets a large
    /// but bounded score, so a smoothed score comes back down within tens of samples after the
    /// signal returns.
    pub const MAX_EXCESS: f32 = 10.0;

    /// Smallest span, relative to the magnitude of the bounds (at least 1): a signal constant
    /// in training measures its excess against this.
    pub const MIN_RELATIVE_SPAN: f32 = 1e-3;

    /// The bound of `column` from its training `values` (NaN skipped); `None` when no value is
    /// finite.
    pub fn bound(column: usize, values: impl IntoIterator<Item = f32>) -> Option<Bound> {
        let (mut low, mut high) = (f32::INFINITY, f32::NEG_INFINITY);
        for v in values.into_iter().filter(|v| v.is_finite()) {
            low = low.min(v);
            high = high.max(v);
        }
        if low > high {
            return None;
        }
        let floor = Self::MIN_RELATIVE_SPAN * 1f32.max(low.abs()).max(high.abs());
        Some(Bound {
            column,
            low,
            high,
            scale: 1.0 / (high - low).max(floor),
        })
    }

    /// Checks the guard can score a vector of `n_features`.
    pub fn validate(&self, n_features: usize) -> Result<(), ForestSetError> {
        if !self.weight.is_finite() || self.weight < 0.0 {
            return Err(ForestSetError::BadRangeWeight);
        }
        for b in &self.bounds {
            if b.column >= n_features {
                return Err(ForestSetError::RangeColumnOutOfRange {
                    column: b.column,
                    n_features,
                });
            }
            if !(b.low.is_finite() && b.high.is_finite() && b.scale.is_finite())
                || b.low > b.high
                || b.scale <= 0.0
            {
                return Err(ForestSetError::BadBound { column: b.column });
            }
        }
        Ok(())
    }

    /// The largest excess of `x` over a bound, in spans, capped at [`RangeGuard::MAX_EXCESS`]
    /// (0 when every column is inside its range, or there is no bound).
    ///
    /// # Panics
    /// If a bound's column is outside `x` (a guard that passed `validate` for `x.len()` cannot).
    pub fn excess(&self, x: &[f32]) -> f32 {
        self.bounds
            .iter()
            .map(|b| {
                let v = x[b.column];
                let above = (v - b.high) * b.scale;
                let below = (b.low - v) * b.scale;
                above.max(below).clamp(0.0, Self::MAX_EXCESS)
            })
            .fold(0.0, f32::max)
    }

    /// The guard's score: `weight * excess(x)`.
    pub fn score(&self, x: &[f32]) -> f32 {
        self.excess(x) * self.weight
    }
}

/// A forest set whose structure is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForestSetError {
    /// No member.
    #[error("forest set has no forest")]
    Empty,
    /// A member reads columns past the feature vector.
    #[error("forest {member} reads columns {first}..{end}, but there are {n_features}")]
    ColumnsOutOfRange {
        /// Member index.
        member: usize,
        /// First column.
        first: usize,
        /// One past the last column.
        end: usize,
        /// Features in the set.
        n_features: usize,
    },
    /// A member's offset is not a finite number.
    #[error("forest {member} has a non-finite offset")]
    NonFiniteOffset {
        /// Member index.
        member: usize,
    },
    /// A member's scale is not in (0, [`Member::MAX_SCALE`]].
    #[error("forest {member} has a scale outside (0, {}]", Member::MAX_SCALE)]
    BadScale {
        /// Member index.
        member: usize,
    },
    /// The range guard's weight is negative or not finite.
    #[error("range guard weight must be a finite number >= 0")]
    BadRangeWeight,
    /// A range bound reads a column past the feature vector.
    #[error("range guard reads column {column}, but there are {n_features}")]
    RangeColumnOutOfRange {
        /// Column.
        column: usize,
        /// Features in the set.
        n_features: usize,
    },
    /// A range bound is not finite, or low > high, or its scale is not positive.
    #[error("range guard bound of column {column} is malformed")]
    BadBound {
        /// Column.
        column: usize,
    },
    /// A member's forest is malformed.
    #[error("forest {member}")]
    Forest {
        /// Member index.
        member: usize,
        /// The cause.
        #[source]
        source: ForestError,
    },
}

impl ForestSet {
    /// A set of one forest over all columns with offset 0: scores are the forest's own.
    pub fn single(forest: IsolationForest) -> Self {
        ForestSet {
            n_features: forest.n_features,
            members: vec![Member {
                first_feature: 0,
                offset: 0.0,
                scale: 1.0,
                forest,
            }],
            range: None,
        }
    }

    /// This set with `guard` (see [`RangeGuard`]).
    pub fn with_range(self, guard: RangeGuard) -> Self {
        ForestSet {
            range: Some(guard),
            ..self
        }
    }

    /// The forests' part of the score, without the range guard: the largest member score minus
    /// its offset.
    ///
    /// # Panics
    /// As [`ForestSet::score`].
    pub fn forest_score(&self, x: &[f32]) -> f64 {
        self.member_scores(x).fold(f64::NEG_INFINITY, f64::max)
    }

    /// The forest when the set's forests are a plain one (one member, all columns, offset 0);
    /// the range guard, if any, is not looked at.
    pub fn as_single(&self) -> Option<&IsolationForest> {
        match self.members.as_slice() {
            [m] if m.first_feature == 0
                && m.offset == 0.0
                && m.scale == 1.0
                && m.forest.n_features == self.n_features =>
            {
                Some(&m.forest)
            }
            _ => None,
        }
    }

    /// Checks every member ([`IsolationForest::validate`]) and that its columns lie inside the
    /// feature vector. A set that passes cannot index out of bounds when scored.
    pub fn validate(&self) -> Result<(), ForestSetError> {
        if self.members.is_empty() {
            return Err(ForestSetError::Empty);
        }
        for (i, m) in self.members.iter().enumerate() {
            m.forest
                .validate()
                .map_err(|source| ForestSetError::Forest { member: i, source })?;
            let end = m.first_feature.saturating_add(m.forest.n_features);
            if end > self.n_features {
                return Err(ForestSetError::ColumnsOutOfRange {
                    member: i,
                    first: m.first_feature,
                    end,
                    n_features: self.n_features,
                });
            }
            if !m.offset.is_finite() {
                return Err(ForestSetError::NonFiniteOffset { member: i });
            }
            if m.scale.is_nan() || m.scale <= 0.0 || m.scale > Member::MAX_SCALE {
                return Err(ForestSetError::BadScale { member: i });
            }
        }
        if let Some(guard) = &self.range {
            guard.validate(self.n_features)?;
        }
        Ok(())
    }

    /// Trees in all members together.
    pub fn n_trees(&self) -> usize {
        self.members.iter().map(|m| m.forest.trees.len()).sum()
    }

    /// Each member's score minus its offset, times its scale, in member order.
    ///
    /// # Panics
    /// If `x` is shorter than `n_features` or the set fails [`ForestSet::validate`].
    pub fn member_scores<'a>(&'a self, x: &'a [f32]) -> impl Iterator<Item = f64> + 'a {
        self.members.iter().map(move |m| {
            let cols = &x[m.first_feature..m.first_feature + m.forest.n_features];
            let excess = m.forest.score(cols) - m.offset;
            if m.scale == 1.0 {
                excess
            } else {
                excess * m.scale
            }
        })
    }

    /// The set's anomaly score: the largest member score minus its offset, plus the range
    /// guard's score when there is a guard. For a plain forest ([`ForestSet::single`]) this is
    /// [`IsolationForest::score`].
    ///
    /// # Panics
    /// If `x` is shorter than `n_features` or the set fails [`ForestSet::validate`].
    pub fn score(&self, x: &[f32]) -> f64 {
        let forests = self.forest_score(x);
        match &self.range {
            // As the graph does: the forests' score in f32, plus the guard's.
            Some(guard) => f64::from(forests as f32 + guard.score(x)),
            None => forests,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stump() -> IsolationForest {
        IsolationForest {
            n_features: 1,
            max_samples: 256,
            trees: vec![Tree {
                nodes: vec![
                    Node::Split {
                        feature: 0,
                        threshold: 0.5,
                        left: 1,
                        right: 2,
                    },
                    Node::Leaf { path_length: 1.0 },
                    Node::Leaf {
                        path_length: 1.0 + average_path_length(255.0),
                    },
                ],
            }],
        }
    }

    #[test]
    fn c_matches_scikit_learn() {
        // 2 (ln(n-1) + γ) - 2 (n-1)/n, as scikit-learn's `_average_path_length` computes it.
        assert_eq!(average_path_length(1.0), 0.0);
        assert_eq!(average_path_length(2.0), 1.0);
        assert!((average_path_length(256.0) - 10.244_770_920_119_917).abs() < 1e-12);
    }

    #[test]
    fn isolated_point_scores_higher() {
        let f = stump();
        f.validate().expect("valid");
        assert!(f.score(&[0.0]) > f.score(&[1.0]));
        assert!(f.score(&[0.0]) <= 1.0 && f.score(&[1.0]) > 0.0);
    }

    #[test]
    fn validate_catches_loops_and_bad_features() {
        let mut f = stump();
        f.trees[0].nodes[0] = Node::Split {
            feature: 0,
            threshold: 0.5,
            left: 0,
            right: 2,
        };
        assert!(matches!(f.validate(), Err(ForestError::BadChild { .. })));
        let mut f = stump();
        f.n_features = 0;
        assert!(matches!(
            f.validate(),
            Err(ForestError::FeatureOutOfRange { .. })
        ));
    }

    #[test]
    fn the_range_guard_scores_spans_outside_the_training_range() {
        let b = RangeGuard::bound(1, [2.0, f32::NAN, 4.0, 3.0]).expect("bound");
        assert_eq!((b.column, b.low, b.high, b.scale), (1, 2.0, 4.0, 0.5));
        assert_eq!(RangeGuard::bound(0, [f32::NAN]), None);
        // A signal constant in training gets a floored span, not a division by zero.
        let flat = RangeGuard::bound(0, [5.0, 5.0]).expect("bound");
        assert_eq!(flat.scale, 1.0 / (5.0 * RangeGuard::MIN_RELATIVE_SPAN));
        let guard = RangeGuard {
            weight: 0.5,
            bounds: vec![b],
        };
        guard.validate(2).expect("valid");
        assert_eq!(
            guard.excess(&[100.0, 3.0]),
            0.0,
            "inside: 0; column 0 unguarded"
        );
        assert_eq!(guard.excess(&[0.0, 5.0]), 0.5, "half a span above");
        assert_eq!(guard.excess(&[0.0, 1.0]), 0.5, "half a span below");
        assert_eq!(guard.excess(&[0.0, 1e30]), RangeGuard::MAX_EXCESS, "capped");
        assert_eq!(guard.score(&[0.0, 8.0]), 1.0);
        // In a set, the guard's score is added to the forests'.
        let set = ForestSet {
            n_features: 2,
            members: vec![Member {
                first_feature: 0,
                offset: 0.5,
                scale: 1.0,
                forest: stump(),
            }],
            range: None,
        }
        .with_range(guard.clone());
        set.validate().expect("valid");
        // Inside the range the guard adds 0: the forests' score, below 0 or not.
        let forests = set.forest_score(&[1.0, 3.0]);
        assert!(forests < 0.0);
        assert_eq!(set.score(&[1.0, 3.0]), f64::from(forests as f32));
        assert_eq!(set.score(&[1.0, 8.0]), f64::from(forests as f32 + 1.0));
        assert!(set.as_single().is_none(), "offset 0.5: not a plain forest");
        // Malformed guards are refused.
        let bad = |g: RangeGuard| set.clone().with_range(g).validate().err();
        assert_eq!(
            bad(RangeGuard {
                weight: -1.0,
                bounds: vec![]
            }),
            Some(ForestSetError::BadRangeWeight)
        );
        assert_eq!(
            bad(RangeGuard {
                weight: 1.0,
                bounds: vec![Bound { column: 2, ..b }]
            }),
            Some(ForestSetError::RangeColumnOutOfRange {
                column: 2,
                n_features: 2
            })
        );
        assert_eq!(
            bad(RangeGuard {
                weight: 1.0,
                bounds: vec![Bound { low: 9.0, ..b }]
            }),
            Some(ForestSetError::BadBound { column: 1 })
        );
        // A set written before the guard existed reads as one without it.
        let json = serde_json::to_string(&ForestSet::single(stump())).expect("json");
        assert!(!json.contains("range"));
        let back: ForestSet = serde_json::from_str(&json).expect("parse");
        assert_eq!(back.range, None);
    }

    #[test]
    fn a_set_takes_the_largest_excess_over_offsets() {
        let single = ForestSet::single(stump());
        single.validate().expect("valid");
        assert!(single.as_single().is_some());
        assert_eq!(single.score(&[0.0]), stump().score(&[0.0]));
        // Two members over columns 0 and 1; the second's offset hides its ordinary level.
        let set = ForestSet {
            n_features: 2,
            members: vec![
                Member {
                    first_feature: 0,
                    offset: 0.1,
                    scale: 1.0,
                    forest: stump(),
                },
                Member {
                    first_feature: 1,
                    offset: 0.2,
                    scale: 1.0,
                    forest: stump(),
                },
            ],
            range: None,
        };
        set.validate().expect("valid");
        assert!(set.as_single().is_none());
        let (lo, hi) = (stump().score(&[1.0]), stump().score(&[0.0]));
        assert_eq!(set.score(&[1.0, 1.0]), (lo - 0.1).max(lo - 0.2));
        assert_eq!(set.score(&[1.0, 0.0]), (lo - 0.1).max(hi - 0.2));
        let mut bad = set.clone();
        bad.members[1].first_feature = 2;
        assert!(matches!(
            bad.validate(),
            Err(ForestSetError::ColumnsOutOfRange { member: 1, .. })
        ));
        let mut bad = set.clone();
        bad.members[0].offset = f64::NAN;
        assert!(matches!(
            bad.validate(),
            Err(ForestSetError::NonFiniteOffset { member: 0 })
        ));
        // A scale multiplies a member's excess; outside (0, MAX_SCALE] it is refused.
        let mut scaled = set.clone();
        scaled.members[1].scale = 4.0;
        scaled.validate().expect("valid");
        assert_eq!(scaled.score(&[1.0, 0.0]), (lo - 0.1).max((hi - 0.2) * 4.0));
        assert!(scaled.as_single().is_none());
        let json = serde_json::to_string(&set).expect("json");
        assert!(!json.contains("scale"), "a unit scale is omitted: {json}");
        let json = serde_json::to_string(&scaled).expect("json");
        let back: ForestSet = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, scaled);
        for s in [0.0, -1.0, f64::NAN, Member::MAX_SCALE * 2.0] {
            let mut bad = set.clone();
            bad.members[0].scale = s;
            assert_eq!(
                bad.validate(),
                Err(ForestSetError::BadScale { member: 0 }),
                "{s}"
            );
        }
        assert_eq!(
            ForestSet {
                n_features: 1,
                members: vec![],
                range: None,
            }
            .validate(),
            Err(ForestSetError::Empty)
        );
    }
}
