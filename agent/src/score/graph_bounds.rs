//! Bounds on a model's ONNX graph, checked on the decoded protobuf before tract builds
//! anything from it.
//!
//! tract shapes its plan from the graph: an operator whose output size comes from a value in
//! the file (`ConstantOfShape`, `Expand`, `Tile`, `Range`, `Pad`, `Resize`, `OneHot`) can make
//! it allocate whatever the file asks for while it folds constants, and a sub-graph (`If`,
//! `Loop`, `Scan`) or a local function can hide any of them. tract also panics, rather than
//! erring, on raw data of some tensor types. So only the operators a score graph needs are
//! allowed (the trainer's graphs use nine of them; the rest are the elementwise and shape
//! operators other exporters write around a tree ensemble), in the standard domains, with no
//! sub-graph, function, sparse or external tensor, and every constant tensor of a supported
//! type and a bounded element count. The tree ensembles' own attributes are bounded where they
//! are parsed ([`super::tree_ensemble`]).

use selfheal_core::model_bounds::{MAX_GRAPH_OPS, MAX_TENSOR_ELEMENTS};
use tract_onnx::pb;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::{DataLocation, DataType};

/// The operators a model graph may use. Each computes an output no larger than its inputs
/// (or their broadcast), so its size is bounded by the batch and by the file's constants.
pub const ALLOWED_OPS: [&str; 47] = [
    "Abs",
    "Add",
    "And",
    "ArgMax",
    "ArgMin",
    "Cast",
    "Ceil",
    "Clip",
    "Concat",
    "Constant",
    "Div",
    "Equal",
    "Exp",
    "Flatten",
    "Floor",
    "Gather",
    "Greater",
    "GreaterOrEqual",
    "Identity",
    "LabelEncoder",
    "Less",
    "LessOrEqual",
    "Log",
    "Max",
    "Mean",
    "Min",
    "Mul",
    "Neg",
    "Not",
    "Or",
    "Pow",
    "Reciprocal",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceSum",
    "Reshape",
    "Sigmoid",
    "Slice",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Sum",
    "TreeEnsembleClassifier",
    "TreeEnsembleRegressor",
    "Unsqueeze",
    "Where",
];

/// Why a graph is outside its bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("model.onnx graph: {0}")]
pub struct GraphBoundsError(pub String);

fn bad<T>(reason: String) -> Result<T, GraphBoundsError> {
    Err(GraphBoundsError(reason))
}

