//! A fast kernel for the ONNX `ai.onnx.ml` tree-ensemble operators, registered in tract.
//!
//! tract 0.23 runs `TreeEnsembleClassifier`, but its leaf lookup walks the leaf table from the
//! start for every tree, so a 100-tree isolation forest costs milliseconds per sample. This module
//! parses the same standard attributes into flat arrays and registers itself under the standard
//! operator names in tract's public op register ([`register`]), so `model.onnx` stays plain ONNX
//! that onnxruntime runs too (see `selfheal_model_export::onnx` for the graph we write).
//!
//! Layout: every tree is renumbered in depth-first preorder into one array of 16-byte records
//! (feature, threshold, true child, false child), children indexed directly. A leaf is a record
//! whose two children are itself, so a walk that reaches a leaf early just stays there: each tree
//! is walked a fixed number of steps (its depth) with no test for leaves and no unpredictable
//! branch, and eight rows walk a tree side by side so their memory loads overlap. Renumbering also
//! proves the trees finite (each child is placed after its parent and a node reached twice is
//! refused), so no file can make a walk loop or index out of bounds. Evaluation is batch-major:
//! for a block of rows, tree after tree, so one tree's records stay in cache while the block
//! walks it. A single row (or a batch's last few) walks sixteen trees side by side instead, which
//! overlaps the cache misses that dominate one sample's latency.
//!
//! Registered here:
//! * `TreeEnsembleClassifier`: int64 class labels, `SUM` of leaf weights, optional `base_values`,
//!   `post_transform` NONE, LOGISTIC or SOFTMAX. Anything else (string labels, tensor-valued
//!   attributes, other transforms) goes to tract's own implementation, unchanged.
//! * `TreeEnsembleRegressor` (tract has none): `SUM`, `AVERAGE`, `MIN` or `MAX`, optional
//!   `base_values`, `post_transform` NONE. Anything else is a load error, never a different score.
//!
//! [`register`] also registers `LabelEncoder` ([`super::label_encoder`]): with the regressor it
//! is what scikit-learn's stock IsolationForest export (skl2onnx) needs beyond tract's own ops.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

/// Marks a record that is a branch in [`FlatEnsemble::leaf_of`].
const NOT_LEAF: u32 = u32::MAX;
/// Rows walked together through one tree (keeps a block's accumulators in L1).
const ROW_BLOCK: usize = 64;
/// Rows walking one tree side by side: independent load chains the CPU overlaps.
const LANES: usize = 8;
/// Trees one row walks side by side when it has no other rows to share a tree with.
const TREE_LANES: usize = 16;

/// How a branch compares `x[feature]` with its threshold to choose its *true* child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Leq,
    Lt,
    Gte,
    Gt,
    Eq,
    Neq,
}

impl Mode {
    /// Parses one `nodes_modes` entry straight from the protobuf's bytes (a model has one per
    /// tree node, hundreds of thousands in a per-signal model: no string is allocated).
    fn parse(s: &[u8]) -> TractResult<Option<Mode>> {
        Ok(Some(match s {
            b"BRANCH_LEQ" => Mode::Leq,
            b"BRANCH_LT" => Mode::Lt,
            b"BRANCH_GTE" => Mode::Gte,
            b"BRANCH_GT" => Mode::Gt,
            b"BRANCH_EQ" => Mode::Eq,
            b"BRANCH_NEQ" => Mode::Neq,
            b"LEAF" => return Ok(None),
            other => bail!(
                "unknown tree node mode {:?}",
                String::from_utf8_lossy(other)
            ),
        }))
    }

    #[inline]
    fn goes_true(self, x: f32, threshold: f32) -> bool {
        match self {
            Mode::Leq => x <= threshold,
            Mode::Lt => x < threshold,
            Mode::Gte => x >= threshold,
            Mode::Gt => x > threshold,
            Mode::Eq => x == threshold,
            Mode::Neq => x != threshold,
        }
    }
}

/// One node: 16 bytes, so four share a cache line. `children[0]` is taken when the comparison
/// holds, `children[1]` otherwise; a leaf's children are the leaf itself.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Record {
    feature: u32,
    threshold: f32,
    children: [u32; 2],
}

/// Record behaviour beyond `x <= threshold, NaN goes false`; absent when every branch is plain.
#[derive(Debug, Clone, PartialEq)]
struct BranchModes {
    modes: Vec<Mode>,
    nan_true: Vec<bool>,
}

/// A tree ensemble flattened for evaluation: the sums of leaf weights per row and target.
#[derive(Debug, Clone, PartialEq)]
pub struct FlatEnsemble {
    records: Vec<Record>,
    /// Per record: its index in the leaf table, or [`NOT_LEAF`].
    leaf_of: Vec<u32>,
    /// `None` on the fast path: every branch is `BRANCH_LEQ` and NaN follows the comparison.
    modes: Option<BranchModes>,
    /// Record of each tree's root.
    roots: Vec<u32>,
    /// Steps from each tree's root to its deepest leaf.
    depths: Vec<u32>,
    /// Leaf `i` credits `leaf_weights[leaf_start[i]..leaf_start[i + 1]]` to the matching targets.
    leaf_start: Vec<u32>,
    leaf_targets: Vec<u32>,
    leaf_weights: Vec<f32>,
    n_targets: usize,
    /// The narrowest input this ensemble accepts: one more than the largest feature index read,
    /// and at least 1 because a leaf record reads (and ignores) feature 0.
    min_input_width: usize,
}

/// A node waiting to be placed: (ONNX node, its depth, the parent's child slot that must point
/// at it: (record, 0 for true | 1 for false)).
type Pending = (usize, u32, Option<(usize, usize)>);

/// The standard node and leaf attributes, named after the operator's prefix (`class_` or
/// `target_`).
struct RawEnsemble<'a> {
    tree_ids: &'a [i64],
    node_ids: &'a [i64],
    feature_ids: &'a [i64],
    values: Vec<f32>,
    modes: Vec<Option<Mode>>,
    true_ids: &'a [i64],
    false_ids: &'a [i64],
    nan_true: Vec<bool>,
    leaf_tree_ids: &'a [i64],
    leaf_node_ids: &'a [i64],
    leaf_targets: &'a [i64],
    leaf_weights: Vec<f32>,
}

