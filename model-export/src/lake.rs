//! Training input from the data lake (`selfheal model train --input LAKE_DIR|s3://bucket/prefix`).
//!
//! The aggregator writes one Parquet row per record ([`selfheal_lake`]). Training
//! needs contiguous series, and the agent samples normal records in contiguous blocks per series
//! (series = subject + family), so this module:
//!
//! 1. reads the family's rows, de-duplicated by record id (at-least-once delivery repeats some);
//! 2. keeps sampled normals and anomaly flight-recorder windows and leaves anomalies out: the
//!    forest should learn normal behaviour, and an alarmed record in the training set would pull
//!    the contamination threshold towards accepting what the model already called abnormal;
//! 3. groups rows by subject (node, or pod by UID, on one node), sorts each group by time and
//!    splits it into runs wherever the gap exceeds twice the group's typical (median) interval;
//! 4. returns each run as a [`Series`], so features are computed per run by the same code as
//!    for CSV input ([`crate::dataset::features`], a fresh extractor per run: no feature window
//!    spans a gap), and the trainer trains on the union.
//!
//! Columns are the family's metrics that occur at least once in the kept rows, in schema order;
//! a metric missing from a row is NaN, which feature extraction imputes (as the agent does).
//!
//! **Labelled sets** ([`slice_by_labels`]): with chaos label windows (the lake's own `labels/`
//! partition, another lake's, or a label windows file), each run is cut by time into a
//! *training* part, every row farther than [`LABEL_CONTEXT_SECS`] before and
//! [`LABEL_SETTLE_SECS`] after every window of its series, and *evaluation* parts, the rows
//! around each window (merged where they overlap) with the window's rows labelled. A window
//! applies to a series of the window's family (the fault kind's) whose workload is the target,
//! and to the node's series of that family (the node feels a fault on it). So no fault, and no
//! row whose rolling features still carry one, is learned as normal, and the evaluation sets
//! hold quiet running before each fault for the false alarms.

use crate::dataset::Series;
use crate::dataset::{LabelWindows, Windows};
use selfheal_core::{Family, Metric};
use selfheal_lake::format::{LakeRow, RowKind};
use selfheal_lake::labels::{LabelError, LabelWindow, read_labels};
use selfheal_lake::{LakeError, LakeStore, S3Options, StoreError, read_family};
use sha2::Digest;
use std::collections::BTreeMap;
use std::path::Path;

/// The lake could not be read as training data.
#[derive(Debug, thiserror::Error)]
pub enum LakeInputError {
    /// The async runtime for the S3 client could not start.
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    /// The store could not be opened.
    #[error("cannot open the lake at {location}")]
    Open {
        /// Where.
        location: String,
        /// The cause.
        #[source]
        source: StoreError,
    },
    /// An object could not be listed, read or decoded.
    #[error("cannot read the lake at {location}")]
    Read {
        /// Where.
        location: String,
        /// The cause.
        #[source]
        source: LakeError,
    },
    /// The label windows could not be read.
    #[error("cannot read the label windows of the lake at {location}")]
    Labels {
        /// Where.
        location: String,
        /// The cause.
        #[source]
        source: LabelError,
    },
    /// No usable rows of the family.
    #[error("the lake at {location} has no {family} samples")]
    Empty {
        /// Where.
        location: String,
        /// The family.
        family: Family,
    },
}

/// What was read, for the log and the manifest.
#[derive(Debug, Clone, Default)]
pub struct LakeInput {
    /// One series per contiguous run.
    pub series: Vec<Series>,
    /// The workload key of each series (`node/<node>` or `<ns>/<kind>/<name>`), in order.
    pub workloads: Vec<String>,
    /// The node of each series, in order.
    pub nodes: Vec<String>,
    /// Objects read.
    pub objects: usize,
    /// Rows kept (after de-duplication).
    pub rows: usize,
    /// Duplicate rows dropped.
    pub duplicates: usize,
    /// Subjects (node or pod) seen.
    pub subjects: usize,
    /// SHA-256 over the kept rows' ids, in series order: the training data digest.
    pub digest: String,
}

