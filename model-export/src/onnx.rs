//! ONNX export of an [`IsolationForest`], and the model directory the agents load.
//!
//! The trainer (elsewhere in this crate) grows a forest; this module writes it as a standard ONNX
//! graph that both onnxruntime and tract (the agent's `score` stage) run, and writes the model
//! directory (`model.onnx` + `manifest.json`) that `publish` ships.
//!
//! # The graph
//!
//! ```text
//! features f32[N, F]
//!   └─ ai.onnx.ml.TreeEnsembleClassifier   leaf weight = leaf path length (depth + c(n_leaf))
//!        ├─ label    i64[N]                 (unused)
//!        └─ probabilities f32[N, 2]         column 1 = Σ_trees path length
//!   └─ Slice(axis 1, [1, 2))                total path length f32[N, 1]
//!   └─ Mul(-ln 2 / (trees · c(ψ)))
//!   └─ Exp                                  score f32[N, 1] = 2^(-E[h(x)] / c(ψ))
//! ```
//!
//! A classifier rather than a regressor because tract 0.23 ships `TreeEnsembleClassifier` only.
//!
//! A [`ForestSet`] of several forests (the per-signal layout) is written as one regressor with a
//! target per forest, each forest's trees reading its own block of columns:
//!
//! ```text
//! features f32[N, F]
//!   └─ ai.onnx.ml.TreeEnsembleRegressor     target g = Σ path lengths of forest g's trees
//!        └─ path_sums f32[N, G]
//!   └─ Mul(-ln 2 / (trees_g · c(ψ_g)))       per forest
//!   └─ Exp                                  forest scores f32[N, G]
//!   └─ Sub(offset_g)                        each forest's excess over its ordinary level
//!   └─ Mul(scale_g)                         only when some member's scale is not 1
//!   └─ ReduceMax(axis 1, keepdims)          score f32[N, 1] = ForestSet::score
//! ```
//!
//! A set with a range guard (`selfheal_core::forest::RangeGuard`) ends, after either graph
//! above, in the guard: the forests' score is renamed `forest_score` and
//!
//! ```text
//! features f32[N, F]
//!   └─ Gather(axis 1, guarded columns)      each signal's value f32[N, S]
//!   └─ (v - high)·scale, (low - v)·scale    spans outside the training range, either side
//!   └─ Max(·, ·, 0), Min(MAX_EXCESS)        excess per signal, 0 inside the range, capped
//!   └─ ReduceMax(axis 1, keepdims) · weight range score f32[N, 1]
//! score = Add(forest_score, range score)   f32[N, 1] = ForestSet::score
//! ```
//!
//! tract has no regressor of its own; the agent registers its kernel for it, and onnxruntime
//! runs it natively. A set of one plain forest is written as the classifier graph above.
//! Every leaf credits class 0 and two class labels are declared: both runtimes then take the
//! ONNX "binary" layout, `[1 - s, s]`, so column 1 is the plain sum `s`.
//!
//! `score` is [`IsolationForest::score`]: in (0, 1], higher is more anomalous, about 0.5 is
//! ordinary. It is the *negation* of scikit-learn's `IsolationForest.score_samples` (which is
//! `-score`); no `Neg` node is written because the agent compares the positive score against the
//! manifest's threshold.

use prost::Message;
use selfheal_core::forest::{
    ForestError, ForestSet, ForestSetError, IsolationForest, Node, RangeGuard, average_path_length,
};
use selfheal_core::model::{MANIFEST_FILE, MODEL_FILE, ModelManifest};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tract_onnx::pb;

/// Name of the graph input: features, f32 `[N, n_features]`.
pub const INPUT_NAME: &str = "features";
/// Name of the graph output: anomaly score, f32 `[N, 1]`.
pub const OUTPUT_NAME: &str = "score";
/// Opset of the default ONNX domain (`Slice` with tensor inputs needs ≥ 10).
pub const ONNX_OPSET: i64 = 13;
/// Opset of the `ai.onnx.ml` domain.
pub const ONNX_ML_OPSET: i64 = 3;
/// ONNX IR version written (IR 8 goes with opset 13..=17; every onnxruntime since 1.10 reads it).
const IR_VERSION: i64 = 8;
/// Domain of the tree-ensemble operators.
const ML_DOMAIN: &str = "ai.onnx.ml";