impl<'a> RawEnsemble<'a> {
    fn parse(node: &'a NodeProto, leaf_prefix: &str) -> TractResult<Self> {
        for attr in [
            "nodes_values_as_tensor",
            "nodes_hitrates_as_tensor",
            "base_values_as_tensor",
            "class_weights_as_tensor",
            "target_weights_as_tensor",
        ] {
            if node.attribute.iter().any(|a| a.name == attr) {
                bail!("tensor-valued attribute {attr} is not supported");
            }
        }
        let nodes_f32 = |name: &str| -> TractResult<Vec<f32>> {
            Ok(node.get_attr_opt_vec::<f32>(name)?.unwrap_or_default())
        };
        let raw = RawEnsemble {
            tree_ids: node.get_attr_slice::<i64>("nodes_treeids")?,
            node_ids: node.get_attr_slice::<i64>("nodes_nodeids")?,
            feature_ids: node.get_attr_slice::<i64>("nodes_featureids")?,
            values: nodes_f32("nodes_values")?,
            modes: node
                .attribute
                .iter()
                .find(|a| a.name == "nodes_modes")
                .ok_or_else(|| format_err!("tree ensemble has no nodes_modes"))?
                .strings
                .iter()
                .map(|s| Mode::parse(s))
                .collect::<TractResult<_>>()?,
            true_ids: node.get_attr_slice::<i64>("nodes_truenodeids")?,
            false_ids: node.get_attr_slice::<i64>("nodes_falsenodeids")?,
            nan_true: node
                .get_attr_opt_slice::<i64>("nodes_missing_value_tracks_true")?
                .map(|v| v.iter().map(|&b| b != 0).collect())
                .unwrap_or_default(),
            leaf_tree_ids: node.get_attr_slice::<i64>(&format!("{leaf_prefix}_treeids"))?,
            leaf_node_ids: node.get_attr_slice::<i64>(&format!("{leaf_prefix}_nodeids"))?,
            leaf_targets: node.get_attr_slice::<i64>(&format!("{leaf_prefix}_ids"))?,
            leaf_weights: nodes_f32(&format!("{leaf_prefix}_weights"))?,
        };
        let n = raw.tree_ids.len();
        ensure!(n > 0, "tree ensemble has no nodes");
        for (name, len) in [
            ("nodes_nodeids", raw.node_ids.len()),
            ("nodes_featureids", raw.feature_ids.len()),
            ("nodes_values", raw.values.len()),
            ("nodes_modes", raw.modes.len()),
            ("nodes_truenodeids", raw.true_ids.len()),
            ("nodes_falsenodeids", raw.false_ids.len()),
        ] {
            ensure!(len == n, "{name} has {len} entries, nodes_treeids has {n}");
        }
        ensure!(
            raw.nan_true.is_empty() || raw.nan_true.len() == n,
            "nodes_missing_value_tracks_true has {} entries for {n} nodes",
            raw.nan_true.len()
        );
        let l = raw.leaf_tree_ids.len();
        for (name, len) in [
            ("nodeids", raw.leaf_node_ids.len()),
            ("ids", raw.leaf_targets.len()),
            ("weights", raw.leaf_weights.len()),
        ] {
            ensure!(
                len == l,
                "{leaf_prefix}_{name} has {len} entries, {leaf_prefix}_treeids has {l}"
            );
        }
        Ok(raw)
    }
}

/// Leaf weights grouped by ONNX node (see [`FlatEnsemble::build`]).
struct Contributions {
    starts: Vec<u32>,
    weights: Vec<(u32, f32)>,
}

impl Contributions {
    /// Node `i`'s `(target, weight)` pairs.
    fn of(&self, i: usize) -> &[(u32, f32)] {
        &self.weights[self.starts[i] as usize..self.starts[i + 1] as usize]
    }
}

impl FlatEnsemble {
    /// Flattens and checks the ensemble; `n_targets` bounds the leaf target ids.
    fn build(raw: &RawEnsemble<'_>, n_targets: usize) -> TractResult<FlatEnsemble> {
        let n = raw.tree_ids.len();
        let mut index: HashMap<(i64, i64), usize> = HashMap::with_capacity(n);
        index.extend((0..n).map(|i| ((raw.tree_ids[i], raw.node_ids[i]), i)));
        ensure!(index.len() == n, "a (tree id, node id) pair appears twice");

        // Leaf contributions, grouped by node: node i's are `contributions[starts[i]..starts[i
        // + 1]]`, in input order (one allocation, not one per leaf).
        let mut leaf_nodes = Vec::with_capacity(raw.leaf_tree_ids.len());
        let mut starts = vec![0u32; n + 1];
        for j in 0..raw.leaf_tree_ids.len() {
            let key = (raw.leaf_tree_ids[j], raw.leaf_node_ids[j]);
            let Some(&i) = index.get(&key) else {
                bail!("leaf weight names node {key:?}, which does not exist");
            };
            ensure!(
                raw.modes[i].is_none(),
                "leaf weight on node {key:?}, which is a branch"
            );
            let target = raw.leaf_targets[j];
            ensure!(
                (0..n_targets as i64).contains(&target),
                "leaf target {target} out of range 0..{n_targets}"
            );
            leaf_nodes.push(i);
            starts[i + 1] += 1;
        }
        for i in 0..n {
            starts[i + 1] += starts[i];
        }
        let mut filled = starts.clone();
        let mut weights = vec![(0u32, 0f32); leaf_nodes.len()];
        for (j, &i) in leaf_nodes.iter().enumerate() {
            weights[filled[i] as usize] = (raw.leaf_targets[j] as u32, raw.leaf_weights[j]);
            filled[i] += 1;
        }
        let contributions = Contributions { starts, weights };

        // Each branch's children as node indices, and the roots: nodes no node points to, one
        // per tree, in increasing tree id.
        let mut children = vec![[0usize; 2]; n];
        let mut is_child = vec![false; n];
        for (i, node_children) in children.iter_mut().enumerate() {
            if raw.modes[i].is_some() {
                for (slot, child) in [raw.true_ids[i], raw.false_ids[i]].into_iter().enumerate() {
                    let Some(&c) = index.get(&(raw.tree_ids[i], child)) else {
                        bail!(
                            "tree {} node {} points to missing node {child}",
                            raw.tree_ids[i],
                            raw.node_ids[i]
                        );
                    };
                    node_children[slot] = c;
                    is_child[c] = true;
                }
            }
        }
        drop(index);
        let mut roots_by_tree: Vec<(i64, usize)> = (0..n)
            .filter(|&i| !is_child[i])
            .map(|i| (raw.tree_ids[i], i))
            .collect();
        roots_by_tree.sort_unstable();
        ensure!(
            roots_by_tree.windows(2).all(|w| w[0].0 != w[1].0),
            "a tree has more than one root"
        );

        let mut flat = FlatEnsemble {
            records: Vec::new(),
            leaf_of: Vec::new(),
            modes: None,
            roots: Vec::with_capacity(roots_by_tree.len()),
            depths: Vec::with_capacity(roots_by_tree.len()),
            leaf_start: vec![0],
            leaf_targets: Vec::new(),
            leaf_weights: Vec::new(),
            n_targets,
            min_input_width: 1,
        };
        let mut modes = BranchModes {
            modes: Vec::new(),
            nan_true: Vec::new(),
        };
        let mut visited = vec![false; n];
        for &(_, root) in &roots_by_tree {
            flat.roots.push(flat.records.len() as u32);
            let depth = flat.add_subtree(
                raw,
                &children,
                &contributions,
                root,
                &mut visited,
                &mut modes,
            )?;
            flat.depths.push(depth);
        }
        ensure!(
            visited.iter().all(|&v| v),
            "some nodes are unreachable from their tree's root (a cycle)"
        );
        let plain = modes.modes.iter().all(|&m| m == Mode::Leq) && !modes.nan_true.contains(&true);
        flat.modes = (!plain).then_some(modes);
        Ok(flat)
    }

