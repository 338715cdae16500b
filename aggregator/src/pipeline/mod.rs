//! The seam between the sources and the handlers: what a source hands over ([`Batch`]), what a
//! handler is ([`Handler`]), how a handler fails ([`HandlerError`] and its [`RetryClass`]), and
//! [`Delivery`], which every source uses to hand a batch to one handler and checkpoint it.
//!
//! Each handler reads the source on its own: its own reader (one per shard for Kinesis, one on
//! the HTTP ingest log), its own [`checkpoint`]s in a namespace named after it, its own retries.
//! So a lake outage never delays incidents and a failing incident store never stalls the lake;
//! the cost is that each handler decodes each record once (one more GetRecords per shard and
//! poll interval on Kinesis, well inside the five a second a shard allows).
//!
//! Delivery is at least once, and a replay is the same batch: before a batch is handed over its
//! range is saved as a *pending* checkpoint (`after A pending B`), so a reader restarted after a
//! crash cuts its first batch at exactly `B` again and a handler that names its effects after
//! the range (the lake names objects `<shard>-<first>-<last>`) overwrites what the crashed
//! attempt left instead of adding copies.
//!
//! A retryable error keeps the batch and retries it with jittered, capped backoff without
//! advancing that handler's checkpoint (the shard waits for that handler only). A poison error
//! (the batch itself can never be handled) sets the batch aside in the [`dead_letter`] directory,
//! counts it, and moves the checkpoint past it, so one bad batch never stalls its shard.

pub mod checkpoint;
pub mod dead_letter;
pub(crate) mod deliver;

pub use checkpoint::{Checkpoint, CheckpointError, CheckpointStore, FileCheckpoints};
pub use deliver::{Delivery, HandlerErrorLabels, HandlerLabels, PipelineMetrics};

use selfheal_core::schema::Envelope;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// One decoded record of a batch.
#[derive(Debug, Clone)]
pub struct ConsumedRecord {
    /// Its position in the source: a Kinesis sequence number, or the offset just past the record
    /// in the HTTP ingest log (20 digits).
    pub sequence: String,
    /// The partition key it was put with (the workload identity).
    pub partition_key: String,
    /// The decoded envelope.
    pub envelope: Envelope,
}

/// A run of consecutive records of one shard (or of the HTTP ingest log, shard `http`), handed
/// to a [`Handler`].
#[derive(Debug, Clone)]
pub struct Batch {
    /// The shard (`http` for the ingest log).
    pub shard_id: String,
    /// Position of the first record read into the batch (decoded or not).
    pub first_seq: String,
    /// Position of the last record read into the batch (decoded or not): the checkpoint once
    /// the handler succeeds.
    pub last_seq: String,
    /// The records that decoded, in shard order.
    pub records: Vec<ConsumedRecord>,
}

/// What a source should do with a batch its handler failed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryClass {
    /// The failure is outside the batch (a store down, a timeout): retry the same batch later.
    Retryable,
    /// The batch itself can never be handled (it violates an invariant of the handler): set it
    /// aside as a dead letter and move on.
    Poison,
}

impl std::fmt::Display for RetryClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RetryClass::Retryable => "retryable",
            RetryClass::Poison => "poison",
        })
    }
}

/// A handler's failure, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("batch handler failed ({class})")]
pub struct HandlerError {
    class: RetryClass,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl HandlerError {
    /// A failure worth retrying: the batch is kept and handed over again after a backoff.
    pub fn retryable(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        HandlerError {
            class: RetryClass::Retryable,
            source: source.into(),
        }
    }

    /// A failure the batch will always cause: it is set aside, counted, and the shard moves on.
    pub fn poison(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        HandlerError {
            class: RetryClass::Poison,
            source: source.into(),
        }
    }

    /// Retry or set aside.
    pub fn class(&self) -> RetryClass {
        self.class
    }
}

/// What a source feeds: called once per batch, from one task per shard and handler (so
/// concurrently across shards, in order within one). Return only once the batch's effects are
/// durable: the handler's checkpoint advances right after.
pub trait Handler: Send + Sync + 'static {
    /// A short name (`[a-z0-9_-]+`, e.g. `lake`): it names the handler's checkpoint namespace,
    /// its dead-letter directory and its metrics' `handler` label, so it must not change.
    fn name(&self) -> &'static str;

    /// Handles one batch.
    fn handle(&self, batch: &Batch) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// A boxed future of a handled batch.
pub type HandleFuture<'a> = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send + 'a>>;

/// [`Handler`] in a form that can be held as `dyn` ([`SharedHandler`]), so one source can feed
/// handlers of different types. Every [`Handler`] is one.
pub trait DynHandler: Send + Sync + 'static {
    /// [`Handler::name`].
    fn dyn_name(&self) -> &'static str;
    /// [`Handler::handle`], boxed.
    fn dyn_handle<'a>(&'a self, batch: &'a Batch) -> HandleFuture<'a>;
}

impl<H: Handler> DynHandler for H {
    fn dyn_name(&self) -> &'static str {
        self.name()
    }

    fn dyn_handle<'a>(&'a self, batch: &'a Batch) -> HandleFuture<'a> {
        Box::pin(self.handle(batch))
    }
}

/// A handler shared by the sources that feed it.
pub type SharedHandler = Arc<dyn DynHandler>;

impl Handler for SharedHandler {
    fn name(&self) -> &'static str {
        self.as_ref().dyn_name()
    }

    async fn handle(&self, batch: &Batch) -> Result<(), HandlerError> {
        self.as_ref().dyn_handle(batch).await
    }
}

/// Whether `name` can name a handler's checkpoints and dead letters.
pub fn valid_handler_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Sequence numbers in order: decimal digit strings compare by length, then lexically
/// (Kinesis sequence numbers are up to 128-bit decimals; log offsets are zero-padded).
pub fn seq_at_or_after(seq: &str, bound: &str) -> bool {
    let (a, b) = (seq.trim_start_matches('0'), bound.trim_start_matches('0'));
    (a.len(), a) >= (b.len(), b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_order_is_numeric() {
        assert!(seq_at_or_after("10", "9"));
        assert!(!seq_at_or_after("9", "10"));
        assert!(seq_at_or_after("00000000000000000042", "42"));
        assert!(!seq_at_or_after("00000000000000000041", "42"));
    }

    #[test]
    fn handler_names() {
        assert!(valid_handler_name("lake"));
        assert!(valid_handler_name("incidents-v2"));
        assert!(!valid_handler_name("../x"));
        assert!(!valid_handler_name(""));
        assert!(!valid_handler_name("Lake"));
    }
}
