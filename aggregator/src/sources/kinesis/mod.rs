//! The Kinesis source: every shard of one stream, read in order, decoded with core's wire
//! decoder and handed in batches to one [`Handler`] through its [`Delivery`] (one [`Consumer`]
//! per handler, each with its own checkpoint namespace, so handlers never wait for each other).
//! Delivery to the handler is at least once, and a replay is the same batch.
//!
//! Shards: [`Consumer::run`] lists the stream's shards now and every `shard_refresh`, and starts
//! one reader task per open shard whose parents are done (a child shard of a split or merge is
//! read only after its parents were read to their end, so each workload's records stay in
//! order). A reader resumes after its checkpoint's sequence number, or at `TRIM_HORIZON` for a
//! shard never read; a closed shard is read to its end, then checkpointed as `shard-end`.
//!
//! Batches are cut at `batch.max_records` records, `batch.max_bytes` wire bytes, or
//! `flush_interval` after their first record was read, whichever comes first; and, after a
//! crash, exactly where the pending checkpoint says the interrupted batch ended.
//!
//! Errors are events: throttling and transport errors back off (jittered, doubling, capped) and
//! retry; an expired iterator is renewed from the last record read; a record that does not
//! decode is logged once, counted and skipped, never blocking the shard. A record of a *newer*
//! schema version is not malformed: it is data this build cannot read yet (an agent upgraded
//! before the aggregator). The records before it are delivered and checkpointed, and then that
//! shard's reader stops where it is (`selfheal_aggregator_consume_stalled_shards`, one ERROR
//! line) until shutdown, never checkpointing past it: the upgraded aggregator reads on from
//! there. Other shards go on; handler failures are
//! [`Delivery`]'s (retried, or set aside when poison). A reader task that panics takes the
//! consumer down with it (and so the process, non-zero): a bug is not retried in a loop.

use crate::pipeline::deliver::{backoff, sleep_or_stop};
use crate::pipeline::{
    Batch, Checkpoint, CheckpointStore, ConsumedRecord, Delivery, Handler, seq_at_or_after,
};
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::operation::get_records::GetRecordsError;
use aws_sdk_kinesis::operation::get_shard_iterator::GetShardIteratorError;
use aws_sdk_kinesis::types::{Shard, ShardIteratorType};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use selfheal_core::schema::{DecodeError, decode_wire};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Validated consumer settings (built from the aggregator's config).
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// The stream.
    pub stream: String,
    /// A batch is handed over when it holds this many records...
    pub batch_max_records: usize,
    /// ... or this many bytes of wire records...
    pub batch_max_bytes: usize,
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
    /// `list_shards`, `get_shard_iterator`, `get_records`, `throttled`, `expired_iterator` or
    /// `checkpoint` (loading one; handler and checkpoint-save errors are
    /// [`crate::pipeline::PipelineMetrics`]').
    pub kind: &'static str,
}

/// The sources' counters (`selfheal_aggregator_consume_*`), shared by both sources. Records are
/// counted once however many handlers read them: by the HTTP endpoint as it logs them, by the
/// first handler's Kinesis readers as they decode them.
#[derive(Debug, Default)]
pub struct ConsumeMetrics {
    /// Records decoded.
    pub records: Counter,
    /// Records skipped because they did not decode.
    pub malformed: Counter,
    /// Errors, by kind (each retried).
    pub errors: Family<ErrorLabels, Counter>,
    /// Milliseconds the last GetRecords of each shard was behind the tip of the stream.
    pub millis_behind: Family<ShardLabels, Gauge>,
    /// Shards being read now.
    pub shards_reading: Gauge,
    /// Shards read to their end.
    pub shards_finished: Counter,
    /// Records of a newer schema version than this build reads (each stops its shard).
    pub newer_schema: Counter,
    /// Shard readers stopped at a record of a newer schema version.
    pub stalled_shards: Gauge,
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
        r.register(
            "newer_schema_records",
            "Records of a newer schema version than this build reads",
            self.newer_schema.clone(),
        );
        r.register(
            "stalled_shards",
            "Shard readers stopped, uncheckpointed, at a record of a newer schema version",
            self.stalled_shards.clone(),
        );
    }

    pub(crate) fn error(&self, kind: &'static str) {
        self.errors.get_or_create(&ErrorLabels { kind }).inc();
    }
}

