//! Reading training and evaluation data: series, label windows, and their features.
//!
//! Two layouts are read into one [`Series`]:
//! * the CSV contract (ARCHITECTURE.md): a header row, an optional first column `timestamp`
//!   (unix seconds or RFC 3339; NAB's `2014-02-14 14:30:00` is read as RFC 3339 with a space
//!   separator, in UTC), every other column numeric;
//! * SMD's text layout: no header, comma-separated numbers, columns named `m1`, `m2`, ...
//!
//! Labels come as NAB label windows (`{"<series>": [["start", "end"], ...]}`, ends inclusive,
//! matched to a series by file-name suffix) or as SMD point labels (one 0/1 per line). Both
//! become [`Windows`]: inclusive row ranges, which is what evaluation and threshold choice use.
//!
//! The CSV reader is hand-written: the contract is numeric columns only, so quoting and
//! embedded separators never occur, and a 60-line reader gives errors that name the line and
//! column, which the `csv` crate would leave to us anyway.
//!
//! Features are computed here with `selfheal_core::features::FeatureExtractor`, the code the
//! agent runs, one fresh extractor per series.

use crate::train::FeatureMatrix;
use selfheal_core::features::{FeatureError, FeatureExtractor, FeatureSpec};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Data that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file has no header row, or no rows at all.
    #[error("{path}: empty file")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// A header with no value column.
    #[error("{path}: the header has no value column")]
    NoColumns {
        /// The file.
        path: PathBuf,
    },
    /// A row with the wrong number of fields.
    #[error("{path}:{line}: expected {expected} fields, found {found}")]
    FieldCount {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Fields in the header.
        expected: usize,
        /// Fields in this row.
        found: usize,
    },
    /// A field that is not a number (or, in the `timestamp` column, not a time).
    #[error("{path}:{line}: column {column:?}: cannot read {value:?} as {expected}")]
    BadField {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Column name (`m<i>` for SMD files).
        column: String,
        /// The text found.
        value: String,
        /// What was expected there.
        expected: &'static str,
    },
    /// A label windows file that is not `{"name": [["start", "end"], ...]}`.
    #[error("{path}: not a label windows file")]
    BadWindows {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A label window whose bound is not a time.
    #[error("{path}: series {series:?}: cannot read window bound {value:?} as a time")]
    BadWindowBound {
        /// The file.
        path: PathBuf,
        /// Series key.
        series: String,
        /// The text found.
        value: String,
    },
    /// Label windows were given for a series without timestamps.
    #[error("{series}: label windows need a `timestamp` column")]
    NoTimestamps {
        /// Series name.
        series: String,
    },
    /// Point labels whose count differs from the series' rows.
    #[error("{path}: {labels} labels for {rows} rows")]
    LabelCount {
        /// The labels file.
        path: PathBuf,
        /// Labels read.
        labels: usize,
        /// Rows in the series.
        rows: usize,
    },
    /// A series whose columns differ from the first series of the same training set.
    #[error("{path}: columns {found:?} differ from {expected:?}")]
    ColumnMismatch {
        /// The file.
        path: PathBuf,
        /// Columns of the first series.
        expected: Vec<String>,
        /// Columns of this one.
        found: Vec<String>,
    },
    /// A series lacks a column a model reads.
    #[error(
        "{series}: no column {column:?} (the model reads {wanted:?}; the series has {found:?})"
    )]
    MissingColumn {
        /// Series name.
        series: String,
        /// The column missing.
        column: String,
        /// The columns the model reads.
        wanted: Vec<String>,
        /// The series' columns.
        found: Vec<String>,
    },
    /// Feature extraction refused a row (a width mismatch: a bug, reported rather than panicking).
    #[error("feature extraction failed")]
    Features(#[source] FeatureError),
}

/// One time series: rows of numbers, optionally timestamped.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Name: the file name without directory (what label windows are matched against).
    pub name: String,
    /// Value column names, in order.
    pub columns: Vec<String>,
    /// Unix seconds per row, when the file has a `timestamp` column.
    pub timestamps: Option<Vec<i64>>,
    /// Values, one `Vec` per row, `columns.len()` wide.
    pub rows: Vec<Vec<f64>>,
}

