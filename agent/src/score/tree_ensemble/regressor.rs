//! `TreeEnsembleRegressor` (tract has none): the kernel, its tract op and its builder.

use super::flat::{FlatEnsemble, RawEnsemble};
use super::{cast_to_f32, check_input_fact, input_rows};
use selfheal_core::model_bounds::MAX_TARGETS;
use std::sync::Arc;
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

/// How `TreeEnsembleRegressor` folds the leaf weights of all trees into one value per target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Aggregate {
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
pub(super) struct RegressorKernel {
    ensemble: FlatEnsemble,
    aggregate: Aggregate,
    base_values: Option<Vec<f32>>,
    /// Every row gets a weight for every target, so no second walk is needed to find the
    /// targets a row never reached.
    pub(super) complete: bool,
}

impl RegressorKernel {
    pub(super) fn new(
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

    /// The flattened ensemble.
    #[cfg(test)]
    pub(super) fn ensemble(&self) -> &FlatEnsemble {
        &self.ensemble
    }

    /// The `n_rows × n_targets` values for `n_rows` rows of `width` features.
    pub(super) fn eval(&self, rows: &[f32], n_rows: usize, width: usize) -> Vec<f32> {
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
pub(super) struct RegressorExpansion(FastTreeEnsembleRegressor);

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

/// Every attribute `TreeEnsembleRegressor` (ai.onnx.ml 1 and 3) defines. Any other is refused:
/// an attribute we do not know could change the result.
pub(super) const REGRESSOR_ATTRIBUTES: [&str; 21] = [
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
pub(super) fn regressor(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let op = FastTreeEnsembleRegressor {
        kernel: Arc::new(regressor_kernel(node)?),
    };
    Ok((expand(RegressorExpansion(op)), vec![]))
}

/// Parses and checks a `TreeEnsembleRegressor` node (see [`regressor`]).
pub(super) fn regressor_kernel(node: &NodeProto) -> TractResult<RegressorKernel> {
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
    // Every row's output is `n_targets` wide: bounded before anything is sized by it.
    let n_targets = usize::try_from(n_targets)
        .ok()
        .filter(|n| (1..=MAX_TARGETS).contains(n))
        .ok_or_else(|| {
            format_err!("TreeEnsembleRegressor: n_targets {n_targets} is not in 1..={MAX_TARGETS}")
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