/// Why a forest could not be exported.
#[derive(Debug, thiserror::Error)]
pub enum OnnxExportError {
    /// The forest fails [`IsolationForest::validate`].
    #[error("forest is not valid")]
    InvalidForest(#[source] ForestError),
    /// The forest set fails [`ForestSet::validate`].
    #[error("forest set is not valid")]
    InvalidSet(#[source] ForestSetError),
    /// A tree has more nodes than an ONNX node id (i64) or our kernels (u32) can address.
    #[error("tree {tree} has {nodes} nodes, more than a tree may have")]
    TreeTooLarge {
        /// Tree index.
        tree: usize,
        /// Its node count.
        nodes: usize,
    },
}

/// Why a model directory could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteModelError {
    /// The forest could not be exported.
    #[error("exporting the forest to ONNX")]
    Export(#[from] OnnxExportError),
    /// The manifest describes another feature vector than the forest scores.
    #[error(
        "manifest lists {manifest_features} features ({spec_features} from its feature spec), \
         the forest scores {forest_features}"
    )]
    FeatureCountMismatch {
        /// `manifest.feature_names.len()`.
        manifest_features: usize,
        /// `manifest.features.len()`.
        spec_features: usize,
        /// `forest.n_features`.
        forest_features: usize,
    },
    /// The manifest disagrees with the forest about its trees or sub-sample size.
    #[error(
        "manifest says {manifest_forests} forest(s) of {manifest_trees} trees and max_samples \
         {manifest_max_samples}, the model has {forests} of {forest_trees} and {forest_max_samples}"
    )]
    ForestMismatch {
        /// `manifest.forests`.
        manifest_forests: usize,
        /// Forests in the set.
        forests: usize,
        /// `manifest.n_trees`.
        manifest_trees: usize,
        /// `manifest.max_samples`.
        manifest_max_samples: usize,
        /// Trees in the forest.
        forest_trees: usize,
        /// `forest.max_samples`.
        forest_max_samples: usize,
    },
    /// The manifest could not be serialized.
    #[error("serializing the manifest")]
    Manifest(#[source] serde_json::Error),
    /// A file could not be written or renamed into place.
    #[error("writing {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Writes `forest` as a standard ONNX model (see the module docs for the graph) and returns the
/// serialized protobuf.
pub fn export_forest(forest: &IsolationForest) -> Result<Vec<u8>, OnnxExportError> {
    Ok(forest_proto(forest)?.encode_to_vec())
}

/// The classifier graph of one plain forest.
fn forest_proto(forest: &IsolationForest) -> Result<pb::ModelProto, OnnxExportError> {
    forest.validate().map_err(OnnxExportError::InvalidForest)?;
    let ensemble = tree_ensemble_node(forest)?;
    let graph = pb::GraphProto {
        name: "isolation_forest".into(),
        doc_string: "Isolation forest anomaly score 2^(-E[h(x)]/c(psi)); higher is more \
                     anomalous. scikit-learn's score_samples is -score."
            .into(),
        node: vec![
            ensemble,
            op(
                "total_path_length",
                "Slice",
                &["probabilities", "slice_starts", "slice_ends", "slice_axes"],
                "total_path_length",
            ),
            op(
                "exponent",
                "Mul",
                &["total_path_length", "path_factor"],
                "exponent",
            ),
            op("score", "Exp", &["exponent"], OUTPUT_NAME),
        ],
        initializer: vec![
            int64_tensor("slice_starts", &[1]),
            int64_tensor("slice_ends", &[2]),
            int64_tensor("slice_axes", &[1]),
            float_tensor("path_factor", vec![], vec![path_factor(forest) as f32]),
        ],
        input: vec![value_info(INPUT_NAME, forest.n_features as i64)],
        output: vec![value_info(OUTPUT_NAME, 1)],
        ..Default::default()
    };
    Ok(model_proto(
        graph,
        1,
        forest.trees.len(),
        forest.max_samples,
        forest.n_features,
    ))
}

/// The node tables shared by both tree-ensemble operators: one entry per forest node, in tree
/// order, node ids equal to the indices in [`selfheal_core::forest::Tree::nodes`]; each leaf
/// credits its path length to one target.
#[derive(Default)]
struct NodeTables {
    tree_ids: Vec<i64>,
    node_ids: Vec<i64>,
    feature_ids: Vec<i64>,
    values: Vec<f32>,
    modes: Vec<Vec<u8>>,
    true_ids: Vec<i64>,
    false_ids: Vec<i64>,
    leaf_tree_ids: Vec<i64>,
    leaf_node_ids: Vec<i64>,
    leaf_targets: Vec<i64>,
    leaf_weights: Vec<f32>,
    trees: usize,
}

impl NodeTables {
    /// Appends `forest`'s trees (numbered after those already added), its features shifted by
    /// `first_feature`, its leaves crediting `target`.
    fn add(
        &mut self,
        forest: &IsolationForest,
        first_feature: usize,
        target: i64,
    ) -> Result<(), OnnxExportError> {
        for tree in &forest.trees {
            let t = self.trees;
            if tree.nodes.len() > u32::MAX as usize {
                return Err(OnnxExportError::TreeTooLarge {
                    tree: t,
                    nodes: tree.nodes.len(),
                });
            }
            for (i, node) in tree.nodes.iter().enumerate() {
                self.tree_ids.push(t as i64);
                self.node_ids.push(i as i64);
                match *node {
                    Node::Split {
                        feature,
                        threshold,
                        left,
                        right,
                    } => {
                        self.feature_ids
                            .push(i64::from(feature) + first_feature as i64);
                        self.values.push(threshold);
                        self.modes.push(b"BRANCH_LEQ".to_vec());
                        self.true_ids.push(i64::from(left));
                        self.false_ids.push(i64::from(right));
                    }
                    Node::Leaf { path_length } => {
                        self.feature_ids.push(0);
                        self.values.push(0.0);
                        self.modes.push(b"LEAF".to_vec());
                        self.true_ids.push(0);
                        self.false_ids.push(0);
                        self.leaf_tree_ids.push(t as i64);
                        self.leaf_node_ids.push(i as i64);
                        self.leaf_targets.push(target);
                        self.leaf_weights.push(path_length as f32);
                    }
                }
            }
            self.trees += 1;
        }
        Ok(())
    }

    /// The `nodes_*` attributes.
    fn node_attributes(&mut self) -> Vec<pb::AttributeProto> {
        vec![
            ints_attr("nodes_treeids", std::mem::take(&mut self.tree_ids)),
            ints_attr("nodes_nodeids", std::mem::take(&mut self.node_ids)),
            ints_attr("nodes_featureids", std::mem::take(&mut self.feature_ids)),
            floats_attr("nodes_values", std::mem::take(&mut self.values)),
            strings_attr("nodes_modes", std::mem::take(&mut self.modes)),
            ints_attr("nodes_truenodeids", std::mem::take(&mut self.true_ids)),
            ints_attr("nodes_falsenodeids", std::mem::take(&mut self.false_ids)),
        ]
    }

    /// The leaf attributes, `<prefix>_treeids`, `_nodeids`, `_ids` and `_weights` (`class` for
    /// the classifier, `target` for the regressor).
    fn leaf_attributes(&mut self, prefix: &str) -> Vec<pb::AttributeProto> {
        vec![
            ints_attr(
                &format!("{prefix}_treeids"),
                std::mem::take(&mut self.leaf_tree_ids),
            ),
            ints_attr(
                &format!("{prefix}_nodeids"),
                std::mem::take(&mut self.leaf_node_ids),
            ),
            ints_attr(
                &format!("{prefix}_ids"),
                std::mem::take(&mut self.leaf_targets),
            ),
            floats_attr(
                &format!("{prefix}_weights"),
                std::mem::take(&mut self.leaf_weights),
            ),
        ]
    }
}

/// The `TreeEnsembleClassifier` node of a single forest.
fn tree_ensemble_node(forest: &IsolationForest) -> Result<pb::NodeProto, OnnxExportError> {
    let mut tables = NodeTables::default();
    tables.add(forest, 0, 0)?;
    let mut attribute = vec![ints_attr("classlabels_int64s", vec![0, 1])];
    attribute.extend(tables.node_attributes());
    attribute.extend(tables.leaf_attributes("class"));
    attribute.push(string_attr("post_transform", b"NONE"));
    Ok(pb::NodeProto {
        name: "path_lengths".into(),
        op_type: "TreeEnsembleClassifier".into(),
        domain: ML_DOMAIN.into(),
        input: vec![INPUT_NAME.into()],
        output: vec!["label".into(), "probabilities".into()],
        attribute,
        ..Default::default()
    })
}

/// `-ln 2 / (trees · c(ψ))`: the factor turning a forest's summed path length into the exponent
/// of its score. With ψ ≤ 1 every path is 0 and the reference scores 1.0: a factor of 0 gives
/// exp(0) = 1 without dividing by zero.
fn path_factor(forest: &IsolationForest) -> f64 {
    let c = average_path_length(forest.max_samples as f64);
    if c == 0.0 {
        0.0
    } else {
        -std::f64::consts::LN_2 / (forest.trees.len() as f64 * c)
    }
}

fn float_tensor(name: &str, dims: Vec<i64>, values: Vec<f32>) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        data_type: pb::tensor_proto::DataType::Float as i32,
        dims,
        float_data: values,
        ..Default::default()
    }
}

