//! The Kinesis consumer: every shard of one stream, read in order, decoded with core's wire
//! decoder and handed in batches to a [`BatchHandler`] (the lake writer today, the incident
//! pipeline later), with a durable per-shard [`checkpoint`] saved only after the handler
//! succeeds: delivery to the handler is at least once.
//!
//! Shards: [`Consumer::run`] lists the stream's shards now and every `shard_refresh`, and starts
//! one reader task per open shard whose parents are done (a child shard of a split or merge is
//! read only after its parents were read to their end, so each workload's records stay in
//! order). A reader resumes after its checkpoint's sequence number, or at `TRIM_HORIZON` for a
//! shard never read; a closed shard is read to its end, then checkpointed as `shard-end`.
//!
//! Errors are events: throttling and transport errors back off (jittered, doubling, capped) and
//! retry; an expired iterator is renewed from the last record read; a record that does not
//! decode is logged once, counted and skipped, never blocking the shard; a handler failure keeps
//! the batch and retries it, without advancing the checkpoint.

pub mod checkpoint;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::operation::get_records::GetRecordsError;
use aws_sdk_kinesis::operation::get_shard_iterator::GetShardIteratorError;
use aws_sdk_kinesis::types::{Shard, ShardIteratorType};
pub use checkpoint::{Checkpoint, CheckpointError, CheckpointStore, FileCheckpoints};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use selfheal_core::schema::{Envelope, decode_wire};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// One decoded record of a batch.
#[derive(Debug, Clone)]
pub struct ConsumedRecord {
    /// Its sequence number in the shard (from [`crate::ingest`]: its record id, 32 hex digits).
    pub sequence: String,
    /// The partition key it was put with (the workload identity).
    pub partition_key: String,
    /// The decoded envelope.
    pub envelope: Envelope,
}

/// A run of consecutive records of one shard, handed to a [`BatchHandler`]. [`crate::ingest`]
/// makes one of each request: shard `http`, first and last record ids (the last with the record
/// count appended), so that the same request names the same lake objects.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The shard.
    pub shard_id: String,
    /// Sequence number of the first record read into the batch (decoded or not).
    pub first_seq: String,
    /// Sequence number of the last record read into the batch (decoded or not): the checkpoint
    /// once the handler succeeds.
    pub last_seq: String,
    /// The records that decoded, in shard order.
    pub records: Vec<ConsumedRecord>,
}

/// A handler's failure; the consumer logs it and retries the same batch later.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct HandlerError(pub Box<dyn std::error::Error + Send + Sync>);

/// What the consumer feeds: called once per batch, from one task per shard (so concurrently
/// across shards, in order within one). Return only once the batch's effects are durable: the
/// checkpoint advances right after.
pub trait BatchHandler: Send + Sync + 'static {
    /// Handles one batch.
    fn handle(&self, batch: &Batch) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// Validated consumer settings (built from the aggregator's config).
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// The stream.
    pub stream: String,
    /// A batch is handed over when it holds this many records...
    pub batch_max_records: usize,
    /// ... or when its first record was read this long ago.
    pub flush_interval: Duration,
    /// Pause after a GetRecords call that returned less than a full page (Kinesis allows five
    /// calls a second per shard, shared by every consumer of the stream).
    pub poll_interval: Duration,
    /// Most records one GetRecords call returns (Kinesis: at most 10,000).
    pub get_records_limit: i32,
    /// How often the shard list is refreshed (to find the children of split or merged shards).
    pub shard_refresh: Duration,
    /// First retry delay after an error.
    pub retry_initial: Duration,
    /// Largest retry delay.
    pub retry_max: Duration,
}

/// Labels of per-shard metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabels {
    /// The shard id.
    pub shard: String,
}

/// Labels of `selfheal_aggregator_consume_errors_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `list_shards`, `get_shard_iterator`, `get_records`, `throttled`, `expired_iterator`,
    /// `handler` or `checkpoint`.
    pub kind: &'static str,
}

