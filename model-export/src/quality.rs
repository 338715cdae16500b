//! The detection-quality protocols, and the leave-one-machine-out (LOMO) choice of the default
//! configuration.
//!
//! The development data is a list of [`Machine`]s: each NAB realAWSCloudwatch series, SMD
//! machines 2-1, 2-2 and 3-4, and ASD servers omi-1 … omi-6 ([`machines`]).
//!
//! * NAB: train on a series' first 15% (NAB's probationary period), score the whole series
//!   causally (so features and the alarm rule are warm when the counted part starts), count the
//!   remaining 85%.
//! * SMD and ASD: train on `train/`, score `test/` preceded by the last [`WARM_ROWS`] rows of
//!   `train/` (the test part follows the training part in time, so an agent would be warm),
//!   count `test/`.
//!
//! Counts are pooled per data set (sums of [`Counts`], not averages of ratios).
//!
//! A [`Grid`] is a list of forest configurations (what must be grown and scored again) times a
//! list of [`AlarmVariant`]s (what only re-reads the scores: the alarm rule and the
//! sensitivity). [`Table::build`] grows and scores each forest configuration once per machine
//! and counts every variant on it through the trainer's own [`calibrate`] and
//! [`alarms_after_warmup`], so a cell is exactly what `selfheal model train` + `model score`
//! would decide. [`Table::lomo`] then scores each machine with the configuration chosen on the
//! other machines only ([`Table::select`]).

use crate::dataset::{
    DataError, LabelWindows, Series, Windows, features, read_csv, read_point_labels, read_smd,
    spec_for, windows_for,
};
use crate::detect::{
    DetectError, TrainConfig, alarms_after_warmup, calibrate, grow_forests, score_rows,
    sensitivity_contamination, train_model,
};
use crate::eval::{Counts, Metrics};
use selfheal_core::model::{AlarmRule, AlarmState};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Share of each NAB series used for training (NAB's probationary period).
pub const NAB_TRAIN_FRACTION: f64 = 0.15;

/// Rows of the end of `train/` scored before an SMD or ASD `test/` (not counted): more than the
/// feature warm-up (60) plus five half-lives of the slowest smoothing in the grid, so features,
/// smoother and k-of-n window are warm when the counted part starts.
pub const WARM_ROWS: usize = 200;

/// A labelled data set of the development data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum DataSet {
    /// NAB realAWSCloudwatch (17 univariate series, 5-minute points).
    Nab,
    /// SMD machines 2-1, 2-2, 3-4 (38 metrics, 1-minute points).
    Smd,
    /// ASD servers omi-1 … omi-6 (19 metrics, 5-minute points).
    Asd,
}

impl DataSet {
    /// Every data set, in report order.
    pub const ALL: [DataSet; 3] = [DataSet::Nab, DataSet::Smd, DataSet::Asd];

    /// Name in reports.
    pub fn name(self) -> &'static str {
        match self {
            DataSet::Nab => "NAB realAWSCloudwatch",
            DataSet::Smd => "SMD (2-1, 2-2, 3-4)",
            DataSet::Asd => "ASD (omi-1 … omi-6)",
        }
    }

    /// The F1 target, pooled over the data set (issue 16).
    pub fn f1_target(self) -> f64 {
        match self {
            DataSet::Nab => 0.30,
            DataSet::Smd | DataSet::Asd => 0.40,
        }
    }
}

/// Windows hit, pooled per data set, that the targets ask for.
pub const HIT_TARGET: f64 = 0.90;
/// False-alarm events per 1000 points, pooled per data set, that the targets allow.
pub const EVENTS_TARGET: f64 = 5.0;

/// The targets `m` meets for `data_set`, out of three (windows hit, false-alarm events, F1).
pub fn targets_met(data_set: DataSet, m: &Metrics) -> usize {
    let hit = share(m.counts.windows_hit, m.counts.windows);
    usize::from(hit >= HIT_TARGET)
        + usize::from(m.false_alarm_events_per_1000 <= EVENTS_TARGET)
        + usize::from(m.f1 >= data_set.f1_target())
}