fn op(name: &str, op_type: &str, input: &[&str], output: &str) -> pb::NodeProto {
    pb::NodeProto {
        name: name.into(),
        op_type: op_type.into(),
        input: input.iter().map(|&i| i.into()).collect(),
        output: vec![output.into()],
        ..Default::default()
    }
}

/// The `ModelProto` around `graph`, with both opsets and the forest's shape as metadata.
fn model_proto(
    graph: pb::GraphProto,
    forests: usize,
    trees: usize,
    max_samples: usize,
    n_features: usize,
) -> pb::ModelProto {
    let mut metadata_props = vec![
        metadata("n_trees", trees.to_string()),
        metadata("max_samples", max_samples.to_string()),
        metadata("n_features", n_features.to_string()),
    ];
    if forests != 1 {
        metadata_props.push(metadata("forests", forests.to_string()));
    }
    pb::ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![
            pb::OperatorSetIdProto {
                domain: String::new(),
                version: ONNX_OPSET,
            },
            pb::OperatorSetIdProto {
                domain: ML_DOMAIN.into(),
                version: ONNX_ML_OPSET,
            },
        ],
        producer_name: "selfheal".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph),
        metadata_props,
        ..Default::default()
    }
}

/// Writes `set` as a standard ONNX model and returns the serialized protobuf: the classifier
/// graph for a plain forest ([`ForestSet::as_single`]), else the regressor graph of the module
/// docs; followed by the range guard's nodes when the set has one. The output is
/// [`ForestSet::score`].
pub fn export_set(set: &ForestSet) -> Result<Vec<u8>, OnnxExportError> {
    set.validate().map_err(OnnxExportError::InvalidSet)?;
    let mut model = match set.as_single() {
        Some(forest) => forest_proto(forest)?,
        None => set_proto(set)?,
    };
    if let (Some(guard), Some(graph)) = (&set.range, model.graph.as_mut()) {
        append_range_guard(graph, guard);
    }
    Ok(model.encode_to_vec())
}