/// The consumer's counters (`selfheal_aggregator_consume_*`).
#[derive(Debug, Default)]
pub struct ConsumeMetrics {
    /// Records decoded.
    pub records: Counter,
    /// Records skipped because they did not decode.
    pub malformed: Counter,
    /// Batches handled and checkpointed.
    pub batches: Counter,
    /// Errors, by kind (each retried).
    pub errors: Family<ErrorLabels, Counter>,
    /// Milliseconds the last GetRecords of each shard was behind the tip of the stream.
    pub millis_behind: Family<ShardLabels, Gauge>,
    /// Shards being read now.
    pub shards_reading: Gauge,
    /// Shards read to their end.
    pub shards_finished: Counter,
}

impl ConsumeMetrics {
    /// Registers every metric under `registry` (prefix `selfheal_aggregator_consume`).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("consume");
        r.register("records", "Records decoded", self.records.clone());
        r.register(
            "malformed_records",
            "Records skipped because they did not decode",
            self.malformed.clone(),
        );
        r.register(
            "batches",
            "Batches handled and checkpointed",
            self.batches.clone(),
        );
        r.register("errors", "Errors, by kind", self.errors.clone());
        r.register(
            "millis_behind_latest",
            "How far each shard's reader is behind the stream's tip, ms",
            self.millis_behind.clone(),
        );
        r.register(
            "shards_reading",
            "Shards being read",
            self.shards_reading.clone(),
        );
        r.register(
            "shards_finished",
            "Closed shards read to their end",
            self.shards_finished.clone(),
        );
    }

    fn error(&self, kind: &'static str) {
        self.errors.get_or_create(&ErrorLabels { kind }).inc();
    }
}

/// Reads a stream's shards into a handler, with checkpoints.
#[derive(Debug)]
pub struct Consumer<C, H> {
    inner: Arc<Inner<C, H>>,
}

#[derive(Debug)]
struct Inner<C, H> {
    client: Client,
    settings: ConsumerSettings,
    checkpoints: C,
    handler: H,
    metrics: Arc<ConsumeMetrics>,
    /// Monotonic time of the last successful Kinesis call, for `/healthz`.
    last_progress: watch::Sender<Instant>,
}

/// Jittered exponential backoff.
#[derive(Debug)]
struct Backoff {
    next: Duration,
    initial: Duration,
    max: Duration,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            next: initial,
            initial,
            max,
        }
    }

    /// The next delay: uniformly in [d/2, d], then d doubles (capped).
    fn delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(self.max);
        d.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Resolves when shutdown is requested (or the sender is gone, which means the same).
async fn wait_stop(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

/// Sleeps `d`, or less if shutdown is requested; true when shutdown was requested.
async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    let stopped = tokio::select! {
        _ = tokio::time::sleep(d) => false,
        () = wait_stop(stop) => true,
    };
    stopped || *stop.borrow()
}

impl<C: CheckpointStore, H: BatchHandler> Consumer<C, H> {
    /// A consumer of `settings.stream` through `client`.
    pub fn new(
        client: Client,
        settings: ConsumerSettings,
        checkpoints: C,
        handler: H,
        metrics: Arc<ConsumeMetrics>,
    ) -> Self {
        let (last_progress, _) = watch::channel(Instant::now());
        Consumer {
            inner: Arc::new(Inner {
                client,
                settings,
                checkpoints,
                handler,
                metrics,
                last_progress,
            }),
        }
    }

    /// A receiver of the time of the last successful Kinesis call (for health checks).
    pub fn progress(&self) -> watch::Receiver<Instant> {
        self.inner.last_progress.subscribe()
    }

