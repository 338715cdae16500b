//! The ONNX `ai.onnx.ml` `LabelEncoder` operator, which tract 0.23 lacks, registered in tract.
//!
//! scikit-learn's stock IsolationForest export (skl2onnx) turns each tree's leaf id, an int64,
//! into that leaf's sample count and depth with two `LabelEncoder`s; with
//! [`super::tree_ensemble`]'s `TreeEnsembleRegressor` this lets that file load unchanged. Only
//! the numeric mapping it uses is implemented: `keys_int64s` to `values_floats` or
//! `values_int64s`, with `default_float` / `default_int64` for keys not listed. Any other key or
//! value type (strings, floats as keys, tensor-valued attributes) is a load error, never a
//! silently different mapping.

use std::collections::HashMap;
use std::sync::Arc;
use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

/// The values keys map to, one per key, and the value of any other key.
#[derive(Debug, Clone, PartialEq)]
enum Values {
    F32 { values: Vec<f32>, default: f32 },
    I64 { values: Vec<i64>, default: i64 },
}

/// A parsed mapping: key to its index in [`Values`].
#[derive(Debug)]
struct Mapping {
    index: HashMap<i64, usize>,
    values: Values,
}

impl Mapping {
    fn datum_type(&self) -> DatumType {
        match self.values {
            Values::F32 { .. } => f32::datum_type(),
            Values::I64 { .. } => i64::datum_type(),
        }
    }

    /// Maps every key of `keys` (any shape) to a tensor of the same shape.
    fn map(&self, keys: &Tensor) -> TractResult<Tensor> {
        let view = keys.to_plain_array_view::<i64>()?;
        let at = |k: &i64| self.index.get(k).copied();
        Ok(match &self.values {
            Values::F32 { values, default } => view
                .map(|k| at(k).map_or(*default, |i| values[i]))
                .into_tensor(),
            Values::I64 { values, default } => view
                .map(|k| at(k).map_or(*default, |i| values[i]))
                .into_tensor(),
        })
    }
}

/// tract op: `LabelEncoder` from int64 keys; the output has the input's shape.
#[derive(Debug, Clone)]
pub struct LabelEncoder {
    mapping: Arc<Mapping>,
}

// Equal only when sharing a mapping: comparing tables to merge duplicates is not worth it.
impl PartialEq for LabelEncoder {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.mapping, &other.mapping)
    }
}
impl Eq for LabelEncoder {}

impl Op for LabelEncoder {
    fn name(&self) -> StaticName {
        "LabelEncoder".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} int64 keys to {:?}",
            self.mapping.index.len(),
            self.mapping.datum_type()
        )])
    }

    fn as_typed(&self) -> Option<&dyn TypedOp> {
        Some(self)
    }
}

impl EvalOp for LabelEncoder {
    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 1, "LabelEncoder takes one input");
        Ok(tvec!(self.mapping.map(&inputs[0])?.into_tvalue()))
    }

    fn eval_out_of_plan(&self, inputs: TVec<TValue>) -> TractResult<Option<TVec<TValue>>> {
        Ok(Some(self.eval(&EvalContext::out_of_plan(), inputs)?))
    }
}

impl TypedOp for LabelEncoder {
    fn as_op(&self) -> &dyn Op {
        self
    }

    fn as_op_mut(&mut self) -> &mut dyn Op {
        self
    }

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs[0].datum_type == i64::datum_type(),
            "LabelEncoder keys must be int64, got {:?}",
            inputs[0].datum_type
        );
        Ok(tvec!(self.mapping.datum_type().fact(
            inputs[0].shape.iter().cloned().collect::<TVec<_>>()
        )))
    }
}

/// The inference-time face of [`LabelEncoder`].
#[derive(Debug, Clone)]
struct Expanded(LabelEncoder);

impl Expansion for Expanded {
    fn name(&self) -> StaticName {
        "LabelEncoder".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, self.0.mapping.datum_type())?;
        s.equals(&inputs[0].shape, &outputs[0].shape)?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        // tract's inference types an ONNX cast to int64 as TDim (its symbolic integer); the
        // typed op takes plain int64, so integer keys are cast, anything else refused.
        let dt = model.outlet_fact(inputs[0])?.datum_type;
        let keys = if dt == i64::datum_type() {
            inputs[0]
        } else {
            ensure!(
                dt.is_integer() || dt == TDim::datum_type(),
                "LabelEncoder keys must be int64, got {dt:?}"
            );
            model.wire_node(
                format!("{prefix}.cast"),
                tract_onnx::tract_core::ops::cast::cast(i64::datum_type()),
                inputs,
            )?[0]
        };
        model.wire_node(prefix, self.0.clone(), &[keys])
    }
}

/// Attributes that change nothing for an int64-to-number mapping and are accepted as is.
const IGNORED: [&str; 1] = ["default_string"];

/// Parses `LabelEncoder` (ai.onnx.ml 2 to 4, numeric attributes only).
fn label_encoder(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let known = [
        "keys_int64s",
        "values_floats",
        "values_int64s",
        "default_float",
        "default_int64",
    ];
    if let Some(other) = node
        .attribute
        .iter()
        .map(|a| a.name.as_str())
        .find(|n| !known.contains(n) && !IGNORED.contains(n))
    {
        bail!("LabelEncoder: attribute {other:?} is not supported (only int64 keys to numbers)");
    }
    let Some(keys) = node.get_attr_opt_slice::<i64>("keys_int64s")? else {
        bail!("LabelEncoder: keys_int64s is missing (only int64 keys are supported)");
    };
    let floats = node.get_attr_opt_vec::<f32>("values_floats")?;
    let ints = node.get_attr_opt_slice::<i64>("values_int64s")?;
    let (values, n_values) = match (floats, ints) {
        (Some(values), None) => {
            let n = values.len();
            // The ONNX default for a key not listed is -0.0.
            let default = node.get_attr_opt::<f32>("default_float")?.unwrap_or(-0.0);
            (Values::F32 { values, default }, n)
        }
        (None, Some(values)) => {
            let default = node.get_attr_opt::<i64>("default_int64")?.unwrap_or(-1);
            let n = values.len();
            (
                Values::I64 {
                    values: values.to_vec(),
                    default,
                },
                n,
            )
        }
        _ => bail!("LabelEncoder: needs exactly one of values_floats and values_int64s"),
    };
    ensure!(
        n_values == keys.len(),
        "LabelEncoder: {} keys but {n_values} values",
        keys.len()
    );
    let mut index = HashMap::with_capacity(keys.len());
    for (i, &k) in keys.iter().enumerate() {
        ensure!(
            index.insert(k, i).is_none(),
            "LabelEncoder: key {k} appears twice"
        );
    }
    let op = LabelEncoder {
        mapping: Arc::new(Mapping { index, values }),
    };
    Ok((expand(Expanded(op)), vec![]))
}

/// Registers `LabelEncoder` in `register`.
pub fn register(register: &mut OnnxOpRegister) {
    register.insert("LabelEncoder", label_encoder);
}