/// Checks `model` against the bounds in the module docs.
pub fn check_graph(model: &pb::ModelProto) -> Result<(), GraphBoundsError> {
    if !model.functions.is_empty() {
        return bad(format!(
            "{} local functions (none allowed)",
            model.functions.len()
        ));
    }
    if !model.training_info.is_empty() {
        return bad("training information (not allowed)".into());
    }
    let Some(graph) = &model.graph else {
        return bad("no graph".into());
    };
    if graph.node.len() > MAX_GRAPH_OPS {
        return bad(format!(
            "{} operators, more than {MAX_GRAPH_OPS}",
            graph.node.len()
        ));
    }
    if !graph.sparse_initializer.is_empty() {
        return bad("sparse initializers (not allowed)".into());
    }
    if graph.initializer.len() > MAX_GRAPH_OPS {
        return bad(format!(
            "{} initializers, more than {MAX_GRAPH_OPS}",
            graph.initializer.len()
        ));
    }
    for t in &graph.initializer {
        check_tensor(t)?;
    }
    for node in &graph.node {
        if !matches!(node.domain.as_str(), "" | "ai.onnx" | "ai.onnx.ml") {
            return bad(format!(
                "operator {:?} of domain {:?} (only ai.onnx and ai.onnx.ml)",
                node.op_type, node.domain
            ));
        }
        let op = node.op_type.as_str();
        if !ALLOWED_OPS.contains(&op) {
            return bad(format!("operator {op:?} is not allowed in a score graph"));
        }
        for a in &node.attribute {
            let kind = AttributeType::try_from(a.r#type).unwrap_or(AttributeType::Undefined);
            match kind {
                AttributeType::Graph
                | AttributeType::Graphs
                | AttributeType::SparseTensor
                | AttributeType::SparseTensors
                | AttributeType::TypeProto
                | AttributeType::TypeProtos => {
                    return bad(format!(
                        "{op} attribute {:?} is a {kind:?} (not allowed)",
                        a.name
                    ));
                }
                _ => {}
            }
            if a.g.is_some() || !a.graphs.is_empty() || a.sparse_tensor.is_some() {
                return bad(format!("{op} attribute {:?} holds a sub-graph", a.name));
            }
            if let Some(t) = &a.t {
                check_tensor(t)?;
            }
            if a.tensors.len() > MAX_GRAPH_OPS {
                return bad(format!("{op} attribute {:?}: too many tensors", a.name));
            }
            for t in &a.tensors {
                check_tensor(t)?;
            }
        }
    }
    Ok(())
}

/// A constant tensor: a type tract reads without panicking, in the file (not external), and at
/// most [`MAX_TENSOR_ELEMENTS`] elements (the product of its dimensions, overflow refused).
fn check_tensor(t: &pb::TensorProto) -> Result<(), GraphBoundsError> {
    let name = &t.name;
    if t.data_location == Some(DataLocation::External as i32) || !t.external_data.is_empty() {
        return bad(format!("tensor {name:?} has external data (not allowed)"));
    }
    let dt = DataType::try_from(t.data_type).unwrap_or(DataType::Undefined);
    let supported = matches!(
        dt,
        DataType::Float
            | DataType::Double
            | DataType::Float16
            | DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::Uint8
            | DataType::Uint16
            | DataType::Uint32
            | DataType::Uint64
            | DataType::Bool
    );
    if !supported {
        return bad(format!("tensor {name:?} has unsupported type {dt:?}"));
    }
    let mut elements: usize = 1;
    for &d in &t.dims {
        let d = usize::try_from(d)
            .map_err(|_| GraphBoundsError(format!("tensor {name:?} has dimension {d}")))?;
        elements = elements
            .checked_mul(d)
            .filter(|&n| n <= MAX_TENSOR_ELEMENTS)
            .ok_or_else(|| {
                GraphBoundsError(format!(
                    "tensor {name:?} of shape {:?} has more than {MAX_TENSOR_ELEMENTS} elements",
                    t.dims
                ))
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(op: &str) -> pb::NodeProto {
        pb::NodeProto {
            op_type: op.into(),
            ..Default::default()
        }
    }

    fn model(nodes: Vec<pb::NodeProto>, initializer: Vec<pb::TensorProto>) -> pb::ModelProto {
        pb::ModelProto {
            graph: Some(pb::GraphProto {
                node: nodes,
                initializer,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn tensor(dims: Vec<i64>, dt: DataType) -> pb::TensorProto {
        pb::TensorProto {
            name: "t".into(),
            dims,
            data_type: dt as i32,
            ..Default::default()
        }
    }

    #[test]
    fn the_allowed_operators_are_sorted() {
        assert!(ALLOWED_OPS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn the_operators_of_a_score_graph_pass_and_others_do_not() {
        let ok = [
            "TreeEnsembleRegressor",
            "Mul",
            "Exp",
            "Sub",
            "ReduceMax",
            "Where",
        ];
        check_graph(&model(ok.map(node).to_vec(), vec![])).expect("trainer ops");
        for op in [
            "ConstantOfShape",
            "Expand",
            "Tile",
            "Range",
            "Loop",
            "If",
            "Resize",
        ] {
            let e = check_graph(&model(vec![node(op)], vec![])).expect_err(op);
            assert!(e.0.contains(op), "{e}");
        }
        let mut custom = node("Mul");
        custom.domain = "com.example".into();
        assert!(check_graph(&model(vec![custom], vec![])).is_err());
        let mut sub = node("Identity");
        sub.attribute.push(pb::AttributeProto {
            name: "body".into(),
            r#type: AttributeType::Graph as i32,
            g: Some(pb::GraphProto::default()),
            ..Default::default()
        });
        assert!(check_graph(&model(vec![sub], vec![])).is_err());
        assert!(check_graph(&model(vec![node("Mul"); MAX_GRAPH_OPS + 1], vec![])).is_err());
        assert!(check_graph(&pb::ModelProto::default()).is_err(), "no graph");
    }

    #[test]
    fn constant_tensors_are_bounded_before_tract_sizes_them() {
        check_graph(&model(vec![], vec![tensor(vec![13], DataType::Float)])).expect("small");
        for dims in [
            vec![1 << 40],
            vec![1 << 32, 1 << 32],
            vec![-1],
            vec![4096, 4096],
        ] {
            let e = check_graph(&model(vec![], vec![tensor(dims.clone(), DataType::Float)]))
                .expect_err("too large");
            assert!(e.0.contains("tensor"), "{dims:?}: {e}");
        }
        for dt in [DataType::String, DataType::Complex64, DataType::Undefined] {
            assert!(check_graph(&model(vec![], vec![tensor(vec![1], dt)])).is_err());
        }
        let mut external = tensor(vec![1], DataType::Float);
        external.data_location = Some(DataLocation::External as i32);
        assert!(check_graph(&model(vec![], vec![external])).is_err());
        // A `Constant` node's value tensor is checked like an initializer.
        let mut constant = node("Constant");
        constant.attribute.push(pb::AttributeProto {
            name: "value".into(),
            r#type: AttributeType::Tensor as i32,
            t: Some(tensor(vec![1 << 40], DataType::Float)),
            ..Default::default()
        });
        assert!(check_graph(&model(vec![constant], vec![])).is_err());
    }
}