/// Appends the [`RangeGuard`] to a graph whose last node writes [`OUTPUT_NAME`]: that node now
/// writes `forest_score`, and the graph's output becomes it plus the guard's score (see the
/// module docs).
fn append_range_guard(graph: &mut pb::GraphProto, guard: &RangeGuard) {
    const FOREST_SCORE: &str = "forest_score";
    for node in &mut graph.node {
        if node.output.iter().any(|o| o == OUTPUT_NAME) {
            // Node and output names must stay unique: the guard's last node is `score`.
            node.name = FOREST_SCORE.into();
            node.output = vec![FOREST_SCORE.into()];
        }
    }
    let s = guard.bounds.len() as i64;
    let columns: Vec<i64> = guard.bounds.iter().map(|b| b.column as i64).collect();
    let mut gather = op(
        "guarded_values",
        "Gather",
        &[INPUT_NAME, "guard_columns"],
        "guarded_values",
    );
    gather.attribute = vec![int_attr("axis", 1)];
    let mut reduce = op(
        "range_excess",
        "ReduceMax",
        &["capped_excess"],
        "range_excess",
    );
    reduce.attribute = vec![ints_attr("axes", vec![1]), int_attr("keepdims", 1)];
    graph.node.extend([
        gather,
        op(
            "over_high",
            "Sub",
            &["guarded_values", "guard_high"],
            "over_high",
        ),
        op(
            "above_range",
            "Mul",
            &["over_high", "guard_scale"],
            "above_range",
        ),
        op(
            "under_low",
            "Sub",
            &["guard_low", "guarded_values"],
            "under_low",
        ),
        op(
            "below_range",
            "Mul",
            &["under_low", "guard_scale"],
            "below_range",
        ),
        pb::NodeProto {
            name: "outside".into(),
            op_type: "Max".into(),
            input: vec![
                "above_range".into(),
                "below_range".into(),
                "guard_zero".into(),
            ],
            output: vec!["outside".into()],
            ..Default::default()
        },
        op(
            "capped_excess",
            "Min",
            &["outside", "guard_cap"],
            "capped_excess",
        ),
        reduce,
        op(
            "range_score",
            "Mul",
            &["range_excess", "guard_weight"],
            "range_score",
        ),
        op("score", "Add", &[FOREST_SCORE, "range_score"], OUTPUT_NAME),
    ]);
    let per_bound = |f: fn(&selfheal_core::forest::Bound) -> f32| {
        guard.bounds.iter().map(f).collect::<Vec<f32>>()
    };
    graph.initializer.extend([
        int64_tensor("guard_columns", &columns),
        float_tensor("guard_low", vec![s], per_bound(|b| b.low)),
        float_tensor("guard_high", vec![s], per_bound(|b| b.high)),
        float_tensor("guard_scale", vec![s], per_bound(|b| b.scale)),
        float_tensor("guard_zero", vec![], vec![0.0]),
        float_tensor("guard_cap", vec![], vec![RangeGuard::MAX_EXCESS]),
        float_tensor("guard_weight", vec![], vec![guard.weight]),
    ]);
    graph.doc_string.push_str(
        " Plus the range guard: weight x spans by which a signal's value lies outside its \
         training range (capped).",
    );
}

