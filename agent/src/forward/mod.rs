//! Forwarding: the stage after the [`crate::forward::spool`]. A [`Forwarder`] task takes batches from the
//! spool, hands them to a [`Sink`] ([`kinesis::KinesisSink`] in production, [`http::HttpSink`]
//! for `selfheal up`), resends only the records the sink refused with jittered exponential
//! backoff, and acknowledges a batch in the spool only once every record in it was accepted.
//! Delivery is therefore at-least-once; consumers de-duplicate by `Record.id`.
//!
//! Throttling slows the sender down (the batch waits, the spool absorbs the backlog) instead of
//! dropping. On shutdown the forwarder keeps draining until the spool is empty or the grace
//! period ends; whatever is left is replayed by the next start.

pub mod http;
pub mod kinesis;
pub mod spool;
pub mod stage;

use crate::forward::spool::{Spool, SpooledBatch, SpooledRecord};
use selfheal_runtime::backoff::{Backoff, Jitter};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Boxed cause of a sink error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Kinesis PutRecords limits, which every sink honours so records stay portable between them.
pub mod limits {
    /// Most records in one PutRecords call.
    pub const MAX_BATCH_RECORDS: usize = 500;
    /// Most bytes (data plus partition keys) in one PutRecords call.
    pub const MAX_BATCH_BYTES: usize = 5 * 1024 * 1024;
}

/// What became of one record of a batch sent to a sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    /// Accepted for good.
    Accepted,
    /// Refused.
    Failed {
        /// Worth sending again (throttling, a transient fault).
        retryable: bool,
        /// The sink's error code, for logs.
        code: String,
    },
}

/// Why a whole call to a sink failed; nothing in it was accepted.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The service asked us to slow down: back off, then send again.
    #[error("sink throttled the call: {0}")]
    Throttled(#[source] BoxError),
    /// A fault that may pass (network, timeout, server error, missing stream or permission that
    /// an operator can fix): back off, then send again. Records wait in the spool meanwhile.
    #[error("sink call failed (retryable): {0}")]
    Transient(#[source] BoxError),
    /// The service refused the content itself: sending it again cannot succeed.
    #[error("sink refused the batch: {0}")]
    Rejected(#[source] BoxError),
}

impl SinkError {
    /// Whether sending the same records again may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, SinkError::Rejected(_))
    }
}

/// Somewhere wire records go. Implementations report per record, in order, what happened.
pub trait Sink: Send + Sync + 'static {
    /// Sends `records` in one call. On `Ok`, the vector has one outcome per record, in order.
    fn send(
        &self,
        records: &[&SpooledRecord],
    ) -> impl Future<Output = Result<Vec<RecordOutcome>, SinkError>> + Send;

    /// Short name for logs ("kinesis", "http").
    fn name(&self) -> &'static str;
}

/// Where the agent forwards what the sampler selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    /// A Kinesis stream (`forward.kinesis`), through the spool.
    Kinesis,
    /// The aggregator's ingest endpoint (`forward.http`), through the spool.
    Http,
    /// One JSON envelope per line on stdout, no spool (debugging, piping).
    Stdout,
    /// Nothing is forwarded; the agent only exposes `/metrics`.
    #[default]
    None,
}

impl SinkKind {
    /// Whether records go through the on-disk spool and a [`Forwarder`].
    pub fn is_spooled(self) -> bool {
        matches!(self, SinkKind::Kinesis | SinkKind::Http)
    }
}

/// Forwarding settings as written by the user (`forward` section): the sink, its settings, and
/// batching and retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardConfig {
    /// `kinesis`, `http`, `stdout` or `none`.
    pub sink: SinkKind,
    /// The Kinesis sink, with `sink = "kinesis"`.
    pub kinesis: kinesis::KinesisConfig,
    /// The HTTP sink, with `sink = "http"`.
    pub http: http::HttpConfig,
    /// How long to wait for more records before sending a batch that is not full, milliseconds.
    pub linger_ms: u64,
    /// Most records per call (at most 500, the PutRecords limit).
    pub max_batch_records: usize,
    /// Most bytes (data plus partition keys) per call (at most 5 MiB, the PutRecords limit).
    pub max_batch_bytes: usize,
    /// First retry delay, milliseconds; doubles on each failed attempt (full jitter).
    pub retry_initial_ms: u64,
    /// Cap on the retry delay, milliseconds.
    pub retry_max_ms: u64,
    /// Most milliseconds one call may take before it counts as failed and is retried.
    pub request_timeout_ms: u64,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            sink: SinkKind::None,
            kinesis: kinesis::KinesisConfig::default(),
            http: http::HttpConfig::default(),
            linger_ms: 200,
            max_batch_records: limits::MAX_BATCH_RECORDS,
            max_batch_bytes: limits::MAX_BATCH_BYTES,
            retry_initial_ms: 100,
            retry_max_ms: 10_000,
            request_timeout_ms: 10_000,
        }
    }
}