/// Reads a stream's shards into one handler, with that handler's checkpoints.
#[derive(Debug)]
pub struct Consumer<C, H> {
    inner: Arc<Inner<C, H>>,
}

#[derive(Debug)]
struct Inner<C, H> {
    client: Client,
    settings: ConsumerSettings,
    delivery: Delivery<C, H>,
    metrics: Arc<ConsumeMetrics>,
    /// Whether this consumer's decoded and malformed records are the source's count (the first
    /// handler's consumer; the others decode the same records again).
    counts_records: bool,
    /// Monotonic time of the last successful Kinesis call, for `/healthz`.
    last_progress: watch::Sender<Instant>,
}

/// Resolves when shutdown is requested (or the sender is gone, which means the same).
async fn wait_stop(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

impl<C: CheckpointStore, H: Handler> Consumer<C, H> {
    /// A consumer of `settings.stream` through `client` into `delivery`; `counts_records` for
    /// the one consumer whose records count in [`ConsumeMetrics`].
    pub fn new(
        client: Client,
        settings: ConsumerSettings,
        delivery: Delivery<C, H>,
        metrics: Arc<ConsumeMetrics>,
        counts_records: bool,
    ) -> Self {
        let (last_progress, _) = watch::channel(Instant::now());
        Consumer {
            inner: Arc::new(Inner {
                client,
                settings,
                delivery,
                metrics,
                counts_records,
                last_progress,
            }),
        }
    }

    /// A receiver of the time of the last successful Kinesis call (for health checks).
    pub fn progress(&self) -> watch::Receiver<Instant> {
        self.inner.last_progress.subscribe()
    }

    /// Runs until `shutdown` turns true: then every reader hands over its partial batch, waits
    /// for the handler and the checkpoint, and returns; `run` returns when all have. A reader
    /// that panics makes `run` panic with its payload.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let inner = self.inner;
        let mut running: HashSet<String> = HashSet::new();
        let mut finished: HashSet<String> = HashSet::new();
        let mut tasks: JoinSet<(String, bool)> = JoinSet::new();
        let mut backoff = backoff(inner.settings.retry_initial, inner.settings.retry_max);
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
                    backoff.next_delay()
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
                                reader_failed(e);
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
                            Err(e) => reader_failed(e),
                        }
                    }
                }
            }
        }
    }
}

/// A reader task ended without returning: a panic is re-raised here (its message was printed
/// by the panic hook already); a cancelled task can only mean the runtime is going away.
fn reader_failed(e: tokio::task::JoinError) {
    if e.is_panic() {
        tracing::error!(error = %e, "ShardReaderPanicked");
        std::panic::resume_unwind(e.into_panic());
    }
    tracing::warn!(error = %e, "ShardReaderCancelled");
}

