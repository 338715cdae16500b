//! Scoring on the node: one sample and a 10,000-row batch through a 100-tree (ψ = 256, depth ≤ 8)
//! isolation forest exported to ONNX and run by the agent's tract scorer, plus model load time.
//! Then the same file in onnxruntime and a scikit-learn IsolationForest of the same size, run by
//! `scripts/onnx_score.py bench`, with the ratios. Targets: ≤ 5 µs per single sample,
//! ≥ 500,000 samples/s in batch on one core, load ≤ 50 ms.
//!
//! Last, a per-signal model of the size the trainer's default layout gives the cpu family (13
//! forests of 100 trees, one per signal, each over that signal's 6 features), through the same
//! scorer: its load, single-row and batch costs, for the ratio to one forest; with and without
//! the range guard the trainer adds by default.
//!
//! Then the cpu family's model as the trainer writes it by default, for the issue-16 targets
//! (≤ 256 KB of `model.onnx`, load ≤ 50 ms, a row ≤ 10 µs).
//!
//! `cargo bench --bench score` (peers need the test venv: `scripts/test.sh`, or point
//! `SELFHEAL_PYTHON` at a Python with `scripts/requirements-test.txt` installed).

#[path = "../tests/support/forest.rs"]
mod forest;

use criterion::{Criterion, Throughput};
use selfheal_agent::score::Scorer;
use selfheal_core::features::FeatureSpec;
use selfheal_core::forest::RangeGuard;
use selfheal_core::model::{AlarmRule, MODEL_FILE};
use selfheal_model_export::onnx::{write_model_dir, write_set_dir};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const N_FEATURES: usize = 8;
const BATCH: usize = 10_000;

fn write_model(dir: &Path) -> Vec<f32> {
    let (forest, _) = forest::standard_forest(42, N_FEATURES);
    let features = FeatureSpec::raw((0..N_FEATURES).map(|i| format!("f{i}")).collect());
    let manifest = forest::manifest(&forest, features, "bench", "1", 0.6, AlarmRule::default());
    write_model_dir(dir, &forest, manifest).expect("write model dir");
    let mut rng = forest::Rng::new(9);
    forest::dataset(&mut rng, BATCH, N_FEATURES)
}

fn benches(c: &mut Criterion, dir: &Path, rows: &[f32]) {
    let scorer = Scorer::load(dir).expect("load model");
    let mut group = c.benchmark_group("score");
    group.bench_function("load_100_trees", |b| {
        b.iter(|| Scorer::load(black_box(dir)).expect("load model"))
    });
    let mut i = 0;
    group.throughput(Throughput::Elements(1));
    group.bench_function("single_row", |b| {
        b.iter(|| {
            i = (i + 1) % BATCH;
            let row = &rows[i * N_FEATURES..(i + 1) * N_FEATURES];
            scorer.score_one(black_box(row)).expect("score")
        })
    });
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    group.bench_function("batch_10000", |b| {
        b.iter(|| scorer.score_batch(black_box(rows), BATCH).expect("score"))
    });
    group.finish();
}

/// Mean seconds per call of `f` over about `budget`.
fn per_call(budget: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut calls = 0u32;
    while start.elapsed() < budget {
        f();
        calls += 1;
    }
    start.elapsed().as_secs_f64() / f64::from(calls.max(1))
}

fn python() -> PathBuf {
    std::env::var_os("SELFHEAL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"))
}

fn peers(dir: &Path, rows: &[f32]) {
    let scorer = Scorer::load(dir).expect("load model");
    let load = per_call(Duration::from_secs(1), || {
        Scorer::load(dir).expect("load model");
    });
    let mut i = 0;
    let single = per_call(Duration::from_secs(1), || {
        i = (i + 1) % BATCH;
        black_box(
            scorer
                .score_one(&rows[i * N_FEATURES..(i + 1) * N_FEATURES])
                .expect("score"),
        );
    });
    let batch = per_call(Duration::from_secs(2), || {
        black_box(scorer.score_batch(rows, BATCH).expect("score"));
    });

    let rows_path = dir.join("rows.f32");
    let bytes: Vec<u8> = rows.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&rows_path, bytes).expect("write rows");
    let py = python();
    let out = std::process::Command::new(&py)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/onnx_score.py"))
        .arg("bench")
        .arg(dir.join(MODEL_FILE))
        .arg(&rows_path)
        .arg(N_FEATURES.to_string())
        .args(["100", "256"])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}: run scripts/test.sh", py.display()));
    assert!(
        out.status.success(),
        "peer bench failed (run scripts/test.sh to install onnxruntime and scikit-learn): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("peer JSON");
    let secs = |k: &str| peer[k].as_f64().expect("peer timing");

    println!("\nScoring, 100 trees, psi 256, {N_FEATURES} features, one core:");
    println!(
        "  selfheal (tract + fast kernel): load {:.2} ms, single row {:.2} µs, batch {:.0} samples/s",
        load * 1e3,
        single * 1e6,
        BATCH as f64 / batch
    );
    for (name, one, many) in [
        ("onnxruntime", "ort_single_row_s", "ort_batch_10000_s"),
        (
            "scikit-learn",
            "sklearn_single_row_s",
            "sklearn_batch_10000_s",
        ),
    ] {
        println!(
            "  {name}: single row {:.2} µs ({:.1}x selfheal), batch {:.0} samples/s ({:.1}x slower)",
            secs(one) * 1e6,
            secs(one) / single,
            BATCH as f64 / secs(many),
            secs(many) / batch
        );
    }
    println!(
        "  onnxruntime session load {:.2} ms; versions {}",
        secs("ort_load_s") * 1e3,
        peer["versions"]
    );
}

