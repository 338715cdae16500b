//! The HTTP source, for where there is no AWS (`selfheal up`, on-premise). Agents with
//! `forward.sink = "http"` POST batches of wire records (framed by [`selfheal_core::batch`]) to
//! `POST /v1/ingest` on the aggregator's HTTP server; the endpoint appends them to the durable
//! [`log::IngestLog`], and each handler reads that log with its own [`reader::LogReader`] and
//! checkpoints, as it reads a Kinesis shard. So both sources feed the same pipeline, and the lake
//! gets objects of the same useful size on both (one per family per `flush_interval`, not one per
//! request).
//!
//! The answer is the agent's acknowledgement, sent once the records are in the log and the log
//! is fsynced: 200 then (the handlers have not run yet; they will, after a crash too); 503 with
//! `Retry-After` when the log is full (a handler is behind; the agent keeps the batch in its
//! spool and retries, so back-pressure reaches the fleet, not the aggregator's disk) or cannot be
//! written; 400 for a body whose framing is broken and 413 for one over `max_body_bytes`, which
//! the agent does not retry. A record that frames but does not decode is counted in the
//! consumer's malformed counter and skipped, as on the stream; only records that decode are
//! logged.
//!
//! The `Content-Type` is not checked: the framing and each record's magic-and-version header
//! already tell a batch from anything else, and a client that forgets the header loses nothing.
//!
//! At most `max_concurrent_requests` requests are read and logged at once; one over that is
//! answered 429 before its body is read (the agent backs off and retries, as for Kinesis
//! throttling), so memory stays under `max_concurrent_requests × max_body_bytes` and a fleet of
//! agents reconnecting after an outage queues in their spools, not in the aggregator.
//!
//! A retried request must not duplicate: the log drops records whose ids it logged recently
//! (see [`log`]), and the lake handler de-duplicates rows by id within a batch.

pub mod log;
pub mod reader;

use crate::sources::kinesis::ConsumeMetrics;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use log::{IngestLog, LogError, LogRecord};
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
    /// The durable log requests are appended to.
    pub log: log::LogSettings,
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

struct Ingest {
    log: Arc<IngestLog>,
    /// One permit per request in progress.
    permits: Arc<Semaphore>,
    consume: Arc<ConsumeMetrics>,
    metrics: Arc<IngestMetrics>,
}

/// The ingest route, to merge into the aggregator's HTTP server.
pub fn router(
    settings: &IngestSettings,
    log: Arc<IngestLog>,
    consume: Arc<ConsumeMetrics>,
    metrics: Arc<IngestMetrics>,
) -> Router {
    let state = Arc::new(Ingest {
        log,
        permits: Arc::new(Semaphore::new(settings.max_concurrent_requests)),
        consume,
        metrics,
    });
    Router::new()
        .route(&settings.path, post(ingest))
        .layer(DefaultBodyLimit::max(settings.max_body_bytes))
        .with_state(state)
}

async fn ingest(State(s): State<Arc<Ingest>>, req: Request) -> Response {
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
    let mut answer = (status, text).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        answer
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    answer
}

impl Ingest {
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
            let decoded = decode_wire(data)
                .map_err(|e| e.to_string())
                .and_then(|envelope| {
                    let rec = envelope.record();
                    let key = rec.subject.workload_key(&rec.node);
                    // A frame holds at most MAX_RECORD_BYTES of key and record (Kinesis' limit).
                    if key.len() + data.len() > selfheal_runtime::frame::MAX_RECORD_BYTES
                        || key.len() > usize::from(u16::MAX)
                    {
                        return Err(format!(
                            "{} bytes with its key exceed the 1 MiB record limit",
                            data.len()
                        ));
                    }
                    Ok(LogRecord {
                        id: rec.id.as_u128(),
                        key,
                        wire: data.to_vec(),
                    })
                });
            match decoded {
                Ok(r) => {
                    self.consume.records.inc();
                    records.push(r);
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
        if records.is_empty() {
            // Empty, or only malformed records: nothing to log, and nothing worth resending.
            return (StatusCode::OK, "0 records logged\n".into());
        }
        let log = Arc::clone(&self.log);
        let appended = tokio::task::spawn_blocking(move || log.append(&records))
            .await
            .map_err(LogError::Join)
            .and_then(|r| r);
        match appended {
            Ok(a) => (
                StatusCode::OK,
                format!(
                    "{} records logged, {} logged already\n",
                    a.records, a.duplicates
                ),
            ),
            Err(e @ LogError::Full { .. }) => {
                tracing::debug!(error = %e, "IngestLogFull");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{e}; retry later\n"),
                )
            }
            Err(e) => {
                tracing::warn!(dir = %self.log.dir().display(), error = %selfheal_runtime::chain::ErrorChain::new(&e), "IngestLogWriteError");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the batch could not be logged; retry\n".into(),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfheal_core::batch::encode_batch;
    use selfheal_core::schema::{Envelope, Payload, Record, RecordId, Subject, encode_wire};
    use selfheal_core::{Family, Metric};
    use std::collections::BTreeMap;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

    /// Sends the head of a POST of `body`; the connection, to send the body on.
    async fn post_head(addr: std::net::SocketAddr, body: &[u8]) -> tokio::net::TcpStream {
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let head = format!(
            "POST {DEFAULT_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        conn.write_all(head.as_bytes()).await.expect("write head");
        conn
    }

    /// Sends `body` on `conn`; the status line and headers of the answer.
    async fn finish(mut conn: tokio::net::TcpStream, body: Vec<u8>) -> String {
        conn.write_all(&body).await.expect("write body");
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.expect("read answer");
        answer
    }

    async fn post(addr: std::net::SocketAddr, body: Vec<u8>) -> String {
        let conn = post_head(addr, &body).await;
        finish(conn, body).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_over_the_concurrency_cap_is_answered_429_and_its_retry_lands() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let metrics = Arc::new(IngestMetrics::default());
        let settings = IngestSettings {
            path: DEFAULT_PATH.into(),
            max_body_bytes: 1 << 20,
            max_concurrent_requests: 1,
            log: log::LogSettings {
                dir: tmp.path().to_owned(),
                max_bytes: 1 << 20,
            },
        };
        let log = Arc::new(IngestLog::open(settings.log.clone(), Arc::default()).expect("log"));
        let app = router(
            &settings,
            Arc::clone(&log),
            Arc::new(ConsumeMetrics::default()),
            metrics.clone(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move { axum::serve(listener, app).await });

        // The first request holds the only permit while its body has not arrived.
        let first_body = body(1);
        let first = post_head(addr, &first_body).await;
        // The server reads the head (and takes the permit) as soon as it arrives on loopback.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let busy = post(addr, body(2)).await;
        assert!(busy.starts_with("HTTP/1.1 429"), "{busy}");
        assert!(
            busy.to_ascii_lowercase().contains("retry-after: 1"),
            "{busy}"
        );
        let ok = finish(first, first_body).await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        let ok = post(addr, body(2)).await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");

        let logged: Vec<u128> = log
            .read(0)
            .expect("read log")
            .records
            .iter()
            .map(|r| {
                selfheal_core::schema::decode_wire(&r.wire)
                    .expect("wire")
                    .record()
                    .id
                    .as_u128()
            })
            .collect();
        assert_eq!(logged, vec![1, 2]);
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
