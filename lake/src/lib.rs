//! selfheal-lake: the data lake table, its writer and its reader. Decoded envelopes in,
//! partitioned Parquet objects out (the aggregator's lake handler), and the read path the
//! trainer uses; a local directory or an S3 bucket and prefix. It is a writer/reader contract
//! like the wire schema, with Parquet and S3 I/O, so the trainer depends on it and not on the
//! aggregator (no Kinesis, no HTTP server in the trainer's build).
//!
//! Layout: `dt=YYYY-MM-DD/hour=HH/family=<family>/<name>.parquet`, times in UTC from each
//! record's own timestamp. The family level lets a trainer, who always trains one family, read
//! only that family's objects; the date and hour levels let lifecycle rules and query engines
//! (Athena, DuckDB, Spark: all read Hive-style `key=value` paths) prune by time.
//!
//! Object names are the writer's to choose; the aggregator names each object after the source
//! range it holds (shard or ingest log, first and last position), so writing the same range
//! again after a crash overwrites the same objects instead of adding copies. Rows are
//! de-duplicated by record id within a write; a duplicate that arrives in another write (an
//! agent resent it) is dropped on read, by [`read_family`].
//!
//! Beside the table, `labels/` holds the ground truth of chaos runs ([`labels`]): one small
//! JSON object per run saying which fault ran against which workload on which node, and when.
//!
//! [`format`](mod@format) owns the table and its Parquet encoding, [`store`] the directory or S3 bucket.

pub mod format;
pub mod labels;
pub mod store;

use format::{LakeRow, RowKind};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use selfheal_core::Family;
use selfheal_core::RecordId;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
pub use store::{LakeStore, S3Options, StoreError};
use time::OffsetDateTime;

/// A batch that could not be written to the lake.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    /// Rows could not be encoded or a file decoded.
    #[error("lake object {key}")]
    Format {
        /// The object.
        key: String,
        /// The cause.
        #[source]
        source: format::FormatError,
    },
    /// The store refused the object.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteReport {
    /// Objects written.
    pub objects: usize,
    /// Rows written (after de-duplication).
    pub rows: usize,
    /// Rows dropped as duplicates within the batch.
    pub duplicates: usize,
    /// Bytes written.
    pub bytes: usize,
}

/// Counters of everything the writer has done (`<prefix>_lake_*` once registered).
#[derive(Debug, Default)]
pub struct LakeStats {
    /// Objects written.
    pub objects: Counter,
    /// Rows written.
    pub rows: Counter,
    /// Rows dropped as in-batch duplicates.
    pub duplicates: Counter,
    /// Bytes written.
    pub bytes: Counter,
    /// Failed object writes (the caller retries).
    pub errors: Counter,
}

impl LakeStats {
    /// Registers every counter under `registry` (prefix `lake`).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("lake");
        r.register("objects", "Objects written", self.objects.clone());
        r.register("rows", "Rows written", self.rows.clone());
        r.register(
            "duplicate_rows",
            "Rows dropped as duplicates within a batch",
            self.duplicates.clone(),
        );
        r.register_with_unit(
            "written",
            "Bytes written",
            prometheus_client::registry::Unit::Bytes,
            self.bytes.clone(),
        );
        r.register("errors", "Failed object writes", self.errors.clone());
    }
}

/// Writes batches to a [`LakeStore`] as partitioned Parquet.
#[derive(Debug, Clone)]
pub struct LakeWriter {
    store: LakeStore,
    stats: Arc<LakeStats>,
}

/// The partition of a row: `dt=YYYY-MM-DD/hour=HH/family=F/`.
pub fn partition(ts_ms: i64, family: Family) -> String {
    let t = OffsetDateTime::from_unix_timestamp(ts_ms.div_euclid(1000))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "dt={:04}-{:02}-{:02}/hour={:02}/family={}/",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        family.as_str()
    )
}

impl LakeWriter {
    /// A writer to `store`.
    pub fn new(store: LakeStore) -> LakeWriter {
        LakeWriter {
            store,
            stats: Arc::default(),
        }
    }