    /// Appends the subtree under ONNX node `top` in preorder (its root first); returns its depth.
    fn add_subtree(
        &mut self,
        raw: &RawEnsemble<'_>,
        children: &[[usize; 2]],
        contributions: &Contributions,
        top: usize,
        visited: &mut [bool],
        modes: &mut BranchModes,
    ) -> TractResult<u32> {
        let mut stack: Vec<Pending> = vec![(top, 0, None)];
        let mut max_depth = 0;
        while let Some((i, depth, parent)) = stack.pop() {
            ensure!(
                !visited[i],
                "tree {} node {} is reached twice (a cycle or a shared subtree)",
                raw.tree_ids[i],
                raw.node_ids[i]
            );
            visited[i] = true;
            max_depth = max_depth.max(depth);
            let at = self.records.len();
            ensure!(at < NOT_LEAF as usize, "too many tree nodes");
            match raw.modes[i] {
                Some(mode) => {
                    let feature = raw.feature_ids[i];
                    ensure!(
                        (0..i64::from(u32::MAX)).contains(&feature),
                        "feature id {feature} out of range"
                    );
                    self.min_input_width = self.min_input_width.max(feature as usize + 1);
                    self.records.push(Record {
                        feature: feature as u32,
                        threshold: raw.values[i],
                        children: [0, 0],
                    });
                    self.leaf_of.push(NOT_LEAF);
                    modes.modes.push(mode);
                    modes
                        .nan_true
                        .push(raw.nan_true.get(i).copied().unwrap_or(false));
                    // Push false first so the true child follows its parent directly.
                    for slot in [1, 0] {
                        stack.push((children[i][slot], depth + 1, Some((at, slot))));
                    }
                }
                None => {
                    let leaf = self.leaf_start.len() - 1;
                    for &(target, weight) in contributions.of(i) {
                        self.leaf_targets.push(target);
                        self.leaf_weights.push(weight);
                    }
                    self.leaf_start.push(self.leaf_weights.len() as u32);
                    self.records.push(Record {
                        feature: 0,
                        threshold: 0.0,
                        children: [at as u32; 2],
                    });
                    self.leaf_of.push(leaf as u32);
                    // A leaf compares like a plain branch; both ways lead back to itself.
                    modes.modes.push(Mode::Leq);
                    modes.nan_true.push(false);
                }
            }
            if let Some((p, slot)) = parent {
                self.records[p].children[slot] = at as u32;
            }
        }
        Ok(max_depth)
    }

    /// Replaces each leaf's weights by one weight for target 0, their sum (0 for a leaf with
    /// none): a single-target ensemble then gives exactly one value per tree.
    fn one_weight_per_leaf(&mut self) {
        let sums: Vec<f32> = self
            .leaf_start
            .windows(2)
            .map(|w| self.leaf_weights[w[0] as usize..w[1] as usize].iter().sum())
            .collect();
        self.leaf_start = (0..=sums.len() as u32).collect();
        self.leaf_targets = vec![0; sums.len()];
        self.leaf_weights = sums;
    }

    /// Whether every row gets at least one weight for every target: for each target, some tree
    /// credits it at every one of its leaves (a row ends on exactly one leaf of each tree). True
    /// when every leaf credits every target, and for a forest set whose trees each credit their
    /// own forest's target at every leaf.
    fn every_row_credits_every_target(&self) -> bool {
        let mut covered = vec![false; self.n_targets];
        // Per target: leaves of the current tree crediting it, and the last leaf counted (a
        // leaf may credit one target twice).
        let mut leaves_crediting = vec![0u32; self.n_targets];
        let mut last_leaf = vec![NOT_LEAF; self.n_targets];
        for (t, &root) in self.roots.iter().enumerate() {
            let end = self
                .roots
                .get(t + 1)
                .map_or(self.records.len(), |&r| r as usize);
            leaves_crediting.fill(0);
            let mut leaves = 0u32;
            for &leaf in &self.leaf_of[root as usize..end] {
                if leaf == NOT_LEAF {
                    continue;
                }
                leaves += 1;
                let (from, to) = (
                    self.leaf_start[leaf as usize] as usize,
                    self.leaf_start[leaf as usize + 1] as usize,
                );
                for &target in &self.leaf_targets[from..to] {
                    let target = target as usize;
                    if last_leaf[target] != leaf {
                        last_leaf[target] = leaf;
                        leaves_crediting[target] += 1;
                    }
                }
            }
            for (c, &n) in covered.iter_mut().zip(&leaves_crediting) {
                *c |= leaves > 0 && n == leaves;
            }
        }
        covered.iter().all(|&c| c)
    }

    /// Number of trees.
    pub fn n_trees(&self) -> usize {
        self.roots.len()
    }

    /// Number of targets (classes or regression outputs) each row gets a sum for.
    pub fn n_targets(&self) -> usize {
        self.n_targets
    }

    /// The narrowest input row this ensemble can read.
    pub fn min_input_width(&self) -> usize {
        self.min_input_width
    }

    /// Adds each row's leaf weights into `out` (`n_rows × n_targets`, row-major, zeroed by the
    /// caller). `rows` is row-major with `width` features per row.
    ///
    /// # Panics
    /// If `width < self.min_input_width()` or the slices are not `n_rows` long.
    pub fn accumulate(&self, rows: &[f32], width: usize, out: &mut [f32]) {
        self.accumulate_with(rows, width, out, |acc, w| *acc += w);
    }