impl Series {
    /// This series with the columns `names`, in that order, picked by name (as the agent reads
    /// a record's metrics by name): a CSV may hold a model's columns in any order, and others.
    pub fn select_columns(&self, names: &[String]) -> Result<Series, DataError> {
        if self.columns == names {
            return Ok(self.clone());
        }
        let idx = names
            .iter()
            .map(|n| {
                self.columns
                    .iter()
                    .position(|c| c == n)
                    .ok_or_else(|| DataError::MissingColumn {
                        series: self.name.clone(),
                        column: n.clone(),
                        wanted: names.to_vec(),
                        found: self.columns.clone(),
                    })
            })
            .collect::<Result<Vec<usize>, DataError>>()?;
        Ok(Series {
            name: self.name.clone(),
            columns: names.to_vec(),
            timestamps: self.timestamps.clone(),
            rows: self
                .rows
                .iter()
                .map(|r| idx.iter().map(|&i| r[i]).collect())
                .collect(),
        })
    }

    /// Rows `range` as a new series with the same name and columns.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Series {
        Series {
            name: self.name.clone(),
            columns: self.columns.clone(),
            timestamps: self.timestamps.as_ref().map(|t| t[range.clone()].to_vec()),
            rows: self.rows[range].to_vec(),
        }
    }
}

fn read_text(path: &Path) -> Result<String, DataError> {
    std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        source,
    })
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Reads a time as unix seconds: an integer or decimal number of seconds, or RFC 3339 (`T` or
/// a space between date and time; no offset means UTC).
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<i64>() {
        return Some(secs);
    }
    if let Ok(secs) = s.parse::<f64>() {
        return secs.is_finite().then_some(secs.floor() as i64);
    }
    let mut t = s.to_owned();
    if t.len() > 10 && t.as_bytes()[10] == b' ' {
        t.replace_range(10..11, "T");
    }
    let has_offset =
        t.ends_with(['Z', 'z']) || t.get(19..).is_some_and(|tail| tail.contains(['+', '-']));
    if !has_offset {
        t.push('Z');
    }
    OffsetDateTime::parse(&t, &Rfc3339)
        .ok()
        .map(OffsetDateTime::unix_timestamp)
}

/// Reads a CSV file per the contract (see the module docs).
pub fn read_csv(path: &Path) -> Result<Series, DataError> {
    let text = read_text(path)?;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        return Err(DataError::Empty {
            path: path.to_owned(),
        });
    };
    let header: Vec<String> = header
        .split(',')
        .map(|h| h.trim().trim_matches('"').to_owned())
        .collect();
    let has_ts = header.first().is_some_and(|h| h == "timestamp");
    let columns: Vec<String> = header[usize::from(has_ts)..].to_vec();
    if columns.is_empty() {
        return Err(DataError::NoColumns {
            path: path.to_owned(),
        });
    }
    let mut timestamps = has_ts.then(Vec::new);
    let mut rows = Vec::new();
    for (i, line) in lines {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != header.len() {
            return Err(DataError::FieldCount {
                path: path.to_owned(),
                line: i + 1,
                expected: header.len(),
                found: fields.len(),
            });
        }
        if let Some(ts) = timestamps.as_mut() {
            let raw = fields[0].trim().trim_matches('"');
            ts.push(parse_time(raw).ok_or_else(|| DataError::BadField {
                path: path.to_owned(),
                line: i + 1,
                column: "timestamp".into(),
                value: raw.into(),
                expected: "unix seconds or an RFC 3339 time",
            })?);
        }
        let values = &fields[usize::from(has_ts)..];
        rows.push(parse_numbers(path, i + 1, values, |c| columns[c].clone())?);
    }
    if rows.is_empty() {
        return Err(DataError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(Series {
        name: file_name(path),
        columns,
        timestamps,
        rows,
    })
}

/// Parses numbers; an empty field or `NaN` is a missing value (NaN), which feature extraction
/// fills in; anything else that is not a number is an error naming `line` and the column.
fn parse_numbers(
    path: &Path,
    line: usize,
    fields: &[&str],
    column: impl Fn(usize) -> String,
) -> Result<Vec<f64>, DataError> {
    fields
        .iter()
        .enumerate()
        .map(|(c, f)| {
            let f = f.trim();
            if f.is_empty() {
                return Ok(f64::NAN);
            }
            f.parse::<f64>().map_err(|_| DataError::BadField {
                path: path.to_owned(),
                line,
                column: column(c),
                value: f.into(),
                expected: "a number",
            })
        })
        .collect()
}

/// Reads SMD's text layout: no header, comma-separated numbers; columns become `m1`, `m2`, ...
/// (1-based, as SMD's interpretation labels number them).
pub fn read_smd(path: &Path) -> Result<Series, DataError> {
    let text = read_text(path)?;
    let mut rows: Vec<Vec<f64>> = Vec::new();
    let mut width = None;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        let expected = *width.get_or_insert(fields.len());
        if fields.len() != expected {
            return Err(DataError::FieldCount {
                path: path.to_owned(),
                line: i + 1,
                expected,
                found: fields.len(),
            });
        }
        rows.push(parse_numbers(path, i + 1, &fields, |c| {
            format!("m{}", c + 1)
        })?);
    }
    let Some(width) = width else {
        return Err(DataError::Empty {
            path: path.to_owned(),
        });
    };
    Ok(Series {
        name: file_name(path),
        columns: (1..=width).map(|c| format!("m{c}")).collect(),
        timestamps: None,
        rows,
    })
}

