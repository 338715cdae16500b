//! The flattened tree ensemble both operators evaluate: parsing the standard attributes into
//! one array of 16-byte records per ensemble, checking them, and the batch-major walk (see the
//! parent module for the layout).

use selfheal_core::model_bounds::{MAX_GRAPH_TREE_NODES, MAX_TARGETS, MAX_TREE_DEPTH};
use std::collections::HashMap;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

/// Marks a record that is a branch in [`FlatEnsemble::leaf_of`].
pub(super) const NOT_LEAF: u32 = u32::MAX;
/// Rows walked together through one tree (keeps a block's accumulators in L1).
pub(super) const ROW_BLOCK: usize = 64;
/// Rows walking one tree side by side: independent load chains the CPU overlaps.
pub(super) const LANES: usize = 8;
/// Trees one row walks side by side when it has no other rows to share a tree with.
pub(super) const TREE_LANES: usize = 16;

/// How a branch compares `x[feature]` with its threshold to choose its *true* child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
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
pub(super) struct Record {
    feature: u32,
    threshold: f32,
    children: [u32; 2],
}

/// Record behaviour beyond `x <= threshold, NaN goes false`; absent when every branch is plain.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct BranchModes {
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
    pub(super) modes: Option<BranchModes>,
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
pub(super) type Pending = (usize, u32, Option<(usize, usize)>);

/// The standard node and leaf attributes, named after the operator's prefix (`class_` or
/// `target_`).
pub(super) struct RawEnsemble<'a> {
    pub(super) tree_ids: &'a [i64],
    pub(super) node_ids: &'a [i64],
    pub(super) feature_ids: &'a [i64],
    pub(super) values: Vec<f32>,
    pub(super) modes: Vec<Option<Mode>>,
    pub(super) true_ids: &'a [i64],
    pub(super) false_ids: &'a [i64],
    pub(super) nan_true: Vec<bool>,
    pub(super) leaf_tree_ids: &'a [i64],
    pub(super) leaf_node_ids: &'a [i64],
    pub(super) leaf_targets: &'a [i64],
    pub(super) leaf_weights: Vec<f32>,
}

impl<'a> RawEnsemble<'a> {
    pub(super) fn parse(node: &'a NodeProto, leaf_prefix: &str) -> TractResult<Self> {
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
        // The counts first, from the slices the protobuf already holds: nothing below is
        // sized by a node or leaf count over its bound.
        let n = node.get_attr_slice::<i64>("nodes_treeids")?.len();
        ensure!(
            n <= MAX_GRAPH_TREE_NODES,
            "tree ensemble has {n} nodes, more than {MAX_GRAPH_TREE_NODES}"
        );
        let l = node
            .get_attr_slice::<i64>(&format!("{leaf_prefix}_treeids"))?
            .len();
        ensure!(
            l <= MAX_GRAPH_TREE_NODES,
            "tree ensemble has {l} leaf weights, more than {MAX_GRAPH_TREE_NODES}"
        );
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
pub(super) struct Contributions {
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
    pub(super) fn build(raw: &RawEnsemble<'_>, n_targets: usize) -> TractResult<FlatEnsemble> {
        // Every row's sums are `n_targets` wide and `every_row_credits_every_target` keeps two
        // per-target arrays: bounded before either is allocated.
        ensure!(
            (1..=MAX_TARGETS).contains(&n_targets),
            "tree ensemble has {n_targets} targets, not 1..={MAX_TARGETS}"
        );
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
            ensure!(
                depth <= MAX_TREE_DEPTH,
                "tree {} is deeper than {MAX_TREE_DEPTH} levels",
                raw.tree_ids[i]
            );
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
    pub(super) fn one_weight_per_leaf(&mut self) {
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
    pub(super) fn every_row_credits_every_target(&self) -> bool {
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
