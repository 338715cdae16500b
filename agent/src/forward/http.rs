//! The HTTP [`Sink`]: POSTs a batch of wire records to a URL (the aggregator's ingest endpoint,
//! e.g. in `selfheal up`). The body is [`CONTENT_TYPE`]: each record as a `u32` little-endian
//! length followed by its `encode_wire` bytes; [`decode_batch`] reads it back on the other side.
//!
//! The call succeeds or fails as a whole: 2xx accepts every record; 408, 429 and 5xx are worth
//! retrying (429 as throttling); any other status refuses the batch's content for good.

use super::{RecordOutcome, Sink, SinkError};
use crate::spool::SpooledRecord;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Media type of a batch body.
pub const CONTENT_TYPE: &str = "application/vnd.selfheal.wire-batch";

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

/// Encodes records as a batch body.
pub fn encode_batch<'a>(records: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        out.extend_from_slice(&(r.len() as u32).to_le_bytes());
        out.extend_from_slice(r);
    }
    out
}

/// A batch body that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("batch body truncated at byte {offset}")]
pub struct BatchDecodeError {
    /// Where the body stops making sense.
    pub offset: usize,
}

/// Splits a batch body into its wire records.
pub fn decode_batch(body: &[u8]) -> Result<Vec<&[u8]>, BatchDecodeError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < body.len() {
        let len = body
            .get(pos..pos + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or(BatchDecodeError { offset: pos })?;
        let rec = body
            .get(pos + 4..pos + 4 + len)
            .ok_or(BatchDecodeError { offset: pos })?;
        out.push(rec);
        pos += 4 + len;
    }
    Ok(out)
}

impl Sink for HttpSink {
    async fn send(&self, records: &[&SpooledRecord]) -> Result<Vec<RecordOutcome>, SinkError> {
        let body = encode_batch(records.iter().map(|r| r.data.as_slice()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_body_round_trips_and_truncation_is_an_error() {
        let recs: [&[u8]; 3] = [b"one", b"", b"three"];
        let body = encode_batch(recs);
        assert_eq!(decode_batch(&body).expect("decodes"), recs.to_vec());
        let err = decode_batch(&body[..body.len() - 1]).expect_err("truncated");
        assert_eq!(err.offset, 11);
    }
}