fn share(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// One machine (or NAB series): what is trained on, what is scored, and what is counted.
#[derive(Debug, Clone)]
pub struct Machine {
    /// Its data set.
    pub data_set: DataSet,
    /// Its name (file name).
    pub name: String,
    /// Training rows.
    pub train: Series,
    /// Rows scored, causally from the first.
    pub run: Series,
    /// First counted row of `run`.
    pub from: usize,
    /// Label windows over `run`.
    pub windows: Windows,
}

fn sorted_files(dir: &Path, ext: &str) -> Result<Vec<PathBuf>, DataError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| DataError::Io {
            path: dir.to_owned(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    Ok(files)
}

/// The NAB realAWSCloudwatch series of `<root>/NAB`.
pub fn nab_machines(root: &Path) -> Result<Vec<Machine>, DetectError> {
    let labels = LabelWindows::read(&root.join("NAB/labels/combined_windows.json"))?;
    let mut out = Vec::new();
    for f in sorted_files(&root.join("NAB/data/realAWSCloudwatch"), "csv")? {
        let series = read_csv(&f)?;
        let windows = windows_for(&labels, &series)?;
        let cut = (series.rows.len() as f64 * NAB_TRAIN_FRACTION).round() as usize;
        out.push(Machine {
            data_set: DataSet::Nab,
            name: series.name.clone(),
            train: series.slice(0..cut),
            run: series,
            from: cut,
            windows,
        });
    }
    Ok(out)
}

/// A machine in SMD's layout (`train/NAME.txt`, `test/NAME.txt`, `test_label/NAME.txt`).
pub fn split_machine(base: &Path, name: &str, data_set: DataSet) -> Result<Machine, DetectError> {
    let file = format!("{name}.txt");
    let train = read_smd(&base.join("train").join(&file))?;
    let test = read_smd(&base.join("test").join(&file))?;
    let label_path = base.join("test_label").join(&file);
    let labels = read_point_labels(&label_path)?;
    if labels.len() != test.rows.len() {
        return Err(DataError::LabelCount {
            path: label_path,
            labels: labels.len(),
            rows: test.rows.len(),
        }
        .into());
    }
    let warm = WARM_ROWS.min(train.rows.len());
    let mut run = train.slice(train.rows.len() - warm..train.rows.len());
    run.name = name.to_owned();
    run.rows.extend(test.rows.iter().cloned());
    let mut points = vec![false; warm];
    points.extend(labels);
    Ok(Machine {
        data_set,
        name: name.to_owned(),
        train,
        run,
        from: warm,
        windows: Windows::from_points(&points),
    })
}

/// SMD machines of the development data.
pub const SMD_MACHINES: [&str; 3] = ["machine-2-1", "machine-2-2", "machine-3-4"];
/// ASD servers of the development data.
pub const ASD_SERVERS: [&str; 6] = ["omi-1", "omi-2", "omi-3", "omi-4", "omi-5", "omi-6"];

/// Every machine of the development data under `root`: NAB, then SMD, then ASD.
pub fn machines(root: &Path) -> Result<Vec<Machine>, DetectError> {
    let mut out = nab_machines(root)?;
    let smd = root.join("SMD/ServerMachineDataset");
    for name in SMD_MACHINES {
        out.push(split_machine(&smd, name, DataSet::Smd)?);
    }
    let asd = root.join("ASD");
    for name in ASD_SERVERS {
        out.push(split_machine(&asd, name, DataSet::Asd)?);
    }
    Ok(out)
}

/// A machine's raw scores under one forest configuration.
#[derive(Debug, Clone)]
pub struct Scores {
    /// Raw scores of the training rows (after the feature warm-up).
    pub train: Vec<f64>,
    /// Raw scores of every row of `run`.
    pub run: Vec<f64>,
    /// The feature warm-up, in rows.
    pub warmup: usize,
}

/// Grows `cfg`'s forests on `m.train` and scores its training rows and `m.run`.
pub fn score_machine(m: &Machine, cfg: &TrainConfig) -> Result<Scores, DetectError> {
    let spec = spec_for(&cfg.features, &m.train);
    let grown = grow_forests(std::slice::from_ref(&m.train), None, None, &spec, cfg)?;
    let run = score_rows(&grown.forest, &features(&m.run, &spec)?);
    Ok(Scores {
        train: grown.train_scores.into_iter().flatten().collect(),
        run,
        warmup: spec.warmup(),
    })
}

/// What only re-reads a machine's scores: the alarm rule and the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AlarmVariant {
    /// The alarm rule.
    pub alarm: AlarmRule,
    /// `--sensitivity`: the threshold's contamination is [`sensitivity_contamination`] of it.
    pub sensitivity: f64,
    /// Spike share as a fraction of the contamination (0: no spike threshold).
    pub spike_ratio: f64,
}

impl AlarmVariant {
    /// The threshold's contamination.
    pub fn contamination(&self) -> f64 {
        sensitivity_contamination(self.sensitivity)
    }

    /// The spike threshold's contamination.
    pub fn spike_contamination(&self) -> f64 {
        self.contamination() * self.spike_ratio
    }

    /// Counts of machine `m` with scores `s` under this variant. A variant whose threshold
    /// `m`'s training set is too small to place is a model `selfheal model train` refuses: it
    /// counts as one that never alarms (every window missed).
    pub fn counts(&self, m: &Machine, s: &Scores) -> Result<Counts, DetectError> {
        let cal = match calibrate(
            std::slice::from_ref(&s.train),
            self.alarm,
            self.contamination(),
            self.spike_contamination(),
        ) {
            Ok(cal) => cal,
            Err(DetectError::TooFewTrainingRows { .. }) => {
                let n = s.run.len();
                return Ok(Counts::of(
                    &vec![false; n - m.from],
                    &m.windows.slice(m.from..n),
                ));
            }
            Err(e) => return Err(e),
        };
        let state = AlarmState::new(self.alarm)
            .with_ordinary(cal.ordinary)
            .with_spike(cal.spike);
        let alarms = alarms_after_warmup(&s.run, s.warmup, cal.threshold, state);
        let n = alarms.len();
        Ok(Counts::of(&alarms[m.from..n], &m.windows.slice(m.from..n)))
    }
}

/// Forest configurations times alarm variants.
#[derive(Debug, Clone)]
pub struct Grid {
    /// Forest configurations (their `alarm`, `threshold` and `spike_contamination` are
    /// replaced by each variant's).
    pub forests: Vec<TrainConfig>,
    /// Alarm variants.
    pub variants: Vec<AlarmVariant>,
}

/// One cell of a [`Grid`]: a forest configuration and a variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cell {
    /// Index into [`Grid::forests`].
    pub forest: usize,
    /// Index into [`Grid::variants`].
    pub variant: usize,
}