    /// Runs until `shutdown` turns true: then every reader hands over its partial batch, waits
    /// for the handler and the checkpoint, and returns; `run` returns when all have.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let inner = self.inner;
        let mut running: HashSet<String> = HashSet::new();
        let mut finished: HashSet<String> = HashSet::new();
        let mut tasks: JoinSet<(String, bool)> = JoinSet::new();
        let mut backoff = Backoff::new(inner.settings.retry_initial, inner.settings.retry_max);
        loop {
            let wait = match inner.list_shards().await {
                Ok(shards) => {
                    backoff.reset();
                    inner
                        .start_ready(&shards, &mut running, &mut finished, &mut tasks, &shutdown)
                        .await;
                    inner.settings.shard_refresh
                }
                Err(e) => {
                    inner.metrics.error("list_shards");
                    tracing::warn!(stream = %inner.settings.stream, error = %e, "ListShardsError");
                    backoff.delay()
                }
            };
            let deadline = tokio::time::sleep(wait);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = &mut deadline => break,
                    _ = wait_stop(&mut shutdown) => {
                        tracing::info!(shards = running.len(), "ConsumerStopping");
                        while let Some(done) = tasks.join_next().await {
                            if let Err(e) = done {
                                tracing::error!(error = %e, "ShardReaderPanicked");
                            }
                        }
                        return;
                    }
                    Some(done) = tasks.join_next() => {
                        match done {
                            Ok((shard, at_end)) => {
                                running.remove(&shard);
                                if at_end {
                                    finished.insert(shard);
                                    // A parent just finished: its children may start now.
                                    break;
                                }
                            }
                            Err(e) => tracing::error!(error = %e, "ShardReaderPanicked"),
                        }
                    }
                }
            }
        }
    }
}

impl<C: CheckpointStore, H: BatchHandler> Inner<C, H> {
    fn progress(&self) {
        self.last_progress.send_replace(Instant::now());
    }

