//! The HTTP [`Sink`]: POSTs a batch of wire records to a URL (the aggregator's ingest endpoint,
//! `POST /v1/ingest` in `selfheal aggregator` with `ingest.source = "http"`). The body is
//! [`CONTENT_TYPE`], framed by [`selfheal_core::batch`], which the aggregator decodes with the
//! same code.
//!
//! Credentials: the bearer token is read from `token_file` on every call, so a rotated token
//! (a projected service-account token the kubelet rewrites, a Secret update) is used from the
//! next batch on without a restart. `ca_file` pins the CA the aggregator's certificate must
//! chain to (instead of the system roots), and `client_cert_file` + `client_key_file` present a
//! client certificate for an aggregator (or a proxy in front of it) that asks for one. A token is
//! never sent over plain `http://` except to a loopback address.
//!
//! The call succeeds or fails as a whole: 2xx accepts every record (the aggregator answers only
//! once they are durable in its log). Only 400 (not a batch the aggregator can ever take:
//! broken framing, nothing decodes, timestamps outside its window) and 413 (over its
//! `max_body_bytes`) refuse the content for good; the forwarder then moves those records to the
//! spool's quarantine, never deletes them. Every other status (401 and 403 while credentials are
//! being fixed, 404 for a wrong URL or an aggregator not yet upgraded, 408, 429, 5xx) keeps the
//! records spooled and retries with backoff, 429 as throttling.

use super::{RecordOutcome, Sink, SinkError};
use crate::forward::spool::SpooledRecord;
use selfheal_core::batch::encode_batch;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
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
    /// File holding the bearer token (re-read on every call). In a cluster, a projected
    /// service-account token with the aggregator's audience (`selfheal-ingest`).
    pub token_file: Option<PathBuf>,
    /// CA bundle (PEM) the aggregator's certificate must chain to; default: the system roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM), for an aggregator that asks for one.
    pub client_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub client_key_file: Option<PathBuf>,
}

/// A sink that POSTs batches to one URL.
#[derive(Debug, Clone)]
pub struct HttpSink {
    client: reqwest::Client,
    url: reqwest::Url,
    token_file: Option<PathBuf>,
}

fn bad(field: &'static str, reason: String) -> super::ForwardConfigError {
    super::ForwardConfigError { field, reason }
}

impl HttpSink {
    /// Checks the URL and the credential files and builds the client.
    pub fn from_config(cfg: &HttpConfig) -> Result<HttpSink, super::ForwardConfigError> {
        let url = reqwest::Url::parse(&cfg.url).map_err(|e| {
            bad(
                "forward.http.url",
                format!("{:?} is not a URL: {e}", cfg.url),
            )
        })?;
        if cfg.token_file.is_some()
            && url.scheme() != "https"
            && !selfheal_runtime::config::is_loopback_host(url.host_str().unwrap_or_default())
        {
            return Err(bad(
                "forward.http.url",
                format!(
                    "{:?}: the token must not travel in clear; use https:// (http:// only on loopback)",
                    cfg.url
                ),
            ));
        }
        if let Some(f) = &cfg.token_file {
            read_token(f).map_err(|e| bad("forward.http.token_file", e))?;
        }
        let mut builder = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
        if cfg.connect_timeout_ms > 0 {
            builder = builder.connect_timeout(Duration::from_millis(cfg.connect_timeout_ms));
        }
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| bad("forward.http.ca_file", format!("{}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| bad("forward.http.ca_file", format!("{}: {e}", ca.display())))?;
            if certs.is_empty() {
                return Err(bad(
                    "forward.http.ca_file",
                    format!("{}: no PEM certificate in it", ca.display()),
                ));
            }
            builder = builder.tls_certs_only(certs);
        }
        match (&cfg.client_cert_file, &cfg.client_key_file) {
            (None, None) => {}
            (Some(cert), Some(key)) => {
                let mut pem = std::fs::read(cert).map_err(|e| {
                    bad(
                        "forward.http.client_cert_file",
                        format!("{}: {e}", cert.display()),
                    )
                })?;
                pem.push(b'\n');
                pem.extend(std::fs::read(key).map_err(|e| {
                    bad(
                        "forward.http.client_key_file",
                        format!("{}: {e}", key.display()),
                    )
                })?);
                let id = reqwest::Identity::from_pem(&pem)
                    .map_err(|e| bad("forward.http.client_cert_file", e.to_string()))?;
                builder = builder.identity(id);
            }
            _ => {
                return Err(bad(
                    "forward.http.client_key_file",
                    "client_cert_file and client_key_file go together".into(),
                ));
            }
        }
        let client = builder
            .build()
            .map_err(|e| bad("forward.http", format!("cannot build an HTTP client: {e}")))?;
        Ok(HttpSink {
            client,
            url,
            token_file: cfg.token_file.clone(),
        })
    }
}

fn read_token(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_token(path, &text)
}

fn parse_token(path: &std::path::Path, text: &str) -> Result<String, String> {
    let token = text.trim();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{}: not a token (empty, or a character a header cannot carry)",
            path.display()
        ));
    }
    Ok(token.to_owned())
}

impl Sink for HttpSink {
    async fn send(&self, records: &[&SpooledRecord]) -> Result<Vec<RecordOutcome>, SinkError> {
        let body = encode_batch(records.iter().map(|r| r.data.as_slice()))
            .map_err(|e| SinkError::Rejected(e.into()))?;
        let mut req = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(body);
        if let Some(f) = &self.token_file {
            // Small and local; read fresh each time so a rotation needs no restart. A missing
            // file (mid-rotation) is a transient failure: the batch stays spooled.
            let token = tokio::fs::read_to_string(f)
                .await
                .map_err(|e| format!("{}: {e}", f.display()))
                .and_then(|t| parse_token(f, &t))
                .map_err(|e| SinkError::Transient(e.into()))?;
            req = req.bearer_auth(token);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| SinkError::Transient(e.into()))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(vec![RecordOutcome::Accepted; records.len()]);
        }
        let text = resp.text().await.unwrap_or_default();
        let err = format!("{} answered {status}: {}", self.url, text.trim()).into();
        match status.as_u16() {
            400 | 413 => Err(SinkError::Rejected(err)),
            429 => Err(SinkError::Throttled(err)),
            _ => Err(SinkError::Transient(err)),
        }
    }

    fn name(&self) -> &'static str {
        "http"
    }
}