/// Counts of every machine in every cell.
#[derive(Debug, Clone)]
pub struct Table {
    /// The grid.
    pub grid: Grid,
    /// Data set of each machine.
    pub data_sets: Vec<DataSet>,
    /// Names of the machines.
    pub names: Vec<String>,
    /// `counts[forest][variant][machine]`.
    pub counts: Vec<Vec<Vec<Counts>>>,
}

/// Pooled metrics per data set, in [`DataSet::ALL`] order, of the data sets present.
pub type PerDataSet = Vec<(DataSet, Metrics)>;

impl Table {
    /// Grows and scores every forest configuration on every machine and counts every variant.
    pub fn build(grid: Grid, machines: &[Machine]) -> Result<Table, DetectError> {
        let mut counts = Vec::with_capacity(grid.forests.len());
        for (fi, cfg) in grid.forests.iter().enumerate() {
            let mut per_variant = vec![Vec::with_capacity(machines.len()); grid.variants.len()];
            for m in machines {
                let scores = score_machine(m, cfg)?;
                for (vi, v) in grid.variants.iter().enumerate() {
                    per_variant[vi].push(v.counts(m, &scores)?);
                }
            }
            tracing::info!(
                forest = fi,
                of = grid.forests.len(),
                "forest configuration scored"
            );
            counts.push(per_variant);
        }
        Ok(Table {
            grid,
            data_sets: machines.iter().map(|m| m.data_set).collect(),
            names: machines.iter().map(|m| m.name.clone()).collect(),
            counts,
        })
    }

    /// The same table with only the variants `keep` admits (e.g. one sensitivity, for a point
    /// of the LOMO operating curve).
    pub fn restricted(&self, keep: impl Fn(&AlarmVariant) -> bool) -> Table {
        let idx: Vec<usize> = (0..self.grid.variants.len())
            .filter(|&i| keep(&self.grid.variants[i]))
            .collect();
        Table {
            grid: Grid {
                forests: self.grid.forests.clone(),
                variants: idx.iter().map(|&i| self.grid.variants[i]).collect(),
            },
            data_sets: self.data_sets.clone(),
            names: self.names.clone(),
            counts: self
                .counts
                .iter()
                .map(|per_variant| idx.iter().map(|&i| per_variant[i].clone()).collect())
                .collect(),
        }
    }

