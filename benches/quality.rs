//! Detection-quality bench: selfheal's detector (one configuration for every series) against the
//! naive per-metric scikit-learn baseline, on NAB realAWSCloudwatch and SMD machine-2-1.
//!
//! `cargo bench --bench quality` prints a markdown table (the one in docs/benchmarks.md).
//! Data: `$SELFHEAL_DATA`, else `shared/data` beside the repository, else /work/shared/data.
//! Python: `$SELFHEAL_PYTHON`, else `.venv/bin/python` (install with `scripts/test.sh`).
//! `SELFHEAL_LOG=info` shows progress and per-series results on stderr.
//! `SELFHEAL_QUALITY_CONFIG=FILE.json` replaces the configuration (a `TrainConfig`), for
//! exploring; `SELFHEAL_QUALITY_BASELINE=0` skips the baseline.

use selfheal_model_export::detect::TrainConfig;
use selfheal_model_export::eval::{Counts, Metrics};
use selfheal_model_export::quality;
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

fn baseline(root: &Path) -> Result<(Counts, Counts), String> {
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
    #[derive(serde::Deserialize)]
    struct Both {
        nab: Counts,
        smd: Counts,
    }
    let b: Both =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("baseline output: {e}"))?;
    Ok((b.nab, b.smd))
}

fn row(name: &str, m: &Metrics) -> String {
    let c = &m.counts;
    format!(
        "| {name} | {:.3} | {:.3} | {:.3} | {}/{} | {:.1} | {:.2} | {} |",
        m.precision,
        m.recall,
        m.f1,
        c.windows_hit,
        c.windows,
        m.false_alarm_points_per_1000,
        m.false_alarm_events_per_1000,
        m.mean_detection_delay_points
            .map_or_else(|| "-".to_owned(), |d| format!("{d:.1}")),
    )
}

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; any other argument (a filter) is accepted and ignored.
    // Progress and per-series lines go to stderr at SELFHEAL_LOG=info.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("SELFHEAL_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let root = data_root();
    let cfg = match std::env::var_os("SELFHEAL_QUALITY_CONFIG") {
        Some(p) => {
            let text = match std::fs::read_to_string(&p) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("{}: {e}", Path::new(&p).display());
                    return ExitCode::FAILURE;
                }
            };
            match serde_json::from_str::<TrainConfig>(&text) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{}: {e}", Path::new(&p).display());
                    return ExitCode::FAILURE;
                }
            }
        }
        None => TrainConfig::default(),
    };
    let ours = quality::nab(&root, &cfg).and_then(|n| Ok((n, quality::smd(&root, &cfg)?)));
    let (nab, smd) = match ours {
        Ok(v) => v,
        Err(e) => {
            eprintln!("quality run on {} failed: {e}", root.display());
            return ExitCode::FAILURE;
        }
    };
    let base = if std::env::var_os("SELFHEAL_QUALITY_BASELINE").is_some_and(|v| v == "0") {
        None
    } else {
        match baseline(&root) {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        }
    };
    println!(
        "configuration: {}",
        serde_json::to_string(&cfg).unwrap_or_default()
    );
    println!();
    println!(
        "| detector | precision | recall | F1 | windows hit | false-alarm points /1000 | false-alarm events /1000 | mean delay (points) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!("{}", row("NAB realAWSCloudwatch: selfheal", &nab.metrics()));
    if let Some((bn, _)) = &base {
        println!(
            "{}",
            row("NAB realAWSCloudwatch: naive sklearn", &bn.metrics())
        );
    }
    println!("{}", row("SMD machine-2-1: selfheal", &smd.metrics()));
    if let Some((_, bs)) = &base {
        println!("{}", row("SMD machine-2-1: naive sklearn", &bs.metrics()));
    }
    ExitCode::SUCCESS
}
