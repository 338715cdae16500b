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
    /// The forest; its feature indices are relative to `first_feature`.
    pub forest: IsolationForest,
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
                forest,
            }],
        }
    }

    /// The forest when the set is a plain one (one member, all columns, offset 0).
    pub fn as_single(&self) -> Option<&IsolationForest> {
        match self.members.as_slice() {
            [m] if m.first_feature == 0
                && m.offset == 0.0
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
        }
        Ok(())
    }

    /// Trees in all members together.
    pub fn n_trees(&self) -> usize {
        self.members.iter().map(|m| m.forest.trees.len()).sum()
    }

    /// Each member's score minus its offset, in member order.
    ///
    /// # Panics
    /// If `x` is shorter than `n_features` or the set fails [`ForestSet::validate`].
    pub fn member_scores<'a>(&'a self, x: &'a [f32]) -> impl Iterator<Item = f64> + 'a {
        self.members.iter().map(move |m| {
            let cols = &x[m.first_feature..m.first_feature + m.forest.n_features];
            m.forest.score(cols) - m.offset
        })
    }

    /// The set's anomaly score: the largest member score minus its offset. For a plain forest
    /// ([`ForestSet::single`]) this is [`IsolationForest::score`].
    ///
    /// # Panics
    /// If `x` is shorter than `n_features` or the set fails [`ForestSet::validate`].
    pub fn score(&self, x: &[f32]) -> f64 {
        self.member_scores(x).fold(f64::NEG_INFINITY, f64::max)
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
                    forest: stump(),
                },
                Member {
                    first_feature: 1,
                    offset: 0.2,
                    forest: stump(),
                },
            ],
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
        assert_eq!(
            ForestSet {
                n_features: 1,
                members: vec![]
            }
            .validate(),
            Err(ForestSetError::Empty)
        );
    }
}
