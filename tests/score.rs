//! Model export and scoring, end to end: a forest exported by `selfheal_model_export::onnx`,
//! scored by the agent's tract scorer (with our tree-ensemble kernel), by tract's built-in kernel,
//! by onnxruntime (the real PyPI package, through `scripts/onnx_score.py`) and by the reference
//! `IsolationForest::score` — all must agree. Then every way a model directory can be broken must
//! be refused with its own error.

use crate::support::forest::{self, Rng, dataset, grow_forest, standard_forest};
use crate::support::{python, repo_root};
use selfheal_agent::score::{ScoreError, Scorer, tree_ensemble};
use selfheal_core::features::{FEATURE_SCHEMA_VERSION, FeatureSpec};
use selfheal_core::forest::{ForestSet, IsolationForest, RangeGuard};
use selfheal_core::model::{AlarmRule, MANIFEST_FILE, MODEL_FILE, ModelManifest};
use selfheal_model_export::onnx::{sha256_hex, write_model_dir, write_set_dir};
use std::path::Path;
use std::process::Command;
use tract_onnx::prelude::*;

/// A feature spec of exactly `n` raw-value features.
fn spec(n: usize) -> FeatureSpec {
    FeatureSpec::raw((0..n).map(|i| format!("f{i}")).collect())
}

fn manifest_for(forest: &IsolationForest) -> ModelManifest {
    forest::manifest(
        forest,
        spec(forest.n_features),
        "test",
        "1",
        0.6,
        AlarmRule::default(),
    )
}

