//! Detection-quality bench: the default configuration chosen by leave-one-machine-out (LOMO)
//! over NAB realAWSCloudwatch, SMD machines 2-1, 2-2, 3-4 and ASD omi-1 … omi-6, beside the
//! naive per-metric scikit-learn baseline run on the same data.
//!
//! `cargo bench --bench quality` prints markdown (the tables in docs/benchmarks.md, "Detection
//! quality"):
//! 1. LOMO: each machine (each NAB series) scored with the grid cell chosen on all the *other*
//!    machines (`Table::select`), pooled per data set and over all, with the baseline;
//! 2. the cell chosen on every machine (what `TrainConfig::default()` must be), and whether
//!    it is;
//! 3. the LOMO operating curve: the same, with the sensitivity held at each grid value (what
//!    `--sensitivity` moves along);
//! 4. the forest-size curve: each forest configuration at the chosen alarm variant.
//!
//! Data: `$SELFHEAL_DATA`, else `shared/data` beside the repository, else /work/shared/data.
//! Python: `$SELFHEAL_PYTHON`, else `.venv/bin/python` (install with `scripts/test.sh`).
//! `SELFHEAL_LOG=info` shows progress on stderr. `SELFHEAL_QUALITY_BASELINE=0` skips the
//! baseline; `SELFHEAL_QUALITY_CONFIG=FILE.json` evaluates one `TrainConfig` instead of the
//! grid; `SELFHEAL_QUALITY_FORESTS=100x256,25x64` replaces the forest sizes of the grid
//! (trees x ψ).

use selfheal_core::model::AlarmRule;
use selfheal_model_export::detect::{DEFAULT_SENSITIVITY, TrainConfig, sensitivity_contamination};
use selfheal_model_export::eval::{Counts, Metrics};
use selfheal_model_export::quality::{
    self, AlarmVariant, Cell, DataSet, Grid, PerDataSet, Table, objective, pooled_all,
};
use selfheal_model_export::train::{ForestLayout, ForestParams, PER_SIGNAL_OFFSET_QUANTILE};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn data_root() -> PathBuf {
    if let Some(p) = std::env::var_os("SELFHEAL_DATA") {
        return PathBuf::from(p);
    }
    let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    if beside.is_dir() {
        beside
    } else {
        PathBuf::from("/work/shared/data")
    }
}

fn python() -> PathBuf {
    std::env::var_os("SELFHEAL_PYTHON").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"),
        PathBuf::from,
    )
}

/// Baseline counts per contamination ("0.01", "0.001") and data set.
type Baseline = BTreeMap<String, BTreeMap<String, Counts>>;