/// The regressor graph of a set of several forests (module docs).
fn set_proto(set: &ForestSet) -> Result<pb::ModelProto, OnnxExportError> {
    let g = set.members.len();
    let mut tables = NodeTables::default();
    for (i, m) in set.members.iter().enumerate() {
        tables.add(&m.forest, m.first_feature, i as i64)?;
    }
    let mut attribute = vec![int_attr("n_targets", g as i64)];
    attribute.extend(tables.node_attributes());
    attribute.extend(tables.leaf_attributes("target"));
    attribute.extend([
        string_attr("aggregate_function", b"SUM"),
        string_attr("post_transform", b"NONE"),
    ]);
    let ensemble = pb::NodeProto {
        name: "path_sums".into(),
        op_type: "TreeEnsembleRegressor".into(),
        domain: ML_DOMAIN.into(),
        input: vec![INPUT_NAME.into()],
        output: vec!["path_sums".into()],
        attribute,
        ..Default::default()
    };
    let factors = set
        .members
        .iter()
        .map(|m| path_factor(&m.forest) as f32)
        .collect();
    let offsets = set.members.iter().map(|m| m.offset as f32).collect();
    // A unit scale everywhere writes the graph as it was before scales existed (same bytes).
    let scaled = set.members.iter().any(|m| m.scale != 1.0);
    let reduced = if scaled { "scaled_excess" } else { "excess" };
    let mut reduce = op("score", "ReduceMax", &[reduced], OUTPUT_NAME);
    reduce.attribute = vec![ints_attr("axes", vec![1]), int_attr("keepdims", 1)];
    let mut node = vec![
        ensemble,
        op(
            "exponents",
            "Mul",
            &["path_sums", "path_factors"],
            "exponents",
        ),
        op("forest_scores", "Exp", &["exponents"], "forest_scores"),
        op("excess", "Sub", &["forest_scores", "offsets"], "excess"),
    ];
    let mut initializer = vec![
        float_tensor("path_factors", vec![g as i64], factors),
        float_tensor("offsets", vec![g as i64], offsets),
    ];
    if scaled {
        node.push(op(
            "scaled_excess",
            "Mul",
            &["excess", "scales"],
            "scaled_excess",
        ));
        initializer.push(float_tensor(
            "scales",
            vec![g as i64],
            set.members.iter().map(|m| m.scale as f32).collect(),
        ));
    }
    node.push(reduce);
    let graph = pb::GraphProto {
        name: "isolation_forest_set".into(),
        doc_string: "Largest excess of one of several isolation forests' scores \
                     2^(-E[h(x)]/c(psi)) over that forest's offset; higher is more anomalous."
            .into(),
        node,
        initializer,
        input: vec![value_info(INPUT_NAME, set.n_features as i64)],
        output: vec![value_info(OUTPUT_NAME, 1)],
        ..Default::default()
    };
    let first = &set.members[0].forest;
    Ok(model_proto(
        graph,
        g,
        first.trees.len(),
        first.max_samples,
        set.n_features,
    ))
}