/// The model in `dir`: bytes of `model.onnx`, then seconds per load, per single row (cycling
/// through `rows`, `n` features each) and per batch of all of `rows`.
fn time_model(dir: &Path, rows: &[f32], n: usize) -> (u64, f64, f64, f64) {
    let size = std::fs::metadata(dir.join(MODEL_FILE))
        .expect("model.onnx")
        .len();
    let load = per_call(Duration::from_secs(1), || {
        Scorer::load(dir).expect("load model");
    });
    let scorer = Scorer::load(dir).expect("load model");
    let mut i = 0;
    let single = per_call(Duration::from_secs(1), || {
        i = (i + 1) % BATCH;
        black_box(scorer.score_one(&rows[i * n..(i + 1) * n]).expect("score"));
    });
    let batch = per_call(Duration::from_secs(2), || {
        black_box(scorer.score_batch(rows, BATCH).expect("score"));
    });
    (size, load, single, batch)
}

/// Load, single-row and batch cost of a per-signal model: `SIGNALS` forests of 100 trees, each
/// over its signal's `WIDTH` columns, printed beside `one_forest` (single-row seconds); then the
/// same model with the range guard the trainer adds (each signal's first column guarded).
fn per_signal() {
    const SIGNALS: usize = 13;
    const WIDTH: usize = 6;
    let n = SIGNALS * WIDTH;
    let (set, manifest) = forest::forest_set(17, SIGNALS, WIDTH, 100);
    let rows = forest::dataset(&mut forest::Rng::new(19), BATCH, n);
    let guard = RangeGuard {
        weight: 0.3,
        bounds: (0..SIGNALS)
            .filter_map(|g| {
                let column = g * WIDTH;
                RangeGuard::bound(column, rows.chunks_exact(n).map(|r| r[column]))
            })
            .collect(),
    };
    for (what, set) in [
        ("", set.clone()),
        (", with the range guard", set.with_range(guard)),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        write_set_dir(dir.path(), &set, manifest.clone()).expect("write model dir");
        let (size, load, single, batch) = time_model(dir.path(), &rows, n);
        println!(
            "\nPer-signal model{what}, {SIGNALS} forests x 100 trees, {n} features ({size} bytes of model.onnx), one core:"
        );
        println!(
            "  load {:.2} ms, single row {:.2} µs ({:.1} µs per forest), batch {:.0} samples/s",
            load * 1e3,
            single * 1e6,
            single * 1e6 / SIGNALS as f64,
            BATCH as f64 / batch
        );
    }
}

/// The model the trainer writes by default for the cpu family (its 13 metrics, `TrainConfig::
/// default()`: the forest size, features, range guard and alarm chosen in docs/benchmarks.md),
/// trained by `train_model` on 20,000 rows of noise and written by the same artifact writer as
/// `selfheal model train`: its `model.onnx` size, load time, single-row and batch cost. Targets
/// (issue 16): ≤ 256 KB, load ≤ 50 ms, a row ≤ 10 µs.
fn default_family_model() {
    use selfheal_model_export::dataset::Series;
    use selfheal_model_export::detect::{TrainConfig, train_model};
    let columns: Vec<String> = selfheal_core::Family::Cpu
        .metrics()
        .map(|m| m.as_str().to_owned())
        .collect();
    let mut rng = forest::Rng::new(23);
    let series = Series {
        name: "cpu".into(),
        columns: columns.clone(),
        timestamps: None,
        rows: (0..20_000)
            .map(|_| (0..columns.len()).map(|c| c as f64 + rng.unit()).collect())
            .collect(),
    };
    let cfg = TrainConfig::default();
    let (det, _) = train_model(std::slice::from_ref(&series), None, &cfg).expect("train");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut manifest = forest::manifest(
        &det.forest.members[0].forest,
        det.spec.clone(),
        "cpu",
        "1",
        det.threshold,
        det.alarm,
    );
    manifest.forests = det.forest.members.len();
    manifest.ordinary_score = Some(det.ordinary);
    manifest.spike_threshold = det.spike;
    selfheal_model_export::artifact::write_model_dir(dir.path(), &det, manifest)
        .expect("write model dir");
    let n = det.spec.len();
    let rows = forest::dataset(&mut forest::Rng::new(29), BATCH, n);
    let (size, load, single, batch) = time_model(dir.path(), &rows, n);
    println!(
        "\nDefault cpu model (TrainConfig::default()): {} forests x {} trees, psi {}, {n} features, \
         {size} bytes of model.onnx, one core:",
        det.forest.members.len(),
        cfg.forest.n_trees,
        cfg.forest.max_samples,
    );
    println!(
        "  load {:.2} ms, single row {:.2} µs, batch {:.0} samples/s (a row of a batch {:.2} µs)",
        load * 1e3,
        single * 1e6,
        BATCH as f64 / batch,
        batch / BATCH as f64 * 1e6
    );
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rows = write_model(dir.path());
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c, dir.path(), &rows);
    c.final_summary();
    // `cargo test --benches` runs this binary in test mode: skip the slow peer comparison there.
    if !std::env::args().any(|a| a == "--test") {
        peers(dir.path(), &rows);
        per_signal();
        default_family_model();
    }
}
