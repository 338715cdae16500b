//! HTTP ingest: the source that replaces the Kinesis [`crate::consume`]r where there is no AWS
//! (`selfheal up`, on-premise). Agents with `forward.sink = "http"` POST batches of wire records
//! (framed by [`selfheal_core::batch`]) to `POST /v1/ingest` on the aggregator's HTTP server;
//! each request becomes one [`Batch`] for the same [`BatchHandler`] the Kinesis consumer feeds
//! (the lake writer), so both sources write the same objects the same way.
//!
//! The answer is the agent's acknowledgement, so it is sent only once the handler returned,
//! i.e. once the records are durable: 200 then; 503 when the handler failed (the agent keeps the
//! batch in its spool and retries); 400 for a body whose framing is broken and 413 for one over
//! `max_body_bytes`, which the agent does not retry. A record that frames but does not decode is
//! counted in the consumer's malformed counter and skipped, as on the stream.
//!
//! The `Content-Type` is not checked: the framing and each record's magic-and-version header
//! already tell a batch from anything else, and a client that forgets the header loses nothing.
//!
//! A retried request must not duplicate: the batch is named after the first and last record ids
//! in it and their count (`http-<first>-<last>-<n>`), so the lake writer overwrites the objects
//! of an earlier attempt, and de-duplicates rows by id within the write.

use crate::consume::{Batch, BatchHandler, ConsumeMetrics, ConsumedRecord};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::post;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use selfheal_core::batch::decode_batch;
use selfheal_core::schema::decode_wire;
use std::sync::Arc;

/// The default path of the ingest endpoint; the agent's `forward.http.url` ends with it.
pub const DEFAULT_PATH: &str = "/v1/ingest";

/// Validated ingest settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestSettings {
    /// Path of the endpoint on the aggregator's HTTP server.
    pub path: String,
    /// Largest body accepted; larger ones are answered 413.
    pub max_body_bytes: usize,
}

/// Labels of `selfheal_aggregator_ingest_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// The HTTP status answered.
    pub status: u16,
}

/// Ingest counters (`selfheal_aggregator_ingest_*`); decoded and malformed records are counted
/// in [`ConsumeMetrics`], shared with the Kinesis source.
#[derive(Debug, Default)]
pub struct IngestMetrics {
    /// Requests, by the status answered.
    pub requests: Family<StatusLabels, Counter>,
    /// Body bytes received in requests that framed.
    pub bytes: Counter,
}

impl IngestMetrics {
    /// Registers every metric under `registry` (prefix `ingest`).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("ingest");
        r.register(
            "requests",
            "Ingest requests, by status answered",
            self.requests.clone(),
        );
        r.register_with_unit(
            "received",
            "Body bytes of ingest requests that framed",
            prometheus_client::registry::Unit::Bytes,
            self.bytes.clone(),
        );
    }
}

struct Ingest<H> {
    handler: H,
    consume: Arc<ConsumeMetrics>,
    metrics: Arc<IngestMetrics>,
}

/// The ingest route, to merge into the aggregator's HTTP server.
pub fn router<H: BatchHandler>(
    settings: &IngestSettings,
    handler: H,
    consume: Arc<ConsumeMetrics>,
    metrics: Arc<IngestMetrics>,
) -> Router {
    let state = Arc::new(Ingest {
        handler,
        consume,
        metrics,
    });
    Router::new()
        .route(&settings.path, post(ingest::<H>))
        .layer(DefaultBodyLimit::max(settings.max_body_bytes))
        .with_state(state)
}

async fn ingest<H: BatchHandler>(
    State(s): State<Arc<Ingest<H>>>,
    body: Result<Bytes, BytesRejection>,
) -> (StatusCode, String) {
    let (status, text) = match body {
        Ok(body) => s.accept(&body).await,
        // Over the limit (413) or a body that could not be read (400).
        Err(rejection) => {
            tracing::warn!(status = %rejection.status(), error = %rejection.body_text(), "IngestBodyRejected");
            (rejection.status(), rejection.body_text())
        }
    };
    s.metrics
        .requests
        .get_or_create(&StatusLabels {
            status: status.as_u16(),
        })
        .inc();
    (status, text)
}

impl<H: BatchHandler> Ingest<H> {
    async fn accept(&self, body: &[u8]) -> (StatusCode, String) {
        let wire = match decode_batch(body) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(bytes = body.len(), error = %e, "IngestBatchMalformed");
                return (StatusCode::BAD_REQUEST, format!("{e}\n"));
            }
        };
        self.metrics.bytes.inc_by(body.len() as u64);
        let mut records = Vec::with_capacity(wire.len());
        for (i, data) in wire.iter().enumerate() {
            match decode_wire(data) {
                Ok(envelope) => {
                    self.consume.records.inc();
                    let rec = envelope.record();
                    records.push(ConsumedRecord {
                        sequence: format!("{:032x}", rec.id.as_u128()),
                        partition_key: rec.subject.workload_key(&rec.node),
                        envelope,
                    });
                }
                Err(e) => {
                    self.consume.malformed.inc();
                    tracing::warn!(
                        index = i,
                        bytes = data.len(),
                        error = %e,
                        "MalformedRecordSkipped"
                    );
                }
            }
        }
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            // Empty, or only malformed records: nothing to write, and nothing worth resending.
            return (StatusCode::OK, "0 records written\n".into());
        };
        // The "shard" and "sequence range" of an HTTP batch, which name its lake objects.
        let batch = Batch {
            shard_id: "http".into(),
            first_seq: first.sequence.clone(),
            last_seq: format!("{}-{}", last.sequence, records.len()),
            records,
        };
        match self.handler.handle(&batch).await {
            Ok(()) => {
                self.consume.batches.inc();
                (
                    StatusCode::OK,
                    format!("{} records written\n", batch.records.len()),
                )
            }
            Err(e) => {
                self.consume
                    .errors
                    .get_or_create(&crate::consume::ErrorLabels { kind: "handler" })
                    .inc();
                tracing::warn!(first = %batch.first_seq, last = %batch.last_seq, records = batch.records.len(), error = %e, "BatchHandlerError");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the batch could not be written; retry\n".into(),
                )
            }
        }
    }
}
