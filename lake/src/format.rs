//! The lake's table: one row per record, as Parquet, and the mapping from [`Envelope`]s to rows.
//!
//! The layout is wide: every [`Metric`] is its own nullable `DOUBLE` column named
//! [`Metric::as_str`], so a trainer reads one family's columns by name and gets rows shaped like
//! the CSV contract (time, then one number per metric) with no pivot. A long layout (one row per
//! metric value) would need a group-by on read and repeat every identity column per value. Columns
//! of other families are null, which Parquet stores as definition levels only (a few bytes a page).
//!
//! Rows come from three places: a sampled record (`payload = "sample"`, with its inclusion
//! probability), an anomaly (`"anomaly"`, probability 1: every anomaly is forwarded, with score,
//! threshold, model version and top features), and the anomaly's flight-recorder window
//! (`"window"`: raw samples before the anomaly; not sampled at random, so no probability and
//! left out of unbiased estimates, but contiguous, which is what feature extraction needs).
//!
//! Parquet is written with the `parquet` crate's column writers, without `arrow`: the table is a
//! fixed flat schema, and arrow's eight crates would add minutes to a cold build for nothing the
//! column API does not already give (see docs/benchmarks.md, "Lake").

use bytes::Bytes;
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, DataType, DoubleType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::{SerializedFileWriter, SerializedRowGroupWriter};
use parquet::record::Field;
use selfheal_core::schema::{Anomaly, Envelope, Payload, Record, Subject};
use selfheal_core::{Family, Metric, RecordId};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// Why a row set could not be written or read as Parquet.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The Parquet library refused the data or the file.
    #[error("parquet")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// A file read back has a column this build does not know, or lacks a required one.
    #[error("lake file column {column:?}: {reason}")]
    Column {
        /// The column.
        column: String,
        /// What is wrong.
        reason: String,
    },
}

/// Why a row is in the lake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RowKind {
    /// A normal record kept by the agent's sampler.
    Sample,
    /// A record the model judged anomalous.
    Anomaly,
    /// A raw sample from an anomaly's flight-recorder window.
    Window,
}

