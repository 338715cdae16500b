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

    tract_onnx::tract_core::op_as_typed_op!();
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
    tract_onnx::tract_core::as_op!();

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
    let op = LabelEncoder {
        mapping: Arc::new(mapping(node)?),
    };
    Ok((expand(Expanded(op)), vec![]))
}

/// Parses and checks a `LabelEncoder` node (see [`label_encoder`]).
fn mapping(node: &NodeProto) -> TractResult<Mapping> {
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
    Ok(Mapping { index, values })
}

/// Registers `LabelEncoder` in `register`.
pub fn register(register: &mut OnnxOpRegister) {
    register.insert("LabelEncoder", label_encoder);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::AttributeProto;
    use tract_onnx::pb::attribute_proto::AttributeType;

    fn node(attributes: Vec<AttributeProto>) -> NodeProto {
        NodeProto {
            op_type: "LabelEncoder".into(),
            attribute: attributes,
            ..Default::default()
        }
    }

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

    fn keys_in(m: &Mapping, keys: &[i64]) -> Tensor {
        let keys = Tensor::from_shape(&[keys.len(), 1], keys).expect("keys");
        m.map(&keys).expect("map")
    }

    #[test]
    fn maps_int64_keys_to_floats_and_ints_with_defaults() {
        let m = mapping(&node(vec![
            ints("keys_int64s", &[4, 9, -2]),
            floats("values_floats", &[1.5, 2.5, 3.5]),
        ]))
        .expect("valid");
        let out = keys_in(&m, &[9, 4, 7, -2]);
        assert_eq!(out.shape(), [4, 1]);
        let out = out
            .try_as_plain_ram()
            .expect("plain")
            .as_slice::<f32>()
            .expect("f32")
            .to_vec();
        assert_eq!(out[..2], [2.5, 1.5]);
        // An unlisted key gets the ONNX default, -0.0.
        assert!(out[2] == 0.0 && out[2].is_sign_negative(), "{}", out[2]);
        assert_eq!(out[3], 3.5);

        let m = mapping(&node(vec![
            ints("keys_int64s", &[1, 2]),
            ints("values_int64s", &[10, 20]),
            AttributeProto {
                name: "default_int64".into(),
                r#type: AttributeType::Int as i32,
                i: 99,
                ..Default::default()
            },
        ]))
        .expect("valid");
        let out = keys_in(&m, &[2, 3, 1]);
        assert_eq!(
            out.try_as_plain_ram()
                .expect("plain")
                .as_slice::<i64>()
                .expect("i64"),
            [20, 99, 10]
        );
    }

    #[test]
    fn refuses_other_types_duplicates_and_mismatched_lengths() {
        let strings = AttributeProto {
            name: "keys_strings".into(),
            r#type: AttributeType::Strings as i32,
            strings: vec![b"a".to_vec()],
            ..Default::default()
        };
        for (attributes, why) in [
            (
                vec![strings, floats("values_floats", &[1.0])],
                "keys_strings",
            ),
            (vec![floats("values_floats", &[1.0])], "keys_int64s"),
            (
                vec![
                    ints("keys_int64s", &[1, 1]),
                    floats("values_floats", &[1.0, 2.0]),
                ],
                "twice",
            ),
            (
                vec![
                    ints("keys_int64s", &[1, 2]),
                    floats("values_floats", &[1.0]),
                ],
                "2 keys but 1 values",
            ),
            (
                vec![
                    ints("keys_int64s", &[1]),
                    floats("values_floats", &[1.0]),
                    ints("values_int64s", &[1]),
                ],
                "exactly one",
            ),
        ] {
            let err = mapping(&node(attributes)).expect_err(why);
            assert!(err.to_string().contains(why), "{why}: {err}");
        }
    }
}
