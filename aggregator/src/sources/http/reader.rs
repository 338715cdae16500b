//! One handler's reader of the [`IngestLog`]: the HTTP source's counterpart of a Kinesis shard
//! reader. It reads the log from its handler's checkpoint (shard `http`), cuts batches the same
//! way (`batch.max_records`, `batch.max_bytes`, `flush_interval` after the batch's first record
//! was read, or where a pending checkpoint says the interrupted batch ended), hands them over
//! through the handler's [`Delivery`], and after each checkpoint tells the log how far it got so
//! consumed segments are deleted.

use super::log::{Chunk, IngestLog, LogError};
use crate::pipeline::deliver::{backoff, sleep_or_stop};
use crate::pipeline::{
    Batch, Checkpoint, CheckpointStore, ConsumedRecord, Delivery, Handler, seq_at_or_after,
};
use selfheal_core::schema::{DecodeError, decode_wire};
use selfheal_runtime::chain::ErrorChain;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// The shard name of the ingest log in batches and checkpoints.
pub const SHARD: &str = "http";

/// How batches are cut.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Records.
    pub max_records: usize,
    /// Wire bytes.
    pub max_bytes: usize,
    /// Age of the first record read into the batch.
    pub flush_interval: Duration,
    /// First retry delay after a read error.
    pub retry_initial: Duration,
    /// Largest retry delay.
    pub retry_max: Duration,
}

/// A reader registered with the log, ready to run.
#[derive(Debug)]
pub struct LogReader<C, H> {
    log: Arc<IngestLog>,
    delivery: Delivery<C, H>,
    limits: BatchLimits,
    slot: usize,
    pos: u64,
    after: Option<String>,
    cut: Option<String>,
}

fn offset(seq: &str) -> Option<u64> {
    seq.parse().ok()
}

fn seq(end: u64) -> String {
    format!("{end:020}")
}

impl<C: CheckpointStore, H: Handler> LogReader<C, H> {
    /// Loads the handler's checkpoint and registers with the log. Register every handler's
    /// reader before running any, so no segment is deleted under a reader that has not started.
    pub async fn register(
        log: Arc<IngestLog>,
        delivery: Delivery<C, H>,
        limits: BatchLimits,
    ) -> Result<Self, crate::pipeline::CheckpointError> {
        let cp = delivery.checkpoints().load(SHARD).await?;
        let after = cp
            .as_ref()
            .and_then(Checkpoint::resume_after)
            .map(str::to_owned);
        let cut = cp.as_ref().and_then(Checkpoint::cut_at).map(str::to_owned);
        let (slot, pos) = log.register(after.as_deref().and_then(offset));
        tracing::info!(handler = delivery.name(), after = ?after, replay_through = ?cut, start = pos, "IngestLogReaderStarted");
        Ok(LogReader {
            log,
            delivery,
            limits,
            slot,
            pos,
            after,
            cut,
        })
    }

    /// Reads until `stop` turns true; then hands over the open batch and returns.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let name = self.delivery.name();
        let mut appended = self.log.subscribe();
        let mut backoff = backoff(self.limits.retry_initial, self.limits.retry_max);
        let mut batch: Option<Batch> = None;
        let mut started: Option<Instant> = None;
        let mut bytes = 0usize;
        loop {
            if *stop.borrow() {
                self.flush(&mut batch, &mut stop).await;
                tracing::info!(handler = name, "IngestLogReaderStopped");
                return;
            }
            if started.is_some_and(|t| t.elapsed() >= self.limits.flush_interval) {
                if !self.flush(&mut batch, &mut stop).await {
                    return;
                }
                (started, bytes) = (None, 0);
            }
            appended.borrow_and_update();
            let log = Arc::clone(&self.log);
            let pos = self.pos;
            let chunk: Result<Chunk, LogError> = tokio::task::spawn_blocking(move || log.read(pos))
                .await
                .map_err(LogError::Join)
                .and_then(|r| r);
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(handler = name, error = %ErrorChain::new(&e), "IngestLogReadError");
                    sleep_or_stop(backoff.next_delay(), &stop).await;
                    continue;
                }
            };
            backoff.reset();
            self.pos = chunk.next;
            for r in chunk.records {
                let s = seq(r.end);
                let decoded = decode_wire(&r.wire);
                if let Err(DecodeError::UnsupportedVersion { found, supported }) = &decoded
                    && *found > *supported
                {
                    // Logged by a newer build: deliver what came before, then stop here, never
                    // checkpointing past it, until a build that reads it runs.
                    if !self.flush(&mut batch, &mut stop).await {
                        return;
                    }
                    tracing::error!(handler = name, sequence = %s, found, supported, "IngestLogReaderStoppedAtNewerSchema");
                    let _ = stop.wait_for(|s| *s).await;
                    return;
                }
                let b = batch.get_or_insert_with(|| Batch {
                    shard_id: SHARD.into(),
                    first_seq: s.clone(),
                    last_seq: s.clone(),
                    records: Vec::new(),
                });
                b.last_seq.clone_from(&s);
                started.get_or_insert_with(Instant::now);
                bytes += r.wire.len();
                match decoded {
                    Ok(envelope) => b.records.push(ConsumedRecord {
                        sequence: s.clone(),
                        partition_key: r.key,
                        envelope,
                    }),
                    // The endpoint logs only records that decoded: this is a build that
                    // cannot read what an older one logged.
                    Err(e) => {
                        tracing::warn!(handler = name, sequence = %s, error = %e, "MalformedRecordSkipped");
                    }
                }
                let replayed = self.cut.as_deref().is_some_and(|c| seq_at_or_after(&s, c));
                if replayed {
                    self.cut = None;
                }
                let full =
                    b.records.len() >= self.limits.max_records || bytes >= self.limits.max_bytes;
                if replayed || full {
                    if !self.flush(&mut batch, &mut stop).await {
                        return;
                    }
                    (started, bytes) = (None, 0);
                }
            }
            if chunk.moved {
                continue;
            }
            // Caught up: wait for an append, the open batch's deadline, or shutdown.
            let deadline = started.map(|t| t + self.limits.flush_interval);
            tokio::select! {
                _ = appended.changed() => {}
                () = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        }
    }

    /// Delivers the open batch, if any, then lets the log delete what every reader is past.
    /// False when shutdown came first.
    async fn flush(&mut self, batch: &mut Option<Batch>, stop: &mut watch::Receiver<bool>) -> bool {
        let Some(b) = batch.as_ref() else {
            return true;
        };
        if !self.delivery.deliver(b, self.after.as_deref(), stop).await {
            return false;
        }
        let done = offset(&b.last_seq);
        self.after = Some(b.last_seq.clone());
        *batch = None;
        if let Some(done) = done {
            let log = Arc::clone(&self.log);
            let slot = self.slot;
            let released = tokio::task::spawn_blocking(move || log.release(slot, done))
                .await
                .map_err(LogError::Join)
                .and_then(|r| r);
            if let Err(e) = released {
                // The segments stay until the next release: space, not data, is at stake.
                tracing::warn!(handler = self.delivery.name(), error = %ErrorChain::new(&e), "IngestLogReleaseError");
            }
        }
        true
    }
}