/// True when `input` names a lake: an `s3://` URL, or a directory holding `.parquet` files.
pub fn is_lake(input: &Path) -> bool {
    let s = input.to_string_lossy();
    if s.starts_with("s3://") {
        return true;
    }
    if !input.is_dir() {
        return false;
    }
    let mut stack = vec![input.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                return true;
            }
        }
    }
    false
}

/// Reads `family`'s training series from the lake at `location`.
pub fn read_lake(location: &str, family: Family) -> Result<LakeInput, LakeInputError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(LakeInputError::Runtime)?;
    let (rows, report) = rt.block_on(async {
        let store = LakeStore::open(location, &S3Options::default())
            .await
            .map_err(|source| LakeInputError::Open {
                location: location.to_owned(),
                source,
            })?;
        read_family(&store, family, &[RowKind::Sample, RowKind::Window])
            .await
            .map_err(|source| LakeInputError::Read {
                location: location.to_owned(),
                source,
            })
    })?;
    let mut out = runs(rows, family);
    if out.series.is_empty() {
        return Err(LakeInputError::Empty {
            location: location.to_owned(),
            family,
        });
    }
    out.objects = report.objects;
    out.duplicates = report.duplicates;
    Ok(out)
}

/// Splits rows (one family, de-duplicated) into contiguous runs per subject.
pub fn runs(rows: Vec<LakeRow>, family: Family) -> LakeInput {
    let columns: Vec<Metric> = family
        .metrics()
        .filter(|m| rows.iter().any(|r| r.values.contains_key(m)))
        .collect();
    let mut groups: BTreeMap<(String, Option<String>), Vec<LakeRow>> = BTreeMap::new();
    for r in rows {
        groups
            .entry((r.node.clone(), r.pod_uid.clone()))
            .or_default()
            .push(r);
    }
    let mut out = LakeInput {
        subjects: groups.len(),
        ..LakeInput::default()
    };
    let mut digest = sha2::Sha256::new();
    for ((node, pod), mut rows) in groups {
        rows.sort_by_key(|r| (r.ts_ms, r.id));
        let gap_limit = typical_interval_ms(&rows).map(|t| 2 * t);
        let mut start = 0;
        for i in 1..=rows.len() {
            let split =
                i == rows.len() || gap_limit.is_some_and(|g| rows[i].ts_ms - rows[i - 1].ts_ms > g);
            if !split {
                continue;
            }
            let run = &rows[start..i];
            let name = format!(
                "{}/{}@{}",
                node,
                pod.as_deref().unwrap_or("node"),
                run[0].ts_ms
            );
            for r in run {
                digest.update(r.id.0);
            }
            out.rows += run.len();
            out.workloads.push(run[0].workload.clone());
            out.nodes.push(node.clone());
            out.series.push(Series {
                name,
                columns: columns.iter().map(|m| m.as_str().to_owned()).collect(),
                timestamps: Some(run.iter().map(|r| r.ts_ms.div_euclid(1000)).collect()),
                rows: run
                    .iter()
                    .map(|r| {
                        columns
                            .iter()
                            .map(|m| r.values.get(m).copied().unwrap_or(f64::NAN))
                            .collect()
                    })
                    .collect(),
            });
            start = i;
        }
    }
    out.digest = hex::encode(digest.finalize());
    out
}

/// Rows closer than this before a label window are left out of training: they go, with the
/// window, to its evaluation set, as the quiet running the false alarms are counted on (at
/// least the 60-sample feature warm-up at the agent's 1 s interval, and two minutes more).
pub const LABEL_CONTEXT_SECS: i64 = 180;
/// Rows closer than this after a label window are left out of training: the rolling features
/// (60 samples) still carry the fault, and a leak or a restart count takes a while to settle.
pub const LABEL_SETTLE_SECS: i64 = 120;

/// Where label windows for a lake come from.
#[derive(Debug, Clone)]
pub enum LabelSource {
    /// Chaos windows, as in a lake's `labels/` partition.
    Chaos(Vec<LabelWindow>),
    /// A label windows file: keys `<family>/<workload>` (`selfheal chaos run --labels-out`).
    File(LabelWindows),
}