impl RowKind {
    /// The `payload` column's text.
    pub fn as_str(self) -> &'static str {
        match self {
            RowKind::Sample => "sample",
            RowKind::Anomaly => "anomaly",
            RowKind::Window => "window",
        }
    }

    fn parse(s: &str) -> Option<RowKind> {
        [RowKind::Sample, RowKind::Anomaly, RowKind::Window]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// One row of the lake table.
#[derive(Debug, Clone, PartialEq)]
pub struct LakeRow {
    /// The record id (de-duplication key).
    pub id: RecordId,
    /// Sample time, unix milliseconds.
    pub ts_ms: i64,
    /// Node name.
    pub node: String,
    /// `node` or `pod`.
    pub subject_kind: String,
    /// Pod UID (pods only).
    pub pod_uid: Option<String>,
    /// Pod namespace.
    pub namespace: Option<String>,
    /// Pod name.
    pub pod: Option<String>,
    /// Owning workload's kind.
    pub owner_kind: Option<String>,
    /// Owning workload's name.
    pub owner_name: Option<String>,
    /// The workload key ([`Subject::workload_key`]).
    pub workload: String,
    /// The record's family.
    pub family: Family,
    /// Why the row is here.
    pub kind: RowKind,
    /// Sampling probability: the sampler's for samples, 1 for anomalies, none for window rows.
    pub inclusion_probability: Option<f64>,
    /// Anomaly score (anomalies only).
    pub score: Option<f64>,
    /// Model threshold (anomalies only).
    pub threshold: Option<f64>,
    /// Model version (anomalies only).
    pub model_version: Option<String>,
    /// Top features as JSON `[["name", contribution], ...]` (anomalies only).
    pub top_features: Option<String>,
    /// Metric values present in the record.
    pub values: BTreeMap<Metric, f64>,
}

impl LakeRow {
    fn from_record(r: &Record, kind: RowKind) -> LakeRow {
        let (subject_kind, pod) = match &r.subject {
            Subject::Node => ("node", None),
            Subject::Pod(p) => ("pod", Some(p)),
        };
        LakeRow {
            id: r.id,
            ts_ms: r.ts_ms,
            node: r.node.clone(),
            subject_kind: subject_kind.into(),
            pod_uid: pod.map(|p| p.uid.clone()),
            namespace: pod.and_then(|p| p.namespace.clone()),
            pod: pod.and_then(|p| p.name.clone()),
            owner_kind: pod.and_then(|p| p.owner.as_ref().map(|o| o.kind.clone())),
            owner_name: pod.and_then(|p| p.owner.as_ref().map(|o| o.name.clone())),
            workload: r.subject.workload_key(&r.node),
            family: r.family,
            kind,
            inclusion_probability: None,
            score: None,
            threshold: None,
            model_version: None,
            top_features: None,
            values: r.values.clone(),
        }
    }

    /// The series this row belongs to: one subject (node, or pod by UID) on one node, one family.
    pub fn series_key(&self) -> (String, Option<String>, Family) {
        (self.node.clone(), self.pod_uid.clone(), self.family)
    }
}

/// Rows of one envelope: the sample, or the anomaly followed by its window.
pub fn rows_of(env: &Envelope) -> Vec<LakeRow> {
    match &env.payload {
        Payload::Sample {
            record,
            inclusion_probability,
        } => {
            let mut row = LakeRow::from_record(record, RowKind::Sample);
            row.inclusion_probability = Some(*inclusion_probability);
            vec![row]
        }
        Payload::Anomaly(a) => anomaly_rows(a),
    }
}

fn anomaly_rows(a: &Anomaly) -> Vec<LakeRow> {
    let mut row = LakeRow::from_record(&a.record, RowKind::Anomaly);
    row.inclusion_probability = Some(1.0);
    row.score = Some(a.score);
    row.threshold = Some(a.threshold);
    row.model_version = Some(a.model_version.clone());
    // A `[["name", value], ...]` array cannot fail to serialize; an empty string would only
    // hide the top features, never the row.
    row.top_features = serde_json::to_string(&a.top_features).ok();
    let mut out = Vec::with_capacity(1 + a.window.len());
    out.push(row);
    out.extend(
        a.window
            .iter()
            .map(|r| LakeRow::from_record(r, RowKind::Window)),
    );
    out
}

/// Keeps the first row of each id, preferring an anomaly or a sample over a window copy of the
/// same record (a window record may also have been sampled on its own). Order is kept otherwise.
pub fn dedup(rows: Vec<LakeRow>) -> Vec<LakeRow> {
    let primary: HashSet<RecordId> = rows
        .iter()
        .filter(|r| r.kind != RowKind::Window)
        .map(|r| r.id)
        .collect();
    let mut seen = HashSet::with_capacity(rows.len());
    rows.into_iter()
        .filter(|r| {
            if r.kind == RowKind::Window && primary.contains(&r.id) {
                return false;
            }
            seen.insert(r.id)
        })
        .collect()
}

/// The Parquet schema of the table, version 1.
pub fn message_type() -> String {
    let mut s = String::from(
        "message selfheal_lake_v1 {
  required binary record_id (STRING);
  required int64 ts (TIMESTAMP(MILLIS,true));
  required binary node (STRING);
  required binary subject_kind (STRING);
  optional binary pod_uid (STRING);
  optional binary namespace (STRING);
  optional binary pod (STRING);
  optional binary owner_kind (STRING);
  optional binary owner_name (STRING);
  required binary workload (STRING);
  required binary family (STRING);
  required binary payload (STRING);
  optional double inclusion_probability;
  optional double score;
  optional double threshold;
  optional binary model_version (STRING);
  optional binary top_features (STRING);
",
    );
    for m in Metric::ALL {
        s.push_str("  optional double ");
        s.push_str(m.as_str());
        s.push_str(";\n");
    }
    s.push('}');
    s
}

fn next<'a, W: std::io::Write + Send>(
    rg: &'a mut SerializedRowGroupWriter<'_, W>,
) -> Result<parquet::file::writer::SerializedColumnWriter<'a>, FormatError> {
    rg.next_column()?.ok_or_else(|| FormatError::Column {
        column: "?".into(),
        reason: "schema has fewer columns than the writer".into(),
    })
}