    /// The same table with only the forest configurations `keep` admits (e.g. those that fit
    /// the node's model-size budget).
    pub fn restricted_forests(&self, keep: impl Fn(&TrainConfig) -> bool) -> Table {
        let idx: Vec<usize> = (0..self.grid.forests.len())
            .filter(|&i| keep(&self.grid.forests[i]))
            .collect();
        Table {
            grid: Grid {
                forests: idx.iter().map(|&i| self.grid.forests[i].clone()).collect(),
                variants: self.grid.variants.clone(),
            },
            data_sets: self.data_sets.clone(),
            names: self.names.clone(),
            counts: idx.iter().map(|&i| self.counts[i].clone()).collect(),
        }
    }

    /// Every cell.
    pub fn cells(&self) -> impl Iterator<Item = Cell> + '_ {
        (0..self.grid.forests.len()).flat_map(move |forest| {
            (0..self.grid.variants.len()).map(move |variant| Cell { forest, variant })
        })
    }

    /// Pooled metrics per data set of `cell` over the machines `keep` admits.
    pub fn pooled(&self, cell: Cell, keep: impl Fn(usize) -> bool) -> PerDataSet {
        let per_machine = &self.counts[cell.forest][cell.variant];
        DataSet::ALL
            .into_iter()
            .filter_map(|d| {
                let mut c = Counts::default();
                let mut any = false;
                for (i, mc) in per_machine.iter().enumerate() {
                    if self.data_sets[i] == d && keep(i) {
                        c.add(mc);
                        any = true;
                    }
                }
                any.then(|| (d, c.metrics()))
            })
            .collect()
    }

    /// The cell chosen on every machine but `excluded` (all of them when `None`): the one
    /// meeting the most targets (three per data set, pooled per data set), ties broken by the
    /// largest sum over data sets of windows-hit share plus F1, then by the lower index.
    pub fn select(&self, excluded: Option<usize>) -> Cell {
        let mut best: Option<(Cell, (usize, f64))> = None;
        for cell in self.cells() {
            let key = objective(&self.pooled(cell, |i| Some(i) != excluded));
            if best
                .as_ref()
                .is_none_or(|(_, b)| key.0 > b.0 || (key.0 == b.0 && key.1 > b.1))
            {
                best = Some((cell, key));
            }
        }
        best.map_or(
            Cell {
                forest: 0,
                variant: 0,
            },
            |(c, _)| c,
        )
    }

    /// Leave-one-machine-out: each machine counted under the cell chosen without it. Returns
    /// the pooled metrics per data set and each machine's chosen cell.
    pub fn lomo(&self) -> (PerDataSet, Vec<Cell>) {
        let chosen: Vec<Cell> = (0..self.names.len())
            .map(|i| self.select(Some(i)))
            .collect();
        let per = DataSet::ALL
            .into_iter()
            .filter_map(|d| {
                let mut c = Counts::default();
                let mut any = false;
                for (i, cell) in chosen.iter().enumerate() {
                    if self.data_sets[i] == d {
                        c.add(&self.counts[cell.forest][cell.variant][i]);
                        any = true;
                    }
                }
                any.then(|| (d, c.metrics()))
            })
            .collect();
        (per, chosen)
    }
}

/// The selection key of pooled metrics: targets met, then the sum of windows-hit share + F1.
pub fn objective(per: &PerDataSet) -> (usize, f64) {
    per.iter().fold((0, 0.0), |(met, sum), (d, m)| {
        (
            met + targets_met(*d, m),
            sum + share(m.counts.windows_hit, m.counts.windows) + m.f1,
        )
    })
}

/// All data sets' counts added together.
pub fn pooled_all(per: &PerDataSet) -> Metrics {
    let mut c = Counts::default();
    for (_, m) in per {
        c.add(&m.counts);
    }
    c.metrics()
}