/// Reads the chaos windows of the lake at `location`.
pub fn read_lake_labels(location: &str) -> Result<Vec<LabelWindow>, LakeInputError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(LakeInputError::Runtime)?;
    rt.block_on(async {
        let store = LakeStore::open(location, &S3Options::default())
            .await
            .map_err(|source| LakeInputError::Open {
                location: location.to_owned(),
                source,
            })?;
        read_labels(&store)
            .await
            .map_err(|source| LakeInputError::Labels {
                location: location.to_owned(),
                source,
            })
    })
}

impl LabelSource {
    /// The time windows (unix seconds, inclusive) of the series of `family` with this
    /// workload on this node.
    fn windows(&self, family: Family, workload: &str, node: &str) -> Vec<(i64, i64)> {
        match self {
            LabelSource::Chaos(ws) => ws
                .iter()
                .filter(|w| w.kind.family() == family)
                .filter(|w| {
                    w.target == workload || (workload == format!("node/{node}") && w.node == node)
                })
                .map(|w| (w.start_ms.div_euclid(1000), w.end_ms.div_euclid(1000)))
                .collect(),
            LabelSource::File(lw) => lw
                .get(&format!("{family}/{workload}"))
                .map(<[(i64, i64)]>::to_vec)
                .unwrap_or_default(),
        }
    }
}

/// A lake cut into labelled sets by its label windows (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct LabelledLake {
    /// Rows far from every window, one series per stretch: what the forest learns.
    pub train: Vec<Series>,
    /// Stretches around windows, with the windows' rows labelled.
    pub eval: Vec<(Series, Windows)>,
    /// Label windows that fell on at least one series.
    pub windows_matched: usize,
    /// Label windows of the family, over all series.
    pub windows_total: usize,
}

/// Cuts `input` (one family's runs) into training and evaluation sets by `labels`.
pub fn slice_by_labels(input: &LakeInput, family: Family, labels: &LabelSource) -> LabelledLake {
    let mut out = LabelledLake {
        windows_total: match labels {
            LabelSource::Chaos(ws) => ws.iter().filter(|w| w.kind.family() == family).count(),
            LabelSource::File(lw) => lw
                .keys()
                .filter(|k| k.starts_with(&format!("{family}/")))
                .filter_map(|k| lw.get(k).map(<[(i64, i64)]>::len))
                .sum(),
        },
        ..LabelledLake::default()
    };
    let mut matched: std::collections::BTreeSet<(i64, i64)> = Default::default();
    for ((series, workload), node) in input.series.iter().zip(&input.workloads).zip(&input.nodes) {
        let Some(ts) = series.timestamps.as_deref() else {
            continue;
        };
        let (Some(&first), Some(&last)) = (ts.first(), ts.last()) else {
            continue;
        };
        let windows: Vec<(i64, i64)> = labels
            .windows(family, workload, node)
            .into_iter()
            .filter(|&(a, b)| b >= first - LABEL_SETTLE_SECS && a <= last + LABEL_CONTEXT_SECS)
            .collect();
        // Per row: inside an evaluation stretch (around some window)?
        let near = |t: i64| {
            windows
                .iter()
                .any(|&(a, b)| t >= a - LABEL_CONTEXT_SECS && t <= b + LABEL_SETTLE_SECS)
        };
        let mut i = 0;
        while i < ts.len() {
            let in_eval = near(ts[i]);
            let mut j = i + 1;
            while j < ts.len() && near(ts[j]) == in_eval {
                j += 1;
            }
            let part = series.slice(i..j);
            if in_eval {
                let ranges: Vec<(usize, usize)> = windows
                    .iter()
                    .filter_map(|&(a, b)| {
                        let lo = ts[i..j].iter().position(|&t| t >= a)?;
                        let hi = ts[i..j].iter().rposition(|&t| t <= b)?;
                        (lo <= hi).then(|| {
                            matched.insert((a, b));
                            (lo, hi)
                        })
                    })
                    .collect();
                out.eval.push((part, Windows::new(ranges)));
            } else if j - i >= 2 {
                out.train.push(part);
            }
            i = j;
        }
    }
    out.windows_matched = matched.len();
    out
}