    /// [`FlatEnsemble::accumulate`] with another way to fold a leaf weight into a row's value
    /// for its target (`combine(value, weight)`, e.g. a minimum); `out` holds the initial values.
    ///
    /// # Panics
    /// As [`FlatEnsemble::accumulate`].
    pub fn accumulate_with(
        &self,
        rows: &[f32],
        width: usize,
        out: &mut [f32],
        combine: impl Fn(&mut f32, f32) + Copy,
    ) {
        assert!(width >= self.min_input_width, "input rows too narrow");
        let n_rows = out.len() / self.n_targets.max(1);
        assert_eq!(rows.len(), n_rows * width, "rows and outputs disagree");
        let nt = self.n_targets;
        // Rows in groups of eight walk each tree side by side; the rest (a single row, the tail
        // of a batch) walk sixteen trees side by side instead.
        let grouped = n_rows / LANES * LANES;
        let row_offsets: [usize; LANES] = std::array::from_fn(|k| k * width);
        let mut start = 0;
        while start < grouped {
            let end = (start + ROW_BLOCK).min(grouped);
            for (&root, &depth) in self.roots.iter().zip(&self.depths) {
                for r in (start..end).step_by(LANES) {
                    let group = &rows[r * width..(r + LANES) * width];
                    let leaves = self.walk_modes([root; LANES], depth, group, row_offsets);
                    for (k, &at) in leaves.iter().enumerate() {
                        self.credit(at, &mut out[(r + k) * nt..(r + k + 1) * nt], combine);
                    }
                }
            }
            start = end;
        }
        for r in grouped..n_rows {
            let row = &rows[r * width..(r + 1) * width];
            let acc = &mut out[r * nt..(r + 1) * nt];
            let trees = self
                .roots
                .chunks_exact(TREE_LANES)
                .zip(self.depths.chunks_exact(TREE_LANES));
            for (roots, depths) in trees {
                let at: [u32; TREE_LANES] = std::array::from_fn(|k| roots[k]);
                let steps = depths.iter().copied().max().unwrap_or(0);
                for leaf in self.walk_modes(at, steps, row, [0; TREE_LANES]) {
                    self.credit(leaf, acc, combine);
                }
            }
            let rest = self.roots.len() / TREE_LANES * TREE_LANES;
            for (&root, &depth) in self.roots[rest..].iter().zip(&self.depths[rest..]) {
                let [leaf] = self.walk_modes([root], depth, row, [0]);
                self.credit(leaf, acc, combine);
            }
        }
    }

    /// Adds the weights of the leaf at record `at` to one row's sums.
    #[inline(always)]
    fn credit(&self, at: u32, acc: &mut [f32], combine: impl Fn(&mut f32, f32)) {
        let leaf = self.leaf_of[at as usize] as usize;
        let (from, to) = (
            self.leaf_start[leaf] as usize,
            self.leaf_start[leaf + 1] as usize,
        );
        for j in from..to {
            combine(
                &mut acc[self.leaf_targets[j] as usize],
                self.leaf_weights[j],
            );
        }
    }

    /// [`FlatEnsemble::walk`] with the comparison this ensemble's branches need.
    #[inline(always)]
    fn walk_modes<const L: usize>(
        &self,
        at: [u32; L],
        steps: u32,
        rows: &[f32],
        offsets: [usize; L],
    ) -> [u32; L] {
        match &self.modes {
            None => self.walk(at, steps, rows, offsets, |_, rec, x| {
                // NaN fails the comparison and goes to the false child, as ONNX says.
                1 - usize::from(x <= rec.threshold)
            }),
            Some(m) => self.walk(at, steps, rows, offsets, |i, rec, x| {
                let go_true =
                    (x.is_nan() && m.nan_true[i]) || m.modes[i].goes_true(x, rec.threshold);
                usize::from(!go_true)
            }),
        }
    }

    /// Takes `steps` steps in `L` independent walks, lane `k` starting at record `at[k]` and
    /// reading its features at `rows[offsets[k]..]` (eight rows through one tree, or one row
    /// through eight trees), and returns the record each ends on. That is a leaf when `steps` is
    /// at least the depth of the lane's tree, since a leaf leads to itself. `slot` picks the
    /// child (0 true, 1 false) from the record's index, the record and the feature value.
    #[inline(always)]
    fn walk<const L: usize>(
        &self,
        mut at: [u32; L],
        steps: u32,
        rows: &[f32],
        offsets: [usize; L],
        slot: impl Fn(usize, &Record, f32) -> usize,
    ) -> [u32; L] {
        for _ in 0..steps {
            for k in 0..L {
                let i = at[k] as usize;
                let rec = &self.records[i];
                let x = rows[offsets[k] + rec.feature as usize];
                at[k] = rec.children[slot(i, rec, x)];
            }
        }
        at
    }
}

/// What the classifier applies to the summed scores, as ONNX `post_transform` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PostTransform {
    None,
    Logistic,
    Softmax,
}

/// The evaluation of `TreeEnsembleClassifier`, behind an `Arc` so tract can clone the op freely.
#[derive(Debug)]
struct ClassifierKernel {
    ensemble: FlatEnsemble,
    class_labels: Vec<i64>,
    base_values: Option<Vec<f32>>,
    post_transform: PostTransform,
    /// ONNX's two-class layout: every leaf credits class 0 and at most two labels exist; the
    /// score output is then `[1 - p, p]` with `p` the (transformed) class-0 sum, as tract and
    /// onnxruntime both write it.
    binary_layout: bool,
}

impl ClassifierKernel {
    fn output_width(&self) -> usize {
        if self.binary_layout {
            2
        } else {
            self.class_labels.len()
        }
    }