/// A forwarding configuration that cannot be used: the runtime's field error (the agent's `ConfigError` adds
/// "invalid agent configuration").
pub type ForwardConfigError = selfheal_runtime::config::FieldError;

/// Validated [`ForwardConfig`].
#[derive(Debug, Clone)]
pub struct ForwardSettings {
    /// Linger before a partial batch.
    pub linger: Duration,
    /// Records per call.
    pub max_batch_records: usize,
    /// Bytes per call.
    pub max_batch_bytes: usize,
    /// First retry delay.
    pub retry_initial: Duration,
    /// Retry delay cap.
    pub retry_max: Duration,
    /// Per-call timeout.
    pub request_timeout: Duration,
}

impl ForwardConfig {
    /// Checks the fields.
    pub fn validate(&self) -> Result<ForwardSettings, ForwardConfigError> {
        let bad = |field, reason: String| Err(ForwardConfigError { field, reason });
        if !(1..=limits::MAX_BATCH_RECORDS).contains(&self.max_batch_records) {
            return bad(
                "forward.max_batch_records",
                format!("must be in 1..=500, got {}", self.max_batch_records),
            );
        }
        if !(1..=limits::MAX_BATCH_BYTES).contains(&self.max_batch_bytes) {
            return bad(
                "forward.max_batch_bytes",
                format!("must be in 1..=5242880, got {}", self.max_batch_bytes),
            );
        }
        if self.retry_initial_ms == 0 || self.retry_max_ms < self.retry_initial_ms {
            return bad(
                "forward.retry_max_ms",
                format!(
                    "need 0 < retry_initial_ms ({}) <= retry_max_ms ({})",
                    self.retry_initial_ms, self.retry_max_ms
                ),
            );
        }
        if self.request_timeout_ms == 0 {
            return bad("forward.request_timeout_ms", "must be positive".into());
        }
        match self.sink {
            SinkKind::Kinesis if self.kinesis.stream_name.is_empty() => {
                return bad(
                    "forward.kinesis.stream_name",
                    "must be set with sink = \"kinesis\"".into(),
                );
            }
            SinkKind::Http => {
                http::HttpSink::from_config(&self.http)?;
            }
            _ => {}
        }
        Ok(ForwardSettings {
            linger: Duration::from_millis(self.linger_ms),
            max_batch_records: self.max_batch_records,
            max_batch_bytes: self.max_batch_bytes,
            retry_initial: Duration::from_millis(self.retry_initial_ms),
            retry_max: Duration::from_millis(self.retry_max_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
        })
    }
}

/// Forwarder counters, shared with telemetry (plain atomics). Spool depth and drops are in
/// [`crate::forward::spool::SpoolStats`].
#[derive(Debug, Default)]
pub struct ForwardStats {
    /// Records the sink accepted.
    pub records_sent: AtomicU64,
    /// Record refusals by the sink (each retry that fails again counts again).
    pub records_failed: AtomicU64,
    /// Records sent again after a refusal or a failed call.
    pub records_retried: AtomicU64,
    /// Records refused for good and dropped (also counted in the spool's drops).
    pub records_rejected: AtomicU64,
    /// Bytes (data plus partition keys) of accepted records.
    pub bytes_sent: AtomicU64,
    /// Calls made to the sink.
    pub calls: AtomicU64,
    /// Calls that failed as a whole.
    pub call_errors: AtomicU64,
    /// Calls or records refused for throttling.
    pub throttled: AtomicU64,
    /// Batches acknowledged in the spool.
    pub batches_acked: AtomicU64,
}

/// The forwarder's metrics (`selfheal_agent_forward_*`), read at scrape time from its atomics.
#[derive(Debug)]
pub struct ForwardMetrics(pub Arc<ForwardStats>);

impl prometheus_client::collector::Collector for ForwardMetrics {
    fn encode(
        &self,
        mut enc: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let f = &self.0;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let counters = [
            (
                "forward_sent_records",
                "Records the sink accepted",
                load(&f.records_sent),
            ),
            (
                "forward_sent_bytes",
                "Wire bytes (data plus partition keys) the sink accepted",
                load(&f.bytes_sent),
            ),
            (
                "forward_retried_records",
                "Records sent again after a refusal or failed call",
                load(&f.records_retried),
            ),
            (
                "forward_failed_records",
                "Record refusals by the sink (each failed retry counts)",
                load(&f.records_failed),
            ),
            (
                "forward_rejected_records",
                "Records the sink refused for good (moved to the spool's quarantine)",
                load(&f.records_rejected),
            ),
            ("forward_calls", "Calls made to the sink", load(&f.calls)),
            (
                "forward_call_errors",
                "Sink calls that failed as a whole",
                load(&f.call_errors),
            ),
            (
                "forward_throttled",
                "Calls or records refused for throttling",
                load(&f.throttled),
            ),
        ];
        for (name, help, v) in counters {
            crate::telemetry::counter(&mut enc, name, help, v)?;
        }
        Ok(())
    }
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Error codes that mean "slow down".
fn is_throttle_code(code: &str) -> bool {
    code.contains("Throughput") || code.contains("Throttl") || code.contains("LimitExceeded")
}

/// The forwarding task. Build it with [`Forwarder::new`], read [`Forwarder::stats`], then
/// `tokio::spawn(forwarder.run(shutdown, grace))`.
#[derive(Debug)]
pub struct Forwarder<S> {
    spool: Arc<Spool>,
    sink: S,
    settings: ForwardSettings,
    stats: Arc<ForwardStats>,
}

impl<S: Sink> Forwarder<S> {
    /// A forwarder from `spool` to `sink`.
    pub fn new(spool: Arc<Spool>, sink: S, settings: ForwardSettings) -> Self {
        Forwarder {
            spool,
            sink,
            settings,
            stats: Arc::new(ForwardStats::default()),
        }
    }