fn write_required<T: DataType, W: std::io::Write + Send>(
    rg: &mut SerializedRowGroupWriter<'_, W>,
    values: &[T::T],
) -> Result<(), FormatError> {
    let mut col = next(rg)?;
    col.typed::<T>().write_batch(values, None, None)?;
    col.close()?;
    Ok(())
}

fn write_optional<T: DataType, W: std::io::Write + Send>(
    rg: &mut SerializedRowGroupWriter<'_, W>,
    values: impl Iterator<Item = Option<T::T>>,
) -> Result<(), FormatError> {
    let mut defs = Vec::new();
    let mut present = Vec::new();
    for v in values {
        defs.push(i16::from(v.is_some()));
        present.extend(v);
    }
    let mut col = next(rg)?;
    col.typed::<T>().write_batch(&present, Some(&defs), None)?;
    col.close()?;
    Ok(())
}

fn text(s: &str) -> ByteArray {
    ByteArray::from(s.as_bytes().to_vec())
}

fn write_str<W: std::io::Write + Send>(
    rg: &mut SerializedRowGroupWriter<'_, W>,
    rows: &[LakeRow],
    get: impl Fn(&LakeRow) -> &str,
) -> Result<(), FormatError> {
    let values: Vec<ByteArray> = rows.iter().map(|r| text(get(r))).collect();
    write_required::<ByteArrayType, W>(rg, &values)
}

fn write_opt_str<W: std::io::Write + Send>(
    rg: &mut SerializedRowGroupWriter<'_, W>,
    rows: &[LakeRow],
    get: impl Fn(&LakeRow) -> Option<&str>,
) -> Result<(), FormatError> {
    write_optional::<ByteArrayType, W>(rg, rows.iter().map(|r| get(r).map(text)))
}

fn write_opt_f64<W: std::io::Write + Send>(
    rg: &mut SerializedRowGroupWriter<'_, W>,
    rows: &[LakeRow],
    get: impl Fn(&LakeRow) -> Option<f64>,
) -> Result<(), FormatError> {
    write_optional::<DoubleType, W>(rg, rows.iter().map(get))
}

/// Encodes rows as one Parquet file (one row group, Snappy pages).
pub fn encode(rows: &[LakeRow]) -> Result<Vec<u8>, FormatError> {
    let schema = Arc::new(parquet::schema::parser::parse_message_type(&message_type())?);
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by(format!("selfheal {}", env!("CARGO_PKG_VERSION")))
            .build(),
    );
    let mut out = Vec::with_capacity(rows.len() * 64 + 4096);
    let mut w = SerializedFileWriter::new(&mut out, schema, props)?;
    let mut rg = w.next_row_group()?;
    let ids: Vec<ByteArray> = rows.iter().map(|r| text(&r.id.to_string())).collect();
    write_required::<ByteArrayType, _>(&mut rg, &ids)?;
    let ts: Vec<i64> = rows.iter().map(|r| r.ts_ms).collect();
    write_required::<Int64Type, _>(&mut rg, &ts)?;
    write_str(&mut rg, rows, |r| &r.node)?;
    write_str(&mut rg, rows, |r| &r.subject_kind)?;
    write_opt_str(&mut rg, rows, |r| r.pod_uid.as_deref())?;
    write_opt_str(&mut rg, rows, |r| r.namespace.as_deref())?;
    write_opt_str(&mut rg, rows, |r| r.pod.as_deref())?;
    write_opt_str(&mut rg, rows, |r| r.owner_kind.as_deref())?;
    write_opt_str(&mut rg, rows, |r| r.owner_name.as_deref())?;
    write_str(&mut rg, rows, |r| &r.workload)?;
    write_str(&mut rg, rows, |r| r.family.as_str())?;
    write_str(&mut rg, rows, |r| r.kind.as_str())?;
    write_opt_f64(&mut rg, rows, |r| r.inclusion_probability)?;
    write_opt_f64(&mut rg, rows, |r| r.score)?;
    write_opt_f64(&mut rg, rows, |r| r.threshold)?;
    write_opt_str(&mut rg, rows, |r| r.model_version.as_deref())?;
    write_opt_str(&mut rg, rows, |r| r.top_features.as_deref())?;
    for m in Metric::ALL {
        write_opt_f64(&mut rg, rows, |r| r.values.get(m).copied())?;
    }
    rg.close()?;
    w.close()?;
    Ok(out)
}

