//! The HTTP source, for where there is no AWS (`selfheal up`, on-premise). Agents with
//! `forward.sink = "http"` POST batches of wire records (framed by [`selfheal_core::batch`]) to
//! `POST /v1/ingest` on the aggregator's HTTP server; the endpoint appends them to the durable
//! [`log::IngestLog`], and each handler reads that log with its own [`reader::LogReader`] and
//! checkpoints, as it reads a Kinesis shard. So both sources feed the same pipeline, and the lake
//! gets objects of the same useful size on both (one per family per `flush_interval`, not one per
//! request).
//!
//! Every request is authenticated first ([`crate::auth`]: a bearer token that names one node);
//! no token, or one nobody knows, is 401 before the body is read. Then the body is read under
//! its bounds, and the batch is checked as a whole before anything is logged:
//!
//! | answer | when | the agent |
//! |---|---|---|
//! | 200 | every record that decoded is in the log, fsynced | acknowledges the batch |
//! | 400 | broken framing; no record decodes; a timestamp outside the window; too many lake partitions | quarantines it |
//! | 401 | no token, or an unknown one | keeps it, retries |
//! | 403 | a record's `node` is not the caller's node (the whole request is refused) | keeps it, retries |
//! | 408 | the body did not arrive within `body_timeout` | retries |
//! | 413 | the body is over `max_body_bytes` | quarantines it |
//! | 503 | the log is full or cannot be written; a record of a newer schema version; the memory budget for bodies is spent; the API server cannot review the token | retries after `Retry-After` |
//!
//! A record of a schema version newer than this build's is not malformed: it is data this
//! aggregator cannot read yet, so the whole request is 503 and stays in the agent's spool until
//! the aggregator is upgraded (an agent upgraded first loses nothing). Records that frame but do
//! not decode at all are counted in the consumer's malformed counter and skipped when others in
//! the request decode; a request where none does is 400. Each refusal is one WARN line per
//! request with counts, never one per record, and one count in
//! `selfheal_aggregator_ingest_requests_total{status}` (plus the records' reason in
//! `selfheal_aggregator_ingest_refused_records_total{reason}`).
//!
//! Bounds, so eight (or eight hundred) slow clients cannot starve an agent: the connection loop
//! ([`selfheal_runtime::conn`]) caps connections and times out heads and idle connections; the body must arrive
//! within `body_timeout`; memory for bodies being read is a budget of
//! `max_concurrent_requests × max_body_bytes`, taken chunk by chunk as bytes arrive (a slow
//! client holds only what it sent), and a request that would overdraw it is answered 503. No
//! slot is taken before a body arrives, so a client that sends a head and stops holds nothing
//! but its connection.
//!
//! The `Content-Type` is not checked: the framing and each record's magic-and-version header
//! already tell a batch from anything else, and a client that forgets the header loses nothing.
//!
//! A retried request must not duplicate: the log drops records whose ids it logged recently
//! (see [`log`]), and the lake handler de-duplicates rows by id within a batch.

pub mod log;
pub mod reader;

use crate::auth::{Authenticator, Caller, Refusal};
use crate::sources::kinesis::ConsumeMetrics;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::StreamExt;
use log::{IngestLog, LogError, LogRecord};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use selfheal_core::batch::decode_batch;
use selfheal_core::schema::{DecodeError, SCHEMA_VERSION, decode_wire};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The default path of the ingest endpoint; the agent's `forward.http.url` ends with it.
pub const DEFAULT_PATH: &str = "/v1/ingest";

/// Validated ingest settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestSettings {
    /// Path of the endpoint on the aggregator's HTTP server.
    pub path: String,
    /// Largest body accepted; larger ones are answered 413.
    pub max_body_bytes: usize,
    /// With `max_body_bytes`, the memory budget for bodies being read (their product).
    pub max_concurrent_requests: usize,
    /// The whole body must arrive within this long after the head (else 408).
    pub body_timeout: Duration,
    /// Records older than this (by `ts_ms`, against the aggregator's clock) are refused (400).
    pub max_record_age: Duration,
    /// Records further ahead than this are refused (400).
    pub max_record_ahead: Duration,
    /// Most distinct lake partitions (hour × family) one request may touch (else 400).
    pub max_partitions: usize,
    /// Who may post.
    pub auth: crate::auth::AuthSettings,
    /// Connection bounds and TLS of the server.
    pub conn: selfheal_runtime::conn::ConnSettings,
    /// The durable log requests are appended to.
    pub log: log::LogSettings,
}

