//! [`Delivery`]: hands one batch to one handler and checkpoints it: pending range first, then
//! the handler (retried while retryable, set aside when poison), then the checkpoint past it.
//! Every source's reader uses it, so the retry and poison rules are the same on every path.

use super::dead_letter::DeadLetters;
use super::{Batch, Checkpoint, CheckpointStore, Handler, RetryClass};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use selfheal_runtime::backoff::{Backoff, Jitter};
use selfheal_runtime::chain::ErrorChain;
use selfheal_runtime::shutdown::Shutdown;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Labels of per-handler metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandlerLabels {
    /// [`Handler::name`].
    pub handler: String,
}

/// Labels of `selfheal_aggregator_pipeline_errors_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandlerErrorLabels {
    /// [`Handler::name`].
    pub handler: String,
    /// `retryable`, `poison`, `checkpoint` or `dead_letter`.
    pub kind: &'static str,
}

/// Per-handler counters (`selfheal_aggregator_pipeline_*`).
#[derive(Debug, Default)]
pub struct PipelineMetrics {
    /// Batches handled (or set aside) and checkpointed.
    pub batches: Family<HandlerLabels, Counter>,
    /// Records in those batches.
    pub records: Family<HandlerLabels, Counter>,
    /// Errors, by handler and kind.
    pub errors: Family<HandlerErrorLabels, Counter>,
    /// Batches set aside as poison.
    pub dead_letter_batches: Family<HandlerLabels, Counter>,
    /// Records in those batches.
    pub dead_letter_records: Family<HandlerLabels, Counter>,
}

impl PipelineMetrics {
    /// Registers every metric under `registry` (prefix `pipeline`).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("pipeline");
        r.register(
            "batches",
            "Batches handled and checkpointed, by handler",
            self.batches.clone(),
        );
        r.register(
            "records",
            "Records in handled batches, by handler",
            self.records.clone(),
        );
        r.register(
            "errors",
            "Handler, checkpoint and dead-letter errors, by handler and kind",
            self.errors.clone(),
        );
        r.register(
            "dead_letter_batches",
            "Batches a handler refused as poison, set aside",
            self.dead_letter_batches.clone(),
        );
        r.register(
            "dead_letter_records",
            "Records in batches set aside as poison",
            self.dead_letter_records.clone(),
        );
    }

    fn error(&self, handler: &str, kind: &'static str) {
        self.errors
            .get_or_create(&HandlerErrorLabels {
                handler: handler.to_owned(),
                kind,
            })
            .inc();
    }
}

/// The pipeline's retry delays: the runtime's [`Backoff`] with equal jitter, each delay
/// uniform in `[d/2, d]` for `d = min(max, initial · 2^attempt)`, so sources that fail together
/// do not retry in lockstep yet each waits at least half the step.
pub(crate) fn backoff(initial: Duration, max: Duration) -> Backoff {
    Backoff::new(initial, max).with_jitter(Jitter::Equal)
}

/// Sleeps `d`, or less if shutdown is requested; true when it was: the runtime's
/// [`Shutdown::sleep`] over the receiver the sources hold.
pub(crate) async fn sleep_or_stop(d: Duration, stop: &watch::Receiver<bool>) -> bool {
    Shutdown::from(stop.clone()).sleep(d).await
}

/// One handler's side of a source: its handler, checkpoints, dead letters and retry timing.
#[derive(Debug)]
pub struct Delivery<C, H> {
    handler: H,
    checkpoints: C,
    dead_letters: DeadLetters,
    metrics: Arc<PipelineMetrics>,
    retry_initial: Duration,
    retry_max: Duration,
    labels: HandlerLabels,
}

impl<C: CheckpointStore, H: Handler> Delivery<C, H> {
    /// Delivery to `handler`, checkpointing in `checkpoints`, poison into `dead_letters`.
    pub fn new(
        handler: H,
        checkpoints: C,
        dead_letters: DeadLetters,
        metrics: Arc<PipelineMetrics>,
        retry: (Duration, Duration),
    ) -> Self {
        let labels = HandlerLabels {
            handler: handler.name().to_owned(),
        };
        Delivery {
            handler,
            checkpoints,
            dead_letters,
            metrics,
            retry_initial: retry.0,
            retry_max: retry.1,
            labels,
        }
    }