fn baseline(root: &Path) -> Result<Baseline, String> {
    let py = python();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/quality_baseline.py");
    let out = Command::new(&py)
        .arg(&script)
        .arg(root)
        .output()
        .map_err(|e| {
            format!(
                "{}: {e}; run scripts/test.sh to install the venv",
                py.display()
            )
        })?;
    if !out.status.success() {
        return Err(format!(
            "baseline failed (run scripts/test.sh to install scikit-learn): {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("baseline output: {e}"))
}

fn key(d: DataSet) -> &'static str {
    match d {
        DataSet::Nab => "nab",
        DataSet::Smd => "smd",
        DataSet::Asd => "asd",
    }
}

fn header() {
    println!(
        "| data set | detector | precision | recall | F1 | windows hit | false-alarm events /1000 | mean delay (points) | targets met |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
}

fn row(d: Option<DataSet>, who: &str, m: &Metrics) {
    let c = &m.counts;
    let met = d.map_or_else(
        || "-".to_owned(),
        |d| format!("{}/3", quality::targets_met(d, m)),
    );
    println!(
        "| {} | {who} | {:.3} | {:.3} | {:.3} | {}/{} ({:.0} %) | {:.2} | {} | {met} |",
        d.map_or("all, pooled", DataSet::name),
        m.precision,
        m.recall,
        m.f1,
        c.windows_hit,
        c.windows,
        100.0 * c.windows_hit as f64 / c.windows.max(1) as f64,
        m.false_alarm_events_per_1000,
        m.mean_detection_delay_points
            .map_or_else(|| "-".to_owned(), |d| format!("{d:.1}")),
    );
}

fn table(per: &PerDataSet, who: &str, base: Option<&Baseline>) {
    for (d, m) in per {
        row(Some(*d), who, m);
        if let Some(b) = base {
            for (q, sets) in b.iter().rev() {
                if let Some(c) = sets.get(key(*d)) {
                    row(Some(*d), &format!("naive sklearn q={q}"), &c.metrics());
                }
            }
        }
    }
    row(None, who, &pooled_all(per));
    if let Some(b) = base {
        for (q, sets) in b.iter().rev() {
            let mut c = Counts::default();
            for s in sets.values() {
                c.add(s);
            }
            row(None, &format!("naive sklearn q={q}"), &c.metrics());
        }
    }
}

/// The forest sizes of the grid: `SELFHEAL_QUALITY_FORESTS` (`TREESxPSI,...`) or the default.
fn forest_sizes() -> Result<Vec<(usize, usize)>, String> {
    let Ok(text) = std::env::var("SELFHEAL_QUALITY_FORESTS") else {
        return Ok(vec![(10, 64), (25, 128), (100, 256)]);
    };
    text.split(',')
        .map(|p| {
            let (t, s) = p
                .split_once('x')
                .ok_or_else(|| format!("SELFHEAL_QUALITY_FORESTS: {p:?} is not TREESxPSI"))?;
            Ok((
                t.trim().parse().map_err(|e| format!("{p:?}: {e}"))?,
                s.trim().parse().map_err(|e| format!("{p:?}: {e}"))?,
            ))
        })
        .collect()
}

/// The most bytes of `model.onnx` a family model may take (issue 16).
const MODEL_BUDGET: usize = 256 * 1024;

/// Sensitivities of the grid (the operating curve's points).
const SENSITIVITIES: [f64; 11] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

fn grid() -> Result<Grid, String> {
    let base = TrainConfig::default();
    let forests = forest_sizes()?
        .into_iter()
        .flat_map(|(n_trees, max_samples)| {
            let base = base.clone();
            // Per size: the plain per-signal layout without and with the range guard, and with
            // the guard, each forest's score normalized to the set's median spread, the
            // forests level-free (the value left to the guard, so at three guard weights),
            // and both. The largest size
            // (the previous default) only with the guard and plain, to keep the grid's cost
            // down.
            let layouts: &[(f32, bool, bool)] = if n_trees >= 100 {
                &[(0.3, false, false)]
            } else {
                &[
                    (0.0, false, false),
                    (0.3, false, false),
                    (0.3, true, false),
                    (0.15, false, true),
                    (0.3, false, true),
                    (0.6, false, true),
                    (0.3, true, true),
                ]
            };
            layouts
                .iter()
                .map(move |&(range_weight, normalize, level_free)| TrainConfig {
                    forest: ForestParams {
                        n_trees,
                        max_samples,
                        ..base.forest
                    },
                    layout: ForestLayout::PerSignal {
                        offset_quantile: PER_SIGNAL_OFFSET_QUANTILE,
                        normalize,
                        level_free,
                    },
                    range_weight,
                    ..base.clone()
                })
        })
        .collect();
    let mut variants = Vec::new();
    for half_life in [0, 5, 15] {
        for (k, n) in [(1, 1), (2, 5), (3, 15)] {
            for adapt in [0, 1000] {
                for spike_ratio in [0.0, 0.25] {
                    for sensitivity in SENSITIVITIES {
                        variants.push(AlarmVariant {
                            alarm: AlarmRule::k_of_n(k, n).smoothed(half_life).adapting(adapt),
                            sensitivity,
                            spike_ratio,
                        });
                    }
                }
            }
        }
    }
    Ok(Grid { forests, variants })
}

/// A forest configuration as the reports name it.
fn forest_name(f: &TrainConfig) -> String {
    let (normalize, level_free) = match f.layout {
        ForestLayout::PerSignal {
            normalize,
            level_free,
            ..
        } => (normalize, level_free),
        ForestLayout::Joint => (false, false),
    };
    format!(
        "{} trees x psi {}, range guard {}{}{}",
        f.forest.n_trees,
        f.forest.max_samples,
        f.range_weight,
        if normalize { ", normalized" } else { "" },
        if level_free { ", level-free" } else { "" },
    )
}

fn describe(t: &Table, c: Cell) -> String {
    let f = &t.grid.forests[c.forest];
    let v = &t.grid.variants[c.variant];
    format!(
        "{}, alarm {}-of-{} half-life {} adapt {}, sensitivity {:.1} (contamination {:.4}), spike {}",
        forest_name(f),
        v.alarm.k,
        v.alarm.n,
        v.alarm.smoothing_half_life,
        v.alarm.adapt_window,
        v.sensitivity,
        v.contamination(),
        if v.spike_ratio > 0.0 {
            format!("{:.5}", v.spike_contamination())
        } else {
            "off".into()
        }
    )
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    // `cargo bench` passes `--bench`; any other argument (a filter) is accepted and ignored.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("SELFHEAL_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let root = data_root();
    let machines =
        quality::machines(&root).map_err(|e| format!("reading {}: {e}", root.display()))?;
    let base = if std::env::var_os("SELFHEAL_QUALITY_BASELINE").is_some_and(|v| v == "0") {
        None
    } else {
        Some(baseline(&root)?)
    };
    if let Some(p) = std::env::var_os("SELFHEAL_QUALITY_CONFIG") {
        let text = std::fs::read_to_string(&p).map_err(|e| format!("{p:?}: {e}"))?;
        let cfg: TrainConfig = serde_json::from_str(&text).map_err(|e| format!("{p:?}: {e}"))?;
        let per = quality::evaluate(&machines, &cfg).map_err(|e| e.to_string())?;
        println!(
            "configuration: {}\n",
            serde_json::to_string(&cfg).unwrap_or_default()
        );
        header();
        table(&per, "selfheal", base.as_ref());
        return Ok(());
    }

    let full = Table::build(grid()?, &machines).map_err(|e| e.to_string())?;
    // The model-size budget (issue 16): a family model of at most 256 KB of model.onnx. Each
    // forest configuration's size is measured on a 13-signal model (the cpu family's count,
    // the largest family) grown on SMD machine-2-1's first 13 metrics; only those that fit
    // are candidates for the default, the others are shown for the quality-size curve.
    let smd = machines
        .iter()
        .find(|m| m.data_set == DataSet::Smd)
        .ok_or("no SMD machine")?;
    let thirteen: Vec<String> = smd.train.columns.iter().take(13).cloned().collect();
    let sample = smd
        .train
        .select_columns(&thirteen)
        .map_err(|e| e.to_string())?;
    let mut sizes = Vec::new();
    for f in &full.grid.forests {
        let (det, _) =
            selfheal_model_export::detect::train_model(std::slice::from_ref(&sample), None, f)
                .map_err(|e| e.to_string())?;
        let bytes = selfheal_model_export::onnx::export_set(&det.forest)
            .map_err(|e| e.to_string())?
            .len();
        sizes.push((f.clone(), bytes));
    }
    let size_of = |f: &TrainConfig| {
        sizes
            .iter()
            .find(|(k, _)| k == f)
            .map_or(usize::MAX, |(_, b)| *b)
    };
    println!(
        "model.onnx of a 13-signal model per forest configuration (budget {MODEL_BUDGET} bytes):\n"
    );
    for f in &full.grid.forests {
        println!(
            "- {}: {} bytes{}",
            forest_name(f),
            size_of(f),
            if size_of(f) <= MODEL_BUDGET {
                ""
            } else {
                " (over budget)"
            }
        );
    }
    println!();
    let table_ = full.restricted_forests(|f| size_of(f) <= MODEL_BUDGET);
    let t = &table_;
    let (lomo, chosen) = t.lomo();
    println!(
        "grid: {} forest configurations x {} alarm variants; {} machines ({} NAB series, {} SMD, {} ASD)\n",
        t.grid.forests.len(),
        t.grid.variants.len(),
        machines.len(),
        t.data_sets.iter().filter(|d| **d == DataSet::Nab).count(),
        t.data_sets.iter().filter(|d| **d == DataSet::Smd).count(),
        t.data_sets.iter().filter(|d| **d == DataSet::Asd).count(),
    );
    println!("### Leave-one-machine-out\n");
    header();
    table(&lomo, "selfheal, LOMO", base.as_ref());
    let mut folds: BTreeMap<String, usize> = BTreeMap::new();
    for c in &chosen {
        *folds.entry(describe(t, *c)).or_default() += 1;
    }
    println!("\ncells chosen by the {} folds:\n", chosen.len());
    for (d, n) in &folds {
        println!("- {n} × {d}");
    }

    let all = t.select(None);
    let in_sample = t.pooled(all, |_| true);
    println!(
        "\n### Chosen on every machine (the default)\n\n{}\n",
        describe(t, all)
    );
    println!("objective {:?}\n", objective(&in_sample));
    header();
    table(&in_sample, "selfheal, in-sample", None);
    let d = TrainConfig::default();
    let v = &t.grid.variants[all.variant];
    let f = &t.grid.forests[all.forest];
    let is_default = d.forest == f.forest
        && d.layout == f.layout
        && d.range_weight == f.range_weight
        && d.alarm == v.alarm
        && d.threshold
            == selfheal_model_export::detect::ThresholdRule::Contamination(v.contamination())
        && (d.spike_contamination - v.spike_contamination()).abs() < 1e-12
        && DEFAULT_SENSITIVITY == v.sensitivity;
    println!(
        "\nTrainConfig::default() {} this cell.",
        if is_default { "is" } else { "is NOT" }
    );

    println!("\n### LOMO operating curve (sensitivity held, the rest chosen per fold)\n");
    let sets: Vec<DataSet> = lomo.iter().map(|(d, _)| *d).collect();
    print!("| sensitivity | contamination |");
    for d in &sets {
        print!(" {}: windows hit, events /1000, F1 |", d.name());
    }
    println!();
    println!("|---|---|{}", "---|".repeat(sets.len()));
    for s in SENSITIVITIES {
        let sub = t.restricted(|v| v.sensitivity == s);
        let (per, _) = sub.lomo();
        print!("| {s:.1} | {:.4} |", sensitivity_contamination(s));
        for (_, m) in &per {
            print!(
                " {}/{}, {:.2}, {:.3} |",
                m.counts.windows_hit, m.counts.windows, m.false_alarm_events_per_1000, m.f1
            );
        }
        println!();
    }

    let t = &full;
    let all = Cell {
        forest: full
            .grid
            .forests
            .iter()
            .position(|f| *f == table_.grid.forests[all.forest])
            .unwrap_or(0),
        variant: all.variant,
    };
    println!("\n### Forest size (the chosen alarm variant, in-sample)\n");
    print!("| forest configuration |");
    for d in &sets {
        print!(" {}: windows hit, events /1000, F1 |", d.name());
    }
    println!();
    println!("|---|{}", "---|".repeat(sets.len()));
    for (fi, f) in t.grid.forests.iter().enumerate() {
        let per = t.pooled(
            Cell {
                forest: fi,
                variant: all.variant,
            },
            |_| true,
        );
        print!("| {} |", forest_name(f));
        for (_, m) in &per {
            print!(
                " {}/{}, {:.2}, {:.3} |",
                m.counts.windows_hit, m.counts.windows, m.false_alarm_events_per_1000, m.f1
            );
        }
        println!();
    }
    Ok(())
}