fn bad(column: &str, reason: impl Into<String>) -> FormatError {
    FormatError::Column {
        column: column.into(),
        reason: reason.into(),
    }
}

fn opt_string(name: &str, f: Field) -> Result<Option<String>, FormatError> {
    match f {
        Field::Null => Ok(None),
        Field::Str(s) => Ok(Some(s)),
        other => Err(bad(name, format!("expected text, found {other}"))),
    }
}

fn opt_f64(name: &str, f: Field) -> Result<Option<f64>, FormatError> {
    match f {
        Field::Null => Ok(None),
        Field::Double(v) => Ok(Some(v)),
        other => Err(bad(name, format!("expected a double, found {other}"))),
    }
}

/// Decodes a lake Parquet file. Unknown columns are an error: they mean a newer schema.
pub fn decode(bytes: Bytes) -> Result<Vec<LakeRow>, FormatError> {
    let metrics: BTreeMap<&str, Metric> = Metric::ALL.iter().map(|m| (m.as_str(), *m)).collect();
    let reader = SerializedFileReader::new(bytes)?;
    let n = usize::try_from(reader.metadata().file_metadata().num_rows()).unwrap_or(0);
    let mut out = Vec::with_capacity(n);
    for row in reader.get_row_iter(None)? {
        let mut r = LakeRow {
            id: RecordId::default(),
            ts_ms: 0,
            node: String::new(),
            subject_kind: String::new(),
            pod_uid: None,
            namespace: None,
            pod: None,
            owner_kind: None,
            owner_name: None,
            workload: String::new(),
            family: Family::Cpu,
            kind: RowKind::Sample,
            inclusion_probability: None,
            score: None,
            threshold: None,
            model_version: None,
            top_features: None,
            values: BTreeMap::new(),
        };
        for (name, field) in row?.into_columns() {
            let req = |name: &str, f: Field| {
                opt_string(name, f)?.ok_or_else(|| bad(name, "required but null"))
            };
            match name.as_str() {
                "record_id" => {
                    let s = req(&name, field)?;
                    r.id = u128::from_str_radix(&s, 16)
                        .map(RecordId::from_u128)
                        .map_err(|_| bad(&name, format!("{s:?} is not 32 hex digits")))?;
                }
                "ts" => match field {
                    Field::TimestampMillis(t) | Field::Long(t) => r.ts_ms = t,
                    other => return Err(bad(&name, format!("expected a time, found {other}"))),
                },
                "node" => r.node = req(&name, field)?,
                "subject_kind" => r.subject_kind = req(&name, field)?,
                "pod_uid" => r.pod_uid = opt_string(&name, field)?,
                "namespace" => r.namespace = opt_string(&name, field)?,
                "pod" => r.pod = opt_string(&name, field)?,
                "owner_kind" => r.owner_kind = opt_string(&name, field)?,
                "owner_name" => r.owner_name = opt_string(&name, field)?,
                "workload" => r.workload = req(&name, field)?,
                "family" => {
                    let s = req(&name, field)?;
                    r.family = s.parse().map_err(|e| bad(&name, format!("{e}")))?;
                }
                "payload" => {
                    let s = req(&name, field)?;
                    r.kind = RowKind::parse(&s)
                        .ok_or_else(|| bad(&name, format!("unknown payload {s:?}")))?;
                }
                "inclusion_probability" => r.inclusion_probability = opt_f64(&name, field)?,
                "score" => r.score = opt_f64(&name, field)?,
                "threshold" => r.threshold = opt_f64(&name, field)?,
                "model_version" => r.model_version = opt_string(&name, field)?,
                "top_features" => r.top_features = opt_string(&name, field)?,
                other => match metrics.get(other) {
                    Some(m) => {
                        if let Some(v) = opt_f64(&name, field)? {
                            r.values.insert(*m, v);
                        }
                    }
                    None => return Err(bad(other, "unknown column (a newer lake schema?)")),
                },
            }
        }
        out.push(r);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfheal_core::schema::{OwnerRef, PodRef};

    fn record(id: u128, ts_ms: i64) -> Record {
        Record {
            id: RecordId::from_u128(id),
            ts_ms,
            node: "node-a".into(),
            subject: Subject::Pod(PodRef {
                uid: "uid-1".into(),
                namespace: Some("shop".into()),
                name: Some("web-1".into()),
                owner: Some(OwnerRef {
                    kind: "Deployment".into(),
                    name: "web".into(),
                }),
                qos: None,
            }),
            family: Family::Cpu,
            values: BTreeMap::from([(Metric::CpuUsageCores, 0.5), (Metric::CpuUserRatio, 0.1)]),
        }
    }

    #[test]
    fn parquet_round_trip_keeps_every_column() {
        let sample = Envelope::new(Payload::Sample {
            record: record(1, 1_000),
            inclusion_probability: 0.25,
        });
        let mut node = record(2, 2_000);
        node.subject = Subject::Node;
        node.family = Family::Memory;
        node.values = BTreeMap::from([(Metric::ALL[Metric::ALL.len() - 1], 7.0)]);
        let node = Envelope::new(Payload::Sample {
            record: node,
            inclusion_probability: 1.0,
        });
        let anomaly = Envelope::new(Payload::Anomaly(Anomaly {
            record: record(3, 3_000),
            score: 0.8,
            threshold: 0.6,
            model_version: "cpu-1".into(),
            features: vec![1.0],
            top_features: vec![("cpu_usage_cores".into(), 0.7)],
            window: vec![record(4, 2_500)],
        }));
        let rows: Vec<LakeRow> = [sample, node, anomaly].iter().flat_map(rows_of).collect();
        assert_eq!(rows.len(), 4);
        let bytes = encode(&rows).expect("encode");
        assert_eq!(&bytes[..4], b"PAR1");
        let back = decode(Bytes::from(bytes)).expect("decode");
        assert_eq!(back, rows);
        assert_eq!(back[2].kind, RowKind::Anomaly);
        assert_eq!(
            back[2].top_features.as_deref(),
            Some(r#"[["cpu_usage_cores",0.7]]"#)
        );
        assert_eq!(back[3].kind, RowKind::Window);
        assert_eq!(back[3].inclusion_probability, None);
        assert_eq!(back[1].pod_uid, None);
        assert_eq!(back[1].workload, "node/node-a");
    }

    #[test]
    fn dedup_keeps_first_and_prefers_primary_over_window() {
        let a = LakeRow::from_record(&record(1, 1), RowKind::Window);
        let b = LakeRow::from_record(&record(1, 1), RowKind::Sample);
        let c = LakeRow::from_record(&record(2, 1), RowKind::Sample);
        let out = dedup(vec![a, b, c.clone(), c]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].kind, RowKind::Sample);
        assert_eq!(out[0].id, RecordId::from_u128(1));
    }
}