    /// Labels and scores for `n_rows` rows of `width` features.
    fn eval(&self, rows: &[f32], n_rows: usize, width: usize) -> (Vec<i64>, Vec<f32>) {
        let n_classes = self.class_labels.len();
        let mut sums = vec![0f32; n_rows * n_classes];
        self.ensemble.accumulate(rows, width, &mut sums);
        let mut labels = Vec::with_capacity(n_rows);
        let out_width = self.output_width();
        let mut scores = Vec::with_capacity(n_rows * out_width);
        for row in sums.chunks_exact_mut(n_classes.max(1)) {
            if let Some(base) = &self.base_values {
                row.iter_mut().zip(base).for_each(|(s, b)| *s += b);
            }
            match self.post_transform {
                PostTransform::None => {}
                PostTransform::Logistic => {
                    row.iter_mut().for_each(|s| *s = 1.0 / (1.0 + (-*s).exp()))
                }
                PostTransform::Softmax => {
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    row.iter_mut().for_each(|s| *s = (*s - max).exp());
                    let total: f32 = row.iter().sum();
                    row.iter_mut().for_each(|s| *s /= total);
                }
            }
            // First maximum wins, as tract's ArgMax does.
            let best = row
                .iter()
                .enumerate()
                .fold(0, |best, (i, &s)| if s > row[best] { i } else { best });
            labels.push(self.class_labels.get(best).copied().unwrap_or(0));
            if self.binary_layout {
                scores.extend([1.0 - row[0], row[0]]);
            } else {
                scores.extend_from_slice(row);
            }
        }
        (labels, scores)
    }
}

/// tract op: fast `TreeEnsembleClassifier`. Outputs labels `i64[N]` and scores `f32[N, C]`.
#[derive(Debug, Clone)]
pub struct FastTreeEnsembleClassifier {
    kernel: Arc<ClassifierKernel>,
}

// Two ops are equal only when they share a kernel: comparing forests weight by weight to let
// tract merge duplicates is not worth it.
impl PartialEq for FastTreeEnsembleClassifier {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.kernel, &other.kernel)
    }
}
impl Eq for FastTreeEnsembleClassifier {}

/// Checks the input is `f32[N, W]` with `W` wide enough, and returns `(N, W)`.
fn input_rows(input: &Tensor, min_width: usize) -> TractResult<(usize, usize)> {
    ensure!(
        input.datum_type() == f32::datum_type(),
        "tree ensemble input must be f32, got {:?}",
        input.datum_type()
    );
    let (n, w) = match *input.shape() {
        [n, w] => (n, w),
        [w] => (1, w),
        ref other => bail!("tree ensemble input must be [N, features], got {other:?}"),
    };
    ensure!(
        w >= min_width,
        "tree ensemble reads feature {} but input rows have {w}",
        min_width.saturating_sub(1)
    );
    Ok((n, w))
}

fn check_input_fact(fact: &TypedFact, min_width: usize) -> TractResult<TDim> {
    ensure!(
        fact.rank() == 2,
        "tree ensemble input must be [N, features]"
    );
    if let Ok(w) = fact.shape[1].to_usize() {
        ensure!(
            w >= min_width,
            "tree ensemble reads feature {} but input rows have {w}",
            min_width.saturating_sub(1)
        );
    }
    Ok(fact.shape[0].clone())
}

impl Op for FastTreeEnsembleClassifier {
    fn name(&self) -> StaticName {
        "FastTreeEnsembleClassifier".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} trees, {} classes",
            self.kernel.ensemble.n_trees(),
            self.kernel.class_labels.len()
        )])
    }

    tract_onnx::tract_core::op_as_typed_op!();
}

impl EvalOp for FastTreeEnsembleClassifier {
    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 1, "TreeEnsembleClassifier takes one input");
        let input = &inputs[0];
        let (n, w) = input_rows(input, self.kernel.ensemble.min_input_width())?;
        let rows = input.try_as_plain_ram()?.as_slice::<f32>()?;
        let (labels, scores) = self.kernel.eval(rows, n, w);
        let labels = tract_ndarray::Array1::from_vec(labels).into_tensor();
        let scores =
            tract_ndarray::Array2::from_shape_vec((n, self.kernel.output_width()), scores)?
                .into_tensor();
        Ok(tvec!(labels.into_tvalue(), scores.into_tvalue()))
    }

    fn eval_out_of_plan(&self, inputs: TVec<TValue>) -> TractResult<Option<TVec<TValue>>> {
        Ok(Some(self.eval(&EvalContext::out_of_plan(), inputs)?))
    }
}

impl TypedOp for FastTreeEnsembleClassifier {
    tract_onnx::tract_core::as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let n = check_input_fact(inputs[0], self.kernel.ensemble.min_input_width())?;
        Ok(tvec!(
            i64::fact([n.clone()]),
            f32::fact([n, self.kernel.output_width().to_dim()])
        ))
    }
}

/// The inference-time face of [`FastTreeEnsembleClassifier`]: shape rules, then one typed node.
#[derive(Debug, Clone)]
struct ClassifierExpansion(FastTreeEnsembleClassifier);

impl Expansion for ClassifierExpansion {
    fn name(&self) -> StaticName {
        "TreeEnsembleClassifier".into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(2)
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 2)?;
        s.equals(&outputs[0].datum_type, i64::datum_type())?;
        s.equals(&outputs[1].datum_type, f32::datum_type())?;
        s.equals(&inputs[0].rank, 2)?;
        s.equals(&outputs[0].rank, 1)?;
        s.equals(&outputs[1].rank, 2)?;
        s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[1].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[1].shape[1], self.0.kernel.output_width().to_dim())?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let input = cast_to_f32(prefix, model, inputs[0])?;
        model.wire_node(prefix, self.0.clone(), &[input])
    }
}

/// tract's own `TreeEnsembleClassifier` builder, for the cases this kernel leaves to it.
fn builtin_classifier() -> Option<OpBuilder> {
    static BUILTIN: OnceLock<Option<OpBuilder>> = OnceLock::new();
    *BUILTIN.get_or_init(|| {
        tract_onnx::onnx()
            .op_register
            .0
            .get("TreeEnsembleClassifier")
            .copied()
    })
}

