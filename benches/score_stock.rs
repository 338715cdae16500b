//! Single-row scoring of a *stock* scikit-learn IsolationForest export (skl2onnx, ~1,000 ONNX
//! nodes: 100 `TreeEnsembleRegressor`s, 200 `LabelEncoder`s and the path-length arithmetic),
//! through tract with the agent's kernels, against onnxruntime on the same file. The agent's own
//! export (`benches/score.rs`) is the fast path; this measures what a stock file costs.
//!
//! `cargo bench --bench score_stock` (needs the test venv: `scripts/test.sh`).

use criterion::Criterion;
use selfheal_agent::score::tree_ensemble;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use tract_onnx::prelude::*;

fn python() -> PathBuf {
    std::env::var_os("SELFHEAL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"))
}

/// Exports the model into `dir` and times onnxruntime on it: seconds per single-row call.
fn export_and_time_onnxruntime(dir: &Path) -> serde_json::Value {
    let py = python();
    let out = std::process::Command::new(&py)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/sklearn_iforest_onnx.py"))
        .arg("bench")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}: run scripts/test.sh", py.display()));
    assert!(
        out.status.success(),
        "skl2onnx export failed (run scripts/test.sh to install skl2onnx and onnxruntime): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("peer JSON")
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let peer = export_and_time_onnxruntime(dir.path());
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("meta.json")).expect("read meta.json"),
    )
    .expect("meta JSON");
    let width = meta["n_features"].as_u64().expect("n_features") as usize;
    let rows: Vec<f32> = std::fs::read(dir.path().join("rows.f32"))
        .expect("read rows")
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let n_rows = rows.len() / width;
    let plan = tree_ensemble::onnx()
        .model_for_path(dir.path().join("model.onnx"))
        .and_then(|m| m.with_input_fact(0, f32::fact([1, width]).into()))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .expect("stock export loads with our kernels");
    let mut state = plan.spawn().expect("state");

    let mut c = Criterion::default().configure_from_args();
    let mut i = 0;
    c.bench_function("score_stock/single_row", |b| {
        b.iter(|| {
            i = (i + 1) % n_rows;
            let row = Tensor::from_shape(&[1, width], &rows[i * width..(i + 1) * width])
                .expect("row tensor");
            black_box(state.run(tvec![row.into_tvalue()]).expect("run"))
        })
    });
    c.final_summary();
    let ort = peer["ort_single_row_s"].as_f64().expect("peer timing");
    println!(
        "\nStock skl2onnx IsolationForest (100 trees, psi 256, {width} features), one row: \
         onnxruntime {:.1} µs per call; versions {}",
        ort * 1e6,
        peer["versions"]
    );
}