/// Pooled counts per data set of one configuration over `machines`, trained and run exactly as
/// `selfheal model train` and `model score` do ([`train_model`], [`crate::detect::Detector::run`]).
pub fn evaluate(machines: &[Machine], cfg: &TrainConfig) -> Result<PerDataSet, DetectError> {
    let mut per: Vec<(DataSet, Counts)> = Vec::new();
    for m in machines {
        let (detector, _) = train_model(std::slice::from_ref(&m.train), None, cfg)?;
        let alarms = detector.run(&m.run)?.alarms;
        let n = alarms.len();
        let c = Counts::of(&alarms[m.from..n], &m.windows.slice(m.from..n));
        tracing::info!(machine = %m.name, f1 = c.metrics().f1, hit = c.windows_hit, windows = c.windows, fa_events = c.false_alarm_events, "machine");
        match per.iter_mut().find(|(d, _)| *d == m.data_set) {
            Some((_, total)) => total.add(&c),
            None => per.push((m.data_set, c)),
        }
    }
    per.sort_by_key(|(d, _)| *d);
    Ok(per.into_iter().map(|(d, c)| (d, c.metrics())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::ForestParams;

    /// A two-signal machine: noise, with a step in signal 1 over the labelled rows 900..940.
    fn machine(seed: u64, data_set: DataSet) -> Machine {
        use rand_core::{Rng, SeedableRng};
        let mut rng = rand_pcg::Pcg64::seed_from_u64(seed);
        let mut noise = move || (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let rows: Vec<Vec<f64>> = (0..1600)
            .map(|i| {
                let step = if (1300..1340).contains(&i) { 4.0 } else { 0.0 };
                vec![noise(), 3.0 + noise() + step]
            })
            .collect();
        let series = Series {
            name: format!("m{seed}"),
            columns: vec!["a".into(), "b".into()],
            timestamps: None,
            rows,
        };
        Machine {
            data_set,
            name: series.name.clone(),
            train: series.slice(0..1000),
            run: series.clone(),
            from: 1000,
            windows: Windows::new(vec![(1300, 1339)]),
        }
    }

    fn small() -> TrainConfig {
        TrainConfig {
            forest: ForestParams {
                n_trees: 10,
                max_samples: 64,
                ..ForestParams::default()
            },
            ..TrainConfig::default()
        }
    }

    #[test]
    fn a_grid_cell_counts_what_train_and_run_decide() {
        let machines = [machine(1, DataSet::Smd), machine(2, DataSet::Asd)];
        let cfg = small();
        let variant = AlarmVariant {
            alarm: cfg.alarm,
            sensitivity: crate::detect::DEFAULT_SENSITIVITY,
            spike_ratio: crate::detect::DEFAULT_SPIKE_RATIO,
        };
        // The grid's cell for the default variant is the default configuration's own result.
        let table = Table::build(
            Grid {
                forests: vec![cfg.clone()],
                variants: vec![variant],
            },
            &machines,
        )
        .expect("table");
        let cell = Cell {
            forest: 0,
            variant: 0,
        };
        let by_table = table.pooled(cell, |_| true);
        let by_training = evaluate(&machines, &cfg).expect("evaluate");
        assert_eq!(by_table.len(), 2);
        for ((d1, m1), (d2, m2)) in by_table.iter().zip(&by_training) {
            assert_eq!(d1, d2);
            assert_eq!(m1.counts, m2.counts, "{d1:?}");
        }
        // The step is found on both machines.
        assert!(by_table.iter().all(|(_, m)| m.counts.windows_hit == 1));
    }

    #[test]
    fn lomo_scores_each_machine_with_the_cell_chosen_without_it() {
        // Three NAB machines, two cells. Cell 0 hits every window on machines 0 and 1 and
        // misses machine 2's; cell 1 is the reverse of that on machine 2 only.
        let hit = Counts {
            points: 1000,
            labelled_points: 10,
            alarmed_points: 10,
            true_positives: 10,
            windows: 1,
            windows_hit: 1,
            ..Counts::default()
        };
        let miss = Counts {
            alarmed_points: 0,
            true_positives: 0,
            windows_hit: 0,
            ..hit
        };
        let v = AlarmVariant {
            alarm: AlarmRule::k_of_n(1, 1),
            sensitivity: 0.5,
            spike_ratio: 0.0,
        };
        let table = Table {
            grid: Grid {
                forests: vec![TrainConfig::default()],
                variants: vec![v, v],
            },
            data_sets: vec![DataSet::Nab; 3],
            names: vec!["a".into(), "b".into(), "c".into()],
            counts: vec![vec![vec![hit, hit, miss], vec![miss, miss, hit]]],
        };
        // On all machines cell 0 wins (2 of 3 windows against 1 of 3).
        assert_eq!(table.select(None).variant, 0);
        // Without machine 0, the cells tie on windows (1 of 2 each); F1 ties too: the lower
        // index. Machine 2 is scored with cell 0, chosen on machines 0 and 1.
        let (per, chosen) = table.lomo();
        assert_eq!(
            chosen.iter().map(|c| c.variant).collect::<Vec<_>>(),
            [0, 0, 0]
        );
        assert_eq!(per[0].1.counts.windows_hit, 2);
        let only_two = table.restricted(|_| true);
        assert_eq!(only_two.counts, table.counts);
    }
}