/// The median of the positive gaps between consecutive rows; `None` with fewer than two times.
fn typical_interval_ms(rows: &[LakeRow]) -> Option<i64> {
    let mut gaps: Vec<i64> = rows
        .windows(2)
        .map(|w| w[1].ts_ms - w[0].ts_ms)
        .filter(|&g| g > 0)
        .collect();
    if gaps.is_empty() {
        return None;
    }
    let mid = gaps.len() / 2;
    Some(*gaps.select_nth_unstable(mid).1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfheal_core::RecordId;
    use selfheal_core::schema::{Envelope, Payload, Record, Subject};
    use selfheal_lake::format::rows_of;

    fn row(id: u128, ts_ms: i64, v: f64) -> LakeRow {
        let env = Envelope::new(Payload::Sample {
            record: Record {
                id: RecordId::from_u128(id),
                ts_ms,
                node: "n".into(),
                subject: Subject::Node,
                family: Family::Cpu,
                values: BTreeMap::from([(Metric::CpuUsageCores, v)]),
            },
            inclusion_probability: 0.5,
        });
        rows_of(&env).remove(0)
    }

    #[test]
    fn runs_split_at_gaps_over_twice_the_typical_interval() {
        // Blocks at 0..5 s and 60..63 s, 1 s apart, given out of order.
        let mut rows: Vec<LakeRow> = (0..5).map(|i| row(i, i as i64 * 1000, 1.0)).collect();
        rows.extend((0..3).map(|i| row(10 + i, 60_000 + i as i64 * 1000, 2.0)));
        rows.reverse();
        let out = runs(rows, Family::Cpu);
        assert_eq!(out.subjects, 1);
        assert_eq!(out.series.len(), 2);
        assert_eq!(out.series[0].rows.len(), 5);
        assert_eq!(
            out.series[0].timestamps.as_deref(),
            Some(&[0, 1, 2, 3, 4][..])
        );
        assert_eq!(out.series[1].rows, vec![vec![2.0]; 3]);
        assert_eq!(out.series[0].columns, ["cpu_usage_cores"]);
        assert_eq!(out.rows, 8);
        assert_eq!(out.workloads, ["node/n", "node/n"]);
    }

    #[test]
    fn label_windows_cut_a_run_into_training_and_evaluation_parts() {
        // One node run of 1000 s at 1 s; a cpu fault from 500 to 530 s.
        let rows: Vec<LakeRow> = (0..1000).map(|i| row(i, i as i64 * 1000, 1.0)).collect();
        let input = runs(rows, Family::Cpu);
        let w = |kind, target: &str| LabelWindow {
            run_id: "r".into(),
            kind,
            target: target.into(),
            node: "n".into(),
            pod_uid: None,
            start_ms: 500_000,
            end_ms: 530_400,
        };
        let cut = slice_by_labels(
            &input,
            Family::Cpu,
            &LabelSource::Chaos(vec![
                w(selfheal_lake::labels::FaultKind::Cpu, "chaos/Deployment/x"),
                // Another family's fault labels nothing here.
                w(
                    selfheal_lake::labels::FaultKind::Memory,
                    "chaos/Deployment/y",
                ),
            ]),
        );
        assert_eq!((cut.windows_matched, cut.windows_total), (1, 1));
        let lens: Vec<usize> = cut.train.iter().map(|s| s.rows.len()).collect();
        // Before 500 - 180 and after 530 + 120.
        assert_eq!(lens, [320, 349]);
        assert_eq!(cut.eval.len(), 1);
        let (s, windows) = &cut.eval[0];
        assert_eq!(
            s.timestamps.as_deref().map(|t| (t[0], t[t.len() - 1])),
            Some((320, 650))
        );
        assert_eq!(windows.ranges(), [(180, 210)]);
    }
}