    /// The live counters.
    pub fn stats(&self) -> Arc<ForwardStats> {
        Arc::clone(&self.stats)
    }

    /// Forwards until `shutdown` turns true (or its sender is dropped), then keeps draining for
    /// at most `grace`. Records not acknowledged by then stay in the spool for the next start.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>, grace: Duration) {
        let mut deadline: Option<Instant> = None;
        tracing::info!(sink = self.sink.name(), "ForwarderStarted");
        loop {
            if deadline.is_none() && *shutdown.borrow() {
                deadline = Some(Instant::now() + grace);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            let mut batch = self.read();
            if batch.is_empty() {
                if deadline.is_some() {
                    break; // drained
                }
                tokio::select! {
                    _ = self.spool.appended() => {}
                    r = shutdown.changed() => if r.is_err() { deadline = Some(Instant::now() + grace) },
                }
                continue;
            }
            if batch.len() < self.settings.max_batch_records
                && !self.settings.linger.is_zero()
                && deadline.is_none()
            {
                tokio::select! {
                    _ = tokio::time::sleep(self.settings.linger) => {}
                    r = shutdown.changed() => if r.is_err() { deadline = Some(Instant::now() + grace) },
                }
                let more = self.spool.read_batch(
                    self.settings.max_batch_records - batch.len(),
                    self.settings.max_batch_bytes.saturating_sub(batch.bytes()),
                );
                batch.merge(more);
            }
            if !self
                .deliver(&batch, &mut shutdown, &mut deadline, grace)
                .await
            {
                break;
            }
            self.spool.ack(&batch);
            add(&self.stats.batches_acked, 1);
        }
        self.spool.sync();
        tracing::info!(
            unacknowledged = self.spool.depth(),
            sent = self.stats.records_sent.load(Ordering::Relaxed),
            "ForwarderStopped"
        );
    }

    fn read(&self) -> SpooledBatch {
        self.spool.read_batch(
            self.settings.max_batch_records,
            self.settings.max_batch_bytes,
        )
    }

