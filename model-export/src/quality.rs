//! The detection-quality benchmark protocols, run with one [`TrainConfig`] for every series.
//!
//! * NAB `realAWSCloudwatch`: for each series, train on its first 15% (NAB's probationary
//!   period), score the whole series causally (so features and the alarm rule are warm when the
//!   scored part starts) and count only the remaining 85%; counts are pooled over the series.
//! * SMD `machine-2-1`: train on `train/`, score `test/` preceded by the tail of `train/` (the
//!   test part follows the training part in time, so an agent would be warm), count `test/`.
//!
//! `benches/quality.rs` runs both and prints them beside the naive scikit-learn baseline.

use crate::dataset::{
    LabelWindows, Series, Windows, read_csv, read_point_labels, read_smd, windows_for,
};
use crate::detect::{DetectError, TrainConfig, train_model};
use crate::eval::Counts;
use std::path::{Path, PathBuf};

/// Share of each NAB series used for training (NAB's probationary period).
pub const NAB_TRAIN_FRACTION: f64 = 0.15;

/// NAB: pooled counts over every series of `<root>/NAB/data/realAWSCloudwatch`.
pub fn nab(root: &Path, cfg: &TrainConfig) -> Result<Counts, DetectError> {
    let dir = root.join("NAB/data/realAWSCloudwatch");
    let labels = LabelWindows::read(&root.join("NAB/labels/combined_windows.json"))?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|source| crate::dataset::DataError::Io {
            path: dir.clone(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .collect();
    files.sort();
    let mut total = Counts::default();
    for f in files {
        let series = read_csv(&f)?;
        let windows = windows_for(&labels, &series)?;
        let cut = (series.rows.len() as f64 * NAB_TRAIN_FRACTION).round() as usize;
        let c = train_then_score(&series.slice(0..cut), &series, cut, &windows, cfg)?;
        tracing::info!(series = %series.name, f1 = c.metrics().f1, hit = c.windows_hit, windows = c.windows, fa_events = c.false_alarm_events, "nab series");
        total.add(&c);
    }
    Ok(total)
}

/// SMD machine-2-1: counts on `test/`.
pub fn smd(root: &Path, cfg: &TrainConfig) -> Result<Counts, DetectError> {
    let base = root.join("SMD/ServerMachineDataset");
    let train = read_smd(&base.join("train/machine-2-1.txt"))?;
    let test = read_smd(&base.join("test/machine-2-1.txt"))?;
    let labels = read_point_labels(&base.join("test_label/machine-2-1.txt"))?;
    if labels.len() != test.rows.len() {
        return Err(crate::dataset::DataError::LabelCount {
            path: base.join("test_label/machine-2-1.txt"),
            labels: labels.len(),
            rows: test.rows.len(),
        }
        .into());
    }
    // Warm the features, the score smoother (five half-lives leave 3% of its start) and the
    // alarm rule on the end of the training part.
    let warm = cfg
        .features
        .warmup()
        .max(cfg.alarm.n as usize)
        .max(5 * cfg.alarm.smoothing_half_life as usize)
        .min(train.rows.len());
    let mut joined = train.slice(train.rows.len() - warm..train.rows.len());
    joined.rows.extend(test.rows.iter().cloned());
    let mut points = vec![false; warm];
    points.extend(labels);
    let windows = Windows::from_points(&points);
    train_then_score(&train, &joined, warm, &windows, cfg)
}

/// Trains on `train`, runs the detector over all of `run`, and counts rows `from..` of `run`.
fn train_then_score(
    train: &Series,
    run: &Series,
    from: usize,
    windows: &Windows,
    cfg: &TrainConfig,
) -> Result<Counts, DetectError> {
    let (detector, _) = train_model(std::slice::from_ref(train), None, cfg)?;
    let scored = detector.run(run)?;
    let n = run.rows.len();
    Ok(Counts::of(&scored.alarms[from..n], &windows.slice(from..n)))
}
