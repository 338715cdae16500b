//! `TreeEnsembleClassifier`: the kernel, its tract op, and the builder that falls back to
//! tract's own implementation for what the kernel does not compute.

use super::flat::{FlatEnsemble, RawEnsemble};
use super::{cast_to_f32, check_input_fact, input_rows};
use selfheal_core::model_bounds::{MAX_GRAPH_TREE_NODES, MAX_TARGETS};
use std::sync::{Arc, OnceLock};
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

/// What the classifier applies to the summed scores, as ONNX `post_transform` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PostTransform {
    None,
    Logistic,
    Softmax,
}

/// The evaluation of `TreeEnsembleClassifier`, behind an `Arc` so tract can clone the op freely.
#[derive(Debug)]
pub(super) struct ClassifierKernel {
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
    pub(super) fn output_width(&self) -> usize {
        if self.binary_layout {
            2
        } else {
            self.class_labels.len()
        }
    }

    /// Labels and scores for `n_rows` rows of `width` features.
    pub(super) fn eval(&self, rows: &[f32], n_rows: usize, width: usize) -> (Vec<i64>, Vec<f32>) {
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
pub(super) struct ClassifierExpansion(FastTreeEnsembleClassifier);

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
pub(super) fn builtin_classifier() -> Option<OpBuilder> {
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
pub(super) type OpBuilder =
    fn(&ParsingContext, &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

pub(super) fn parse_post_transform(node: &NodeProto) -> TractResult<Option<PostTransform>> {
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

pub(super) fn classifier(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let labels = node.get_attr_opt_slice::<i64>("classlabels_int64s")?;
    let post_transform = parse_post_transform(node)?;
    let (Some(labels), Some(post_transform)) = (labels, post_transform) else {
        // String labels or an exotic transform: tract's own kernel handles them, slowly, after
        // the same bounds on what it sizes as ours.
        let nodes = node
            .get_attr_opt_slice::<i64>("nodes_treeids")?
            .map_or(0, <[i64]>::len);
        let classes = node
            .attribute
            .iter()
            .find(|a| a.name == "classlabels_strings")
            .map_or(0, |a| a.strings.len());
        ensure!(
            nodes <= MAX_GRAPH_TREE_NODES && classes <= MAX_TARGETS,
            "TreeEnsembleClassifier: {nodes} nodes and {classes} classes exceed the bounds \
             ({MAX_GRAPH_TREE_NODES}, {MAX_TARGETS})"
        );
        let Some(builtin) = builtin_classifier() else {
            bail!("TreeEnsembleClassifier: unsupported attributes and no fallback");
        };
        return builtin(ctx, node);
    };
    ensure!(
        (1..=MAX_TARGETS).contains(&labels.len()),
        "classlabels_int64s has {} labels, not 1..={MAX_TARGETS}",
        labels.len()
    );
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
