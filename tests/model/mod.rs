//! `selfheal model ...` end to end, and the trainer against scikit-learn.
//!
//! The CLI tests run the real binary on CSV files written here (train → score → eval →
//! publish). The scikit-learn test grows our forest and scikit-learn's `IsolationForest` on the
//! same feature rows (selfheal's own features) and compares their point-wise F1; it needs the
//! venv (`scripts/test.sh`).

use selfheal_core::features::FeatureSpec;
use selfheal_core::forest::ForestSet;
use selfheal_core::model::{AlarmRule, AlarmState, MODEL_FILE, ModelManifest};
use selfheal_model_export::dataset::{Series, Windows, features};
use selfheal_model_export::detect::{contamination_threshold, score_rows};
use selfheal_model_export::eval::Counts;
use selfheal_model_export::train::{ForestParams, train_forest};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A small deterministic generator (SplitMix64) so fixtures need no extra dependency.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u = self.unit().max(1e-300);
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// Three daily-periodic noisy signals; in each of `windows` one signal shifts or gets noisy.
fn synthetic(rows: usize, windows: &[(usize, usize)], seed: u64) -> Vec<Vec<f64>> {
    let mut g = Gen(seed);
    (0..rows)
        .map(|i| {
            let phase = i as f64 * std::f64::consts::TAU / 288.0;
            let mut r = vec![
                50.0 + 10.0 * phase.sin() + 2.0 * g.normal(),
                20.0 + 5.0 * phase.cos() + 1.0 * g.normal(),
                5.0 + 0.5 * g.normal(),
            ];
            for (w, &(a, b)) in windows.iter().enumerate() {
                if (a..=b).contains(&i) {
                    match w % 3 {
                        0 => r[0] += 12.0,
                        1 => r[1] += 8.0 * g.normal(),
                        _ => r[2] += 3.0,
                    }
                }
            }
            r
        })
        .collect()
}

fn python() -> PathBuf {
    let py = std::env::var_os("SELFHEAL_PYTHON").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"),
        PathBuf::from,
    );
    assert!(
        py.exists(),
        "{} not found: run scripts/test.sh to install the Python test tools",
        py.display()
    );
    py
}

fn write_rows(path: &Path, m: &selfheal_model_export::train::FeatureMatrix) {
    let mut s = String::new();
    for i in 0..m.n_rows() {
        let row: Vec<String> = m.row(i).iter().map(f32::to_string).collect();
        s.push_str(&row.join(","));
        s.push('\n');
    }
    std::fs::write(path, s).expect("write feature rows");
}

#[test]
fn trainer_f1_matches_scikit_learn_on_the_same_features() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = FeatureSpec::standard(vec!["a".into(), "b".into(), "c".into()]);
    let series = |rows| Series {
        name: "s".into(),
        columns: spec.signals.clone(),
        timestamps: None,
        rows,
    };
    let train = features(&series(synthetic(4000, &[], 1)), &spec).expect("features");
    let train = train.slice(spec.warmup()..train.n_rows());
    let wins: Vec<(usize, usize)> = (0..30)
        .map(|w| (300 + w * 400, 300 + w * 400 + 9))
        .collect();
    let test = features(&series(synthetic(12_300, &wins, 2)), &spec).expect("features");
    let labels = Windows::new(wins.clone());
    let (trees, psi, contamination) = (100, 256, 0.01);

    // Ours: mean F1 over seeds, alarm = score >= contamination threshold (1-of-1). One forest's
    // F1 on this fixture varies by about 0.05 with the seed (for scikit-learn too), so both
    // sides average 16 forests to compare the algorithms rather than two draws.
    let seeds: Vec<u64> = (0..16).collect();
    let mut ours = 0.0;
    for &seed in &seeds {
        let p = ForestParams {
            n_trees: trees,
            max_samples: psi,
            max_depth: None,
            seed,
        };
        let forest = ForestSet::single(train_forest(&train, &p).expect("train"));
        let t = contamination_threshold(&score_rows(&forest, &train), contamination);
        let mut st = AlarmState::new(AlarmRule::k_of_n(1, 1));
        let alarms: Vec<bool> = score_rows(&forest, &test)
            .iter()
            .map(|&s| st.push(s, t))
            .collect();
        ours += Counts::of(&alarms, &labels).metrics().f1 / seeds.len() as f64;
    }

    let (tr, te, lb) = (
        dir.path().join("train.csv"),
        dir.path().join("test.csv"),
        dir.path().join("labels.txt"),
    );
    write_rows(&tr, &train);
    write_rows(&te, &test);
    let mut l = String::new();
    for p in labels.points(test.n_rows()) {
        writeln!(l, "{}", u8::from(p)).expect("string write");
    }
    std::fs::write(&lb, l).expect("write labels");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/sklearn_iforest_f1.py");
    let out = Command::new(python())
        .arg(&script)
        .args([&tr, &te, &lb])
        .args([
            trees.to_string(),
            psi.to_string(),
            contamination.to_string(),
            seeds.len().to_string(),
        ])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "scikit-learn script failed (run scripts/test.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let theirs = v["mean_f1"].as_f64().expect("mean_f1");
    assert!(
        theirs > 0.2,
        "the fixture should be detectable at all (sklearn F1 {theirs:.3})"
    );
    assert!(
        (ours - theirs).abs() <= 0.03,
        "F1 ours {ours:.3} vs scikit-learn {theirs:.3}"
    );
}

