//! A stock scikit-learn IsolationForest, exported unchanged by skl2onnx, scored by tract with the
//! agent's ONNX kernels (`TreeEnsembleRegressor`, `LabelEncoder`) and by onnxruntime and
//! scikit-learn themselves (through `scripts/sklearn_iforest_onnx.py`): all must agree.

use crate::support::{python, repo_root};
use selfheal_agent::score::tree_ensemble;
use std::path::Path;
use std::process::Command;
use tract_onnx::prelude::*;

/// What the script wrote: the model, the rows, and every peer's answers.
struct Export {
    n_rows: usize,
    n_features: usize,
    rows: Vec<f32>,
    ort_label: Vec<i64>,
    ort_scores: Vec<f32>,
    sklearn_predict: Vec<i64>,
    sklearn_decision: Vec<f32>,
}

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .expect("read f32 file")
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn read_i64(path: &Path) -> Vec<i64> {
    std::fs::read(path)
        .expect("read i64 file")
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
        .collect()
}

/// Trains, exports and scores with the real scikit-learn, skl2onnx and onnxruntime.
fn export(dir: &Path) -> Export {
    let result = Command::new(python())
        .arg(repo_root().join("scripts/sklearn_iforest_onnx.py"))
        .arg(dir)
        .output()
        .expect("run python");
    assert!(
        result.status.success(),
        "skl2onnx export failed (run scripts/test.sh to install scikit-learn, skl2onnx and \
         onnxruntime): {}",
        String::from_utf8_lossy(&result.stderr)
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("meta.json")).expect("read meta.json"))
            .expect("meta.json is JSON");
    let count = |key: &str| meta[key].as_u64().expect("meta count") as usize;
    assert_eq!(
        meta["outputs"],
        serde_json::json!(["label", "scores"]),
        "the stock export's outputs changed"
    );
    Export {
        n_rows: count("n_rows"),
        n_features: count("n_features"),
        rows: read_f32(&dir.join("rows.f32")),
        ort_label: read_i64(&dir.join("ort_label.i64")),
        ort_scores: read_f32(&dir.join("ort_scores.f32")),
        sklearn_predict: read_i64(&dir.join("sklearn_predict.i64")),
        sklearn_decision: read_f32(&dir.join("sklearn_decision.f32")),
    }
}

/// Loads `model` with tract and our kernels, for input rows `[n_rows, n_features]`.
fn plan(model: &Path, n_rows: usize, n_features: usize) -> Arc<TypedRunnableModel> {
    tree_ensemble::onnx()
        .model_for_path(model)
        .expect("the stock export parses with our kernels")
        .with_input_fact(0, f32::fact([n_rows, n_features]).into())
        .expect("input fact")
        .into_optimized()
        .expect("optimize")
        .into_runnable()
        .expect("plan")
}

/// Runs `plan` on `rows`: (labels, scores).
fn run(plan: &Arc<TypedRunnableModel>, rows: &[f32], n_features: usize) -> (Vec<i64>, Vec<f32>) {
    let input = Tensor::from_shape(&[rows.len() / n_features, n_features], rows)
        .expect("input tensor")
        .into_tvalue();
    let out = plan.run(tvec![input]).expect("run");
    assert_eq!(out.len(), 2, "label and scores");
    // tract types the graph's int64 casts as TDim, its symbolic integer: back to int64.
    let labels = out[0]
        .cast_to::<i64>()
        .expect("integer labels")
        .try_as_plain_ram()
        .expect("plain")
        .as_slice::<i64>()
        .expect("i64 labels")
        .to_vec();
    let scores = out[1]
        .try_as_plain_ram()
        .expect("plain")
        .as_slice::<f32>()
        .expect("f32 scores")
        .to_vec();
    (labels, scores)
}

fn worst_difference(a: &[f32], b: &[f32]) -> (f32, usize) {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .enumerate()
        .map(|(i, (x, y))| ((x - y).abs(), i))
        .fold((0f32, 0), |acc, x| if x.0 > acc.0 { x } else { acc })
}

#[test]
fn stock_skl2onnx_isolation_forest_scores_like_onnxruntime_and_sklearn() {
    let dir = tempfile::tempdir().expect("temp dir");
    let e = export(dir.path());
    let model = dir.path().join("model.onnx");
    assert_eq!(e.rows.len(), e.n_rows * e.n_features);

    // Stock tract cannot load it: the kernels are what make this work.
    let stock = tract_onnx::onnx()
        .model_for_path(&model)
        .and_then(|m| m.into_optimized());
    assert!(stock.is_err(), "stock tract now loads the export");

    let batch = plan(&model, e.n_rows, e.n_features);
    let ops: Vec<String> = batch
        .model()
        .nodes()
        .iter()
        .map(|n| n.op.name().to_string())
        .collect();
    for op in ["FastTreeEnsembleRegressor", "LabelEncoder"] {
        assert!(ops.iter().any(|o| o == op), "{op} not in the plan: {ops:?}");
    }
    let (labels, scores) = run(&batch, &e.rows, e.n_features);

    let (worst, at) = worst_difference(&scores, &e.ort_scores);
    assert!(
        worst <= 1e-5,
        "tract vs onnxruntime: row {at} differs by {worst} ({} vs {})",
        scores[at],
        e.ort_scores[at]
    );
    assert_eq!(labels, e.ort_label, "labels: tract vs onnxruntime");
    let (worst, at) = worst_difference(&scores, &e.sklearn_decision);
    assert!(
        worst <= 1e-5,
        "tract vs sklearn decision_function: row {at} differs by {worst}"
    );
    assert_eq!(
        labels, e.sklearn_predict,
        "labels: tract vs sklearn predict"
    );
    // The rows hold real outliers: both labels occur.
    assert!(labels.contains(&1) && labels.contains(&-1), "{labels:?}");

    // A plan for one row gives the batch's answers.
    let single = plan(&model, 1, e.n_features);
    for r in [0, 1, 799, 800, 999] {
        let row = &e.rows[r * e.n_features..(r + 1) * e.n_features];
        let (label, score) = run(&single, row, e.n_features);
        assert_eq!((label[0], score[0]), (labels[r], scores[r]), "row {r}");
    }
}