/// The builder signature of tract's op register.
type OpBuilder =
    fn(&ParsingContext, &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

fn parse_post_transform(node: &NodeProto) -> TractResult<Option<PostTransform>> {
    Ok(
        match node
            .get_attr_opt::<&str>("post_transform")?
            .unwrap_or("NONE")
        {
            "NONE" => Some(PostTransform::None),
            "LOGISTIC" => Some(PostTransform::Logistic),
            "SOFTMAX" => Some(PostTransform::Softmax),
            _ => None,
        },
    )
}

fn classifier(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let labels = node.get_attr_opt_slice::<i64>("classlabels_int64s")?;
    let post_transform = parse_post_transform(node)?;
    let (Some(labels), Some(post_transform)) = (labels, post_transform) else {
        // String labels or an exotic transform: tract's own kernel handles them, slowly.
        let Some(builtin) = builtin_classifier() else {
            bail!("TreeEnsembleClassifier: unsupported attributes and no fallback");
        };
        return builtin(ctx, node);
    };
    ensure!(!labels.is_empty(), "classlabels_int64s is empty");
    let raw = RawEnsemble::parse(node, "class")?;
    let ensemble = FlatEnsemble::build(&raw, labels.len())?;
    let base_values = node.get_attr_opt_vec::<f32>("base_values")?;
    if let Some(base) = &base_values {
        ensure!(
            base.len() == labels.len(),
            "base_values has {} entries for {} classes",
            base.len(),
            labels.len()
        );
    }
    let binary_layout = labels.len() < 3 && raw.leaf_targets.iter().all(|&c| c == 0);
    let op = FastTreeEnsembleClassifier {
        kernel: Arc::new(ClassifierKernel {
            ensemble,
            class_labels: labels.to_vec(),
            base_values,
            post_transform,
            binary_layout,
        }),
    };
    Ok((expand(ClassifierExpansion(op)), vec![]))
}

/// How `TreeEnsembleRegressor` folds the leaf weights of all trees into one value per target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aggregate {
    Sum,
    Average,
    Min,
    Max,
}

/// The evaluation of `TreeEnsembleRegressor`, behind an `Arc` so tract can clone the op freely.
///
/// It follows onnxruntime where the ONNX text leaves room. With one target, a leaf's value is
/// the sum of its weights (0 when it has none) and `MIN`/`MAX` compare those per tree. With
/// several, each weight is folded in on its own, and a target no reached leaf credits comes out
/// as 0, without its base value.
#[derive(Debug)]
struct RegressorKernel {
    ensemble: FlatEnsemble,
    aggregate: Aggregate,
    base_values: Option<Vec<f32>>,
    /// Every row gets a weight for every target, so no second walk is needed to find the
    /// targets a row never reached.
    complete: bool,
}

impl RegressorKernel {
    fn new(
        mut ensemble: FlatEnsemble,
        aggregate: Aggregate,
        base_values: Option<Vec<f32>>,
    ) -> Self {
        if ensemble.n_targets() == 1 {
            ensemble.one_weight_per_leaf();
        }
        let complete = ensemble.every_row_credits_every_target();
        RegressorKernel {
            ensemble,
            aggregate,
            base_values,
            complete,
        }
    }

    /// The `n_rows × n_targets` values for `n_rows` rows of `width` features.
    fn eval(&self, rows: &[f32], n_rows: usize, width: usize) -> Vec<f32> {
        let nt = self.ensemble.n_targets();
        let (init, combine): (f32, fn(&mut f32, f32)) = match self.aggregate {
            Aggregate::Sum | Aggregate::Average => (0.0, |v, w| *v += w),
            Aggregate::Min => (f32::INFINITY, |v, w| *v = v.min(w)),
            Aggregate::Max => (f32::NEG_INFINITY, |v, w| *v = v.max(w)),
        };
        let mut out = vec![init; n_rows * nt];
        self.ensemble
            .accumulate_with(rows, width, &mut out, combine);
        if self.aggregate == Aggregate::Average {
            let trees = self.ensemble.n_trees() as f32;
            out.iter_mut().for_each(|v| *v /= trees);
        }
        if let Some(base) = &self.base_values {
            for row in out.chunks_exact_mut(nt.max(1)) {
                row.iter_mut().zip(base).for_each(|(v, b)| *v += b);
            }
        }
        if !self.complete {
            // A second walk counts the weights each target got; rare (multi-target ensembles
            // in which a row can miss a target entirely), so the common case, including a
            // per-signal forest set, pays nothing for it.
            let mut credited = vec![0f32; n_rows * nt];
            self.ensemble
                .accumulate_with(rows, width, &mut credited, |c, _| *c += 1.0);
            out.iter_mut()
                .zip(&credited)
                .filter(|(_, c)| **c == 0.0)
                .for_each(|(v, _)| *v = 0.0);
        }
        out
    }
}

/// tract op: `TreeEnsembleRegressor` (tract has none). Outputs `f32[N, n_targets]`.
#[derive(Debug, Clone)]
pub struct FastTreeEnsembleRegressor {
    kernel: Arc<RegressorKernel>,
}

// As for the classifier: equal only when sharing a kernel.
impl PartialEq for FastTreeEnsembleRegressor {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.kernel, &other.kernel)
    }
}
impl Eq for FastTreeEnsembleRegressor {}

impl Op for FastTreeEnsembleRegressor {
    fn name(&self) -> StaticName {
        "FastTreeEnsembleRegressor".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} trees, {} targets, {:?}",
            self.kernel.ensemble.n_trees(),
            self.kernel.ensemble.n_targets(),
            self.kernel.aggregate
        )])
    }

    tract_onnx::tract_core::op_as_typed_op!();
}

impl EvalOp for FastTreeEnsembleRegressor {
    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 1, "TreeEnsembleRegressor takes one input");
        let input = &inputs[0];
        let (n, w) = input_rows(input, self.kernel.ensemble.min_input_width())?;
        let rows = input.try_as_plain_ram()?.as_slice::<f32>()?;
        let values = self.kernel.eval(rows, n, w);
        let values =
            tract_ndarray::Array2::from_shape_vec((n, self.kernel.ensemble.n_targets()), values)?
                .into_tensor();
        Ok(tvec!(values.into_tvalue()))
    }

    fn eval_out_of_plan(&self, inputs: TVec<TValue>) -> TractResult<Option<TVec<TValue>>> {
        Ok(Some(self.eval(&EvalContext::out_of_plan(), inputs)?))
    }
}

impl TypedOp for FastTreeEnsembleRegressor {
    tract_onnx::tract_core::as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let n = check_input_fact(inputs[0], self.kernel.ensemble.min_input_width())?;
        Ok(tvec!(f32::fact([
            n,
            self.kernel.ensemble.n_targets().to_dim()
        ])))
    }
}

/// The inference-time face of [`FastTreeEnsembleRegressor`].
#[derive(Debug, Clone)]
struct RegressorExpansion(FastTreeEnsembleRegressor);

impl Expansion for RegressorExpansion {
    fn name(&self) -> StaticName {
        "TreeEnsembleRegressor".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&inputs[0].rank, 2)?;
        s.equals(&outputs[0].rank, 2)?;
        s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
        s.equals(
            &outputs[0].shape[1],
            self.0.kernel.ensemble.n_targets().to_dim(),
        )?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let input = cast_to_f32(prefix, model, inputs[0])?;
        model.wire_node(prefix, self.0.clone(), &[input])
    }
}