    /// The writer's counters.
    pub fn stats(&self) -> Arc<LakeStats> {
        Arc::clone(&self.stats)
    }

    /// The store written to.
    pub fn store(&self) -> &LakeStore {
        &self.store
    }

    /// Writes `rows` as one object per partition, named `<part_name>.parquet`. Returns once every
    /// object is durable (renamed and synced, or acknowledged by S3).
    pub async fn write_rows(
        &self,
        part_name: &str,
        rows: Vec<LakeRow>,
    ) -> Result<WriteReport, LakeError> {
        let before = rows.len();
        let rows = format::dedup(rows);
        let mut report = WriteReport {
            duplicates: before - rows.len(),
            ..WriteReport::default()
        };
        let mut parts: BTreeMap<String, Vec<LakeRow>> = BTreeMap::new();
        for r in rows {
            parts
                .entry(partition(r.ts_ms, r.family))
                .or_default()
                .push(r);
        }
        for (dir, rows) in parts {
            let key = format!("{dir}{part_name}.parquet");
            // Encoding ~10k rows takes milliseconds of CPU: keep it off the I/O threads.
            let (rows, bytes) = tokio::task::spawn_blocking(move || {
                let bytes = format::encode(&rows);
                (rows, bytes)
            })
            .await
            .map_err(StoreError::Join)?;
            let bytes = bytes.map_err(|source| LakeError::Format {
                key: key.clone(),
                source,
            })?;
            report.objects += 1;
            report.rows += rows.len();
            report.bytes += bytes.len();
            self.store.put(&key, bytes).await.inspect_err(|_| {
                self.stats.errors.inc();
            })?;
        }
        self.stats.objects.inc_by(report.objects as u64);
        self.stats.rows.inc_by(report.rows as u64);
        self.stats.duplicates.inc_by(report.duplicates as u64);
        self.stats.bytes.inc_by(report.bytes as u64);
        Ok(report)
    }
}

/// What [`read_family`] found.
#[derive(Debug, Default)]
pub struct ReadReport {
    /// Objects read.
    pub objects: usize,
    /// Rows of the family read, before de-duplication.
    pub rows: usize,
    /// Rows dropped because their id was seen already.
    pub duplicates: usize,
}

/// Every row of `family` in the lake, de-duplicated by record id (first seen wins, anomalies and
/// samples over window copies), in no particular order. `kinds` selects which rows to keep.
pub async fn read_family(
    store: &LakeStore,
    family: Family,
    kinds: &[RowKind],
) -> Result<(Vec<LakeRow>, ReadReport), LakeError> {
    let marker = format!("family={}/", family.as_str());
    let mut report = ReadReport::default();
    let mut rows = Vec::new();
    for key in store.list(".parquet").await? {
        if !key.contains(&marker) {
            continue;
        }
        let bytes = store.get(&key).await?;
        let decoded = format::decode(bytes).map_err(|source| LakeError::Format {
            key: key.clone(),
            source,
        })?;
        report.objects += 1;
        rows.extend(
            decoded
                .into_iter()
                .filter(|r| r.family == family && kinds.contains(&r.kind)),
        );
    }
    report.rows = rows.len();
    let rows = format::dedup(rows);
    report.duplicates = report.rows - rows.len();
    Ok((rows, report))
}

/// Distinct ids among `rows` (a test and audit helper).
pub fn distinct_ids(rows: &[LakeRow]) -> usize {
    rows.iter()
        .map(|r| r.id)
        .collect::<HashSet<RecordId>>()
        .len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_utc_hive_paths() {
        // 2025-11-24T16:00:00Z
        assert_eq!(
            partition(1_764_000_000_000, Family::Cpu),
            "dt=2025-11-24/hour=16/family=cpu/"
        );
        assert_eq!(
            partition(-1, Family::Memory),
            "dt=1969-12-31/hour=23/family=memory/"
        );
    }
}