fn write_model(dir: &Path, forest: &IsolationForest) -> ModelManifest {
    write_model_dir(dir, forest, manifest_for(forest)).expect("write model dir")
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Scores `rows` with onnxruntime through `scripts/onnx_score.py`.
fn onnxruntime_scores(model: &Path, rows: &[f32], n_features: usize, work: &Path) -> Vec<f32> {
    let input = work.join("rows.f32");
    let output = work.join("ort_scores.f32");
    std::fs::write(&input, f32_bytes(rows)).expect("write rows");
    let result = Command::new(python())
        .arg(repo_root().join("scripts/onnx_score.py"))
        .arg("score")
        .arg(model)
        .arg(&input)
        .arg(n_features.to_string())
        .arg(&output)
        .output()
        .expect("run python");
    assert!(
        result.status.success(),
        "onnxruntime scoring failed (run scripts/test.sh to install onnxruntime): {}",
        String::from_utf8_lossy(&result.stderr)
    );
    std::fs::read(&output)
        .expect("read onnxruntime scores")
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Rows that also hit the edges: values exactly on split thresholds (which go left), and
/// values far outside the training range.
fn test_rows(forest: &IsolationForest, n_rows: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let n = forest.n_features;
    let mut rows = dataset(&mut rng, n_rows, n);
    let thresholds: Vec<(usize, f32)> = forest
        .trees
        .iter()
        .flat_map(|t| &t.nodes)
        .filter_map(|node| match *node {
            selfheal_core::forest::Node::Split {
                feature, threshold, ..
            } => Some((feature as usize, threshold)),
            _ => None,
        })
        .collect();
    for r in 0..n_rows / 10 {
        for f in 0..n {
            let (tf, t) = thresholds[rng.below(thresholds.len())];
            if tf == f {
                rows[r * n + f] = t;
            }
        }
    }
    for r in n_rows / 10..n_rows / 10 + 10 {
        rows[r * n] = 1e30;
        rows[r * n + n - 1] = -1e30;
    }
    rows
}

fn assert_close(what: &str, a: &[f32], b: &[f32], tolerance: f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    let (worst, at) = a
        .iter()
        .zip(b)
        .enumerate()
        .map(|(i, (x, y))| ((x - y).abs(), i))
        .fold((0f32, 0), |acc, x| if x.0 > acc.0 { x } else { acc });
    assert!(
        worst <= tolerance,
        "{what}: row {at} differs by {worst} ({} vs {})",
        a[at],
        b[at]
    );
}

#[test]
fn tract_onnxruntime_and_reference_scores_agree_on_10000_rows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (forest, _) = standard_forest(42, 8);
    write_model(dir.path(), &forest);
    let rows = test_rows(&forest, 10_000, 7);
    // `ForestSet::single` scores exactly as `IsolationForest::score`.
    let (scorer, tract) = three_way_scores(dir.path(), &ForestSet::single(forest), &rows, 8);
    // The data has real anomalies: the scores must spread, not sit on one value.
    let (lo, hi) = tract
        .iter()
        .fold((f32::MAX, f32::MIN), |(lo, hi), &s| (lo.min(s), hi.max(s)));
    assert!(lo < 0.45 && hi > 0.6, "scores span only {lo}..{hi}");

    // The single-row path gives the batch's answers.
    for r in [0, 1, 999, 1000, 9999] {
        let one = scorer
            .score_one(&rows[r * 8..(r + 1) * 8])
            .expect("one row");
        assert_eq!(one, tract[r], "row {r}");
    }
}

/// Regression test for the per-signal layout: a set of forests, each over its own block of
/// columns, exported as one multi-target `TreeEnsembleRegressor` with the offsets and the
/// maximum in the graph, must score as `ForestSet::score` in tract and onnxruntime alike.
#[test]
fn forest_set_scores_agree_in_tract_onnxruntime_and_reference() {
    let dir = tempfile::tempdir().expect("temp dir");
    let n_features = 8;
    let (set, manifest) = forest::forest_set(5, 4, 2, 50);
    write_set_dir(dir.path(), &set, manifest).expect("write model dir");
    let mut rows = dataset(&mut Rng::new(9), 10_000, n_features);
    push_to_extremes(&mut rows, n_features);
    let (scorer, tract) = three_way_scores(dir.path(), &set, &rows, n_features);
    // Offsets put each forest's ordinary ceiling at 0: most rows score below it, the outliers
    // (2% of the data, and the rows pushed to ±1e30) above.
    let above = tract.iter().filter(|&&s| s > 0.0).count();
    assert!(
        (100..3000).contains(&above),
        "{above} of 10000 rows above 0"
    );
    for r in [0, 1, 5000, 9999] {
        let one = scorer
            .score_one(&rows[r * n_features..(r + 1) * n_features])
            .expect("one row");
        assert_eq!(one, tract[r], "row {r}");
    }
}

/// Pushes one column of each of the first 10 rows to +-1e30.
fn push_to_extremes(rows: &mut [f32], n_features: usize) {
    for r in 0..10 {
        rows[r * n_features + r % n_features] = if r % 2 == 0 { 1e30 } else { -1e30 };
    }
}

/// Scores `rows` with the model in `dir` (written from `set`) in tract, in onnxruntime and with
/// `ForestSet::score`, asserts all three agree within 1e-5, and returns the scorer and tract's
/// scores.
fn three_way_scores(
    dir: &Path,
    set: &ForestSet,
    rows: &[f32],
    n_features: usize,
) -> (Scorer, Vec<f32>) {
    let n_rows = rows.len() / n_features;
    let scorer = Scorer::load(dir).expect("model loads");
    let tract = scorer.score_batch(rows, n_rows).expect("tract scores");
    let ort = onnxruntime_scores(&dir.join(MODEL_FILE), rows, n_features, dir);
    let reference: Vec<f32> = rows
        .chunks_exact(n_features)
        .map(|row| set.score(row) as f32)
        .collect();
    assert_close("tract vs onnxruntime", &tract, &ort, 1e-5);
    assert_close("tract vs reference", &tract, &reference, 1e-5);
    assert_close("onnxruntime vs reference", &ort, &reference, 1e-5);
    (scorer, tract)
}

/// A range guard over `columns`, from the range each held in `train` (rows of `n_features`).
fn guard_over(train: &[f32], n_features: usize, columns: &[usize]) -> RangeGuard {
    RangeGuard {
        weight: 0.3,
        bounds: columns
            .iter()
            .map(|&c| {
                RangeGuard::bound(c, train.chunks_exact(n_features).map(|r| r[c])).expect("bound")
            })
            .collect(),
    }
}

#[test]
fn range_guarded_scores_agree_in_tract_onnxruntime_and_reference() {
    // The guard after both graphs: the per-signal regressor and the plain forest's classifier.
    let n_features = 8;
    let (set, set_manifest) = forest::forest_set(5, 4, 2, 50);
    let (plain, train) = standard_forest(6, n_features);
    let train_rows = dataset(&mut Rng::new(5), 4096, n_features);
    let cases = [
        (
            set.with_range(guard_over(&train_rows, n_features, &[0, 2, 4, 6])),
            set_manifest,
        ),
        (
            ForestSet::single(plain.clone()).with_range(guard_over(&train, n_features, &[0, 3, 7])),
            manifest_for(&plain),
        ),
    ];
    for (set, manifest) in cases {
        let dir = tempfile::tempdir().expect("temp dir");
        write_set_dir(dir.path(), &set, manifest).expect("write model dir");
        // Rows from the training distribution, then a tenth of them moved outside the range
        // by up to 15 spans (the excess is capped at 10), and a few pushed to +-1e30.
        let mut rows = dataset(&mut Rng::new(9), 10_000, n_features);
        let mut rng = Rng::new(10);
        for r in (0..10_000).step_by(10) {
            let c = r % n_features;
            rows[r * n_features + c] += ((rng.unit() - 0.5) * 600.0) as f32;
        }
        push_to_extremes(&mut rows, n_features);
        let (_, tract) = three_way_scores(dir.path(), &set, &rows, n_features);
        // The guard adds to a share of the rows (those moved outside a guarded column's
        // range), at most its weight times the capped excess (the rows pushed to +-1e30).
        let guard = set.range.as_ref().expect("guard");
        let guarded = rows
            .chunks_exact(n_features)
            .filter(|row| guard.score(row) > 0.0)
            .count();
        assert!(
            (100..2000).contains(&guarded),
            "{guarded} rows outside a range"
        );
        for (r, row) in rows.chunks_exact(n_features).take(10).enumerate() {
            let added = f64::from(tract[r]) - set.forest_score(row);
            let cap = f64::from(0.3 * RangeGuard::MAX_EXCESS);
            let guarded_column = guard.bounds.iter().any(|b| b.column == r % n_features);
            let expect = if guarded_column { cap } else { 0.0 };
            assert!((added - expect).abs() < 2e-5, "row {r}: added {added}");
        }
    }
}

#[test]
fn fast_kernel_agrees_with_tracts_builtin_kernel() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rng = Rng::new(3);
    let train = dataset(&mut rng, 1000, 3);
    let forest = grow_forest(&mut rng, &train, 3, 20, 64);
    write_model(dir.path(), &forest);
    let model_path = dir.path().join(MODEL_FILE);
    let rows = test_rows(&forest, 300, 11);
    let input = || {
        Tensor::from_shape(&[300, 3], &rows)
            .expect("input tensor")
            .into_tvalue()
    };

    let run = |onnx: tract_onnx::Onnx| -> (Vec<String>, Vec<f32>) {
        let model = onnx
            .model_for_path(&model_path)
            .expect("parse")
            .into_optimized()
            .expect("optimize");
        let ops = model
            .nodes()
            .iter()
            .map(|n| n.op.name().to_string())
            .collect();
        let out = model
            .into_runnable()
            .expect("plan")
            .run(tvec![input()])
            .expect("run");
        let scores = out[0]
            .try_as_plain_ram()
            .expect("plain")
            .as_slice::<f32>()
            .expect("f32")
            .to_vec();
        (ops, scores)
    };
    let (builtin_ops, builtin) = run(tract_onnx::onnx());
    let (fast_ops, fast) = run(tree_ensemble::onnx());
    assert!(
        fast_ops.iter().any(|op| op == "FastTreeEnsembleClassifier"),
        "fast kernel not in the plan: {fast_ops:?}"
    );
    assert!(
        !builtin_ops
            .iter()
            .any(|op| op == "FastTreeEnsembleClassifier"),
        "stock tract must not use our kernel"
    );
    assert_close("fast vs builtin", &fast, &builtin, 1e-6);
}