    /// Sends `batch` until every record is accepted or refused for good. Returns false when the
    /// shutdown deadline passed first (the batch is then left unacknowledged).
    async fn deliver(
        &self,
        batch: &SpooledBatch,
        shutdown: &mut watch::Receiver<bool>,
        deadline: &mut Option<Instant>,
        grace: Duration,
    ) -> bool {
        let mut pending: Vec<&SpooledRecord> = batch.records.iter().collect();
        let mut attempt: u32 = 0;
        loop {
            add(&self.stats.calls, 1);
            let call =
                tokio::time::timeout(self.settings.request_timeout, self.sink.send(&pending));
            let result = match *deadline {
                Some(d) => match tokio::time::timeout_at(d, call).await {
                    Ok(r) => r,
                    Err(_) => return false,
                },
                None => call.await,
            };
            let result = result.unwrap_or_else(|_| {
                Err(SinkError::Transient(
                    format!("no answer within {:?}", self.settings.request_timeout).into(),
                ))
            });
            match result {
                Ok(outcomes) => {
                    let mut again = Vec::new();
                    let mut throttled = 0;
                    for (i, rec) in pending.iter().enumerate() {
                        match outcomes.get(i) {
                            Some(RecordOutcome::Accepted) => {
                                add(&self.stats.records_sent, 1);
                                add(
                                    &self.stats.bytes_sent,
                                    (rec.data.len() + rec.partition_key.len()) as u64,
                                );
                            }
                            Some(RecordOutcome::Failed {
                                retryable: false,
                                code,
                            }) => {
                                add(&self.stats.records_rejected, 1);
                                tracing::warn!(
                                    sink = self.sink.name(),
                                    code,
                                    key = rec.partition_key,
                                    "ForwardRecordRejected"
                                );
                                self.spool.quarantine(&[*rec], code);
                            }
                            Some(RecordOutcome::Failed { code, .. }) => {
                                add(&self.stats.records_failed, 1);
                                if is_throttle_code(code) {
                                    throttled += 1;
                                }
                                again.push(*rec);
                            }
                            // A sink that answered for fewer records than it was sent: resend
                            // the rest rather than assume they arrived.
                            None => again.push(*rec),
                        }
                    }
                    if again.is_empty() {
                        return true;
                    }
                    add(&self.stats.throttled, throttled);
                    add(&self.stats.records_retried, again.len() as u64);
                    tracing::debug!(
                        sink = self.sink.name(),
                        failed = again.len(),
                        throttled,
                        attempt,
                        "ForwardPartialFailure"
                    );
                    pending = again;
                }
                Err(e) => {
                    add(&self.stats.call_errors, 1);
                    if matches!(e, SinkError::Throttled(_)) {
                        add(&self.stats.throttled, 1);
                    }
                    if !e.is_retryable() {
                        // Refused for good: set aside in the quarantine, never deleted.
                        let n = pending.len() as u64;
                        add(&self.stats.records_rejected, n);
                        tracing::error!(sink = self.sink.name(), records = n, error = %e, "ForwardBatchRejected");
                        self.spool.quarantine(&pending, &e.to_string());
                        return true;
                    }
                    add(&self.stats.records_retried, pending.len() as u64);
                    tracing::warn!(sink = self.sink.name(), attempt, error = %e, "ForwardCallError");
                }
            }
            attempt = attempt.saturating_add(1);
            let delay = backoff(&self.settings, attempt);
            let wake = Instant::now() + delay;
            let wake = deadline.map_or(wake, |d| wake.min(d));
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(wake) => break,
                    r = shutdown.changed(), if deadline.is_none() => {
                        if r.is_err() || *shutdown.borrow() {
                            *deadline = Some(Instant::now() + grace);
                        }
                    }
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
        }
    }
}

/// Exponential backoff with "equal jitter" (the runtime's [`Backoff`]): uniform in `[d/2, d]`
/// for `d = min(max, initial · 2^attempt)`, so agents throttled together do not retry in
/// lockstep yet each still waits at least half the step (a throttled stream gets real relief).
fn backoff(s: &ForwardSettings, attempt: u32) -> Duration {
    Backoff::new(s.retry_initial, s.retry_max)
        .with_jitter(Jitter::Equal)
        .delay_for(attempt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let s = ForwardConfig::default()
            .validate()
            .expect("defaults are valid");
        for attempt in 0..40 {
            let d = backoff(&s, attempt);
            assert!(d <= s.retry_max, "attempt {attempt}: {d:?}");
        }
        assert!(backoff(&s, 1) <= Duration::from_millis(200));
        assert!(backoff(&s, 30) >= s.retry_max / 2);
    }

    #[test]
    fn limits_above_putrecords_are_refused() {
        let c = ForwardConfig {
            max_batch_records: 501,
            ..ForwardConfig::default()
        };
        let e = c.validate().expect_err("over 500").to_string();
        assert!(e.contains("forward.max_batch_records"), "{e}");
    }
}