/// Labels of `selfheal_aggregator_ingest_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// The HTTP status answered.
    pub status: u16,
}

/// Labels of `selfheal_aggregator_ingest_refused_records_total` and `..._auth_refused_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why.
    pub reason: &'static str,
}

/// Ingest counters (`selfheal_aggregator_ingest_*`); decoded and malformed records are counted
/// in [`ConsumeMetrics`], shared with the Kinesis source.
#[derive(Debug, Default)]
pub struct IngestMetrics {
    /// Requests, by the status answered.
    pub requests: Family<StatusLabels, Counter>,
    /// Body bytes received in requests that framed.
    pub bytes: Counter,
    /// Requests refused before their body was read, by reason (`missing`, `invalid`,
    /// `unavailable`).
    pub auth_refused: Family<ReasonLabels, Counter>,
    /// Records of refused requests, by reason (`node_mismatch`, `schema_version`,
    /// `timestamp`, `partitions`, `malformed`).
    pub refused_records: Family<ReasonLabels, Counter>,
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
        r.register(
            "auth_refused",
            "Ingest requests refused before the body was read, by reason",
            self.auth_refused.clone(),
        );
        r.register(
            "refused_records",
            "Records of ingest requests refused as a whole, by reason",
            self.refused_records.clone(),
        );
    }
}

struct Ingest {
    settings: IngestSettings,
    log: Arc<IngestLog>,
    auth: Arc<Authenticator>,
    /// Bytes of bodies being read, at most `max_concurrent_requests × max_body_bytes`.
    budget: Arc<Semaphore>,
    consume: Arc<ConsumeMetrics>,
    metrics: Arc<IngestMetrics>,
}

/// The ingest route, to merge into the aggregator's HTTP server.
pub fn router(
    settings: &IngestSettings,
    auth: Arc<Authenticator>,
    log: Arc<IngestLog>,
    consume: Arc<ConsumeMetrics>,
    metrics: Arc<IngestMetrics>,
) -> Router {
    let budget = settings
        .max_concurrent_requests
        .saturating_mul(settings.max_body_bytes)
        .min(Semaphore::MAX_PERMITS);
    let state = Arc::new(Ingest {
        settings: settings.clone(),
        log,
        auth,
        budget: Arc::new(Semaphore::new(budget)),
        consume,
        metrics,
    });
    Router::new()
        .route(&settings.path, post(ingest))
        .with_state(state)
}

/// An answer: status and a one-line text.
type Answer = (StatusCode, String);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