fn selfheal(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_selfheal"))
        .args(args)
        .env("SELFHEAL_LOG", "warn")
        .output()
        .expect("run selfheal")
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "selfheal failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

#[test]
fn train_warns_when_the_model_outgrows_a_configmap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, _, _) = write_fixture(dir.path());
    let p = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
    let train = |trees: &str| {
        let out = dir.path().join(format!("model-{trees}"));
        let run = selfheal(&[
            "model",
            "train",
            "--family",
            "demo",
            "--input",
            &p(&data),
            "--out",
            &p(&out),
            "--trees",
            trees,
            // The sizes below are for trees of 256 samples (the default is smaller).
            "--max-samples",
            "256",
        ]);
        let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
        ok(run);
        let bytes = std::fs::metadata(out.join(MODEL_FILE))
            .expect("model.onnx")
            .len();
        (bytes, stderr.contains("too big for a ConfigMap"))
    };
    // Three signals: three forests of ~250 KB per 100 trees.
    let (big, warned) = train("200");
    assert!(big > 1 << 20 && warned, "{big} bytes, warned: {warned}");
    let (small, warned) = train("50");
    assert!(
        small < 1 << 20 && !warned,
        "{small} bytes, warned: {warned}"
    );
}

/// A CSV with RFC 3339 timestamps (5-minute spacing) and its NAB-style label windows.
fn write_fixture(dir: &Path) -> (PathBuf, PathBuf, usize) {
    let wins = [(1500, 1540), (2300, 2340), (2900, 2940)];
    let rows = synthetic(3200, &wins, 7);
    let t0 = 1_700_000_000i64;
    let ts = |i: usize| {
        time::OffsetDateTime::from_unix_timestamp(t0 + 300 * i as i64)
            .expect("time")
            .format(&time::format_description::well_known::Rfc3339)
            .expect("format")
    };
    let mut csv = String::from("timestamp,a,b,c\n");
    for (i, r) in rows.iter().enumerate() {
        writeln!(csv, "{},{},{},{}", ts(i), r[0], r[1], r[2]).expect("string write");
    }
    let data = dir.join("series.csv");
    std::fs::write(&data, csv).expect("write csv");
    let labels = dir.join("windows.json");
    let w: Vec<[String; 2]> = wins.iter().map(|&(a, b)| [ts(a), ts(b)]).collect();
    std::fs::write(
        &labels,
        serde_json::json!({ "fixtures/series.csv": w }).to_string(),
    )
    .expect("write windows");
    (data, labels, rows.len())
}