/// A model directory written for `forest`, then broken by `damage`, must be refused.
fn load_damaged(damage: impl FnOnce(&Path)) -> ScoreError {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rng = Rng::new(5);
    let train = dataset(&mut rng, 500, 4);
    let forest = grow_forest(&mut rng, &train, 4, 10, 64);
    write_model(dir.path(), &forest);
    Scorer::load(dir.path()).expect("the undamaged model loads");
    damage(dir.path());
    Scorer::load(dir.path()).expect_err("damaged model must be refused")
}

fn read_manifest(dir: &Path) -> ModelManifest {
    serde_json::from_slice(&std::fs::read(dir.join(MANIFEST_FILE)).expect("read manifest"))
        .expect("parse manifest")
}

fn write_manifest(dir: &Path, manifest: &ModelManifest) {
    std::fs::write(
        dir.join(MANIFEST_FILE),
        serde_json::to_vec(manifest).expect("serialize manifest"),
    )
    .expect("write manifest");
}

#[test]
fn model_whose_bytes_changed_is_refused_by_checksum() {
    let err = load_damaged(|dir| {
        let path = dir.join(MODEL_FILE);
        let mut bytes = std::fs::read(&path).expect("read model");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
        std::fs::write(&path, bytes).expect("write model");
    });
    assert!(matches!(err, ScoreError::Checksum { .. }), "{err:?}");
    assert!(err.to_string().contains("sha256"), "{err}");
}