    /// The handler's name.
    pub fn name(&self) -> &'static str {
        self.handler.name()
    }

    /// The handler's checkpoints.
    pub fn checkpoints(&self) -> &C {
        &self.checkpoints
    }

    /// Hands `batch` (which starts after `after`) to the handler and checkpoints it. True once
    /// the batch is handled or set aside and the checkpoint is past it; false when shutdown came
    /// first (the batch is read again on the next start, and cut at the same place).
    pub async fn deliver(
        &self,
        batch: &Batch,
        after: Option<&str>,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let name = self.handler.name();
        if !batch.records.is_empty() {
            let pending = Checkpoint::Pending {
                after: after.map(str::to_owned),
                through: batch.last_seq.clone(),
            };
            if !self.save(&batch.shard_id, &pending, stop).await {
                return false;
            }
            if !self.handle(batch, stop).await {
                return false;
            }
        }
        // Only malformed records: nothing to hand over, but the checkpoint moves past them.
        let done = Checkpoint::After(batch.last_seq.clone());
        if !self.save(&batch.shard_id, &done, stop).await {
            return false;
        }
        self.metrics.batches.get_or_create(&self.labels).inc();
        self.metrics
            .records
            .get_or_create(&self.labels)
            .inc_by(batch.records.len() as u64);
        tracing::debug!(handler = name, shard = %batch.shard_id, last = %batch.last_seq, "BatchCheckpointed");
        true
    }

    /// The handler until it succeeds or refuses the batch as poison (then the dead letter);
    /// false when shutdown came first.
    async fn handle(&self, batch: &Batch, stop: &mut watch::Receiver<bool>) -> bool {
        let name = self.handler.name();
        let mut backoff = backoff(self.retry_initial, self.retry_max);
        loop {
            let error = match self.handler.handle(batch).await {
                Ok(()) => return true,
                Err(e) => e,
            };
            match error.class() {
                RetryClass::Retryable => {
                    self.metrics.error(name, "retryable");
                    tracing::warn!(handler = name, shard = %batch.shard_id, first = %batch.first_seq, last = %batch.last_seq, records = batch.records.len(), error = %ErrorChain::new(&error), "BatchHandlerError");
                    if *stop.borrow() {
                        tracing::warn!(handler = name, shard = %batch.shard_id, "BatchAbandonedAtShutdown");
                        return false;
                    }
                    if sleep_or_stop(backoff.next_delay(), stop).await {
                        // One more try at shutdown: a store that just came back is worth it.
                        continue;
                    }
                }
                RetryClass::Poison => {
                    self.metrics.error(name, "poison");
                    return self.set_aside(batch, &error, stop).await;
                }
            }
        }
    }

    async fn set_aside(
        &self,
        batch: &Batch,
        error: &(dyn std::error::Error + Send + Sync + 'static),
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let name = self.handler.name();
        let mut backoff = backoff(self.retry_initial, self.retry_max);
        loop {
            match self.dead_letters.set_aside(name, batch, error).await {
                Ok(path) => {
                    self.metrics
                        .dead_letter_batches
                        .get_or_create(&self.labels)
                        .inc();
                    self.metrics
                        .dead_letter_records
                        .get_or_create(&self.labels)
                        .inc_by(batch.records.len() as u64);
                    tracing::error!(handler = name, shard = %batch.shard_id, first = %batch.first_seq, last = %batch.last_seq, records = batch.records.len(), dead_letter = %path.display(), error = %ErrorChain::new(error), "PoisonBatchSetAside");
                    return true;
                }
                Err(e) => {
                    self.metrics.error(name, "dead_letter");
                    tracing::warn!(handler = name, dir = %self.dead_letters.dir().display(), error = %ErrorChain::new(&e), "DeadLetterWriteError");
                    if sleep_or_stop(backoff.next_delay(), stop).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Saves a checkpoint, retrying until it sticks; at shutdown, one try. False when it did
    /// not stick.
    pub async fn save(
        &self,
        shard: &str,
        cp: &Checkpoint,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let name = self.handler.name();
        let mut backoff = backoff(self.retry_initial, self.retry_max);
        loop {
            match self.checkpoints.save(shard, cp).await {
                Ok(()) => return true,
                Err(e) => {
                    self.metrics.error(name, "checkpoint");
                    tracing::warn!(handler = name, shard, error = %ErrorChain::new(&e), "CheckpointSaveError");
                    if *stop.borrow() {
                        return false;
                    }
                    sleep_or_stop(backoff.next_delay(), stop).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{ConsumedRecord, FileCheckpoints, HandlerError};
    use selfheal_core::schema::{Envelope, Payload, Record, RecordId, Subject};
    use selfheal_core::{Family, Metric};
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let mut b = backoff(Duration::from_millis(100), Duration::from_millis(350));
        let d: Vec<Duration> = (0..4).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[1] >= Duration::from_millis(100) && d[1] <= Duration::from_millis(200));
        assert!(d[3] >= Duration::from_millis(175) && d[3] <= Duration::from_millis(350));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    /// Refuses batches whose first sequence number is listed, as poison; fails the first
    /// `flaky` calls as retryable; records what it handled.
    struct Picky {
        poison: Vec<&'static str>,
        flaky: Mutex<usize>,
        handled: Mutex<Vec<String>>,
    }

    impl Handler for Arc<Picky> {
        fn name(&self) -> &'static str {
            "picky"
        }

        async fn handle(&self, batch: &Batch) -> Result<(), HandlerError> {
            if self.poison.contains(&batch.first_seq.as_str()) {
                return Err(HandlerError::poison(
                    "a record this handler can never accept",
                ));
            }
            {
                let mut flaky = self
                    .flaky
                    .lock()
                    .map_err(|e| HandlerError::retryable(e.to_string()))?;
                if *flaky > 0 {
                    *flaky -= 1;
                    return Err(HandlerError::retryable("store unavailable"));
                }
            }
            self.handled
                .lock()
                .map_err(|e| HandlerError::retryable(e.to_string()))?
                .push(batch.first_seq.clone());
            Ok(())
        }
    }

    fn batch(first: &str, last: &str) -> Batch {
        let env = Envelope::new(Payload::Sample {
            record: Record {
                id: RecordId::from_u128(7),
                ts_ms: 1_764_000_000_000,
                node: "node-a".into(),
                subject: Subject::Node,
                family: Family::Cpu,
                values: BTreeMap::from([(Metric::CpuUsageCores, 0.5)]),
            },
            inclusion_probability: 1.0,
        });
        Batch {
            shard_id: "shardId-0".into(),
            first_seq: first.into(),
            last_seq: last.into(),
            records: vec![ConsumedRecord {
                sequence: last.into(),
                partition_key: "node/node-a".into(),
                envelope: env,
            }],
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retryable_errors_retry_and_poison_is_set_aside_and_counted() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let picky = Arc::new(Picky {
            poison: vec!["3"],
            flaky: Mutex::new(2),
            handled: Mutex::default(),
        });
        let metrics = Arc::new(PipelineMetrics::default());
        let d = Delivery::new(
            picky.clone(),
            FileCheckpoints::new(tmp.path().join("cp")),
            DeadLetters::new(tmp.path().join("dead")),
            metrics.clone(),
            (Duration::from_millis(10), Duration::from_millis(100)),
        );
        let (_tx, mut stop) = watch::channel(false);
        assert!(d.deliver(&batch("1", "2"), None, &mut stop).await);
        assert!(d.deliver(&batch("3", "4"), Some("2"), &mut stop).await);
        assert!(d.deliver(&batch("5", "6"), Some("4"), &mut stop).await);
        assert_eq!(*picky.handled.lock().expect("lock"), ["1", "5"]);
        assert_eq!(
            d.checkpoints().load("shardId-0").await.expect("load"),
            Some(Checkpoint::After("6".into()))
        );
        let l = HandlerLabels {
            handler: "picky".into(),
        };
        assert_eq!(metrics.dead_letter_batches.get_or_create(&l).get(), 1);
        assert_eq!(metrics.batches.get_or_create(&l).get(), 3);
        let retried = HandlerErrorLabels {
            handler: "picky".into(),
            kind: "retryable",
        };
        assert_eq!(metrics.errors.get_or_create(&retried).get(), 2);
        let records =
            std::fs::read(tmp.path().join("dead/shardId-0-3-4.records")).expect("records");
        match selfheal_runtime::frame::scan_at(&records, 0) {
            selfheal_runtime::frame::Scanned::Frame(f) => {
                assert_eq!(f.key, "node/node-a");
                assert_eq!(
                    selfheal_core::schema::decode_wire(f.wire)
                        .expect("wire")
                        .record()
                        .id,
                    RecordId::from_u128(7)
                );
            }
            other => panic!("not a frame: {other:?}"),
        }
        let reason =
            std::fs::read_to_string(tmp.path().join("dead/shardId-0-3-4.reason")).expect("reason");
        assert!(reason.contains("can never accept"), "{reason}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_retryable_failure_at_shutdown_leaves_the_range_pending() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let picky = Arc::new(Picky {
            poison: vec![],
            flaky: Mutex::new(usize::MAX),
            handled: Mutex::default(),
        });
        let d = Delivery::new(
            picky,
            FileCheckpoints::new(tmp.path().join("cp")),
            DeadLetters::new(tmp.path().join("dead")),
            Arc::default(),
            (Duration::from_millis(10), Duration::from_millis(100)),
        );
        let (tx, mut stop) = watch::channel(false);
        let b = batch("8", "9");
        let run = d.deliver(&b, Some("7"), &mut stop);
        tokio::pin!(run);
        tokio::select! {
            _ = &mut run => panic!("a failing handler finished"),
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        tx.send_replace(true);
        assert!(!run.await);
        assert_eq!(
            d.checkpoints().load("shardId-0").await.expect("load"),
            Some(Checkpoint::Pending {
                after: Some("7".into()),
                through: "9".into()
            })
        );
    }
}
