//! Dead letters: batches a handler refused as poison, set aside where an operator can read them
//! and replay them, instead of stalling their shard.
//!
//! One directory per handler (Kinesis: `<checkpoint.dir>/dead-letter/<stream>/<handler>/`; HTTP
//! ingest: `<ingest.log_dir>/dead-letter/<handler>/`), two files per batch, named after the
//! batch's range so a batch set aside twice (a crash between the dead letter and the
//! checkpoint) is one dead letter:
//!
//! - `<shard>-<first>-<last>.records`: the batch's records in the framing of the agent's spool
//!   and the ingest log ([`selfheal_runtime::frame`]: partition key and wire record per frame),
//!   so any frame scanner reads them and they can be POSTed back to the ingest endpoint;
//! - `<shard>-<first>-<last>.reason`: the handler, the range, the record count, the time and
//!   the error with its causes, as text.
//!
//! Both are written atomically (temp file, fsync, rename, directory fsync), the records first,
//! so a `.reason` file always has its records.

use super::Batch;
use super::checkpoint::{CheckpointError, write_atomic};
use selfheal_core::schema::encode_wire;
use selfheal_runtime::chain::ErrorChain;
use std::path::{Path, PathBuf};

/// Where one handler's dead letters go.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    dir: PathBuf,
}

impl DeadLetters {
    /// Dead letters in `dir` (created on the first one).
    pub fn new(dir: PathBuf) -> DeadLetters {
        DeadLetters { dir }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `batch` and why `handler` refused it; returns the records file.
    pub async fn set_aside(
        &self,
        handler: &str,
        batch: &Batch,
        error: &(dyn std::error::Error + Send + Sync + 'static),
    ) -> Result<PathBuf, CheckpointError> {
        let name = format!("{}-{}-{}", batch.shard_id, batch.first_seq, batch.last_seq);
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(CheckpointError::BadShardId(name));
        }
        let now_ms = now_ms();
        let mut records = Vec::new();
        let mut unencodable = 0usize;
        for r in &batch.records {
            match encode_wire(&r.envelope) {
                Ok(wire) => records.extend(selfheal_runtime::frame::encode(
                    now_ms,
                    &r.partition_key,
                    &wire,
                )),
                Err(_) => unencodable += 1,
            }
        }
        let reason = format!(
            "handler: {handler}\nshard: {}\nfirst: {}\nlast: {}\nrecords: {}\nunencodable: {unencodable}\nset_aside_unix_ms: {now_ms}\nerror: {}\n",
            batch.shard_id,
            batch.first_seq,
            batch.last_seq,
            batch.records.len(),
            ErrorChain::new(error),
        );
        let records_path = self.dir.join(format!("{name}.records"));
        let reason_path = self.dir.join(format!("{name}.reason"));
        let out = records_path.clone();
        tokio::task::spawn_blocking(move || {
            write_atomic(&records_path, &records)?;
            write_atomic(&reason_path, reason.as_bytes())
        })
        .await
        .map_err(CheckpointError::Join)??;
        Ok(out)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