fn int_attr(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

fn ints_attr(name: &str, ints: Vec<i64>) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints,
        ..Default::default()
    }
}

fn floats_attr(name: &str, floats: Vec<f32>) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Floats as i32,
        floats,
        ..Default::default()
    }
}

fn strings_attr(name: &str, strings: Vec<Vec<u8>>) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Strings as i32,
        strings,
        ..Default::default()
    }
}

fn string_attr(name: &str, s: &[u8]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::String as i32,
        s: s.to_vec(),
        ..Default::default()
    }
}

fn int64_tensor(name: &str, values: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        data_type: pb::tensor_proto::DataType::Int64 as i32,
        dims: vec![values.len() as i64],
        int64_data: values.to_vec(),
        ..Default::default()
    }
}

/// A float32 `[N, width]` value with a symbolic batch dimension.
fn value_info(name: &str, width: i64) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension::Value};
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: Some(pb::TensorShapeProto {
                    dim: vec![
                        Dimension {
                            value: Some(Value::DimParam("N".into())),
                            ..Default::default()
                        },
                        Dimension {
                            value: Some(Value::DimValue(width)),
                            ..Default::default()
                        },
                    ],
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn metadata(key: &str, value: String) -> pb::StringStringEntryProto {
    pb::StringStringEntryProto {
        key: key.into(),
        value,
    }
}

/// Lower-case hex sha256 of `bytes`, as [`ModelManifest::model_sha256`] holds it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes the model directory `dir` (created if missing): `model.onnx`, then `manifest.json`
/// with `model_sha256` filled in. Returns the manifest as written.
///
/// `manifest.model_sha256` is ignored and replaced. Each file is written to a temporary file in
/// `dir`, synced, then renamed over its final name, and the manifest goes last: an agent that
/// watches `dir` never sees a manifest whose checksum names a half-written model (it may see a new
/// model with the old manifest, which fails the checksum and is refused until the manifest lands).
pub fn write_model_dir(
    dir: &Path,
    forest: &IsolationForest,
    manifest: ModelManifest,
) -> Result<ModelManifest, WriteModelError> {
    write_set_dir(dir, &ForestSet::single(forest.clone()), manifest)
}

/// [`write_model_dir`] for a [`ForestSet`]: the manifest's `forests` must be the set's members
/// and its `n_trees` and `max_samples` those of every member.
pub fn write_set_dir(
    dir: &Path,
    set: &ForestSet,
    mut manifest: ModelManifest,
) -> Result<ModelManifest, WriteModelError> {
    if manifest.feature_names.len() != set.n_features || manifest.features.len() != set.n_features {
        return Err(WriteModelError::FeatureCountMismatch {
            manifest_features: manifest.feature_names.len(),
            spec_features: manifest.features.len(),
            forest_features: set.n_features,
        });
    }
    let mismatch = set.members.iter().find(|m| {
        m.forest.trees.len() != manifest.n_trees || m.forest.max_samples != manifest.max_samples
    });
    if manifest.forests != set.members.len() || mismatch.is_some() {
        let m = mismatch.or(set.members.first());
        return Err(WriteModelError::ForestMismatch {
            manifest_forests: manifest.forests,
            forests: set.members.len(),
            manifest_trees: manifest.n_trees,
            manifest_max_samples: manifest.max_samples,
            forest_trees: m.map_or(0, |m| m.forest.trees.len()),
            forest_max_samples: m.map_or(0, |m| m.forest.max_samples),
        });
    }
    let model = export_set(set)?;
    manifest.model_sha256 = sha256_hex(&model);
    let mut json = serde_json::to_vec_pretty(&manifest).map_err(WriteModelError::Manifest)?;
    json.push(b'\n');

    std::fs::create_dir_all(dir).map_err(|source| WriteModelError::Io {
        path: dir.to_owned(),
        source,
    })?;
    write_atomically(&dir.join(MODEL_FILE), &model)?;
    write_atomically(&dir.join(MANIFEST_FILE), &json)?;
    Ok(manifest)
}

/// Writes `bytes` to `path` durably (`selfheal_runtime::atomic`: the file and its directory are
/// fsynced, so a trainer's host losing power never leaves a renamed but empty model).
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), WriteModelError> {
    selfheal_runtime::atomic::write(path, bytes).map_err(|e| WriteModelError::Io {
        path: e.path,
        source: e.source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfheal_core::features::FeatureSpec;
    use selfheal_core::forest::Tree;
    use selfheal_core::model::AlarmRule;

    fn stump() -> IsolationForest {
        IsolationForest {
            n_features: 2,
            max_samples: 256,
            trees: vec![Tree {
                nodes: vec![
                    Node::Split {
                        feature: 1,
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

    fn manifest(spec: FeatureSpec, forest: &IsolationForest) -> ModelManifest {
        ModelManifest {
            family: "cpu".into(),
            version: "1".into(),
            feature_names: spec.names(),
            features: spec,
            threshold: 0.6,
            alarm: AlarmRule::default(),
            ordinary_score: None,
            spike_threshold: None,
            n_trees: forest.trees.len(),
            forests: 1,
            max_samples: forest.max_samples,
            seed: 7,
            training_data_sha256: sha256_hex(b""),
            created_at: "2026-01-01T00:00:00Z".into(),
            model_sha256: String::new(),
        }
    }

    #[test]
    fn export_is_a_decodable_model_with_the_documented_graph() {
        let bytes = export_forest(&stump()).expect("valid forest");
        let model = pb::ModelProto::decode(bytes.as_slice()).expect("decodes");
        let graph = model.graph.expect("graph");
        let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["TreeEnsembleClassifier", "Slice", "Mul", "Exp"]);
        assert_eq!(graph.input[0].name, INPUT_NAME);
        assert_eq!(graph.output[0].name, OUTPUT_NAME);
        let weights = graph.node[0]
            .attribute
            .iter()
            .find(|a| a.name == "class_weights")
            .expect("class_weights");
        assert_eq!(weights.floats.len(), 2);
    }

    #[test]
    fn a_forest_set_exports_one_regressor_with_offsets_and_a_maximum() {
        // The stump over one column: its split reads feature 0.
        let mut one = stump();
        one.n_features = 1;
        if let Node::Split { feature, .. } = &mut one.trees[0].nodes[0] {
            *feature = 0;
        }
        let member = |first_feature, offset| selfheal_core::forest::Member {
            first_feature,
            offset,
            scale: 1.0,
            forest: one.clone(),
        };
        let mut set = ForestSet {
            n_features: 2,
            members: vec![member(0, 0.5), member(1, 0.6)],
            range: None,
        };
        let bytes = export_set(&set).expect("valid set");
        let graph = pb::ModelProto::decode(bytes.as_slice())
            .expect("decodes")
            .graph
            .expect("graph");
        let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(
            ops,
            ["TreeEnsembleRegressor", "Mul", "Exp", "Sub", "ReduceMax"]
        );
        let attr = |name: &str| {
            graph.node[0]
                .attribute
                .iter()
                .find(|a| a.name == name)
                .unwrap_or_else(|| panic!("{name}"))
                .clone()
        };
        assert_eq!(attr("n_targets").i, 2);
        assert_eq!(
            attr("target_ids").ints,
            [0, 0, 1, 1],
            "each forest's leaves credit its target"
        );
        assert_eq!(
            attr("nodes_treeids").ints,
            [0, 0, 0, 1, 1, 1],
            "trees numbered across forests"
        );
        // The second forest reads column 1: its split's feature id is shifted.
        assert_eq!(attr("nodes_featureids").ints, [0, 0, 0, 1, 0, 0]);
        assert_eq!(attr("aggregate_function").s, b"SUM");
        let offsets = graph
            .initializer
            .iter()
            .find(|t| t.name == "offsets")
            .expect("offsets");
        assert_eq!(offsets.float_data, [0.5, 0.6]);
        // Scales other than 1 add one Mul after the offsets.
        let mut scaled = set.clone();
        scaled.members[1].scale = 2.5;
        let graph = pb::ModelProto::decode(export_set(&scaled).expect("valid").as_slice())
            .expect("decodes")
            .graph
            .expect("graph");
        let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(
            ops,
            [
                "TreeEnsembleRegressor",
                "Mul",
                "Exp",
                "Sub",
                "Mul",
                "ReduceMax"
            ]
        );
        let scales = graph
            .initializer
            .iter()
            .find(|t| t.name == "scales")
            .expect("scales");
        assert_eq!(scales.float_data, [1.0, 2.5]);
        // A set of one plain forest is the classifier graph; a bad set is refused.
        let single = ForestSet::single(stump());
        assert_eq!(
            export_set(&single).expect("valid"),
            export_forest(&stump()).expect("valid")
        );
        // A range guard follows either graph and writes the output.
        let guard = RangeGuard {
            weight: 0.3,
            bounds: RangeGuard::bound(1, [0.0, 2.0]).into_iter().collect(),
        };
        for (guarded, forest_ops) in [
            (set.clone().with_range(guard.clone()), 5),
            (single.with_range(guard), 4),
        ] {
            let graph = pb::ModelProto::decode(export_set(&guarded).expect("valid").as_slice())
                .expect("decodes")
                .graph
                .expect("graph");
            let ops: Vec<&str> = graph.node[forest_ops..]
                .iter()
                .map(|n| n.op_type.as_str())
                .collect();
            assert_eq!(
                ops,
                [
                    "Gather",
                    "Sub",
                    "Mul",
                    "Sub",
                    "Mul",
                    "Max",
                    "Min",
                    "ReduceMax",
                    "Mul",
                    "Add"
                ]
            );
            let writers: Vec<&pb::NodeProto> = graph
                .node
                .iter()
                .filter(|n| n.output.iter().any(|o| o == OUTPUT_NAME))
                .collect();
            assert_eq!(writers.len(), 1, "one node writes the output");
            assert_eq!(writers[0].input, ["forest_score", "range_score"]);
            let mut names: Vec<&str> = graph.node.iter().map(|n| n.name.as_str()).collect();
            names.sort_unstable();
            let n = names.len();
            names.dedup();
            assert_eq!(names.len(), n, "node names are unique");
        }
        set.members[1].first_feature = 2;
        assert!(matches!(
            export_set(&set),
            Err(OnnxExportError::InvalidSet(_))
        ));
    }

    #[test]
    fn invalid_forest_is_refused() {
        let mut f = stump();
        f.n_features = 1;
        assert!(matches!(
            export_forest(&f),
            Err(OnnxExportError::InvalidForest(
                ForestError::FeatureOutOfRange { .. }
            ))
        ));
    }

    #[test]
    fn model_dir_manifest_names_the_model_checksum() {
        let dir = tempfile::tempdir().expect("temp dir");
        let forest = stump();
        let spec = FeatureSpec {
            value: true,
            delta: true,
            windows: vec![],
            ..FeatureSpec::standard(vec!["cpu".into()])
        };
        let written = write_model_dir(dir.path(), &forest, manifest(spec, &forest))
            .expect("model dir written");
        let model = std::fs::read(dir.path().join(MODEL_FILE)).expect("model.onnx");
        assert_eq!(written.model_sha256, sha256_hex(&model));
        let json = std::fs::read(dir.path().join(MANIFEST_FILE)).expect("manifest.json");
        let read: ModelManifest = serde_json::from_slice(&json).expect("manifest parses");
        assert_eq!(read, written);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    }

    #[test]
    fn model_dir_refuses_a_manifest_for_other_features() {
        let dir = tempfile::tempdir().expect("temp dir");
        let forest = stump();
        let m = manifest(FeatureSpec::standard(vec!["cpu".into()]), &forest);
        assert!(matches!(
            write_model_dir(dir.path(), &forest, m),
            Err(WriteModelError::FeatureCountMismatch { .. })
        ));
        assert!(!dir.path().join(MODEL_FILE).exists());
    }
}