/// `input` as f32: itself, or a cast of it (ONNX lets tree ensembles read doubles and ints).
fn cast_to_f32(prefix: &str, model: &mut TypedModel, input: OutletId) -> TractResult<OutletId> {
    if model.outlet_fact(input)?.datum_type == f32::datum_type() {
        return Ok(input);
    }
    Ok(model.wire_node(
        format!("{prefix}.cast"),
        tract_onnx::tract_core::ops::cast::cast(f32::datum_type()),
        &[input],
    )?[0])
}

/// Every attribute `TreeEnsembleRegressor` (ai.onnx.ml 1 and 3) defines. Any other is refused:
/// an attribute we do not know could change the result.
const REGRESSOR_ATTRIBUTES: [&str; 21] = [
    "aggregate_function",
    "base_values",
    "base_values_as_tensor",
    "n_targets",
    "nodes_falsenodeids",
    "nodes_featureids",
    "nodes_hitrates",
    "nodes_hitrates_as_tensor",
    "nodes_missing_value_tracks_true",
    "nodes_modes",
    "nodes_nodeids",
    "nodes_treeids",
    "nodes_truenodeids",
    "nodes_values",
    "nodes_values_as_tensor",
    "post_transform",
    "target_ids",
    "target_nodeids",
    "target_treeids",
    "target_weights",
    "target_weights_as_tensor",
];

/// Builds `TreeEnsembleRegressor`. tract has no implementation to fall back to, so anything
/// this kernel does not compute exactly (a post transform, tensor-valued attributes, an unknown
/// attribute) is a load error rather than a different score.
fn regressor(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let op = FastTreeEnsembleRegressor {
        kernel: Arc::new(regressor_kernel(node)?),
    };
    Ok((expand(RegressorExpansion(op)), vec![]))
}

/// Parses and checks a `TreeEnsembleRegressor` node (see [`regressor`]).
fn regressor_kernel(node: &NodeProto) -> TractResult<RegressorKernel> {
    if let Some(unknown) = node
        .attribute
        .iter()
        .find(|a| !REGRESSOR_ATTRIBUTES.contains(&a.name.as_str()))
    {
        bail!(
            "TreeEnsembleRegressor: unknown attribute {:?}",
            unknown.name
        );
    }
    let post_transform = node
        .get_attr_opt::<&str>("post_transform")?
        .unwrap_or("NONE");
    ensure!(
        post_transform == "NONE",
        "TreeEnsembleRegressor: post_transform {post_transform:?} is not supported (only NONE)"
    );
    let aggregate = match node
        .get_attr_opt::<&str>("aggregate_function")?
        .unwrap_or("SUM")
    {
        "SUM" => Aggregate::Sum,
        "AVERAGE" => Aggregate::Average,
        "MIN" => Aggregate::Min,
        "MAX" => Aggregate::Max,
        other => bail!("TreeEnsembleRegressor: unknown aggregate_function {other:?}"),
    };
    let Some(n_targets) = node.get_attr_opt::<i64>("n_targets")? else {
        bail!("TreeEnsembleRegressor: n_targets is missing");
    };
    let n_targets = usize::try_from(n_targets)
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| {
            format_err!("TreeEnsembleRegressor: n_targets {n_targets} is not positive")
        })?;
    let raw = RawEnsemble::parse(node, "target")?;
    let ensemble = FlatEnsemble::build(&raw, n_targets)?;
    let base_values = node.get_attr_opt_vec::<f32>("base_values")?;
    if let Some(base) = &base_values {
        ensure!(
            base.len() == n_targets,
            "base_values has {} entries for {n_targets} targets",
            base.len()
        );
    }
    Ok(RegressorKernel::new(ensemble, aggregate, base_values))
}

/// Registers the fast tree-ensemble kernels and `LabelEncoder` in `register`, replacing tract's
/// own `TreeEnsembleClassifier`.
pub fn register(register: &mut OnnxOpRegister) {
    register.insert("TreeEnsembleClassifier", classifier);
    register.insert("TreeEnsembleRegressor", regressor);
    super::label_encoder::register(register);
}