/// Reads a series: `.txt` files in SMD's layout, anything else as CSV.
pub fn read_series(path: &Path) -> Result<Series, DataError> {
    if path.extension().is_some_and(|e| e == "txt") {
        read_smd(path)
    } else {
        read_csv(path)
    }
}

/// Reads one series from a file, or every `*.csv` / `*.txt` file of a directory (sorted by name),
/// checking that all have the same columns.
pub fn read_input(path: &Path) -> Result<Vec<Series>, DataError> {
    if !path.is_dir() {
        return Ok(vec![read_series(path)?]);
    }
    let entries = std::fs::read_dir(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut files = Vec::new();
    for e in entries {
        let p = e
            .map_err(|source| DataError::Io {
                path: path.to_owned(),
                source,
            })?
            .path();
        if p.extension().is_some_and(|e| e == "csv" || e == "txt") {
            files.push(p);
        }
    }
    files.sort();
    let mut out: Vec<Series> = Vec::with_capacity(files.len());
    for f in files {
        let s = read_series(&f)?;
        if let Some(first) = out.first()
            && first.columns != s.columns
        {
            return Err(DataError::ColumnMismatch {
                path: f,
                expected: first.columns.clone(),
                found: s.columns,
            });
        }
        out.push(s);
    }
    if out.is_empty() {
        return Err(DataError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(out)
}

/// Labelled anomaly windows of one series: inclusive row ranges, sorted, non-overlapping
/// (overlapping or touching input windows are merged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Windows(Vec<(usize, usize)>);

impl Windows {
    /// Windows from inclusive row ranges (sorted and merged here).
    pub fn new(mut ranges: Vec<(usize, usize)>) -> Self {
        ranges.retain(|(a, b)| a <= b);
        ranges.sort_unstable();
        let mut out: Vec<(usize, usize)> = Vec::with_capacity(ranges.len());
        for (a, b) in ranges {
            match out.last_mut() {
                Some(last) if a <= last.1 + 1 => last.1 = last.1.max(b),
                _ => out.push((a, b)),
            }
        }
        Windows(out)
    }

    /// Windows from point labels: each maximal run of `true` is a window.
    pub fn from_points(labels: &[bool]) -> Self {
        let mut out = Vec::new();
        let mut start = None;
        for (i, &l) in labels.iter().enumerate() {
            match (l, start) {
                (true, None) => start = Some(i),
                (false, Some(s)) => {
                    out.push((s, i - 1));
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            out.push((s, labels.len() - 1));
        }
        Windows(out)
    }

    /// The inclusive row ranges.
    pub fn ranges(&self) -> &[(usize, usize)] {
        &self.0
    }

    /// One label per row for a series of `len` rows.
    pub fn points(&self, len: usize) -> Vec<bool> {
        let mut out = vec![false; len];
        for &(a, b) in &self.0 {
            for p in out.iter_mut().take(b.saturating_add(1).min(len)).skip(a) {
                *p = true;
            }
        }
        out
    }

    /// The windows of rows `range`, re-indexed from its start.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Windows {
        let mut out = Vec::new();
        for &(a, b) in &self.0 {
            let (a, b) = (a.max(range.start), b.min(range.end.saturating_sub(1)));
            if a <= b && a < range.end {
                out.push((a - range.start, b - range.start));
            }
        }
        Windows(out)
    }
}

/// NAB-style label windows: series key → inclusive time windows (unix seconds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelWindows(BTreeMap<String, Vec<(i64, i64)>>);

impl LabelWindows {
    /// Reads `{"<series>": [["start", "end"], ...]}`.
    pub fn read(path: &Path) -> Result<Self, DataError> {
        let text = read_text(path)?;
        let raw: BTreeMap<String, Vec<(String, String)>> =
            serde_json::from_str(&text).map_err(|source| DataError::BadWindows {
                path: path.to_owned(),
                source,
            })?;
        let mut out = BTreeMap::new();
        for (series, windows) in raw {
            let mut ws = Vec::with_capacity(windows.len());
            for (a, b) in windows {
                let parse = |v: &str| {
                    parse_time(v).ok_or_else(|| DataError::BadWindowBound {
                        path: path.to_owned(),
                        series: series.clone(),
                        value: v.to_owned(),
                    })
                };
                ws.push((parse(&a)?, parse(&b)?));
            }
            out.insert(series, ws);
        }
        Ok(LabelWindows(out))
    }

    /// The windows of the series named `name` (a file name): the key equal to it, or else the
    /// key ending in `/<name>` (NAB keys are `<directory>/<file>.csv`). `None` when no key
    /// matches; a series with a key and no windows has none.
    pub fn for_series(&self, name: &str) -> Option<&[(i64, i64)]> {
        self.0
            .get(name)
            .or_else(|| {
                self.0
                    .iter()
                    .find(|(k, _)| k.rsplit(['/', '\\']).next() == Some(name))
                    .map(|(_, v)| v)
            })
            .map(Vec::as_slice)
    }

    /// The windows under exactly the key `key`.
    pub fn get(&self, key: &str) -> Option<&[(i64, i64)]> {
        self.0.get(key).map(Vec::as_slice)
    }

    /// The series keys.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

/// Labels for one series, read from `path`: a `.json` label windows file (matched to the series
/// by name; an unmatched series has no anomalies) or SMD point labels (one 0/1 per line).
pub fn read_labels(path: &Path, series: &Series) -> Result<Windows, DataError> {
    if path.extension().is_some_and(|e| e == "json") {
        let lw = LabelWindows::read(path)?;
        windows_for(&lw, series)
    } else {
        let points = read_point_labels(path)?;
        if points.len() != series.rows.len() {
            return Err(DataError::LabelCount {
                path: path.to_owned(),
                labels: points.len(),
                rows: series.rows.len(),
            });
        }
        Ok(Windows::from_points(&points))
    }
}

/// The row windows of `series` under NAB-style `labels` (none when the series has no key).
pub fn windows_for(labels: &LabelWindows, series: &Series) -> Result<Windows, DataError> {
    let Some(ws) = labels.for_series(&series.name) else {
        return Ok(Windows::default());
    };
    let ts = series
        .timestamps
        .as_ref()
        .ok_or_else(|| DataError::NoTimestamps {
            series: series.name.clone(),
        })?;
    let mut ranges = Vec::with_capacity(ws.len());
    for &(start, end) in ws {
        let first = ts.iter().position(|&t| t >= start);
        let last = ts.iter().rposition(|&t| t <= end);
        if let (Some(a), Some(b)) = (first, last)
            && a <= b
        {
            ranges.push((a, b));
        }
    }
    Ok(Windows::new(ranges))
}

/// Reads SMD point labels: one `0` or `1` per line.
pub fn read_point_labels(path: &Path) -> Result<Vec<bool>, DataError> {
    let text = read_text(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        match line.trim() {
            "" => {}
            "0" => out.push(false),
            "1" => out.push(true),
            other => {
                return Err(DataError::BadField {
                    path: path.to_owned(),
                    line: i + 1,
                    column: "label".into(),
                    value: other.into(),
                    expected: "0 or 1",
                });
            }
        }
    }
    Ok(out)
}

/// The feature spec over `series`' columns with the given shape (signals filled in).
pub fn spec_for(template: &FeatureSpec, series: &Series) -> FeatureSpec {
    FeatureSpec {
        signals: series.columns.clone(),
        ..template.clone()
    }
}

/// Feature rows of `series` under `spec`, from a fresh extractor (as an agent that starts
/// watching the series at its first row).
pub fn features(series: &Series, spec: &FeatureSpec) -> Result<FeatureMatrix, DataError> {
    let mut fx = FeatureExtractor::new(spec.clone());
    let mut out = FeatureMatrix::new(spec.len());
    let mut buf = Vec::with_capacity(spec.len());
    for row in &series.rows {
        fx.push_into(row, &mut buf).map_err(DataError::Features)?;
        out.push_row(&buf);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).expect("write fixture");
        p
    }

    #[test]
    fn csv_with_nab_and_rfc3339_and_unix_times() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write(
            dir.path(),
            "a.csv",
            "timestamp,value\n2014-02-14 14:30:00,1.5\n2014-02-14T14:35:00Z,2\n1392389100,\n",
        );
        let s = read_csv(&p).expect("read");
        assert_eq!(s.columns, ["value"]);
        assert_eq!(
            s.timestamps.as_deref(),
            Some(&[1392388200, 1392388500, 1392389100][..])
        );
        assert_eq!(s.rows[0], [1.5]);
        assert!(s.rows[2][0].is_nan(), "an empty field is missing");
        assert_eq!(parse_time("2014-02-26 13:45:00.000000"), Some(1393422300));
        assert_eq!(parse_time("2014-02-26T14:45:00+01:00"), Some(1393422300));
    }

    #[test]
    fn bad_csv_rows_name_line_and_column() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write(dir.path(), "b.csv", "timestamp,cpu,mem\n1,2,3\n2,x,3\n");
        let e = read_csv(&p).expect_err("bad number").to_string();
        assert!(
            e.ends_with("b.csv:3: column \"cpu\": cannot read \"x\" as a number"),
            "{e}"
        );
        let p = write(dir.path(), "c.csv", "timestamp,cpu\n1,2\n2,3,4\n");
        let e = read_csv(&p).expect_err("bad count").to_string();
        assert!(e.ends_with("c.csv:3: expected 2 fields, found 3"), "{e}");
        let p = write(dir.path(), "d.csv", "timestamp,cpu\nyesterday,2\n");
        let e = read_csv(&p).expect_err("bad time").to_string();
        assert!(e.contains("d.csv:2: column \"timestamp\""), "{e}");
        let p = write(dir.path(), "e.csv", "timestamp\n1\n");
        assert!(matches!(read_csv(&p), Err(DataError::NoColumns { .. })));
    }

    #[test]
    fn smd_layout_and_point_labels() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write(dir.path(), "m.txt", "0.1,0,1\n0.2,0.5,1\n");
        let s = read_smd(&p).expect("read");
        assert_eq!(s.columns, ["m1", "m2", "m3"]);
        assert_eq!(s.rows.len(), 2);
        let p = write(dir.path(), "n.txt", "0.1,0\n0.2,oops\n");
        let e = read_smd(&p).expect_err("bad").to_string();
        assert!(
            e.ends_with("n.txt:2: column \"m2\": cannot read \"oops\" as a number"),
            "{e}"
        );
        let l = write(dir.path(), "l.txt", "0\n1\n1\n0\n1\n");
        let pts = read_point_labels(&l).expect("labels");
        assert_eq!(Windows::from_points(&pts).ranges(), [(1, 2), (4, 4)]);
        let l = write(dir.path(), "bad.txt", "0\n2\n");
        let e = read_point_labels(&l).expect_err("bad").to_string();
        assert!(
            e.ends_with("bad.txt:2: column \"label\": cannot read \"2\" as 0 or 1"),
            "{e}"
        );
        let l = write(dir.path(), "short.txt", "0\n");
        assert!(matches!(
            read_labels(&l, &s),
            Err(DataError::LabelCount {
                labels: 1,
                rows: 2,
                ..
            })
        ));
    }

    #[test]
    fn nab_windows_match_by_suffix_and_are_inclusive() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = write(
            dir.path(),
            "w.json",
            r#"{"realAWSCloudwatch/a.csv": [["1970-01-01 00:00:02.000000", "1970-01-01 00:00:04"]]}"#,
        );
        let lw = LabelWindows::read(&p).expect("windows");
        let s = Series {
            name: "a.csv".into(),
            columns: vec!["v".into()],
            timestamps: Some((0..6).collect()),
            rows: vec![vec![0.0]; 6],
        };
        assert_eq!(windows_for(&lw, &s).expect("w").ranges(), [(2, 4)]);
        let other = Series {
            name: "b.csv".into(),
            ..s.clone()
        };
        assert!(windows_for(&lw, &other).expect("w").ranges().is_empty());
        let bad = write(dir.path(), "bad.json", r#"{"a.csv": [["soon", "1"]]}"#);
        let e = LabelWindows::read(&bad).expect_err("bad bound").to_string();
        assert!(
            e.contains("series \"a.csv\"") && e.contains("\"soon\""),
            "{e}"
        );
        let bad = write(dir.path(), "bad2.json", r#"{"a.csv": [["1"]]}"#);
        assert!(matches!(
            LabelWindows::read(&bad),
            Err(DataError::BadWindows { .. })
        ));
    }

    #[test]
    fn windows_merge_and_slice() {
        let w = Windows::new(vec![(5, 7), (0, 1), (2, 3), (6, 9)]);
        assert_eq!(w.ranges(), [(0, 3), (5, 9)]);
        assert_eq!(w.slice(3..8).ranges(), [(0, 0), (2, 4)]);
        assert_eq!(w.points(4), [true, true, true, true]);
    }
}