impl<C: CheckpointStore, H: Handler> Inner<C, H> {
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
            match self.delivery.checkpoints().load(id).await {
                Ok(Some(Checkpoint::ShardEnd)) => {
                    finished.insert(id.to_owned());
                }
                Ok(cp) => {
                    loaded.insert(id.to_owned(), cp);
                }
                Err(e) => {
                    self.metrics.error("checkpoint");
                    tracing::warn!(handler = self.delivery.name(), shard = %id, error = %selfheal_runtime::chain::ErrorChain::new(&e), "CheckpointLoadError");
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
        let handler = self.delivery.name();
        // The last record read (where a renewed iterator starts) and the last one checkpointed
        // (where the open batch starts).
        let mut last_read = checkpoint
            .as_ref()
            .and_then(Checkpoint::resume_after)
            .map(str::to_owned);
        let mut after = last_read.clone();
        let mut cut = checkpoint
            .as_ref()
            .and_then(Checkpoint::cut_at)
            .map(str::to_owned);
        tracing::info!(handler, shard, after = ?last_read, replay_through = ?cut, "ShardReaderStarted");
        let mut backoff = backoff(self.settings.retry_initial, self.settings.retry_max);
        let mut iterator: Option<String> = None;
        let mut batch = OpenBatch::default();
        let behind_labels = ShardLabels {
            shard: shard.to_owned(),
        };
        loop {
            if *stop.borrow() {
                self.flush(&mut batch, &mut after, &mut stop).await;
                tracing::info!(handler, shard, "ShardReaderStopped");
                return false;
            }
            if batch
                .started
                .is_some_and(|t| t.elapsed() >= self.settings.flush_interval)
                && !self.flush(&mut batch, &mut after, &mut stop).await
            {
                return false;
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
                        sleep_or_stop(backoff.next_delay(), &stop).await;
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
                    sleep_or_stop(backoff.next_delay(), &stop).await;
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
                let decoded = decode_wire(r.data().as_ref());
                if let Err(DecodeError::UnsupportedVersion { found, supported }) = &decoded
                    && *found > *supported
                {
                    // Hand over what came before it, then stop here until shutdown.
                    if !self.flush(&mut batch, &mut after, &mut stop).await {
                        return false;
                    }
                    self.metrics.newer_schema.inc();
                    self.metrics.stalled_shards.inc();
                    tracing::error!(
                        handler,
                        shard,
                        sequence = %seq,
                        found,
                        supported,
                        checkpoint = ?after,
                        "ShardStoppedAtNewerSchema"
                    );
                    wait_stop(&mut stop).await;
                    self.metrics.stalled_shards.dec();
                    return false;
                }
                batch.add(shard, &seq, r.data().as_ref().len());
                match decoded {
                    Ok(envelope) => {
                        if self.counts_records {
                            self.metrics.records.inc();
                        }
                        batch.push(ConsumedRecord {
                            sequence: seq.clone(),
                            partition_key: r.partition_key().to_owned(),
                            envelope,
                        });
                    }
                    Err(e) => {
                        if self.counts_records {
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
                }
                last_read = Some(seq.clone());
                let replayed = cut.as_deref().is_some_and(|c| seq_at_or_after(&seq, c));
                if replayed {
                    cut = None;
                }
                let full = batch.records() >= self.settings.batch_max_records
                    || batch.bytes >= self.settings.batch_max_bytes;
                if (replayed || full) && !self.flush(&mut batch, &mut after, &mut stop).await {
                    // Stopped before the batch was durable: the rest of this page is read again
                    // next time, after the checkpoint.
                    return false;
                }
            }
            match out.next_shard_iterator {
                Some(next) => iterator = Some(next),
                None => {
                    if !self.flush(&mut batch, &mut after, &mut stop).await {
                        // Stopped before the last batch was durable: read it again next time.
                        return false;
                    }
                    let done = self
                        .delivery
                        .save(shard, &Checkpoint::ShardEnd, &mut stop)
                        .await;
                    if done {
                        self.metrics.shards_finished.inc();
                        tracing::info!(handler, shard, "ShardFinished");
                    }
                    return done;
                }
            }
            let full = i32::try_from(n).unwrap_or(i32::MAX) >= self.settings.get_records_limit;
            if !full {
                sleep_or_stop(self.settings.poll_interval, &stop).await;
            }
        }
    }

    /// Delivers the open batch, if any. True when there was none or it is checkpointed (then
    /// `after` is its last record and the batch is empty again); false when shutdown came first.
    async fn flush(
        &self,
        batch: &mut OpenBatch,
        after: &mut Option<String>,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let Some(b) = batch.batch.as_ref() else {
            return true;
        };
        if !self.delivery.deliver(b, after.as_deref(), stop).await {
            return false;
        }
        *after = Some(b.last_seq.clone());
        *batch = OpenBatch::default();
        true
    }
}

/// The batch a shard reader is filling.
#[derive(Debug, Default)]
struct OpenBatch {
    batch: Option<Batch>,
    /// When its first record was read.
    started: Option<Instant>,
    /// Wire bytes read into it.
    bytes: usize,
}

impl OpenBatch {
    /// Counts a record read (decoded or not) into the batch.
    fn add(&mut self, shard: &str, seq: &str, bytes: usize) {
        let b = self.batch.get_or_insert_with(|| Batch {
            shard_id: shard.to_owned(),
            first_seq: seq.to_owned(),
            last_seq: seq.to_owned(),
            records: Vec::new(),
        });
        b.last_seq = seq.to_owned();
        self.started.get_or_insert_with(Instant::now);
        self.bytes += bytes;
    }

    /// Adds a decoded record (after [`OpenBatch::add`]).
    fn push(&mut self, record: ConsumedRecord) {
        if let Some(b) = &mut self.batch {
            b.records.push(record);
        }
    }

    fn records(&self) -> usize {
        self.batch.as_ref().map_or(0, |b| b.records.len())
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