/// tract's ONNX framework with the fast tree-ensemble kernels and `LabelEncoder` registered.
pub fn onnx() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    register(&mut onnx.op_register);
    onnx
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::AttributeProto;
    use tract_onnx::pb::attribute_proto::AttributeType;

    fn ints(name: &str, v: &[i64]) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: AttributeType::Ints as i32,
            ints: v.to_vec(),
            ..Default::default()
        }
    }

    fn floats(name: &str, v: &[f32]) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: AttributeType::Floats as i32,
            floats: v.to_vec(),
            ..Default::default()
        }
    }

    /// Two trees, node ids deliberately not in preorder. Tree 0:
    /// `5: x0 < 1 (NaN true)` → `7` leaf {c0: 1, c1: 0.5} | `2: x1 >= 0` → `9` leaf {c1: 2} |
    /// `0` leaf {c0: 3}. Tree 1 is a single leaf {c1: 10}.
    fn mixed_modes(true_of_2: i64) -> NodeProto {
        let strings = |v: &[&str]| AttributeProto {
            name: "nodes_modes".into(),
            r#type: AttributeType::Strings as i32,
            strings: v.iter().map(|s| s.as_bytes().to_vec()).collect(),
            ..Default::default()
        };
        NodeProto {
            op_type: "TreeEnsembleClassifier".into(),
            attribute: vec![
                ints("nodes_treeids", &[0, 0, 0, 0, 0, 1]),
                ints("nodes_nodeids", &[0, 2, 5, 7, 9, 0]),
                ints("nodes_featureids", &[0, 1, 0, 0, 0, 0]),
                floats("nodes_values", &[0.0, 0.0, 1.0, 0.0, 0.0, 0.0]),
                strings(&["LEAF", "BRANCH_GTE", "BRANCH_LT", "LEAF", "LEAF", "LEAF"]),
                ints("nodes_truenodeids", &[0, true_of_2, 7, 0, 0, 0]),
                ints("nodes_falsenodeids", &[0, 0, 2, 0, 0, 0]),
                ints("nodes_missing_value_tracks_true", &[0, 0, 1, 0, 0, 0]),
                ints("class_treeids", &[0, 0, 0, 0, 1]),
                ints("class_nodeids", &[7, 7, 9, 0, 0]),
                ints("class_ids", &[0, 1, 1, 0, 1]),
                floats("class_weights", &[1.0, 0.5, 2.0, 3.0, 10.0]),
                ints("classlabels_int64s", &[0, 1]),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn general_modes_missing_values_and_multi_class_leaves() {
        let node = mixed_modes(9);
        let raw = RawEnsemble::parse(&node, "class").expect("parse");
        let flat = FlatEnsemble::build(&raw, 2).expect("build");
        assert!(
            flat.modes.is_some(),
            "mixed modes must take the general path"
        );
        let rows = [0.5, 7.0, 1.0, 0.0, 2.0, -1.0, f32::NAN, 0.0];
        let mut out = vec![0.0; 8];
        flat.accumulate(&rows, 2, &mut out);
        assert_eq!(out, [1.0, 10.5, 0.0, 12.0, 3.0, 10.0, 1.0, 10.5]);
    }

    #[test]
    fn eight_lane_groups_and_the_tail_agree_with_single_rows() {
        let node = mixed_modes(9);
        let raw = RawEnsemble::parse(&node, "class").expect("parse");
        let flat = FlatEnsemble::build(&raw, 2).expect("build");
        let rows: Vec<f32> = (0..2 * 21).map(|i| ((i * 7) % 5) as f32 - 1.5).collect();
        let mut batch = vec![0.0; 2 * 21];
        flat.accumulate(&rows, 2, &mut batch);
        for r in 0..21 {
            let mut one = vec![0.0; 2];
            flat.accumulate(&rows[r * 2..r * 2 + 2], 2, &mut one);
            assert_eq!(one, batch[r * 2..r * 2 + 2], "row {r}");
        }
    }

    /// [`mixed_modes`] as a two-target regressor with `extra` attributes.
    fn regressor_node(extra: Vec<AttributeProto>) -> NodeProto {
        let mut node = mixed_modes(9);
        node.op_type = "TreeEnsembleRegressor".into();
        node.attribute.retain(|a| a.name != "classlabels_int64s");
        for a in &mut node.attribute {
            if let Some(rest) = a.name.strip_prefix("class_") {
                a.name = format!("target_{rest}");
            }
        }
        node.attribute.push(AttributeProto {
            name: "n_targets".into(),
            r#type: AttributeType::Int as i32,
            i: 2,
            ..Default::default()
        });
        node.attribute.extend(extra);
        node
    }

    fn string(name: &str, v: &str) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: AttributeType::String as i32,
            s: v.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn regressor_aggregates_as_onnx_defines_them() {
        // Per row, tree 0 gives {t0: 1, t1: 0.5} then {t1: 2}; tree 1 always {t1: 10}.
        let rows = [0.5, 7.0, 1.0, 0.0];
        let base = || floats("base_values", &[100.0, 200.0]);
        for (aggregate, expected) in [
            // Row 1 credits no t0 weight: onnxruntime gives it 0, base value not added.
            ("SUM", [101.0, 210.5, 0.0, 212.0]),
            ("AVERAGE", [100.5, 205.25, 0.0, 206.0]),
            ("MIN", [101.0, 200.5, 0.0, 202.0]),
            ("MAX", [101.0, 210.0, 0.0, 210.0]),
        ] {
            let node = regressor_node(vec![string("aggregate_function", aggregate), base()]);
            let kernel = regressor_kernel(&node).expect("valid regressor");
            assert_eq!(kernel.eval(&rows, 2, 2), expected, "{aggregate}");
        }
        let plain = regressor_kernel(&regressor_node(vec![])).expect("defaults");
        assert!(
            !plain.complete,
            "row 1 reaches no t0 weight: the second walk is needed"
        );
        assert_eq!(
            plain.eval(&rows, 2, 2),
            [1.0, 10.5, 0.0, 12.0],
            "SUM, no base"
        );
    }

    #[test]
    fn single_target_leaves_without_weights_count_as_zero() {
        // Tree 0's leaves 7 and 0 weigh 1 and 3, leaf 9 and tree 1 have no weight: as
        // onnxruntime computes them, those are values of 0 that MIN and MAX see.
        let mut node = regressor_node(vec![floats("base_values", &[100.0])]);
        node.attribute
            .retain(|a| !a.name.starts_with("target_") && a.name != "n_targets");
        node.attribute.extend([
            ints("target_treeids", &[0, 0]),
            ints("target_nodeids", &[7, 0]),
            ints("target_ids", &[0, 0]),
            floats("target_weights", &[1.0, 3.0]),
            AttributeProto {
                name: "n_targets".into(),
                r#type: AttributeType::Int as i32,
                i: 1,
                ..Default::default()
            },
        ]);
        let rows = [0.5, 7.0, 1.0, 0.0, 1.0, -1.0];
        for (aggregate, expected) in [
            ("SUM", [101.0, 100.0, 103.0]),
            ("AVERAGE", [100.5, 100.0, 101.5]),
            ("MIN", [100.0, 100.0, 100.0]),
            ("MAX", [101.0, 100.0, 103.0]),
        ] {
            let mut node = node.clone();
            node.attribute.push(string("aggregate_function", aggregate));
            let kernel = regressor_kernel(&node).expect("valid regressor");
            assert_eq!(kernel.eval(&rows, 3, 2), expected, "{aggregate}");
        }
    }

    #[test]
    fn regressor_refuses_what_it_does_not_compute() {
        for (extra, why) in [
            (string("post_transform", "LOGISTIC"), "post_transform"),
            (string("aggregate_function", "MEDIAN"), "aggregate_function"),
            (ints("nodes_unknown", &[1]), "unknown attribute"),
            (floats("base_values", &[1.0]), "base_values"),
        ] {
            let err = regressor_kernel(&regressor_node(vec![extra])).expect_err(why);
            assert!(err.to_string().contains(why), "{why}: {err}");
        }
        let mut node = regressor_node(vec![]);
        node.attribute.retain(|a| a.name != "n_targets");
        let err = regressor_kernel(&node).expect_err("no n_targets");
        assert!(err.to_string().contains("n_targets"), "{err}");
    }

    #[test]
    fn a_cycle_is_refused() {
        // Node 2's true child is its own parent, 5.
        let node = mixed_modes(5);
        let raw = RawEnsemble::parse(&node, "class").expect("parse");
        let err = FlatEnsemble::build(&raw, 2).expect_err("cycle");
        assert!(
            err.to_string().contains("root") || err.to_string().contains("twice"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_child_is_refused() {
        let node = mixed_modes(42);
        let raw = RawEnsemble::parse(&node, "class").expect("parse");
        let err = FlatEnsemble::build(&raw, 2).expect_err("missing node");
        assert!(err.to_string().contains("missing node 42"), "{err}");
    }
}
