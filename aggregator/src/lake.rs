//! The lake handler: writes each batch to the data lake ([`selfheal_lake`]) as one Parquet
//! object per partition (date, hour, family), named after the batch's range
//! (`<shard>-<first>-<last>`), so a replayed batch (same range, see [`crate::pipeline`])
//! overwrites the objects of the interrupted attempt instead of adding copies.
//!
//! A store error (a directory that cannot be written, S3 refusing or unreachable) is retryable;
//! rows the Parquet encoder refuses will be refused every time, so that batch is poison.

use crate::pipeline::{Batch, Handler, HandlerError};
use selfheal_lake::format::{self, LakeRow};
use selfheal_lake::{LakeError, LakeWriter};

/// The lake writer as a pipeline handler.
#[derive(Debug, Clone)]
pub struct LakeHandler {
    writer: LakeWriter,
}

impl LakeHandler {
    /// A handler writing through `writer`.
    pub fn new(writer: LakeWriter) -> LakeHandler {
        LakeHandler { writer }
    }

    /// The writer.
    pub fn writer(&self) -> &LakeWriter {
        &self.writer
    }
}

/// The object name of a batch: shard and sequence range, so a rewrite replaces it.
pub fn batch_name(batch: &Batch) -> String {
    format!("{}-{}-{}", batch.shard_id, batch.first_seq, batch.last_seq)
}

impl Handler for LakeHandler {
    fn name(&self) -> &'static str {
        "lake"
    }

    async fn handle(&self, batch: &Batch) -> Result<(), HandlerError> {
        let rows: Vec<LakeRow> = batch
            .records
            .iter()
            .flat_map(|r| format::rows_of(&r.envelope))
            .collect();
        let report = self
            .writer
            .write_rows(&batch_name(batch), rows)
            .await
            .map_err(|e| match e {
                LakeError::Format { .. } => HandlerError::poison(e),
                LakeError::Store(_) => HandlerError::retryable(e),
            })?;
        tracing::debug!(
            shard = %batch.shard_id,
            objects = report.objects,
            rows = report.rows,
            duplicates = report.duplicates,
            bytes = report.bytes,
            "LakeBatchWritten"
        );
        Ok(())
    }
}
