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
//!
//! Files: `flat` the layout and the walk, `classifier` and `regressor` the two operators.

mod classifier;
mod flat;
#[cfg(test)]
mod fuzz;
mod regressor;

pub use classifier::FastTreeEnsembleClassifier;
pub use flat::FlatEnsemble;
pub use regressor::FastTreeEnsembleRegressor;

use tract_onnx::model::OnnxOpRegister;
use tract_onnx::tract_hir::internal::*;

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

/// Registers the fast tree-ensemble kernels and `LabelEncoder` in `register`, replacing tract's
/// own `TreeEnsembleClassifier`.
pub fn register(register: &mut OnnxOpRegister) {
    register.insert("TreeEnsembleClassifier", classifier::classifier);
    register.insert("TreeEnsembleRegressor", regressor::regressor);
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
    use super::flat::RawEnsemble;
    use super::regressor::regressor_kernel;
    use super::*;
    use tract_onnx::pb::AttributeProto;
    use tract_onnx::pb::NodeProto;
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