#[test]
fn train_score_eval_publish_through_the_binary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, labels, n) = write_fixture(dir.path());
    let model = dir.path().join("model");
    let p = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
    ok(selfheal(&[
        "model",
        "train",
        "--family",
        "demo",
        "--input",
        &p(&data),
        "--labels",
        &p(&labels),
        "--out",
        &p(&model),
        "--trees",
        "50",
        "--seed",
        "3",
        "--version",
        "v1",
        "--alarm-k",
        "2",
        "--alarm-n",
        "5",
        "--smoothing-half-life",
        "3",
    ]));
    let manifest: ModelManifest = serde_json::from_slice(
        &std::fs::read(model.join("manifest.json")).expect("manifest written"),
    )
    .expect("manifest parses");
    assert_eq!(manifest.family, "demo");
    assert_eq!(manifest.feature_names, manifest.features.names());
    assert_eq!(manifest.features.signals, ["a", "b", "c"]);
    assert_eq!((manifest.n_trees, manifest.seed), (50, 3));
    assert_eq!(
        manifest.forests, 3,
        "the default layout: one forest per signal"
    );
    // The flags given, and the default adaptation window.
    assert_eq!(
        manifest.alarm,
        AlarmRule::k_of_n(2, 5).smoothed(3).adapting(1000)
    );
    assert!(manifest.ordinary_score.is_some_and(f64::is_finite));

    // score: one row per input row; the alarm column is the k-of-n rule over the smoothed score
    // column, as the agent applies it.
    let scored = dir.path().join("scored.csv");
    ok(selfheal(&[
        "model",
        "score",
        "--model",
        &p(&model),
        "--input",
        &p(&data),
        "--out",
        &p(&scored),
    ]));
    let text = std::fs::read_to_string(&scored).expect("scored csv");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("timestamp,score,alarm"));
    let mut st = AlarmState::new(manifest.alarm)
        .with_ordinary(
            manifest
                .ordinary_score
                .expect("the trainer writes the ordinary score"),
        )
        .with_spike(manifest.spike_threshold);
    let mut rows = 0;
    let mut alarmed = 0;
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let score: f64 = f[1].parse().expect("score");
        // A forest's score is in (0, 1]; the set's is its excess over the forest's offset, plus
        // the range guard's score (at most its weight times the capped excess).
        let guard_max = f64::from(
            selfheal_model_export::detect::DEFAULT_RANGE_WEIGHT
                * selfheal_core::forest::RangeGuard::MAX_EXCESS,
        );
        assert!(score > -1.0 && score <= 1.0 + guard_max, "{score}");
        // Rows in the feature warm-up never alarm and are not fed to the rule, as on the node.
        let expect = rows >= manifest.features.warmup() && st.push(score, manifest.threshold);
        assert_eq!(f[2] == "1", expect, "row {rows}");
        alarmed += usize::from(expect);
        rows += 1;
    }
    assert_eq!(rows, n);
    assert!(alarmed > 0);

    // eval --json: the fixture's windows are found.
    let m: serde_json::Value = serde_json::from_str(&ok(selfheal(&[
        "model",
        "eval",
        "--model",
        &p(&model),
        "--input",
        &p(&data),
        "--labels",
        &p(&labels),
        "--json",
    ])))
    .expect("eval json");
    assert_eq!(m["points"], n);
    assert_eq!(m["windows"], 3);
    assert!(m["windows_hit"].as_u64().expect("hit") >= 2, "{m}");
    assert!(m["precision"].as_f64().expect("precision") > 0.5, "{m}");
    let human = ok(selfheal(&[
        "model",
        "eval",
        "--model",
        &p(&model),
        "--input",
        &p(&data),
        "--labels",
        &p(&labels),
    ]));
    assert!(human.contains("windows hit"), "{human}");

    // publish: a malformed S3 URL is refused clearly (S3 itself: tests/model_push.rs); a
    // directory store gets <family>/<version>/ and latest.
    let out = selfheal(&[
        "model",
        "publish",
        &p(&model),
        "--to",
        "s3://Bad_Bucket/models",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid s3://bucket/prefix URL"));
    let store = dir.path().join("store");
    ok(selfheal(&[
        "model",
        "publish",
        &p(&model),
        "--to",
        &p(&store),
    ]));
    assert_eq!(
        std::fs::read_to_string(store.join("demo/latest")).expect("latest"),
        "v1\n"
    );
    assert!(store.join("demo/v1/model.onnx").is_file());
    assert!(store.join("demo/v1/manifest.json").is_file());
    // Publishing the same version again is a no-op (another model under v1 is refused: the
    // publish unit tests and tests/model_push.rs).
    ok(selfheal(&[
        "model",
        "publish",
        &p(&model),
        "--to",
        &p(&store),
    ]));
    assert_eq!(
        std::fs::read_to_string(store.join("demo/latest")).expect("latest"),
        "v1\n"
    );
}

#[test]
fn bad_csv_is_reported_with_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("bad.csv");
    std::fs::write(&data, "timestamp,a\n1700000000,1\n1700000300,one\n").expect("write");
    let out = selfheal(&[
        "model",
        "train",
        "--family",
        "demo",
        "--input",
        data.to_str().expect("utf-8"),
        "--out",
        dir.path().join("m").to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.csv:3: column \"a\": cannot read \"one\" as a number"),
        "{err}"
    );
}