async fn ingest(State(s): State<Arc<Ingest>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let (status, text) = match s.auth.authenticate(&parts.headers).await {
        Err(refusal) => s.refuse_auth(&refusal),
        Ok(caller) => match s.read_body(&parts.headers, body).await {
            Err(answer) => answer,
            Ok((body, _budget)) => s.accept(&body, &caller).await,
        },
    };
    s.count(status);
    let mut answer = (status, text).into_response();
    let h = answer.headers_mut();
    match status {
        StatusCode::SERVICE_UNAVAILABLE => {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        StatusCode::UNAUTHORIZED => {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        _ => {}
    }
    answer
}

/// What one pass over a request's records found.
#[derive(Debug, Default)]
struct Scan {
    records: Vec<LogRecord>,
    malformed: usize,
    first_malformed: Option<String>,
    newer_schema: usize,
    newest_schema: u16,
    foreign: usize,
    first_foreign: Option<String>,
    out_of_window: usize,
    ts_range: Option<(i64, i64)>,
    partitions: HashSet<(i64, selfheal_core::Family)>,
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

    fn refused(&self, reason: &'static str, n: usize) {
        self.metrics
            .refused_records
            .get_or_create(&ReasonLabels { reason })
            .inc_by(n as u64);
    }

    fn refuse_auth(&self, refusal: &Refusal) -> Answer {
        self.metrics
            .auth_refused
            .get_or_create(&ReasonLabels {
                reason: refusal.reason(),
            })
            .inc();
        match refusal {
            Refusal::Missing => {
                tracing::debug!("IngestUnauthenticated");
                (
                    StatusCode::UNAUTHORIZED,
                    "a bearer token is required\n".into(),
                )
            }
            Refusal::Invalid(why) => {
                tracing::warn!(reason = %why, "IngestTokenRefused");
                (
                    StatusCode::UNAUTHORIZED,
                    "the token is not accepted\n".into(),
                )
            }
            Refusal::Unavailable(why) => {
                tracing::warn!(error = %why, "IngestTokenReviewUnavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the token cannot be checked now; retry later\n".into(),
                )
            }
        }
    }

    /// Reads the body within `body_timeout` and `max_body_bytes`, taking memory budget as the
    /// bytes arrive; the permit is held until the answer is made.
    async fn read_body(
        &self,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<(Vec<u8>, Option<OwnedSemaphorePermit>), Answer> {
        let max = self.settings.max_body_bytes;
        let too_large = || {
            tracing::warn!(max_bytes = max, "IngestBodyTooLarge");
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is over {max} bytes\n"),
            )
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return Err(too_large());
        }
        let read = async {
            let mut out: Vec<u8> = Vec::new();
            let mut permit: Option<OwnedSemaphorePermit> = None;
            let mut stream = body.into_data_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| {
                    (
                        StatusCode::BAD_REQUEST,
                        format!("the body could not be read: {e}\n"),
                    )
                })?;
                if out.len() + chunk.len() > max {
                    return Err(too_large());
                }
                let n = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
                match Arc::clone(&self.budget).try_acquire_many_owned(n) {
                    Ok(p) => match &mut permit {
                        Some(held) => held.merge(p),
                        None => permit = Some(p),
                    },
                    Err(_) => {
                        tracing::warn!("IngestMemoryBudgetSpent");
                        return Err((
                            StatusCode::SERVICE_UNAVAILABLE,
                            "too many bodies in flight; retry later\n".into(),
                        ));
                    }
                }
                out.extend_from_slice(&chunk);
            }
            Ok((out, permit))
        };
        match tokio::time::timeout(self.settings.body_timeout, read).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(timeout = ?self.settings.body_timeout, "IngestBodyTimedOut");
                Err((
                    StatusCode::REQUEST_TIMEOUT,
                    "the body did not arrive in time\n".into(),
                ))
            }
        }
    }

    /// Decodes and checks every record; nothing of `wire` is logged unless all checks pass.
    fn scan(&self, wire: &[&[u8]], caller: &Caller) -> Scan {
        let now = now_ms();
        let oldest = now.saturating_sub(
            i64::try_from(self.settings.max_record_age.as_millis()).unwrap_or(i64::MAX),
        );
        let newest = now.saturating_add(
            i64::try_from(self.settings.max_record_ahead.as_millis()).unwrap_or(i64::MAX),
        );
        let mut s = Scan {
            records: Vec::with_capacity(wire.len().min(100_000)),
            ..Scan::default()
        };
        for data in wire {
            let envelope = match decode_wire(data) {
                Ok(e) => e,
                Err(DecodeError::UnsupportedVersion { found, .. }) if found > SCHEMA_VERSION => {
                    s.newer_schema += 1;
                    s.newest_schema = s.newest_schema.max(found);
                    continue;
                }
                Err(e) => {
                    s.malformed += 1;
                    s.first_malformed.get_or_insert_with(|| e.to_string());
                    continue;
                }
            };
            let rec = envelope.record();
            if rec.node != caller.node {
                s.foreign += 1;
                s.first_foreign.get_or_insert_with(|| rec.node.clone());
                continue;
            }
            let ts = rec.ts_ms;
            s.ts_range = Some(s.ts_range.map_or((ts, ts), |(a, b)| (a.min(ts), b.max(ts))));
            if ts < oldest || ts > newest {
                s.out_of_window += 1;
                continue;
            }
            s.partitions.insert((ts.div_euclid(3_600_000), rec.family));
            let key = rec.subject.workload_key(&rec.node);
            // A frame holds at most MAX_RECORD_BYTES of key and record (Kinesis' limit).
            if key.len() + data.len() > selfheal_runtime::frame::MAX_RECORD_BYTES
                || key.len() > usize::from(u16::MAX)
            {
                s.malformed += 1;
                s.first_malformed.get_or_insert_with(|| {
                    format!(
                        "{} bytes with its key exceed the 1 MiB record limit",
                        data.len()
                    )
                });
                continue;
            }
            s.records.push(LogRecord {
                id: rec.id.as_u128(),
                key,
                wire: data.to_vec(),
            });
        }
        s
    }

    async fn accept(&self, body: &[u8], caller: &Caller) -> Answer {
        let wire = match decode_batch(body) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(node = %caller.node, bytes = body.len(), error = %e, "IngestBatchMalformed");
                return (StatusCode::BAD_REQUEST, format!("{e}\n"));
            }
        };
        self.metrics.bytes.inc_by(body.len() as u64);
        let s = self.scan(&wire, caller);
        drop(wire);
        let total = s.records.len() + s.malformed + s.newer_schema + s.foreign + s.out_of_window;
        // Refusals of the whole request, most fundamental first; one line each.
        if s.foreign > 0 {
            self.refused("node_mismatch", total);
            tracing::warn!(
                node = %caller.node,
                via = caller.via,
                foreign_records = s.foreign,
                records = total,
                first_foreign_node = s.first_foreign.as_deref().unwrap_or_default(),
                "IngestForeignNodeRefused"
            );
            return (
                StatusCode::FORBIDDEN,
                format!(
                    "{} of {total} records are not of node {}; the request is refused\n",
                    s.foreign, caller.node
                ),
            );
        }
        if s.newer_schema > 0 {
            self.refused("schema_version", total);
            tracing::warn!(
                node = %caller.node,
                records = s.newer_schema,
                found = s.newest_schema,
                supported = SCHEMA_VERSION,
                "IngestSchemaVersionUnsupported"
            );
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "schema version {} is newer than this aggregator reads ({SCHEMA_VERSION}); \
                     keep the records and retry after it is upgraded\n",
                    s.newest_schema
                ),
            );
        }
        if s.out_of_window > 0 {
            self.refused("timestamp", total);
            let (first, last) = s.ts_range.unwrap_or_default();
            tracing::warn!(
                node = %caller.node,
                records = s.out_of_window,
                first_ts_ms = first,
                last_ts_ms = last,
                "IngestTimestampsOutOfWindow"
            );
            return (
                StatusCode::BAD_REQUEST,
                format!(
                    "{} records are timestamped outside [now - {:?}, now + {:?}]\n",
                    s.out_of_window, self.settings.max_record_age, self.settings.max_record_ahead
                ),
            );
        }
        if s.partitions.len() > self.settings.max_partitions {
            self.refused("partitions", total);
            tracing::warn!(
                node = %caller.node,
                partitions = s.partitions.len(),
                max = self.settings.max_partitions,
                "IngestTooManyPartitions"
            );
            return (
                StatusCode::BAD_REQUEST,
                format!(
                    "the records span {} lake partitions (hour × family), more than {}\n",
                    s.partitions.len(),
                    self.settings.max_partitions
                ),
            );
        }
        self.consume.malformed.inc_by(s.malformed as u64);
        if s.malformed > 0 {
            tracing::warn!(
                node = %caller.node,
                malformed = s.malformed,
                records = total,
                first_error = s.first_malformed.as_deref().unwrap_or_default(),
                "MalformedRecordsSkipped"
            );
        }
        if s.records.is_empty() {
            if s.malformed > 0 {
                self.refused("malformed", s.malformed);
                return (
                    StatusCode::BAD_REQUEST,
                    format!("none of the {} records decodes\n", s.malformed),
                );
            }
            return (StatusCode::OK, "0 records logged\n".into());
        }
        self.consume.records.inc_by(s.records.len() as u64);
        let records = s.records;
        let log = Arc::clone(&self.log);
        let appended = tokio::task::spawn_blocking(move || log.append(&records))
            .await
            .map_err(LogError::Join)
            .and_then(|r| r);
        match appended {
            Ok(a) => (
                StatusCode::OK,
                format!(
                    "{} records logged, {} logged already, {} malformed skipped\n",
                    a.records, a.duplicates, s.malformed
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
mod tests;
