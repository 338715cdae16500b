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

use crate::dataset::Series;
use selfheal_core::{Family, Metric};
use selfheal_lake::format::{LakeRow, RowKind};
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
    }
}
