//! The HTTP [`Sink`]: POSTs a batch of wire records to a URL (the aggregator's ingest endpoint,
//! `POST /v1/ingest` in `selfheal aggregator` with `ingest.source = "http"`). The body is
//! [`CONTENT_TYPE`], framed by [`selfheal_core::batch`], which the aggregator decodes with the
//! same code.
//!
//! The call succeeds or fails as a whole: 2xx accepts every record (the aggregator answers only
//! once they are durable in the lake); 408, 429 and 5xx are worth retrying (429 as throttling);
//! any other status (400 for a body that is not a batch, 413 for one over the aggregator's
//! `max_body_bytes`) refuses the batch's content for good: its records are dropped and counted.

use super::{RecordOutcome, Sink, SinkError};
use crate::forward::spool::SpooledRecord;
use selfheal_core::batch::encode_batch;
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub use selfheal_core::batch::CONTENT_TYPE;

/// HTTP sink settings as written by the user (`forward.http` section).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// URL batches are POSTed to.
    pub url: String,
    /// Connect timeout, milliseconds (0 = none beyond the forwarder's request timeout).
    pub connect_timeout_ms: u64,
}

/// A sink that POSTs batches to one URL.
#[derive(Debug, Clone)]
pub struct HttpSink {
    client: reqwest::Client,
    url: reqwest::Url,
}

impl HttpSink {
    /// Checks the URL and builds the client.
    pub fn from_config(cfg: &HttpConfig) -> Result<HttpSink, super::ForwardConfigError> {
        let url = reqwest::Url::parse(&cfg.url).map_err(|e| super::ForwardConfigError {
            field: "forward.http.url",
            reason: format!("{:?} is not a URL: {e}", cfg.url),
        })?;
        let mut builder = reqwest::Client::builder();
        if cfg.connect_timeout_ms > 0 {
            builder = builder.connect_timeout(Duration::from_millis(cfg.connect_timeout_ms));
        }
        let client = builder.build().map_err(|e| super::ForwardConfigError {
            field: "forward.http",
            reason: format!("cannot build an HTTP client: {e}"),
        })?;
        Ok(HttpSink { client, url })
    }
}

impl Sink for HttpSink {
    async fn send(&self, records: &[&SpooledRecord]) -> Result<Vec<RecordOutcome>, SinkError> {
        let body = encode_batch(records.iter().map(|r| r.data.as_slice()))
            .map_err(|e| SinkError::Rejected(e.into()))?;
        let resp = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(body)
            .send()
            .await
            .map_err(|e| SinkError::Transient(e.into()))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(vec![RecordOutcome::Accepted; records.len()]);
        }
        let err = format!("{} answered {status}", self.url).into();
        match status.as_u16() {
            429 => Err(SinkError::Throttled(err)),
            408 | 500..=599 => Err(SinkError::Transient(err)),
            _ => Err(SinkError::Rejected(err)),
        }
    }

    fn name(&self) -> &'static str {
        "http"
    }
}