#[test]
fn corrupt_onnx_with_a_matching_checksum_is_refused_as_onnx() {
    let err = load_damaged(|dir| {
        let path = dir.join(MODEL_FILE);
        let bytes = std::fs::read(&path).expect("read model");
        // Truncated protobuf: what a half-finished copy leaves behind.
        let corrupt = &bytes[..bytes.len() / 3];
        std::fs::write(&path, corrupt).expect("write model");
        let mut manifest = read_manifest(dir);
        manifest.model_sha256 = sha256_hex(corrupt);
        write_manifest(dir, &manifest);
    });
    assert!(matches!(err, ScoreError::Onnx(_)), "{err:?}");
}

#[test]
fn manifest_with_another_feature_count_is_refused() {
    let err = load_damaged(|dir| {
        let mut manifest = read_manifest(dir);
        manifest.features = spec(5);
        manifest.feature_names = spec(5).names();
        write_manifest(dir, &manifest);
    });
    match err {
        ScoreError::FeatureCount { spec, names, model } => {
            assert_eq!((spec, names, model.as_str()), (5, 5, "4"));
        }
        other => panic!("expected FeatureCount, got {other:?}"),
    }
}

#[test]
fn manifest_whose_names_disagree_with_its_spec_is_refused() {
    let err = load_damaged(|dir| {
        let mut manifest = read_manifest(dir);
        manifest.feature_names.pop();
        write_manifest(dir, &manifest);
    });
    assert!(matches!(err, ScoreError::FeatureCount { .. }), "{err:?}");
}

#[test]
fn manifest_from_another_feature_schema_is_refused() {
    let err = load_damaged(|dir| {
        let mut manifest = read_manifest(dir);
        manifest.features.schema_version = FEATURE_SCHEMA_VERSION + 1;
        write_manifest(dir, &manifest);
    });
    assert!(matches!(err, ScoreError::FeatureSchema { .. }), "{err:?}");
}

#[test]
fn truncated_manifest_is_refused() {
    let err = load_damaged(|dir| {
        let path = dir.join(MANIFEST_FILE);
        let bytes = std::fs::read(&path).expect("read manifest");
        std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("write manifest");
    });
    assert!(matches!(err, ScoreError::Manifest { .. }), "{err:?}");
    assert!(err.to_string().contains(MANIFEST_FILE), "{err}");
}

#[test]
fn batch_of_the_wrong_width_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (forest, _) = standard_forest(1, 8);
    write_model(dir.path(), &forest);
    let scorer = Scorer::load(dir.path()).expect("model loads");
    let err = scorer
        .score_batch(&[0.0; 7], 1)
        .expect_err("7 values are not one row of 8");
    assert!(matches!(err, ScoreError::BatchShape { .. }), "{err:?}");
    assert!(scorer.score_batch(&[], 0).expect("empty batch").is_empty());
}

#[test]
fn model_with_another_output_shape_is_refused() {
    use prost::Message;
    let err = load_damaged(|dir| {
        // A valid ONNX graph that also exposes the classifier's [N, 2] output: not a score.
        let path = dir.join(MODEL_FILE);
        let bytes = std::fs::read(&path).expect("read model");
        let mut model =
            tract_onnx::pb::ModelProto::decode(bytes.as_slice()).expect("decode exported model");
        let graph = model.graph.as_mut().expect("graph");
        let mut extra = graph.output[0].clone();
        extra.name = "probabilities".into();
        graph.output.push(extra);
        let changed = model.encode_to_vec();
        std::fs::write(&path, &changed).expect("write model");
        let mut manifest = read_manifest(dir);
        manifest.model_sha256 = sha256_hex(&changed);
        write_manifest(dir, &manifest);
    });
    assert!(matches!(err, ScoreError::Onnx(_)), "{err:?}");
    assert!(
        format!("{:?}", err).contains("one output"),
        "error must say what is wrong: {err:?}"
    );
}