    async fn list_shards(&self) -> Result<Vec<Shard>, String> {
        let mut shards = Vec::new();
        let mut token: Option<String> = None;
        // Bounded: a stream has at most a few thousand shards, 1,000 per page.
        for _ in 0..100 {
            let req = self.client.list_shards();
            let req = match &token {
                Some(t) => req.next_token(t),
                None => req.stream_name(&self.settings.stream),
            };
            let out = req
                .send()
                .await
                .map_err(|e| DisplayErrorContext(&e).to_string())?;
            shards.extend(out.shards().iter().cloned());
            match out.next_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        self.progress();
        Ok(shards)
    }

    /// Starts readers for shards that are not finished, not running, and whose parents (if
    /// still listed) are finished.
    async fn start_ready(
        self: &Arc<Self>,
        shards: &[Shard],
        running: &mut HashSet<String>,
        finished: &mut HashSet<String>,
        tasks: &mut JoinSet<(String, bool)>,
        shutdown: &watch::Receiver<bool>,
    ) {
        let listed: HashSet<&str> = shards.iter().map(Shard::shard_id).collect();
        let mut loaded: HashMap<String, Option<Checkpoint>> = HashMap::new();
        for s in shards {
            let id = s.shard_id();
            if finished.contains(id) || running.contains(id) {
                continue;
            }
            match self.checkpoints.load(id).await {
                Ok(Some(Checkpoint::ShardEnd)) => {
                    finished.insert(id.to_owned());
                }
                Ok(cp) => {
                    loaded.insert(id.to_owned(), cp);
                }
                Err(e) => {
                    self.metrics.error("checkpoint");
                    tracing::warn!(shard = %id, error = %e, "CheckpointLoadError");
                }
            }
        }
        for s in shards {
            let id = s.shard_id();
            let Some(cp) = loaded.remove(id) else {
                continue;
            };
            let parents_done = [s.parent_shard_id(), s.adjacent_parent_shard_id()]
                .into_iter()
                .flatten()
                .all(|p| !listed.contains(p) || finished.contains(p));
            if !parents_done {
                continue;
            }
            running.insert(id.to_owned());
            let this = Arc::clone(self);
            let stop = shutdown.clone();
            let shard = id.to_owned();
            tasks.spawn(async move {
                this.metrics.shards_reading.inc();
                let at_end = this.read_shard(&shard, cp, stop).await;
                this.metrics.shards_reading.dec();
                (shard, at_end)
            });
        }
    }

    async fn iterator(
        &self,
        shard: &str,
        after: Option<&str>,
    ) -> Result<String, SdkError<GetShardIteratorError>> {
        let req = self
            .client
            .get_shard_iterator()
            .stream_name(&self.settings.stream)
            .shard_id(shard);
        let req = match after {
            Some(seq) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(seq),
            None => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
        };
        let out = req.send().await?;
        self.progress();
        // Kinesis always returns an iterator for an existing shard; an empty one reads nothing
        // and the next call asks again.
        Ok(out.shard_iterator.unwrap_or_default())
    }

    /// Reads one shard until shutdown (returns false) or its end (returns true).
    async fn read_shard(
        &self,
        shard: &str,
        checkpoint: Option<Checkpoint>,
        mut stop: watch::Receiver<bool>,
    ) -> bool {
        let mut last_read = match checkpoint {
            Some(Checkpoint::After(seq)) => Some(seq),
            _ => None,
        };
        tracing::info!(shard, after = ?last_read, "ShardReaderStarted");
        let mut backoff = Backoff::new(self.settings.retry_initial, self.settings.retry_max);
        let mut iterator: Option<String> = None;
        let mut batch: Option<(Batch, Instant)> = None;
        let behind_labels = ShardLabels {
            shard: shard.to_owned(),
        };
        loop {
            if *stop.borrow() {
                self.flush(&mut batch, &mut stop).await;
                tracing::info!(shard, "ShardReaderStopped");
                return false;
            }
            if let Some((b, started)) = &batch
                && (b.records.len() >= self.settings.batch_max_records
                    || started.elapsed() >= self.settings.flush_interval)
            {
                self.flush(&mut batch, &mut stop).await;
            }
            let it = match iterator.take() {
                Some(it) => it,
                None => match self.iterator(shard, last_read.as_deref()).await {
                    Ok(it) => it,
                    Err(e) => {
                        let throttled = matches!(
                            &e,
                            SdkError::ServiceError(se) if matches!(se.err(),
                                GetShardIteratorError::ProvisionedThroughputExceededException(_))
                        );
                        self.metrics.error(if throttled {
                            "throttled"
                        } else {
                            "get_shard_iterator"
                        });
                        tracing::warn!(shard, error = %DisplayErrorContext(&e), "GetShardIteratorError");
                        sleep_or_stop(backoff.delay(), &mut stop).await;
                        continue;
                    }
                },
            };
            let out = self
                .client
                .get_records()
                .shard_iterator(&it)
                .limit(self.settings.get_records_limit)
                .send()
                .await;
            let out = match out {
                Ok(out) => out,
                Err(e) => {
                    match classify(&e) {
                        ReadError::Expired => {
                            // Renewed from the last record read, not from the checkpoint: the
                            // records in the open batch must not be read twice.
                            self.metrics.error("expired_iterator");
                            tracing::info!(shard, "ShardIteratorExpired");
                            continue;
                        }
                        ReadError::Throttled => {
                            self.metrics.error("throttled");
                            tracing::debug!(shard, "GetRecordsThrottled");
                        }
                        ReadError::Other => {
                            self.metrics.error("get_records");
                            tracing::warn!(shard, error = %DisplayErrorContext(&e), "GetRecordsError");
                        }
                    }
                    iterator = Some(it);
                    sleep_or_stop(backoff.delay(), &mut stop).await;
                    continue;
                }
            };
            backoff.reset();
            self.progress();
            if let Some(ms) = out.millis_behind_latest {
                self.metrics
                    .millis_behind
                    .get_or_create(&behind_labels)
                    .set(ms);
            }
            let n = out.records().len();
            for r in out.records() {
                let seq = r.sequence_number().to_owned();
                let (b, _) = batch.get_or_insert_with(|| {
                    (
                        Batch {
                            shard_id: shard.to_owned(),
                            first_seq: seq.clone(),
                            last_seq: seq.clone(),
                            records: Vec::new(),
                        },
                        Instant::now(),
                    )
                });
                b.last_seq.clone_from(&seq);
                match decode_wire(r.data().as_ref()) {
                    Ok(envelope) => {
                        self.metrics.records.inc();
                        b.records.push(ConsumedRecord {
                            sequence: seq.clone(),
                            partition_key: r.partition_key().to_owned(),
                            envelope,
                        });
                    }
                    Err(e) => {
                        self.metrics.malformed.inc();
                        tracing::warn!(
                            shard,
                            sequence = %seq,
                            partition_key = r.partition_key(),
                            bytes = r.data().as_ref().len(),
                            error = %e,
                            "MalformedRecordSkipped"
                        );
                    }
                }
                last_read = Some(seq);
            }
            match out.next_shard_iterator {
                Some(next) => iterator = Some(next),
                None => {
                    self.flush(&mut batch, &mut stop).await;
                    if batch.is_some() {
                        // Stopped before the last batch was durable: read it again next time.
                        return false;
                    }
                    self.save_checkpoint(shard, &Checkpoint::ShardEnd, &mut stop)
                        .await;
                    self.metrics.shards_finished.inc();
                    tracing::info!(shard, "ShardFinished");
                    return true;
                }
            }
            let full = i32::try_from(n).unwrap_or(i32::MAX) >= self.settings.get_records_limit;
            if !full {
                sleep_or_stop(self.settings.poll_interval, &mut stop).await;
            }
        }
    }

    /// Hands the open batch to the handler until it succeeds (or, once shutdown is requested,
    /// after one more failure), then checkpoints its last sequence number. Leaves `batch` as
    /// `None` when it was written.
    async fn flush(&self, batch: &mut Option<(Batch, Instant)>, stop: &mut watch::Receiver<bool>) {
        let Some((b, _)) = batch.as_ref() else {
            return;
        };
        let mut backoff = Backoff::new(self.settings.retry_initial, self.settings.retry_max);
        loop {
            let result = if b.records.is_empty() {
                // Only malformed records: nothing to write, but the checkpoint moves past them.
                Ok(())
            } else {
                self.handler.handle(b).await
            };
            match result {
                Ok(()) => break,
                Err(e) => {
                    self.metrics.error("handler");
                    tracing::warn!(shard = %b.shard_id, first = %b.first_seq, last = %b.last_seq, records = b.records.len(), error = %e, "BatchHandlerError");
                    if *stop.borrow() {
                        tracing::warn!(shard = %b.shard_id, "BatchAbandonedAtShutdown");
                        return;
                    }
                    sleep_or_stop(backoff.delay(), stop).await;
                }
            }
        }
        let cp = Checkpoint::After(b.last_seq.clone());
        let shard = b.shard_id.clone();
        self.save_checkpoint(&shard, &cp, stop).await;
        self.metrics.batches.inc();
        *batch = None;
    }

    /// Saves a checkpoint, retrying until it sticks; at shutdown, one try.
    async fn save_checkpoint(
        &self,
        shard: &str,
        cp: &Checkpoint,
        stop: &mut watch::Receiver<bool>,
    ) {
        let mut backoff = Backoff::new(self.settings.retry_initial, self.settings.retry_max);
        loop {
            match self.checkpoints.save(shard, cp).await {
                Ok(()) => return,
                Err(e) => {
                    self.metrics.error("checkpoint");
                    tracing::warn!(shard, error = %e, "CheckpointSaveError");
                    if *stop.borrow() {
                        return;
                    }
                    sleep_or_stop(backoff.delay(), stop).await;
                }
            }
        }
    }
}

enum ReadError {
    Expired,
    Throttled,
    Other,
}

fn classify<R>(e: &SdkError<GetRecordsError, R>) -> ReadError {
    match e {
        SdkError::ServiceError(se) => match se.err() {
            GetRecordsError::ExpiredIteratorException(_) => ReadError::Expired,
            GetRecordsError::ProvisionedThroughputExceededException(_)
            | GetRecordsError::KmsThrottlingException(_) => ReadError::Throttled,
            other if other.code() == Some("ExpiredIteratorException") => ReadError::Expired,
            other if other.code().is_some_and(|c| c.contains("Throttl")) => ReadError::Throttled,
            _ => ReadError::Other,
        },
        _ => ReadError::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let d: Vec<Duration> = (0..4).map(|_| b.delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[1] >= Duration::from_millis(100) && d[1] <= Duration::from_millis(200));
        assert!(d[3] >= Duration::from_millis(175) && d[3] <= Duration::from_millis(350));
        b.reset();
        assert!(b.delay() <= Duration::from_millis(100));
    }
}
