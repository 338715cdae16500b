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
//! At most `max_concurrent_requests` requests are read and written at once; one over that is
//! answered 429 before its body is read (the agent backs off and retries, as for Kinesis
//! throttling), so memory stays under `max_concurrent_requests × max_body_bytes` and a fleet of
//! agents reconnecting after an outage queues in their spools, not in the aggregator.
//!
//! A retried request must not duplicate: the batch is named after the first and last record ids
//! in it and their count (`http-<first>-<last>-<n>`), so the lake writer overwrites the objects
//! of an earlier attempt, and de-duplicates rows by id within the write.

use crate::consume::{Batch, BatchHandler, ConsumeMetrics, ConsumedRecord};
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use selfheal_core::batch::decode_batch;
use selfheal_core::schema::decode_wire;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// The default path of the ingest endpoint; the agent's `forward.http.url` ends with it.
pub const DEFAULT_PATH: &str = "/v1/ingest";

/// Validated ingest settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestSettings {
    /// Path of the endpoint on the aggregator's HTTP server.
    pub path: String,
    /// Largest body accepted; larger ones are answered 413.
    pub max_body_bytes: usize,
    /// Requests read and written at once; more are answered 429.
    pub max_concurrent_requests: usize,
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
    /// One permit per request in progress.
    permits: Arc<Semaphore>,
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
        permits: Arc::new(Semaphore::new(settings.max_concurrent_requests)),
        consume,
        metrics,
    });
    Router::new()
        .route(&settings.path, post(ingest::<H>))
        .layer(DefaultBodyLimit::max(settings.max_body_bytes))
        .with_state(state)
}

async fn ingest<H: BatchHandler>(State(s): State<Arc<Ingest<H>>>, req: Request) -> Response {
    // The permit is taken before the body is read, so waiting requests hold no body in memory.
    let Ok(_permit) = s.permits.clone().try_acquire_owned() else {
        tracing::debug!("IngestBusy");
        s.count(StatusCode::TOO_MANY_REQUESTS);
        let mut busy = (
            StatusCode::TOO_MANY_REQUESTS,
            "too many ingest requests in progress; retry later\n",
        )
            .into_response();
        busy.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return busy;
    };
    let (status, text) = match Bytes::from_request(req, &()).await {
        Ok(body) => s.accept(&body).await,
        // Over the limit (413) or a body that could not be read (400).
        Err(rejection) => {
            let rejection: BytesRejection = rejection;
            tracing::warn!(status = %rejection.status(), error = %rejection.body_text(), "IngestBodyRejected");
            (rejection.status(), rejection.body_text())
        }
    };
    s.count(status);
    (status, text).into_response()
}

impl<H: BatchHandler> Ingest<H> {
    fn count(&self, status: StatusCode) {
        self.metrics
            .requests
            .get_or_create(&StatusLabels {
                status: status.as_u16(),
            })
            .inc();
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consume::HandlerError;
    use selfheal_core::batch::encode_batch;
    use selfheal_core::schema::{Envelope, Payload, Record, RecordId, Subject, encode_wire};
    use selfheal_core::{Family, Metric};
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::Notify;

    /// A handler that holds every batch until released, remembering the ids it wrote.
    #[derive(Default)]
    struct Held {
        entered: Notify,
        release: Notify,
        written: Mutex<Vec<u128>>,
    }

    impl BatchHandler for Arc<Held> {
        async fn handle(&self, batch: &Batch) -> Result<(), HandlerError> {
            self.entered.notify_one();
            self.release.notified().await;
            let mut w = self
                .written
                .lock()
                .map_err(|e| HandlerError(e.to_string().into()))?;
            w.extend(
                batch
                    .records
                    .iter()
                    .map(|r| r.envelope.record().id.as_u128()),
            );
            Ok(())
        }
    }

    fn body(id: u128) -> Vec<u8> {
        let env = Envelope::new(Payload::Sample {
            record: Record {
                id: RecordId::from_u128(id),
                ts_ms: 1_764_000_000_000,
                node: "node-a".into(),
                subject: Subject::Node,
                family: Family::Cpu,
                values: BTreeMap::from([(Metric::CpuUsageCores, 0.5)]),
            },
            inclusion_probability: 1.0,
        });
        let wire = encode_wire(&env).expect("encode");
        encode_batch([wire.as_slice()]).expect("frame")
    }

    /// POSTs `body` over a fresh connection; the status line and headers of the answer.
    async fn post(addr: std::net::SocketAddr, body: Vec<u8>) -> String {
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let head = format!(
            "POST {DEFAULT_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).await.expect("write head");
        conn.write_all(&body).await.expect("write body");
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.expect("read answer");
        answer
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_over_the_concurrency_cap_is_answered_429_and_its_retry_lands() {
        let held = Arc::new(Held::default());
        let metrics = Arc::new(IngestMetrics::default());
        let settings = IngestSettings {
            path: DEFAULT_PATH.into(),
            max_body_bytes: 1 << 20,
            max_concurrent_requests: 1,
        };
        let app = router(
            &settings,
            held.clone(),
            Arc::new(ConsumeMetrics::default()),
            metrics.clone(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move { axum::serve(listener, app).await });

        let first = tokio::spawn(post(addr, body(1)));
        held.entered.notified().await; // the first request holds the only permit
        let busy = post(addr, body(2)).await;
        assert!(busy.starts_with("HTTP/1.1 429"), "{busy}");
        assert!(
            busy.to_ascii_lowercase().contains("retry-after: 1"),
            "{busy}"
        );

        held.release.notify_one();
        let ok = first.await.expect("first request");
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        let retry = tokio::spawn(post(addr, body(2)));
        held.entered.notified().await;
        held.release.notify_one();
        let ok = retry.await.expect("retried request");
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");

        let written = held.written.lock().expect("lock").clone();
        assert_eq!(written, vec![1, 2]);
        let count = |status: u16| {
            metrics
                .requests
                .get_or_create(&StatusLabels { status })
                .get()
        };
        assert_eq!((count(200), count(429)), (2, 1));
        server.abort();
    }
}
